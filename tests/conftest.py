"""Shared pytest fixtures: the gateway's config and data dir, a PostgreSQL server and an SMTP
server (other tests build their own configs with ``tests/policy_fixtures.py``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from gateway_process import free_port
from mail import Inbox
from pg_server import PostgresServer
from slapd_server import DIRECTORY_PASSWORDS, SlapdServer

GATEWAY_DATA = Path(__file__).resolve().parent / "data" / "gateway"


@pytest.fixture
def gateway_config(tmp_path: Path) -> Path:
    """A copy of ``tests/data/gateway`` (safe to edit): every day is one long lesson (UTC);
    127.0.0.1 is a student, 127.0.0.2 a visitor whose HTTPS is not intercepted; roster user
    alice is staff; social.test is social media (blocked for students), wiki.test read-only."""
    folder = tmp_path / "config"
    shutil.copytree(GATEWAY_DATA, folder)
    return folder / "config.yaml"


@pytest.fixture
def gateway_data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "var"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server of the test module's own (Debian's binaries)."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def smtp_inbox() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server (aiosmtpd) on a free loopback port: (its inbox, the port)."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def school_directory() -> Iterator[SlapdServer]:
    """A throwaway OpenLDAP server (Debian's slapd) of the test module's own, holding a small
    school: pupil1 and pupil2 in group students, staff1 in group staff, visitor1 in none (the
    passwords are ``DIRECTORY_PASSWORDS``)."""
    server = SlapdServer()
    try:
        server.start()
        dns = {
            uid: server.add_user(uid, password, display)
            for uid, (password, display) in DIRECTORY_PASSWORDS.items()
        }
        server.add_group("students", [dns["pupil1"], dns["pupil2"]])
        server.add_group("staff", [dns["staff1"]])
        yield server
    finally:
        server.remove()

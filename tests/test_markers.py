"""The ``e2e`` marker (tests/conftest.py): which commands count as starting a real server, and
that a test without the mark cannot start one."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import starts_a_server


@pytest.mark.parametrize(
    ("argv", "server"),
    [
        ([sys.executable, "-m", "schoolgate.cli", "run", "--config", "c.yaml"], "a gateway"),
        (["/usr/bin/schoolgate", "run", "--workers", "2"], "a gateway"),
        (
            [sys.executable, "-c", "from schoolgate.cli.main import main; main()", "run"],
            "a gateway",
        ),
        (["/usr/bin/chromium", "--headless", "--screenshot=x.png", "page.html"], "chromium"),
        (["/usr/lib/postgresql/15/bin/initdb", "-D", "/tmp/pg"], "initdb"),
        (["ip", "netns", "add", "pupil"], "network namespace"),
        (["node", "cli.js", "run-driver"], "Playwright"),
        (["mitmdump", "-s", "addons/schoolgate.py"], "mitmdump"),
        (
            ["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "start"],
            "pg_ctl",
        ),
        (["unshare", "--mount", "sh", "-c", "mount -t overlay ..."], "unshare"),
    ],
)
def test_these_start_a_real_server(argv: list[str], server: str) -> None:
    found = starts_a_server(argv)
    assert found is not None and server in found


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "schoolgate.cli", "events", "--json"],
        [sys.executable, "-m", "schoolgate.cli", "jobs", "run", "purge"],  # "run" of jobs
        ["/usr/bin/schoolgate", "staff", "add", "alice"],
        ["curl", "-x", "http://127.0.0.1:8080", "http://social.test/"],
        ["zbarimg", "--raw", "qr.png"],
        ["ip", "addr", "show"],
        ["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/createdb", "school"],
        ["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "-D", "d", "stop"],
        [sys.executable, "-c", "print('run')", "run"],
        [],
    ],
)
def test_these_are_ordinary_commands(argv: list[str]) -> None:
    assert starts_a_server(argv) is None


def test_a_test_without_the_mark_cannot_start_a_gateway(tmp_path) -> None:
    missing = tmp_path / "none.yaml"  # were it started after all, it would stop at once
    with pytest.raises(RuntimeError, match="starts a gateway .* but is not marked e2e"):
        subprocess.Popen([sys.executable, "-m", "schoolgate.cli", "run", "--config", missing])

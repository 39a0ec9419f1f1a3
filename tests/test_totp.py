"""Two-factor sign-in codes for local staff accounts, on a real SQLite database: enrolment
(the QR code is read back as a phone's camera would: rendered by Chromium, decoded by zbar),
codes in the ±1 step window, no code accepted twice, recovery codes used once, the secret
unreadable without the gateway's secret.key."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest
from sqlalchemy import select

from schoolgate.portal import totp
from schoolgate.portal.auth import add_staff
from schoolgate.storage.db import open_database
from schoolgate.storage.models import StaffRow

KEY = b"k" * 32
AT = datetime(2026, 12, 7, 10, 12, 5, tzinfo=UTC)
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def db(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path}/schoolgate.db")
    with sessions() as session:
        add_staff(
            session, username="it.tech", password="correct horse battery", roles=["it_support"]
        )
        session.commit()
    return sessions


def _row(session) -> StaffRow:
    return session.scalar(select(StaffRow).where(StaffRow.username == "it.tech"))


def _code(secret: str, at: datetime) -> str:
    return pyotp.TOTP(secret).at(at)


def _enrolled(db) -> tuple[str, list[str]]:
    with db() as session:
        row = _row(session)
        enrolment = totp.begin_enrolment(row, secret_key=KEY, issuer="Hillside Academy")
        session.commit()
        codes = totp.confirm_enrolment(
            session, row, _code(enrolment.secret, AT), secret_key=KEY, at=AT
        )
        session.commit()
    return enrolment.secret, codes


def test_enrolment_gives_a_uri_and_turns_on_only_after_a_first_code(db):
    with db() as session:
        row = _row(session)
        enrolment = totp.begin_enrolment(row, secret_key=KEY, issuer="Hillside Academy")
        session.commit()
        parts = urlsplit(enrolment.uri)
        assert parts.scheme == "otpauth" and parts.netloc == "totp"
        assert unquote(parts.path) == "/Hillside Academy:it.tech"
        query = parse_qs(parts.query)
        assert query["secret"] == [enrolment.secret] and query["issuer"] == ["Hillside Academy"]
        assert len(enrolment.secret) == 32  # 160 bits in base32
        # stored encrypted, not as the secret itself
        assert row.totp_secret and enrolment.secret not in row.totp_secret
        assert not totp.is_enabled(row)
        assert not totp.verify(session, row, _code(enrolment.secret, AT), secret_key=KEY, at=AT)
        with pytest.raises(totp.TotpError, match="not right"):
            totp.confirm_enrolment(session, row, "000000", secret_key=KEY, at=AT)
        codes = totp.confirm_enrolment(
            session, row, _code(enrolment.secret, AT), secret_key=KEY, at=AT
        )
        session.commit()
        assert totp.is_enabled(row) and row.totp_enabled_at == AT
        assert len(codes) == 10 and len(set(codes)) == 10
        assert all(len(c) == 19 and c.count("-") == 3 for c in codes)
        stored = json.loads(row.totp_recovery)
        assert len(stored) == 10 and not any(c.replace("-", "") in row.totp_recovery for c in codes)


def test_codes_in_the_window_are_accepted_once(db):
    secret, _ = _enrolled(db)
    with db() as session:
        row = _row(session)
        # the enrolment's own code was used: not again
        assert not totp.verify(session, row, _code(secret, AT), secret_key=KEY, at=AT)
        later = AT + timedelta(seconds=30)
        assert totp.verify(session, row, _code(secret, later), secret_key=KEY, at=later)
        session.commit()
    with db() as session:  # another worker, another session: still refused (stored)
        row = _row(session)
        assert not totp.verify(session, row, _code(secret, later), secret_key=KEY, at=later)
        # a phone one step slow or fast is fine
        now = AT + timedelta(minutes=5)
        assert totp.verify(
            session, row, _code(secret, now - timedelta(seconds=30)), secret_key=KEY, at=now
        )
        # and then its older neighbour is not: never a step before one already used
        assert not totp.verify(
            session, row, _code(secret, now - timedelta(seconds=60)), secret_key=KEY, at=now
        )
        assert totp.verify(
            session, row, _code(secret, now + timedelta(seconds=30)), secret_key=KEY, at=now
        )
        # two steps away is too far
        far = now + timedelta(minutes=2)
        assert not totp.verify(
            session, row, _code(secret, far + timedelta(seconds=60)), secret_key=KEY, at=far
        )
        for bad in ("", "12345", "1234567", "abcdef", "12 34 5x"):
            assert not totp.verify(session, row, bad, secret_key=KEY, at=far)
        # spaces as apps show them are fine
        spaced = _code(secret, far)
        assert totp.verify(session, row, f"{spaced[:3]} {spaced[3:]}", secret_key=KEY, at=far)


def test_the_same_code_at_the_same_moment_in_two_processes_works_once(db):
    secret, _ = _enrolled(db)
    later = AT + timedelta(minutes=1)
    code = _code(secret, later)
    first, second = db(), db()
    try:
        a, b = _row(first), _row(second)  # both read the row before either stores
        assert totp.verify(first, a, code, secret_key=KEY, at=later)
        first.commit()
        assert not totp.verify(second, b, code, secret_key=KEY, at=later)
    finally:
        first.close()
        second.close()


def test_recovery_codes_work_once(db):
    _, codes = _enrolled(db)
    with db() as session:
        row = _row(session)
        assert totp.use_recovery_code(session, row, codes[3].lower())
        session.commit()
        assert totp.recovery_codes_left(row) == 9
        assert not totp.use_recovery_code(session, row, codes[3])
        assert not totp.use_recovery_code(session, row, "AAAA-BBBB-CCCC-DDDD")
        assert totp.use_recovery_code(session, row, codes[0].replace("-", " "))
        session.commit()
        assert totp.recovery_codes_left(row) == 8


def test_the_secret_needs_the_gateways_key(db):
    secret, _ = _enrolled(db)
    later = AT + timedelta(minutes=1)
    with db() as session:
        row = _row(session)
        with pytest.raises(totp.TotpError, match="secret.key"):
            totp.verify(session, row, _code(secret, later), secret_key=b"x" * 32, at=later)
        totp.disable(row)
        session.commit()
        assert not totp.is_enabled(row) and row.totp_secret is None
        assert not totp.verify(session, row, _code(secret, later), secret_key=KEY, at=later)


@pytest.mark.e2e
def test_the_qr_code_reads_back_as_the_uri(tmp_path):
    """What the portal will show, rendered by Chromium and read by zbar (as a phone would)."""
    uri = totp.provisioning_uri("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "mrs.khan", "Hillside")
    svg = totp.qr_svg(uri)
    assert svg.startswith("<svg") and "<script" not in svg and "<title>" in svg
    page = tmp_path / "qr.html"
    page.write_text(f"<!doctype html><body style='margin:0;background:#fff'>{svg}</body>")
    shot = tmp_path / "qr.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--disable-component-update", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=600,600", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )  # fmt: skip
    read = subprocess.run(
        ["zbarimg", "--quiet", "--raw", str(shot)], capture_output=True, text=True, timeout=60
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == uri

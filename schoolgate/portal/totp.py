"""Two-factor sign-in for local staff accounts: time-based one-time codes (RFC 6238, the codes
of Microsoft Authenticator, Google Authenticator, 1Password...) with ``pyotp``.

* **Enrolment**: a new random secret (160 bits), its ``otpauth://`` provisioning URI and the QR
  code of it drawn on the server as SVG (``segno``; the portal sends no script and loads nothing
  from elsewhere). The account is not protected until a first code confirms the enrolment;
  then ten **recovery codes** are shown once.
* **Verification**: 6 digits, the current 30-second step or one either side (clocks drift);
  a code is never accepted twice: the last step used is stored, and a step at or before it is
  refused, so a code seen over a shoulder cannot be replayed within its window. The store is
  a conditional update (``... WHERE totp_last_step < step``), so two gateways or workers
  given the same code at the same moment accept it once.
* **At rest**: the secret is encrypted (Fernet) with a key derived from the gateway's
  ``secret.key`` (HKDF-SHA256), so a copy of the database alone does not give the codes;
  recovery codes (80 random bits each) are kept only as salted HMAC-SHA256 digests and each
  works once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import pyotp
import segno
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import CursorResult, Update, or_, update
from sqlalchemy.orm import Session

from schoolgate.storage.models import StaffRow

STEP_SECONDS = 30
DIGITS = 6
WINDOW = 1  # steps either side of now
SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation
RECOVERY_CODES = 10
RECOVERY_BYTES = 10  # 80 bits: "ABCD-EFGH-IJKL-MNOP" in base32
_CODE = re.compile(r"^\d{6}$")


class TotpError(Exception):
    """Two-factor sign-in cannot go on as asked (the message can be shown to the user)."""


@dataclass(frozen=True)
class Enrolment:
    secret: str = field(repr=False)  # base32, for typing into an app by hand
    uri: str = field(repr=False)  # otpauth://totp/...
    qr_svg: str = field(repr=False)  # an <svg> element, ready to put in a page


def _key(secret_key: bytes) -> Fernet:
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"schoolgate staff totp secret"
    ).derive(secret_key)
    return Fernet(base64.urlsafe_b64encode(derived))


def _seal(secret_key: bytes, secret: str) -> str:
    return _key(secret_key).encrypt(secret.encode("ascii")).decode("ascii")


def _open(secret_key: bytes, sealed: str) -> str:
    try:
        return _key(secret_key).decrypt(sealed.encode("ascii")).decode("ascii")
    except (InvalidToken, ValueError):
        raise TotpError(
            "this account's two-factor secret cannot be read with this gateway's secret.key "
            "(was the data folder restored without it?): IT Support must reset two-factor "
            "sign-in for the account, and it must be set up again"
        ) from None


def is_enabled(row: StaffRow) -> bool:
    return row.totp_enabled_at is not None and bool(row.totp_secret)


def qr_svg(uri: str, *, title: str = "QR code for your authenticator app") -> str:
    """The QR code of ``uri`` as an inline SVG element (dark on light, with its quiet zone),
    with a ``viewBox`` and no fixed size: the page sets its width (it fits a 320 px screen)."""
    code = segno.make(uri, error="m")
    return code.svg_inline(scale=5, border=4, dark="#000", light="#fff", title=title, omitsize=True)


def provisioning_uri(secret: str, username: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=username, issuer_name=issuer or "schoolgate"
    )


def begin_enrolment(row: StaffRow, *, secret_key: bytes, issuer: str) -> Enrolment:
    """A new secret for ``row`` (replacing any, and switching two-factor off until a code
    confirms it: :func:`confirm_enrolment`). The caller commits."""
    secret = base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")
    row.totp_secret = _seal(secret_key, secret)
    row.totp_enabled_at = None
    row.totp_last_step = None
    row.totp_recovery = None
    uri = provisioning_uri(secret, row.username, issuer)
    return Enrolment(secret=secret, uri=uri, qr_svg=qr_svg(uri))


def _normal(code: str) -> str:
    return re.sub(r"[\s-]", "", code or "")


def _matching_step(secret: str, code: str, at: datetime, after: int | None) -> int | None:
    """The step within the window whose code is ``code`` and which is after ``after``."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    now_step = int(at.timestamp()) // STEP_SECONDS
    found = None
    for step in range(now_step - WINDOW, now_step + WINDOW + 1):
        expected = totp.generate_otp(step)
        # compare every candidate (no early exit), and never a step already used
        if hmac.compare_digest(expected, code) and (after is None or step > after):
            found = step
    return found


def _rows_updated(session: Session, statement: Update) -> int:
    """How many rows ``statement`` changed (an UPDATE's result is a cursor result)."""
    return cast("CursorResult[Any]", session.execute(statement)).rowcount


def _claim_step(session: Session, row: StaffRow, step: int) -> bool:
    """Store ``step`` as the last used, only if no later or equal one was (atomic)."""
    done = _rows_updated(
        session,
        update(StaffRow)
        .where(StaffRow.id == row.id)
        .where(or_(StaffRow.totp_last_step.is_(None), StaffRow.totp_last_step < step))
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False),
    )
    if done != 1:
        return False
    row.totp_last_step = step
    return True


def confirm_enrolment(
    session: Session, row: StaffRow, code: str, *, secret_key: bytes, at: datetime
) -> list[str]:
    """Turn two-factor on with a first good code; the recovery codes, to show once."""
    if not row.totp_secret:
        raise TotpError("set up two-factor sign-in first")
    if is_enabled(row):
        raise TotpError("two-factor sign-in is already on for this account")
    code = _normal(code)
    if not _CODE.match(code):
        raise TotpError("enter the 6 digits your authenticator app shows")
    step = _matching_step(_open(secret_key, row.totp_secret), code, at, row.totp_last_step)
    if step is None or not _claim_step(session, row, step):
        raise TotpError("that code is not right: check the time on your phone and try again")
    codes = new_recovery_codes(row)
    row.totp_enabled_at = at
    return codes


def verify(session: Session, row: StaffRow, code: str, *, secret_key: bytes, at: datetime) -> bool:
    """Whether ``code`` is this account's code now (never one already used). The caller
    commits (the step is stored in the session's transaction)."""
    if not is_enabled(row):
        return False
    code = _normal(code)
    if not _CODE.match(code):
        return False
    step = _matching_step(_open(secret_key, row.totp_secret or ""), code, at, row.totp_last_step)
    return step is not None and _claim_step(session, row, step)


# -- recovery codes -------------------------------------------------------------------------------


def _digest(salt: bytes, code: str) -> str:
    mac = hmac.new(salt, code.upper().encode("ascii"), hashlib.sha256).digest()
    return f"{base64.b64encode(salt).decode()}${base64.b64encode(mac).decode()}"


def new_recovery_codes(row: StaffRow) -> list[str]:
    """Ten new one-use codes (replacing the old ones); only their digests are kept."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = base64.b32encode(secrets.token_bytes(RECOVERY_BYTES)).decode("ascii")
        codes.append("-".join(raw[i : i + 4] for i in range(0, len(raw), 4)))
    row.totp_recovery = json.dumps([_digest(secrets.token_bytes(16), _normal(c)) for c in codes])
    return codes


def recovery_codes_left(row: StaffRow) -> int:
    return len(json.loads(row.totp_recovery or "[]"))


def use_recovery_code(session: Session, row: StaffRow, code: str) -> bool:
    """Sign in with a recovery code instead of an app's code; each works once (the list is
    swapped only if nobody else changed it meanwhile)."""
    if not is_enabled(row):
        return False
    given = _normal(code).upper()
    if not re.fullmatch(r"[A-Z2-7]{16}", given):
        return False
    stored = row.totp_recovery or "[]"
    digests = json.loads(stored)
    match = None
    for item in digests:
        salt_text, _, _ = item.partition("$")
        if hmac.compare_digest(_digest(base64.b64decode(salt_text), given), item):
            match = item
    if match is None:
        return False
    left = json.dumps([d for d in digests if d != match])
    done = _rows_updated(
        session,
        update(StaffRow)
        .where(StaffRow.id == row.id, StaffRow.totp_recovery == stored)
        .values(totp_recovery=left)
        .execution_options(synchronize_session=False),
    )
    if done != 1:
        return False
    row.totp_recovery = left
    return True


def disable(row: StaffRow) -> None:
    """Two-factor off (IT Support resetting a lost phone): the secret and codes are gone."""
    row.totp_secret = None
    row.totp_enabled_at = None
    row.totp_last_step = None
    row.totp_recovery = None


__all__ = [
    "Enrolment",
    "TotpError",
    "begin_enrolment",
    "confirm_enrolment",
    "disable",
    "is_enabled",
    "new_recovery_codes",
    "provisioning_uri",
    "qr_svg",
    "recovery_codes_left",
    "use_recovery_code",
    "verify",
]

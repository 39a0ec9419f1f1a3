"""Staff sign-in beyond the password: two-factor codes (TOTP) for local accounts, and the school's
identity provider (OpenID Connect: Microsoft Entra ID, Google Workspace).

* **After the password** (:func:`after_password`, the one hook in the password sign-in view):
  an account with two-factor sign-in on is not signed in yet; the session only remembers who
  gave a right password, for five minutes, and the browser is sent to ``/staff/two-factor`` for
  the code of their authenticator app (or a recovery code). An account whose role must use a
  code (``portal.totp.required_for``) and has none yet sets one up first
  (``/staff/two-factor/setup``), then is signed in. Wrong codes count towards the sign-in
  limits of the address and of the account, as wrong passwords do, and are in the audit trail.
* **Setting it up** (``/staff/two-factor/setup``, also from the staff home page): a QR code drawn
  on the server, the secret to type by hand, and a first code to turn it on; the ten recovery
  codes are shown once. A lost phone: IT Support turn it off
  (``schoolgate staff reset-two-factor NAME``) and it is set up again.
* **The identity provider** (``/staff/oidc/<name>/start`` and ``.../callback``): the browser
  goes to the provider and comes back with a code; :class:`~schoolgate.portal.oidc.OidcClient`
  checks everything about it, and the staff account it names is signed in (no code here: the
  provider does its own two-factor). Register ``https://<portal host>/staff/oidc/<name>/callback``
  (and the ``http://`` one, if staff use that) as the redirect address at the provider.
"""

from __future__ import annotations

import math
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from schoolgate.core.staff_signin import signin_of
from schoolgate.portal import totp
from schoolgate.portal.auth import password_stamp
from schoolgate.portal.context import (
    current_staff,
    db,
    now,
    safe_next,
    school_name,
    sign_in,
    source_of_address,
    state,
)
from schoolgate.portal.oidc import OidcClient, OidcError, PendingLogin, staff_for
from schoolgate.storage.exceptions import audit
from schoolgate.storage.models import StaffRow
from schoolgate.storage.signin import clear_login_failures, login_refusal, record_login_failure

PENDING = "second_factor"  # session key: who gave a right password, waiting for their code
PENDING_SECONDS = 300
OIDC_PENDING = "oidc"

bp = Blueprint("staff_signin", __name__, url_prefix="/staff")


# -- the hook in the password sign-in view --------------------------------------------------------


def after_password(row: StaffRow, target: str):
    """Called once the password is right: a redirect to the two-factor step (the person is not
    signed in yet), or None to sign them in now."""
    settings, _ = signin_of(state().policy)
    enrol = not totp.is_enabled(row)
    if enrol and not settings.required(row.role_list):
        return None
    session.clear()
    session[PENDING] = {
        "staff_id": row.id,
        "stamp": password_stamp(row),
        "at": now().timestamp(),
        "next": target,
        "enrol": enrol,
    }
    step = "a two-factor set-up" if enrol else "a two-factor code"
    audit(db(), row.username, "staff.login_password", "portal", f"{step} asked; from {_ip()}")
    db().commit()
    endpoint = "staff_signin.two_factor_setup" if enrol else "staff_signin.two_factor"
    return redirect(url_for(endpoint), code=303)


def _ip() -> str:
    return request.remote_addr or "-"


def _pending() -> tuple[StaffRow, dict] | None:
    """The account waiting for its second step, or None (none, expired, or changed since)."""
    data = session.get(PENDING)
    if not isinstance(data, dict):
        return None
    if now().timestamp() - float(data.get("at", 0)) > PENDING_SECONDS:
        session.pop(PENDING, None)
        return None
    row = db().get(StaffRow, data.get("staff_id"))
    if row is None or not row.active or password_stamp(row) != data.get("stamp"):
        session.pop(PENDING, None)
        return None
    return row, data


def _where(username: str) -> dict[str, str]:
    """The account and where the attempt came from, as the password step counts them: wrong
    codes count towards the same sign-in limits (``schoolgate.storage.signin``)."""
    return {"username": username, "source": source_of_address(), "client_ip": _ip()}


def _issuer() -> str:
    settings, _ = signin_of(state().policy)
    return settings.issuer or (f"{school_name()} web filter" if school_name() else "schoolgate")


# -- the code, after the password -----------------------------------------------------------------


@bp.route("/two-factor", methods=["GET", "POST"])
def two_factor():
    found = _pending()
    if found is None:
        return redirect(url_for("staff.login", expired="1"), code=303)
    row, data = found
    if data.get("enrol"):
        return redirect(url_for("staff_signin.two_factor_setup"), code=303)
    if request.method == "GET":
        return render_template("portal/two_factor.html", error=None)
    where, limits, at = _where(row.username), state().login_limits, now()
    refusal = login_refusal(db(), **where, now=at, limits=limits)
    if refusal is not None:
        minutes = max(1, math.ceil((refusal.until - at).total_seconds() / 60))
        abort(429, description=f"{refusal.reason} Wait {minutes} minutes and sign in again.")
    code = request.form.get("code", "")[:40]
    recovery = request.form.get("recovery", "")[:40]
    try:
        if recovery.strip():
            ok = totp.use_recovery_code(db(), row, recovery)
            how = "a recovery code"
        else:
            ok = totp.verify(db(), row, code, secret_key=state().secret, at=now())
            how = "a two-factor code"
    except totp.TotpError as exc:
        return render_template("portal/two_factor.html", error=str(exc)), 409
    if not ok:
        record_login_failure(db(), **where, now=at, limits=limits)
        audit(db(), row.username, "staff.login_failed", "portal", f"wrong {how}; from {_ip()}")
        db().commit()
        return render_template(
            "portal/two_factor.html",
            error="That code is not right, or was used already. Check your authenticator app "
            "and try the new code.",
        ), 401
    clear_login_failures(db(), username=row.username, source=where["source"])
    _finish(row, f"with {how}")
    left = totp.recovery_codes_left(row)
    db().commit()
    if how == "a recovery code" and left < 3:
        return render_template(
            "portal/message.html",
            title="Signed in",
            message=f"You have {left} recovery code(s) left. Ask IT Support to set up "
            "two-factor sign-in again with your new phone.",
        )
    return redirect(safe_next(data.get("next"), url_for("staff.home")), code=303)


def _finish(row: StaffRow, how: str) -> None:
    sign_in(row)
    audit(db(), row.username, "staff.login", "portal", f"{how}; from {_ip()}")


# -- setting it up --------------------------------------------------------------------------------


@bp.route("/two-factor/setup", methods=["GET", "POST"])
def two_factor_setup():
    staff = current_staff()
    pending = None if staff is not None else _pending()
    if staff is None and pending is None:
        return redirect(
            url_for("staff.login", next=url_for("staff_signin.two_factor_setup")), code=303
        )
    row = staff if staff is not None else pending[0]
    if row.password_hash == "oidc":
        return render_template(
            "portal/message.html",
            title="Two-factor sign-in",
            message="You sign in through the school's identity provider, which asks for your "
            "second factor itself.",
        )
    if totp.is_enabled(row):
        return render_template(
            "portal/two_factor_setup.html",
            enrolment=None,
            enabled=True,
            left=totp.recovery_codes_left(row),
            error=None,
        )
    if request.method == "GET":
        enrolment = totp.begin_enrolment(row, secret_key=state().secret, issuer=_issuer())
        audit(db(), row.username, "staff.totp_setup", f"staff {row.username}", "started")
        db().commit()
        return render_template(
            "portal/two_factor_setup.html", enrolment=enrolment, enabled=False, left=0, error=None
        )
    try:
        codes = totp.confirm_enrolment(
            db(), row, request.form.get("code", "")[:40], secret_key=state().secret, at=now()
        )
    except totp.TotpError as exc:
        db().rollback()
        return render_template(
            "portal/two_factor_setup.html",
            enrolment=None,
            enabled=False,
            left=0,
            error=f"{exc}. Start again with a new code.",
        ), 400
    audit(db(), row.username, "staff.totp_on", f"staff {row.username}", "two-factor sign-in on")
    target = url_for("staff.home")
    if pending is not None:
        target = safe_next(pending[1].get("next"), target)
        _finish(row, "after setting up two-factor sign-in")
    db().commit()
    return render_template("portal/recovery_codes.html", codes=codes, next=target)


# -- the school's identity provider ---------------------------------------------------------------


@bp.app_context_processor
def _providers() -> dict[str, Any]:
    try:
        _, oidc = signin_of(state().policy)
    except Exception:  # noqa: BLE001 - no policy yet: no buttons
        return {"signin_providers": []}
    return {"signin_providers": [(p.name, p.label) for p in oidc.providers]}


def _client(name: str) -> OidcClient:
    _, oidc = signin_of(state().policy)
    provider = oidc.provider(name)
    if provider is None:
        abort(404, description="No such way to sign in.")
    redirect_uri = url_for("staff_signin.oidc_callback", name=name, _external=True)
    clients = current_app.extensions.setdefault("schoolgate_oidc", {})
    key = (name, redirect_uri)
    client = clients.get(key)
    if client is None or client.provider is not provider:
        client = clients[key] = OidcClient(provider, redirect_uri=redirect_uri)
    return client


def _refused(message: str, status: int = 401):
    return render_template(
        "portal/login.html", next=url_for("staff.home"), expired=False, error=message
    ), status


@bp.get("/oidc/<name>/start")
def oidc_start(name: str):
    client = _client(name)
    target = safe_next(request.args.get("next"), url_for("staff.home"))
    try:
        address, pending = client.start(target)
    except OidcError as exc:
        audit(db(), f"oidc:{name}", "staff.login_failed", "portal", exc.reason[:500])
        db().commit()
        return _refused(str(exc), 502)
    session[OIDC_PENDING] = pending.to_dict()
    return redirect(address, code=303)


@bp.get("/oidc/<name>/callback")
def oidc_callback(name: str):
    client = _client(name)
    saved = session.pop(OIDC_PENDING, None)
    if not isinstance(saved, dict):
        return _refused("This sign-in was not started here, or took too long: start again.", 400)
    try:
        pending = PendingLogin.from_dict(saved)
        claims = client.finish(request.args.to_dict(), pending)
        row = staff_for(db(), client.provider, claims, now=now())
    except (OidcError, KeyError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or f"bad sign-in state: {exc}"
        audit(db(), f"oidc:{name}", "staff.login_failed", "portal", f"{reason[:500]}; from {_ip()}")
        db().commit()
        message = str(exc) if isinstance(exc, OidcError) else "Start the sign-in again."
        return _refused(message)
    _finish(row, f"through {client.provider.label}")
    db().commit()
    return redirect(safe_next(pending.next, url_for("staff.home")), code=303)

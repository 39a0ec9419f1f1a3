"""The sign-in page for devices no identity source knows (``identity.sign_in``), sign-out, and
the list of who is bound to which address for IT Support.

* ``GET /sign-in``: the form (or "signed in as ..." with a sign-out button). The gateway sends
  a device that must sign in here (``?next=`` the address it asked for).
* ``POST /sign-in``: the password is checked (the directory, or the portal's own accounts) on
  this worker thread, the address the request came from is bound to the person for a session
  (:class:`~schoolgate.bindings.sessions.SignInService`), and the page waits until this
  process's copy of the bindings has it, so the next page is decided as the person.
* ``POST /sign-out``: ends the sign-in of the address the request came from.
* ``GET /it/sign-ins``: every binding in force (all sources) for IT Support and network
  managers, with the identity sources' counters; ``POST /it/sign-ins/<id>/end`` ends one.

The person is known by the address of the connection (``REMOTE_ADDR``, set by the gateway),
never by anything in the form.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, abort, flash, redirect, render_template, request, session, url_for

from schoolgate.bindings import live as live_identity
from schoolgate.bindings.directory import DirectoryError, DirectoryUnavailable
from schoolgate.bindings.names import normalise_address
from schoolgate.bindings.sessions import TooManyAttempts
from schoolgate.portal.context import now, signed_in_staff, staff_required, state

bp = Blueprint("signin", __name__)
it_signins_bp = Blueprint("it_signins", __name__, url_prefix="/it")

IT = ("it_support", "network_manager")
TOKEN_KEY = "sign_in_token"


def _address() -> str:
    try:
        return normalise_address(request.remote_addr or "")
    except ValueError:
        abort(400, description="The address of this device could not be read.")


def _next_url(value: str | None) -> str | None:
    """Where the device was going: an http(s) URL, shown as a link (never redirected to)."""
    if not value or len(value) > 2000:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return value


def _service():
    live = live_identity.current()
    return live, (live.sign_in if live is not None else None)


def _page(status: int = 200, **values):
    live, service = _service()
    address = request.remote_addr or ""
    current = None
    if service is not None and "current" not in values:
        try:
            current = service.current(address)
        except Exception:  # noqa: BLE001 - the database: say nothing about the current state
            current = None
    values.setdefault("current", current)
    values.setdefault("error", None)
    values.setdefault("next_url", _next_url(request.values.get("next")))
    return render_template(
        "portal/signin.html", available=service is not None, address=address, **values
    ), status


@bp.get("/sign-in")
def sign_in_form():
    return _page()


@bp.post("/sign-in")
def sign_in():
    live, service = _service()
    if service is None:
        return _page(404)
    address = _address()
    username = request.form.get("username", "").strip()[:200]
    password = request.form.get("password", "")[:1000]
    try:
        signed = service.sign_in(address, username, password)
    except TooManyAttempts as exc:
        return _page(429, error=exc.message, current=None)
    except DirectoryUnavailable as exc:
        return _page(503, error=exc.message, current=None)
    except DirectoryError as exc:
        return _page(401, error=exc.message, current=None)
    session[TOKEN_KEY] = signed.session_id
    if live is not None:
        wanted = signed.binding.id
        live.wait_until(address, lambda b: b is not None and b.id == wanted)
    return _page(200, current=signed.binding, signed_in=True)


@bp.post("/sign-out")
def sign_out():
    live, service = _service()
    if service is None:
        return _page(404)
    address = _address()
    ended = service.sign_out(address, by="sign-in page")
    session.pop(TOKEN_KEY, None)
    if live is not None and ended:
        gone = {b.id for b in ended}
        live.wait_until(address, lambda b: b is None or b.id not in gone)
    return _page(200, current=None, signed_out=bool(ended))


@it_signins_bp.get("/sign-ins")
@staff_required(*IT, "slt")
def sign_ins():
    from schoolgate.storage import bindings as store

    at = now()
    with state().sessions() as db:
        bound = store.in_force(db, at)
    live = live_identity.current()
    metrics = live.metrics() if live is not None else {}
    sources = live.sources.sources if live is not None else ()
    return render_template("portal/sign_ins.html", bindings=bound, metrics=metrics, sources=sources)


@it_signins_bp.post("/sign-ins/<int:binding_id>/end")
@staff_required(*IT)
def end_binding(binding_id: int):
    from schoolgate.storage import bindings as store

    staff = signed_in_staff()
    assert staff is not None
    at = now()
    ended = store.in_transaction(
        state().sessions,
        lambda db: store.end_bindings(
            db,
            binding_id=binding_id,
            reason=f"ended by {staff.username} (IT Support)",
            actor=staff.username,
            now=at,
        ),
    )
    live = live_identity.current()
    if live is not None and live.cache is not None:
        live.cache.wake()
    flash(f"Ended: {ended[0].describe()}." if ended else "That binding had already ended.")
    return redirect(url_for("it_signins.sign_ins"), code=303)

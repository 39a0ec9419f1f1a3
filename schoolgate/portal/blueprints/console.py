"""The console, for the network manager and IT Support (``/console/...``): the dashboard, the
live event view, searchable history, the ``explain`` tester and the reports (the reports also
for SLT).

**The live view and the proxy.** Through the gateway (``http://<portal host>/console/live``)
mitmproxy serves the portal with its WSGI adapter, which buffers every answer until it is
complete and runs the portal's requests one at a time on a single thread: a server-sent event
stream there would never reach the browser, and a held request (long-polling) would stall every
pupil's request form behind it. So the live view **streams only on the portal's own port**
(``schoolgate run --portal-port``, a server of its own), with server-sent events
(``/console/live/stream``; each stream ends after a minute and the browser resumes it from the
last event it got). Through the proxy the same page **polls** ``/console/live/poll`` every two
seconds, each answer immediate. The page has one small script of its own (no library, no CDN),
allowed by its Content Security Policy (``script-src 'self'``) on this page only.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import date
from pathlib import Path

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    render_template,
    request,
    send_file,
    stream_with_context,
    url_for,
)
from sqlalchemy.exc import SQLAlchemyError

from schoolgate.core import words
from schoolgate.core.config import identity_sources_of
from schoolgate.portal.context import db, now, staff_required, state
from schoolgate.portal.services import console as console_service
from schoolgate.portal.services import events as events_service
from schoolgate.portal.services import reports as reports_service
from schoolgate.portal.services.explain import FIELDS, ExplainError, explain
from schoolgate.reports.render import bar_chart, column_chart

IT = ("it_support", "network_manager")
REPORTS = (*IT, "slt")
STATIC = Path(__file__).resolve().parent.parent / "static" / "console"
STREAM_SECONDS = 55.0  # a stream ends after this; the browser resumes from the last event
STREAM_POLL = 1.0  # seconds between reads of the log while streaming
KEEPALIVE = 15.0
POLL_EVERY_MS = 2000
LIVE_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    static_folder=str(STATIC),
    static_url_path="/static",
)

_slots_lock = threading.Lock()


def _stream_slots() -> threading.BoundedSemaphore:
    """This app's open live streams (``live_streams`` of :func:`create_app`)."""
    with _slots_lock:
        return current_app.extensions.setdefault(
            "schoolgate_live_streams", threading.BoundedSemaphore(state().live_streams)
        )


def _tz():
    return console_service.school_tz(state().policy)


def _views(rows, at) -> list[dict]:
    """Events as the console shows them: words in the school's zone and language."""
    tz, wording = _tz(), words.wording_of(state().policy)
    return [events_service.event_view(r, now=at, tz=tz, wording=wording) for r in rows]


# -- the dashboard -----------------------------------------------------------------------------


@bp.get("/")
@staff_required(*IT)
def dashboard():
    policy = state().policy
    at = now()
    data = console_service.dashboard(db(), policy, at)
    chart = console_service.per_minute_chart(data["minutes"], data["tz"])
    last = data["minutes"][-1] if data["minutes"] else (0, 0, 0)
    return render_template(
        "portal/console/dashboard.html",
        d=data,
        recent=_views(data["recent_blocks"], at),
        last_minute=last,
        requests_chart=column_chart(
            chart["requests"], title="Requests per minute, last hour", label_every=10
        ),
        blocks_chart=column_chart(
            chart["blocks"], title="Blocks per minute, last hour", label_every=10
        ),
        categories_chart=bar_chart(
            [(words.category_words(c), n) for c, n in data["top_categories"]],
            title="Blocks by category today",
        ),
        ago=console_service.ago,
    )


# -- history -------------------------------------------------------------------------------------


def _filter(args):
    policy = state().policy
    try:
        return events_service.parse_filter(args, _tz(), categories=list(policy.categories),
                                           now=now()), None  # fmt: skip
    except events_service.FilterError as exc:
        return events_service.EventFilter(), str(exc)


def _before(text: str | None) -> int | None:
    try:
        value = int(text or "")
    except ValueError:
        return None
    return value if value > 0 else None


@bp.get("/history")
@staff_required(*IT)
def history():
    where, error = _filter(request.args)
    page = events_service.Page(rows=[], older=None, newer=None)
    if error is None:
        page = events_service.history(db(), where, before=_before(request.args.get("before")))
    at = now()
    args = where.args()
    if where.since:
        args["since"] = request.args.get("since", "")
    if where.until:
        args["until"] = request.args.get("until", "")
    return render_template(
        "portal/console/history.html",
        error=error,
        form=request.args,
        rows=_views(page.rows, at),
        older_url=url_for("console.history", **args, before=page.older) if page.older else None,
        newer_url=(
            url_for("console.history", **args, **({"before": page.newer} if page.newer else {}))
            if page.newer is not None
            else None
        ),
        categories=list(state().policy.categories),
        kinds=events_service.KINDS,
    )


# -- who is on which address ---------------------------------------------------------------------


@bp.get("/who")
@staff_required(*IT)
def who():
    """The identity sources' bindings (``schoolgate who``), read only: ending one is on the
    sign-ins page, which says what it does."""
    from schoolgate.storage.bindings import lookup

    target = request.args.get("q", "").strip()[:200]
    history = request.args.get("history") == "1"
    at = now()
    bindings = lookup(db(), target or None, history=history, now=at)
    return render_template(
        "portal/console/who.html",
        q=target,
        history=history,
        bindings=bindings,
        at=at,
        sources=identity_sources_of(state().policy).sources,
    )


# -- the live view ---------------------------------------------------------------------------------


@bp.get("/live")
@staff_required(*IT)
def live():
    where, error = _filter(request.args)
    at = now()
    rows = []
    if error is None:
        rows = events_service.history(db(), where, size=25).rows
    cursor = events_service.latest_id(db())
    args = where.args()
    page = render_template(
        "portal/console/live.html",
        error=error,
        form=request.args,
        rows=_views(rows, at),
        cursor=cursor,
        stream_url=url_for("console.live_stream", **args) if state().admin else "",
        poll_url=url_for("console.live_poll", **args),
        poll_every=POLL_EVERY_MS,
        categories=list(state().policy.categories),
        kinds=events_service.KINDS,
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = LIVE_CSP
    return response


@bp.get("/live/poll")
@staff_required(*IT)
def live_poll():
    where, error = _filter(request.args)
    if error is not None:
        return Response(json.dumps({"error": error}), status=400, mimetype="application/json")
    after = _before(request.args.get("after")) or 0
    start = _before(request.args.get("start")) or 0
    at = now()
    rows = events_service.recent_for_poll(db(), where, after, at, start=min(start, after))
    body = {"events": _views(rows, at)}
    return Response(json.dumps(body), mimetype="application/json")


@bp.get("/live/stream")
@staff_required(*IT)
def live_stream():
    """Server-sent events (the portal's own port only: the proxy buffers answers)."""
    st = state()
    if not st.admin:
        abort(
            404,
            description="The live stream is served on the portal's own port only; through "
            "the proxy the live view polls.",
        )
    where, error = _filter(request.args)
    if error is not None:
        abort(400, description=error)
    slots = _stream_slots()
    if not slots.acquire(blocking=False):
        return Response(
            "retry: 5000\n\n", status=503, mimetype="text/event-stream"
        )  # the browser tries again in 5 s
    resume = _before(request.headers.get("Last-Event-ID") or request.args.get("after"))
    sessions, tz, clock = st.sessions, _tz(), st.clock
    wording = words.wording_of(st.policy)

    def stream():
        try:
            with sessions() as session:
                cursor = events_service.LiveCursor.start(session, resume)
            yield "retry: 1000\n\n"
            started = last_sent = time.monotonic()
            while time.monotonic() - started < STREAM_SECONDS:
                try:
                    with sessions() as session:
                        rows = cursor.take(session, where.conditions())
                        at = clock()
                        views = [
                            events_service.event_view(r, now=at, tz=tz, wording=wording)
                            for r in rows
                        ]
                except SQLAlchemyError:
                    views = []  # the database is busy: try again on the next round
                for view in views:
                    yield f"id: {view['id']}\nevent: decision\ndata: {json.dumps(view)}\n\n"
                    last_sent = time.monotonic()
                if time.monotonic() - last_sent > KEEPALIVE:
                    yield ": still here\n\n"
                    last_sent = time.monotonic()
                time.sleep(STREAM_POLL)
        finally:
            slots.release()

    response = Response(stream_with_context(stream()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response


# -- explain --------------------------------------------------------------------------------------


@bp.get("/explain")
@staff_required(*IT)
def explain_form():
    policy = state().policy
    result, error = None, None
    if request.args.get("url"):
        try:
            result = explain(db(), policy, request.args, now=now())
        except ExplainError as exc:
            error = str(exc)
    return render_template(
        "portal/console/explain.html",
        form={name: request.args.get(name, "") for name in FIELDS},
        host_only=bool(request.args.get("host_only")),
        result=result,
        result_json=json.dumps(result.json, indent=2, default=str) if result else "",
        error=error,
        roles=sorted(policy.roles) + sorted(policy.role_aliases),
        sites=policy.sites,
    )


# -- reports --------------------------------------------------------------------------------------


@bp.get("/reports")
@staff_required(*REPORTS)
def reports():
    policy = state().policy
    return render_template(
        "portal/console/reports.html",
        files=reports_service.report_files(policy, _tz()),
        folder=reports_service.folder(policy),
        today=now().astimezone(_tz()).date().isoformat(),
    )


@bp.get("/reports/file/<name>")
@staff_required(*REPORTS)
def report_file(name: str):
    path = reports_service.report_path(state().policy, name)
    if path is None:
        abort(404, description="No such report.")
    download = request.args.get("download") == "1" or path.suffix == ".csv"
    mimetype = "text/csv" if path.suffix == ".csv" else "text/html"
    return send_file(path, mimetype=mimetype, as_attachment=download, download_name=path.name)


@bp.get("/reports/build")
@staff_required(*REPORTS)
def report_build():
    kind = request.args.get("period", "day")
    if kind not in ("day", "week", "term"):
        abort(400, description="Choose a day, a week or a term.")
    try:
        on = date.fromisoformat(
            request.args.get("date") or now().astimezone(_tz()).date().isoformat()
        )
    except ValueError:
        abort(400, description="Give the date as 2026-12-09.")
    html, csv_text, label = reports_service.build(db(), state().policy, kind, on, now=now())
    if request.args.get("format") == "csv":
        name = f"report-{kind}-{on.isoformat()}.csv"
        response = Response(csv_text, mimetype="text/csv")
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
    return Response(html, mimetype="text/html")

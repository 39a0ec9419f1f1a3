"""Safeguarding monitoring in the running gateway: searches and page titles become events, and
risk terms reach the designated safeguarding lead (DSL).

:class:`MonitoringAddon` is placed **after** :class:`~schoolgate.gateway.enforce.Enforcement`
(it reads whether a request was blocked) and follows the policy (``monitoring`` section, the
risk-term library it names, the ``alerts`` batching) through the policy holder.

* ``request``: a request to a host that is no search engine costs one cached dictionary look-up
  (:func:`~schoolgate.monitoring.searches.engine_of`). For a request to a search engine the
  hook only takes the facts (when, who, whether it was blocked, the request's view and a
  POSTed search's body) and queues them: the grading thread recognises the search, grades
  it with the library's :class:`~schoolgate.monitoring.terms.Matcher` and records it as an
  event of kind ``search`` (every role, allowed or blocked); the same person's same search
  again within ``dedupe_minutes`` (a further page, another tab, a reload) is recorded once.
* ``responseheaders``: an allowed ``200`` HTML answer to a GET is **streamed** through a tap that
  hands every chunk on unchanged and keeps a copy of the first ``title_bytes`` as sent: the
  page is never held back (nor kept in memory), which waiting for mitmproxy's buffered
  ``response`` would do. Those bytes go to the grading thread, which reads the titles
  (:class:`~schoolgate.monitoring.titles.TitleSniffer`); a title that matches is an event of
  kind ``page_risk``. Page requests from browsers ask for ``gzip, deflate`` only (Brotli and
  zstd cannot be read in bounded memory).
* **Off the event loop**: recognising, grading and recording run on one grading thread, in the
  order the requests came, so the event loop pays a few microseconds per search or page. Its
  queue holds :data:`QUEUE_SIZE` requests; when it is full (the thread has fallen that far
  behind) the hook grades and records the request itself, on the event loop: slower for that
  moment, but no search goes unrecorded or ungraded and a severity-3 alert is never lost.
* Monitoring is not filtering: an exception in capture or matching never blocks or breaks the
  request (which has gone on its way by then). It is logged at most once a minute, and the
  search is still recorded, with severity ``None`` (unknown) and the error.
* Matches go to :class:`~schoolgate.jobs.dsl_alerts.DslAlerts` through an in-memory queue; a
  background thread queues what is due in the portal's outbox (``audience="dsl"``), kept and
  retried while the database cannot be reached.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.net.http import url as urls

from schoolgate.core.hosts import normalize_host
from schoolgate.core.model import Identity
from schoolgate.core.monitoring_settings import MonitoringSettings, monitoring_of
from schoolgate.core.policy import Policy
from schoolgate.core.urlpaths import strip_url
from schoolgate.gateway.alerts_addon import OutboxQueue
from schoolgate.gateway.background import Periodic, Serial
from schoolgate.gateway.fediverse_addon import reads_body
from schoolgate.gateway.flowinfo import RequestView, header_value, request_view, user_of
from schoolgate.gateway.flowmark import answered, flow_mark
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.recorder import Recorder
from schoolgate.jobs.dsl_alerts import (
    MAX_AFTER,
    DslAlert,
    DslAlerts,
    RecentSearches,
    RiskFact,
    Seen,
    render,
)
from schoolgate.monitoring.compiled import load_compiled
from schoolgate.monitoring.searches import Search, SearchDeduper, capture, engine_of, needs_body
from schoolgate.monitoring.terms import Matcher, loops_in_c
from schoolgate.monitoring.titles import TitleSniffer, is_html, readable_encoding
from schoolgate.storage.eventlog import new_ref
from schoolgate.storage.records import MonitoringKind, monitoring_event

log = logging.getLogger(__name__)

ERROR_LOG_EVERY = 60.0  # seconds between logged matching failures
UNGRADED = "not graded: matching failed"
MAX_OPEN = 10_000  # people with an alert still gathering what they searched next
QUEUE_SIZE = 10_000  # requests waiting for the grading thread before the hook grades itself


@dataclass(slots=True)
class Taken:
    """What the hook took from a request on the event loop: all that grading reads later
    (the flow itself goes on changing, and may be gone, by then)."""

    at: datetime
    view: RequestView
    host: str
    user: str | None
    client_ip: str | None
    policy: Policy | None
    blocked: bool
    body: bytes | None = None  # a POSTed search
    content_type: str | None = None
    page: bytes | None = None  # a page's first bytes as sent (None: a search)
    content_encoding: str | None = None  # a page's


class MonitoringAddon:
    name = "schoolgate_monitoring"

    def __init__(
        self,
        holder: PolicyHolder,
        recorder: Recorder,
        *,
        clock: Callable[[], datetime] | None = None,
        interval: float = 5.0,
    ) -> None:
        self.holder = holder
        self.recorder = recorder
        self.clock = clock or (lambda: datetime.now(UTC))
        self.settings = MonitoringSettings()
        self.matcher: Matcher | None = None
        self._matcher_key: tuple | None = None
        self._searches = False  # read by every request: one attribute
        self._titles = False
        self._dedupe = SearchDeduper(300.0)
        self.recent = RecentSearches()
        self._open: dict[str, list[RiskFact]] = {}  # person -> alerts still gathering "after"
        self.alerts = DslAlerts()
        self._inbox: deque[RiskFact] = deque()
        self._outgoing: list[DslAlert] = []
        self._lock = threading.Lock()
        self._worker = Periodic("schoolgate-dsl-alerts", self.pump, first=True)
        self._interval = interval
        self._outbox = OutboxQueue(
            holder, recorder, audience="dsl", what="safeguarding alert", clock=lambda: self.clock()
        )
        self._last_error = -ERROR_LOG_EVERY
        self.grader = Serial("schoolgate-monitoring", self._graded, size=QUEUE_SIZE)
        holder.subscribe(self)

    # -- lifecycle ------------------------------------------------------------------------------
    def running(self) -> None:
        if not self._worker.started:
            self._worker.start(self._interval)

    def done(self) -> None:
        self.grader.stop(timeout=10)
        self._worker.stop(timeout=10)
        self.pump(final=True)

    def flush(self, timeout: float = 10) -> bool:
        """Wait until every request seen so far is graded and recorded."""
        return self.grader.flush(timeout)

    def policy_changed(self, old: Policy | None, new: Policy) -> None:
        """Follow the ``monitoring`` section; (re)load the library only when it changed. A
        library that does not load keeps the previous one (or none: searches are still
        recorded, ungraded)."""
        settings = monitoring_of(new)
        self.settings = settings
        if settings.enabled:
            key = _library_key(settings)
            if key != self._matcher_key:
                try:
                    roots = [Path(p) for p in settings.library] or None
                    self.matcher = load_compiled(
                        self.holder.data_dir, roots, languages=settings.languages
                    )
                    self._matcher_key = key
                    if not loops_in_c():
                        log.warning(
                            "schoolgate: the matcher's C loops are not built (the package was "
                            "installed without a C compiler): searches are graded by the same "
                            "loops in Python, more slowly; install gcc and reinstall"
                        )
                except Exception:  # noqa: BLE001 - monitoring must never stop the gateway
                    log.exception("schoolgate: the risk-term library could not be loaded")
            if self.matcher is not None:
                self.matcher.use_models(settings.second_opinion, settings.reader)
        self._dedupe.window = settings.dedupe_minutes * 60.0
        try:
            from schoolgate.jobs.alerts import alerts_of

            batch = alerts_of(new).batch_minutes
        except Exception:  # noqa: BLE001 - validated at load
            batch = 15
        with self._lock:
            self.alerts.configure(
                settings.immediate_severity,
                settings.batched_severity,
                settings.context_minutes,
                batch,
            )
        self._searches = settings.enabled and settings.searches
        self._titles = settings.enabled and settings.titles

    # -- searches -------------------------------------------------------------------------------
    def request(self, flow: http.HTTPFlow) -> None:
        try:
            self._request(flow)
        except Exception:  # noqa: BLE001 - monitoring is not filtering: never refuse a request
            self._log_failure("a search could not be recorded")

    def _request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        # Enforcement read this request's view already: here it is a cached look-up.
        view = request_view(req)
        if self._titles:
            headers = view.headers
            dest = headers.get("sec-fetch-dest")
            if dest == "document" or (dest is None and "text/html" in headers.get("accept", "")):
                encodings = headers.get("accept-encoding", "")
                if "br" in encodings or "zstd" in encodings:
                    req.headers["accept-encoding"] = "gzip, deflate"
        if not self._searches:
            return
        host = view.named_host or normalize_host(view.host)
        if engine_of(host) is None:  # the one check every other request pays
            return
        taken = self._take(flow, view, host)
        if needs_body(host, view.path, view.method):  # a search POSTed as a form or JSON
            taken.body, taken.content_type = req.raw_content, req.headers.get("content-type")
        self._hand_on(taken)

    def _take(self, flow: http.HTTPFlow, view: RequestView, host: str) -> Taken:
        """The facts of a request the grading thread reads: cheap, on the event loop."""
        peer = flow.client_conn.peername
        mark = flow_mark(flow.metadata)
        return Taken(
            self.clock(),
            view,
            host,
            user_of(flow),
            str(peer[0]) if peer else None,
            self.holder.policy,
            mark is not None and mark.blocked,
        )

    def _hand_on(self, taken: Taken) -> None:
        if not self.grader.offer(taken):
            # The grading thread is QUEUE_SIZE requests behind: grade this one here rather
            # than record it ungraded (a severity-3 search must still reach the DSL).
            with self.grader.lock:
                self._graded(taken)

    def _graded(self, taken: Taken) -> None:
        """On the grading thread: a search or a page's titles, graded and recorded."""
        try:
            if taken.page is not None:
                self._title_read(taken)
            else:
                self._search_taken(taken)
        except Exception:  # noqa: BLE001 - the request went on long ago; keep grading others
            self._log_failure("a search or page could not be recorded")

    def _search_taken(self, taken: Taken) -> None:
        view = taken.view
        search = capture(taken.host, view.path, view.method, taken.body, taken.content_type)
        if search is not None:
            self._searched(taken, search)

    def _searched(self, taken: Taken, search: Search) -> None:
        identity, user, client_ip = self._who(taken)
        person = _person(identity, user, client_ip)
        if self._dedupe.window and not self._dedupe.first_time(person, search):
            return
        at = taken.at
        host = taken.host
        severity, theme, rule, why, error = self._grade(search.term)
        detail: dict[str, Any] = {
            "engine": search.engine,
            "term": search.term,
            "severity": severity,
            "theme": theme,
            "rule": rule,
        }
        if why:
            detail["why"] = why
        extra = search.to_json()
        for name in ("vertical", "suggestion", "truncated", "repeated", "malformed", "scope"):
            if name in extra:
                detail[name] = extra[name]
        if error:
            detail["error"] = error
        ref = new_ref()
        self._record(
            taken,
            "search",
            ref,
            at,
            identity,
            user,
            client_ip,
            host,
            detail,
            search_term=search.term,
            rule=rule if severity else (UNGRADED if severity is None else None),
            reason=f"searched {search.engine} for {search.term!r}",
        )
        seen = Seen(at, search.engine, search.term, severity)
        before = tuple(self.recent.since(person, at - self.alerts.context))
        self._follow(person, seen)
        self.recent.add(person, seen)
        if self.alerts.level(severity) is not None:
            fact = RiskFact(
                "search",
                at,
                ref,
                search.term,
                severity,
                theme,
                rule,
                person,
                **_fact_who(identity, user, client_ip),
                host=normalize_host(host),
                engine=search.engine,
                before=before,
                why=why,
            )
            self._offer(person, fact)

    def _follow(self, person: str, seen: Seen) -> None:
        """A search of someone with alerts still gathering what came after: add it to them."""
        waiting = self._open.get(person)
        if not waiting:
            return
        still = [f for f in waiting if seen.at < f.at + self.alerts.context]
        for fact in still:
            if len(fact.after) < MAX_AFTER:
                fact.after.append(seen)
        if still:
            self._open[person] = still
        else:
            del self._open[person]

    # -- page titles ----------------------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if not self._titles:
            return
        response = flow.response
        if response is None or response.data.status_code != 200:
            return
        method = flow.request.data.method  # (Request.method decodes it on every access)
        if method != b"GET" and method.upper() != b"GET":
            return
        if answered(flow.metadata):  # a block, or the gateway's own answer
            return
        headers = response.headers
        content_type = header_value(headers, b"content-type")
        if not is_html(content_type):
            return
        try:
            if reads_body(flow.request.path, content_type or "", headers.get("server", "")):
                return  # FediverseWatch reads this body in its response hook: keep it whole
            encoding = headers.get("content-encoding")
            if not readable_encoding(encoding):
                return  # an encoding it cannot read in bounds
            view = request_view(flow.request)
            taken = self._take(flow, view, view.named_host or normalize_host(view.host))
            taken.content_type, taken.content_encoding = content_type, encoding
            response.stream = _Tap(self, taken, response.stream, self.settings.title_bytes)
        except Exception:  # noqa: BLE001 - never touch the page
            self._log_failure("a page title could not be read")

    def page_read(self, taken: Taken) -> None:
        """The tap has the page's first bytes (or the page ended): on to the grading thread."""
        self._hand_on(taken)

    def _title_read(self, taken: Taken) -> None:
        """On the grading thread: the titles read from the page's first bytes, graded, and
        the riskiest recorded."""
        matcher = self.matcher
        if matcher is None or taken.page is None:
            return
        limit = self.settings.title_bytes
        sniffer = TitleSniffer(taken.content_type, taken.content_encoding, limit)
        sniffer.feed(taken.page)
        taken.page = b""  # read: let it go
        best = None
        for text in sniffer.result().texts:
            found = matcher.assess(text)
            if found.severity and (best is None or found.severity > best[1].severity):
                best = (text, found)
        if best is None:
            return
        title, assessment = best
        top = assessment.top
        assert top is not None
        identity, user, client_ip = self._who(taken)
        person = _person(identity, user, client_ip)
        host = taken.host
        if self._dedupe.window and not self._dedupe.first_time(
            person, Search(engine=f"title {host}", term=title)
        ):
            return
        at = taken.at
        ref = new_ref()
        detail = {"title": title, "severity": top.severity, "theme": top.theme, "rule": top.term}
        self._record(
            taken,
            "page_risk",
            ref,
            at,
            identity,
            user,
            client_ip,
            host,
            detail,
            search_term=None,
            rule=top.term,
            reason=f"opened a page titled {title!r}",
        )
        self._follow(person, Seen(at, f"page on {host}", title, top.severity))
        if self.alerts.level(top.severity) is not None:
            before = tuple(self.recent.since(person, at - self.alerts.context))
            fact = RiskFact(
                "page_risk",
                at,
                ref,
                title,
                top.severity,
                top.theme,
                top.term,
                person,
                **_fact_who(identity, user, client_ip),
                host=host,
                before=before,
            )
            self._offer(person, fact)

    # -- shared -----------------------------------------------------------------------------
    @staticmethod
    def _who(taken: Taken) -> tuple[Identity | None, str | None, str | None]:
        user, client_ip, policy = taken.user, taken.client_ip, taken.policy
        identity = policy.identify(client_ip, user) if policy is not None else None
        return identity, user, client_ip

    def _grade(
        self, text: str
    ) -> tuple[int | None, str | None, str | None, str | None, str | None]:
        """(severity, theme, rule, why, error): (0, None, None, None, None) when nothing
        matched; ``why`` the top match's note (what the term or rule stands for, or how the
        second opinion reached its grade); severity None when matching failed (logged at most
        once a minute)."""
        matcher = self.matcher
        if matcher is None:
            return None, None, None, None, "no risk-term library loaded"
        try:
            found = matcher.assess(text, search=True)
        except Exception as exc:  # noqa: BLE001 - the search is recorded, ungraded
            self._log_failure("a search could not be graded")
            return None, None, None, None, f"{type(exc).__name__}: {exc}"
        top = found.top
        if top is None:
            return 0, None, None, None, None
        return top.severity, top.theme, top.term, top.note or None, None

    def _record(
        self,
        taken: Taken,
        kind: MonitoringKind,
        ref: str,
        at: datetime,
        identity: Identity | None,
        user: str | None,
        client_ip: str | None,
        host: str,
        detail: dict[str, Any],
        *,
        search_term: str | None,
        rule: str | None,
        reason: str,
    ) -> None:
        policy = taken.policy
        keep_paths = policy.settings.keep_paths if policy is not None else True
        blocked = taken.blocked
        view = taken.view
        if identity is not None and (identity.rule or identity.source != "default"):
            detail["identity"] = f"{identity.source}: {identity.rule}"
        name = (identity.user if identity is not None else None) or user
        try:
            url = strip_url(_pretty_url(view), keep_paths)
        except ValueError:
            url = None
        self.recorder.record(
            monitoring_event(
                kind=kind,
                ref=ref,
                at=at,
                blocked=blocked,
                client_ip=client_ip,
                device=identity.device if identity is not None else None,
                user=name.lower() if name else None,
                role=identity.role if identity is not None else None,
                group=identity.group if identity is not None else None,
                site=(identity.site or None) if identity is not None else None,
                method=view.method,
                scheme=view.scheme,
                host=normalize_host(host),
                url=url,
                search_term=search_term,
                rule=rule,
                reason=reason,
                detail=detail,
            )
        )

    def _offer(self, person: str, fact: RiskFact) -> None:
        if self.alerts.level(fact.severity) == "immediate":
            if self._open.get(person):
                # An alert about this person went at once within the last few minutes: this
                # match is in its follow-up (with its severity), not an e-mail of its own, so
                # a pupil's burst of searches is one alert and one follow-up.
                return
            if len(self._open) >= MAX_OPEN:
                self._forget_closed(fact.at)
            self._open[person] = [fact]
        self._inbox.append(fact)
        self._worker.wake()

    def _forget_closed(self, now: datetime) -> None:
        context = self.alerts.context
        for person in [p for p, facts in self._open.items() if now >= facts[-1].at + context]:
            del self._open[person]

    def _log_failure(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_error >= ERROR_LOG_EVERY:
            self._last_error = now
            log.exception("schoolgate: monitoring: %s (logged once a minute)", what)

    # -- the background thread ----------------------------------------------------------------
    def pump(self, now: datetime | None = None, *, final: bool = False) -> bool:
        """Queue what is due in the outbox; False if some could not be queued yet (kept)."""
        with self._lock:
            while self._inbox:
                self.alerts.offer(self._inbox.popleft())
            self._outgoing.extend(self.alerts.due(now or self.clock(), final=final))
            return self._send()

    def _send(self) -> bool:
        minutes = self.settings.context_minutes
        return self._outbox.queue(
            self._outgoing,
            lambda alert, tz, school: render(alert, tz=tz, school=school, context_minutes=minutes),
            event=lambda alert: f"monitoring.{alert.kind}",
        )


class _Tap:
    """``response.stream``: every chunk handed on unchanged; a copy kept of the first bytes
    the title reader reads (as sent: it decompresses them on the grading thread), then handed
    on to be graded."""

    __slots__ = ("addon", "taken", "then", "parts", "size", "limit")

    def __init__(self, addon: MonitoringAddon, taken: Taken, then: Any, limit: int) -> None:
        self.addon = addon
        self.taken = taken
        self.then = then if callable(then) else None
        self.parts: list[bytes] | None = []
        self.size = 0
        self.limit = limit

    def __call__(self, chunk: bytes) -> bytes | Any:
        parts = self.parts
        if parts is not None:
            try:
                if chunk:
                    parts.append(bytes(chunk))
                    self.size += len(chunk)
                if not chunk or self.size >= self.limit:
                    self.parts = None
                    self.taken.page = b"".join(parts)[: self.limit]
                    self.addon.page_read(self.taken)
            except Exception:  # noqa: BLE001 - never touch the page
                self.parts = None
                self.addon._log_failure("a page title could not be graded")
        return self.then(chunk) if self.then is not None else chunk


def _pretty_url(view: RequestView) -> str:
    """The request's URL with the host it named, as mitmproxy's ``Request.pretty_url``."""
    if view.host_header:
        host, port = urls.parse_authority(view.host_header, check=False)
        port = port or urls.default_port(view.scheme) or 443
        return urls.unparse(view.scheme, host, port, view.path)
    return urls.unparse(view.scheme, view.host, view.port, view.path)


def _person(identity: Identity | None, user: str | None, client_ip: str | None) -> str:
    name = (identity.user if identity is not None else None) or user
    return name.lower() if name else f"device {client_ip or 'unknown'}"


def _fact_who(identity: Identity | None, user: str | None, client_ip: str | None) -> dict:
    name = (identity.user if identity is not None else None) or user
    return {
        "user": name.lower() if name else None,
        "client_ip": client_ip,
        "role": identity.role if identity is not None else None,
        "group": identity.group if identity is not None else None,
        "device": identity.device if identity is not None else None,
    }


def _library_key(settings: MonitoringSettings) -> tuple:
    """What the loaded library depends on: its folders, languages and files' times."""
    stamps: list[tuple[str, int]] = []
    from schoolgate.monitoring.library import default_root

    for root in [Path(p) for p in settings.library] or [default_root()]:
        try:
            stamps += [(str(p), p.stat().st_mtime_ns) for p in sorted(root.glob("*/*.yaml"))]
        except OSError:
            stamps.append((str(root), -1))
    return (settings.library, settings.languages, tuple(stamps))


__all__ = ["MonitoringAddon"]

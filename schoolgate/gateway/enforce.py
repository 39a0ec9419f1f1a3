"""Enforcement: every CONNECT, TLS ClientHello, raw tunnel and HTTP request is decided.

What it decides on is what the parts before it found: the destination check
(:mod:`~schoolgate.gateway.destinations`: where the connection really goes) and the
circumvention guard's findings (:mod:`~schoolgate.gateway.circumvention_addon`: which of them
block a filtered role, and which sites are shown through a wrapper).

* ``http_connect``: a malformed target gets 400. Otherwise decided on the host: a blocked host
  that will not be intercepted is refused at the CONNECT (403), before any upstream contact; one
  that will be intercepted goes through (``connection_strategy=lazy``: still no upstream
  contact) and its decrypted requests get the block page.
* ``tls_clienthello``: connections that are not intercepted are passed through only if their
  destination is verified and their SNI is allowed (a client may CONNECT to an allowed host and
  name another; in transparent mode the SNI is all there is); others are refused.
* ``tcp_start``: a tunnel that carries neither TLS nor HTTP is refused for a filtered role,
  unless its destination is in ``circumvention.allowed_raw_destinations``.
* ``request``: a Host header that is not one host gets 400; an unverified destination, a
  blocking finding (DoH, DoT, a web proxy, Tor) and a wrapped site that would be blocked get
  the block page; then the full decision (user, path, method), the block page, safe search.

Anything that goes wrong blocks, with a page saying the filter failed and an event: never an
open gateway. :meth:`Enforcement.fail_closed` does the same for a failure in any other part.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from mitmproxy import ctx, http, tcp, tls

import schoolgate.core.safesearch as safesearch
from schoolgate.core.destination import Destination, Handling, Verdict, raw_allowed
from schoolgate.core.model import Action, Decision, Identity, RequestFacts
from schoolgate.core.words import wording_of
from schoolgate.gateway.blockpage import block_response_parts, sign_ref
from schoolgate.gateway.destinations import DESTINATION, destination_of
from schoolgate.gateway.exception_cache import ExceptionCache
from schoolgate.gateway.findings import blocking_findings, wrapped_findings
from schoolgate.gateway.flowinfo import (
    remember_tunnel_user,
    request_view,
    target_host,
    tunnel_user,
    user_of,
    view_hosts,
)
from schoolgate.gateway.flowmark import BLOCK, FlowMark, marked, put_hello_mark, put_mark
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.recorder import Recorder
from schoolgate.storage.eventlog import decision_event, new_ref, search_term_of

log = logging.getLogger(__name__)

FAILED_REASON = (
    "The filter could not evaluate its policy, so access is blocked for safety. "
    "IT Support have been told."
)
_TEXT = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}


def failed_decision(facts: RequestFacts | None, exc: BaseException | str) -> Decision:
    """The fail-closed answer when deciding (or answering) raised."""
    error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    identity = Identity(
        role="guest",
        site="",
        user=facts.user if facts else None,
        client_ip=facts.client_ip if facts else None,
        source="default",
        rule="fail closed",
    )
    return Decision(
        Action.BLOCK, identity, None, None, FAILED_REASON, rule="fail closed", error=error
    )


def _block_mark(
    decision: Decision, facts: RequestFacts | None, ref: str, stage: str | None = None
) -> FlowMark:
    """The mark of a block: its reference, and what the alerts addon (after this one) needs
    of it: category, who, where, what."""
    try:
        user = decision.identity.user or (facts.user if facts else None)
        term = None
        if facts is not None and facts.host and facts.path:
            term = search_term_of(facts.host, facts.path)
        return FlowMark(
            action=BLOCK,
            ref=ref,
            stage=stage,
            category=decision.category,
            role=decision.identity.role,
            user=user.lower() if user else None,
            client_ip=facts.client_ip if facts else decision.identity.client_ip,
            host=facts.host if facts else None,
            search_term=term,
        )
    except Exception:  # noqa: BLE001 - the block stands; only the alert lacks detail
        log.exception("schoolgate: could not describe a block for alerts")
        return FlowMark(action=BLOCK, ref=ref, stage=stage, category=decision.category)


def _peer(conn) -> str | None:
    peer = getattr(conn, "peername", None)
    return str(peer[0]) if peer else None


_now = datetime.now
_ALLOW = Action.ALLOW
_NO_OTHERS: tuple[str, ...] = ()

# Host -> True when safe search can change no request to it (safesearch.may_change is False):
# asked for every allowed request, and the same few hundred hosts come again and again.
_no_safe_search: dict[str, bool] = {}


def _remember_no_safe_search(host: str) -> bool:
    untouched = not safesearch.may_change(host)
    if len(_no_safe_search) >= 4096:
        _no_safe_search.clear()
    _no_safe_search[host] = untouched
    return untouched


class Enforcement:
    name = "schoolgate_enforce"

    def __init__(
        self,
        holder: PolicyHolder,
        exceptions: ExceptionCache,
        recorder: Recorder,
        *,
        detected: Any = None,
    ) -> None:
        self.holder = holder
        self.exceptions = exceptions
        self.recorder = recorder
        # Hosts recognised from their traffic (FediverseWatch.current: host -> category).
        self.detected = detected

    def configure(self, updated) -> None:
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            # eager would contact blocked hosts at CONNECT and break HTTPS block pages.
            log.info("schoolgate: setting connection_strategy=lazy (needed for enforcement)")
            ctx.options.update(connection_strategy="lazy")

    # -- failures anywhere ------------------------------------------------------------------
    def fail_closed(self, hook: str, subject: Any = None, *_: Any) -> None:
        """Refuse what a hook failed on (called by
        :class:`~schoolgate.gateway.dispatch.Schoolgate` when any part's hook raised on the
        way to a decision), and record it. What already has an answer keeps it."""
        why = f"a part of the filter failed in its {hook} hook"
        if isinstance(subject, http.HTTPFlow):
            if hook == "websocket_start":
                subject.kill()
                return
            if subject.response is not None or subject.error is not None:
                return
            facts = self._minimal_facts(subject.client_conn, subject.request.host)
            decision = failed_decision(facts, why)
            if subject.request.method == "CONNECT" or hook == "http_connect":
                self._refuse_connect(subject, decision, facts)
            else:
                self._block(subject, decision, facts)
        elif isinstance(subject, tls.ClientHelloData):
            address = subject.context.server.address
            host = subject.client_hello.sni or (address[0] if address else "")
            facts = self._minimal_facts(subject.context.client, host)
            self._refuse_connection(subject, failed_decision(facts, why), facts)
        elif isinstance(subject, tcp.TCPFlow):
            address = subject.server_conn.address
            facts = self._minimal_facts(subject.client_conn, address[0] if address else "")
            self._refuse_connection(subject, failed_decision(facts, why), facts)
        elif hasattr(subject, "server") and hasattr(subject, "client"):  # server_connect
            subject.server.error = f"blocked by schoolgate: {why}"

    @staticmethod
    def _minimal_facts(client, host: str) -> RequestFacts:
        return RequestFacts(
            host=host or "",
            at=datetime.now(UTC),
            path=None,
            method=None,
            client_ip=_peer(client),
            user=tunnel_user(client),
        )

    # -- helpers ----------------------------------------------------------------------------
    def _record(
        self,
        decision: Decision,
        facts: RequestFacts,
        *,
        ref: str,
        url: str | None,
        kind: str | None = None,
        detail: dict | None = None,
    ) -> None:
        policy = self.holder.policy
        keep_paths = policy.settings.keep_paths if policy is not None else True
        try:
            event = decision_event(
                decision, facts, ref=ref, url=url, keep_paths=keep_paths, kind=kind, detail=detail
            )
            self.recorder.record(event)
        except Exception:  # noqa: BLE001 - a logging failure must not open anything
            log.exception("schoolgate: could not record decision %s", ref)

    def _refused(self, decision: Decision, facts: RequestFacts | None, stage: str) -> FlowMark:
        """Record a refusal at ``stage`` (no page: a CONNECT, a handshake, a tunnel) and give
        its mark: its reference and what the alerts addon reads of it."""
        ref = new_ref()
        if facts is not None:
            self._record(decision, facts, ref=ref, url=None, detail={"stage": stage})
        return _block_mark(decision, facts, ref, stage)

    def _decide(self, facts: RequestFacts) -> Decision:
        policy = self.holder.policy
        if policy is None:
            return failed_decision(facts, "no policy loaded")
        detected = self.detected.current if self.detected is not None else None
        return policy.decide(facts, self.exceptions.current, detected=detected)

    def _refusal(self, facts: RequestFacts, reason: str, rule: str, *, circumvention: bool):
        """A block that is not the policy's lists and rules: who and when, and why."""
        policy = self.holder.policy
        if policy is None:
            return failed_decision(facts, "no policy loaded")
        identity = policy.identify(facts.client_ip, facts.user)
        try:
            window = policy.window(identity.site, facts.at)
        except Exception:  # noqa: BLE001 - the block stands without its window
            window = None
        circ = policy.settings.circumvention
        category = None
        if circumvention:
            category = circ.category if circ is not None else "circumvention"
        return Decision(Action.BLOCK, identity, window, category, reason, rule=rule)

    def _destination_refusal(self, facts: RequestFacts, found: Destination) -> Decision:
        if found.verdict is Verdict.LOOKUP_FAILED:
            reason = (
                f"The filter could not check where this connection goes ({found.detail}), "
                "so it is blocked for safety."
            )
        elif found.verdict is Verdict.MALFORMED:
            reason = f"The request does not name one site the filter can check ({found.detail})."
        else:
            reason = f"The filter cannot tell where this connection really goes: {found.detail}."
        circumvention = found.verdict is not Verdict.LOOKUP_FAILED
        return self._refusal(
            facts, reason, f"destination check ({found.verdict})", circumvention=circumvention
        )

    def _finding_refusal(self, facts: RequestFacts, subject: Any) -> Decision | None:
        """The block a circumvention finding or a wrapped site leads to, if any."""
        found = blocking_findings(subject)
        if found:
            event = found[0]
            return self._refusal(
                facts, event.summary, f"circumvention detector {event.detector}", circumvention=True
            )
        for wrapped_host, wrapped_path, label in wrapped_findings(subject):
            wrapped = dataclasses.replace(facts, host=wrapped_host, path=wrapped_path, method="GET")
            decision = self._decide(wrapped)
            if not decision.allowed:
                reason = f"{wrapped_host}, shown through {label}, is blocked: {decision.reason}"
                return dataclasses.replace(decision, reason=reason)
        return None

    # -- CONNECT --------------------------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        facts = None
        try:
            user = user_of(flow)
            remember_tunnel_user(flow.client_conn, user)
            host = flow.request.host
            facts = RequestFacts(
                host=host,
                at=datetime.now(UTC),
                path=None,
                method=None,
                port=flow.request.port,
                scheme="https",
                client_ip=_peer(flow.client_conn),
                user=user,
            )
            verdicts = destination_of(flow)
            if verdicts is not None and verdicts[1] is Handling.REFUSE:  # a malformed target
                decision = self._destination_refusal(facts, verdicts[0])
                self._refuse_connect(flow, decision, facts, status=400)
                return
            policy = self.holder.policy
            if policy is not None and target_host(host) == policy.settings.portal_host:
                return  # the gateway's own pages: intercepted and answered here
            decision = self._decide(facts)
            if decision.allowed:
                finding = self._finding_refusal(facts, flow)
                if finding is not None:  # DoT, a Tor service: no page to show inside
                    self._refuse_connect(flow, finding, facts)
                    return
                return
            if (
                policy is not None
                and decision.error is None
                and policy.should_intercept(decision.identity, host)
            ):
                return  # decrypted requests get the block page
            self._refuse_connect(flow, decision, facts)
        except Exception as exc:  # noqa: BLE001 - fail closed
            log.exception("schoolgate: CONNECT to %s failed to be decided", flow.request.host)
            self._refuse_connect(flow, failed_decision(facts, exc), facts)

    def _refuse_connect(
        self,
        flow: http.HTTPFlow,
        decision: Decision,
        facts: RequestFacts | None,
        *,
        status: int = 403,
    ) -> None:
        ref = put_mark(flow.metadata, self._refused(decision, facts, "connect")).ref
        flow.response = http.Response.make(
            status,
            f"Blocked by the school's web filter: {decision.reason}\nReference: {ref}\n",
            _TEXT,
        )

    # -- TLS ------------------------------------------------------------------------------------
    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        context = data.context
        facts = None
        try:
            sni = data.client_hello.sni
            address = context.server.address
            user = tunnel_user(context.client)
            facts = RequestFacts(
                host=(sni or (address[0] if address else "")).rstrip("."),
                at=datetime.now(UTC),
                path=None,
                method=None,
                port=address[1] if address else 443,
                scheme="https",
                client_ip=_peer(context.client),
                user=user,
            )
            verdicts = destination_of(data)
            refused = (
                verdicts[0] if verdicts is not None and verdicts[1] is Handling.REFUSE else None
            )
            if refused is not None and refused.verdict is Verdict.MALFORMED:
                self._refuse_connection(data, self._destination_refusal(facts, refused), facts)
                return
            host = facts.host
            if not host:
                return
            policy = self.holder.policy
            if policy is not None and host.lower() == policy.settings.portal_host:
                return
            if policy is None:
                self._refuse_connection(data, failed_decision(facts, "no policy loaded"), facts)
                return
            identity = policy.identify(facts.client_ip, user)
            if policy.should_intercept(identity, host):
                return  # requests are decided (and blocked with a page) once decrypted
            data.ignore_connection = True
            decision = self._decide(facts)
            if decision.allowed and refused is not None:
                decision = self._destination_refusal(facts, refused)
            if decision.allowed:
                decision = self._finding_refusal(facts, data) or decision
            if not decision.allowed:
                self._refuse_connection(data, decision, facts)
        except Exception as exc:  # noqa: BLE001 - fail closed
            log.exception("schoolgate: TLS ClientHello failed to be decided")
            self._refuse_connection(data, failed_decision(facts, exc), facts)

    # -- tunnels that carry neither TLS nor HTTP ------------------------------------------------
    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        facts = None
        try:
            if flow.client_conn.tls_established or flow.server_conn.error:
                return
            address = flow.server_conn.address
            host, port = (target_host(address[0]), address[1]) if address else ("", None)
            facts = RequestFacts(
                host=host,
                at=datetime.now(UTC),
                path=None,
                method=None,
                port=port,
                scheme="tcp",
                client_ip=_peer(flow.client_conn),
                user=tunnel_user(flow.client_conn),
            )
            policy = self.holder.policy
            if policy is None:
                self._refuse_connection(flow, failed_decision(facts, "no policy loaded"), facts)
                return
            circ = policy.settings.circumvention
            role = policy.identify(facts.client_ip, facts.user).role
            if circ is not None and not circ.filters(role):
                return
            allowed = circ.allowed_raw_destinations if circ is not None else ()
            if host and raw_allowed(allowed, host, port):
                return
            where = f"{host}:{port}" if host else "an unknown destination"
            decision = self._refusal(
                facts,
                f"The connection to {where} carries neither secure web traffic (TLS) nor web "
                "pages (HTTP): SSH, VPNs and other tunnels are not allowed through the filter.",
                "raw tunnel",
                circumvention=True,
            )
            self._refuse_connection(flow, decision, facts)
        except Exception as exc:  # noqa: BLE001 - fail closed
            log.exception("schoolgate: a raw tunnel failed to be decided")
            self._refuse_connection(flow, failed_decision(facts, exc), facts)

    def _refuse_connection(
        self,
        subject: tls.ClientHelloData | tcp.TCPFlow,
        decision: Decision,
        facts: RequestFacts | None,
    ) -> None:
        """Refuse a TLS connection at its ClientHello, or a raw tunnel at its start, before
        the upstream connection opens (lazy): mitmproxy then never makes it."""
        if isinstance(subject, tls.ClientHelloData):
            mark = self._refused(decision, facts, "tls")
            put_hello_mark(subject, mark)  # a ClientHello has no flow, hence no metadata
            subject.ignore_connection = True
            server = subject.context.server
        else:
            mark = put_mark(subject.metadata, self._refused(decision, facts, "tunnel"))
            server = subject.server_conn
        server.error = f"blocked by schoolgate ({mark.ref}): {decision.reason}"

    # -- HTTP -----------------------------------------------------------------------------------
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        facts = None
        try:
            policy = self.holder.policy
            view = request_view(flow.request)
            scheme = view.scheme
            name = view.named_host
            others: Sequence[str]
            if scheme != "https" and name is not None and name == target_host(view.host):
                host, others = name, _NO_OTHERS  # the usual case: one name, no SNI
            else:
                host, others = view_hosts(view, flow.client_conn.sni if scheme == "https" else None)
            # Positional (host, at, path, method, port, scheme, client_ip, user): keywords
            # cost a fifth more, on every request.
            metadata = flow.metadata
            auth = metadata.get("proxyauth")
            facts = RequestFacts(
                host,
                _now(UTC),
                view.path,
                view.method,
                view.port,
                scheme,
                flow.client_conn.peername[0],
                auth[0] if auth else None,  # the user, never the password
            )
            current = self.exceptions.current
            if current.pages:  # a page approval opens the page's own calls
                facts.referer = view.headers.get("referer")
                facts.fetch_dest = view.headers.get("sec-fetch-dest")
            refused = None
            if metadata:  # an allowed request to a named site usually has nothing here
                verdicts = metadata.get(DESTINATION)
                if verdicts is not None and verdicts[1] is Handling.REFUSE:
                    refused = verdicts[0]
                    if refused.verdict is Verdict.MALFORMED:
                        self._bad_request(flow, self._destination_refusal(facts, refused), facts)
                        return
            if policy is None:
                decision = failed_decision(facts, "no policy loaded")
            elif others or host == policy.settings.portal_host:
                named = self._decide_names(facts, host, others, policy.settings.portal_host)
                if named is None:
                    # The gateway's own pages answer their requests before this part: one
                    # that names them and is still unanswered must not go on to the internet.
                    failed = failed_decision(facts, "a gateway page was not served")
                    self._block(flow, failed, facts)
                    return
                decision = named
            else:  # the usual case: one name, decided at once (as _decide does)
                detected = self.detected.current if self.detected is not None else None
                decision = policy.decide(facts, current, detected=detected)
            # A name the policy blocks is blocked for that reason; one it allows must also be
            # where the connection goes, and not be a way round the filter.
            # (``decision.action is _ALLOW`` is ``decision.allowed`` without the property's call.)
            if refused is not None and decision.action is _ALLOW:
                decision = self._destination_refusal(facts, refused)
            if metadata and decision.action is _ALLOW:
                decision = self._finding_refusal(facts, flow) or decision
            if decision.action is not _ALLOW:
                self._block(flow, decision, facts)
            elif decision.category is not None or not _no_safe_search.get(host, False):
                # (Most allowed requests: no category to log, a host safe search leaves alone;
                # then there is nothing for _allowed to do, and it is not called.)
                self._allowed(flow, policy, decision, facts)
        except Exception as exc:  # noqa: BLE001 - fail closed
            log.exception("schoolgate: request to %s failed to be decided", flow.request.host)
            self._block(flow, failed_decision(facts, exc), facts)

    def _decide_names(
        self, facts: RequestFacts, host: str, others: Sequence[str], portal: str | None
    ) -> Decision | None:
        """Every name a request carries decided (where the connection really goes, the SNI:
        no smuggling through the Host header, no domain fronting): the first that blocks, else
        the Host's. None: it names the gateway's own pages, and nothing else blocks it."""
        decision = None
        for name in (host, *others):
            if name == portal:
                continue
            found = self._decide(facts if name == host else dataclasses.replace(facts, host=name))
            if not found.allowed:
                return found
            if decision is None:
                decision = found
        return None if portal in (host, *others) else decision

    def _bad_request(self, flow: http.HTTPFlow, decision: Decision, facts: RequestFacts) -> None:
        """RFC 9112 3.2: a Host that is not one host (or two of them) gets 400, and is kept."""
        ref = new_ref()
        self._record(decision, facts, ref=ref, url=None, detail={"stage": "request"})
        put_mark(flow.metadata, _block_mark(decision, facts, ref))
        # The reference in a header too, as on every block page: IT Support find it either way.
        flow.response = http.Response.make(
            400,
            f"Bad request: {decision.reason}\nReference: {ref}\n",
            {**_TEXT, "x-schoolgate-ref": ref},
        )

    def _allowed(
        self, flow: http.HTTPFlow, policy, decision: Decision, facts: RequestFacts
    ) -> None:
        if decision.category is not None and policy.settings.log_allowed_categories:
            self._record(decision, facts, ref=new_ref(), url=flow.request.pretty_url)
        host = facts.host  # as request_view and target_host give it: normal already
        try:
            untouched = _no_safe_search[host]
        except KeyError:
            untouched = _remember_no_safe_search(host)
        if untouched:  # no service safe search rewrites (most requests)
            return
        role = policy.role(decision.identity.role)
        if role.safe_search or role.youtube_restrict:
            change = safesearch.enforce(
                host,
                facts.path,
                safe_search=role.safe_search,
                youtube_restrict=role.youtube_restrict,
            )
            if change is not None:
                for name, value in change.set_headers.items():
                    flow.request.headers[name] = value
                if change.new_path is not None:
                    flow.request.path = change.new_path
                marked(flow.metadata).safesearch = change.what

    def _block(self, flow: http.HTTPFlow, decision: Decision, facts: RequestFacts | None) -> None:
        ref = "-"
        try:
            ref = new_ref()
            url = _url_of(flow)
            if facts is not None:
                self._record(decision, facts, ref=ref, url=url)
            policy = self.holder.policy
            tz = None
            advice: tuple[str, ...] = ()
            portal_host = "schoolgate.internal"
            if policy is not None:
                portal_host = policy.settings.portal_host
                advice = policy.settings.advice
                timetable = policy.timetables.get(decision.identity.site)
                tz = timetable.tz if timetable is not None else None
            status, headers, body = block_response_parts(
                decision,
                url=url,
                ref=ref,
                signed_ref=sign_ref(self.recorder.secret, ref),
                portal_host=portal_host,
                advice=advice,
                headers=request_view(flow.request).headers,
                tz=tz,
                wording=wording_of(policy),
            )
            flow.response = http.Response.make(status, body, headers)
        except Exception:  # noqa: BLE001 - the page failed: still block, in plain text
            log.exception("schoolgate: block page failed for %s", flow.request.host)
            reason = decision.reason if decision.error is None else FAILED_REASON
            flow.response = http.Response.make(
                403, f"Blocked by the school's web filter.\n{reason}\nReference: {ref}\n", _TEXT
            )
        put_mark(flow.metadata, _block_mark(decision, facts, ref))


def _url_of(flow: http.HTTPFlow) -> str:
    """The URL for the block page and the log (``pretty_url`` re-parses the Host header, which
    raises on a malformed one)."""
    try:
        return flow.request.pretty_url
    except ValueError:
        return flow.request.url

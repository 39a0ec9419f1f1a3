"""Enforcement: every CONNECT, TLS ClientHello and HTTP request is decided by the policy.

* ``http_connect``: decided on the host. A blocked host that will not be intercepted is refused
  at the CONNECT (403), before any upstream contact; one that will be intercepted goes through
  (``connection_strategy=lazy``: still no upstream contact) and its decrypted requests get the
  block page.
* ``tls_clienthello``: connections that are not intercepted are passed through, and decided
  again on the SNI (a client may CONNECT to an allowed host and name another; in transparent
  mode the SNI is all there is); blocked ones are refused.
* ``request``: the full decision (user, path, method), the block page, safe search.

Anything that goes wrong blocks, with a page saying the filter failed: never an open gateway.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from datetime import UTC, datetime
from typing import Any

from mitmproxy import connection, ctx, http, tls

from schoolgate import safesearch
from schoolgate.blockpage import block_response_parts, sign_ref
from schoolgate.core.words import wording_of
from schoolgate.eventlog import decision_event, new_ref, search_term_of
from schoolgate.gateway.exception_cache import ExceptionCache
from schoolgate.gateway.flowinfo import request_hosts, request_view
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.recorder import Recorder
from schoolgate.model import Action, Decision, Identity, RequestFacts

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


def _alert_keys(decision: Decision, facts: RequestFacts | None) -> dict:
    """What the alerts addon (after this one) needs of a block: category, who, where, what."""
    try:
        user = decision.identity.user or (facts.user if facts else None)
        term = None
        if facts is not None and facts.host and facts.path:
            term = search_term_of(facts.host, facts.path)
        return {
            "category": decision.category,
            "role": decision.identity.role,
            "user": user.lower() if user else None,
            "client_ip": facts.client_ip if facts else decision.identity.client_ip,
            "host": facts.host if facts else None,
            "search_term": term,
        }
    except Exception:  # noqa: BLE001 - the block stands; only the alert lacks detail
        log.exception("schoolgate: could not describe a block for alerts")
        return {"category": decision.category}


def _user_of(flow: http.HTTPFlow) -> str | None:
    auth = flow.metadata.get("proxyauth")
    # (user, password): only ever the user; the password is never logged or kept.
    return auth[0] if auth else None


class Enforcement:
    name = "schoolgate_enforce"

    def __init__(
        self, holder: PolicyHolder, exceptions: ExceptionCache, recorder: Recorder
    ) -> None:
        self.holder = holder
        self.exceptions = exceptions
        self.recorder = recorder
        # The proxy-authenticated user of each client connection, from its CONNECT, for the
        # TLS ClientHello that follows (which carries no credentials).
        self._tunnel_user: weakref.WeakKeyDictionary[connection.Client, str | None] = (
            weakref.WeakKeyDictionary()
        )

    def configure(self, updated) -> None:
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            # eager would contact blocked hosts at CONNECT and break HTTPS block pages.
            log.info("schoolgate: setting connection_strategy=lazy (needed for enforcement)")
            ctx.options.update(connection_strategy="lazy")

    def fail_closed(self, hook: str, subject: Any) -> None:
        """Refuse what a hook of this addon failed on before deciding (called by
        :class:`~schoolgate.gateway.dispatch.Schoolgate` when an exception escaped)."""
        if hook in ("request", "http_connect") and isinstance(subject, http.HTTPFlow):
            if subject.response is None:
                decision = failed_decision(None, "the enforcement hook failed")
                if hook == "request":
                    self._block(subject, decision, None)
                else:
                    self._refuse_connect(subject, decision, None)
        elif hook == "tls_clienthello" and isinstance(subject, tls.ClientHelloData):
            self._refuse_tls(subject, failed_decision(None, "the enforcement hook failed"), None)

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

    def _decide(self, facts: RequestFacts) -> Decision:
        policy = self.holder.policy
        if policy is None:
            return failed_decision(facts, "no policy loaded")
        return policy.decide(facts, self.exceptions.current)

    # -- CONNECT --------------------------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        facts = None
        try:
            user = _user_of(flow)
            self._tunnel_user[flow.client_conn] = user
            host = flow.request.host
            policy = self.holder.policy
            if policy is not None and host.lower() == policy.settings.portal_host:
                return
            facts = RequestFacts(
                host=host,
                at=datetime.now(UTC),
                path=None,
                method=None,
                port=flow.request.port,
                scheme="https",
                client_ip=flow.client_conn.peername[0],
                user=user,
            )
            decision = self._decide(facts)
            if decision.allowed:
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
        self, flow: http.HTTPFlow, decision: Decision, facts: RequestFacts | None
    ) -> None:
        ref = new_ref()
        if facts is not None:
            self._record(decision, facts, ref=ref, url=None, detail={"stage": "connect"})
        flow.metadata["schoolgate"] = {
            "ref": ref,
            "action": "block",
            "stage": "connect",
            **_alert_keys(decision, facts),
        }
        flow.response = http.Response.make(
            403,
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
            host = (sni or (address[0] if address else "")).rstrip(".")
            if not host:
                return
            policy = self.holder.policy
            if policy is not None and host.lower() == policy.settings.portal_host:
                return
            user = self._tunnel_user.get(context.client)
            facts = RequestFacts(
                host=host,
                at=datetime.now(UTC),
                path=None,
                method=None,
                port=address[1] if address else 443,
                scheme="https",
                client_ip=context.client.peername[0],
                user=user,
            )
            if policy is None:
                self._refuse_tls(data, failed_decision(facts, "no policy loaded"), facts)
                return
            identity = policy.identify(facts.client_ip, user)
            if policy.should_intercept(identity, host):
                return  # requests are decided (and blocked with a page) once decrypted
            data.ignore_connection = True
            decision = self._decide(facts)
            if not decision.allowed:
                self._refuse_tls(data, decision, facts)
        except Exception as exc:  # noqa: BLE001 - fail closed
            log.exception("schoolgate: TLS ClientHello failed to be decided")
            self._refuse_tls(data, failed_decision(facts, exc), facts)

    def _refuse_tls(
        self, data: tls.ClientHelloData, decision: Decision, facts: RequestFacts | None
    ) -> None:
        ref = new_ref()
        if facts is not None:
            self._record(decision, facts, ref=ref, url=None, detail={"stage": "tls"})
        data.ignore_connection = True
        data.context.server.error = f"blocked by schoolgate ({ref}): {decision.reason}"
        # ClientHelloData has no metadata: the alerts addon reads this attribute instead.
        data.schoolgate = {
            "ref": ref,
            "action": "block",
            "stage": "tls",
            **_alert_keys(decision, facts),
        }

    # -- HTTP -----------------------------------------------------------------------------------
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        facts = None
        try:
            policy = self.holder.policy
            req = flow.request
            view = request_view(req)
            https = view.scheme == "https"
            host, others = request_hosts(req, flow.client_conn.sni if https else None)
            if policy is not None and host == policy.settings.portal_host:
                return
            # Positional (host, at, path, method, port, scheme, client_ip, user): keywords
            # cost a fifth more, on every request.
            facts = RequestFacts(
                host,
                datetime.now(UTC),
                view.path,
                view.method,
                view.port,
                view.scheme,
                flow.client_conn.peername[0],
                _user_of(flow),
            )
            decision = self._decide(facts)
            for other in others:
                # Where the connection really goes (absolute URL, CONNECT target) and the SNI
                # must pass too: no smuggling through the Host header or domain fronting.
                if not decision.allowed:
                    break
                decision = self._decide(dataclasses.replace(facts, host=other))
            if decision.allowed:
                self._allowed(flow, policy, decision, facts)
            else:
                self._block(flow, decision, facts)
        except Exception as exc:  # noqa: BLE001 - fail closed
            log.exception(
                "schoolgate: request to %s failed to be decided", flow.request.pretty_host
            )
            self._block(flow, failed_decision(facts, exc), facts)

    def _allowed(
        self, flow: http.HTTPFlow, policy, decision: Decision, facts: RequestFacts
    ) -> None:
        if decision.category is not None and policy.settings.log_allowed_categories:
            self._record(decision, facts, ref=new_ref(), url=flow.request.pretty_url)
        role = policy.role(decision.identity.role)
        if role.safe_search or role.youtube_restrict:
            change = safesearch.enforce(
                facts.host.lower().rstrip("."),
                facts.path,
                safe_search=role.safe_search,
                youtube_restrict=role.youtube_restrict,
            )
            if change is not None:
                for name, value in change.set_headers.items():
                    flow.request.headers[name] = value
                if change.new_path is not None:
                    flow.request.path = change.new_path
                flow.metadata["schoolgate_safesearch"] = change.what

    def _block(self, flow: http.HTTPFlow, decision: Decision, facts: RequestFacts | None) -> None:
        ref = "-"
        try:
            ref = new_ref()
            url = flow.request.pretty_url
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
                headers=flow.request.headers,
                tz=tz,
                wording=wording_of(policy),
            )
            flow.response = http.Response.make(status, body, headers)
        except Exception:  # noqa: BLE001 - the page failed: still block, in plain text
            log.exception("schoolgate: block page failed for %s", flow.request.pretty_host)
            reason = decision.reason if decision.error is None else FAILED_REASON
            flow.response = http.Response.make(
                403, f"Blocked by the school's web filter.\n{reason}\nReference: {ref}\n", _TEXT
            )
        flow.metadata["schoolgate"] = {
            "ref": ref,
            "action": "block",
            **_alert_keys(decision, facts),
        }

"""The pages a sanction shows, and the record of supervised browsing.

Mixed into :class:`~schoolgate.gateway.circumvention_addon.CircumventionGuard`:

* the suspension page for a subject locked out or banned (recorded, kind ``suspended``, for
  page loads only);
* the warning page, shown once, on the next page load after a ``warn`` stage (recorded, kind
  ``warned``, which also tells the other gateway processes that the subject has been warned:
  a lockout may follow);
* every request of a supervision session, recorded (kind ``supervised``) when it is answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from mitmproxy import connection, http

from schoolgate.core.destination import Destination, Handling, Verdict
from schoolgate.core.hosts import normalize_host
from schoolgate.core.model import Identity
from schoolgate.core.sanctions import BanState, Ladder, SanctionSettings
from schoolgate.core.urlpaths import strip_url
from schoolgate.core.words import wording_of
from schoolgate.gateway.destinations import destination_of
from schoolgate.gateway.findings import blocking_findings
from schoolgate.gateway.flowinfo import request_view
from schoolgate.gateway.flowmark import (
    BLOCK,
    WARN,
    FlowMark,
    flow_mark,
    put_mark,
    supervision_of,
)
from schoolgate.storage.eventlog import new_ref
from schoolgate.storage.records import supervised_event, suspended_event, warned_event

if TYPE_CHECKING:
    from schoolgate.core.circumvention_settings import CircumventionSettings
    from schoolgate.gateway.holder import PolicyHolder
    from schoolgate.gateway.recorder import Recorder

log = logging.getLogger(__name__)


def peer_ip(client: connection.Client) -> str | None:
    peer = client.peername
    return str(peer[0]) if peer else None


def refused_destination(subject: Any) -> Destination | None:
    """The destination check's verdict, when it refused the destination as unknown (not when
    the resolver merely failed): what the ``unverified_destination`` detector reports."""
    verdicts = destination_of(subject)
    if verdicts is None or verdicts[1] is not Handling.REFUSE:
        return None
    found = verdicts[0]
    return None if found.verdict is Verdict.LOOKUP_FAILED else found


class SanctionPages:
    """The guard's pages and supervision records (see the module docstring)."""

    # The guard's state, set by its __init__.
    holder: PolicyHolder
    recorder: Recorder
    clock: Callable[[], datetime]
    circumvention: CircumventionSettings
    sanctions: SanctionSettings
    ladder: Ladder
    _warnings: dict[str, tuple[str, str, datetime]]  # subject -> summary, ref, at

    def _tz(self, identity: Identity):
        policy = self.holder.policy
        timetable = policy.timetables.get(identity.site) if policy is not None else None
        return timetable.tz if timetable is not None else None

    def _suspend(
        self, flow: http.HTTPFlow, ban: BanState, identity: Identity, subject: str, now: datetime
    ) -> None:
        from schoolgate.gateway.blockpage import wants_html
        from schoolgate.gateway.suspension import suspended_response_parts

        ref = new_ref()
        url = flow.request.pretty_url
        policy = self.holder.policy
        portal = policy.settings.portal_host if policy is not None else "schoolgate.internal"
        status, headers, body = suspended_response_parts(
            ban,
            url=url,
            ref=ref,
            portal_host=portal,
            appeal=self.sanctions.appeal,
            headers=request_view(flow.request).headers,
            essentials=self.sanctions.essentials,
            tz=self._tz(identity),
            now=now,
            school=wording_of(policy).school_name,
            group=identity.group,
        )
        flow.response = http.Response.make(status, body, headers)
        put_mark(flow.metadata, FlowMark(action=BLOCK, ref=ref, suspended=ban.ref))
        if wants_html(request_view(flow.request).headers):  # page loads: not every request
            keep = policy.settings.keep_paths if policy is not None else True
            self.recorder.record(
                suspended_event(
                    ref=ref,
                    at=now,
                    client_ip=peer_ip(flow.client_conn),
                    user=identity.user,
                    role=identity.role,
                    group=identity.group,
                    site=identity.site,
                    method=flow.request.method,
                    scheme=flow.request.scheme,
                    host=normalize_host(flow.request.pretty_host),
                    url=strip_url(url, keep),
                    ban_kind=ban.kind,
                    ban_ref=ban.ref,
                    reason=ban.reason,
                    detail={
                        "ban_ref": ban.ref,
                        "ban_id": ban.id,
                        "subject": subject,
                        "until": ban.ends.isoformat() if ban.ends else None,
                    },
                )
            )

    def _maybe_warn(
        self, flow: http.HTTPFlow, subject: str, identity: Identity, now: datetime
    ) -> None:
        from schoolgate.gateway.blockpage import wants_html
        from schoolgate.gateway.suspension import warning_response_parts

        summary, ref, at = self._warnings[subject]
        if now - at > timedelta(minutes=self.sanctions.window_minutes):
            del self._warnings[subject]
            return
        if flow.request.method not in ("GET", "HEAD") or not wants_html(
            request_view(flow.request).headers
        ):
            return
        del self._warnings[subject]
        self.ladder.warning_shown(subject, now)
        policy = self.holder.policy
        portal = policy.settings.portal_host if policy is not None else "schoolgate.internal"
        blocked = bool(blocking_findings(flow)) or refused_destination(flow) is not None
        if policy is not None and not blocked:
            match = policy.matcher.lookup(
                normalize_host(request_view(flow.request).named_host or flow.request.host),
                flow.request.path,
            )
            blocked = match is not None and match.category == self.circumvention.category
        next_stage = next((s for s in self.sanctions.stages if s.action != "warn"), None)
        next_step = ""
        if next_stage is not None:
            next_step = f"More attempts within {self.sanctions.window_minutes} minutes lead to " + (
                "a short lockout." if next_stage.action == "lockout" else "a ban."
            )
        status, headers, body = warning_response_parts(
            summary,
            url=flow.request.pretty_url,
            ref=ref,
            portal_host=portal,
            blocked=blocked,
            next_step=next_step,
            who=identity.user,
            tz=self._tz(identity),
            now=now,
            school=wording_of(policy).school_name,
        )
        flow.response = http.Response.make(status, body, headers)
        put_mark(flow.metadata, FlowMark(action=BLOCK if blocked else WARN, ref=ref))
        self._record_warned(flow, identity, subject, ref, now)

    def _record_warned(
        self, flow: http.HTTPFlow, identity: Identity, subject: str, about: str, at: datetime
    ) -> None:
        """Evidence that the warning page was shown, which also tells the other gateway
        processes that this subject has been warned (a lockout may follow)."""
        self.recorder.record(
            warned_event(
                ref=new_ref(),
                at=at,
                client_ip=peer_ip(flow.client_conn),
                user=identity.user,
                role=identity.role,
                group=identity.group,
                site=identity.site,
                method=flow.request.method,
                scheme=flow.request.scheme,
                host=request_view(flow.request).named_host,
                category=self.circumvention.category,
                subject=subject,
                warned_about=about,
            )
        )

    def response(self, flow: http.HTTPFlow) -> None:
        metadata = flow.metadata
        if not metadata:  # most responses: nothing marked, nothing supervised
            return
        mark = flow_mark(metadata)
        if mark is None or mark.supervision is None:
            return
        sup = mark.supervision
        try:
            policy = self.holder.policy
            keep = policy.settings.keep_paths if policy is not None else True
            blocked = mark.blocked
            self.recorder.record(
                supervised_event(
                    ref=new_ref(),
                    at=self.clock(),
                    blocked=blocked,
                    client_ip=peer_ip(flow.client_conn),
                    user=sup.user,
                    role=sup.role,
                    group=sup.group,
                    site=sup.site,
                    method=flow.request.method,
                    scheme=flow.request.scheme,
                    host=normalize_host(flow.request.pretty_host),
                    url=strip_url(flow.request.pretty_url, keep),
                    supervision_id=sup.id,
                    staff=sup.staff,
                    detail={
                        "supervision_id": sup.id,
                        "supervision_ref": sup.ref,
                        "staff": sup.staff,
                        "subject": sup.subject,
                        "status": flow.response.status_code if flow.response else None,
                        "blocked_ref": mark.ref if blocked else None,
                    },
                )
            )
        except Exception:  # noqa: BLE001
            log.exception("schoolgate: could not record a supervised request")

    def error(self, flow: http.HTTPFlow) -> None:
        if supervision_of(flow.metadata) is not None and flow.response is None:
            self.response(flow)

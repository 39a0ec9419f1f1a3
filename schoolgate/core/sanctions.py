"""Sanctions for circumvention: the graduated ladder and the ban state, as pure values.

The school's policy: "Attempts to circumvent the network firewalls will result in a ban from
using school computing equipment, other than with close supervision". Schools use graduated
sanctions, so a circumvention event earns *points* (by its severity) and the points a subject
(a user, or the device when nobody is signed in) has earned within a sliding window climb a
configurable ladder of *stages*: ``warn`` (the e-safety team is told, the user sees a warning
page once), ``lockout`` (every page is the suspension page for a few minutes) and ``ban``
(supervised-only: the suspension page until the ban ends or is lifted, except while a member of
staff runs a supervision session).

Nothing here knows of mitmproxy or the database: :class:`Ladder` takes a clock, the config
loaders take a :class:`~schoolgate.core.configfile.Section`, :class:`BanBook` indexes the bans and
supervision sessions read from the database for the per-request check.

Decisions (see docs/circumvention.md):

* A stage fires when the window's total *crosses* its threshold (before < points <= after); the
  highest stage crossed wins. Totals fall as events leave the window, so a subject quiet for a
  window starts again at the bottom.
* The same finding (detector, kind, host) from the same subject counts again only after
  ``repeat_minutes``: a VPN app retrying every second is one attempt a few minutes, not a ban in
  three seconds. Every event is still recorded.
* A signed-in user is sanctioned as the user (on any device); traffic with no user is
  sanctioned as the device (its address). A device ban does not stop a signed-in user.
* Roles outside ``bans.roles`` (staff) are recorded and alerted only.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from schoolgate.core.circumvention_settings import role_names

if TYPE_CHECKING:  # pragma: no cover
    from schoolgate.core.configfile import Section

ACTIONS: tuple[str, ...] = ("warn", "lockout", "ban")
BAN_KINDS: tuple[str, ...] = ("lockout", "ban")
DEFAULT_SEVERITY_POINTS: Mapping[int, float] = {1: 0.5, 2: 1.0, 3: 2.0}
DEFAULT_APPEAL = (
    "If you think this is wrong, speak to your tutor or Head of Year, or ask the e-safety lead "
    "to review it. IT Support or the senior leadership team can lift a ban early."
)
MAX_SUBJECTS = 200_000  # ladder memory bound (oldest subjects are forgotten first)


def new_ban_ref() -> str:
    return "b" + secrets.token_hex(8)


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SanctionStage:
    points: float
    action: str  # warn | lockout | ban
    minutes: int | None = None  # lockout/ban length; None for warn


@dataclass(frozen=True, slots=True)
class SanctionSettings:
    """The validated ``bans`` section."""

    enabled: bool = True
    window_minutes: int = 10
    repeat_minutes: int = 2
    severity_points: Mapping[int, float] = field(
        default_factory=lambda: dict(DEFAULT_SEVERITY_POINTS)
    )
    stages: tuple[SanctionStage, ...] = (
        SanctionStage(1, "warn"),
        SanctionStage(2, "lockout", 5),
        SanctionStage(3, "ban", 10080),
    )
    essentials: tuple[str, ...] = ()
    roles: frozenset[str] = frozenset({"student"})
    appeal: str = DEFAULT_APPEAL
    supervision_max_minutes: int = 480

    def points_for(self, severity: int) -> float:
        return float(self.severity_points.get(severity, 1.0))

    def essential(self, host: str) -> bool:
        """Whether ``host`` (normalised) is one of the essentials or below one."""
        for entry in self.essentials:
            if host == entry or host.endswith("." + entry):
                return True
        return False


DISABLED = SanctionSettings(enabled=False)


def _host_entry(text: str) -> str:
    from schoolgate.core.hosts import normalize_host

    host = normalize_host(text.strip())
    if not host or " " in host or "/" in host:
        raise ValueError("not a host name")
    return host


def load_sanctions(
    section: Section | None, *, known_roles: Iterable[str] | None = None
) -> SanctionSettings:
    """Validate the ``bans`` section, reporting every problem with its file, line and field.

    ``None`` (no section): sanctions are off (events are still recorded and alerted). Unknown
    keys, bad numbers, stages out of order, an unknown action, a lockout or ban without
    ``minutes``, an unknown role (with ``known_roles``) and malformed essentials are reported.
    ``known_roles`` may map other names (role aliases) to the roles they mean.
    """
    if section is None:
        return DISABLED
    section.check_keys(
        {
            "enabled",
            "window_minutes",
            "repeat_minutes",
            "severity_points",
            "stages",
            "essentials",
            "roles",
            "appeal",
            "supervision_max_minutes",
        }
    )
    base = SanctionSettings()
    enabled = section.flag("enabled", default=True)
    window = section.number(
        "window_minutes", default=base.window_minutes, minimum=1, maximum=7 * 24 * 60
    )
    repeat = section.number(
        "repeat_minutes", default=base.repeat_minutes, minimum=0, maximum=7 * 24 * 60
    )
    points = dict(DEFAULT_SEVERITY_POINTS)
    sp = section.section("severity_points")
    if sp is not None:
        for key in sp.keys():
            if isinstance(key, bool) or not isinstance(key, int) or key not in (1, 2, 3):
                sp.error(key, "expected a severity 1, 2 or 3 as the key")
                continue
            value = sp.get(key, (int, float), "a number of points")
            if value is None:
                continue
            if value < 0:
                sp.error(key, f"expected a number of points of at least 0, got {value}")
                continue
            points[key] = float(value)
    stages: list[SanctionStage] = []
    if "stages" in section:
        last = 0.0
        for stage in section.sections("stages"):
            stage.check_keys({"points", "action", "minutes"})
            value = stage.get("points", (int, float), "a number of points", required=True)
            action = stage.choice("action", ACTIONS, required=True)
            minutes = stage.number("minutes", minimum=1, maximum=366 * 24 * 60)
            if value is None or action is None:
                continue
            if value <= 0:
                stage.error("points", f"expected more than 0 points, got {value}")
                continue
            if value <= last:
                stage.error("points", "stages must be in increasing order of points")
                continue
            if action in BAN_KINDS and minutes is None:
                stage.error(None, f"a {action} stage needs 'minutes' (how long it lasts)")
                continue
            if action == "warn" and "minutes" in stage:
                stage.error("minutes", "a warn stage has no length")
            last = float(value)
            stages.append(
                SanctionStage(float(value), action, minutes if action != "warn" else None)
            )
    else:
        stages = list(base.stages)
    essentials = []
    for text, line, name in section.strings("essentials"):
        try:
            essentials.append(_host_entry(text))
        except ValueError as exc:
            section.issues.add(
                section.file, line, name, f"expected a host name, got {text!r}: {exc}"
            )
    roles = base.roles
    if "roles" in section:
        roles = frozenset(role_names(section, "roles", known_roles))
    appeal = section.text("appeal") or base.appeal
    sup_max = section.number(
        "supervision_max_minutes",
        default=base.supervision_max_minutes,
        minimum=1,
        maximum=7 * 24 * 60,
    )
    return SanctionSettings(
        enabled=enabled,
        window_minutes=window,
        repeat_minutes=repeat,
        severity_points=points,
        stages=tuple(stages),
        essentials=tuple(essentials),
        roles=roles,
        appeal=appeal,
        supervision_max_minutes=sup_max,
    )


# -- subjects -----------------------------------------------------------------------------------


def subject_for(user: str | None, client_ip: str | None) -> str | None:
    """``user:NAME`` when someone is signed in, else ``device:ADDRESS``; None if neither."""
    if user:
        return f"user:{user.strip().lower()}"
    if client_ip:
        ip = client_ip[7:] if client_ip.startswith("::ffff:") else client_ip
        return f"device:{ip}"
    return None


def parse_subject(text: str) -> str | None:
    """``alice`` / ``user:alice`` / ``device:10.1.2.3`` / ``10.1.2.3`` -> a subject key (None
    for a text that names no one, such as ``user:``)."""
    text = text.strip()
    kind, sep, value = text.partition(":")
    if sep and kind in ("user", "device"):
        return subject_for(value, None) if kind == "user" else subject_for(None, value)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return subject_for(text, None)
    return subject_for(None, text)


# -- ban state ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BanState:
    """A lockout or a supervised-only ban of one subject."""

    ref: str
    subject: str
    kind: str  # lockout | ban
    starts: datetime
    ends: datetime | None
    reason: str
    created_by: str = "schoolgate"
    stage: int | None = None
    points: float | None = None
    events: tuple[str, ...] = ()  # refs of the events that led to it
    id: int | None = None
    lifted_at: datetime | None = None
    lifted_by: str | None = None
    lift_reason: str | None = None

    def active(self, at: datetime) -> bool:
        return (
            self.lifted_at is None and self.starts <= at and (self.ends is None or at < self.ends)
        )

    @property
    def subject_kind(self) -> str:
        return self.subject.partition(":")[0]

    @property
    def subject_value(self) -> str:
        return self.subject.partition(":")[2]

    @property
    def supervised_only(self) -> bool:
        return self.kind == "ban"


@dataclass(frozen=True, slots=True)
class Supervision:
    """A member of staff supervising a banned user for a while."""

    ref: str
    subject: str
    staff: str
    starts: datetime
    ends: datetime
    reason: str
    ban_id: int | None = None
    id: int | None = None
    ended_at: datetime | None = None

    def active(self, at: datetime) -> bool:
        return self.ended_at is None and self.starts <= at < self.ends


def _stronger(a: BanState, b: BanState) -> BanState:
    """The ban that decides when a subject has two in force: a ban over a lockout, then the
    later end (no end is latest)."""
    if a.kind != b.kind:
        return a if a.kind == "ban" else b
    far = datetime.max.replace(tzinfo=UTC)
    return a if (a.ends or far) >= (b.ends or far) else b


class BanBook:
    """The bans and supervision sessions in force, indexed by subject (rebuilt on change)."""

    def __init__(self, bans: Iterable[BanState] = (), supervisions: Iterable[Supervision] = ()):
        self.bans = tuple(bans)
        self.supervisions = tuple(supervisions)
        self._bans: dict[str, list[BanState]] = {}
        self._sups: dict[str, list[Supervision]] = {}
        for ban in self.bans:
            self._bans.setdefault(ban.subject, []).append(ban)
        for sup in self.supervisions:
            self._sups.setdefault(sup.subject, []).append(sup)

    def __len__(self) -> int:
        return len(self.bans)

    def names(self, subject: str | None) -> bool:
        """Whether any ban or supervision session (in force or not) is about ``subject``: a
        dictionary lookup, so that everyone else's requests skip the clock and the checks."""
        return subject in self._bans or subject in self._sups

    def with_ban(self, ban: BanState) -> BanBook:
        return BanBook((*[b for b in self.bans if b.ref != ban.ref], ban), self.supervisions)

    def ban_for(self, subject: str | None, at: datetime) -> BanState | None:
        if subject is None or not self._bans:
            return None
        best = None
        for ban in self._bans.get(subject, ()):
            if ban.active(at):
                best = ban if best is None else _stronger(best, ban)
        return best

    def supervision_for(self, subject: str | None, at: datetime) -> Supervision | None:
        if subject is None or not self._sups:
            return None
        for sup in self._sups.get(subject, ()):
            if sup.active(at):
                return sup
        return None

    def suspended(self, subject: str | None, at: datetime) -> BanState | None:
        """The ban or lockout that suspends access now; None when there is none or a
        supervision session is running (for a ban; a lockout is short and is not supervised)."""
        ban = self.ban_for(subject, at)
        if ban is None:
            return None
        if ban.kind == "ban" and self.supervision_for(subject, at) is not None:
            return None
        return ban


# -- the ladder ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one circumvention event leads to."""

    subject: str
    counted: bool  # False: a repeat of the same finding within repeat_minutes
    points: float  # points this event earned
    total: float  # points in the window, this event included
    stage: int | None = None  # 0-based index of the stage crossed, if any
    action: str = "record"  # record | alert | warn | lockout | ban | already
    ban: BanState | None = None  # a new lockout or ban to put in force

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "counted": self.counted,
            "points": self.points,
            "total": self.total,
            "stage": None if self.stage is None else self.stage + 1,
            "sanction": self.action,
            "ban_ref": self.ban.ref if self.ban else None,
        }


@dataclass
class _Track:
    events: deque[tuple[datetime, float, str | None]] = field(
        default_factory=deque
    )  # (at, points, event ref)
    last_counted: dict[str, datetime] = field(default_factory=dict)  # key -> at
    total: float = 0.0
    warned: bool = False  # the warning page was shown in this climb
    held: int | None = None  # a lockout/ban stage reached before the warning was shown


class Ladder:
    """Per-subject points in a sliding window, and the stage each new event crosses.

    Not thread-safe: the gateway calls it from the event loop only. ``clock`` is only used when
    :meth:`observe` is given no time.
    """

    def __init__(
        self, settings: SanctionSettings, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))
        self._tracks: dict[str, _Track] = {}

    def configure(self, settings: SanctionSettings) -> None:
        self.settings = settings

    def __len__(self) -> int:
        return len(self._tracks)

    def _expire(self, track: _Track, at: datetime) -> None:
        cutoff = at - timedelta(minutes=self.settings.window_minutes)
        events = track.events
        while events and events[0][0] <= cutoff:
            track.total -= events.popleft()[1]
        if not events:
            track.total = 0.0
            track.warned = False  # a new climb starts at the bottom, warning included
            track.held = None
        repeat_cut = at - timedelta(
            minutes=max(self.settings.repeat_minutes, self.settings.window_minutes)
        )
        if len(track.last_counted) > 64:
            track.last_counted = {k: v for k, v in track.last_counted.items() if v > repeat_cut}

    def total(self, subject: str, at: datetime | None = None) -> float:
        track = self._tracks.get(subject)
        if track is None:
            return 0.0
        self._expire(track, at or self.clock())
        return round(track.total, 6)

    def warning_shown(self, subject: str, at: datetime | None = None) -> None:
        """The subject has seen the warning page: the next attempt may reach a lockout or ban
        (including one reached while the warning waited to be shown)."""
        track = self._tracks.get(subject)
        if track is not None:
            self._expire(track, at or self.clock())
            track.warned = bool(track.events)

    def _warn_index(self) -> int | None:
        return next((i for i, s in enumerate(self.settings.stages) if s.action == "warn"), None)

    def _track(self, subject: str) -> _Track:
        track = self._tracks.pop(subject, None)
        if track is None:
            track = _Track()
            if len(self._tracks) >= MAX_SUBJECTS:
                self._tracks.pop(next(iter(self._tracks)))
        self._tracks[subject] = track  # most recent last
        return track

    def observe(
        self,
        subject: str,
        key: Any,
        severity: int,
        *,
        at: datetime | None = None,
        sanctionable: bool = True,
        current: BanState | None = None,
        reason: str = "",
        event_ref: str | None = None,
        quiet: bool = False,
        count: bool = True,
        points: float | None = None,
    ) -> Outcome:
        """Count one event and say what it leads to.

        ``sanctionable`` False (a role not in ``bans.roles``, or sanctions off): the stage is
        computed and reported as ``alert``, nothing is put in force. ``current``: the ban in
        force for the subject, if any (a ban in force is not made again; a lockout in force is
        replaced by a ban stage). ``quiet``: rebuilding after a restart (no actions).
        ``count`` False: another finding of the same attempt has counted already (one request
        counts once), so this one is recorded only; ``points``: what this event counts, when
        not its severity's points (the rest of an attempt's, or a recorded event's).

        With a ``warn`` stage on the ladder, a subject who has not yet seen the warning page
        (:meth:`warning_shown`) is warned rather than locked out or banned; the stage reached
        meanwhile is kept, and the next attempt after the warning meets it.
        """
        at = at or self.clock()
        settings = self.settings
        track = self._track(subject)
        self._expire(track, at)
        last = track.last_counted.get(key)
        if not count or (
            last is not None and at - last < timedelta(minutes=settings.repeat_minutes)
        ):
            return Outcome(
                subject,
                False,
                0.0,
                round(track.total, 6),
                action="record" if sanctionable else "alert",
            )
        if points is None:
            points = settings.points_for(severity)
        before = track.total
        track.events.append((at, points, event_ref))
        track.total += points
        track.last_counted[key] = at
        after = track.total
        stage_index = None
        for index, stage in enumerate(settings.stages):  # increasing: the highest crossed wins
            if before + 1e-9 < stage.points <= after + 1e-9:
                stage_index = index
        total = round(after, 6)
        if quiet:
            return Outcome(subject, True, points, total, stage_index, "record")
        sanctioning = sanctionable and settings.enabled
        if sanctioning and track.held is not None and track.warned:
            # Reached before the warning was seen: met now, by the first attempt after it.
            stage_index = max(stage_index if stage_index is not None else -1, track.held)
            track.held = None
        if stage_index is None:
            return Outcome(
                subject, True, points, total, None, "record" if sanctionable else "alert"
            )
        stage = settings.stages[stage_index]
        if not sanctioning:
            return Outcome(subject, True, points, total, stage_index, "alert")
        if stage.action == "warn":
            return Outcome(subject, True, points, total, stage_index, "warn")
        warn_index = self._warn_index()
        if warn_index is not None and not track.warned:
            track.held = max(track.held if track.held is not None else -1, stage_index)
            return Outcome(subject, True, points, total, warn_index, "warn")
        if (
            current is not None
            and current.active(at)
            and (current.kind == "ban" or stage.action == "lockout")
        ):
            return Outcome(subject, True, points, total, stage_index, "already")
        ends = at + timedelta(minutes=stage.minutes or 0)
        why = reason or "repeated attempts to get round the school's web filter"
        ban = BanState(
            ref=new_ban_ref(),
            subject=subject,
            kind=stage.action,
            starts=at,
            ends=ends,
            reason=f"{why} ({total:g} points in {settings.window_minutes} minutes, "
            f"stage {stage_index + 1})",
            stage=stage_index + 1,
            points=total,
            events=tuple(ref for _, _, ref in track.events if ref),
        )
        return Outcome(subject, True, points, total, stage_index, stage.action, ban)


def lift(ban: BanState, *, by: str, reason: str, at: datetime) -> BanState:
    """The ban, lifted (pure; the store does the same in the database)."""
    return replace(ban, lifted_at=at, lifted_by=by, lift_reason=reason)

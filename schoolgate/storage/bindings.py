"""The table of address -> person bindings (migration 0008), its queries and its audit trail.

Every change bumps one counter, the single row of ``binding_version``, in the same
transaction, and stamps the rows it changed with the new value. The counter's row lock is held
to the commit, so versions become visible in order: a process that has read every row up to
version N has seen every change up to N, and asks only for ``version > N`` next time (one
indexed query that usually returns nothing; see :mod:`schoolgate.bindings.cache`).

At most one binding per (address, source) is in force (a partial unique index makes two
gateways racing for the same address fail rather than both win). Starts, ends, expiries and
changes of device go to the audit trail; a renewal that changes nothing but the time does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import (
    CursorResult,
    Table,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.bindings.names import normalise_address
from schoolgate.core.binding import Binding
from schoolgate.storage.exceptions import audit
from schoolgate.storage.models import BindingRow, BindingVersionRow

SYSTEM_ACTOR = "schoolgate"
T = TypeVar("T")


VERSION = cast(Table, BindingVersionRow.__table__)  # a mapped class's table is a Table


def to_plain(row: BindingRow) -> Binding:
    return Binding(
        id=row.id,
        address=row.address,
        source=row.source,
        kind=row.kind,
        user=row.user,
        role=row.role,
        device=row.device,
        mac=row.mac,
        session_id=row.session_id,
        origin=row.origin,
        started_at=row.started_at,
        last_seen=row.last_seen,
        expires_at=row.expires_at,
        idle_seconds=row.idle_seconds,
        ends_by=row.ends_by,
        ended_at=row.ended_at,
        end_reason=row.end_reason,
        version=row.version,
    )


@dataclass(frozen=True, slots=True)
class BindOutcome:
    binding: Binding
    change: str  # "started", "renewed" (same person, same device) or "replaced"
    ended: tuple[Binding, ...] = ()  # what it ended on the address (replaced, expired)


def next_version(db: Session) -> int:
    """Take the next change number (locks the counter row to the end of the transaction)."""
    db.execute(update(VERSION).where(VERSION.c.id == 1).values(version=VERSION.c.version + 1))
    value = db.scalar(select(VERSION.c.version).where(VERSION.c.id == 1))
    if value is None:  # a database migrated without the seed row (never by 0008)
        db.execute(VERSION.insert().values(id=1, version=1))
        value = 1
    return int(value)


def current_version(db: Session) -> int:
    return int(db.scalar(select(VERSION.c.version).where(VERSION.c.id == 1)) or 0)


def _audit_subject(address: str) -> str:
    return f"address {address}"


def _end(
    db: Session, row: BindingRow, *, at: datetime, reason: str, actor: str, version: int
) -> Binding:
    row.ended_at = at
    row.end_reason = reason
    row.version = version
    action = "binding.expire" if reason.startswith("expired") else "binding.end"
    audit(db, actor, action, _audit_subject(row.address), f"{to_plain(row).describe()}: {reason}")
    return to_plain(row)


def _in_force(db: Session, address: str, source: str) -> BindingRow | None:
    return db.scalars(
        select(BindingRow).where(
            BindingRow.address == address,
            BindingRow.source == source,
            BindingRow.ended_at.is_(None),
        )
    ).first()


def bind(
    db: Session,
    *,
    address: str,
    source: str,
    user: str | None,
    kind: str = "person",
    role: str | None = None,
    device: str | None = None,
    mac: str | None = None,
    session_id: str | None = None,
    origin: str = "",
    now: datetime,
    expires_at: datetime | None,
    idle_seconds: int | None = None,
    ends_by: datetime | None = None,
    actor: str,
) -> BindOutcome:
    """Bind ``address`` to a person (or a machine) for ``source``: renews the binding in force
    when it is the same person on the same device, otherwise ends it and starts a new one."""
    version = next_version(db)
    ended: list[Binding] = []
    if mac is not None:
        # The address is now used by this device: what other sources bound to another device
        # on it is over (a sign-in on a laptop that has since left, say).
        for other in db.scalars(
            select(BindingRow).where(
                BindingRow.address == address,
                BindingRow.source != source,
                BindingRow.ended_at.is_(None),
                BindingRow.mac.is_not(None),
                BindingRow.mac != mac,
            )
        ):
            reason = f"the address is now used by another device ({mac}, {source})"
            ended.append(_end(db, other, at=now, reason=reason, actor=actor, version=version))
    current = _in_force(db, address, source)
    if current is not None and current.expires_at is not None and current.expires_at <= now:
        ended.append(
            _end(
                db,
                current,
                at=current.expires_at,
                reason="expired",
                actor=SYSTEM_ACTOR,
                version=version,
            )
        )
        current = None
    if current is not None:
        same_who = current.kind == kind and current.user == user
        if kind == "machine":
            same_who = same_who and current.device == device
        same_device = mac is None or current.mac is None or current.mac == mac
        if same_who and same_device:
            if mac is not None and current.mac is None:
                audit(
                    db,
                    actor,
                    "binding.device",
                    _audit_subject(address),
                    f"{to_plain(current).describe()}: device MAC {mac}",
                )
            current.last_seen = max(current.last_seen, now)
            current.expires_at = expires_at
            current.ends_by = ends_by  # authenticated again: a new longest end
            current.idle_seconds = idle_seconds
            current.session_id = session_id or current.session_id
            current.origin = origin or current.origin
            current.role = role or current.role
            current.device = device or current.device
            current.mac = mac or current.mac
            current.version = version
            db.flush()
            return BindOutcome(to_plain(current), "renewed", tuple(ended))
        who = f"machine {device}" if kind == "machine" else user
        ended.append(
            _end(
                db,
                current,
                at=now,
                reason=f"replaced by {who} ({source})",
                actor=actor,
                version=version,
            )
        )
        db.flush()  # the partial unique index must see the old row ended first
    row = BindingRow(
        address=address,
        source=source,
        kind=kind,
        user=user,
        role=role,
        device=device,
        mac=mac,
        session_id=session_id,
        origin=origin,
        started_at=now,
        last_seen=now,
        expires_at=expires_at,
        idle_seconds=idle_seconds,
        ends_by=ends_by,
        version=version,
    )
    db.add(row)
    db.flush()
    plain = to_plain(row)
    audit(db, actor, "binding.start", _audit_subject(address), plain.describe())
    return BindOutcome(plain, "replaced" if ended else "started", tuple(ended))


def end_bindings(
    db: Session,
    *,
    reason: str,
    actor: str,
    now: datetime,
    address: str | None = None,
    source: str | None = None,
    session_id: str | None = None,
    origin: str | None = None,
    user: str | None = None,
    mac: str | None = None,
    other_mac_than: str | None = None,
    binding_id: int | None = None,
) -> list[Binding]:
    """End the bindings in force that match every criterion given (at least one)."""
    query = select(BindingRow).where(BindingRow.ended_at.is_(None))
    criteria = 0
    for column, value in (
        (BindingRow.address, address),
        (BindingRow.source, source),
        (BindingRow.session_id, session_id),
        (BindingRow.origin, origin),
        (BindingRow.user, user),
        (BindingRow.mac, mac),
        (BindingRow.id, binding_id),
    ):
        if value is not None:
            query = query.where(column == value)
            criteria += 1
    if other_mac_than is not None:
        query = query.where(BindingRow.mac.is_not(None), BindingRow.mac != other_mac_than)
        criteria += 1
    if not criteria:
        raise ValueError("say which bindings to end")
    rows = list(db.scalars(query.order_by(BindingRow.id)))
    if not rows:
        return []
    version = next_version(db)
    return [_end(db, row, at=now, reason=reason, actor=actor, version=version) for row in rows]


def touch(db: Session, seen: dict[int, datetime]) -> int:
    """Traffic seen from bound addresses: renew bindings that last while in use (``idle_seconds``
    set), never past their ``ends_by``. Returns how many were renewed."""
    if not seen:
        return 0
    rows = list(
        db.scalars(
            select(BindingRow).where(
                BindingRow.id.in_(list(seen)),
                BindingRow.ended_at.is_(None),
                BindingRow.idle_seconds.is_not(None),
            )
        )
    )
    renewed = []
    for row in rows:
        at = seen[row.id]
        if at <= row.last_seen or (row.expires_at is not None and row.expires_at <= at):
            continue  # nothing new, or it had lapsed before this traffic
        assert row.idle_seconds is not None
        expires = at + timedelta(seconds=row.idle_seconds)
        if row.ends_by is not None:
            expires = min(expires, row.ends_by)
        row.last_seen = at
        row.expires_at = expires
        renewed.append(row)
    if renewed:
        version = next_version(db)
        for row in renewed:
            row.version = version
    return len(renewed)


def expire_due(db: Session, now: datetime, *, actor: str = SYSTEM_ACTOR) -> list[Binding]:
    """End (and audit, once each even with several gateways) the bindings that have lapsed."""
    rows = list(
        db.scalars(
            select(BindingRow).where(
                BindingRow.ended_at.is_(None),
                BindingRow.expires_at.is_not(None),
                BindingRow.expires_at <= now,
            )
        )
    )
    if not rows:
        return []
    version = next_version(db)
    ended = []
    for row in rows:
        assert row.expires_at is not None
        why = "expired (no traffic)" if row.idle_seconds else "expired"
        if row.ends_by is not None and row.expires_at >= row.ends_by:
            why = "expired (the longest a session may last)"
        result = db.execute(
            update(BindingRow)
            .where(BindingRow.id == row.id, BindingRow.ended_at.is_(None))
            .values(ended_at=row.expires_at, end_reason=why, version=version)
            .execution_options(synchronize_session=False)
        )
        claimed = cast(CursorResult[Any], result).rowcount  # an UPDATE's result has one
        if claimed:
            db.refresh(row)
            audit(
                db, actor, "binding.expire", _audit_subject(row.address), to_plain(row).describe()
            )
            ended.append(to_plain(row))
    return ended


def changed_since(db: Session, version: int, limit: int = 5000) -> list[Binding]:
    """Rows changed after ``version``, oldest change first (at most ``limit``)."""
    rows = db.scalars(
        select(BindingRow)
        .where(BindingRow.version > version)
        .order_by(BindingRow.version, BindingRow.id)
        .limit(limit)
    )
    return [to_plain(row) for row in rows]


def in_force(db: Session, now: datetime) -> list[Binding]:
    rows = db.scalars(
        select(BindingRow)
        .where(BindingRow.ended_at.is_(None))
        .where(or_(BindingRow.expires_at.is_(None), BindingRow.expires_at > now))
        .order_by(BindingRow.address, BindingRow.source)
    )
    return [to_plain(row) for row in rows]


def not_ended(db: Session) -> tuple[int, list[Binding]]:
    """The change number, then every binding not ended: what a cache starts from. The number is
    read first, so a change committed in between is read again, never missed."""
    version = current_version(db)
    rows = db.scalars(select(BindingRow).where(BindingRow.ended_at.is_(None)))
    return version, [to_plain(row) for row in rows]


def find(
    db: Session,
    *,
    address: str | None = None,
    user: str | None = None,
    include_ended: bool = False,
    limit: int = 200,
) -> list[Binding]:
    """Bindings of an address or a user (newest first); only those not ended unless asked."""
    query = select(BindingRow)
    if address is not None:
        query = query.where(BindingRow.address == address)
    if user is not None:
        query = query.where(func.lower(BindingRow.user) == user.lower())
    if not include_ended:
        query = query.where(BindingRow.ended_at.is_(None))
    rows = db.scalars(
        query.order_by(BindingRow.started_at.desc(), BindingRow.id.desc()).limit(limit)
    )
    return [to_plain(row) for row in rows]


def target_of(target: str | None) -> tuple[str | None, str | None]:
    """(address, user): an address when it reads as one, else a user name."""
    if not target:
        return None, None
    try:
        return normalise_address(target), None
    except ValueError:
        return None, target.strip().lower()


def lookup(
    db: Session, target: str | None, *, history: bool, now: datetime, limit: int = 500
) -> list[Binding]:
    """The bindings of ``target`` (an address or a user; every address if empty) in force at
    ``now``, or with ``history`` also those that ended; by address, then oldest first."""
    address, user = target_of(target)
    found = find(db, address=address, user=user, include_ended=history, limit=limit)
    if not history:
        found = [b for b in found if b.in_force(now)]
    return sorted(found, key=lambda b: (b.address, b.started_at))


def in_transaction(
    sessions: sessionmaker[Session], work: Callable[[Session], T], attempts: int = 3
) -> T:
    """Run ``work`` in a transaction of its own and commit; a transaction that lost a race for
    the same address (the unique index refused it) is run again on what the winner wrote."""
    for attempt in range(attempts):
        try:
            with sessions() as db:
                result = work(db)
                db.commit()
                return result
        except IntegrityError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")

"""Hosts recognised from their traffic (an unlisted Fediverse server), kept with the evidence.

One row per host: the category it is treated as from then on, the software and what its
traffic showed (:meth:`schoolgate.core.fediverse.Finding.describe`), when it was first and
last recognised, and by which client's request. Every gateway worker reads them back (the
decision applies them to hosts no list names); IT Support see them in
``schoolgate lists detected`` and can put a host in a list of their own, or on the allowlist,
which then wins. Created by migration 0011.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.storage.models import DetectedHostRow

log = logging.getLogger(__name__)

MAX_EVIDENCE = 2000


@dataclass(frozen=True, slots=True)
class Detection:
    host: str
    category: str
    software: str | None
    evidence: str
    at: datetime
    client_ip: str | None = None


def save_detection(session: Session, found: Detection) -> bool:
    """Keep (or refresh) a recognised host; True when it is new."""
    row = session.get(DetectedHostRow, found.host)
    if row is not None:
        row.last_seen = found.at
        if found.evidence and found.evidence not in row.evidence:
            row.evidence = (row.evidence + "\n" + found.evidence)[-MAX_EVIDENCE:]
        row.software = row.software or found.software
        return False
    session.add(
        DetectedHostRow(
            host=found.host,
            category=found.category,
            software=found.software,
            evidence=found.evidence[:MAX_EVIDENCE],
            first_seen=found.at,
            last_seen=found.at,
            client_ip=found.client_ip,
        )
    )
    return True


def detected_hosts(session: Session) -> list[DetectedHostRow]:
    return list(session.scalars(select(DetectedHostRow).order_by(DetectedHostRow.first_seen)))


def forget_host(session: Session, host: str) -> bool:
    row = session.get(DetectedHostRow, host)
    if row is None:
        return False
    session.delete(row)
    return True

"""Refreshing category lists from configured URLs, safely.

A new list is downloaded (or read) into a temporary file beside the list it replaces, parsed
with :func:`schoolgate.core.lists.parse_list`, and refused if it fails to parse, is empty, or has
shrunk by more than the configured share: the old list stays in force and the refusal is
reported (return value, audit trail, the daily report). An accepted list replaces the old one
with ``os.replace`` (atomic), and the gateway's policy holder, which watches every list file,
reloads it without a restart. The previous file is kept as ``<name>.previous``.

Config (section ``list_updates``)::

    list_updates:
      at: "04:15"          # daily, the default site's local time
      max_shrink: 0.2      # refuse a list that loses more than 20% of its entries
      timeout_seconds: 60
      sources:
        - {category: social_media, url: https://.../social.txt, file: blocklists/social_media.txt,
           format: auto}   # auto, domains, hosts, adblock
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from schoolgate.core.configfile import Issues
from schoolgate.core.list_update_settings import (  # noqa: F401 - read here by callers
    SECTION,
    TEXT_FORMATS,
    ListSource,
    ListUpdateSettings,
    read_list_updates,
)
from schoolgate.core.lists import parse_list

SQUIDGUARD_FILES = ("domains", "urls", "expressions")
# A squidGuard archive bigger than this unpacked is refused (UT1's adult is about 130 MB).
MAX_UNPACKED = 1 << 30
CHUNK = 64 * 1024


def list_updates_of(policy: Any) -> ListUpdateSettings:
    """The policy's ``list_updates`` settings, with its categories' subscriptions."""
    settings: ListUpdateSettings = policy.settings.list_updates
    return settings


# -- progress -----------------------------------------------------------------------------------
class Progress:
    """A simple progress bar on stderr (only when it is a terminal, or when forced)."""

    def __init__(self, label: str, total: int | None, stream: IO[str] | None = None,
                 enabled: bool | None = None, *, in_bytes: bool = True) -> None:  # fmt: skip
        self.label = label
        self.total = total
        self.in_bytes = in_bytes  # False: count steps, show no MiB
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last > 0.1:
            self._last = now
            self._draw()

    def _draw(self, end: str = "") -> None:
        amount = f" {self.done / 1048576:.1f} MiB" if self.in_bytes else ""
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            text = f"\r{self.label} [{bar:<30}] {frac:4.0%}{amount}"
        else:
            text = f"\r{self.label}{amount}"
        self.stream.write(text + end)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw("\n")


# -- the update ---------------------------------------------------------------------------------
@dataclass
class UpdateResult:
    category: str
    file: str
    source: str
    accepted: bool
    old_entries: int = 0
    new_entries: int = 0
    message: str = ""
    issues: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "file": self.file,
            "source": self.source,
            "accepted": self.accepted,
            "old_entries": self.old_entries,
            "new_entries": self.new_entries,
            "message": self.message,
            "issues": self.issues[:20],
        }


def download(url: str, dest: IO[bytes], *, timeout: float = 60, progress: bool | None = None,
             label: str = "") -> int:  # fmt: skip
    """Copy ``url`` into ``dest`` with a progress bar; returns the byte count."""
    request = urllib.request.Request(url, headers={"User-Agent": "schoolgate-list-update/1"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        length = response.headers.get("Content-Length")
        bar = Progress(label or url, int(length) if length and length.isdigit() else None,
                       enabled=progress)  # fmt: skip
        total = 0
        while True:
            chunk = response.read(CHUNK)
            if not chunk:
                break
            dest.write(chunk)
            total += len(chunk)
            bar.update(len(chunk))
        bar.close()
    return total


def count_entries(path: Path, fmt: str = "auto") -> int:
    if not path.exists():
        return 0
    return len(parse_list(path, Issues(), fmt=fmt))


def install_list(
    candidate: Path,
    target: Path,
    *,
    category: str,
    source: str,
    fmt: str = "auto",
    max_shrink: float = 0.2,
    force: bool = False,
    min_entries: int = 1,
) -> UpdateResult:
    """Validate ``candidate`` (a file in ``target``'s folder, or a squidGuard folder beside a
    target folder) and swap it in, or refuse it.

    ``candidate`` is consumed: moved into place, or deleted when refused.
    """
    result = UpdateResult(category, str(target), source, accepted=False)
    try:
        issues = Issues()
        parsed = parse_list(candidate, issues, fmt=fmt, display_path=source)
        result.new_entries = len(parsed)
        result.old_entries = count_entries(target, fmt)
        result.issues = [str(i) for i in issues.items] + [
            f"warning: {w}" for w in issues.warnings[:20]
        ]
        if issues.items:
            result.message = f"refused: the new list does not parse ({len(issues.items)} error(s))"
            return result
        if not len(parsed):
            result.message = "refused: the new list has no entries"
            return result
        if len(parsed) < min_entries and not force:
            result.message = (
                f"refused: the new list has {len(parsed)} entries, fewer than the "
                f"{min_entries} expected of it (a truncated or wrong download?)"
            )
            return result
        # Garbage (an HTML error page, a truncated file) is mostly unreadable lines.
        if parsed.skipped > max(10, len(parsed)):
            result.message = (
                f"refused: {parsed.skipped} unreadable lines for {len(parsed)} entries "
                "(not a list in this format?)"
            )
            return result
        old = result.old_entries
        if old and not force and result.new_entries < old * (1 - max_shrink):
            lost = 1 - result.new_entries / old
            result.message = (
                f"refused: the list shrank by {lost:.0%} ({old} -> {result.new_entries} "
                f"entries; at most {max_shrink:.0%} allowed)"
            )
            return result
        if candidate.is_dir():
            _swap_folder(candidate, target)
        else:
            if target.exists():
                previous = target.with_name(target.name + ".previous")
                previous.write_bytes(target.read_bytes())
            os.replace(candidate, target)
        result.accepted = True
        result.message = f"updated: {old} -> {result.new_entries} entries"
        return result
    finally:
        if candidate.is_dir():
            shutil.rmtree(candidate, ignore_errors=True)
        elif candidate.exists() and not result.accepted:
            candidate.unlink()


def _swap_folder(candidate: Path, target: Path) -> None:
    """Put a new squidGuard folder's files in place of the old ones, each with ``os.replace``:
    the folder itself never disappears, so a gateway reloading meanwhile never finds the
    category empty. The old files are kept in ``<folder>.previous``."""
    if not target.exists():
        os.replace(candidate, target)
        return
    previous = target.with_name(target.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    shutil.copytree(target, previous)
    new_names = {p.name for p in candidate.iterdir()}
    for path in candidate.iterdir():
        os.replace(path, target / path.name)
    for path in target.iterdir():
        if path.is_file() and path.name not in new_names and path.name in SQUIDGUARD_FILES:
            path.unlink()


def _temp_beside(target: Path) -> tuple[IO[bytes], Path]:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".new", dir=target.parent)
    return os.fdopen(handle, "wb"), Path(name)


def fetch_and_install(
    url: str,
    target: Path,
    *,
    category: str,
    fmt: str = "auto",
    max_shrink: float = 0.2,
    timeout: float = 60,
    progress: bool | None = None,
    force: bool = False,
) -> UpdateResult:
    """Download ``url`` (or copy a local file) and :func:`install_list` it."""
    out, temp = _temp_beside(target)
    try:
        with out:
            if "://" in url:
                download(url, out, timeout=timeout, progress=progress, label=category)
            else:
                with open(url, "rb") as src:
                    bar = Progress(category, os.fstat(src.fileno()).st_size, enabled=progress)
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
                    bar.close()
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
        temp.unlink(missing_ok=True)
        return UpdateResult(
            category,
            str(target),
            url,
            accepted=False,
            old_entries=count_entries(target, fmt),
            message=f"refused: could not fetch the list: {exc}",
        )
    return install_list(
        temp, target, category=category, source=url, fmt=fmt, max_shrink=max_shrink, force=force
    )


def update_all(
    settings: ListUpdateSettings,
    *,
    session: Any = None,
    categories: list[str] | None = None,
    progress: bool | None = None,
    actor: str = "schoolgate",
) -> list[UpdateResult]:
    """Refresh every configured source (or those of ``categories``); audit each outcome."""
    results = []
    for src in settings.sources:
        if categories and src.category not in categories:
            continue
        result = fetch_and_install(
            src.url,
            src.file,
            category=src.category,
            fmt=src.format,
            max_shrink=settings.max_shrink,
            timeout=settings.timeout_seconds,
            progress=progress,
        )
        results.append(result)
        if session is not None:
            audit_result(session, result, actor)
    return results


def audit_result(session: Any, result: UpdateResult, actor: str = "schoolgate") -> None:
    from schoolgate.storage.exceptions import audit

    audit(
        session,
        actor,
        "lists.update" if result.accepted else "lists.refused",
        f"list {result.category}",
        json.dumps(result.as_dict()),
    )


class CompileProgress:
    """Draws the list compiler's phases (``load_policy(list_progress=...)``) as bars."""

    def __init__(self, enabled: bool | None = None, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.stream = stream
        self.bar: Progress | None = None
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = Progress(
                f"compiling lists: {phase}",
                total,
                self.stream,
                enabled=self.enabled,
                in_bytes=phase == "reading lists",
            )
        assert self.bar is not None
        self.bar.update(done - self.bar.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def compile_lists(config_path: Any, data_dir: Any, *, progress: bool | None = None) -> Any:
    """Compile the lists of the config as it now is (so that the gateways, reloading, find
    them compiled), with a progress bar; returns the policy."""
    from schoolgate.core.config import load_policy
    from schoolgate.storage import check_database_url

    bar = CompileProgress(progress)
    try:
        return load_policy(
            config_path,
            data_dir=data_dir,
            list_progress=bar,
            check_database_url=check_database_url,
        )
    finally:
        bar.close()


def list_stats(policy: Any, settings: ListUpdateSettings | None = None) -> list[dict[str, Any]]:
    """Entries per category in force (the policy's matcher) and per list file, and the state
    of each subscription (when last refreshed, stale, the last attempt's outcome)."""
    from datetime import UTC, datetime

    from schoolgate.core.subscriptions import age_words, describe_period, state_of

    stats = policy.matcher.stats()
    locked = policy.locked_matcher.stats() if policy.locked_matcher is not None else {}
    now = datetime.now(UTC)
    tried = read_state(settings) if settings is not None else {}
    out = []
    for name, cat in policy.categories.items():
        subs = []
        for sub in getattr(policy, "subscriptions", ()):
            if sub.category != name:
                continue
            state = state_of(sub, now)
            last = tried.get(f"{sub.category}/{sub.name}", {})
            if not state.present or state.refreshed is None:  # (present: it has a time)
                status = "not fetched yet: an empty list"
            else:
                status = f"refreshed {age_words(now - state.refreshed)} ago" + (
                    " (STALE)" if state.stale else ""
                )
            if last.get("message"):
                at = datetime.fromtimestamp(last["attempted"], UTC)
                status += f"; last attempt {at:%Y-%m-%d %H:%M} UTC: {last['message']}"
            subs.append(
                {
                    "name": sub.name,
                    "url": sub.url,
                    "urls": list(sub.urls),
                    "format": sub.format,
                    "file": str(sub.file),
                    "schedule": f"every {describe_period(sub.schedule)}",
                    "min_entries": sub.min_entries,
                    "max_shrink": sub.max_shrink,
                    "licence": sub.licence,
                    "attribution": sub.attribution,
                    "present": state.present,
                    "refreshed": state.refreshed.isoformat() if state.refreshed else None,
                    "stale": state.stale,
                    "last_attempt": last or None,
                    "status": status,
                }
            )
        out.append(
            {
                "category": name,
                "locked": bool(cat.locked),
                "entries": stats.get(name, locked.get(name, 0)),
                "sources": list(cat.sources),
                "subscriptions": subs,
            }
        )
    if "allowlist" in stats:
        out.append(
            {
                "category": "allowlist",
                "locked": False,
                "entries": stats["allowlist"],
                "sources": [],
                "subscriptions": [],
            }  # fmt: skip
        )
    return out


# -- subscriptions ----------------------------------------------------------------------------
def _unpack_squidguard(archive: Path, dest: Path) -> None:
    """The ``domains``/``urls``/``expressions`` files of a squidGuard category archive
    (``adult/domains``, ...) into ``dest``; anything else in it is ignored. ValueError when
    it is no such archive (or unpacks to more than :data:`MAX_UNPACKED`)."""
    dest.mkdir()
    total = 0
    found: set[str] = set()
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or name not in SQUIDGUARD_FILES:
                    continue
                if name in found:
                    raise ValueError(f"the archive has two {name} files (several categories?)")
                total += member.size
                if total > MAX_UNPACKED:
                    raise ValueError("the archive unpacks to more than 1 GiB")
                source = tar.extractfile(member)
                if source is None:
                    continue
                with source, open(dest / name, "wb") as out:  # never a path from the archive
                    shutil.copyfileobj(source, out, CHUNK)
                found.add(name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"not a readable .tar.gz: {exc}") from None
    if "domains" not in found and "urls" not in found:
        raise ValueError("the archive has no squidGuard domains or urls file")


def fetch_subscription(
    sub: Any, *, timeout: float = 60, progress: bool | None = None, force: bool = False
) -> UpdateResult:
    """Download a subscription (every part of it, in order), check it and put it in place, or
    refuse it and keep the list in force."""
    target: Path = sub.file
    out, temp = _temp_beside(target)
    unpacked = temp.with_name(temp.name + ".d")
    label = f"{sub.category}/{sub.name}"
    fmt = sub.list_format
    try:
        with out:
            for index, url in enumerate(sub.urls):
                if index:
                    out.write(b"\n")
                if url.startswith("file://"):
                    with open(url[len("file://") :], "rb") as src:
                        shutil.copyfileobj(src, out, CHUNK)
                else:
                    download(url, out, timeout=timeout, progress=progress, label=label)
        if sub.format == "squidguard-tgz":
            _unpack_squidguard(temp, unpacked)
            temp.unlink()
            candidate = unpacked
        else:
            candidate = temp
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
        temp.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)
        return UpdateResult(sub.category, str(target), sub.url, accepted=False,
                            old_entries=count_entries(target, fmt),
                            message=f"refused: could not fetch the list: {exc}")  # fmt: skip
    return install_list(
        candidate, target, category=sub.category, source=sub.url, fmt=fmt,
        max_shrink=sub.max_shrink, force=force, min_entries=sub.min_entries,
    )  # fmt: skip


STATE_FILE = "subscriptions.json"


def _state_path(settings: ListUpdateSettings) -> Path | None:
    return settings.data_dir / STATE_FILE if settings.data_dir is not None else None


def read_state(settings: ListUpdateSettings) -> dict[str, dict[str, Any]]:
    """The last attempt of each subscription (``category/name`` -> when, outcome, message)."""
    path = _state_path(settings)
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(settings: ListUpdateSettings, state: dict[str, dict[str, Any]]) -> None:
    path = _state_path(settings)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    out, temp = _temp_beside(path)
    with out:
        out.write(json.dumps(state, indent=1, sort_keys=True).encode())
    os.replace(temp, path)


def _retry_after(sub: Any) -> float:
    """Seconds before a failed fetch is tried again: an hour, or the schedule if shorter."""
    return min(3600.0, sub.schedule.total_seconds())


def refresh_subscriptions(
    settings: ListUpdateSettings,
    *,
    now: Any,
    session: Any = None,
    categories: list[str] | None = None,
    due_only: bool = True,
    progress: bool | None = None,
    actor: str = "schoolgate",
) -> list[UpdateResult]:
    """Fetch the subscriptions that are due (never fetched, or their schedule has passed
    since the last refresh; a failed one is retried after an hour), or all of them (or
    those of ``categories``) when not ``due_only``. Each outcome is audited and kept in
    ``<data-dir>/subscriptions.json`` for ``schoolgate lists stats``."""
    from schoolgate.core.subscriptions import state_of

    state = read_state(settings)
    results = []
    for sub in settings.subscriptions:
        if categories and sub.category not in categories:
            continue
        key = f"{sub.category}/{sub.name}"
        if due_only:
            if not state_of(sub, now).due:
                continue
            tried = state.get(key, {})
            last = tried.get("attempted")
            if not tried.get("accepted", True) and isinstance(last, (int, float)):
                if now.timestamp() - last < _retry_after(sub):
                    continue
        result = fetch_subscription(sub, timeout=settings.timeout_seconds, progress=progress)
        results.append(result)
        state[key] = {
            "attempted": now.timestamp(),
            "accepted": result.accepted,
            "message": result.message,
            "entries": result.new_entries if result.accepted else result.old_entries,
        }
        if session is not None:
            audit_result(session, result, actor)
    if results:
        _write_state(settings, state)
    return results


def legacy_due(src: ListSource, now: Any) -> bool:
    """A ``list_updates.sources`` list is refreshed daily: due when its file is a day old."""
    try:
        return now.timestamp() - src.file.stat().st_mtime >= 86400 - 900
    except OSError:
        return True


def refresh_lists(
    settings: ListUpdateSettings, *, now: Any, session: Any = None, progress: bool | None = None
) -> list[UpdateResult]:
    """The scheduled job: subscriptions that are due and the ``list_updates.sources`` lists
    (every run when the job runs daily at ``list_updates.at``; when there are subscriptions
    it runs every 15 minutes, and those lists are fetched once a day)."""
    sources = settings.sources
    if settings.subscriptions:
        sources = tuple(src for src in sources if legacy_due(src, now))
    results = update_all(dataclasses.replace(settings, sources=sources), session=session,
                         progress=progress)  # fmt: skip
    results += refresh_subscriptions(settings, now=now, session=session, progress=progress)
    return results

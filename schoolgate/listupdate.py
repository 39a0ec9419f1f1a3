"""Refreshing category lists from configured URLs, safely.

A new list is downloaded (or read) into a temporary file beside the list it replaces, parsed
with :func:`schoolgate.lists.parse_list`, and refused if it fails to parse, is empty, or has
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

import json
import os
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from schoolgate.configfile import Issues, Section
from schoolgate.lists import FORMATS, parse_list

SECTION = "list_updates"
TEXT_FORMATS = tuple(f for f in FORMATS if f != "squidguard")
CHUNK = 64 * 1024


@dataclass(frozen=True)
class ListSource:
    category: str
    url: str
    file: Path
    format: str = "auto"
    field: str = ""  # where it was configured, for messages


@dataclass(frozen=True)
class ListUpdateSettings:
    sources: tuple[ListSource, ...] = ()
    max_shrink: float = 0.2
    at: str = "04:15"
    timeout_seconds: int = 60


def read_list_updates(
    sec: Section | None, base: Path, categories: Any = None
) -> ListUpdateSettings:
    """Validate the ``list_updates`` section (``base``: the config's folder)."""
    from schoolgate.retention import parse_clock

    if sec is None:
        return ListUpdateSettings()
    sec.check_keys({"sources", "max_shrink", "at", "timeout_seconds"})

    def share(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("a share between 0 and 1, such as 0.2")
        if not 0 <= float(value) <= 1:
            raise ValueError("a share between 0 and 1, such as 0.2")
        return float(value)

    max_shrink = sec.parse("max_shrink", share, "a share between 0 and 1", default=0.2)
    at = sec.parse("at", parse_clock, "a time such as 04:15", default="04:15")
    timeout = sec.number("timeout_seconds", default=60, minimum=1, maximum=3600)
    sources = []
    for item in sec.sections("sources"):
        item.check_keys({"category", "url", "file", "format"})
        cat = item.text("category", required=True)
        url = item.text("url", required=True)
        file = item.text("file", required=True)
        fmt = item.choice("format", TEXT_FORMATS, default="auto")
        if url and not url.startswith(("http://", "https://", "file://")):
            item.error("url", f"expected an http(s):// or file:// address, got {url!r}")
            continue
        if cat and categories is not None and cat not in categories:
            item.error("category", f"unknown category {cat!r}")
            continue
        if cat and categories is not None and getattr(categories[cat], "locked", False):
            # Locked lists (IWF, CTIRU) come from their own licensed feeds; allowed, but noted.
            pass
        if cat and url and file:
            path = Path(file).expanduser()
            if not path.is_absolute():
                path = base / path
            sources.append(ListSource(cat, url, path, fmt or "auto", item.path))
    return ListUpdateSettings(tuple(sources), max_shrink, at, timeout)


def list_updates_of(policy: Any) -> ListUpdateSettings:
    from schoolgate.retention import extra_section

    issues = Issues()
    sec = extra_section(policy, SECTION, issues)
    settings = read_list_updates(
        sec, Path(policy.settings.config_path).resolve().parent, policy.categories
    )
    issues.raise_if_any()
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
) -> UpdateResult:
    """Validate ``candidate`` (a file in ``target``'s folder) and swap it in, or refuse it.

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
        if target.exists():
            previous = target.with_name(target.name + ".previous")
            previous.write_bytes(target.read_bytes())
        os.replace(candidate, target)
        result.accepted = True
        result.message = f"updated: {old} -> {result.new_entries} entries"
        return result
    finally:
        if candidate.exists() and not result.accepted:
            candidate.unlink()


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
    from schoolgate.store import audit

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
    from schoolgate.config import load_policy

    bar = CompileProgress(progress)
    try:
        return load_policy(config_path, data_dir=data_dir, list_progress=bar)
    finally:
        bar.close()


def list_stats(policy: Any) -> list[dict[str, Any]]:
    """Entries per category in force (the policy's matcher) and per list file."""
    stats = policy.matcher.stats()
    locked = policy.locked_matcher.stats() if policy.locked_matcher is not None else {}
    out = []
    for name, cat in policy.categories.items():
        out.append(
            {
                "category": name,
                "locked": bool(cat.locked),
                "entries": stats.get(name, locked.get(name, 0)),
                "sources": list(cat.sources),
            }
        )
    if "allowlist" in stats:
        out.append(
            {
                "category": "allowlist",
                "locked": False,
                "entries": stats["allowlist"],
                "sources": [],
            }  # fmt: skip
        )
    return out

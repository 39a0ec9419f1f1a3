"""DHCP lease files: which device (MAC address, host name) holds which address, until when.

Three servers' files are read: ISC dhcpd's ``dhcpd.leases`` (a journal of ``lease`` blocks, the
last block for an address wins), dnsmasq's ``dnsmasq.leases`` (one line per lease, IPv6 ones
after a ``duid`` line) and Kea's memfile CSV (``kea-leases4.csv``/``kea-leases6.csv`` with their
lease-file-cleanup companions ``.1``/``.2``/``.completed``; the last row for an address wins).

A pupil's device chooses its own host name, and the files are read while the DHCP server writes
them: every field is checked, a bad line or block is skipped and reported with its file and line
(:class:`LeaseProblem`), and the rest of the file is still used.

:class:`LeaseWatcher` re-reads the files when they change (size, time or inode), on a
background thread; the event loop reads its current table (an immutable mapping swapped whole).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from schoolgate.bindings.names import clean_device_name, normalise_address, normalise_mac
from schoolgate.core.identity_settings import LeaseFile

if TYPE_CHECKING:
    from schoolgate.gateway.background import Periodic

log = logging.getLogger(__name__)

MAX_FILE = 256 * 1024 * 1024  # a lease file larger than this is refused, not read into memory


@dataclass(frozen=True, slots=True)
class Lease:
    address: str
    mac: str | None  # None for IPv6 leases that carry only a DUID
    hostname: str | None
    expires: datetime | None  # None: never
    active: bool = True  # False: released, expired, free, declined (the address is not held)
    source: str = ""  # "dhcpd.leases:120"

    def held(self, now: datetime) -> bool:
        return self.active and (self.expires is None or self.expires > now)

    @property
    def device(self) -> str | None:
        """How the decision log names the device: its host name, else its MAC address."""
        return self.hostname or self.mac


@dataclass(frozen=True, slots=True)
class LeaseProblem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class ParseResult:
    leases: dict[str, Lease]
    problems: list[LeaseProblem]
    consumed: int = 0  # ISC: characters of complete entries (where an append is read from)
    consumed_line: int = 1


def _address(text: str) -> str:
    return normalise_address(text)


# -- ISC dhcpd ------------------------------------------------------------------------------------
_ISC_TIME = re.compile(r"^(?:\d\s+)?(\d{4})/(\d{1,2})/(\d{1,2})\s+(\d{1,2}):(\d{2}):(\d{2})$")
_ISC_ESCAPE = re.compile(r"\\([0-7]{3}|.)")
_ISC_INACTIVE = {"free", "expired", "released", "abandoned", "reset", "backup", "bootp"}


def _isc_time(text: str) -> datetime | None:
    """``4 2026/11/26 20:01:02`` (UTC), ``epoch 1764187262``, ``never`` -> datetime/None."""
    text = text.strip()
    if text == "never":
        return None
    if text.startswith("epoch "):
        return datetime.fromtimestamp(int(text.split()[1]), UTC)
    found = _ISC_TIME.match(text)
    if not found:
        raise ValueError(f"unreadable time {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in found.groups())
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def _isc_string(text: str) -> str:
    text = text.strip()
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError("expected a quoted string")
    raw = text[1:-1]

    def unescape(match: re.Match[str]) -> str:
        value = match.group(1)
        return chr(int(value, 8)) if len(value) == 3 else value

    decoded = _ISC_ESCAPE.sub(unescape, raw)
    # Octal escapes are bytes: turn the Latin-1 view back into UTF-8 text where it is.
    try:
        return decoded.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return decoded


_ISC_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|#[^\n]*|[;{}]|[^;{}"#]+')


def _statements(text: str, first_line: int = 1) -> Iterable[tuple[int, str, int]]:
    """(line, statement, end offset) of an ISC lease file: split on ``;``, ``{`` and ``}``
    outside quotes, comments dropped. A statement that opens a block ends with ``{``; a ``}`` is
    a statement of its own. An unterminated last statement (the server is writing the file) is
    yielded with a leading NUL."""
    line = first_line
    start_line = first_line
    current: list[str] = []
    for match in _ISC_TOKEN.finditer(text):
        token = match.group()
        first = token[0]
        if first == "#":
            continue
        if first in ";{}":
            statement = " ".join("".join(current).split())
            if first == "{":
                yield (start_line if statement else line), f"{statement} {{".lstrip(), match.end()
            elif statement:
                yield start_line, statement, match.end()
            if first == "}":
                yield line, "}", match.end()
            current = []
            continue
        if not current:
            stripped = token.lstrip()
            if not stripped:
                line += token.count("\n")
                continue
            start_line = line + token[: len(token) - len(stripped)].count("\n")
        current.append(token)
        line += token.count("\n")
    if current and "".join(current).strip():
        yield start_line, "\x00" + "".join(current).strip(), len(text)


def parse_isc(text: str, shown: str, *, first_line: int = 1) -> ParseResult:
    """``dhcpd.leases``; IPv4 ``lease`` blocks (other blocks and statements are skipped).

    :attr:`ParseResult.consumed` is where the last complete top-level entry ends: dhcpd appends
    to the file, and the next read starts there."""
    leases: dict[str, Lease] = {}
    problems: list[LeaseProblem] = []
    depth = 0  # of blocks that are not leases (failover peer, host, ...)
    block: dict[str, str] | None = None
    block_line = 0
    inner = 0  # blocks nested in a lease block (not used)
    consumed = 0
    consumed_line = first_line

    def problem(line: int, message: str) -> None:
        problems.append(LeaseProblem(shown, line, message))

    for line, statement, end in _statements(text, first_line):
        if statement.startswith("\x00"):
            break  # reported below
        if block is not None:
            if statement == "}":
                if inner:
                    inner -= 1
                    continue
                try:
                    lease = _isc_lease(block, f"{shown}:{block_line}")
                    leases[lease.address] = lease
                except (KeyError, ValueError) as exc:
                    problem(block_line, f"lease skipped: {exc}")
                block = None
                consumed, consumed_line = end, line
                continue
            if statement.endswith("{"):
                if statement.startswith("lease ") and not inner:
                    problem(block_line, "lease block not closed (skipped)")
                    block, block_line = {"address": statement[6:-1].strip()}, line
                else:
                    inner += 1
                continue
            if inner:
                continue
            keyword, _, value = statement.partition(" ")
            if keyword == "binding" and value.startswith("state "):
                block["state"] = value[6:].strip()
            elif keyword == "hardware":
                block["hardware"] = value.strip()
            elif keyword in ("starts", "ends", "client-hostname"):
                block[keyword] = value.strip()
            continue
        if statement == "}":
            if depth > 0:
                depth -= 1
            else:
                problem(line, "unexpected '}'")
        elif statement.endswith("{"):
            if depth == 0 and statement.startswith("lease "):
                block, block_line, inner = {"address": statement[6:-1].strip()}, line, 0
                continue
            depth += 1
        if depth == 0:
            consumed, consumed_line = end, line
    if block is not None:
        problem(block_line, "incomplete lease at the end of the file (skipped; being written?)")
    return ParseResult(leases, problems, consumed, consumed_line)


def _isc_lease(block: dict[str, str], source: str) -> Lease:
    address = _address(block["address"])
    if ipaddress.ip_address(address).version != 4:
        raise ValueError("not an IPv4 address")
    mac = None
    hardware = block.get("hardware")
    if hardware:
        kind, _, value = hardware.partition(" ")
        mac = normalise_mac(value) if kind in ("ethernet", "token-ring", "fddi") else None
        if kind == "ethernet" and mac is None:
            raise ValueError(f"unreadable hardware address {value!r}")
    ends = _isc_time(block["ends"]) if "ends" in block else None
    hostname = None
    if "client-hostname" in block:
        hostname = clean_device_name(_isc_string(block["client-hostname"]))
    state = block.get("state", "active")
    return Lease(address, mac, hostname, ends, state not in _ISC_INACTIVE, source)


# -- dnsmasq --------------------------------------------------------------------------------------
def parse_dnsmasq(text: str, shown: str) -> ParseResult:
    leases: dict[str, Lease] = {}
    problems: list[LeaseProblem] = []
    ipv6 = False
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if fields[0] == "duid":
            ipv6 = True
            continue
        if len(fields) < 4:
            problems.append(LeaseProblem(shown, number, f"expected 5 fields, got {len(fields)}"))
            continue
        try:
            expiry = int(fields[0])
            address = _address(fields[2])
        except ValueError as exc:
            problems.append(LeaseProblem(shown, number, f"line skipped: {exc}"))
            continue
        mac = None if ipv6 else normalise_mac(fields[1])
        if not ipv6 and mac is None and "-" not in fields[1]:
            problems.append(LeaseProblem(shown, number, f"unreadable MAC address {fields[1]!r}"))
            continue
        hostname = clean_device_name(fields[3]) if fields[3] != "*" else None
        expires = datetime.fromtimestamp(expiry, UTC) if expiry else None
        leases[address] = Lease(address, mac, hostname, expires, True, f"{shown}:{number}")
    return ParseResult(leases, problems)


# -- Kea memfile CSV ------------------------------------------------------------------------------
def _kea_text(value: str) -> str:
    return value.replace("&#x2c", ",")  # Kea escapes commas in text columns


def parse_kea(text: str, shown: str, *, first_line: int = 1) -> ParseResult:
    leases: dict[str, Lease] = {}
    problems: list[LeaseProblem] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return ParseResult(leases, problems)
    except csv.Error as exc:
        return ParseResult(leases, [LeaseProblem(shown, first_line, f"invalid CSV: {exc}")])
    need = ("address", "valid_lifetime", "expire")
    if any(column not in header for column in need):
        problems.append(
            LeaseProblem(shown, first_line, f"not a Kea lease file header: {','.join(header)}")
        )
        return ParseResult(leases, problems)
    index = {name: header.index(name) for name in header}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(LeaseProblem(shown, reader.line_num, f"invalid CSV: {exc}"))
            continue
        line = reader.line_num + first_line - 1
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < len(need) or len(row) < max(index[c] for c in need) + 1:
            problems.append(LeaseProblem(shown, line, f"expected {len(header)} columns"))
            continue

        def cell(name: str, row: list[str] = row) -> str:
            position = index.get(name)
            return row[position].strip() if position is not None and position < len(row) else ""

        try:
            address = _address(cell("address"))
            lifetime = int(cell("valid_lifetime") or "0")
            expire = int(cell("expire") or "0")
            state = int(cell("state") or "0")
        except ValueError as exc:
            problems.append(LeaseProblem(shown, line, f"row skipped: {exc}"))
            continue
        if cell("lease_type") not in ("", "0"):
            continue  # a delegated prefix, not an address
        mac = normalise_mac(cell("hwaddr"))
        hostname = clean_device_name(_kea_text(cell("hostname")).rstrip(".")) or None
        expires = datetime.fromtimestamp(expire, UTC)
        # A lease deleted or released is written again with a lifetime of 0; state 0 is
        # "assigned" (1 declined, 2 expired and reclaimed, 3 released).
        active = lifetime != 0 and state == 0
        leases[address] = Lease(address, mac, hostname, expires, active, f"{shown}:{line}")
    return ParseResult(leases, problems)


def kea_files(path: Path) -> list[Path]:
    """The files holding Kea's leases, oldest first: the last cleanup's output (``.completed``,
    else ``.1``), the file being cleaned up (``.2``), then the current one."""
    done = path.with_name(path.name + ".completed")
    previous = done if done.exists() else path.with_name(path.name + ".1")
    return [p for p in (previous, path.with_name(path.name + ".2"), path) if p.exists()]


PARSERS: Mapping[str, Callable[[str, str], ParseResult]] = {
    "isc": parse_isc,
    "dnsmasq": parse_dnsmasq,
    "kea": parse_kea,
}


def _read(path: Path, offset: int = 0) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(MAX_FILE + 1)


def read_lease_file(spec: LeaseFile) -> ParseResult:
    """Every lease of one configured file (for Kea, with its cleanup companions)."""
    paths = kea_files(spec.path) if spec.format == "kea" else [spec.path]
    merged = ParseResult({}, [])
    for path in paths:
        shown = str(path)
        try:
            data = _read(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            merged.problems.append(LeaseProblem(shown, 0, f"cannot read: {exc.strerror or exc}"))
            continue
        if len(data) > MAX_FILE:
            merged.problems.append(LeaseProblem(shown, 0, f"larger than {MAX_FILE} bytes"))
            continue
        # ISC's file is parsed as Latin-1 so that offsets are bytes (it is read on from where it
        # was left); its quoted strings are decoded as UTF-8 where they are.
        text = data.decode("latin-1" if spec.format == "isc" else "utf-8", errors="replace")
        result = PARSERS[spec.format](text, shown)
        merged.leases.update(result.leases)
        merged.problems.extend(result.problems)
        merged.consumed, merged.consumed_line = result.consumed, result.consumed_line
    return merged


def _stat(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class _FileState:
    signature: tuple = ()
    leases: dict[str, Lease] = field(default_factory=dict)
    problems: list[LeaseProblem] = field(default_factory=list)
    inode: int | None = None
    offset: int = 0  # ISC: bytes of complete entries read
    line: int = 1


class LeaseWatcher:
    """The configured lease files, re-read when they change. ``on_change(old, new)`` is called
    on the watcher's thread after a re-read that changed something (to end the bindings of
    devices that left an address).

    ISC's file is a journal dhcpd appends to (and now and then rewrites as a new file): while
    it only grows, only the new part is read."""

    def __init__(
        self,
        files: Iterable[LeaseFile],
        *,
        check_seconds: float = 5,
        on_change: Callable[[Mapping[str, Lease], Mapping[str, Lease]], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.files = tuple(files)
        self.check_seconds = check_seconds
        self.on_change = on_change
        self.clock = clock
        self.leases: Mapping[str, Lease] = MappingProxyType({})
        self.problems: tuple[LeaseProblem, ...] = ()
        self.read_at: float | None = None
        self.reads = 0  # whole-file reads
        self.appends = 0  # reads of what was appended
        self._states = [_FileState() for _ in self.files]
        self._worker: Periodic | None = None

    def lease(self, address: str) -> Lease | None:
        """The lease holding ``address`` now, if any."""
        lease = self.leases.get(address)
        if lease is None and ":" in address:
            try:
                lease = self.leases.get(normalise_address(address))
            except ValueError:
                return None
        if lease is None or not lease.held(self.clock()):
            return None
        return lease

    def _update(self, spec: LeaseFile, state: _FileState) -> bool:
        paths = kea_files(spec.path) if spec.format == "kea" else [spec.path]
        signature = tuple((str(p), _stat(p)) for p in paths)
        if signature == state.signature:
            return False
        previous = state.signature
        state.signature = signature
        stat = signature[-1][1] if signature else None
        if (
            spec.format == "isc"
            and stat is not None
            and previous
            and stat[0] == state.inode
            and stat[2] >= state.offset
        ):
            return self._append(spec, state)
        result = read_lease_file(spec)
        self.reads += 1
        if spec.format == "dnsmasq":
            # dnsmasq drops a line when a lease ends: keep that as an ended lease.
            for address, lease in state.leases.items():
                if address not in result.leases and lease.active:
                    result.leases[address] = Lease(
                        address, lease.mac, lease.hostname, lease.expires, False, lease.source
                    )
        state.leases, state.problems = result.leases, result.problems
        state.inode = stat[0] if stat else None
        state.offset, state.line = result.consumed, result.consumed_line
        return True

    def _append(self, spec: LeaseFile, state: _FileState) -> bool:
        try:
            data = _read(spec.path, state.offset)
        except OSError as exc:
            state.problems = [LeaseProblem(str(spec.path), 0, f"cannot read: {exc}")]
            return True
        self.appends += 1
        result = parse_isc(data.decode("latin-1"), str(spec.path), first_line=state.line)
        if not result.leases and not result.consumed and not result.problems:
            return False
        leases = dict(state.leases)
        leases.update(result.leases)
        state.leases = leases
        # Problems of the part read before stay; an incomplete end is replaced by the new one.
        kept = [p for p in state.problems if p.line < state.line]
        state.problems = kept + result.problems
        state.offset += result.consumed
        state.line = result.consumed_line if result.consumed else state.line
        return True

    def check(self) -> bool:
        """Re-read the files that changed; whether anything was read."""
        changed = False
        for spec, state in zip(self.files, self._states, strict=True):
            changed |= self._update(spec, state)
        if not changed:
            return False
        merged: dict[str, Lease] = {}
        problems: list[LeaseProblem] = []
        for state in self._states:
            merged.update(state.leases)
            problems.extend(state.problems)
        old_table = self.leases
        self.leases = MappingProxyType(merged)
        self.read_at = time.time()
        if problems != list(self.problems):
            for item in problems[:20]:
                log.warning("schoolgate: DHCP lease file: %s", item)
            if len(problems) > 20:
                log.warning("schoolgate: ... and %d more lease file problems", len(problems) - 20)
        self.problems = tuple(problems)
        if self.on_change is not None and old_table != self.leases:
            self.on_change(old_table, self.leases)
        return True

    def start(self) -> None:
        from schoolgate.gateway.background import Periodic

        if self._worker is None:
            self._worker = Periodic("schoolgate-dhcp", self.check, first=True)
        self._worker.start(self.check_seconds)

    def stop(self, timeout: float = 10) -> None:
        if self._worker is not None:
            self._worker.stop(timeout)

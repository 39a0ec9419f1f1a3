"""DHCP lease files in the real formats of ISC dhcpd, dnsmasq and Kea (samples in
tests/data/dhcp), read as the DHCP servers write them: appended to, rewritten, half-written."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from schoolgate.bindings.dhcp import (
    LeaseWatcher,
    parse_dnsmasq,
    parse_isc,
    parse_kea,
    read_lease_file,
)
from schoolgate.core.identity_settings import LeaseFile

SAMPLES = Path(__file__).resolve().parent / "data" / "dhcp"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


def test_isc_dhcpd_leases() -> None:
    path = SAMPLES / "dhcpd.leases"
    result = read_lease_file(LeaseFile("isc", path, str(path)))
    leases = result.leases
    laptop = leases["10.20.1.5"]
    assert (laptop.mac, laptop.hostname, laptop.device) == (
        "aa:bb:cc:dd:ee:01",
        "LAPTOP-12",
        "LAPTOP-12",
    )
    assert laptop.held(NOW) and laptop.source == f"{path}:{line_of(path, 'lease 10.20.1.5 {')}"
    assert leases["10.20.1.6"].expires is None  # ends never
    assert leases["10.20.1.6"].hostname == "Jane\u2019s iPad"  # octal escapes are UTF-8
    assert leases["10.20.1.6"].mac == "aa:bb:cc:dd:ee:02"
    # The later block for an address wins: the phone's lease was freed.
    assert not leases["10.20.1.7"].held(NOW)
    assert leases["10.20.1.9"].expires == datetime(2100, 1, 1, tzinfo=UTC)
    assert leases["10.20.1.9"].hostname == 'semi;colon{brace}"quote"'
    assert leases["10.20.1.9"].mac == "aa:bb:cc:dd:ee:09"
    # Bad blocks are skipped and named by line; the failover and host blocks are not leases.
    assert "10.20.1.8" not in leases and "10.20.9.1" not in leases and "10.20.1.10" not in leases
    problems = {(p.line, p.message.split(" ")[0]) for p in result.problems}
    assert problems == {
        (line_of(path, "lease 10.20.1.8 {"), "lease"),
        (line_of(path, "lease 10.20.1.999 {"), "lease"),
        (line_of(path, "lease 10.20.1.10 {"), "incomplete"),
    }
    assert all(p.file == str(path) for p in result.problems)


def test_dnsmasq_leases() -> None:
    path = SAMPLES / "dnsmasq.leases"
    result = read_lease_file(LeaseFile("dnsmasq", path, str(path)))
    leases = result.leases
    assert leases["10.30.0.11"].hostname == "LAPTOP-21"
    assert leases["10.30.0.12"].expires is None and leases["10.30.0.12"].hostname is None
    assert leases["10.30.0.12"].device == "aa:bb:cc:dd:ee:12"
    assert not leases["10.30.0.13"].held(NOW)  # expired in 1970
    six = leases["2001:db8:30::15"]
    assert (six.mac, six.hostname) == (None, "phone-15")  # IPv6 lines carry an IAID, not a MAC
    assert sorted(p.line for p in result.problems) == [
        line_of(path, "garbage line"),
        line_of(path, "badmac"),
        line_of(path, "badip"),
    ]


def test_kea_lease_files() -> None:
    four = SAMPLES / "kea-leases4.csv"
    result = read_lease_file(LeaseFile("kea", four, str(four)))
    leases = result.leases
    assert leases["10.40.0.21"].hostname == "chromebook-21"
    assert leases["10.40.0.22"].hostname == "smith, j"
    assert not leases["10.40.0.23"].held(NOW)  # released: written again with lifetime 0
    assert not leases["10.40.0.25"].held(NOW)  # declined
    assert sorted(p.line for p in result.problems) == [
        line_of(four, "not-a-number"),
        line_of(four, "10.40.0.26"),
    ]
    six = SAMPLES / "kea-leases6.csv"
    leases6 = read_lease_file(LeaseFile("kea", six, str(six))).leases
    assert list(leases6) == ["2001:db8:40::21"]  # the delegated prefix is not an address
    assert leases6["2001:db8:40::21"].hostname == "chromebook-21.school.test"
    assert leases6["2001:db8:40::21"].mac == "aa:bb:cc:dd:ee:21"


def test_kea_cleanup_companions_are_read_too(tmp_path: Path) -> None:
    current = tmp_path / "kea-leases4.csv"
    header = (SAMPLES / "kea-leases4.csv").read_text().splitlines()[0]
    (tmp_path / "kea-leases4.csv.1").write_text(
        header + "\n10.40.1.1,aa:bb:cc:00:01:01,,4000,4102444800,1,0,0,from-cleanup,0,,0\n"
    )
    current.write_text(
        header + "\n10.40.1.2,aa:bb:cc:00:01:02,,4000,4102444800,1,0,0,current,0,,0\n"
    )
    leases = read_lease_file(LeaseFile("kea", current, str(current))).leases
    assert {a: lease.hostname for a, lease in leases.items()} == {
        "10.40.1.1": "from-cleanup",
        "10.40.1.2": "current",
    }


LEASE = """lease {address} {{
  starts 4 2026/11/26 10:00:00;
  ends 4 2099/11/26 22:00:00;
  binding state {state};
  hardware ethernet {mac};
  client-hostname "{name}";
}}
"""


def test_watcher_reads_what_dhcpd_appends(tmp_path: Path) -> None:
    path = tmp_path / "dhcpd.leases"
    shutil.copy(SAMPLES / "dhcpd.leases", path)
    text = path.read_text(encoding="latin-1")
    path.write_text(text[: text.index("lease 10.20.1.10")], encoding="latin-1")
    changes = []
    watcher = LeaseWatcher(
        [LeaseFile("isc", path, str(path))],
        on_change=lambda old, new: changes.append((dict(old), dict(new))),
        clock=lambda: NOW,
    )
    assert watcher.check() and watcher.reads == 1
    assert watcher.lease("10.20.1.5").hostname == "LAPTOP-12"
    assert not watcher.check()  # nothing changed: nothing read

    # dhcpd appends half a block, then the rest.
    block = LEASE.format(address="10.20.1.5", state="active", mac="aa:bb:cc:dd:ee:99", name="X")
    with path.open("a") as handle:
        handle.write(block[:60])
    assert watcher.check() and watcher.appends == 1
    assert watcher.lease("10.20.1.5").mac == "aa:bb:cc:dd:ee:01"
    assert any("incomplete" in p.message for p in watcher.problems)
    with path.open("a") as handle:
        handle.write(block[60:])
    os.utime(path, ns=(1, 2))  # a new modification time, as a write would give
    assert watcher.check() and watcher.appends == 2 and watcher.reads == 1
    assert watcher.lease("10.20.1.5").mac == "aa:bb:cc:dd:ee:99"
    assert not any("incomplete" in p.message for p in watcher.problems)
    old, new = changes[-1]
    assert old["10.20.1.5"].mac == "aa:bb:cc:dd:ee:01" and new["10.20.1.5"].mac.endswith("99")

    # dhcpd rewrites the file now and then: a new file, read whole.
    fresh = tmp_path / "dhcpd.leases.new"
    fresh.write_text(
        LEASE.format(address="10.20.2.1", state="active", mac="aa:bb:cc:00:00:07", name="Y")
    )
    fresh.replace(path)
    assert watcher.check() and watcher.reads == 2
    assert watcher.lease("10.20.1.5") is None and watcher.lease("10.20.2.1").hostname == "Y"


def test_watcher_sees_a_dnsmasq_lease_end(tmp_path: Path) -> None:
    path = tmp_path / "dnsmasq.leases"
    path.write_text(
        "4102444800 aa:bb:cc:dd:ee:11 10.30.0.11 LAPTOP-21 *\n"
        "4102444800 aa:bb:cc:dd:ee:12 10.30.0.12 LAPTOP-22 *\n"
    )
    changes = []
    watcher = LeaseWatcher(
        [LeaseFile("dnsmasq", path, str(path))],
        on_change=lambda old, new: changes.append(dict(new)),
        clock=lambda: NOW,
    )
    watcher.check()
    path.write_text("4102444800 aa:bb:cc:dd:ee:12 10.30.0.12 LAPTOP-22 *\n")
    os.utime(path, ns=(1, 2))
    watcher.check()
    assert watcher.lease("10.30.0.11") is None
    ended = changes[-1]["10.30.0.11"]
    assert not ended.active and ended.mac == "aa:bb:cc:dd:ee:11"  # who left, for the bindings


def test_a_missing_file_is_read_when_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "dnsmasq.leases"
    watcher = LeaseWatcher([LeaseFile("dnsmasq", path, str(path))], clock=lambda: NOW)
    watcher.check()
    assert watcher.lease("10.30.0.11") is None and watcher.problems == ()
    path.write_text("4102444800 aa:bb:cc:dd:ee:11 10.30.0.11 LAPTOP-21 *\n")
    assert watcher.check()
    assert watcher.lease("10.30.0.11").hostname == "LAPTOP-21"


def test_hostile_names_are_cleaned() -> None:
    text = LEASE.format(
        address="10.20.3.1",
        state="active",
        mac="aa:bb:cc:00:00:01",
        name="a\\012b\\033[31m" + "x" * 300,
    )
    lease = parse_isc(text, "f").leases["10.20.3.1"]
    assert (
        lease.hostname is not None and "\n" not in lease.hostname and "\x1b" not in lease.hostname
    )
    assert len(lease.hostname) == 100


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('lease10.2{}";# \n\\abhrdwtyn:,epoch') + ["\x00"])))
def test_parsers_never_raise(text: str) -> None:
    for parser in (parse_isc, parse_dnsmasq, parse_kea):
        result = parser(text, "fuzz")
        for lease in result.leases.values():
            assert lease.address

"""The gateway's own resolver: its hosts file, its cache (a warm connection adds no lookup),
failures, and the event loop's getaddrinfo answered by it (so mitmproxy connects where it
says), against a real loopback server."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from schoolgate.gateway.resolver import HostsFileError, Resolver, read_hosts_file


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lookups:
    """A stand-in for the system resolver that counts what it is asked."""

    def __init__(self, answers: dict[str, list[str] | Exception]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, name: str) -> list[str]:
        self.asked.append(name)
        await asyncio.sleep(0)
        answer = self.answers.get(name, socket.gaierror(socket.EAI_NONAME, "no such name"))
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


def run(coro):
    return asyncio.run(coro)


def test_a_warm_name_costs_no_lookup() -> None:
    clock = FakeClock()
    system = Lookups({"www.bbc.co.uk": ["151.101.0.81", "151.101.64.81"]})
    resolver = Resolver(getaddrinfo=system, clock=clock, ttl=60)

    async def many() -> list:
        return [await resolver.lookup("www.bbc.co.uk") for _ in range(100)]

    answers = run(many())
    assert system.asked == ["www.bbc.co.uk"]  # one query for a hundred connections
    assert answers[-1].addresses == ("151.101.0.81", "151.101.64.81")
    assert resolver.lookups == 1 and resolver.hits == 99
    clock.now += 61  # the answer has aged out: asked again
    run(resolver.lookup("www.bbc.co.uk"))
    assert system.asked == ["www.bbc.co.uk"] * 2


def test_concurrent_lookups_share_one_query() -> None:
    system = Lookups({"cdn.example": ["192.0.2.1"]})
    resolver = Resolver(getaddrinfo=system)

    async def together() -> list:
        return await asyncio.gather(*(resolver.lookup("cdn.example") for _ in range(20)))

    assert {a.addresses for a in run(together())} == {("192.0.2.1",)}
    assert system.asked == ["cdn.example"]


def test_answers_a_name_had_lately_are_still_known() -> None:
    clock = FakeClock()
    system = Lookups({"rr.example": ["192.0.2.1"]})
    resolver = Resolver(getaddrinfo=system, clock=clock, ttl=10)
    run(resolver.lookup("rr.example"))
    clock.now += 11
    system.answers["rr.example"] = ["192.0.2.2"]
    answer = run(resolver.lookup("rr.example"))
    assert answer.addresses == ("192.0.2.2",)
    assert answer.has("192.0.2.1") and answer.has("192.0.2.2")  # a client may hold the old one
    clock.now += 1801
    assert not run(resolver.lookup("rr.example", fresh=True)).has("192.0.2.1")


def test_no_address_and_failures() -> None:
    clock = FakeClock()
    system = Lookups({"down.example": socket.gaierror(socket.EAI_AGAIN, "temporary failure")})
    resolver = Resolver(getaddrinfo=system, clock=clock)
    assert run(resolver.lookup("nowhere.example")).error == "no_address"
    assert run(resolver.lookup("down.example")).error == "failed"
    run(resolver.lookup("nowhere.example"))  # remembered for a while: not asked again
    assert system.asked.count("nowhere.example") == 1
    clock.now += 6  # a failure is asked again sooner than a name with no address
    run(resolver.lookup("down.example"))
    run(resolver.lookup("nowhere.example"))
    assert system.asked.count("down.example") == 2 and system.asked.count("nowhere.example") == 1


def test_a_resolver_down_for_a_moment_keeps_the_last_answer() -> None:
    clock = FakeClock()
    system = Lookups({"www.bbc.co.uk": ["151.101.0.81"]})
    resolver = Resolver(getaddrinfo=system, clock=clock, ttl=60)
    run(resolver.lookup("www.bbc.co.uk"))
    clock.now += 61
    system.answers["www.bbc.co.uk"] = socket.gaierror(socket.EAI_AGAIN, "temporary failure")
    answer = run(resolver.lookup("www.bbc.co.uk"))
    assert answer.error is None and answer.addresses == ("151.101.0.81",)


def test_a_hanging_resolver_is_a_failure(monkeypatch) -> None:
    import schoolgate.gateway.resolver as module

    async def hang(name: str) -> list[str]:
        await asyncio.sleep(60)
        return []

    monkeypatch.setattr(module, "LOOKUP_TIMEOUT", 0.05)
    assert run(Resolver(getaddrinfo=hang).lookup("slow.example")).error == "failed"


def test_hosts_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text(
        "# the school's split horizon\n"
        "10.20.0.5   mis.school.example  MIS.school.example.\n"
        "10.20.0.6   mis.school.example\n"
        "::1         v6.test   # a comment\n"
        "0.0.0.0     blocked.example\n"
    )
    hosts = read_hosts_file(path)
    assert hosts == {
        "mis.school.example": ("10.20.0.5", "10.20.0.6"),
        "v6.test": ("::1",),
        "blocked.example": (),
    }
    system = Lookups({})
    resolver = Resolver(getaddrinfo=system)
    resolver.configure(hosts=hosts, ttl=60)
    assert run(resolver.lookup("mis.school.example")).addresses == ("10.20.0.5", "10.20.0.6")
    assert run(resolver.lookup("blocked.example")).error == "no_address"
    assert system.asked == []  # a listed name never goes to DNS


@pytest.mark.parametrize(
    ("line", "problem"),
    [("10.0.0.300 a.example", "not an IP address"), ("10.0.0.1", "no name"),
     ("10.0.0.1 a..example", "a..example")],
)  # fmt: skip
def test_a_broken_hosts_file_names_its_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "hosts"
    path.write_text(f"10.0.0.1 fine.example\n{line}\n")
    with pytest.raises(HostsFileError) as err:
        read_hosts_file(path)
    assert f"{path}:2" in str(err.value) and problem in str(err.value)


def test_the_event_loop_connects_where_the_resolver_says(tmp_path: Path) -> None:
    """asyncio.open_connection (what mitmproxy calls) to a name reaches the address the
    resolver gave: a loopback server here, for a name no DNS server knows."""
    server = socket.create_server(("127.0.0.7", 0))
    port = server.getsockname()[1]
    resolver = Resolver()
    resolver.configure(hosts={"origin.test": ("127.0.0.7",)}, ttl=60)

    async def connect() -> tuple:
        loop = asyncio.get_running_loop()
        original = loop.getaddrinfo
        resolver.install(loop)
        try:
            reader, writer = await asyncio.open_connection("origin.test", port)
            peer = writer.get_extra_info("peername")
            writer.close()
            with pytest.raises(socket.gaierror):
                await asyncio.open_connection("nowhere.invalid", port)
            by_address = await loop.getaddrinfo("127.0.0.7", port, type=socket.SOCK_STREAM)
        finally:
            resolver.uninstall()
        return peer, by_address, loop.getaddrinfo == original

    resolver.configure(hosts={"origin.test": ("127.0.0.7",), "nowhere.invalid": ()}, ttl=60)
    try:
        peer, by_address, restored = run(connect())
    finally:
        server.close()
    assert peer[:2] == ("127.0.0.7", port)
    assert by_address[0][4][:2] == ("127.0.0.7", port)  # addresses go to the loop's own
    assert restored

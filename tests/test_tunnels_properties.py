"""Property test through a real gateway: Host headers, request targets, SNIs and paths drawn
from a grammar of odd shapes (ports, colons, brackets, punctuation, percent-encoding, Unicode
dots, fullwidth letters, whitespace, userinfo, numeric addresses, duplicates) never reach an
origin as a blocked host.

"As a blocked host": the blocked site's own server (social.test, at 127.0.0.10) never receives
the pupil's marker, and no other server receives it with a Host header that a lenient web
server would read as the blocked site (lower case, the first of several values, no port,
brackets, userinfo, trailing dots or punctuation). The gateway may refuse (400, 403, a closed
connection) or pass what is really another, allowed, site; nothing else.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marker_origins import MARKER
from test_tunnels_e2e import STUDENT, VISITOR, Net
from tunnel_attacks import http_via, tls_through

pytestmark = pytest.mark.e2e  # a real gateway, in a network namespace

BLOCKED = ("social.test", "chat.social.test")
BLOCKED_ADDRESS = "127.0.0.10"

PROPERTY = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    running = Net(tmp_path_factory.mktemp("tunnel-properties"))
    yield running
    running.stop()


# -- the grammar --------------------------------------------------------------------------------

UNICODE_DOTS = ["\u3002", "\uff0e", "\uff61"]
names = st.sampled_from([*BLOCKED, "allowed.test", "gov.test", "SOCIAL.test", "Social.Test"])
numeric = st.sampled_from(
    [BLOCKED_ADDRESS, "2130706442", "0x7f00000a", "0177.0.0.10", "127.10", "127.0.0.010",
     "[::ffff:127.0.0.10]", "[::ffff:7f00:a]", "127.0.0.12"]
)  # fmt: skip


@st.composite
def spelled(draw) -> str:
    """A name, spelt in one of the ways a pupil might try."""
    host = draw(st.one_of(names, numeric))
    if draw(st.booleans()):
        host = "".join(c.upper() if draw(st.booleans()) else c for c in host)
    if draw(st.integers(0, 4)) == 0:
        host = host.replace(".", draw(st.sampled_from(UNICODE_DOTS)), draw(st.integers(1, 2)))
    if draw(st.integers(0, 5)) == 0:  # percent-encode one character
        i = draw(st.integers(0, max(0, len(host) - 1)))
        host = host[:i] + f"%{ord(host[i]):02x}" + host[i + 1 :] if host else host
    if draw(st.integers(0, 6)) == 0:  # fullwidth letters
        host = "".join(chr(ord(c) + 0xFEE0) if c.isalpha() and draw(st.booleans()) else c
                       for c in host)  # fmt: skip
    host += draw(st.sampled_from(["", "", "", ".", "..", "\u3002"]))
    host = draw(st.sampled_from(["", "", "", "user@", "a:b@"])) + host
    host += draw(
        st.sampled_from(["", "", "", ":80", ":", "::", ":80:", ":0", ":65536", ":+80", ":8o",
                         ";", ",", "\\", "/", "?", "#", " ", "\t", ",allowed.test",
                         ", social.test", ":80, allowed.test"])
    )  # fmt: skip
    return draw(st.sampled_from(["", "", " "])) + host


paths = st.sampled_from(
    ["/", "//[x", "/%", "/..", "/%2e%2e/", "/a?b=%zz", "//social.test/", "/\u00e9", "/#frag",
     "/?u=http://social.test/"]
)  # fmt: skip


def lenient_reading(value: str) -> str:
    """How a forgiving web server might read a Host header: the blocked site's vhost if
    anything that looks like it is there."""
    value = value.strip().lower().split(",")[0].strip()
    value = value.rsplit("@", 1)[-1]
    value = value.strip("[]")
    value = re.split(r"[:;/\\?#\s]", value, maxsplit=1)[0]
    for dot in UNICODE_DOTS:
        value = value.replace(dot, ".")
    return value.rstrip(".")


def reached_as_blocked(gw: Net, start: dict[str, int], uninspected: str | None = None) -> list[str]:
    """What the origins received since ``start`` that carries the marker as a blocked host
    (but for the origin ``uninspected``: see below)."""
    found = []
    for name, origin in gw.origins.items():
        if name == uninspected:
            continue
        with origin._lock:
            received = origin.received[start[name] :]
        for data in received:
            if MARKER not in data:
                continue
            if origin.host == BLOCKED_ADDRESS:
                found.append(f"{name}: {data[:200]!r}")
                continue
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            for line in head.split("\r\n")[1:]:
                key, _, value = line.partition(":")
                reading = lenient_reading(value)
                if key.strip().lower() == "host" and (
                    reading in BLOCKED or reading.endswith(".social.test")
                ):
                    found.append(f"{name}: {head[:300]!r}")
    return found


def marks(gw: Net) -> dict[str, int]:
    return {name: len(origin.received) for name, origin in gw.origins.items()}


# -- the properties ------------------------------------------------------------------------------


@PROPERTY
@given(
    host=spelled(),
    second=st.one_of(st.none(), spelled()),
    target=st.sampled_from(["absolute to the blocked address", "absolute to the allowed address",
                            "absolute to the host", "origin-form"]),
    path=paths,
)  # fmt: skip
def test_no_host_shape_reaches_a_blocked_host(gw: Net, host, second, target, path) -> None:
    start = marks(gw)
    port = {"blocked": gw.port_of("social"), "allowed": gw.port_of("allowed")}
    if target == "absolute to the blocked address":
        line = f"http://{BLOCKED_ADDRESS}:{port['blocked']}{path}"
    elif target == "absolute to the allowed address":
        line = f"http://127.0.0.12:{port['allowed']}{path}"
    elif target == "absolute to the host":
        line = f"http://{host.strip()}{path}"
    else:
        line = path
    extra = f"Host: {second}\r\n" if second is not None else ""
    text = (
        f"GET {line}?m={MARKER.decode()} HTTP/1.1\r\nHost: {host}\r\n{extra}"
        "Connection: close\r\n\r\n"
    )
    try:
        http_via(gw.proxy, text.encode("utf-8", "surrogateescape"), source=STUDENT)
    except OSError:
        pass  # refused outright
    assert reached_as_blocked(gw, start) == [], (text, gw.log.read_text()[-2000:])


sni_names = st.one_of(
    spelled().map(lambda s: s.strip()),
    st.sampled_from(["gov.test", "social.test", "allowed.test", "x" * 300, "", "127.0.0.10"]),
)


@PROPERTY
@given(
    sni=sni_names,
    connect_to=st.sampled_from(["blocked address", "blocked name", "allowed name", "gov name"]),
    source=st.sampled_from([STUDENT, VISITOR]),
    host=spelled(),
)
def test_no_sni_or_connect_shape_reaches_a_blocked_host(
    gw: Net, sni, connect_to, source, host
) -> None:
    start = marks(gw)
    target = {
        "blocked address": f"{BLOCKED_ADDRESS}:{gw.port_of('social_tls')}",
        "blocked name": f"social.test:{gw.port_of('social_tls')}",
        "allowed name": f"allowed.test:{gw.port_of('allowed_tls')}",
        "gov name": f"gov.test:{gw.port_of('gov_tls')}",
    }[connect_to]
    request = f"GET /?m={MARKER.decode()} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    try:
        tls_through(
            gw.proxy,
            target,
            sni or None,
            request.encode("utf-8", "surrogateescape"),
            source=source,
        )
    except (TimeoutError, OSError, UnicodeError, ValueError):
        pass  # the client library refused to send it, or the connection was cut
    # A tunnel to gov.test that names gov.test is passed through uninspected (gov.test is
    # never decrypted, and the destination is the site its SNI names): what it carries goes to
    # gov.test's own server and is that server's to answer, the gateway cannot read it. Any other
    # SNI there (or none) is decrypted and decided, and stays checked.
    # So is a visitor's (``intercept: false``) tunnel to allowed.test that names allowed.test:
    # the gateway decides on the site the tunnel goes to and, not decrypting it, cannot see a
    # Host header inside (domain fronting past an uninspected tunnel: only interception reads
    # it, as it does for students).
    names = (sni or "").lower().rstrip(".")
    if connect_to == "gov name" and names == "gov.test":
        uninspected = "gov_tls"
    elif connect_to == "allowed name" and names == "allowed.test" and source == VISITOR:
        uninspected = "allowed_tls"
    else:
        uninspected = None
    assert reached_as_blocked(gw, start, uninspected) == [], (
        sni,
        target,
        host,
        gw.log.read_text()[-2000:],
    )

"""Detectors of tunnels out of the school's network: unusual ports (``odd_port``), tunnels
that carry neither TLS nor HTTP (``non_tls_tunnel``), VPN and proxy apps by their User-Agent
(``vpn_client``) and Tor (``tor``)."""

from __future__ import annotations

import re
from functools import lru_cache

from schoolgate.circumvention.evidence import DetectorContext, event
from schoolgate.circumvention.facts import CircumventionEvent, TrafficFacts
from schoolgate.circumvention.hostnames import HostInfo, analyse_host

# port -> (likely protocol, kind, severity)
_PORT_PROTOCOLS: dict[int, tuple[str, str, int]] = {
    21: ("FTP", "odd_port", 1),
    22: ("SSH (can carry a SOCKS tunnel)", "odd_port", 2),
    23: ("Telnet", "odd_port", 1),
    25: ("SMTP mail", "odd_port", 1),
    53: ("DNS over TCP", "odd_port", 2),
    110: ("POP3 mail", "odd_port", 1),
    143: ("IMAP mail", "odd_port", 1),
    465: ("SMTP mail submission", "odd_port", 1),
    500: ("IPsec IKE VPN", "vpn", 3),
    587: ("SMTP mail submission", "odd_port", 1),
    993: ("IMAP mail over TLS", "odd_port", 1),
    995: ("POP3 mail over TLS", "odd_port", 1),
    1080: ("SOCKS proxy", "proxy", 3),
    1194: ("OpenVPN", "vpn", 3),
    1701: ("L2TP VPN", "vpn", 3),
    1723: ("PPTP VPN", "vpn", 3),
    3128: ("HTTP proxy (Squid)", "proxy", 2),
    3389: ("Remote Desktop (RDP)", "odd_port", 2),
    4500: ("IPsec NAT traversal VPN", "vpn", 3),
    5222: ("XMPP chat", "odd_port", 1),
    5223: ("XMPP chat over TLS / Apple push", "odd_port", 1),
    5900: ("VNC remote desktop", "odd_port", 2),
    5938: ("TeamViewer remote desktop", "odd_port", 2),
    6568: ("AnyDesk remote desktop", "odd_port", 2),
    6667: ("IRC chat", "odd_port", 1),
    6697: ("IRC chat over TLS", "odd_port", 1),
    8000: ("HTTP alternate (often a proxy)", "odd_port", 1),
    8118: ("HTTP proxy (Privoxy)", "proxy", 2),
    8888: ("HTTP alternate (often a proxy)", "odd_port", 1),
    9001: ("Tor relay (ORPort)", "tor", 3),
    9030: ("Tor directory (DirPort)", "tor", 3),
    9050: ("Tor SOCKS port", "tor", 3),
    9051: ("Tor control port", "tor", 3),
    9150: ("Tor Browser SOCKS port", "tor", 3),
    25565: ("Minecraft server", "odd_port", 1),
    51820: ("WireGuard VPN", "vpn", 3),
}
# Ordinary services on unusual ports, by site: Chrome's push channel (mtalk.google.com:5228)
# goes through the proxy; Apple push and Zoom have their own ports too.
_BENIGN_PORTS = frozenset(
    {("google.com", 5228), ("google.com", 5229), ("google.com", 5230), ("apple.com", 5223),
     ("zoom.us", 8801), ("zoom.us", 8802)}
)  # fmt: skip


def _port_protocol(port: int) -> tuple[str, str, int]:
    if port in _PORT_PROTOCOLS:
        return _PORT_PROTOCOLS[port]
    if 6881 <= port <= 6889:
        return ("BitTorrent", "odd_port", 1)
    return ("unknown", "odd_port", 1)


# Product tokens of VPN and proxy clients. Matched as whole tokens (not inside other words),
# so no ordinary browser UA matches. Generic VPN protocols (OpenVPN, WireGuard) are severity 2:
# staff may use them for the school's own remote access; consumer VPNs and censorship-evasion
# tools are severity 3.
_VPN_GENERIC = r"OpenVPN(?:[ _-]?Connect|3)?|WireGuard|strongSwan"
_VPN_BRANDS = (
    r"NordVPN|NordLayer|ExpressVPN|ExpressVPN[ _-]?\w+|Proton[ _-]?VPN|Psiphon\d?|Ultra[ _-]?Surf"
    r"|Hotspot[ _-]?Shield|HSS[ _-]?VPN|Hola(?:[ _-]?VPN|_svc|[ _-]browser)?|Lantern|Windscribe"
    r"|TunnelBear|Surfshark|CyberGhost|PrivateInternetAccess|pia[ _-]client|IPVanish|Betternet"
    r"|Turbo[ _-]?VPN|VPN[ _-]?Proxy[ _-]?Master|X-VPN|hide\.me|Hideme|PrivadoVPN"
    r"|Mullvad[ _-]?VPN|AtlasVPN|Urban[ _-]?VPN|Thunder[ _-]?VPN|VyprVPN|Touch[ _-]?VPN"
    r"|Avast[ _-]?SecureLine|Hoxx|Browsec|ZenMate|SetupVPN|Cloudflare[ _-]?WARP|1\.1\.1\.1(?=/)"
)
_VPN_UA = re.compile(
    rf"(?<![A-Za-z0-9.])(?:(?P<generic>{_VPN_GENERIC})|(?P<brand>{_VPN_BRANDS}))(?=[/ ;)(_,]|\Z)",
    re.IGNORECASE,
)


@lru_cache(maxsize=8192)
def vpn_user_agent(ua: str) -> tuple[str, int] | None:
    m = _VPN_UA.search(ua)
    if m is None:
        return None
    return m.group(0), (2 if m.group("generic") else 3)


def odd_port(
    det: DetectorContext, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """A tunnel (or plain HTTP request) to a port outside ``allowed_ports``."""
    port = f.port
    if port is None or port in det.allowed_ports or port == 853:
        return None
    if f.stage != "connect" and not (f.stage == "request" and f.scheme == "http"):
        return None
    if (hi.site, port) in _BENIGN_PORTS:
        return None
    if hi.ip is not None and det.ip_allowed(hi.ip):
        return None  # the school's own network: printers, internal apps on odd ports
    protocol, kind, severity = _port_protocol(port)
    likely = f" (likely {protocol})" if protocol != "unknown" else ""
    return [
        event(
            "odd_port",
            kind,
            severity,
            f"Opened a connection to {hi.host or f.host} on unusual port {port}{likely}.",
            f,
            hi,
            likely_protocol=protocol,
        )
    ]


def non_tls_tunnel(
    det: DetectorContext, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """A tunnel that carries neither TLS nor HTTP (any port), or plain HTTP on a TLS port."""
    if f.tls_seen is False:
        what = "something that is neither TLS nor HTTP"
    elif (
        f.port in (443, 8443) and f.stage == "request" and f.scheme == "http" and f.tls_seen is None
    ):
        what = "plain HTTP"
    else:
        return None
    return [
        event(
            "non_tls_tunnel",
            "non_tls_tunnel",
            2,
            f"Sent {what} through a tunnel to {hi.host or f.host}:{f.port}, a trick VPNs and "
            "SSH tunnels use to pass as ordinary secure web traffic.",
            f,
            hi,
        )
    ]


def vpn_client(
    det: DetectorContext, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """A VPN or proxy application's User-Agent (not Tor Browser: it looks like Firefox ESR)."""
    ua = f.headers.get("user-agent")
    if not ua:
        return None
    found = vpn_user_agent(ua)
    if found is None:
        return None
    token, severity = found
    return [
        event(
            "vpn_client",
            "vpn_client",
            severity,
            f"A VPN or proxy app ({token}) is running on the device and contacted "
            f"{hi.host or f.host}.",
            f,
            hi,
            client=token,
        )
    ]


def tor(det: DetectorContext, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """Tor: .onion names, tor2web gateways, bridge and snowflake infrastructure."""
    info = hi
    if info.tor is None and f.sni and f.sni != f.host:
        info = analyse_host(f.sni)
    if info.tor is None:
        return None
    severity = 2 if "tor2web" in info.tor else 3
    return [
        event(
            "tor",
            "tor",
            severity,
            f"Tried to reach {info.host}, {info.tor}.",
            f,
            hi,
            tor=info.tor,
        )
    ]

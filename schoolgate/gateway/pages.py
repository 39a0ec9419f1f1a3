"""Pages the gateway serves itself: the PAC file (``/proxy.pac``, WPAD ``/wpad.dat``) and the
school's CA certificate with install instructions (``/``, ``/ca``, ``/ca/<file>``). Every other
path of the portal host is marked for the portal app
(:class:`~schoolgate.gateway.portal_addon.PortalAddon`, which runs next).

They answer requests to the portal host name (``schoolgate.internal`` by default; no DNS
entry is needed for devices using the proxy), to ``wpad``/``wpad.<domain>`` for ``/wpad.dat``,
and to the gateway's own address and port (a browser fetching the PAC file directly).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Sequence

from mitmproxy import ctx, exceptions, http

from schoolgate.gateway.blockpage import template_environment
from schoolgate.gateway.flowinfo import request_view, target_host
from schoolgate.gateway.flowmark import marked
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.recorder import Recorder

log = logging.getLogger(__name__)

PAC_TYPE = "application/x-ns-proxy-autoconfig"
PAC_PATHS = frozenset({"/proxy.pac", "/wpad.dat", "/wpad.da"})
DEFAULT_DIRECT = (
    "localhost",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
)
CA_BASENAME = "mitmproxy-ca-cert.pem"  # what mitmproxy writes into its confdir
CERT_NAME = "schoolgate-ca"
_HTML = {"content-type": "text/html; charset=utf-8", "cache-control": "no-store"}


def _path_only(path: str) -> str:
    """The path of a request target, without query or fragment (never raises: ``urlsplit``
    does on ``//[x``)."""
    return path.split("?", 1)[0].split("#", 1)[0]


def is_gateway_page(path: str) -> bool:
    """``/``, ``/ca``, ``/ca/...`` and the PAC/WPAD files: the gateway's own pages. Everything
    else on the portal host belongs to the portal app."""
    target = _path_only(path).rstrip("/") or "/"
    return target in PAC_PATHS or target in ("/", "/ca") or target.startswith("/ca/")


def render_page(template: str, **context: object) -> bytes:
    """One of the gateway's own pages (``gateway/templates``), HTML-escaped, as bytes."""
    return template_environment().get_template(template).render(**context).encode()


def page(title: str, heading: str, text: str = "", *, link: str = "", link_text: str = "") -> bytes:
    """A plain page of the gateway's own: a heading, a sentence and an optional link."""
    return render_page(
        "plain.html", title=title, heading=heading, text=text, link=link, link_text=link_text
    )


def pac_script(proxy: str, direct: Sequence[str]) -> str:
    """A PAC file: DIRECT for plain host names and the ``direct`` domains and IP ranges (IP
    ranges only match addresses written as such: the PAC never resolves names), the proxy for
    everything else, with no DIRECT fallback (a filter that is down must not be bypassed)."""
    nets, domains = [], []
    for entry in direct:
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            domains.append(entry.lower().lstrip("*").lstrip("."))
        else:
            if net.version == 4:
                nets.append((str(net.network_address), str(net.netmask)))
    lines = [
        "// schoolgate: proxy auto-configuration",
        "function FindProxyForURL(url, host) {",
        "  host = host.toLowerCase();",
        '  if (isPlainHostName(host)) return "DIRECT";',
    ]
    for domain in domains:
        d = json.dumps(domain)
        lines.append(
            f'  if (host == {d} || dnsDomainIs(host, {json.dumps("." + domain)})) return "DIRECT";'
        )
    if nets:
        lines.append("  if (/^\\d+\\.\\d+\\.\\d+\\.\\d+$/.test(host)) {")
        for address, mask in nets:
            lines.append(f'    if (isInNet(host, "{address}", "{mask}")) return "DIRECT";')
        lines.append("  }")
    lines.append(f"  return {json.dumps('PROXY ' + proxy)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _plain_ip(address: str) -> str:
    return address[7:] if address.startswith("::ffff:") else address


class GatewayPages:
    name = "schoolgate_pages"

    def __init__(self, holder: PolicyHolder, recorder: Recorder) -> None:
        self.holder = holder
        self.recorder = recorder
        self._cert_cache: tuple[float, bytes, bytes, str] | None = None

    def load(self, loader) -> None:
        loader.add_option(
            "schoolgate_pac_proxy",
            str,
            "",
            "host:port of the gateway as clients reach it, written into the PAC file "
            "(default: the address and port the client used).",
        )
        loader.add_option(
            "schoolgate_pac_direct",
            Sequence[str],
            list(DEFAULT_DIRECT),
            "Domains and IPv4 ranges the PAC file sends DIRECT (plain host names always are).",
        )

    def configure(self, updated) -> None:
        if "schoolgate_pac_proxy" in updated and ctx.options.schoolgate_pac_proxy:
            value = ctx.options.schoolgate_pac_proxy
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit():
                raise exceptions.OptionsError(
                    f"schoolgate_pac_proxy must be host:port, not {value!r}"
                )

    # -- which requests are ours ------------------------------------------------------------
    @staticmethod
    def _own_name(flow: http.HTTPFlow) -> str | None:
        """The host a request is for, if it could be the gateway's: the Host header (read
        strictly, so ``SCHOOLGATE.internal.:80`` is the portal), when the request really goes
        there too. In explicit mode the request goes where its target says (an absolute URL,
        a CONNECT): ``http://www.facebook.com/`` with ``Host: schoolgate.internal`` is a
        request for Facebook, decided as one. In transparent mode the Host is all there is.
        None: not one host (the request gets 400)."""
        view = request_view(flow.request)
        if view.host_problem is not None:
            return None
        target = target_host(view.host)
        named = view.named_host or target
        mode = getattr(flow.client_conn.proxy_mode, "type_name", "regular")
        if named != target and mode != "transparent":
            return None
        return named

    def is_own(self, flow: http.HTTPFlow) -> bool:
        view = request_view(flow.request)
        named = view.named_host
        policy = self.holder.policy
        if (
            named is not None
            and policy is not None
            and named != policy.settings.portal_host
            and not named.startswith("wpad")
        ):
            if not named[-1:].isdigit() and ":" not in named:
                return False  # a site on the internet: the usual case, decided at once
            # An address: ours only on the port the client reached the gateway on.
            sock = flow.client_conn.sockname
            if not sock or view.port != sock[1]:
                return False
        host = self._own_name(flow)
        if host is None:
            return False
        if policy is not None and host == policy.settings.portal_host:
            return True
        if (host == "wpad" or host.startswith("wpad.")) and flow.request.path in PAC_PATHS:
            return True
        # A request to the gateway's own address and port. Not in transparent mode: there the
        # connection's local address is the original destination (the site the client meant),
        # so `http://<site's IP>/` would otherwise be answered as one of our pages.
        mode = getattr(flow.client_conn.proxy_mode, "type_name", "regular")
        sock = flow.client_conn.sockname
        if (
            mode != "transparent"
            and sock
            and flow.request.port == sock[1]
            and _plain_ip(host) == _plain_ip(str(sock[0]))
        ):
            return True
        return False

    def is_portal(self, flow: http.HTTPFlow) -> bool:
        """A request for the portal app: the portal host, not one of the gateway's pages."""
        policy = self.holder.policy
        if policy is None:
            return False
        host = self._own_name(flow)
        return host == policy.settings.portal_host and not is_gateway_page(flow.request.path)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or not self.is_own(flow):
            return
        mark = marked(flow.metadata)
        mark.own = True
        if self.is_portal(flow):
            # The portal addon answers it (503 if the app is not ready): never the internet.
            mark.portal = True
            return
        try:
            flow.response = self.answer(flow)
        except Exception as exc:  # noqa: BLE001 - never fall through to the internet
            log.exception("schoolgate: gateway page %s failed", flow.request.path)
            flow.response = http.Response.make(500, page("Error", "Error", str(exc)), _HTML)

    def answer(self, flow: http.HTTPFlow) -> http.Response:
        path = _path_only(flow.request.path).rstrip("/") or "/"
        if path in PAC_PATHS:
            return http.Response.make(
                200,
                pac_script(self.proxy_address(flow), ctx.options.schoolgate_pac_direct),
                {"content-type": PAC_TYPE, "cache-control": "max-age=300"},
            )
        if path in ("/", "/ca"):
            return self.ca_page(flow)
        if path.startswith("/ca/"):
            return self.ca_file(path[4:])
        return http.Response.make(
            404,
            page("Not found", "Not found", link="/", link_text="Start page"),
            _HTML,
        )

    def proxy_address(self, flow: http.HTTPFlow) -> str:
        if ctx.options.schoolgate_pac_proxy:
            return ctx.options.schoolgate_pac_proxy
        sock = flow.client_conn.sockname
        host = _plain_ip(str(sock[0])) if sock else ctx.options.listen_host or "127.0.0.1"
        port = sock[1] if sock else (ctx.options.listen_port or 8080)
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{port}"

    # -- the CA certificate -------------------------------------------------------------------
    def _cert(self) -> tuple[bytes, bytes, str]:
        path = os.path.join(os.path.expanduser(ctx.options.confdir), CA_BASENAME)
        mtime = os.stat(path).st_mtime
        if self._cert_cache is None or self._cert_cache[0] != mtime:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization

            with open(path, "rb") as fh:
                pem = fh.read()
            cert = x509.load_pem_x509_certificate(pem)
            der = cert.public_bytes(serialization.Encoding.DER)
            digest = cert.fingerprint(hashes.SHA256()).hex(":").upper()
            self._cert_cache = (mtime, pem, der, digest)
        _, pem, der, digest = self._cert_cache
        return pem, der, digest

    def ca_page(self, flow: http.HTTPFlow) -> http.Response:
        try:
            _, _, digest = self._cert()
        except OSError:
            return http.Response.make(503, page("Certificate", "No certificate yet"), _HTML)
        host = self.holder.policy.settings.portal_host if self.holder.policy else "gateway"
        body = render_page(
            "ca.html",
            title="School web filter certificate",
            name=CERT_NAME,
            fingerprint=digest,
            host=host,
        )
        return http.Response.make(200, body, _HTML)

    def ca_file(self, name: str) -> http.Response:
        pem, der, _ = self._cert()
        if name == f"{CERT_NAME}.pem":
            content, kind = pem, "application/x-x509-ca-cert"
        elif name in (f"{CERT_NAME}.crt", f"{CERT_NAME}.cer", f"{CERT_NAME}.der"):
            content, kind = der, "application/pkix-cert"
        else:
            return http.Response.make(404, page("Not found", "Not found"), _HTML)
        return http.Response.make(
            200,
            content,
            {"content-type": kind, "content-disposition": f"attachment; filename={name}"},
        )

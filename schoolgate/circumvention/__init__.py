"""Circumvention detectors: small, named, pure units that turn what the gateway saw into evidence.

The school's policy says attempts to circumvent the filter lead to a ban, and every incident
needs evidence. Each detector here looks at one :class:`TrafficFacts` (an HTTP CONNECT, a TLS
ClientHello or a decrypted HTTP request) and returns :class:`CircumventionEvent` values: a kind,
a severity (1 low .. 3 high), one sentence for the e-safety team and the evidence it rests on.

Nothing here knows of mitmproxy, the database or the web: the gateway adapter builds the facts,
the policy supplies ``circumvention_lookup`` (host -> matching entry of the ``circumvention``
list) and decides what an event leads to.

Stages and repeats. :meth:`Detectors.inspect` is stateless: it reports everything visible at
the stage it is given. Host-level findings (a listed host, an IP literal, a disguised host, a
known DNS resolver) are visible again at each stage of one connection and in every request of a
tunnel, so the adapter should keep one event per :attr:`CircumventionEvent.key` per connection
(or per time window). Tunnel-level detectors fire once: ``odd_port`` and ``dot`` on the
``connect`` stage (and ``odd_port`` on plain ``http`` requests, which have no CONNECT),
``no_sni`` on the ``tls`` stage. In transparent mode the client wrote no host: pass the SNI (or
"" when there is none) as ``host``, never the destination IP, or ``ip_literal`` fires on every
connection; synthesise a ``connect`` stage for the destination port if ``odd_port`` is wanted.

Deliberate decisions (see also the tests):

* Redirectors are not wrappers. ``google.com/url?q=...``, Outlook safe links, OAuth
  ``redirect_uri``/``continue`` parameters and share links only send the browser on; its next
  request is to the destination, which the gateway sees and filters. Reporting them would log
  every search click and every sign-in. ``wrapped_site`` fires only on services that fetch the
  destination and serve it under their own name (translators, caches, archives); ``web_proxy``
  only on known web-proxy URL signatures (Glype, PHProxy, CGIProxy, CroxyProxy, Ultraviolet,
  Rammerhead, Scramjet, bare/wisp back ends) and on generic ``?url=``/``?u=``/``?q=``
  parameters only under web-proxy script paths (``/browse.php``, ``/proxy.php``, ``/proxy``,
  ``/index.php?q=`` with a URL or base64 URL value). Link-exit scripts (``go.php?url=``,
  ``l.php?u=``) are redirectors and are not reported.
* Tor Browser sends the same User-Agent as Firefox ESR: ``vpn_client`` does not claim to
  catch it. Tor shows up through ``tor`` (``.onion`` names, tor2web gateways, bridge and
  snowflake infrastructure), Tor ports in ``odd_port`` and listed hosts.
* Mixed case in a host is not a disguise (browsers lower-case hosts); IP-literal forms are
  reported by ``ip_literal``, not again by ``disguised_host``.
* HTTP/2 connection coalescing lets a browser reuse one TLS connection for sibling hosts of
  the same organisation (``www.google.com`` / ``fonts.gstatic.com``), so ``domain_fronting``
  treats a few such families as one site; CDN and user-content domains (appspot.com,
  cloudfront.net, azureedge.net, ...) are never in a family. Encrypted Client Hello public
  names (``cloudflare-ech.com``) are not reported as fronting.

The package, by module (each imports only the ones above it, the core and the standard
library):

* :mod:`.facts` -- :class:`TrafficFacts`, :class:`CircumventionEvent`, the stages and kinds.
* :mod:`.knownhosts` -- public resolvers, Tor hosts, wrapper services (pure data).
* :mod:`.hostnames` -- host normalisation, disguises, sites (registrable domains by the
  Public Suffix List, via :func:`schoolgate.core.hosts.registrable_domain`), :class:`HostInfo`.
* :mod:`.decoders` -- the destination inside a wrapper's or web proxy's URL.
* :mod:`.evidence` -- what detectors share: their signature and how they word an event.
* The detectors, a module per family: :mod:`.proxies` (``listed_host``, ``wrapped_site``,
  ``web_proxy``), :mod:`.dns` (``doh``, ``dot``), :mod:`.addresses` (``ip_literal``,
  ``disguised_host``), :mod:`.destinations` (``domain_fronting``, ``no_sni``,
  ``unverified_destination``), :mod:`.vpn` (``odd_port``, ``non_tls_tunnel``,
  ``vpn_client``, ``tor``).
* :mod:`.registry` -- the detectors by name, in the order they run.
* :mod:`.detectors` -- :class:`Detectors`, which runs the enabled ones.

This module re-exports the public names: import them from ``schoolgate.circumvention``.
"""

from schoolgate.circumvention.decoders import Decoded
from schoolgate.circumvention.detectors import Detectors, DetectorsFailed
from schoolgate.circumvention.evidence import DetectorContext, DetectorFn
from schoolgate.circumvention.facts import (
    DETECTOR_HEADERS,
    KINDS,
    STAGES,
    CircumventionEvent,
    IPAddress,
    TrafficFacts,
)
from schoolgate.circumvention.hostnames import HostInfo, analyse_host, normalise_for_detection
from schoolgate.circumvention.knownhosts import wrapper_label
from schoolgate.circumvention.proxies import wrapped_path
from schoolgate.circumvention.registry import DETECTORS, detector_names, register_detector

__all__ = [
    "DETECTORS",
    "DETECTOR_HEADERS",
    "KINDS",
    "STAGES",
    "CircumventionEvent",
    "Decoded",
    "DetectorContext",
    "DetectorFn",
    "Detectors",
    "DetectorsFailed",
    "HostInfo",
    "IPAddress",
    "TrafficFacts",
    "analyse_host",
    "detector_names",
    "normalise_for_detection",
    "register_detector",
    "wrapped_path",
    "wrapper_label",
]

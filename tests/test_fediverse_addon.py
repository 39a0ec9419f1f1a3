"""Fediverse recognition in the gateway: an unlisted server's response shows what it is; the
host is kept with the evidence and decided as social media from the next request on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mitmproxy.test import tutils
from test_gateway_addons import Gateway, _configured, http_flow

from schoolgate.gateway import make_addons
from schoolgate.gateway.flowmark import flow_mark

NODEINFO = {
    "version": "2.0",
    "software": {"name": "mastodon", "version": "4.3.1"},
    "protocols": ["activitypub"],
}


@pytest.fixture
def gw(gateway_config: Path, gateway_data_dir: Path):
    gateway_config.write_text(gateway_config.read_text() + "fediverse:\n  category: social_media\n")
    addons = make_addons()
    yield from _configured(addons, addons, gateway_config, gateway_data_dir)


def answered(gw: Gateway, host: str, path: str, body: dict, *, content_type="application/json"):
    flow = http_flow(host, path=path)
    gw.enforce.request(flow)
    assert flow.response is None, "allowed: no list names it"
    flow.response = tutils.tresp(status_code=200, content=json.dumps(body).encode(), headers=[])
    flow.response.headers["content-type"] = content_type
    gw.fediverse.response(flow)
    return flow


def test_an_unlisted_mastodon_server_is_recognised_kept_and_blocked(gw):
    answered(gw, "toot.example", "/nodeinfo/2.0", NODEINFO)
    flow = http_flow("toot.example", path="/@someone")
    gw.enforce.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert flow_mark(flow.metadata).category == "social_media"
    # kept with the evidence, and read back by every worker
    gw.fediverse.sync()
    from schoolgate.storage.detected import detected_hosts

    with gw.recorder.sessions() as session:
        rows = detected_hosts(session)
    assert [r.host for r in rows] == ["toot.example"]
    assert "NodeInfo at /nodeinfo/2.0 says software mastodon 4.3.1" in rows[0].evidence
    assert rows[0].category == "social_media"
    gw.fediverse.current = {}
    gw.fediverse.sync()
    assert gw.fediverse.current == {"toot.example": "social_media"}


def test_software_that_is_not_social_and_weak_evidence_change_nothing(gw):
    forge = {**NODEINFO, "software": {"name": "forgejo", "version": "9.0"}}
    answered(gw, "git.example", "/nodeinfo/2.0", forge)
    # an /api/v1/ JSON API of an ordinary site is not a Fediverse server
    answered(gw, "shop.example", "/api/v1/instance", {"name": "shop"})
    for host in ("git.example", "shop.example"):
        flow = http_flow(host, path="/")
        gw.enforce.request(flow)
        assert flow.response is None, host
    assert gw.fediverse.current == {}


def test_listed_hosts_are_left_to_their_lists(gw):
    answered(gw, "wiki.test", "/nodeinfo/2.0", NODEINFO)  # wiki.test is in the wiki list
    assert gw.fediverse.current == {}

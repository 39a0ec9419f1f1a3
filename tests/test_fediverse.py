"""Recognising unlisted Fediverse servers from their traffic, and not ordinary sites."""

from __future__ import annotations

import json

import pytest

from schoolgate.core.fediverse import MAX_BODY, Observation, detect

AS = "https://www.w3.org/ns/activitystreams"


def answer(host: str, path: str, body=None, *, content_type="application/json", **kw):
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    return Observation(host=host, path=path, status=200, content_type=content_type, body=body,
                       **kw)  # fmt: skip


# -- real-looking Fediverse traffic -----------------------------------------------------------

MASTODON_NODEINFO = {
    "version": "2.0",
    "software": {"name": "mastodon", "version": "4.3.1"},
    "protocols": ["activitypub"],
    "services": {"outbound": [], "inbound": []},
    "usage": {"users": {"total": 1520, "activeMonth": 310}, "localPosts": 90211},
    "openRegistrations": True,
    "metadata": {"nodeName": "Toot Town", "nodeDescription": ""},
}
MASTODON_INSTANCE_V2 = {
    "domain": "toot.town.example",
    "title": "Toot Town",
    "version": "4.3.1",
    "source_url": "https://github.com/mastodon/mastodon",
    "usage": {"users": {"active_month": 310}},
    "configuration": {
        "urls": {"streaming": "wss://toot.town.example"},
        "statuses": {"max_characters": 500, "max_media_attachments": 4},
    },
    "registrations": {"enabled": True, "approval_required": False},
}
PLEROMA_INSTANCE_V1 = {
    "uri": "https://pleroma.example",
    "title": "A Pleroma",
    "version": "2.7.2 (compatible; Pleroma 2.6.2)",
    "urls": {"streaming_api": "wss://pleroma.example"},
    "stats": {"user_count": 12, "status_count": 3400, "domain_count": 2100},
}
MISSKEY_META = {
    "maintainerName": "admin",
    "maintainerEmail": "admin@misskey.example",
    "version": "2024.11.0",
    "name": "Misskey Example",
    "uri": "https://misskey.example",
    "disableRegistration": False,
    "repositoryUrl": "https://github.com/misskey-dev/misskey",
}
LEMMY_SITE = {
    "site_view": {"site": {"id": 1, "name": "Lemmy Example"}, "counts": {"users": 8000}},
    "admins": [],
    "version": "0.19.5",
    "all_languages": [],
}


@pytest.mark.parametrize(
    ("obs", "software", "kind"),
    [
        (
            answer(
                "toot.town.example",
                "/.well-known/nodeinfo",
                {
                    "links": [
                        {
                            "rel": "http://nodeinfo.diaspora.software/ns/schema/2.0",
                            "href": "https://toot.town.example/nodeinfo/2.0",
                        }
                    ]
                },
            ),
            None,
            "nodeinfo",
        ),
        (answer("toot.town.example", "/nodeinfo/2.0", MASTODON_NODEINFO), "mastodon", "nodeinfo"),
        (
            answer(
                "misskey.example",
                "/nodeinfo/2.1",
                {**MASTODON_NODEINFO, "software": {"name": "misskey", "version": "2024.11.0"}},
                content_type='application/json; profile="http://nodeinfo.diaspora.software/ns/schema/2.1#"',
            ),
            "misskey",
            "nodeinfo",
        ),
        (
            answer("toot.town.example", "/api/v2/instance", MASTODON_INSTANCE_V2),
            "mastodon",
            "instance_api",
        ),  # fmt: skip
        (
            answer("pleroma.example", "/api/v1/instance/", PLEROMA_INSTANCE_V1),
            "pleroma",
            "instance_api",
        ),  # fmt: skip
        (
            answer("misskey.example", "/api/meta", MISSKEY_META, method="POST"),
            "misskey",
            "instance_api",
        ),  # fmt: skip
        (answer("lemmy.example", "/api/v3/site", LEMMY_SITE), "lemmy", "instance_api"),
        (
            answer(
                "social.example",
                "/users/alice",
                {"@context": AS, "id": "https://social.example/users/alice", "type": "Person"},
                content_type="application/activity+json; charset=utf-8",
                accept="application/activity+json",
            ),
            None,
            "activitystreams",
        ),
        (
            answer(
                "social.example",
                "/@alice/113",
                {"@context": AS, "type": "Note"},
                content_type=f'application/ld+json; profile="{AS}"',
            ),
            None,
            "activitystreams",
        ),
        (
            answer(
                "social.example",
                "/.well-known/webfinger?resource=acct:alice@social.example",
                {
                    "subject": "acct:alice@social.example",
                    "links": [
                        {
                            "rel": "http://webfinger.net/rel/profile-page",
                            "type": "text/html",
                            "href": "https://social.example/@alice",
                        },
                        {
                            "rel": "self",
                            "type": "application/activity+json",
                            "href": "https://social.example/users/alice",
                        },
                    ],
                },
                content_type="application/jrd+json; charset=utf-8",
            ),
            None,
            "webfinger",
        ),
        (
            Observation(
                "toot.town.example",
                "/about",
                status=200,
                content_type="text/html",
                server="Mastodon",
            ),  # fmt: skip
            "mastodon",
            "server_header",
        ),
        (
            Observation("gts.example", "/nothing-here", status=404, server="gotosocial"),
            "gotosocial",
            "server_header",
        ),
    ],
)
def test_fediverse_traffic_is_recognised_with_its_evidence(obs, software, kind):
    finding = detect(obs)
    assert finding is not None and finding.social
    assert finding.software == software
    assert any(e.kind == kind and e.strong for e in finding.evidence)
    assert finding.host == obs.host.lower()
    assert finding.host in finding.describe()


def test_description_names_the_software_and_what_showed_it():
    finding = detect(answer("Toot.Town.example.", "/nodeinfo/2.0", MASTODON_NODEINFO))
    assert finding.describe() == (
        "toot.town.example: Mastodon server (NodeInfo at /nodeinfo/2.0 says software "
        "mastodon 4.3.1, protocols activitypub)"
    )


# -- ordinary sites that look a little like it ------------------------------------------------


@pytest.mark.parametrize(
    "obs",
    [
        # a shop's own JSON API under /api/v1/
        answer("api.shop.example", "/api/v1/products", {"products": [{"id": 1}]}),
        # a status page's "statuses" API: the path alone is only weak evidence
        answer("status.example", "/api/v1/statuses", {"statuses": [{"status": "ok"}]}),
        # schema.org structured data is JSON-LD without the ActivityStreams profile
        answer(
            "news.example",
            "/article/1",
            {"@context": "https://schema.org"},
            content_type="application/ld+json",
        ),  # fmt: skip
        answer(
            "news.example",
            "/feed",
            {"@context": "x"},
            content_type='application/ld+json; profile="https://schema.org/"',
        ),  # fmt: skip
        # OpenID Connect discovery through WebFinger
        answer(
            "login.school.example",
            "/.well-known/webfinger?resource=acct:pupil@school.example",
            {
                "subject": "acct:pupil@school.example",
                "links": [
                    {
                        "rel": "http://openid.net/specs/connect/1.0/issuer",
                        "href": "https://login.school.example",
                    }
                ],
            },
            content_type="application/jrd+json",
        ),
        # an ordinary /api/v1/instance and /api/meta
        answer("cloud.example", "/api/v1/instance", {"version": "1.2", "name": "cloud"}),
        answer("shop.example", "/api/meta", {"version": "3", "title": "Shop"}),
        # a client asking a news site for ActivityStreams gets HTML
        Observation(
            "news.example",
            "/",
            accept="application/activity+json",
            status=200,
            content_type="text/html",
            body="<html></html>",
        ),  # fmt: skip
        # an error page in an ActivityStreams type is not an answer
        Observation(
            "social.example", "/users/x", status=500, content_type="application/activity+json"
        ),  # fmt: skip
        # no response yet
        Observation("social.example", "/nodeinfo/2.0"),
        # a Server header of other software
        Observation("www.example", "/", status=200, server="nginx/1.25.3"),
    ],
)
def test_ordinary_sites_are_not_called_social(obs):
    finding = detect(obs)
    assert finding is None or not finding.social
    assert finding is None or all(not e.strong for e in finding.evidence)


@pytest.mark.parametrize(
    ("software", "social"),
    [("forgejo", False), ("gitea", False), ("wordpress", False), ("nextcloud", False),
     ("pixelfed", True), ("peertube", True), ("Akkoma", True), ("somethingnew", True)],
)  # fmt: skip
def test_nodeinfo_of_software_that_is_not_social_media(software, social):
    doc = {**MASTODON_NODEINFO, "software": {"name": software, "version": "1.0"}}
    finding = detect(answer("forge.school.example", "/nodeinfo/2.1", doc))
    assert finding is not None
    assert finding.software == software.lower()
    assert finding.social is social


def test_weak_evidence_is_recorded_but_does_not_decide():
    finding = detect(
        Observation(
            "social.example",
            "/api/v1/timelines/public?local=true",
            accept=f'application/ld+json; profile="{AS}"',
        ),  # fmt: skip
    )
    assert finding is not None and not finding.social
    assert {e.kind for e in finding.evidence} == {"api_path", "accept"}


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not json",
        "{" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        b'{"software": ' + b" " * MAX_BODY + b'{"name": "mastodon"}}',  # cut at MAX_BODY
        '{"software": "mastodon"}',
        '{"links": "not a list"}',
        '{"links": [1, null, {"rel": 5}]}',
        "null",
        "",
    ],
)
def test_hostile_bodies_are_no_evidence_and_never_raise(body):
    for path in ("/nodeinfo/2.0", "/.well-known/nodeinfo", "/.well-known/webfinger",
                 "/api/v1/instance", "/api/meta", "/api/v3/site"):  # fmt: skip
        finding = detect(answer("x.example", path, body))
        assert finding is None or not finding.social


@pytest.mark.parametrize("host", ["", "   ", "/"])
def test_an_observation_without_a_host_finds_nothing(host):
    assert detect(answer(host, "/nodeinfo/2.0", MASTODON_NODEINFO)) is None

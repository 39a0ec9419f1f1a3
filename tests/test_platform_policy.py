"""Platform families, page approvals, recognised hosts and confidential lists in the decision."""

from __future__ import annotations

from datetime import timedelta

import pytest
from policy_fixtures import local, write_config

from schoolgate.core.config import load_policy
from schoolgate.core.model import AccessException, RequestFacts
from schoolgate.core.pages import parse_page
from schoolgate.core.policy import WITHHELD, ExceptionSet
from schoolgate.storage.exceptions import ExceptionRequestError, validate_exception

STUDENT_IP = "10.20.1.5"
P2 = local("2026-11-24T10:30")  # a lesson: social media blocked for pupils

PLATFORMS = """\
platforms:
  tiktok:
    name: TikTok
    category: social_media
    hosts: [tiktok.com, tiktokv.com]
    static: [tiktokcdn.com, ttwstatic.com]
  instagram:
    name: Instagram
    category: social_media
    hosts: [instagram.com]
    static: [cdninstagram.com]
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("platforms")
    (folder / "platforms.yaml").write_text(PLATFORMS)
    from policy_fixtures import BASE

    categories = dict(BASE["categories"])
    categories["social_media"] = dict(categories["social_media"])
    # tiktokcdn.com is deliberately in no list: the family covers it.
    categories["social_media"]["entries"] = [
        *categories["social_media"]["entries"],
        "tiktok.com",
        "tiktokv.com",
    ]
    categories["illegal"] = {"locked": True, "entries": ["bad.example", "evil.example/page"]}
    return load_policy(
        write_config(
            folder,
            {
                "platforms": "platforms.yaml",
                "categories": categories,
                "fediverse": {"category": "social_media"},
            },
        )
    )


def ask(policy, url, *, exceptions=(), referer=None, dest=None, detected=None):
    host, _, path = url.partition("/")
    facts = RequestFacts(host, P2, "/" + path, "GET", 443, "https", STUDENT_IP, "ben")
    facts.referer, facts.fetch_dest = referer, dest
    return policy.decide(facts, ExceptionSet(exceptions), detected=detected)


def exception(kind: str, target: str) -> AccessException:
    return AccessException(1, "user", "ben", kind, target, P2 - timedelta(hours=1), None, "it")


def test_a_block_covers_the_family_even_where_the_lists_miss_a_host(policy):
    decision = ask(policy, "v16.tiktokcdn.com/video.mp4")
    assert not decision.allowed
    assert decision.category == "social_media"
    assert decision.match.kind == "family" and "TikTok" in decision.match.source


def test_a_site_exception_for_a_platform_opens_its_family_and_nothing_more(policy):
    opened = [exception("host", "instagram.com")]
    assert ask(policy, "www.instagram.com/", exceptions=opened).allowed
    assert ask(policy, "static.cdninstagram.com/x.js", exceptions=opened).allowed
    assert not ask(policy, "www.tiktok.com/", exceptions=opened).allowed
    assert not ask(policy, "facebook.com/", exceptions=opened).allowed
    # without the exception the static host is blocked (the test can fail)
    assert not ask(policy, "static.cdninstagram.com/x.js").allowed


def test_a_platform_exception_by_key(policy):
    opened = [exception("platform", "tiktok")]
    assert ask(policy, "www.tiktok.com/@anyone", exceptions=opened).allowed
    assert ask(policy, "api.tiktokv.com/feed", exceptions=opened).allowed
    assert not ask(policy, "www.instagram.com/", exceptions=opened).allowed


def test_a_page_approval_opens_the_page_its_static_hosts_and_its_own_calls_only(policy):
    opened = [exception("page", "tiktok.com/@bbcnews")]
    assert ask(policy, "www.tiktok.com/@bbcnews", exceptions=opened).allowed
    assert ask(policy, "www.tiktok.com/@bbcnews/video/123", exceptions=opened).allowed
    assert ask(policy, "v16.tiktokcdn.com/video.mp4", exceptions=opened).allowed
    assert ask(policy, "lf16.ttwstatic.com/app.js", exceptions=opened).allowed
    # other pages, look-alike paths and the family's API host stay blocked
    assert not ask(policy, "www.tiktok.com/@someoneelse", exceptions=opened).allowed
    assert not ask(policy, "www.tiktok.com/@bbcnewsfake", exceptions=opened).allowed
    assert not ask(policy, "www.tiktok.com/", exceptions=opened).allowed
    assert not ask(policy, "api.tiktokv.com/feed", exceptions=opened).allowed
    # the page's own script calls to its host: only a script's request from the page
    page = "https://www.tiktok.com/@bbcnews"
    assert ask(policy, "www.tiktok.com/api/item_list", exceptions=opened, referer=page,
               dest="empty").allowed  # fmt: skip
    assert not ask(policy, "www.tiktok.com/@other", exceptions=opened, referer=page,
                   dest="document").allowed  # fmt: skip
    assert not ask(policy, "www.tiktok.com/api/item_list", exceptions=opened,
                   referer="https://www.tiktok.com/@other", dest="empty").allowed  # fmt: skip
    assert not ask(policy, "api.tiktokv.com/x", exceptions=opened, referer=page,
                   dest="empty").allowed  # fmt: skip


def test_page_targets_are_validated(policy):
    assert parse_page("https://www.tiktok.com/@BBCNews?lang=en").text == "tiktok.com/@bbcnews"
    assert parse_page("tiktok.com/") is None
    kwargs = {"scope": "user", "scope_value": "ben", "starts": P2, "ends": None}
    validate_exception(policy, target_kind="page", target="tiktok.com/@bbcnews", **kwargs)
    with pytest.raises(ExceptionRequestError, match="not a page"):
        validate_exception(policy, target_kind="page", target="tiktok.com", **kwargs)
    with pytest.raises(ExceptionRequestError, match="locked"):
        validate_exception(policy, target_kind="page", target="evil.example/page", **kwargs)
    with pytest.raises(ExceptionRequestError, match="unknown platform"):
        validate_exception(policy, target_kind="platform", target="myspace", **kwargs)


def test_recognised_hosts_take_their_category_where_no_list_names_them(policy):
    detected = {"social.example": "social_media", "wikipedia.org": "social_media"}
    decision = ask(policy, "mastodon.social.example/@a", detected=detected)
    assert not decision.allowed and decision.category == "social_media"
    assert decision.match.kind == "detected"
    assert ask(policy, "other.example/", detected=detected).allowed
    # a listed host keeps its list's category
    assert ask(policy, "en.wikipedia.org/wiki/X", detected=detected).category == "wikipedia"


def test_a_confidential_list_never_shows_which_entry_matched(policy):
    decision = ask(policy, "evil.example/page/1")
    assert not decision.allowed and decision.category == "illegal"
    text = str(decision.to_json())
    assert "evil.example/page" not in text.replace("evil.example/page/1", "")
    assert decision.match.entry == WITHHELD
    assert "bad.example" not in str(ask(policy, "www.bad.example/").to_json())


def test_explain_decides_on_the_host_alone_where_https_is_not_decrypted(policy):
    from schoolgate.core.model import Identity

    guest = Identity("guest", "main")
    facts = RequestFacts("en.wikipedia.org", P2, "/wiki/X", "GET", 443, "https")
    assert "not decrypted" in policy.host_only_reason(guest, facts)
    student = Identity("student", "main")
    assert policy.host_only_reason(student, facts) is None
    plain = RequestFacts("en.wikipedia.org", P2, "/wiki/X", "GET", 80, "http")
    assert policy.host_only_reason(guest, plain) is None

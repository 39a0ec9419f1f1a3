"""Category subscriptions: reading them, when they are due or stale, fetching (several parts,
squidGuard archives), the checks, and the warnings for empty and stale lists."""

from __future__ import annotations

import io
import os
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from policy_fixtures import BASE, write_config

from schoolgate.core.config import load_policy
from schoolgate.core.configfile import ConfigError
from schoolgate.core.subscriptions import list_warnings, parse_period, state_of
from schoolgate.jobs.listupdate import (
    fetch_subscription,
    list_stats,
    list_updates_of,
    refresh_subscriptions,
)


def archive(files: dict[str, str], top: str = "adult") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def config_with(tmp_path: Path, subscriptions: list[dict], **category) -> Path:
    categories = dict(BASE["categories"])
    categories["gaming"] = {"description": "Games", "subscriptions": subscriptions, **category}
    return write_config(tmp_path, {"categories": categories})


def test_periods():
    assert parse_period("daily") == timedelta(days=1)
    assert parse_period("every 6 hours") == timedelta(hours=6)
    assert parse_period("2 days") == timedelta(days=2)
    for bad in ("5 minutes", "sometimes", 3):
        with pytest.raises(ValueError):
            parse_period(bad)


def test_mistakes_are_reported_with_their_lines(tmp_path):
    path = config_with(
        tmp_path,
        [{"url": "ftp://x/list", "schedule": "often", "format": "zip", "min_entries": 0}],
    )
    with pytest.raises(ConfigError) as caught:
        load_policy(path, data_dir=tmp_path / "var")
    text = str(caught.value)
    assert "categories.gaming.subscriptions[0].url" in text and "http(s)://" in text
    assert "subscriptions[0].schedule" in text and "subscriptions[0].format" in text
    assert "subscriptions[0].min_entries" in text


def test_an_unfetched_subscription_is_an_empty_list_with_a_loud_warning(tmp_path):
    (tmp_path / "games.txt").write_text("\n".join(f"g{i}.example" for i in range(30)))
    path = config_with(tmp_path, [{"url": f"file://{tmp_path}/games.txt", "min_entries": 20}])
    policy = load_policy(path, data_dir=tmp_path / "var")  # not an error
    assert any("has not been fetched yet" in w for w in policy.warnings)
    assert policy.matcher.stats().get("gaming", 0) == 0
    warnings = list_warnings(policy)
    assert warnings[0].startswith("the locked category illegal") is False  # it has an entry
    assert any("category gaming has no entries" in w for w in warnings)
    # fetched: the category has its entries, and nothing to warn of
    settings = list_updates_of(policy)
    results = refresh_subscriptions(settings, now=datetime.now(UTC))
    assert [r.accepted for r in results] == [True], results[0].message
    policy = load_policy(path, data_dir=tmp_path / "var")
    assert policy.matcher.stats()["gaming"] == 30
    assert not [w for w in list_warnings(policy) if "gaming" in w]
    # not due again until its schedule has passed
    assert refresh_subscriptions(list_updates_of(policy), now=datetime.now(UTC)) == []
    stats = {row["category"]: row for row in list_stats(policy, list_updates_of(policy))}
    sub = stats["gaming"]["subscriptions"][0]
    assert sub["present"] and not sub["stale"] and sub["schedule"] == "every 1 day"


def test_a_stale_subscription_is_warned_of(tmp_path):
    (tmp_path / "games.txt").write_text("a.example\nb.example\n")
    path = config_with(tmp_path, [{"url": f"file://{tmp_path}/games.txt", "schedule": "daily"}])
    policy = load_policy(path, data_dir=tmp_path / "var")
    refresh_subscriptions(list_updates_of(policy), now=datetime.now(UTC))
    sub = policy.subscriptions[0]
    old = time.time() - 3 * 86400
    os.utime(sub.file, (old, old))
    assert state_of(sub, datetime.now(UTC)).stale
    lines = [w for w in list_warnings(policy) if "has not been refreshed for 3 days" in w]
    assert lines and "schedule every 1 day" in lines[0]


def test_the_locked_category_empty_says_how_to_subscribe(tmp_path):
    categories = dict(BASE["categories"])
    categories["illegal"] = {"locked": True, "entries": []}
    policy = load_policy(write_config(tmp_path, {"categories": categories}))
    first = list_warnings(policy)[0]
    assert first.startswith("the locked category illegal has no entries")
    assert "IWF" in first and "docs/lists.md" in first


def test_parts_are_joined_and_archives_unpacked(tmp_path):
    (tmp_path / "a.txt").write_text("one.example\ntwo.example")
    (tmp_path / "b.txt").write_text("three.example\n")
    (tmp_path / "adult.tar.gz").write_bytes(
        archive({"domains": "x.example\ny.example\n", "urls": "z.example/page\n", "usage": "b"})
    )
    path = config_with(
        tmp_path,
        [
            {"url": [f"file://{tmp_path}/a.txt", f"file://{tmp_path}/b.txt"], "name": "parts"},
            {"url": f"file://{tmp_path}/adult.tar.gz", "format": "squidguard-tgz"},
        ],
    )
    policy = load_policy(path, data_dir=tmp_path / "var")
    parts, adult = policy.subscriptions
    assert fetch_subscription(parts).new_entries == 3
    result = fetch_subscription(adult)
    assert result.accepted, result.message
    assert sorted(p.name for p in adult.file.iterdir()) == ["domains", "urls"]
    policy = load_policy(path, data_dir=tmp_path / "var")
    assert policy.matcher.lookup("www.y.example", "/").category == "gaming"
    assert policy.matcher.lookup("z.example", "/page/1").category == "gaming"
    assert policy.matcher.lookup("one.example", "/") is not None


def test_refused_downloads_keep_the_list_in_force(tmp_path):
    source = tmp_path / "games.txt"
    source.write_text("\n".join(f"g{i}.example" for i in range(100)))
    archive_path = tmp_path / "bad.tar.gz"
    archive_path.write_bytes(b"\x1f\x8b this is not a whole archive")
    path = config_with(
        tmp_path,
        [
            {"url": f"file://{source}", "min_entries": 50},
            {"url": f"file://{archive_path}", "format": "squidguard-tgz", "name": "arch"},
        ],
    )
    policy = load_policy(path, data_dir=tmp_path / "var")
    sub, arch = policy.subscriptions
    assert fetch_subscription(sub).accepted
    source.write_text("\n".join(f"g{i}.example" for i in range(60)))  # truncated
    refused = fetch_subscription(sub)
    assert not refused.accepted and "shrank by 40%" in refused.message
    assert len(sub.file.read_text().split()) == 100
    source.write_text("\n".join(f"g{i}.example" for i in range(40)))
    refused = fetch_subscription(sub)
    assert not refused.accepted and "fewer than the 50 expected" in refused.message
    assert len(sub.file.read_text().split()) == 100
    bad = fetch_subscription(arch)
    assert not bad.accepted and "not a readable .tar.gz" in bad.message
    assert not arch.file.exists()
    assert [p.name for p in sub.file.parent.iterdir() if p.name.endswith(".new")] == []

"""The shipped list snapshots and curated lists: provenance, attribution, the detector's
resolvers, and education left open by the categories built from them."""

from __future__ import annotations

import importlib.util
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import pytest

from schoolgate.circumvention import knownhosts
from schoolgate.core.configfile import Issues
from schoolgate.core.lists import Matcher, parse_list

ROOT = Path(__file__).resolve().parents[1]
BLOCKLISTS = ROOT / "blocklists"
UT1 = BLOCKLISTS / "ut1"
SNAPSHOTS = sorted(p.name for p in UT1.iterdir() if p.is_dir())


def test_the_uk_categories_have_their_snapshots():
    for name in (
        "agressif", "dangerous_material", "drogue", "gambling", "dating", "chat",
        "social_networks", "warez", "hacking", "mixed_adult", "vpn", "doh", "redirector",
        "residential-proxies", "remote-control", "dynamic-dns",
    ):  # fmt: skip
        assert name in SNAPSHOTS, name


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_each_snapshot_reads_cleanly_and_says_where_it_comes_from(name):
    folder = UT1 / name
    issues = Issues()
    parsed = parse_list(folder, issues)
    assert not issues.items and not issues.warnings, [str(i) for i in issues.items]
    assert len(parsed) > 0 and parsed.skipped == 0
    provenance = dict(
        line.split(": ", 1)
        for line in (folder / "PROVENANCE").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["commit"])
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", provenance["date"])
    assert provenance["licence"].startswith("CC BY-SA 4.0")
    assert f"blacklists/{name}" in provenance["mirror"]
    assert provenance["upstream"].startswith("https://dsi.ut-capitole.fr/blacklists/")


def test_readme_attributes_every_snapshot():
    readme = (BLOCKLISTS / "README.md").read_text()
    assert "CC BY-SA 4.0" in readme and "Universit" in readme
    for name in SNAPSHOTS:
        assert f"`ut1/{name}`" in readme, name


def test_snapshots_stay_a_reasonable_size_for_a_repository():
    total = sum(f.stat().st_size for f in UT1.rglob("*") if f.is_file())
    assert total < 20 * 1024 * 1024


@pytest.mark.parametrize("name", ["chat", "self_harm"])
def test_curated_lists_have_headers(name):
    text = (BLOCKLISTS / f"{name}.txt").read_text()
    assert text.startswith("# schoolgate category list:")
    assert "Sources:" in text
    issues = Issues()
    assert len(parse_list(BLOCKLISTS / f"{name}.txt", issues)) > 0
    assert not issues.items and not issues.warnings


def test_the_circumvention_list_blocks_every_resolver_the_detector_knows():
    issues = Issues()
    matcher = Matcher.build(
        [("circumvention", [parse_list(BLOCKLISTS / "circumvention.txt", issues)])]
    )
    assert not issues.items
    known = (
        knownhosts.DOH_HOSTS
        | knownhosts.DOH_SUFFIXES
        | knownhosts.RESOLVER_IPS
        | knownhosts.TOR2WEB_SUFFIXES
        | knownhosts.TOR_INFRA_HOSTS
        | knownhosts.TOR_INFRA_SUFFIXES
    )
    assert len(known) > 100
    missing = sorted(h for h in known if matcher.lookup(h, "/") is None)
    assert missing == []
    # Encrypted Client Hello's public name is every ECH connection to a Cloudflare site.
    assert matcher.lookup("cloudflare-ech.com", "/") is None


# -- the categories built from the snapshots leave education open ------------------------------


def _bench():
    spec = importlib.util.spec_from_file_location(
        "coverage_bench", ROOT / "bench" / "coverage_bench.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trial():
    """The shipped config's decisions for a pupil in a lesson (no measurement lists)."""
    bench = _bench()
    with tempfile.TemporaryDirectory() as data_dir:
        listed = Path(data_dir) / "measured.txt"
        listed.write_text("0.0.0.0 www.facebook.com\n0.0.0.0 www.tiktok.com\n0.0.0.0 example.org\n")
        return bench.measure(
            ROOT / "mitm_config.yaml",
            [("social", "fixture", listed)],
            "student",
            datetime(2026, 11, 23, 8, 0),
            Path(data_dir),
        )


def test_every_education_site_stays_open_for_a_pupil_in_a_lesson(trial):
    assert trial["window"].startswith("P")  # a lesson period of the default timetable
    opened, total = trial["education"]
    assert total >= 60
    assert trial["education_blocked"] == []
    assert opened == total


def test_measurement_counts_what_the_policy_blocks(trial):
    (result,) = trial["lists"]
    assert result.hosts == ["www.facebook.com", "www.tiktok.com", "example.org"]
    assert result.blocked == 2
    assert result.open_hosts == ["example.org"]

"""List updates from a local HTTP server (no network): a good list is swapped in and the policy
reloads it; a list that fails to parse or shrinks too much is refused and the old one stays."""

from __future__ import annotations

import functools
import io
import threading
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from schoolgate.core.config import load_policy
from schoolgate.jobs.listupdate import Progress, fetch_and_install, list_updates_of
from schoolgate.jobs.scheduler import FakeClock, Jobs
from schoolgate.storage.db import open_database
from schoolgate.storage.models import AuditRow

SAMPLES = Path(__file__).resolve().parent / "data" / "lists"


def _domains(n: int, prefix: str = "site") -> str:
    return "".join(f"{prefix}{i}.example\n" for i in range(n))


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def school(gateway_config: Path, gateway_data_dir: Path, server):
    root, base = server
    (gateway_config.parent / "social.txt").write_text(_domains(100))
    gateway_config.write_text(
        gateway_config.read_text()
        + f"""
list_updates:
  at: "04:15"
  max_shrink: 0.2
  sources:
    - {{category: social_media, url: "{base}/social.txt", file: social.txt}}
"""
    )
    return gateway_config, gateway_data_dir, root


def _policy(school):
    config, data_dir, _ = school
    return load_policy(config, data_dir=data_dir)


def test_a_good_list_is_swapped_in_and_the_policy_sees_it(school):
    config, _data_dir, www = school
    policy = _policy(school)
    assert policy.matcher.stats()["social_media"] == 100
    (www / "social.txt").write_text("# fresh\n" + _domains(120) + "newsocial.example\n")
    settings = list_updates_of(policy)
    [src] = settings.sources
    result = fetch_and_install(src.url, src.file, category="social_media", max_shrink=0.2)
    assert result.accepted, result.message
    assert (result.old_entries, result.new_entries) == (100, 121)
    assert (config.parent / "social.txt.previous").read_text() == _domains(100)
    assert not list(config.parent.glob(".social.txt.*"))  # no temporary file left behind
    reloaded = _policy(school)  # what the gateway's holder does when the file changes
    assert reloaded.matcher.stats()["social_media"] == 121
    assert reloaded.matcher.lookup("newsocial.example", None).category == "social_media"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (_domains(79), "shrank by 21%"),
        ("<html><body>\n" + "<p>Service unavailable</p>\n" * 50 + "</body></html>", "no entries"),
        (_domains(90) + "<p>error page</p>\n" * 200, "unreadable lines"),
        ("# nothing here\n", "no entries"),
    ],
)
def test_a_bad_list_is_refused_and_the_old_one_stays(school, body, why):
    config, _data_dir, www = school
    before = (config.parent / "social.txt").read_bytes()
    (www / "social.txt").write_text(body)
    [src] = list_updates_of(_policy(school)).sources
    result = fetch_and_install(src.url, src.file, category="social_media", max_shrink=0.2)
    assert not result.accepted and why in result.message, result.message
    assert (config.parent / "social.txt").read_bytes() == before
    assert not list(config.parent.glob(".social.txt.*"))
    assert _policy(school).matcher.stats()["social_media"] == 100


def test_a_missing_list_is_refused(school):
    config, _data_dir, _www = school
    [src] = list_updates_of(_policy(school)).sources
    result = fetch_and_install(src.url + ".gone", src.file, category="social_media")
    assert not result.accepted and "could not fetch" in result.message
    assert "404" in result.message
    assert _policy(school).matcher.stats()["social_media"] == 100


def test_common_formats_are_read(school, tmp_path):
    target = tmp_path / "lists" / "social.txt"
    for sample in ("hosts.txt", "adblock.txt", "mixed.txt"):
        result = fetch_and_install(str(SAMPLES / sample), target, category="x", max_shrink=1.0)
        assert result.accepted and result.new_entries > 0, (sample, result.message)


def test_the_job_refreshes_lists_at_the_configured_time_and_reports_refusals(school):
    config, _data_dir, www = school
    policy = _policy(school)
    sessions = open_database(policy.settings.database_url)
    clock = FakeClock(datetime(2026, 11, 24, 4, 0, tzinfo=UTC))
    jobs = Jobs(lambda: policy, sessions=sessions, clock=clock)
    jobs.start(paused=True)
    try:
        assert jobs.next_runs()["lists"] == datetime(2026, 11, 24, 4, 15, tzinfo=UTC)
        (www / "social.txt").write_text(_domains(10))  # a truncated download
        jobs.run_due()
        assert "lists" not in jobs.results
        clock.set(datetime(2026, 11, 24, 4, 15, tzinfo=UTC))
        jobs.run_due()
        [res] = jobs.results["lists"]["results"]
        assert not res["accepted"] and "shrank by 90%" in res["message"]
        assert (config.parent / "social.txt").read_text() == _domains(100)
        (www / "social.txt").write_text(_domains(105))
        clock.advance(days=1)
        jobs.run_due()
        [res] = jobs.results["lists"]["results"]
        assert res["accepted"]
        with sessions() as s:
            actions = list(
                s.scalars(
                    select(AuditRow.action)
                    .where(AuditRow.action.like("lists.%"))
                    .order_by(AuditRow.id)
                )
            )
        assert actions == ["lists.refused", "lists.update"]
        assert jobs.next_runs()["lists"] == datetime(2026, 11, 26, 4, 15, tzinfo=UTC)
    finally:
        jobs.shutdown()


def test_cli_update_import_stats(school, capsys, tmp_path):
    from schoolgate.cli.main import main

    config, data_dir, www = school
    common = ["--config", str(config), "--data-dir", str(data_dir)]
    (www / "social.txt").write_text(_domains(200_000, "big"))  # a big list
    assert main(["lists", "update", *common]) == 1  # no database yet: refused, nothing fetched
    assert "there is no database yet" in capsys.readouterr().err
    assert (config.parent / "social.txt").read_text() != _domains(200_000, "big")
    assert main(["lists", "update", "--init", *common]) == 0
    out = capsys.readouterr().out
    assert "OK      social_media: updated: 100 -> 200000 entries" in out
    # compiled by the update: a gateway reloading now maps that version, compiling nothing
    compiled = sorted((data_dir / "lists").glob("main-*.sgl"), key=lambda p: p.stat().st_mtime)
    assert load_policy(config, data_dir=data_dir).matcher.path == compiled[-1]
    assert main(["lists", "stats", "--json", *common]) == 0
    import json

    stats = {row["category"]: row for row in json.loads(capsys.readouterr().out)}
    assert stats["social_media"]["entries"] == 200_000
    assert stats["social_media"]["update_url"].endswith("/social.txt")
    small = tmp_path / "small.txt"
    small.write_text(_domains(5))
    assert main(["lists", "import", str(small), "--category", "social_media", *common]) == 1
    assert "REFUSED social_media: refused: the list shrank by 100%" in capsys.readouterr().out
    assert main(["lists", "import", str(small), "--category", "social_media", "--force",
                 *common]) == 0  # fmt: skip
    assert (config.parent / "social.txt").read_text() == _domains(5)


def test_compiling_shows_each_phase_as_a_bar(school):
    from schoolgate.jobs.listupdate import CompileProgress

    config, data_dir, _www = school
    (config.parent / "social.txt").write_text(_domains(1000, "other"))
    out = io.StringIO()
    bar = CompileProgress(enabled=True, stream=out)
    policy = load_policy(config, data_dir=data_dir, list_progress=bar)
    bar.close()
    assert policy.matcher.stats()["social_media"] == 1000
    text = out.getvalue()
    assert "compiling lists: reading lists [" in text and "MiB" in text
    assert "compiling lists: indexing [##############################] 100%\n" in text


def test_progress_bar():
    out = io.StringIO()
    bar = Progress("social_media", 1000, stream=out, enabled=True)
    bar._last = -1e9
    bar.update(500)
    bar._last = -1e9
    bar.update(500)
    bar.close()
    text = out.getvalue()
    assert "social_media [" in text and "100%" in text and text.endswith("\n")
    assert " 50%" in text

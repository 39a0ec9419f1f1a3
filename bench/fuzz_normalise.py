#!/usr/bin/env python3
"""Coverage-guided fuzzer (atheris) over host/URL normalisation, the list line parser and the
config loader. Not part of the test suite.

Invariants checked on every input (a failure is a crash: printed, saved, and the run stops):

* ``normalize_host`` never raises, returns text, and is idempotent.
* ``facts_for_url`` (how ``schoolgate explain`` reads a URL) raises nothing but
  ``CommandError``; its host normalises without error.
* ``parse_entries`` (inline list entries) raises nothing; every entry it keeps is already
  normal (``normalize_host(entry) == entry``) and a ``Matcher`` over them finds each one.
* ``Policy.decide`` never allows a spelling of a URL it blocks in its plain form (the fuzzed
  bytes choose a blocked URL and how to spell it: case, trailing dot, port, percent-encoding,
  ``//``, ``/./``, ``/x/../``, ``%2F``, userinfo, fragment).
* ``load_policy`` on fuzzed YAML returns a whole Policy or raises ``ConfigError`` whose every
  issue has a file and a message; never any other exception.

    python3 bench/fuzz_normalise.py 120            # fuzz for 120 seconds
    python3 bench/fuzz_normalise.py 300 --target host   # one target only

Prints the number of inputs tried (per target) and any crash found, with the input.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from schoolgate.cli.main import CommandError, facts_for_url
    from schoolgate.core.config import load_policy
    from schoolgate.core.configfile import ConfigError, Issues
    from schoolgate.core.hosts import normalize_host
    from schoolgate.core.lists import Matcher, parse_entries

from schoolgate.core.model import Action, RequestFacts  # noqa: E402
from tests.policy_fixtures import local, write_config  # noqa: E402

TARGETS = ("host", "url", "entries", "policy", "config")
AT = local("2026-11-24T10:30")  # a lesson: social media blocked for a student
STUDENT_IP = "10.20.1.2"
BLOCKED = [
    ("facebook.com", "/"),
    ("www.instagram.com", "/explore"),
    ("youtube.com", "/watch?v=abc"),
    ("bücher-social.example", "/"),
    ("games.example", "/play"),
    ("bad.example", "/"),
    ("vpn.example", "/"),
    ("instagram.com", "/accounts/emailsignup"),
    ("linkedin.com", "/signup"),
]

counts = dict.fromkeys(TARGETS, 0)
STATE: dict = {}


class Crash(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Crash(message)


# -- targets --------------------------------------------------------------------------------
def fuzz_host(fdp: atheris.FuzzedDataProvider) -> None:
    raw = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    once = normalize_host(raw)
    check(isinstance(once, str), f"normalize_host({raw!r}) returned {once!r}")
    twice = normalize_host(once)
    check(twice == once, f"not idempotent: {raw!r} -> {once!r} -> {twice!r}")


def fuzz_url(fdp: atheris.FuzzedDataProvider) -> None:
    url = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    try:
        facts = facts_for_url(url, at=AT, method="GET", client_ip=None, user=None)
    except CommandError:
        return
    except ValueError as exc:  # known bug (reported): urlsplit's "Invalid IPv6 URL"
        if "IPv6" in str(exc):
            return
        raise
    normalize_host(facts.host)


def fuzz_entries(fdp: atheris.FuzzedDataProvider) -> None:
    lines = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes()).split("\n")[:20]
    issues = Issues()
    parsed = parse_entries([(t, i) for i, t in enumerate(lines, 1)], issues, source="f.yaml")
    for domain in parsed.domains:
        check(normalize_host(domain) == domain, f"entry not normal: {domain!r} from {lines!r}")
    for issue in issues.items:
        check(bool(issue.file and issue.message), f"issue without file/message: {issue!r}")
    matcher = Matcher.build([("cat", [parsed])])
    for domain in parsed.domains:
        check(matcher.lookup(domain, None) is not None, f"entry {domain!r} does not match")
    for host, prefix, _line in parsed.paths:
        found = matcher.lookup(host, prefix)
        check(found is not None, f"path rule {host + prefix!r} does not match itself")


def _spell(fdp: atheris.FuzzedDataProvider, text: str, *, path: bool) -> str:
    out = []
    for ch in text:
        roll = fdp.ConsumeIntInRange(0, 9)
        if roll == 0 and ch.isascii() and ch.isalpha():
            out.append(f"%{ord(ch):02X}")
        elif roll == 1:
            out.append(ch.upper())
        elif roll == 2 and path and ch == "/":
            out.append(fdp.PickValueInList(["//", "/./", "/%2e/", "/zz/../", "%2F"]))
        else:
            out.append(ch)
    return "".join(out)


def fuzz_policy(fdp: atheris.FuzzedDataProvider) -> None:
    policy = STATE["policy"]
    host, path = BLOCKED[fdp.ConsumeIntInRange(0, len(BLOCKED) - 1)]
    plain = policy.decide(
        RequestFacts(host=host, at=AT, path=path, method="GET", client_ip=STUDENT_IP)
    )
    check(plain.action is Action.BLOCK, f"plain {host}{path} not blocked: {plain.reason}")
    s_host = _spell(fdp, host, path=False)
    if fdp.ConsumeBool():
        s_host += "."
    if fdp.ConsumeBool():
        s_host += f":{fdp.ConsumeIntInRange(1, 65535)}"
    s_path = _spell(fdp, path, path=True)
    decision = policy.decide(
        RequestFacts(host=s_host, at=AT, path=s_path, method="GET", client_ip=STUDENT_IP)
    )
    check(
        decision.action is Action.BLOCK,
        f"BYPASS: {s_host!r} {s_path!r} allowed ({decision.reason}); {host}{path} is blocked",
    )
    userinfo = fdp.PickValueInList(["", "u@", "u:p@"])
    fragment = fdp.PickValueInList(["", "#x", "#/a"])
    url = f"http://{userinfo}{s_host}{s_path}{fragment}"
    try:
        facts = facts_for_url(url, at=AT, method="GET", client_ip=STUDENT_IP, user=None)
    except CommandError:
        return
    decision = policy.decide(facts)
    check(decision.action is Action.BLOCK, f"BYPASS via URL {url!r}: {decision.reason}")


def fuzz_config(fdp: atheris.FuzzedDataProvider) -> None:
    tmp: Path = STATE["tmp"]
    base: bytes = STATE["config_bytes"]
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:  # raw bytes
        data = fdp.ConsumeBytes(fdp.remaining_bytes())
    elif mode == 1:  # the valid config with a slice replaced by fuzzed text
        start = fdp.ConsumeIntInRange(0, len(base))
        end = fdp.ConsumeIntInRange(start, min(len(base), start + 80))
        data = base[:start] + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80)) + base[end:]
    else:  # the valid config with one line's value replaced
        lines = base.split(b"\n")
        index = fdp.ConsumeIntInRange(0, len(lines) - 1)
        line = lines[index]
        colon = line.find(b":")
        value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
        lines[index] = (line[: colon + 1] + b" " + value) if colon >= 0 else value
        data = b"\n".join(lines)
    path = tmp / "mitm_config.yaml"
    path.write_bytes(data)
    try:
        policy = load_policy(path, data_dir=tmp)
    except ConfigError as exc:
        check(bool(exc.issues), "ConfigError without issues")
        for issue in exc.issues:
            check(bool(issue.file and issue.message.strip()), f"bad issue {issue!r}")
        return
    check(bool(policy.timetables), "policy without timetables")
    check(policy.resolver.default_site in policy.timetables, "default site has no timetable")


FUNCS = {
    "host": fuzz_host,
    "url": fuzz_url,
    "entries": fuzz_entries,
    "policy": fuzz_policy,
    "config": fuzz_config,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seconds", type=float, help="how long to fuzz")
    parser.add_argument("--target", choices=TARGETS, help="one target (default: all, mixed)")
    parser.add_argument("--crash-dir", default=None, help="where to save crashing inputs")
    args, rest = parser.parse_known_args()

    tmp = Path(tempfile.mkdtemp(prefix="schoolgate-fuzz-"))
    config_path = write_config(tmp)
    STATE.update(
        tmp=tmp,
        config_bytes=config_path.read_bytes(),
        policy=load_policy(config_path, data_dir=tmp),
    )
    crash_dir = Path(args.crash_dir) if args.crash_dir else tmp
    targets = [args.target] if args.target else list(TARGETS)
    deadline = time.monotonic() + args.seconds
    started = time.monotonic()

    def report_and_exit(code: int) -> None:
        elapsed = time.monotonic() - started
        total = sum(counts.values())
        print(f"\ntried {total} inputs in {elapsed:.0f} s ({total / max(elapsed, 1e-9):.0f}/s)")
        for name in targets:
            print(f"  {name:8} {counts[name]}")
        sys.stdout.flush()
        os._exit(code)

    def one_input(data: bytes) -> None:
        if time.monotonic() > deadline:
            print("no crash found")
            report_and_exit(0)
        fdp = atheris.FuzzedDataProvider(data)
        name = targets[fdp.ConsumeIntInRange(0, len(targets) - 1)] if len(targets) > 1 else None
        name = name or targets[0]
        counts[name] += 1
        try:
            FUNCS[name](fdp)
        except Exception as exc:  # noqa: BLE001 - every crash is reported with its input
            saved = crash_dir / f"crash-{name}-{counts[name]}.bin"
            saved.write_bytes(data)
            print(f"\nCRASH in {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            print(f"input saved to {saved} ({data!r:.300})")
            report_and_exit(1)

    atheris.Setup([sys.argv[0], *rest], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

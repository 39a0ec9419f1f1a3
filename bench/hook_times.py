"""How long schoolgate's hooks hold mitmproxy's event loop, timed inside the gateway under load.

    python3 bench/hook_times.py [--seconds 10] [--scenarios keepalive,https,newconn]
        [--concurrency 10] [--no-pin]

One proxy (``bench/lean_mitmproxy.py --switchable ... --time-hooks``: mitmproxy as
``schoolgate run --quiet`` sets it up, schoolgate's addons on the test config, where
127.0.0.1 is a student in a lesson and the origin is uncategorised, so allowed) takes a
``hey`` load, and every call of every part's hook is timed with ``perf_counter_ns`` as it
runs, caches as cold as they are in service. Prints, for each part's hook and for the one
addon mitmproxy sees ("all parts"), the calls and the p50, mean and p90 in microseconds, and
the mean time a request spends in them.

``bench/addon_cost_bench.py`` gives what the addons cost in throughput, which also holds
mitmproxy's price for offering each event to one more addon: this bench separates out the
part that is schoolgate's own code, and says which part it is. The timer adds about 0.1 us
a call. Needs ``hey``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import (  # noqa: E402
    SCENARIOS,
    Proxy,
    Scenario,
    hey,
    named_origin,
    percentile,
    run_scenarios,
)


def measure(scenario: Scenario, args: argparse.Namespace, work: Path, conf: Path) -> None:
    times_file = work / f"hook-times-{scenario.name}.json"
    scenario, extra, origin = named_origin(scenario, work)  # HTTPS: a named origin, allowed
    try:
        proxy = Proxy.start(
            "switchable", scenario, work, conf, ("--time-hooks", str(times_file), *extra)
        )
        address, env = proxy.address, proxy.client_env(scenario.https)
        try:
            hey(scenario.url, address, 2, args.concurrency, scenario.hey_args, env)
            result = hey(
                scenario.url, address, args.seconds, args.concurrency, scenario.hey_args, env
            )
        finally:
            proxy.stop()
    finally:
        if origin is not None:
            origin.shutdown()
    if not times_file.exists():
        raise SystemExit("the proxy did not write its hook times (did it stop cleanly?)")
    times: dict[str, list[int]] = json.loads(times_file.read_text())
    requests = times.get("all parts.request", [])
    print(
        f"{scenario.title}: {result['rps']:.1f} req/s with the hooks timed "
        f"({len(requests)} requests reached the request hook, warm-up included), {scenario.url}"
    )
    if set(result["codes"]) != {"200"}:
        print(f"  not every request was answered 200 (allowed): {result['codes']}")
    print(f"  {'hook':<36} {'calls':>7} {'p50 us':>8} {'mean us':>8} {'p90 us':>8}")
    per_request = 0.0
    for key in sorted(times, key=lambda k: (not k.startswith("all parts"), k)):
        values = times[key]
        if not values:
            continue
        mean = statistics.fmean(values) / 1000
        if key.startswith("all parts") and requests:
            per_request += mean * len(values) / len(requests)
        print(
            f"  {key:<36} {len(values):>7} {percentile(values, 0.5) / 1000:>8.1f} "
            f"{mean:>8.1f} {percentile(values, 0.9) / 1000:>8.1f}"
        )
    print(f"  the event loop's time in schoolgate's hooks, per request: {per_request:.1f} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    return run_scenarios(parser, args, measure)


if __name__ == "__main__":
    sys.exit(main())

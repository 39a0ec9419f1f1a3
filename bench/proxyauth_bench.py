"""What proxy logins cost the gateway, with and without remembering them.

    python3.12 bench/proxyauth_bench.py [--seconds 5] [--costs 5,10] [--concurrency 10]

mitmproxy's ``proxyauth`` checks the login of every plain-HTTP request, on the event loop.
This runs ``schoolgate run --quiet --set proxyauth=@htpasswd`` with bcrypt passwords of each
``--costs`` (Apache's ``htpasswd -B`` uses 5 unless told otherwise; 10 and 12 are common
advice), once with ``schoolgate_proxyauth_cache=0`` (every request checked) and once with the
default (a login that passed is remembered), and loads each with ``hey`` (HTTP/1.1
keep-alive, every request carrying the same pupil's ``Proxy-Authorization``, as a browser
sends it once the user has logged in). Prints requests/s and p99 latency of each.

Needs ``hey`` and the ``bcrypt`` module (installed with mitmproxy 12, that is Python 3.12 or
later here; mitmproxy 11 reads bcrypt htpasswd files only when ``bcrypt`` is installed).
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import (  # noqa: E402
    ROOT,
    copy_test_config,
    free_port,
    have_hey,
    hey,
    proxy_command,
    start_origin,
    stop_process,
    wait_port,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--costs", default="5,10", help="bcrypt costs to try (4-14)")
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    try:
        import bcrypt
    except ImportError:
        print("bench needs the bcrypt module (with mitmproxy 12: Python 3.12+)", file=sys.stderr)
        return 2
    if not have_hey():
        return 2
    costs = [int(c) for c in args.costs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        conf = copy_test_config(work)
        origin = start_origin()
        try:
            url = f"http://127.0.0.1:{origin.server_address[1]}/page"
            login = base64.b64encode(b"pupil1:correct horse").decode()
            header = ("-H", f"Proxy-Authorization: Basic {login}")
            print(f"origin {url}; {args.concurrency} keep-alive connections, {args.seconds}s each")
            for cost in costs:
                hashed = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(rounds=cost)).decode()
                htpasswd = work / f"htpasswd-{cost}"
                htpasswd.write_text(f"pupil1:{hashed}\n")
                for remember in ("0", "300"):
                    port = free_port()
                    folder = work / f"var-{cost}-{remember}"
                    command = proxy_command("schoolgate", port, folder, conf, https=False) + [
                        "--set",
                        f"proxyauth=@{htpasswd}",
                        "--set",
                        f"schoolgate_proxyauth_cache={remember}",
                    ]
                    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
                    try:
                        wait_port(port, proc)
                        proxy = f"http://127.0.0.1:{port}"
                        hey(url, proxy, 1, 2, header)  # warm up
                        result = hey(url, proxy, args.seconds, args.concurrency, header)
                    finally:
                        stop_process(proc)
                    how = "every request checked" if remember == "0" else "logins remembered"
                    codes = ", ".join(f"{n}x{code}" for code, n in sorted(result["codes"].items()))
                    print(
                        f"bcrypt cost {cost:2d}, {how:22s}: {result['rps']:8.1f} req/s, "
                        f"p99 {result['p99_ms']:8.1f} ms ({codes})"
                    )
        finally:
            origin.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

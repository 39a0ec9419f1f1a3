"""The real gateway for the identity end-to-end tests: tests/data/gateway's config with the
test's identity sources, `schoolgate run --mode upstream:` to a local origin on loopback (as in
test_portal_e2e: what the gateway allows reaches the origin, nothing leaves loopback)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path

import yaml
from gateway_process import ROOT, free_port, run_cli, start_gateway, stop_gateway
from test_portal_e2e import Origin


class UpstreamGateway:
    def __init__(
        self,
        tmp: Path,
        edit: Callable[[dict, Path], None],
        *,
        roster: str = "",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``edit(config, folder)`` changes the config (a dict) before it is written;
        ``roster`` lines are added to the roster."""
        folder = tmp / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
        self.config = folder / "config.yaml"
        config = yaml.safe_load(self.config.read_text())
        edit(config, folder)
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        roster_file = folder / "roster.csv"
        roster_file.write_text(roster_file.read_text() + roster)
        self.data_dir = tmp / "var"
        self.log = tmp / "gateway.log"
        self.origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
        threading.Thread(target=self.origin.serve_forever, daemon=True).start()
        self.port = free_port()
        self.proxy = f"http://127.0.0.1:{self.port}"
        self.proc = start_gateway(
            self.config,
            self.data_dir,
            self.port,
            self.log,
            "--mode",
            f"upstream:http://127.0.0.1:{self.origin.server_address[1]}",
            env=env,
        )
        self.ca = self.data_dir / "ca" / "mitmproxy-ca-cert.pem"

    def cli(self, *args: str) -> str:
        return run_cli(self.config, self.data_dir, *args)

    def events(self) -> list[dict]:
        return json.loads(self.cli("events", "--json", "--limit", "1000"))

    def stop(self) -> None:
        stop_gateway(self.proc, 20)
        self.origin.shutdown()

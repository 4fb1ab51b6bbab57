"""A 4-validator testnet with the loopback DNS stand-in (zone file watched, so
certbot's hooks can add records), and `dpkid acme serve` in front of node 0."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpkid.dev.dns_server import DevDnsServer, Zone
from tests.netutil import LocalNet, wait_for

DPKID = [sys.executable, "-m", "dpkid"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dpkid_json(*args: str, timeout_s: float = 120) -> dict[str, Any]:
    out = subprocess.run(
        [*DPKID, *args, "--json"], capture_output=True, text=True, timeout=timeout_s
    )
    try:
        doc: dict[str, Any] = json.loads(out.stdout)
    except ValueError:
        doc = {"stdout": out.stdout}
    doc["_rc"] = out.returncode
    doc["_stderr"] = out.stderr
    return doc


@dataclass
class AcmeNet:
    net: LocalNet
    zone_path: Path
    dns: DevDnsServer
    http_port: int
    directory: str
    acme_proc: subprocess.Popen[str]
    account_key: str

    @property
    def home(self) -> str:
        return str(self.net.home(0))

    def set_a(self, *names: str) -> None:
        data = Zone.read_file(self.zone_path) if self.zone_path.exists() else {}
        for n in names:
            data[n] = {"A": ["127.0.0.1"]}
        Zone.write_file(self.zone_path, data)
        wait_for(lambda: all(self.dns.zone.lookup(n, "A")[1] for n in names), 10, "zone reloaded")

    def eab(self, spend_limit: int = 100_000) -> dict[str, Any]:
        r = dpkid_json(
            "acme", "eab", "--account-key", self.account_key, "--server", self.directory,
            "--spend-limit", str(spend_limit), "--home", self.home,
        )  # fmt: skip
        assert r["_rc"] == 0, r
        return r


@contextmanager
def acme_net(
    tmp: Path, http_port: int | None = None, testnet_args: tuple[str, ...] = ()
) -> Iterator[AcmeNet]:
    zone_path = tmp / "zone.json"
    Zone.write_file(zone_path, {})
    zone = Zone()
    stop = threading.Event()
    http_port = http_port or free_port()
    with DevDnsServer(zone) as dns:

        def watch() -> None:
            for _ in zone.watch_file(zone_path, stop):  # a generator: one step per reload
                pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        n = LocalNet(
            tmp / "tn",
            validators=4,
            extra_args=[
                "--dns-resolver",
                dns.address,
                "--http-port",
                str(http_port),
                *testnet_args,
            ],
        )
        proc: subprocess.Popen[str] | None = None
        try:
            n.start_all()
            n.wait_height([0, 1, 2, 3], 2, timeout_s=60)

            def root_ready() -> bool:
                try:
                    n.rpc(0, "root_get", {})
                    return True
                except Exception:
                    return False

            wait_for(root_ready, 120, "the validators' threshold root")
            port = free_port()
            proc = subprocess.Popen(
                [
                    *DPKID, "acme", "serve", "--home", str(n.home(0)),
                    "--listen", f"127.0.0.1:{port}", "--json",
                ],
                stdout=subprocess.PIPE,
                stderr=open(tmp / "acme.log", "w"),  # noqa: SIM115 - closed with the process
                text=True,
            )  # fmt: skip
            assert proc.stdout is not None
            line = _read_line(proc, 60)
            directory = json.loads(line)["directory"]
            yield AcmeNet(
                n, zone_path, dns, http_port, directory, proc, str(n.info["account_keys"][0])
            )
        finally:
            stop.set()
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            n.close()


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The server's first line (its directory URL), within a deadline."""
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(proc.stdout.readline() if proc.stdout else ""))
    t.daemon = True
    t.start()
    t.join(timeout_s)
    if not got or not got[0]:
        raise AssertionError(f"acme serve printed nothing in {timeout_s} s (rc {proc.poll()})")
    return got[0]


def wait_until(pred: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.25)

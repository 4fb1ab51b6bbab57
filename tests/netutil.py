"""Run a real local testnet of `dpkid start` processes for tests.

Every wait is a condition polled against a deadline; every process started
here is stopped by its PID in ``close()``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dpkid.client.rpc import RpcClientError, call_sync
from dpkid.core import codec
from dpkid.core.types import Transfer, sign_tx
from dpkid.daemon.config import read_key

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


def wait_for(
    cond: Callable[[], T | bool | None], timeout_s: float, what: str, interval_s: float = 0.2
) -> T:
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v  # type: ignore[return-value]
        except (OSError, RpcClientError, ValueError) as exc:
            last_exc = exc
        time.sleep(interval_s)
    raise WaitTimeout(
        f"timed out after {timeout_s} s waiting for {what}"
        + (f" (last error: {last_exc})" if last_exc else "")
    )


class LocalNet:
    def __init__(
        self, root: Path, validators: int = 4, extra_args: list[str] | None = None
    ) -> None:
        self.root = root
        self.n = validators
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, Any] = {}
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dpkid",
                "testnet",
                "--validators",
                str(validators),
                "--out",
                str(root),
                "--json",
                *(extra_args or []),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.info = json.loads(out.stdout)

    def home(self, i: int) -> Path:
        return self.root / f"node{i}"

    def start(self, i: int) -> None:
        assert i not in self.procs or self.procs[i].poll() is not None, f"node{i} already running"
        log = open(self.root / f"node{i}.log", "ab")  # noqa: SIM115 -- closed in stop()
        self.logs[i] = log
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.procs[i] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dpkid",
                "start",
                "--home",
                str(self.home(i)),
                "--log-format",
                "json",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def start_all(self) -> None:
        for i in range(self.n):
            self.start(i)

    def stop(self, i: int, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        p = self.procs.get(i)
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        del self.procs[i]
        log = self.logs.pop(i, None)
        if log is not None:
            log.close()

    def kill(self, i: int) -> None:
        self.stop(i, signal.SIGKILL)

    def close(self) -> None:
        for i in list(self.procs):
            self.stop(i, signal.SIGKILL, timeout_s=10)

    def rpc(self, i: int, method: str, params: Any = None) -> Any:
        return call_sync(self.home(i), method, params, timeout_s=10)

    def height(self, i: int) -> int:
        h: int = self.rpc(i, "status")["height"]
        return h

    def wait_height(self, nodes: list[int], height: int, timeout_s: float) -> None:
        def ok() -> bool:
            return all(self.height(i) >= height for i in nodes)

        wait_for(ok, timeout_s, f"nodes {nodes} to reach height {height}")

    def block_hashes(self, i: int, upto: int) -> list[tuple[str, str]]:
        out = []
        for h in range(1, upto + 1):
            b = self.rpc(i, "block_get", {"height": h})
            out.append((b["hash"], b["header"]["app_hash"]))
        return out

    def log_text(self, i: int) -> str:
        p = self.root / f"node{i}.log"
        return p.read_text(errors="replace") if p.exists() else ""


class SignedLoad:
    """Steady signed transfers from a thread, bounded in count and in time.

    Each account's transactions go to one node, in nonce order; a refused
    transaction is offered again with the same nonce.
    """

    def __init__(
        self,
        net: LocalNet,
        rate_per_s: int = 20,
        max_txs: int = 20_000,
        max_s: float = 600,
        skip_nodes: set[int] | None = None,
    ) -> None:
        self.net = net
        self.rate = rate_per_s
        self.max_txs = max_txs
        self.max_s = max_s
        self.nodes = [i for i in range(net.n) if i not in (skip_nodes or set())]
        self.stop_event = threading.Event()
        self.sent = 0
        self.accepted = 0
        self.keys = [read_key(Path(p)) for p in net.info["account_keys"]]
        self.nonces = [0] * len(self.keys)
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_s
        chain = self.net.info["chain_id"]
        while (
            not self.stop_event.is_set()
            and self.sent < self.max_txs
            and time.monotonic() < deadline
        ):
            i = self.sent % len(self.keys)
            to = self.keys[(i + 1) % len(self.keys)].address
            raw = codec.encode(sign_tx(self.keys[i], chain, self.nonces[i], 10, Transfer(to, 1)))
            node = self.nodes[i % len(self.nodes)]
            try:
                self.net.rpc(node, "tx_submit", {"tx": raw.hex()})
                self.nonces[i] += 1
                self.accepted += 1
            except (OSError, ValueError, RpcClientError):
                pass  # refused, overloaded or restarting: the same nonce goes again
            self.sent += 1
            self.stop_event.wait(1 / self.rate)

    def close(self) -> None:
        self.stop_event.set()
        self.t.join(timeout=30)


class Recorder:
    """tests/gossip_recorder.py as a child process: a passive peer on the
    consensus topic that records every signed vote and proposal it sees."""

    def __init__(self, chain_id: str, peers: list[str], out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "gossip_recorder.py"),
                "--chain-id",
                chain_id,
                "--out",
                str(out),
                *[a for p in peers for a in ("--peer", p)],
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded by the recorder's own 60 s wait
        assert json.loads(line)["event"] == "ready", line

    def publish(self, data: bytes) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"publish {data.hex()}\n")
        self.proc.stdin.flush()
        assert json.loads(self.proc.stdout.readline())["event"] == "published"

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(x) for x in self.out.read_text().splitlines() if x.strip()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

"""``dpkid bench net``: throughput and latency of a real testnet on this machine.

Method (BENCHMARKS.md, "Network throughput"): a fresh ``dpkid testnet`` of
separate ``dpkid start`` processes on 127.0.0.1; a separate load-generator
process (dpkid/dev/loadgen.py) that pre-signs transfers from many funded
accounts, pins each account to one node and offers a fixed rate through the
nodes' RPC sockets in batches. Committed transactions are counted from the
committed blocks of node0 (``block_get``), never from submissions, and each
transaction's latency is from its submission to the moment node0 is seen to
have committed the block holding it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dpkid.client.rpc import call_sync
from dpkid.core.crypto import SigningKey, sha256, verify_ed25519
from dpkid.dev.procs import make_testnet, start_node, stop_nodes

START_TIMEOUT_S: Final = 120.0
DRAIN_S: Final = 30.0  # after the load stops: how long accepted txs may still commit
POLL_S: Final = 0.02  # how often the commit watcher asks node0 for its height
STATUS_PROBE_S: Final = 0.1
SIGN_TIMEOUT_S: Final = 600.0
DEFAULT_ACCOUNTS: Final = 400
SWEEP_RATES: Final = (250, 500, 1000, 1500, 2000, 3000, 4500, 6000)
MAX_RATE_TPS: Final = 50_000
MAX_DURATION_S: Final = 3600


class BenchError(Exception):
    pass


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def verify_ceiling_tps(validators: int, seconds: float = 1.0) -> tuple[float, float]:
    """(one core's PyNaCl verifies/s, cores x that / validators): every validator
    verifies every transaction's signature once, all on this machine's cores."""
    k = SigningKey.from_label("bench-ceiling")
    msg = b"x" * 200
    sig = k.sign(msg)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(200):
            verify_ed25519(k.public_key, msg, sig)
        n += 200
    per_core = n / (time.perf_counter() - t0)
    return per_core, per_core * (os.cpu_count() or 1) / validators


@dataclass
class _Watcher:
    """Follows node0's committed blocks and notes when each tx was first seen committed."""

    home: Path  # node0's: its RPC socket is home/dpkid.sock
    committed: dict[str, float] = field(default_factory=dict)
    block_times: list[float] = field(default_factory=list)
    height: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    blocks: int = 0

    def run(self) -> None:
        try:
            self.height = int(call_sync(self.home, "status")["height"])
            while not self.stop.is_set():
                h = int(call_sync(self.home, "status")["height"])
                seen = time.time()
                for height in range(self.height + 1, h + 1):
                    b = call_sync(self.home, "block_get", {"height": height})
                    for tx in b["txs"]:
                        self.committed.setdefault(sha256(bytes.fromhex(tx)).hex(), seen)
                    self.block_times.append(seen)
                    self.blocks += 1
                self.height = max(self.height, h)
                time.sleep(POLL_S)
        except Exception as exc:  # reported in the summary, never silently
            self.error = repr(exc)


@dataclass
class _StatusProbe:
    """How fast node0 answers ``status`` while under load (issue 12: p99 within
    100 ms even at 3x saturation): one call per STATUS_PROBE_S."""

    home: Path
    rtt_s: list[float] = field(default_factory=list)
    failures: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                call_sync(self.home, "status", timeout_s=10.0)
                self.rtt_s.append(time.perf_counter() - t0)
            except Exception:
                self.failures += 1
            self.stop.wait(STATUS_PROBE_S)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


class _Net:
    def __init__(self, workdir: Path, validators: int, accounts: int) -> None:
        self.dir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.info = make_testnet(
            workdir / "net",
            validators,
            *("--accounts", str(accounts), "--balance", str(10**12), "--dns-resolver", "none"),
        )
        self.homes = [Path(p) for p in self.info["nodes"]]

    def start(self, progress: Callable[[str], None]) -> None:
        for i, home in enumerate(self.homes):
            self.procs.append(start_node(home, self.dir / f"node{i}.log", json_logs=False))
        deadline = time.monotonic() + START_TIMEOUT_S
        for i, home in enumerate(self.homes):
            while True:
                try:
                    if int(call_sync(home, "status")["height"]) >= 1:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"node{i} did not commit a block in {START_TIMEOUT_S:.0f} s")
                time.sleep(0.2)
            progress(f"node{i} is committing")

    def stop(self) -> None:
        stop_nodes(self.procs)


def run_net(
    validators: int,
    duration_s: float,
    rate_tps: float,
    accounts: int = DEFAULT_ACCOUNTS,
    workdir: Path | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """One run at one offered rate; the summary of issue 12's fields."""
    if not 1 <= validators <= 16:
        raise BenchError("--validators must be between 1 and 16")
    if not 0 < rate_tps <= MAX_RATE_TPS:
        raise BenchError(f"--rate must be between 1 and {MAX_RATE_TPS}")
    if not 1 <= duration_s <= MAX_DURATION_S:
        raise BenchError(f"--duration must be between 1 and {MAX_DURATION_S} s")
    per_core, ceiling = verify_ceiling_tps(validators)
    base = workdir or Path(tempfile.mkdtemp(prefix="dpkid-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    progress(
        f"bench net in {base}: {validators} validators, {rate_tps:g} tx/s for {duration_s:g} s"
    )
    net = _Net(base, validators, accounts)
    clean = False  # the node homes and logs stay unless the run went well
    try:
        net.start(progress)
        pids = [p.pid for p in net.procs]
        plan = {
            "sockets": [str(h / "dpkid.sock") for h in net.homes],
            "account_keys": net.info["account_keys"],
            "chain_id": net.info["chain_id"],
            "fee": 10,
            "rate_tps": rate_tps,
            "duration_s": duration_s,
        }
        (base / "plan.json").write_text(json.dumps(plan))
        gen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dpkid.dev.loadgen",
                "--plan",
                str(base / "plan.json"),
                "--out",
                str(base / "load.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=open(base / "loadgen.log", "ab"),  # noqa: SIM115 -- handed to the child
        )
        assert gen.stdout is not None
        progress("pre-signing transactions")
        line = gen.stdout.readline()  # "signed": the clock starts now
        if not line:
            raise BenchError(f"the load generator failed: see {base / 'loadgen.log'}")
        watcher = _Watcher(net.homes[0])
        cpu0 = {p: _proc_cpu_s(p) for p in pids}
        rss0 = {p: _proc_rss_mib(p) for p in pids}
        t0 = time.time()
        wt = threading.Thread(target=watcher.run, daemon=True)
        wt.start()
        probe = _StatusProbe(net.homes[0])
        pt = threading.Thread(target=probe.run, daemon=True)
        pt.start()
        progress("load running")
        gen.wait(timeout=duration_s + SIGN_TIMEOUT_S)
        t_end = time.time()
        probe.stop.set()
        pt.join(timeout=15)
        cpu1 = {p: _proc_cpu_s(p) for p in pids}
        rss1 = {p: _proc_rss_mib(p) for p in pids}
        load = json.loads((base / "load.json").read_text())
        accepted: dict[str, float] = load["accepted"]
        # Let what was accepted commit, then stop watching.
        drain_until = time.monotonic() + DRAIN_S
        while time.monotonic() < drain_until and not all(h in watcher.committed for h in accepted):
            time.sleep(0.2)
        watcher.stop.set()
        wt.join(timeout=10)
        lat = [watcher.committed[h] - t for h, t in accepted.items() if h in watcher.committed]
        in_window = [
            h for h in accepted if h in watcher.committed and watcher.committed[h] <= t_end
        ]
        committed_total = sum(1 for h in accepted if h in watcher.committed)
        window_s = max(t_end - t0, 1e-9)
        gaps = [b - a for a, b in zip(watcher.block_times, watcher.block_times[1:], strict=False)]
        committed_tps = len(in_window) / window_s
        out: dict[str, Any] = {
            "validators": validators,
            "duration_s": duration_s,
            "offered_tps": rate_tps,
            "submitted": load["offered"],
            "accepted": len(accepted),
            "refused": load["refused"],
            "committed_txs": committed_total,
            "committed_tps": round(committed_tps, 1),
            "lost": len(accepted) - committed_total,
            "latency_p50_s": round(_pct(lat, 0.50), 3),
            "latency_p99_s": round(_pct(lat, 0.99), 3),
            "blocks": watcher.blocks,
            "block_interval_p50_s": round(_pct(gaps, 0.5), 3),
            "status_p99_ms": round(1000 * _pct(probe.rtt_s, 0.99), 1),
            "status_failures": probe.failures,
            "rpc_batch_rtt_p50_s": round(load["batch_rtt_p50_s"], 4),
            "rpc_batch_rtt_p99_s": round(load["batch_rtt_p99_s"], 4),
            "cpu_percent": [round(100 * (cpu1[p] - cpu0[p]) / (t_end - t0), 1) for p in pids],
            "rss_mib": {
                "start": [round(rss0[p], 1) for p in pids],
                "end": [round(rss1[p], 1) for p in pids],
            },
            "verify_per_core_per_s": round(per_core),
            "verify_ceiling_tps": round(ceiling),
            "ratio_to_ceiling": round(committed_tps / ceiling, 3) if ceiling else 0.0,
            "errors": load["errors"] + ([watcher.error] if watcher.error else []),
        }
        if workdir is not None or out["errors"]:
            out["workdir"] = str(base)  # kept: asked for, or needed to see what went wrong
        else:
            clean = True
        return out
    finally:
        net.stop()
        if clean:
            shutil.rmtree(base, ignore_errors=True)


def run_sweep(
    validators: int,
    duration_s: float,
    rates: tuple[int, ...] = SWEEP_RATES,
    progress: Callable[[str], None] = lambda _m: None,
) -> list[dict[str, Any]]:
    """The CometBFT QA method: a fresh network per offered rate."""
    return [run_net(validators, duration_s, r, progress=progress) for r in rates]


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offered = [r["offered_tps"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(offered, [r["committed_tps"] for r in rows], "o-", label="committed")
    ax1.plot(offered, offered, ":", color="grey", label="offered")
    ax1.set_xlabel("offered tx/s")
    ax1.set_ylabel("committed tx/s")
    ax1.legend()
    ax2.plot(offered, [r["latency_p50_s"] for r in rows], "o-", label="p50")
    ax2.plot(offered, [r["latency_p99_s"] for r in rows], "s-", label="p99")
    ax2.set_xlabel("offered tx/s")
    ax2.set_ylabel("submit -> commit latency (s)")
    ax2.legend()
    fig.suptitle(f"dpkid bench net, {rows[0]['validators']} validators")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


SWEEP_COLUMNS: Final = (
    ("offered_tps", "offered"),
    ("committed_tps", "committed"),
    ("latency_p50_s", "p50 s"),
    ("latency_p99_s", "p99 s"),
    ("lost", "lost"),
    ("ratio_to_ceiling", "/ceiling"),
)


def sweep_table(rows: list[dict[str, Any]]) -> str:
    head = " ".join(f"{name:>10}" for _, name in SWEEP_COLUMNS)
    lines = [head]
    for r in rows:
        lines.append(" ".join(f"{r[k]!s:>10}" for k, _ in SWEEP_COLUMNS))
    return "\n".join(lines)

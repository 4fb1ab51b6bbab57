"""``dpkid bench net``: throughput and latency of a real testnet on this machine.

Method (BENCHMARKS.md, "Network throughput"): a fresh ``dpkid testnet`` of
separate ``dpkid start`` processes on 127.0.0.1; a separate load-generator
process (dpkid/dev/loadgen.py) that pre-signs transfers from many funded
accounts, pins each account to one node and offers a fixed rate through the
nodes' RPC sockets in batches. Committed transactions are counted from the
committed blocks of node0 (``block_get``), never from submissions, and each
transaction's latency is from its submission to the moment node0 is seen to
have committed the block holding it.

With ``mix="certs"`` the load is DV certificate applications instead: the bench
starts its own loopback DNS and HTTP challenge servers (separate processes,
``python -m dpkid.dev.dns_server`` / ``http_server``), every validator checks
every application's http-01 challenge there and attests, and a certificate
counts as issued when a committed block's receipt says so (``cert_issued``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dpkid.client.rpc import call_sync
from dpkid.core.crypto import SigningKey, sha256, verify_ed25519
from dpkid.core.types import DvAttest, TssSign, decode_tx
from dpkid.daemon.config import read_genesis
from dpkid.dev.procs import make_testnet, start_node, stop_nodes

START_TIMEOUT_S: Final = 120.0
DRAIN_S: Final = 30.0  # after the load stops: how long accepted txs may still commit
POLL_S: Final = 0.02  # how often the commit watcher asks node0 for its height
STATUS_PROBE_S: Final = 0.1
SIGN_TIMEOUT_S: Final = 600.0
DEFAULT_ACCOUNTS: Final = 400
SWEEP_RATES: Final = (250, 500, 1000, 1500, 2000, 3000, 4500, 6000)
RSS_SAMPLES: Final = 20  # per run, so the timeline stays short in the summary
RSS_SAMPLE_MIN_S: Final = 2.0
CERT_SWEEP_RATES: Final = (25, 50, 100, 150, 200, 300)
MAX_RATE_TPS: Final = 50_000
MAX_DURATION_S: Final = 3600
MIXES: Final = ("transfers", "certs")
CERT_ACCOUNTS: Final = 100
SERVER_START_S: Final = 30.0  # for a dev DNS/HTTP server to print its address
PUBLISH_TIMEOUT_S: Final = 60.0  # for the servers to load the zone and challenge map


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
    # mix certs: name -> when a committed receipt first said it was issued
    issued: dict[str, float] = field(default_factory=dict)
    watch_issuance: bool = False
    # cert_id hex -> height of issuance / (height, time) of its threshold signature
    issued_height: dict[str, int] = field(default_factory=dict)
    issued_time: dict[str, float] = field(default_factory=dict)
    signed: dict[str, tuple[int, float]] = field(default_factory=dict)

    def _issuance(self, raw: bytes, seen: float, height: int) -> None:
        """Issuance happens in the attestation that crosses the threshold; the
        X.509 is signed in the validators' tss_sign that completes it."""
        body = decode_tx(raw).body
        if not isinstance(body, DvAttest | TssSign):
            return
        r = call_sync(self.home, "tx_get", {"hash": sha256(raw).hex()})
        for ev in (r.get("receipt") or {}).get("events", []):
            if ev["kind"] == "cert_issued":
                self.issued_height.setdefault(ev["ref"], height)
                self.issued_time.setdefault(ev["ref"], seen)
                for name in ev["detail"].split(","):
                    self.issued.setdefault(name, seen)
            elif ev["kind"] == "tss_cert_signed":
                self.signed.setdefault(ev["ref"], (height, seen))

    def run(self) -> None:
        try:
            self.height = int(call_sync(self.home, "status")["height"])
            while not self.stop.is_set():
                h = int(call_sync(self.home, "status")["height"])
                seen = time.time()
                for height in range(self.height + 1, h + 1):
                    b = call_sync(self.home, "block_get", {"height": height})
                    for tx in b["txs"]:
                        raw = bytes.fromhex(tx)
                        self.committed.setdefault(sha256(raw).hex(), seen)
                        if self.watch_issuance:
                            self._issuance(raw, seen, height)
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
    pids: list[int] = field(default_factory=list)
    rss_every_s: float = 10.0
    rtt_s: list[float] = field(default_factory=list)
    failures: int = 0
    # (seconds into the load, largest node RSS in MiB): shows whether memory
    # levels off at the caches' bounds or keeps growing (issue 12).
    rss_timeline: list[tuple[float, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        start = time.monotonic()
        next_rss = start
        while not self.stop.is_set():
            if self.pids and time.monotonic() >= next_rss:
                with contextlib.suppress(OSError, ValueError):
                    rss = max(_proc_rss_mib(p) for p in self.pids)
                    self.rss_timeline.append((round(time.monotonic() - start, 1), round(rss, 1)))
                next_rss += self.rss_every_s
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
    def __init__(
        self, workdir: Path, validators: int, accounts: int, dv: tuple[str, int] | None
    ) -> None:
        """``dv``: the (DNS resolver, HTTP port) validators check domains with;
        ``None``, they check nothing."""
        self.dir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        checks = ["--dns-resolver", "none"]
        if dv is not None:
            checks = ["--dns-resolver", dv[0], "--http-port", str(dv[1])]
        self.info = make_testnet(
            workdir / "net",
            validators,
            *("--accounts", str(accounts), "--balance", str(10**12), *checks),
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


class _ChallengeServers:
    """The bench's own loopback DNS and http-01 servers, each its own process,
    loading the zone and challenge map the load generator writes."""

    def __init__(self, workdir: Path) -> None:
        self.zone_file = workdir / "zone.json"
        self.map_file = workdir / "challenges.json"
        self.http_log = workdir / "http_server.log"
        self.procs: list[subprocess.Popen[str]] = []
        self.dns = self._start(["dns_server", "--zone", str(self.zone_file)], workdir / "dns.log")
        http = ["http_server", "--map", str(self.map_file), "--verbose"]
        self.http = self._start(http, self.http_log)
        self.http_port = int(self.http.rsplit(":", 1)[1])

    def _start(self, argv: list[str], log: Path) -> str:
        p = subprocess.Popen(
            [sys.executable, "-m", f"dpkid.dev.{argv[0]}", *argv[1:]],
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),  # noqa: SIM115 -- handed to the child
            text=True,
        )
        self.procs.append(p)
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], SERVER_START_S)
        line = p.stdout.readline() if ready else ""
        if not line.startswith("listening "):
            raise BenchError(f"{argv[0]} did not start: see {log}")
        return line.split()[1]

    def wait_published(self) -> None:
        """Until the last name of the map is served over HTTP and resolves in DNS."""
        import dns.exception
        import dns.resolver

        last_name, entry = list(json.loads(self.map_file.read_text()).items())[-1]
        path, body = next(iter(entry["paths"].items()))
        host, port = self.dns.rsplit(":", 1)
        res = dns.resolver.Resolver(configure=False)
        res.nameservers, res.port, res.lifetime = [host], int(port), 2.0
        deadline = time.monotonic() + PUBLISH_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{self.http_port}{path}", headers={"Host": last_name}
                )
                with urllib.request.urlopen(req, timeout=2) as r:
                    served = r.read().decode().strip() == body
                if served and res.resolve(last_name, "A"):
                    return
            except (OSError, dns.exception.DNSException):
                pass
            time.sleep(0.2)
        raise BenchError(f"the challenge servers did not load their files in {PUBLISH_TIMEOUT_S} s")

    def http01_served(self) -> int:
        """Challenge responses served with 200 (the validators' http-01 checks)."""
        with open(self.http_log, errors="replace") as f:
            return sum(1 for ln in f if "/.well-known/dpki-challenge/" in ln and '" 200 ' in ln)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def run_net(
    validators: int,
    duration_s: float,
    rate_tps: float,
    accounts: int = 0,
    workdir: Path | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    mix: str = "transfers",
) -> dict[str, Any]:
    """One run at one offered rate (tx/s, or certificate applications/s with
    ``mix="certs"``); the summary of issue 12's fields."""
    if mix not in MIXES:
        raise BenchError(f"--mix must be one of {', '.join(MIXES)}")
    certs = mix == "certs"
    accounts = accounts or (CERT_ACCOUNTS if certs else DEFAULT_ACCOUNTS)
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
    servers = _ChallengeServers(base) if certs else None
    dv = (servers.dns, servers.http_port) if servers else None
    clean = False  # the node homes and logs stay unless the run went well
    net: _Net | None = None
    try:
        net = _Net(base, validators, accounts, dv)
        net.start(progress)
        pids = [p.pid for p in net.procs]
        plan = {
            "sockets": [str(h / "dpkid.sock") for h in net.homes],
            "account_keys": net.info["account_keys"],
            "chain_id": net.info["chain_id"],
            "fee": 10,
            "rate_tps": rate_tps,
            "duration_s": duration_s,
            "mix": mix,
        }
        if servers is not None:
            policy = read_genesis(base / "net" / "genesis.json").policy
            plan |= {
                "escrow": policy.fee_dv,
                "zone_file": str(servers.zone_file),
                "map_file": str(servers.map_file),
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
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(base / "loadgen.log", "ab"),  # noqa: SIM115 -- handed to the child
        )
        assert gen.stdout is not None and gen.stdin is not None
        progress("pre-signing transactions")
        if servers is not None:
            if gen.stdout.readline().strip() != b"published":
                raise BenchError(f"the load generator failed: see {base / 'loadgen.log'}")
            servers.wait_published()
            gen.stdin.write(b"go\n")
            gen.stdin.flush()
        line = gen.stdout.readline()  # "signed": the clock starts now
        if not line:
            raise BenchError(f"the load generator failed: see {base / 'loadgen.log'}")
        watcher = _Watcher(net.homes[0], watch_issuance=certs)
        cpu0 = {p: _proc_cpu_s(p) for p in pids}
        rss0 = {p: _proc_rss_mib(p) for p in pids}
        t0 = time.time()
        wt = threading.Thread(target=watcher.run, daemon=True)
        wt.start()
        probe = _StatusProbe(
            net.homes[0], pids, rss_every_s=max(RSS_SAMPLE_MIN_S, duration_s / RSS_SAMPLES)
        )
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
        names: dict[str, str] = load.get("names", {})
        drain_until = time.monotonic() + DRAIN_S
        while time.monotonic() < drain_until and not (
            all(h in watcher.committed for h in accepted)
            and all(n in watcher.issued for n in names.values())
            and all(c in watcher.signed for c in watcher.issued_height)
        ):
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
            "rss_mib_max_timeline": probe.rss_timeline,
            "verify_per_core_per_s": round(per_core),
            "verify_ceiling_tps": round(ceiling),
            "ratio_to_ceiling": round(committed_tps / ceiling, 3) if ceiling else 0.0,
            "errors": load["errors"] + ([watcher.error] if watcher.error else []),
        }
        if servers is not None:
            out |= _cert_figures(accepted, names, watcher.issued, t0, t_end, servers)
            out |= _tss_figures(watcher, t0, t_end)
        if workdir is not None or out["errors"]:
            out["workdir"] = str(base)  # kept: asked for, or needed to see what went wrong
        else:
            clean = True
        return out
    finally:
        if net is not None:
            net.stop()
        if servers is not None:
            servers.stop()
        if clean:
            shutil.rmtree(base, ignore_errors=True)


def _tss_figures(w: _Watcher, t0: float, t_end: float) -> dict[str, Any]:
    """Threshold signatures on issued certificates (SPEC §16): how many per
    second, and how many blocks and seconds after issuance."""
    blocks = [w.signed[c][0] - h for c, h in w.issued_height.items() if c in w.signed]
    secs = [w.signed[c][1] - w.issued_time[c] for c in w.issued_height if c in w.signed]
    in_window = sum(1 for h, t in w.signed.values() if t0 <= t <= t_end)
    return {
        "certs_threshold_signed": len(blocks),
        "certs_unsigned": len(w.issued_height) - len(blocks),
        "threshold_signed_per_s": round(in_window / max(t_end - t0, 1e-9), 1),
        "issue_to_signed_blocks_p50": _pct([float(b) for b in blocks], 0.50),
        "issue_to_signed_blocks_p99": _pct([float(b) for b in blocks], 0.99),
        "issue_to_signed_p50_s": round(_pct(secs, 0.50), 3),
        "issue_to_signed_p99_s": round(_pct(secs, 0.99), 3),
    }


def _cert_figures(
    accepted: dict[str, float],
    names: dict[str, str],
    issued: dict[str, float],
    t0: float,
    t_end: float,
    servers: _ChallengeServers,
) -> dict[str, Any]:
    """Issuance counted from committed receipts; latency from the application's
    submission to the block whose receipt issued it."""
    lat = [issued[names[h]] - t for h, t in accepted.items() if names.get(h) in issued]
    in_window = sum(1 for h in accepted if issued.get(names.get(h, ""), t_end + 1) <= t_end)
    return {
        "certs_applied": len(accepted),
        "certs_issued": len(lat),
        "certs_not_issued": len(accepted) - len(lat),
        "certs_issued_per_s": round(in_window / max(t_end - t0, 1e-9), 1),
        "apply_to_issued_p50_s": round(_pct(lat, 0.50), 3),
        "apply_to_issued_p99_s": round(_pct(lat, 0.99), 3),
        "http01_checks_served": servers.http01_served(),
    }


def run_sweep(
    validators: int,
    duration_s: float,
    rates: tuple[int, ...] | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    mix: str = "transfers",
) -> list[dict[str, Any]]:
    """The CometBFT QA method: a fresh network per offered rate."""
    grid = rates or (CERT_SWEEP_RATES if mix == "certs" else SWEEP_RATES)
    return [run_net(validators, duration_s, r, progress=progress, mix=mix) for r in grid]


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

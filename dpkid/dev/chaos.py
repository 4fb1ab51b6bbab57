"""`dpkid chaos run MANIFEST.toml`: fault manifests on real node processes
(issue 13), after CometBFT's end-to-end test networks and Jepsen.

A manifest names a testnet, a steady signed load and a schedule of
perturbations: kill -9 and restart, SIGSTOP/SIGCONT, link-level partitions
between per-node network namespaces, a wiped data directory, a skewed clock,
a full disk and a read-only data directory. The harness applies them to
separate ``dpkid start`` processes, lets the network stabilise, and checks
what a user relies on (protocol/CONSENSUS.md §10, docs/RELIABILITY.md):

- every node has the same block hash and app hash at every height;
- every transaction a node acknowledged as committed is in the final chain;
- every node caught up;
- nobody double-signed (no duplicate-vote evidence was committed);
- the chain made progress in every period in which a quorum was up and
  connected, and did not advance (beyond one block in flight) when none was.

With ``netns = true`` every node runs in its own network namespace, joined to
every other by its own veth pair (a full mesh), so a partition takes real
links down; a one-sided cut is a blackhole route on one side only. The
harness creates and removes the namespaces itself; it needs root. Every loop
is bounded in time, and only processes the harness started are signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any, Final

from dpkid.client.rpc import RpcClientError, call_sync
from dpkid.core import codec
from dpkid.core.crypto import SigningKey, sha256
from dpkid.core.types import Transfer, sign_tx
from dpkid.daemon.config import Home, read_key, read_settings, settings_to_toml
from dpkid.dev.procs import make_testnet

KINDS: Final = (
    "kill",
    "kill_all",
    "pause",
    "partition",
    "isolate",
    "wipe",
    "clock_skew",
    "disk_full",
    "read_only",
)
NETNS_KINDS: Final = ("partition", "isolate")
MAX_VALIDATORS: Final = 8  # veth names and the /24 per link are numbered for this many
MAX_DURATION_S: Final = 1_800
MAX_LOAD_TPS: Final = 500
MAX_ACCOUNTS: Final = 1_000
MAX_CLOCK_OFFSET_MS: Final = 86_400_000
SAMPLE_EVERY_S: Final = 0.5
MAX_SAMPLES: Final = 200_000
RPC_TIMEOUT_S: Final = 2.0
STATUS_TIMEOUT_S: Final = 1.0
RESUBMIT_AFTER_S: Final = 15.0  # a tx not committed by then is offered again (same bytes)
START_TIMEOUT_S: Final = 90.0
STOP_TIMEOUT_S: Final = 20.0
# A period shorter than this is not judged for progress: a round with a lost
# proposer takes propose + prevote + precommit timeouts (CONSENSUS.md §9).
PROGRESS_MIN_PERIOD_S: Final = 10.0
READ_ONLY_EXIT_S: Final = 60.0
FILL_CHUNK_BYTES: Final = 1 << 20
FEE: Final = 10


class ChaosError(Exception):
    """A manifest that cannot run, or a network that could not be set up."""


# ---------------------------------------------------------------- the manifest
@dataclass(frozen=True)
class Perturbation:
    kind: str
    at_s: float
    nodes: tuple[int, ...] = ()
    count: int = 0  # pick this many nodes with the seed instead of naming them
    for_s: float = 0.0
    groups: tuple[tuple[int, ...], ...] = ()  # partition: who can still reach whom
    one_sided: bool = False  # partition: groups[0] cannot send to the rest; the rest can
    offset_ms: int = 0  # clock_skew


@dataclass(frozen=True)
class Manifest:
    name: str
    path: str
    description: str = ""
    validators: int = 4
    accounts: int = 100
    load_tps: int = 40
    duration_s: float = 60.0
    stabilise_s: float = 60.0
    jitter_s: float = 0.0  # each perturbation starts up to this much later (seeded)
    netns: bool = False
    tmpfs_mib: int = 0  # data directories on a tmpfs of this size (needed by disk_full)
    # Validators run with the test-only `test_byzantine = "equivocate"`: they
    # double-vote and send conflicting proposals from the start.
    byzantine: tuple[int, ...] = ()
    expect_evidence_against: tuple[int, ...] = ()
    perturbations: tuple[Perturbation, ...] = ()


def _num(d: dict[str, Any], key: str, default: float, lo: float, hi: float, where: str) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ChaosError(f"{where}: {key} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _int(d: dict[str, Any], key: str, default: int, lo: int, hi: int, where: str) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ChaosError(f"{where}: {key} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _nodes(v: Any, n: int, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and 0 <= x < n for x in v
    ):
        raise ChaosError(f"{where}: expected a list of node indexes 0..{n - 1}, got {v!r}")
    if len(set(v)) != len(v):
        raise ChaosError(f"{where}: a node is named twice in {v!r}")
    return tuple(v)


def parse_manifest(text: str, path: str) -> Manifest:
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ChaosError(f"{path}: not valid TOML: {exc}") from None
    known = {f.name for f in dataclasses.fields(Manifest)} - {"path", "perturbations"}
    unknown = sorted(set(d) - known - {"perturbation"})
    if unknown:
        raise ChaosError(f"{path}: unknown keys {unknown}")
    n = _int(d, "validators", 4, 1, MAX_VALIDATORS, path)
    duration = _num(d, "duration_s", 60.0, 5, MAX_DURATION_S, path)
    netns = d.get("netns", False)
    if not isinstance(netns, bool):
        raise ChaosError(f"{path}: netns must be true or false")
    raw = d.get("perturbation", [])
    if not isinstance(raw, list):
        raise ChaosError(f"{path}: [[perturbation]] must be an array of tables")
    perts = []
    pkeys = {f.name for f in dataclasses.fields(Perturbation)}
    for k, p in enumerate(raw):
        where = f"{path}: perturbation {k + 1}"
        if not isinstance(p, dict):
            raise ChaosError(f"{where}: expected a table")
        bad = sorted(set(p) - pkeys)
        if bad:
            raise ChaosError(f"{where}: unknown keys {bad}")
        kind = p.get("kind")
        if kind not in KINDS:
            raise ChaosError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind in NETNS_KINDS and not netns:
            raise ChaosError(f"{where}: {kind} needs netns = true (links between namespaces)")
        at = _num(p, "at_s", 0, 0, duration, where)
        for_s = _num(p, "for_s", 0, 0, duration, where)
        if at + for_s > duration:
            raise ChaosError(f"{where}: at_s + for_s is past duration_s ({duration})")
        nodes = _nodes(p.get("nodes", []), n, where)
        count = _int(p, "count", 0, 0, n, where)
        groups = tuple(_nodes(g, n, where) for g in p.get("groups", []))
        if kind == "partition":
            flat = [x for g in groups for x in g]
            if len(groups) < 2 or len(set(flat)) != len(flat):
                raise ChaosError(f"{where}: partition needs two or more disjoint groups")
        elif kind != "kill_all" and not nodes and not count:
            raise ChaosError(f"{where}: {kind} needs nodes = [...] or count = N")
        one_sided = p.get("one_sided", False)
        if not isinstance(one_sided, bool):
            raise ChaosError(f"{where}: one_sided must be true or false")
        offset = _int(p, "offset_ms", 0, -MAX_CLOCK_OFFSET_MS, MAX_CLOCK_OFFSET_MS, where)
        perts.append(Perturbation(kind, at, nodes, count, for_s, groups, one_sided, offset))
    tmpfs = _int(d, "tmpfs_mib", 0, 0, 4096, path)
    if any(p.kind == "disk_full" for p in perts) and not tmpfs:
        raise ChaosError(f"{path}: disk_full needs tmpfs_mib (the data directory's size)")
    expect = _nodes(d.get("expect_evidence_against", []), n, path)
    byz = _nodes(d.get("byzantine", []), n, path)
    if 3 * len(byz) >= n:
        raise ChaosError(f"{path}: byzantine validators must hold less than 1/3 of the power")
    name = d.get("name", Path(path).stem)
    desc = d.get("description", "")
    if not isinstance(name, str) or not isinstance(desc, str):
        raise ChaosError(f"{path}: name and description must be strings")
    return Manifest(
        name=name,
        path=path,
        description=desc,
        validators=n,
        accounts=_int(d, "accounts", 100, 1, MAX_ACCOUNTS, path),
        load_tps=_int(d, "load_tps", 40, 1, MAX_LOAD_TPS, path),
        duration_s=duration,
        stabilise_s=_num(d, "stabilise_s", 60.0, 5, 600, path),
        jitter_s=_num(d, "jitter_s", 0.0, 0, 60, path),
        netns=netns,
        tmpfs_mib=tmpfs,
        byzantine=byz,
        expect_evidence_against=expect,
        perturbations=tuple(sorted(perts, key=lambda p: p.at_s)),
    )


def load_manifest(path: str | Path) -> Manifest:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ChaosError(f"cannot read manifest {path}: {exc}") from None
    return parse_manifest(text, str(path))


def repro_command(path: str, seed: int) -> str:
    return f"dpkid chaos run {shlex.quote(path)} --seed {seed}"


# ---------------------------------------------------------------- namespaces
def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise ChaosError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class _Mesh:
    """One network namespace per node, and a veth pair per pair of nodes, each
    its own /24 (10.<tag>.<link>.1 and .2). Taking a pair's link down cuts
    exactly that pair; nothing in the host's namespace changes."""

    def __init__(self, n: int, tag: int) -> None:
        self.n = n
        self.tag = tag
        self.names = [f"dpkc{tag}n{i}" for i in range(n)]
        self.created: list[str] = []
        self.links: dict[tuple[int, int], int] = {}
        k = 0
        for i in range(n):
            for j in range(i + 1, n):
                self.links[(i, j)] = k
                k += 1

    def addr(self, of: int, peer: int) -> str:
        """The address ``of`` has on its link to ``peer``."""
        k = self.links[(min(of, peer), max(of, peer))]
        return f"10.{self.tag % 250 + 1}.{k}.{1 if of < peer else 2}"

    def setup(self) -> None:
        for name in self.names:
            _ip("netns", "add", name)
            self.created.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        for (i, j), k in self.links.items():
            a, b = f"dpk{self.tag}a{k}", f"dpk{self.tag}b{k}"
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            _ip("link", "set", a, "netns", self.names[i], "name", f"l{j}")
            _ip("link", "set", b, "netns", self.names[j], "name", f"l{i}")
            for me, other in ((i, j), (j, i)):
                _ip(
                    "-n",
                    self.names[me],
                    "addr",
                    "add",
                    f"{self.addr(me, other)}/24",
                    "dev",
                    f"l{other}",
                )
                _ip("-n", self.names[me], "link", "set", f"l{other}", "up")

    def set_link(self, i: int, j: int, up: bool) -> None:
        state = "up" if up else "down"
        _ip("-n", self.names[i], "link", "set", f"l{j}", state)
        _ip("-n", self.names[j], "link", "set", f"l{i}", state)

    def blackhole(self, src: int, dst: int, on: bool) -> None:
        """Packets from ``src`` to ``dst`` vanish; the other direction still flows."""
        _ip(
            "-n",
            self.names[src],
            "route",
            "add" if on else "del",
            "blackhole",
            f"{self.addr(dst, src)}/32",
        )

    def teardown(self) -> None:
        for name in reversed(self.created):
            with contextlib.suppress(ChaosError):
                _ip("netns", "del", name)  # the veths inside go with it
        self.created.clear()


# ---------------------------------------------------------------- the network
@dataclass
class _Node:
    home: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    tmpfs: bool = False
    ro_bind: bool = False
    filler: Path | None = None
    stopped_by_us: bool = False  # a harness stop, not an exit to report


class _Net:
    def __init__(self, m: Manifest, workdir: Path, tag: int) -> None:
        self.m = m
        self.root = workdir
        self.info = make_testnet(workdir / "net", m.validators, "--accounts", str(m.accounts))
        self.nodes = [_Node(Path(h)) for h in self.info["nodes"]]
        self.mesh: _Mesh | None = _Mesh(m.validators, tag) if m.netns else None
        self.cut: set[tuple[int, int]] = set()  # pairs that cannot talk (either way)
        self.lock = threading.Lock()

    def setup(self) -> None:
        if self.mesh is not None:
            self.mesh.setup()
            self._rewire()
        for i in self.m.byzantine:
            self.set_config(i, test_byzantine="equivocate")
        if self.m.tmpfs_mib:
            for nd in self.nodes:
                d = Home(nd.home).data_dir
                d.mkdir(parents=True, exist_ok=True)
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", f"size={self.m.tmpfs_mib}M", "tmpfs", str(d)],
                    check=True,
                    capture_output=True,
                    timeout=30,
                )
                nd.tmpfs = True

    def _rewire(self) -> None:
        """Each node listens on all of its links and dials each peer on theirs."""
        assert self.mesh is not None
        for i, nd in enumerate(self.nodes):
            home = Home(nd.home)
            s = read_settings(home.config_file)
            peers = []
            for j, addr in enumerate(self.info["listen"]):
                if j == i:
                    continue
                port_and_id = addr.split("/tcp/", 1)[1]
                peers.append(f"/ip4/{self.mesh.addr(j, i)}/tcp/{port_and_id}")
            s = dataclasses.replace(s, listen_host="0.0.0.0", peers=peers)
            home.config_file.write_text(settings_to_toml(s))

    def set_config(self, i: int, **changes: Any) -> None:
        home = Home(self.nodes[i].home)
        s = dataclasses.replace(read_settings(home.config_file), **changes)
        home.config_file.write_text(settings_to_toml(s))

    # processes
    def start(self, i: int) -> None:
        nd = self.nodes[i]
        argv = [sys.executable, "-m", "dpkid", "start", "--home", str(nd.home)]
        argv += ["--log-format", "json"]
        if self.mesh is not None:
            argv = ["ip", "netns", "exec", self.mesh.names[i], *argv]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.root / f"node{i}.log", "ab") as log:
            nd.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        nd.paused = False
        nd.stopped_by_us = False

    def running(self, i: int) -> bool:
        p = self.nodes[i].proc
        return p is not None and p.poll() is None

    def up(self, i: int) -> bool:
        return self.running(i) and not self.nodes[i].paused

    def signal(self, i: int, sig: signal.Signals) -> None:
        p = self.nodes[i].proc
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            if sig == signal.SIGSTOP:
                self.nodes[i].paused = True
            elif sig == signal.SIGCONT:
                self.nodes[i].paused = False

    def kill(self, i: int) -> None:
        p = self.nodes[i].proc
        if p is None:
            return
        self.nodes[i].stopped_by_us = True
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)  # a paused process must be able to die
            p.kill()
            p.wait(timeout=STOP_TIMEOUT_S)
        self.nodes[i].paused = False

    def stop(self, i: int) -> None:
        p = self.nodes[i].proc
        if p is None or p.poll() is not None:
            return
        self.nodes[i].stopped_by_us = True
        p.send_signal(signal.SIGCONT)
        p.terminate()
        try:
            p.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill(i)

    def quorum(self) -> bool:
        """Is there a set of up, mutually connected validators holding more than
        2/3 of the power? testnet validators have equal power (10 each)."""
        n = len(self.nodes)
        # A Byzantine validator is never counted on: it is jailed (power 0) once
        # its evidence commits, and until then the honest nodes must not need it.
        up = [i for i in range(n) if self.up(i) and i not in self.m.byzantine]
        best = 0
        seen: set[int] = set()
        for s in up:
            if s in seen:
                continue
            comp, todo = {s}, [s]
            while todo:
                a = todo.pop()
                for b in up:
                    if b not in comp and (min(a, b), max(a, b)) not in self.cut:
                        comp.add(b)
                        todo.append(b)
            seen |= comp
            best = max(best, len(comp))
        return 3 * best > 2 * n

    def close(self) -> None:
        for i in range(len(self.nodes)):
            with contextlib.suppress(Exception):
                self.kill(i)
        for nd in self.nodes:
            d = Home(nd.home).data_dir
            if nd.ro_bind:
                subprocess.run(["umount", str(d)], capture_output=True, timeout=30)
            if nd.tmpfs:
                subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=30)
        if self.mesh is not None:
            self.mesh.teardown()


# ---------------------------------------------------------------- steady load
@dataclass
class _Account:
    key: SigningKey
    to: bytes
    nonce: int = 0
    out_raw: bytes = b""
    out_hash: str = ""
    out_at: float = 0.0


@dataclass
class _Load:
    """Signed transfers, one outstanding per account, each account pinned to
    one node, as a careful client sends them: a transaction is offered again
    (the same bytes) when it has not committed after RESUBMIT_AFTER_S, and the
    next is signed only once the node says the last one committed."""

    net: _Net
    rate_tps: int
    rng: Random
    stop: threading.Event = field(default_factory=threading.Event)
    submitted: int = 0
    accepted: int = 0
    resubmitted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    acked: dict[str, int] = field(default_factory=dict)  # hash -> height a node said
    accounts: list[list[_Account]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    settling: threading.Event = field(default_factory=threading.Event)  # load window over

    def start(self) -> None:
        keys = [read_key(Path(p)) for p in self.net.info["account_keys"]]
        order = list(range(len(keys)))
        self.rng.shuffle(order)
        n = len(self.net.nodes)
        self.accounts = [[] for _ in range(n)]
        for pos, k in enumerate(order):
            acct = _Account(keys[k], keys[(k + 1) % len(keys)].address)
            self.accounts[pos % n].append(acct)
        for i in range(n):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def _call(self, i: int, method: str, params: Any) -> Any:
        return call_sync(self.net.nodes[i].home, method, params, timeout_s=RPC_TIMEOUT_S)

    def _visit(self, i: int, a: _Account, chain_id: str, settle: bool) -> None:
        now = time.monotonic()
        if a.out_hash:
            r = self._call(i, "tx_get", {"hash": a.out_hash})
            if r.get("committed"):
                with self.lock:
                    self.acked[a.out_hash] = int(r["height"])
                a.nonce += 1
                a.out_hash, a.out_raw = "", b""
            elif now - a.out_at > RESUBMIT_AFTER_S:
                a.out_at = now
                with self.lock:
                    self.resubmitted += 1
                with contextlib.suppress(RpcClientError):  # e.g. already in the pool
                    self._call(i, "tx_submit", {"tx": a.out_raw.hex()})
                return
            else:
                return
        if settle:
            return  # after the load window only outstanding transactions are followed
        raw = codec.encode(sign_tx(a.key, chain_id, a.nonce, FEE, Transfer(a.to, 1)))
        with self.lock:
            self.submitted += 1
        try:
            self._call(i, "tx_submit", {"tx": raw.hex()})
        except RpcClientError as exc:
            code = exc.args[0].get("code") if exc.args and isinstance(exc.args[0], dict) else "?"
            with self.lock:
                self.refused[str(code)] += 1
            return
        with self.lock:
            self.accepted += 1
        a.out_raw, a.out_hash, a.out_at = raw, sha256(raw).hex(), now

    def _run(self, i: int) -> None:
        chain_id = self.net.info["chain_id"]
        mine = self.accounts[i]
        if not mine:
            return
        interval_s = len(self.net.nodes) / self.rate_tps
        deadline = time.monotonic() + self.net.m.duration_s + self.net.m.stabilise_s + 60
        k = 0
        while time.monotonic() < deadline and not self.stop.is_set():
            if self.net.up(i):
                # The node is down, restarting or overloaded: the next visit retries.
                with contextlib.suppress(OSError, ValueError, RpcClientError):
                    self._visit(i, mine[k % len(mine)], chain_id, self.settling.is_set())
                k += 1
            self.stop.wait(interval_s)

    def outstanding(self) -> int:
        return sum(1 for accts in self.accounts for a in accts if a.out_hash)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=RPC_TIMEOUT_S * 4)


# ---------------------------------------------------------------- heights
@dataclass
class _Sampler:
    """Every node's committed height, every SAMPLE_EVERY_S, from its own thread
    (a paused node only delays its own samples)."""

    net: _Net
    t0: float
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, node, height)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for i in range(len(self.net.nodes)):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, i: int) -> None:
        home = self.net.nodes[i].home
        while not self.stop.is_set():
            if self.net.up(i):
                try:
                    h = int(call_sync(home, "status", timeout_s=STATUS_TIMEOUT_S)["height"])
                    with self.lock:
                        if len(self.samples) < MAX_SAMPLES:
                            self.samples.append((time.monotonic() - self.t0, i, h))
                except (OSError, ValueError, KeyError, RpcClientError):
                    pass
            self.stop.wait(SAMPLE_EVERY_S)

    def latest(self, i: int) -> int:
        with self.lock:
            for _, j, h in reversed(self.samples):
                if j == i:
                    return h
        return 0

    def max_height(self, t_from: float, t_to: float) -> int:
        with self.lock:
            return max((h for t, _, h in self.samples if t_from <= t <= t_to), default=0)

    def max_before(self, t: float) -> int:
        with self.lock:
            return max((h for ts, _, h in self.samples if ts <= t), default=0)

    def all_above(self, height: int, after: float) -> float | None:
        """The first time by which every node had a sample above ``height``."""
        firsts: dict[int, float] = {}
        with self.lock:
            for t, i, h in self.samples:
                if t >= after and h > height and i not in firsts:
                    firsts[i] = t
        if len(firsts) < len(self.net.nodes):
            return None
        return max(firsts.values())

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=STATUS_TIMEOUT_S * 4)


# ---------------------------------------------------------------- the run
@dataclass
class _Applied:
    kind: str
    nodes: tuple[int, ...]
    at_s: float
    healed_s: float = 0.0
    recovered_s: float | None = None
    note: str = ""


def _fill(path: Path, limit_bytes: int) -> int:
    """Write zeros until the file system is full (bounded by its size)."""
    written = 0
    chunk = bytes(FILL_CHUNK_BYTES)
    with open(path, "wb") as f:
        while written <= limit_bytes:
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
            written += len(chunk)
    return written


class _Runner:
    def __init__(self, m: Manifest, seed: int, workdir: Path, progress: Any) -> None:
        self.m = m
        self.seed = seed
        self.rng = Random(seed)
        self.progress = progress
        self.net = _Net(m, workdir, tag=os.getpid() % 1000)
        self.t0 = time.monotonic()
        self.sampler = _Sampler(self.net, self.t0)
        self.load = _Load(self.net, m.load_tps, self.rng)
        self.applied: list[_Applied] = []
        self.changes: list[tuple[float, bool]] = []  # (t, quorum) whenever it may change
        self.failures: list[str] = []
        self.exited: set[int] = set()  # stopped by themselves (a full disk)
        self.exits: list[dict[str, Any]] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _mark(self) -> None:
        self.changes.append((self.now(), self.net.quorum()))

    def _pick(self, p: Perturbation) -> tuple[int, ...]:
        if p.kind == "kill_all":
            return tuple(range(len(self.net.nodes)))
        if p.kind == "partition":
            return tuple(sorted(x for g in p.groups for x in g))
        if p.nodes:
            return p.nodes
        return tuple(sorted(self.rng.sample(range(len(self.net.nodes)), p.count)))

    def _wait_started(self, nodes: list[int], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(nodes)
        while pending and time.monotonic() < deadline:
            for i in sorted(pending):
                with contextlib.suppress(OSError, ValueError, RpcClientError):
                    call_sync(self.net.nodes[i].home, "status", timeout_s=STATUS_TIMEOUT_S)
                    pending.discard(i)
            time.sleep(0.2)
        if pending:
            raise ChaosError(f"nodes {sorted(pending)} did not answer within {timeout_s:.0f} s")

    # perturbations: apply, then (after for_s) undo
    def _apply(self, p: Perturbation, nodes: tuple[int, ...]) -> str:
        net = self.net
        if p.kind in ("kill", "kill_all", "wipe"):
            for i in nodes:
                net.kill(i)
            if p.kind == "wipe":
                for i in nodes:
                    d = Home(net.nodes[i].home).data_dir
                    for child in d.iterdir():
                        if child.is_dir():
                            shutil.rmtree(child)
                        else:
                            child.unlink()
            return "killed (SIGKILL)" + ("; data directory emptied" if p.kind == "wipe" else "")
        if p.kind == "pause":
            for i in nodes:
                net.signal(i, signal.SIGSTOP)
            return "SIGSTOP"
        if p.kind in ("partition", "isolate"):
            groups = self._set_cut(p, nodes, cut=True)
            how = "blackhole routes on one side" if p.one_sided else "links down"
            return f"{how} between {[list(g) for g in groups]}"
        if p.kind == "clock_skew":
            for i in nodes:
                net.stop(i)
                net.set_config(i, test_clock_offset_ms=p.offset_ms)
                net.start(i)
            return f"restarted with test_clock_offset_ms = {p.offset_ms}"
        if p.kind == "disk_full":
            for i in nodes:
                nd = net.nodes[i]
                nd.filler = Home(nd.home).data_dir / "chaos-filler"
                _fill(nd.filler, self.m.tmpfs_mib << 20)
            return f"data directory's {self.m.tmpfs_mib} MiB tmpfs filled"
        if p.kind == "read_only":
            notes = []
            for i in nodes:
                nd = net.nodes[i]
                net.stop(i)
                ddir = str(Home(nd.home).data_dir)
                subprocess.run(["mount", "--bind", ddir, ddir], check=True, timeout=30)
                nd.ro_bind = True
                subprocess.run(["mount", "-o", "remount,bind,ro", ddir], check=True, timeout=30)
                net.start(i)
                notes.append(self._expect_refusal(i))
            return "; ".join(notes)
        raise ChaosError(f"unknown perturbation {p.kind}")

    def _expect_refusal(self, i: int) -> str:
        """A node started on a read-only data directory must stop with a clear
        message, not run on without storing."""
        p = self.net.nodes[i].proc
        assert p is not None
        try:
            rc = p.wait(timeout=READ_ONLY_EXIT_S)
        except subprocess.TimeoutExpired:
            self.failures.append(f"node{i} kept running on a read-only data directory")
            return f"node{i} did not stop"
        last = self._last_line(i)
        if "read-only" not in last:
            self.failures.append(f"node{i} on a read-only data directory exited {rc}: {last!r}")
        return f"node{i} refused to start (exit {rc}): {last[:200]}"

    def _last_line(self, i: int) -> str:
        p = self.net.root / f"node{i}.log"
        lines = p.read_text(errors="replace").strip().splitlines() if p.exists() else []
        return lines[-1] if lines else ""

    def _set_cut(
        self, p: Perturbation, nodes: tuple[int, ...], cut: bool
    ) -> tuple[tuple[int, ...], ...]:
        """Cut (or heal) every link between the perturbation's groups; the groups."""
        net = self.net
        assert net.mesh is not None
        groups = (
            p.groups
            if p.kind == "partition"
            else (nodes, tuple(i for i in range(len(net.nodes)) if i not in nodes))
        )
        for ga, gb in self._cross(groups):
            if p.one_sided:
                net.mesh.blackhole(ga, gb, cut)
            else:
                net.mesh.set_link(ga, gb, not cut)
            pair = (min(ga, gb), max(ga, gb))
            if cut:
                net.cut.add(pair)
            else:
                net.cut.discard(pair)
        return groups

    @staticmethod
    def _cross(groups: tuple[tuple[int, ...], ...]) -> list[tuple[int, int]]:
        """Pairs (a, b) with a in an earlier group than b."""
        return [
            (a, b)
            for gi, ga in enumerate(groups)
            for gb in groups[gi + 1 :]
            for a in ga
            for b in gb
        ]

    def _undo(self, p: Perturbation, nodes: tuple[int, ...]) -> None:
        net = self.net
        if p.kind in ("kill", "kill_all", "wipe"):
            for i in nodes:
                net.start(i)
        elif p.kind == "pause":
            for i in nodes:
                net.signal(i, signal.SIGCONT)
        elif p.kind in ("partition", "isolate"):
            self._set_cut(p, nodes, cut=False)
        elif p.kind == "clock_skew":
            for i in nodes:
                net.stop(i)
                net.set_config(i, test_clock_offset_ms=0)
                net.start(i)
        elif p.kind == "disk_full":
            for i in nodes:
                nd = net.nodes[i]
                if nd.filler is not None:
                    nd.filler.unlink(missing_ok=True)
                if not net.running(i):
                    net.start(i)  # it stopped on the full disk, as it should
        elif p.kind == "read_only":
            for i in nodes:
                nd = net.nodes[i]
                if net.running(i):
                    net.stop(i)
                subprocess.run(["umount", str(Home(nd.home).data_dir)], check=True, timeout=30)
                nd.ro_bind = False
                net.start(i)

    def run(self) -> dict[str, Any]:
        m, net = self.m, self.net
        try:
            net.setup()
            self.progress(f"starting {m.validators} nodes" + (" in namespaces" if m.netns else ""))
            for i in range(m.validators):
                net.start(i)
            self._wait_started(list(range(m.validators)), START_TIMEOUT_S)
            self.t0 = time.monotonic()
            self.sampler.t0 = self.t0
            self.sampler.start()
            self._wait_height(2, START_TIMEOUT_S)
            self.load.start()
            self._mark()
            schedule: list[tuple[float, int, bool]] = []  # (t, index, is_undo)
            picked: dict[int, tuple[int, ...]] = {}
            for k, p in enumerate(m.perturbations):
                start = p.at_s + self.rng.uniform(0, m.jitter_s)
                picked[k] = self._pick(p)
                schedule.append((start, k, False))
                schedule.append((start + max(p.for_s, 1.0), k, True))
            schedule.sort()
            records: dict[int, _Applied] = {}
            for t, k, is_undo in schedule:
                self._sleep_until(t)
                p = m.perturbations[k]
                if not is_undo:
                    self.progress(f"{self.now():6.1f}s {p.kind} {list(picked[k])}")
                    note = self._apply(p, picked[k])
                    records[k] = _Applied(p.kind, picked[k], round(self.now(), 1), note=note)
                    self.applied.append(records[k])
                else:
                    self._undo(p, picked[k])
                    records[k].healed_s = round(self.now(), 1)
                    self.progress(f"{self.now():6.1f}s healed {p.kind} {list(picked[k])}")
                self._mark()
            self._sleep_until(m.duration_s)
            self.load.settling.set()
            self._mark()
            self.progress(f"{self.now():6.1f}s load stopped; stabilising")
            return self._check()
        finally:
            self.load.close()
            self.sampler.close()
            net.close()

    def _sleep_until(self, t: float) -> None:
        while self.now() < t:
            time.sleep(min(0.1, t - self.now()))
            for i, nd in enumerate(self.net.nodes):
                gone = nd.proc is not None and nd.proc.poll() is not None and not nd.stopped_by_us
                if gone and i not in self.exited:
                    self.exited.add(i)
                    self._mark()  # it stopped by itself (a full disk): quorum may change
                    self.exits.append(
                        {
                            "t_s": round(self.now(), 1),
                            "node": i,
                            "exit": nd.proc.returncode if nd.proc is not None else None,
                            "last_line": self._last_line(i)[:300],
                        }
                    )
                elif not gone:
                    self.exited.discard(i)

    def _wait_height(self, height: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.sampler.latest(i) >= height for i in range(len(self.net.nodes))):
                return
            time.sleep(0.2)
        raise ChaosError(f"the network did not reach height {height} in {timeout_s:.0f} s")

    # ------------------------------------------------------------ checks
    def _check(self) -> dict[str, Any]:
        m, net = self.m, self.net
        n = len(net.nodes)
        t_stab = self.now()
        target = self.sampler.max_before(t_stab) + 2
        deadline = time.monotonic() + m.stabilise_s
        while time.monotonic() < deadline:
            if (
                all(self.sampler.latest(i) >= target for i in range(n))
                and not self.load.outstanding()
            ):
                break
            time.sleep(0.25)
        heights = [self.sampler.latest(i) for i in range(n)]
        for i, h in enumerate(heights):
            if h < target:
                self.failures.append(f"node{i} did not catch up: height {h}, network {target}")
        if self.load.outstanding():
            self.failures.append(
                f"{self.load.outstanding()} accepted transactions still not committed "
                f"{m.stabilise_s:.0f} s after the load stopped"
            )
        self.load.close()
        for a in self.applied:
            since = a.healed_s or a.at_s
            h_then = self.sampler.max_before(since)
            t_rec = self.sampler.all_above(h_then, since)
            a.recovered_s = None if t_rec is None else round(t_rec - since, 1)
            if t_rec is None:
                self.failures.append(f"{a.kind} {list(a.nodes)} at {a.at_s}s: never recovered")
        top = min(heights)
        chains = self._chains(top)
        fork_at = next(
            (h for h in range(1, top + 1) if len({c[h - 1][:2] for c in chains}) > 1), None
        )
        if fork_at is not None:
            seen = {f"node{i}": chains[i][fork_at - 1][:2] for i in range(n)}
            self.failures.append(f"the nodes differ at height {fork_at}: {seen}")
        committed: set[str] = set()
        evidence: list[dict[str, Any]] = []
        last_time_ms = 0
        for h, (_, _, txs, ev, time_ms) in enumerate(chains[0], start=1):
            committed.update(txs)
            evidence.extend({"height": h, "evidence": e} for e in ev)
            if time_ms < last_time_ms:
                self.failures.append(f"block time went back at height {h}")
            last_time_ms = time_ms
        lost = sorted(h for h in self.load.acked if h not in committed)
        if lost:
            self.failures.append(f"{len(lost)} transactions acknowledged as committed are gone")
        if evidence and not m.expect_evidence_against:
            self.failures.append(f"double-signing evidence was committed: {evidence[:2]}")
        if m.expect_evidence_against and not evidence:
            self.failures.append("the Byzantine validator's evidence was never committed")
        punished = self._punished(m.expect_evidence_against) if evidence else []
        offenders = {
            read_key(Home(net.nodes[i].home).key_file).address.hex(): i
            for i in m.expect_evidence_against
        }
        for e in evidence:
            ev = e["evidence"]
            who = ev.get("vote_a", {}).get("validator") if isinstance(ev, dict) else None
            if offenders and who not in offenders:
                self.failures.append(
                    f"evidence at height {e['height']} names {who}, not the offender"
                )
        periods = self._judge_periods()
        return {
            "manifest": m.name,
            "path": m.path,
            "seed": self.seed,
            "validators": n,
            "netns": m.netns,
            "namespaces": list(net.mesh.names) if net.mesh is not None else [],
            "perturbations": [dataclasses.asdict(a) for a in self.applied],
            "periods": periods,
            "txs_submitted": self.load.submitted,
            "txs_accepted": self.load.accepted,
            "txs_resubmitted": self.load.resubmitted,
            "txs_refused": dict(self.load.refused),
            "txs_acked_committed": len(self.load.acked),
            "txs_in_chain": len(committed),
            "txs_lost": len(lost),
            "final_heights": heights,
            "checked_heights": top,
            "evidence": len(evidence),
            "punished": punished,
            "exits": self.exits,
            "ok": not self.failures,
            "failures": self.failures,
        }

    def _punished(self, offenders: tuple[int, ...]) -> list[int]:
        """Offenders that no longer hold voting power (CONSENSUS.md §7.4: jailed)."""
        vals = call_sync(self.net.nodes[0].home, "validators_list", timeout_s=10)["validators"]
        out = []
        for i in offenders:
            pub = read_key(Home(self.net.nodes[i].home).key_file).public_key.hex()
            power = sum(int(v.get("power", 0)) for v in vals if pub in json.dumps(v))
            if power == 0:
                out.append(i)
            else:
                self.failures.append(f"node{i} double-signed and still holds power {power}")
        return out

    def _chains(self, top: int) -> list[list[tuple[str, str, list[str], list[Any], int]]]:
        out = []
        for nd in self.net.nodes:
            chain = []
            for h in range(1, top + 1):
                b = call_sync(nd.home, "block_get", {"height": h}, timeout_s=10)
                txs = [sha256(bytes.fromhex(t)).hex() for t in b["txs"]]
                chain.append(
                    (
                        b["hash"],
                        b["header"]["app_hash"],
                        txs,
                        list(b.get("evidence") or []),
                        int(b["header"]["time_ms"]),
                    )
                )
            out.append(chain)
        return out

    def _judge_periods(self) -> list[dict[str, Any]]:
        """Between two changes the quorum is fixed: with one the chain must have
        grown, without one it must not have (one block already in flight aside)."""
        out = []
        marks = [*self.changes, (self.now(), self.changes[-1][1] if self.changes else True)]
        for (ta, q), (tb, _) in itertools.pairwise(marks):
            if tb - ta < PROGRESS_MIN_PERIOD_S:
                continue
            h0 = self.sampler.max_before(ta)
            h1 = self.sampler.max_height(ta, tb)
            grew = h1 - h0
            ok = grew >= 1 if q else grew <= 1
            out.append(
                {
                    "from_s": round(ta, 1),
                    "to_s": round(tb, 1),
                    "quorum": q,
                    "blocks": max(grew, 0),
                    "ok": ok,
                }
            )
            if not ok:
                what = "made no progress with a quorum up" if q else "advanced without a quorum"
                self.failures.append(f"{ta:.1f}-{tb:.1f}s: the chain {what} ({grew} blocks)")
        return out


def run_manifest(
    m: Manifest, seed: int, workdir: Path | None = None, progress: Any = None
) -> dict[str, Any]:
    if (m.netns or m.tmpfs_mib or any(p.kind == "read_only" for p in m.perturbations)) and (
        os.geteuid() != 0
    ):
        raise ChaosError(f"{m.path} needs root (network namespaces, tmpfs or bind mounts)")
    keep = workdir is not None
    base = workdir or Path(tempfile.mkdtemp(prefix="dpkid-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    r = _Runner(m, seed, base, progress or (lambda _msg: None))
    try:
        out = r.run()
    except ChaosError as exc:
        out = {"manifest": m.name, "seed": seed, "ok": False, "failures": [str(exc)]}
    if not out["ok"] or keep:
        out["workdir"] = str(base)
    else:
        shutil.rmtree(base, ignore_errors=True)
    if not out["ok"]:
        out["reproduce"] = repro_command(m.path, seed)
    return out


def summary_text(r: dict[str, Any]) -> str:
    lines = [f"chaos {r['manifest']} (seed {r['seed']}): {'ok' if r['ok'] else 'FAILED'}"]
    for a in r.get("perturbations", []):
        rec = "never" if a["recovered_s"] is None else f"{a['recovered_s']} s"
        lines.append(
            f"  {a['at_s']:>6}s {a['kind']:<10} {a['nodes']}  healed {a['healed_s']}s"
            f"  recovered in {rec}  {a['note']}"
        )
    if "txs_submitted" in r:
        lines.append(
            f"  txs: submitted {r['txs_submitted']}, accepted {r['txs_accepted']}, acknowledged "
            f"committed {r['txs_acked_committed']}, lost {r['txs_lost']}; "
            f"{r['checked_heights']} heights identical on {r['validators']} nodes"
        )
    for p in r.get("periods", []):
        lines.append(
            f"  {p['from_s']:>6}-{p['to_s']}s quorum={p['quorum']} blocks={p['blocks']}"
            f" {'ok' if p['ok'] else 'WRONG'}"
        )
    for e in r.get("exits", []):
        lines.append(f"  {e['t_s']:>6}s node{e['node']} exited {e['exit']}: {e['last_line']}")
    for f in r.get("failures", []):
        lines.append(f"  FAIL: {f}")
    if "reproduce" in r:
        lines.append(f"  reproduce: {r['reproduce']}")
    return "\n".join(lines)


def main_run(path: str, seed: int | None, as_json: bool, workdir: str | None) -> int:
    m = load_manifest(path)
    s = seed if seed is not None else int.from_bytes(os.urandom(4), "big") % 1_000_000
    progress = None if as_json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    r = run_manifest(m, s, Path(workdir) if workdir else None, progress)
    if as_json:
        print(json.dumps(r, indent=2, sort_keys=True))
    else:
        print(summary_text(r))
    return 0 if r["ok"] else 1

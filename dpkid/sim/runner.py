"""Deterministic discrete-event simulation of a dpkid network.

One seed drives everything: a ``random.Random(seed)`` makes every latency,
drop, workload and Byzantine choice, and a ``heapq`` of (time, seq) events
orders the run. No trio, no threads and no wall clock: the caller may inject
clocks that only measure the run for the report (``wall_s``, ``cpu_s``).
Every node is the same NodeCore the daemon runs.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random
from typing import Any, Final, Literal

from dpkid.core import codec
from dpkid.core.consensus.engine import LockRecord, SignState, TimeoutConfig
from dpkid.core.consensus.messages import (
    Block,
    Commit,
)
from dpkid.core.crypto import SignatureCache, SigningKey, sha256, verify_ed25519
from dpkid.core.keys import spki_der_of
from dpkid.core.node import effects as fx
from dpkid.core.node.byzantine import conflicting_msg
from dpkid.core.node.core import NodeConfig, NodeCore
from dpkid.core.node.wire import (
    SYNC_REPLY_MAX_BYTES,
    EvidenceMsg,
    ProposalMsg,
    StatusMsg,
    TxBatch,
    VoteMsg,
    WireMsg,
)
from dpkid.core.state.codes import Code
from dpkid.core.state.machine import State, genesis_state
from dpkid.core.types import (
    Attestation,
    CertApply,
    CertRenew,
    DvAttest,
    Endorse,
    EndorseWithdraw,
    Genesis,
    GenesisAccount,
    GenesisEndorser,
    GenesisValidator,
    OrgIdentity,
    Policy,
    Revoke,
    Transfer,
    TxBody,
    sign_tx,
)
from dpkid.dev.devchain import GENESIS_TIME_MS
from dpkid.dev.labelkeys import subject_key
from dpkid.sim.settings import Crash, Scenario, Starvation

CONSENSUS_MSGS = (ProposalMsg, VoteMsg, EvidenceMsg, TxBatch)


def _no_clock() -> float:
    return 0.0


@dataclass
class SimNode:
    idx: int
    name: str
    key: SigningKey | None
    role: str  # "validator" | "twin" | "full"
    honest: bool
    core: NodeCore | None = None
    alive: bool = True
    epoch: int = 0
    # The node's store: per block, (block, commit), the records it wrote and the
    # proposer priorities after it. A restart resumes from these like the
    # daemon resumes from SQLite (NodeCore.resume).
    disk_blocks: list[tuple[Block, Commit]] = field(default_factory=list)
    disk_writes: list[list[tuple[bytes, Any]]] = field(default_factory=list)
    disk_priorities: list[list[tuple[bytes, int]]] = field(default_factory=list)
    disk_app_hashes: list[bytes] = field(default_factory=list)
    disk_sign_state: SignState = field(default_factory=SignState)
    disk_lock: LockRecord | None = None
    disk_tss: bytes | None = None
    starts: int = 0
    byz: set[str] = field(default_factory=set)
    skew_ms: int = 0
    starved_until_ms: int = 0


@dataclass
class Agent:
    """A key that submits transactions (account, endorser or validator role)."""

    key: SigningKey
    next_nonce: int = 0
    last_progress_ms: int = 0
    last_seen_nonce: int = 0


@dataclass
class Violation:
    kind: str  # "safety" | "policy" | "validity" | "liveness"
    detail: str


class Simulation:
    def __init__(
        self,
        sc: Scenario,
        command_hint: str = "",
        wall_clock: Callable[[], float] = _no_clock,
        cpu_clock: Callable[[], float] = _no_clock,
    ) -> None:
        # Clocks only measure the run for the report (wall_s, cpu_s); they never
        # influence it. The CLI injects real ones; by default both read 0.
        self.wall_clock = wall_clock
        self.cpu_clock = cpu_clock
        self.sc = sc
        self.command_hint = command_hint
        self.rng = Random(sc.seed)
        self.now_ms = 0
        self.heap: list[tuple[int, int, str, Any]] = []
        self.seq = 0
        self.violations: list[Violation] = []
        self.events_processed = 0
        self.finished = False  # every honest live node reached the target (see _done)
        self._cpu0 = 0.0
        self._build()

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        sc = self.sc
        self.val_keys = [SigningKey.from_label(f"sim-validator-{i}") for i in range(sc.validators)]
        self.end_keys = [SigningKey.from_label(f"sim-endorser-{i}") for i in range(sc.endorsers)]
        self.acct_keys = [
            SigningKey.from_label(f"sim-account-{i}") for i in range(sc.workload.accounts)
        ]
        powers = sc.powers or [10] * sc.validators
        policy = Policy(k_ov=sc.k_ov, k_ev=sc.k_ev, max_certs_per_domain=1_000)
        self.genesis = Genesis(
            chain_id="dpkid-sim",
            genesis_time_ms=GENESIS_TIME_MS,
            validators=[
                GenesisValidator(k.public_key, p, f"v{i}")
                for i, (k, p) in enumerate(zip(self.val_keys, powers, strict=True))
            ],
            endorsers=[GenesisEndorser(k.public_key, f"e{i}") for i, k in enumerate(self.end_keys)],
            accounts=[
                GenesisAccount(k.address, 10**12)
                for k in [*self.acct_keys, *self.end_keys, *self.val_keys]
            ],
            policy=policy,
        )
        self.policy = policy
        # Every node's store starts from these records, as the daemon's does.
        self._genesis_records: dict[bytes, Any] = dict(genesis_state(self.genesis).items())
        self.total_power = sum(powers)
        b = sc.byzantine
        self.shared_cache = SignatureCache(max_entries=1_000_000)
        self._vcache: dict[tuple[bytes, bytes, bytes], bool] = {}
        self.config = NodeConfig(
            timeouts=TimeoutConfig(
                propose_ms=sc.timeout_propose_ms,
                propose_delta_ms=sc.timeout_delta_ms,
                prevote_ms=sc.timeout_propose_ms // 2,
                prevote_delta_ms=sc.timeout_delta_ms // 2,
                precommit_ms=sc.timeout_propose_ms // 2,
                precommit_delta_ms=sc.timeout_delta_ms // 2,
                commit_ms=sc.timeout_commit_ms,
            ),
            max_block_txs=sc.block_txs,
            gossip_interval_ms=sc.gossip_interval_ms,
        )
        self.nodes: list[SimNode] = []
        for i, k in enumerate(self.val_keys):
            n = SimNode(i, f"n{i}", k, "validator", True)
            for name in ("equivocating_proposers", "double_voters", "silent", "delaying", "twins"):
                if i in getattr(b, name):
                    n.byz.add(name)
                    n.honest = False
            self.nodes.append(n)
        for t in b.twins:
            idx = len(self.nodes)
            tw = SimNode(idx, f"n{idx}", self.val_keys[t], "twin", False)
            tw.byz.add("twins")
            self.nodes.append(tw)
        for _ in range(sc.full_nodes):
            idx = len(self.nodes)
            self.nodes.append(SimNode(idx, f"n{idx}", None, "full", True))
        self.by_name = {n.name: n for n in self.nodes}
        self.validator_nodes = [n for n in self.nodes if n.role in ("validator", "twin")]
        self.false_attestors = set(b.false_attestors)
        self.byz_endorsers = set(range(b.byzantine_endorsers))
        # Agents.
        self.accounts = [Agent(k) for k in self.acct_keys]
        self.endorsers = [Agent(k) for k in self.end_keys]
        self.val_agents = [Agent(k) for k in self.val_keys]
        # Bookkeeping for checkers and metrics.
        self.decided: dict[
            int, tuple[bytes, bytes, int]
        ] = {}  # height -> (block hash, app hash, time)
        self.submitted: dict[bytes, int] = {}
        self.latencies_ms: list[int] = []
        self.latency_series: list[tuple[float, float]] = []
        self.committed_txs = 0
        self.commit_times: list[tuple[int, int]] = []  # (sim ms, txs in block)
        self.bogus_apps: set[bytes] = set()
        self.app_types: dict[bytes, str] = {}
        self.certs_issued: dict[str, int] = {"DV": 0, "OV": 0, "EV": 0}
        self.attested: set[tuple[int, bytes]] = set()
        self.endorsed: set[tuple[int, bytes]] = set()
        # (app id, type, domain not controlled, org identity false) to act on
        self.pending_apps: list[tuple[bytes, str, bool, bool]] = []
        self.bogus_issued = 0
        self.last_fault_end_ms = 0
        self.progress_after_fault_ms: int | None = None
        self.domain_counter = 0
        self._workload_carry = 0  # tx_per_s tenths not yet submitted
        self.spki = spki_der_of(subject_key("sim").public_key())
        # Lifecycle workload: issued certificates (id, owner, endorsers), bounded.
        self.issued: list[tuple[bytes, bytes, list[bytes], str]] = []
        self.agent_by_addr = {a.key.address: a for a in [*self.accounts, *self.endorsers]}
        self.timer_violations = 0
        self.crashes: list[Crash] = list(self.sc.network.crashes)
        self.starvations: list[Starvation] = list(self.sc.network.starvations)
        self.store_loss: dict[int, int] = {}  # index in self.crashes -> blocks lost
        self._plan_chaos()
        for p in self.sc.network.partitions:
            self.last_fault_end_ms = max(self.last_fault_end_ms, p.heal_ms)
        for c in self.crashes:
            self.last_fault_end_ms = max(self.last_fault_end_ms, c.restart_ms or c.at_ms)
        for st in self.starvations:
            self.last_fault_end_ms = max(self.last_fault_end_ms, st.end_ms)

    def _plan_chaos(self) -> None:
        """Draw the chaos faults from their own stream of the seed, so a scenario
        without them keeps its random sequence."""
        ch = self.sc.chaos
        if not (ch.starve_count or ch.restart_count):
            return
        r = Random(f"chaos-{self.sc.seed}")
        vals = [n.idx for n in self.nodes if n.role == "validator"]
        # Losing stored blocks is a fault like any other: only one validator (fewer
        # than a third of 4) may suffer it, and only alone. When more than f lose
        # blocks they alone held, the guard rightly keeps them from re-deciding
        # those heights, and no protocol could be live there.
        unlucky = r.choice(vals)
        for _ in range(ch.starve_count):
            at = r.randrange(ch.fault_start_ms, ch.fault_end_ms)
            until = at + r.randint(1, ch.starve_max_ms)
            self.starvations.append(Starvation(r.choice(vals), at, until))
        for _ in range(ch.restart_count):
            at = r.randrange(ch.fault_start_ms, ch.fault_end_ms)
            who = vals if r.random() < ch.restart_all_share else [r.choice(vals)]
            for v in who:
                down = r.randint(1, ch.down_max_ms)
                if any(
                    c.node == v and c.at_ms <= at + down and at <= c.restart_ms
                    for c in self.crashes
                ):
                    continue  # one crash of a node at a time
                self.crashes.append(Crash(v, at, at + down))
                if r.random() < ch.store_loss_share and len(who) == 1 and v == unlucky:
                    self.store_loss[len(self.crashes) - 1] = r.randint(1, ch.store_loss_max_blocks)

    def _verify(self, pk: bytes, msg: bytes, sig: bytes) -> bool:
        if self.sc.sig_check == "real":
            return verify_ed25519(pk, msg, sig)
        k = (pk, msg, sig)
        r = self._vcache.get(k)
        if r is None:
            r = verify_ed25519(pk, msg, sig)
            if len(self._vcache) > 2_000_000:
                self._vcache.clear()
            self._vcache[k] = r
        return r

    def _make_core(self, n: SimNode) -> NodeCore:
        cache = self.shared_cache if self.sc.sig_check == "cached" else SignatureCache(200_000)
        n.starts += 1
        # Fresh entropy at every start, as the daemon draws from the OS: a
        # restarted node must not regenerate the nonces it used before.
        entropy = (
            sha256(f"sim-tss/{self.sc.seed}/{n.idx}/{n.starts}".encode()) if self.sc.tss else b""
        )
        core = NodeCore(
            self.genesis,
            n.key,
            self.config,
            cache,
            n.disk_sign_state,
            self._verify,
            n.disk_lock,
            tss_secrets=n.disk_tss,
            entropy=entropy,
            tss_mode="bad_shares" if n.idx in self.sc.byzantine.bad_signers else "",
        )
        rp = self._resume_point(n)
        if rp is not None:
            core.resume(rp)
        return core

    def _resume_point(self, n: SimNode) -> fx.ResumePoint | None:
        """The state after the node's last stored block, from its stored writes:
        what the daemon's store gives NodeCore.resume after a restart."""
        if not n.disk_blocks:
            return None
        records = dict(self._genesis_records)
        for writes in n.disk_writes:
            for k, v in writes:
                if v is None:
                    records.pop(k, None)
                else:
                    records[k] = v
        state = State.from_records((k, codec.encode(records[k])) for k in sorted(records))
        block, commit = n.disk_blocks[-1]
        assert state.app_hash == n.disk_app_hashes[-1], "the sim's store is inconsistent"
        return fx.ResumePoint(state, block, commit, n.disk_priorities[-1])

    # ------------------------------------------------------------------ event queue
    def _push(self, at_ms: int, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at_ms, self.seq, kind, payload))

    def _clock(self, n: SimNode) -> int:
        """A node's wall clock: genesis time plus simulated time (plus its skew)."""
        return GENESIS_TIME_MS + self.now_ms + n.skew_ms

    def _latency(self) -> int:
        net = self.sc.network
        if net.latency == "fixed":
            return net.latency_min_ms
        if net.latency == "lognormal":
            return max(
                1, int(net.latency_median_ms * math.exp(self.rng.gauss(0.0, net.latency_sigma)))
            )
        return self.rng.randint(net.latency_min_ms, net.latency_max_ms)

    def _connected(self, a: int, b: int) -> bool:
        for p in self.sc.network.partitions:
            if p.start_ms <= self.now_ms < p.heal_ms:
                ga = next((i for i, g in enumerate(p.groups) if a in g), -1)
                gb = next((i for i, g in enumerate(p.groups) if b in g), -2)
                if ga != gb:
                    return False
        return True

    def _deliver(self, src: SimNode, dst: SimNode, msg: WireMsg, extra_ms: int = 0) -> None:
        net = self.sc.network
        if src.idx == dst.idx:
            return
        if net.drop_rate and self.rng.random() < net.drop_rate:
            return
        delay = self._latency() + extra_ms
        if net.reorder_rate and self.rng.random() < net.reorder_rate:
            delay += self.rng.randint(1, net.reorder_ms)
        self._push(self.now_ms + delay, "msg", (src.idx, dst.idx, msg))
        if net.duplicate_rate and self.rng.random() < net.duplicate_rate:
            self._push(self.now_ms + delay + self._latency(), "msg", (src.idx, dst.idx, msg))

    def _recipients(self, src: SimNode, msg: WireMsg) -> list[SimNode]:
        if isinstance(msg, CONSENSUS_MSGS):
            return self.validator_nodes
        if isinstance(msg, StatusMsg) and src.role == "full":
            return self.validator_nodes
        return self.nodes

    # ------------------------------------------------------------------ the shell
    def _step(self, n: SimNode, inp: fx.NodeInput) -> fx.Ready:
        assert n.core is not None
        ready = n.core.step(inp)
        fx.carry_out(ready, _NodeShell(self, n))
        return ready

    def _send(self, n: SimNode, e: fx.Send) -> None:
        if "silent" in n.byz and isinstance(e.msg, (ProposalMsg, VoteMsg)):
            return
        extra = self.sc.byzantine.delay_ms if "delaying" in n.byz else 0
        if e.to is not None:
            dst = self.by_name.get(e.to)
            if dst is not None and self._connected(n.idx, dst.idx):
                self._deliver(n, dst, e.msg, extra)
            return
        recips = [
            d
            for d in self._recipients(n, e.msg)
            if d.idx != n.idx and self._connected(n.idx, d.idx)
        ]
        alt = (
            conflicting_msg(
                n.key,
                e.msg,
                proposals="equivocating_proposers" in n.byz,
                votes="double_voters" in n.byz,
                own_votes_only=False,
            )
            if n.key is not None
            else None
        )
        if alt is not None:
            # Each half of the peers gets one of the two: neither half alone
            # sees the equivocation, gossip has to bring the pieces together.
            for i, d in enumerate(recips):
                self._deliver(n, d, e.msg if i % 2 == 0 else alt, extra)
            return
        for d in recips:
            self._deliver(n, d, e.msg, extra)

    # ------------------------------------------------------------------ checkers
    def _on_commit(self, n: SimNode, e: fx.PersistBlock) -> None:
        h = e.block.header.height
        bh = e.block.hash
        if not n.honest:
            return
        prev = self.decided.get(h)
        if prev is None:
            self.decided[h] = (bh, e.app_hash, self.now_ms)
            self._first_commit(n, e)
            if self.now_ms >= self.last_fault_end_ms and self.progress_after_fault_ms is None:
                self.progress_after_fault_ms = self.now_ms
        else:
            if prev[0] != bh:
                self._violate(
                    "safety",
                    f"height {h}: {n.name} decided {bh.hex()[:16]}, "
                    f"another honest node {prev[0].hex()[:16]}",
                )
            elif prev[1] != e.app_hash:
                self._violate(
                    "safety",
                    f"height {h}: {n.name} app hash {e.app_hash.hex()[:16]} "
                    f"!= {prev[1].hex()[:16]}",
                )
        # Validity: the decided block came from a validator and carries only well-formed txs.
        if e.block.header.proposer not in {k.address for k in self.val_keys} | {
            a for a in self._genesis_val_addrs()
        }:
            self._violate("validity", f"height {h}: proposer is not a validator")

    def _genesis_val_addrs(self) -> list[bytes]:
        return [k.address for k in self.val_keys]

    def _violate(self, kind: str, detail: str) -> None:
        if len(self.violations) < 100:
            self.violations.append(Violation(kind, detail))

    def _first_commit(self, n: SimNode, e: fx.PersistBlock) -> None:
        """Metrics and policy checks, once per height, on the first honest commit."""
        assert n.core is not None
        st = n.core.state
        self.commit_times.append((self.now_ms, len(e.block.txs)))
        self.committed_txs += len(e.block.txs)
        for raw in e.block.txs:
            t = self.submitted.pop(sha256(raw), None)
            if t is not None:
                self.latencies_ms.append(self.now_ms - t)
                if len(self.latency_series) < 100_000:
                    self.latency_series.append((self.now_ms / 1000, (self.now_ms - t) / 1000))
        for r in e.receipts:
            for ev in r.events:
                if ev.kind == "app_created":
                    app = st.application(ev.ref)
                    if app is not None:
                        bogus = any(d.startswith("bogus") for d in app.domains)
                        fake_org = any(d.startswith("fakeorg") for d in app.domains)
                        self.app_types[ev.ref] = app.cert_type
                        if bogus or fake_org:
                            self.bogus_apps.add(ev.ref)
                        self.pending_apps.append((ev.ref, app.cert_type, bogus, fake_org))
                elif ev.kind == "cert_issued":
                    self._check_issued(st, ev.ref)
        self._act_on_applications(st)

    def _check_issued(self, st: State, cert_id: bytes) -> None:
        cert = st.certificate(cert_id)
        if cert is None:
            self._violate("policy", f"cert {cert_id.hex()[:16]} issued but not in state")
            return
        self.certs_issued[cert.issued_type] += 1
        if len(self.issued) < 10_000:
            self.issued.append((cert_id, cert.owner, list(cert.endorsers), cert.cert_type))
        p = self.policy
        if not cert.dv_power * p.dv_threshold_den > p.dv_threshold_num * cert.total_power:
            self._violate("policy", f"cert {cert_id.hex()[:16]} issued below the DV threshold")
        if cert.issued_type != "DV":
            k = p.k_ov if cert.issued_type == "OV" else p.k_ev
            if len(cert.endorsers) < k:
                self._violate(
                    "policy",
                    f"{cert.issued_type} cert {cert_id.hex()[:16]} has "
                    f"{len(cert.endorsers)} < {k} endorsers",
                )
        if cert.app_id in self.bogus_apps:
            self.bogus_issued += 1
            if self._byzantine_below_thresholds():
                self._violate("policy", f"bogus application {cert.app_id.hex()[:16]} was issued")

    def _byzantine_below_thresholds(self) -> bool:
        powers = self.sc.powers or [10] * self.sc.validators
        liar_power = sum(powers[i] for i in self.false_attestors)
        return 3 * liar_power <= 2 * self.total_power and len(self.byz_endorsers) < min(
            self.policy.k_ov, self.policy.k_ev
        )

    # ------------------------------------------------------------------ agents
    def _act_on_applications(self, st: State) -> None:
        """Validators attest and endorsers endorse what the last block created."""
        todo, self.pending_apps = self.pending_apps, []
        if not todo:
            return
        for vi, agent in enumerate(self.val_agents):
            items = []
            for app_id, _t, bogus, _fake_org in todo:
                # Domain control is all a validator checks: a false org identity passes.
                ok = (not bogus) or (vi in self.false_attestors)
                items.append(
                    Attestation(app_id, ok, "http-01", "" if ok else "key authorization mismatch")
                )
            for j in range(0, len(items), 64):
                self._submit(agent, DvAttest(items[j : j + 64]), prefer=vi)
        for ei, agent in enumerate(self.endorsers):
            byz = ei in self.byz_endorsers
            mode = self.sc.byzantine.endorser_mode
            for app_id, typ, bogus_domain, fake_org in todo:
                if typ == "DV":
                    continue
                bogus = bogus_domain or fake_org
                if byz and mode == "withhold":
                    continue
                if byz and mode in ("approve_bogus", "collude"):
                    approve = True if mode == "approve_bogus" else bogus
                else:
                    approve = not bogus
                self._submit(
                    agent,
                    Endorse(app_id, approve, "checked" if approve else "identity not verified"),
                )

    def _submit(self, agent: Agent, body: TxBody, prefer: int | None = None) -> None:
        node = self._entry_node(prefer)
        if node is None or node.core is None:
            return
        st = node.core.state
        acct = st.account(agent.key.address)
        committed = acct.nonce if acct else 0
        if committed != agent.last_seen_nonce:
            agent.last_seen_nonce = committed
            agent.last_progress_ms = self.now_ms
        if agent.next_nonce < committed:
            agent.next_nonce = committed
        elif agent.next_nonce > committed and self.now_ms - agent.last_progress_ms > 10_000:
            agent.next_nonce = committed  # our in-flight txs were lost (crash, partition): resend
            agent.last_progress_ms = self.now_ms
        raw = codec.encode(
            sign_tx(
                agent.key, self.genesis.chain_id, agent.next_nonce, self.policy.min_tx_fee, body
            )
        )
        tx = self._step(node, fx.SubmitTx(raw, self._clock(node))).tx
        assert tx is not None
        if tx.verdict == Code.OK:
            agent.next_nonce += 1
            self.submitted.setdefault(tx.tx_hash, self.now_ms)

    def _entry_node(self, prefer: int | None) -> SimNode | None:
        if prefer is not None:
            n = self.nodes[prefer]
            if n.alive and n.core is not None:
                return n
        alive = [n for n in self.validator_nodes if n.alive and n.core is not None and n.honest]
        if not alive:
            return None
        return alive[self.rng.randrange(len(alive))]

    def _workload_tick(self) -> None:
        w = self.sc.workload
        if w.stop_ms and self.now_ms >= w.stop_ms:
            return
        if self._done():
            return
        # Ten ticks a second; the remainder carries over, so 15 tx/s is 1, 2, 1, 2, ...
        self._workload_carry += w.tx_per_s
        per_tick, self._workload_carry = divmod(self._workload_carry, 10)
        for _ in range(per_tick):
            agent = self.accounts[self.rng.randrange(len(self.accounts))]
            x = self.rng.random()
            if x < w.transfer_share:
                to = self.accounts[self.rng.randrange(len(self.accounts))].key.address
                self._submit(agent, Transfer(to, self.rng.randint(1, 1000)))
                continue
            x -= w.transfer_share
            typ: Literal["DV", "OV", "EV"] = (
                "DV" if x < w.dv_share else ("OV" if x < w.dv_share + w.ov_share else "EV")
            )
            bogus = self.rng.random() < w.bogus_share
            # Only drawn when used, so scenarios without it keep their random stream.
            fake_org = (
                typ != "DV"
                and not bogus
                and w.bogus_org_share > 0
                and self.rng.random() < w.bogus_org_share
            )
            self.domain_counter += 1
            prefix = "bogus" if bogus else ("fakeorg" if fake_org else "site")
            dom = f"{prefix}{self.domain_counter}.example"
            org = None
            if typ != "DV":
                org = OrgIdentity(f"Org {self.domain_counter}", "DE", "", "", "HRB 1", "DE-BE")
            fee = {"DV": self.policy.fee_dv, "OV": self.policy.fee_ov, "EV": self.policy.fee_ev}[
                typ
            ]
            self._submit(agent, CertApply(typ, [dom], self.spki, 30, fee, org))
        self._lifecycle_tick()
        self._push(self.now_ms + 100, "workload", None)

    def _lifecycle_tick(self) -> None:
        """The demo's later steps on issued certificates: revoke, renew, withdraw an
        endorsement (the certificate degrades). Only drawn when enabled."""
        w = self.sc.workload
        p = self.policy
        if w.revoke_share and self.issued and self.rng.random() < w.revoke_share:
            cid, owner, _e, _t = self.issued.pop(self.rng.randrange(len(self.issued)))
            agent = self.agent_by_addr.get(owner)
            if agent is not None:
                self._submit(agent, Revoke(cid, 4))  # RFC 5280 reason 4: superseded
        if w.renew_share and self.issued and self.rng.random() < w.renew_share:
            cid, owner, _e, typ = self.issued[self.rng.randrange(len(self.issued))]
            agent = self.agent_by_addr.get(owner)
            fee = {"DV": p.fee_dv, "OV": p.fee_ov, "EV": p.fee_ev}.get(typ, p.fee_ev)
            if agent is not None:
                self._submit(agent, CertRenew(cid, 30, fee))
        if w.withdraw_share and self.issued and self.rng.random() < w.withdraw_share:
            cid, _o, endorsers, _t = self.issued[self.rng.randrange(len(self.issued))]
            agent = self.agent_by_addr.get(endorsers[0]) if endorsers else None
            if agent is not None:
                self._submit(agent, EndorseWithdraw(cid, "no longer vouches"))

    # ------------------------------------------------------------------ run
    def _done(self) -> bool:
        # A run that reached its heights before its faults ended has not shown
        # that progress resumes: keep going until a height is decided after
        # the last partition heals and the last crash ends (or max_sim_ms).
        if self.last_fault_end_ms and self.progress_after_fault_ms is None:
            return False
        for n in self.nodes:
            if n.honest and n.alive and (n.core is None or n.core.state.height < self.sc.heights):
                return False
        return True

    def run(self) -> dict[str, Any]:
        wall0 = self.wall_clock()
        self._cpu0 = self.cpu_clock()
        # Hundreds of states hold millions of long-lived, acyclic tree nodes;
        # the default collector would rescan them over and over.
        old_threshold = gc.get_threshold()
        gc.set_threshold(200_000, 50, 1_000)
        try:
            return self._run(wall0)
        finally:
            gc.set_threshold(*old_threshold)

    def _run(self, wall0: float) -> dict[str, Any]:
        for n in self.nodes:
            n.core = self._make_core(n)
            self._push(self.rng.randint(0, 50), "start", n.idx)
        for i, c in enumerate(self.crashes):
            self._push(c.at_ms, "crash", c.node)
            if c.restart_ms:
                self._push(c.restart_ms, "restart", (c.node, self.store_loss.get(i, 0)))
        for st in self.starvations:
            self._push(st.start_ms, "starve", (st.node, st.end_ms))
        self._push(self.sc.workload.start_ms, "workload", None)
        max_events = 50_000_000
        while self.heap and self.events_processed < max_events:
            t, _seq, kind, payload = heapq.heappop(self.heap)
            if t > self.sc.max_sim_ms:
                break
            self.now_ms = t
            self.events_processed += 1
            self._dispatch(kind, payload)
            if self.finished or (self.events_processed % 512 == 0 and self._done()):
                break
            if self.violations and any(v.kind == "safety" for v in self.violations):
                break
        return self._report(self.wall_clock() - wall0)

    def _starved(self, idx: int, kind: str, payload: Any) -> bool:
        """A starved node handles nothing: its input runs, in order, when it wakes."""
        n = self.nodes[idx]
        if n.starved_until_ms > self.now_ms:
            self._push(n.starved_until_ms, kind, payload)
            return True
        return False

    def _count_timer_violations(self, n: SimNode) -> None:
        if n.core is not None:
            self.timer_violations += n.core.liveness_violations
            if n.core.liveness_violations and len(self.violations) < 100:
                self._violate(
                    "liveness",
                    f"{n.name}: {n.core.liveness_violations} steps left no consensus timer"
                    " armed (CONSENSUS.md §10.1)",
                )
            n.core.liveness_violations = 0

    def _dispatch(self, kind: str, payload: Any) -> None:
        if kind in ("msg", "timer"):
            dst = payload[1] if kind == "msg" else payload[0]
            if self._starved(dst, kind, payload):
                return
        if kind == "starve":
            idx, until = payload
            n = self.nodes[idx]
            n.starved_until_ms = max(n.starved_until_ms, until)
            return
        if kind == "msg":
            src, dst, msg = payload
            n = self.nodes[dst]
            if n.alive and n.core is not None and self._connected(src, dst):
                self._step(n, fx.Receive(self.nodes[src].name, msg, self._clock(n)))
        elif kind == "timer":
            idx, epoch, t = payload
            n = self.nodes[idx]
            if n.alive and n.epoch == epoch and n.core is not None:
                self._step(n, fx.TimerFired(t, self._clock(n)))
        elif kind == "start":
            n = self.nodes[payload]
            if n.alive and n.core is not None:
                self._step(n, fx.Start(self._clock(n)))
        elif kind == "crash":
            n = self.nodes[payload]
            self._count_timer_violations(n)
            n.alive = False
            n.epoch += 1
            n.core = None  # memory is lost; disk_blocks and disk_sign_state survive
        elif kind == "restart":
            idx, lost = payload if isinstance(payload, tuple) else (payload, 0)
            n = self.nodes[idx]
            if lost:
                # The store lost its last blocks (its WAL); the sign state did not.
                keep = max(0, len(n.disk_blocks) - lost)
                del n.disk_blocks[keep:], n.disk_writes[keep:], n.disk_priorities[keep:]
                del n.disk_app_hashes[keep:]
            n.alive = True
            n.core = self._make_core(n)
            self._step(n, fx.Start(self._clock(n)))
        elif kind == "workload":
            self._workload_tick()

    def _quorum_up(self, t: int) -> bool:
        """Is a quorum of honest validator power alive, unstarved and connected at t?"""
        down = {c.node for c in self.crashes if c.at_ms <= t < (c.restart_ms or 10**15)}
        down |= {s.node for s in self.starvations if s.start_ms <= t < s.end_ms}
        up = [n for n in self.nodes if n.role == "validator" and n.honest and n.idx not in down]
        powers = self.sc.powers or [10] * self.sc.validators
        groups: list[list[int]] = [[n.idx for n in up]]
        for p in self.sc.network.partitions:
            if p.start_ms <= t < p.heal_ms:
                groups = [[i for i in g if i in {n.idx for n in up}] for g in p.groups]
        return any(3 * sum(powers[i] for i in g) > 2 * self.total_power for g in groups)

    def _check_liveness_bound(self) -> None:
        """With a quorum up, every height commits within chaos.liveness_bound_ms."""
        bound = self.sc.chaos.liveness_bound_ms
        if not bound:
            return
        cuts = {0, self.now_ms}
        for c in self.crashes:
            cuts |= {c.at_ms, c.restart_ms}
        for st in self.starvations:
            cuts |= {st.start_ms, st.end_ms}
        for p in self.sc.network.partitions:
            cuts |= {p.start_ms, p.heal_ms}
        points = sorted(x for x in cuts if 0 <= x <= self.now_ms)
        segments = [(a, b) for a, b in itertools.pairwise(points) if self._quorum_up(a)]
        marks = [0, *sorted(t for _b, _a, t in self.decided.values()), self.now_ms]
        for start, end in itertools.pairwise(marks):
            up_ms = sum(max(0, min(b, end) - max(a, start)) for a, b in segments)
            if up_ms > bound:
                self._violate("liveness", self._bound_msg(end, up_ms))
                return

    def _bound_msg(self, at_ms: int, up_ms: int) -> str:
        return (
            f"no height committed for {up_ms} ms of quorum-up time before {at_ms} ms"
            f" (bound {self.sc.chaos.liveness_bound_ms} ms)"
        )

    def _report(self, wall_s: float) -> dict[str, Any]:
        sc = self.sc
        for n in self.nodes:
            self._count_timer_violations(n)
        self._check_liveness_bound()
        honest_heights = [
            n.core.state.height for n in self.nodes if n.honest and n.alive and n.core is not None
        ]
        height = min(honest_heights) if honest_heights else 0
        lat = sorted(self.latencies_ms)

        def pct(p: int) -> float:
            if not lat:
                return 0.0
            return round(lat[min(len(lat) - 1, (len(lat) * p) // 100)] / 1000, 3)

        sim_s = max(1, self.now_ms) / 1000
        liveness_ok = height >= sc.heights and (
            self.progress_after_fault_ms is not None
            and self.progress_after_fault_ms - self.last_fault_end_ms <= sc.liveness_window_ms
        )
        if not liveness_ok:
            if height < sc.heights:
                why = f"honest nodes reached height {height} of {sc.heights} by {self.now_ms} ms"
            else:
                seen = self.progress_after_fault_ms
                why = (
                    f"no new height within {sc.liveness_window_ms} ms of the last fault "
                    f"ending at {self.last_fault_end_ms} ms (next height at "
                    f"{'never' if seen is None else f'{seen} ms'})"
                )
            self._violate("liveness", why)
        tss = self._check_tss()
        safety = [v for v in self.violations if v.kind in ("safety", "validity")]
        policy = [v for v in self.violations if v.kind == "policy"]
        b = sc.byzantine
        return {
            "scenario": sc.name,
            "seed": sc.seed,
            "peers": len(self.nodes),
            "validators": sc.validators,
            "full_nodes": sc.full_nodes,
            "endorsers": sc.endorsers,
            "byzantine_validators": len(
                {
                    *b.equivocating_proposers,
                    *b.double_voters,
                    *b.twins,
                    *b.silent,
                    *b.delaying,
                    *b.false_attestors,
                }
            ),
            "byzantine_endorsers": b.byzantine_endorsers,
            "heights": height,
            "committed_txs": self.committed_txs,
            "certs_issued": dict(self.certs_issued),
            "bogus_applications": len(self.bogus_apps),
            "bogus_certs_issued": self.bogus_issued,
            "sim_s": round(sim_s, 3),
            "sim_tps": round(self.committed_txs / sim_s, 2),
            "latency_p50_s": pct(50),
            "latency_p99_s": pct(99),
            "safety_violations": len(safety),
            "policy_violations": len(policy),
            "liveness_ok": liveness_ok and not any(v.kind == "liveness" for v in self.violations),
            "timer_invariant_violations": self.timer_violations,
            "violations": [f"{v.kind}: {v.detail}" for v in self.violations[:20]],
            "sig_check": sc.sig_check,
            "events": self.events_processed,
            "wall_s": round(wall_s, 2),
            # CPU time of this process: unlike wall_s, not inflated by other load.
            "cpu_s": round(self.cpu_clock() - self._cpu0, 2),
            "series": self._series(),
            "latency_series": self.latency_series,
            "tss": tss,
            "tss_violations": len([v for v in self.violations if v.kind == "tss"]),
        }

    def _check_tss(self) -> dict[str, Any]:
        """The threshold key on the final state of an honest node (SPEC §16):
        every signature the ledger released verifies under the group key
        (safety); every request older than TSS_SETTLE_BLOCKS is signed
        (liveness); only Byzantine validators are jailed for their shares."""
        from dpkid.core import frost
        from dpkid.core.state import tss as rules
        from dpkid.core.types import TssKey, TssQueue, TssRequest

        node = next((n for n in self.nodes if n.honest and n.alive and n.core is not None), None)
        if not self.sc.tss or node is None or node.core is None:
            return {}
        st = node.core.state
        key: TssKey | None = st.get(rules.K_TSS_KEY)
        q: TssQueue | None = st.get(rules.K_TSS_QUEUE)
        root = st.get(rules.K_TSS_ROOT)
        out: dict[str, Any] = {
            "key_epoch": key.epoch if key else 0,
            "threshold": key.threshold if key else 0,
            "root_signed": bool(root is not None and root.der),
            "requests": 0,
            "signed": 0,
            "pending": 0,
            "attempts": 0,
            "cancelled": 0,  # revoked, expired or replaced before an attempt
            "unsignable": 0,
            "oldest_pending_blocks": 0,
            "latency_blocks_p50": 0,
            "latency_blocks_max": 0,
            "jailed": 0,
        }
        if key is None or q is None:
            from dpkid.core.tss.weights import committee_for

            vals = [(v.address, v.pubkey, v.power) for v in st.validators.validators]
            if st.height >= TSS_SETTLE_BLOCKS and committee_for(vals) is not None:
                self._violate("tss", f"no threshold key by height {st.height}")
            return out
        lat: list[int] = []
        for seq in range(1, q.next_seq):
            req: TssRequest | None = st.get(rules.key_req(seq))
            if req is None:
                continue
            out["requests"] += 1
            out["attempts"] += req.attempt
            if req.status == "signed":
                out["signed"] += 1
                lat.append(req.signed_height - req.created_height)
                if not frost.verify_signature(key.group_pk, req.tbs, req.sig):
                    self._violate("tss", f"request {seq}: the released signature does not verify")
            elif req.status in ("cancelled", "unsignable"):
                out[req.status] += 1
            elif req.status == "pending":
                out["pending"] += 1
                age = st.height - req.created_height
                out["oldest_pending_blocks"] = max(out["oldest_pending_blocks"], age)
                if st.height - req.created_height > TSS_SETTLE_BLOCKS:
                    self._violate(
                        "tss",
                        f"request {seq} ({req.kind}) unsigned {st.height - req.created_height}"
                        f" blocks after it was made (attempt {req.attempt})",
                    )
        lat.sort()
        out["latency_blocks_p50"] = lat[len(lat) // 2] if lat else 0
        out["latency_blocks_max"] = lat[-1] if lat else 0
        bad = {self.val_keys[i].address for i in self.sc.byzantine.bad_signers}
        byz = {n.key.address for n in self.nodes if not n.honest and n.key is not None}
        jailed = sorted(
            k.address for k in self.val_keys if st.get(rules.P_JAIL + k.address) is not None
        )
        out["jailed"] = len(jailed)
        for addr in jailed:
            if addr not in byz and addr not in bad:
                self._violate("tss", f"honest validator {addr.hex()[:12]} was jailed")
        return out

    def _series(self) -> list[tuple[float, int]]:
        return [(t / 1000, n) for t, n in self.commit_times]


# Blocks after which a signing request must be signed, in any scenario whose
# faults have ended: a few attempts' timeouts (SIGN_TIMEOUT_BLOCKS) and a key
# re-sharing (three DKG phases) fit well inside.
TSS_SETTLE_BLOCKS: Final = 30


def run_scenario(
    sc: Scenario,
    command_hint: str = "",
    wall_clock: Callable[[], float] = _no_clock,
    cpu_clock: Callable[[], float] = _no_clock,
) -> dict[str, Any]:
    return Simulation(sc, command_hint, wall_clock, cpu_clock).run()


class _NodeShell:
    """The simulator's side of the interpreter contract (effects.Shell): the
    same carry_out as the daemon, with memory for disk and the event queue
    for the network and the clock."""

    def __init__(self, sim: Simulation, n: SimNode) -> None:
        self.sim = sim
        self.n = n

    def persist_lock(self, lock: LockRecord) -> None:
        self.n.disk_lock = lock

    def persist_sign_state(self, state: SignState) -> None:
        self.n.disk_sign_state = state

    def persist_tss(self, blob: bytes) -> None:
        self.n.disk_tss = blob

    def persist_block(self, block: fx.PersistBlock) -> None:
        n, sim = self.n, self.sim
        n.disk_blocks.append((block.block, block.commit))
        n.disk_writes.append(block.writes)
        n.disk_priorities.append(list(block.priorities))
        n.disk_app_hashes.append(block.app_hash)
        sim._on_commit(n, block)
        if block.block.header.height >= sim.sc.heights and sim._done():
            sim.finished = True

    def send(self, send: fx.Send) -> None:
        self.sim._send(self.n, send)

    def serve(self, serve: fx.ServeBlocks) -> None:
        n, sim = self.n, self.sim
        dst = sim.by_name.get(serve.to)
        if dst is None or not sim._connected(n.idx, dst.idx):
            return
        first = serve.from_height - 1
        resp = fx.block_response(n.disk_blocks[first : first + serve.count], SYNC_REPLY_MAX_BYTES)
        if resp.blocks:
            sim._deliver(n, dst, resp)

    def set_timer(self, timer: fx.SetTimer) -> None:
        sim = self.sim
        sim._push(sim.now_ms + timer.delay_ms, "timer", (self.n.idx, self.n.epoch, timer))

    def event(self, event: fx.NodeEvent) -> None:
        pass  # the simulator reads the core's counters instead (liveness_violations)

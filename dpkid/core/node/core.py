"""The node core: consensus, mempool and state machine behind one door.

Pure, like the parts it composes. ``NodeCore.step(input) -> Ready`` is the only
way in or out (effects.py): the daemon (dpkid/daemon/) and the simulator
(dpkid/sim/) turn what happens to them into the same inputs and carry out the
same ``Ready`` through the same ``carry_out``. What the shells may read between
steps is the queries at the end of the class.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from dpkid.core import codec
from dpkid.core.consensus.engine import (
    Broadcast,
    Decide,
    Effect,
    EvidenceFound,
    HeightState,
    LockRecord,
    NeedValue,
    PersistSignState,
    ScheduleTimeout,
    SignState,
    TimeoutConfig,
    ValidateValue,
)
from dpkid.core.consensus.messages import (
    MAX_EVIDENCE_PER_BLOCK,
    Block,
    Commit,
    DuplicateVoteEvidence,
    Proposal,
    Vote,
    commit_hash,
    evidence_hash,
    sign_bytes_of_vote,
    tx_root,
)
from dpkid.core.consensus.validity import (
    BlockContext,
    BlockVerdict,
    EvidenceVerdict,
    check_block,
    check_evidence,
    commit_votes,
    valset_hash,
    verify_commit,
    weighted_median_time,
)
from dpkid.core.consensus.valset import (
    Priorities,
    ValidatorInfo,
    ValidatorSet,
    carry_priorities,
    initial_priorities,
    next_height_priorities,
)
from dpkid.core.crypto import SignatureCache, SigningKey, verify_ed25519
from dpkid.core.node.effects import (
    NodeEffect,
    NodeEvent,
    NodeInput,
    PersistBlock,
    PersistTss,
    Ready,
    Receive,
    ReceiveBytes,
    ResumePoint,
    Send,
    ServeBlocks,
    SetTimer,
    Start,
    TimerFired,
    TxVerdict,
)
from dpkid.core.node.mempool import Mempool
from dpkid.core.node.tss_agent import TssAgent
from dpkid.core.node.wire import (
    MAX_SYNC_BLOCKS,
    MAX_TX_BATCH,
    BlockRequest,
    BlockResponse,
    EvidenceMsg,
    ProposalMsg,
    ProposalRequest,
    StatusMsg,
    SyncedBlock,
    TxBatch,
    VoteMsg,
    WireMsg,
    decode_msg,
)
from dpkid.core.state.codes import Code
from dpkid.core.state.machine import State, apply_block, genesis_state, scheduled_powers
from dpkid.core.types import Genesis, Header, Receipt, encode_tx, sign_tx

MAX_PENDING_FUTURE: Final = 2048
# Votes of decided heights kept to catch equivocation that arrives late, e.g.
# from a validator that restarted behind and re-signs old heights (§7.1).
VOTE_HISTORY_HEIGHTS: Final = 64
MAX_VOTE_HISTORY: Final = 65_536
MAX_EVIDENCE_POOL: Final = 1024  # pooled, not yet committed evidence (§7.2)
MAX_FETCH_ASKED: Final = 256  # (height, round)s whose proposal we asked for recently
MAX_BODIES_PER_HEADER: Final = 4  # validity verdicts kept per header hash (§5.4)


# ------------------------------------------------------------------ the node


@dataclass
class NodeConfig:
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    max_block_txs: int = 2_000
    max_block_bytes: int = 4 * 1024 * 1024
    # Execution cost a proposer puts in one block, in transfer-equivalents
    # (mempool.tx_weight): max_block_txs transfers, or about 570 DV applications
    # with their attestations (a 2,000-application block took 10 s to commit
    # on this machine and set off a collapse, BENCHMARKS.md "Certificates").
    max_block_weight: int = 8_000
    gossip_interval_ms: int = 500
    tx_batch_max: int = 256
    # About five full blocks: a node takes only what it can commit in a few
    # seconds, and refuses the rest as retryable (RPC.md tx_submit).
    mempool_max_txs: int = 10_000


def validator_set_for(state: State, height: int) -> ValidatorSet:
    """The set that runs consensus at ``height`` (<= state.height + 2): the
    state's set with the changes scheduled to take effect by then."""
    if height > state.height + 2:
        raise ValueError(f"set for {height} is not known at state height {state.height}")
    vals = scheduled_powers(state.validators, state.pending_validator_changes, height)
    return ValidatorSet([ValidatorInfo(a, pk, p) for a, (pk, p) in sorted(vals.items())])


class NodeCore:
    """One node: a validator if ``key`` is in the set, else a full node."""

    def __init__(
        self,
        genesis: Genesis,
        key: SigningKey | None,
        config: NodeConfig | None = None,
        sig_cache: SignatureCache | None = None,
        sign_state: SignState | None = None,
        verify: Callable[[bytes, bytes, bytes], bool] = verify_ed25519,
        lock: LockRecord | None = None,
        tss_secrets: bytes | None = None,
        entropy: bytes = b"",
        tss_mode: str = "",
    ) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.key = key
        self.config = config or NodeConfig()
        self.sig_cache = sig_cache if sig_cache is not None else SignatureCache()
        self._verify = verify
        self.state: State = genesis_state(genesis)
        self.last_block_hash = b""
        self.last_block_time_ms = genesis.genesis_time_ms
        self.last_commit: Commit | None = None
        self.vals = validator_set_for(self.state, 1)
        self.priorities: Priorities = carry_priorities(initial_priorities(self.vals), self.vals)
        self.sign_state = sign_state if sign_state is not None else SignState()
        self.lock = lock  # the persisted lock of the sign state's height (§6)
        self._started = False
        self.mempool = Mempool(self.chain_id, self.sig_cache, self.config.mempool_max_txs)
        self.evidence_pool: dict[bytes, DuplicateVoteEvidence] = {}
        self.committed_evidence: set[bytes] = set()
        self.outbox: list[bytes] = []
        self.hs = self._new_height(1)
        self.future: list[tuple[int, Proposal | Vote]] = []
        self.now_ms = 0
        self.decided: dict[int, tuple[Block, Commit]] = {}  # until applied
        self.waiting_commit = False
        self.sync_target = 0
        self.receipts_by_height: dict[int, list[Receipt]] = {}
        self._prev_vals = self.vals
        self._fetch_asked: dict[tuple[int, int], int] = {}
        self._last_sync_ms = -(10**12)
        self._commit_armed = False
        self._proposal_sent = (0, -1, 0)  # (height, round, now_ms) of our last proposal
        # Liveness bookkeeping (CONSENSUS.md §10.1), read by both shells.
        self.liveness_violations = 0
        self.last_progress_ms = 0
        self._progress_key: tuple[int, int, str, bool] = (0, 0, "", False)
        # (height, round, type, validator) -> a verified vote of a decided height,
        # and the set that ran each of those heights (§7.1, late equivocation).
        self.vote_history: OrderedDict[tuple[int, int, int, bytes], Vote] = OrderedDict()
        self.history_vals: OrderedDict[int, ValidatorSet] = OrderedDict()
        # The validator's part in the threshold key (SPEC §16). It needs fresh
        # entropy from the shell; a shell that gives none runs without it.
        self.tss: TssAgent | None = (
            TssAgent(key, entropy, tss_secrets, tss_mode) if key is not None and entropy else None
        )

    # ------------------------------------------------------------------ the engine's requests
    def _build_block(self, height: int) -> Block:
        """getValue() (L18), asked for by the engine's NeedValue (CONSENSUS.md §5.1)."""
        cfg = self.config
        txs = self.mempool.reap(
            self.state, cfg.max_block_txs, cfg.max_block_bytes, cfg.max_block_weight
        )
        # Only evidence that is valid now: evidence against a validator that has
        # since left the set would make the block invalid for everyone, every
        # round, and halt the chain (CONSENSUS.md §7.3).
        ev = [
            self.evidence_pool[k]
            for k in sorted(self.evidence_pool)
            if self.check_evidence(self.evidence_pool[k]) is EvidenceVerdict.OK
        ][:MAX_EVIDENCE_PER_BLOCK]
        if height == 1 or self.last_commit is None:
            time_ms = self.genesis.genesis_time_ms
        else:
            time_ms = weighted_median_time(self.last_commit, self._prev_vals)
        assert self.key is not None
        header = Header(
            chain_id=self.chain_id,
            height=height,
            time_ms=time_ms,
            proposer=self.key.address,
            prev_block_hash=self.last_block_hash,
            tx_root=tx_root(txs),
            app_hash=self.state.app_hash,
            validators_hash=valset_hash(self.vals),
            next_validators_hash=valset_hash(validator_set_for(self.state, height + 1)),
            last_commit_hash=commit_hash(self.last_commit),
            evidence_hash=evidence_hash(ev),
        )
        return Block(header, txs, ev, self.last_commit)

    def _validity(self, block: Block) -> bool:
        """valid(v), asked for by the engine's ValidateValue. Block.hash covers
        only the header, so a verdict is reused only for the same block, header
        AND body (CONSENSUS.md §5.4)."""
        seen = self._valid_cache.setdefault(block.hash, [])
        for b, verdict in seen:
            if b is block or b == block:
                return verdict
        ok = self.check_block(block) is BlockVerdict.OK
        if len(seen) < MAX_BODIES_PER_HEADER:  # bodies beyond that are re-checked
            seen.append((block, ok))
        return ok

    def check_block(self, block: Block) -> BlockVerdict:
        """Whether ``block`` may follow our chain (CONSENSUS.md §5.2)."""
        height = self.state.height + 1
        ctx = BlockContext(
            chain_id=self.chain_id,
            height=height,
            last_block_hash=self.last_block_hash,
            last_block_time_ms=self.last_block_time_ms,
            genesis_time_ms=self.genesis.genesis_time_ms,
            app_hash=self.state.app_hash,
            vals=self.vals,
            prev_vals=self._prev_vals,
            next_vals_hash=valset_hash(validator_set_for(self.state, height + 1)),
        )
        return check_block(block, ctx, self._verify, self.check_evidence)

    def check_evidence(self, ev: DuplicateVoteEvidence) -> EvidenceVerdict:
        """CONSENSUS.md §7.3, against the set after our last block."""
        by_addr = {v.address: v.pubkey for v in self.state.validators.validators}
        return check_evidence(ev, self.chain_id, self.state.height + 1, by_addr.get, self._verify)

    # ------------------------------------------------------------------ lifecycle
    def _new_height(self, height: int) -> HeightState:
        self._valid_cache: dict[bytes, list[tuple[Block, bool]]] = {}
        return HeightState(
            self.chain_id,
            height,
            self.vals,
            self.priorities,
            self.key,
            self.sign_state,
            self._verify,
            self.config.timeouts,
            self.last_block_time_ms,
            self.lock,
        )

    @property
    def height(self) -> int:
        """The height consensus is working on (last committed + 1)."""
        return self.state.height + 1

    @property
    def is_validator(self) -> bool:
        return self.key is not None and self.vals.get(self.key.address) is not None

    # ------------------------------------------------------------------ the door
    def step(self, inp: NodeInput) -> Ready:
        """Take one input; return everything the shell must do about it. The
        liveness invariant (CONSENSUS.md §10.1) is checked after every step."""
        self.now_ms = inp.now_ms
        tx: TxVerdict | None = None
        if isinstance(inp, Start):
            out = self._start()
        elif isinstance(inp, Receive):
            out = self._on_decoded(inp.peer, inp.msg)
        elif isinstance(inp, ReceiveBytes):
            out = self._on_bytes(inp.peer, inp.data)
        elif isinstance(inp, TimerFired):
            out = self._on_timer(inp.timer)
        else:
            tx, out = self._submit(inp.raw)
        return Ready.of(self._after(out), tx)

    def _start(self) -> list[NodeEffect]:
        self.last_progress_ms = self.now_ms
        self._started = True
        out: list[NodeEffect] = [SetTimer("gossip", 0, 0, "", self.config.gossip_interval_ms)]
        ss = self.sign_state
        if ss.height > self.height:
            out.append(
                NodeEvent(
                    "store_behind_sign_state",
                    f"this validator signed at height {ss.height} round {ss.round} but its"
                    f" store ends at height {self.state.height}: the store lost data; it"
                    f" will sync and will not sign below height {ss.height}",
                )
            )
        out += self._run(self.hs.start(self.now_ms))
        return out

    # ------------------------------------------------------------------ inputs
    def _on_bytes(self, peer: str, data: bytes) -> list[NodeEffect]:
        """A message from the network. Garbage is dropped, never raised."""
        try:
            msg = decode_msg(data)
        except codec.DecodeError:
            return [NodeEvent("bad_message", f"undecodable message from {peer}")]
        return self._on_decoded(peer, msg)

    def _on_decoded(self, peer: str, msg: WireMsg) -> list[NodeEffect]:
        if isinstance(msg, TxBatch):
            for raw in msg.txs:
                self.mempool.add(raw, self.state, self.now_ms)
            return []
        if isinstance(msg, ProposalMsg):
            return self._consensus_msg(peer, msg.proposal.height, msg.proposal)
        if isinstance(msg, VoteMsg):
            out: list[NodeEffect] = []
            for v in msg.votes:
                out += self._consensus_msg(peer, v.height, v)
                out += self._maybe_fetch_proposal(peer, v)
            return out
        if isinstance(msg, ProposalRequest):
            if msg.height == self.height and not self.waiting_commit:
                prop = self.hs.proposals.get(msg.round)
                if prop is not None:
                    return [Send(peer, ProposalMsg(prop))]
            return []
        if isinstance(msg, StatusMsg):
            return self._maybe_sync(peer, msg.height)
        if isinstance(msg, BlockRequest):
            if msg.from_height <= self.state.height:
                n = min(msg.count, self.state.height - msg.from_height + 1, MAX_SYNC_BLOCKS)
                return [ServeBlocks(peer, msg.from_height, n)]
            return []
        if isinstance(msg, BlockResponse):
            return self._on_blocks(peer, msg.blocks)
        if isinstance(msg, EvidenceMsg):
            if self.check_evidence(msg.evidence) is EvidenceVerdict.OK:
                k = msg.evidence.key()
                if k not in self.committed_evidence and len(self.evidence_pool) < MAX_EVIDENCE_POOL:
                    self.evidence_pool.setdefault(k, msg.evidence)
            return []
        return []

    def _consensus_msg(self, peer: str, height: int, m: Proposal | Vote) -> list[NodeEffect]:
        if height == self.height and not self.waiting_commit:
            eff = (
                self.hs.on_proposal(m, self.now_ms)
                if isinstance(m, Proposal)
                else self.hs.on_vote(m, self.now_ms)
            )
            return self._run(eff)
        if height > self.height:
            # Keep a bounded number for when we get there; and if the sender is
            # well ahead, we are lagging: ask it for blocks.
            if height == self.height + 1 and len(self.future) < MAX_PENDING_FUTURE:
                self.future.append((height, m))
            return self._maybe_sync(peer, height - 1)
        if height == self.height and self.waiting_commit and len(self.future) < MAX_PENDING_FUTURE:
            self.future.append((height, m))
        if height == self.hs.height and self.waiting_commit and isinstance(m, Vote):
            # The height just decided: its engine still counts votes, and an
            # equivocation there is evidence like any other (§7.1).
            return self._run(self.hs.on_vote(m, self.now_ms))
        if height < self.height and isinstance(m, Vote):
            return self._late_vote(m)
        return []

    def _remember_votes(self, hs: HeightState) -> None:
        """Keep a decided height's votes to compare late votes against (§7.1)."""
        self.history_vals[hs.height] = hs.vals
        for table in (hs.prevotes, hs.precommits):
            for r in sorted(table):
                rv = table[r]
                for a in sorted(rv.by_validator):
                    v = rv.by_validator[a]
                    self.vote_history[(v.height, v.round, v.type, a)] = v
        while self.history_vals and (
            next(iter(self.history_vals)) + VOTE_HISTORY_HEIGHTS < hs.height
            or len(self.history_vals) > VOTE_HISTORY_HEIGHTS
        ):
            self.history_vals.popitem(last=False)
        floor = next(iter(self.history_vals)) if self.history_vals else hs.height
        while self.vote_history and (
            len(self.vote_history) > MAX_VOTE_HISTORY or next(iter(self.vote_history))[0] < floor
        ):
            self.vote_history.popitem(last=False)

    def _remember_commit(self, commit: Commit, vals: ValidatorSet) -> None:
        """A synced height has no engine votes to keep; its commit's precommits
        (already verified) are what a late conflicting precommit is judged by."""
        self.history_vals[commit.height] = vals
        for v in commit_votes(self.chain_id, commit):
            self.vote_history.setdefault((v.height, v.round, v.type, v.validator), v)

    def _late_vote(self, vote: Vote) -> list[NodeEffect]:
        """A vote for a height we already decided: gossip from a validator that
        fell behind, or a validator re-signing old heights after losing state.
        A second, different signed vote for one (height, round, type) is
        evidence like any other (CONSENSUS.md §7.1)."""
        vals = self.history_vals.get(vote.height)
        if vals is None or vote.chain_id != self.chain_id:
            return []
        v = vals.get(vote.validator)
        if v is None:
            return []
        k = (vote.height, vote.round, vote.type, vote.validator)
        prior = self.vote_history.get(k)
        if prior is not None and prior.block_hash == vote.block_hash:
            return []  # the same vote again (perhaps re-timestamped): not evidence
        if not self._verify(v.pubkey, sign_bytes_of_vote(vote), vote.sig):
            return []
        if prior is None:
            if len(self.vote_history) < MAX_VOTE_HISTORY:
                self.vote_history[k] = vote
            return []
        a, b = sorted((prior, vote), key=lambda x: (x.block_hash, x.timestamp_ms, x.sig))
        ev = DuplicateVoteEvidence(a, b)
        key = ev.key()
        if key in self.committed_evidence or key in self.evidence_pool:
            return []
        if (
            self.check_evidence(ev) is not EvidenceVerdict.OK
            or len(self.evidence_pool) >= MAX_EVIDENCE_POOL
        ):
            return []
        self.evidence_pool[key] = ev
        return [
            Send(None, EvidenceMsg(ev)),
            NodeEvent("equivocation", f"{vote.validator.hex()} at past height {vote.height}"),
        ]

    def _maybe_fetch_proposal(self, peer: str, v: Vote) -> list[NodeEffect]:
        """Gossip is lossy: a vote for a block we never saw means its proposal
        was lost on the way to us; ask the voter (CONSENSUS.md §10)."""
        if v.height != self.height or not v.block_hash or self.waiting_commit:
            return []
        prop = self.hs.proposals.get(v.round)
        if prop is not None:
            return []
        key = (v.height, v.round)
        last = self._fetch_asked.get(key)
        if last is not None and self.now_ms - last < self.config.gossip_interval_ms:
            return []
        if len(self._fetch_asked) > MAX_FETCH_ASKED:
            self._fetch_asked.clear()
        self._fetch_asked[key] = self.now_ms
        return [Send(peer, ProposalRequest(v.height, v.round))]

    def _maybe_sync(self, peer: str, their_height: int) -> list[NodeEffect]:
        if their_height > self.state.height and not self.waiting_commit:
            # One request per gossip interval: every vote from the future must
            # not turn into its own 32-block request.
            if self.now_ms - self._last_sync_ms < self.config.gossip_interval_ms:
                self.sync_target = max(self.sync_target, their_height)
                return []
            self._last_sync_ms = self.now_ms
            self.sync_target = max(self.sync_target, their_height)
            if their_height > self.state.height + 1 or (their_height == self.state.height + 1):
                return [
                    Send(
                        peer,
                        BlockRequest(
                            self.state.height + 1,
                            min(MAX_SYNC_BLOCKS, their_height - self.state.height),
                        ),
                    )
                ]
        return []

    def _on_blocks(self, peer: str, blocks: Sequence[SyncedBlock]) -> list[NodeEffect]:
        out: list[NodeEffect] = []
        for sb in blocks:
            if sb.block.header.height != self.height or self.waiting_commit:
                continue
            why = self.check_block(sb.block)
            if why is not BlockVerdict.OK:
                out.append(
                    NodeEvent(
                        "sync_rejected", f"block {sb.block.header.height} from {peer}: {why.value}"
                    )
                )
                break
            if not verify_commit(self.chain_id, sb.commit, self.vals, sb.block.hash, self._verify):
                out.append(
                    NodeEvent(
                        "sync_rejected",
                        f"commit for {sb.block.header.height} from {peer} does not verify",
                    )
                )
                break
            out += self._commit_block(sb.block, sb.commit, synced=True)
        if self.sync_target > self.state.height and blocks:
            out.append(
                Send(
                    peer,
                    BlockRequest(
                        self.height, min(MAX_SYNC_BLOCKS, self.sync_target - self.state.height)
                    ),
                )
            )
        return out

    def _on_timer(self, t: SetTimer) -> list[NodeEffect]:
        if t.kind == "consensus":
            if t.height != self.height or self.waiting_commit:
                return []
            return self._run(self.hs.on_timeout(t.height, t.round, t.step, self.now_ms))
        if t.kind == "commit":
            if t.height == self.state.height:
                self._commit_armed = False
            return self._start_next_height()
        if t.kind == "gossip":
            return self._gossip()
        return []

    # ------------------------------------------------------------------ liveness
    def timer_armed(self) -> bool:
        """CONSENSUS.md §10.1: at height H and not decided, a timer that can move
        consensus is armed; while waiting for timeout_commit, that timer is."""
        if self.waiting_commit:
            return self._commit_armed
        return self.hs.timer_armed()

    def _after(self, out: list[NodeEffect]) -> list[NodeEffect]:
        """Checked after every step, in the daemon and the simulator alike."""
        if self._started and not self.timer_armed():
            self.liveness_violations += 1
            out.append(
                NodeEvent(
                    "liveness_invariant",
                    f"no consensus timer armed at height {self.height} round {self.hs.round}"
                    f" step {self.hs.step}",
                )
            )
        key = (self.height, self.hs.round, self.hs.step, self.waiting_commit)
        if key != self._progress_key:
            self._progress_key = key
            self.last_progress_ms = self.now_ms
        return out

    def waiting_for(self) -> str:
        if self.waiting_commit:
            return f"timeout_commit after height {self.state.height}"
        return self.hs.waiting_for()

    def stalled_ms(self, now_ms: int) -> int:
        """How long consensus has not moved, against the bound the watchdog uses.
        Before Start nothing is expected to move (and no progress time is known)."""
        if not self._started:
            return 0
        return max(0, now_ms - self.last_progress_ms)

    def stall_bound_ms(self, rounds: int) -> int:
        t = self.config.timeouts
        return rounds * t.round_ms(self.hs.round) + t.commit_ms

    def _submit(self, raw: bytes) -> tuple[TxVerdict, list[NodeEffect]]:
        """A client's tx: admit to the mempool and gossip it in the next batch."""
        code, why, h, added = self.mempool.admit(raw, self.state, self.now_ms, local=True)
        out: list[NodeEffect] = []
        if added:
            self.outbox.append(raw)
            if len(self.outbox) >= self.config.tx_batch_max:
                out.append(self._flush_txs())
        return TxVerdict(code, why, h), out

    def _flush_txs(self) -> Send:
        batch, self.outbox = self.outbox[:MAX_TX_BATCH], self.outbox[MAX_TX_BATCH:]
        return Send(None, TxBatch(batch))

    def _gossip(self) -> list[NodeEffect]:
        """Gossip is lossy: every interval, re-send what others may have missed."""
        out: list[NodeEffect] = [SetTimer("gossip", 0, 0, "", self.config.gossip_interval_ms)]
        if self.outbox:
            out.append(self._flush_txs())
        out.append(Send(None, StatusMsg(self.state.height, self.hs.round)))
        if not self.waiting_commit:
            prop = self.hs.proposals.get(self.hs.round)
            h, r, sent_ms = self._proposal_sent
            if (
                prop is not None
                and prop.proposer == (self.key.address if self.key else b"")
                and (h, r) == (prop.height, prop.round)
                and self.now_ms - sent_ms >= self.config.gossip_interval_ms
            ):
                # Only a proposal that has been out for a whole interval: the
                # full block is the largest message, and one sent a moment ago
                # is more likely in flight than lost (peers that see votes for
                # it and lack it also fetch it, CONSENSUS.md §10).
                out.append(Send(None, ProposalMsg(prop)))
            votes = self.hs.latest_votes()
            if votes:
                out.append(Send(None, VoteMsg(votes)))
        return out

    # ------------------------------------------------------------------ consensus effects
    def _run(self, effects: list[Effect]) -> list[NodeEffect]:
        out: list[NodeEffect] = []
        for e in effects:
            if isinstance(e, PersistSignState):
                self.sign_state = e.state
                if e.lock is not None:
                    self.lock = e.lock
                out.append(e)
            elif isinstance(e, Broadcast):
                m = e.msg
                if isinstance(m, Proposal):
                    self._proposal_sent = (m.height, m.round, self.now_ms)
                out.append(Send(None, ProposalMsg(m) if isinstance(m, Proposal) else VoteMsg([m])))
            elif isinstance(e, ScheduleTimeout):
                out.append(SetTimer("consensus", e.height, e.round, e.step, e.delay_ms))
            elif isinstance(e, EvidenceFound):
                k = e.evidence.key()
                if k not in self.committed_evidence and len(self.evidence_pool) < MAX_EVIDENCE_POOL:
                    self.evidence_pool[k] = e.evidence
                    out.append(Send(None, EvidenceMsg(e.evidence)))
                    out.append(NodeEvent("equivocation", e.evidence.vote_a.validator.hex()))
            elif isinstance(e, Decide):
                out += self._commit_block(e.block, e.commit, synced=False)
            elif isinstance(e, NeedValue):
                # The engine's getValue(): answered within this step, so the
                # proposal goes out with the effects that asked for it.
                if e.height == self.hs.height and not self.waiting_commit:
                    block = self._build_block(e.height)
                    out += self._run(
                        self.hs.on_value(e.round, block, self._validity(block), self.now_ms)
                    )
            elif (
                isinstance(e, ValidateValue)
                and e.height == self.hs.height
                and not self.waiting_commit
            ):
                out += self._run(self.hs.on_validity(e.round, self._validity(e.block), self.now_ms))
        return out

    def _apply_decided(self, block: Block, commit: Commit) -> tuple[list[Receipt], bytes]:
        prev_vals = self.vals
        self.state, receipts, app_hash = apply_block(
            self.state, block.header, block.txs, self.sig_cache, evidence=block.evidence
        )
        for ev in block.evidence:
            k = ev.key()
            self.committed_evidence.add(k)
            self.evidence_pool.pop(k, None)
        # Pooled evidence can go stale (its validator jailed or too old): drop it.
        pool = self.evidence_pool
        stale = [k for k in sorted(pool) if self.check_evidence(pool[k]) is not EvidenceVerdict.OK]
        for k in stale:
            del self.evidence_pool[k]
        self.mempool.update(block.txs, self.state, self.now_ms)
        self.last_block_hash = block.hash
        self.last_block_time_ms = block.header.time_ms
        self.last_commit = commit
        self._prev_vals = prev_vals
        next_vals = validator_set_for(self.state, self.state.height + 1)
        self.priorities = next_height_priorities(self.priorities, prev_vals, next_vals)
        self.vals = next_vals
        return receipts, app_hash

    def resume(self, rp: ResumePoint) -> None:
        """Continue from what a shell stored (the state after its latest block);
        the one restart path of the daemon and the simulator. Call before Start.
        The sign state given to the constructor keeps us from double-signing."""
        state, last_block, last_commit = rp.state, rp.block, rp.commit
        priorities: Priorities = tuple(rp.priorities)
        if state.height != last_block.header.height:
            raise ValueError("snapshot state and last block are at different heights")
        self.state = state
        self.last_block_hash = last_block.hash
        self.last_block_time_ms = last_block.header.time_ms
        self.last_commit = last_commit
        self._prev_vals = validator_set_for(state, state.height)
        self.vals = validator_set_for(state, state.height + 1)
        self.priorities = priorities
        self.hs = self._new_height(self.height)

    def _commit_block(self, block: Block, commit: Commit, synced: bool) -> list[NodeEffect]:
        """Execute a decided block and persist it; the next height starts after
        timeout_commit (or at once when catching up)."""
        vals = self.vals
        receipts, app_hash = self._apply_decided(block, commit)
        if synced:
            self._remember_commit(commit, vals)
        st = self.state
        out: list[NodeEffect] = [
            PersistBlock(
                block,
                commit,
                receipts,
                app_hash,
                [(k, st.get(k)) for k in st.last_writes],
                list(st.last_events),
                self.priorities,
                [(v.pubkey, v.power) for v in self.vals.members],
            )
        ]
        out += self._tss_duties()
        if synced:
            out += self._start_next_height()
        else:
            self.waiting_commit = True
            self._commit_armed = True
            out.append(
                SetTimer("commit", block.header.height, 0, "", self.config.timeouts.commit_ms)
            )
        return out

    def _tss_duties(self) -> list[NodeEffect]:
        """What the ledger now asks of this validator's key share (SPEC §16),
        done from the newest block only: while catching up, older blocks'
        duties are stale."""
        if self.tss is None or self.key is None or self.sync_target > self.state.height:
            return []
        res = self.tss.on_commit(self.state)
        out: list[NodeEffect] = []
        if res.dirty:
            out.append(PersistTss(self.tss.secrets_blob()))
        out += [NodeEvent(kind, detail) for kind, detail in res.events]
        for body in res.bodies:
            nonce = self.next_nonce(self.key.address)
            raw = encode_tx(
                sign_tx(self.key, self.chain_id, nonce, self.state.policy.min_tx_fee, body)
            )
            verdict, eff = self._submit(raw)
            if verdict.verdict != Code.OK:
                out.append(NodeEvent("tss_tx_refused", f"{type(body).__name__}: {verdict.why}"))
            out += eff
        return out

    def _start_next_height(self) -> list[NodeEffect]:
        if not self.waiting_commit and self.hs.height == self.height:
            return []
        self.waiting_commit = False
        self._remember_votes(self.hs)
        self.hs = self._new_height(self.height)
        out = self._run(self.hs.start(self.now_ms))
        pending, self.future = self.future, []
        for h, m in pending:
            if h == self.height:
                eff = (
                    self.hs.on_proposal(m, self.now_ms)
                    if isinstance(m, Proposal)
                    else self.hs.on_vote(m, self.now_ms)
                )
                out += self._run(eff)
            elif h > self.height and len(self.future) < MAX_PENDING_FUTURE:
                self.future.append((h, m))
        return out

    # ------------------------------------------------------------------ queries
    # What a shell may read between steps. It never writes into the core, and
    # reads nothing else: the RPC methods, the DV checker and the metrics all
    # come through here.
    @property
    def ledger(self) -> State:
        """The state after the last committed block (read-only)."""
        return self.state

    @property
    def validators(self) -> ValidatorSet:
        """The set that runs consensus at the height being decided."""
        return self.vals

    def status(self) -> NodeStatus:
        hs = self.hs
        return NodeStatus(
            height=self.height,
            round=hs.round,
            step=hs.step,
            waiting_for=self.waiting_for(),
            last_progress_ms=self.last_progress_ms,
            liveness_violations=self.liveness_violations,
            sign_state=self.sign_state,
            mempool_txs=len(self.mempool),
            sync_target=self.sync_target,
            is_validator=self.is_validator,
        )

    def mempool_full(self) -> bool:
        """A client's new transaction would be refused as MEMPOOL_FULL: lets a
        shell refuse at intake, before it parses or queues anything (issue 12)."""
        return self.mempool.full(local=True)

    def tx_pending(self, tx_hash: bytes) -> bool:
        return tx_hash in self.mempool.by_hash

    def tx_dropped(self, tx_hash: bytes) -> str | None:
        """Why this node dropped a transaction it had accepted, if it did."""
        return self.mempool.dropped_why(tx_hash)

    def pending_count(self, address: bytes) -> int:
        """How many of ``address``'s transactions wait in the mempool."""
        return len(self.mempool.by_sender.get(address, {}))

    def next_nonce(self, address: bytes) -> int:
        """The committed nonce plus the run of ``address``'s txs already pending."""
        acct = self.state.account(address)
        n: int = acct.nonce if acct else 0
        pending = self.mempool.by_sender.get(address, {})
        while n in pending:
            n += 1
        return n

    _prev_vals: ValidatorSet


@dataclass(frozen=True)
class NodeStatus:
    height: int  # being decided: last committed + 1
    round: int
    step: str
    waiting_for: str
    last_progress_ms: int
    liveness_violations: int
    sign_state: SignState
    mempool_txs: int
    sync_target: int
    is_validator: bool

"""Step-table tests of the Tendermint round state machine (dpkid/core/consensus/engine.py).

In the style of informalsystems/malachite's core-state-machine tests: every test is
a table of steps, each an input (start, a proposal, votes, a timeout or a raw
message) with the exact effects it must produce and the state it must leave
(round, step, locked round/value, valid round/value, decision). Each test's name
and docstring name the lines of Algorithm 1 of arXiv 1807.04938 it covers; the
rules as implemented are described in protocol/CONSENSUS.md §4.

Nothing is faked: validators have real Ed25519 keys (``SigningKey.from_label``),
every proposal and vote is signed over the sign-bytes of messages.py and checked
by the engine with the real verifier, and blocks are real ``Block`` values from a
tiny deterministic builder. The host's ``valid_block`` accepts the blocks of a
per-test allow-list (and only with the body the builder made for that header).

Whatever a table says, ``Harness.check`` also holds on every step's effects:

* every ``Broadcast`` of our own message is preceded by a ``PersistSignState`` for
  exactly that message (or re-sends the message of the sign state we were started
  with), and the persisted (height, round, step) only ever increases;
* we never sign two different messages for one (height, round, step), counting
  what the initial sign state says we signed before a restart;
* every signature we send verifies; every ``Decide`` carries a ``Commit`` that
  ``dpkid.core.consensus.validity.verify_commit`` accepts; every ``EvidenceFound`` holds two
  conflicting, correctly signed and ordered votes.

Validators are indexed by address order. With equal powers and fresh priorities
the proposer of round r is validator r % 4 (``test_harness_proposer_order``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec
import pytest

from dpkid.core.consensus.engine import (
    COMMITTED,
    MAX_CONFLICTING_PER_VALIDATOR,
    MAX_ROUND_AHEAD,
    PRECOMMIT_STALL,
    PRECOMMIT_STEP,
    PREVOTE_STALL,
    PREVOTE_STEP,
    PROPOSE,
    Broadcast,
    Decide,
    Effect,
    EvidenceFound,
    HeightState,
    NeedValue,
    PersistSignState,
    ScheduleTimeout,
    SignState,
    TimeoutConfig,
    ValidateValue,
)
from dpkid.core.consensus.messages import (
    PRECOMMIT,
    PREVOTE,
    Block,
    DuplicateVoteEvidence,
    Proposal,
    SignStep,
    Vote,
    proposal_sign_bytes,
    sign_bytes_of_proposal,
    sign_bytes_of_vote,
    tx_root,
    vote_sign_bytes,
)
from dpkid.core.consensus.validity import EvidenceVerdict, verify_commit
from dpkid.core.consensus.valset import (
    Priorities,
    ValidatorInfo,
    ValidatorSet,
    carry_priorities,
    initial_priorities,
    proposer_for,
)
from dpkid.core.crypto import SigningKey, sha256, verify_ed25519
from dpkid.core.node.core import NodeCore
from dpkid.core.types import Header
from dpkid.dev.devchain import dev_genesis

CHAIN = "dpkid-consensus-test"
HEIGHT = 5
T_PREV = 1_767_225_600_000  # time of the previous block: the engine's min_time_ms
T_BLOCK = T_PREV + 500  # header time of every block the builder makes
NOW = T_PREV + 2_000  # the local clock at every input, unless a test changes it
POWER = 10
TIMEOUTS = TimeoutConfig()

# The keys of dev_genesis(4), so that NodeCore.check_evidence can judge our evidence.
KEYS: tuple[SigningKey, ...] = tuple(
    sorted((SigningKey.from_label(f"validator-{i}") for i in range(4)), key=lambda k: k.address)
)
OUTSIDER = SigningKey.from_label("not-a-validator")

STEP_NAME: dict[int, str] = {s: s.name.lower() for s in SignStep}
VOTE_NAME = {PREVOTE: "prevote", PRECOMMIT: "precommit"}
VOTE_STEP = {PREVOTE: SignStep.PREVOTE, PRECOMMIT: SignStep.PRECOMMIT}
STANDARD_VALUES = frozenset({"A", "B", "C", "D", *(f"new{r}" for r in range(8))})

Row = tuple[object, ...]  # one effect, abstracted so that a table can spell it out

# ------------------------------------------------------------------ blocks


def make_block(label: str, height: int = HEIGHT) -> Block:
    """A real block, a pure function of its label (and height)."""
    body = [b"tx:" + label.encode()]
    header = Header(
        chain_id=CHAIN,
        height=height,
        time_ms=T_BLOCK,
        proposer=KEYS[0].address,
        prev_block_hash=sha256(b"block %d" % (height - 1)),
        tx_root=tx_root(body),
        app_hash=sha256(b"app %d" % (height - 1)),
        validators_hash=sha256(b"validators"),
        next_validators_hash=sha256(b"validators"),
        last_commit_hash=sha256(b"commit %d" % (height - 1)),
        evidence_hash=b"",
    )
    return Block(header, body, [], None)


class AllowListHost:
    """The node's side of the engine's requests: fresh blocks from the builder
    (NeedValue), validity from an allow-list (ValidateValue), each answered in
    the same step, as NodeCore does."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.proposed: list[tuple[int, int]] = []

    def propose_block(self, height: int, round_: int) -> Block:
        self.proposed.append((height, round_))
        return self.harness.block(f"new{round_}")

    def valid_block(self, block: Block) -> bool:
        label = self.harness.labels.get(block.hash)
        if label is None or label not in self.harness.allow:
            return False
        return block == self.harness.blocks[label]  # the body must be the one of that header

    def answer(self, hs: HeightState, eff: list[Effect], now: int) -> list[Effect]:
        out: list[Effect] = []
        for e in eff:
            out.append(e)
            if isinstance(e, NeedValue):
                assert (e.height, e.round) == (hs.height, hs.round)
                b = self.propose_block(e.height, e.round)
                out += self.answer(hs, hs.on_value(e.round, b, self.valid_block(b), now), now)
            elif isinstance(e, ValidateValue):
                ok = self.valid_block(e.block)
                out += self.answer(hs, hs.on_validity(e.round, ok, now), now)
        return out


# ------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Start:
    """HeightState.start: L10, StartRound(0)."""


@dataclass(frozen=True)
class Prop:
    """A proposal for ``round`` of block ``value``, signed by ``by`` (default: the
    round's proposer)."""

    round: int
    value: str
    pol_round: int = -1
    by: int | None = None


@dataclass(frozen=True)
class Votes:
    """Votes of one type, round and value from several validators, fed one by one."""

    type: int
    who: tuple[int, ...]
    round: int
    value: str | None


@dataclass(frozen=True)
class Timeout:
    round: int
    step: str
    height: int | None = None  # default: the harness height


@dataclass(frozen=True)
class Raw:
    """Pre-built messages (bad input, equivocation), fed one by one."""

    msgs: tuple[Proposal | Vote, ...]


Input = Start | Prop | Votes | Timeout | Raw


def pv(who: int | Iterable[int], r: int, value: str | None) -> Votes:
    return Votes(PREVOTE, (who,) if isinstance(who, int) else tuple(who), r, value)


def pc(who: int | Iterable[int], r: int, value: str | None) -> Votes:
    return Votes(PRECOMMIT, (who,) if isinstance(who, int) else tuple(who), r, value)


def raw(*msgs: Proposal | Vote) -> Raw:
    return Raw(msgs)


# ------------------------------------------------------------------ expected effects


def propose(r: int, value: str, pol_round: int = -1) -> list[Row]:
    """We propose: the guard is persisted, then the proposal is broadcast."""
    return [("persist", r, "propose", value), ("proposal", r, value, pol_round)]


def prevote(r: int, value: str | None) -> list[Row]:
    return [("persist", r, "prevote", value), ("prevote", r, value)]


def precommit(r: int, value: str | None) -> list[Row]:
    return [("persist", r, "precommit", value), ("precommit", r, value)]


def resend_precommit(r: int, value: str | None) -> list[Row]:
    """The vote of the sign state we restarted with, sent again (already durable)."""
    return [("precommit", r, value)]


def timeout(r: int, step: str) -> list[Row]:
    delay = {
        PROPOSE: TIMEOUTS.propose(r),
        PREVOTE_STEP: TIMEOUTS.prevote(r),
        PRECOMMIT_STEP: TIMEOUTS.precommit(r),
    }[step]
    return [("timeout", r, step, delay)]


def decide(r: int, value: str) -> list[Row]:
    return [("decide", r, value)]


def evidence(who: int, r: int, type_: int) -> list[Row]:
    return [("evidence", who, r, VOTE_NAME[type_])]


NOTHING: list[Row] = []


# ------------------------------------------------------------------ state


@dataclass(frozen=True)
class St:
    round: int
    step: str
    locked: tuple[int, str | None] = (-1, None)
    valid: tuple[int, str | None] = (-1, None)
    decision: str | None = None


@dataclass(frozen=True)
class Step:
    desc: str
    input: Input
    effects: Sequence[Row]
    state: St


# ------------------------------------------------------------------ the harness


@dataclass
class Harness:
    """One validator (``me``) running one height against a fixed validator set."""

    me: int | None = 3  # None: a node without a key (full node)
    powers: tuple[int, ...] = (POWER,) * 4
    sign_state: SignState = field(default_factory=SignState)
    allow: frozenset[str] = STANDARD_VALUES
    height: int = HEIGHT
    blocks: dict[str, Block] = field(default_factory=dict)
    labels: dict[bytes, str] = field(default_factory=dict)
    now: int = NOW

    def __post_init__(self) -> None:
        self.vals = ValidatorSet(
            [
                ValidatorInfo(k.address, k.public_key, p)
                for k, p in zip(KEYS, self.powers, strict=True)
            ]
        )
        self.prios: Priorities = carry_priorities(initial_priorities(self.vals), self.vals)
        self.host = AllowListHost(self)
        self.key = KEYS[self.me] if self.me is not None else None
        self.hs = HeightState(
            CHAIN,
            self.height,
            self.vals,
            self.prios,
            self.key,
            self.sign_state,
            verify_ed25519,
            TIMEOUTS,
            T_PREV,
        )
        # The double-sign bookkeeping of check(): the last durable sign state, and
        # every (height, round, step) we are known to have signed.
        self.persisted = self.sign_state
        self.signed: dict[tuple[int, int, int], tuple[bytes, bytes]] = {}
        ss = self.sign_state
        if ss.round >= 0:
            self.signed[ss.hrs()] = (ss.block_hash, ss.signature)
        self.all_effects: list[Effect] = []

    # -------------------------------------------------------------- builders
    def block(self, label: str) -> Block:
        b = self.blocks.get(label)
        if b is None:
            b = self.blocks[label] = make_block(label, self.height)
            self.labels[b.hash] = label
        return b

    def label(self, block_hash: bytes) -> str | None:
        if block_hash == b"":
            return None
        return self.labels.get(block_hash, "?" + block_hash.hex()[:8])

    def index(self, address: bytes) -> int:
        return [k.address for k in KEYS].index(address)

    def proposer(self, r: int) -> int:
        return self.index(proposer_for(self.prios, self.vals, r))

    def proposal(
        self,
        r: int,
        value: str | Block,
        pol_round: int = -1,
        by: int | None = None,
        *,
        chain_id: str = CHAIN,
        height: int | None = None,
        key: SigningKey | None = None,
    ) -> Proposal:
        blk = value if isinstance(value, Block) else self.block(value)
        k = key or KEYS[self.proposer(r) if by is None else by]
        h = self.height if height is None else height
        sig = k.sign(proposal_sign_bytes(chain_id, h, r, pol_round, blk.hash, k.address))
        return Proposal(chain_id, h, r, pol_round, blk, k.address, sig)

    def vote(
        self,
        who: int,
        type_: int,
        r: int,
        value: str | None,
        *,
        chain_id: str = CHAIN,
        height: int | None = None,
        ts: int | None = None,
        key: SigningKey | None = None,
    ) -> Vote:
        k = key or KEYS[who]
        bh = b"" if value is None else self.block(value).hash
        h = self.height if height is None else height
        t = T_BLOCK + 1 + who if ts is None else ts
        sig = k.sign(vote_sign_bytes(chain_id, type_, h, r, bh, t, k.address))
        return Vote(chain_id, type_, h, r, bh, t, k.address, sig)

    # -------------------------------------------------------------- driving
    def feed(self, inp: Input) -> list[Effect]:
        hs = self.hs
        out: list[Effect] = []

        def answered(eff: list[Effect]) -> list[Effect]:
            return self.host.answer(hs, eff, self.now)

        if isinstance(inp, Start):
            out += answered(hs.start(self.now))
        elif isinstance(inp, Prop):
            out += answered(
                hs.on_proposal(self.proposal(inp.round, inp.value, inp.pol_round, inp.by), self.now)
            )
        elif isinstance(inp, Votes):
            for who in inp.who:
                out += answered(
                    hs.on_vote(self.vote(who, inp.type, inp.round, inp.value), self.now)
                )
        elif isinstance(inp, Timeout):
            h = self.height if inp.height is None else inp.height
            out += answered(hs.on_timeout(h, inp.round, inp.step, self.now))
        else:
            for m in inp.msgs:
                out += answered(
                    hs.on_proposal(m, self.now)
                    if isinstance(m, Proposal)
                    else hs.on_vote(m, self.now)
                )
        self.check(out)
        self.all_effects += out
        if hs._started:
            # CONSENSUS.md §10.1, after every input: undecided => a timer that can
            # move this height is armed. This is what the halt at height 28 broke.
            assert hs.timer_armed(), f"no timer armed at round {hs.round} step {hs.step}"
        return out

    def summarize(self, effects: Sequence[Effect]) -> list[Row]:
        rows: list[Row] = []
        for e in effects:
            if isinstance(e, PersistSignState):
                s = e.state
                rows.append(("persist", s.round, STEP_NAME[s.step], self.label(s.block_hash)))
            elif isinstance(e, Broadcast):
                m = e.msg
                if isinstance(m, Proposal):
                    rows.append(("proposal", m.round, self.label(m.block.hash), m.pol_round))
                else:
                    rows.append((VOTE_NAME[m.type], m.round, self.label(m.block_hash)))
            elif isinstance(e, ScheduleTimeout):
                assert e.height == self.height
                if e.step in (PREVOTE_STALL, PRECOMMIT_STALL):
                    # CONSENSUS.md §10.1 stall timers accompany every prevote and
                    # precommit step; the paper's tables leave them out and
                    # test_stall_* checks them on their own.
                    continue
                rows.append(("timeout", e.round, e.step, e.delay_ms))
            elif isinstance(e, Decide):
                rows.append(("decide", e.commit.round, self.label(e.block.hash)))
            elif isinstance(e, (NeedValue, ValidateValue)):
                continue  # requests the harness answered at once (AllowListHost)
            else:
                ev = e.evidence
                a = ev.vote_a
                rows.append(("evidence", self.index(a.validator), a.round, VOTE_NAME[a.type]))
        return rows

    def state(self) -> St:
        hs = self.hs
        return St(
            round=hs.round,
            step=hs.step,
            # The lock is on a hash (a restarted validator may not hold the block).
            locked=(hs.locked_round, self.label(hs.locked_hash) if hs.locked_round >= 0 else None),
            valid=(hs.valid_round, self._label_of(hs.valid_value)),
            decision=self._label_of(hs.decision),
        )

    def _label_of(self, b: Block | None) -> str | None:
        return None if b is None else self.label(b.hash)

    # -------------------------------------------------------------- invariants
    def check(self, effects: Sequence[Effect]) -> None:
        """The invariants every effect list must satisfy (see the module docstring)."""
        for e in effects:
            if isinstance(e, PersistSignState):
                assert e.state.hrs() > self.persisted.hrs(), "sign state must only increase"
                assert e.state.height == self.height
                self.persisted = e.state
            elif isinstance(e, Broadcast):
                self._check_own_message(e.msg)
            elif isinstance(e, Decide):
                c = e.commit
                assert c.height == self.height and c.block_hash == e.block.hash
                assert verify_commit(CHAIN, c, self.vals, e.block.hash, verify_ed25519)
                assert [s.validator for s in c.sigs] == sorted({s.validator for s in c.sigs})
            elif isinstance(e, EvidenceFound):
                check_evidence(self.vals, e.evidence)

    def _check_own_message(self, m: Proposal | Vote) -> None:
        assert self.key is not None, "a node without a key may not send"
        assert m.chain_id == CHAIN and m.height == self.height
        if isinstance(m, Proposal):
            hrs = (m.height, m.round, SignStep.PROPOSE)
            bh, ts = m.block.hash, 0
            assert m.proposer == self.key.address
            assert verify_ed25519(self.key.public_key, sign_bytes_of_proposal(m), m.sig)
            assert m.pol_round < m.round
        else:
            hrs = (m.height, m.round, VOTE_STEP[m.type])
            bh, ts = m.block_hash, m.timestamp_ms
            assert m.validator == self.key.address
            assert verify_ed25519(self.key.public_key, sign_bytes_of_vote(m), m.sig)
            assert ts > T_PREV, "BFT time: a vote is later than the previous block"
        # PersistSignState comes BEFORE the Broadcast it guards: the last durable
        # sign state is exactly this message.
        p = self.persisted
        assert (p.hrs(), p.block_hash, p.timestamp_ms, p.signature) == (hrs, bh, ts, m.sig), (
            f"broadcast of {hrs} not guarded by the last persisted sign state {p.hrs()}"
        )
        prior = self.signed.setdefault(hrs, (bh, m.sig))
        assert prior == (bh, m.sig), f"double sign at {hrs}"


def check_evidence(vals: ValidatorSet, ev: DuplicateVoteEvidence) -> None:
    a, b = ev.vote_a, ev.vote_b
    assert (a.chain_id, a.validator, a.height, a.round, a.type) == (
        b.chain_id,
        b.validator,
        b.height,
        b.round,
        b.type,
    )
    assert a.block_hash < b.block_hash
    v = vals.get(a.validator)
    assert v is not None
    assert verify_ed25519(v.pubkey, sign_bytes_of_vote(a), a.sig)
    assert verify_ed25519(v.pubkey, sign_bytes_of_vote(b), b.sig)


def run(h: Harness, steps: Sequence[Step]) -> None:
    for i, s in enumerate(steps):
        got = h.summarize(h.feed(s.input))
        assert got == list(s.effects), (
            f"step {i} ({s.desc}): effects\n  got  {got}\n  want {list(s.effects)}"
        )
        assert h.state() == s.state, (
            f"step {i} ({s.desc}): state\n  got  {h.state()}\n  want {s.state}"
        )


def own_vote(h: Harness, type_: int, r: int) -> Vote:
    """The last vote of that type and round we broadcast."""
    for e in reversed(h.all_effects):
        m = e.msg if isinstance(e, Broadcast) else None
        if isinstance(m, Vote) and (m.type, m.round) == (type_, r):
            return m
    raise AssertionError(f"no own {VOTE_NAME[type_]} in round {r}")


def signed_state(h: Harness, type_: int, r: int, value: str, ts: int) -> SignState:
    """The sign state a validator persisted after signing that vote (before a restart)."""
    assert h.key is not None
    bh = h.block(value).hash
    sig = h.key.sign(vote_sign_bytes(CHAIN, type_, h.height, r, bh, ts, h.key.address))
    # A non-nil precommit locks (L36-L39), and the engine signs under that lock.
    lock = (r, bh) if type_ == PRECOMMIT and bh else (-1, b"")
    return SignState(h.height, r, VOTE_STEP[type_], bh, ts, sig, *lock)


# ------------------------------------------------------------------ harness sanity


def test_harness_proposer_order() -> None:
    """With equal powers and fresh priorities, validator r % 4 proposes round r."""
    h = Harness()
    assert [h.proposer(r) for r in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [k.address for k in KEYS] == sorted(k.address for k in KEYS)


def test_harness_blocks_are_deterministic_and_valid_per_allow_list() -> None:
    h = Harness(allow=frozenset({"A"}))
    assert h.block("A") == make_block("A") and h.block("A").hash != h.block("B").hash
    assert h.host.valid_block(h.block("A")) and not h.host.valid_block(h.block("B"))


# ------------------------------------------------------------------ L11-L21 StartRound


def test_L11_L21_non_proposer_schedules_linear_timeout_propose_proposer_proposes_fresh() -> None:
    """L11-L13 set round and step; L21: a non-proposer schedules OnTimeoutPropose
    after timeoutPropose(r) = 1000 + 500 r ms; L14-L19: the proposer of round 3 (us)
    has no validValue and proposes a fresh block from the host (getValue, L18)."""
    h = Harness(me=3)
    run(
        h,
        [
            Step("L21: round 0, not proposer", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step(
                "L65-L67 -> round 1",
                Timeout(0, PRECOMMIT_STEP),
                timeout(1, PROPOSE),
                St(1, PROPOSE),
            ),
            Step(
                "L65-L67 -> round 2",
                Timeout(1, PRECOMMIT_STEP),
                timeout(2, PROPOSE),
                St(2, PROPOSE),
            ),
            Step(
                "L14-L19: round 3, we propose a fresh block; L22 on our own proposal",
                Timeout(2, PRECOMMIT_STEP),
                propose(3, "new3") + prevote(3, "new3"),
                St(3, PREVOTE_STEP),
            ),
            Step(
                "L21: round 4, not proposer",
                Timeout(3, PRECOMMIT_STEP),
                timeout(4, PROPOSE),
                St(4, PROPOSE),
            ),
        ],
    )
    assert h.host.proposed == [(HEIGHT, 3)]
    linear = TimeoutConfig(propose_ms=1000, propose_delta_ms=500)
    assert [linear.propose(r) for r in range(3)] == [1000, 1500, 2000]


def test_L14_L19_proposer_at_start_proposes_fresh_block() -> None:
    """L10-L19: the proposer of round 0 proposes getValue() with validRound -1 and,
    as every node does with the proposal of its round, prevotes it (L22-L24)."""
    h = Harness(me=0)
    run(h, [Step("L14-L19", Start(), propose(0, "new0") + prevote(0, "new0"), St(0, PREVOTE_STEP))])
    assert h.host.proposed == [(HEIGHT, 0)]


def test_L15_L16_proposer_reproposes_valid_value_with_valid_round() -> None:
    """L15-L16: a proposer with a validValue proposes it with validRound as pol_round
    (and does not ask the host for a block); its own re-proposal then passes L28-L30."""
    h = Harness(me=1)
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step(
                "L34 + L36-L43: polka for A, lock",
                pv((0, 2), 0, "A"),
                timeout(0, PREVOTE_STEP) + precommit(0, "A"),
                St(0, PRECOMMIT_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L47: 2f+1 precommits of anything",
                pc((0, 2, 3), 0, None),
                timeout(0, PRECOMMIT_STEP),
                St(0, PRECOMMIT_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L65-L67, L15-L16: propose validValue A with validRound 0; L28-L30",
                Timeout(0, PRECOMMIT_STEP),
                propose(1, "A", pol_round=0) + prevote(1, "A"),
                St(1, PREVOTE_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
        ],
    )
    assert h.host.proposed == []


# ------------------------------------------------------------------ L22-L27


def test_L22_L24_L27_valid_proposal_is_prevoted() -> None:
    """L22-L24, L27: a valid proposal with validRound -1 while not locked."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
        ],
    )


def test_L22_L26_invalid_proposal_is_prevoted_nil() -> None:
    """L22-L23, L25-L27: valid(v) fails -> prevote nil."""
    h = Harness(allow=frozenset({"B"}))
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L25-L26", Prop(0, "A"), prevote(0, None), St(0, PREVOTE_STEP)),
        ],
    )


def test_L22_only_while_step_is_propose_but_L36_uses_late_proposal() -> None:
    """L22 "while step = propose": a proposal arriving after OnTimeoutPropose (L57-L60)
    gets no prevote; it is still the v of L36, which locks on it when the polka comes."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L57-L60", Timeout(0, PROPOSE), prevote(0, None), St(0, PREVOTE_STEP)),
            Step("L22 does not fire", Prop(0, "A"), NOTHING, St(0, PREVOTE_STEP)),
            Step(
                "L34 at the third prevote; L36-L41 at the fourth",
                pv((0, 1, 2), 0, "A"),
                timeout(0, PREVOTE_STEP) + precommit(0, "A"),
                St(0, PRECOMMIT_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
        ],
    )


def test_L23_locked_on_the_same_value_prevotes_it() -> None:
    """L23 "lockedValue = v": locked on A in round 0, a fresh proposal of A in round 1
    (validRound -1) is prevoted."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step(
                "L36-L41 lock A",
                pv((0, 1), 0, "A"),
                timeout(0, PREVOTE_STEP) + precommit(0, "A"),
                St(0, PRECOMMIT_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L65-L67",
                Timeout(0, PRECOMMIT_STEP),
                timeout(1, PROPOSE),
                St(1, PROPOSE, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L23-L24: locked on v",
                Prop(1, "A"),
                prevote(1, "A"),
                St(1, PREVOTE_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
        ],
    )


# ------------------------------------------------------------------ locking (L22-L43)


def test_locking_L22_L26_refuses_conflicting_value_L28_L30_unlocks_on_later_polka() -> None:
    """Locked on A in round 0 (L36-L41), a proposal of B in round 1 without a polka is
    prevoted nil (L22-L26); in round 2 a re-proposal of B with pol_round 1 waits for
    2f+1 prevotes for B of round 1 (L28) and, since lockedRound 0 <= 1, prevotes B
    (L29-L30): the lock is released. A new polka then locks B (L36-L41) and 2f+1
    precommits decide it (L49-L51)."""
    h = Harness(me=3)
    a0 = St(0, PRECOMMIT_STEP, locked=(0, "A"), valid=(0, "A"))
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step(
                "L34, L36-L41", pv((0, 1), 0, "A"), timeout(0, PREVOTE_STEP) + precommit(0, "A"), a0
            ),
            Step("L47", pc((0, 1, 2), 0, None), timeout(0, PRECOMMIT_STEP), a0),
            Step(
                "L65-L67",
                Timeout(0, PRECOMMIT_STEP),
                timeout(1, PROPOSE),
                St(1, PROPOSE, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L22, L25-L26: locked on A, B fresh -> nil",
                Prop(1, "B"),
                prevote(1, None),
                St(1, PREVOTE_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L47",
                pc((0, 1, 2), 1, None),
                timeout(1, PRECOMMIT_STEP),
                St(1, PREVOTE_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L65-L67",
                Timeout(1, PRECOMMIT_STEP),
                timeout(2, PROPOSE),
                St(2, PROPOSE, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L28: re-proposal of B, pol_round 1, no polka yet",
                Prop(2, "B", pol_round=1),
                NOTHING,
                St(2, PROPOSE, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L28: f+1 prevotes for B of round 1 are not 2f+1",
                pv((0, 1), 1, "B"),
                NOTHING,
                St(2, PROPOSE, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L28-L30: 2f+1 prevotes for B of round 1, lockedRound 0 <= 1 -> prevote B",
                pv(2, 1, "B"),
                prevote(2, "B"),
                St(2, PREVOTE_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L34, L36-L43: polka for B in round 2 re-locks",
                pv((0, 1), 2, "B"),
                timeout(2, PREVOTE_STEP) + precommit(2, "B"),
                St(2, PRECOMMIT_STEP, locked=(2, "B"), valid=(2, "B")),
            ),
            Step(
                "L49-L51",
                pc((0, 1), 2, "B"),
                decide(2, "B"),
                St(2, COMMITTED, locked=(2, "B"), valid=(2, "B"), decision="B"),
            ),
        ],
    )


# ------------------------------------------------------------------ L28-L33


def to_round(r: int) -> list[Step]:
    """Start, then OnTimeoutPrecommit (L65-L67) until round r; we are validator 3."""
    steps = [Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE))]
    for k in range(r):
        steps.append(
            Step(
                f"L65-L67 -> {k + 1}",
                Timeout(k, PRECOMMIT_STEP),
                timeout(k + 1, PROPOSE),
                St(k + 1, PROPOSE),
            )
        )
    return steps


def test_L28_L30_reproposal_backed_by_polka_is_prevoted() -> None:
    """L28-L30, L33: not locked, a re-proposal whose pol_round has 2f+1 prevotes."""
    h = Harness()
    run(
        h,
        [
            *to_round(1),
            Step(
                "L28: no polka of round 0 yet", Prop(1, "A", pol_round=0), NOTHING, St(1, PROPOSE)
            ),
            Step("L28-L30", pv((0, 1, 2), 0, "A"), prevote(1, "A"), St(1, PREVOTE_STEP)),
        ],
    )


def test_L28_L32_invalid_reproposal_is_prevoted_nil() -> None:
    """L28-L29, L31-L33: the polka is there but valid(v) fails -> prevote nil."""
    h = Harness(allow=frozenset({"B"}))
    run(
        h,
        [
            *to_round(1),
            Step(
                "polka of round 0 (a past round: no rule)",
                pv((0, 1, 2), 0, "A"),
                NOTHING,
                St(1, PROPOSE),
            ),
            Step("L31-L32", Prop(1, "A", pol_round=0), prevote(1, None), St(1, PREVOTE_STEP)),
        ],
    )


def test_L28_needs_2f_plus_1_prevotes_of_pol_round() -> None:
    """L28: f+1 prevotes for v in round vr are not enough; the proposal waits for
    OnTimeoutPropose (L57-L60), which prevotes nil."""
    h = Harness()
    run(
        h,
        [
            *to_round(1),
            Step("L28 waits", Prop(1, "A", pol_round=0), NOTHING, St(1, PROPOSE)),
            Step("f+1 only", pv((0, 1), 0, "A"), NOTHING, St(1, PROPOSE)),
            Step("prevotes for another value", pv(2, 0, "B"), NOTHING, St(1, PROPOSE)),
            Step("L57-L60", Timeout(1, PROPOSE), prevote(1, None), St(1, PREVOTE_STEP)),
        ],
    )


def test_L29_locked_on_v_with_lock_round_above_vr_prevotes_v() -> None:
    """L29 "lockedValue = v": locked on A in round 1, a re-proposal of A in round 2 with
    pol_round 0 (< lockedRound) is prevoted because it is the locked value."""
    h = Harness()
    a1 = St(1, PRECOMMIT_STEP, locked=(1, "A"), valid=(1, "A"))
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L57-L60", Timeout(0, PROPOSE), prevote(0, None), St(0, PREVOTE_STEP)),
            Step(
                "L34; polka for A but no proposal: no L36",
                pv((0, 1, 2), 0, "A"),
                timeout(0, PREVOTE_STEP),
                St(0, PREVOTE_STEP),
            ),
            Step("L61-L64", Timeout(0, PREVOTE_STEP), precommit(0, None), St(0, PRECOMMIT_STEP)),
            Step("L47", pc((0, 1, 2), 0, None), timeout(0, PRECOMMIT_STEP), St(0, PRECOMMIT_STEP)),
            Step("L65-L67", Timeout(0, PRECOMMIT_STEP), timeout(1, PROPOSE), St(1, PROPOSE)),
            Step("L28-L30", Prop(1, "A", pol_round=0), prevote(1, "A"), St(1, PREVOTE_STEP)),
            Step(
                "L34, L36-L43", pv((0, 1), 1, "A"), timeout(1, PREVOTE_STEP) + precommit(1, "A"), a1
            ),
            Step("L47", pc((0, 1, 2), 1, None), timeout(1, PRECOMMIT_STEP), a1),
            Step(
                "L65-L67",
                Timeout(1, PRECOMMIT_STEP),
                timeout(2, PROPOSE),
                St(2, PROPOSE, locked=(1, "A"), valid=(1, "A")),
            ),
            Step(
                "L29-L30: lockedRound 1 > vr 0 but lockedValue = v",
                Prop(2, "A", pol_round=0),
                prevote(2, "A"),
                St(2, PREVOTE_STEP, locked=(1, "A"), valid=(1, "A")),
            ),
        ],
    )


def test_L29_L32_locked_on_other_value_in_higher_round_prevotes_nil() -> None:
    """L28-L29, L31-L32: locked on A in round 1; a re-proposal of B with pol_round 0
    backed by 2f+1 prevotes of round 0 is prevoted nil (lockedRound 1 > vr 0)."""
    h = Harness()
    a1 = St(1, PRECOMMIT_STEP, locked=(1, "A"), valid=(1, "A"))
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L57-L60", Timeout(0, PROPOSE), prevote(0, None), St(0, PREVOTE_STEP)),
            Step(
                "L47 (at any step)",
                pc((0, 1, 2), 0, None),
                timeout(0, PRECOMMIT_STEP),
                St(0, PREVOTE_STEP),
            ),
            Step("L65-L67", Timeout(0, PRECOMMIT_STEP), timeout(1, PROPOSE), St(1, PROPOSE)),
            Step("L22-L24", Prop(1, "A"), prevote(1, "A"), St(1, PREVOTE_STEP)),
            Step(
                "L34, L36-L43", pv((0, 1), 1, "A"), timeout(1, PREVOTE_STEP) + precommit(1, "A"), a1
            ),
            Step("L47", pc((0, 1, 2), 1, None), timeout(1, PRECOMMIT_STEP), a1),
            Step(
                "L65-L67",
                Timeout(1, PRECOMMIT_STEP),
                timeout(2, PROPOSE),
                St(2, PROPOSE, locked=(1, "A"), valid=(1, "A")),
            ),
            Step(
                "L28: waits for the polka",
                Prop(2, "B", pol_round=0),
                NOTHING,
                St(2, PROPOSE, locked=(1, "A"), valid=(1, "A")),
            ),
            Step(
                "L31-L32: polka for B in round 0 < lockedRound 1",
                pv((0, 1, 2), 0, "B"),
                prevote(2, None),
                St(2, PREVOTE_STEP, locked=(1, "A"), valid=(1, "A")),
            ),
        ],
    )


# ------------------------------------------------------------------ L34-L35, L44-L46, L61-L64


def test_L34_L35_prevote_timeout_scheduled_once_then_L61_L64() -> None:
    """L34-L35: 2f+1 prevotes for anything (no polka for one value) schedule
    OnTimeoutPrevote(h, r) after 500 + 250 r ms, for the first time only;
    L61-L64 then precommit nil."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step("2 of 4", pv(0, 0, "A"), NOTHING, St(0, PREVOTE_STEP)),
            Step(
                "L34-L35: 3 of 4 (A, A, nil)",
                pv(1, 0, None),
                timeout(0, PREVOTE_STEP),
                St(0, PREVOTE_STEP),
            ),
            Step("not again: 4 of 4 (A, A, nil, B)", pv(2, 0, "B"), NOTHING, St(0, PREVOTE_STEP)),
            Step("L61-L64", Timeout(0, PREVOTE_STEP), precommit(0, None), St(0, PRECOMMIT_STEP)),
        ],
    )


def test_L34_in_a_later_round_uses_that_rounds_timeout() -> None:
    """L34-L35 fire once per round; timeoutPrevote(2) = 500 + 2 * 250."""
    h = Harness()
    run(
        h,
        [
            *to_round(2),
            Step("L57-L60", Timeout(2, PROPOSE), prevote(2, None), St(2, PREVOTE_STEP)),
            Step("L34", pv((0, 1), 2, "A"), timeout(2, PREVOTE_STEP), St(2, PREVOTE_STEP)),
        ],
    )
    assert TIMEOUTS.prevote(2) == 1000


def test_L44_L46_nil_polka_precommits_nil() -> None:
    """L44-L46: 2f+1 prevotes for nil while at prevote -> precommit nil (no lock)."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step(
                "L34 at 3 of 4; L44 at 3 nil",
                pv((0, 1, 2), 0, None),
                timeout(0, PREVOTE_STEP) + precommit(0, None),
                St(0, PRECOMMIT_STEP),
            ),
            Step("stale L61", Timeout(0, PREVOTE_STEP), NOTHING, St(0, PRECOMMIT_STEP)),
        ],
    )


# ------------------------------------------------------------------ L36-L43


def test_L36_L41_polka_at_prevote_step_locks_and_precommits() -> None:
    """L36-L43 at step prevote: lockedValue/Round, precommit id(v), step precommit,
    validValue/Round. "For the first time": later prevotes fire nothing."""
    h = Harness()
    locked = St(0, PRECOMMIT_STEP, locked=(0, "A"), valid=(0, "A"))
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step(
                "L34-L35, L36-L43",
                pv((0, 1), 0, "A"),
                timeout(0, PREVOTE_STEP) + precommit(0, "A"),
                locked,
            ),
            Step("first time only", pv(2, 0, "A"), NOTHING, locked),
        ],
    )


def test_L36_L42_L43_polka_after_precommit_step_only_updates_valid_value() -> None:
    """L36 with step = precommit (we precommitted nil on OnTimeoutPrevote): L37-L41 are
    skipped, only validValue/validRound are set (L42-L43); no vote, no lock."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L57-L60", Timeout(0, PROPOSE), prevote(0, None), St(0, PREVOTE_STEP)),
            Step("L34", pv((0, 1), 0, "A"), timeout(0, PREVOTE_STEP), St(0, PREVOTE_STEP)),
            Step("L61-L64", Timeout(0, PREVOTE_STEP), precommit(0, None), St(0, PRECOMMIT_STEP)),
            Step("polka for A, but no proposal yet", pv(2, 0, "A"), NOTHING, St(0, PRECOMMIT_STEP)),
            Step("L36, L42-L43", Prop(0, "A"), NOTHING, St(0, PRECOMMIT_STEP, valid=(0, "A"))),
        ],
    )


def test_L36_needs_valid_value() -> None:
    """L36 "while valid(v)": a polka for an invalid proposal neither locks nor sets
    validValue; OnTimeoutPrevote then precommits nil (L61-L64)."""
    h = Harness(allow=frozenset())
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L25-L26", Prop(0, "A"), prevote(0, None), St(0, PREVOTE_STEP)),
            Step("L34 only", pv((0, 1, 2), 0, "A"), timeout(0, PREVOTE_STEP), St(0, PREVOTE_STEP)),
            Step("L61-L64", Timeout(0, PREVOTE_STEP), precommit(0, None), St(0, PRECOMMIT_STEP)),
        ],
    )


# ------------------------------------------------------------------ L47-L48, L65-L67


def test_L47_L48_precommit_timeout_scheduled_once_at_any_step() -> None:
    """L47-L48: 2f+1 precommits for anything schedule OnTimeoutPrecommit after
    500 + 250 r ms, once, whatever our step (here: propose); L65-L67 then start r+1."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("2 of 4", pc((0, 1), 0, None), NOTHING, St(0, PROPOSE)),
            Step("L47-L48: 3 of 4", pc(2, 0, "A"), timeout(0, PRECOMMIT_STEP), St(0, PROPOSE)),
            Step("L57-L60", Timeout(0, PROPOSE), prevote(0, None), St(0, PREVOTE_STEP)),
            Step(
                "L34; L44 -> our precommit makes 4 of 4, no second L47",
                pv((0, 1), 0, None),
                timeout(0, PREVOTE_STEP) + precommit(0, None),
                St(0, PRECOMMIT_STEP),
            ),
            Step("L65-L67", Timeout(0, PRECOMMIT_STEP), timeout(1, PROPOSE), St(1, PROPOSE)),
        ],
    )


# ------------------------------------------------------------------ L49-L54


def test_L49_L54_decide_in_current_round() -> None:
    """L49-L51: proposal + 2f+1 precommits for it in our round -> Decide with a commit
    that verify_commit accepts; afterwards nothing fires any more."""
    h = Harness()
    done = St(0, COMMITTED, locked=(0, "A"), valid=(0, "A"), decision="A")
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step(
                "L34, L36-L43",
                pv((0, 1), 0, "A"),
                timeout(0, PREVOTE_STEP) + precommit(0, "A"),
                St(0, PRECOMMIT_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
            Step("L49-L51", pc((0, 1), 0, "A"), decide(0, "A"), done),
            Step("decided: timeouts do nothing", Timeout(0, PRECOMMIT_STEP), NOTHING, done),
            Step("decided: votes do nothing", pc(2, 0, "A"), NOTHING, done),
            Step("decided: higher rounds do nothing", pv((0, 1, 2), 5, None), NOTHING, done),
        ],
    )
    d = [e for e in h.all_effects if isinstance(e, Decide)]
    assert len(d) == 1
    assert [h.index(s.validator) for s in d[0].commit.sigs] == [0, 1, 3]
    assert d[0].commit.round == 0 and h.hs.decided_round == 0


def test_L49_decides_without_own_vote_when_proposal_arrives_last() -> None:
    """L49: the precommits can come before the proposal; L47 fires on them first."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L47", pc((0, 1, 2), 0, "A"), timeout(0, PRECOMMIT_STEP), St(0, PROPOSE)),
            Step("L49-L51", Prop(0, "A"), decide(0, "A"), St(0, COMMITTED, decision="A")),
        ],
    )


def test_L50_invalid_value_is_not_decided() -> None:
    """L50: 2f+1 precommits for an invalid value do not decide it."""
    h = Harness(allow=frozenset({"B"}))
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L47", pc((0, 1, 2), 0, "A"), timeout(0, PRECOMMIT_STEP), St(0, PROPOSE)),
            Step("no L49; L25-L26", Prop(0, "A"), prevote(0, None), St(0, PREVOTE_STEP)),
        ],
    )


def test_L49_partition_decides_a_past_round() -> None:
    """Partition-like: we never saw round 0's proposal, moved to round 1 (L55-L56), and
    then round 0's proposal and precommits arrive: L49 decides round 0 from round 1."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L57-L60", Timeout(0, PROPOSE), prevote(0, None), St(0, PREVOTE_STEP)),
            Step(
                "L55-L56: f+1 of round 1", pv((0, 1), 1, None), timeout(1, PROPOSE), St(1, PROPOSE)
            ),
            Step("late proposal of round 0", Prop(0, "A"), NOTHING, St(1, PROPOSE)),
            Step("late precommits, 2 of 4", pc((0, 1), 0, "A"), NOTHING, St(1, PROPOSE)),
            Step(
                "L49-L51 for round 0", pc(2, 0, "A"), decide(0, "A"), St(1, COMMITTED, decision="A")
            ),
        ],
    )
    assert h.hs.decided_round == 0


def test_L49_decides_a_future_round_reached_through_L55() -> None:
    """A decision in a round ahead of ours: the first f+1 of its messages move us there
    (L55-L56, the proposal counts), L22 prevotes its proposal, and the 2f+1-th
    precommit decides (L49-L51). (f+1 < 2f+1, so with one message per input the skip
    always comes first.)"""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("round 2 proposal: f of 3f+1", Prop(2, "A"), NOTHING, St(0, PROPOSE)),
            Step(
                "L55-L56 with proposer + one precommit, L22-L24",
                pc(0, 2, "A"),
                timeout(2, PROPOSE) + prevote(2, "A"),
                St(2, PREVOTE_STEP),
            ),
            Step("2 of 4 precommits", pc(1, 2, "A"), NOTHING, St(2, PREVOTE_STEP)),
            Step("L49-L51", pc(2, 2, "A"), decide(2, "A"), St(2, COMMITTED, decision="A")),
        ],
    )


def test_full_node_without_key_decides_but_never_sends() -> None:
    """A node without a key runs the same rules (L22, L36, L49) but signs nothing."""
    h = Harness(me=None)
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L27 without a vote", Prop(0, "A"), NOTHING, St(0, PREVOTE_STEP)),
            Step(
                "L34, L36-L43",
                pv((0, 1, 2), 0, "A"),
                timeout(0, PREVOTE_STEP),
                St(0, PRECOMMIT_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "L49",
                pc((0, 1, 2), 0, "A"),
                decide(0, "A"),
                St(0, COMMITTED, locked=(0, "A"), valid=(0, "A"), decision="A"),
            ),
        ],
    )


# ------------------------------------------------------------------ L55-L56


def test_L55_L56_f_plus_1_senders_of_higher_round_skip_f_do_not() -> None:
    """L55: f+1 of the power sending any message of a higher round starts that round.
    f (one validator of four) is not enough, however many messages it sends; the
    round's proposal counts as a message of its proposer."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("f: one prevote", pv(0, 2, None), NOTHING, St(0, PROPOSE)),
            Step("f: same sender, precommit", pc(0, 2, "B"), NOTHING, St(0, PROPOSE)),
            Step(
                "L55-L56: + proposal of round 2 by validator 2; L22 on it",
                Prop(2, "B"),
                timeout(2, PROPOSE) + prevote(2, "B"),
                St(2, PREVOTE_STEP),
            ),
            Step("lower rounds never skip", pv((0, 1, 2), 1, None), NOTHING, St(2, PREVOTE_STEP)),
        ],
    )


def test_L55_skip_into_a_round_we_propose() -> None:
    """L55-L56 call StartRound, so skipping into our own round proposes (L14-L19)."""
    h = Harness(me=3)
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step(
                "L55-L56; L14-L19; L22-L24; L34 (2 nil + ours)",
                pv((0, 1), 3, None),
                propose(3, "new3") + prevote(3, "new3") + timeout(3, PREVOTE_STEP),
                St(3, PREVOTE_STEP),
            ),
        ],
    )


def test_unequal_powers_L34_L36_L49_count_power_not_validators() -> None:
    """Powers 1, 1, 1, 4 (total 7): 2f+1 means power >= 5 (3p > 14). Three validators
    (power 3) prevoting A are no polka and not even "2f+1 of anything" (L34); the
    validator of power 4 completes both. Likewise for precommits (L47, L49)."""
    h = Harness(me=2, powers=(1, 1, 1, 4))
    assert [h.proposer(r) for r in range(4)] == [3, 0, 3, 1]
    done = St(0, COMMITTED, locked=(0, "A"), valid=(0, "A"), decision="A")
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24, proposer 3", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step(
                "3 validators, power 3 of 7: nothing",
                pv((0, 1), 0, "A"),
                NOTHING,
                St(0, PREVOTE_STEP),
            ),
            Step(
                "L34, L36-L43 with power 7",
                pv(3, 0, "A"),
                timeout(0, PREVOTE_STEP) + precommit(0, "A"),
                St(0, PRECOMMIT_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
            Step(
                "power 3 of 7 precommits",
                pc((0, 1), 0, "A"),
                NOTHING,
                St(0, PRECOMMIT_STEP, locked=(0, "A"), valid=(0, "A")),
            ),
            Step("L49-L51", pc(3, 0, "A"), decide(0, "A"), done),
        ],
    )


def test_unequal_powers_L55_one_heavy_validator_is_f_plus_1() -> None:
    """Powers 1, 1, 1, 4: two light validators (2/7 < 1/3) do not move us to a higher
    round; the heavy one alone (4/7 > 1/3) does (L55-L56)."""
    h = Harness(me=2, powers=(1, 1, 1, 4))
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("power 2 of 7 in round 1", pv((0, 1), 1, None), NOTHING, St(0, PROPOSE)),
            Step("L55-L56: + power 4", pc(3, 1, None), timeout(1, PROPOSE), St(1, PROPOSE)),
            Step("power 1 of round 3", pv(0, 3, None), NOTHING, St(1, PROPOSE)),
            Step("L55-L56 power 5 of round 3", pv(3, 3, None), timeout(3, PROPOSE), St(3, PROPOSE)),
        ],
    )


# ------------------------------------------------------------------ L57-L67


def test_L57_L67_timeouts_act_only_on_matching_height_round_step() -> None:
    """L58, L62, L66: a timeout acts only if height, round (and for propose/prevote the
    step) still match; stale, early or foreign timeouts do nothing."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step(
                "L62: prevote timeout at step propose",
                Timeout(0, PREVOTE_STEP),
                NOTHING,
                St(0, PROPOSE),
            ),
            Step("L58: other round", Timeout(1, PROPOSE), NOTHING, St(0, PROPOSE)),
            Step("L58: other height", Timeout(0, PROPOSE, HEIGHT + 1), NOTHING, St(0, PROPOSE)),
            Step("unknown step", Timeout(0, "commit"), NOTHING, St(0, PROPOSE)),
            Step("L57-L60", Timeout(0, PROPOSE), prevote(0, None), St(0, PREVOTE_STEP)),
            Step("L58: stale propose timeout", Timeout(0, PROPOSE), NOTHING, St(0, PREVOTE_STEP)),
            Step("L61-L64", Timeout(0, PREVOTE_STEP), precommit(0, None), St(0, PRECOMMIT_STEP)),
            Step(
                "L62: stale prevote timeout",
                Timeout(0, PREVOTE_STEP),
                NOTHING,
                St(0, PRECOMMIT_STEP),
            ),
            Step(
                "L66: other height",
                Timeout(0, PRECOMMIT_STEP, HEIGHT - 1),
                NOTHING,
                St(0, PRECOMMIT_STEP),
            ),
            Step("L66: future round", Timeout(1, PRECOMMIT_STEP), NOTHING, St(0, PRECOMMIT_STEP)),
            Step("L65-L67", Timeout(0, PRECOMMIT_STEP), timeout(1, PROPOSE), St(1, PROPOSE)),
            Step("L66: stale round", Timeout(0, PRECOMMIT_STEP), NOTHING, St(1, PROPOSE)),
            Step("L58: stale round", Timeout(0, PROPOSE), NOTHING, St(1, PROPOSE)),
            Step("L57-L60 in round 1", Timeout(1, PROPOSE), prevote(1, None), St(1, PREVOTE_STEP)),
        ],
    )


# ------------------------------------------------------------------ equivocation (§4.3)


def test_equivocation_one_evidence_counted_per_block_once_in_total() -> None:
    """Validator 0 precommits A, B and nil in round 0. Exactly one EvidenceFound (keyed
    by validator, height, round, type), which NodeCore.check_evidence accepts. Its power
    counts for each block it voted (CONSENSUS.md §4.3) but once in `total`: with
    validators 0 and 1 "2f+1 precommits of anything" (L47) does not fire; validator 2's
    precommit for B completes 2f+1 for B, counting validator 0, and decides (L49)."""
    genesis, dev = dev_genesis(4, chain_id=CHAIN)
    assert sorted(k.address for k in dev.validators) == [k.address for k in KEYS]
    h = Harness(height=1)
    h.block("B")
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "B"), prevote(0, "B"), St(0, PREVOTE_STEP)),
            Step("validator 0: A", pc(0, 0, "A"), NOTHING, St(0, PREVOTE_STEP)),
            Step("validator 0: B", pc(0, 0, "B"), evidence(0, 0, PRECOMMIT), St(0, PREVOTE_STEP)),
            Step(
                "validator 0: nil, no second evidence", pc(0, 0, None), NOTHING, St(0, PREVOTE_STEP)
            ),
            Step(
                "validator 1: B; total is 2 validators, no L47",
                pc(1, 0, "B"),
                NOTHING,
                St(0, PREVOTE_STEP),
            ),
        ],
    )
    rv = h.hs.precommits[0]
    assert rv.total == 2 * POWER
    assert rv.power_by_block == {h.block("A").hash: POWER, h.block("B").hash: 2 * POWER, b"": POWER}
    run(h, [Step("L49-L51", pc(2, 0, "B"), decide(0, "B"), St(0, COMMITTED, decision="B"))])
    evs = [e.evidence for e in h.all_effects if isinstance(e, EvidenceFound)]
    assert len(evs) == 1
    ev = evs[0]
    assert {ev.vote_a.block_hash, ev.vote_b.block_hash} == {h.block("A").hash, h.block("B").hash}
    assert NodeCore(genesis, None).check_evidence(ev) is EvidenceVerdict.OK
    assert ev.key() in h.hs.evidence
    d = next(e for e in h.all_effects if isinstance(e, Decide))
    assert [h.index(s.validator) for s in d.commit.sigs] == [0, 1, 2]


def test_equivocation_is_bounded_per_validator() -> None:
    """One validator's conflicting votes beyond MAX_CONFLICTING_PER_VALIDATOR are
    dropped (no storage growth, no effects); re-delivery is not equivocation."""
    h = Harness()
    values = ["A", "B", "C", "D", None]
    effects: list[Row] = []
    for v in values:
        effects += h.summarize(h.feed(pv(0, 0, v)))
    assert effects == evidence(0, 0, PREVOTE)
    rv = h.hs.prevotes[0]
    assert len([bh for bh, vs in rv.voters_by_block.items() if KEYS[0].address in vs]) == (
        1 + MAX_CONFLICTING_PER_VALIDATOR
    )
    assert rv.total == POWER
    assert h.summarize(h.feed(pv(0, 0, "A"))) == []  # the same vote again


def test_equivocating_proposer_first_proposal_of_a_round_wins() -> None:
    """Two proposals of one round by its proposer: the first is kept (CONSENSUS.md §4.2)."""
    h = Harness()
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step("second proposal ignored", Prop(0, "B"), NOTHING, St(0, PREVOTE_STEP)),
        ],
    )
    assert h.hs.proposals[0].block == h.block("A")


# ------------------------------------------------------------------ double-sign guard (§6)


def test_guard_restart_after_precommit_resends_only_the_identical_precommit() -> None:
    """Restarted with a SignState at (h, 0, precommit A): the L22 prevote of round 0 is
    not signed; L36-L40 want to precommit A again, which goes out as the identical
    stored vote (same timestamp and signature, no new PersistSignState)."""
    h0 = Harness()
    ss = signed_state(h0, PRECOMMIT, 0, "A", T_BLOCK + 77)
    h = Harness(sign_state=ss)
    assert h.block("A").hash == ss.block_hash  # and A now has its label in h
    locked = St(0, PRECOMMIT_STEP, locked=(0, "A"), valid=(0, "A"))
    run(
        h,
        [
            Step(
                "L21; §10.1: the stored precommit goes out again, and its lock holds",
                Start(),
                timeout(0, PROPOSE) + resend_precommit(0, "A"),
                St(0, PROPOSE, locked=(0, "A")),
            ),
            Step(
                "L22-L24: no prevote below the sign state",
                Prop(0, "A"),
                NOTHING,
                St(0, PREVOTE_STEP, locked=(0, "A")),
            ),
            Step(
                "L34, L36-L40: the stored precommit, as it was",
                pv((0, 1, 2), 0, "A"),
                timeout(0, PREVOTE_STEP) + resend_precommit(0, "A"),
                locked,
            ),
            Step(
                "L49",
                pc((0, 1), 0, "A"),
                decide(0, "A"),
                St(0, COMMITTED, locked=(0, "A"), valid=(0, "A"), decision="A"),
            ),
        ],
    )
    v = own_vote(h, PRECOMMIT, 0)
    assert (v.timestamp_ms, v.sig) == (ss.timestamp_ms, ss.signature)
    assert not any(isinstance(e, PersistSignState) for e in h.all_effects)


def test_guard_restart_after_precommit_refuses_prevote_and_other_precommit() -> None:
    """Restarted with a SignState at (h, 0, precommit A): neither a round-0 prevote
    (L59) nor a nil precommit (L44-L45, L63) is signed; round 1 is signed normally,
    and still under the lock on A that the sign state carried (§6)."""
    h0 = Harness()
    ss = signed_state(h0, PRECOMMIT, 0, "A", T_BLOCK + 77)
    h = Harness(sign_state=ss)
    assert h.block("A").hash == ss.block_hash  # and A now has its label in h
    lk: tuple[int, str | None] = (0, "A")
    run(
        h,
        [
            Step(
                "L21; §10.1 re-send",
                Start(),
                timeout(0, PROPOSE) + resend_precommit(0, "A"),
                St(0, PROPOSE, locked=lk),
            ),
            Step(
                "L57-L60: no signature",
                Timeout(0, PROPOSE),
                NOTHING,
                St(0, PREVOTE_STEP, locked=lk),
            ),
            Step(
                "L34; L44-L46: no signature",
                pv((0, 1, 2), 0, None),
                timeout(0, PREVOTE_STEP),
                St(0, PRECOMMIT_STEP, locked=lk),
            ),
            Step(
                "L47",
                pc((0, 1, 2), 0, None),
                timeout(0, PRECOMMIT_STEP),
                St(0, PRECOMMIT_STEP, locked=lk),
            ),
            Step(
                "L65-L67",
                Timeout(0, PRECOMMIT_STEP),
                timeout(1, PROPOSE),
                St(1, PROPOSE, locked=lk),
            ),
            Step(
                "L57-L60 in round 1: signed",
                Timeout(1, PROPOSE),
                prevote(1, None),
                St(1, PREVOTE_STEP, locked=lk),
            ),
        ],
    )


def test_guard_sign_state_of_a_later_round_or_height_blocks_everything_below() -> None:
    """A SignState at (h, 2, prevote B): the restarted engine begins at round 2 (§10.1),
    re-sends that prevote, never signs in rounds 0/1 (a late round-0 proposal and polka
    change nothing), refuses a round 2 prevote for anything but B; a round 2 precommit
    is above the guard and is signed."""
    h0 = Harness()
    ss = signed_state(h0, PREVOTE, 2, "B", T_BLOCK + 5)
    h = Harness(sign_state=ss)
    assert h.block("B").hash == ss.block_hash
    run(
        h,
        [
            Step(
                "L21 in round 2; §10.1 re-send",
                Start(),
                [*timeout(2, PROPOSE), ("prevote", 2, "B")],
                St(2, PROPOSE),
            ),
            Step("round 0 is over for us", Prop(0, "A"), NOTHING, St(2, PROPOSE)),
            Step("and its polka too", pv((0, 1, 2), 0, "A"), NOTHING, St(2, PROPOSE)),
            Step(
                "L22-L24 wants A: refused (B was signed)",
                Prop(2, "A"),
                NOTHING,
                St(2, PREVOTE_STEP),
            ),
            Step(
                "L34, L36-L41 in round 2: precommit is above the sign state",
                pv((0, 1, 2), 2, "A"),
                timeout(2, PREVOTE_STEP) + precommit(2, "A"),
                St(2, PRECOMMIT_STEP, locked=(2, "A"), valid=(2, "A")),
            ),
        ],
    )
    h2 = Harness(sign_state=SignState(HEIGHT + 1, 0, SignStep.PREVOTE, b"", T_BLOCK, b"\x00" * 64))
    run(
        h2,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22: refused", Prop(0, "A"), NOTHING, St(0, PREVOTE_STEP)),
        ],
    )


def test_guard_restarted_proposer_does_not_repropose_and_still_times_out() -> None:
    """Restarted with a SignState at (h, 0, propose): the proposer of round 0 does not
    sign a second proposal (L18), cannot re-send the lost one, and so schedules
    OnTimeoutPropose like a non-proposer (L21) to prevote nil (L57-L60) instead of
    waiting in step propose for ever."""
    h0 = Harness(me=0)
    blk = h0.block("new0")
    assert h0.key is not None
    sig = h0.key.sign(proposal_sign_bytes(CHAIN, HEIGHT, 0, -1, blk.hash, h0.key.address))
    h = Harness(me=0, sign_state=SignState(HEIGHT, 0, SignStep.PROPOSE, blk.hash, 0, sig))
    run(
        h,
        [
            Step("L14-L21: no proposal, a timeout", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L57-L60", Timeout(0, PROPOSE), prevote(0, None), St(0, PREVOTE_STEP)),
        ],
    )
    assert h.host.proposed == []


def test_guard_proposal_and_votes_of_one_round_in_order() -> None:
    """A proposer's PersistSignState for (h, r, propose) precedes the proposal, then
    (h, r, prevote) precedes the prevote: steps 1 < 2 < 3 in one round."""
    h = Harness(me=0)
    eff = h.feed(Start())
    kinds = [
        type(e).__name__
        for e in eff
        if not isinstance(e, (ScheduleTimeout, NeedValue, ValidateValue))
    ]
    assert kinds == ["PersistSignState", "Broadcast", "PersistSignState", "Broadcast"]
    states = [e.state.step for e in eff if isinstance(e, PersistSignState)]
    assert states == [SignStep.PROPOSE, SignStep.PREVOTE]


# ------------------------------------------------------------------ validity cache


def test_validity_is_judged_per_block_body_not_per_header_hash() -> None:
    """Block.hash covers only the header. A Byzantine proposer of round 1 re-proposes
    A's header with other txs: that block is invalid (the host says so) even though a
    block with the same hash was valid in round 0 -> prevote nil (L25-L26), and 2f+1
    precommits for that hash do not decide the bad body (L50)."""
    h = Harness()
    good = h.block("A")
    bad = Block(good.header, [b"tx:smuggled"], [], None)
    assert bad.hash == good.hash and bad != good
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step("L34", pv((0, 1), 0, None), timeout(0, PREVOTE_STEP), St(0, PREVOTE_STEP)),
            Step("L61-L64", Timeout(0, PREVOTE_STEP), precommit(0, None), St(0, PRECOMMIT_STEP)),
            Step("L65-L67", Timeout(0, PRECOMMIT_STEP), timeout(1, PROPOSE), St(1, PROPOSE)),
            Step(
                "L25-L26: bad body", raw(h.proposal(1, bad)), prevote(1, None), St(1, PREVOTE_STEP)
            ),
            Step(
                "L50: not decided",
                pc((0, 1, 2), 1, "A"),
                timeout(1, PRECOMMIT_STEP),
                St(1, PREVOTE_STEP),
            ),
        ],
    )


# ------------------------------------------------------------------ bad input


def snapshot(hs: HeightState) -> object:
    return (
        hs.round,
        hs.step,
        hs.locked_round,
        hs.valid_round,
        hs.decision,
        sorted(hs.proposals),
        {
            r: (sorted(rv.by_validator), sorted(rv.power_by_block.items()))
            for r, rv in hs.prevotes.items()
            if rv.by_validator
        },
        {
            r: (sorted(rv.by_validator), sorted(rv.power_by_block.items()))
            for r, rv in hs.precommits.items()
            if rv.by_validator
        },
        sorted(hs.evidence),
        hs.sign_state,
    )


def test_bad_input_is_ignored_without_effects_or_exceptions() -> None:
    """Votes and proposals with a wrong chain id or height, from a non-validator,
    with a bad signature, from the wrong proposer, with pol_round >= round, too far
    ahead, or for a block of another height: no effect, no state change, no exception.
    Afterwards the good proposal is still accepted (L22-L24)."""
    h = Harness()
    h.feed(Start())
    before = snapshot(h.hs)
    good_vote = h.vote(0, PREVOTE, 0, "A")
    good_prop = h.proposal(0, "A")
    bad: list[Proposal | Vote] = [
        h.vote(0, PREVOTE, 0, "A", chain_id="other-chain"),
        h.vote(0, PRECOMMIT, 0, "A", height=HEIGHT + 1),
        h.vote(0, PRECOMMIT, 0, "A", height=HEIGHT - 1),
        h.vote(0, PREVOTE, 0, "A", key=OUTSIDER),
        msgspec.structs.replace(good_vote, sig=bytes(64)),
        msgspec.structs.replace(
            good_vote, timestamp_ms=good_vote.timestamp_ms + 1
        ),  # sig no longer matches
        msgspec.structs.replace(good_vote, validator=KEYS[1].address),  # signed by 0, claims 1
        h.vote(0, PREVOTE, MAX_ROUND_AHEAD + 1, None),
        h.vote(0, PRECOMMIT, MAX_ROUND_AHEAD + 1, None),
        h.proposal(0, "A", chain_id="other-chain"),
        h.proposal(0, "A", height=HEIGHT + 1),
        h.proposal(0, "A", by=1),  # validator 1 is not the proposer of round 0
        h.proposal(0, "A", key=OUTSIDER),
        h.proposal(0, "A", pol_round=0),  # pol_round >= round
        h.proposal(1, "A", pol_round=1),
        h.proposal(2, "A", pol_round=5),
        msgspec.structs.replace(good_prop, sig=bytes(64)),
        msgspec.structs.replace(good_prop, pol_round=-1, block=h.block("B")),  # sig is for A
        h.proposal(0, make_block("A", height=HEIGHT + 1)),  # block of another height
        h.proposal(MAX_ROUND_AHEAD + 1, "A"),
    ]
    for m in bad:
        eff = h.hs.on_proposal(m, NOW) if isinstance(m, Proposal) else h.hs.on_vote(m, NOW)
        assert eff == [], m
        assert snapshot(h.hs) == before, m
    run(h, [Step("L22-L24 still works", raw(good_prop), prevote(0, "A"), St(0, PREVOTE_STEP))])


# ------------------------------------------------------------------ BFT time and re-gossip


def test_vote_time_is_after_previous_block_and_after_voted_block() -> None:
    """CONSENSUS.md §5: with the local clock behind, a vote for a block is stamped
    block.time + 1 and a nil vote previous_block_time + 1; otherwise the clock."""
    h = Harness()
    h.now = T_PREV - 60_000
    run(
        h,
        [
            Step("L21", Start(), timeout(0, PROPOSE), St(0, PROPOSE)),
            Step("L22-L24", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step(
                "L34, L44-L46",
                pv((0, 1, 2), 0, None),
                timeout(0, PREVOTE_STEP) + precommit(0, None),
                St(0, PRECOMMIT_STEP),
            ),
        ],
    )
    assert own_vote(h, PREVOTE, 0).timestamp_ms == T_BLOCK + 1
    assert own_vote(h, PRECOMMIT, 0).timestamp_ms == T_PREV + 1
    h.now = NOW
    h.feed(Timeout(0, PRECOMMIT_STEP))
    h.feed(Timeout(1, PROPOSE))
    assert own_vote(h, PREVOTE, 1).timestamp_ms == NOW


def test_latest_votes_keep_the_polka_of_the_locked_and_valid_round() -> None:
    """CONSENSUS.md §10: after moving on, the prevotes behind our lock (round 0) are
    still re-gossiped, so that others can accept a re-proposal under L28."""
    h = Harness()
    h.feed(Start())
    h.feed(Prop(0, "A"))
    h.feed(pv((0, 1), 0, "A"))
    h.feed(Timeout(0, PRECOMMIT_STEP))
    assert h.hs.round == 1 and h.hs.locked_round == 0
    got = {(v.round, v.type, h.index(v.validator)) for v in h.hs.latest_votes()}
    assert {(0, PREVOTE, i) for i in (0, 1, 3)} <= got
    assert (0, PRECOMMIT, 3) in got
    assert h.hs.own_votes() == []  # nothing signed in round 1 yet


@pytest.mark.parametrize("me", [0, 1, 2, 3])
def test_every_validator_decides_the_happy_path(me: int) -> None:
    """L11-L54 for each position: proposer or not, all four reach the same decision
    in round 0 from the same messages."""
    h = Harness(me=me)
    h.feed(Start())
    if me != 0:
        h.feed(Prop(0, "new0"))
    others = [i for i in range(4) if i != me]
    h.feed(pv(others, 0, "new0"))
    h.feed(pc(others[:2], 0, "new0"))
    assert h.state() == St(0, COMMITTED, (0, "new0"), (0, "new0"), "new0")


# ------------------------------------------------------------------ liveness (CONSENSUS.md §10.1)


def test_stall_timers_move_steps_whose_quorum_never_comes() -> None:
    """§10.1: a prevote step that never sees 2f+1 prevotes (so L34 never arms
    OnTimeoutPrevote) precommits nil after stall(r); a precommit step that never sees
    2f+1 precommits (L47) starts the next round after stall(r)."""
    h = Harness()
    h.feed(Start())
    eff = h.feed(Timeout(0, PROPOSE))
    stalls = [e for e in eff if isinstance(e, ScheduleTimeout) and e.step == PREVOTE_STALL]
    assert [(e.round, e.delay_ms) for e in stalls] == [(0, TIMEOUTS.stall(0))]
    assert h.state() == St(0, PREVOTE_STEP)
    assert h.summarize(h.feed(Timeout(0, PREVOTE_STALL))) == precommit(0, None)
    assert h.state() == St(0, PRECOMMIT_STEP)
    assert h.summarize(h.feed(Timeout(0, PRECOMMIT_STALL))) == timeout(1, PROPOSE)
    assert h.state() == St(1, PROPOSE)
    # A stale stall timer of a step we already left does nothing.
    assert h.summarize(h.feed(Timeout(0, PREVOTE_STALL))) == NOTHING
    assert TIMEOUTS.stall(1) > TIMEOUTS.stall(0) > TIMEOUTS.propose(0) + TIMEOUTS.prevote(0)


def _run_net(hs: list[Harness], max_events: int = 5_000) -> dict[int, str | None]:
    """Deliver every broadcast to the other harnesses after 10 ms and fire every
    scheduled timeout at its time, until all decide or the events run out."""
    import heapq

    heap: list[tuple[int, int, int, Input]] = []
    seq = 0

    def effects(i: int, at: int, eff: Sequence[Effect]) -> None:
        nonlocal seq
        for e in eff:
            seq += 1
            if isinstance(e, Broadcast):
                for j in range(len(hs)):
                    if j != i:
                        heapq.heappush(heap, (at + 10, seq, j, Raw((e.msg,))))
                        seq += 1
            elif isinstance(e, ScheduleTimeout):
                heapq.heappush(heap, (at + e.delay_ms, seq, i, Timeout(e.round, e.step)))

    for h in hs:
        for r in range(8):
            h.block(f"new{r}")  # so that each judges the others' fresh blocks valid
    for i, h in enumerate(hs):
        effects(i, 0, h.feed(Start()))
    for _ in range(max_events):
        if not heap or all(h.hs.decision is not None for h in hs):
            break
        at, _s, i, inp = heapq.heappop(heap)
        hs[i].now = NOW + at
        effects(i, at, hs[i].feed(inp))
    return {i: h._label_of(h.hs.decision) for i, h in enumerate(hs)}


def test_all_validators_restarted_after_signing_in_round_5_decide() -> None:
    """The halt at height 28 (issue 10): every validator had precommitted nil in round
    5 and all restarted. Fresh engines at round 0 may sign nothing up to round 5, so no
    vote ever flowed and no timer was armed: a permanent halt. With §10.1 they begin
    at round 5, re-send their precommits, and decide."""
    ss_of = {}
    for i in range(4):
        h0 = Harness(me=i)
        assert h0.key is not None
        sb = vote_sign_bytes(CHAIN, PRECOMMIT, HEIGHT, 5, b"", T_BLOCK + i, h0.key.address)
        sig = h0.key.sign(sb)
        ss_of[i] = SignState(HEIGHT, 5, SignStep.PRECOMMIT, b"", T_BLOCK + i, sig)
    net = [Harness(me=i, sign_state=ss_of[i]) for i in range(4)]
    decided = _run_net(net)
    assert all(v is not None for v in decided.values()), decided
    assert len(set(decided.values())) == 1
    assert all(h.hs.decided_round >= 6 for h in net)


def test_restarted_validators_without_resend_still_move_on_stall_timers() -> None:
    """Even a validator that may sign nothing in a round (its sign state is a later
    step) keeps an armed timer in every step, so the round advances (§10.1)."""
    h0 = Harness()
    ss = signed_state(h0, PRECOMMIT, 1, "A", T_BLOCK + 3)
    h = Harness(sign_state=ss)
    h.block("A")
    h.feed(Start())
    assert h.hs.round == 1 and h.hs.timer_armed()
    h.feed(Timeout(1, PROPOSE))
    assert h.hs.step == PREVOTE_STEP and h.hs.timer_armed()
    h.feed(Timeout(1, PREVOTE_STALL))
    assert h.hs.step == PRECOMMIT_STEP and h.hs.timer_armed()
    h.feed(Timeout(1, PRECOMMIT_STALL))
    assert h.hs.round == 2 and h.hs.timer_armed()
    assert h.state().locked == (1, "A")  # the lock survived the restart


def test_a_height_decided_before_start_starts_no_round() -> None:
    """L49 holds in any round, also before L10: a node that receives a proposal
    and 2f+1 precommits before it starts the height has decided it, and start
    must not begin round 0 of a decided height (sweep seed 86 did, and broke
    the invariant decision <=> committed)."""
    h = Harness(me=3)
    done = St(0, COMMITTED, decision="A")
    run(
        h,
        [
            # The rules apply to what arrives before start (round 0 is where a
            # fresh height is), so the proposal is prevoted at once.
            Step("L22 before start", Prop(0, "A"), prevote(0, "A"), St(0, PREVOTE_STEP)),
            Step("no quorum yet", pc((0, 1), 0, "A"), NOTHING, St(0, PREVOTE_STEP)),
            Step("L49-L51 before start", pc(2, 0, "A"), decide(0, "A"), done),
            Step("start: no round of a decided height", Start(), NOTHING, done),
            Step("decided: timeouts do nothing", Timeout(0, PROPOSE), NOTHING, done),
        ],
    )

"""The Tendermint round state machine for one height (arXiv 1807.04938, Algorithm 1).

Pure: inputs go in through methods, effects come out as a list. The engine
never calls back into its caller: when it needs a block to propose it emits
``NeedValue`` and is handed one through ``on_value``; when a proposal needs
the application's verdict it emits ``ValidateValue`` and is told through
``on_validity`` (CONSENSUS.md §3). A ``PersistSignState`` always precedes the
``Broadcast`` of what it guards, and the caller must make it durable before
sending (§6).

Line numbers in comments ("L22") are those of Algorithm 1 in the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from msgspec import Struct

from dpkid.core.consensus.messages import (
    PRECOMMIT,
    PREVOTE,
    Block,
    Commit,
    CommitSig,
    DuplicateVoteEvidence,
    Proposal,
    SignStep,
    Vote,
    proposal_sign_bytes,
    sign_bytes_of_proposal,
    sign_bytes_of_vote,
    vote_sign_bytes,
)
from dpkid.core.consensus.valset import Priorities, ValidatorSet, proposer_for
from dpkid.core.crypto import SigningKey

# Steps of the round state machine.
PROPOSE: Final = "propose"
PREVOTE_STEP: Final = "prevote"
PRECOMMIT_STEP: Final = "precommit"
COMMITTED: Final = "committed"
# Timer steps that are not the paper's: a step that has waited stall(r) for the
# quorum that would arm L34/L47 moves on as if that timer had fired (§10.1).
PREVOTE_STALL: Final = "prevote_stall"
PRECOMMIT_STALL: Final = "precommit_stall"

MAX_ROUND_AHEAD: Final = 64  # messages more rounds ahead than this are dropped
MAX_EVALUATE_PASSES: Final = 64  # rule passes per input; more is a failed assertion
MAX_CACHED_PROPOSERS: Final = 1024  # rounds whose proposer is memoised
MAX_REGOSSIP_VOTES: Final = 1024


@dataclass(frozen=True)
class TimeoutConfig:
    """Timeouts grow linearly with the round: base + round * delta."""

    propose_ms: int = 3_000
    propose_delta_ms: int = 500
    prevote_ms: int = 500
    prevote_delta_ms: int = 250
    precommit_ms: int = 500
    precommit_delta_ms: int = 250
    commit_ms: int = 300

    def propose(self, r: int) -> int:
        return self.propose_ms + r * self.propose_delta_ms

    def prevote(self, r: int) -> int:
        return self.prevote_ms + r * self.prevote_delta_ms

    def precommit(self, r: int) -> int:
        return self.precommit_ms + r * self.precommit_delta_ms

    def stall(self, r: int) -> int:
        """How long a prevote or precommit step may wait for the quorum that arms
        the paper's own timer (L34, L47) before it gives up (CONSENSUS.md §10.1).
        Longer than a propose and a prevote timeout together, so that on a
        healthy network it never fires first; it grows with the round, like the
        paper's timeouts, so liveness after GST is kept."""
        return 2 * (self.propose(r) + self.prevote(r))

    def round_ms(self, r: int) -> int:
        """An upper bound on one round with every timer expiring (watchdog)."""
        return self.propose(r) + 2 * self.stall(r) + self.precommit(r)


# ------------------------------------------------------------------ effects


@dataclass(frozen=True)
class Broadcast:
    msg: Proposal | Vote


class LockRecord(Struct, frozen=True, array_like=True):
    """What a restarted validator needs to act on its lock (CONSENSUS.md §6): the
    locked block, so it can re-propose it (L16), and the polka that locked it,
    so others accept that re-proposal (L28). Without them a lock survives a
    restart only as a hash nobody can build on, and the height can deadlock."""

    block: Block
    round: int
    polka: list[Vote]


@dataclass(frozen=True)
class PersistSignState:
    state: SignState
    # Set when the lock changed: durable before ``state``, and both before the
    # precommit they guard is sent.
    lock: LockRecord | None = None


@dataclass(frozen=True)
class ScheduleTimeout:
    height: int
    round: int
    step: str
    delay_ms: int


@dataclass(frozen=True)
class Decide:
    block: Block
    commit: Commit


@dataclass(frozen=True)
class EvidenceFound:
    evidence: DuplicateVoteEvidence


@dataclass(frozen=True)
class NeedValue:
    """L18 getValue(): we propose in (height, round) and have no valid value.
    Answer with ``on_value`` in the same step."""

    height: int
    round: int


@dataclass(frozen=True)
class ValidateValue:
    """valid(v) of L22/L28/L36/L49 for a proposal that passed the engine's own
    checks. Answer with ``on_validity`` in the same step; until then the
    proposal takes no part in the rules."""

    height: int
    round: int
    block: Block


Effect = (
    Broadcast
    | PersistSignState
    | ScheduleTimeout
    | Decide
    | EvidenceFound
    | NeedValue
    | ValidateValue
)


@dataclass(frozen=True)
class SignState:
    """The double-sign guard: the highest (height, round, step) this key signed,
    and what it signed there. Persisted before any signature leaves the node."""

    height: int = 0
    round: int = -1
    step: int = 0
    block_hash: bytes = b""
    timestamp_ms: int = 0
    signature: bytes = b""
    # The lock (L38-L39) in force when this was signed, so that a restarted
    # validator keeps it (CONSENSUS.md §6): -1/b"" when not locked.
    lock_round: int = -1
    lock_hash: bytes = b""

    def hrs(self) -> tuple[int, int, int]:
        return (self.height, self.round, self.step)


class DoubleSignRefused(Exception):
    pass


MAX_CONFLICTING_PER_VALIDATOR: Final = 3


@dataclass
class _RoundVotes:
    """Votes of one round and one type, counted in integer power.

    ``total`` counts each validator once (its first vote), for the "2f+1 of
    anything" rules. Per-block tallies count every validator that signed a
    vote for that block, even one that also signed another: an equivocator
    could have sent us only that vote, so counting it is what some correct
    execution would see, and it lets honest nodes recognise the same polka
    (CONSENSUS.md §4.3).
    """

    by_validator: dict[bytes, Vote] = field(default_factory=dict)
    voters_by_block: dict[bytes, dict[bytes, Vote]] = field(default_factory=dict)
    power_by_block: dict[bytes, int] = field(default_factory=dict)
    extra_by_validator: dict[bytes, int] = field(default_factory=dict)
    total: int = 0


Verify = Callable[[bytes, bytes, bytes], bool]  # (pubkey, message, signature) -> ok


class HeightState:
    """Consensus for one height. A new instance per height."""

    def __init__(
        self,
        chain_id: str,
        height: int,
        vals: ValidatorSet,
        priorities: Priorities,
        key: SigningKey | None,
        sign_state: SignState,
        verify: Verify,
        timeouts: TimeoutConfig,
        min_time_ms: int,
        lock: LockRecord | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.height = height
        self.vals = vals
        self.priorities = priorities
        self.key = key
        self.address = key.address if key is not None else b""
        self.sign_state = sign_state
        self.verify = verify  # a pure function; the node's signature cache sits behind it
        self.timeouts = timeouts
        self.min_time_ms = min_time_ms  # votes carry a time later than the previous block
        self.now_ms = 0
        # The paper's per-height variables (L1-L10).
        self.round = 0
        self.step = PROPOSE
        self.locked_value: Block | None = None
        self.locked_hash = b""  # the lock is on a hash: after a restart the block may be gone
        self.locked_round = -1
        if sign_state.height == height and sign_state.lock_round >= 0:
            # CONSENSUS.md §6: a restarted validator keeps the lock it signed under.
            self.locked_round = sign_state.lock_round
            self.locked_hash = sign_state.lock_hash
        self._restored_lock = (
            lock
            if lock is not None
            and self.locked_round == lock.round
            and lock.block.hash == self.locked_hash
            and lock.block.header.height == height
            else None
        )
        self.valid_value: Block | None = None
        self.valid_round = -1
        self.decision: Block | None = None
        # Message stores.
        self.proposals: dict[int, Proposal] = {}
        self.prevotes: dict[int, _RoundVotes] = {}
        self.precommits: dict[int, _RoundVotes] = {}
        # valid(v) of each round's proposal, as answered through on_validity.
        self.proposal_valid: dict[int, bool] = {}
        self._validating: dict[int, Proposal] = {}  # asked ValidateValue, not yet answered
        self._need_value_round = -1  # asked NeedValue for this round, not yet answered
        self.evidence: dict[bytes, DuplicateVoteEvidence] = {}
        self._fired: set[tuple[str, int]] = set()  # "for the first time" guards
        self._proposers: dict[int, bytes] = {}
        self._own_votes: dict[tuple[int, int], Vote] = {}
        self._started = False
        self.decided_round = -1
        # Timers emitted and not yet fired, as (round, step): what the liveness
        # invariant "not decided => a timer that can move us is armed" reads.
        self._armed: set[tuple[int, str]] = set()

    # ------------------------------------------------------------------ helpers
    def proposer(self, r: int) -> bytes:
        p = self._proposers.get(r)
        if p is None:
            p = proposer_for(self.priorities, self.vals, r)
            if len(self._proposers) < MAX_CACHED_PROPOSERS:
                self._proposers[r] = p
        return p

    def _votes(self, type_: int, r: int) -> _RoundVotes:
        table = self.prevotes if type_ == PREVOTE else self.precommits
        rv = table.get(r)
        if rv is None:
            rv = table[r] = _RoundVotes()
        return rv

    def _valid(self, r: int) -> bool:
        return self.proposal_valid.get(r, False)

    def own_votes(self) -> list[Vote]:
        """Our signed votes of the current round (for re-gossip after loss)."""
        return [v for (r, _t), v in sorted(self._own_votes.items()) if r == self.round]

    def latest_votes(self, limit: int = MAX_REGOSSIP_VOTES) -> list[Vote]:
        """Votes worth re-gossiping: the current round, the decided round, and
        the polka behind our valid and locked values (others need it to accept
        a re-proposal under L28)."""
        out: list[Vote] = []
        rounds = {self.round, self.decided_round, self.valid_round, self.locked_round} - {-1}
        for r in sorted(rounds):
            for table in (self.prevotes, self.precommits):
                rv = table.get(r)
                if rv:
                    for bh in sorted(rv.voters_by_block):
                        vs = rv.voters_by_block[bh]
                        out.extend(vs[a] for a in sorted(vs))
        return out[:limit]

    # ------------------------------------------------------------------ signing
    def _vote_time(self, block_hash: bytes) -> int:
        # BFT time (CONSENSUS.md §5): a vote's time is after the previous block
        # and after the block it votes for, so the next header time increases.
        floor = self.min_time_ms
        for p in self.proposals.values():
            if p.block.hash == block_hash:
                floor = max(floor, p.block.header.time_ms)
                break
        return max(self.now_ms, floor + 1)

    def _sign_vote(
        self, type_: int, block_hash: bytes, eff: list[Effect], lock: LockRecord | None = None
    ) -> None:
        if self.key is None or self.vals.get(self.address) is None:
            return
        step = SignStep.PREVOTE if type_ == PREVOTE else SignStep.PRECOMMIT
        hrs = (self.height, self.round, step)
        ss = self.sign_state
        if hrs < ss.hrs():
            return  # CONSENSUS.md §6: never sign below what we signed before
        if hrs == ss.hrs():
            # A restart re-entered a step we already signed: only the same vote may go out.
            if ss.block_hash != block_hash:
                return
            vote = Vote(
                self.chain_id,
                type_,
                self.height,
                self.round,
                block_hash,
                ss.timestamp_ms,
                self.address,
                ss.signature,
            )
        else:
            ts = self._vote_time(block_hash)
            sb = vote_sign_bytes(
                self.chain_id, type_, self.height, self.round, block_hash, ts, self.address
            )
            sig = self.key.sign(sb)
            self.sign_state = SignState(
                self.height,
                self.round,
                step,
                block_hash,
                ts,
                sig,
                self.locked_round,
                self.locked_hash,
            )
            eff.append(PersistSignState(self.sign_state, lock))
            vote = Vote(
                self.chain_id, type_, self.height, self.round, block_hash, ts, self.address, sig
            )
        self._own_votes[(self.round, type_)] = vote
        eff.append(Broadcast(vote))
        # Our own vote counts like anyone's.
        self._add_vote(vote, eff, verified=True)

    def _sign_proposal(self, block: Block, pol_round: int, valid: bool, eff: list[Effect]) -> None:
        assert self.key is not None
        hrs = (self.height, self.round, SignStep.PROPOSE)
        if hrs <= self.sign_state.hrs():
            return  # already proposed (or voted) in this round before a restart
        sb = proposal_sign_bytes(
            self.chain_id, self.height, self.round, pol_round, block.hash, self.address
        )
        sig = self.key.sign(sb)
        self.sign_state = SignState(
            self.height,
            self.round,
            SignStep.PROPOSE,
            block.hash,
            0,
            sig,
            self.locked_round,
            self.locked_hash,
        )
        eff.append(PersistSignState(self.sign_state))
        prop = Proposal(self.chain_id, self.height, self.round, pol_round, block, self.address, sig)
        eff.append(Broadcast(prop))
        self.proposals[self.round] = prop
        self.proposal_valid[self.round] = valid

    # ------------------------------------------------------------------ inputs
    def start(self, now_ms: int) -> list[Effect]:
        """Begin the height at round 0 (L10: StartRound(0))."""
        self.now_ms = now_ms
        eff: list[Effect] = []
        if not self._started and self.decision is not None:
            # Messages that came before start already decided the height (L49
            # holds in any round): there is no round to start.
            self._started = True
        elif not self._started:
            self._started = True
            ss = self.sign_state
            first = 0
            if ss.height == self.height and ss.round > 0:
                # CONSENSUS.md §10.1: after a restart, begin at the round of our last
                # signature. Every lower round is closed to us by the guard (§6), and
                # if all validators restarted there, nobody could sign there at all.
                # Skipping rounds is always safe (the paper's L55 does it too).
                first = ss.round
            lk = self._restored_lock
            if lk is not None:
                # The lock's block is also our valid value (locked_round <= valid_round),
                # and its polka is counted and re-gossiped like any votes (§10).
                self.locked_value = self.valid_value = lk.block
                self.valid_round = lk.round
                for v in lk.polka[: 4 * len(self.vals)]:
                    if v.type == PREVOTE and v.round == lk.round and v.height == self.height:
                        self._add_vote(v, eff, verified=False)
            self._start_round(first, eff)
            self._resend_last_vote(eff)
            self._evaluate(eff)
        self._arm_if_idle(eff)
        return eff

    def _resend_last_vote(self, eff: list[Effect]) -> None:
        """§10.1: re-send, unchanged, the vote our sign state holds for this height.
        The guard forbids signing anything else at that step, so without it our
        peers would never hear from us in this round."""
        ss = self.sign_state
        if (
            self.key is None
            or ss.height != self.height
            or ss.round != self.round
            or ss.step not in (SignStep.PREVOTE, SignStep.PRECOMMIT)
            or self.vals.get(self.address) is None
        ):
            return
        type_ = PREVOTE if ss.step == SignStep.PREVOTE else PRECOMMIT
        vote = Vote(
            self.chain_id,
            type_,
            self.height,
            ss.round,
            ss.block_hash,
            ss.timestamp_ms,
            self.address,
            ss.signature,
        )
        self._own_votes[(ss.round, type_)] = vote
        eff.append(Broadcast(vote))
        self._add_vote(vote, eff, verified=True)

    def on_proposal(self, p: Proposal, now_ms: int) -> list[Effect]:
        """A proposal from the network. One that passes the checks here is not
        used until its valid(v) arrives: the effects end with ValidateValue."""
        self.now_ms = now_ms
        eff: list[Effect] = []
        if p.height != self.height or p.chain_id != self.chain_id:
            return eff
        if p.round > self.round + MAX_ROUND_AHEAD or p.round in self.proposals:
            return eff
        if p.round in self._validating:
            return eff
        if p.proposer != self.proposer(p.round) or p.pol_round >= p.round:
            return eff
        v = self.vals.get(p.proposer)
        if v is None or not self.verify(v.pubkey, sign_bytes_of_proposal(p), p.sig):
            return eff
        if p.block.header.height != self.height:
            return eff
        self._validating[p.round] = p
        eff.append(ValidateValue(self.height, p.round, p.block))
        return eff

    def on_validity(self, round_: int, valid: bool, now_ms: int) -> list[Effect]:
        """The answer to ValidateValue(round_): now the proposal counts."""
        self.now_ms = now_ms
        eff: list[Effect] = []
        p = self._validating.pop(round_, None)
        if p is None or round_ in self.proposals:
            return eff
        self.proposals[round_] = p
        self.proposal_valid[round_] = valid
        self._evaluate(eff, round_)
        self._arm_if_idle(eff)  # L55 may have started a round we lead
        return eff

    def on_value(self, round_: int, block: Block, valid: bool, now_ms: int) -> list[Effect]:
        """The answer to NeedValue: L19 broadcasts it as our proposal."""
        self.now_ms = now_ms
        eff: list[Effect] = []
        if round_ != self._need_value_round:
            return eff
        self._need_value_round = -1
        # Only while still in that round's propose step: a late answer must not
        # sign a proposal for a round we have left.
        if round_ == self.round and self.step == PROPOSE and self.decision is None:
            assert block.header.height == self.height, (block.header.height, self.height)
            self._sign_proposal(block, -1, valid, eff)
            self._evaluate(eff, round_)
        self._arm_if_idle(eff)
        return eff

    def on_vote(self, vote: Vote, now_ms: int) -> list[Effect]:
        self.now_ms = now_ms
        eff: list[Effect] = []
        if vote.height != self.height or vote.chain_id != self.chain_id:
            return eff
        if vote.round > self.round + MAX_ROUND_AHEAD:
            return eff
        if self._add_vote(vote, eff, verified=False):
            self._evaluate(eff, vote.round)
            self._arm_if_idle(eff)  # L55 may have started a round we lead
        return eff

    def _schedule(self, r: int, step: str, delay_ms: int, eff: list[Effect]) -> None:
        self._armed.add((r, step))
        eff.append(ScheduleTimeout(self.height, r, step, delay_ms))

    def _enter(self, step: str, eff: list[Effect]) -> None:
        """Move to the prevote or precommit step, arming its stall timer (§10.1)."""
        self.step = step
        if step == PREVOTE_STEP:
            self._schedule(self.round, PREVOTE_STALL, self.timeouts.stall(self.round), eff)
        elif step == PRECOMMIT_STEP:
            self._schedule(self.round, PRECOMMIT_STALL, self.timeouts.stall(self.round), eff)

    def _arm_if_idle(self, eff: list[Effect]) -> None:
        """A proposer whose own re-proposal (L28) is not yet backed by the polka it
        cites waits in the propose step with no timer: arm L21's (§10.1)."""
        if self._need_value_round == self.round:
            return  # our proposal is on its way: on_value signs it and moves on (L19)
        if self._started and self.step == PROPOSE and (self.round, PROPOSE) not in self._armed:
            self._schedule(self.round, PROPOSE, self.timeouts.propose(self.round), eff)

    def timer_armed(self) -> bool:
        """The liveness invariant (CONSENSUS.md §10.1): undecided, some armed timer
        will, when it fires, move this height's round or step forward."""
        if self.step == COMMITTED:
            return True
        r = self.round
        if (r, PRECOMMIT_STEP) in self._armed:
            return True  # L65 starts the next round from any step
        if self.step == PROPOSE:
            return (r, PROPOSE) in self._armed
        if self.step == PREVOTE_STEP:
            return (r, PREVOTE_STEP) in self._armed or (r, PREVOTE_STALL) in self._armed
        return (r, PRECOMMIT_STALL) in self._armed

    def waiting_for(self) -> str:
        """What this height waits for, in words, for the watchdog and status."""
        r = self.round
        if self.step == COMMITTED:
            return "nothing: decided"
        if self.step == PROPOSE:
            if r not in self.proposals:
                return f"the proposal of round {r} from {self.proposer(r).hex()[:12]}"
            return f"a polka from round {self.proposals[r].pol_round} behind the re-proposal"
        table = self.prevotes if self.step == PREVOTE_STEP else self.precommits
        kind = "prevotes" if self.step == PREVOTE_STEP else "precommits"
        rv = table.get(r)
        have = rv.total if rv else 0
        need = self.vals.total_power * 2 // 3 + 1
        return f"{kind} of round {r}: {have} of {self.vals.total_power} power, need {need}"

    def on_timeout(self, height: int, round_: int, step: str, now_ms: int) -> list[Effect]:
        self.now_ms = now_ms
        eff: list[Effect] = []
        if height != self.height:
            return eff
        self._armed.discard((round_, step))
        if round_ != self.round or self.step == COMMITTED:
            return eff
        if step == PROPOSE and self.step == PROPOSE:
            # L57-L60: OnTimeoutPropose -> prevote nil.
            self._sign_vote(PREVOTE, b"", eff)
            self._enter(PREVOTE_STEP, eff)
        elif step in (PREVOTE_STEP, PREVOTE_STALL) and self.step == PREVOTE_STEP:
            # L61-L64: OnTimeoutPrevote -> precommit nil. CONSENSUS.md §10.1: the
            # stall timer does the same when 2f+1 prevotes never came to arm L34.
            self._sign_vote(PRECOMMIT, b"", eff)
            self._enter(PRECOMMIT_STEP, eff)
        elif step == PRECOMMIT_STEP or (step == PRECOMMIT_STALL and self.step == PRECOMMIT_STEP):
            # L65-L67: OnTimeoutPrecommit -> StartRound(round + 1). §10.1: the stall
            # timer does the same when 2f+1 precommits never came to arm L47.
            self._start_round(self.round + 1, eff)
        self._evaluate(eff)
        self._arm_if_idle(eff)
        return eff

    # ------------------------------------------------------------------ vote intake
    def _add_vote(self, vote: Vote, eff: list[Effect], verified: bool) -> bool:
        v = self.vals.get(vote.validator)
        if v is None:
            return False
        rv = self._votes(vote.type, vote.round)
        voters = rv.voters_by_block.get(vote.block_hash)
        if voters is not None and vote.validator in voters:
            return False  # duplicate delivery
        prior = rv.by_validator.get(vote.validator)
        if (
            prior is not None
            and rv.extra_by_validator.get(vote.validator, 0) >= MAX_CONFLICTING_PER_VALIDATOR
        ):
            return False  # bound what one equivocator can make us store
        if not verified and not self.verify(v.pubkey, sign_bytes_of_vote(vote), vote.sig):
            return False
        if prior is None:
            rv.by_validator[vote.validator] = vote
            rv.total += v.power
        else:
            # Equivocation: two signed votes, same height/round/type, different blocks.
            rv.extra_by_validator[vote.validator] = rv.extra_by_validator.get(vote.validator, 0) + 1
            a, b = sorted((prior, vote), key=lambda x: (x.block_hash, x.timestamp_ms, x.sig))
            ev = DuplicateVoteEvidence(a, b)
            k = ev.key()
            if k not in self.evidence:
                self.evidence[k] = ev
                eff.append(EvidenceFound(ev))
        rv.voters_by_block.setdefault(vote.block_hash, {})[vote.validator] = vote
        rv.power_by_block[vote.block_hash] = rv.power_by_block.get(vote.block_hash, 0) + v.power
        return True

    # ------------------------------------------------------------------ the rules
    def _start_round(self, r: int, eff: list[Effect]) -> None:
        """L11-L21: StartRound(r)."""
        self.round = r
        self.step = PROPOSE
        # Timers of earlier rounds can no longer move us (on_timeout drops them).
        for old in sorted(self._armed):
            if old[0] < r:
                self._armed.discard(old)
        if (
            self.key is not None
            and self.proposer(r) == self.address
            and (self.height, r, SignStep.PROPOSE) > self.sign_state.hrs()
        ):
            # L14-L19: propose validValue if we have one (valid: L36 checked it,
            # or it is the restored lock's block, which passed L36 before the
            # restart), else ask for a fresh block: getValue() is an output.
            if self.valid_value is not None:
                self._sign_proposal(self.valid_value, self.valid_round, True, eff)
            else:
                self._need_value_round = r
                eff.append(NeedValue(self.height, r))
        else:
            # L21: schedule OnTimeoutPropose(h, r). Also for a proposer that may not
            # sign a proposal here (it signed at or past this step before a restart,
            # CONSENSUS.md §6): it cannot re-send the lost one, so it must time out.
            self._schedule(r, PROPOSE, self.timeouts.propose(r), eff)
        # Our own proposal, if any, is processed by the same rules as anyone's.

    def _check_invariants(self) -> None:
        """TIGER_STYLE: the paper's per-height variables stay in their order."""
        assert -1 <= self.locked_round <= self.round, (self.locked_round, self.round)
        assert -1 <= self.valid_round <= self.round, (self.valid_round, self.round)
        # A lock we hold the block of is also our valid value (L36-L43).
        assert self.locked_value is None or self.locked_round <= self.valid_round
        assert (self.decision is None) == (self.step != COMMITTED)

    def _evaluate(self, eff: list[Effect], touched_round: int | None = None) -> None:
        """Fire every rule whose condition holds, until none does."""
        for _ in range(MAX_EVALUATE_PASSES):
            if self.step == COMMITTED:
                self._check_invariants()
                return
            before = (self.round, self.step, self.locked_round, self.valid_round, len(eff))
            if touched_round is not None:
                self._rule_decide(touched_round, eff)
                if self.step == COMMITTED:
                    return
                self._rule_skip_round(touched_round, eff)
            self._rule_decide(self.round, eff)
            if self.step == COMMITTED:
                return
            self._rules_current_round(eff)
            after = (self.round, self.step, self.locked_round, self.valid_round, len(eff))
            if after == before:
                self._check_invariants()
                return
        # Each pass moves the step, round, lock or valid value forward or emits an
        # effect, and there are few of those per input: not converging is a bug.
        raise AssertionError(f"_evaluate did not converge in {MAX_EVALUATE_PASSES} passes")

    def _rules_current_round(self, eff: list[Effect]) -> None:
        r = self.round
        prop = self.proposals.get(r)
        pv = self.prevotes.get(r)
        if prop is not None and self.step == PROPOSE:
            v = prop.block
            vid = v.hash
            if prop.pol_round == -1:
                # L22-L27: fresh proposal.
                if self._valid(r) and (self.locked_round == -1 or self._is_locked_on(vid)):
                    self._sign_vote(PREVOTE, vid, eff)
                else:
                    self._sign_vote(PREVOTE, b"", eff)
                self._enter(PREVOTE_STEP, eff)
            else:
                vr = prop.pol_round
                pvr = self.prevotes.get(vr)
                if (
                    0 <= vr < r
                    and pvr is not None
                    and self.vals.has_quorum(pvr.power_by_block.get(vid, 0))
                ):
                    # L28-L33: re-proposal backed by a polka from round vr.
                    if self._valid(r) and (self.locked_round <= vr or self._is_locked_on(vid)):
                        self._sign_vote(PREVOTE, vid, eff)
                    else:
                        self._sign_vote(PREVOTE, b"", eff)
                    self._enter(PREVOTE_STEP, eff)
        if (
            pv is not None
            and self.step == PREVOTE_STEP
            and self.vals.has_quorum(pv.total)
            and ("L34", r) not in self._fired
        ):
            # L34-L35: 2f+1 prevotes for anything -> schedule OnTimeoutPrevote, once.
            self._fired.add(("L34", r))
            self._schedule(r, PREVOTE_STEP, self.timeouts.prevote(r), eff)
        if (
            prop is not None
            and pv is not None
            and self.step in (PREVOTE_STEP, PRECOMMIT_STEP)
            and ("L36", r) not in self._fired
        ):
            v = prop.block
            vid = v.hash
            if self.vals.has_quorum(pv.power_by_block.get(vid, 0)) and self._valid(r):
                # L36-L43: polka for v in this round: lock (if still at prevote) and record valid.
                self._fired.add(("L36", r))
                if self.step == PREVOTE_STEP:
                    self.locked_value = v
                    self.locked_hash = vid
                    self.locked_round = r
                    polka = [pv.voters_by_block[vid][a] for a in sorted(pv.voters_by_block[vid])]
                    self._sign_vote(PRECOMMIT, vid, eff, LockRecord(v, r, polka))
                    self._enter(PRECOMMIT_STEP, eff)
                self.valid_value = v
                self.valid_round = r
        if (
            pv is not None
            and self.step == PREVOTE_STEP
            and self.vals.has_quorum(pv.power_by_block.get(b"", 0))
        ):
            # L44-L46: 2f+1 prevotes for nil -> precommit nil.
            self._sign_vote(PRECOMMIT, b"", eff)
            self._enter(PRECOMMIT_STEP, eff)
        pc = self.precommits.get(r)
        if pc is not None and self.vals.has_quorum(pc.total) and ("L47", r) not in self._fired:
            # L47-L48: 2f+1 precommits for anything -> schedule OnTimeoutPrecommit, once.
            self._fired.add(("L47", r))
            self._schedule(r, PRECOMMIT_STEP, self.timeouts.precommit(r), eff)

    def _is_locked_on(self, vid: bytes) -> bool:
        return self.locked_round >= 0 and self.locked_hash == vid

    def _rule_decide(self, r: int, eff: list[Effect]) -> None:
        """L49-L54: a proposal and 2f+1 precommits for it in any round r decide."""
        if self.decision is not None:
            return
        prop = self.proposals.get(r)
        pc = self.precommits.get(r)
        if prop is None or pc is None:
            return
        v = prop.block
        vid = v.hash
        if not self.vals.has_quorum(pc.power_by_block.get(vid, 0)) or not self._valid(r):
            return
        self.decision = v
        self.decided_round = r
        self.step = COMMITTED
        sigs = [
            CommitSig(a, vote.timestamp_ms, vote.sig)
            for a, vote in sorted(pc.voters_by_block.get(vid, {}).items())
        ]
        eff.append(Decide(v, Commit(self.height, r, vid, sigs)))

    def _rule_skip_round(self, r: int, eff: list[Effect]) -> None:
        """L55-L56: f+1 messages from a higher round make us start that round."""
        if r <= self.round:
            return
        senders: set[bytes] = set()
        for table in (self.prevotes, self.precommits):
            rv = table.get(r)
            if rv:
                senders.update(rv.by_validator)
        prop = self.proposals.get(r)
        if prop is not None:
            senders.add(prop.proposer)
        power = sum(self.vals.power_of(a) for a in sorted(senders))
        if self.vals.has_one_third(power):
            self._start_round(r, eff)

"""Every validity rule of blocks, commits and evidence, once (CONSENSUS.md §5, §7).

The node uses these for ``valid(v)`` and for synced blocks, the light client for
headers and commits, and the ledger for the evidence it punishes, so a rule
changed here changes for all of them. Pure functions over explicit inputs: the
caller says what the block must follow (``BlockContext``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from dpkid.core import codec
from dpkid.core.consensus.messages import (
    MAX_BLOCK_BYTES,
    MAX_BLOCK_TXS,
    PRECOMMIT,
    Block,
    Commit,
    DuplicateVoteEvidence,
    Vote,
    commit_hash,
    evidence_hash,
    sign_bytes_of_vote,
    tx_root,
)
from dpkid.core.consensus.valset import ValidatorSet
from dpkid.core.crypto import sha256

Verify = Callable[[bytes, bytes, bytes], bool]

# CONSENSUS.md §7.3: evidence older than this many heights is refused.
MAX_EVIDENCE_AGE_HEIGHTS: Final = 1000


def valset_hash(vs: ValidatorSet) -> bytes:
    """The ``validators_hash`` of a header (CONSENSUS.md §3.1)."""
    return sha256(codec.encode([[v.pubkey, v.power] for v in vs.members]))


def weighted_median_time(commit: Commit, vals: ValidatorSet) -> int:
    """BFT time (CONSENSUS.md §5.3): the power-weighted lower median of the
    commit's vote timestamps. Less than 1/3 of the power cannot move it outside
    the honest range."""
    pts = sorted((s.timestamp_ms, vals.power_of(s.validator)) for s in commit.sigs)
    total = sum(p for _, p in pts)
    acc = 0
    for ts, p in pts:
        acc += p
        if 2 * acc >= total:
            return ts
    return pts[-1][0]


def verify_commit(
    chain_id: str, commit: Commit, vals: ValidatorSet, block_hash: bytes, verify: Verify
) -> bool:
    """CONSENSUS.md §2.5: signers sorted and unique, each in ``vals``, each
    signature good, and together more than 2/3 of the power."""
    if commit.block_hash != block_hash:
        return False
    power = 0
    last = b""
    for vote in commit_votes(chain_id, commit):
        if vote.validator <= last:
            return False  # sorted and unique, so no validator counts twice
        last = vote.validator
        v = vals.get(vote.validator)
        if v is None:
            return False
        if not verify(v.pubkey, sign_bytes_of_vote(vote), vote.sig):
            return False
        power += v.power
    return vals.has_quorum(power)


def commit_votes(chain_id: str, commit: Commit) -> list[Vote]:
    """The precommits a commit's signatures stand for (CONSENSUS.md §2.5)."""
    return [
        Vote(
            chain_id,
            PRECOMMIT,
            commit.height,
            commit.round,
            commit.block_hash,
            s.timestamp_ms,
            s.validator,
            s.sig,
        )
        for s in commit.sigs
    ]


# ------------------------------------------------------------------ evidence (§7.3)


class EvidenceVerdict(Enum):
    OK = "ok"
    NOT_CONFLICTING = "votes are not two different votes of one validator, height, round and type"
    UNORDERED = "votes must be ordered by block hash"
    WRONG_CHAIN = "wrong chain id"
    OUT_OF_WINDOW = "evidence too old or from the future"
    NOT_VALIDATOR = "not a current validator"
    BAD_SIGNATURE = "signature does not verify"


def evidence_conflict(ev: DuplicateVoteEvidence, chain_id: str) -> EvidenceVerdict:
    """Whether the two votes are an equivocation on ``chain_id`` at all: the
    part of the rule the node and the ledger share (§7.3, SPEC §8.2)."""
    a, b = ev.vote_a, ev.vote_b
    if (a.validator, a.height, a.round, a.type) != (b.validator, b.height, b.round, b.type):
        return EvidenceVerdict.NOT_CONFLICTING
    if a.block_hash == b.block_hash:
        return EvidenceVerdict.NOT_CONFLICTING
    if a.chain_id != chain_id or b.chain_id != chain_id:
        return EvidenceVerdict.WRONG_CHAIN
    return EvidenceVerdict.OK


def evidence_signed(ev: DuplicateVoteEvidence, pubkey: bytes, verify: Verify) -> EvidenceVerdict:
    """Both votes are signed by ``pubkey`` (§7.3, SPEC §8.2)."""
    a, b = ev.vote_a, ev.vote_b
    if verify(pubkey, sign_bytes_of_vote(a), a.sig) and verify(
        pubkey, sign_bytes_of_vote(b), b.sig
    ):
        return EvidenceVerdict.OK
    return EvidenceVerdict.BAD_SIGNATURE


def check_evidence(
    ev: DuplicateVoteEvidence,
    chain_id: str,
    height: int,
    pubkey_of: Callable[[bytes], bytes | None],
    verify: Verify,
) -> EvidenceVerdict:
    """§7.3, in its order, for evidence in a block at ``height`` or for the pool;
    ``pubkey_of`` looks a validator up in the current set."""
    a, b = ev.vote_a, ev.vote_b
    verdict = evidence_conflict(ev, chain_id)
    if verdict is EvidenceVerdict.OK and a.block_hash > b.block_hash:
        verdict = EvidenceVerdict.UNORDERED  # one canonical form per equivocation
    if verdict is not EvidenceVerdict.OK:
        return verdict
    if a.height > height or a.height + MAX_EVIDENCE_AGE_HEIGHTS < height:
        return EvidenceVerdict.OUT_OF_WINDOW
    pk = pubkey_of(a.validator)
    if pk is None:
        return EvidenceVerdict.NOT_VALIDATOR
    return evidence_signed(ev, pk, verify)


# ------------------------------------------------------------------ blocks (§5.2)


class BlockVerdict(Enum):
    """Why a block may not follow our chain; the value is the log text."""

    OK = "ok"
    WRONG_CHAIN = "wrong chain id"
    WRONG_HEIGHT = "wrong height"
    WRONG_PREV_HASH = "prev_block_hash does not match"
    WRONG_APP_HASH = "app_hash does not match our state"
    WRONG_VALIDATORS_HASH = "validators_hash mismatch"
    WRONG_NEXT_VALIDATORS_HASH = "next_validators_hash mismatch"
    PROPOSER_NOT_VALIDATOR = "proposer is not a validator"
    WRONG_TX_ROOT = "tx_root mismatch"
    WRONG_EVIDENCE_HASH = "evidence_hash mismatch"
    WRONG_LAST_COMMIT_HASH = "last_commit_hash mismatch"
    FIRST_BLOCK_HAS_COMMIT = "first block has no last commit"
    FIRST_BLOCK_TIME = "first block time must be the genesis time"
    MISSING_LAST_COMMIT = "missing last commit"
    BAD_LAST_COMMIT = "last commit does not verify"
    TIME_NOT_MEDIAN = "time is not the weighted median of the last commit"
    TIME_NOT_INCREASING = "time does not increase"
    TOO_LARGE = "block too large"
    BAD_EVIDENCE = "bad evidence"


@dataclass(frozen=True)
class BlockContext:
    """What a block at ``height`` must follow: our chain after ``height - 1``."""

    chain_id: str
    height: int
    last_block_hash: bytes  # b"" before the first block
    last_block_time_ms: int
    genesis_time_ms: int
    app_hash: bytes
    vals: ValidatorSet  # the set of ``height``
    prev_vals: ValidatorSet  # the set of ``height - 1`` (signed last_commit)
    next_vals_hash: bytes  # valset_hash of the set of ``height + 1``


def check_block(
    block: Block,
    ctx: BlockContext,
    verify: Verify,
    evidence_verdict: Callable[[DuplicateVoteEvidence], EvidenceVerdict],
) -> BlockVerdict:
    """CONSENSUS.md §5.2 checks 1-11, in that order; the first failure is the answer."""
    h = block.header
    if h.chain_id != ctx.chain_id:
        return BlockVerdict.WRONG_CHAIN  # 1
    if h.height != ctx.height:
        return BlockVerdict.WRONG_HEIGHT  # 2
    if h.prev_block_hash != ctx.last_block_hash:
        return BlockVerdict.WRONG_PREV_HASH  # 3
    if h.app_hash != ctx.app_hash:
        return BlockVerdict.WRONG_APP_HASH  # 4
    if h.validators_hash != valset_hash(ctx.vals):
        return BlockVerdict.WRONG_VALIDATORS_HASH  # 5
    if h.next_validators_hash != ctx.next_vals_hash:
        return BlockVerdict.WRONG_NEXT_VALIDATORS_HASH  # 6
    if ctx.vals.get(h.proposer) is None:
        return BlockVerdict.PROPOSER_NOT_VALIDATOR  # 7
    if h.tx_root != tx_root(block.txs):
        return BlockVerdict.WRONG_TX_ROOT  # 8
    if h.evidence_hash != evidence_hash(block.evidence):
        return BlockVerdict.WRONG_EVIDENCE_HASH
    if h.last_commit_hash != commit_hash(block.last_commit):
        return BlockVerdict.WRONG_LAST_COMMIT_HASH
    if ctx.height == 1:  # 9
        if block.last_commit is not None:
            return BlockVerdict.FIRST_BLOCK_HAS_COMMIT
        if h.time_ms != ctx.genesis_time_ms:
            return BlockVerdict.FIRST_BLOCK_TIME
    else:
        lc = block.last_commit
        if lc is None or lc.height != ctx.height - 1:
            return BlockVerdict.MISSING_LAST_COMMIT
        if not verify_commit(ctx.chain_id, lc, ctx.prev_vals, ctx.last_block_hash, verify):
            return BlockVerdict.BAD_LAST_COMMIT
        if h.time_ms != weighted_median_time(lc, ctx.prev_vals):
            return BlockVerdict.TIME_NOT_MEDIAN
        if h.time_ms <= ctx.last_block_time_ms:
            return BlockVerdict.TIME_NOT_INCREASING
    # 10: protocol limits, not this node's settings: validity is the same everywhere.
    if block_too_large(block.txs):
        return BlockVerdict.TOO_LARGE
    for ev in block.evidence:  # 11
        if evidence_verdict(ev) is not EvidenceVerdict.OK:
            return BlockVerdict.BAD_EVIDENCE
    return BlockVerdict.OK


def block_too_large(txs: Sequence[bytes]) -> bool:
    return sum(len(t) for t in txs) > MAX_BLOCK_BYTES or len(txs) > MAX_BLOCK_TXS

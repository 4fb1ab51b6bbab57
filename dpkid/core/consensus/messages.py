"""Consensus messages, blocks and commits, with their sign-bytes (protocol/CONSENSUS.md §2)."""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Final

from msgspec import Meta, Struct

from dpkid.core import codec
from dpkid.core.crypto import sha256
from dpkid.core.merkle import MerkleLog
from dpkid.core.types import U64, Addr, ChainId, Hash32, Header, OptHash, Sig

PREVOTE: Final = 1
PRECOMMIT: Final = 2


class SignStep(IntEnum):
    """Steps, ordered, for the double-sign guard (CONSENSUS §6): a proposal is
    signed at step 1, then the prevote, then the precommit."""

    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3


MAX_BLOCK_TXS: Final = 10_000
MAX_BLOCK_BYTES: Final = 8 * 1024 * 1024
MAX_EVIDENCE_PER_BLOCK: Final = 32
MAX_VALIDATORS: Final = 150

VOTE_TAG: Final = b"dpkid/vote/v1\x00"
PROPOSAL_TAG: Final = b"dpkid/proposal/v1\x00"

Round = Annotated[int, Meta(ge=0, le=2**31 - 1)]
PolRound = Annotated[int, Meta(ge=-1, le=2**31 - 1)]
TxBytes = Annotated[bytes, Meta(min_length=1, max_length=16 * 1024)]


class _M(Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    pass


class Vote(_M, frozen=True):
    chain_id: ChainId
    type: Annotated[int, Meta(ge=1, le=2)]
    height: U64
    round: Round
    block_hash: OptHash  # b"" is nil
    timestamp_ms: U64
    validator: Addr
    sig: Sig


def vote_sign_bytes(
    chain_id: str,
    type_: int,
    height: int,
    round_: int,
    block_hash: bytes,
    ts: int,
    validator: bytes,
) -> bytes:
    return VOTE_TAG + codec.encode([chain_id, type_, height, round_, block_hash, ts, validator])


def sign_bytes_of_vote(v: Vote) -> bytes:
    return vote_sign_bytes(
        v.chain_id, v.type, v.height, v.round, v.block_hash, v.timestamp_ms, v.validator
    )


class CommitSig(_M, frozen=True):
    validator: Addr
    timestamp_ms: U64
    sig: Sig


class Commit(_M, frozen=True):
    """More than 2/3 of the voting power precommitted block_hash in round."""

    height: U64
    round: Round
    block_hash: Hash32
    sigs: Annotated[list[CommitSig], Meta(max_length=MAX_VALIDATORS)]  # sorted by validator

    def votes(self, chain_id: str) -> list[Vote]:
        return [
            Vote(
                chain_id,
                PRECOMMIT,
                self.height,
                self.round,
                self.block_hash,
                s.timestamp_ms,
                s.validator,
                s.sig,
            )
            for s in self.sigs
        ]


class DuplicateVoteEvidence(_M, frozen=True):
    """Two votes by one validator for one height, round and type, on different blocks."""

    vote_a: Vote  # the one with the smaller block_hash
    vote_b: Vote

    def key(self) -> bytes:
        a = self.vote_a
        return sha256(codec.encode([a.validator, a.height, a.round, a.type]))


class Block(_M, frozen=True):
    header: Header
    txs: Annotated[list[TxBytes], Meta(max_length=MAX_BLOCK_TXS)]
    evidence: Annotated[list[DuplicateVoteEvidence], Meta(max_length=MAX_EVIDENCE_PER_BLOCK)]
    last_commit: Commit | None

    @property
    def hash(self) -> bytes:
        return header_hash(self.header)


class Proposal(_M, frozen=True):
    chain_id: ChainId
    height: U64
    round: Round
    pol_round: PolRound  # the paper's validRound carried in the proposal
    block: Block
    proposer: Addr
    sig: Sig


def proposal_sign_bytes(
    chain_id: str, height: int, round_: int, pol_round: int, block_hash: bytes, proposer: bytes
) -> bytes:
    return PROPOSAL_TAG + codec.encode([chain_id, height, round_, pol_round, block_hash, proposer])


def sign_bytes_of_proposal(p: Proposal) -> bytes:
    return proposal_sign_bytes(p.chain_id, p.height, p.round, p.pol_round, p.block.hash, p.proposer)


def header_hash(h: Header) -> bytes:
    return sha256(codec.encode(h))


def tx_root(txs: list[bytes]) -> bytes:
    """RFC 6962 Merkle root over the tx bytes (so a tx can be proven in a block)."""
    log = MerkleLog()
    for t in txs:
        log.append(t)
    return log.root()


def commit_hash(c: Commit | None) -> bytes:
    return b"" if c is None else sha256(codec.encode(c))


def evidence_hash(ev: list[DuplicateVoteEvidence]) -> bytes:
    return b"" if not ev else sha256(codec.encode(ev))

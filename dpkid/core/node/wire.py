"""The messages nodes exchange over gossip and sync (WIRE.md)."""

from __future__ import annotations

from typing import Annotated, Final

from msgspec import Meta, Struct

from dpkid.core import codec
from dpkid.core.consensus.messages import (
    MAX_BLOCK_BYTES,
    Block,
    Commit,
    DuplicateVoteEvidence,
    Proposal,
    Vote,
)
from dpkid.core.types import MAX_TX_BYTES, U64

MAX_TX_BATCH: Final = 512
MAX_SYNC_BLOCKS: Final = 32
# Encoded blocks in one sync answer, at most (but always one block): a shell's cap.
SYNC_REPLY_MAX_BYTES: Final = 8 * 1024 * 1024

# ------------------------------------------------------------------ wire messages (WIRE.md)


class TxBatch(Struct, frozen=True, array_like=True, tag="txs"):
    txs: Annotated[
        list[Annotated[bytes, Meta(max_length=MAX_TX_BYTES)]], Meta(max_length=MAX_TX_BATCH)
    ]


class StatusMsg(Struct, frozen=True, array_like=True, tag="status"):
    height: U64  # latest committed height
    round: Annotated[int, Meta(ge=0, le=2**31 - 1)]


class BlockRequest(Struct, frozen=True, array_like=True, tag="get_blocks"):
    from_height: U64
    count: Annotated[int, Meta(ge=1, le=MAX_SYNC_BLOCKS)]


class SyncedBlock(Struct, frozen=True, array_like=True):
    block: Block
    commit: Commit


class BlockResponse(Struct, frozen=True, array_like=True, tag="blocks"):
    blocks: Annotated[list[SyncedBlock], Meta(max_length=MAX_SYNC_BLOCKS)]


class ProposalMsg(Struct, frozen=True, array_like=True, tag="proposal"):
    proposal: Proposal


class VoteMsg(Struct, frozen=True, array_like=True, tag="vote"):
    votes: Annotated[list[Vote], Meta(min_length=1, max_length=1024)]


class EvidenceMsg(Struct, frozen=True, array_like=True, tag="evidence"):
    evidence: DuplicateVoteEvidence


class ProposalRequest(Struct, frozen=True, array_like=True, tag="get_proposal"):
    """Ask a peer that voted for a block we never received for its proposal."""

    height: U64
    round: Annotated[int, Meta(ge=0, le=2**31 - 1)]


WireMsg = (
    TxBatch
    | StatusMsg
    | BlockRequest
    | BlockResponse
    | ProposalMsg
    | VoteMsg
    | EvidenceMsg
    | ProposalRequest
)


def encode_msg(m: WireMsg) -> bytes:
    return codec.encode(m)


def decode_msg(data: bytes) -> WireMsg:
    """Raises codec.DecodeError on anything that is not one canonical message."""
    msg: WireMsg = codec.decode(data, WireMsg, max_bytes=MAX_BLOCK_BYTES * 2)  # type: ignore[arg-type]
    return msg

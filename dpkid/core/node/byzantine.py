"""Misbehaviour for tests: the conflicting twin of a message a validator sends.

Shared by the simulator's Byzantine validators (``dpkid/sim/runner.py``) and the
daemon's test-only ``test_byzantine`` setting (``dpkid/daemon/daemon.py``), so a
real process and a simulated node misbehave in exactly the same way. NodeCore
never calls this: the honest logic stays honest, and only a shell turns a
message it was asked to send into two.

The twin is signed here, straight with the key, and never passes the
double-sign guard (CONSENSUS.md §6): that conflicting signature is the whole
point. The honest copy still went through the guard in the core.
"""

from __future__ import annotations

from typing import Final

import msgspec

from dpkid.core.consensus.messages import (
    Block,
    Proposal,
    Vote,
    proposal_sign_bytes,
    tx_root,
    vote_sign_bytes,
)
from dpkid.core.crypto import SigningKey, sha256
from dpkid.core.node.wire import ProposalMsg, VoteMsg, WireMsg

# A second, conflicting proposal whenever it proposes and a second, conflicting
# prevote/precommit for each of its own votes.
EQUIVOCATE: Final = "equivocate"
# Sign with invalid threshold-signature shares (SPEC §16.7): the ledger must
# name the signer, jail it and finish the signature without it.
BAD_SHARES: Final = "bad_shares"


def conflicting_proposal(key: SigningKey, p: Proposal) -> Proposal:
    """Another block for the same (height, round): half the txs, or, when that
    changes nothing (no txs), a wrong evidence hash, so the hashes differ."""
    blk = p.block
    txs = blk.txs[: len(blk.txs) // 2]
    hdr = msgspec.structs.replace(blk.header, tx_root=tx_root(txs))
    if txs == blk.txs:
        hdr = msgspec.structs.replace(hdr, evidence_hash=sha256(b"equivocate"))
    b2 = Block(hdr, txs, blk.evidence, blk.last_commit)
    sig = key.sign(
        proposal_sign_bytes(p.chain_id, p.height, p.round, p.pol_round, b2.hash, key.address)
    )
    return Proposal(p.chain_id, p.height, p.round, p.pol_round, b2, key.address, sig)


def conflicting_vote(key: SigningKey, v: Vote) -> Vote:
    """A vote by ``key`` at v's (height, round, type) for another value: nil for
    a block, a phantom block for nil. With ``v`` it is DuplicateVoteEvidence
    (CONSENSUS.md §2.6)."""
    other = b"" if v.block_hash else sha256(b"phantom" + v.height.to_bytes(8, "big"))
    sig = key.sign(
        vote_sign_bytes(v.chain_id, v.type, v.height, v.round, other, v.timestamp_ms, key.address)
    )
    return Vote(v.chain_id, v.type, v.height, v.round, other, v.timestamp_ms, key.address, sig)


def conflicting_msg(
    key: SigningKey,
    msg: WireMsg,
    *,
    proposals: bool,
    votes: bool,
    own_votes_only: bool = True,
) -> WireMsg | None:
    """The conflicting twin of ``msg`` to send alongside it, or None.

    ``proposals``: a ProposalMsg gets a conflicting proposal. ``votes``: a
    VoteMsg gets a conflicting vote per vote; only per vote signed by ``key``
    with ``own_votes_only`` (the daemon: a vote re-gossiped for another
    validator is not ours to double), per every vote without it (the
    simulator's long-standing behaviour, kept so its seeds replay unchanged).
    """
    if proposals and isinstance(msg, ProposalMsg):
        return ProposalMsg(conflicting_proposal(key, msg.proposal))
    if votes and isinstance(msg, VoteMsg):
        alts = [
            conflicting_vote(key, v)
            for v in msg.votes
            if not own_votes_only or v.validator == key.address
        ]
        return VoteMsg(alts) if alts else None
    return None

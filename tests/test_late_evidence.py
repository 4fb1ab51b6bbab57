"""Equivocation on heights already decided becomes evidence (CONSENSUS.md §7.1).

A validator that lost its store signs old heights again while everyone else
has moved on; before this, such votes were dropped unseen.
"""

from __future__ import annotations

import msgspec
import pytest

from dpkid.cli.sim import load_scenario
from dpkid.core.consensus.messages import PREVOTE, Vote, vote_sign_bytes
from dpkid.core.consensus.validity import EvidenceVerdict
from dpkid.core.crypto import SigningKey, sha256
from dpkid.core.node.core import NodeCore
from dpkid.core.node.effects import Ready, Receive
from dpkid.core.node.wire import EvidenceMsg, VoteMsg
from dpkid.sim.runner import Simulation
from tests.test_sim_sweep import SIMULATIONS


@pytest.fixture(scope="module")
def decided() -> tuple[NodeCore, SigningKey]:
    sc = load_scenario(SIMULATIONS / "baseline-4.toml")
    sc.heights = 10
    sim = Simulation(sc)
    sim.run()
    core = sim.nodes[0].core
    assert core is not None and core.state.height >= 10
    return core, sim.val_keys[3]


def _kept(core: NodeCore, key: SigningKey, height: int) -> Vote:
    return next(
        v
        for k, v in core.vote_history.items()
        if k[0] == height and k[2] == PREVOTE and k[3] == key.address
    )


def _signed(key: SigningKey, like: Vote, block_hash: bytes, ts: int) -> Vote:
    h, r, a = like.height, like.round, key.address
    sig = key.sign(vote_sign_bytes(like.chain_id, PREVOTE, h, r, block_hash, ts, a))
    return Vote(like.chain_id, PREVOTE, h, r, block_hash, ts, a, sig)


def test_a_conflicting_vote_for_a_decided_height_is_evidence(
    decided: tuple[NodeCore, SigningKey],
) -> None:
    core, key = decided
    orig = _kept(core, key, core.height - 3)
    forged = _signed(key, orig, sha256(b"forged"), orig.timestamp_ms + 1)
    out = core.step(Receive("peer", VoteMsg([forged]), core.now_ms + 1))
    ev = [e.msg.evidence for e in out.sends if isinstance(e.msg, EvidenceMsg)]
    assert len(ev) == 1
    pair = {ev[0].vote_a.block_hash, ev[0].vote_b.block_hash}
    assert pair == {orig.block_hash, forged.block_hash}
    assert core.check_evidence(ev[0]) is EvidenceVerdict.OK
    assert ev[0].key() in core.evidence_pool
    assert any(e.kind == "equivocation" for e in out.events)
    # Gossiped again: already pooled, nothing new.
    assert core.step(Receive("peer", VoteMsg([forged]), core.now_ms + 2)) == Ready()


def test_the_same_vote_again_or_a_bad_signature_is_not_evidence(
    decided: tuple[NodeCore, SigningKey],
) -> None:
    core, key = decided
    orig = _kept(core, key, core.height - 4)
    pool = dict(core.evidence_pool)
    retimed = _signed(key, orig, orig.block_hash, orig.timestamp_ms + 5)
    assert core.step(Receive("peer", VoteMsg([retimed]), core.now_ms + 1)) == Ready()
    other = _signed(SigningKey.from_label("not-the-validator"), orig, sha256(b"x"), 1)
    bad = msgspec.structs.replace(other, validator=key.address)  # a stranger's signature
    assert core.step(Receive("peer", VoteMsg([bad]), core.now_ms + 1)) == Ready()
    assert core.evidence_pool == pool

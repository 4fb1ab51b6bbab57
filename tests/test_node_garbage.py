"""Remote garbage never raises out of the node core, and changes nothing."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpkid.core import codec
from dpkid.core.consensus.messages import PREVOTE, Vote, vote_sign_bytes
from dpkid.core.crypto import SigningKey
from dpkid.core.node.core import NodeCore
from dpkid.core.node.effects import ReceiveBytes, Start
from dpkid.core.node.wire import (
    BlockRequest,
    BlockResponse,
    ProposalRequest,
    StatusMsg,
    TxBatch,
    VoteMsg,
    encode_msg,
)
from dpkid.dev.devchain import dev_genesis

GENESIS, KEYS = dev_genesis()


def _node() -> NodeCore:
    n = NodeCore(GENESIS, KEYS.validators[0])
    n.step(Start(GENESIS.genesis_time_ms))
    return n


def _valid_messages() -> list[bytes]:
    k = KEYS.validators[1]
    sb = vote_sign_bytes(
        GENESIS.chain_id, PREVOTE, 1, 0, b"", GENESIS.genesis_time_ms + 1, k.address
    )
    vote = Vote(
        GENESIS.chain_id, PREVOTE, 1, 0, b"", GENESIS.genesis_time_ms + 1, k.address, k.sign(sb)
    )
    return [
        encode_msg(VoteMsg([vote])),
        encode_msg(StatusMsg(5, 0)),
        encode_msg(BlockRequest(1, 4)),
        encode_msg(BlockResponse([])),
        encode_msg(TxBatch([b"\x93\x01\x02\x03"])),
        encode_msg(ProposalRequest(1, 0)),
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=512))
def test_random_bytes_are_dropped(data: bytes) -> None:
    n = _node()
    before = (n.state.app_hash, n.hs.round, n.hs.step, len(n.mempool))
    n.step(ReceiveBytes("peer-x", data, GENESIS.genesis_time_ms + 10))
    assert (n.state.app_hash, n.hs.round, n.hs.step) == before[:3]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    idx=st.integers(0, 5), pos=st.integers(0, 10_000), byte=st.integers(0, 255), cut=st.booleans()
)
def test_mutated_messages_never_raise(idx: int, pos: int, byte: int, cut: bool) -> None:
    msg = bytearray(_valid_messages()[idx])
    p = pos % len(msg)
    if cut:
        del msg[p:]
    else:
        msg[p] = byte
    n = _node()
    n.step(ReceiveBytes("peer-y", bytes(msg), GENESIS.genesis_time_ms + 10))
    assert n.state.height == 0


def test_forged_vote_from_a_non_validator_is_ignored() -> None:
    n = _node()
    evil = SigningKey.from_label("not-a-validator")
    sb = vote_sign_bytes(
        GENESIS.chain_id, PREVOTE, 1, 0, b"", GENESIS.genesis_time_ms + 1, evil.address
    )
    vote = Vote(
        GENESIS.chain_id,
        PREVOTE,
        1,
        0,
        b"",
        GENESIS.genesis_time_ms + 1,
        evil.address,
        evil.sign(sb),
    )
    n.step(ReceiveBytes("peer-z", codec.encode(VoteMsg([vote])), GENESIS.genesis_time_ms + 10))
    assert n.hs.prevotes.get(0) is None or evil.address not in n.hs.prevotes[0].by_validator

"""Real multi-process testnets on 127.0.0.1: agreement, liveness, restarts, sync."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpkid.core import codec
from dpkid.core.crypto import sha256
from dpkid.core.types import Transfer, sign_tx
from dpkid.daemon.config import read_key
from tests.netutil import LocalNet, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNet]:
    t = LocalNet(tmp_path / "tn", validators=4)
    try:
        yield t
    finally:
        t.close()


def _transfer(net: LocalNet, account: int, nonce: int, amount: int) -> bytes:
    key = read_key(Path(net.info["account_keys"][account]))
    to = read_key(Path(net.info["account_keys"][(account + 1) % len(net.info["account_keys"])]))
    return codec.encode(sign_tx(key, net.info["chain_id"], nonce, 10, Transfer(to.address, amount)))


def _assert_same_chain(net: LocalNet, nodes: list[int], upto: int) -> None:
    ref = net.block_hashes(nodes[0], upto)
    for i in nodes[1:]:
        assert net.block_hashes(i, upto) == ref, f"node{i} differs from node{nodes[0]}"


def _signers(net: LocalNet, i: int, height: int) -> set[str]:
    b = net.rpc(i, "block_get", {"height": height})
    return {s["validator"] for s in b["commit"]["sigs"]}


def test_four_validators_commit_agree_and_include_txs(net: LocalNet) -> None:
    net.start_all()
    net.wait_height([0, 1, 2, 3], 2, timeout_s=60)
    # Transactions sent to every node end up committed.
    hashes = []
    for n in range(8):
        raw = _transfer(net, n % 4, n // 4, 100 + n)
        res = net.rpc(n % 4, "tx_submit", {"tx": raw.hex()})
        assert res["hash"] == sha256(raw).hex()
        hashes.append(res["hash"])
    net.wait_height([0, 1, 2, 3], 20, timeout_s=120)

    def all_committed() -> bool:
        return all(net.rpc(0, "tx_get", {"hash": h})["committed"] for h in hashes)

    wait_for(all_committed, 60, "all submitted txs to commit")
    for h in hashes:
        got = net.rpc(2, "tx_get", {"hash": h})
        assert got["committed"] and got["code"] == 0
    _assert_same_chain(net, [0, 1, 2, 3], 20)
    # A client checks the header's hashes from the bytes block_get gives, without
    # re-encoding JSON views.
    for h in (1, 2, 20):
        b = net.rpc(0, "block_get", {"height": h})
        lc = bytes.fromhex(b["last_commit_bytes"])
        assert b["header"]["last_commit_hash"] == (sha256(lc).hex() if lc else "")
        ev = bytes.fromhex(b["evidence_bytes"])
        assert b["header"]["evidence_hash"] == (sha256(ev).hex() if ev else "")
    st = [net.rpc(i, "status") for i in range(4)]
    assert all(s["chain_id"] == net.info["chain_id"] and s["peers"] >= 2 for s in st)
    # A healthy network on the default config logs no warning and no error: an
    # operator's alerting on warnings must not fire on a good day.
    for i in range(4):
        loud = [
            line
            for line in net.log_text(i).splitlines()
            if line.startswith("{") and json.loads(line).get("level") in ("warning", "error")
        ]
        assert not loud, f"node{i}: {loud[:3]}"


def test_one_validator_down_chain_stays_live_and_it_rejoins(net: LocalNet) -> None:
    net.start_all()
    net.wait_height([0, 1, 2, 3], 3, timeout_s=60)
    addr3 = read_key(net.home(3) / "node_key.json").address.hex()
    net.kill(3)
    h = net.height(0)
    net.wait_height([0, 1, 2], h + 5, timeout_s=60)
    net.start(3)
    target = net.height(0) + 2
    net.wait_height([3], target, timeout_s=90)
    # Back in consensus: its precommit appears in commits after it rejoined.
    wait_for(
        lambda: addr3 in _signers(net, 0, net.height(0)),
        60,
        "the restarted validator to sign again",
    )
    _assert_same_chain(net, [0, 3], target)


def test_two_of_four_down_halts_then_resumes_without_fork(net: LocalNet) -> None:
    net.start_all()
    net.wait_height([0, 1, 2, 3], 3, timeout_s=60)
    net.stop(2)
    net.stop(3)
    # Let any height already in flight finish, then watch a window with no quorum.
    time.sleep(3)
    halted_at = net.height(0)
    observe_until = time.monotonic() + 6
    while time.monotonic() < observe_until:
        assert net.height(0) == halted_at and net.height(1) == halted_at, "progress without quorum"
        time.sleep(0.5)
    net.start(2)
    net.start(3)
    net.wait_height([0, 1, 2, 3], halted_at + 4, timeout_s=120)
    _assert_same_chain(net, [0, 1, 2, 3], halted_at + 4)


def test_node_with_wiped_data_syncs_from_genesis(net: LocalNet) -> None:
    net.start_all()
    net.wait_height([0, 1, 2, 3], 8, timeout_s=90)
    net.kill(3)
    shutil.rmtree(net.home(3) / "data")
    net.start(3)
    target = net.height(0) + 1
    net.wait_height([3], target, timeout_s=90)
    _assert_same_chain(net, [0, 3], target)

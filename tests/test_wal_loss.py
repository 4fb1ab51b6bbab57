"""A validator that loses its SQLite WAL (issue 10 §2), on real processes.

kill -9 a validator under signed load, truncate ``data/dpkid.sqlite-wal`` to 0
bytes and restart it. Its store rolls back, but the double-sign guard is its
own file (CONSENSUS.md §6), so a passive gossip peer that records every
signed consensus message must never see two signatures from it for one
(height, round, step). The node says loudly that its store is behind its sign
state. Then a conflicting vote signed with its key is forced onto the gossip
topic: it must become committed evidence and cost the validator its seat.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpkid.core.consensus.messages import PREVOTE, Vote, vote_sign_bytes
from dpkid.core.crypto import sha256
from dpkid.core.node.wire import VoteMsg, encode_msg
from dpkid.daemon.config import read_key
from tests.netutil import LocalNet, Recorder, SignedLoad, wait_for

pytestmark = pytest.mark.slow
VICTIM = 3


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNet]:
    t = LocalNet(tmp_path / "tn", validators=4)
    try:
        yield t
    finally:
        t.close()


def _store_height(db: Path) -> int:
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        if c.execute("SELECT name FROM sqlite_master WHERE name='blocks'").fetchone() is None:
            return 0  # even the schema was only in the lost WAL
        row = c.execute("SELECT MAX(height) FROM blocks").fetchone()
        return int(row[0] or 0)
    finally:
        c.close()


def test_wal_loss_never_double_signs_and_forced_equivocation_is_committed(
    net: LocalNet, tmp_path: Path
) -> None:
    net.start_all()
    net.wait_height([0, 1, 2, 3], 3, timeout_s=90)
    rec = Recorder(net.info["chain_id"], net.info["listen"], tmp_path / "gossip.jsonl")
    load = SignedLoad(net, skip_nodes={VICTIM})
    try:
        net.wait_height([0, 1, 2, 3], 12, timeout_s=120)
        home = net.home(VICTIM)
        net.kill(VICTIM)
        wal = home / "data" / "dpkid.sqlite-wal"
        assert wal.exists() and wal.stat().st_size > 0
        wal.write_bytes(b"")  # the WAL is lost
        store_h = _store_height(home / "data" / "dpkid.sqlite")
        signed_h = json.loads((home / "sign_state.json").read_text())["height"]
        assert store_h < signed_h, "the test must roll the store back behind its signatures"
        net.start(VICTIM)
        tip = max(net.height(i) for i in range(3))
        net.wait_height([VICTIM], tip + 3, timeout_s=120)
        assert "store_behind_sign_state" in net.log_text(VICTIM)

        # Force an equivocation: a second prevote, signed with the victim's key,
        # for a height it already voted on (seen by the recorder).
        key = read_key(home / "node_key.json")
        addr = key.address.hex()
        mine = [
            r
            for r in rec.records()
            if r["kind"] == "vote" and r["validator"] == addr and r["type"] == PREVOTE
        ]
        assert mine, "the recorder saw no prevote of the victim"
        # A height a few back, decided everywhere by the time the forgery arrives.
        top_h = max(r["height"] for r in mine)
        target = max((r for r in mine if r["height"] <= top_h - 3), key=lambda r: r["height"])
        forged_hash = sha256(b"forged block")
        assert forged_hash.hex() != target["block_hash"]
        ts = target["timestamp_ms"] + 1
        sig = key.sign(
            vote_sign_bytes(
                net.info["chain_id"],
                PREVOTE,
                target["height"],
                target["round"],
                forged_hash,
                ts,
                key.address,
            )
        )
        forged = Vote(
            net.info["chain_id"],
            PREVOTE,
            target["height"],
            target["round"],
            forged_hash,
            ts,
            key.address,
            sig,
        )
        original = Vote(
            net.info["chain_id"],
            PREVOTE,
            target["height"],
            target["round"],
            bytes.fromhex(target["block_hash"]),
            target["timestamp_ms"],
            key.address,
            bytes.fromhex(target["sig"]),
        )
        from_h = net.height(0)
        # With the original alongside, a node that never held the original (it
        # synced that height) sees the pair too.
        rec.publish(encode_msg(VoteMsg([original, forged])))

        def evidence_height() -> int | None:
            top = net.height(0)
            for h in range(from_h, top + 1):
                b = net.rpc(0, "block_get", {"height": h})
                if b["evidence"]:
                    return h
            return None

        ev_h = wait_for(evidence_height, 90, "the forced equivocation to be committed as evidence")
        net.wait_height([0, 1, 2], ev_h + 3, timeout_s=60)
        vals = net.rpc(0, "validators_at", {"height": ev_h + 3})["validators"]
        seated = {v["pubkey"] for v in vals}
        assert key.public_key.hex() not in seated, "the equivocator kept its seat"
    finally:
        load.close()
        records = rec.records()
        rec.close()

    # Every (height, round, step) the victim signed carries exactly one signature,
    # the forged vote aside (that was us, with its key).
    key = read_key(net.home(VICTIM) / "node_key.json")
    seen: dict[tuple[str, int, int, int], set[tuple[str, str]]] = {}
    for r in records:
        if r["validator"] != key.address.hex() or r["block_hash"] == forged_hash.hex():
            continue
        step = 1 if r["kind"] == "proposal" else 1 + r["type"]
        seen.setdefault((r["kind"], r["height"], r["round"], step), set()).add(
            (r["block_hash"], r["sig"])
        )
    assert len(seen) > 20, "too few of the victim's messages recorded to judge"
    doubles = {k: v for k, v in seen.items() if len(v) > 1}
    assert not doubles, f"the victim signed twice: {doubles}"

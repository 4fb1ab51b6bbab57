"""A Byzantine validator process and a skewed clock, on real `dpkid start` nodes
(issue 13), and the rule that keeps both test-only settings off real chains.

* ``test_byzantine = "equivocate"``: one of 4 validators signs a conflicting
  proposal whenever it proposes and a conflicting vote beside each of its votes.
  The honest 3 never fork, commit DuplicateVoteEvidence against it, jail it
  (CONSENSUS.md §7.4: out of ``validators_at`` from two heights on) and keep
  committing without it.
* ``test_clock_offset_ms = 30000``: a validator 30 s ahead commits with its
  peers, and cannot drag block time ahead (BFT time, CONSENSUS.md §5.3).
* Outside a testnet genesis, `dpkid start` refuses either setting in one line.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from dpkid.cli.main import main
from dpkid.core.genesis import genesis_to_json
from dpkid.core.types import Genesis, GenesisValidator
from dpkid.daemon.config import (
    ConfigError,
    NodeSettings,
    check_settings_for_genesis,
    read_key,
    read_settings,
)
from tests.netutil import LocalNet, Recorder, SignedLoad, wait_for

SKEWED = 2
SKEW_MS = 30_000


def _set(home: Path, **values: Any) -> None:
    """Add settings to a home's config.toml (as an operator would edit it)."""
    path = home / "config.toml"
    doc = tomllib.loads(path.read_text())
    doc["node"].update(values)
    path.write_text(tomli_w.dumps(doc))


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNet]:
    t = LocalNet(tmp_path / "tn", validators=4)
    try:
        yield t
    finally:
        t.close()


def _agree(net: LocalNet, nodes: list[int], upto: int) -> list[tuple[str, str]]:
    """Every node's (block hash, app hash) at heights 1..upto, which must be one chain."""
    chains = {i: net.block_hashes(i, upto) for i in nodes}
    first = chains[nodes[0]]
    for i, chain in chains.items():
        for h, (a, b) in enumerate(zip(first, chain, strict=True), start=1):
            assert a == b, f"fork at height {h}: node{nodes[0]} has {a}, node{i} has {b}"
    return first


@pytest.mark.slow
def test_an_equivocating_validator_is_caught_jailed_and_the_chain_goes_on(
    net: LocalNet, tmp_path: Path
) -> None:
    # With equal powers, round 0 of heights 1, 2, 3, ... is proposed in address
    # order (CONSENSUS.md §3.4). Evidence can be in block 2 at the earliest, and
    # the offender votes until two heights after it (§7.4), so the third in
    # address order surely proposes (height 3) before it is jailed.
    keys = [read_key(net.home(i) / "node_key.json") for i in range(4)]
    byz = sorted(range(4), key=lambda i: keys[i].address)[2]
    _set(net.home(byz), test_byzantine="equivocate")
    addr, pubkey = keys[byz].address.hex(), keys[byz].public_key.hex()
    honest = [i for i in range(4) if i != byz]
    net.start_all()
    # At once: it must hear the whole misbehaviour, from height 1.
    rec = Recorder(net.info["chain_id"], net.info["listen"], tmp_path / "gossip.jsonl")
    load = SignedLoad(net, rate_per_s=10, skip_nodes={byz})
    try:

        def evidence_height() -> int | None:
            for h in range(1, net.height(0) + 1):
                ev = net.rpc(0, "block_get", {"height": h})["evidence"]
                if addr in json.dumps(ev):
                    return h
            return None

        ev_h = wait_for(evidence_height, 120, "evidence against the equivocator in a block")
        assert "test_faults_on" in net.log_text(byz), "the node must say it misbehaves on purpose"
        # Jailed in block ev_h, out of the set from ev_h + 2 (CONSENSUS.md §7.4, §8).
        net.wait_height(honest, ev_h + 8, timeout_s=120)
        before = {v["pubkey"] for v in net.rpc(0, "validators_at", {"height": ev_h})["validators"]}
        assert pubkey in before
        for h in (ev_h + 2, ev_h + 8):
            seated = {v["pubkey"] for v in net.rpc(0, "validators_at", {"height": h})["validators"]}
            assert pubkey not in seated, f"the equivocator still votes at height {h}"
            assert len(seated) == 3
        # The 3 honest validators go on alone, under load.
        tip = min(net.height(i) for i in honest)
        net.wait_height(honest, tip + 3, timeout_s=60)
        assert load.accepted > 0
    finally:
        load.close()
        records = rec.records()
        rec.close()

    tip = min(net.height(i) for i in honest)
    chain = _agree(net, honest, tip)
    assert len(chain) == tip
    # It really did equivocate, both ways, on the wire: two signed values for one
    # (height, round) proposal, and for one (height, round, type) vote.
    values: dict[tuple[str, int, int, int], set[str]] = {}
    for r in records:
        if r["validator"] == addr:
            k = (r["kind"], r["height"], r["round"], r.get("type", 0))
            values.setdefault(k, set()).add(r["block_hash"])
    doubled = {k[0] for k, v in values.items() if len(v) > 1}
    assert doubled == {"proposal", "vote"}, f"doubled only {doubled or 'nothing'}"


@pytest.mark.slow
def test_a_validator_30_s_ahead_commits_with_its_peers_and_block_time_stays_honest(
    net: LocalNet,
) -> None:
    _set(net.home(SKEWED), test_clock_offset_ms=SKEW_MS)
    skewed = read_key(net.home(SKEWED) / "node_key.json").address.hex()
    net.start_all()
    net.wait_height(list(range(4)), 8, timeout_s=120)
    tip = min(net.height(i) for i in range(4))
    _agree(net, list(range(4)), tip)
    ahead_ms: list[int] = []
    for h in range(2, tip + 1):
        b = net.rpc(0, "block_get", {"height": h})
        block_ms = b["header"]["time_ms"]
        # The lower power-weighted median of the commit's timestamps (§5.3): one
        # fast clock among four cannot move it, so block time is an honest
        # clock's, never 30 s in the future.
        assert block_ms <= time.time_ns() // 1_000_000 + SKEW_MS // 3, f"height {h} runs ahead"
        # ...while the skewed node's precommits (in the commits that have one:
        # 3 of 4 make a commit) carry its own clock: the offset is live.
        ahead_ms += [
            s["timestamp_ms"] - block_ms
            for s in b["last_commit"]["sigs"]
            if s["validator"] == skewed
        ]
    assert ahead_ms, "no commit holds a precommit of the skewed validator"
    assert min(ahead_ms) > SKEW_MS * 2 // 3, f"its precommits are only {ahead_ms} ms ahead"
    assert net.rpc(SKEWED, "status")["height"] >= tip


def _home_on_chain(tmp_path: Path, chain_id: str, **values: Any) -> Path:
    home = tmp_path / "home"
    assert main(["init", "--home", str(home), "--json"]) == 0
    key = read_key(home / "node_key.json")
    g = Genesis(chain_id, 1_700_000_000_000, [GenesisValidator(key.public_key, 10, "n")], [], [])
    (home / "genesis.json").write_text(genesis_to_json(g))
    _set(home, **values)
    return home


@pytest.mark.parametrize(
    ("name", "value"), [("test_byzantine", "equivocate"), ("test_clock_offset_ms", -5_000)]
)
def test_test_only_settings_are_refused_outside_a_testnet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, value: Any
) -> None:
    home = _home_on_chain(tmp_path, "dpkid-mainnet", **{name: value})
    capsys.readouterr()
    assert main(["start", "--home", str(home), "--json"]) == 2
    err = json.loads(capsys.readouterr().out)["error"]
    assert f"node.{name}" in err and "testnet" in err and "'dpkid-mainnet'" in err
    assert "\n" not in err
    assert not (home / "data" / "dpkid.sqlite").exists(), "refused before touching the store"


def test_test_only_settings_are_accepted_on_a_testnet_and_bounded(tmp_path: Path) -> None:
    home = _home_on_chain(tmp_path, "dpkid-testnet", test_byzantine="equivocate")
    s = read_settings(home / "config.toml")
    g = Genesis("dpkid-testnet", 1, [], [], [])
    check_settings_for_genesis(s, g, "config.toml")  # no error
    check_settings_for_genesis(NodeSettings(test_clock_offset_ms=86_400_000), g, "config.toml")
    for bad in ({"test_clock_offset_ms": 86_400_001}, {"test_byzantine": "sometimes"}):
        _set(home, **bad)
        with pytest.raises(ConfigError, match=f"node.{next(iter(bad))}"):
            read_settings(home / "config.toml")
        _set(home, test_clock_offset_ms=0, test_byzantine="")

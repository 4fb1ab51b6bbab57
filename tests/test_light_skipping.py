"""Skipping verification (protocol/LIGHT.md): bisection across validator-set
changes, a set that changes entirely, the trusting period, forged headers,
checkpoints and the trusted store."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpkid.client.lightclient import (
    NotEnoughTrust,
    TrustExpired,
    VerifyError,
    skip_to,
    trust_genesis,
    verify_light_block,
)
from dpkid.client.verify import TrustRoot, establish, load_store, save_store
from dpkid.core import codec
from dpkid.core.consensus.messages import header_hash
from dpkid.core.crypto import SigningKey
from dpkid.dev.synthchain import SynthChain, build, valset_of

PERIOD = 7 * 86_400_000


def keys(tag: str, n: int = 4, power: int = 10) -> list[tuple[SigningKey, int]]:
    return [(SigningKey.from_label(f"{tag}-{i}"), power) for i in range(n)]


def now_at(c: SynthChain, height: int) -> int:
    return c.blocks[height].header.time_ms + 1_000


def rolling(heights: int, every: int) -> tuple[list[tuple[SigningKey, int]], dict[int, Any]]:
    """One of four validators replaced every ``every`` heights."""
    cur = keys("v")
    changes = {}
    for n, h in enumerate(range(every, heights, every)):
        cur = [*cur[1:], (SigningKey.from_label(f"new-{n}"), 10)]
        changes[h] = cur
    return keys("v"), changes


def test_an_unchanged_set_is_one_fetch_from_genesis() -> None:
    c = build(1_000, keys("v"))
    t, fetched = skip_to(trust_genesis(c.genesis), 1_000, c.fetch, now_at(c, 1_000), PERIOD)
    assert t.height == 1_000 and fetched == 1
    assert t.block_hash == header_hash(c.blocks[1_000].header)


def test_rolling_set_changes_stay_within_the_fetch_bound() -> None:
    first, changes = rolling(2_000, 100)
    c = build(2_000, first, changes)
    t, fetched = skip_to(trust_genesis(c.genesis), 2_000, c.fetch, now_at(c, 2_000), PERIOD)
    assert t.height == 2_000
    assert fetched <= 2 * (len(changes) + math.log2(2_000)), fetched


def test_a_set_that_changes_entirely_is_followed_through_its_hand_off() -> None:
    c = build(1_000, keys("old"), {500: keys("new")})
    t, fetched = skip_to(trust_genesis(c.genesis), 1_000, c.fetch, now_at(c, 1_000), PERIOD)
    assert t.height == 1_000 and fetched <= 2 * (1 + math.log2(1_000))
    # No jump across the change can be trusted: the old set never signed after it.
    t0 = trust_genesis(c.genesis)
    with pytest.raises(NotEnoughTrust):
        verify_light_block(t0, c.blocks[600], now_at(c, 1_000), PERIOD)


@settings(max_examples=25, deadline=None)
@given(
    every=st.integers(min_value=3, max_value=60),
    target=st.integers(min_value=2, max_value=300),
)
def test_bisection_reaches_any_height_of_any_rolling_schedule(every: int, target: int) -> None:
    first, changes = rolling(target + 1, every)
    c = build(target + 1, first, changes)
    t, _ = skip_to(trust_genesis(c.genesis), target, c.fetch, now_at(c, target), PERIOD)
    assert t.block_hash == header_hash(c.blocks[target].header)


def test_an_expired_trusting_period_is_refused_with_the_remedy() -> None:
    c = build(10, keys("v"))
    late = c.genesis.genesis_time_ms + PERIOD
    with pytest.raises(TrustExpired) as ei:
        skip_to(trust_genesis(c.genesis), 10, c.fetch, late, PERIOD)
    assert "trusting period" in str(ei.value) and "--trust-height" in str(ei.value)


def test_a_forged_chain_signed_by_another_set_is_refused() -> None:
    real = build(100, keys("v"))
    # A chain the trusted set never handed off to: >2/3 of its own set signs
    # every header, so only the trust rules can tell.
    fake = build(100, keys("attacker"), genesis_time_ms=real.genesis.genesis_time_ms)
    with pytest.raises(VerifyError) as ei:
        skip_to(trust_genesis(real.genesis), 100, fake.fetch, now_at(fake, 100), PERIOD)
    assert not isinstance(ei.value, NotEnoughTrust)
    assert "we do not trust" in str(ei.value)


def test_a_commit_of_too_little_of_its_own_set_is_refused() -> None:
    c = build(20, keys("v"), signers=lambda h, ks: ks[:2] if h == 20 else ks)
    with pytest.raises(VerifyError) as ei:
        skip_to(trust_genesis(c.genesis), 20, c.fetch, now_at(c, 20), PERIOD)
    assert "more than 2/3" in str(ei.value)


def test_one_third_of_the_trusted_set_is_not_enough_but_more_is() -> None:
    ks = keys("v", n=3)
    c = build(30, ks, {10: [*ks[:1], *keys("w", 2)]})
    t0 = trust_genesis(c.genesis)
    # At height 20 only one of the three trusted validators (exactly 1/3) still signs.
    with pytest.raises(NotEnoughTrust):
        verify_light_block(t0, c.blocks[20], now_at(c, 30), PERIOD)
    t, _ = skip_to(t0, 20, c.fetch, now_at(c, 30), PERIOD)
    assert t.height == 20


def fake_rpc(c: SynthChain) -> Any:
    """The two read methods a light client uses, answered from a synthetic chain."""

    def rpc(method: str, params: dict[str, Any]) -> Any:
        if method == "headers_get":
            lb = c.blocks[params["from"]]
            return {
                "headers": [
                    {
                        "height": lb.header.height,
                        "header_bytes": codec.encode(lb.header).hex(),
                        "commit_bytes": codec.encode(lb.commit).hex(),
                    }
                ]
            }
        if method == "validators_at":
            vs = valset_of(c.keys_at(params["height"]))
            return {
                "validators": [{"pubkey": v.pubkey.hex(), "power": v.power} for v in vs.members]
            }
        raise AssertionError(method)

    return rpc


def test_a_checkpoint_is_trusted_only_if_the_node_serves_its_hash() -> None:
    c = build(200, keys("v"), {100: keys("w")})
    good = header_hash(c.blocks[150].header)
    t = establish(fake_rpc(c), TrustRoot(c.genesis, (150, good)), now_at(c, 200))
    assert t.height == 150
    t2, fetched = skip_to(t, 200, c.fetch, now_at(c, 200), PERIOD)
    assert t2.height == 200 and fetched == 1  # the new set signs 150..200
    with pytest.raises(VerifyError) as ei:
        establish(fake_rpc(c), TrustRoot(c.genesis, (150, b"\x01" * 32)), now_at(c, 200))
    assert "not the checkpoint" in str(ei.value)
    with pytest.raises(TrustExpired):
        establish(fake_rpc(c), TrustRoot(c.genesis, (150, good)), now_at(c, 150) + PERIOD)


def test_the_trusted_store_is_private_and_tied_to_its_trust_root(tmp_path: Path) -> None:
    c = build(50, keys("v"))
    root = TrustRoot(c.genesis)
    t, _ = skip_to(trust_genesis(c.genesis), 50, c.fetch, now_at(c, 50), PERIOD)
    path = tmp_path / "light.json"
    save_store(path, root, t)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    back = load_store(path, root)
    assert back is not None and back.height == 50 and back.block_hash == t.block_hash
    other = TrustRoot(c.genesis, (10, header_hash(c.blocks[10].header)))
    assert load_store(path, other) is None  # another root: start cold
    path.write_text("{not json")
    assert load_store(path, root) is None

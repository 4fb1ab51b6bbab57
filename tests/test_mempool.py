"""The mempool cannot be wedged (issue 10 §4).

60 accounts sending nonces 1-850 while holding back nonce 0 used to fill every
node's mempool with 50,000 transactions that can never execute, and then every
valid new transaction from anyone was refused. Now transactions ahead of a
nonce gap ("future") are bounded per sender and in total, are evicted first,
and never keep an executable transaction out.
"""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpkid.core import codec
from dpkid.core.crypto import SignatureCache, SigningKey, sha256
from dpkid.core.node.mempool import (
    FUTURE_SHARE_DEN,
    MAX_FUTURE_PER_SENDER,
    MAX_NONCE_GAP,
    Mempool,
    Refusal,
)
from dpkid.core.state.codes import Code
from dpkid.core.state.machine import State
from dpkid.core.types import Transfer, Tx, sign_tx
from dpkid.dev.devchain import DevChain

N_ATTACKERS = 60


@cache
def _chain() -> DevChain:
    return DevChain.create(n_accounts=N_ATTACKERS + 8)


@cache
def _tx(acct: int, nonce: int) -> bytes:
    c = _chain()
    key: SigningKey = c.keys.accounts[acct]
    to = c.keys.accounts[(acct + 1) % len(c.keys.accounts)].address
    return codec.encode(sign_tx(key, c.chain_id, nonce, 10, Transfer(to, 1)))


def _pool(max_txs: int = 50_000) -> tuple[Mempool, State]:
    c = _chain()
    return Mempool(c.chain_id, SignatureCache(), max_txs), c.state


def _wedge(mp: Mempool, state: State, nonces: range) -> dict[object, int]:
    out: dict[object, int] = {}
    for a in range(N_ATTACKERS):
        for n in nonces:
            code, _why, _h = mp.add(_tx(a, n), state)
            out[code] = out.get(code, 0) + 1
    return out


def test_held_back_nonces_cannot_lock_out_valid_transactions() -> None:
    mp, state = _pool(2_000)
    assert mp.max_future == 2_000 // FUTURE_SHARE_DEN
    got = _wedge(mp, state, range(1, 851))
    assert Refusal.MEMPOOL_FULL in got  # the future txs hit their bounds
    assert mp.future_total <= mp.max_future
    assert len(mp) <= mp.max_future
    # Every other account's valid transactions still get in.
    for a in range(N_ATTACKERS, N_ATTACKERS + 8):
        for n in range(5):
            code, why, _ = mp.add(_tx(a, n), state)
            assert code == Code.OK, why
    reaped = mp.reap(state, 1_000, 1 << 22)
    assert len(reaped) == 8 * 5  # only executable txs reach a block


def test_per_sender_and_gap_bounds() -> None:
    mp, state = _pool()
    for n in range(1, MAX_FUTURE_PER_SENDER + 1):
        assert mp.add(_tx(0, n), state)[0] == Code.OK
    code, why, _ = mp.add(_tx(0, MAX_FUTURE_PER_SENDER + 1), state)
    assert code == Refusal.MEMPOOL_FULL and "wait for nonce 0" in why
    code, _why, _ = mp.add(_tx(1, MAX_NONCE_GAP + 1), state)
    assert code == Code.BAD_NONCE
    # Filling the gap makes the whole queue executable: nothing is future any more.
    assert mp.add(_tx(0, 0), state)[0] == Code.OK
    assert mp.future_total == 0
    assert len(mp.reap(state, 1_000, 1 << 22)) == MAX_FUTURE_PER_SENDER + 1


def test_a_full_pool_evicts_future_txs_for_executable_ones_only() -> None:
    mp, state = _pool(40)
    mp.max_future = 30
    for a in range(10):
        for n in range(1, 4):
            assert mp.add(_tx(a, n), state)[0] == Code.OK  # 30 future txs
    for a in range(10, 20):
        assert mp.add(_tx(a, 0), state)[0] == Code.OK  # 10 executable: full
    assert len(mp) == 40
    # Another future tx is refused, never by evicting an executable one.
    assert mp.add(_tx(20, 1), state)[0] == Refusal.MEMPOOL_FULL
    # An executable tx evicts the future tx furthest ahead.
    assert mp.add(_tx(20, 0), state)[0] == Code.OK
    assert len(mp) == 40 and mp.evicted == 1 and mp.future_total == 29
    # With only executable txs left, the pool is really full: retry later.
    mp2, _ = _pool(5)
    for a in range(5):
        assert mp2.add(_tx(a, 0), state)[0] == Code.OK
    code, why, _ = mp2.add(_tx(5, 0), state)
    assert code == Refusal.MEMPOOL_FULL and "try again later" in why


def test_old_future_txs_expire_and_committed_nonces_are_dropped() -> None:
    mp, state = _pool()
    assert mp.add(_tx(0, 5), state, now_ms=0)[0] == Code.OK
    assert mp.add(_tx(1, 0), state, now_ms=0)[0] == Code.OK
    mp.update([], state, now_ms=11 * 60 * 1000)
    assert len(mp) == 1 and mp.future_total == 0  # the stale future tx is gone


@pytest.mark.slow
def test_the_wedge_at_full_scale() -> None:
    """The reported pattern at the default pool size of 50,000."""
    mp, state = _pool()
    got = _wedge(mp, state, range(1, 851))
    assert got.get(Code.OK, 0) <= mp.max_future < mp.max_txs
    for a in range(N_ATTACKERS, N_ATTACKERS + 8):
        assert mp.add(_tx(a, 0), state)[0] == Code.OK


ops = st.lists(
    st.tuples(st.integers(0, 11), st.integers(0, 20)),
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(adds=ops, cap=st.integers(1, 40), fut=st.integers(1, 40))
def test_invariants_under_random_adds(adds: list[tuple[int, int]], cap: int, fut: int) -> None:
    mp, state = _pool(cap)
    mp.max_future = fut
    for a, n in adds:
        before_exec = len(mp) - mp.future_total
        code, _why, _ = mp.add(_tx(a, n), state)
        assert len(mp) <= cap
        assert mp.future_total <= max(fut, 0) or code != Code.OK
        if code == Code.OK or code == Refusal.MEMPOOL_FULL:
            # Executable txs are never evicted to make room.
            assert len(mp) - mp.future_total >= before_exec
        # The counter is exact.
        fresh = 0
        for sender, q in mp.by_sender.items():
            acct = state.account(sender)
            end = _run_end(q, acct.nonce if acct else 0)
            fresh += sum(1 for x in q if x > end)
        assert mp.future_total == fresh
    runs: dict[bytes, list[int]] = {}
    for raw in mp.reap(state, 10_000, 1 << 22):
        tx = codec.decode(raw, Tx)
        runs.setdefault(tx.pubkey, []).append(tx.nonce)
    for nonces in runs.values():
        assert nonces == list(range(len(nonces)))  # per sender: 0, 1, 2, ... without gaps


def _run_end(q: dict[int, bytes], n: int) -> int:
    while n in q:
        n += 1
    return n


def test_clients_fill_half_the_pool_and_gossip_the_rest() -> None:
    """Issue 12: a client's transaction is refused (retryable) once the pool is
    half full, so the other half holds what peers gossip; otherwise a node under
    load drops its peers' transactions, and the gaps in their nonces keep it
    from proposing what the others accepted."""
    mp, state = _pool(max_txs=20)
    for a in range(10):
        v, _why, _h, added = mp.admit(_tx(a, 0), state, local=True)
        assert v == Code.OK and added
    v, why, _h, added = mp.admit(_tx(10, 0), state, local=True)
    assert v is Refusal.MEMPOOL_FULL and not added and "try again later" in why
    for a in range(10, 20):  # gossiped: up to the whole pool
        assert mp.admit(_tx(a, 0), state)[0] == Code.OK
    assert len(mp) == 20 and mp.full() and mp.full(local=True)
    assert mp.admit(_tx(20, 0), state)[0] is Refusal.MEMPOOL_FULL


def test_a_full_pool_refuses_before_it_checks_the_signature() -> None:
    """Refusing under overload must be cheap: a full pool says MEMPOOL_FULL even
    to a transaction whose signature is bad, without verifying it."""
    mp, state = _pool(max_txs=4)
    for a in range(4):
        mp.admit(_tx(a, 0), state)
    forged = bytearray(_tx(5, 0))
    forged[-3] ^= 0xFF  # inside the signature
    calls: list[bytes] = []
    real = mp.sig_cache.check

    def counting(h: bytes, pk: bytes, msg: bytes, sig: bytes) -> bool:
        calls.append(h)
        return real(h, pk, msg, sig)

    mp.sig_cache.check = counting  # type: ignore[method-assign,assignment]
    assert mp.admit(bytes(forged), state)[0] is Refusal.MEMPOOL_FULL
    assert calls == []


def test_an_accepted_tx_that_leaves_the_pool_says_why() -> None:
    """Issue 12: accepted work is never silently lost. A tx whose nonce another tx
    used, and a future tx evicted for an executable one, are reported with the
    reason (tx_get's "dropped")."""
    c = DevChain.create(n_accounts=3)
    mp = Mempool(c.chain_id, SignatureCache(), max_txs=2)
    key, to = c.keys.accounts[0], c.keys.accounts[1].address

    def tx(nonce: int, amount: int, k: SigningKey = key) -> bytes:
        return codec.encode(sign_tx(k, c.chain_id, nonce, 10, Transfer(to, amount)))

    a, b = tx(0, 1), tx(0, 2)  # the same nonce twice: only one can commit
    assert mp.admit(a, c.state)[0] == Code.OK
    future = tx(5, 1)
    assert mp.admit(future, c.state)[0] == Code.OK  # behind a gap
    other = tx(0, 3, c.keys.accounts[2])
    assert mp.admit(other, c.state)[0] == Code.OK  # full: the future one makes room
    assert mp.dropped_why(sha256(future)) == (
        "evicted: the pool needed room for an executable transaction"
    )
    c.raw(b)  # another tx with nonce 0 commits
    assert c.block()[0].code == Code.OK
    mp.update([b], c.state)
    assert mp.dropped_why(sha256(a)) == "dropped: nonce 0 was used by another transaction"
    assert mp.dropped_why(sha256(other)) is None and sha256(other) in mp.by_hash


def test_a_block_of_applications_stays_within_the_weight_budget() -> None:
    """A burst of DV applications fills a block by execution cost, not by count:
    one block holds about max_block_weight / CERT_APPLY_WEIGHT of them, the rest
    wait for the next block, and transfers still fill a block by count."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dpkid.core.keys import spki_der_of
    from dpkid.core.node.mempool import CERT_APPLY_WEIGHT, tx_weight
    from dpkid.core.types import CertApply

    c = _chain()
    mp, state = _pool()
    spki = spki_der_of(Ed25519PrivateKey.generate())
    apps = []
    for a in range(20):
        for n in range(10):
            body = CertApply("DV", [f"w{a}-{n}.test"], spki, 30, 1_000)
            apps.append(codec.encode(sign_tx(c.keys.accounts[a], c.chain_id, n, 10, body)))
    for raw in apps:
        assert mp.add(raw, state)[0] == Code.OK
    budget = 10 * CERT_APPLY_WEIGHT + CERT_APPLY_WEIGHT // 2
    block = mp.reap(state, 1_000, 1 << 22, max_weight=budget)
    assert len(block) == 10
    assert sum(tx_weight(codec.decode(raw, Tx)) for raw in block) <= budget
    transfers_only = Mempool(c.chain_id, SignatureCache())
    for a in range(20, 30):
        for n in range(3):
            transfers_only.add(_tx(a, n), state)
    assert len(transfers_only.reap(state, 1_000, 1 << 22, max_weight=budget)) == 30
    # A block never comes out empty because its first transaction is heavy.
    assert len(mp.reap(state, 1_000, 1 << 22, max_weight=1)) == 1


def test_attestations_go_first_when_applications_flood_the_pool() -> None:
    """Attestations finish applications already on chain: a flood of new ones
    must not push them out of a weight-limited block."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dpkid.core.keys import spki_der_of
    from dpkid.core.node.mempool import CERT_APPLY_WEIGHT
    from dpkid.core.types import Attestation, CertApply, DvAttest

    c = _chain()
    mp, state = _pool()
    spki = spki_der_of(Ed25519PrivateKey.generate())
    for a in range(20):
        for n in range(5):
            body = CertApply("DV", [f"f{a}-{n}.test"], spki, 30, 1_000)
            assert (
                mp.add(codec.encode(sign_tx(c.keys.accounts[a], c.chain_id, n, 10, body)), state)[0]
                == Code.OK
            )
    attests = []
    for v in c.keys.validators:
        items = [Attestation(sha256(bytes([i])), True, "http-01") for i in range(4)]
        raw = codec.encode(sign_tx(v, c.chain_id, 0, 10, DvAttest(items)))
        assert mp.add(raw, state)[0] == Code.OK
        attests.append(raw)
    block = mp.reap(state, 1_000, 1 << 22, max_weight=len(attests) * 9 + 3 * CERT_APPLY_WEIGHT)
    assert block[: len(attests)] == [r for r in block if r in attests]
    assert sorted(block[: len(attests)]) == sorted(attests)
    assert len(block) == len(attests) + 3

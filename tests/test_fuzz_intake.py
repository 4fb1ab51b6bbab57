"""Transactions that are signed but wrong, fuzzed with hypothesis (issue 13).

Replayed and reordered transactions within a block, wrong chain ids, invalid
signatures, look-alike / IDNA / wildcard names in CertApply, and absurd
validity periods. Each gets its rejection code; a pre-check failure changes
nothing but the block metadata, an execution failure only charges the fee.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpkid.core import codec
from dpkid.core.crypto import SigningKey
from dpkid.core.state.codes import Code
from dpkid.core.state.machine import K_META
from dpkid.core.types import TX_SIGN_TAG, CertApply, Transfer, decode_tx, encode_tx, sign_tx
from dpkid.dev import fuzz
from dpkid.dev.devchain import DevChain

SETTINGS: Final = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FEE: Final = 10
SPKI: Final = fuzz._spki()
# The canonical form: ASCII lower-case LDH labels, a wildcard only as the whole first label.
CANONICAL: Final = re.compile(
    r"(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]*[a-z0-9])?"
)


def records(c: DevChain) -> dict[bytes, bytes]:
    return {k: codec.encode(v) for k, v in c.state.items() if k != K_META}


def balance_nonce(c: DevChain, key: SigningKey) -> tuple[int, int]:
    a = c.state.account(key.address)
    return (a.balance, a.nonce) if a else (0, 0)


def signed(
    c: DevChain, key: SigningKey, nonce: int, body: Any, chain_id: str | None = None
) -> bytes:
    return encode_tx(sign_tx(key, c.chain_id if chain_id is None else chain_id, nonce, FEE, body))


@SETTINGS
@given(order=st.lists(st.integers(0, 5), min_size=1, max_size=12))
def test_replayed_and_reordered_transactions_follow_the_nonce(order: list[int]) -> None:
    """Txs with nonces 0..5 of one sender, in any order, any repeated: exactly those
    that arrive when their nonce is next execute, the rest are BAD_NONCE for free."""
    c = DevChain.create()
    a, b = c.keys.accounts[0], c.keys.accounts[1]
    txs = [signed(c, a, n, Transfer(b.address, 100 + n)) for n in range(6)]
    (bal_a, _), (bal_b, _) = balance_nonce(c, a), balance_nonce(c, b)
    for n in order:
        c.raw(txs[n])
    receipts = c.block()
    expected_next, moved = 0, 0
    for n, r in zip(order, receipts, strict=True):
        if n == expected_next:
            assert r.code == Code.OK, r.log
            expected_next += 1
            moved += 100 + n
        else:
            assert r.code == Code.BAD_NONCE and r.fee_charged == 0, r.log
    assert balance_nonce(c, a) == (bal_a - moved - FEE * expected_next, expected_next)
    assert balance_nonce(c, b)[0] == bal_b + moved
    # Every executed tx replayed in a later block: all BAD_NONCE, nothing moves.
    before = records(c)
    for n in order:
        if n < expected_next:
            c.raw(txs[n])
    for r in c.block():
        assert r.code == Code.BAD_NONCE and r.fee_charged == 0, r.log
    assert records(c) == before


@SETTINGS
@given(
    chain_id=st.text(max_size=40)
    | st.sampled_from(["dpkid-devnet\n", "DPKID-DEVNET", "dpkid-devnet "])
)
def test_wrong_chain_ids_change_nothing(chain_id: str) -> None:
    c = DevChain.create()
    if chain_id == c.chain_id:
        return
    a = c.keys.accounts[0]
    before = records(c)
    try:
        raw = signed(c, a, 0, Transfer(a.address, 1), chain_id=chain_id)
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8: no peer can send it
        return
    c.raw(raw)
    (r,) = c.block()
    assert r.code in (Code.WRONG_CHAIN_ID, Code.MALFORMED) and r.fee_charged == 0, r.log
    assert records(c) == before


@SETTINGS
@given(
    how=st.sampled_from(["flip", "random", "other-key", "zero"]),
    bit=st.integers(0, 511),
    junk=st.binary(min_size=64, max_size=64),
)
def test_invalid_signatures_change_nothing(how: str, bit: int, junk: bytes) -> None:
    c = DevChain.create()
    a, other = c.keys.accounts[0], c.keys.accounts[1]
    tx = decode_tx(signed(c, a, 0, Transfer(other.address, 5)))
    if how == "flip":
        sig = bytearray(tx.sig)
        sig[bit // 8] ^= 1 << (bit % 8)
        bad = bytes(sig)
    elif how == "random":
        bad = junk
    elif how == "other-key":
        bad = decode_tx(signed(c, other, 0, Transfer(other.address, 5))).sig
    else:
        bad = bytes(64)
    before = records(c)
    c.raw(encode_tx(msgspec.structs.replace(tx, sig=bad)))
    (r,) = c.block()
    assert r.code == Code.BAD_SIGNATURE and r.fee_charged == 0, r.log
    assert records(c) == before


NAMES: Final = st.one_of(
    st.builds(fuzz.gen_name, st.randoms(use_true_random=False)),
    st.text(alphabet=st.sampled_from("ab-.*x" + "".join(fuzz.CONFUSABLES)), max_size=30),
    st.sampled_from(
        [
            "*.example.com", "*.*.example.com", "www.*.example.com", "*example.com", "*.com",
            "*", "xn--80ak6aa92e.com", "xn--80ak6aa92e.xn--", "\u0430pple.com", "apple.com",
            "paypal.com\u200b", "xn--pypal-4ve.com", "b\u00fccher.example", "xn--bcher-kva.example",
            "EXAMPLE.com", "example.com.", "a" * 64 + ".com", "192.0.2.1", "ex_ample.com",
        ]
    ),
)  # fmt: skip


@SETTINGS
@given(names=st.lists(NAMES, min_size=1, max_size=4))
def test_cert_apply_names_are_canonical_or_refused(names: list[str]) -> None:
    """A look-alike, IDNA, or wildcard name is applied for only in canonical ASCII
    form; anything else is INVALID_DOMAIN (or TOO_MANY_DOMAINS), costing the fee."""
    c = DevChain.create()
    a = c.keys.accounts[0]
    bal, nonce = balance_nonce(c, a)
    before = records(c)
    try:
        raw = signed(c, a, 0, CertApply("DV", names, SPKI, 30, 1_000))
    except UnicodeEncodeError:
        return
    c.raw(raw)
    (r,) = c.block()
    if r.code == Code.OK:
        assert names == sorted(set(names))
        for name in names:
            assert name.isascii() and CANONICAL.fullmatch(name) and len(name) <= 253, name
            assert "*" not in name[1:], name
        return
    assert r.code in (Code.INVALID_DOMAIN, Code.TOO_MANY_DOMAINS, Code.MALFORMED), (r.log, names)
    if r.code == Code.MALFORMED:  # outside the schema: a pre-check, nothing moves
        assert records(c) == before
    else:
        assert balance_nonce(c, a) == (bal - FEE, nonce + 1)


@SETTINGS
@given(
    days=st.one_of(
        st.integers(-(2**70), 2**70),
        st.sampled_from([0, 1, 90, 397, 398, 3650, 3651, 2**63, 2**64 - 1, 2**64]),
    )
)
def test_absurd_validity_periods_are_refused(days: int) -> None:
    c = DevChain.create()
    a = c.keys.accounts[0]
    limit = c.state.policy.max_validity_days
    bal, nonce = balance_nonce(c, a)
    before = records(c)
    body = [*msgspec.msgpack.decode(codec.encode(CertApply("DV", ["a.example"], SPKI, 1, 1_000)))]
    body[4] = days  # the validity field, any integer msgpack can carry
    utx = [c.chain_id, a.public_key, 0, FEE, body]
    sig = a.sign(TX_SIGN_TAG + fuzz.pack(utx))
    c.raw(fuzz.pack([*utx, sig]))
    (r,) = c.block()
    if 1 <= days <= limit:
        assert r.code == Code.OK, r.log
    elif limit < days <= 3650:
        assert r.code == Code.INVALID_VALIDITY, r.log
        assert balance_nonce(c, a) == (bal - FEE, nonce + 1)
    else:  # outside the schema's 1..3650: malformed, nothing moves
        assert r.code == Code.MALFORMED and r.fee_charged == 0, r.log
        assert records(c) == before

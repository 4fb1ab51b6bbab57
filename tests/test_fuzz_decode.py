"""Fuzzing the canonical decoder and the transaction intake of ``apply_block``.

For every wire and state type ``T`` in :mod:`dpkid.core.types`, ``codec.decode(data, T)`` (and
``decode_tx``) on

(a) random bytes,
(b) valid encodings with random byte mutations, truncations and extensions, and
(c) msgpack of random nested structures (and of Tx-shaped arrays with random leaves)

either returns an object of type ``T`` that re-encodes to exactly ``data`` and satisfies every
declared constraint (patterns matched against the *whole* string), or raises exactly
``codec.DecodeError``.  The same bytes handed to ``apply_block`` through ``DevChain.raw`` never
raise, get pre-check receipts (MALFORMED / TX_TOO_LARGE for garbage), and change nothing but
the block metadata.

Set ``DPKID_HYPOTHESIS_PROFILE=long`` for many more examples.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any, Final

import msgspec
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from dpkid.core import codec, types
from dpkid.core.crypto import SigningKey, address_of
from dpkid.core.state.codes import PRECHECK_CODES, Code
from dpkid.core.state.machine import K_META, RECORD_TYPES, State
from dpkid.core.types import (
    MAX_TX_BYTES,
    Attestation,
    CertApply,
    DvAttest,
    OrgIdentity,
    Transfer,
    Tx,
    decode_tx,
    encode_tx,
    sign_tx,
)
from dpkid.dev.devchain import DevChain
from tests.test_determinism import SPKI, build_chain

LONG: Final = os.environ.get("DPKID_HYPOTHESIS_PROFILE", "") == "long"
# The long profile runs well past pytest-timeout's default per-test limit.
pytestmark = [pytest.mark.timeout(7_200)] if LONG else []
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
FUZZ: Final = settings(
    max_examples=5_000 if LONG else 300,
    deadline=None,
    suppress_health_check=_HEALTH,
)
CHAIN_FUZZ: Final = settings(
    max_examples=1_000 if LONG else 60,
    deadline=None,
    suppress_health_check=_HEALTH,
)

# Every msgspec Struct defined in dpkid.core.types, plus the state record types.
STRUCT_TYPES: Final[list[type[msgspec.Struct]]] = sorted(
    {
        *(
            obj
            for name, obj in vars(types).items()
            if isinstance(obj, type)
            and issubclass(obj, msgspec.Struct)
            and obj.__module__ == types.__name__
            and not name.startswith("_")
        ),
        *(typ for _, typ in RECORD_TYPES),
    },
    key=lambda t: (t.__module__, t.__name__),
)
TAGS: Final = sorted(
    str(t.__struct_config__.tag) for t in STRUCT_TYPES if t.__struct_config__.tag is not None
)


# ----------------------------------------------------------------------------- constraints


_INFO: dict[type[Any], msgspec.inspect.Type] = {}


def _info(typ: type[Any]) -> msgspec.inspect.Type:
    if typ not in _INFO:
        _INFO[typ] = msgspec.inspect.type_info(typ)
    return _INFO[typ]


def _conforms(value: Any, t: msgspec.inspect.Type) -> bool:
    """Whether ``value`` meets every constraint of ``t`` (patterns on the whole string)."""
    mi = msgspec.inspect
    if isinstance(t, mi.UnionType):
        return any(_conforms(value, sub) for sub in t.types)
    if isinstance(t, mi.NoneType):
        return value is None
    if isinstance(t, mi.BoolType):
        return isinstance(value, bool)
    if isinstance(t, mi.LiteralType):
        return any(type(value) is type(v) and value == v for v in t.values)
    if isinstance(t, mi.IntType):
        if type(value) is not int:
            return False
        return (
            (t.ge is None or value >= t.ge)
            and (t.le is None or value <= t.le)
            and (t.gt is None or value > t.gt)
            and (t.lt is None or value < t.lt)
            and -(2**63) <= value < 2**64
        )
    if isinstance(t, mi.StrType | mi.BytesType):
        if not isinstance(value, str if isinstance(t, mi.StrType) else bytes):
            return False
        if t.min_length is not None and len(value) < t.min_length:
            return False
        if t.max_length is not None and len(value) > t.max_length:
            return False
        if isinstance(t, mi.StrType) and t.pattern is not None:
            assert isinstance(value, str)
            return re.fullmatch(t.pattern, value) is not None
        return True
    if isinstance(t, mi.ListType):
        if type(value) is not list:
            return False
        if t.min_length is not None and len(value) < t.min_length:
            return False
        if t.max_length is not None and len(value) > t.max_length:
            return False
        return all(_conforms(v, t.item_type) for v in value)
    if isinstance(t, mi.StructType):
        if type(value) is not t.cls:
            return False
        return all(_conforms(getattr(value, f.name), f.type) for f in t.fields)
    raise AssertionError(f"unexpected type info {t!r}")


def check_decode(data: bytes, typ: type[Any]) -> Any:
    """The decoder contract: a conforming object that re-encodes to ``data``, or DecodeError."""
    try:
        obj = codec.decode(data, typ)
    except codec.DecodeError as exc:
        assert type(exc) is codec.DecodeError
        return None
    assert type(obj) is typ
    assert codec.encode(obj) == data
    assert _conforms(obj, _info(typ)), obj
    return obj


def check_decode_tx(data: bytes) -> Tx | None:
    try:
        tx = decode_tx(data)
    except codec.DecodeError as exc:
        assert type(exc) is codec.DecodeError
        assert len(data) > MAX_TX_BYTES or check_decode(data, Tx) is None
        return None
    assert type(tx) is Tx and len(data) <= MAX_TX_BYTES
    assert encode_tx(tx) == data
    assert _conforms(tx, _info(Tx)), tx
    return tx


def check_all_types(data: bytes) -> None:
    decoded = [typ.__name__ for typ in STRUCT_TYPES if check_decode(data, typ) is not None]
    check_decode_tx(data)
    if currently_in_test_context():
        event(f"decodes as {', '.join(decoded) or 'nothing'}")


# ----------------------------------------------------------------------------- samples


def _collect(obj: Any, out: dict[type[Any], set[bytes]]) -> None:
    if isinstance(obj, msgspec.Struct):
        out.setdefault(type(obj), set()).add(codec.encode(obj))
        for name in obj.__struct_fields__:
            _collect(getattr(obj, name), out)
    elif isinstance(obj, list | tuple):
        for item in obj:
            _collect(item, out)


@functools.cache
def _scenario() -> tuple[DevChain, State]:
    c, _ = build_chain()
    return c, c.state.copy()


@functools.cache
def _fresh_txs() -> tuple[bytes, ...]:
    """Valid, not yet executed transactions for the scenario's final state."""
    c, state = _scenario()
    a, v = c.keys.accounts, c.keys.validators
    org = OrgIdentity("Fuzz Org", "DE", registration_id="HRB 1", jurisdiction="DE-BE")

    def signed(key: SigningKey, body: types.TxBody) -> bytes:
        acct = state.account(key.address)
        return encode_tx(sign_tx(key, c.chain_id, acct.nonce if acct else 0, 10, body))

    return (
        signed(a[0], Transfer(a[1].address, 12_345)),
        signed(a[1], CertApply("EV", ["fuzz.example"], SPKI[1], 30, 20_000, org)),
        signed(v[0], DvAttest([Attestation(bytes(32), True, "dns-01", "x" * 40)])),
        signed(a[2], Transfer(a[3].address, 1)),
        signed(a[3], types.AuthzRequest("fuzz-authz.example", "dpkid", "dns-01")),
    )


@functools.cache
def _tss_chain() -> tuple[list[bytes], list[Any]]:
    """The threshold key's transactions and records, from the tss-chain vectors
    (a DKG, nonces, shares and the resulting records, replayed here)."""
    import json
    from pathlib import Path

    from dpkid.core.state.machine import apply_block, genesis_state
    from dpkid.core.types import Genesis, Header

    v = json.loads(
        (Path(__file__).resolve().parents[1] / "protocol/vectors/tss-chain.json").read_text()
    )
    st = genesis_state(codec.decode(bytes.fromhex(v["genesis"]), Genesis))
    txs: list[bytes] = []
    for blk in v["blocks"]:
        raw = [bytes.fromhex(t) for t in blk["txs"]]
        txs += raw
        st, _, _ = apply_block(st, codec.decode(bytes.fromhex(blk["header"]), Header), raw)
    return txs, [rec for _, rec in st.items()]


@functools.cache
def samples() -> tuple[tuple[type[Any], bytes], ...]:
    c, state = _scenario()
    found: dict[type[Any], set[bytes]] = {}
    tss_txs, tss_records = _tss_chain()
    _collect(tss_records, found)
    # No complaint arises in the vector chain: a well-formed answer to one.
    v = c.keys.validators
    justify = types.TssJustify(1, v[0].address, [bytes(32), bytes(31) + b"\x01"])
    _collect(sign_tx(v[1], c.chain_id, 0, 10, justify), found)
    check = types.AuthzAttest([types.AuthzCheck(bytes(32), False, "dns", "NXDOMAIN")])
    _collect(sign_tx(v[1], c.chain_id, 0, 10, check), found)
    a = c.keys.accounts
    for body in (
        types.GrantCreate(a[1].public_key, 5_000, 30, b"\x01" * 80),
        types.GrantRevoke(bytes(32)),
        types.Delegated(bytes(32), types.Revoke(bytes(32), 1)),
    ):
        _collect(sign_tx(a[0], c.chain_id, 0, 10, body), found)
    for raw in tss_txs:
        tx = decode_tx(raw)
        _collect([tx, tx.unsigned()], found)
    _collect([rec for _, rec in state.items()], found)
    _collect(c.genesis, found)
    _collect([h for h, _ in c.blocks], found)
    _collect(c.receipts, found)
    for _, txs in c.blocks:
        for raw in txs:
            try:
                tx = decode_tx(raw)
            except codec.DecodeError:
                continue
            _collect([tx, tx.unsigned()], found)
    for raw in _fresh_txs():
        _collect(decode_tx(raw), found)
    out = []
    for typ in sorted(found, key=lambda t: t.__name__):
        out += [(typ, data) for data in sorted(found[typ])[:25]]
    return tuple(out)


def test_samples_cover_the_wire_and_state_types() -> None:
    have = {typ for typ, _ in samples()}
    needed: set[type[Any]] = {
        types.Account,
        types.Application,
        types.Certificate,
        types.DomainIndex,
        types.GovProposal,
        types.LogEntry,
        types.Policy,
        types.Meta_,
        types.ValidatorRecords,
        types.PendingValidatorChanges,
        types.EndorserSet,
        types.AttestationRecord,
        types.EndorsementRecord,
        Tx,
        types.UnsignedTx,
        types.Header,
        types.Receipt,
        types.Event,
        types.Genesis,
        types.OrgIdentity,
        *(t for t in STRUCT_TYPES if t.__struct_config__.tag is not None),  # every tx body
    }
    assert needed <= have, needed - have
    for typ, data in samples():
        assert check_decode(data, typ) is not None


# ----------------------------------------------------------------------------- strategies

INTERESTING_BYTES: Final = [
    0x00, 0x01, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5,
    0xC6, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD3, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE,
    0xDF, 0xE0, 0xFF,
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, source: Callable[[], tuple[bytes, ...]] | None = None) -> bytes:
    """A valid encoding with a few random byte-level edits (never the identity)."""
    if source is None:
        _, original = draw(st.sampled_from(samples()))
    else:
        original = draw(st.sampled_from(source()))
    buf = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.sampled_from(INTERESTING_BYTES) | st.integers(0, 255))
        elif op == "truncate":
            del buf[pos:]
        elif op == "extend":
            buf += draw(st.binary(min_size=1, max_size=16))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif buf:
            del buf[pos : pos + draw(st.integers(1, 8))]
    data = bytes(buf)
    if data == original:
        data += b"\xc0"
    return data


INTS: Final = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-300, 300),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]),
)
STRINGS: Final = st.one_of(
    st.text(max_size=24),
    st.sampled_from(
        [*TAGS, "dpkid-devnet", "DV", "OV", "EV", "DV\n", "dns-01", "http-01\n", "US", "a.example"]
    ),
)
BYTES: Final = st.one_of(
    st.binary(max_size=80), st.sampled_from([bytes(20), bytes(32), bytes(64), b"\xff" * 32])
)
LEAVES: Final = st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_nan=True), STRINGS, BYTES)
NESTED: Final = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=8),
        st.dictionaries(st.one_of(st.text(max_size=8), INTS), children, max_size=4),
    ),
    max_leaves=40,
)


@st.composite
def tx_shaped(draw: st.DrawFn) -> list[Any]:
    """Arrays that look like a Tx, with random (often almost right) fields."""
    body: list[Any] = [draw(st.sampled_from(TAGS) | STRINGS)]
    body += draw(st.lists(NESTED, max_size=7))
    return [
        draw(st.sampled_from(["dpkid-devnet", "dpkid-devnet\n"]) | STRINGS),
        draw(st.binary(min_size=32, max_size=32) | BYTES),
        draw(INTS),
        draw(INTS),
        body,
        draw(st.binary(min_size=64, max_size=64) | BYTES),
    ]


def _msgpack(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def _paths(tree: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = [prefix]
    if isinstance(tree, list):
        for i, child in enumerate(tree):
            out += _paths(child, (*prefix, i))
    return out


def _nearby(draw: st.DrawFn, value: Any) -> Any:
    """A value of the same kind that is slightly off, or something else entirely."""
    if isinstance(value, bool) or value is None:
        return draw(st.sampled_from([True, False, None, 0, 1]))
    if isinstance(value, int):
        near = [value + 1, value - 1, -value, -1, 2**63 - 1, 2**63, 2**64 - 1]
        return draw(st.sampled_from([x for x in near if -(2**63) <= x < 2**64]))
    if isinstance(value, str):
        return draw(
            st.sampled_from(
                [value + "\n", value.upper(), value + "x", "", value * 60, value.encode()]
            )
        )
    if isinstance(value, bytes):
        return draw(st.sampled_from([value[:-1], value + b"\x00", b"", value.hex()]))
    return draw(NESTED)


@st.composite
def structurally_mutated(
    draw: st.DrawFn, source: Callable[[], tuple[bytes, ...]] | None = None
) -> bytes:
    """A valid encoding decoded to plain msgpack values, edited at the value level."""
    if source is None:
        _, original = draw(st.sampled_from(samples()))
    else:
        original = draw(st.sampled_from(source()))
    tree = _edit_tree(draw, msgspec.msgpack.decode(original), draw(st.integers(1, 3)))
    data = _msgpack(tree)
    return data if data != original else data + b"\xc0"


def _edit_tree(draw: st.DrawFn, tree: Any, edits: int, keep: tuple[int, ...] = ()) -> Any:
    """Apply ``edits`` value-level edits to a decoded msgpack tree (never at path ``keep``)."""
    for _ in range(edits):
        path = draw(st.sampled_from(_paths(tree)))
        if path == keep:
            continue
        if not path:
            tree = draw(st.sampled_from([[tree], [*tree, None], tree[:-1]]))
            continue
        parent = tree
        for i in path[:-1]:
            parent = parent[i]
        i = path[-1]
        op = draw(st.sampled_from(["nearby", "nearby", "random", "delete", "insert"]))
        if op == "nearby":
            parent[i] = _nearby(draw, parent[i])
        elif op == "random":
            parent[i] = draw(NESTED)
        elif op == "delete":
            del parent[i]
        else:
            parent.insert(i, draw(NESTED))
    return tree


# ----------------------------------------------------------------------------- decode


@FUZZ
@given(data=st.binary(max_size=400))
def test_decode_random_bytes(data: bytes) -> None:
    check_all_types(data)


@FUZZ
@given(data=mutated())
def test_decode_mutated_valid_encodings(data: bytes) -> None:
    check_all_types(data)


@FUZZ
@given(value=NESTED)
def test_decode_random_msgpack_structures(value: Any) -> None:
    check_all_types(_msgpack(value))


@FUZZ
@given(value=tx_shaped())
def test_decode_tx_shaped_arrays(value: list[Any]) -> None:
    check_all_types(_msgpack(value))


@FUZZ
@given(data=structurally_mutated())
def test_decode_structurally_mutated_encodings(data: bytes) -> None:
    check_all_types(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc0",
        b"\x90",
        b"\x96" + b"\xc0" * 6,
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\x91" * 100_000,  # very deep nesting
        b"\xcb" + b"\x7f\xf8" + bytes(6),  # NaN
        b"\xd4\x00\x00",  # fixext
        b"\xd6\xff" + bytes(4),  # timestamp extension
        b"\x96" + bytes(MAX_TX_BYTES),  # over the tx limit
    ],
)
def test_decode_edge_cases(data: bytes) -> None:
    check_all_types(data)


def test_patterns_must_match_the_whole_string() -> None:
    """A trailing newline must not slip past a ``$``-anchored pattern (regression)."""
    ok = codec.encode(OrgIdentity("x", "US"))
    assert check_decode(ok, OrgIdentity) is not None
    for bad in (
        OrgIdentity("x", "US\n"),
        types.Attestation(bytes(32), True, "http-01\n"),  # type: ignore[arg-type]
        CertApply("DV\n", ["a.example"], SPKI[0], 30, 1_000),  # type: ignore[arg-type]
    ):
        with pytest.raises(codec.DecodeError):
            codec.decode(codec.encode(bad), type(bad))


# ----------------------------------------------------------------------------- apply_block


def _apply_and_check(blobs: list[bytes], allowed: frozenset[int]) -> None:
    c, base = _scenario()
    d = DevChain(c.genesis, c.keys)
    d.state = base.copy()
    before = {k: codec.encode(v) for k, v in d.state.items() if k != K_META}
    for blob in blobs:
        d.raw(blob)
    receipts = d.block()
    assert len(receipts) == len(blobs)
    for blob, r in zip(blobs, receipts, strict=True):
        assert r.code in allowed, (Code(r.code).name, r.log, blob[:64])
        if currently_in_test_context():
            event(f"receipt {Code(r.code).name}")
        assert r.fee_charged == 0 and r.events == []
    after = {k: codec.encode(v) for k, v in d.state.items() if k != K_META}
    assert after == before
    assert d.state.meta.height == base.meta.height + 1
    assert d.state.log.size == base.log.size


GARBAGE_CODES: Final = frozenset({Code.MALFORMED, Code.TX_TOO_LARGE})


@CHAIN_FUZZ
@given(blobs=st.lists(st.one_of(st.binary(max_size=300), NESTED.map(_msgpack)), max_size=8))
def test_apply_block_garbage_is_malformed_and_changes_nothing(blobs: list[bytes]) -> None:
    _apply_and_check(blobs, GARBAGE_CODES)


@CHAIN_FUZZ
@given(
    blobs=st.lists(
        st.one_of(
            tx_shaped().map(_msgpack),
            mutated(_fresh_txs),
            structurally_mutated(_fresh_txs),
        ),
        max_size=8,
    )
)
def test_apply_block_near_miss_transactions_change_nothing(blobs: list[bytes]) -> None:
    _apply_and_check(blobs, frozenset(PRECHECK_CODES))


@st.composite
def signed_random_bodies(draw: st.DrawFn) -> list[bytes]:
    """Correctly signed transactions whose bodies are schema-valid edits of real bodies.

    These get past every pre-check, so the handlers themselves meet the odd values.
    """
    c, base = _scenario()
    bodies = [data for typ, data in samples() if typ.__struct_config__.tag is not None]
    keys = [*c.keys.accounts, *c.keys.validators, *c.keys.endorsers]
    nonces: dict[bytes, int] = {}
    out = []
    for _ in range(draw(st.integers(1, 6))):
        tree = msgspec.msgpack.decode(draw(st.sampled_from(bodies)))
        tree = _edit_tree(draw, tree, draw(st.integers(0, 3)), keep=(0,))  # keep the tag
        key = draw(st.sampled_from(keys))
        acct = base.account(key.address)
        nonce = nonces.get(key.address, acct.nonce if acct else 0)
        try:
            utx = codec.decode(
                _msgpack([c.chain_id, key.public_key, nonce, 10, tree]), types.UnsignedTx
            )
        except codec.DecodeError:
            continue
        nonces[key.address] = nonce + 1
        sig = key.sign(types.tx_sign_bytes(utx))
        out.append(encode_tx(Tx(utx.chain_id, utx.pubkey, nonce, 10, utx.body, sig)))
    return out


@CHAIN_FUZZ
@given(blobs=signed_random_bodies())
def test_apply_block_survives_signed_odd_bodies(blobs: list[bytes]) -> None:
    c, base = _scenario()
    d = DevChain(c.genesis, c.keys)
    d.state = base.copy()
    for blob in blobs:
        d.raw(blob)
    receipts = d.block()  # must not raise
    executed: dict[bytes, int] = {}
    for blob, r in zip(blobs, receipts, strict=True):
        if currently_in_test_context():
            event(f"receipt {Code(r.code).name}")
        tx = decode_tx(blob)
        if isinstance(tx.body, types.Delegated) and r.code == Code.BAD_GRANT:
            continue  # a made-up grant: refused before execution (SPEC §4.3 check 7)
        assert r.code == Code.OK or r.code >= 10, (Code(r.code).name, r.log)
        executed[tx.pubkey] = executed.get(tx.pubkey, 0) + 1
    state = d.state
    assert state.supply_in_accounts_and_escrow() == state.meta.total_supply
    for pubkey, n in executed.items():
        sender = address_of(pubkey)
        old = base.account(sender)
        new = state.account(sender)
        assert new is not None and new.nonce == (old.nonce if old else 0) + n


def test_apply_block_oversize_and_edge_blobs() -> None:
    blobs = [b"", b"\x96" + bytes(MAX_TX_BYTES), b"\x91" * 100_000, b"\xdd\xff\xff\xff\xff"]
    _apply_and_check(blobs, GARBAGE_CODES)


def test_fresh_transactions_are_valid_controls() -> None:
    """The unmutated sources of the near-miss fuzz really execute (else it proves nothing)."""
    c, base = _scenario()
    d = DevChain(c.genesis, c.keys)
    d.state = base.copy()
    for raw in _fresh_txs():
        d.raw(raw)
    receipts = d.block()
    assert [r.code for r in receipts] == [Code.OK] * len(receipts), [r.log for r in receipts]

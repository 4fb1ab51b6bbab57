"""Rules and rejection codes of the PKI state machine (dpkid/core/state/machine.py).

Every block these tests commit goes through ``Chain.block``, which checks the
ledger-wide invariants afterwards (total supply conserved, the certificate log
matches meta, pre-check receipts charge nothing). Balances are asserted
exactly; tests that look at payouts run on a chain with ``min_tx_fee=0`` so
that transaction fees do not blur the numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, cast

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from dpkid.core import codec
from dpkid.core.crypto import SigningKey, sha256
from dpkid.core.keys import SigningKey as SubjectPrivateKey
from dpkid.core.keys import sign_with_private_key, spki_der_of
from dpkid.core.state import tss as tss_rules
from dpkid.core.state.codes import PRECHECK_CODES, BlockError, Code, StaleStateError
from dpkid.core.state.machine import (
    APP_TAG,
    GOV_TAG,
    K_META,
    MS_PER_DAY,
    GenesisError,
    apply_block,
    cert_id_for,
    cert_status,
    genesis_state,
    key_account,
    key_app,
    key_cert,
    key_domain,
    key_gov,
)
from dpkid.core.state.smt import verify_proof
from dpkid.core.types import (
    MAX_TX_BYTES,
    TX_SIGN_TAG,
    Account,
    AddEndorser,
    Application,
    Attestation,
    CertApply,
    Certificate,
    CertRenew,
    Delegated,
    DomainIndex,
    DvAttest,
    Endorse,
    EndorserRevoke,
    EndorseWithdraw,
    Event,
    GovAction,
    GovProposal,
    GovPropose,
    GovRevokeCert,
    GovVote,
    Header,
    OrgIdentity,
    Policy,
    Receipt,
    RemoveEndorser,
    Revoke,
    SetValidator,
    Transfer,
    TssAck,
    TssJustify,
    TssNonces,
    TxBody,
    decode_tx,
    encode_tx,
    revoke_sign_bytes,
    sign_tx,
)
from dpkid.dev.devchain import DevChain, dev_genesis

ZERO_FEE = Policy(min_tx_fee=0)
DEFAULT = Policy()
BALANCE = 10_000_000  # dev_genesis funds every account, endorser and validator with this

ED_SUBJECT = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
P256_SUBJECT = ec.derive_private_key(0x5EED_1234_ABCD, ec.SECP256R1())
SPKI = spki_der_of(ED_SUBJECT)
SPKI_P256 = spki_der_of(P256_SUBJECT)

ORG_OV = OrgIdentity("Acme GmbH", "DE", locality="Berlin")
ORG_EV = OrgIdentity("Acme GmbH", "DE", registration_id="HRB 12345", jurisdiction="DE-BE")
ORGS: dict[str, OrgIdentity | None] = {"DV": None, "OV": ORG_OV, "EV": ORG_EV}

UNKNOWN_ID = b"\x42" * 32


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def subject_keys(rsa_key: rsa.RSAPrivateKey) -> dict[str, SubjectPrivateKey]:
    return {"ed25519": ED_SUBJECT, "ecdsa-p256": P256_SUBJECT, "rsa-2048": rsa_key}


# ====================================================================== chain + invariants


class Chain(DevChain):
    """A DevChain that checks the ledger-wide invariants after every block."""

    def block(self, advance_ms: int | None = None) -> list[Receipt]:
        receipts = super().block(advance_ms)
        assert_invariants(self)
        return receipts


def assert_invariants(c: DevChain) -> None:
    st = c.state
    header, txs = c.blocks[-1]
    assert st.supply_in_accounts_and_escrow() == st.meta.total_supply
    assert st.meta.height == header.height
    assert st.meta.time_ms == header.time_ms
    assert st.meta.log_size == st.log.size
    assert st.meta.log_root == st.log.root()
    for raw, r in zip(txs, c.receipts[-1], strict=True):
        assert r.tx_hash == sha256(raw)
        Code(r.code)  # every receipt carries a known code
        if r.code in PRECHECK_CODES:
            assert r.fee_charged == 0
            assert r.events == []
        else:
            assert r.fee_charged == decode_tx(raw).fee


def make_chain(
    policy: Policy | None = None,
    *,
    n_validators: int = 4,
    n_endorsers: int = 3,
    n_accounts: int = 4,
    powers: Sequence[int] | None = None,
    chain_id: str = "dpkid-devnet",
) -> Chain:
    g, keys = dev_genesis(
        n_validators=n_validators,
        n_endorsers=n_endorsers,
        n_accounts=n_accounts,
        policy=policy,
        powers=powers,
        chain_id=chain_id,
    )
    c = Chain(g, keys)
    assert c.state.supply_in_accounts_and_escrow() == c.state.meta.total_supply
    return c


# ====================================================================== small helpers


def send(c: DevChain, key: SigningKey, body: TxBody, fee: int | None = None) -> Receipt:
    c.tx(key, body, fee)
    receipts = c.block()
    assert len(receipts) == 1
    return receipts[0]


def expect(r: Receipt, code: Code) -> Receipt:
    assert r.code == code, f"expected {code.name}, got {Code(r.code).name}: {r.log}"
    return r


def ok(r: Receipt) -> Receipt:
    return expect(r, Code.OK)


def all_ok(receipts: Iterable[Receipt]) -> list[Receipt]:
    return [ok(r) for r in receipts]


def kinds(events: Iterable[Event]) -> list[str]:
    return [e.kind for e in events]


def only_event(events: Iterable[Event], kind: str) -> Event:
    found = [e for e in events if e.kind == kind]
    assert len(found) == 1, f"{kind}: {kinds(events)}"
    return found[0]


def nonce_of(c: DevChain, addr: bytes) -> int:
    a = c.state.account(addr)
    return a.nonce if a is not None else 0


def account(c: DevChain, addr: bytes) -> Account:
    a = c.state.account(addr)
    assert a is not None
    return a


def bal(c: DevChain, addr: bytes) -> int:
    return c.state.balance(addr)


def get_app(c: DevChain, app_id: bytes) -> Application:
    a = c.state.application(app_id)
    assert a is not None
    return a


def get_cert(c: DevChain, cert_id: bytes) -> Certificate:
    cert = c.state.certificate(cert_id)
    assert cert is not None
    return cert


def get_prop(c: DevChain, pid: bytes) -> GovProposal:
    p = c.state.proposal(pid)
    assert p is not None
    return p


def snapshot(c: DevChain) -> dict[bytes, Any]:
    return dict(c.state.items())


def changed_keys(before: dict[bytes, Any], after: dict[bytes, Any]) -> set[bytes]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def fee_of(c: DevChain, cert_type: str) -> int:
    p = c.state.policy
    return {"DV": p.fee_dv, "OV": p.fee_ov, "EV": p.fee_ev}[cert_type]


def k_of(c: DevChain, cert_type: str) -> int:
    p = c.state.policy
    return {"DV": 0, "OV": p.k_ov, "EV": p.k_ev}[cert_type]


def apply_body(
    c: DevChain,
    cert_type: str = "DV",
    domains: Sequence[str] = ("example.com",),
    *,
    spki: bytes = SPKI,
    validity_days: int = 30,
    escrow: int | None = None,
) -> CertApply:
    return CertApply(
        cast(Literal["DV", "OV", "EV"], cert_type),
        list(domains),
        spki,
        validity_days,
        fee_of(c, cert_type) if escrow is None else escrow,
        ORGS[cert_type],
    )


def apply_cert(
    c: DevChain,
    cert_type: str = "DV",
    domains: Sequence[str] = ("example.com",),
    *,
    key: SigningKey | None = None,
    spki: bytes = SPKI,
    validity_days: int = 30,
    escrow: int | None = None,
) -> bytes:
    """Submit a CertApply in its own block and return the new application id."""
    sender = key or c.keys.accounts[0]
    raw = c.tx(
        sender,
        apply_body(c, cert_type, domains, spki=spki, validity_days=validity_days, escrow=escrow),
    )
    (r,) = c.block()
    ok(r)
    app_id = only_event(r.events, "app_created").ref
    assert app_id == sha256(APP_TAG + sha256(raw))
    return app_id


def attest_item(app_id: bytes, passed: bool = True) -> Attestation:
    return Attestation(app_id, passed, "dns-01", "" if passed else "no TXT record")


def attest(c: DevChain, app_id: bytes, validators: Iterable[int], passed: bool = True) -> None:
    """One DvAttest per listed validator, all in one block."""
    for i in validators:
        c.tx(c.keys.validators[i], DvAttest([attest_item(app_id, passed)]))
    all_ok(c.block())


def endorse(c: DevChain, app_id: bytes, endorsers: Iterable[int], approve: bool = True) -> None:
    for i in endorsers:
        c.tx(c.keys.endorsers[i], Endorse(app_id, approve, "checked the registry"))
    all_ok(c.block())


def issue(
    c: DevChain,
    cert_type: str = "DV",
    domains: Sequence[str] = ("example.com",),
    *,
    key: SigningKey | None = None,
    spki: bytes = SPKI,
    validity_days: int = 30,
    endorsers: Sequence[int] | None = None,
) -> bytes:
    """Apply, endorse (k endorsers unless given), attest by every validator; return cert id."""
    app_id = apply_cert(c, cert_type, domains, key=key, spki=spki, validity_days=validity_days)
    ends = list(range(k_of(c, cert_type))) if endorsers is None else list(endorsers)
    if ends:
        endorse(c, app_id, ends)
    attest(c, app_id, range(len(c.keys.validators)))
    app = get_app(c, app_id)
    assert app.status == "issued", app.close_reason
    assert app.cert_id == cert_id_for(app_id)
    return app.cert_id


def propose(c: DevChain, action: GovAction, proposer: int = 0) -> bytes:
    """Queue a proposal (no block); returns the id it will get."""
    raw = c.tx(c.keys.validators[proposer], GovPropose(action, "test proposal"))
    return sha256(GOV_TAG + sha256(raw))


def vote(c: DevChain, pid: bytes, voters: Iterable[int], approve: bool = True) -> None:
    for i in voters:
        c.tx(c.keys.validators[i], GovVote(pid, approve))


def pass_gov(c: DevChain, action: GovAction) -> bytes:
    """Proposal by validator 0 and yes votes by 1 and 2 in one block (4 equal validators)."""
    pid = propose(c, action)
    vote(c, pid, [1, 2])
    all_ok(c.block())
    prop = get_prop(c, pid)
    assert prop.status == "passed", prop.result
    return pid


def signed_raw(
    c: DevChain,
    key: SigningKey,
    body: TxBody,
    *,
    fee: int | None = None,
    nonce: int | None = None,
    chain_id: str | None = None,
) -> bytes:
    return encode_tx(
        sign_tx(
            key,
            chain_id or c.chain_id,
            nonce_of(c, key.address) if nonce is None else nonce,
            c.state.policy.min_tx_fee if fee is None else fee,
            body,
        )
    )


# ---------------------------------------------------------------- "nothing" / "only the fee"


def assert_precheck_rejected(c: DevChain, raw: bytes, code: Code) -> Receipt:
    """Submit raw bytes alone in a block: the receipt has ``code`` and nothing changed.

    The app hash must equal that of the same block with no transactions at all
    (only meta moves), and no account, nonce or fee is touched.
    """
    assert not c.pending
    twin = c.state.copy()
    before = snapshot(c)
    c.raw(raw)
    (r,) = c.block()
    expect(r, code)
    assert r.fee_charged == 0
    assert r.events == []
    assert changed_keys(before, snapshot(c)) == {K_META}
    _, _, empty_block_hash = apply_block(twin, c.blocks[-1][0], [])
    assert empty_block_hash == c.state.app_hash
    return r


def assert_only_fee_charged(
    c: DevChain, key: SigningKey, body: TxBody, code: Code, fee: int | None = None
) -> Receipt:
    """Submit ``body`` alone in a block: it fails with ``code``; only fee and nonce move."""
    assert not c.pending
    before = snapshot(c)
    log_size = c.state.log.size
    f = c.state.policy.min_tx_fee if fee is None else fee
    c.tx(key, body, fee)
    (r,) = c.block()
    expect(r, code)
    assert r.fee_charged == f
    assert r.events == []
    proposer = c.blocks[-1][0].proposer
    after = snapshot(c)
    sk, pk = key_account(key.address), key_account(proposer)
    if isinstance(body, Delegated):
        # SPEC §7.10: the grant's owner pays and the grant counts it; the
        # delegate only uses its nonce.
        from dpkid.core.state.grants import key_grant

        gk = key_grant(body.grant_id)
        payer = key_account(c.state.get(gk).owner)
        assert changed_keys(before, after) <= {K_META, sk, pk, payer, gk}
        assert after[gk].spent == before[gk].spent + f
        assert after[sk].nonce == (before[sk].nonce if sk in before else 0) + 1
        assert proposer != c.state.get(gk).owner
        assert after[payer].balance == before[payer].balance - f
        assert c.state.log.size == log_size
        return r
    assert changed_keys(before, after) <= {K_META, sk, pk}
    assert after[sk].nonce == before[sk].nonce + 1
    if proposer == key.address:
        assert after[sk].balance == before[sk].balance
    else:
        assert after[sk].balance == before[sk].balance - f
        p_before = before[pk].balance if pk in before else 0
        assert after[pk].balance == p_before + f
    assert c.state.log.size == log_size
    return r


# ====================================================================== genesis and blocks


def test_genesis_refuses_a_k_that_lets_one_endorser_issue() -> None:
    g, _ = dev_genesis(policy=Policy(k_ov=1))
    with pytest.raises(GenesisError):
        genesis_state(g)
    g, _ = dev_genesis(policy=Policy(k_ev=1))
    with pytest.raises(GenesisError):
        genesis_state(g)


def _next_header(c: DevChain, **changes: Any) -> Header:
    st = c.state
    h = Header(
        chain_id=c.chain_id,
        height=st.height + 1,
        time_ms=st.time_ms + 1_000,
        proposer=st.validators.validators[0].address,
    )
    return msgspec.structs.replace(h, **changes)


@pytest.mark.parametrize(
    "fault", ["wrong-chain-id", "same-height", "skipped-height", "time-backwards"]
)
def test_apply_block_rejects_a_header_that_cannot_follow(fault: str) -> None:
    c = make_chain()
    c.block()  # height 1, so that "same height" and "skipped height" are both > 0
    st = c.state
    faults: dict[str, dict[str, Any]] = {
        "wrong-chain-id": {"chain_id": "another-chain"},
        "same-height": {"height": st.height},
        "skipped-height": {"height": st.height + 2},
        "time-backwards": {"time_ms": st.time_ms - 1},
    }
    changes = faults[fault]
    hash_before = c.state.app_hash
    with pytest.raises(BlockError):
        apply_block(c.state, _next_header(c, **changes), [])
    # The state was not consumed and still works.
    assert c.state.app_hash == hash_before
    new_state, receipts, app_hash = apply_block(c.state, _next_header(c), [])
    assert receipts == []
    assert new_state.height == 2
    assert app_hash == new_state.app_hash


def test_equal_time_is_allowed() -> None:
    c = make_chain()
    t = c.state.time_ms
    c.block(advance_ms=0)
    assert c.state.time_ms == t
    assert c.state.height == 1


def test_consumed_state_raises_stale_state_error() -> None:
    c = make_chain()
    old = c.state
    kept = old.copy()
    c.block()
    with pytest.raises(StaleStateError):
        _ = old.app_hash
    with pytest.raises(StaleStateError):
        old.account(c.keys.accounts[0].address)
    with pytest.raises(StaleStateError):
        old.prove(key_account(c.keys.accounts[0].address))
    with pytest.raises(StaleStateError):
        apply_block(old, c.blocks[-1][0], [])
    # A copy taken before is independent and can follow the same header.
    again, _, h = apply_block(kept, c.blocks[-1][0], [])
    assert h == c.state.app_hash
    assert again.height == c.state.height


# ====================================================================== pre-checks


def test_malformed_bytes_change_nothing() -> None:
    c = make_chain()
    good = signed_raw(c, c.keys.accounts[0], Transfer(c.keys.accounts[1].address, 5))
    for raw in (b"", b"\xc1", b"not msgpack at all", good[:-1], good + b"\x00"):
        assert_precheck_rejected(c, raw, Code.MALFORMED)


def test_body_outside_the_schema_is_malformed_even_when_signed() -> None:
    c = make_chain()
    key = c.keys.accounts[0]
    bodies: list[list[Any]] = [
        ["revoke", UNKNOWN_ID, 11, b""],  # reason code above the schema bound of 10
        ["no_such_tx", 1],  # unknown tag
        ["transfer", b"\x00" * 19, 5],  # address of the wrong length
    ]
    for body in bodies:
        unsigned = [c.chain_id, key.public_key, 0, 10, body]
        sig = key.sign(TX_SIGN_TAG + codec.encode(unsigned))
        assert_precheck_rejected(c, codec.encode([*unsigned, sig]), Code.MALFORMED)


def test_non_canonical_encoding_of_a_valid_tx_is_malformed() -> None:
    c = make_chain()
    key = c.keys.accounts[0]
    tx = sign_tx(key, c.chain_id, 0, 10, Transfer(c.keys.accounts[1].address, 5))
    good = encode_tx(tx)
    assert good[0] == 0x96  # fixarray of the 6 Tx fields
    parts = [codec.encode(x) for x in (tx.chain_id, tx.pubkey, tx.nonce)]
    tail = [codec.encode(x) for x in (tx.body, tx.sig)]
    assert b"\x96" + b"".join([*parts, codec.encode(10), *tail]) == good
    array16 = b"\xdc\x00\x06" + good[1:]
    fee_as_uint8 = b"\x96" + b"".join([*parts, b"\xcc\x0a", *tail])
    for raw in (array16, fee_as_uint8):
        assert_precheck_rejected(c, raw, Code.MALFORMED)
    # The canonical bytes themselves are fine.
    assert_invariants(c)
    c.raw(good)
    ok(c.block()[0])


def _sized_tx(c: DevChain, key: SigningKey, size: int) -> bytes:
    """A correctly signed CertApply whose encoding is exactly ``size`` bytes."""
    domains = ["a" * 200] * 80

    def raw_for(doms: list[str]) -> bytes:
        body = CertApply("DV", doms, SPKI, 30, 1_000)
        return signed_raw(c, key, body)

    base = len(raw_for(domains))
    last = size - base - 2  # str8 header is 2 bytes for lengths 32..255
    assert 32 <= last <= 253
    raw = raw_for([*domains, "b" * last])
    assert len(raw) == size
    return raw


def test_tx_size_limit_is_exact() -> None:
    c = make_chain()
    key = c.keys.accounts[0]
    assert_precheck_rejected(c, _sized_tx(c, key, MAX_TX_BYTES + 1), Code.TX_TOO_LARGE)
    assert_precheck_rejected(c, b"\x00" * (MAX_TX_BYTES + 1), Code.TX_TOO_LARGE)
    # At exactly the limit the tx is decoded and executed (its domains are bogus).
    c.raw(_sized_tx(c, key, MAX_TX_BYTES))
    (r,) = c.block()
    expect(r, Code.INVALID_DOMAIN)
    assert r.fee_charged == 10


def test_wrong_chain_id_changes_nothing() -> None:
    c = make_chain()
    raw = signed_raw(
        c, c.keys.accounts[0], Transfer(c.keys.accounts[1].address, 5), chain_id="other-chain"
    )
    assert_precheck_rejected(c, raw, Code.WRONG_CHAIN_ID)


def test_bad_signature_changes_nothing() -> None:
    c = make_chain()
    key = c.keys.accounts[0]
    good = signed_raw(c, key, Transfer(c.keys.accounts[1].address, 5))
    flipped = good[:-1] + bytes([good[-1] ^ 0x01])
    assert_precheck_rejected(c, flipped, Code.BAD_SIGNATURE)
    # A signature by another key over the same bytes is just as bad.
    tx = decode_tx(good)
    other_sig = c.keys.accounts[1].sign(TX_SIGN_TAG + codec.encode(tx.unsigned()))
    forged = encode_tx(msgspec.structs.replace(tx, sig=other_sig))
    assert_precheck_rejected(c, forged, Code.BAD_SIGNATURE)


def test_replay_in_the_same_block_and_a_later_block_is_bad_nonce() -> None:
    c = make_chain()
    a, b = c.keys.accounts[0], c.keys.accounts[1]
    raw = c.tx(a, Transfer(b.address, 500))
    c.raw(raw)
    first, replay = c.block()
    ok(first)
    expect(replay, Code.BAD_NONCE)
    assert replay.fee_charged == 0
    assert bal(c, a.address) == BALANCE - 500 - 10
    assert bal(c, b.address) == BALANCE + 500
    assert account(c, a.address).nonce == 1
    assert_precheck_rejected(c, raw, Code.BAD_NONCE)
    assert bal(c, b.address) == BALANCE + 500
    # A nonce from the future is refused too.
    ahead = signed_raw(c, a, Transfer(b.address, 1), nonce=5)
    assert_precheck_rejected(c, ahead, Code.BAD_NONCE)


def test_fee_below_minimum_changes_nothing() -> None:
    c = make_chain()
    key = c.keys.accounts[0]
    raw = signed_raw(c, key, Transfer(c.keys.accounts[1].address, 5), fee=9)
    assert_precheck_rejected(c, raw, Code.FEE_TOO_LOW)
    r = ok(send(c, key, Transfer(c.keys.accounts[1].address, 5), fee=10))
    assert r.fee_charged == 10


def test_cannot_pay_fee_changes_nothing() -> None:
    c = make_chain()
    stranger = SigningKey.from_label("unfunded")
    raw = signed_raw(c, stranger, Transfer(c.keys.accounts[0].address, 1))
    assert_precheck_rejected(c, raw, Code.CANNOT_PAY_FEE)
    assert c.state.account(stranger.address) is None
    # With 9 units it still cannot pay a fee of 10; with 10 it can.
    ok(send(c, c.keys.accounts[0], Transfer(stranger.address, 9)))
    raw = signed_raw(c, stranger, Transfer(c.keys.accounts[0].address, 1), fee=10)
    assert_precheck_rejected(c, raw, Code.CANNOT_PAY_FEE)
    ok(send(c, c.keys.accounts[0], Transfer(stranger.address, 1)))
    r = expect(send(c, stranger, Transfer(c.keys.accounts[0].address, 1)), Code.INSUFFICIENT_FUNDS)
    assert r.fee_charged == 10
    assert account(c, stranger.address) == Account(0, 1, stranger.public_key)


# ====================================================================== execution failures


def test_execution_failure_charges_fee_to_sender_and_credits_proposer() -> None:
    c = make_chain()
    sender = c.keys.accounts[0]
    proposer = c.state.validators.validators[(c.state.height + 1) % 4].address
    p_before = bal(c, proposer)
    r = assert_only_fee_charged(c, sender, Transfer(sender.address, 0), Code.INVALID_AMOUNT, 25)
    assert r.fee_charged == 25
    assert c.blocks[-1][0].proposer == proposer
    assert bal(c, sender.address) == BALANCE - 25
    assert bal(c, proposer) == p_before + 25
    assert account(c, sender.address).nonce == 1


def test_all_fees_of_a_block_go_to_its_proposer() -> None:
    c = make_chain()
    a0, a1 = c.keys.accounts[0], c.keys.accounts[1]
    proposer = c.state.validators.validators[(c.state.height + 1) % 4].address
    c.tx(a0, Transfer(a1.address, 1), fee=11)
    c.tx(a1, Transfer(a0.address, 0), fee=13)  # fails, still pays
    c.raw(signed_raw(c, a0, Transfer(a1.address, 1), fee=1))  # pre-check failure, pays nothing
    r1, r2, r3 = c.block()
    ok(r1)
    expect(r2, Code.INVALID_AMOUNT)
    expect(r3, Code.BAD_NONCE)  # its nonce was already used by r1
    assert bal(c, proposer) == BALANCE + 24
    assert bal(c, a0.address) == BALANCE - 11 - 1
    assert bal(c, a1.address) == BALANCE - 13 + 1


def test_later_tx_in_a_block_sees_earlier_writes() -> None:
    c = make_chain()
    newbie = SigningKey.from_label("newbie")
    c.tx(c.keys.accounts[0], Transfer(newbie.address, 100))
    c.tx(newbie, Transfer(c.keys.accounts[1].address, 40))
    all_ok(c.block())
    assert account(c, newbie.address) == Account(50, 1, newbie.public_key)


# ====================================================================== transfer


def test_transfer_moves_funds_and_creates_recipient() -> None:
    c = make_chain()
    a = c.keys.accounts[0]
    to = SigningKey.from_label("recipient").address
    r = ok(send(c, a, Transfer(to, 1_234)))
    assert r.events == [Event("transfer", to, "1234")]
    assert account(c, to) == Account(1_234, 0, b"")
    assert account(c, a.address) == Account(BALANCE - 1_234 - 10, 1, a.public_key)


def test_transfer_of_whole_balance_after_fee() -> None:
    c = make_chain()
    a, b = c.keys.accounts[0], c.keys.accounts[1]
    r = expect(send(c, a, Transfer(b.address, BALANCE - 10 + 1)), Code.INSUFFICIENT_FUNDS)
    assert r.fee_charged == 10
    ok(send(c, a, Transfer(b.address, BALANCE - 20)))
    assert bal(c, a.address) == 0
    assert bal(c, b.address) == 2 * BALANCE - 20


def test_transfer_insufficient_funds_and_zero_amount() -> None:
    c = make_chain()
    a, b = c.keys.accounts[0], c.keys.accounts[1]
    assert_only_fee_charged(c, a, Transfer(b.address, 2 * BALANCE), Code.INSUFFICIENT_FUNDS)
    assert_only_fee_charged(c, a, Transfer(b.address, 0), Code.INVALID_AMOUNT)
    assert bal(c, b.address) == BALANCE


def test_transfer_to_self_only_costs_the_fee() -> None:
    c = make_chain()
    a = c.keys.accounts[0]
    ok(send(c, a, Transfer(a.address, 5_000)))
    assert bal(c, a.address) == BALANCE - 10


# ====================================================================== cert_apply


@pytest.mark.parametrize("cert_type", ["DV", "OV", "EV"])
def test_cert_apply_creates_pending_application_with_escrow(cert_type: str) -> None:
    c = make_chain()
    a = c.keys.accounts[0]
    escrow = fee_of(c, cert_type) + 7
    body = apply_body(c, cert_type, ["*.example.com", "example.com"], escrow=escrow)
    raw = c.tx(a, body)
    (r,) = c.block()
    ok(r)
    app_id = sha256(APP_TAG + sha256(raw))
    assert r.events == [Event("app_created", app_id, cert_type)]
    app = get_app(c, app_id)
    assert app.status == "pending"
    assert app.applicant == a.address
    assert app.applicant_pubkey == a.public_key
    assert app.cert_type == cert_type
    assert app.domains == ["*.example.com", "example.com"]
    assert app.spki == SPKI
    assert app.org == ORGS[cert_type]
    assert app.escrow == escrow
    assert app.created_height == c.state.height
    assert app.created_ms == c.state.time_ms
    assert app.expires_ms == c.state.time_ms + DEFAULT.application_ttl_ms
    assert app.attestations == [] and app.endorsements == [] and app.conflicts == []
    assert bal(c, a.address) == BALANCE - escrow - 10
    # No certificate, no domain index entry yet.
    assert c.state.certificate(cert_id_for(app_id)) is None
    assert c.state.certs_by_domain("example.com") == []


@pytest.mark.parametrize(
    "domains",
    [
        ["Example.com"],
        ["*.*.example.com"],
        ["www.*.example.com"],
        ["*example.com"],
        ["com"],
        ["example.com."],
        ["192.0.2.1"],
        ["-bad.example.com"],
        ["example.com", "example.com"],  # duplicate
        ["b.example.com", "a.example.com"],  # not sorted
        ["example.com", "*.example.com"],  # not sorted ("*" sorts first)
    ],
)
def test_cert_apply_invalid_domain(domains: list[str]) -> None:
    c = make_chain()
    a = c.keys.accounts[0]
    assert_only_fee_charged(c, a, apply_body(c, "DV", domains), Code.INVALID_DOMAIN)


def test_cert_apply_too_many_domains_follows_policy() -> None:
    c = make_chain(Policy(max_domains=2))
    a = c.keys.accounts[0]
    three = ["a.example.com", "b.example.com", "c.example.com"]
    assert_only_fee_charged(c, a, apply_body(c, "DV", three), Code.TOO_MANY_DOMAINS)
    apply_cert(c, "DV", three[:2])


def test_cert_apply_invalid_key() -> None:
    c = make_chain()
    a = c.keys.accounts[0]
    weak = spki_der_of(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    p521 = spki_der_of(ec.derive_private_key(7, ec.SECP521R1()))
    for spki in (b"garbage", SPKI[:-1], weak, p521):
        body = apply_body(c, "DV", spki=spki)
        assert_only_fee_charged(c, a, body, Code.INVALID_KEY)


def test_cert_apply_accepts_rsa_and_p256(rsa_key: rsa.RSAPrivateKey) -> None:
    c = make_chain()
    apply_cert(c, spki=spki_der_of(rsa_key))
    apply_cert(c, spki=SPKI_P256)


def test_cert_apply_validity_above_policy() -> None:
    c = make_chain()
    a = c.keys.accounts[0]
    body = apply_body(c, "DV", validity_days=DEFAULT.max_validity_days + 1)
    assert_only_fee_charged(c, a, body, Code.INVALID_VALIDITY)
    apply_cert(c, validity_days=DEFAULT.max_validity_days)


@pytest.mark.parametrize(
    ("cert_type", "org"),
    [
        ("DV", ORG_OV),
        ("OV", None),
        ("EV", None),
        ("EV", OrgIdentity("Acme", "DE", registration_id="HRB 1")),  # no jurisdiction
        ("EV", OrgIdentity("Acme", "DE", jurisdiction="DE-BE")),  # no registration_id
    ],
)
def test_cert_apply_invalid_org(cert_type: str, org: OrgIdentity | None) -> None:
    c = make_chain()
    body = msgspec.structs.replace(apply_body(c, cert_type), org=org)
    assert_only_fee_charged(c, c.keys.accounts[0], body, Code.INVALID_ORG)


def test_ov_accepts_org_without_registration_data() -> None:
    c = make_chain()
    app_id = apply_cert(c, "OV")
    assert get_app(c, app_id).org == ORG_OV


@pytest.mark.parametrize("cert_type", ["DV", "OV", "EV"])
def test_cert_apply_insufficient_escrow(cert_type: str) -> None:
    c = make_chain()
    body = apply_body(c, cert_type, escrow=fee_of(c, cert_type) - 1)
    assert_only_fee_charged(c, c.keys.accounts[0], body, Code.INSUFFICIENT_ESCROW)


def test_cert_apply_escrow_above_balance_is_insufficient_funds() -> None:
    c = make_chain()
    body = apply_body(c, "DV", escrow=BALANCE)  # the fee leaves less than BALANCE
    assert_only_fee_charged(c, c.keys.accounts[0], body, Code.INSUFFICIENT_FUNDS)


def test_domain_cert_limit_at_apply_time() -> None:
    c = make_chain(Policy(max_certs_per_domain=1))
    issue(c, "DV", ["example.com"])
    for doms in (["example.com"], ["example.com", "www.example.com"]):
        body = apply_body(c, "DV", doms)
        assert_only_fee_charged(c, c.keys.accounts[1], body, Code.DOMAIN_CERT_LIMIT)
    apply_cert(c, "DV", ["www.example.com"])  # another name is fine


def test_domain_cert_limit_at_issuance_rejects_and_refunds() -> None:
    c = make_chain(Policy(max_certs_per_domain=1, min_tx_fee=0))
    a0, a1 = c.keys.accounts[0], c.keys.accounts[1]
    first = apply_cert(c, key=a0)
    second = apply_cert(c, key=a1)
    attest(c, first, [0, 1, 2])
    assert get_app(c, first).status == "issued"
    before = bal(c, a1.address)
    attest(c, second, [0, 1, 2])
    app = get_app(c, second)
    assert app.status == "rejected"
    assert "per-domain" in app.close_reason
    assert bal(c, a1.address) == before + 1_000 - 100
    assert len(c.state.certs_by_domain("example.com")) == 1


def test_expired_certificate_no_longer_counts_toward_domain_limit() -> None:
    c = make_chain(Policy(max_certs_per_domain=1))
    cid = issue(c, validity_days=1)
    body = apply_body(c, "DV")
    assert_only_fee_charged(c, c.keys.accounts[1], body, Code.DOMAIN_CERT_LIMIT)
    c.block(advance_ms=MS_PER_DAY)
    assert cert_status(get_cert(c, cid), c.state.time_ms) == "expired"
    apply_cert(c, key=c.keys.accounts[1])


# ====================================================================== DV attestation


def test_dv_needs_more_than_two_thirds_of_equal_power() -> None:
    c = make_chain()
    app_id = apply_cert(c)
    attest(c, app_id, [0, 1])
    app = get_app(c, app_id)
    assert app.status == "pending"
    assert len(app.attestations) == 2
    assert [a.validator for a in app.attestations] == sorted(
        c.keys.validators[i].address for i in (0, 1)
    )
    c.tx(c.keys.validators[2], DvAttest([attest_item(app_id)]))
    (r,) = c.block()
    ok(r)
    cid = cert_id_for(app_id)
    assert kinds(r.events) == ["attested", "cert_issued"]
    assert r.events[1] == Event("cert_issued", cid, "example.com")
    app = get_app(c, app_id)
    assert app.status == "issued"
    assert app.closed_height == c.state.height
    cert = get_cert(c, cid)
    assert cert.status == "valid"
    assert cert.cert_type == cert.issued_type == "DV"
    assert cert.owner == c.keys.accounts[0].address
    assert cert.spki == SPKI
    assert cert.org is None
    assert cert.attestors == sorted(c.keys.validators[i].address for i in (0, 1, 2))
    assert cert.endorsers == []
    assert (cert.dv_power, cert.total_power) == (30, 40)
    assert cert.not_before_ms == c.state.time_ms
    assert cert.not_after_ms == c.state.time_ms + 30 * MS_PER_DAY
    assert cert.issued_height == c.state.height
    assert cert.log_index == 0
    entry = c.state.log_entry(0)
    assert entry is not None and entry.kind == "issued" and entry.cert_id == cid
    assert entry.cert_hash == sha256(codec.encode(cert))
    assert c.state.log.size == 1
    assert c.state.certs_by_domain("example.com") == [cert]


def test_dv_with_unequal_powers() -> None:
    powers = [70, 10, 10, 10]
    big = make_chain(powers=powers)
    app_id = apply_cert(big)
    attest(big, app_id, [0])
    assert get_app(big, app_id).status == "issued"
    assert get_cert(big, cert_id_for(app_id)).dv_power == 70

    small = make_chain(powers=powers)
    app_id = apply_cert(small)
    attest(small, app_id, [1, 2, 3])
    assert get_app(small, app_id).status == "pending"
    # The big validator's failure now makes more than 2/3 unreachable.
    attest(small, app_id, [0], passed=False)
    assert get_app(small, app_id).status == "rejected"


def test_dv_failures_of_a_third_or_more_reject_and_refund() -> None:
    c = make_chain(ZERO_FEE)
    applicant = c.keys.accounts[0]
    app_id = apply_cert(c)
    assert bal(c, applicant.address) == BALANCE - 1_000
    attest(c, app_id, [0])
    attest(c, app_id, [1], passed=False)
    assert get_app(c, app_id).status == "pending"  # 10 of 40 failed: 30 could still pass
    vals = [k.address for k in c.keys.validators]
    before = {v: bal(c, v) for v in vals}
    c.tx(c.keys.validators[2], DvAttest([attest_item(app_id, False)]))
    (r,) = c.block()
    ok(r)
    assert kinds(r.events) == ["attested", "app_rejected"]
    app = get_app(c, app_id)
    assert app.status == "rejected"
    assert app.closed_height == c.state.height
    assert app.cert_id == b""
    assert c.state.certificate(cert_id_for(app_id)) is None
    # Refund: escrow minus 10% processing fee; the fee is shared by the three
    # validators that attested (ok or not), remainder to the lowest address.
    assert bal(c, applicant.address) == BALANCE - 100
    workers = sorted(vals[:3])
    assert {v: bal(c, v) - before[v] for v in vals} == {
        workers[0]: 34,
        workers[1]: 33,
        workers[2]: 33,
        vals[3]: 0,
    }


def test_dv_thresholds_are_strict_at_exactly_two_thirds() -> None:
    # Three equal validators: 2 of 3 is exactly 2/3, which is not "more than 2/3";
    # one failure (exactly 1/3) already makes more than 2/3 unreachable.
    c = make_chain(n_validators=3)
    app_id = apply_cert(c, domains=["a.example.com"])
    attest(c, app_id, [0, 1])
    assert get_app(c, app_id).status == "pending"
    attest(c, app_id, [2])
    assert get_app(c, app_id).status == "issued"
    app_id = apply_cert(c, domains=["b.example.com"])
    attest(c, app_id, [0], passed=False)
    assert get_app(c, app_id).status == "rejected"


def test_conflicting_attestation_is_recorded_and_not_counted() -> None:
    c = make_chain()
    app_id = apply_cert(c)
    attest(c, app_id, [0, 1])
    v1 = c.keys.validators[1]
    c.tx(v1, DvAttest([attest_item(app_id, False)]))
    (r,) = c.block()
    ok(r)
    assert r.events == [Event("attest_conflict", app_id, v1.address.hex())]
    app = get_app(c, app_id)
    assert app.status == "pending"
    assert [a.ok for a in app.attestations] == [True, True]
    assert len(app.conflicts) == 1
    assert app.conflicts[0].validator == v1.address
    assert app.conflicts[0].ok is False
    # The same word again is simply skipped.
    c.tx(v1, DvAttest([attest_item(app_id, True)]))
    (r,) = c.block()
    assert ok(r).events == [Event("attest_skipped", app_id, "already attested")]
    assert len(get_app(c, app_id).conflicts) == 1
    # The count was unchanged: one more distinct validator issues.
    attest(c, app_id, [2])
    assert get_app(c, app_id).status == "issued"
    assert c.keys.validators[1].address in get_cert(c, cert_id_for(app_id)).attestors


def test_attest_by_non_validator() -> None:
    c = make_chain()
    app_id = apply_cert(c)
    body = DvAttest([attest_item(app_id)])
    for key in (c.keys.accounts[1], c.keys.endorsers[0], c.keys.accounts[0]):
        assert_only_fee_charged(c, key, body, Code.NOT_VALIDATOR)
    assert get_app(c, app_id).attestations == []


def test_attest_on_unknown_or_closed_application_is_skipped() -> None:
    c = make_chain()
    v3 = c.keys.validators[3]
    r = ok(send(c, v3, DvAttest([attest_item(UNKNOWN_ID)])))
    assert r.events == [Event("attest_skipped", UNKNOWN_ID, "unknown application")]
    assert r.fee_charged == 10
    app_id = apply_cert(c)
    attest(c, app_id, [0, 1, 2])
    before = get_app(c, app_id)
    r = ok(send(c, v3, DvAttest([attest_item(app_id)])))
    assert r.events == [Event("attest_skipped", app_id, "application is issued")]
    assert get_app(c, app_id) == before
    attestors = sorted(c.keys.validators[i].address for i in (0, 1, 2))
    assert get_cert(c, cert_id_for(app_id)).attestors == attestors


def test_batched_attestations_cover_several_applications() -> None:
    c = make_chain()
    a = apply_cert(c, domains=["a.example.com"])
    b = apply_cert(c, domains=["b.example.com"])
    for i in range(3):
        items = [attest_item(a), attest_item(UNKNOWN_ID), attest_item(b), attest_item(a)]
        c.tx(c.keys.validators[i], DvAttest(items))
    r0, _, r2 = all_ok(c.block())
    assert kinds(r0.events) == ["attested", "attest_skipped", "attested", "attest_skipped"]
    assert r0.events[3].detail == "duplicate item in batch"
    assert kinds(r2.events) == [
        "attested",
        "cert_issued",
        "attest_skipped",
        "attested",
        "cert_issued",
        "attest_skipped",
    ]
    assert get_app(c, a).status == "issued"
    assert get_app(c, b).status == "issued"
    assert c.state.log.size == 2


# ====================================================================== payouts


def test_dv_payout_split_among_ok_attestors_with_remainder_rule() -> None:
    c = make_chain(ZERO_FEE)
    app_id = apply_cert(c, escrow=1_000)
    vals = [k.address for k in c.keys.validators]
    attest(c, app_id, [3], passed=False)  # took part, but did not vouch: not paid
    before = {v: bal(c, v) for v in vals}
    applicant_before = bal(c, c.keys.accounts[0].address)
    attest(c, app_id, [0, 1, 2])
    assert get_app(c, app_id).status == "issued"
    ok_sorted = sorted(vals[:3])
    assert {v: bal(c, v) - before[v] for v in vals} == {
        ok_sorted[0]: 334,
        ok_sorted[1]: 333,
        ok_sorted[2]: 333,
        vals[3]: 0,
    }
    assert bal(c, c.keys.accounts[0].address) == applicant_before


def test_dv_payout_to_a_single_big_validator() -> None:
    c = make_chain(ZERO_FEE, powers=[70, 10, 10, 10])
    app_id = apply_cert(c, escrow=1_001)
    v0 = c.keys.validators[0].address
    before = bal(c, v0)
    attest(c, app_id, [0])
    assert bal(c, v0) == before + 1_001


@pytest.mark.parametrize(
    ("cert_type", "escrow", "n_endorsers"),
    [("OV", 5_001, 2), ("OV", 5_000, 3), ("EV", 20_000, 3)],
)
def test_ov_ev_payout_shares(cert_type: str, escrow: int, n_endorsers: int) -> None:
    c = make_chain(ZERO_FEE)
    app_id = apply_cert(c, cert_type, escrow=escrow)
    endorse(c, app_id, range(n_endorsers))
    vals = [k.address for k in c.keys.validators]
    ends = [k.address for k in c.keys.endorsers]
    watched = vals + ends
    before = {a: bal(c, a) for a in watched}
    attest(c, app_id, [0, 1, 2])
    cert = get_cert(c, cert_id_for(app_id))
    assert cert.endorsers == sorted(ends[:n_endorsers])
    endorser_part = escrow * DEFAULT.endorser_share_bps // 10_000
    expected = dict.fromkeys(watched, 0)
    for group, amount in (
        (sorted(ends[:n_endorsers]), endorser_part),
        (sorted(vals[:3]), escrow - endorser_part),
    ):
        share, rem = divmod(amount, len(group))
        for i, addr in enumerate(group):
            expected[addr] = share + (1 if i < rem else 0)
    assert {a: bal(c, a) - before[a] for a in watched} == expected
    assert sum(expected.values()) == escrow


def test_ov_ev_exact_payout_numbers() -> None:
    c = make_chain(ZERO_FEE)
    app_id = apply_cert(c, "EV", escrow=20_000)
    endorse(c, app_id, [0, 1, 2])
    vals = sorted(k.address for k in c.keys.validators[:3])
    ends = sorted(k.address for k in c.keys.endorsers)
    before = {a: bal(c, a) for a in vals + ends}
    attest(c, app_id, [0, 1, 2])
    got = [bal(c, a) - before[a] for a in ends + vals]
    assert got == [3_334, 3_333, 3_333, 3_334, 3_333, 3_333]


# ====================================================================== OV / EV endorsement


@pytest.mark.parametrize("cert_type", ["OV", "EV"])
def test_ov_ev_need_k_approvals_on_top_of_dv(cert_type: str) -> None:
    c = make_chain()
    k = k_of(c, cert_type)
    assert k == {"OV": 2, "EV": 3}[cert_type]
    app_id = apply_cert(c, cert_type)
    attest(c, app_id, [0, 1, 2, 3])
    assert get_app(c, app_id).status == "pending"  # DV passed, no endorsements
    endorse(c, app_id, range(k - 1))
    assert get_app(c, app_id).status == "pending"
    c.tx(c.keys.endorsers[k - 1], Endorse(app_id, True))
    (r,) = c.block()
    assert kinds(ok(r).events) == ["endorsed", "cert_issued"]
    cert = get_cert(c, cert_id_for(app_id))
    assert cert.cert_type == cert.issued_type == cert_type
    assert cert.org == ORGS[cert_type]
    assert cert.endorsers == sorted(e.address for e in c.keys.endorsers[:k])
    assert len(cert.attestors) == 4


@pytest.mark.parametrize("cert_type", ["OV", "EV"])
def test_endorsements_alone_do_not_issue(cert_type: str) -> None:
    c = make_chain()
    app_id = apply_cert(c, cert_type)
    endorse(c, app_id, [0, 1, 2])
    assert get_app(c, app_id).status == "pending"
    attest(c, app_id, [0, 1])
    assert get_app(c, app_id).status == "pending"
    attest(c, app_id, [2])
    assert get_app(c, app_id).status == "issued"


def test_one_endorser_can_never_issue() -> None:
    c = make_chain(ZERO_FEE, n_endorsers=1)
    app_id = apply_cert(c, "OV")
    assert get_app(c, app_id).status == "pending"
    # The single endorser approves; k_ov = 2 approvals are unreachable with one
    # active endorser, so the very decision it triggers is a rejection.
    endorse(c, app_id, [0])
    app = get_app(c, app_id)
    assert app.status == "rejected"
    assert "unreachable" in app.close_reason
    assert c.state.certificate(cert_id_for(app_id)) is None
    assert bal(c, c.keys.accounts[0].address) == BALANCE - 500  # refunded minus 10 %
    # Even with more endorsers, one approval plus full DV stays pending.
    c = make_chain()
    app_id = apply_cert(c, "OV")
    endorse(c, app_id, [0])
    attest(c, app_id, [0, 1, 2, 3])
    assert get_app(c, app_id).status == "pending"


@pytest.mark.parametrize(("cert_type", "rejects"), [("OV", 2), ("EV", 1)])
def test_rejections_making_k_unreachable_reject_and_refund(cert_type: str, rejects: int) -> None:
    c = make_chain(ZERO_FEE)
    applicant = c.keys.accounts[0].address
    escrow = fee_of(c, cert_type)
    app_id = apply_cert(c, cert_type)
    attest(c, app_id, [0])
    if rejects > 1:
        endorse(c, app_id, range(rejects - 1), approve=False)
        assert get_app(c, app_id).status == "pending"
    v0 = c.keys.validators[0].address
    v0_before = bal(c, v0)
    c.tx(c.keys.endorsers[rejects - 1], Endorse(app_id, False, "no such company"))
    (r,) = c.block()
    assert kinds(ok(r).events) == ["endorsed", "app_rejected"]
    assert get_app(c, app_id).status == "rejected"
    fee = escrow * DEFAULT.refund_fee_bps // 10_000
    assert bal(c, applicant) == BALANCE - fee
    assert bal(c, v0) == v0_before + fee  # the only attesting validator


def test_rejection_without_attestors_pays_processing_fee_to_proposer() -> None:
    c = make_chain(ZERO_FEE)
    app_id = apply_cert(c, "EV")
    proposer = c.state.validators.validators[(c.state.height + 1) % 4].address
    p_before = bal(c, proposer)
    endorse(c, app_id, [0], approve=False)
    assert get_app(c, app_id).status == "rejected"
    assert bal(c, proposer) == p_before + 2_000
    assert bal(c, c.keys.accounts[0].address) == BALANCE - 2_000


def test_endorse_rejection_codes() -> None:
    c = make_chain()
    e0 = c.keys.endorsers[0]
    dv_app = apply_cert(c, "DV", ["dv.example.com"])
    ov_app = apply_cert(c, "OV", ["ov.example.com"])
    assert_only_fee_charged(c, c.keys.accounts[1], Endorse(ov_app, True), Code.NOT_ENDORSER)
    assert_only_fee_charged(c, c.keys.validators[0], Endorse(ov_app, True), Code.NOT_ENDORSER)
    assert_only_fee_charged(c, e0, Endorse(UNKNOWN_ID, True), Code.UNKNOWN_APPLICATION)
    assert_only_fee_charged(c, e0, Endorse(dv_app, True), Code.NOT_ENDORSABLE)
    endorse(c, ov_app, [0])
    assert_only_fee_charged(c, e0, Endorse(ov_app, True), Code.DUPLICATE_ENDORSEMENT)
    assert_only_fee_charged(c, e0, Endorse(ov_app, False), Code.DUPLICATE_ENDORSEMENT)
    endorse(c, ov_app, [1])
    attest(c, ov_app, [0, 1, 2])
    assert get_app(c, ov_app).status == "issued"
    e2 = c.keys.endorsers[2]
    assert_only_fee_charged(c, e2, Endorse(ov_app, True), Code.APPLICATION_CLOSED)


def test_endorse_on_rejected_application_is_closed() -> None:
    c = make_chain()
    app_id = apply_cert(c, "OV")
    attest(c, app_id, [0, 1], passed=False)
    assert get_app(c, app_id).status == "rejected"
    body = Endorse(app_id, True)
    assert_only_fee_charged(c, c.keys.endorsers[0], body, Code.APPLICATION_CLOSED)


# ====================================================================== expiry


def test_pending_application_expires_and_is_refunded() -> None:
    c = make_chain(ZERO_FEE)
    app_id = apply_cert(c)
    created = c.state.time_ms
    attest(c, app_id, [0])
    v0 = c.keys.validators[0].address
    v0_before = bal(c, v0)
    ttl = DEFAULT.application_ttl_ms
    c.block(advance_ms=created + ttl - 1 - c.state.time_ms)
    assert get_app(c, app_id).status == "pending"
    assert c.state.supply_in_accounts_and_escrow() == c.state.meta.total_supply
    c.block(advance_ms=1)
    assert c.state.time_ms == created + ttl
    app = get_app(c, app_id)
    assert app.status == "expired"
    assert app.closed_height == c.state.height
    assert c.state.last_events == [
        Event("app_expired", app_id, "application expired before it was decided")
    ]
    assert bal(c, c.keys.accounts[0].address) == BALANCE - 100
    assert bal(c, v0) == v0_before + 100
    # Late attestations are skipped, and the app can no longer be endorsed.
    r = ok(send(c, c.keys.validators[1], DvAttest([attest_item(app_id)])))
    assert r.events == [Event("attest_skipped", app_id, "application is expired")]


def test_expired_ov_application_cannot_be_endorsed() -> None:
    c = make_chain()
    app_id = apply_cert(c, "OV")
    c.block(advance_ms=DEFAULT.application_ttl_ms)
    assert get_app(c, app_id).status == "expired"
    body = Endorse(app_id, True)
    assert_only_fee_charged(c, c.keys.endorsers[0], body, Code.APPLICATION_CLOSED)


def test_certificate_status_is_judged_by_header_time() -> None:
    c = make_chain()
    cid = issue(c, validity_days=2)
    cert = get_cert(c, cid)
    assert cert_status(cert, cert.not_before_ms - 1) == "not_yet_valid"
    assert cert_status(cert, cert.not_before_ms) == "valid"
    assert cert_status(cert, cert.not_after_ms - 1) == "valid"
    assert cert_status(cert, cert.not_after_ms) == "expired"
    c.block(advance_ms=2 * MS_PER_DAY - 1_000)
    assert cert_status(get_cert(c, cid), c.state.time_ms) == "valid"
    c.block(advance_ms=1_000)
    cert = get_cert(c, cid)
    assert cert.status == "valid"  # the record is unchanged; status is a function of time
    assert cert_status(cert, c.state.time_ms) == "expired"


# ====================================================================== revocation


def test_revoke_by_owner() -> None:
    c = make_chain()
    cid = issue(c)
    log_before = c.state.log.size
    r = ok(send(c, c.keys.accounts[0], Revoke(cid, 1)))
    assert r.events == [Event("cert_revoked", cid, "keyCompromise")]
    cert = get_cert(c, cid)
    assert cert.status == "revoked"
    assert cert.revocation_reason == 1
    assert cert.revoked_ms == c.state.time_ms
    assert cert.revoked_height == c.state.height
    assert cert_status(cert, c.state.time_ms) == "revoked"
    assert c.state.log.size == log_before + 1
    entry = c.state.log_entry(log_before)
    assert entry is not None
    assert (entry.kind, entry.cert_id, entry.height) == ("revoked", cid, c.state.height)
    assert entry.cert_hash == sha256(codec.encode(cert))


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256", "rsa-2048"])
def test_revoke_by_holder_of_the_certificate_key(
    alg: str, subject_keys: dict[str, SubjectPrivateKey]
) -> None:
    c = make_chain()
    priv = subject_keys[alg]
    cid = issue(c, spki=spki_der_of(priv))
    stranger = c.keys.accounts[2]
    sig = sign_with_private_key(priv, revoke_sign_bytes(c.chain_id, cid, 1))
    log_before = c.state.log.size
    ok(send(c, stranger, Revoke(cid, 1, sig)))
    cert = get_cert(c, cid)
    assert cert.status == "revoked"
    assert cert.owner == c.keys.accounts[0].address  # ownership is not transferred
    assert c.state.log.size == log_before + 1
    entry = c.state.log_entry(log_before)
    assert entry is not None and entry.kind == "revoked"


def test_revoke_with_wrong_key_sig_is_not_authorized(rsa_key: rsa.RSAPrivateKey) -> None:
    c = make_chain()
    cid = issue(c)
    other_cid = issue(c, domains=["other.example.com"])
    stranger = c.keys.accounts[2]
    good_msg = revoke_sign_bytes(c.chain_id, cid, 1)
    sigs = [
        b"",  # no key signature
        sign_with_private_key(P256_SUBJECT, good_msg),  # another key
        sign_with_private_key(rsa_key, good_msg),
        sign_with_private_key(ED_SUBJECT, revoke_sign_bytes(c.chain_id, cid, 5)),  # reason
        sign_with_private_key(ED_SUBJECT, revoke_sign_bytes("other-chain", cid, 1)),  # chain
        sign_with_private_key(ED_SUBJECT, revoke_sign_bytes(c.chain_id, other_cid, 1)),  # cert
        sign_with_private_key(ED_SUBJECT, good_msg)[:-1] + b"\x00",
    ]
    for sig in sigs:
        assert_only_fee_charged(c, stranger, Revoke(cid, 1, sig), Code.NOT_AUTHORIZED)
    assert get_cert(c, cid).status == "valid"


@pytest.mark.parametrize("reason", [2, 6, 7, 8, 10])
def test_disallowed_reason_codes(reason: int) -> None:
    c = make_chain()
    cid = issue(c)
    owner, e0 = c.keys.accounts[0], c.keys.endorsers[0]
    assert_only_fee_charged(c, owner, Revoke(cid, reason), Code.INVALID_REASON)
    assert_only_fee_charged(c, e0, EndorserRevoke(cid, reason), Code.INVALID_REASON)
    action = GovRevokeCert(cid, reason)
    assert_only_fee_charged(c, c.keys.validators[0], GovPropose(action), Code.INVALID_REASON)
    assert get_cert(c, cid).status == "valid"


@pytest.mark.parametrize("reason", [0, 1, 3, 4, 5, 9])
def test_allowed_reason_codes(reason: int) -> None:
    c = make_chain()
    cid = issue(c)
    ok(send(c, c.keys.accounts[0], Revoke(cid, reason)))
    assert get_cert(c, cid).revocation_reason == reason


def test_double_revoke_and_unknown_cert() -> None:
    c = make_chain()
    cid = issue(c)
    owner = c.keys.accounts[0]
    ok(send(c, owner, Revoke(cid, 0)))
    log_size = c.state.log.size
    assert_only_fee_charged(c, owner, Revoke(cid, 1), Code.CERT_REVOKED)
    assert_only_fee_charged(c, owner, Revoke(UNKNOWN_ID, 1), Code.UNKNOWN_CERT)
    assert get_cert(c, cid).revocation_reason == 0
    assert c.state.log.size == log_size


@pytest.mark.parametrize("cert_type", ["OV", "EV"])
def test_endorser_quorum_revokes(cert_type: str) -> None:
    c = make_chain()
    cid = issue(c, cert_type)
    k = k_of(c, cert_type)
    # Any active endorser may vote; the last one did not endorse this OV cert.
    voters = list(range(3))[-k:]
    for i in voters[:-1]:
        r = ok(send(c, c.keys.endorsers[i], EndorserRevoke(cid, 9)))
        assert kinds(r.events) == ["revoke_vote"]
    cert = get_cert(c, cid)
    assert cert.status == "valid"
    assert cert.revoke_votes == sorted(c.keys.endorsers[i].address for i in voters[:-1])
    first = c.keys.endorsers[voters[0]]
    assert_only_fee_charged(c, first, EndorserRevoke(cid, 9), Code.DUPLICATE_REVOKE_VOTE)
    log_size = c.state.log.size
    r = ok(send(c, c.keys.endorsers[voters[-1]], EndorserRevoke(cid, 9)))
    assert r.events == [Event("cert_revoked", cid, "privilegeWithdrawn")]
    cert = get_cert(c, cid)
    assert cert.status == "revoked"
    assert cert.revocation_reason == 9
    assert len(cert.revoke_votes) == k
    assert c.state.log.size == log_size + 1
    entry = c.state.log_entry(log_size)
    assert entry is not None and entry.kind == "revoked"


def test_endorser_revoke_rejections() -> None:
    c = make_chain()
    dv = issue(c, "DV", ["dv.example.com"])
    ov = issue(c, "OV", ["ov.example.com"])
    e0 = c.keys.endorsers[0]
    assert_only_fee_charged(c, e0, EndorserRevoke(dv, 1), Code.NOT_ENDORSABLE)
    assert_only_fee_charged(c, c.keys.accounts[0], EndorserRevoke(ov, 1), Code.NOT_ENDORSER)
    assert_only_fee_charged(c, e0, EndorserRevoke(UNKNOWN_ID, 1), Code.UNKNOWN_CERT)
    ok(send(c, c.keys.accounts[0], Revoke(ov, 5)))
    assert_only_fee_charged(c, e0, EndorserRevoke(ov, 1), Code.CERT_REVOKED)


def test_governance_revokes_a_certificate() -> None:
    c = make_chain()
    cid = issue(c)
    log_size = c.state.log.size
    pid = propose(c, GovRevokeCert(cid, 9))
    vote(c, pid, [1])
    all_ok(c.block())
    assert get_prop(c, pid).status == "open"
    assert get_cert(c, cid).status == "valid"
    vote(c, pid, [2])
    (r,) = c.block()
    assert kinds(ok(r).events) == ["cert_revoked", "gov_passed"]
    cert = get_cert(c, cid)
    assert (cert.status, cert.revocation_reason) == ("revoked", 9)
    assert get_prop(c, pid).status == "passed"
    entry = c.state.log_entry(log_size)
    assert entry is not None and entry.kind == "revoked"
    # Proposing to revoke a revoked or unknown certificate fails up front.
    v0 = c.keys.validators[0]
    assert_only_fee_charged(c, v0, GovPropose(GovRevokeCert(cid, 9)), Code.CERT_REVOKED)
    body = GovPropose(GovRevokeCert(UNKNOWN_ID, 9))
    assert_only_fee_charged(c, v0, body, Code.UNKNOWN_CERT)


# ====================================================================== degradation


def test_withdraw_from_ev_with_exactly_k_endorsers_degrades_to_dv() -> None:
    c = make_chain()
    cid = issue(c, "EV")
    e1 = c.keys.endorsers[1]
    log_size = c.state.log.size
    r = ok(send(c, e1, EndorseWithdraw(cid, "contract ended")))
    assert kinds(r.events) == ["endorsement_withdrawn", "cert_degraded"]
    cert = get_cert(c, cid)
    assert cert.cert_type == "DV"
    assert cert.issued_type == "EV"
    assert cert.org is None
    assert cert.status == "valid"
    assert cert_status(cert, c.state.time_ms) == "valid"
    assert cert.degraded_height == c.state.height
    assert e1.address not in cert.endorsers
    assert len(cert.endorsers) == 2
    assert c.state.log.size == log_size + 1
    entry = c.state.log_entry(log_size)
    assert entry is not None and (entry.kind, entry.cert_id) == ("degraded", cid)
    # A degraded certificate is DV now: endorser quorums no longer apply.
    body = EndorserRevoke(cid, 1)
    assert_only_fee_charged(c, c.keys.endorsers[0], body, Code.NOT_ENDORSABLE)


def test_withdraw_above_k_keeps_the_type() -> None:
    c = make_chain()
    cid = issue(c, "OV", endorsers=[0, 1, 2])
    assert len(get_cert(c, cid).endorsers) == 3
    log_size = c.state.log.size
    r = ok(send(c, c.keys.endorsers[0], EndorseWithdraw(cid)))
    assert kinds(r.events) == ["endorsement_withdrawn"]
    cert = get_cert(c, cid)
    assert cert.cert_type == "OV" and cert.org == ORG_OV
    assert cert.endorsers == sorted(e.address for e in c.keys.endorsers[1:])
    assert c.state.log.size == log_size


def test_withdraw_rejections() -> None:
    c = make_chain()
    cid = issue(c, "OV")  # endorsed by 0 and 1
    e2 = c.keys.endorsers[2]
    assert_only_fee_charged(c, e2, EndorseWithdraw(cid), Code.NOT_ENDORSED_BY_SENDER)
    acct = c.keys.accounts[0]
    assert_only_fee_charged(c, acct, EndorseWithdraw(cid), Code.NOT_ENDORSER)
    e0 = c.keys.endorsers[0]
    assert_only_fee_charged(c, e0, EndorseWithdraw(UNKNOWN_ID), Code.UNKNOWN_CERT)
    ok(send(c, e0, EndorseWithdraw(cid)))
    assert_only_fee_charged(c, e0, EndorseWithdraw(cid), Code.NOT_ENDORSED_BY_SENDER)
    ok(send(c, acct, Revoke(cid, 0)))
    assert_only_fee_charged(c, c.keys.endorsers[1], EndorseWithdraw(cid), Code.CERT_REVOKED)


def _endorsed_fleet(c: DevChain) -> dict[str, bytes]:
    return {
        "ov01": issue(c, "OV", ["ov01.example.com"], endorsers=[0, 1]),
        "ov012": issue(c, "OV", ["ov012.example.com"], endorsers=[0, 1, 2]),
        "ev012": issue(c, "EV", ["ev012.example.com"], endorsers=[0, 1, 2]),
        "ov12": issue(c, "OV", ["ov12.example.com"], endorsers=[1, 2]),
    }


def test_corrupt_endorser_removal_degrades_what_it_endorsed() -> None:
    c = make_chain()
    fleet = _endorsed_fleet(c)
    e0 = c.keys.endorsers[0].address
    log_size = c.state.log.size
    pass_gov(c, RemoveEndorser(e0, corrupt=True))
    rec = c.state.endorsers.get(e0)
    assert rec is not None and not rec.active and rec.corrupt
    assert rec.removed_height == c.state.height
    certs = {name: get_cert(c, cid) for name, cid in fleet.items()}
    assert certs["ov01"].cert_type == "DV" and certs["ov01"].org is None
    assert certs["ev012"].cert_type == "DV" and certs["ev012"].issued_type == "EV"
    assert certs["ov012"].cert_type == "OV" and certs["ov012"].org == ORG_OV
    assert certs["ov12"].cert_type == "OV"
    for name in ("ov01", "ov012", "ev012"):
        assert e0 not in certs[name].endorsers
        assert certs[name].status == "valid"
    assert len(certs["ov12"].endorsers) == 2
    degraded = [c.state.log_entry(i) for i in range(log_size, c.state.log.size)]
    assert [(e.kind, e.cert_id) for e in degraded if e is not None] == sorted(
        [("degraded", fleet["ov01"]), ("degraded", fleet["ev012"])], key=lambda x: x[1]
    )
    # The removed endorser may no longer endorse or vote.
    app_id = apply_cert(c, "OV", ["new.example.com"])
    key0 = c.keys.endorsers[0]
    assert_only_fee_charged(c, key0, Endorse(app_id, True), Code.NOT_ENDORSER)
    body = EndorserRevoke(fleet["ov012"], 1)
    assert_only_fee_charged(c, key0, body, Code.NOT_ENDORSER)


def test_corrupt_removal_in_the_block_that_issued_the_cert() -> None:
    c = make_chain()
    app_id = apply_cert(c, "OV")
    endorse(c, app_id, [0, 1])
    attest(c, app_id, [0, 1])
    e0 = c.keys.endorsers[0].address
    c.tx(c.keys.validators[2], DvAttest([attest_item(app_id)]))  # issues the cert
    pid = propose(c, RemoveEndorser(e0, corrupt=True))
    vote(c, pid, [1, 2])
    all_ok(c.block())
    assert get_prop(c, pid).status == "passed"
    cert = get_cert(c, cert_id_for(app_id))
    assert cert.cert_type == "DV"
    assert cert.endorsers == [c.keys.endorsers[1].address]
    kinds_logged = [c.state.log_entry(i) for i in range(c.state.log.size)]
    assert [e.kind for e in kinds_logged if e is not None] == ["issued", "degraded"]


def test_retiring_an_endorser_does_not_degrade() -> None:
    c = make_chain()
    fleet = _endorsed_fleet(c)
    e0 = c.keys.endorsers[0].address
    before = {name: get_cert(c, cid) for name, cid in fleet.items()}
    log_size = c.state.log.size
    pass_gov(c, RemoveEndorser(e0, corrupt=False))
    rec = c.state.endorsers.get(e0)
    assert rec is not None and not rec.active and not rec.corrupt
    assert {name: get_cert(c, cid) for name, cid in fleet.items()} == before
    assert c.state.log.size == log_size


# ====================================================================== renewal


def test_renewal_supersedes_and_old_cert_stays_valid() -> None:
    c = make_chain()
    old_id = issue(c, validity_days=10)
    owner = c.keys.accounts[0]
    raw = c.tx(owner, CertRenew(old_id, 20, 1_000))
    (r,) = c.block()
    ok(r)
    app_id = sha256(APP_TAG + sha256(raw))
    app = get_app(c, app_id)
    assert app.renews == old_id
    assert (app.cert_type, app.domains, app.spki, app.validity_days) == (
        "DV",
        ["example.com"],
        SPKI,
        20,
    )
    log_size = c.state.log.size
    attest(c, app_id, [0, 1, 2])
    new_id = get_app(c, app_id).cert_id
    new = get_cert(c, new_id)
    old = get_cert(c, old_id)
    assert new.renews == old_id
    assert old.superseded_by == new_id
    assert old.status == "valid"
    assert cert_status(old, c.state.time_ms) == "valid"
    assert c.state.log.size == log_size + 1
    assert [cert.cert_id for cert in c.state.certs_by_domain("example.com")] == [old_id, new_id]


def test_renewal_with_key_rotation_revokes_the_old_cert() -> None:
    c = make_chain()
    old_id = issue(c)
    owner = c.keys.accounts[0]
    raw = c.tx(owner, CertRenew(old_id, 30, 1_000, new_spki=SPKI_P256))
    ok(c.block()[0])
    app_id = sha256(APP_TAG + sha256(raw))
    assert get_app(c, app_id).spki == SPKI_P256
    log_size = c.state.log.size
    attest(c, app_id, [0, 1, 2])
    new_id = get_app(c, app_id).cert_id
    assert get_cert(c, new_id).spki == SPKI_P256
    old = get_cert(c, old_id)
    assert old.status == "revoked"
    assert old.revocation_reason == 4
    assert old.superseded_by == new_id
    kinds_logged = [c.state.log_entry(i) for i in range(log_size, c.state.log.size)]
    assert [(e.kind, e.cert_id) for e in kinds_logged if e is not None] == [
        ("issued", new_id),
        ("revoked", old_id),
    ]


def test_renewal_of_ov_keeps_org_and_needs_endorsements() -> None:
    c = make_chain()
    old_id = issue(c, "OV")
    raw = c.tx(c.keys.accounts[0], CertRenew(old_id, 30, 5_000))
    ok(c.block()[0])
    app_id = sha256(APP_TAG + sha256(raw))
    assert (get_app(c, app_id).cert_type, get_app(c, app_id).org) == ("OV", ORG_OV)
    attest(c, app_id, [0, 1, 2])
    assert get_app(c, app_id).status == "pending"
    endorse(c, app_id, [0, 1])
    assert get_cert(c, get_app(c, app_id).cert_id).cert_type == "OV"


def test_renewal_rejections() -> None:
    c = make_chain()
    cid = issue(c)
    owner, other = c.keys.accounts[0], c.keys.accounts[1]
    assert_only_fee_charged(c, other, CertRenew(cid, 30, 1_000), Code.NOT_AUTHORIZED)
    assert_only_fee_charged(c, owner, CertRenew(UNKNOWN_ID, 30, 1_000), Code.UNKNOWN_CERT)
    assert_only_fee_charged(c, owner, CertRenew(cid, 30, 999), Code.INSUFFICIENT_ESCROW)
    assert_only_fee_charged(c, owner, CertRenew(cid, 91, 1_000), Code.INVALID_VALIDITY)
    body = CertRenew(cid, 30, 1_000, new_spki=b"not a key")
    assert_only_fee_charged(c, owner, body, Code.INVALID_KEY)
    ok(send(c, owner, Revoke(cid, 5)))
    assert_only_fee_charged(c, owner, CertRenew(cid, 30, 1_000), Code.CERT_REVOKED)


# ====================================================================== governance


def test_gov_propose_and_vote_by_non_validator() -> None:
    c = make_chain()
    new_endorser = SigningKey.from_label("new-endorser")
    body = GovPropose(AddEndorser(new_endorser.public_key, "new"))
    for key in (c.keys.accounts[0], c.keys.endorsers[0]):
        assert_only_fee_charged(c, key, body, Code.NOT_VALIDATOR)
    pid = propose(c, AddEndorser(new_endorser.public_key, "new"))
    ok(c.block()[0])
    assert_only_fee_charged(c, c.keys.accounts[0], GovVote(pid, True), Code.NOT_VALIDATOR)


def test_gov_passes_only_above_two_thirds_of_power() -> None:
    c = make_chain()
    newbie = SigningKey.from_label("new-endorser")
    pid = propose(c, AddEndorser(newbie.public_key, "newbie"))
    (r,) = c.block()
    assert ok(r).events == [Event("gov_proposed", pid, "add_endorser")]
    prop = get_prop(c, pid)
    assert (prop.status, prop.yes, prop.no) == ("open", [c.keys.validators[0].address], [])
    assert prop.expires_ms == c.state.time_ms + DEFAULT.gov_ttl_ms
    vote(c, pid, [1])
    all_ok(c.block())
    assert get_prop(c, pid).status == "open"  # 20 of 40
    assert c.state.endorsers.get(newbie.address) is None
    vote(c, pid, [2])
    (r,) = c.block()
    assert kinds(ok(r).events) == ["endorser_added", "gov_passed"]
    prop = get_prop(c, pid)
    assert prop.status == "passed" and prop.result == ""
    assert prop.yes == sorted(c.keys.validators[i].address for i in range(3))
    rec = c.state.endorsers.get(newbie.address)
    assert rec is not None and rec.active and rec.name == "newbie"
    assert rec.since_height == c.state.height
    assert_only_fee_charged(c, c.keys.validators[3], GovVote(pid, True), Code.PROPOSAL_CLOSED)


def test_gov_with_unequal_power() -> None:
    c = make_chain(powers=[70, 10, 10, 10])
    newbie = SigningKey.from_label("new-endorser")
    pid = propose(c, AddEndorser(newbie.public_key, "newbie"), proposer=0)
    all_ok(c.block())
    assert get_prop(c, pid).status == "passed"  # 70 of 100 alone
    pid2 = propose(c, RemoveEndorser(newbie.address, False), proposer=1)
    vote(c, pid2, [2, 3])
    all_ok(c.block())
    assert get_prop(c, pid2).status == "open"  # 30 of 100


def test_no_votes_reject_a_proposal() -> None:
    c = make_chain()
    newbie = SigningKey.from_label("new-endorser")
    pid = propose(c, AddEndorser(newbie.public_key, "newbie"))
    vote(c, pid, [1], approve=False)
    all_ok(c.block())
    prop = get_prop(c, pid)
    assert prop.status == "open" and prop.no == [c.keys.validators[1].address]
    vote(c, pid, [2], approve=False)
    (r,) = c.block()
    assert ok(r).events == [Event("gov_rejected", pid, "")]
    assert get_prop(c, pid).status == "rejected"
    assert c.state.endorsers.get(newbie.address) is None
    assert_only_fee_charged(c, c.keys.validators[3], GovVote(pid, True), Code.PROPOSAL_CLOSED)


def test_gov_thresholds_are_strict_at_exactly_two_thirds() -> None:
    c = make_chain(n_validators=3)
    newbie = SigningKey.from_label("new-endorser")
    pid = propose(c, AddEndorser(newbie.public_key, "newbie"))
    vote(c, pid, [1])
    all_ok(c.block())
    assert get_prop(c, pid).status == "open"  # exactly 2/3 yes is not enough
    vote(c, pid, [2])
    all_ok(c.block())
    assert get_prop(c, pid).status == "passed"
    # Exactly 1/3 no leaves at most 2/3 yes: the proposal can never pass.
    pid = propose(c, RemoveEndorser(newbie.address, False))
    vote(c, pid, [1], approve=False)
    all_ok(c.block())
    assert get_prop(c, pid).status == "rejected"


def test_gov_vote_rejections() -> None:
    c = make_chain()
    newbie = SigningKey.from_label("new-endorser")
    pid = propose(c, AddEndorser(newbie.public_key, "newbie"))
    vote(c, pid, [1])
    all_ok(c.block())
    v0, v1 = c.keys.validators[0], c.keys.validators[1]
    assert_only_fee_charged(c, v0, GovVote(pid, True), Code.DUPLICATE_VOTE)  # the proposer
    assert_only_fee_charged(c, v1, GovVote(pid, False), Code.DUPLICATE_VOTE)
    assert_only_fee_charged(c, v1, GovVote(UNKNOWN_ID, True), Code.UNKNOWN_PROPOSAL)
    prop = get_prop(c, pid)
    assert len(prop.yes) == 2 and prop.no == []


def test_invalid_gov_actions() -> None:
    c = make_chain()
    v0 = c.keys.validators[0]
    existing = c.keys.endorsers[0]
    unknown = SigningKey.from_label("nobody").address
    for action in (
        AddEndorser(existing.public_key, "again"),
        RemoveEndorser(unknown, corrupt=False),
        RemoveEndorser(c.keys.validators[1].address, corrupt=True),
    ):
        assert_only_fee_charged(c, v0, GovPropose(action), Code.INVALID_GOV_ACTION)
    single = make_chain(n_validators=1)
    only = single.keys.validators[0]
    body = GovPropose(SetValidator(only.public_key, 0))
    assert_only_fee_charged(single, only, body, Code.INVALID_GOV_ACTION)
    assert single.state.validators.power_of(only.address) == 10


def test_a_passed_action_that_can_no_longer_run_fails() -> None:
    c = make_chain()
    newbie = SigningKey.from_label("new-endorser")
    first = propose(c, AddEndorser(newbie.public_key, "first"))
    second = propose(c, AddEndorser(newbie.public_key, "second"), proposer=1)
    vote(c, first, [1, 2])
    vote(c, second, [0, 2])
    all_ok(c.block())
    assert get_prop(c, first).status == "passed"
    prop = get_prop(c, second)
    assert prop.status == "failed"
    assert prop.result == "endorser is already registered"
    rec = c.state.endorsers.get(newbie.address)
    assert rec is not None and rec.name == "first"


def test_added_endorser_can_endorse() -> None:
    c = make_chain()
    newbie = SigningKey.from_label("new-endorser")
    ok(send(c, c.keys.accounts[0], Transfer(newbie.address, 1_000)))
    app_id = apply_cert(c, "OV")
    assert_only_fee_charged(c, newbie, Endorse(app_id, True), Code.NOT_ENDORSER)
    pass_gov(c, AddEndorser(newbie.public_key, "newbie"))
    c.tx(newbie, Endorse(app_id, True))
    c.tx(c.keys.endorsers[0], Endorse(app_id, True))
    all_ok(c.block())
    attest(c, app_id, [0, 1, 2])
    cert = get_cert(c, cert_id_for(app_id))
    assert newbie.address in cert.endorsers


def test_re_adding_a_removed_endorser_is_allowed() -> None:
    c = make_chain()
    e0 = c.keys.endorsers[0]
    pass_gov(c, RemoveEndorser(e0.address, corrupt=False))
    pass_gov(c, AddEndorser(e0.public_key, "back"))
    rec = c.state.endorsers.get(e0.address)
    assert rec is not None and rec.active and rec.name == "back"
    assert len(c.state.endorsers.endorsers) == 3


def test_set_validator_takes_effect_at_h_plus_2() -> None:
    c = make_chain()
    newval = SigningKey.from_label("validator-new")
    ok(send(c, c.keys.accounts[0], Transfer(newval.address, 1_000)))
    before = c.state.validators
    pass_gov(c, SetValidator(newval.public_key, 25))
    h = c.state.height
    assert c.state.validators == before
    (change,) = c.state.pending_validator_changes.changes
    assert (change.effective_height, change.pubkey, change.power) == (h + 2, newval.public_key, 25)
    # H+1: not yet a validator.
    c.tx(newval, DvAttest([attest_item(UNKNOWN_ID)]))
    expect(c.block()[0], Code.NOT_VALIDATOR)
    assert c.state.height == h + 1
    assert c.state.validators == before
    # H+2: in force before the first tx of the block.
    c.tx(newval, DvAttest([attest_item(UNKNOWN_ID)]))
    (r,) = c.block()
    ok(r)
    assert c.state.height == h + 2
    assert c.state.validators.power_of(newval.address) == 25
    assert c.state.validators.total_power() == 65
    assert c.state.pending_validator_changes.changes == []
    ledger_events = [e for e in c.state.last_events if not e.kind.startswith("tss_")]
    assert ledger_events == [Event("validator_update", newval.address, "25")]
    addrs = [v.address for v in c.state.validators.validators]
    assert addrs == sorted(addrs)


def test_set_validator_power_zero_removes_and_thresholds_follow() -> None:
    c = make_chain(ZERO_FEE)
    v3 = c.keys.validators[3]
    pass_gov(c, SetValidator(v3.public_key, 0))
    c.block()
    assert c.state.validators.power_of(v3.address) == 10
    c.block()
    assert c.state.validators.power_of(v3.address) == 0
    assert len(c.state.validators.validators) == 3
    assert_only_fee_charged(c, v3, DvAttest([attest_item(UNKNOWN_ID)]), Code.NOT_VALIDATOR)
    # With 30 total power, 2 of 3 is not > 2/3; 3 of 3 is.
    app_id = apply_cert(c)
    attest(c, app_id, [0, 1])
    assert get_app(c, app_id).status == "pending"
    attest(c, app_id, [2])
    assert get_app(c, app_id).status == "issued"


def test_validator_set_cannot_be_emptied_by_queued_changes() -> None:
    c = make_chain(n_validators=2)
    v0, v1 = c.keys.validators
    pid = propose(c, SetValidator(v0.public_key, 0))
    vote(c, pid, [1])
    all_ok(c.block())
    assert get_prop(c, pid).status == "passed"
    # v0's removal is already scheduled: removing v1 too would leave nobody.
    body = GovPropose(SetValidator(v1.public_key, 0))
    assert_only_fee_charged(c, v1, body, Code.INVALID_GOV_ACTION)
    c.block()
    assert [v.address for v in c.state.validators.validators] == [v1.address]


def test_competing_removals_cannot_empty_the_validator_set() -> None:
    c = make_chain(n_validators=2)
    v0, v1 = c.keys.validators
    first = propose(c, SetValidator(v0.public_key, 0), proposer=0)
    second = propose(c, SetValidator(v1.public_key, 0), proposer=1)
    vote(c, first, [1])
    vote(c, second, [0])
    all_ok(c.block())
    assert get_prop(c, first).status == "passed"
    prop = get_prop(c, second)
    assert prop.status == "failed"
    assert "empty" in prop.result
    c.block()
    c.block()
    assert [v.address for v in c.state.validators.validators] == [v1.address]


def test_proposals_expire_after_gov_ttl() -> None:
    c = make_chain()
    newbie = SigningKey.from_label("new-endorser")
    pid = propose(c, AddEndorser(newbie.public_key, "newbie"))
    all_ok(c.block())
    created = c.state.time_ms
    c.block(advance_ms=DEFAULT.gov_ttl_ms - 1)
    assert get_prop(c, pid).status == "open"
    c.block(advance_ms=1)
    assert c.state.time_ms == created + DEFAULT.gov_ttl_ms
    assert get_prop(c, pid).status == "expired"
    assert c.state.last_events == [Event("gov_expired", pid, "")]
    vote(c, pid, [1, 2])
    r1, r2 = c.block()
    expect(r1, Code.PROPOSAL_CLOSED)
    expect(r2, Code.PROPOSAL_CLOSED)
    assert c.state.endorsers.get(newbie.address) is None


# ====================================================================== proofs


def _check_proof(c: DevChain, key: bytes, present: bool) -> bytes | None:
    value, proof = c.state.prove(key)
    root = c.state.app_hash
    if present:
        assert value is not None
        assert verify_proof(root, sha256(key), sha256(value), proof)
        assert not verify_proof(root, sha256(key), sha256(value + b"x"), proof)
        assert not verify_proof(root, sha256(key), None, proof)
    else:
        assert value is None
        assert verify_proof(root, sha256(key), None, proof)
        assert not verify_proof(root, sha256(key), sha256(b"anything"), proof)
    return value


def test_state_proofs_for_present_and_absent_keys() -> None:
    c = make_chain()
    cid = issue(c)
    app_id = get_cert(c, cid).app_id
    a0 = c.keys.accounts[0].address
    value = _check_proof(c, key_account(a0), True)
    assert value is not None and codec.decode(value, Account) == account(c, a0)
    value = _check_proof(c, key_cert(cid), True)
    assert value is not None and codec.decode(value, Certificate) == get_cert(c, cid)
    value = _check_proof(c, key_domain("example.com"), True)
    assert value is not None and codec.decode(value, DomainIndex) == DomainIndex([cid])
    value = _check_proof(c, key_app(app_id), True)
    assert value is not None and codec.decode(value, Application) == get_app(c, app_id)
    _check_proof(c, key_cert(UNKNOWN_ID), False)
    _check_proof(c, key_app(UNKNOWN_ID), False)
    _check_proof(c, key_domain("nothing.example.com"), False)
    _check_proof(c, key_account(SigningKey.from_label("nobody").address), False)
    _check_proof(c, key_gov(UNKNOWN_ID), False)
    # An old proof does not verify against a later root once the record changed.
    value, proof = c.state.prove(key_cert(cid))
    assert value is not None
    ok(send(c, c.keys.accounts[0], Revoke(cid, 1)))
    assert not verify_proof(c.state.app_hash, sha256(key_cert(cid)), sha256(value), proof)
    _check_proof(c, key_cert(cid), True)


# ====================================================================== every code


@dataclasses.dataclass
class Final:
    """The last step of a scenario: a body to send, or raw bytes for a pre-check."""

    c: Chain
    key: SigningKey | None = None
    body: TxBody | None = None
    raw: bytes | None = None


SCENARIOS: dict[Code, Callable[[], Final]] = {}


def scenario(code: Code) -> Callable[[Callable[[], Final]], Callable[[], Final]]:
    def register(fn: Callable[[], Final]) -> Callable[[], Final]:
        assert code not in SCENARIOS
        SCENARIOS[code] = fn
        return fn

    return register


@scenario(Code.OK)
def _sc_ok() -> Final:
    c = make_chain()
    return Final(c, c.keys.accounts[0], Transfer(c.keys.accounts[1].address, 1))


@scenario(Code.MALFORMED)
def _sc_malformed() -> Final:
    return Final(make_chain(), raw=b"\x93\x01\x02")


@scenario(Code.TX_TOO_LARGE)
def _sc_too_large() -> Final:
    c = make_chain()
    return Final(c, raw=_sized_tx(c, c.keys.accounts[0], MAX_TX_BYTES + 1))


@scenario(Code.WRONG_CHAIN_ID)
def _sc_wrong_chain() -> Final:
    c = make_chain()
    body = Transfer(c.keys.accounts[1].address, 1)
    return Final(c, raw=signed_raw(c, c.keys.accounts[0], body, chain_id="dpkid-testnet"))


@scenario(Code.BAD_SIGNATURE)
def _sc_bad_sig() -> Final:
    c = make_chain()
    good = signed_raw(c, c.keys.accounts[0], Transfer(c.keys.accounts[1].address, 1))
    return Final(c, raw=good[:-64] + bytes([good[-64] ^ 0x80]) + good[-63:])


@scenario(Code.BAD_NONCE)
def _sc_bad_nonce() -> Final:
    c = make_chain()
    raw = c.tx(c.keys.accounts[0], Transfer(c.keys.accounts[1].address, 1))
    ok(c.block()[0])
    return Final(c, raw=raw)


@scenario(Code.FEE_TOO_LOW)
def _sc_fee_low() -> Final:
    c = make_chain()
    body = Transfer(c.keys.accounts[1].address, 1)
    return Final(c, raw=signed_raw(c, c.keys.accounts[0], body, fee=0))


@scenario(Code.CANNOT_PAY_FEE)
def _sc_cannot_pay() -> Final:
    c = make_chain()
    body = Transfer(c.keys.accounts[1].address, 1)
    return Final(c, raw=signed_raw(c, SigningKey.from_label("broke"), body))


@scenario(Code.INSUFFICIENT_FUNDS)
def _sc_insufficient_funds() -> Final:
    c = make_chain()
    return Final(c, c.keys.accounts[0], Transfer(c.keys.accounts[1].address, BALANCE))


@scenario(Code.INVALID_AMOUNT)
def _sc_invalid_amount() -> Final:
    c = make_chain()
    return Final(c, c.keys.accounts[0], Transfer(c.keys.accounts[1].address, 0))


@scenario(Code.INVALID_DOMAIN)
def _sc_invalid_domain() -> Final:
    c = make_chain()
    return Final(c, c.keys.accounts[0], apply_body(c, "DV", ["Example.com"]))


@scenario(Code.TOO_MANY_DOMAINS)
def _sc_too_many_domains() -> Final:
    c = make_chain(Policy(max_domains=1))
    return Final(c, c.keys.accounts[0], apply_body(c, "DV", ["a.example", "b.example"]))


@scenario(Code.INVALID_KEY)
def _sc_invalid_key() -> Final:
    c = make_chain()
    return Final(c, c.keys.accounts[0], apply_body(c, "DV", spki=b"\x30\x00"))


@scenario(Code.INVALID_VALIDITY)
def _sc_invalid_validity() -> Final:
    c = make_chain()
    return Final(c, c.keys.accounts[0], apply_body(c, "DV", validity_days=365))


@scenario(Code.INVALID_ORG)
def _sc_invalid_org() -> Final:
    c = make_chain()
    body = msgspec.structs.replace(apply_body(c, "DV"), org=ORG_OV)
    return Final(c, c.keys.accounts[0], body)


@scenario(Code.INSUFFICIENT_ESCROW)
def _sc_insufficient_escrow() -> Final:
    c = make_chain()
    return Final(c, c.keys.accounts[0], apply_body(c, "DV", escrow=0))


@scenario(Code.DOMAIN_CERT_LIMIT)
def _sc_domain_cert_limit() -> Final:
    c = make_chain(Policy(max_certs_per_domain=1))
    issue(c)
    return Final(c, c.keys.accounts[1], apply_body(c, "DV"))


@scenario(Code.UNKNOWN_APPLICATION)
def _sc_unknown_application() -> Final:
    c = make_chain()
    return Final(c, c.keys.endorsers[0], Endorse(UNKNOWN_ID, True))


@scenario(Code.APPLICATION_CLOSED)
def _sc_application_closed() -> Final:
    c = make_chain()
    cid = issue(c, "OV")
    return Final(c, c.keys.endorsers[2], Endorse(get_cert(c, cid).app_id, True))


@scenario(Code.NOT_VALIDATOR)
def _sc_not_validator() -> Final:
    c = make_chain()
    app_id = apply_cert(c)
    return Final(c, c.keys.accounts[1], DvAttest([attest_item(app_id)]))


@scenario(Code.NOT_ENDORSER)
def _sc_not_endorser() -> Final:
    c = make_chain()
    app_id = apply_cert(c, "OV")
    return Final(c, c.keys.validators[0], Endorse(app_id, True))


@scenario(Code.DUPLICATE_ENDORSEMENT)
def _sc_duplicate_endorsement() -> Final:
    c = make_chain()
    app_id = apply_cert(c, "EV")
    endorse(c, app_id, [0])
    return Final(c, c.keys.endorsers[0], Endorse(app_id, True))


@scenario(Code.NOT_ENDORSABLE)
def _sc_not_endorsable() -> Final:
    c = make_chain()
    app_id = apply_cert(c, "DV")
    return Final(c, c.keys.endorsers[0], Endorse(app_id, True))


@scenario(Code.UNKNOWN_CERT)
def _sc_unknown_cert() -> Final:
    c = make_chain()
    return Final(c, c.keys.accounts[0], Revoke(UNKNOWN_ID, 0))


@scenario(Code.CERT_REVOKED)
def _sc_cert_revoked() -> Final:
    c = make_chain()
    cid = issue(c)
    ok(send(c, c.keys.accounts[0], Revoke(cid, 0)))
    return Final(c, c.keys.accounts[0], Revoke(cid, 1))


@scenario(Code.NOT_AUTHORIZED)
def _sc_not_authorized() -> Final:
    c = make_chain()
    cid = issue(c)
    return Final(c, c.keys.accounts[1], Revoke(cid, 1))


@scenario(Code.INVALID_REASON)
def _sc_invalid_reason() -> Final:
    c = make_chain()
    cid = issue(c)
    return Final(c, c.keys.accounts[0], Revoke(cid, 8))


@scenario(Code.NOT_ENDORSED_BY_SENDER)
def _sc_not_endorsed_by_sender() -> Final:
    c = make_chain()
    cid = issue(c, "OV", endorsers=[0, 1])
    return Final(c, c.keys.endorsers[2], EndorseWithdraw(cid))


@scenario(Code.DUPLICATE_REVOKE_VOTE)
def _sc_duplicate_revoke_vote() -> Final:
    c = make_chain()
    cid = issue(c, "EV")
    ok(send(c, c.keys.endorsers[0], EndorserRevoke(cid, 1)))
    return Final(c, c.keys.endorsers[0], EndorserRevoke(cid, 1))


@scenario(Code.UNKNOWN_PROPOSAL)
def _sc_unknown_proposal() -> Final:
    c = make_chain()
    return Final(c, c.keys.validators[0], GovVote(UNKNOWN_ID, True))


@scenario(Code.PROPOSAL_CLOSED)
def _sc_proposal_closed() -> Final:
    c = make_chain()
    pid = pass_gov(c, AddEndorser(SigningKey.from_label("e-new").public_key, "new"))
    return Final(c, c.keys.validators[3], GovVote(pid, True))


@scenario(Code.DUPLICATE_VOTE)
def _sc_duplicate_vote() -> Final:
    c = make_chain()
    pid = propose(c, AddEndorser(SigningKey.from_label("e-new").public_key, "new"))
    all_ok(c.block())
    return Final(c, c.keys.validators[0], GovVote(pid, True))


@scenario(Code.INVALID_GOV_ACTION)
def _sc_invalid_gov_action() -> Final:
    c = make_chain()
    action = AddEndorser(c.keys.endorsers[1].public_key, "dup")
    return Final(c, c.keys.validators[0], GovPropose(action))


def _tss_chain(until: str) -> tuple[Chain, dict[bytes, Any]]:
    from tests.tss_util import agents_for, key_of, run_until

    c = make_chain()
    agents = agents_for(c)
    if until == "ack":
        run_until(c, agents, lambda c: c.state.get(tss_rules.K_TSS_ROUND).phase == "ack")
    elif until == "key":
        run_until(c, agents, lambda c: key_of(c) is not None)
    return c, agents


@scenario(Code.TSS_WRONG_PHASE)
def _sc_tss_wrong_phase() -> Final:
    c, _ = _tss_chain("deal")
    return Final(c, c.keys.validators[0], TssAck(1, []))


@scenario(Code.TSS_DUPLICATE)
def _sc_tss_duplicate() -> Final:
    c, agents = _tss_chain("deal")
    v = c.keys.validators[0]
    (deal,) = agents[v.address].on_commit(c.state).bodies
    ok(send(c, v, deal))
    return Final(c, v, deal)


@scenario(Code.TSS_BAD_DEAL)
def _sc_tss_bad_deal() -> Final:
    c, agents = _tss_chain("deal")
    v = c.keys.validators[0]
    (deal,) = agents[v.address].on_commit(c.state).bodies
    return Final(c, v, msgspec.structs.replace(deal, boxes=deal.boxes[:-1]))


@scenario(Code.TSS_BAD_COMPLAINT)
def _sc_tss_bad_complaint() -> Final:
    c, _ = _tss_chain("ack")
    v = c.keys.validators[0]
    return Final(c, v, TssJustify(1, c.keys.validators[1].address, [bytes(32)]))


@scenario(Code.TSS_BAD_NONCES)
def _sc_tss_bad_nonces() -> Final:
    c, _ = _tss_chain("key")
    v = c.keys.validators[0]
    return Final(c, v, TssNonces(1, 999, [bytes(64)]))


@scenario(Code.INVALID_AUTHZ)
def _sc_invalid_authz() -> Final:
    c = make_chain()
    body = CertApply("DV", ["a.example"], SPKI, 30, fee_of(c, "DV"), None, [bytes(32)])
    return Final(c, c.keys.accounts[0], body)


def _granted() -> tuple[Chain, bytes, SigningKey]:
    from dpkid.core.types import GrantCreate

    c = make_chain()
    delegate = SigningKey.from_label("scenario-delegate")
    r = ok(send(c, c.keys.accounts[0], GrantCreate(delegate.public_key, 1_000, 1)))
    return c, only_event(r.events, "grant_created").ref, delegate


@scenario(Code.BAD_GRANT)
def _sc_bad_grant() -> Final:
    c, gid, _ = _granted()
    # Signed by the owner, not by the grant's delegate.
    return Final(c, raw=signed_raw(c, c.keys.accounts[0], Delegated(gid, Revoke(bytes(32), 1))))


@scenario(Code.INVALID_GRANT)
def _sc_invalid_grant() -> Final:
    from dpkid.core.types import GrantCreate

    c = make_chain()
    key = c.keys.accounts[0]
    return Final(c, key, GrantCreate(key.public_key, 1_000, 1))


@scenario(Code.GRANT_LIMIT)
def _sc_grant_limit() -> Final:
    c, gid, delegate = _granted()
    body = CertApply("DV", ["a.example"], SPKI, 30, 5_000, None)
    return Final(c, delegate, Delegated(gid, body))


def test_every_code_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(Code)


@pytest.mark.parametrize("code", list(Code), ids=[c.name for c in Code])
def test_code_is_produced_through_apply_block(code: Code) -> None:
    final = SCENARIOS[code]()
    c = final.c
    if code in PRECHECK_CODES:
        assert final.raw is not None
        assert_precheck_rejected(c, final.raw, code)
        return
    assert final.key is not None and final.body is not None and final.raw is None
    if code == Code.OK:
        ok(send(c, final.key, final.body))
    else:
        assert_only_fee_charged(c, final.key, final.body, code)

"""Delegation grants (SPEC §7.10): a delegate key acts for an account, which
applies, owns and pays; the grant bounds what it may spend, and the owner can
end it at any time."""

from __future__ import annotations

from dpkid.core import codec
from dpkid.core.challenges import acme_token_for
from dpkid.core.crypto import SignatureCache, SigningKey, sha256
from dpkid.core.node.mempool import Mempool
from dpkid.core.state.authz import key_authz
from dpkid.core.state.codes import Code
from dpkid.core.state.grants import GRANT_TAG, key_grant
from dpkid.core.state.machine import cert_id_for
from dpkid.core.types import (
    AuthzAttest,
    AuthzCheck,
    AuthzRequest,
    CertApply,
    CertRenew,
    Delegated,
    Grant,
    GrantCreate,
    GrantRevoke,
    Revoke,
    sign_tx,
)
from tests.test_machine import SPKI, expect, fee_of, make_chain, ok, only_event

THUMB = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
SALT = bytes(range(16))
DELEGATE = SigningKey.from_label("acme-server")


def grant(c, owner, limit: int = 10_000, days: int = 30) -> bytes:  # type: ignore[no-untyped-def]
    raw = c.tx(owner, GrantCreate(DELEGATE.public_key, limit, days, b"sealed"))
    (r,) = c.block()
    gid = only_event(ok(r).events, "grant_created").ref
    assert gid == sha256(GRANT_TAG + sha256(raw))
    return gid


def get_grant(c, gid: bytes) -> Grant:  # type: ignore[no-untyped-def]
    g: Grant = c.state.get(key_grant(gid))
    return g


def valid_authz(c, owner, gid: bytes, name: str) -> bytes:  # type: ignore[no-untyped-def]
    # The token is bound to the owner's key: the owner is the requester.
    tok = acme_token_for(owner.public_key, SALT)
    c.tx(DELEGATE, Delegated(gid, AuthzRequest(name, "acme", "http-01", tok, THUMB)))
    (r,) = c.block()
    aid = only_event(ok(r).events, "authz_created").ref
    for v in c.keys.validators:
        c.tx(v, AuthzAttest([AuthzCheck(aid, True)]))
    for r in c.block():
        ok(r)
    a = c.state.get(key_authz(aid))
    assert a.status == "valid" and a.account == owner.address
    return aid


def test_a_delegate_applies_for_the_owner_who_owns_and_pays() -> None:
    c = make_chain()
    owner = c.keys.accounts[0]
    gid = grant(c, owner)
    before = c.state.balance(owner.address)
    aid = valid_authz(c, owner, gid, "shop.example")
    fee = fee_of(c, "DV")
    c.tx(DELEGATE, Delegated(gid, CertApply("DV", ["shop.example"], SPKI, 30, fee, None, [aid])))
    (r,) = c.block()
    app_id = only_event(ok(r).events, "app_created").ref
    cert = c.state.certificate(cert_id_for(app_id))
    assert cert is not None and cert.owner == owner.address
    # Two delegated txs' fees and the escrow came from the owner, none from the delegate.
    tx_fee = c.state.policy.min_tx_fee
    assert c.state.balance(owner.address) == before - 2 * tx_fee - fee
    assert c.state.balance(DELEGATE.address) == 0
    d_acct = c.state.account(DELEGATE.address)
    assert d_acct is not None and d_acct.nonce == 2
    assert get_grant(c, gid).spent == 2 * tx_fee + fee
    # Renewal and revocation through the same grant act on the owner's certificate.
    c.tx(DELEGATE, Delegated(gid, CertRenew(cert.cert_id, 30, fee, b"", [aid])))
    (r,) = c.block()
    assert "cert_issued" in [e.kind for e in ok(r).events]
    c.tx(DELEGATE, Delegated(gid, Revoke(cert.cert_id, 1)))
    (r,) = c.block()
    ok(r)
    revoked = c.state.certificate(cert.cert_id)
    assert revoked is not None and revoked.status == "revoked"


def test_the_spend_limit_bounds_fees_and_escrow() -> None:
    c = make_chain()
    owner = c.keys.accounts[0]
    fee = fee_of(c, "DV")
    tx_fee = c.state.policy.min_tx_fee
    gid = grant(c, owner, limit=2 * tx_fee + fee - 1)
    aid = valid_authz(c, owner, gid, "shop.example")
    before = c.state.balance(owner.address)
    c.tx(DELEGATE, Delegated(gid, CertApply("DV", ["shop.example"], SPKI, 30, fee, None, [aid])))
    (r,) = c.block()
    expect(r, Code.GRANT_LIMIT)
    # The fee is charged (the body failed), the escrow is not.
    assert c.state.balance(owner.address) == before - tx_fee
    assert get_grant(c, gid).spent == 2 * tx_fee
    # What is left cannot pay even the fee: refused before execution, uncharged.
    c.tx(DELEGATE, Delegated(gid, Revoke(b"\x01" * 32, 1)), fee=tx_fee * 100)
    (r,) = c.block()
    assert expect(r, Code.BAD_GRANT).fee_charged == 0


def test_only_the_delegate_of_an_active_grant_can_use_it() -> None:
    c = make_chain()
    owner, other = c.keys.accounts[0], c.keys.accounts[1]
    gid = grant(c, owner, days=1)
    tok = acme_token_for(owner.public_key, SALT)
    body = Delegated(gid, AuthzRequest("shop.example", "acme", "http-01", tok, THUMB))
    c.tx(other, body)  # not the delegate
    (r,) = c.block()
    assert "delegate" in expect(r, Code.BAD_GRANT).log
    c.tx(DELEGATE, Delegated(b"\x07" * 32, body.body))
    (r,) = c.block()
    assert "no such grant" in expect(r, Code.BAD_GRANT).log
    c.tx(other, GrantRevoke(gid))
    (r,) = c.block()
    expect(r, Code.NOT_AUTHORIZED)
    c.tx(owner, GrantRevoke(gid))
    (r,) = c.block()
    ok(r)
    assert get_grant(c, gid).status == "revoked"
    c.tx(DELEGATE, body)
    (r,) = c.block()
    assert "revoked" in expect(r, Code.BAD_GRANT).log
    # A grant lapses at its end.
    gid2 = grant(c, owner, days=1)
    c.block(advance_ms=86_400_000)
    c.tx(DELEGATE, Delegated(gid2, body.body))
    (r,) = c.block()
    assert "expired" in expect(r, Code.BAD_GRANT).log
    # An account cannot delegate to itself.
    c.tx(owner, GrantCreate(owner.public_key, 100, 1))
    (r,) = c.block()
    expect(r, Code.INVALID_GRANT)


def test_the_delegated_body_runs_with_the_owners_rights_only() -> None:
    c = make_chain()
    owner, other = c.keys.accounts[0], c.keys.accounts[1]
    # A certificate of another account cannot be revoked through this grant.
    gid_other = grant(c, other)
    aid_other = valid_authz(c, other, gid_other, "other.example")
    fee = fee_of(c, "DV")
    c.tx(other, CertApply("DV", ["other.example"], SPKI, 30, fee, None, [aid_other]))
    (r,) = c.block()
    cert_id = cert_id_for(only_event(ok(r).events, "app_created").ref)
    gid = grant(c, owner)
    c.tx(DELEGATE, Delegated(gid, Revoke(cert_id, 1)))
    (r,) = c.block()
    expect(r, Code.NOT_AUTHORIZED)
    # Nor can another account's authorization be cited.
    c.tx(
        DELEGATE,
        Delegated(gid, CertApply("DV", ["other.example"], SPKI, 30, fee, None, [aid_other])),
    )
    (r,) = c.block()
    expect(r, Code.INVALID_AUTHZ)
    # An ACME token bound to the delegate's own key is refused: the owner requests.
    tok = acme_token_for(DELEGATE.public_key, SALT)
    c.tx(DELEGATE, Delegated(gid, AuthzRequest("shop.example", "acme", "http-01", tok, THUMB)))
    (r,) = c.block()
    expect(r, Code.INVALID_AUTHZ)


def test_the_mempool_refuses_what_the_grant_cannot_pay_for() -> None:
    c = make_chain()
    owner = c.keys.accounts[0]
    gid = grant(c, owner, limit=15)
    mp = Mempool(c.chain_id, SignatureCache())
    body = Delegated(gid, Revoke(b"\x01" * 32, 1))
    good = codec.encode(sign_tx(DELEGATE, c.chain_id, 0, 10, body))
    assert mp.admit(good, c.state)[0] == Code.OK
    over = codec.encode(sign_tx(DELEGATE, c.chain_id, 1, 20, body))
    verdict, why, _, _ = mp.admit(over, c.state)
    assert verdict == Code.BAD_GRANT and "left of the grant" in why
    # The owner's own key is not the delegate either.
    o_acct = c.state.account(owner.address)
    assert o_acct is not None
    n = o_acct.nonce
    by_owner = codec.encode(sign_tx(owner, c.chain_id, n, 10, body))
    assert mp.admit(by_owner, c.state)[0] == Code.BAD_GRANT

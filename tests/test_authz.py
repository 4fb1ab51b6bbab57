"""Domain authorizations on the ledger (SPEC §7.9): checked once by the
validators, reused by applications and renewals, failing fast with each
validator's reason on the record."""

from __future__ import annotations

import pytest

from dpkid.core.challenges import acme_token_for, challenge_for_authz
from dpkid.core.crypto import sha256
from dpkid.core.state.authz import AUTHZ_TAG, authz_status, key_authz
from dpkid.core.state.codes import Code
from dpkid.core.state.machine import cert_id_for
from dpkid.core.types import (
    Authorization,
    AuthzAttest,
    AuthzCheck,
    AuthzRequest,
    CertApply,
    CertRenew,
    Endorse,
)
from tests.test_machine import SPKI, expect, fee_of, get_app, make_chain, ok, only_event

THUMB = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"  # RFC 7638 §3.1's example
SALT = bytes(range(16))


def request(c, key, name: str, method: str = "http-01", fmt: str = "dpkid") -> bytes:  # type: ignore[no-untyped-def]
    tok, th = (acme_token_for(key.public_key, SALT), THUMB) if fmt == "acme" else ("", "")
    raw = c.tx(key, AuthzRequest(name, fmt, method, tok, th))  # type: ignore[arg-type]
    (r,) = c.block()
    ok(r)
    aid = only_event(r.events, "authz_created").ref
    assert aid == sha256(AUTHZ_TAG + sha256(raw))
    return aid


def check(c, aid: bytes, validators, passed: bool = True, problem: str = "", detail: str = ""):  # type: ignore[no-untyped-def]
    for i in validators:
        c.tx(c.keys.validators[i], AuthzAttest([AuthzCheck(aid, passed, problem, detail)]))  # type: ignore[arg-type]
    for r in c.block():
        ok(r)


def authz(c, aid: bytes) -> Authorization:  # type: ignore[no-untyped-def]
    a: Authorization = c.state.get(key_authz(aid))
    return a


def test_a_valid_authorization_issues_a_dv_certificate_in_the_applying_tx() -> None:
    c = make_chain()
    acct = c.keys.accounts[0]
    aid = request(c, acct, "shop.example")
    ch = challenge_for_authz(authz(c, aid))
    assert ch.http_path.startswith("/.well-known/dpki-challenge/")
    check(c, aid, [0, 1])
    assert authz(c, aid).status == "pending"  # 20 of 40: not above 2/3
    check(c, aid, [2])
    a = authz(c, aid)
    assert a.status == "valid" and [x.ok for x in a.checks] == [True] * 3
    assert a.valid_until_ms == c.state.time_ms + c.state.policy.authz_reuse_ms
    body = CertApply("DV", ["shop.example"], SPKI, 30, fee_of(c, "DV"), None, [aid])
    c.tx(acct, body)
    (r,) = c.block()
    ok(r)
    kinds = [e.kind for e in r.events]
    assert "app_authorized" in kinds and "cert_issued" in kinds
    app_id = only_event(r.events, "app_created").ref
    cert = c.state.certificate(cert_id_for(app_id))
    assert cert is not None and len(cert.attestors) == 3  # the checkers are paid
    # Reuse: a second certificate for the name needs no new challenge.
    c.tx(acct, CertApply("DV", ["shop.example"], SPKI, 30, fee_of(c, "DV"), None, [aid]))
    (r,) = c.block()
    assert "cert_issued" in [e.kind for e in ok(r).events]
    # Renewal within the window, likewise.
    c.tx(acct, CertRenew(cert.cert_id, 30, fee_of(c, "DV"), b"", [aid]))
    (r,) = c.block()
    assert "cert_issued" in [e.kind for e in ok(r).events]


def test_acme_format_uses_the_acme_paths_and_key_authorization() -> None:
    c = make_chain()
    acct = c.keys.accounts[0]
    aid = request(c, acct, "*.shop.example", "dns-01", "acme")
    ch = challenge_for_authz(authz(c, aid))
    token = acme_token_for(acct.public_key, SALT)
    assert ch.key_authorization == f"{token}.{THUMB}"
    assert ch.http_path == f"/.well-known/acme-challenge/{token}"
    # The same published key authorization cannot be claimed by another account.
    c.tx(c.keys.accounts[1], AuthzRequest("*.shop.example", "acme", "dns-01", token, THUMB))
    (r,) = c.block()
    assert "bound to the sender" in expect(r, Code.INVALID_AUTHZ).log
    assert ch.dns_name("*.shop.example") == "_acme-challenge.shop.example"


def test_a_hopeless_authorization_fails_fast_with_every_reason_on_record() -> None:
    c = make_chain()
    aid = request(c, c.keys.accounts[0], "nope.example")
    check(c, aid, [0], False, "dns", "NXDOMAIN for nope.example")
    assert authz(c, aid).status == "pending"  # 10 of 40 failed: 2/3 still reachable
    check(c, aid, [1], False, "incorrectResponse", "wrong key authorization")
    a = authz(c, aid)
    assert a.status == "invalid"  # 20 of 40 failed: 2/3 can no longer be reached
    assert sorted((x.problem, x.detail) for x in a.checks) == [
        ("dns", "NXDOMAIN for nope.example"),
        ("incorrectResponse", "wrong key authorization"),
    ]
    assert all(x.time_ms == c.state.time_ms or x.time_ms < c.state.time_ms for x in a.checks)
    # Late checks change nothing.
    c.tx(c.keys.validators[2], AuthzAttest([AuthzCheck(aid, True)]))
    (r,) = c.block()
    assert only_event(ok(r).events, "authz_check_skipped").detail == "authorization is invalid"


def test_an_authorization_expires_after_the_reuse_window() -> None:
    c = make_chain()
    acct = c.keys.accounts[0]
    aid = request(c, acct, "old.example")
    check(c, aid, [0, 1, 2])
    c.block(advance_ms=c.state.policy.authz_reuse_ms)
    assert authz_status(authz(c, aid), c.state.time_ms) == "expired"
    c.tx(acct, CertApply("DV", ["old.example"], SPKI, 30, fee_of(c, "DV"), None, [aid]))
    (r,) = c.block()
    assert "expired" in expect(r, Code.INVALID_AUTHZ).log


def test_ov_with_an_authorization_still_needs_its_endorsers() -> None:
    c = make_chain()
    acct = c.keys.accounts[0]
    aid = request(c, acct, "corp.example")
    check(c, aid, [0, 1, 2])
    from dpkid.core.types import OrgIdentity

    org = OrgIdentity("Example Corp", "US")
    c.tx(acct, CertApply("OV", ["corp.example"], SPKI, 30, fee_of(c, "OV"), org, [aid]))
    (r,) = c.block()
    app_id = only_event(ok(r).events, "app_created").ref
    assert get_app(c, app_id).status == "pending"
    for e in c.keys.endorsers[:2]:
        c.tx(e, Endorse(app_id, True, "checked"))
    c.block()
    assert get_app(c, app_id).status == "issued"


@pytest.mark.parametrize(
    "case",
    ["other_account", "not_covering", "pending", "unknown", "twice", "extra"],
)
def test_applications_citing_unusable_authorizations_are_refused(case: str) -> None:
    c = make_chain()
    a0, a1 = c.keys.accounts[0], c.keys.accounts[1]
    aid = request(c, a0, "a.example")
    if case != "pending":
        check(c, aid, [0, 1, 2])
    sender, names, ids = a0, ["a.example"], [aid]
    if case == "other_account":
        sender = a1
    elif case == "not_covering":
        names = ["a.example", "b.example"]
    elif case == "unknown":
        ids = [bytes(32)]
    elif case == "twice":
        ids = [aid, aid]
    elif case == "extra":
        other = request(c, a0, "z.example")
        check(c, other, [0, 1, 2])
        ids = [aid, other]
    c.tx(sender, CertApply("DV", names, SPKI, 30, fee_of(c, "DV"), None, ids))
    (r,) = c.block()
    expect(r, Code.INVALID_AUTHZ)


def test_request_rules() -> None:
    c = make_chain()
    acct = c.keys.accounts[0]
    for body in (
        AuthzRequest("*.w.example", "dpkid", "http-01"),  # wildcard needs dns-01
        AuthzRequest("a.example", "acme", "http-01", "short", THUMB),  # token not bound
        AuthzRequest("a.example", "acme", "http-01", acme_token_for(acct.public_key, SALT), "x"),
        AuthzRequest("a.example", "dpkid", "http-01", acme_token_for(acct.public_key, SALT), ""),
    ):
        c.tx(acct, body)
        (r,) = c.block()
        expect(r, Code.INVALID_AUTHZ)
    c.tx(acct, AuthzRequest("A.Example", "dpkid", "http-01"))
    (r,) = c.block()
    expect(r, Code.INVALID_DOMAIN)


def test_pending_authorizations_are_listed_for_a_restarted_validator() -> None:
    c = make_chain()
    acct = c.keys.accounts[0]
    first = request(c, acct, "a.example")
    second = request(c, acct, "b.example")
    done = request(c, acct, "c.example")
    check(c, done, [0, 1, 2])
    assert c.state.pending_authz_ids() == [first, second]  # soonest expiry first
    assert c.state.pending_authz_ids(limit=1) == [first]
    c.block(advance_ms=c.state.policy.application_ttl_ms)
    assert c.state.pending_authz_ids() == []  # lapsed

"""Domain authorizations on the ledger (SPEC §7.9).

An authorization says that account A controls name N. Validators check it
(http-01 or dns-01, in dpkid's or ACME's format) and post their outcome; it
becomes valid once validators above the DV threshold of power say ok, and
invalid as soon as that can no longer happen (more than a third of the power,
at the default threshold, reported failure), so a hopeless one fails within a
few blocks instead of waiting out its TTL. Each validator's latest outcome,
with an ACME problem type and its reason, stays on the record for the
applicant to read. A certificate application may cite valid authorizations
of its applicant covering all its names instead of being validated itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from dpkid.core.challenges import acme_token_binds
from dpkid.core.crypto import sha256
from dpkid.core.domains import DomainError, validate_domain
from dpkid.core.state.codes import Code, TxFailure
from dpkid.core.types import (
    AccountAuthzs,
    AttestationRecord,
    Authorization,
    AuthzAttest,
    AuthzCheckRecord,
    AuthzRequest,
    Tx,
)

if TYPE_CHECKING:
    from dpkid.core.state.machine import _Block

P_AUTHZ: Final = b"authz:"
P_AUTHZS: Final = b"authzs:"
AUTHZ_TAG: Final = b"dpkid/authz/v1\x00"
THUMBPRINT_CHARS: Final = 43  # base64url of a SHA-256 RFC 7638 thumbprint
# The method of the attestation records an application gets from cited
# authorizations: no dv_attest can carry it (its method is http-01 or dns-01).
AUTHORIZED: Final = "authz"


def authorized(app_attestations: list[AttestationRecord]) -> bool:
    """The application was validated through cited authorizations."""
    return any(a.method == AUTHORIZED for a in app_attestations)


def key_authz(authz_id: bytes) -> bytes:
    return P_AUTHZ + authz_id


def key_account_authzs(addr: bytes) -> bytes:
    return P_AUTHZS + addr


def authz_status(a: Authorization, now_ms: int) -> str:
    """pending | valid | invalid | expired, at block time ``now_ms``."""
    if a.status == "pending" and now_ms >= a.expires_ms:
        return "expired"
    if a.status == "valid" and now_ms >= a.valid_until_ms:
        return "expired"
    return a.status


def _pending(b: _Block, addr: bytes) -> list[bytes]:
    """The account's authorizations still pending now (lapsed ones dropped)."""
    rec: AccountAuthzs | None = b.get(key_account_authzs(addr))
    out = []
    for aid in rec.pending if rec else []:
        a: Authorization | None = b.get(key_authz(aid))
        if a is not None and authz_status(a, b.now) == "pending":
            out.append(aid)
    return out


def h_authz_request(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: AuthzRequest = tx.body  # type: ignore[assignment]
    p = b.policy
    try:
        name = validate_domain(body.name)
    except DomainError as exc:
        raise TxFailure(Code.INVALID_DOMAIN, f"domain: {exc}") from None
    if name != body.name:
        raise TxFailure(Code.INVALID_DOMAIN, f"give the name in canonical form: {name}")
    if name.startswith("*.") and body.method != "dns-01":
        raise TxFailure(Code.INVALID_AUTHZ, "a wildcard name is authorized only through dns-01")
    if body.format == "dpkid":
        if body.token or body.thumbprint:
            raise TxFailure(Code.INVALID_AUTHZ, "the dpkid format derives token and thumbprint")
    elif len(body.thumbprint) != THUMBPRINT_CHARS:
        raise TxFailure(
            Code.INVALID_AUTHZ, f"an ACME key thumbprint is {THUMBPRINT_CHARS} characters"
        )
    elif not acme_token_binds(body.token, tx.pubkey):
        # The key authorization is public once published: without this
        # binding, another account could request the same one and be valid.
        raise TxFailure(
            Code.INVALID_AUTHZ, "the ACME token must be bound to the sender's key (acme_token_for)"
        )
    pending = _pending(b, sender)
    if len(pending) >= p.max_pending_authzs:
        raise TxFailure(
            Code.INVALID_AUTHZ, f"at most {p.max_pending_authzs} pending authorizations per account"
        )
    authz_id = sha256(AUTHZ_TAG + h)
    a = Authorization(
        authz_id=authz_id,
        account=sender,
        account_pubkey=tx.pubkey,
        name=name,
        format=body.format,
        method=body.method,
        token=body.token,
        thumbprint=body.thumbprint,
        created_height=b.height,
        created_ms=b.now,
        expires_ms=b.now + p.application_ttl_ms,
        status="pending",
        checks=[],
    )
    b.put(key_authz(authz_id), a)
    b.put(key_account_authzs(sender), AccountAuthzs([*pending, authz_id]))
    b.emit("authz_created", authz_id, f"{name} {body.format} {body.method}")


def h_authz_attest(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: AuthzAttest = tx.body  # type: ignore[assignment]
    if b.validators.power_of(sender) == 0:
        raise TxFailure(Code.NOT_VALIDATOR, "only an active validator may check authorizations")
    for item in body.items:
        a: Authorization | None = b.get(key_authz(item.authz_id))
        if a is None:
            b.emit("authz_check_skipped", item.authz_id, "unknown authorization")
            continue
        status = authz_status(a, b.now)
        if status != "pending":
            b.emit("authz_check_skipped", item.authz_id, f"authorization is {status}")
            continue
        if a.account == sender:
            b.emit("authz_check_skipped", item.authz_id, "a validator may not check its own")
            continue
        rec = AuthzCheckRecord(
            sender,
            item.ok,
            "" if item.ok else (item.problem or "unauthorized"),
            item.detail,
            b.height,
            b.now,
        )
        # Each validator's latest word stands (a retried check may succeed).
        checks = sorted(
            [*(c for c in a.checks if c.validator != sender), rec], key=lambda c: c.validator
        )
        a = msgspec.structs.replace(a, checks=checks)
        b.emit("authz_checked", a.authz_id, "ok" if item.ok else f"{rec.problem}: {item.detail}")
        b.put(key_authz(a.authz_id), _decide(b, a))


def _decide(b: _Block, a: Authorization) -> Authorization:
    p = b.policy
    vs = b.validators
    total = vs.total_power()
    ok_power = sum(vs.power_of(c.validator) for c in a.checks if c.ok)
    fail_power = sum(vs.power_of(c.validator) for c in a.checks if not c.ok)
    if ok_power * p.dv_threshold_den > p.dv_threshold_num * total:
        b.emit("authz_valid", a.authz_id, a.name)
        return msgspec.structs.replace(
            a, status="valid", decided_height=b.height, valid_until_ms=b.now + p.authz_reuse_ms
        )
    # The threshold cannot be reached any more: fail now, not at the TTL.
    if (total - fail_power) * p.dv_threshold_den <= p.dv_threshold_num * total:
        b.emit("authz_invalid", a.authz_id, a.name)
        return msgspec.structs.replace(a, status="invalid", decided_height=b.height)
    return a


def covering_attestations(
    b: _Block, applicant: bytes, domains: list[str], authz_ids: list[bytes]
) -> list[AttestationRecord]:
    """For an application citing ``authz_ids``: check they are the applicant's,
    valid now and cover every name, and return, per validator whose ok check
    said ok on any of them, one attestation record (so the application's DV
    decision and payout are the usual ones, SPEC §7.5, §9.2)."""
    covering: dict[str, Authorization] = {}
    if len(set(authz_ids)) != len(authz_ids):
        raise TxFailure(Code.INVALID_AUTHZ, "an authorization is cited twice")
    for aid in authz_ids:
        a: Authorization | None = b.get(key_authz(aid))
        if a is None:
            raise TxFailure(Code.INVALID_AUTHZ, f"no authorization {aid.hex()}")
        if a.account != applicant:
            raise TxFailure(Code.INVALID_AUTHZ, f"authorization {aid.hex()} is another account's")
        status = authz_status(a, b.now)
        if status != "valid":
            raise TxFailure(Code.INVALID_AUTHZ, f"authorization {aid.hex()} is {status}")
        if a.name not in domains or a.name in covering:
            raise TxFailure(
                Code.INVALID_AUTHZ, f"authorization {aid.hex()} for {a.name} is not one per name"
            )
        covering[a.name] = a
    missing = [d for d in domains if d not in covering]
    if missing:
        raise TxFailure(Code.INVALID_AUTHZ, f"no valid authorization cited for {missing[0]}")
    # Each cited authorization was itself proven above the DV threshold, so
    # every name is; the records are the union of the validators that said ok
    # (they are the ones paid, SPEC §9.2).
    oks = sorted({c.validator for d in domains for c in covering[d].checks if c.ok})
    return [AttestationRecord(v, True, AUTHORIZED, "", b.height) for v in oks]

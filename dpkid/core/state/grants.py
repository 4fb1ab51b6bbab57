"""Delegation grants (SPEC §7.10).

A grant lets one key (the delegate) sign a few kinds of transaction for
another account (the owner): authz_request, cert_apply, cert_renew and
revoke. The body then runs exactly as if the owner had signed it, so the
owner holds the authorizations and certificates, and the owner's balance pays
the fee and the escrow, up to the grant's spend limit. The delegate uses only
its own nonce. This is how an ACME server acts for its users without holding
their keys or owning their certificates; the owner can revoke the grant at
any time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from dpkid.core.crypto import address_of, sha256
from dpkid.core.state.codes import Code, TxFailure
from dpkid.core.types import CertApply, CertRenew, Delegated, Grant, GrantCreate, GrantRevoke, Tx

if TYPE_CHECKING:
    from dpkid.core.state.machine import _Block

P_GRANT: Final = b"grant:"
GRANT_TAG: Final = b"dpkid/grant/v1\x00"
MS_PER_DAY: Final = 86_400_000


def key_grant(grant_id: bytes) -> bytes:
    return P_GRANT + grant_id


def grant_status(g: Grant, now_ms: int) -> str:
    """active | revoked | expired, at block time ``now_ms``."""
    if g.status == "active" and now_ms >= g.expires_ms:
        return "expired"
    return g.status


def escrow_of(body: Any) -> int:
    return body.escrow if isinstance(body, CertApply | CertRenew) else 0


def check_delegated(get: Callable[[bytes], Any], tx: Tx, now_ms: int) -> Grant | TxFailure:
    """The pre-check of a delegated tx (SPEC §4.3 check 7): its grant exists,
    names the signer as delegate, is active now and still covers the fee. The
    mempool runs it too, so a tx the ledger would not charge is never pooled."""
    body: Delegated = tx.body  # type: ignore[assignment]
    g: Grant | None = get(key_grant(body.grant_id))
    if g is None:
        return TxFailure(Code.BAD_GRANT, "no such grant")
    if g.delegate != tx.pubkey:
        return TxFailure(Code.BAD_GRANT, "the signer is not this grant's delegate")
    st = grant_status(g, now_ms)
    if st != "active":
        return TxFailure(Code.BAD_GRANT, f"the grant is {st}")
    if g.spent + tx.fee > g.spend_limit:
        return TxFailure(
            Code.BAD_GRANT,
            f"fee {tx.fee} exceeds what is left of the grant ({g.spend_limit - g.spent})",
        )
    return g


def charge_fee(b: _Block, g: Grant, fee: int) -> None:
    """Before the body runs: the fee is the owner's and counts against the
    grant, and stays charged if the body fails (SPEC §4.4)."""
    b.put(key_grant(g.grant_id), msgspec.structs.replace(g, spent=g.spent + fee))


def h_grant_create(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: GrantCreate = tx.body  # type: ignore[assignment]
    if body.delegate == tx.pubkey:
        raise TxFailure(Code.INVALID_GRANT, "an account cannot delegate to its own key")
    if body.spend_limit <= 0:
        raise TxFailure(Code.INVALID_GRANT, "spend_limit must be positive")
    gid = sha256(GRANT_TAG + h)
    g = Grant(
        grant_id=gid,
        owner=sender,
        owner_pubkey=tx.pubkey,
        delegate=body.delegate,
        spend_limit=body.spend_limit,
        spent=0,
        created_height=b.height,
        created_ms=b.now,
        expires_ms=b.now + body.valid_days * MS_PER_DAY,
        status="active",
        sealed=body.sealed,
    )
    b.put(key_grant(gid), g)
    b.emit("grant_created", gid, address_of(body.delegate).hex())


def h_grant_revoke(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: GrantRevoke = tx.body  # type: ignore[assignment]
    g: Grant | None = b.get(key_grant(body.grant_id))
    if g is None:
        raise TxFailure(Code.INVALID_GRANT, "no such grant")
    if g.owner != sender:
        raise TxFailure(Code.NOT_AUTHORIZED, "only the grant's owner may revoke it")
    if g.status != "active":
        raise TxFailure(Code.INVALID_GRANT, "the grant is already revoked")
    b.put(
        key_grant(g.grant_id),
        msgspec.structs.replace(g, status="revoked", revoked_height=b.height),
    )
    b.emit("grant_revoked", g.grant_id)


def h_delegated(
    b: _Block,
    tx: Tx,
    sender: bytes,
    h: bytes,
    handlers: dict[type[Any], Callable[[_Block, Tx, bytes, bytes], None]],
) -> None:
    body: Delegated = tx.body  # type: ignore[assignment]
    g: Grant = b.get(key_grant(body.grant_id))  # the pre-check found it active
    escrow = escrow_of(body.body)
    if g.spent + escrow > g.spend_limit:
        raise TxFailure(
            Code.GRANT_LIMIT,
            f"escrow {escrow} exceeds what is left of the grant ({g.spend_limit - g.spent})",
        )
    if escrow:
        b.put(key_grant(g.grant_id), msgspec.structs.replace(g, spent=g.spent + escrow))
    # The body runs as the owner's own: the owner applies, holds and pays.
    inner = msgspec.structs.replace(tx, pubkey=g.owner_pubkey, body=body.body)
    b.emit("delegated", g.grant_id, address_of(tx.pubkey).hex())
    handlers[type(body.body)](b, inner, g.owner, h)

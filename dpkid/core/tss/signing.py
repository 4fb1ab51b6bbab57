"""FROST round two as the ledger coordinates it (SPEC §16.7), shared by the
ledger rules and the validator's agent.

An attempt's binding factors, group commitment R and challenge depend only on
the group key, the message and the attempt's commitment list, so they are
computed once and memoised (a pure function of its inputs; the cache is
bounded). The commitments were checked to be valid points when posted
(``tss_nonces``), so they are not re-checked here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from dpkid.core import frost
from dpkid.core.crypto import sha256

MAX_CONTEXTS: Final = 4096


@dataclass(frozen=True)
class AttemptContext:
    ids: tuple[int, ...]
    commitments: dict[int, frost.SigningCommitment]
    binding: dict[int, int]
    group_commitment: frost.Element
    challenge: int

    def lagrange(self, identifier: int) -> int:
        return frost.derive_interpolating_value(list(self.ids), identifier)


_cache: OrderedDict[bytes, AttemptContext] = OrderedDict()


def attempt_context(
    group_pk: frost.Element, msg: bytes, commitment_list: Sequence[frost.SigningCommitment]
) -> AttemptContext:
    """RFC 9591 §4.4-4.6 for one attempt (commitment list sorted by identifier)."""
    enc = frost.encode_group_commitment_list(commitment_list)
    k = sha256(group_pk + sha256(msg) + enc)
    got = _cache.get(k)
    if got is not None:
        _cache.move_to_end(k)
        return got
    bf = frost.compute_binding_factors(group_pk, commitment_list, msg)
    r = frost.compute_group_commitment(commitment_list, bf)
    ctx = AttemptContext(
        tuple(c.identifier for c in commitment_list),
        {c.identifier: c for c in commitment_list},
        bf,
        r,
        frost.compute_challenge(r, group_pk, msg),
    )
    _cache[k] = ctx
    while len(_cache) > MAX_CONTEXTS:
        _cache.popitem(last=False)
    return ctx


def sign_share(ctx: AttemptContext, identifier: int, secret: int, hiding: int, binding: int) -> int:
    """z_i = d_i + e_i * rho_i + lambda_i * s_i * c (RFC 9591 §5.2)."""
    return (
        hiding
        + binding * ctx.binding[identifier]
        + ctx.lagrange(identifier) * secret * ctx.challenge
    ) % frost.ORDER


def share_ok(ctx: AttemptContext, identifier: int, public_share: frost.Element, z: int) -> bool:
    """RFC 9591 §5.4: z_i * B == D_i + rho_i * E_i + (c * lambda_i) * Y_i."""
    if not 0 <= z < frost.ORDER:
        return False
    comm = ctx.commitments[identifier]
    rhs = frost.element_add(
        frost.element_add(comm.hiding, frost.scalar_mult(comm.binding, ctx.binding[identifier])),
        frost.scalar_mult(public_share, ctx.challenge * ctx.lagrange(identifier)),
    )
    return frost.scalar_base_mult(z) == rhs

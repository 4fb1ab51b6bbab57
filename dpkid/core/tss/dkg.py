"""DKG building blocks shared by the ledger rules and the validator's agent.

Pure: the randomness a deal needs (polynomial coefficients, proof nonces, the
sealed boxes' ephemeral keys) comes in as bytes from the caller.

Shares travel in libsodium sealed boxes (X25519 + XSalsa20-Poly1305) to the
X25519 form of the recipient's registered Ed25519 validator key, so no new key
has to be registered (the same conversion age and libsodium's
``crypto_sign_ed25519_pk_to_curve25519`` use).  The box is built here from an
ephemeral key derived from caller bytes rather than by ``crypto_box_seal``,
which draws its own randomness; the result is byte-compatible with it, so
``crypto_box_seal_open`` opens it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import nacl.bindings as sodium
import nacl.exceptions

from dpkid.core import frost
from dpkid.core.frost import ORDER, Element

DKG_CONTEXT_TAG = b"dpkid/tss-dkg/v1\x00"


class DealFormatError(ValueError):
    pass


def x25519_public(ed25519_pk: bytes) -> bytes:
    return bytes(sodium.crypto_sign_ed25519_pk_to_curve25519(ed25519_pk))


def x25519_secret(ed25519_seed: bytes) -> bytes:
    _pk, sk = sodium.crypto_sign_seed_keypair(ed25519_seed)
    return bytes(sodium.crypto_sign_ed25519_sk_to_curve25519(sk))


def seal(message: bytes, recipient_x25519_pk: bytes, ephemeral_seed: bytes) -> bytes:
    """crypto_box_seal with a caller-chosen ephemeral key (32 fresh random bytes)."""
    epk, esk = sodium.crypto_box_seed_keypair(ephemeral_seed)
    nonce = hashlib.blake2b(epk + recipient_x25519_pk, digest_size=24).digest()
    return bytes(epk) + bytes(sodium.crypto_box(message, nonce, recipient_x25519_pk, esk))


def unseal(box: bytes, x25519_pk: bytes, x25519_sk: bytes) -> bytes | None:
    try:
        return bytes(sodium.crypto_box_seal_open(box, x25519_pk, x25519_sk))
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError, TypeError):
        return None


def box_len(polys: int, count: int) -> int:
    return 48 + 32 * polys * count


def encode_scalars(values: Sequence[int]) -> bytes:
    return b"".join(frost.serialize_scalar(v) for v in values)


def decode_scalars(buf: bytes) -> list[int]:
    if len(buf) % 32:
        raise DealFormatError("not a whole number of scalars")
    try:
        return [frost.deserialize_scalar(buf[i : i + 32]) for i in range(0, len(buf), 32)]
    except frost.FrostError as exc:
        raise DealFormatError(str(exc)) from exc


def context(chain_id: str, round_: int, valset_hash: bytes) -> bytes:
    return DKG_CONTEXT_TAG + chain_id.encode() + b"\x00" + round_.to_bytes(8, "big") + valset_hash


def eval_commitment(commitment: Sequence[Element], x: int) -> Element:
    """sum_j C_j x^j by Horner's rule: len(commitment) - 1 multiplications."""
    acc = frost.IDENTITY
    for c in reversed(commitment):
        acc = frost.element_add(frost.scalar_mult(acc, x), c)
    return acc


def share_matches(commitment: Sequence[Element], x: int, share: int) -> bool:
    """Feldman's check: share * B == sum_j C_j x^j."""
    if not 0 <= share < ORDER:
        return False
    return frost.scalar_base_mult(share) == eval_commitment(commitment, x)


def valid_points(points: Sequence[bytes]) -> bool:
    try:
        for p in points:
            frost.deserialize_element(p)
    except frost.FrostError:
        return False
    return True


def combine(weighted: Sequence[tuple[int, Sequence[Element]]], length: int) -> list[Element]:
    """sum_k w_k * C_k coefficient by coefficient (the committee's commitment)."""
    out: list[Element] = [frost.IDENTITY] * length
    for w, comm in weighted:
        for j in range(length):
            out[j] = frost.element_add(out[j], frost.scalar_mult(comm[j], w % ORDER))
    return out


def lagrange_at_zero(indices: Sequence[int], i: int) -> int:
    return frost.derive_interpolating_value(list(indices), i)


def random_polynomial(constant: int | None, degree_plus_one: int, randomness: bytes) -> list[int]:
    """Coefficients a_0..a_{t-1}; a_0 is ``constant`` when re-sharing."""
    n = frost.RANDOM_SCALAR_LEN
    if len(randomness) < n * degree_plus_one:
        raise ValueError(f"need {n} random bytes per coefficient")
    # A zero coefficient would commit to the identity, which cannot be sent;
    # its chance is 2^-252, and 1 keeps the function total.
    coeffs = [
        frost.random_scalar(randomness[n * j : n * j + n]) or 1 for j in range(degree_plus_one)
    ]
    if constant is not None:
        coeffs[0] = constant
    return coeffs


def poly_eval(coeffs: Sequence[int], x: int) -> int:
    return frost.polynomial_evaluate(x, coeffs)

"""Subject public keys, given as DER SubjectPublicKeyInfo.

Only a small set of algorithms is accepted, and only in the one DER encoding
``cryptography`` itself produces, so that a key has exactly one byte string
(and therefore one fingerprint) on the ledger.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, runtime_checkable

import nacl.bindings
import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)

__all__ = [
    "MAX_RSA_BITS",
    "MAX_SPKI_LEN",
    "MIN_RSA_BITS",
    "Algorithm",
    "SigningKey",
    "SubjectKey",
    "SubjectKeyError",
    "parse_spki",
    "sign_with_private_key",
    "spki_der_of",
    "verify_with_spki",
]

MAX_SPKI_LEN = 2048
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
# PSS salt equal to the digest length, as RFC 8017 recommends; fixed so that
# signers and the ledger agree without negotiating parameters.
_PSS_SALT_LEN = 32

Algorithm: TypeAlias = Literal["ed25519", "ecdsa-p256", "ecdsa-p384", "rsa"]
SigningKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_SUPPORTED_CURVES: dict[str, tuple[Algorithm, int]] = {
    ec.SECP256R1.name: ("ecdsa-p256", 256),
    ec.SECP384R1.name: ("ecdsa-p384", 384),
}


@runtime_checkable
class _PublicKeyLike(Protocol):
    def public_bytes(self, encoding: Encoding, format: PublicFormat) -> bytes: ...


# Structural rather than a union of cryptography's classes, whose membership
# changes between releases (and would need isinstance on a typing.Union).
@runtime_checkable
class _PrivateKeyLike(Protocol):
    def public_key(self) -> _PublicKeyLike: ...


class SubjectKeyError(ValueError):
    """A subject public key is not acceptable; ``reason`` is a stable slug."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SubjectKey:
    """An accepted subject public key in canonical form."""

    algorithm: Algorithm
    bits: int
    der: bytes
    fingerprint: bytes


_AcceptedKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _classify(key: PublicKeyTypes) -> tuple[Algorithm, int, _AcceptedKey]:
    if isinstance(key, ed25519.Ed25519PublicKey):
        # Small-order points (and other non-canonical encodings) would let a
        # trivial signature verify for every message: refuse them outright.
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        if not nacl.bindings.crypto_core_ed25519_is_valid_point(raw):
            raise SubjectKeyError("weak_key", "Ed25519 key is a small-order or invalid point")
        return "ed25519", 256, key
    if isinstance(key, ec.EllipticCurvePublicKey):
        entry = _SUPPORTED_CURVES.get(key.curve.name)
        if entry is None:
            raise SubjectKeyError("unsupported_curve", f"curve {key.curve.name} is not accepted")
        return entry[0], entry[1], key
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise SubjectKeyError("weak_rsa", f"RSA modulus of {bits} bits is below {MIN_RSA_BITS}")
        if bits > MAX_RSA_BITS:
            raise SubjectKeyError("too_large", f"RSA modulus of {bits} bits exceeds {MAX_RSA_BITS}")
        # cryptography already refuses such exponents when loading; checking
        # here too keeps acceptance independent of the library version.
        exponent = key.public_numbers().e
        if exponent < 3 or exponent % 2 == 0:
            raise SubjectKeyError("weak_rsa", f"RSA public exponent {exponent} is not allowed")
        return "rsa", bits, key
    raise SubjectKeyError("unsupported_algorithm", f"{type(key).__name__} keys are not accepted")


def _load(der: bytes) -> tuple[SubjectKey, _AcceptedKey]:
    if not isinstance(der, bytes | bytearray | memoryview):
        raise SubjectKeyError("not_der", "key must be given as bytes")
    der = bytes(der)
    if len(der) > MAX_SPKI_LEN:
        raise SubjectKeyError("too_large", f"key encoding exceeds {MAX_SPKI_LEN} bytes")
    try:
        loaded = load_der_public_key(der)
    except UnsupportedAlgorithm as exc:
        raise SubjectKeyError("unsupported_algorithm", f"unsupported key: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise SubjectKeyError("not_der", "not a DER SubjectPublicKeyInfo") from exc
    algorithm, bits, key = _classify(loaded)
    # Re-encoding rejects every alternative spelling of the same key that the
    # loader tolerates (compressed EC points, bare PKCS#1 RSA keys), so one
    # key cannot be registered under several fingerprints.
    if key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != der:
        raise SubjectKeyError("not_canonical", "key is not in canonical SPKI DER form")
    return SubjectKey(algorithm, bits, der, hashlib.sha256(der).digest()), key


def parse_spki(der: bytes) -> SubjectKey:
    """Parse and vet a subject public key; raises only SubjectKeyError."""
    return _load(der)[0]


def verify_with_spki(der: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` over ``message`` verifies under the key ``der``.

    Keys that :func:`parse_spki` rejects never verify.  ECDSA signatures are
    malleable, so a signature authorises but must never identify anything.
    """
    try:
        subject, key = _load(der)
        if isinstance(key, ed25519.Ed25519PublicKey):
            # libsodium's strict checks, the same as for transaction signatures.
            raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
            nacl.signing.VerifyKey(raw).verify(message, signature)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(_ecdsa_hash(subject.algorithm)))
        else:
            key.verify(signature, message, _pss(), hashes.SHA256())
    except (SubjectKeyError, InvalidSignature, ValueError, TypeError, nacl.exceptions.CryptoError):
        return False
    return True


def sign_with_private_key(private_key: SigningKey, message: bytes) -> bytes:
    """Sign ``message`` with the scheme :func:`verify_with_spki` expects.

    For clients and tests, not for the ledger: ECDSA and RSA-PSS signatures
    are randomised.  Keys whose public half :func:`parse_spki` would reject
    are refused with SubjectKeyError rather than producing useless signatures.
    """
    subject = parse_spki(spki_der_of(private_key))
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(message, ec.ECDSA(_ecdsa_hash(subject.algorithm)))
    return private_key.sign(message, _pss(), hashes.SHA256())


def spki_der_of(key: _PrivateKeyLike | _PublicKeyLike) -> bytes:
    """The DER SubjectPublicKeyInfo of a ``cryptography`` private or public key."""
    public = key.public_key() if isinstance(key, _PrivateKeyLike) else key
    return public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _ecdsa_hash(algorithm: Algorithm) -> hashes.HashAlgorithm:
    return hashes.SHA384() if algorithm == "ecdsa-p384" else hashes.SHA256()


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=_PSS_SALT_LEN)

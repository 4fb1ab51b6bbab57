"""Subject keys derived from labels, for vectors, walkthroughs and the simulator.

Kept apart from ``dpkid.dev.vectors`` because the simulator needs these and
must not reach the vector builder, which pulls in the client (file and clock).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from dpkid.core.crypto import sha256


def subject_key(label: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(sha256(b"subject/" + label.encode()))


def p256_subject_key(label: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(sha256(b"p256/" + label.encode()), "big") % (2**255)
    return ec.derive_private_key(scalar, ec.SECP256R1())

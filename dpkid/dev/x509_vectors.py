"""Golden vectors for the threshold-signed X.509 formats (protocol/SPEC.md §14.6).

``x509_tss_vectors()`` derives everything from fixed labels: a 2-of-3 FROST
group key from a trusted dealer with fixed secrets, the TBS of the root, of a
DV and an EV leaf and of a CRL, and for each a FROST signature made by
participants 1 and 3 with fixed nonce randomness, and the assembled DER.
Regenerating gives the same file (``dpkid vectors``
rewrites protocol/vectors/x509-tss.json); tests/test_tss_x509.py compares.

The leaf records are given field by field (bytes as lower-case hex) and as
their canonical encoding, so an independent implementation can rebuild them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from dpkid.core import codec, frost
from dpkid.core.crypto import sha256
from dpkid.core.keys import spki_der_of
from dpkid.core.tss import x509 as tss
from dpkid.core.types import Certificate, OrgIdentity

CHAIN_ID = "dpkid-vectors"
MAX_PARTICIPANTS = 3
MIN_PARTICIPANTS = 2
SIGNERS = (1, 3)

ROOT_NOT_BEFORE_S = 1_767_225_600  # 2026-01-01T00:00:00Z
LEAF_NOT_BEFORE_MS = 1_767_312_000_000  # 2026-01-02T00:00:00Z
DAY_MS = 86_400_000


def _scalar(label: str) -> int:
    return frost.random_scalar(hashlib.sha512(b"dpkid/x509-tss-vectors/" + label.encode()).digest())


def dealer() -> tuple[int, list[int]]:
    """The dealer's fixed group secret and polynomial coefficients."""
    return _scalar("secret"), [_scalar(f"coefficient/{k}") for k in range(MIN_PARTICIPANTS - 1)]


def group() -> tuple[dict[int, int], frost.Element]:
    secret, coefficients = dealer()
    shares, group_pk, _ = frost.trusted_dealer_keygen(
        secret, coefficients, MAX_PARTICIPANTS, MIN_PARTICIPANTS
    )
    return dict(shares), group_pk


def frost_sign(
    shares: dict[int, int],
    group_pk: frost.Element,
    msg: bytes,
    label: str,
    signers: Sequence[int] = SIGNERS,
) -> bytes:
    """Two FROST rounds and aggregation with nonce randomness derived from ``label``."""
    nonces: dict[int, frost.SigningNonces] = {}
    commitments: list[frost.SigningCommitment] = []
    for i in sorted(signers):
        hiding = sha256(f"dpkid/x509-tss-vectors/{label}/hiding/{i}".encode())
        binding = sha256(f"dpkid/x509-tss-vectors/{label}/binding/{i}".encode())
        nonces[i], comm = frost.commit(i, shares[i], hiding, binding)
        commitments.append(comm)
    sig_shares = {
        i: frost.sign(i, shares[i], group_pk, nonces[i], msg, commitments) for i in sorted(signers)
    }
    sig = frost.aggregate(commitments, msg, group_pk, sig_shares)
    if not frost.verify_signature(group_pk, msg, sig):
        raise AssertionError("FROST signature does not verify")
    return sig


def _subject_ed25519(label: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(sha256(b"x509-tss/" + label.encode()))


def _subject_p256(label: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(sha256(b"x509-tss/p256/" + label.encode()), "big") % (2**255)
    return ec.derive_private_key(scalar, ec.SECP256R1())


def dv_record() -> Certificate:
    return Certificate(
        cert_id=sha256(b"x509-tss/cert/dv"),
        app_id=sha256(b"x509-tss/app/dv"),
        owner=sha256(b"x509-tss/owner")[:20],
        cert_type="DV",
        issued_type="DV",
        domains=["example.com", "*.example.com", "www.example.org"],
        spki=spki_der_of(_subject_ed25519("dv")),
        org=None,
        not_before_ms=LEAF_NOT_BEFORE_MS,
        not_after_ms=LEAF_NOT_BEFORE_MS + 90 * DAY_MS,
        issued_height=42,
        endorsers=[],
        attestors=[sha256(b"x509-tss/validator/1")[:20]],
        dv_power=10,
        total_power=10,
        log_index=7,
    )


def ev_record() -> Certificate:
    return Certificate(
        cert_id=sha256(b"x509-tss/cert/ev"),
        app_id=sha256(b"x509-tss/app/ev"),
        owner=sha256(b"x509-tss/owner")[:20],
        cert_type="EV",
        issued_type="EV",
        domains=["bank.example"],
        spki=spki_der_of(_subject_p256("ev")),
        org=OrgIdentity(
            name="Example Bank AG",
            country="DE",
            state="Bayern",
            locality="München",
            registration_id="HRB 12345",
            jurisdiction="DE-BY",
        ),
        not_before_ms=LEAF_NOT_BEFORE_MS + 1234,
        not_after_ms=LEAF_NOT_BEFORE_MS + 1234 + 365 * DAY_MS,
        issued_height=43,
        endorsers=sorted(sha256(f"x509-tss/endorser/{k}".encode())[:20] for k in range(3)),
        attestors=[sha256(b"x509-tss/validator/1")[:20]],
        dv_power=10,
        total_power=10,
        log_index=8,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, msgspec.Struct):
        return {k: _jsonable(v) for k, v in msgspec.structs.asdict(value).items()}
    return value


def record_fields(cert: Certificate) -> dict[str, Any]:
    """The record field by field: bytes as hex, ``org`` as an object or null."""
    fields: dict[str, Any] = _jsonable(cert)
    return fields


def _signed(
    shares: dict[int, int], group_pk: frost.Element, label: str, tbs: bytes
) -> dict[str, str]:
    sig = frost_sign(shares, group_pk, tbs, label)
    return {"tbs": tbs.hex(), "signature": sig.hex(), "der": tss.assemble(tbs, sig).hex()}


def _leaf(
    shares: dict[int, int], group_pk: frost.Element, label: str, cert: Certificate, version: int
) -> dict[str, Any]:
    tbs = tss.leaf_tbs(cert, CHAIN_ID, version, group_pk)
    return {
        "record": record_fields(cert),
        "record_encoding": codec.encode(cert).hex(),
        "version": version,
        "serial": hex(tss.leaf_serial(cert.cert_id, version)),
        **_signed(shares, group_pk, label, tbs),
    }


def x509_tss_vectors() -> dict[str, Any]:
    secret, coefficients = dealer()
    shares, group_pk = group()
    dv, ev = dv_record(), ev_record()
    revoked = [
        (tss.leaf_serial(dv.cert_id, 0), LEAF_NOT_BEFORE_MS // 1000 + 3600, 1),
        (tss.leaf_serial(ev.cert_id, 1), LEAF_NOT_BEFORE_MS // 1000 + 7200, 0),
    ]
    number, this_update_s = 5, LEAF_NOT_BEFORE_MS // 1000 + 86_400
    next_update_s = this_update_s + 7 * 86_400
    crl_tbs = tss.crl_tbs(CHAIN_ID, group_pk, number, this_update_s, next_update_s, revoked)
    crl = {
        "number": number,
        "this_update_s": this_update_s,
        "next_update_s": next_update_s,
        "revoked": [{"serial": hex(s), "revoked_s": t, "reason": r} for s, t, r in revoked],
    }
    serial_cases = [
        {"cert_id": c.cert_id.hex(), "version": v, "serial": hex(tss.leaf_serial(c.cert_id, v))}
        for c in (dv, ev)
        for v in (0, 1, 2)
    ]
    return {
        "description": (
            "Threshold-signed X.509 (protocol/SPEC.md §14.6): TBS bytes of the root, a DV leaf "
            "(version 0), an EV leaf (version 1) and a CRL for a fixed 2-of-3 FROST group key; "
            "signatures by participants 1 and 3 (FROST nonces are not unique: only the TBS and "
            "the assembly are normative; any valid Ed25519 signature may be assembled). "
            "Integers given as hex strings are big-endian; scalars are little-endian hex."
        ),
        "chain_id": CHAIN_ID,
        "dealer": {
            "secret_key": frost.serialize_scalar(secret).hex(),
            "coefficients": [frost.serialize_scalar(c).hex() for c in coefficients],
            "max_participants": MAX_PARTICIPANTS,
            "min_participants": MIN_PARTICIPANTS,
            "signers": list(SIGNERS),
        },
        "group_public_key": bytes(group_pk).hex(),
        "group_spki": tss.ED25519.spki(group_pk).hex(),
        "key_id": tss.key_id(group_pk).hex(),
        "root": {
            "not_before_s": ROOT_NOT_BEFORE_S,
            "serial": hex(tss.root_serial(group_pk)),
            **_signed(
                shares, group_pk, "root", tss.root_tbs(CHAIN_ID, group_pk, ROOT_NOT_BEFORE_S)
            ),
        },
        "dv_leaf": _leaf(shares, group_pk, "dv", dv, 0),
        "ev_leaf": _leaf(shares, group_pk, "ev", ev, 1),
        "crl": {**crl, **_signed(shares, group_pk, "crl", crl_tbs)},
        "leaf_serials": serial_cases,
    }


def vector_text() -> str:
    return json.dumps(x509_tss_vectors(), indent=1, sort_keys=True) + "\n"

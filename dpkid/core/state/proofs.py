"""Record proofs against an app hash: make them on a node, verify them anywhere.

A verifier needs only the app hash (from a header it trusts) and the proof:
the proof carries the state key, the record bytes (if present) and the sparse
Merkle path. ``verify_*`` return the decoded record, or None when the proof
shows the record is absent, and raise :class:`ProofError` for anything a
lying or broken node could send.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from dpkid.core import codec
from dpkid.core.crypto import sha256
from dpkid.core.state.machine import (
    State,
    key_account,
    key_app,
    key_cert,
    key_domain,
    record_type_for_key,
)
from dpkid.core.state.smt import SmtProof, verify_proof
from dpkid.core.types import Account, Application, Certificate, DomainIndex

T = TypeVar("T")

MAX_PROOF_BYTES = 1024 * 1024  # the largest record (an Application) fits


class ProofError(ValueError):
    """The proof does not show what it claims against this app hash."""


class RecordProof(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    key: Annotated[bytes, Meta(max_length=512)]
    present: bool
    value: Annotated[bytes, Meta(max_length=MAX_PROOF_BYTES)]  # b"" when absent
    path: SmtProof


def make_proof(state: State, key: bytes) -> RecordProof:
    value, path = state.prove(key)
    return RecordProof(key, value is not None, value or b"", path)


def encode_proof(p: RecordProof) -> bytes:
    return codec.encode(p)


def decode_proof(data: bytes) -> RecordProof:
    try:
        return codec.decode(data, RecordProof, max_bytes=MAX_PROOF_BYTES)
    except codec.DecodeError as exc:
        raise ProofError(f"undecodable proof: {exc}") from None


def verify_record(app_hash: bytes, proof: RecordProof, expected_key: bytes) -> Any:
    """Check ``proof`` for ``expected_key`` against ``app_hash``; return record or None."""
    if proof.key != expected_key:
        raise ProofError("proof is for a different key")
    if not proof.present and proof.value:
        raise ProofError("an absence proof must not carry a value")
    value_hash = sha256(proof.value) if proof.present else None
    if not verify_proof(app_hash, sha256(proof.key), value_hash, proof.path):
        raise ProofError("Merkle path does not lead to the app hash")
    if not proof.present:
        return None
    try:
        typ = record_type_for_key(proof.key)
    except KeyError:
        raise ProofError("unknown record kind") from None
    try:
        return codec.decode(proof.value, typ, max_bytes=MAX_PROOF_BYTES)
    except codec.DecodeError as exc:
        # The state committed to bytes we cannot read: the chain itself is bad.
        raise ProofError(f"proven record does not decode: {exc}") from None


def _typed(app_hash: bytes, proof: RecordProof, key: bytes, typ: type[T]) -> T | None:
    rec = verify_record(app_hash, proof, key)
    if rec is not None and not isinstance(rec, typ):
        raise ProofError(f"record is not a {typ.__name__}")
    return rec


def verify_cert(app_hash: bytes, cert_id: bytes, proof: RecordProof) -> Certificate | None:
    cert = _typed(app_hash, proof, key_cert(cert_id), Certificate)
    if cert is not None and cert.cert_id != cert_id:
        raise ProofError("certificate record names another id")
    return cert


def verify_domain(app_hash: bytes, domain: str, proof: RecordProof) -> DomainIndex | None:
    return _typed(app_hash, proof, key_domain(domain), DomainIndex)


def verify_account(app_hash: bytes, address: bytes, proof: RecordProof) -> Account | None:
    return _typed(app_hash, proof, key_account(address), Account)


def verify_application(app_hash: bytes, app_id: bytes, proof: RecordProof) -> Application | None:
    return _typed(app_hash, proof, key_app(app_id), Application)

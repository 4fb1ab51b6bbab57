"""`dpkid verify`: check a certificate against the ledger, trusting no node.

The node is asked for data only; every answer is checked (lightclient.py):
the header chain from the trusted genesis, each commit, each validator-set
change, the Merkle proof against the verified header, and the header's age
against the local clock (a node that shows an old state is "stale").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from dpkid.client.lightclient import (
    CertVerdict,
    TrustedState,
    VerifyError,
    advance,
    decode_commit,
    decode_header,
    judge_certificate,
    trust_genesis,
    valset_from_pairs,
)
from dpkid.client.x509 import claimed_type, parse_ledger_ref
from dpkid.core.consensus.messages import header_hash
from dpkid.core.consensus.validity import valset_hash
from dpkid.core.state.proofs import decode_proof
from dpkid.core.types import Genesis, Header

RpcCall = Callable[[str, dict[str, Any]], Any]
DEFAULT_MAX_HEADER_AGE_S = 600
HEADERS_PAGE = 100
MAX_HEADERS = 1_000_000


class CertificateError(VerifyError):
    """The certificate itself cannot be checked against this ledger: it carries
    no dpkid ledger reference, or it names another chain. A fault of the file,
    not of the node asked."""


class NotACertificate(CertificateError):
    """The bytes are not an X.509 certificate (PEM or DER) at all."""


@dataclass
class ParsedCert:
    cert_id: bytes | None
    chain_id: str | None
    domains: list[str]
    spki: bytes
    claimed_type: str | None


def parse_pem(pem: bytes) -> ParsedCert:
    """A certificate's checkable fields from PEM or DER bytes. NotACertificate
    (a VerifyError) completes "FILE is ...": what the bytes are instead."""
    if b"-----BEGIN" in pem:
        try:
            c = x509.load_pem_x509_certificate(pem)
        except ValueError:
            label = pem.split(b"-----BEGIN", 1)[1].split(b"-----", 1)[0].strip()
            if label and label != b"CERTIFICATE" and len(label) < 40 and label.isascii():
                raise NotACertificate(
                    f"not a PEM certificate (it holds a {label.decode()})"
                ) from None
            raise NotACertificate("not a PEM certificate (its PEM block does not parse)") from None
        return parsed_from_x509(c)
    try:
        c = x509.load_der_x509_certificate(pem)
    except ValueError:
        raise NotACertificate("not a PEM certificate (nor a DER one)") from None
    return parsed_from_x509(c)


def parsed_from_x509(c: x509.Certificate) -> ParsedCert:
    try:
        ref = parse_ledger_ref(c)
        try:
            san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            domains = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            domains = []
        spki = c.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise NotACertificate(
            f"a certificate whose key or extensions cannot be read ({exc})"
        ) from None
    return ParsedCert(
        ref["cert_id"] if ref else None,
        ref["chain_id"] if ref else None,
        domains,
        spki,
        claimed_type(c),
    )


def walk_headers(
    rpc: RpcCall, genesis: Genesis, upto: int, on_header: Callable[[Header], None] | None = None
) -> TrustedState:
    """Verify every header 1..upto from the genesis set, following set changes;
    ``on_header`` sees each verified header (progress, hashes)."""
    t = trust_genesis(genesis)
    while t.height < upto:
        page = rpc(
            "headers_get", {"from": t.height + 1, "count": min(HEADERS_PAGE, upto - t.height)}
        )
        items = page.get("headers") if isinstance(page, dict) else None
        if not items:
            raise VerifyError(f"node returned no header {t.height + 1} (it claimed {upto})")
        for item in items:
            if t.height >= upto:
                break
            header = decode_header(item["header_bytes"])
            commit = decode_commit(item["commit_bytes"])
            next_vals = t.vals_next
            if header.next_validators_hash != valset_hash(t.vals_next):
                got = rpc("validators_at", {"height": header.height + 1})
                next_vals = valset_from_pairs(
                    [(bytes.fromhex(v["pubkey"]), int(v["power"])) for v in got["validators"]]
                )
            t = advance(t, header, commit, next_vals)
            if on_header is not None:
                on_header(header)
    return t


def verify_certificate(
    rpc: RpcCall,
    genesis: Genesis,
    parsed: ParsedCert,
    now_ms: int | None = None,
    max_header_age_s: int = DEFAULT_MAX_HEADER_AGE_S,
    on_header: Callable[[Header, int], None] | None = None,
) -> CertVerdict:
    """The verdict on ``parsed``; ``on_header(header, target_height)`` sees each
    header of the light-client walk as it is verified (for progress)."""
    if parsed.chain_id is not None and parsed.chain_id != genesis.chain_id:
        raise CertificateError(
            f"certificate is from chain {parsed.chain_id!r}, we trust {genesis.chain_id!r}"
        )
    cert_id = parsed.cert_id
    if cert_id is None:
        raise CertificateError("certificate carries no dpkid ledger reference")
    res = rpc("cert_proof", {"cert_id": cert_id.hex()})
    header = decode_header(res["header_bytes"])
    target = header.height
    trusted = walk_headers(
        rpc, genesis, target, None if on_header is None else lambda hd: on_header(hd, target)
    )
    assert trusted.header is not None
    if header_hash(trusted.header) != header_hash(header):
        raise VerifyError("the proof's header is not the one the verified chain has at that height")
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    if now - header.time_ms > max_header_age_s * 1000:
        raise VerifyError(
            f"stale header: height {header.height} is {(now - header.time_ms) // 1000} s old "
            f"(limit {max_header_age_s} s); the node may be hiding newer blocks"
        )
    try:
        proof = decode_proof(bytes.fromhex(res["proof"]))
    except ValueError as exc:
        raise VerifyError(f"bad proof encoding: {exc}") from None
    except Exception as exc:  # ProofError and friends
        raise VerifyError(str(exc)) from None
    verdict = judge_certificate(
        header, proof, cert_id, parsed.domains, parsed.spki, parsed.claimed_type
    )
    if verdict.valid and not parsed.domains:
        # A certificate that names no domain authenticates nothing a client can check.
        verdict.valid, verdict.status = False, "mismatch"
        verdict.reason = "the certificate names no domain (no subjectAltName)"
    return verdict

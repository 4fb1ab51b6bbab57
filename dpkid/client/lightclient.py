"""Light-client verification: trust a validator set, not a node (pure).

Starting from the genesis validator set, each header is accepted only if:
it links to the previous one by hash, its height and chain id are right, its
validators_hash names the set we trust for that height, and its commit carries
signatures of more than 2/3 of that set's power. The next set is accepted
only if it hashes to the header's next_validators_hash (which that commit
signed). A record proof is then checked against the app hash of a verified
header. Anything a lying node could change breaks one of these checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dpkid.core import codec
from dpkid.core.consensus.messages import Commit, header_hash
from dpkid.core.consensus.validity import valset_hash, verify_commit
from dpkid.core.consensus.valset import ValidatorInfo, ValidatorSet
from dpkid.core.crypto import address_of, verify_ed25519
from dpkid.core.state.machine import cert_status
from dpkid.core.state.proofs import ProofError, RecordProof, verify_cert
from dpkid.core.types import Certificate, Genesis, Header


class VerifyError(Exception):
    """The data does not verify: the node lied or is broken."""


def valset_from_pairs(pairs: Sequence[tuple[bytes, int]]) -> ValidatorSet:
    try:
        return ValidatorSet([ValidatorInfo(address_of(pk), pk, p) for pk, p in pairs])
    except ValueError as exc:
        raise VerifyError(f"bad validator set: {exc}") from None


def genesis_valset(g: Genesis) -> ValidatorSet:
    return valset_from_pairs([(v.pubkey, v.power) for v in g.validators])


@dataclass
class TrustedState:
    chain_id: str
    height: int  # last verified header height (0 = only genesis)
    header: Header | None
    block_hash: bytes
    vals_next: ValidatorSet  # the set that must sign height + 1


def trust_genesis(g: Genesis) -> TrustedState:
    return TrustedState(g.chain_id, 0, None, b"", genesis_valset(g))


def advance(
    t: TrustedState, header: Header, commit: Commit, next_vals: ValidatorSet | None
) -> TrustedState:
    """Verify the next header and its commit; ``next_vals`` is the set the node
    claims for the height after it (checked against next_validators_hash)."""
    h = t.height + 1
    if header.chain_id != t.chain_id:
        raise VerifyError(f"header {h}: chain id {header.chain_id!r} is not {t.chain_id!r}")
    if header.height != h:
        raise VerifyError(f"expected header {h}, got {header.height}")
    if header.prev_block_hash != t.block_hash:
        raise VerifyError(f"header {h} does not link to header {h - 1}")
    if t.header is not None and header.time_ms <= t.header.time_ms:
        raise VerifyError(f"header {h} time does not increase")
    if header.validators_hash != valset_hash(t.vals_next):
        raise VerifyError(f"header {h} names a validator set we do not trust")
    bh = header_hash(header)
    if commit.height != h or not verify_commit(t.chain_id, commit, t.vals_next, bh, verify_ed25519):
        raise VerifyError(f"commit for header {h} lacks signatures of more than 2/3 of the power")
    if next_vals is None:
        next_vals = t.vals_next
    if header.next_validators_hash != valset_hash(next_vals):
        raise VerifyError(f"validator set offered for {h + 1} does not match header {h}")
    return TrustedState(t.chain_id, h, header, bh, next_vals)


@dataclass
class CertVerdict:
    valid: bool
    status: str  # valid | revoked | expired | not_yet_valid | unknown | mismatch
    reason: str
    height: int  # the verified header the verdict is judged at
    time_ms: int
    cert: Certificate | None

    def as_json(self) -> dict[str, Any]:
        from dpkid.core.jsonview import to_json

        return {
            "valid": self.valid,
            "status": self.status,
            "reason": self.reason,
            "height": self.height,
            "time_ms": self.time_ms,
            "cert_type": self.cert.cert_type if self.cert else None,
            "certificate": to_json(self.cert) if self.cert else None,
        }


def judge_certificate(
    header: Header,
    proof: RecordProof,
    cert_id: bytes,
    domains: Sequence[str] = (),
    spki: bytes | None = None,
    claimed_type: str | None = None,
) -> CertVerdict:
    """Decide valid / revoked / unknown / expired / mismatch against a verified header."""
    try:
        cert = verify_cert(header.app_hash, cert_id, proof)
    except ProofError as exc:
        raise VerifyError(f"certificate proof does not verify: {exc}") from None
    t = header.time_ms
    if cert is None:
        return CertVerdict(
            False, "unknown", "no such certificate on the ledger", header.height, t, None
        )
    st = cert_status(cert, t)
    if st != "valid":
        why = {
            "revoked": f"revoked ({_reason_name(cert.revocation_reason)})",
            "expired": "expired at header time",
            "not_yet_valid": "not yet valid at header time",
        }[st]
        return CertVerdict(False, st, why, header.height, t, cert)
    from dpkid.core.domains import domain_matches

    for d in domains:
        if not any(domain_matches(p, d) or p == d for p in cert.domains):
            return CertVerdict(
                False, "mismatch", f"{d} is not named by the ledger record", header.height, t, cert
            )
    if spki is not None and spki != cert.spki:
        return CertVerdict(
            False, "mismatch", "public key differs from the ledger record", header.height, t, cert
        )
    if claimed_type is not None and claimed_type != cert.cert_type:
        if cert.issued_type == claimed_type and cert.cert_type == "DV":
            return CertVerdict(
                True,
                "valid",
                f"degraded: issued {cert.issued_type}, now valid as DV only",
                header.height,
                t,
                cert,
            )
        return CertVerdict(
            False,
            "mismatch",
            f"type {claimed_type} but the ledger says {cert.cert_type}",
            header.height,
            t,
            cert,
        )
    return CertVerdict(True, "valid", f"valid {cert.cert_type} certificate", header.height, t, cert)


def _reason_name(code: int) -> str:
    from dpkid.core.state.machine import REASON_NAMES

    return REASON_NAMES.get(code, f"reason code {code}")


def decode_header(hexstr: str) -> Header:
    try:
        return codec.decode(bytes.fromhex(hexstr), Header)
    except (ValueError, codec.DecodeError) as exc:
        raise VerifyError(f"undecodable header: {exc}") from None


def decode_commit(hexstr: str) -> Commit:
    try:
        return codec.decode(bytes.fromhex(hexstr), Commit)
    except (ValueError, codec.DecodeError) as exc:
        raise VerifyError(f"undecodable commit: {exc}") from None

"""`dpkid verify`: check a certificate against the ledger, trusting no node.

The node is asked for data only; every answer is checked (lightclient.py):
the header chain from the trusted genesis, each commit, each validator-set
change, the Merkle proof against the verified header, and the header's age
against the local clock (a node that shows an old state is "stale").
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from dpkid.client.lightclient import (
    CertVerdict,
    LightBlock,
    TrustedState,
    TrustExpired,
    VerifyError,
    advance,
    check_light_block,
    decode_commit,
    decode_header,
    judge_certificate,
    skip_to,
    trust_genesis,
    valset_from_pairs,
    verify_light_block,
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


def fetch_light_block(rpc: RpcCall, height: int) -> LightBlock:
    """Header ``height``, its commit, and the sets it names (each checked by
    the caller against the header's hashes)."""
    page = rpc("headers_get", {"from": height, "count": 1})
    items = page.get("headers") if isinstance(page, dict) else None
    if not items or not isinstance(items, list):
        raise VerifyError(f"node returned no header {height}")
    header = decode_header(items[0]["header_bytes"])
    commit = decode_commit(items[0]["commit_bytes"])

    def vals_at(h: int) -> Any:
        got = rpc("validators_at", {"height": h})
        try:
            return valset_from_pairs(
                [(bytes.fromhex(v["pubkey"]), int(v["power"])) for v in got["validators"]]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VerifyError(f"undecodable validator set for height {h}: {exc}") from None

    return LightBlock(header, commit, vals_at(height), vals_at(height + 1))


# ------------------------------------------------------------------ trust roots (LIGHT.md §6)

STORE_VERSION = 1


@dataclass(frozen=True)
class TrustRoot:
    """What verification starts from: the genesis, or a checkpoint (a height
    and header hash published out of band), of the chain ``genesis`` names."""

    genesis: Genesis
    checkpoint: tuple[int, bytes] | None = None

    def ident(self) -> str:
        from dpkid.core import codec
        from dpkid.core.crypto import sha256

        g = sha256(codec.encode(self.genesis)).hex()
        if self.checkpoint is None:
            return f"genesis:{g}"
        return f"checkpoint:{g}:{self.checkpoint[0]}:{self.checkpoint[1].hex()}"


def default_store_path(chain_id: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dpkid" / f"light-{chain_id}.json"


def load_store(path: Path, root: TrustRoot) -> TrustedState | None:
    """The trusted state saved by an earlier run from the same trust root, or
    None (no file, another root, or a file that does not parse: start cold)."""
    try:
        doc = json.loads(path.read_text())
        if doc.get("version") != STORE_VERSION or doc.get("root") != root.ident():
            return None
        header = decode_header(doc["header_bytes"])
        vals = valset_from_pairs([(bytes.fromhex(pk), int(p)) for pk, p in doc["vals_next"]])
    except (OSError, ValueError, KeyError, TypeError, VerifyError):
        return None
    if header.chain_id != root.genesis.chain_id or header.height != doc.get("height"):
        return None
    return TrustedState(
        header.chain_id, header.height, header, header_hash(header), vals, header.time_ms
    )


def save_store(path: Path, root: TrustRoot, t: TrustedState) -> None:
    """Atomically, mode 0600: the next run starts from here (warm)."""
    if t.header is None:
        return
    from dpkid.core import codec

    doc = {
        "version": STORE_VERSION,
        "root": root.ident(),
        "chain_id": t.chain_id,
        "height": t.height,
        "time_ms": t.time_ms,
        "header_bytes": codec.encode(t.header).hex(),
        "vals_next": [[v.pubkey.hex(), v.power] for v in t.vals_next.members],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent runs do not clash
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def establish(rpc: RpcCall, root: TrustRoot, now_ms: int) -> TrustedState:
    """The trusted state a cold start begins with (LIGHT.md §6)."""
    if root.checkpoint is None:
        return trust_genesis(root.genesis)
    height, want = root.checkpoint
    lb = fetch_light_block(rpc, height)
    got = check_light_block(root.genesis.chain_id, lb)
    if got != want:
        raise VerifyError(
            f"header {height} hashes to {got.hex()}, not the checkpoint {want.hex()}: "
            "this node serves another chain than the checkpoint's"
        )
    period = root.genesis.policy.trusting_period_ms
    if now_ms - lb.header.time_ms >= period:
        raise TrustExpired(
            f"the checkpoint (height {height}) is {(now_ms - lb.header.time_ms) // 1000} s old, "
            f"beyond the trusting period of {period // 1000} s: use a newer checkpoint"
        )
    return TrustedState(lb.header.chain_id, height, lb.header, got, lb.next_vals, lb.header.time_ms)


def verify_certificate(
    rpc: RpcCall,
    genesis: Genesis,
    parsed: ParsedCert,
    now_ms: int | None = None,
    max_header_age_s: int = DEFAULT_MAX_HEADER_AGE_S,
    on_header: Callable[[Header, int], None] | None = None,
    checkpoint: tuple[int, bytes] | None = None,
    store: Path | None = None,
    stats: dict[str, Any] | None = None,
) -> CertVerdict:
    """The verdict on ``parsed``. The proof's header is reached by skipping
    verification (LIGHT.md) from the trusted store when it holds a state from
    the same trust root, else from the checkpoint or the genesis; ``store``
    is then updated. ``stats`` receives how many light blocks were fetched."""
    if parsed.chain_id is not None and parsed.chain_id != genesis.chain_id:
        raise CertificateError(
            f"certificate is from chain {parsed.chain_id!r}, we trust {genesis.chain_id!r}"
        )
    cert_id = parsed.cert_id
    if cert_id is None:
        raise CertificateError("certificate carries no dpkid ledger reference")
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    root = TrustRoot(genesis, checkpoint)
    res = rpc("cert_proof", {"cert_id": cert_id.hex()})
    header = decode_header(res["header_bytes"])
    target = header.height
    warm = load_store(store, root) if store is not None else None
    if warm is not None and warm.height > target:
        warm = None  # the node answers from behind what we trusted: go from the root
    start = warm if warm is not None else establish(rpc, root, now)
    period = genesis.policy.trusting_period_ms
    if start.height == target and start.header is not None:
        trusted, fetched = start, 0
        if now - start.time_ms >= period:
            verify_light_block(start, fetch_light_block(rpc, target), now, period)
    else:
        trusted, fetched = skip_to(start, target, lambda h: fetch_light_block(rpc, h), now, period)
    if stats is not None:
        stats.update({"light_blocks": fetched, "warm": warm is not None, "from": start.height})
    assert trusted.header is not None
    if on_header is not None:
        on_header(trusted.header, target)
    if header_hash(trusted.header) != header_hash(header):
        raise VerifyError("the proof's header is not the one the verified chain has at that height")
    if store is not None:
        save_store(store, root, trusted)
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

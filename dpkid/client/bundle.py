"""Offline proof bundles (protocol/LIGHT.md §7).

One JSON file holds a certificate's ledger record proof, the header it is
proven against with that header's commit, and the light blocks that lead
from a trust root (the genesis or a checkpoint) to that header, in the order
bisection verifies them. ``verify_bundle`` checks it with no network: the
same rules as a live light client (LIGHT.md §3-4), answered from the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from dpkid.client.lightclient import (
    CertVerdict,
    LightBlock,
    TrustedState,
    VerifyError,
    check_light_block,
    decode_commit,
    decode_header,
    judge_certificate,
    skip_to,
    trust_genesis,
    valset_from_pairs,
)
from dpkid.client.verify import RpcCall, TrustRoot, fetch_light_block
from dpkid.core import codec
from dpkid.core.consensus.messages import header_hash
from dpkid.core.consensus.valset import ValidatorSet
from dpkid.core.state.proofs import decode_proof

FORMAT: Final = "dpkid-bundle/v1"
MAX_BUNDLE_BYTES: Final = 1024 * 1024
MAX_BUNDLE_BLOCKS: Final = 4096


def _vals_json(vs: ValidatorSet) -> list[list[Any]]:
    return [[v.pubkey.hex(), v.power] for v in vs.members]


def _block_json(lb: LightBlock) -> dict[str, Any]:
    return {
        "header": codec.encode(lb.header).hex(),
        "commit": codec.encode(lb.commit).hex(),
        "vals": _vals_json(lb.vals),
        "next_vals": _vals_json(lb.next_vals),
    }


def _block_from(doc: Any) -> LightBlock:
    try:
        return LightBlock(
            decode_header(doc["header"]),
            decode_commit(doc["commit"]),
            valset_from_pairs([(bytes.fromhex(pk), int(p)) for pk, p in doc["vals"]]),
            valset_from_pairs([(bytes.fromhex(pk), int(p)) for pk, p in doc["next_vals"]]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VerifyError(f"bundle: a light block does not parse: {exc}") from None


def make_bundle(
    root: TrustRoot,
    path: list[LightBlock],
    cert_id: bytes,
    proof_hex: str,
    x509_pem: str | None = None,
) -> dict[str, Any]:
    """The bundle for a proof against ``path[-1]``'s header. ``path`` is what
    bisection fetched from ``root`` (the checkpoint's block first, if any)."""
    out: dict[str, Any] = {
        "format": FORMAT,
        "chain_id": root.genesis.chain_id,
        "trust_root": root.ident(),
        "light_blocks": [_block_json(lb) for lb in sorted(path, key=lambda b: b.header.height)],
        "proof_height": path[-1].header.height if path else 0,
        "cert_id": cert_id.hex(),
        "proof": proof_hex,
    }
    if x509_pem:
        out["certificate_pem"] = x509_pem
    return out


def export_bundle(rpc: RpcCall, root: TrustRoot, cert_id: bytes, now_ms: int) -> dict[str, Any]:
    """Fetch a proof and the light blocks bisection needs for it, recording
    each, and return the bundle. Everything is verified before it is written."""
    from dpkid.client.verify import establish

    fetched: dict[int, LightBlock] = {}

    def record(h: int) -> LightBlock:
        lb = fetch_light_block(rpc, h)
        fetched[h] = lb
        return lb

    res = rpc("cert_proof", {"cert_id": cert_id.hex()})
    header = decode_header(res["header_bytes"])
    start = establish(lambda m, p: rpc(m, p), root, now_ms)
    if root.checkpoint is not None:
        fetched[root.checkpoint[0]] = fetch_light_block(rpc, root.checkpoint[0])
    period = root.genesis.policy.trusting_period_ms
    t, _ = skip_to(start, header.height, record, now_ms, period)
    assert t.header is not None
    if header_hash(t.header) != header_hash(header):
        raise VerifyError("the proof's header is not the one the verified chain has")
    if header.height not in fetched:
        fetched[header.height] = fetch_light_block(rpc, header.height)
    pem = None
    try:
        pem = str(rpc("cert_x509", {"cert_id": cert_id.hex()})["leaf_pem"])
    except Exception:  # not signed yet, or an older node: the bundle stands without it
        pem = None
    bundle = make_bundle(root, list(fetched.values()), cert_id, res["proof"], pem)
    bundle["proof_height"] = header.height
    return bundle


def verify_bundle(
    doc: Any,
    root: TrustRoot,
    now_ms: int,
    on_step: Callable[[TrustedState], None] | None = None,
) -> CertVerdict:
    """The verdict a bundle proves, checked offline (LIGHT.md §7)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise VerifyError(f"not a dpkid bundle (format {FORMAT!r} expected)")
    if doc.get("chain_id") != root.genesis.chain_id:
        raise VerifyError(f"bundle is of chain {doc.get('chain_id')!r}, we trust another")
    if doc.get("trust_root") != root.ident():
        raise VerifyError(
            "the bundle leads from another trust root than the one given "
            f"({str(doc.get('trust_root'))[:90]}); give the genesis or checkpoint it names"
        )
    items = doc.get("light_blocks")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BUNDLE_BLOCKS:
        raise VerifyError("bundle: light_blocks must list 1 to 4096 blocks")
    blocks: dict[int, LightBlock] = {}
    for item in items:
        lb = _block_from(item)
        blocks[lb.header.height] = lb

    def fetch(h: int) -> LightBlock:
        if h not in blocks:
            raise VerifyError(f"bundle: header {h} is needed and not in the bundle")
        return blocks[h]

    chain_id = root.genesis.chain_id
    period = root.genesis.policy.trusting_period_ms
    if root.checkpoint is None:
        start = trust_genesis(root.genesis)
    else:
        ch, want = root.checkpoint
        lb = fetch(ch)
        if check_light_block(chain_id, lb) != want:
            raise VerifyError("bundle: its checkpoint block does not hash to the checkpoint")
        start = TrustedState(chain_id, ch, lb.header, want, lb.next_vals, lb.header.time_ms)
    target = doc.get("proof_height")
    if not isinstance(target, int) or target not in blocks:
        raise VerifyError("bundle: proof_height names no light block of the bundle")
    t, _ = skip_to(start, target, fetch, now_ms, period)
    if on_step is not None:
        on_step(t)
    assert t.header is not None
    try:
        cert_id = bytes.fromhex(doc["cert_id"])
        proof = decode_proof(bytes.fromhex(doc["proof"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise VerifyError(f"bundle: bad cert_id or proof: {exc}") from None
    except Exception as exc:  # ProofError and friends
        raise VerifyError(f"bundle: {exc}") from None
    domains: list[str] = []
    spki = None
    claimed = None
    pem = doc.get("certificate_pem")
    if isinstance(pem, str) and pem:
        from dpkid.client.verify import parse_pem

        parsed = parse_pem(pem.encode())
        if parsed.cert_id is not None and parsed.cert_id != cert_id:
            raise VerifyError("bundle: the certificate names another ledger record")
        domains, spki, claimed = parsed.domains, parsed.spki, parsed.claimed_type
    return judge_certificate(t.header, proof, cert_id, domains, spki, claimed)


def load_bundle(data: bytes) -> Any:
    if len(data) > MAX_BUNDLE_BYTES:
        raise VerifyError(f"bundle larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise VerifyError(f"bundle is not JSON: {exc}") from None

"""Golden vectors: recompute every output from the inputs stored in protocol/vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dpkid.core import codec
from dpkid.core.crypto import SigningKey, address_of, sha256, verify_ed25519
from dpkid.core.state.machine import apply_block, cert_id_for, genesis_state
from dpkid.core.state.smt import SparseMerkleTree
from dpkid.core.types import Genesis, Header, Receipt, decode_tx, tx_sign_bytes
from dpkid.dev.vectors import build_vectors

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def test_tx_encodings_sign_bytes_and_hashes() -> None:
    v = load("encoding.json")
    assert len(v["txs"]) >= 10
    for case in v["txs"]:
        raw = bytes.fromhex(case["tx"])
        tx = decode_tx(raw)
        assert tx.chain_id == v["chain_id"]
        assert codec.encode(tx) == raw, case["name"]
        assert tx_sign_bytes(tx.unsigned()).hex() == case["sign_bytes"], case["name"]
        assert sha256(raw).hex() == case["tx_hash"], case["name"]
        key = SigningKey(bytes.fromhex(case["signer_seed"]))
        assert key.public_key.hex() == case["signer_pubkey"]
        # Ed25519 is deterministic: re-signing the sign-bytes reproduces the vector.
        assert key.sign(bytes.fromhex(case["sign_bytes"])).hex() == case["signature"]
        assert verify_ed25519(key.public_key, bytes.fromhex(case["sign_bytes"]), tx.sig)
        assert address_of(key.public_key).hex() == case["signer_address"]


def test_addresses_and_ids() -> None:
    v = load("encoding.json")
    for a in v["address_vectors"]:
        assert address_of(bytes.fromhex(a["pubkey"])).hex() == a["address"]
    ids = v["ids"]["app_id_for_tx_hash"]
    app_id = sha256(b"dpkid/app/v1\x00" + bytes.fromhex(ids["tx_hash"]))
    assert app_id.hex() == ids["app_id"]
    assert cert_id_for(app_id).hex() == ids["cert_id"]


def test_smt_roots() -> None:
    v = load("smt.json")
    assert SparseMerkleTree().root_hash.hex() == v["empty_root"]
    for case in v["cases"]:
        items = [(sha256(bytes.fromhex(k)), sha256(bytes.fromhex(x))) for k, x in case["items"]]
        assert SparseMerkleTree().update(items).root_hash.hex() == case["root"]


@pytest.mark.parametrize("name", ["chain.json", "tss-chain.json"])
def test_chain_app_hashes_and_receipts(name: str) -> None:
    v = load(name)
    genesis = codec.decode(bytes.fromhex(v["genesis"]), Genesis)
    st = genesis_state(genesis)
    assert st.app_hash.hex() == v["app_hashes"][0]
    seen_codes: set[int] = set()
    for i, blk in enumerate(v["blocks"]):
        header = codec.decode(bytes.fromhex(blk["header"]), Header)
        txs = [bytes.fromhex(t) for t in blk["txs"]]
        st, receipts, app_hash = apply_block(st, header, txs)
        assert app_hash.hex() == v["app_hashes"][i + 1], f"block {i + 1}"
        assert [r.code for r in receipts] == blk["receipt_codes"]
        assert [codec.encode(r).hex() for r in receipts] == blk["receipts"]
        for r in blk["receipts"]:
            seen_codes.add(codec.decode(bytes.fromhex(r), Receipt).code)
    assert st.log.size == v["final_log_size"] and st.log.root().hex() == v["final_log_root"]
    assert 0 in seen_codes
    if name == "chain.json":  # it also carries a malformed tx
        assert 1 in seen_codes
    else:
        # The threshold-signed root, leaf and CRL verify with plain Ed25519.
        from dpkid.core.frost import verify_signature
        from dpkid.core.state import tss as rules

        key = st.get(rules.K_TSS_KEY)
        for what in ("root_der", "leaf_der", "crl_der"):
            der = bytes.fromhex(v[what])
            assert st.get(rules.K_TSS_ROOT).der == der if what == "root_der" else True
            tbs = _tbs_of(der)
            assert verify_signature(key.group_pk, tbs, der[-64:]), what


def _tbs_of(der: bytes) -> bytes:
    """The first element of the outer SEQUENCE (TBSCertificate / TBSCertList)."""
    from cryptography import x509

    try:
        return x509.load_der_x509_certificate(der).tbs_certificate_bytes
    except ValueError:
        return x509.load_der_x509_crl(der).tbs_certlist_bytes


@pytest.mark.parametrize(
    "name", ["encoding.json", "smt.json", "chain.json", "tss-chain.json", "bundle.json"]
)
def test_vectors_are_current(name: str) -> None:
    """The committed files equal what the code generates: a change in encoding
    or rules must come with regenerated vectors (dpkid vectors) and a spec note."""
    text = json.dumps(build_vectors()[name], indent=1, sort_keys=True) + "\n"
    assert (VECTORS / name).read_text() == text


def test_bundle_vector_verifies_and_any_flipped_byte_fails() -> None:
    from dpkid.client.bundle import verify_bundle
    from dpkid.client.lightclient import VerifyError
    from dpkid.client.verify import TrustRoot
    from dpkid.core.types import Genesis

    v = json.loads((VECTORS / "bundle.json").read_text())
    root = TrustRoot(codec.decode(bytes.fromhex(v["genesis"]), Genesis))
    got = verify_bundle(v["bundle"], root, v["now_ms"])
    assert {"valid": got.valid, "status": got.status} == {
        "valid": v["expect"]["valid"],
        "status": v["expect"]["status"],
    }
    for field in ("header", "commit"):
        bad = json.loads(json.dumps(v["bundle"]))
        text = bad["light_blocks"][0][field]
        bad["light_blocks"][0][field] = text[:-2] + ("00" if text[-2:] != "00" else "01")
        with pytest.raises(VerifyError):
            verify_bundle(bad, root, v["now_ms"])

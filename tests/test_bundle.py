"""Offline proof bundles (protocol/LIGHT.md §7): a bundle proves its verdict
with no network, within the trusting period, and any tampering is refused."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from dpkid.client.bundle import FORMAT, make_bundle, verify_bundle
from dpkid.client.lightclient import LightBlock, TrustExpired, VerifyError
from dpkid.client.verify import TrustRoot
from dpkid.core import codec
from dpkid.core.consensus.messages import header_hash
from dpkid.core.consensus.validity import valset_hash
from dpkid.core.state.machine import key_cert
from dpkid.core.state.proofs import RecordProof
from dpkid.core.types import Header
from dpkid.dev.synthchain import sign_commit, valset_of
from tests.test_machine import issue, make_chain

BUNDLE_LIMIT_BYTES = 16 * 1024


def bundle_for(revoke: bool = False) -> tuple[dict[str, Any], TrustRoot, int, bytes]:
    """A real certificate's proof against a header the genesis validators signed."""
    c = make_chain()
    cid = issue(c)
    if revoke:
        from dpkid.core.types import Revoke

        c.tx(c.keys.accounts[0], Revoke(cid, 1))
        c.block()
    value, path = c.state.prove(key_cert(cid))
    proof = RecordProof(key_cert(cid), value is not None, value or b"", path)
    keys = [(k, 10) for k in c.keys.validators]
    vs = valset_of(keys)
    h = c.state.height + 1
    header = Header(
        chain_id=c.chain_id,
        height=h,
        time_ms=c.state.time_ms + 1_000,
        proposer=c.keys.validators[0].address,
        prev_block_hash=b"\x11" * 32,
        app_hash=c.state.app_hash,
        validators_hash=valset_hash(vs),
        next_validators_hash=valset_hash(vs),
    )
    commit = sign_commit(c.chain_id, h, header_hash(header), keys, header.time_ms)
    root = TrustRoot(c.genesis)
    doc = make_bundle(root, [LightBlock(header, commit, vs, vs)], cid, codec.encode(proof).hex())
    return doc, root, header.time_ms + 1_000, cid


def test_a_bundle_verifies_offline_and_is_small() -> None:
    doc, root, now, cid = bundle_for()
    assert doc["format"] == FORMAT
    v = verify_bundle(doc, root, now)
    assert v.valid and v.cert is not None and v.cert.cert_id == cid
    assert len(json.dumps(doc).encode()) <= BUNDLE_LIMIT_BYTES
    revoked, root2, now2, _ = bundle_for(revoke=True)
    v = verify_bundle(revoked, root2, now2)
    assert not v.valid and v.status == "revoked"


def flip_hex(s: str, at: int) -> str:
    return s[:at] + ("0" if s[at] != "0" else "1") + s[at + 1 :]


@pytest.mark.parametrize(
    "tamper",
    [
        "proof",
        "header",
        "commit",
        "vals",
        "cert_id",
        "trust_root",
        "chain_id",
        "format",
        "missing_block",
        "proof_height",
    ],
)
def test_a_tampered_bundle_is_refused(tamper: str) -> None:
    doc, root, now, _ = bundle_for()
    bad = copy.deepcopy(doc)
    lb = bad["light_blocks"][0]
    if tamper == "proof":
        bad["proof"] = flip_hex(bad["proof"], len(bad["proof"]) // 2)
    elif tamper == "header":
        lb["header"] = flip_hex(lb["header"], len(lb["header"]) - 10)
    elif tamper == "commit":
        lb["commit"] = flip_hex(lb["commit"], len(lb["commit"]) - 10)
    elif tamper == "vals":
        lb["vals"][0][1] = 1000
    elif tamper == "cert_id":
        bad["cert_id"] = "00" * 32
    elif tamper == "trust_root":
        bad["trust_root"] = "genesis:" + "00" * 32
    elif tamper == "chain_id":
        bad["chain_id"] = "other-chain"
    elif tamper == "format":
        bad["format"] = "dpkid-bundle/v0"
    elif tamper == "missing_block":
        bad["light_blocks"] = []
    elif tamper == "proof_height":
        bad["proof_height"] = 1
    try:
        v = verify_bundle(bad, root, now)
    except VerifyError:
        return
    # A changed cert id proves, at most, that no such certificate exists.
    assert tamper == "cert_id" and not v.valid and v.status == "unknown"


def test_a_bundle_past_the_trusting_period_is_refused() -> None:
    doc, root, now, _ = bundle_for()
    late = root.genesis.genesis_time_ms + root.genesis.policy.trusting_period_ms
    with pytest.raises(TrustExpired):
        verify_bundle(doc, root, max(now, late))

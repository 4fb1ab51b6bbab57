"""Golden vectors: fixed inputs and the exact bytes, hashes and roots they give.

``build_vectors()`` derives them from label keys (Ed25519 signing is
deterministic), so regenerating gives the same files. The tests do not
regenerate: they read the JSON and recompute each output from its input.
"""

from __future__ import annotations

from typing import Any

from dpkid.core import codec
from dpkid.core.crypto import SigningKey, address_of, sha256
from dpkid.core.keys import spki_der_of
from dpkid.core.state.machine import cert_id_for
from dpkid.core.state.smt import SparseMerkleTree
from dpkid.core.types import (
    AddEndorser,
    Attestation,
    AuthzAttest,
    AuthzCheck,
    AuthzRequest,
    CertApply,
    CertRenew,
    Delegated,
    DvAttest,
    Endorse,
    EndorserRevoke,
    EndorseWithdraw,
    GovPropose,
    GovVote,
    GrantCreate,
    GrantRevoke,
    OrgIdentity,
    RemoveEndorser,
    Revoke,
    SetValidator,
    Transfer,
    TxBody,
    UnsignedTx,
    sign_tx,
    tx_sign_bytes,
)
from dpkid.dev.devchain import DevChain, dev_genesis
from dpkid.dev.labelkeys import p256_subject_key, subject_key

VECTOR_CHAIN_ID = "dpkid-vectors"


def _tx_vector(name: str, key: SigningKey, nonce: int, fee: int, body: TxBody) -> dict[str, Any]:
    tx = sign_tx(key, VECTOR_CHAIN_ID, nonce, fee, body)
    raw = codec.encode(tx)
    utx = UnsignedTx(tx.chain_id, tx.pubkey, tx.nonce, tx.fee, tx.body)
    return {
        "name": name,
        "signer_seed": key.seed.hex(),
        "signer_pubkey": key.public_key.hex(),
        "signer_address": address_of(key.public_key).hex(),
        "sign_bytes": tx_sign_bytes(utx).hex(),
        "signature": tx.sig.hex(),
        "tx": raw.hex(),
        "tx_hash": sha256(raw).hex(),
    }


def encoding_vectors() -> dict[str, Any]:
    k = SigningKey.from_label("vector-signer")
    other = SigningKey.from_label("vector-other")
    h = sha256(b"vector-app")
    spki = spki_der_of(subject_key("a").public_key())
    org = OrgIdentity("Example Bank AG", "CH", "Zurich", "Zurich", "CHE-123.456.789", "CH-ZH")
    bodies: list[tuple[str, TxBody]] = [
        ("transfer", Transfer(other.address, 12_345)),
        ("cert_apply_dv", CertApply("DV", ["example.com", "www.example.com"], spki, 90, 1_000)),
        ("cert_apply_ev", CertApply("EV", ["bank.example"], spki, 30, 20_000, org)),
        ("cert_apply_wildcard", CertApply("DV", ["*.example.org"], spki, 7, 1_000)),
        ("cert_renew_rotate", CertRenew(h, 90, 1_000, spki_der_of(subject_key("b").public_key()))),
        (
            "dv_attest",
            DvAttest(
                [
                    Attestation(h, True, "http-01"),
                    Attestation(sha256(h), False, "dns-01", "NXDOMAIN"),
                ]
            ),
        ),
        ("endorse", Endorse(h, True, "documents checked")),
        ("endorse_withdraw", EndorseWithdraw(h, "registration lapsed")),
        ("revoke", Revoke(h, 1)),
        ("endorser_revoke", EndorserRevoke(h, 9)),
        ("gov_add_endorser", GovPropose(AddEndorser(other.public_key, "New Endorser"))),
        ("gov_remove_endorser", GovPropose(RemoveEndorser(other.address, True), "caught")),
        ("gov_set_validator", GovPropose(SetValidator(other.public_key, 5))),
        ("gov_vote", GovVote(h, True)),
    ]
    return {
        "description": "Transaction encodings: decode 'tx' to Tx; its sign-bytes, signature and "
        "sha256 hash must match. Keys are Ed25519 seeds (RFC 8032, deterministic).",
        "chain_id": VECTOR_CHAIN_ID,
        "address_vectors": [
            {"pubkey": x.public_key.hex(), "address": x.address.hex()} for x in (k, other)
        ],
        "ids": {
            "app_id_for_tx_hash": {
                "tx_hash": h.hex(),
                "app_id": sha256(b"dpkid/app/v1\x00" + h).hex(),
                "cert_id": cert_id_for(sha256(b"dpkid/app/v1\x00" + h)).hex(),
            }
        },
        "txs": [_tx_vector(n, k, i, 10, b) for i, (n, b) in enumerate(bodies)],
    }


def smt_vectors() -> dict[str, Any]:
    cases = []
    items: list[tuple[bytes, bytes]] = []
    for i in range(5):
        key = f"key-{i}".encode()
        val = f"value-{i}".encode()
        items.append((key, val))
        tree = SparseMerkleTree().update([(sha256(k), sha256(v)) for k, v in items])
        cases.append(
            {
                "items": [[k.hex(), v.hex()] for k, v in items],
                "root": tree.root_hash.hex(),
            }
        )
    return {
        "description": "Sparse Merkle tree roots over sha256(key) -> sha256(value).",
        "empty_root": bytes(32).hex(),
        "cases": cases,
    }


def chain_vectors() -> dict[str, Any]:
    """A short chain through every kind of transaction, from genesis."""
    genesis, keys = dev_genesis(chain_id=VECTOR_CHAIN_ID)
    c = DevChain(genesis, keys)
    v, e, a = keys.validators, keys.endorsers, keys.accounts
    spki = spki_der_of(subject_key("dv").public_key())
    spki_ev = spki_der_of(p256_subject_key("ev").public_key())
    org = OrgIdentity("Example Bank AG", "CH", "Zurich", "Zurich", "CHE-123.456.789", "CH-ZH")

    c.tx(a[0], Transfer(a[1].address, 5_000))
    r_dv = c.tx(a[0], CertApply("DV", ["example.com", "www.example.com"], spki, 90, 1_000))
    r_ev = c.tx(a[1], CertApply("EV", ["bank.example"], spki_ev, 30, 20_000, org))
    c.tx(a[2], CertApply("DV", ["nobody.example"], spki, 90, 1_000))
    c.raw(b"\x93garbage")
    c.block()
    app_dv = sha256(b"dpkid/app/v1\x00" + sha256(r_dv))
    app_ev = sha256(b"dpkid/app/v1\x00" + sha256(r_ev))
    app_bad = sha256(b"dpkid/app/v1\x00" + sha256(c.blocks[-1][1][3]))
    for val in v[:3]:
        c.tx(
            val,
            DvAttest([Attestation(app_dv, True, "http-01"), Attestation(app_ev, True, "dns-01")]),
        )
    for val in v[1:4]:
        c.tx(val, DvAttest([Attestation(app_bad, False, "http-01", "404")]))
    for end in e[:3]:
        c.tx(end, Endorse(app_ev, True, "verified"))
    c.block()
    cert_dv = cert_id_for(app_dv)
    cert_ev = cert_id_for(app_ev)
    c.tx(e[0], EndorseWithdraw(cert_ev, "withdrawn"))
    c.tx(a[0], Revoke(cert_dv, 5))
    c.tx(v[0], GovPropose(SetValidator(SigningKey.from_label("validator-new").public_key, 10)))
    c.block()
    # SPEC §7.9: an authorization, checked (one failure with its reason), then cited.
    r_az = c.tx(a[3], AuthzRequest("authz.example", "dpkid", "http-01"))
    c.block()
    authz_id = sha256(b"dpkid/authz/v1\x00" + sha256(r_az))
    for val in v[:3]:
        c.tx(val, AuthzAttest([AuthzCheck(authz_id, True)]))
    c.tx(v[3], AuthzAttest([AuthzCheck(authz_id, False, "connection", "timeout")]))
    c.block()
    c.tx(a[3], CertApply("DV", ["authz.example"], spki, 30, 1_000, None, [authz_id]))
    c.block()
    # SPEC §7.10: a grant; its delegate requests an ACME-format authorization
    # and applies for the owner, who owns and pays; then the owner ends the
    # grant and the delegate's next tx is refused before execution (BAD_GRANT).
    from dpkid.core.challenges import acme_token_for

    delegate = SigningKey.from_label("vector-delegate")
    r_g = c.tx(a[2], GrantCreate(delegate.public_key, 5_000, 30, b"\x5e" * 80))
    c.block()
    grant_id = sha256(b"dpkid/grant/v1\x00" + sha256(r_g))
    token = acme_token_for(a[2].public_key, bytes(range(16)))
    thumb = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    r_daz = c.tx(
        delegate, Delegated(grant_id, AuthzRequest("acme.example", "acme", "dns-01", token, thumb))
    )
    c.block()
    d_authz = sha256(b"dpkid/authz/v1\x00" + sha256(r_daz))
    for val in v:
        c.tx(val, AuthzAttest([AuthzCheck(d_authz, True)]))
    c.block()
    r_dapp = c.tx(
        delegate,
        Delegated(grant_id, CertApply("DV", ["acme.example"], spki, 30, 1_000, None, [d_authz])),
    )
    c.block()
    d_cert = cert_id_for(sha256(b"dpkid/app/v1\x00" + sha256(r_dapp)))
    c.tx(delegate, Delegated(grant_id, Revoke(d_cert, 4)))
    c.tx(a[2], GrantRevoke(grant_id))
    c.block()
    c.tx(delegate, Delegated(grant_id, Revoke(d_cert, 1)))
    c.block()
    return _chain_record(
        c,
        genesis,
        keys,
        "Apply each block (header and tx bytes) in order from the genesis; the app "
        "hash after genesis and after each block, and every receipt, must match.",
    )


def _chain_record(c: DevChain, genesis: Any, keys: Any, description: str) -> dict[str, Any]:
    from dpkid.core.state.machine import apply_block

    blocks = []
    for (header, txs), receipts in zip(c.blocks, c.receipts, strict=True):
        blocks.append(
            {
                "header": codec.encode(header).hex(),
                "txs": [t.hex() for t in txs],
                "receipt_codes": [r.code for r in receipts],
                "receipts": [codec.encode(r).hex() for r in receipts],
            }
        )
    st = DevChain(genesis, keys).state
    hashes = [st.app_hash.hex()]
    for header, txs in c.blocks:
        st, _, app_hash = apply_block(st, header, txs)
        hashes.append(app_hash.hex())
    return {
        "description": description,
        "genesis": codec.encode(genesis).hex(),
        "blocks": blocks,
        "app_hashes": hashes,
        "final_log_size": st.log.size,
        "final_log_root": st.log.root().hex(),
    }


def tss_chain_vectors() -> dict[str, Any]:
    """The threshold key from genesis (SPEC §16): the four validators' agents,
    with fixed entropy, deal, acknowledge, post nonces and sign the root, a DV
    certificate and, after its revocation, a CRL."""
    from dpkid.core.node.tss_agent import TssAgent
    from dpkid.core.state import tss as rules

    genesis, keys = dev_genesis(chain_id=VECTOR_CHAIN_ID)
    c = DevChain(genesis, keys)
    v, a = keys.validators, keys.accounts
    agents = [TssAgent(k, sha256(b"vector-entropy-" + k.public_key)) for k in v]

    def step() -> None:
        for ag in agents:
            for body in ag.on_commit(c.state).bodies:
                c.tx(ag.key, body)
        c.block()

    spki = spki_der_of(subject_key("dv").public_key())
    r_dv = c.tx(a[0], CertApply("DV", ["tss.example"], spki, 90, 1_000))
    step()
    app = sha256(b"dpkid/app/v1\x00" + sha256(r_dv))
    for val in v[:3]:
        c.tx(val, DvAttest([Attestation(app, True, "http-01")]))
    cert_id = cert_id_for(app)
    for _ in range(8):
        step()
    tc = c.state.get(rules.key_x509(cert_id))
    assert tc is not None and tc.der, "vector chain: the certificate was not signed"
    c.tx(a[0], Revoke(cert_id, 1))
    for _ in range(6):
        step()
    crl = c.state.get(rules.K_TSS_CRL)
    assert crl is not None and crl.number >= 2, "vector chain: no CRL after the revocation"
    out = _chain_record(
        c,
        genesis,
        keys,
        "Apply each block in order from the genesis, as chain.json. The blocks run the "
        "threshold key's DKG, nonce posting and signing (SPEC §16).",
    )
    out["root_der"] = c.state.get(rules.K_TSS_ROOT).der.hex()
    out["leaf_der"] = tc.der.hex()
    out["crl_der"] = crl.der.hex()
    return out


def x509_tss_vectors() -> dict[str, Any]:
    from dpkid.dev.x509_vectors import x509_tss_vectors as build

    return build()


def build_vectors() -> dict[str, dict[str, Any]]:
    return {
        "encoding.json": encoding_vectors(),
        "smt.json": smt_vectors(),
        "chain.json": chain_vectors(),
        "tss-chain.json": tss_chain_vectors(),
        "bundle.json": bundle_vectors(),
        "x509-tss.json": x509_tss_vectors(),
    }


def bundle_vectors() -> dict[str, Any]:
    """LIGHT.md §7: a bundle for a DV certificate, from the genesis, with one
    light block the genesis validators signed; and what verifying it gives."""
    from dpkid.client.bundle import make_bundle, verify_bundle
    from dpkid.client.lightclient import LightBlock
    from dpkid.client.verify import TrustRoot
    from dpkid.core.consensus.messages import header_hash
    from dpkid.core.consensus.validity import valset_hash
    from dpkid.core.state.machine import key_cert
    from dpkid.core.state.proofs import RecordProof
    from dpkid.core.types import Header
    from dpkid.dev.synthchain import sign_commit, valset_of

    genesis, keys = dev_genesis(chain_id=VECTOR_CHAIN_ID)
    c = DevChain(genesis, keys)
    v, a = keys.validators, keys.accounts
    spki = spki_der_of(subject_key("bundle").public_key())
    raw = c.tx(a[0], CertApply("DV", ["bundle.example"], spki, 30, 1_000))
    c.block()
    app_id = sha256(b"dpkid/app/v1\x00" + sha256(raw))
    for val in v:
        c.tx(val, DvAttest([Attestation(app_id, True, "dns-01")]))
    c.block()
    cert_id = cert_id_for(app_id)
    value, path = c.state.prove(key_cert(cert_id))
    proof = RecordProof(key_cert(cert_id), value is not None, value or b"", path)
    signers = [(k, vr.power) for k, vr in zip(v, genesis.validators, strict=True)]
    vs = valset_of(signers)
    h = c.state.height + 1
    header = Header(
        chain_id=c.chain_id,
        height=h,
        time_ms=c.state.time_ms + 1_000,
        proposer=v[0].address,
        prev_block_hash=header_hash(c.blocks[-1][0]),
        app_hash=c.state.app_hash,
        validators_hash=valset_hash(vs),
        next_validators_hash=valset_hash(vs),
    )
    commit = sign_commit(c.chain_id, h, header_hash(header), signers, header.time_ms)
    root = TrustRoot(genesis)
    doc = make_bundle(
        root, [LightBlock(header, commit, vs, vs)], cert_id, codec.encode(proof).hex()
    )
    now_ms = header.time_ms + 1_000
    verdict = verify_bundle(doc, root, now_ms)
    return {
        "description": "Verify `bundle` offline from the trust root `genesis` at time `now_ms`: "
        "the verdict must be `expect`. Flipping any byte of the proof, a header or a commit "
        "must make verification fail.",
        "genesis": codec.encode(genesis).hex(),
        "now_ms": now_ms,
        "bundle": doc,
        "expect": {"valid": verdict.valid, "status": verdict.status, "cert_id": cert_id.hex()},
    }

"""Benchmarks that print figures (never timed assertions in tests).

``dpkid bench state``: the state machine's apply rate for pre-verified txs,
and the rate of record-proof generation and verification.
Method: every figure is the median over repeated blocks or batches in one
run, with signatures verified once beforehand (SignatureCache) so only the
state machine is timed.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

from dpkid.core import codec
from dpkid.core.crypto import SignatureCache, SigningKey, sha256, verify_ed25519
from dpkid.core.keys import spki_der_of
from dpkid.core.state.machine import State, apply_block, cert_id_for, genesis_state, key_account
from dpkid.core.state.proofs import make_proof, verify_account, verify_cert
from dpkid.core.types import (
    Attestation,
    CertApply,
    DvAttest,
    Genesis,
    GenesisAccount,
    GenesisValidator,
    Header,
    Policy,
    Transfer,
    decode_tx,
    sign_tx,
    tx_sign_bytes,
)
from dpkid.dev.devchain import GENESIS_TIME_MS
from dpkid.dev.labelkeys import subject_key

CHAIN = "dpkid-bench"


def _world(
    n_accounts: int, n_validators: int = 4
) -> tuple[Genesis, list[SigningKey], list[SigningKey]]:
    vals = [SigningKey.from_label(f"bench-val-{i}") for i in range(n_validators)]
    accts = [SigningKey.from_label(f"bench-acct-{i}") for i in range(n_accounts)]
    g = Genesis(
        chain_id=CHAIN,
        genesis_time_ms=GENESIS_TIME_MS,
        validators=[GenesisValidator(v.public_key, 10) for v in vals],
        endorsers=[],
        accounts=[GenesisAccount(k.address, 10**12) for k in [*accts, *vals]],
        policy=Policy(max_certs_per_domain=1_000_000),
    )
    return g, vals, accts


def bench_apply(
    n_txs: int = 20_000, block_size: int = 1_000, apply_share_pct: int = 20
) -> dict[str, Any]:
    """Mix: transfers and DV cert applications (apply_share_pct %), each block
    followed by one holding the validators' batched attestations that issue
    those certificates. Signatures are verified once up front into a
    SignatureCache, as the mempool does, so apply_block sees cache hits."""
    g, vals, accts = _world(max(64, block_size))
    spki = spki_der_of(subject_key("bench").public_key())
    nonces = {k.address: 0 for k in [*accts, *vals]}

    def signed(key: SigningKey, body: Any) -> bytes:
        raw = codec.encode(sign_tx(key, CHAIN, nonces[key.address], 10, body))
        nonces[key.address] += 1
        return raw

    blocks: list[list[bytes]] = []
    made = 0
    while made < n_txs:
        blk: list[bytes] = []
        apps: list[bytes] = []
        while len(blk) < block_size and made < n_txs:
            k = accts[made % len(accts)]
            if (made * 7919) % 100 < apply_share_pct:
                raw = signed(k, CertApply("DV", [f"host{made}.bench.example"], spki, 30, 1_000))
                apps.append(sha256(b"dpkid/app/v1\x00" + sha256(raw)))
            else:
                raw = signed(k, Transfer(accts[(made + 1) % len(accts)].address, 1))
            blk.append(raw)
            made += 1
        attest = [
            signed(v, DvAttest([Attestation(x, True, "http-01") for x in apps[j : j + 64]]))
            for v in vals[:3]
            for j in range(0, len(apps), 64)
        ]
        blocks += [blk, attest]

    cache = SignatureCache(max_entries=sum(len(b) for b in blocks) + 10)
    t0 = time.perf_counter()
    n_sig = 0
    for blk in blocks:
        for raw in blk:
            tx = decode_tx(raw)
            cache.check(sha256(raw), tx.pubkey, tx_sign_bytes(tx.unsigned()), tx.sig)
            n_sig += 1
    sig_s = time.perf_counter() - t0

    st = genesis_state(g)
    gc.collect()
    gc.freeze()
    rates: list[float] = []
    total = ok = 0
    busy_s = 0.0
    gc.collect()
    for h, blk in enumerate(blocks, start=1):
        header = Header(CHAIN, h, GENESIS_TIME_MS + h * 1000, vals[h % len(vals)].address)
        t = time.perf_counter()
        st, receipts, _ = apply_block(st, header, blk, cache)
        dt = time.perf_counter() - t
        busy_s += dt
        total += len(blk)
        ok += sum(1 for r in receipts if r.code == 0)
        if len(blk) >= block_size // 2:
            rates.append(len(blk) / dt)
    return {
        "txs": total,
        "ok_receipts": ok,
        "certs_issued": st.log.size,
        "full_blocks_timed": len(rates),
        "apply_tx_per_s_median": round(statistics.median(rates)),
        "apply_tx_per_s_min": round(min(rates)),
        "apply_tx_per_s_overall": round(total / busy_s),
        "sig_verify_per_s_one_core": round(n_sig / sig_s),
        "state_records": len(st),
    }


def bench_proofs(n_records: int = 20_000, n_proofs: int = 5_000) -> dict[str, Any]:
    """Proof generation and verification over a state holding n_records certs."""
    st = state_with_certs(n_records)
    cert_keys = [k for k, _ in st.items() if k.startswith(b"cert:")]
    # Millions of long-lived tree nodes: move them out of the collector's
    # reach so a full collection does not land inside the timed loop.
    gc.collect()
    gc.freeze()
    sample = cert_keys[:: max(1, len(cert_keys) // n_proofs)][:n_proofs]
    t = time.perf_counter()
    proofs = [make_proof(st, k) for k in sample]
    gen_s = time.perf_counter() - t
    root = st.app_hash
    t = time.perf_counter()
    for k, p in zip(sample, proofs, strict=True):
        verify_cert(root, k[len(b"cert:") :], p)
    ver_s = time.perf_counter() - t
    absent = [
        make_proof(st, key_account(sha256(bytes([i % 256, i // 256]))[:20])) for i in range(200)
    ]
    for p in absent:
        assert verify_account(root, p.key[len(b"acct:") :], p) is None
    sizes = sorted(len(codec.encode(p)) for p in proofs)
    return {
        "certs_in_state": len(cert_keys),
        "state_records": len(st),
        "proofs": len(sample),
        "prove_per_s": round(len(sample) / gen_s),
        "verify_per_s": round(len(sample) / ver_s),
        "proof_bytes_median": sizes[len(sizes) // 2],
    }


def state_with_certs(n_certs: int) -> State:
    """A state holding n issued certificates, built through real blocks."""
    g, vals, accts = _world(64)
    spki = spki_der_of(subject_key("bench").public_key())
    st = genesis_state(g)
    nonces = {k.address: 0 for k in [*accts, *vals]}
    h = 0
    per_block = 2_000
    made = 0
    trust_all = lambda *_a: True  # noqa: E731 -- signatures are not what is measured here
    while made < n_certs:
        blk = []
        apps = []
        for j in range(min(per_block, n_certs - made)):
            k = accts[j % len(accts)]
            raw = codec.encode(
                sign_tx(
                    k,
                    CHAIN,
                    nonces[k.address],
                    10,
                    CertApply("DV", [f"c{made + j}.bench.example"], spki, 30, 1_000),
                )
            )
            nonces[k.address] += 1
            apps.append(sha256(b"dpkid/app/v1\x00" + sha256(raw)))
            blk.append(raw)
        h += 1
        st, _, _ = apply_block(
            st, Header(CHAIN, h, GENESIS_TIME_MS + h * 1000, vals[0].address), blk, trust_all
        )
        blk = []
        for v in vals[:3]:
            for j in range(0, len(apps), 64):
                blk.append(
                    codec.encode(
                        sign_tx(
                            v,
                            CHAIN,
                            nonces[v.address],
                            10,
                            DvAttest([Attestation(x, True, "dns-01") for x in apps[j : j + 64]]),
                        )
                    )
                )
                nonces[v.address] += 1
        h += 1
        st, _, _ = apply_block(
            st, Header(CHAIN, h, GENESIS_TIME_MS + h * 1000, vals[0].address), blk, trust_all
        )
        made += len(apps)
    return st


def bench_ed25519(n: int = 5_000) -> dict[str, Any]:
    """Ed25519 verify rates: PyNaCl (chosen) vs cryptography, one core."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    k = SigningKey.from_label("bench")
    msgs = [sha256(i.to_bytes(4, "big")) for i in range(n)]
    sigs = [k.sign(m) for m in msgs]
    t = time.perf_counter()
    for m, s in zip(msgs, sigs, strict=True):
        verify_ed25519(k.public_key, m, s)
    nacl_s = time.perf_counter() - t
    pk = ed25519.Ed25519PublicKey.from_public_bytes(k.public_key)
    t = time.perf_counter()
    for m, s in zip(msgs, sigs, strict=True):
        pk.verify(s, m)
    crypt_s = time.perf_counter() - t
    return {
        "pynacl_verify_per_s": round(n / nacl_s),
        "cryptography_verify_per_s": round(n / crypt_s),
    }


def bench_codec(n: int = 100_000) -> dict[str, Any]:
    """Typed msgspec decode (with validation and canonical check) vs msgpack + construct."""
    import msgpack

    k = SigningKey.from_label("bench")
    raw = codec.encode(sign_tx(k, CHAIN, 1, 10, Transfer(k.address, 5)))
    t = time.perf_counter()
    for _ in range(n):
        decode_tx(raw)
    ms = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
        msgpack.unpackb(raw, raw=False)
    mp = time.perf_counter() - t
    return {
        "msgspec_decode_validate_canonical_per_s": round(n / ms),
        "msgpack_unpack_only_per_s": round(n / mp),
    }


def bench_proof_scaling(n_certs: int, samples: int = 2_000) -> dict[str, Any]:
    """Proof size and verification time for a certificate proof with n_certs
    certificates in state. The tree holds four records per certificate (the
    certificate, its application, a domain index entry and a log entry), as
    the ledger does; the sampled certificates are real encoded records."""
    from dpkid.core.state.proofs import RecordProof
    from dpkid.core.state.smt import SparseMerkleTree
    from dpkid.core.types import Certificate

    spki = spki_der_of(subject_key("scale").public_key())
    template = Certificate(
        cert_id=b"\x00" * 32,
        app_id=b"\x00" * 32,
        owner=b"\x00" * 20,
        cert_type="DV",
        issued_type="DV",
        domains=["scale.example"],
        spki=spki,
        org=None,
        not_before_ms=GENESIS_TIME_MS,
        not_after_ms=GENESIS_TIME_MS + 90 * 86_400_000,
        issued_height=1,
        endorsers=[],
        attestors=[b"\x01" * 20, b"\x02" * 20, b"\x03" * 20],
        dv_power=30,
        total_power=40,
        log_index=0,
    )
    step = max(1, n_certs // samples)
    chosen: dict[bytes, bytes] = {}
    items: list[tuple[bytes, bytes]] = []
    t0 = time.perf_counter()
    for i in range(n_certs):
        cid = sha256(b"scale-cert" + i.to_bytes(8, "big"))
        if i % step == 0 and len(chosen) < samples:
            import msgspec

            value = codec.encode(msgspec.structs.replace(template, cert_id=cid, log_index=i))
            chosen[cid] = value
            vh = sha256(value)
        else:
            vh = sha256(cid)
        items.append((sha256(b"cert:" + cid), vh))
        for prefix in (b"app:", b"dom:", b"log:"):
            items.append((sha256(prefix + cid), sha256(prefix + cid + b"v")))
    tree = SparseMerkleTree().update(items)
    build_s = time.perf_counter() - t0
    del items
    root = tree.root_hash
    proofs = []
    for cid, value in chosen.items():
        key = b"cert:" + cid
        proofs.append((cid, RecordProof(key, True, value, tree.prove(sha256(key)))))
    times: list[float] = []
    for cid, p in proofs:
        t = time.perf_counter()
        cert = verify_cert(root, cid, p)
        times.append(time.perf_counter() - t)
        assert cert is not None and cert.cert_id == cid
    sizes = sorted(len(codec.encode(p)) for _, p in proofs)
    depths = sorted(len(p.path.siblings) for _, p in proofs)
    return {
        "certs_in_state": n_certs,
        "records_in_tree": n_certs * 4,
        "build_s": round(build_s, 1),
        "proof_bytes_median": sizes[len(sizes) // 2],
        "proof_siblings_median": depths[len(depths) // 2],
        "verify_ms_median": round(statistics.median(times) * 1000, 3),
        "samples": len(proofs),
    }


def bench_tss(validators: int = 4, certs: int = 200) -> dict[str, Any]:
    """Threshold signing of issued certificates (SPEC §16), in one process:
    every validator's agent (FROST round two per share) and the ledger's work
    (verifying each share per RFC 9591 §5.4, aggregating, building the TBS),
    on a DevChain. In a network each validator signs only its own shares, in
    parallel, and every node repeats the ledger part; so ``ledger_*`` is the
    per-node ceiling and ``one_process_*`` a lower bound for the whole."""
    from dpkid.core.node.tss_agent import TssAgent
    from dpkid.core.state import tss as rules
    from dpkid.core.types import Attestation, CertApply, DvAttest, TssSign
    from dpkid.dev.devchain import DevChain

    c = DevChain.create(n_validators=validators, n_accounts=4)
    agents = [TssAgent(k, sha256(b"bench/" + k.public_key)) for k in c.keys.validators]
    agent_s = 0.0

    def step() -> list[Any]:
        nonlocal agent_s
        t = time.perf_counter()
        bodies = [(a.key, b) for a in agents for b in a.on_commit(c.state).bodies]
        agent_s += time.perf_counter() - t
        for k, b in bodies:
            c.tx(k, b)
        return bodies

    for _ in range(40):  # key, root, nonces
        step()
        c.block()
        root = c.state.get(rules.K_TSS_ROOT)
        q = c.state.get(rules.key_nonce(c.keys.validators[0].address))
        if root is not None and root.der and q is not None and len(q.slots) >= 64:
            break
    spki = spki_der_of(subject_key("bench").public_key())
    apps = []
    accts = c.keys.accounts
    for i in range(certs):
        raw = c.tx(accts[i % len(accts)], CertApply("DV", [f"b{i}.example"], spki, 30, 1_000))
        apps.append(sha256(b"dpkid/app/v1\x00" + sha256(raw)))
    c.block()
    for v in c.keys.validators:
        for j in range(0, certs, 64):
            c.tx(v, DvAttest([Attestation(a, True, "dns-01") for a in apps[j : j + 64]]))
    c.block()
    issued_height = c.state.height
    agent_s = 0.0
    ledger_s = 0.0
    shares = 0
    t_all = time.perf_counter()
    blocks = 0
    while blocks < 60:
        bodies = step()
        shares += sum(len(it.shares) for _, b in bodies if isinstance(b, TssSign) for it in b.items)
        t = time.perf_counter()
        c.block()
        ledger_s += time.perf_counter() - t
        blocks += 1
        q = c.state.get(rules.K_TSS_QUEUE)
        if q.next_start == q.next_seq and not q.active:
            break
    total_s = time.perf_counter() - t_all
    signed = sum(1 for a in apps if (tc := c.state.get(rules.key_x509(cert_id_for(a)))) and tc.der)
    key = c.state.get(rules.K_TSS_KEY)
    return {
        "validators": validators,
        "threshold": key.threshold,
        "certs": certs,
        "certs_signed": signed,
        "blocks_issue_to_all_signed": c.state.height - issued_height,
        "shares": shares,
        "agent_shares_per_s": round(shares / agent_s) if agent_s else 0,
        "ledger_certs_per_s": round(signed / ledger_s, 1) if ledger_s else 0.0,
        "one_process_certs_per_s": round(signed / total_s, 1),
    }

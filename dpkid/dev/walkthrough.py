"""`dpkid walkthrough`: the PKI contracts end to end, in one process.

No network and no consensus: a DevChain commits blocks in virtual time. Each
step checks what it should have done, so the walk-through doubles as a smoke
test, and ``ok`` is true only if every step behaved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpkid.core.crypto import sha256
from dpkid.core.keys import sign_with_private_key, spki_der_of
from dpkid.core.state.machine import REASON_NAMES, cert_id_for, cert_status, key_cert, key_domain
from dpkid.core.state.proofs import make_proof, verify_cert, verify_domain
from dpkid.core.types import (
    Attestation,
    CertApply,
    DvAttest,
    Endorse,
    EndorseWithdraw,
    OrgIdentity,
    Receipt,
    Revoke,
    Transfer,
    revoke_sign_bytes,
)
from dpkid.dev.devchain import DevChain, dev_genesis
from dpkid.dev.labelkeys import p256_subject_key, subject_key


@dataclass
class Step:
    name: str
    ok: bool
    height: int
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def _app_id(raw: bytes) -> bytes:
    return sha256(b"dpkid/app/v1\x00" + sha256(raw))


def run_walkthrough() -> tuple[list[Step], dict[str, Any]]:
    g, keys = dev_genesis(n_validators=4, n_endorsers=3, n_accounts=3)
    c = DevChain(g, keys)
    v, e, a = keys.validators, keys.endorsers, keys.accounts
    alice, bank, mallory = a[0], a[1], a[2]
    steps: list[Step] = []
    pol = c.state.policy

    def step(name: str, ok: bool, detail: str, **data: Any) -> None:
        steps.append(Step(name, ok, c.state.height, detail, data))

    def codes(rs: list[Receipt]) -> list[int]:
        return [r.code for r in rs]

    # 1. a token transfer
    before = c.state.balance(bank.address)
    c.tx(alice, Transfer(bank.address, 25_000))
    rs = c.block()
    step(
        "transfer",
        codes(rs) == [0] and c.state.balance(bank.address) == before + 25_000,
        f"alice -> bank 25000 tokens, fee {pol.min_tx_fee}",
    )

    # 2. DV: apply, three of four validators attest, certificate issued
    dv_key = subject_key("walkthrough-dv")
    raw = c.tx(
        alice,
        CertApply(
            "DV",
            ["shop.example", "www.shop.example"],
            spki_der_of(dv_key.public_key()),
            90,
            pol.fee_dv,
        ),
    )
    c.block()
    dv_app = _app_id(raw)
    step(
        "dv_apply",
        c.state.application(dv_app) is not None and c.state.application(dv_app).status == "pending",  # type: ignore[union-attr]
        f"application {dv_app.hex()[:16]}, escrow {pol.fee_dv}",
    )
    balances_v = [c.state.balance(x.address) for x in v]
    for x in v[:2]:
        c.tx(x, DvAttest([Attestation(dv_app, True, "http-01")]))
    c.block()
    app = c.state.application(dv_app)
    step(
        "dv_two_of_four_not_enough",
        app is not None and app.status == "pending",
        "2 of 4 validators (20 of 40 power) attested: threshold is more than 2/3",
    )
    c.tx(v[2], DvAttest([Attestation(dv_app, True, "dns-01")]))
    c.tx(v[3], DvAttest([Attestation(dv_app, False, "http-01", "timeout from my vantage point")]))
    c.block()
    dv_cert = cert_id_for(dv_app)
    cert = c.state.certificate(dv_cert)
    paid = [c.state.balance(x.address) - b0 for x, b0 in zip(v, balances_v, strict=True)]
    step(
        "dv_issued",
        cert is not None and cert.cert_type == "DV" and cert.org is None,
        f"certificate {dv_cert.hex()[:16]} issued at 30/40 power; names only domains and key",
        validator_income=paid,
    )

    # 3. a bogus application: a minority validator lies, honest ones refuse
    raw = c.tx(
        mallory,
        CertApply(
            "DV", ["shop.example"], spki_der_of(subject_key("evil").public_key()), 90, pol.fee_dv
        ),
    )
    c.block()
    bogus = _app_id(raw)
    c.tx(v[3], DvAttest([Attestation(bogus, True, "http-01")]))
    for x in v[:2]:
        c.tx(x, DvAttest([Attestation(bogus, False, "http-01", "wrong key authorization")]))
    c.block()
    app = c.state.application(bogus)
    step(
        "bogus_rejected",
        app is not None and app.status == "rejected" and app.cert_id == b"",
        "1 lying validator (10/40) cannot issue; 2 honest refusals make it unreachable; "
        "refunded minus processing fee",
    )

    # 4. EV with 3 of 3 endorsers
    ev_key = p256_subject_key("walkthrough-ev")
    org = OrgIdentity("Example Bank AG", "CH", "Zurich", "Zurich", "CHE-123.456.789", "CH-ZH")
    raw = c.tx(
        bank,
        CertApply("EV", ["bank.example"], spki_der_of(ev_key.public_key()), 30, pol.fee_ev, org),
    )
    c.block()
    ev_app = _app_id(raw)
    for x in v[:3]:
        c.tx(x, DvAttest([Attestation(ev_app, True, "dns-01")]))
    c.tx(e[0], Endorse(ev_app, True, "registry extract checked"))
    c.block()
    step(
        "ev_one_endorser_not_enough",
        c.state.application(ev_app).status == "pending",  # type: ignore[union-attr]
        f"DV passed, 1 of k_ev={pol.k_ev} endorsements: not issued",
    )
    for x in e[1:3]:
        c.tx(x, Endorse(ev_app, True, "verified"))
    c.block()
    ev_cert = cert_id_for(ev_app)
    cert = c.state.certificate(ev_cert)
    step(
        "ev_issued",
        cert is not None and cert.cert_type == "EV" and cert.org == org,
        f"EV certificate {ev_cert.hex()[:16]} for {org.name}, endorsed by 3",
    )

    # 5. client-side verification with a proof against the app hash
    root = c.state.app_hash
    p = make_proof(c.state, key_cert(ev_cert))
    got = verify_cert(root, ev_cert, p)
    absent = verify_domain(
        root, "never-applied.example", make_proof(c.state, key_domain("never-applied.example"))
    )
    step(
        "proofs",
        got is not None and got.cert_id == ev_cert and absent is None,
        "inclusion proof for the EV cert and non-inclusion for an unknown domain verify "
        f"against app hash {root.hex()[:16]}",
    )

    # 6. revocation by the holder of the certificate key (not the account)
    sig = sign_with_private_key(dv_key, revoke_sign_bytes(c.chain_id, dv_cert, 1))
    c.tx(mallory, Revoke(dv_cert, 1, sig))
    c.block()
    cert = c.state.certificate(dv_cert)
    step(
        "revoked_by_key_holder",
        cert is not None and cert_status(cert, c.state.time_ms) == "revoked",
        f"revoked with reason {REASON_NAMES[1]}; any holder of the key may do it",
    )

    # 7. an endorsement withdrawn: EV degrades to DV, stays valid
    c.tx(e[0], EndorseWithdraw(ev_cert, "organization under investigation"))
    c.block()
    cert = c.state.certificate(ev_cert)
    step(
        "ev_degraded_to_dv",
        cert is not None
        and cert.cert_type == "DV"
        and cert.org is None
        and cert_status(cert, c.state.time_ms) == "valid",
        "2 of 3 endorsers remain (< k_ev): the certificate is now DV, still valid for its domain",
    )

    # 8. expiry is judged by header time
    c.block(advance_ms=31 * 86_400_000)
    cert = c.state.certificate(ev_cert)
    step(
        "expired_by_header_time",
        cert is not None and cert_status(cert, c.state.time_ms) == "expired",
        "31 days of header time later the 30-day certificate is expired",
    )

    supply_ok = c.state.supply_in_accounts_and_escrow() == c.state.meta.total_supply
    step("supply_conserved", supply_ok, f"total supply {c.state.meta.total_supply} unchanged")
    summary = {
        "ok": all(s.ok for s in steps),
        "chain_id": c.chain_id,
        "height": c.state.height,
        "app_hash": c.state.app_hash.hex(),
        "log_size": c.state.log.size,
        "log_root": c.state.log.root().hex(),
        "balances": {
            "alice": c.state.balance(alice.address),
            "bank": c.state.balance(bank.address),
            "mallory": c.state.balance(mallory.address),
            **{f"validator{i}": c.state.balance(x.address) for i, x in enumerate(v)},
            **{f"endorser{i}": c.state.balance(x.address) for i, x in enumerate(e)},
        },
    }
    return steps, summary

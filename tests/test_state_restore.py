"""A state rebuilt from its encoded records behaves exactly like the original."""

from __future__ import annotations

import pytest

from dpkid.core.crypto import sha256
from dpkid.core.keys import spki_der_of
from dpkid.core.state.machine import State, apply_block, cert_id_for
from dpkid.core.types import (
    Attestation,
    CertApply,
    DvAttest,
    Endorse,
    GovPropose,
    Header,
    OrgIdentity,
    RemoveEndorser,
    Transfer,
)
from dpkid.dev.devchain import DevChain
from dpkid.dev.labelkeys import subject_key


def _busy_chain() -> tuple[DevChain, bytes, bytes]:
    c = DevChain.create()
    v, e, a = c.keys.validators, c.keys.endorsers, c.keys.accounts
    spki = spki_der_of(subject_key("restore").public_key())
    org = OrgIdentity("Org", "DE", registration_id="HRB 1", jurisdiction="DE-BE")
    raw_ov = c.tx(a[0], CertApply("OV", ["ov.example"], spki, 30, 5_000, org))
    raw_pending = c.tx(a[1], CertApply("DV", ["slow.example"], spki, 30, 1_000))
    c.tx(a[2], Transfer(a[3].address, 7))
    c.block()
    app_ov = sha256(b"dpkid/app/v1\x00" + sha256(raw_ov))
    app_pending = sha256(b"dpkid/app/v1\x00" + sha256(raw_pending))
    for x in v[:3]:
        c.tx(x, DvAttest([Attestation(app_ov, True, "dns-01")]))
    for x in e[:2]:
        c.tx(x, Endorse(app_ov, True))
    c.tx(v[0], GovPropose(RemoveEndorser(e[0].address, True)))
    c.block()
    return c, cert_id_for(app_ov), app_pending


def test_restored_state_has_same_hash_log_and_behaviour() -> None:
    c, cert_ov, app_pending = _busy_chain()
    restored = State.from_records(list(c.state.encoded_records()))
    assert restored.app_hash == c.state.app_hash
    assert restored.log.size == c.state.log.size
    assert restored.log.root() == c.state.log.root()
    # The derived indices work: finishing the removal degrades the OV cert on
    # both, and the pending application expires on both at the same block.
    v = c.keys.validators
    original = c.state
    c2_state = restored
    from dpkid.core import codec
    from dpkid.core.types import GovVote, sign_tx

    pid = next(k for k, _ in original.items() if k.startswith(b"gov:"))[4:]

    def nonce(addr: bytes) -> int:
        a = original.account(addr)
        return a.nonce if a else 0

    txs = [
        codec.encode(sign_tx(x, c.chain_id, nonce(x.address), 10, GovVote(pid, True)))
        for x in v[1:3]
    ]
    h_next = original.height + 1
    header = Header(c.chain_id, h_next, original.time_ms + 1_000, v[0].address)
    later = Header(c.chain_id, h_next + 1, original.time_ms + 8 * 86_400_000, v[0].address)
    s1, r1, h1 = apply_block(original, header, txs)
    s2, r2, h2 = apply_block(c2_state, header, txs)
    assert h1 == h2 and r1 == r2 and all(r.code == 0 for r in r2)
    cert = s2.certificate(cert_ov)
    assert cert is not None and cert.cert_type == "DV"
    s1, _, h1 = apply_block(s1, later, [])
    s2, _, h2 = apply_block(s2, later, [])
    assert h1 == h2
    app = s2.application(app_pending)
    assert app is not None and app.status == "expired"


def test_restore_rejects_a_tampered_log() -> None:
    c, _, _ = _busy_chain()
    recs = [(k, v) for k, v in c.state.encoded_records() if k != b"log:" + (0).to_bytes(8, "big")]
    with pytest.raises(ValueError, match="log entry 0 is missing"):
        State.from_records(recs)

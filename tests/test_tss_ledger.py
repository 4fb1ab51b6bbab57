"""The threshold key on the ledger (SPEC §16): DKG, complaints, re-sharing,
signing with a Byzantine signer, CRLs; driven by the validators' real agents."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpkid.core import frost
from dpkid.core.crypto import SigningKey
from dpkid.core.state import tss as rules
from dpkid.core.state.codes import Code
from dpkid.core.state.machine import cert_id_for
from dpkid.core.tss import dkg
from dpkid.core.tss import x509 as tx509
from dpkid.core.tss.weights import committee_for, max_minority_shares
from dpkid.core.types import (
    DvAttest,
    Revoke,
    SetValidator,
    TssCert,
    TssCrl,
    TssDeal,
    TssJustify,
    TssKey,
    TssNonces,
    TssRequest,
    TssRound,
    TssShareItem,
    TssSign,
)
from tests.test_machine import apply_cert, attest_item, issue, make_chain, pass_gov
from tests.tss_util import agents_for, block_events, key_of, root_signed, run_until, step


def _round(c: Any) -> TssRound:
    r: TssRound = c.state.get(rules.K_TSS_ROUND)
    return r


def _events(c: Any, kind: str) -> list[Any]:
    out = [e for e in block_events(c) if e.kind == kind]
    for receipts in c.receipts:
        for r in receipts:
            out += [e for e in r.events if e.kind == kind]
    return out


def _secret_of(agents: dict[bytes, Any], addrs: list[bytes]) -> int:
    pts = []
    for a in addrs:
        s = agents[a].s
        pts += [(s.first_index + j, frost.deserialize_scalar(v)) for j, v in enumerate(s.shares)]
    return frost.polynomial_interpolate_constant(pts)


@pytest.mark.parametrize("n", [4, 7])
def test_validators_reach_one_group_key_and_sign_the_root(n: int) -> None:
    c = make_chain(n_validators=n)
    agents = agents_for(c)
    blocks = run_until(c, agents, root_signed)
    assert blocks <= 6
    key = key_of(c)
    assert key is not None and key.epoch == 1
    # n equal validators: one share each, t = floor((n - 1) / 3) + 1.
    assert key.threshold == (n - 1) // 3 + 1 and [m.count for m in key.members] == [1] * n
    # Every agent holds a share that matches the public verification share,
    # and any t of them interpolate the one secret behind the group key.
    assert {a.s.group_pk for a in agents.values()} == {key.group_pk}
    addrs = sorted(agents)
    secrets = {
        _secret_of(agents, list(sub)) for sub in itertools.combinations(addrs, key.threshold)
    }
    (secret,) = secrets
    assert frost.scalar_base_mult(secret) == key.group_pk
    root = c.state.get(rules.K_TSS_ROOT)
    tbs = tx509.root_tbs(c.chain_id, key.group_pk, root.not_before_s)
    assert root.der == tx509.assemble(tbs, root.der[-64:])
    assert frost.verify_signature(key.group_pk, tbs, root.der[-64:])


def test_a_coalition_below_the_threshold_cannot_sign() -> None:
    c = make_chain(n_validators=7)
    agents = agents_for(c)
    run_until(c, agents, root_signed)
    key = key_of(c)
    assert key is not None and key.threshold == 3
    addrs = sorted(agents)
    msg = b"a certificate nobody decided to issue"
    for size, expect in ((2, False), (3, True)):
        for combo in itertools.combinations(addrs, size):
            got = frost.scalar_base_mult(_secret_of(agents, list(combo)))
            assert (got == key.group_pk) is expect
        sig = _frost_sign(agents, list(addrs[:size]), key, msg)
        assert frost.verify_signature(key.group_pk, msg, sig) is expect


def _frost_sign(agents: dict[bytes, Any], signers: list[bytes], key: TssKey, msg: bytes) -> bytes:
    """Two FROST rounds among ``signers`` only, with their real shares."""
    comms, nonces = [], {}
    for a in signers:
        s = agents[a].s
        sk = frost.deserialize_scalar(s.shares[0])
        n, cm = frost.commit(s.first_index, sk, bytes(32), bytes([s.first_index]) * 32)
        comms.append(cm)
        nonces[a] = (s.first_index, sk, n)
    comms.sort(key=lambda cm: cm.identifier)
    shares = {i: frost.sign(i, sk, key.group_pk, n, msg, comms) for i, sk, n in nonces.values()}
    return frost.aggregate(comms, msg, key.group_pk, shares)


def _bad_dealer(dealer_key: SigningKey, victim: SigningKey, answer: str) -> Any:
    def tamper(k: SigningKey, body: Any) -> Any:
        if k.address != dealer_key.address:
            return body
        if isinstance(body, TssDeal):
            c_members = tamper.members  # type: ignore[attr-defined]
            pos = next(i for i, m in enumerate(c_members) if m.address == victim.address)
            m = c_members[pos]
            junk = dkg.encode_scalars([12345 + j for j in range(len(body.polys) * m.count)])
            boxes = list(body.boxes)
            boxes[pos] = dkg.seal(junk, dkg.x25519_public(victim.public_key), bytes(32))
            return msgspec.structs.replace(body, boxes=boxes)
        if isinstance(body, TssJustify):
            if answer == "silent":
                return None
            if answer == "wrong":
                return msgspec.structs.replace(
                    body, shares=[frost.serialize_scalar(7)] * len(body.shares)
                )
        return body

    return tamper


@pytest.mark.parametrize("answer", ["silent", "wrong"])
def test_a_dealer_that_sends_a_bad_share_is_disqualified_and_the_dkg_completes(
    answer: str,
) -> None:
    c = make_chain(n_validators=4)
    agents = agents_for(c)
    vals = c.keys.validators
    dealer, victim = vals[0], vals[1]
    tamper = _bad_dealer(dealer, victim, answer)
    tamper.members = _round(c).members
    run_until(c, agents, lambda c: key_of(c) is not None, tamper=tamper, max_blocks=60)
    r = _round(c)
    assert r.disqualified == [dealer.address]
    assert [(x.complainer, x.dealer) for x in r.complaints] == [(victim.address, dealer.address)]
    key = key_of(c)
    assert key is not None
    # The key is the sum of the other three dealers' constants only.
    others = [d for d in r.dealt if d != dealer.address]
    consts = [c.state.get(rules.key_deal(r.round, d)).polys[0].commitment[0] for d in others]
    total = consts[0]
    for p in consts[1:]:
        total = frost.element_add(total, p)
    assert key.group_pk == total
    # Everyone, the victim included, ends with a valid share of that key.
    run_until(c, agents, root_signed)
    assert {a.s.group_pk for a in agents.values()} == {key.group_pk}
    assert _events(c, "tss_dealer_disqualified")


def test_a_false_complaint_is_answered_and_the_honest_dealer_stays() -> None:
    c = make_chain(n_validators=4)
    agents = agents_for(c)
    vals = c.keys.validators
    liar, dealer = vals[2], vals[3]

    def tamper(k: SigningKey, body: Any) -> Any:
        if k.address == liar.address and type(body).__name__ == "TssAck":
            return msgspec.structs.replace(body, complaints=[dealer.address])
        return body

    run_until(c, agents, root_signed, tamper=tamper)
    r = _round(c)
    assert r.disqualified == []
    assert [x.answered for x in r.complaints] == [True]
    # The complainer took the published shares and can sign like everyone.
    key = key_of(c)
    assert key is not None and agents[liar.address].s.group_pk == key.group_pk


def test_a_byzantine_signer_is_identified_jailed_and_the_certificate_still_signed() -> None:
    c = make_chain(n_validators=4)
    agents = agents_for(c)
    run_until(c, agents, root_signed)
    bad = c.keys.validators[1]

    def tamper(k: SigningKey, body: Any) -> Any:
        if k.address == bad.address and isinstance(body, TssSign):
            items = [
                TssShareItem(i.request, i.attempt, [frost.serialize_scalar(1)] * len(i.shares))
                for i in i_list(body)
            ]
            return TssSign(items)
        return body

    certs = [issue(c, "DV", (f"s{i}.example",)) for i in range(6)]
    run_until(c, agents, lambda c: all(_signed(c, x) for x in certs), tamper=tamper)
    bads = _events(c, "tss_bad_share")
    assert bads and {e.ref for e in bads} == {bad.address}
    assert c.state.get(b"jail:" + bad.address) is not None
    key = key_of(c)
    assert key is not None
    for cid in certs:
        tc: TssCert = c.state.get(rules.key_x509(cid))
        tbs = _tbs_of_cert(c, cid, tc)
        assert frost.verify_signature(key.group_pk, tbs, tc.der[-64:])


def i_list(body: TssSign) -> list[TssShareItem]:
    return list(body.items)


def _signed(c: Any, cert_id: bytes) -> bool:
    tc: TssCert | None = c.state.get(rules.key_x509(cert_id))
    return tc is not None and bool(tc.der)


def _tbs_of_cert(c: Any, cert_id: bytes, tc: TssCert) -> bytes:
    req: TssRequest = c.state.get(rules.key_req(tc.request))
    assert req.status == "signed" and tx509.assemble(req.tbs, req.sig) == tc.der
    return req.tbs


def test_replacing_a_validator_reshares_the_same_key() -> None:
    c = make_chain(n_validators=4)
    agents = agents_for(c)
    run_until(c, agents, root_signed)
    key1 = key_of(c)
    assert key1 is not None
    root_der = c.state.get(rules.K_TSS_ROOT).der
    newval = SigningKey.from_label("validator-new")
    c.tx(c.keys.validators[0], _fund(newval))
    c.block()
    agents.update(agents_for(c, [newval], seed="new"))
    old = c.keys.validators[3]
    pass_gov(c, SetValidator(newval.public_key, 10))
    pass_gov(c, SetValidator(old.public_key, 0))
    run_until(c, agents, lambda c: (key_of(c) or key1).epoch >= 2 and _reshared(c))
    key2 = key_of(c)
    assert key2 is not None and key2.group_pk == key1.group_pk
    assert old.address not in [m.address for m in key2.members]
    assert newval.address in [m.address for m in key2.members]
    assert c.state.get(rules.K_TSS_ROOT).der == root_der  # the root stays
    step(c, agents)  # the agents see the new key
    assert agents[old.address].s.shares == []  # the leaver forgot its share
    app_id = apply_cert(c, "DV", ("after.example",))
    for k in [*c.keys.validators[:3], newval]:
        c.tx(k, DvAttest([attest_item(app_id)]))
    c.block()
    cid = cert_id_for(app_id)
    assert c.state.certificate(cid) is not None
    # The departed validator is offline; the new committee signs.
    run_until(c, agents, lambda c: _signed(c, cid), offline=[old.address])
    tc: TssCert = c.state.get(rules.key_x509(cid))
    req: TssRequest = c.state.get(rules.key_req(tc.request))
    assert req.epoch == key2.epoch
    assert frost.verify_signature(key1.group_pk, _tbs_of_cert(c, cid, tc), tc.der[-64:])


def _reshared(c: Any) -> bool:
    vals = {v.address for v in c.state.validators.validators}
    k = key_of(c)
    return k is not None and {m.address for m in k.members} == vals


def _fund(k: SigningKey) -> Any:
    from dpkid.core.types import Transfer

    return Transfer(k.address, 1_000_000)


def test_revocation_puts_the_serial_on_a_signed_crl() -> None:
    c = make_chain(n_validators=4)
    agents = agents_for(c)
    run_until(c, agents, root_signed)
    cid = issue(c, "DV", ("gone.example",))
    run_until(c, agents, lambda c: _signed(c, cid))
    c.tx(c.keys.accounts[0], Revoke(cid, 1))
    c.block()

    def crl_has(c: Any) -> bool:
        crl: TssCrl | None = c.state.get(rules.K_TSS_CRL)
        return crl is not None and b"\x0a\x01\x01" in crl.der  # reason keyCompromise

    run_until(c, agents, crl_has)
    from cryptography import x509

    crl_obj = x509.load_der_x509_crl(c.state.get(rules.K_TSS_CRL).der)
    entry = crl_obj.get_revoked_certificate_by_serial_number(tx509.leaf_serial(cid, 0))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )


def test_a_restarted_agent_never_reuses_a_nonce() -> None:
    c = make_chain(n_validators=4)
    agents = agents_for(c)
    run_until(c, agents, root_signed)
    addr = sorted(agents)[0]
    a = agents[addr]
    blob = a.secrets_blob()
    held = set(a._nonces)
    assert held
    from dpkid.core.node.tss_agent import TssAgent

    # Restart with the persisted secrets: the same nonces, never new ones for
    # the same sequence numbers (the ledger refuses a repeated seq).
    b = TssAgent(a.key, b"other entropy", blob)
    assert set(b._nonces) == held
    q = c.state.get(rules.key_nonce(addr))
    c.tx(a.key, TssNonces(q.epoch, q.first_seq, [bytes(64)]))
    (r,) = c.block()
    assert r.code == Code.TSS_BAD_NONCES


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=8))
def test_share_mapping_keeps_both_threshold_properties(powers: list[int]) -> None:
    vals = [(bytes([i]) * 20, bytes([i]) * 32, p) for i, p in enumerate(powers)]
    com = committee_for(vals)
    assert com is not None
    counts = {m.address: m.count for m in com.members}
    total_power = sum(powers)
    for r in range(len(vals) + 1):
        for sub in itertools.combinations(vals, r):
            p = sum(v[2] for v in sub)
            shares = sum(counts.get(v[0], 0) for v in sub)
            if 3 * p < total_power:
                assert shares < com.threshold  # below the fault bound: cannot sign
                assert com.total_shares - shares >= com.threshold  # the rest can
    assert max_minority_shares([(counts.get(v[0], 0), v[2]) for v in vals], total_power) == (
        com.threshold - 1
    )


def test_a_lost_nonce_post_is_sent_again_with_the_same_commitments() -> None:
    """A nonce tx that never landed (dropped, or the node restarted) is
    re-posted with the same commitments: new secrets for a sequence number
    that may still land would make the ledger's commitment not ours."""
    from dpkid.core.node.tss_agent import RESUBMIT_BLOCKS, TssAgent

    c = make_chain(n_validators=4)
    agents = agents_for(c)
    run_until(c, agents, lambda c: key_of(c) is not None)
    addr = sorted(agents)[0]
    first = [b for b in agents[addr].on_commit(c.state).bodies if isinstance(b, TssNonces)]
    assert len(first) == 1  # it wants to post; we lose that tx
    for _ in range(RESUBMIT_BLOCKS):
        step(c, agents, offline=[addr])
    again = [b for b in agents[addr].on_commit(c.state).bodies if isinstance(b, TssNonces)]
    assert again and again[0].first_seq == first[0].first_seq
    assert again[0].slots[: len(first[0].slots)] == first[0].slots
    # And after a restart from the persisted secrets, the same again.
    restarted = TssAgent(agents[addr].key, b"fresh entropy", agents[addr].secrets_blob())
    for _ in range(RESUBMIT_BLOCKS):
        step(c, agents, offline=[addr])
    third = [b for b in restarted.on_commit(c.state).bodies if isinstance(b, TssNonces)]
    assert third and third[0].slots[: len(first[0].slots)] == first[0].slots

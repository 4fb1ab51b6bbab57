"""Determinism: one fixed block sequence gives the same app hashes everywhere.

The scenario below uses every transaction type (and failing and hostile ones).  It is run

* in separate Python processes with different ``PYTHONHASHSEED`` values, which must print
  identical app hashes, receipt hashes and log roots at every height, equal to the in-process
  run; and
* replayed from genesis in-process (twice, plus with a signature cache and with state copies),
  which must reproduce the same app hashes and byte-identical receipts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from dpkid.core import codec
from dpkid.core.crypto import SignatureCache, SigningKey, sha256
from dpkid.core.keys import sign_with_private_key, spki_der_of
from dpkid.core.state.codes import BlockError, Code
from dpkid.core.state.machine import (
    APP_TAG,
    GOV_TAG,
    State,
    apply_block,
    cert_id_for,
    genesis_state,
)
from dpkid.core.types import (
    AddEndorser,
    Attestation,
    CertApply,
    CertRenew,
    DvAttest,
    Endorse,
    EndorserRevoke,
    EndorseWithdraw,
    GovPropose,
    GovRevokeCert,
    GovVote,
    Header,
    OrgIdentity,
    Receipt,
    RemoveEndorser,
    Revoke,
    SetValidator,
    Transfer,
    decode_tx,
    encode_tx,
    revoke_sign_bytes,
    sign_tx,
)
from dpkid.dev.devchain import DevChain

ROOT: Final = Path(__file__).resolve().parent.parent
DAY_MS: Final = 86_400_000
HASH_SEEDS: Final = ("0", "1", "12345", "random")

_ED = [ed25519.Ed25519PrivateKey.from_private_bytes(sha256(f"det-{i}".encode())) for i in range(3)]
SPKI = [spki_der_of(k) for k in _ED]
SPKI_EC: Final = spki_der_of(ec.derive_private_key(0xD37E_0001, ec.SECP256R1()))
ORG_OV: Final = OrgIdentity("Example Org", "US")
ORG_EV: Final = OrgIdentity("Example Org", "US", "CA", "San Francisco", "C0123", "US-CA")


def _app_id(raw: bytes) -> bytes:
    return sha256(APP_TAG + sha256(raw))


def _pid(raw: bytes) -> bytes:
    return sha256(GOV_TAG + sha256(raw))


def build_chain() -> tuple[DevChain, list[bytes]]:
    """Run the fixed scenario; returns the chain and the app hash after every height."""
    c = DevChain.create(n_validators=4, n_endorsers=4, n_accounts=4, powers=(40, 30, 20, 10))
    v, e, a = c.keys.validators, c.keys.endorsers, c.keys.accounts
    e4 = SigningKey.from_label("endorser-4")
    v4 = SigningKey.from_label("validator-4")
    hashes = [c.state.app_hash]

    def block(advance_ms: int = 1_000) -> list[Receipt]:
        receipts = c.block(advance_ms=advance_ms)
        hashes.append(c.state.app_hash)
        return receipts

    # 1: transfers (ok, overdraft, zero), applications (good, invalid, bogus), governance.
    c.tx(a[0], Transfer(a[1].address, 100))
    c.tx(a[1], Transfer(a[0].address, 10**12))
    c.tx(a[2], Transfer(a[0].address, 0))
    c.tx(a[0], Transfer(e4.address, 1_000_000))
    c.tx(a[0], Transfer(v4.address, 1_000_000))
    app_dv = _app_id(
        c.tx(a[0], CertApply("DV", ["a.example", "www.a.example"], SPKI[0], 90, 1_000))
    )
    app_ov = _app_id(c.tx(a[1], CertApply("OV", ["b.example"], SPKI[1], 90, 5_000, ORG_OV)))
    app_ev = _app_id(c.tx(a[2], CertApply("EV", ["*.c.example"], SPKI[2], 90, 20_001, ORG_EV)))
    c.tx(a[3], CertApply("DV", ["Bad.example"], SPKI[0], 90, 1_000))
    c.tx(a[3], CertApply("EV", ["c.example"], SPKI[0], 90, 20_000, ORG_OV))
    app_stale = _app_id(c.tx(a[3], CertApply("DV", ["d.example"], SPKI_EC, 30, 1_500)))
    app_bogus = _app_id(c.tx(a[3], CertApply("DV", ["e.example"], SPKI[0], 30, 1_000)))
    pid_add = _pid(c.tx(v[0], GovPropose(AddEndorser(e4.public_key, "endorser four"))))
    c.tx(a[0], GovPropose(AddEndorser(a[0].public_key, "not a validator")))
    c.raw(b"\x00\x01 certainly not a transaction")
    c.raw(encode_tx(sign_tx(a[0], "other-chain", 0, 10, Transfer(a[1].address, 1))))
    block()

    # 2: attestations (ok, fail, conflict), endorsements (approve, reject), a vote.
    # (wildcard names need dns-01; an http-01 "ok" for *.c.example would be skipped)
    c.tx(v[0], DvAttest([Attestation(x, True, "dns-01") for x in (app_dv, app_ov, app_ev)]))
    c.tx(v[2], DvAttest([Attestation(app_ev, False, "dns-01", "no TXT record")]))
    c.tx(v[1], DvAttest([Attestation(x, True, "dns-01") for x in (app_dv, app_ov, app_ev)]))
    c.tx(v[2], DvAttest([Attestation(app_ev, True, "dns-01")]))  # conflict: first word counts
    for val in v[:3]:
        c.tx(val, DvAttest([Attestation(app_bogus, False, "http-01", "wrong token")]))
    c.tx(
        v[3],
        DvAttest([Attestation(app_stale, True, "http-01"), Attestation(app_dv, True, "http-01")]),
    )
    c.tx(a[0], DvAttest([Attestation(app_dv, True, "http-01")]))
    c.tx(e[0], Endorse(app_ov, True))
    c.tx(e[3], Endorse(app_ov, False, "unconvinced"))
    c.tx(e[1], Endorse(app_ov, True))
    for end in e[:3]:
        c.tx(end, Endorse(app_ev, True))
    c.tx(e[0], Endorse(app_dv, True))
    c.tx(v[1], GovVote(pid_add, True))
    block()

    cert_dv, cert_ov, cert_ev = (cert_id_for(x) for x in (app_dv, app_ov, app_ev))
    # 3: renewals (same key, rotation), withdrawal (degrades EV), endorser revocation votes,
    #    more governance.
    renew_same = _app_id(c.tx(a[0], CertRenew(cert_dv, 30, 1_000)))
    renew_rot = _app_id(c.tx(a[1], CertRenew(cert_ov, 60, 5_000, SPKI[2])))
    c.tx(a[2], CertRenew(cert_dv, 30, 1_000))  # not the owner
    c.tx(e[0], EndorseWithdraw(cert_ev, "no longer vouching"))
    c.tx(e[1], EndorserRevoke(cert_ev, 9))  # EV fell to DV: not endorser-revocable
    c.tx(e[3], EndorserRevoke(cert_ov, 9))
    pid_rm = _pid(c.tx(v[0], GovPropose(RemoveEndorser(e[3].address, True), "corrupt")))
    pid_val = _pid(c.tx(v[1], GovPropose(SetValidator(v4.public_key, 15))))
    pid_dead = _pid(c.tx(v[2], GovPropose(RemoveEndorser(e[2].address, False))))
    block()

    # 4: attest and endorse the renewals, pass two proposals, reject one vote.
    for val in v[:2]:
        c.tx(
            val,
            DvAttest(
                [Attestation(renew_same, True, "http-01"), Attestation(renew_rot, True, "dns-01")]
            ),
        )
    c.tx(e4, Endorse(renew_rot, True))
    c.tx(e[1], Endorse(renew_rot, True))
    c.tx(v[1], GovVote(pid_rm, True))
    c.tx(v[0], GovVote(pid_val, True))
    c.tx(v[3], GovVote(pid_dead, False))
    c.tx(v[3], GovVote(pid_dead, True))  # duplicate vote
    c.tx(v[0], GovVote(pid_dead, False))  # now it cannot pass: rejected
    c.tx(v[1], GovVote(pid_dead, True))  # closed
    block()

    cert_renewed = cert_id_for(renew_same)
    # 5: revocations (key holder, owner, governance), replay, closed application.
    msg = revoke_sign_bytes(c.chain_id, cert_renewed, 1)
    c.tx(a[2], Revoke(cert_renewed, 1, sign_with_private_key(_ED[0], msg)))
    c.tx(a[3], Revoke(cert_dv, 1))  # not the owner, no key signature
    c.tx(a[0], Revoke(cert_dv, 5))
    c.tx(a[0], Revoke(cert_dv, 5))  # already revoked
    c.tx(a[0], Revoke(cert_ov, 2))  # disallowed reason code
    pid_gov = _pid(c.tx(v[0], GovPropose(GovRevokeCert(cert_ev, 9))))
    c.tx(v[1], GovVote(pid_gov, True))
    nine = SigningKey.from_label("endorser-9").public_key
    c.tx(v[2], GovPropose(AddEndorser(nine, "never voted on")))  # will expire
    c.raw(c.blocks[0][1][0])  # replay of the very first transaction
    c.tx(e4, Endorse(app_ov, True))  # closed
    c.tx(v4, DvAttest([Attestation(renew_rot, True, "http-01")]))  # validator only from 6
    block(2 * DAY_MS)  # open proposals expire

    # 6: the stale application expires; 7: every certificate expires; renew an expired one.
    c.tx(a[1], Transfer(a[2].address, 5))
    block(8 * DAY_MS)
    late = _app_id(c.tx(a[1], CertRenew(cert_id_for(renew_rot), 30, 5_000)))
    block(91 * DAY_MS)

    # 8: the validator added by governance helps issue the renewal.
    for val in (v[0], v[1], v4):
        c.tx(val, DvAttest([Attestation(late, True, "dns-01")]))
    c.tx(e4, Endorse(late, True))
    c.tx(e[1], Endorse(late, True))
    block()
    return c, hashes


def _lines(c: DevChain, hashes: Sequence[bytes]) -> list[str]:
    out = [f"0 {hashes[0].hex()}"]
    for height, receipts in enumerate(c.receipts, 1):
        rhash = sha256(codec.encode(receipts)).hex()
        out.append(f"{height} {hashes[height].hex()} {rhash}")
    out.append(f"log {c.state.log.size} {c.state.log.root().hex()}")
    return out


def main() -> None:
    """Entry point for the subprocess runs."""
    c, hashes = build_chain()
    print("\n".join(_lines(c, hashes)))


@pytest.fixture(scope="module")
def chain() -> tuple[DevChain, list[bytes]]:
    return build_chain()


def test_scenario_covers_every_transaction_type(chain: tuple[DevChain, list[bytes]]) -> None:
    c, _ = chain
    ok_bodies: set[str] = set()
    codes: set[int] = set()
    kinds: set[str] = set()
    for (_, txs), receipts in zip(c.blocks, c.receipts, strict=True):
        for raw, r in zip(txs, receipts, strict=True):
            codes.add(r.code)
            kinds.update(ev.kind for ev in r.events)
            if r.code == Code.OK:
                ok_bodies.add(type(decode_tx(raw).body).__name__)
    # Block-level events (expiry, validator updates) are kept on the last state only, so
    # look for their effects in state instead.
    assert ok_bodies == {
        "Transfer",
        "CertApply",
        "CertRenew",
        "DvAttest",
        "Endorse",
        "EndorseWithdraw",
        "Revoke",
        "EndorserRevoke",
        "GovPropose",
        "GovVote",
    }
    for kind in (
        "cert_issued",
        "cert_revoked",
        "cert_degraded",
        "app_rejected",
        "attest_conflict",
        "gov_passed",
        "endorser_added",
        "endorser_removed",
        "validator_scheduled",
    ):
        assert kind in kinds, kind
    for code in (
        Code.MALFORMED,
        Code.WRONG_CHAIN_ID,
        Code.BAD_NONCE,
        Code.INSUFFICIENT_FUNDS,
        Code.INVALID_AMOUNT,
        Code.INVALID_DOMAIN,
        Code.INVALID_ORG,
        Code.NOT_AUTHORIZED,
        Code.CERT_REVOKED,
        Code.INVALID_REASON,
        Code.APPLICATION_CLOSED,
        Code.NOT_VALIDATOR,
        Code.NOT_ENDORSABLE,
        Code.DUPLICATE_VOTE,
        Code.PROPOSAL_CLOSED,
    ):
        assert code in codes, code.name
    state = c.state
    statuses = {v.status for k, v in state.items() if k.startswith(b"app:")}
    assert {"issued", "rejected", "expired"} <= statuses
    assert state.validators.power_of(SigningKey.from_label("validator-4").address) == 15
    assert any(v.status == "expired" for k, v in state.items() if k.startswith(b"gov:"))
    last = c.receipts[-1]
    assert [r.code for r in last] == [Code.OK] * len(last)
    assert "cert_issued" in {ev.kind for ev in last[-1].events}


def _run_subprocess(seeds: Sequence[str]) -> dict[str, str]:
    procs = {}
    for seed in seeds:
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        procs[seed] = subprocess.Popen(
            [sys.executable, "-c", "from tests.test_determinism import main; main()"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    out = {}
    for seed, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"PYTHONHASHSEED={seed}: {stderr}"
        out[seed] = stdout
    return out


@pytest.mark.slow
def test_same_app_hashes_across_processes_and_hash_seeds(
    chain: tuple[DevChain, list[bytes]],
) -> None:
    c, hashes = chain
    expected = "\n".join(_lines(c, hashes)) + "\n"
    outputs = _run_subprocess(HASH_SEEDS)
    for seed, text in outputs.items():
        assert text == expected, f"PYTHONHASHSEED={seed} diverged"
    assert len(expected.splitlines()) == len(c.blocks) + 2


def _replay(
    c: DevChain, sig_check: SignatureCache | None = None, copy_each: bool = False
) -> tuple[list[bytes], list[list[Receipt]]]:
    state: State = genesis_state(c.genesis)
    hashes = [state.app_hash]
    all_receipts = []
    for header, txs in c.blocks:
        if copy_each:
            state = state.copy()
        state, receipts, app_hash = apply_block(state, header, txs, sig_check)
        assert app_hash == state.app_hash
        hashes.append(app_hash)
        all_receipts.append(receipts)
    return hashes, all_receipts


def test_replay_from_genesis_is_identical(chain: tuple[DevChain, list[bytes]]) -> None:
    c, hashes = chain
    runs = [_replay(c), _replay(c), _replay(c, SignatureCache()), _replay(c, copy_each=True)]
    expected_receipts = [codec.encode(r) for r in c.receipts]
    for run_hashes, run_receipts in runs:
        assert run_hashes == hashes
        assert [codec.encode(r) for r in run_receipts] == expected_receipts
    # The header of each block carries the previous app hash (DevChain fills it in).
    assert [h.app_hash for h, _ in c.blocks] == hashes[:-1]


def test_rebuilding_the_scenario_is_identical(chain: tuple[DevChain, list[bytes]]) -> None:
    c, hashes = chain
    c2, hashes2 = build_chain()
    assert hashes2 == hashes
    assert [[codec.encode(h), *txs] for h, txs in c2.blocks] == [
        [codec.encode(h), *txs] for h, txs in c.blocks
    ]


def test_replay_with_a_header_that_cannot_follow_raises_block_error(
    chain: tuple[DevChain, list[bytes]],
) -> None:
    c, _ = chain
    header, txs = c.blocks[0]
    state = genesis_state(c.genesis)
    bad = Header(header.chain_id, 2, header.time_ms, header.proposer)
    with pytest.raises(BlockError):
        apply_block(state, bad, txs)
    # The failed call must not have consumed the state.
    _, _, app_hash = apply_block(state, header, txs)
    assert app_hash == c.blocks[1][0].app_hash

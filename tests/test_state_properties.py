"""Stateful property test of the ledger state machine (hypothesis RuleBasedStateMachine).

A small population drives random transactions through :class:`DevChain`:

* 4 genesis validators with powers 50/20/15/12 (total 97).  Validators 2 and 3 are Byzantine
  (27/97 < 1/3 of the power): they attest ``ok`` for every application, true or not.  The
  honest validators (0, 1 and a spare ``validator-4`` that governance may add) attest the
  truth.  Governance may only change honest validators' power, never below 50 + 20, so the
  Byzantine share stays below 1/3.
* 4 genesis endorsers, of which endorser 3 is Byzantine and approves everything; the
  Byzantine set (size 1) is below ``k_ov = 2 <= k_ev = 3``.  Two spare honest endorsers may
  be added by governance.
* 4 funded accounts and one unfunded key.

The model remembers which applications are bogus (domain control not really held, or
organisation claims false).  After every block the invariants listed in ``_check_block`` are
checked: supply conservation, issuance thresholds, no bogus issuance, revocation is final,
nonce discipline and replay rejection, state proofs (inclusion and non-inclusion), and the
certificate log (size, entries, inclusion and consistency proofs).  Some blocks are also
executed on a node restored with ``State.from_records``, which must agree byte for byte.

Set ``DPKID_HYPOTHESIS_PROFILE=long`` for a much longer run.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dpkid.core import codec
from dpkid.core.crypto import SigningKey, address_of, sha256
from dpkid.core.keys import sign_with_private_key, spki_der_of
from dpkid.core.merkle import hash_leaf, verify_consistency, verify_inclusion
from dpkid.core.state.codes import PRECHECK_CODES, Code
from dpkid.core.state.machine import (
    APP_TAG,
    GOV_TAG,
    K_ENDORSERS,
    K_META,
    K_POLICY,
    K_VALS,
    K_VALS_PENDING,
    P_ACCT,
    P_APP,
    P_CERT,
    P_GOV,
    State,
    apply_block,
    cert_id_for,
    cert_status,
    key_account,
    key_app,
    key_cert,
    key_domain,
    key_gov,
    key_log,
    record_type_for_key,
)
from dpkid.core.state.smt import verify_proof
from dpkid.core.types import (
    AddEndorser,
    Attestation,
    CertApply,
    Certificate,
    CertRenew,
    DvAttest,
    Endorse,
    EndorserRevoke,
    EndorseWithdraw,
    GovAction,
    GovPropose,
    GovRevokeCert,
    GovVote,
    OrgIdentity,
    Receipt,
    RemoveEndorser,
    Revoke,
    SetValidator,
    Transfer,
    Tx,
    TxBody,
    decode_tx,
    encode_tx,
    revoke_sign_bytes,
    sign_tx,
)
from dpkid.dev.devchain import DevChain, dev_genesis

T = TypeVar("T")

# ----------------------------------------------------------------------------- profiles

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "dpkid-state-default",
    max_examples=120,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=_HEALTH,
)
settings.register_profile(
    "dpkid-state-long",
    max_examples=1_000,
    stateful_step_count=150,
    deadline=None,
    suppress_health_check=_HEALTH,
)
LONG: Final = os.environ.get("DPKID_HYPOTHESIS_PROFILE", "") == "long"
PROFILE: Final = "dpkid-state-long" if LONG else "dpkid-state-default"
# The long profile runs well past pytest-timeout's default per-test limit.
pytestmark = [pytest.mark.timeout(7_200)] if LONG else []

# ----------------------------------------------------------------------------- population

DAY_MS: Final = 86_400_000
POWERS: Final = (50, 20, 15, 12)
BYZANTINE_VALIDATORS: Final = frozenset({2, 3})
BYZANTINE_ENDORSERS: Final = frozenset({3})

GENESIS, KEYS = dev_genesis(n_validators=4, n_endorsers=4, n_accounts=4, powers=POWERS)
CHAIN_ID: Final = GENESIS.chain_id
TOTAL_SUPPLY: Final = sum(a.balance for a in GENESIS.accounts)

VALIDATORS: Final = [*KEYS.validators, SigningKey.from_label("validator-4")]
ENDORSERS: Final = [*KEYS.endorsers, *(SigningKey.from_label(f"endorser-{i}") for i in (4, 5))]
ACCOUNTS: Final = list(KEYS.accounts)
UNFUNDED: Final = SigningKey.from_label("unfunded")
EVERYONE: Final = [*VALIDATORS, *ENDORSERS, *ACCOUNTS, UNFUNDED]
KEY_BY_ADDR: Final = {k.address: k for k in EVERYONE}

HONEST_VALIDATORS: Final = [k for i, k in enumerate(VALIDATORS) if i not in BYZANTINE_VALIDATORS]
BYZ_VALIDATORS: Final = [k for i, k in enumerate(VALIDATORS) if i in BYZANTINE_VALIDATORS]
HONEST_ENDORSERS: Final = [k for i, k in enumerate(ENDORSERS) if i not in BYZANTINE_ENDORSERS]
BYZ_ENDORSERS: Final = [k for i, k in enumerate(ENDORSERS) if i in BYZANTINE_ENDORSERS]
BYZ_ADDRS: Final = frozenset(k.address for k in [*BYZ_VALIDATORS, *BYZ_ENDORSERS])

# Validator changes governance may make; honest power never drops below 50 + 20 = 70 > 2 * 27.
SAFE_VALIDATOR_CHANGES: Final = [
    (VALIDATORS[0], 50),
    (VALIDATORS[0], 80),
    (VALIDATORS[1], 20),
    (VALIDATORS[1], 35),
    (VALIDATORS[4], 10),
    (VALIDATORS[4], 0),
]

VALID_DOMAINS: Final = [
    "a.example",
    "b.example",
    "www.b.example",
    "*.c.example",
    "shop.d.example",
    "xn--bcher-kva.example",
]
INVALID_DOMAINS: Final = ["Upper.example", "single", "-bad.example", "10.0.0.1", "*.com"]
NEVER_DOMAINS: Final = [f"never{i}.example" for i in range(4)]  # never applied for

_ED_KEYS: Final = [
    ed25519.Ed25519PrivateKey.from_private_bytes(sha256(f"spki-{i}".encode())) for i in range(3)
]
_EC_KEY: Final = ec.derive_private_key(0x5EED_0001, ec.SECP256R1())
# spki -> Ed25519 private key, for revocation by the holder of the certificate key.
ED_SPKI: Final = {spki_der_of(k): k for k in _ED_KEYS}
VALID_SPKIS: Final = [*ED_SPKI, spki_der_of(_EC_KEY)]
INVALID_SPKIS: Final = [b"\x30\x03\x02\x01\x00", next(iter(ED_SPKI)) + b"\x00"]

ORG_OV: Final = OrgIdentity("Example Org", "US")
ORG_EV: Final = OrgIdentity("Example Org", "US", "CA", "San Francisco", "C0123", "US-CA")

LOG_EVENT_KINDS: Final = {
    "cert_issued": "issued",
    "cert_revoked": "revoked",
    "cert_degraded": "degraded",
}
REASONS: Final = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10]
ADVANCES: Final = [0, 1_000, 1_000, 60_000, DAY_MS + 1, 8 * DAY_MS, 91 * DAY_MS]

CERT_TYPES: Final[list[Literal["DV", "OV", "EV"]]] = ["DV", "OV", "EV"]
METHODS: Final[list[Literal["http-01", "dns-01"]]] = ["http-01", "dns-01"]

CodeCheck = Callable[[int], bool]


def _precheck(code: int) -> bool:
    return code in PRECHECK_CODES


def _not_ok(code: int) -> bool:
    return code != Code.OK


def _is(*codes: int) -> CodeCheck:
    allowed = frozenset(codes)
    return lambda code: code in allowed


def _pick(data: st.DataObject, seq: Sequence[T], label: str) -> T:
    return data.draw(st.sampled_from(seq), label=label)


def _pick_id(data: st.DataObject, ids: Sequence[bytes], label: str) -> bytes:
    """Mostly one of the last few known ids; sometimes an id nobody knows."""
    if ids and data.draw(st.integers(0, 9), label=f"{label}-known") < 9:
        i = data.draw(st.integers(0, min(len(ids), 8) - 1), label=label)
        return ids[-1 - i]
    return data.draw(st.binary(min_size=32, max_size=32), label=f"{label}-random")


def _app_id_of(raw: bytes) -> bytes:
    return sha256(APP_TAG + sha256(raw))


def _pid_of(raw: bytes) -> bytes:
    return sha256(GOV_TAG + sha256(raw))


@dataclass
class Queued:
    raw: bytes
    kind: str
    check: CodeCheck | None = None
    replay: bool = False


@dataclass(frozen=True)
class Truth:
    cert_type: str  # as applied for (a renewal takes the type the cert has when it executes)
    dv_bogus: bool  # the applicant does not really control the domains
    org_bogus: bool  # the organisation claims are false (OV/EV)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c = DevChain(GENESIS, KEYS)
        self.queue: list[Queued] = []
        self.apps: list[bytes] = []
        self.queued_apps: set[bytes] = set()
        self.truth: dict[bytes, Truth] = {}
        self.cert_ids: list[bytes] = []
        self.first_seen: dict[bytes, Certificate] = {}
        self.revoked: dict[bytes, tuple[int, int, int]] = {}
        self.proposals: list[bytes] = []
        self.passed_checked: set[bytes] = set()
        self.executed_nonces: dict[bytes, list[int]] = {}
        self.executed_raw: list[bytes] = []
        self.log_events: list[tuple[str, bytes]] = []
        self.prev_log_size = 0
        self.prev_log_root = self.c.state.log.root()
        self.blocks = 0
        self._check_block([], [])

    # ------------------------------------------------------------------ helpers

    def _send(
        self,
        key: SigningKey,
        body: TxBody,
        kind: str,
        check: CodeCheck | None = None,
        fee: int | None = None,
    ) -> bytes:
        raw = self.c.tx(key, body, fee=fee)
        self.queue.append(Queued(raw, kind, check))
        return raw

    def _raw(self, raw: bytes, kind: str, check: CodeCheck | None, replay: bool = False) -> None:
        self.c.raw(raw)
        self.queue.append(Queued(raw, kind, check, replay))

    def _expected_nonce(self, key: SigningKey) -> int:
        acct = self.c.state.account(key.address)
        return self.c.nonces.get(key.address, acct.nonce if acct else 0)

    def _maybe_open_apps(self) -> list[bytes]:
        """Recent applications that are pending, or were applied for in the open block."""
        out = []
        for aid in self.apps[-12:]:
            app = self.c.state.application(aid)
            if (app is None and aid in self.queued_apps) or (app and app.status == "pending"):
                out.append(aid)
        return out

    def _is_validator(self, key: SigningKey) -> bool:
        """Whether ``key`` is a validator in the next block (pending changes due by then apply)."""
        state = self.c.state
        power = state.validators.power_of(key.address)
        for change in state.pending_validator_changes.changes:
            if change.effective_height <= state.height + 1 and change.pubkey == key.public_key:
                power = change.power
        return power > 0

    def _is_active_endorser(self, key: SigningKey) -> bool:
        """Active now (governance earlier in the next block may still change it)."""
        e = self.c.state.endorsers.get(key.address)
        return e is not None and e.active

    @staticmethod
    def _endorser_check(key: SigningKey) -> CodeCheck | None:
        return None if key in ENDORSERS else _not_ok

    def _attest_ok(self, key: SigningKey, app_id: bytes, flaky: bool) -> bool:
        if key.address in BYZ_ADDRS:
            return True  # Byzantine: always claims success
        truth = self.truth.get(app_id)
        if truth is None:
            return not flaky
        return not truth.dv_bogus and not flaky

    def _approve(self, key: SigningKey, app_id: bytes, picky: bool) -> bool:
        if key.address in BYZ_ADDRS:
            return True  # Byzantine: vouches for anything
        truth = self.truth.get(app_id)
        if truth is None:
            return not picky
        return not truth.org_bogus and not picky

    def _endorsed_certs(self) -> list[Certificate]:
        """Recent live certificates that still have endorsers."""
        out = []
        for cid in self.cert_ids[-12:]:
            cert = self.c.state.certificate(cid)
            if cert is not None and cert.status == "valid" and cert.endorsers:
                out.append(cert)
        return out

    def _record_app(self, raw: bytes, cert_type: str, dv_bogus: bool, org_bogus: bool) -> None:
        aid = _app_id_of(raw)
        self.apps.append(aid)
        self.queued_apps.add(aid)
        self.truth[aid] = Truth(cert_type, dv_bogus, org_bogus)

    # ------------------------------------------------------------------ transfers

    @rule(data=st.data())
    def transfer(self, data: st.DataObject) -> None:
        sender = _pick(data, EVERYONE, "sender")
        to = _pick(
            data,
            [k.address for k in EVERYONE] + [sha256(b"stranger")[:20]],
            "to",
        )
        bal = self.c.state.balance(sender.address)
        amount = _pick(data, [0, 1, 777, bal, bal + 1, 2**63 - 1, 10**6], "amount")
        fee = _pick(data, [None, None, None, 9, 11, 10**12], "fee")
        check: CodeCheck | None = None
        if fee == 9:
            check = _is(Code.FEE_TOO_LOW, Code.BAD_NONCE)
        elif fee == 10**12:
            check = _is(Code.CANNOT_PAY_FEE, Code.BAD_NONCE)
        elif amount == 0:
            check = lambda code: code == Code.INVALID_AMOUNT or _precheck(code)  # noqa: E731
        elif amount > TOTAL_SUPPLY:
            check = _not_ok
        self._send(sender, Transfer(to, amount), "transfer", check, fee=fee)

    # ------------------------------------------------------------------ applications

    @rule(data=st.data())
    def cert_apply(self, data: st.DataObject) -> None:
        cert_type = _pick(data, CERT_TYPES, "cert_type")
        fee = {"DV": 1_000, "OV": 5_000, "EV": 20_000}[cert_type]
        good_org = {"DV": None, "OV": ORG_OV, "EV": ORG_EV}[cert_type]
        if data.draw(st.integers(0, 3), label="valid") > 0:
            # A well-formed application (it may still be bogus).
            applicant = _pick(data, ACCOUNTS, "applicant")
            domains = sorted(
                data.draw(
                    st.lists(st.sampled_from(VALID_DOMAINS), min_size=1, max_size=3, unique=True),
                    label="domains",
                )
            )
            spki = _pick(data, VALID_SPKIS, "spki")
            validity = _pick(data, [1, 30, 90], "validity")
            escrow = _pick(data, [fee, 2 * fee + 1], "escrow")
            org = good_org
        else:
            applicant = _pick(data, [*ACCOUNTS, UNFUNDED, VALIDATORS[0], ENDORSERS[0]], "applicant")
            domains = data.draw(
                st.lists(
                    st.sampled_from(INVALID_DOMAINS + VALID_DOMAINS),
                    min_size=1,
                    max_size=3,
                    unique=True,
                ),
                label="domains",
            )
            spki = _pick(data, VALID_SPKIS + INVALID_SPKIS, "spki")
            validity = _pick(data, [1, 90, 91], "validity")
            escrow = _pick(data, [fee, fee - 1, 10**15], "escrow")
            org = _pick(data, [None, ORG_OV, ORG_EV], "org")
        dv_bogus = data.draw(st.integers(0, 3), label="dv_bogus") == 0
        org_bogus = cert_type != "DV" and data.draw(st.integers(0, 3), label="org_bogus") == 0
        body = CertApply(cert_type, domains, spki, validity, escrow, org)
        check: CodeCheck | None = None
        org_ok = org is None if cert_type == "DV" else org in (good_org, ORG_EV)
        if spki in INVALID_SPKIS or validity > 90 or escrow < fee or not org_ok:
            check = _not_ok
        if any(d in INVALID_DOMAINS for d in domains) or domains != sorted(domains):
            check = _not_ok
        raw = self._send(applicant, body, "cert_apply", check)
        self._record_app(raw, cert_type, dv_bogus, org_bogus)

    @precondition(lambda self: bool(self.cert_ids))
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        cert_id = _pick_id(data, self.cert_ids, "cert")
        cert = self.c.state.certificate(cert_id)
        owner = KEY_BY_ADDR.get(cert.owner) if cert is not None else None
        if owner is not None and data.draw(st.integers(0, 4)):
            sender = owner
        else:
            sender = _pick(data, ACCOUNTS, "sender")
        new_spki = _pick(data, [b"", b"", *VALID_SPKIS, INVALID_SPKIS[0]], "new_spki")
        validity = _pick(data, [30, 90, 91], "validity")
        escrow = _pick(data, [1_000, 5_000, 20_000, 20_001, 999], "escrow")
        body = CertRenew(cert_id, validity, escrow, new_spki)
        check = _not_ok if cert is None or sender.address != cert.owner else None
        raw = self._send(sender, body, "renew", check)
        cert_type = cert.cert_type if cert is not None else "DV"
        dv_bogus = data.draw(st.integers(0, 3), label="dv_bogus") == 0
        org_bogus = cert_type != "DV" and data.draw(st.integers(0, 3), label="org_bogus") == 0
        self._record_app(raw, cert_type, dv_bogus, org_bogus)

    # ------------------------------------------------------------------ validation work

    @precondition(lambda self: bool(self.apps))
    @rule(data=st.data())
    def dv_attest(self, data: st.DataObject) -> None:
        attester = _pick(data, [*VALIDATORS, ACCOUNTS[0]], "attester")
        n = data.draw(st.integers(1, 3), label="n_items")
        items = []
        for _ in range(n):
            aid = _pick_id(data, self.apps, "app")
            flaky = data.draw(st.integers(0, 9), label="flaky") == 0
            ok = self._attest_ok(attester, aid, flaky)
            if attester not in VALIDATORS:
                ok = data.draw(st.booleans(), label="ok")
            method = _pick(data, METHODS, "method")
            items.append(Attestation(aid, ok, method, "" if ok else "no token"))
        check = None if self._is_validator(attester) else _not_ok
        self._send(attester, DvAttest(items), "dv_attest", check)

    @precondition(lambda self: bool(self.apps))
    @rule(data=st.data())
    def endorse(self, data: st.DataObject) -> None:
        endorser = _pick(data, [*ENDORSERS, ACCOUNTS[0]], "endorser")
        aid = _pick_id(data, self.apps, "app")
        picky = data.draw(st.integers(0, 3), label="picky") == 0
        approve = self._approve(endorser, aid, picky)
        if endorser not in ENDORSERS:
            approve = data.draw(st.booleans(), label="approve")
        check = self._endorser_check(endorser)
        self._send(endorser, Endorse(aid, approve, "" if approve else "no"), "endorse", check)

    @rule()
    def honest_round(self) -> None:
        """Every honest validator and endorser reports the truth on the open applications."""
        open_apps = self._maybe_open_apps()
        if not open_apps:
            return
        for v in HONEST_VALIDATORS:
            if self._is_validator(v):
                items = [Attestation(a, self._attest_ok(v, a, False), "dns-01") for a in open_apps]
                self._send(v, DvAttest(items), "dv_attest")
        for e in HONEST_ENDORSERS:
            if not self._is_active_endorser(e):
                continue
            for a in open_apps:
                truth = self.truth[a]
                app = self.c.state.application(a)
                if truth.cert_type == "DV" or (
                    app is not None and any(r.endorser == e.address for r in app.endorsements)
                ):
                    continue
                self._send(e, Endorse(a, self._approve(e, a, False)), "endorse")

    @rule()
    def byzantine_round(self) -> None:
        """The Byzantine minority vouches for every open application, bogus or not."""
        open_apps = self._maybe_open_apps()
        if not open_apps:
            return
        for v in BYZ_VALIDATORS:
            items = [Attestation(a, True, "http-01") for a in open_apps]
            self._send(v, DvAttest(items), "dv_attest")
        for e in BYZ_ENDORSERS:
            for a in open_apps:
                if self.truth[a].cert_type != "DV":
                    self._send(e, Endorse(a, True, "trust me"), "endorse")

    # ------------------------------------------------------------------ certificates

    @precondition(lambda self: bool(self.cert_ids))
    @rule(data=st.data())
    def endorse_withdraw(self, data: st.DataObject) -> None:
        endorsed = self._endorsed_certs()
        if endorsed and data.draw(st.integers(0, 3), label="targeted") > 0:
            target = _pick(data, endorsed, "cert")
            cert_id = target.cert_id
            endorser = KEY_BY_ADDR[_pick(data, target.endorsers, "endorser")]
        else:
            endorser = _pick(data, [*ENDORSERS, ACCOUNTS[0]], "endorser")
            cert_id = _pick_id(data, self.cert_ids, "cert")
        cert = self.c.state.certificate(cert_id)
        check = None if cert is not None and endorser.address in cert.endorsers else _not_ok
        self._send(endorser, EndorseWithdraw(cert_id, "changed my mind"), "withdraw", check)

    @precondition(lambda self: bool(self.cert_ids))
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        cert_id = _pick_id(data, self.cert_ids, "cert")
        cert = self.c.state.certificate(cert_id)
        reason = _pick(data, REASONS, "reason")
        mode = _pick(data, ["owner", "owner", "stranger", "key_holder", "bad_sig"], "mode")
        owner = KEY_BY_ADDR.get(cert.owner) if cert is not None else None
        strangers = [k for k in ACCOUNTS if cert is None or k.address != cert.owner]
        key_sig = b""
        if mode == "owner" and owner is not None:
            sender = owner
        else:
            sender = _pick(data, strangers, "stranger")
            if mode == "key_holder" and cert is not None and cert.spki in ED_SPKI:
                msg = revoke_sign_bytes(CHAIN_ID, cert_id, reason)
                key_sig = sign_with_private_key(ED_SPKI[cert.spki], msg)
            elif mode == "bad_sig":
                key_sig = bytes(64)
        unauthorised = cert is not None and sender.address != cert.owner and not key_sig
        bad_reason = reason not in (0, 1, 3, 4, 5, 9)
        bad = cert is None or bad_reason or unauthorised or mode == "bad_sig"
        check = _not_ok if bad else None
        self._send(sender, Revoke(cert_id, reason, key_sig), "revoke", check)

    @precondition(lambda self: bool(self.cert_ids))
    @rule(data=st.data())
    def endorser_revoke(self, data: st.DataObject) -> None:
        endorser = _pick(data, [*ENDORSERS, ACCOUNTS[0]], "endorser")
        endorsed = self._endorsed_certs()
        if endorsed and data.draw(st.integers(0, 3), label="targeted") > 0:
            cert_id = _pick(data, endorsed, "cert").cert_id
        else:
            cert_id = _pick_id(data, self.cert_ids, "cert")
        reason = _pick(data, [1, 9, 3, 2], "reason")
        check = self._endorser_check(endorser)
        self._send(endorser, EndorserRevoke(cert_id, reason), "endorser_revoke", check)

    # ------------------------------------------------------------------ governance

    @rule(data=st.data())
    def gov_propose(self, data: st.DataObject) -> None:
        proposer = _pick(data, [*VALIDATORS, ACCOUNTS[0]], "proposer")
        kind = _pick(data, ["add", "remove", "remove", "revoke", "validator"], "action")
        action: GovAction
        if kind == "add":
            e = _pick(data, ENDORSERS, "endorser")
            action = AddEndorser(e.public_key, f"endorser {e.address.hex()[:8]}")
        elif kind == "remove":
            # Mostly an endorser that still stands behind a live certificate.
            standing = [e for c in self._endorsed_certs() for e in c.endorsers]
            addrs = [e.address for e in ENDORSERS] + [bytes(20)] + standing * 2
            addr = _pick(data, addrs, "endorser")
            action = RemoveEndorser(addr, data.draw(st.booleans(), label="corrupt"))
        elif kind == "revoke":
            live = [c.cert_id for c in self._endorsed_certs()]
            cert_id = _pick_id(data, live or self.cert_ids, "cert")
            action = GovRevokeCert(cert_id, _pick(data, [1, 4, 9, 2], "reason"))
        else:
            v, power = _pick(data, SAFE_VALIDATOR_CHANGES, "change")
            action = SetValidator(v.public_key, power)
        check = None if self._is_validator(proposer) else _not_ok
        raw = self._send(proposer, GovPropose(action, kind), "gov_propose", check)
        self.proposals.append(_pid_of(raw))

    @precondition(lambda self: bool(self.proposals))
    @rule(data=st.data())
    def gov_support(self, data: st.DataObject) -> None:
        """The honest validators back a recent proposal (all modelled actions are safe)."""
        pid = _pick_id(data, self.proposals, "proposal")
        for v in HONEST_VALIDATORS:
            if self._is_validator(v):
                self._send(v, GovVote(pid, True), "gov_vote")

    @precondition(lambda self: bool(self.proposals))
    @rule(data=st.data())
    def gov_vote(self, data: st.DataObject) -> None:
        voter = _pick(data, [*VALIDATORS, ACCOUNTS[0]], "voter")
        pid = _pick_id(data, self.proposals, "proposal")
        approve = data.draw(st.integers(0, 3), label="approve") > 0
        check = None if self._is_validator(voter) else _not_ok
        self._send(voter, GovVote(pid, approve), "gov_vote", check)

    # ------------------------------------------------------------------ hostile bytes

    @rule(data=st.data())
    def hostile_bytes(self, data: st.DataObject) -> None:
        kind = _pick(
            data, ["garbage", "mutated", "replay", "duplicate", "envelope", "envelope"], "kind"
        )
        if kind == "garbage":
            self._garbage(data)
        elif kind == "mutated":
            self._mutated(data)
        elif kind == "replay" and self.executed_raw:
            raw = _pick(data, self.executed_raw, "replayed")
            self._raw(raw, "replay", _is(Code.BAD_NONCE), replay=True)
        elif kind == "duplicate":
            real = [q for q in self.queue if q.kind not in ("garbage", "mutated", "replay")]
            if real:
                self._raw(real[-1].raw, "duplicate", None)
        else:
            self._bad_envelope(data)

    def _garbage(self, data: st.DataObject) -> None:
        if data.draw(st.integers(0, 9), label="huge") == 0:
            raw = b"\x96" + bytes(16 * 1024)
            self._raw(raw, "garbage", _is(Code.TX_TOO_LARGE))
        else:
            raw = data.draw(st.binary(max_size=200), label="garbage")
            self._raw(raw, "garbage", _is(Code.MALFORMED, Code.TX_TOO_LARGE))

    def _mutated(self, data: st.DataObject) -> None:
        sources = [q.raw for q in self.queue if q.kind not in ("garbage", "mutated")]
        sources += self.executed_raw[-8:]
        if not sources:
            return
        raw = bytearray(_pick(data, sources, "source"))
        pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
        raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
        self._raw(bytes(raw), "mutated", _precheck)

    def _bad_envelope(self, data: st.DataObject) -> None:
        key = _pick(data, ACCOUNTS, "sender")
        body = Transfer(ACCOUNTS[0].address, 1)
        nonce = self._expected_nonce(key)
        what = _pick(data, ["future_nonce", "wrong_chain", "bad_sig", "stale_nonce"], "what")
        if what == "future_nonce":
            tx = sign_tx(key, CHAIN_ID, nonce + data.draw(st.integers(1, 3)), 10, body)
            self._raw(encode_tx(tx), what, _is(Code.BAD_NONCE))
        elif what == "wrong_chain":
            tx = sign_tx(key, "other-chain", nonce, 10, body)
            self._raw(encode_tx(tx), what, _is(Code.WRONG_CHAIN_ID))
        elif what == "bad_sig":
            tx = sign_tx(key, CHAIN_ID, nonce, 10, body)
            forged = sign_tx(ACCOUNTS[(ACCOUNTS.index(key) + 1) % 4], CHAIN_ID, nonce, 10, body)
            tx = Tx(tx.chain_id, tx.pubkey, tx.nonce, tx.fee, tx.body, forged.sig)
            self._raw(encode_tx(tx), what, _is(Code.BAD_SIGNATURE))
        elif nonce > 0:
            tx = sign_tx(key, CHAIN_ID, nonce - 1, 10, Transfer(ACCOUNTS[1].address, 5))
            # Not asserted: an earlier tx of this sender in the same block may yet fail its
            # pre-checks and leave nonce - 1 current.  The nonce invariant still applies.
            self._raw(encode_tx(tx), what, None)

    # ------------------------------------------------------------------ blocks

    @rule(advance=st.sampled_from(ADVANCES), honest_first=st.booleans())
    def commit_block(self, advance: int, honest_first: bool) -> None:
        if honest_first:
            self.honest_round()
        self._commit(advance)

    @rule(advance=st.sampled_from(ADVANCES))
    def commit_block_on_restored_node_too(self, advance: int) -> None:
        """A node restored from the stored records executes the block exactly alike."""
        records = list(self.c.state.encoded_records())
        restored = State.from_records(records)
        assert restored.app_hash == self.c.state.app_hash
        self._commit(advance)
        header, txs = self.c.blocks[-1]
        after, receipts, app_hash = apply_block(restored, header, txs)
        assert app_hash == self.c.state.app_hash
        assert codec.encode(receipts) == codec.encode(self.c.receipts[-1])
        assert list(after.encoded_records()) == list(self.c.state.encoded_records())

    @rule()
    def commit_block_soon(self) -> None:
        self._commit(1_000)

    @rule()
    def honest_round_and_commit(self) -> None:
        self.honest_round()
        self._commit(2_000)

    def _commit(self, advance: int) -> None:
        batch, self.queue = self.queue, []
        self.queued_apps.clear()
        before = self.c.state.time_ms
        receipts = self.c.block(advance_ms=advance)
        self.blocks += 1
        assert self.c.state.time_ms == before + advance
        self._check_block(batch, receipts)

    # ------------------------------------------------------------------ invariants

    def _check_block(self, batch: list[Queued], receipts: list[Receipt]) -> None:
        state = self.c.state
        meta = state.meta
        assert meta.height == self.blocks
        # Total supply: balances plus the escrow of pending applications.
        assert meta.total_supply == TOTAL_SUPPLY
        assert state.supply_in_accounts_and_escrow() == meta.total_supply
        self._check_receipts(batch, receipts)
        self._check_nonces()
        self._check_certificates()
        self._check_apps_and_proposals()
        self._check_log()
        self._check_proofs()

    def _check_receipts(self, batch: list[Queued], receipts: list[Receipt]) -> None:
        assert len(receipts) == len(batch)
        for q, r in zip(batch, receipts, strict=True):
            assert r.tx_hash == sha256(q.raw)
            if q.check is not None:
                assert q.check(r.code), (q.kind, Code(r.code).name, r.log)
            executed = r.code == Code.OK or r.code >= 10
            if q.replay:
                assert not executed, "a replayed transaction was executed"
            if executed:
                tx = decode_tx(q.raw)
                assert tx.chain_id == CHAIN_ID
                assert r.fee_charged == tx.fee
                self.executed_nonces.setdefault(address_of(tx.pubkey), []).append(tx.nonce)
                self.executed_raw.append(q.raw)
            else:
                assert r.code in PRECHECK_CODES, r
                assert r.fee_charged == 0 and r.events == []
            if r.code != Code.OK:
                assert all(ev.kind not in LOG_EVENT_KINDS for ev in r.events)
            for ev in r.events:
                if ev.kind in LOG_EVENT_KINDS:
                    self.log_events.append((LOG_EVENT_KINDS[ev.kind], ev.ref))
        for ev in self.c.state.last_events:
            if ev.kind in LOG_EVENT_KINDS:
                self.log_events.append((LOG_EVENT_KINDS[ev.kind], ev.ref))

    def _check_nonces(self) -> None:
        # Executed nonces of every sender are exactly 0, 1, 2, ... and match its account.
        for addr, nonces in self.executed_nonces.items():
            assert nonces == list(range(len(nonces))), (addr.hex(), nonces)
        for key, acct in self.c.state.items():
            if key.startswith(P_ACCT):
                addr = key[len(P_ACCT) :]
                assert acct.nonce == len(self.executed_nonces.get(addr, [])), addr.hex()

    def _check_certificates(self) -> None:
        state = self.c.state
        pol = state.policy
        now = state.time_ms
        certs: list[Certificate] = [v for k, v in state.items() if k.startswith(P_CERT)]
        assert {c.cert_id for c in certs} >= set(self.first_seen)
        for cert in certs:
            cid = cert.cert_id
            first = self.first_seen.get(cid)
            if first is None:
                self._check_issuance(cert)
                self.first_seen[cid] = cert
                self.cert_ids.append(cid)
                first = cert
            # Immutable parts never change; the type only ever falls to DV.
            for f in (
                "app_id", "owner", "issued_type", "domains", "spki", "not_before_ms",
                "not_after_ms", "issued_height", "attestors", "dv_power", "total_power",
                "log_index", "renews",
            ):  # fmt: skip
                assert getattr(cert, f) == getattr(first, f), f
            assert cert.cert_type in (cert.issued_type, "DV")
            if cert.cert_type != cert.issued_type:
                assert cert.org is None and cert.degraded_height > 0
            if cert.status == "valid" and cert.cert_type != "DV":
                k = pol.k_ov if cert.cert_type == "OV" else pol.k_ev
                assert len(cert.endorsers) >= k
            # Revocation is final and always reported.
            if cid in self.revoked:
                assert cert.status == "revoked"
                assert (cert.revoked_ms, cert.revoked_height, cert.revocation_reason) == (
                    self.revoked[cid]
                )
            if cert.status == "revoked":
                self.revoked.setdefault(
                    cid, (cert.revoked_ms, cert.revoked_height, cert.revocation_reason)
                )
                for t in (now, now + 1, now + 400 * DAY_MS, cert.not_before_ms):
                    assert cert_status(cert, t) == "revoked"
            else:
                assert cert.status == "valid"

    def _check_issuance(self, cert: Certificate) -> None:
        state = self.c.state
        pol = state.policy
        vs = state.validators
        assert cert.issued_height == state.height
        assert cert.cert_id == cert_id_for(cert.app_id)
        app = state.application(cert.app_id)
        assert app is not None and app.status == "issued" and app.cert_id == cert.cert_id
        ok = [a.validator for a in app.attestations if a.ok]
        assert cert.attestors == sorted(ok)
        # DV threshold, recomputed from the application and the validator set in force.
        assert cert.total_power == vs.total_power()
        assert cert.dv_power == sum(vs.power_of(a) for a in ok)
        assert cert.dv_power * pol.dv_threshold_den > pol.dv_threshold_num * cert.total_power
        if cert.issued_type != "DV":
            k = pol.k_ov if cert.issued_type == "OV" else pol.k_ev
            approvals = {e.endorser for e in app.endorsements if e.approve}
            assert len(approvals) >= k
            assert set(cert.endorsers) <= approvals
        # Below-threshold Byzantine sets never get a bogus application issued.
        truth = self.truth[cert.app_id]
        assert truth.cert_type == cert.issued_type or cert.renews
        assert not truth.dv_bogus, "certificate issued without real domain control"
        if cert.issued_type != "DV":
            assert not truth.org_bogus, "OV/EV issued for false organisation claims"

    def _check_apps_and_proposals(self) -> None:
        state = self.c.state
        now = state.time_ms
        vs = state.validators
        for key, rec in state.items():
            if key.startswith(P_APP):
                assert rec.app_id in self.truth
                if rec.status == "pending":
                    assert rec.expires_ms > now, "an expired application is still pending"
            elif key.startswith(P_GOV):
                if rec.status == "open":
                    assert rec.expires_ms > now, "an expired proposal is still open"
                if rec.status == "passed" and rec.proposal_id not in self.passed_checked:
                    self.passed_checked.add(rec.proposal_id)
                    yes = sum(vs.power_of(a) for a in rec.yes)
                    assert 3 * yes > 2 * vs.total_power()
        # The Byzantine validators stay below a third of the power (model assumption).
        byz = sum(vs.power_of(k.address) for k in BYZ_VALIDATORS)
        assert 3 * byz < vs.total_power()

    def _check_log(self) -> None:
        state = self.c.state
        log = state.log
        meta = state.meta
        size = log.size
        root = log.root()
        assert meta.log_size == size and meta.log_root == root
        assert size == len(self.log_events)
        seen_issued: set[bytes] = set()
        seen_revoked: set[bytes] = set()
        for i in range(size):
            entry = state.log_entry(i)
            assert entry is not None and entry.index == i
            assert (entry.kind, entry.cert_id) == self.log_events[i]
            leaf = hash_leaf(codec.encode(entry))
            assert log.leaf_hash(i) == leaf
            assert verify_inclusion(leaf, i, size, log.inclusion_proof(i), root)
            assert verify_inclusion(leaf, i, size, log.inclusion_proof(i), meta.log_root)
            if entry.kind == "issued":
                assert entry.cert_id not in seen_issued
                seen_issued.add(entry.cert_id)
                cert = state.certificate(entry.cert_id)
                assert cert is not None and cert.log_index == i
            elif entry.kind == "revoked":
                assert entry.cert_id in seen_issued and entry.cert_id not in seen_revoked
                seen_revoked.add(entry.cert_id)
            else:
                assert entry.kind == "degraded" and entry.cert_id in seen_issued
        assert state.log_entry(size) is None
        assert seen_revoked == set(self.revoked)
        assert log.root(self.prev_log_size) == self.prev_log_root
        proof = log.consistency_proof(self.prev_log_size)
        assert verify_consistency(self.prev_log_size, size, self.prev_log_root, root, proof)
        self.prev_log_size, self.prev_log_root = size, root

    def _check_proofs(self, everything: bool = False) -> None:
        state = self.c.state
        root = state.app_hash
        rng = random.Random(root)
        keys = [k for k, _ in state.items()]
        fixed = [K_META, K_POLICY, K_VALS, K_VALS_PENDING, K_ENDORSERS]
        certs = [k for k in keys if k.startswith(P_CERT)]
        others = [k for k in keys if k not in fixed and not k.startswith(P_CERT)]
        sample = keys if everything else fixed + certs + rng.sample(others, min(25, len(others)))
        for key in sample:
            value, proof = state.prove(key)
            assert value is not None and value == codec.encode(state.get(key))
            assert codec.decode(value, record_type_for_key(key)) == state.get(key)
            assert verify_proof(root, sha256(key), sha256(value), proof)
            assert not verify_proof(root, sha256(key), sha256(value + b"x"), proof)
            assert not verify_proof(root, sha256(key), None, proof)
        absent = [key_domain(d) for d in NEVER_DOMAINS]
        absent += [key_cert(rng.randbytes(32)), key_app(rng.randbytes(32))]
        absent += [key_gov(rng.randbytes(32)), key_account(rng.randbytes(20))]
        absent += [key_log(state.log.size), rng.randbytes(rng.randint(0, 40))]
        for key in absent:
            assert state.get(key) is None
            value, proof = state.prove(key)
            assert value is None
            assert verify_proof(root, sha256(key), None, proof)
            assert not verify_proof(root, sha256(key), sha256(b"forged"), proof)

    @rule()
    def full_audit(self) -> None:
        """Prove every record in state, not just a sample."""
        self._check_proofs(everything=True)
        for key, rec in self.c.state.items():
            assert codec.decode(codec.encode(rec), record_type_for_key(key)) == rec


def test_ledger_state_machine() -> None:
    run_state_machine_as_test(LedgerMachine, settings=settings.get_profile(PROFILE))

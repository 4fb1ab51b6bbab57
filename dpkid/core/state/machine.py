"""The PKI contract state machine: ``apply_block(state, header, txs)``.

Pure and deterministic: no I/O, no clock (time is ``header.time_ms``), no
randomness, no iteration over unordered collections. The rules are normative
in protocol/SPEC.md; each handler names its section.

State is a map from byte keys to frozen records (types.py). The app hash is
the root of a sparse Merkle tree over ``sha256(key) -> sha256(encode(record))``
(smt.py), so every record can be proven present or absent against it.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Generic, TypeVar

import msgspec

from dpkid.core import codec
from dpkid.core.consensus.messages import DuplicateVoteEvidence
from dpkid.core.consensus.validity import EvidenceVerdict, evidence_conflict, evidence_signed
from dpkid.core.crypto import SignatureCache, address_of, sha256, verify_ed25519
from dpkid.core.domains import DomainError, validate_domain_list
from dpkid.core.keys import SubjectKeyError, parse_spki, verify_with_spki
from dpkid.core.merkle import MerkleLog
from dpkid.core.state import authz as authz_rules
from dpkid.core.state import grants, tss
from dpkid.core.state.codes import BlockError, Code, StaleStateError, TxFailure
from dpkid.core.state.smt import SmtProof, SparseMerkleTree
from dpkid.core.types import (
    MAX_TX_BYTES,
    Account,
    AccountAuthzs,
    AddEndorser,
    Application,
    Attestation,
    AttestationRecord,
    Authorization,
    AuthzAttest,
    AuthzRequest,
    CertApply,
    Certificate,
    CertRenew,
    Delegated,
    DomainIndex,
    DvAttest,
    Endorse,
    EndorsementRecord,
    EndorserRecord,
    EndorserRevoke,
    EndorserSet,
    EndorseWithdraw,
    Event,
    Genesis,
    GovAction,
    GovProposal,
    GovPropose,
    GovRevokeCert,
    GovVote,
    Grant,
    GrantCreate,
    GrantRevoke,
    Header,
    Jailed,
    LogEntry,
    Meta_,
    OrgIdentity,
    PendingValidatorChange,
    PendingValidatorChanges,
    Policy,
    Receipt,
    RemoveEndorser,
    Revoke,
    SetValidator,
    Transfer,
    TssAck,
    TssDeal,
    TssJustify,
    TssNonces,
    TssSign,
    Tx,
    ValidatorRecord,
    ValidatorRecords,
    revoke_sign_bytes,
    tx_sign_bytes,
)

R = TypeVar("R")

# ------------------------------------------------------------------ state keys (SPEC §5)
K_META: Final = b"meta"
K_POLICY: Final = b"policy"
K_VALS: Final = b"vals"
K_VALS_PENDING: Final = b"vals_pending"
K_ENDORSERS: Final = b"endorsers"
P_ACCT: Final = b"acct:"
P_APP: Final = b"app:"
P_CERT: Final = b"cert:"
P_DOM: Final = b"dom:"
P_GOV: Final = b"gov:"
P_LOG: Final = b"log:"
P_JAIL: Final = b"jail:"

# Record type stored under each key prefix, so a proof's value bytes can be decoded.
RECORD_TYPES: Final[tuple[tuple[bytes, type[Any]], ...]] = (
    (K_META, Meta_),
    (K_POLICY, Policy),
    (K_VALS_PENDING, PendingValidatorChanges),
    (K_VALS, ValidatorRecords),
    (K_ENDORSERS, EndorserSet),
    (P_ACCT, Account),
    (P_APP, Application),
    (P_CERT, Certificate),
    (P_DOM, DomainIndex),
    (P_GOV, GovProposal),
    (P_LOG, LogEntry),
    (P_JAIL, Jailed),
    (authz_rules.P_AUTHZS, AccountAuthzs),
    (authz_rules.P_AUTHZ, Authorization),
    (grants.P_GRANT, Grant),
    *tss.TSS_RECORD_TYPES,
)

# RFC 5280 CRLReason values a ledger revocation may carry. cACompromise and
# aACompromise name authorities dpkid does not have; certificateHold and
# removeFromCRL are for temporary holds, and ledger revocation is permanent.
ALLOWED_REASONS: Final = (0, 1, 3, 4, 5, 9)
REASON_NAMES: Final = {
    0: "unspecified",
    1: "keyCompromise",
    3: "affiliationChanged",
    4: "superseded",
    5: "cessationOfOperation",
    9: "privilegeWithdrawn",
}

MAX_VALIDATORS: Final = 150
MAX_ENDORSERS: Final = 256
MS_PER_DAY: Final = 86_400_000

APP_TAG: Final = b"dpkid/app/v1\x00"
CERT_TAG: Final = b"dpkid/cert/v1\x00"
GOV_TAG: Final = b"dpkid/gov/v1\x00"


def key_account(addr: bytes) -> bytes:
    return P_ACCT + addr


def key_app(app_id: bytes) -> bytes:
    return P_APP + app_id


def key_cert(cert_id: bytes) -> bytes:
    return P_CERT + cert_id


def key_domain(domain: str) -> bytes:
    return P_DOM + domain.encode("ascii")


def key_gov(pid: bytes) -> bytes:
    return P_GOV + pid


def key_log(index: int) -> bytes:
    return P_LOG + index.to_bytes(8, "big")


def record_type_for_key(key: bytes) -> type[Any]:
    for prefix, typ in RECORD_TYPES:
        if key == prefix or (prefix.endswith(b":") and key.startswith(prefix)):
            return typ
    raise KeyError(f"no record type for key {key!r}")


def cert_id_for(app_id: bytes) -> bytes:
    return sha256(CERT_TAG + app_id)


def cert_status(cert: Certificate, time_ms: int) -> str:
    """Status judged at a header time, never at a wall clock."""
    if cert.status == "revoked":
        return "revoked"
    if time_ms < cert.not_before_ms:
        return "not_yet_valid"
    if time_ms >= cert.not_after_ms:
        return "expired"
    return "valid"


SigCheck = Callable[[bytes, bytes, bytes, bytes], bool]


def _plain_sig_check(tx_hash: bytes, pubkey: bytes, msg: bytes, sig: bytes) -> bool:
    return verify_ed25519(pubkey, msg, sig)


# ------------------------------------------------------------------ the state


class _Slot(Generic[R]):
    """A typed, read-only view of one fixed key of the state (meta, policy, ...)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __get__(self, st: _Reads, owner: type[_Reads] | None = None) -> R:
        v: R = st.get(self.key)
        return v


class _Reads(ABC):
    """Typed reads over ``get``, shared by the committed state and a block being applied."""

    @abstractmethod
    def get(self, key: bytes) -> Any: ...

    validators: _Slot[ValidatorRecords] = _Slot(K_VALS)
    pending_validator_changes: _Slot[PendingValidatorChanges] = _Slot(K_VALS_PENDING)
    endorsers: _Slot[EndorserSet] = _Slot(K_ENDORSERS)

    def application(self, app_id: bytes) -> Application | None:
        a: Application | None = self.get(key_app(app_id))
        return a

    def certificate(self, cert_id: bytes) -> Certificate | None:
        c: Certificate | None = self.get(key_cert(cert_id))
        return c

    def proposal(self, pid: bytes) -> GovProposal | None:
        p: GovProposal | None = self.get(key_gov(pid))
        return p

    def certs_by_domain(self, domain: str) -> list[Certificate]:
        idx: DomainIndex | None = self.get(key_domain(domain))
        if idx is None:
            return []
        out = []
        for cid in idx.cert_ids:
            c = self.certificate(cid)
            if c is not None:
                out.append(c)
        return out


class State(_Reads):
    """The whole ledger state at one height.

    ``apply_block`` consumes a State and returns a new one that takes over its
    storage; using the old object afterwards raises StaleStateError. Call
    ``copy()`` first to keep both.
    """

    def __init__(
        self,
        kv: dict[bytes, Any],
        tree: SparseMerkleTree,
        log: MerkleLog,
        app_expiry: list[tuple[int, bytes]],
        gov_expiry: list[tuple[int, bytes]],
        endorsed: dict[bytes, dict[bytes, None]],
    ) -> None:
        self._kv = kv
        self._tree = tree
        self._log = log
        self._app_expiry = app_expiry
        self._gov_expiry = gov_expiry
        self._endorsed = endorsed
        self._live = True
        self.last_events: list[Event] = []
        # Keys the last apply_block wrote (deleted keys included): what a store persists.
        self.last_writes: list[bytes] = []
        self._prev_tree: SparseMerkleTree | None = None
        self._prev_values: dict[bytes, Any] = {}
        self._prev_height = -1

    # -- lifecycle
    def _check(self) -> None:
        if not self._live:
            raise StaleStateError("this State was consumed by apply_block; use the returned one")

    def copy(self) -> State:
        self._check()
        st = State(
            dict(self._kv),
            self._tree,
            self._log.copy(),
            list(self._app_expiry),
            list(self._gov_expiry),
            {k: dict(v) for k, v in self._endorsed.items()},
        )
        st.last_events = list(self.last_events)
        return st

    # -- raw access
    def get(self, key: bytes) -> Any:
        self._check()
        return self._kv.get(key)

    def items(self) -> Iterable[tuple[bytes, Any]]:
        """All records in key order (for persistence and audits)."""
        self._check()
        for k in sorted(self._kv):
            yield k, self._kv[k]

    def __len__(self) -> int:
        return len(self._kv)

    @property
    def app_hash(self) -> bytes:
        self._check()
        return self._tree.root_hash

    @property
    def log(self) -> MerkleLog:
        self._check()
        return self._log

    # -- typed views
    meta: _Slot[Meta_] = _Slot(K_META)
    policy: _Slot[Policy] = _Slot(K_POLICY)

    @property
    def chain_id(self) -> str:
        return self.meta.chain_id

    @property
    def height(self) -> int:
        return self.meta.height

    @property
    def time_ms(self) -> int:
        return self.meta.time_ms

    def account(self, addr: bytes) -> Account | None:
        a: Account | None = self.get(key_account(addr))
        return a

    def balance(self, addr: bytes) -> int:
        a = self.account(addr)
        return a.balance if a else 0

    def pending_application_ids(self, limit: int = 10_000) -> list[bytes]:
        """Applications still pending, soonest expiry first (a restarted
        validator re-checks these). Read from the derived expiry index."""
        return [app_id for _, app_id in self.pending_applications(limit)]

    def pending_authz_ids(self, limit: int = 256) -> list[bytes]:
        """Authorizations still pending, soonest expiry first, for a restarted
        validator to check. A full scan of the records (there is no index):
        for startup, not for every block."""
        self._check()
        now = self.time_ms
        found = sorted(
            (a.expires_ms, a.authz_id)
            for k, a in self._kv.items()
            if k.startswith(authz_rules.P_AUTHZ)
            and isinstance(a, Authorization)
            and authz_rules.authz_status(a, now) == "pending"
        )
        return [aid for _, aid in found[:limit]]

    def pending_applications(
        self, limit: int, after: tuple[int, bytes] = (-1, b"")
    ) -> list[tuple[int, bytes]]:
        """(expiry, id) of pending applications in (expiry, id) order, from just
        past ``after``: a cursor, so a reader can walk all of them in pages."""
        self._check()
        out: list[tuple[int, bytes]] = []
        for exp, app_id in sorted(x for x in self._app_expiry if x > after):
            app = self.application(app_id)
            if app is not None and app.status == "pending" and app.expires_ms == exp:
                out.append((exp, app_id))
                if len(out) >= limit:
                    break
        return out

    def log_entry(self, index: int) -> LogEntry | None:
        e: LogEntry | None = self.get(key_log(index))
        return e

    # -- proofs (SPEC §6)
    def prove(self, key: bytes) -> tuple[bytes | None, SmtProof]:
        """Value bytes (None if absent) and a proof against ``app_hash``."""
        self._check()
        rec = self._kv.get(key)
        value = codec.encode(rec) if rec is not None else None
        return value, self._tree.prove(sha256(key))

    # -- persistence (SPEC §5.2)
    @classmethod
    def from_records(cls, records: Iterable[tuple[bytes, bytes]]) -> State:
        """Rebuild a State from its encoded records (as stored by a node).

        The Merkle tree, the certificate log and the in-memory indices (expiry
        queues, endorser -> certificates) are all derived from the records,
        so a restored node expires, degrades and proves exactly as before.
        """
        kv: dict[bytes, Any] = {}
        for key, raw in records:
            kv[key] = codec.decode(raw, record_type_for_key(key))
        if K_META not in kv:
            raise ValueError("records hold no meta record")
        log = MerkleLog()
        meta: Meta_ = kv[K_META]
        for i in range(meta.log_size):
            entry = kv.get(key_log(i))
            if entry is None:
                raise ValueError(f"certificate log entry {i} is missing")
            log.append(codec.encode(entry))
        if log.root() != meta.log_root:
            raise ValueError("certificate log does not match the root in meta")
        app_expiry: list[tuple[int, bytes]] = []
        gov_expiry: list[tuple[int, bytes]] = []
        endorsed: dict[bytes, dict[bytes, None]] = {}
        for key in sorted(kv):
            v = kv[key]
            if key.startswith(P_APP) and v.status == "pending":
                app_expiry.append((v.expires_ms, v.app_id))
            elif key.startswith(P_GOV) and v.status == "open":
                gov_expiry.append((v.expires_ms, v.proposal_id))
            elif key.startswith(P_CERT):
                for e in v.endorsers:
                    endorsed.setdefault(e, {})[v.cert_id] = None
        heapq.heapify(app_expiry)
        heapq.heapify(gov_expiry)
        tree = SparseMerkleTree().update(
            [(sha256(k), sha256(codec.encode(v))) for k, v in sorted(kv.items())]
        )
        return cls(kv, tree, log, app_expiry, gov_expiry, endorsed)

    def encoded_records(self) -> Iterable[tuple[bytes, bytes]]:
        for k, v in self.items():
            yield k, codec.encode(v)

    def prove_previous(self, key: bytes) -> tuple[int, bytes, bytes | None, SmtProof]:
        """Prove ``key`` in the state one block back: (height, root, value, proof).

        The header at the latest height carries that state's root as its
        app_hash, and its commit is already known, so this is what a client
        can check without waiting for the next block.
        """
        self._check()
        if self._prev_tree is None:
            raise ValueError("no previous state kept (restored or genesis state)")
        rec = self._prev_values[key] if key in self._prev_values else self._kv.get(key)
        value = codec.encode(rec) if rec is not None else None
        return (
            self._prev_height,
            self._prev_tree.root_hash,
            value,
            self._prev_tree.prove(sha256(key)),
        )

    def get_previous(self, key: bytes) -> Any:
        self._check()
        return self._prev_values[key] if key in self._prev_values else self._kv.get(key)

    # -- invariants used by tests and audits
    def supply_in_accounts_and_escrow(self) -> int:
        total = 0
        for k, v in self.items():
            if k.startswith(P_ACCT):
                total += v.balance
            elif k.startswith(P_APP) and v.status == "pending":
                total += v.escrow
        return total


# ------------------------------------------------------------------ genesis


class GenesisError(ValueError):
    pass


def validate_genesis(g: Genesis) -> None:
    p = g.policy
    if not g.validators:
        raise GenesisError("genesis needs at least one validator")
    if len(g.validators) > MAX_VALIDATORS:
        raise GenesisError(f"at most {MAX_VALIDATORS} validators")
    if any(v.power <= 0 for v in g.validators):
        raise GenesisError("validator power must be positive")
    if len({address_of(v.pubkey) for v in g.validators}) != len(g.validators):
        raise GenesisError("duplicate validator key")
    if len({address_of(e.pubkey) for e in g.endorsers}) != len(g.endorsers):
        raise GenesisError("duplicate endorser key")
    if len({a.address for a in g.accounts}) != len(g.accounts):
        raise GenesisError("duplicate account")
    if not (0 < p.dv_threshold_num < p.dv_threshold_den <= 1000):
        raise GenesisError("dv threshold must be a fraction strictly between 0 and 1")
    if p.k_ov < 2 or p.k_ev < 2:
        raise GenesisError("k_ov and k_ev must be at least 2: one endorser may never issue alone")
    if not (0 <= p.endorser_share_bps <= 10_000 and 0 <= p.refund_fee_bps <= 10_000):
        raise GenesisError("basis points must be within 0..10000")
    if p.max_validity_days < 1 or p.max_domains < 1 or p.max_certs_per_domain < 1:
        raise GenesisError("policy limits must be positive")
    if sum(a.balance for a in g.accounts) >= 2**63:
        raise GenesisError("total supply must be below 2**63")
    if any(v.power > 2**40 for v in g.validators):
        raise GenesisError("validator power is at most 2**40")
    if len(g.endorsers) > MAX_ENDORSERS:
        raise GenesisError(f"at most {MAX_ENDORSERS} endorsers")
    if p.max_validity_days > 3650 or p.max_domains > 100 or p.max_certs_per_domain > 1_000_000:
        raise GenesisError(
            "policy limits above their hard caps (3650 days, 100 names, 10**6 certs)"
        )
    if p.k_ov > MAX_ENDORSERS or p.k_ev > MAX_ENDORSERS:
        raise GenesisError(f"k_ov and k_ev are at most {MAX_ENDORSERS}")
    year_ms = 366 * 86_400_000
    if p.application_ttl_ms > 10 * year_ms or p.gov_ttl_ms > 10 * year_ms:
        raise GenesisError("TTLs are at most ten years")
    if not 60_000 <= p.trusting_period_ms <= year_ms:
        raise GenesisError("trusting_period_ms must be between one minute and one year")
    if not 0 < p.authz_reuse_ms <= year_ms or not 1 <= p.max_pending_authzs <= 10_000:
        raise GenesisError(
            "authz_reuse_ms must be in (0, 1 year] and max_pending_authzs in 1..10000"
        )
    if max(p.fee_dv, p.fee_ov, p.fee_ev, p.min_tx_fee) >= 2**62:
        raise GenesisError("fees must be below 2**62")


def genesis_state(g: Genesis) -> State:
    validate_genesis(g)
    kv: dict[bytes, Any] = {}
    vals = sorted(
        (ValidatorRecord(address_of(v.pubkey), v.pubkey, v.power, v.name) for v in g.validators),
        key=lambda r: r.address,
    )
    kv[K_VALS] = ValidatorRecords(vals)
    kv[K_VALS_PENDING] = PendingValidatorChanges([])
    ends = sorted(
        (EndorserRecord(address_of(e.pubkey), e.pubkey, e.name, True, 0) for e in g.endorsers),
        key=lambda r: r.address,
    )
    kv[K_ENDORSERS] = EndorserSet(ends)
    kv[K_POLICY] = g.policy
    supply = 0
    for a in sorted(g.accounts, key=lambda a: a.address):
        kv[key_account(a.address)] = Account(a.balance, 0, b"")
        supply += a.balance
    log = MerkleLog()
    kv[K_META] = Meta_(g.chain_id, 0, g.genesis_time_ms, supply, 0, log.root())
    kv.update(tss.genesis_records([(v.address, v.pubkey, v.power) for v in vals]))
    tree = SparseMerkleTree().update(
        [(sha256(k), sha256(codec.encode(v))) for k, v in sorted(kv.items())]
    )
    return State(kv, tree, log, [], [], {})


# ------------------------------------------------------------------ execution context


_DELETED: Final = object()


class _Block(_Reads):
    """Overlay of one block's writes over the consumed state's map.

    Two layers: block writes, and the current tx's writes on top. A failed tx
    body drops only its own layer (the fee and nonce were written to the block
    layer before the body ran).
    """

    def __init__(self, state: State, header: Header, check_sig: SigCheck) -> None:
        self.base = state._kv
        self.state = state
        self.header = header
        self.height = header.height
        self.now = header.time_ms
        self.check_sig = check_sig
        self.block: dict[bytes, Any] = {}
        self.tx: dict[bytes, Any] | None = None
        self.tx_log: list[LogEntry] = []
        self.log_entries: list[LogEntry] = []
        self.tx_events: list[Event] = []
        self.block_events: list[Event] = []
        self.fees = 0
        self.policy: Policy = state._kv[K_POLICY]
        self.chain_id: str = state._kv[K_META].chain_id
        self.log_base = state._log.size
        self.new_app_expiry: list[tuple[int, bytes]] = []
        self.new_gov_expiry: list[tuple[int, bytes]] = []

    # -- reads and writes
    def get(self, key: bytes) -> Any:
        if self.tx is not None and key in self.tx:
            v = self.tx[key]
        elif key in self.block:
            v = self.block[key]
        else:
            return self.base.get(key)
        return None if v is _DELETED else v

    def put(self, key: bytes, value: Any) -> None:
        (self.tx if self.tx is not None else self.block)[key] = value

    def begin_tx(self) -> None:
        self.tx = {}
        self.tx_log = []
        self.tx_events = []

    def commit_tx(self) -> list[Event]:
        assert self.tx is not None
        self.block.update(self.tx)
        self.log_entries.extend(self.tx_log)
        events = self.tx_events
        self.tx = None
        self.tx_log = []
        self.tx_events = []
        return events

    def abort_tx(self) -> None:
        self.tx = None
        self.tx_log = []
        self.tx_events = []

    def emit(self, kind: str, ref: bytes, detail: str = "") -> None:
        ev = Event(kind, ref, detail)
        if self.tx is not None:
            self.tx_events.append(ev)
        else:
            self.block_events.append(ev)

    # -- typed helpers
    def account(self, addr: bytes) -> Account:
        a: Account | None = self.get(key_account(addr))
        return a if a is not None else Account()

    def credit(self, addr: bytes, amount: int) -> None:
        if amount == 0:
            return
        a = self.account(addr)
        self.put(key_account(addr), msgspec.structs.replace(a, balance=a.balance + amount))

    def debit(self, addr: bytes, amount: int) -> None:
        a = self.account(addr)
        if a.balance < amount:
            raise TxFailure(Code.INSUFFICIENT_FUNDS, f"balance {a.balance} < {amount}")
        self.put(key_account(addr), msgspec.structs.replace(a, balance=a.balance - amount))

    def next_log_index(self) -> int:
        return self.log_base + len(self.log_entries) + len(self.tx_log)

    def append_log(self, kind: str, cert: Certificate) -> None:
        entry = LogEntry(
            cert.log_index if kind == "issued" else self.next_log_index(),
            kind,
            cert.cert_id,
            self.height,
            self.now,
            sha256(codec.encode(cert)),
        )
        self.put(key_log(entry.index), entry)
        self.tx_log.append(entry)


# ------------------------------------------------------------------ apply_block


def apply_block(
    state: State,
    header: Header,
    txs: Sequence[bytes],
    sig_check: SigCheck | SignatureCache | None = None,
    evidence: Sequence[DuplicateVoteEvidence] = (),
) -> tuple[State, list[Receipt], bytes]:
    """Execute one block. Never raises on bad transactions: each gets a receipt.

    Raises BlockError only if ``header`` cannot follow ``state`` (wrong chain,
    height or time): that is the caller's mistake, not a peer's.
    """
    state._check()
    meta: Meta_ = state._kv[K_META]
    if header.chain_id != meta.chain_id:
        raise BlockError(f"header chain_id {header.chain_id!r} != {meta.chain_id!r}")
    if header.height != meta.height + 1:
        raise BlockError(f"header height {header.height} does not follow {meta.height}")
    if header.time_ms < meta.time_ms:
        raise BlockError(f"header time {header.time_ms} is before {meta.time_ms}")
    if sig_check is None:
        check: SigCheck = _plain_sig_check
    elif isinstance(sig_check, SignatureCache):
        check = sig_check.check
    else:
        check = sig_check

    b = _Block(state, header, check)
    _begin_block(b)
    for ev in evidence:
        _punish(b, ev)
    receipts = [_apply_tx(b, raw) for raw in txs]
    _end_block(b)
    new_state = _commit(state, b)
    return new_state, receipts, new_state.app_hash


def _begin_block(b: _Block) -> None:
    # SPEC §8.1: validator-set changes scheduled for this height take effect
    # before any transaction, so every rule in this block sees one set.
    pending: PendingValidatorChanges = b.get(K_VALS_PENDING)
    due = [c for c in pending.changes if c.effective_height <= b.height]
    if due:
        vals = {v.address: v for v in b.validators.validators}
        for c in due:
            addr = address_of(c.pubkey)
            if c.power == 0:
                vals.pop(addr, None)
            else:
                old = vals.get(addr)
                vals[addr] = ValidatorRecord(addr, c.pubkey, c.power, old.name if old else "")
            b.emit("validator_update", addr, str(c.power))
        b.put(K_VALS, ValidatorRecords([vals[a] for a in sorted(vals)]))
        rest = [c for c in pending.changes if c.effective_height > b.height]
        b.put(K_VALS_PENDING, PendingValidatorChanges(rest))

    # SPEC §7.8: expire applications and proposals whose deadline has passed.
    heap = b.state._app_expiry
    while heap and heap[0][0] <= b.now:
        exp, app_id = heapq.heappop(heap)
        app = b.application(app_id)
        if app is not None and app.status == "pending" and app.expires_ms == exp:
            _close_refund(b, app, "expired", "application expired before it was decided")
    gheap = b.state._gov_expiry
    while gheap and gheap[0][0] <= b.now:
        exp, pid = heapq.heappop(gheap)
        prop: GovProposal | None = b.get(key_gov(pid))
        if prop is not None and prop.status == "open" and prop.expires_ms == exp:
            b.put(key_gov(pid), msgspec.structs.replace(prop, status="expired"))
            b.emit("gov_expired", pid)


def _punish(b: _Block, ev: DuplicateVoteEvidence) -> None:
    """SPEC §8.2: proven equivocation jails the validator: power 0 from H+2."""
    # The verdicts are the node's (CONSENSUS.md §7.3), so both judge alike; the
    # event texts are ledger output (receipts' events), fixed by the vectors.
    va = ev.vote_a
    addr = va.validator
    if evidence_conflict(ev, b.chain_id) is not EvidenceVerdict.OK:
        b.emit("evidence_invalid", addr, "votes do not conflict")
        return
    if b.get(P_JAIL + addr) is not None:
        b.emit("evidence_duplicate", addr, "already jailed")
        return
    rec = next((v for v in b.validators.validators if v.address == addr), None)
    if rec is None:
        b.emit("evidence_invalid", addr, "not a current validator")
        return
    if evidence_signed(ev, rec.pubkey, verify_ed25519) is not EvidenceVerdict.OK:
        b.emit("evidence_invalid", addr, "signature does not verify")
        return
    pending: PendingValidatorChanges = b.get(K_VALS_PENDING)
    if not (set(scheduled_powers(b.validators, pending)) - {addr}):
        b.emit("evidence_deferred", addr, "jailing would leave no validator")
        return
    b.put(P_JAIL + addr, Jailed(addr, b.height, ev.key()))
    change = PendingValidatorChange(b.height + 2, rec.pubkey, 0)
    b.put(K_VALS_PENDING, PendingValidatorChanges([*pending.changes, change]))
    b.emit("validator_jailed", addr, f"equivocated at height {va.height} round {va.round}")


def scheduled_powers(
    vals: ValidatorRecords, pending: PendingValidatorChanges, by_height: int | None = None
) -> dict[bytes, tuple[bytes, int]]:
    """address -> (pubkey, power) of the set once the pending changes due by
    ``by_height`` (all of them when None) are in force, in schedule order; a
    change to power 0 removes the validator (SPEC §8.1, CONSENSUS.md §8). The
    one rule for what a set will be, for the ledger and the node alike."""
    out = {v.address: (v.pubkey, v.power) for v in vals.validators}
    for c in pending.changes:
        if by_height is not None and c.effective_height > by_height:
            continue
        a = address_of(c.pubkey)
        if c.power == 0:
            out.pop(a, None)
        else:
            out[a] = (c.pubkey, c.power)
    return out


def _end_block(b: _Block) -> None:
    # SPEC §16: key generation, CRL schedule and signing attempts.
    tss.end_block(b)
    # SPEC §9: all fees of the block go to its proposer.
    if b.fees:
        b.credit(b.header.proposer, b.fees)


def _commit(old: State, b: _Block) -> State:
    kv = old._kv
    old_height = kv[K_META].height
    old._live = False
    log = old._log
    for entry in b.log_entries:
        idx = log.append(codec.encode(entry))
        assert idx == entry.index, "log index drift"
    meta: Meta_ = kv[K_META]
    b.block[K_META] = Meta_(meta.chain_id, b.height, b.now, meta.total_supply, log.size, log.root())
    updates: list[tuple[bytes, bytes | None]] = []
    endorsed = old._endorsed
    prev_values: dict[bytes, Any] = {}
    for key in sorted(b.block):
        val = b.block[key]
        prev_values[key] = kv.get(key)
        if val is _DELETED:
            kv.pop(key, None)
            updates.append((sha256(key), None))
            continue
        kv[key] = val
        updates.append((sha256(key), sha256(codec.encode(val))))
        if key.startswith(P_CERT):
            for e in val.endorsers:
                endorsed.setdefault(e, {})[val.cert_id] = None
    for item in b.new_app_expiry:
        heapq.heappush(old._app_expiry, item)
    for item in b.new_gov_expiry:
        heapq.heappush(old._gov_expiry, item)
    tree = old._tree.update(updates)
    st = State(kv, tree, log, old._app_expiry, old._gov_expiry, endorsed)
    st.last_events = b.block_events
    st.last_writes = sorted(b.block)
    # One block of history, so a node can prove records against the app hash
    # that the latest header carries (it commits to the state one block back).
    st._prev_tree = old._tree
    st._prev_values = prev_values
    st._prev_height = old_height
    return st


# ------------------------------------------------------------------ one transaction


def _receipt(
    h: bytes, code: Code, log: str, fee: int = 0, ev: list[Event] | None = None
) -> Receipt:
    return Receipt(h, int(code), log, fee, ev or [])


def check_tx_form(raw: bytes, h: bytes, chain_id: str, check_sig: SigCheck) -> Tx | TxFailure:
    """SPEC §4.3 checks 1-5 (bytes, size, encoding, chain id, signature): the ledger's
    pre-checks, which the mempool runs too, so both refuse alike."""
    if len(raw) > MAX_TX_BYTES:
        return TxFailure(Code.TX_TOO_LARGE, f"{len(raw)} bytes > {MAX_TX_BYTES}")
    try:
        tx = codec.decode(raw, Tx, max_bytes=MAX_TX_BYTES)
    except codec.DecodeError as exc:
        return TxFailure(Code.MALFORMED, f"malformed transaction: {exc}")
    if tx.chain_id != chain_id:
        return TxFailure(Code.WRONG_CHAIN_ID, f"chain id {tx.chain_id!r} != {chain_id!r}")
    if not check_sig(h, tx.pubkey, tx_sign_bytes(tx.unsigned()), tx.sig):
        return TxFailure(Code.BAD_SIGNATURE, "signature does not verify")
    return tx


def check_tx_fee(tx: Tx, policy: Policy, balance: int) -> TxFailure | None:
    """SPEC §4.3 checks 8-9: the fee meets the minimum and the sender can pay it."""
    if tx.fee < policy.min_tx_fee:
        return TxFailure(Code.FEE_TOO_LOW, f"fee {tx.fee} < minimum {policy.min_tx_fee}")
    if balance < tx.fee:
        return TxFailure(Code.CANNOT_PAY_FEE, f"balance {balance} < fee {tx.fee}")
    return None


def _apply_tx(b: _Block, raw: bytes) -> Receipt:
    h = sha256(raw) if isinstance(raw, bytes) else b"\x00" * 32
    # SPEC §4.3: pre-checks. A failure here changes nothing at all.
    if not isinstance(raw, bytes):
        return _receipt(h, Code.MALFORMED, "transaction is not bytes")
    tx = check_tx_form(raw, h, b.chain_id, b.check_sig)
    if isinstance(tx, TxFailure):
        return _receipt(h, tx.code, tx.message)
    sender = address_of(tx.pubkey)
    acct = b.account(sender)
    if tx.nonce != acct.nonce:
        return _receipt(h, Code.BAD_NONCE, f"nonce {tx.nonce}, expected {acct.nonce}")
    grant: Grant | None = None
    if isinstance(tx.body, Delegated):
        # SPEC §4.3 check 7 and §7.10: the grant's owner pays, within its limit.
        found = grants.check_delegated(b.get, tx, b.now)
        if isinstance(found, TxFailure):
            return _receipt(h, found.code, found.message)
        grant = found
    payer = grant.owner if grant is not None else sender
    unpaid = check_tx_fee(tx, b.policy, b.account(payer).balance)
    if unpaid is not None:
        return _receipt(h, unpaid.code, unpaid.message)
    # SPEC §4.4: from here on the fee is charged and the nonce is used, even if
    # the body fails, so a failing tx still pays for the block space it took.
    if grant is None:
        b.put(key_account(sender), Account(acct.balance - tx.fee, acct.nonce + 1, tx.pubkey))
    else:
        b.put(key_account(sender), Account(acct.balance, acct.nonce + 1, tx.pubkey))
        b.debit(payer, tx.fee)
        grants.charge_fee(b, grant, tx.fee)
    b.fees += tx.fee
    b.begin_tx()
    try:
        _HANDLERS[type(tx.body)](b, tx, sender, h)
    except TxFailure as f:
        b.abort_tx()
        return _receipt(h, f.code, f.message, tx.fee)
    events = b.commit_tx()
    return _receipt(h, Code.OK, "ok", tx.fee, events)


# ------------------------------------------------------------------ handlers


def _h_transfer(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: Transfer = tx.body  # type: ignore[assignment]
    if body.amount <= 0:
        raise TxFailure(Code.INVALID_AMOUNT, "amount must be positive")
    b.debit(sender, body.amount)
    b.credit(body.to, body.amount)
    b.emit("transfer", body.to, str(body.amount))


def _fee_for(policy: Policy, cert_type: str) -> int:
    return {"DV": policy.fee_dv, "OV": policy.fee_ov, "EV": policy.fee_ev}[cert_type]


def _k_for(policy: Policy, cert_type: str) -> int:
    return {"DV": 0, "OV": policy.k_ov, "EV": policy.k_ev}[cert_type]


def _check_org(cert_type: str, org: OrgIdentity | None) -> OrgIdentity | None:
    # SPEC §7.2: DV names only domains and key, so the account stays pseudonymous.
    if cert_type == "DV":
        if org is not None:
            raise TxFailure(Code.INVALID_ORG, "a DV application must not carry identity claims")
        return None
    if org is None:
        raise TxFailure(Code.INVALID_ORG, f"an {cert_type} application needs organization claims")
    if cert_type == "EV" and (not org.registration_id or not org.jurisdiction):
        raise TxFailure(Code.INVALID_ORG, "EV needs registration_id and jurisdiction")
    return org


def _check_spki(spki: bytes) -> None:
    try:
        parse_spki(spki)
    except SubjectKeyError as exc:
        raise TxFailure(Code.INVALID_KEY, f"subject key: {exc}") from None


def _live_certs(b: _Block, domain: str) -> list[bytes]:
    live = ("valid", "not_yet_valid")
    return [c.cert_id for c in b.certs_by_domain(domain) if cert_status(c, b.now) in live]


def _new_application(
    b: _Block,
    sender: bytes,
    tx: Tx,
    h: bytes,
    cert_type: str,
    domains: list[str],
    spki: bytes,
    validity_days: int,
    escrow: int,
    org: OrgIdentity | None,
    renews: bytes,
) -> Application:
    p = b.policy
    if validity_days > p.max_validity_days:
        raise TxFailure(
            Code.INVALID_VALIDITY, f"validity {validity_days} days > policy {p.max_validity_days}"
        )
    if len(domains) > p.max_domains:
        raise TxFailure(Code.TOO_MANY_DOMAINS, f"{len(domains)} names > policy {p.max_domains}")
    try:
        canon = validate_domain_list(domains, p.max_domains)
    except DomainError as exc:
        code = Code.TOO_MANY_DOMAINS if exc.reason == "too_many" else Code.INVALID_DOMAIN
        raise TxFailure(code, f"domain: {exc}") from None
    if canon != list(domains):
        raise TxFailure(Code.INVALID_DOMAIN, "domains must be listed in sorted order")
    _check_spki(spki)
    org = _check_org(cert_type, org)
    need = _fee_for(p, cert_type)
    if escrow < need:
        raise TxFailure(Code.INSUFFICIENT_ESCROW, f"escrow {escrow} < {cert_type} fee {need}")
    for d in canon:
        if len([c for c in _live_certs(b, d) if c != renews]) >= p.max_certs_per_domain:
            raise TxFailure(Code.DOMAIN_CERT_LIMIT, f"{d} already has the policy maximum of certs")
    b.debit(sender, escrow)
    app_id = sha256(APP_TAG + h)
    app = Application(
        app_id=app_id,
        applicant=sender,
        applicant_pubkey=tx.pubkey,
        cert_type=cert_type,
        domains=canon,
        spki=spki,
        validity_days=validity_days,
        org=org,
        escrow=escrow,
        created_height=b.height,
        created_ms=b.now,
        expires_ms=b.now + p.application_ttl_ms,
        status="pending",
        attestations=[],
        conflicts=[],
        endorsements=[],
        renews=renews,
    )
    b.put(key_app(app_id), app)
    b.new_app_expiry.append((app.expires_ms, app_id))
    b.emit("app_created", app_id, cert_type)
    return app


def _with_authzs(b: _Block, app: Application, authz_ids: list[bytes]) -> None:
    """SPEC §7.9: valid authorizations stand in for the application's own
    attestations; the usual decision (§7.5) then runs at once."""
    if not authz_ids:
        return
    atts = authz_rules.covering_attestations(b, app.applicant, app.domains, authz_ids)
    app = msgspec.structs.replace(app, attestations=atts)
    b.put(key_app(app.app_id), app)
    b.emit("app_authorized", app.app_id, f"{len(authz_ids)} authorizations")
    _decide(b, app)


def _h_cert_apply(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: CertApply = tx.body  # type: ignore[assignment]
    app = _new_application(
        b,
        sender,
        tx,
        h,
        body.cert_type,
        body.domains,
        body.spki,
        body.validity_days,
        body.escrow,
        body.org,
        b"",
    )
    _with_authzs(b, app, body.authzs)


def _h_cert_renew(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: CertRenew = tx.body  # type: ignore[assignment]
    cert = b.certificate(body.cert_id)
    if cert is None:
        raise TxFailure(Code.UNKNOWN_CERT, "no such certificate")
    if cert.owner != sender:
        raise TxFailure(Code.NOT_AUTHORIZED, "only the owning account may renew")
    if cert.status == "revoked":
        raise TxFailure(Code.CERT_REVOKED, "a revoked certificate cannot be renewed")
    spki = body.new_spki or cert.spki
    # Renewal re-runs validation at the type the certificate holds now, so a
    # degraded OV/EV renews as DV unless it is endorsed again.
    app = _new_application(
        b,
        sender,
        tx,
        h,
        cert.cert_type,
        cert.domains,
        spki,
        body.validity_days,
        body.escrow,
        cert.org if cert.cert_type != "DV" else None,
        cert.cert_id,
    )
    _with_authzs(b, app, body.authzs)


def _h_dv_attest(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: DvAttest = tx.body  # type: ignore[assignment]
    if b.validators.power_of(sender) <= 0:
        raise TxFailure(Code.NOT_VALIDATOR, "only an active validator may attest")
    seen: list[bytes] = []
    for item in body.items:
        # Items are independent: one stale item must not void a validator's
        # whole batch, so skips are reported as events, not failures.
        if item.app_id in seen:
            b.emit("attest_skipped", item.app_id, "duplicate item in batch")
            continue
        seen.append(item.app_id)
        _attest_one(b, sender, item)


def _attest_one(b: _Block, validator: bytes, item: Attestation) -> None:
    app = b.application(item.app_id)
    if app is None:
        b.emit("attest_skipped", item.app_id, "unknown application")
        return
    if app.status != "pending":
        b.emit("attest_skipped", item.app_id, f"application is {app.status}")
        return
    if item.ok and item.method != "dns-01" and any(d.startswith("*.") for d in app.domains):
        # SPEC §7.3: control of a whole zone is shown only through DNS (RFC 8555 §8.4).
        b.emit("attest_skipped", item.app_id, "wildcard names need dns-01")
        return
    if app.applicant == validator:
        b.emit("attest_skipped", item.app_id, "a validator may not attest its own application")
        return
    if authz_rules.authorized(app.attestations):
        b.emit("attest_skipped", item.app_id, "validated through authorizations")
        return
    rec = AttestationRecord(validator, item.ok, item.method, item.reason, b.height)
    prior = next((a for a in app.attestations if a.validator == validator), None)
    if prior is not None:
        if prior.ok == item.ok:
            b.emit("attest_skipped", item.app_id, "already attested")
            return
        # SPEC §7.3: the first word of a validator counts; a contradiction is
        # kept on the record as evidence of a faulty or lying vantage point.
        if len(app.conflicts) < 64:
            app = msgspec.structs.replace(app, conflicts=[*app.conflicts, rec])
        b.put(key_app(app.app_id), app)
        b.emit("attest_conflict", item.app_id, validator.hex())
        return
    atts = sorted([*app.attestations, rec], key=lambda a: a.validator)
    app = msgspec.structs.replace(app, attestations=atts)
    b.put(key_app(app.app_id), app)
    b.emit("attested", item.app_id, "ok" if item.ok else f"fail: {item.reason}")
    _decide(b, app)


def _h_endorse(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: Endorse = tx.body  # type: ignore[assignment]
    end = b.endorsers.get(sender)
    if end is None or not end.active:
        raise TxFailure(Code.NOT_ENDORSER, "only an active registered endorser may endorse")
    app = b.application(body.app_id)
    if app is None:
        raise TxFailure(Code.UNKNOWN_APPLICATION, "no such application")
    if app.cert_type == "DV":
        raise TxFailure(Code.NOT_ENDORSABLE, "DV applications take no endorsements")
    if app.status != "pending":
        raise TxFailure(Code.APPLICATION_CLOSED, f"application is {app.status}")
    if app.applicant == sender:
        raise TxFailure(Code.NOT_AUTHORIZED, "an endorser may not endorse its own application")
    if any(e.endorser == sender for e in app.endorsements):
        raise TxFailure(Code.DUPLICATE_ENDORSEMENT, "this endorser already decided")
    rec = EndorsementRecord(sender, body.approve, body.reason, b.height)
    ends = sorted([*app.endorsements, rec], key=lambda e: e.endorser)
    app = msgspec.structs.replace(app, endorsements=ends)
    b.put(key_app(app.app_id), app)
    b.emit("endorsed", app.app_id, "approve" if body.approve else "reject")
    _decide(b, app)


def _decide(b: _Block, app: Application) -> None:
    """SPEC §7.5: issue, reject, or keep waiting."""
    p = b.policy
    vs = b.validators
    total = vs.total_power()
    ok_power = sum(vs.power_of(a.validator) for a in app.attestations if a.ok)
    fail_power = sum(vs.power_of(a.validator) for a in app.attestations if not a.ok)
    dv_pass = ok_power * p.dv_threshold_den > p.dv_threshold_num * total
    dv_dead = (total - fail_power) * p.dv_threshold_den <= p.dv_threshold_num * total
    if dv_dead:
        _close_refund(b, app, "rejected", "domain control was not proven by the threshold")
        return
    endorsers: list[bytes] = []
    if app.cert_type != "DV":
        k = _k_for(p, app.cert_type)
        active = b.endorsers.active()
        active_addrs = [e.address for e in active]
        endorsers = [
            e.endorser for e in app.endorsements if e.approve and e.endorser in active_addrs
        ]
        rejects = [
            e.endorser for e in app.endorsements if not e.approve and e.endorser in active_addrs
        ]
        if len(active) - len(rejects) < k:
            _close_refund(b, app, "rejected", f"endorsers rejected: {k} approvals unreachable")
            return
        if len(endorsers) < k:
            return
    if not dv_pass:
        return
    for d in app.domains:
        if len([c for c in _live_certs(b, d) if c != app.renews]) >= p.max_certs_per_domain:
            _close_refund(b, app, "rejected", f"{d} reached the per-domain certificate limit")
            return
    _issue(b, app, endorsers, ok_power, total)


def _split(b: _Block, amount: int, recipients: list[bytes]) -> None:
    """Equal shares; the remainder goes one unit each to the first recipients."""
    if amount <= 0:
        return
    if not recipients:
        b.credit(b.header.proposer, amount)
        return
    share, rem = divmod(amount, len(recipients))
    for i, r in enumerate(recipients):
        b.credit(r, share + (1 if i < rem else 0))


def _issue(b: _Block, app: Application, endorsers: list[bytes], ok_power: int, total: int) -> None:
    p = b.policy
    cert_id = cert_id_for(app.app_id)
    vs = b.validators
    # Only attestations that counted (power in force now) are rewarded.
    attestors = sorted(
        a.validator for a in app.attestations if a.ok and vs.power_of(a.validator) > 0
    )
    endorsers = sorted(endorsers)
    cert = Certificate(
        cert_id=cert_id,
        app_id=app.app_id,
        owner=app.applicant,
        cert_type=app.cert_type,
        issued_type=app.cert_type,
        domains=app.domains,
        spki=app.spki,
        org=app.org,
        not_before_ms=b.now,
        not_after_ms=b.now + app.validity_days * MS_PER_DAY,
        issued_height=b.height,
        endorsers=endorsers,
        attestors=attestors,
        dv_power=ok_power,
        total_power=total,
        log_index=b.next_log_index(),
        renews=app.renews,
    )
    b.put(key_cert(cert_id), cert)
    b.append_log("issued", cert)
    tss.on_cert_changed(b, cert)
    for d in app.domains:
        live = _live_certs(b, d)
        b.put(key_domain(d), DomainIndex([*live, cert_id]))
    b.put(
        key_app(app.app_id),
        msgspec.structs.replace(app, status="issued", cert_id=cert_id, closed_height=b.height),
    )
    # SPEC §9.2: the escrow pays the endorsers and the validators who took part.
    endorser_part = app.escrow * p.endorser_share_bps // 10_000 if endorsers else 0
    _split(b, endorser_part, endorsers)
    _split(b, app.escrow - endorser_part, attestors)
    b.emit("cert_issued", cert_id, ",".join(app.domains))
    if app.renews:
        old = b.certificate(app.renews)
        if old is not None and old.status == "valid":
            old = msgspec.structs.replace(old, superseded_by=cert_id)
            if old.spki != cert.spki:
                # A key rotation retires the old key at once (RFC 5280 superseded).
                _revoke(b, old, 4)
            else:
                b.put(key_cert(old.cert_id), old)


def _close_refund(b: _Block, app: Application, status: str, why: str) -> None:
    """SPEC §9.3: refund the escrow minus the processing fee."""
    p = b.policy
    fee = app.escrow * p.refund_fee_bps // 10_000
    workers = sorted(a.validator for a in app.attestations)
    _split(b, fee, workers)
    b.credit(app.applicant, app.escrow - fee)
    b.put(
        key_app(app.app_id),
        msgspec.structs.replace(app, status=status, closed_height=b.height, close_reason=why[:256]),
    )
    b.emit(f"app_{status}", app.app_id, why)


def _check_reason(code: int) -> None:
    if code not in ALLOWED_REASONS:
        raise TxFailure(
            Code.INVALID_REASON,
            f"reason code {code} is not allowed; use one of {list(ALLOWED_REASONS)}",
        )


def _revoke(b: _Block, cert: Certificate, reason: int) -> None:
    cert = msgspec.structs.replace(
        cert, status="revoked", revocation_reason=reason, revoked_ms=b.now, revoked_height=b.height
    )
    b.put(key_cert(cert.cert_id), cert)
    b.append_log("revoked", cert)
    tss.on_cert_revoked(b, cert)
    b.emit("cert_revoked", cert.cert_id, REASON_NAMES.get(reason, str(reason)))


def _live_cert_or_fail(b: _Block, cert_id: bytes) -> Certificate:
    cert = b.certificate(cert_id)
    if cert is None:
        raise TxFailure(Code.UNKNOWN_CERT, "no such certificate")
    if cert.status == "revoked":
        raise TxFailure(Code.CERT_REVOKED, "certificate is already revoked")
    return cert


def _h_revoke(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: Revoke = tx.body  # type: ignore[assignment]
    _check_reason(body.reason_code)
    cert = _live_cert_or_fail(b, body.cert_id)
    if sender != cert.owner:
        msg = revoke_sign_bytes(b.chain_id, cert.cert_id, body.reason_code)
        if not body.key_sig or not verify_with_spki(cert.spki, body.key_sig, msg):
            raise TxFailure(
                Code.NOT_AUTHORIZED,
                "only the owner or the holder of the certificate key may revoke",
            )
    _revoke(b, cert, body.reason_code)


def _h_endorser_revoke(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: EndorserRevoke = tx.body  # type: ignore[assignment]
    _check_reason(body.reason_code)
    es = b.endorsers
    end = es.get(sender)
    if end is None or not end.active:
        raise TxFailure(Code.NOT_ENDORSER, "only an active registered endorser may vote")
    cert = _live_cert_or_fail(b, body.cert_id)
    if cert.cert_type == "DV":
        raise TxFailure(Code.NOT_ENDORSABLE, "endorser quorums revoke only OV/EV certificates")
    if sender in cert.revoke_votes:
        raise TxFailure(Code.DUPLICATE_REVOKE_VOTE, "this endorser already voted")
    votes = sorted([*cert.revoke_votes, sender])
    cert = msgspec.structs.replace(cert, revoke_votes=votes)
    b.put(key_cert(cert.cert_id), cert)
    active = [e.address for e in es.active()]
    if len([v for v in votes if v in active]) >= _k_for(b.policy, cert.cert_type):
        _revoke(b, cert, body.reason_code)
    else:
        b.emit("revoke_vote", cert.cert_id, sender.hex())


def _degrade_if_short(b: _Block, cert: Certificate, why: str) -> Certificate:
    """SPEC §7.7: too few endorsers left -> DV. Still valid for its domains."""
    if cert.cert_type == "DV" or cert.status == "revoked":
        b.put(key_cert(cert.cert_id), cert)
        return cert
    active = [e.address for e in b.endorsers.active()]
    standing = [e for e in cert.endorsers if e in active]
    if len(standing) >= _k_for(b.policy, cert.issued_type):
        b.put(key_cert(cert.cert_id), cert)
        return cert
    cert = msgspec.structs.replace(cert, cert_type="DV", org=None, degraded_height=b.height)
    b.put(key_cert(cert.cert_id), cert)
    b.append_log("degraded", cert)
    tss.on_cert_changed(b, cert)
    b.emit("cert_degraded", cert.cert_id, why)
    return cert


def _h_endorse_withdraw(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: EndorseWithdraw = tx.body  # type: ignore[assignment]
    if b.endorsers.get(sender) is None:
        raise TxFailure(Code.NOT_ENDORSER, "not a registered endorser")
    cert = _live_cert_or_fail(b, body.cert_id)
    if sender not in cert.endorsers:
        raise TxFailure(Code.NOT_ENDORSED_BY_SENDER, "this endorser does not endorse the cert")
    cert = msgspec.structs.replace(cert, endorsers=[e for e in cert.endorsers if e != sender])
    b.emit("endorsement_withdrawn", cert.cert_id, sender.hex())
    _degrade_if_short(b, cert, f"endorsement withdrawn: {body.reason}")


# ------------------------------------------------------------------ governance (SPEC §8)


def _validate_action(b: _Block, action: GovAction) -> None:
    if isinstance(action, AddEndorser):
        e = b.endorsers.get(address_of(action.pubkey))
        if e is not None and e.active:
            raise TxFailure(Code.INVALID_GOV_ACTION, "endorser is already registered")
        if len(b.endorsers.active()) >= MAX_ENDORSERS:
            raise TxFailure(Code.INVALID_GOV_ACTION, f"at most {MAX_ENDORSERS} endorsers")
    elif isinstance(action, RemoveEndorser):
        e = b.endorsers.get(action.endorser)
        if e is None or not e.active:
            raise TxFailure(Code.INVALID_GOV_ACTION, "no such active endorser")
    elif isinstance(action, GovRevokeCert):
        _check_reason(action.reason_code)
        _live_cert_or_fail(b, action.cert_id)
    elif isinstance(action, SetValidator):
        # Judge the set as it will be once every already-scheduled change is in
        # force: otherwise two removals, each fine alone, could empty the set.
        pending: PendingValidatorChanges = b.get(K_VALS_PENDING)
        change = PendingValidatorChange(b.height + 2, action.pubkey, action.power)
        live = scheduled_powers(b.validators, PendingValidatorChanges([*pending.changes, change]))
        if not live:
            raise TxFailure(Code.INVALID_GOV_ACTION, "the validator set may not become empty")
        if len(live) > MAX_VALIDATORS:
            raise TxFailure(Code.INVALID_GOV_ACTION, f"at most {MAX_VALIDATORS} validators")


def _h_gov_propose(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: GovPropose = tx.body  # type: ignore[assignment]
    if b.validators.power_of(sender) <= 0:
        raise TxFailure(Code.NOT_VALIDATOR, "only a validator may propose")
    _validate_action(b, body.action)
    pid = sha256(GOV_TAG + h)
    prop = GovProposal(
        proposal_id=pid,
        proposer=sender,
        action=body.action,
        note=body.note,
        created_height=b.height,
        expires_ms=b.now + b.policy.gov_ttl_ms,
        yes=[sender],
        no=[],
    )
    b.put(key_gov(pid), prop)
    b.new_gov_expiry.append((prop.expires_ms, pid))
    b.emit("gov_proposed", pid, str(type(body.action).__struct_config__.tag))
    _tally(b, prop)


def _h_gov_vote(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: GovVote = tx.body  # type: ignore[assignment]
    if b.validators.power_of(sender) <= 0:
        raise TxFailure(Code.NOT_VALIDATOR, "only a validator may vote")
    prop: GovProposal | None = b.get(key_gov(body.proposal_id))
    if prop is None:
        raise TxFailure(Code.UNKNOWN_PROPOSAL, "no such proposal")
    if prop.status != "open":
        raise TxFailure(Code.PROPOSAL_CLOSED, f"proposal is {prop.status}")
    if sender in prop.yes or sender in prop.no:
        raise TxFailure(Code.DUPLICATE_VOTE, "this validator already voted")
    if body.approve:
        prop = msgspec.structs.replace(prop, yes=sorted([*prop.yes, sender]))
    else:
        prop = msgspec.structs.replace(prop, no=sorted([*prop.no, sender]))
    b.put(key_gov(prop.proposal_id), prop)
    _tally(b, prop)


def _tally(b: _Block, prop: GovProposal) -> None:
    # Governance needs more than 2/3 of the voting power in force now.
    vs = b.validators
    total = vs.total_power()
    yes = sum(vs.power_of(a) for a in prop.yes)
    no = sum(vs.power_of(a) for a in prop.no)
    if 3 * yes > 2 * total:
        failure = _execute(b, prop.action)
        status = "passed" if failure is None else "failed"
        result = "" if failure is None else failure.message  # SPEC §8: "" when carried out
        b.put(
            key_gov(prop.proposal_id),
            msgspec.structs.replace(prop, status=status, result=result[:256]),
        )
        b.emit(f"gov_{status}", prop.proposal_id, result)
    elif 3 * (total - no) <= 2 * total:
        b.put(key_gov(prop.proposal_id), msgspec.structs.replace(prop, status="rejected"))
        b.emit("gov_rejected", prop.proposal_id)


def _execute(b: _Block, action: GovAction) -> TxFailure | None:
    """Run a passed action; None, or why it could no longer be carried out."""
    try:
        _validate_action(b, action)
    except TxFailure as f:
        return f
    es = b.endorsers
    if isinstance(action, AddEndorser):
        addr = address_of(action.pubkey)
        rec = EndorserRecord(addr, action.pubkey, action.name, True, b.height)
        others = [e for e in es.endorsers if e.address != addr]
        b.put(K_ENDORSERS, EndorserSet(sorted([*others, rec], key=lambda e: e.address)))
        b.emit("endorser_added", addr, action.name)
    elif isinstance(action, RemoveEndorser):
        new = [
            msgspec.structs.replace(
                e, active=False, removed_height=b.height, corrupt=action.corrupt
            )
            if e.address == action.endorser
            else e
            for e in es.endorsers
        ]
        b.put(K_ENDORSERS, EndorserSet(new))
        b.emit("endorser_removed", action.endorser, "corrupt" if action.corrupt else "retired")
        if action.corrupt:
            # A corrupt endorser's word is void: every certificate it vouched
            # for loses that endorsement and may fall to DV (SPEC §7.7).
            for cid in _certs_endorsed_by(b, action.endorser):
                cert = b.certificate(cid)
                if cert is None or action.endorser not in cert.endorsers:
                    continue
                cert = msgspec.structs.replace(
                    cert, endorsers=[e for e in cert.endorsers if e != action.endorser]
                )
                _degrade_if_short(b, cert, "endorser removed as corrupt")
    elif isinstance(action, GovRevokeCert):
        cert = b.certificate(action.cert_id)
        assert cert is not None
        _revoke(b, cert, action.reason_code)
    elif isinstance(action, SetValidator):
        # Validator-set changes take effect two heights later (CONSENSUS.md),
        # so the set for H+1 is already fixed when block H is decided.
        pending: PendingValidatorChanges = b.get(K_VALS_PENDING)
        change = PendingValidatorChange(b.height + 2, action.pubkey, action.power)
        b.put(K_VALS_PENDING, PendingValidatorChanges([*pending.changes, change]))
        b.emit("validator_scheduled", address_of(action.pubkey), str(action.power))
    return None


def _certs_endorsed_by(b: _Block, endorser: bytes) -> list[bytes]:
    found = dict(b.state._endorsed.get(endorser, {}))
    for layer in (b.block, b.tx or {}):
        for k in sorted(layer):
            v = layer[k]
            if k.startswith(P_CERT) and v is not _DELETED and endorser in v.endorsers:
                found[v.cert_id] = None
    return sorted(found)


_HANDLERS: Final[dict[type[Any], Callable[[_Block, Tx, bytes, bytes], None]]] = {
    Transfer: _h_transfer,
    CertApply: _h_cert_apply,
    CertRenew: _h_cert_renew,
    DvAttest: _h_dv_attest,
    Endorse: _h_endorse,
    EndorseWithdraw: _h_endorse_withdraw,
    Revoke: _h_revoke,
    EndorserRevoke: _h_endorser_revoke,
    GovPropose: _h_gov_propose,
    GovVote: _h_gov_vote,
    AuthzRequest: authz_rules.h_authz_request,
    AuthzAttest: authz_rules.h_authz_attest,
    TssDeal: tss.h_tss_deal,
    TssAck: tss.h_tss_ack,
    TssJustify: tss.h_tss_justify,
    TssNonces: tss.h_tss_nonces,
    TssSign: tss.h_tss_sign,
    GrantCreate: grants.h_grant_create,
    GrantRevoke: grants.h_grant_revoke,
    Delegated: lambda b, tx, sender, h: grants.h_delegated(b, tx, sender, h, _HANDLERS),
}

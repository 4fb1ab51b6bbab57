"""Wire and state data structures (normative definitions in protocol/SPEC.md).

All are frozen msgspec Structs encoded as msgpack arrays (see codec.py).
Bounds on every field keep a decoded object's size bounded.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta, Struct

from dpkid.core import codec
from dpkid.core.crypto import ADDR_LEN, HASH_LEN, PUBKEY_LEN, SIG_LEN, SigningKey, sha256
from dpkid.core.frost import Element

# Non-negative integers are bounded to 2**63 - 1 (msgspec validates int64 bounds).
U64 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
U32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]
Addr = Annotated[bytes, Meta(min_length=ADDR_LEN, max_length=ADDR_LEN)]
Hash32 = Annotated[bytes, Meta(min_length=HASH_LEN, max_length=HASH_LEN)]
PubKey = Annotated[bytes, Meta(min_length=PUBKEY_LEN, max_length=PUBKEY_LEN)]
Sig = Annotated[bytes, Meta(min_length=SIG_LEN, max_length=SIG_LEN)]
ChainId = Annotated[str, Meta(min_length=1, max_length=50, pattern=r"^[a-z0-9][a-z0-9._-]*\Z")]
Reason = Annotated[str, Meta(max_length=256)]
ShortText = Annotated[str, Meta(max_length=128)]
DomainStr = Annotated[str, Meta(min_length=1, max_length=253)]
SpkiDer = Annotated[bytes, Meta(min_length=1, max_length=2048)]
OptHash = Annotated[bytes, Meta(max_length=HASH_LEN)]  # b"" or 32 bytes
OptSig = Annotated[bytes, Meta(max_length=1024)]

MAX_TX_BYTES: Final = 16 * 1024
MAX_DOMAINS_PER_CERT: Final = 100
MAX_ATTESTATIONS_PER_TX: Final = 64
MAX_GRANT_DAYS: Final = 366
MAX_GRANT_SEALED: Final = 128

CERT_TYPES: Final = ("DV", "OV", "EV")
CHALLENGE_METHODS: Final = ("http-01", "dns-01")

# Sign-bytes prefixes: a signature over one kind of message can never be
# replayed as another kind (or on another chain: chain_id is in every one).
TX_SIGN_TAG: Final = b"dpkid/tx/v1\x00"
REVOKE_SIGN_TAG: Final = b"dpkid/revoke-by-key/v1\x00"


class _S(Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    pass


# --------------------------------------------------------------------------- bodies


class OrgIdentity(_S, frozen=True):
    """Organization identity claims of an OV/EV application (endorsers vouch for them)."""

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    country: Annotated[str, Meta(pattern=r"^[A-Z]{2}\Z")]
    state: ShortText = ""
    locality: ShortText = ""
    registration_id: ShortText = ""
    jurisdiction: ShortText = ""


class Transfer(_S, frozen=True, tag="transfer"):
    to: Addr
    amount: U64


class CertApply(_S, frozen=True, tag="cert_apply"):
    cert_type: Literal["DV", "OV", "EV"]
    domains: Annotated[list[DomainStr], Meta(min_length=1, max_length=MAX_DOMAINS_PER_CERT)]
    spki: SpkiDer
    validity_days: Annotated[int, Meta(ge=1, le=3650)]
    escrow: U64
    org: OrgIdentity | None = None
    # Valid authorizations of the sender covering every name (SPEC §7.9): the
    # application then needs no attestations of its own.
    authzs: Annotated[list[Hash32], Meta(max_length=MAX_DOMAINS_PER_CERT)] = msgspec.field(
        default_factory=list
    )


class AuthzRequest(_S, frozen=True, tag="authz_request"):
    """Ask the validators to check that the sender controls ``name`` (SPEC §7.9).

    ``format`` "dpkid": ``token`` and ``thumbprint`` are empty and derived from
    the authorization id and the sender's key (§7.3.1). "acme": RFC 8555 §8.1,
    ``token`` is the challenge token and ``thumbprint`` the RFC 7638 thumbprint
    of the ACME account key, both base64url without padding."""

    name: DomainStr
    format: Literal["dpkid", "acme"]
    method: Literal["http-01", "dns-01"]
    token: Annotated[str, Meta(max_length=64, pattern=r"^[A-Za-z0-9_-]*\Z")] = ""
    thumbprint: Annotated[str, Meta(max_length=64, pattern=r"^[A-Za-z0-9_-]*\Z")] = ""


class AuthzCheck(_S, frozen=True):
    """One validator's outcome for one authorization; ``problem`` is an ACME
    error type name (RFC 8555 §6.7) when the check failed."""

    authz_id: Hash32
    ok: bool
    problem: Literal[
        "",
        "dns",
        "connection",
        "incorrectResponse",
        "unauthorized",
        "rejectedIdentifier",
        "serverInternal",
    ] = ""
    detail: Reason = ""


class AuthzAttest(_S, frozen=True, tag="authz_attest"):
    items: Annotated[list[AuthzCheck], Meta(min_length=1, max_length=MAX_ATTESTATIONS_PER_TX)]


class GrantCreate(_S, frozen=True, tag="grant_create"):
    """SPEC §7.10: let ``delegate`` act for the sender (authz_request,
    cert_apply, cert_renew, revoke) and spend up to ``spend_limit`` of the
    sender's balance on fees and escrow, so a service such as an ACME server
    works for an account without holding its key or owning its certificates."""

    delegate: PubKey
    spend_limit: U64
    valid_days: Annotated[int, Meta(ge=1, le=MAX_GRANT_DAYS)]
    # Opaque to the ledger; dpkid's ACME server reads an EAB MAC key sealed
    # to its key here, so binding needs no channel but the ledger.
    sealed: Annotated[bytes, Meta(max_length=MAX_GRANT_SEALED)] = b""


class GrantRevoke(_S, frozen=True, tag="grant_revoke"):
    grant_id: Hash32


class CertRenew(_S, frozen=True, tag="cert_renew"):
    """Renew a certificate; a non-empty ``new_spki`` is a key rotation."""

    cert_id: Hash32
    validity_days: Annotated[int, Meta(ge=1, le=3650)]
    escrow: U64
    new_spki: Annotated[bytes, Meta(max_length=2048)] = b""
    authzs: Annotated[list[Hash32], Meta(max_length=MAX_DOMAINS_PER_CERT)] = msgspec.field(
        default_factory=list
    )  # as in CertApply: renewal within the reuse window needs no new challenge


class Attestation(_S, frozen=True):
    app_id: Hash32
    ok: bool
    method: Literal["http-01", "dns-01"]
    reason: Reason = ""


class DvAttest(_S, frozen=True, tag="dv_attest"):
    items: Annotated[list[Attestation], Meta(min_length=1, max_length=MAX_ATTESTATIONS_PER_TX)]


class Endorse(_S, frozen=True, tag="endorse"):
    app_id: Hash32
    approve: bool
    reason: Reason = ""


class EndorseWithdraw(_S, frozen=True, tag="endorse_withdraw"):
    cert_id: Hash32
    reason: Reason = ""


class Revoke(_S, frozen=True, tag="revoke"):
    """Revoke by the owning account, or by whoever holds the certificate key (key_sig)."""

    cert_id: Hash32
    reason_code: Annotated[int, Meta(ge=0, le=10)]
    key_sig: OptSig = b""


class EndorserRevoke(_S, frozen=True, tag="endorser_revoke"):
    cert_id: Hash32
    reason_code: Annotated[int, Meta(ge=0, le=10)]


class AddEndorser(_S, frozen=True, tag="add_endorser"):
    pubkey: PubKey
    name: Annotated[str, Meta(min_length=1, max_length=128)]


class RemoveEndorser(_S, frozen=True, tag="remove_endorser"):
    endorser: Addr
    corrupt: bool


class GovRevokeCert(_S, frozen=True, tag="revoke_cert"):
    cert_id: Hash32
    reason_code: Annotated[int, Meta(ge=0, le=10)]


class SetValidator(_S, frozen=True, tag="set_validator"):
    pubkey: PubKey
    power: Annotated[int, Meta(ge=0, le=2**40)]


GovAction = AddEndorser | RemoveEndorser | GovRevokeCert | SetValidator


class GovPropose(_S, frozen=True, tag="gov_propose"):
    action: GovAction
    note: Reason = ""


class GovVote(_S, frozen=True, tag="gov_vote"):
    proposal_id: Hash32
    approve: bool


# --------------------------------------------------------------------------- threshold signing
# SPEC §16: the validators hold shares of one Ed25519 key (FROST, RFC 9591)
# and sign the X.509 certificates and CRLs that the ledger decides.

MAX_TSS_MEMBERS: Final = 64  # = weights.MAX_TSS_SHARES: every member holds at least one share
MAX_TSS_THRESHOLD: Final = 64
MAX_TSS_SLOTS_PER_TX: Final = 200
MAX_TSS_ITEMS_PER_TX: Final = 200
Point = Annotated[Element, Meta(min_length=32, max_length=32)]  # checked on use
Scalar = Annotated[bytes, Meta(min_length=32, max_length=32)]
Serial = Annotated[bytes, Meta(min_length=16, max_length=16)]


class TssPoly(_S, frozen=True):
    """A dealt polynomial: Feldman commitments to its coefficients, and (fresh
    DKG only) the proof of knowledge of the constant term."""

    commitment: Annotated[list[Point], Meta(min_length=1, max_length=MAX_TSS_THRESHOLD)]
    pok: Annotated[bytes, Meta(max_length=64)] = b""


class TssDeal(_S, frozen=True, tag="tss_deal"):
    """A dealer's round-1 message (SPEC §16.3): its polynomials and, for every
    member of the new committee in order, a sealed box with that member's
    shares of every polynomial."""

    round: U64
    polys: Annotated[list[TssPoly], Meta(min_length=1, max_length=MAX_TSS_MEMBERS)]
    boxes: Annotated[
        list[Annotated[bytes, Meta(max_length=8192)]], Meta(max_length=MAX_TSS_MEMBERS)
    ]


class TssAck(_S, frozen=True, tag="tss_ack"):
    """A member has checked every share dealt to it; ``complaints`` names the
    dealers whose shares failed (SPEC §16.4)."""

    round: U64
    complaints: Annotated[list[Addr], Meta(max_length=MAX_TSS_MEMBERS)]


class TssJustify(_S, frozen=True, tag="tss_justify"):
    """A dealer's answer to a complaint: the complainer's shares in the clear."""

    round: U64
    complainer: Addr
    shares: Annotated[list[Scalar], Meta(min_length=1, max_length=4096)]


class TssNonces(_S, frozen=True, tag="tss_nonces"):
    """Round-one commitments posted ahead (SPEC §16.6): each slot holds, for
    every share of the sender in index order, hiding || binding (64 bytes)."""

    epoch: U64
    first_seq: U64
    slots: Annotated[
        list[Annotated[bytes, Meta(min_length=64, max_length=64 * 64)]],
        Meta(min_length=1, max_length=MAX_TSS_SLOTS_PER_TX),
    ]


class TssShareItem(_S, frozen=True):
    request: U64
    attempt: U32
    shares: Annotated[list[Scalar], Meta(min_length=1, max_length=64)]


class TssSign(_S, frozen=True, tag="tss_sign"):
    """Signature shares for open signing attempts (SPEC §16.7)."""

    items: Annotated[list[TssShareItem], Meta(min_length=1, max_length=MAX_TSS_ITEMS_PER_TX)]


DelegableBody = AuthzRequest | CertApply | CertRenew | Revoke


class Delegated(_S, frozen=True, tag="delegated"):
    """SPEC §7.10: ``body`` run for the grant's owner, signed by its delegate."""

    grant_id: Hash32
    body: DelegableBody


TxBody = (
    Transfer
    | CertApply
    | CertRenew
    | DvAttest
    | Endorse
    | EndorseWithdraw
    | Revoke
    | EndorserRevoke
    | GovPropose
    | GovVote
    | AuthzRequest
    | AuthzAttest
    | TssDeal
    | TssAck
    | TssJustify
    | TssNonces
    | TssSign
    | GrantCreate
    | GrantRevoke
    | Delegated
)


class UnsignedTx(_S, frozen=True):
    chain_id: ChainId
    pubkey: PubKey
    nonce: U64
    fee: U64
    body: TxBody


class Tx(_S, frozen=True):
    chain_id: ChainId
    pubkey: PubKey
    nonce: U64
    fee: U64
    body: TxBody
    sig: Sig

    def unsigned(self) -> UnsignedTx:
        return UnsignedTx(self.chain_id, self.pubkey, self.nonce, self.fee, self.body)


def tx_sign_bytes(utx: UnsignedTx) -> bytes:
    return TX_SIGN_TAG + codec.encode(utx)


def tx_hash(tx_bytes: bytes) -> bytes:
    return sha256(tx_bytes)


def revoke_sign_bytes(chain_id: str, cert_id: bytes, reason_code: int) -> bytes:
    """What the certificate-key holder signs to authorise a revocation."""
    return REVOKE_SIGN_TAG + codec.encode([chain_id, cert_id, reason_code])


def decode_tx(data: bytes) -> Tx:
    return codec.decode(data, Tx, max_bytes=MAX_TX_BYTES)


# --------------------------------------------------------------------------- blocks


class Header(_S, frozen=True):
    """Block header. The state machine reads chain_id, height, time_ms, proposer;
    consensus fills and checks the rest (protocol/CONSENSUS.md)."""

    chain_id: ChainId
    height: U64
    time_ms: U64
    proposer: Addr
    prev_block_hash: OptHash = b""
    tx_root: OptHash = b""
    app_hash: OptHash = b""
    validators_hash: OptHash = b""
    next_validators_hash: OptHash = b""
    last_commit_hash: OptHash = b""
    evidence_hash: OptHash = b""


# --------------------------------------------------------------------------- state records


class Account(_S, frozen=True):
    balance: U64 = 0
    nonce: U64 = 0
    pubkey: Annotated[bytes, Meta(max_length=PUBKEY_LEN)] = b""


class ValidatorRecord(_S, frozen=True):
    address: Addr
    pubkey: PubKey
    power: U64
    name: ShortText = ""


class ValidatorRecords(_S, frozen=True):
    validators: list[ValidatorRecord]  # sorted by address, power > 0

    def total_power(self) -> int:
        return sum(v.power for v in self.validators)

    def power_of(self, address: bytes) -> int:
        for v in self.validators:
            if v.address == address:
                return v.power
        return 0


class PendingValidatorChange(_S, frozen=True):
    effective_height: U64
    pubkey: PubKey
    power: U64


class PendingValidatorChanges(_S, frozen=True):
    changes: list[PendingValidatorChange]


class EndorserRecord(_S, frozen=True):
    address: Addr
    pubkey: PubKey
    name: ShortText
    active: bool
    since_height: U64
    removed_height: U64 = 0
    corrupt: bool = False


class EndorserSet(_S, frozen=True):
    endorsers: list[EndorserRecord]  # sorted by address, active and removed

    def active(self) -> list[EndorserRecord]:
        return [e for e in self.endorsers if e.active]

    def get(self, address: bytes) -> EndorserRecord | None:
        for e in self.endorsers:
            if e.address == address:
                return e
        return None


class AttestationRecord(_S, frozen=True):
    validator: Addr
    ok: bool
    method: str
    reason: str
    height: U64


class EndorsementRecord(_S, frozen=True):
    endorser: Addr
    approve: bool
    reason: str
    height: U64


class Application(_S, frozen=True):
    app_id: Hash32
    applicant: Addr
    applicant_pubkey: PubKey
    cert_type: str
    domains: list[str]
    spki: bytes
    validity_days: int
    org: OrgIdentity | None
    escrow: U64
    created_height: U64
    created_ms: U64
    expires_ms: U64
    status: str  # pending | issued | rejected | expired
    attestations: list[AttestationRecord]  # sorted by validator
    conflicts: list[AttestationRecord]  # a validator's later, contradicting attestations
    endorsements: list[EndorsementRecord]  # sorted by endorser
    renews: OptHash = b""
    cert_id: OptHash = b""
    closed_height: U64 = 0
    close_reason: Reason = ""


class Certificate(_S, frozen=True):
    cert_id: Hash32
    app_id: Hash32
    owner: Addr
    cert_type: str  # effective type: may fall from OV/EV to DV
    issued_type: str
    domains: list[str]
    spki: bytes
    org: OrgIdentity | None  # cleared when the type degrades to DV
    not_before_ms: U64
    not_after_ms: U64
    issued_height: U64
    endorsers: list[bytes]  # approving endorsers still standing behind it, sorted
    attestors: list[bytes]  # validators whose successful DV attestation counted, sorted
    dv_power: U64
    total_power: U64
    log_index: U64
    status: str = "valid"  # valid | revoked
    revocation_reason: int = -1
    revoked_ms: U64 = 0
    revoked_height: U64 = 0
    revoke_votes: list[bytes] = msgspec.field(default_factory=list)  # endorsers voting revoke
    degraded_height: U64 = 0
    renews: OptHash = b""
    superseded_by: OptHash = b""


class AuthzCheckRecord(_S, frozen=True):
    validator: Addr
    ok: bool
    problem: str
    detail: str
    height: U64
    time_ms: U64


class Authorization(_S, frozen=True):
    """Account ``account`` controls ``name`` (SPEC §7.9), under ``authz:`` || id."""

    authz_id: Hash32
    account: Addr
    account_pubkey: PubKey
    name: str
    format: str  # dpkid | acme
    method: str  # http-01 | dns-01
    token: str
    thumbprint: str
    created_height: U64
    created_ms: U64
    expires_ms: U64  # a pending authorization lapses then
    status: str  # pending | valid | invalid
    checks: list[AuthzCheckRecord]  # each validator's latest, sorted by validator
    decided_height: U64 = 0
    valid_until_ms: U64 = 0


class Grant(_S, frozen=True):
    """SPEC §7.10: a delegation from ``owner`` to the ``delegate`` key."""

    grant_id: Hash32
    owner: Addr
    owner_pubkey: PubKey
    delegate: PubKey
    spend_limit: U64
    spent: U64
    created_height: U64
    created_ms: U64
    expires_ms: U64
    status: str  # active | revoked
    sealed: bytes
    revoked_height: U64 = 0


class AccountAuthzs(_S, frozen=True):
    """An account's pending authorizations, under ``authzs:`` || address."""

    pending: list[bytes]


class DomainIndex(_S, frozen=True):
    cert_ids: list[bytes]  # issuance order


class GovProposal(_S, frozen=True):
    proposal_id: Hash32
    proposer: Addr
    action: GovAction
    note: str
    created_height: U64
    expires_ms: U64
    yes: list[bytes]  # sorted validator addresses
    no: list[bytes]
    status: str = "open"  # open | passed | rejected | expired | failed
    result: Reason = ""


class LogEntry(_S, frozen=True):
    """One leaf of the certificate log (RFC 9162 tree): its encoding is the leaf input."""

    index: U64
    kind: str  # issued | revoked | degraded
    cert_id: Hash32
    height: U64
    time_ms: U64
    cert_hash: Hash32  # sha256 of the encoded Certificate record after the event


class Policy(_S, frozen=True):
    dv_threshold_num: int = 2  # DV passes when 3 * ok_power > 2 * total (num/den, strict)
    dv_threshold_den: int = 3
    k_ov: int = 2
    k_ev: int = 3
    max_validity_days: int = 90
    max_domains: int = 100
    max_certs_per_domain: int = 32
    min_tx_fee: U64 = 10
    fee_dv: U64 = 1_000
    fee_ov: U64 = 5_000
    fee_ev: U64 = 20_000
    endorser_share_bps: int = 5_000
    refund_fee_bps: int = 1_000
    application_ttl_ms: U64 = 7 * 86_400_000
    gov_ttl_ms: U64 = 86_400_000
    authz_reuse_ms: U64 = 30 * 86_400_000  # a valid authorization serves applications this long
    max_pending_authzs: int = 100  # per account
    # LIGHT.md §5: how long a light client may trust a verified header's set.
    trusting_period_ms: U64 = 7 * 86_400_000


class Meta_(_S, frozen=True):
    chain_id: ChainId
    height: U64
    time_ms: U64
    total_supply: U64
    log_size: U64
    log_root: Hash32


class Event(_S, frozen=True):
    kind: str
    ref: bytes
    detail: str = ""


class Receipt(_S, frozen=True):
    tx_hash: Hash32
    code: int
    log: str
    fee_charged: U64
    events: list[Event]


class GenesisValidator(_S, frozen=True):
    pubkey: PubKey
    power: U64
    name: ShortText = ""


class GenesisEndorser(_S, frozen=True):
    pubkey: PubKey
    name: ShortText


class GenesisAccount(_S, frozen=True):
    address: Addr
    balance: U64


class Genesis(_S, frozen=True):
    chain_id: ChainId
    genesis_time_ms: U64
    validators: list[GenesisValidator]
    endorsers: list[GenesisEndorser]
    accounts: list[GenesisAccount]
    policy: Policy = msgspec.field(default_factory=Policy)


def sign_tx(key: SigningKey, chain_id: str, nonce: int, fee: int, body: TxBody) -> Tx:
    utx = UnsignedTx(chain_id, key.public_key, nonce, fee, body)
    return Tx(chain_id, key.public_key, nonce, fee, body, key.sign(tx_sign_bytes(utx)))


def encode_tx(tx: Tx) -> bytes:
    return codec.encode(tx)


class Jailed(_S, frozen=True):
    """A validator removed for equivocation (its power goes to 0 at H+2)."""

    address: Addr
    height: U64
    evidence_key: Hash32


# ------------------------------------------------------------------ threshold-signing records


class TssMember(_S, frozen=True):
    address: Addr
    pubkey: PubKey
    first_index: U32
    count: U32


class TssComplaint(_S, frozen=True):
    complainer: Addr
    dealer: Addr
    answered: bool = False


class TssRound(_S, frozen=True):
    """The key-generation round in progress (or the last one), under ``tss:round``."""

    round: U64
    kind: str  # fresh | reshare
    start_height: U64
    phase: str  # deal | ack | justify | done | failed
    phase_end: U64  # the phase closes at the end of this height at the latest
    members: list[TssMember]  # the committee being made
    threshold: U32
    dealers: list[TssMember]  # fresh: the members; reshare: the committee in force
    old_epoch: U64
    valset_hash: Hash32  # the validator set the committee is for
    dealt: list[bytes]  # sorted addresses
    acked: list[bytes]
    complaints: list[TssComplaint]
    disqualified: list[bytes]
    note: Reason = ""


class TssDealRecord(_S, frozen=True):
    """A posted deal, under ``tss:deal:`` || round || dealer."""

    dealer: Addr
    polys: list[TssPoly]
    boxes: list[bytes]
    height: U64


class TssRevealed(_S, frozen=True):
    """A dealer's published answer to a complaint, under ``tss:just:``."""

    shares: list[bytes]


class TssKey(_S, frozen=True):
    """The committee in force and its group key, under ``tss:key``."""

    epoch: U64
    group_pk: Point
    threshold: U32
    members: list[TssMember]
    verification_shares: list[Point]  # index i at position i - 1
    round: U64
    height: U64
    valset_hash: Hash32
    set_height: U64 = 0  # the height whose validator set the committee was taken from


class TssRoot(_S, frozen=True):
    """The root certificate, under ``tss:root``: self-signed by the group key."""

    group_pk: Point
    not_before_s: U64
    der: bytes  # b"" until signed
    cert_hash: OptHash  # sha256(der)
    request: U64
    height: U64


class TssSigner(_S, frozen=True):
    address: Addr
    first_index: U32
    count: U32
    slot_seq: U64  # the signer's nonce slot this attempt uses
    commitments: list[bytes]  # count x (hiding || binding)
    shares: list[bytes]  # count x scalar, empty until posted
    share_tx: OptHash = b""  # the tx that carried the shares: the evidence if they are bad


class TssRequest(_S, frozen=True):
    """Something the ledger decided to sign, under ``tss:req:`` || seq."""

    seq: U64
    kind: str  # root | cert | crl
    ref: bytes  # cert_id for kind cert, else b""
    version: U32
    tbs: bytes
    created_height: U64
    epoch: U64  # the key epoch of the attempt (0: no attempt yet)
    attempt: U32
    deadline: U64
    signers: list[TssSigner]
    excluded: list[bytes]  # sorted: timed out or misbehaved in this request
    status: str = "pending"  # pending | signed | unsignable | cancelled
    sig: bytes = b""
    signed_height: U64 = 0


class TssActive(_S, frozen=True):
    seq: U64
    deadline: U64


class TssNonceQueue(_S, frozen=True):
    """A member's posted round-one commitments, under ``tss:nonce:`` || address."""

    epoch: U64
    next_seq: U64  # the seq the next TssNonces must start at
    first_seq: U64  # seq of slots[0]
    slots: list[bytes]


class TssQueue(_S, frozen=True):
    """Signing bookkeeping, under ``tss:queue``."""

    next_seq: U64 = 1  # the next request number
    next_start: U64 = 1  # the first request that has never had an attempt
    active: list[TssActive] = msgspec.field(default_factory=list)
    crl_number: U64 = 0
    crl_due: bool = True
    last_crl_height: U64 = 0
    crl_open: U64 = 0
    next_round: U64 = 1
    retry_height: U64 = 0  # a failed round is retried from this height


class TssRevokedEntry(_S, frozen=True):
    serial: Serial
    revoked_s: U64
    reason: int
    not_after_s: U64


class TssRevoked(_S, frozen=True):
    """Every revoked serial the CRL must list, under ``tss:revoked``."""

    entries: list[TssRevokedEntry]  # by serial


class TssCert(_S, frozen=True):
    """The threshold-signed X.509 of a ledger certificate, under ``tss:x509:`` || cert_id."""

    cert_id: Hash32
    version: U32  # of the newest request
    der: bytes  # the newest signed version, b"" until one is signed
    request: U64  # the newest request
    signed_height: U64 = 0
    signed_version: U32 = 0


class TssCrl(_S, frozen=True):
    """The newest threshold-signed CRL, under ``tss:crl``."""

    number: U64
    this_update_s: U64
    next_update_s: U64
    der: bytes
    request: U64
    height: U64

"""Ledger rules of the threshold key (SPEC §16): DKG, re-sharing, signing.

The ledger is FROST's coordinator.  Everything that has to be agreed on is a
record: the committee and its share mapping, every dealt commitment, every
complaint and its answer, the posted round-one nonce commitments, the signer
set of each attempt, every signature share and the final signatures.  So each
decision (disqualify a dealer, reject a share and punish its signer, release
a signature) is made by every node from the same public data.

Called from machine.py: the five tx handlers, ``end_block`` and the three
hooks on certificate changes.  ``b`` is machine.py's block overlay.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from dpkid.core import codec, frost
from dpkid.core.crypto import sha256, verify_ed25519
from dpkid.core.state.codes import Code, TxFailure
from dpkid.core.tss import dkg, signing
from dpkid.core.tss import x509 as tx509
from dpkid.core.tss.weights import MAX_DEAL_BYTES, committee_for, deal_bytes
from dpkid.core.types import (
    Certificate,
    Jailed,
    PendingValidatorChange,
    PendingValidatorChanges,
    TssAck,
    TssActive,
    TssCert,
    TssComplaint,
    TssCrl,
    TssDeal,
    TssDealRecord,
    TssJustify,
    TssKey,
    TssMember,
    TssNonceQueue,
    TssNonces,
    TssQueue,
    TssRequest,
    TssRevealed,
    TssRevoked,
    TssRevokedEntry,
    TssRoot,
    TssRound,
    TssShareItem,
    TssSign,
    TssSigner,
    Tx,
)

if TYPE_CHECKING:
    from dpkid.core.state.machine import _Block

K_TSS_ROUND: Final = b"tss:round"
K_TSS_KEY: Final = b"tss:key"
K_TSS_ROOT: Final = b"tss:root"
K_TSS_QUEUE: Final = b"tss:queue"
K_TSS_REVOKED: Final = b"tss:revoked"
K_TSS_CRL: Final = b"tss:crl"
P_TSS_DEAL: Final = b"tss:deal:"
P_TSS_JUST: Final = b"tss:just:"
P_TSS_NONCE: Final = b"tss:nonce:"
P_TSS_REQ: Final = b"tss:req:"
P_TSS_X509: Final = b"tss:x509:"

# The record type under each key (machine.RECORD_TYPES takes these).
TSS_RECORD_TYPES: Final[tuple[tuple[bytes, type[Any]], ...]] = (
    (K_TSS_ROUND, TssRound),
    (K_TSS_KEY, TssKey),
    (K_TSS_ROOT, TssRoot),
    (K_TSS_QUEUE, TssQueue),
    (K_TSS_REVOKED, TssRevoked),
    (K_TSS_CRL, TssCrl),
    (P_TSS_DEAL, TssDealRecord),
    (P_TSS_JUST, TssRevealed),
    (P_TSS_NONCE, TssNonceQueue),
    (P_TSS_REQ, TssRequest),
    (P_TSS_X509, TssCert),
)

# SPEC §16.1 constants.
PHASE_BLOCKS: Final = 20  # each DKG phase closes after at most this many blocks
RETRY_BLOCKS: Final = 20  # a failed DKG round is retried after this many blocks
SIGN_TIMEOUT_BLOCKS: Final = 6  # an attempt waits this long for its signers
MAX_ACTIVE: Final = 512  # attempts in flight
MAX_STARTS_PER_BLOCK: Final = 256  # new attempts per block
MAX_QUEUED_SLOTS: Final = 768  # posted nonce slots per member
CRL_INTERVAL_BLOCKS: Final = 600  # a fresh CRL at least this often
CRL_VALIDITY_S: Final = 7 * 86_400  # nextUpdate - thisUpdate
K_VALS_PENDING: Final = b"vals_pending"
P_JAIL: Final = b"jail:"


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def key_req(seq: int) -> bytes:
    return P_TSS_REQ + _u64(seq)


def key_deal(round_: int, dealer: bytes) -> bytes:
    return P_TSS_DEAL + _u64(round_) + dealer


def key_just(round_: int, dealer: bytes, complainer: bytes) -> bytes:
    return P_TSS_JUST + _u64(round_) + dealer + complainer


def key_nonce(addr: bytes) -> bytes:
    return P_TSS_NONCE + addr


def key_x509(cert_id: bytes) -> bytes:
    return P_TSS_X509 + cert_id


def valset_hash(vals: Sequence[tuple[bytes, int]]) -> bytes:
    return sha256(b"dpkid/tss-valset/v1\x00" + codec.encode([[a, p] for a, p in vals]))


def _member(ms: Sequence[TssMember], addr: bytes) -> TssMember | None:
    for m in ms:
        if m.address == addr:
            return m
    return None


def _queue(b: _Block) -> TssQueue:
    q: TssQueue | None = b.get(K_TSS_QUEUE)
    return q if q is not None else TssQueue()


# ------------------------------------------------------------------ DKG (SPEC §16.3-16.5)


def _current_vals(b: _Block) -> list[tuple[bytes, bytes, int]]:
    return [(v.address, v.pubkey, v.power) for v in b.validators.validators]


def _make_round(
    vals: Sequence[tuple[bytes, bytes, int]], key: TssKey | None, rnd: int, height: int
) -> TssRound | str:
    """The round for ``vals``, or why there can be none."""
    committee = committee_for(vals)
    if committee is None:
        return "no share mapping keeps both threshold properties within the bounds"
    if key is not None:
        # A re-sharing dealer deals one polynomial per share it holds now.
        most = max(m.count for m in key.members)
        size = deal_bytes(most, committee.threshold, committee.total_shares, len(vals))
        if size > MAX_DEAL_BYTES:
            return f"a re-sharing deal would take {size} bytes (> {MAX_DEAL_BYTES})"
    members = [TssMember(m.address, m.pubkey, m.first_index, m.count) for m in committee.members]
    if key is None:
        kind, dealers, old_epoch = "fresh", members, 0
    else:
        kind, dealers, old_epoch = "reshare", list(key.members), key.epoch
    return TssRound(
        round=rnd,
        kind=kind,
        start_height=height,
        phase="deal",
        phase_end=height + PHASE_BLOCKS,
        members=members,
        threshold=committee.threshold,
        dealers=dealers,
        old_epoch=old_epoch,
        valset_hash=valset_hash([(a, p) for a, _, p in vals]),
        dealt=[],
        acked=[],
        complaints=[],
        disqualified=[],
    )


def genesis_records(vals: Sequence[tuple[bytes, bytes, int]]) -> dict[bytes, Any]:
    """The first key-generation round opens with the chain (SPEC §16.3)."""
    r = _make_round(vals, None, 1, 1)
    if isinstance(r, str):
        return {K_TSS_QUEUE: TssQueue(next_round=1, retry_height=1 + RETRY_BLOCKS)}
    return {K_TSS_ROUND: r, K_TSS_QUEUE: TssQueue(next_round=2)}


def _open_round(b: _Block, q: TssQueue) -> None:
    key: TssKey | None = b.get(K_TSS_KEY)
    rnd = q.next_round
    r = _make_round(_current_vals(b), key, rnd, b.height)
    if isinstance(r, str):
        why = r
        b.emit("tss_no_committee", b"", why)
        b.put(K_TSS_QUEUE, msgspec.structs.replace(q, retry_height=b.height + RETRY_BLOCKS))
        return
    old = _round(b)
    if old is not None:
        _drop_deals(b, old)
    b.put(K_TSS_ROUND, r)
    b.put(K_TSS_QUEUE, msgspec.structs.replace(q, next_round=rnd + 1, retry_height=0))
    total = sum(m.count for m in r.members)
    b.emit("tss_round_open", _u64(rnd), f"{r.kind} t={r.threshold}/{total}")


def _round(b: _Block) -> TssRound | None:
    r: TssRound | None = b.get(K_TSS_ROUND)
    return r


def _drop_deals(b: _Block, r: TssRound) -> None:
    for d in r.dealt:
        b.put(key_deal(r.round, d), _deleted())
    for c in r.complaints:
        if c.answered:
            b.put(key_just(r.round, c.dealer, c.complainer), _deleted())


def _deleted() -> Any:
    from dpkid.core.state.machine import _DELETED

    return _DELETED


def _dkg_step(b: _Block) -> None:
    q = _queue(b)
    r = _round(b)
    key: TssKey | None = b.get(K_TSS_KEY)
    vh = valset_hash([(v.address, v.power) for v in b.validators.validators])
    in_progress = r is not None and r.phase in ("deal", "ack", "justify")
    if in_progress:
        assert r is not None
        if r.valset_hash != vh:
            _fail(b, r, "the validator set changed during the round")
            if key is None or key.valset_hash != vh:
                _open_round(b, _queue(b))
            return
        _advance(b, r)
        return
    if q.retry_height and b.height < q.retry_height:
        return
    if key is None or key.valset_hash != vh:
        _open_round(b, q)


def _fail(b: _Block, r: TssRound, why: str) -> None:
    b.put(K_TSS_ROUND, msgspec.structs.replace(r, phase="failed", note=why[:256]))
    q = _queue(b)
    b.put(K_TSS_QUEUE, msgspec.structs.replace(q, retry_height=b.height + RETRY_BLOCKS))
    b.emit("tss_round_failed", _u64(r.round), why)


def _qual(r: TssRound) -> list[TssMember]:
    return [d for d in r.dealers if d.address in r.dealt and d.address not in r.disqualified]


def _enough(r: TssRound, qual: Sequence[TssMember], old_threshold: int) -> bool:
    shares = sum(d.count for d in qual)
    # Fresh: qualified dealers hold at least t shares, so one of them is honest
    # (a sub-third coalition holds fewer) and the secret is unknown to all.
    # Re-share: their old shares must reach the old threshold to interpolate.
    return shares >= (r.threshold if r.kind == "fresh" else old_threshold)


def _advance(b: _Block, r: TssRound) -> None:
    key: TssKey | None = b.get(K_TSS_KEY)
    old_t = key.threshold if key is not None else 0
    if r.phase == "deal":
        if len(r.dealt) < len(r.dealers) and b.height < r.phase_end:
            return
        if not _enough(r, _qual(r), old_t):
            _fail(b, r, f"only {len(r.dealt)} of {len(r.dealers)} dealers dealt")
            return
        r = msgspec.structs.replace(r, phase="ack", phase_end=b.height + PHASE_BLOCKS)
        b.put(K_TSS_ROUND, r)
        b.emit("tss_phase", _u64(r.round), "ack")
        return
    if r.phase == "ack":
        if len(r.acked) < len(r.members) and b.height < r.phase_end:
            return
        if _open_complaints(r):
            r = msgspec.structs.replace(r, phase="justify", phase_end=b.height + PHASE_BLOCKS)
            b.put(K_TSS_ROUND, r)
            b.emit("tss_phase", _u64(r.round), "justify")
            return
        _finalize(b, r, key)
        return
    if r.phase == "justify":
        if _open_complaints(r) and b.height < r.phase_end:
            return
        late = sorted({c.dealer for c in r.complaints if not c.answered} - set(r.disqualified))
        if late:
            r = msgspec.structs.replace(r, disqualified=sorted({*r.disqualified, *late}))
            for d in late:
                b.emit("tss_dealer_disqualified", d, "did not answer a complaint")
        _finalize(b, r, key)


def _open_complaints(r: TssRound) -> bool:
    """Complaints still waiting for an answer (one against a dealer already
    disqualified needs none)."""
    return any(not c.answered and c.dealer not in r.disqualified for c in r.complaints)


def _finalize(b: _Block, r: TssRound, key: TssKey | None) -> None:
    qual = _qual(r)
    if not _enough(r, qual, key.threshold if key is not None else 0):
        _fail(b, r, "too few qualified dealers")
        return
    weighted: list[tuple[int, Sequence[frost.Element]]] = []
    if r.kind == "fresh":
        for d in qual:
            rec: TssDealRecord = b.get(key_deal(r.round, d.address))
            weighted.append((1, rec.polys[0].commitment))
    else:
        assert key is not None
        old_idx = [i for d in qual for i in range(d.first_index, d.first_index + d.count)]
        for d in qual:
            rec = b.get(key_deal(r.round, d.address))
            for j, poly in enumerate(rec.polys):
                weighted.append((dkg.lagrange_at_zero(old_idx, d.first_index + j), poly.commitment))
    combined = dkg.combine(weighted, r.threshold)
    group_pk = combined[0]
    if key is not None and group_pk != key.group_pk:
        # Cannot happen: every re-shared constant was checked against its old
        # verification share.  Refuse rather than change the root.
        _fail(b, r, "re-sharing did not reproduce the group key")
        return
    total = sum(m.count for m in r.members)
    vshares = [dkg.eval_commitment(combined, i) for i in range(1, total + 1)]
    epoch = (key.epoch if key is not None else 0) + 1
    newkey = TssKey(
        epoch,
        group_pk,
        r.threshold,
        r.members,
        vshares,
        r.round,
        b.height,
        r.valset_hash,
        r.start_height,
    )
    b.put(K_TSS_KEY, newkey)
    b.put(K_TSS_ROUND, msgspec.structs.replace(r, phase="done"))
    b.emit("tss_key", group_pk, f"epoch {epoch} t={r.threshold}/{total} {r.kind}")
    q = _queue(b)
    # Attempts in flight used the old committee's nonces: start them again.
    for a in q.active:
        req: TssRequest = b.get(key_req(a.seq))
        b.put(key_req(a.seq), msgspec.structs.replace(req, signers=[], deadline=0))
    if key is None:
        root_s = b.now // 1000
        try:
            tbs = tx509.root_tbs(b.chain_id, group_pk, root_s)
        except tx509.TbsError as exc:  # only for a block time the X.509 rules cannot encode
            b.emit("tss_unsignable", b"root", str(exc)[:200])
            b.put(K_TSS_QUEUE, q)
            return
        seq = q.next_seq
        b.put(K_TSS_ROOT, TssRoot(group_pk, root_s, b"", b"", seq, b.height))
        b.put(key_req(seq), _new_request(seq, "root", b"", 0, tbs, b.height))
        q = msgspec.structs.replace(q, next_seq=seq + 1)
    b.put(K_TSS_QUEUE, q)


def h_tss_deal(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: TssDeal = tx.body  # type: ignore[assignment]
    r = _round(b)
    if r is None or r.round != body.round or r.phase != "deal":
        raise TxFailure(Code.TSS_WRONG_PHASE, "no key-generation round is taking deals")
    dealer = _member(r.dealers, sender)
    if dealer is None:
        raise TxFailure(Code.NOT_VALIDATOR, "not a dealer of this round")
    if sender in r.dealt:
        raise TxFailure(Code.TSS_DUPLICATE, "this dealer already dealt")
    polys_wanted = 1 if r.kind == "fresh" else dealer.count
    if len(body.polys) != polys_wanted:
        raise TxFailure(Code.TSS_BAD_DEAL, f"{len(body.polys)} polynomials, want {polys_wanted}")
    if len(body.boxes) != len(r.members):
        raise TxFailure(Code.TSS_BAD_DEAL, f"{len(body.boxes)} boxes, want {len(r.members)}")
    for m, box in zip(r.members, body.boxes, strict=True):
        if len(box) != dkg.box_len(polys_wanted, m.count):
            raise TxFailure(Code.TSS_BAD_DEAL, f"box for {m.address.hex()} has the wrong size")
    ctx = dkg.context(b.chain_id, r.round, r.valset_hash)
    key: TssKey | None = b.get(K_TSS_KEY)
    for j, poly in enumerate(body.polys):
        if len(poly.commitment) != r.threshold or not dkg.valid_points(poly.commitment):
            raise TxFailure(Code.TSS_BAD_DEAL, f"polynomial {j}: bad commitment")
        if r.kind == "fresh":
            # Komlo-Goldberg KeyGen step 1: the proof of knowledge of a_0
            # stops a rogue-key dealer choosing its commitment after others'.
            ok = len(poly.pok) == 64 and frost.dkg_verify_round1(
                frost.DkgRound1Package(
                    dealer.first_index,
                    tuple(poly.commitment),
                    frost.Element(poly.pok[:32]),
                    int.from_bytes(poly.pok[32:], "little"),
                ),
                ctx,
                r.threshold,
            )
            if not ok:
                raise TxFailure(Code.TSS_BAD_DEAL, "proof of knowledge does not verify")
        else:
            assert key is not None
            # Re-sharing keeps the key: the constant term of the polynomial for
            # old index k must commit to share k (its verification share).
            if poly.commitment[0] != key.verification_shares[dealer.first_index + j - 1]:
                raise TxFailure(Code.TSS_BAD_DEAL, f"polynomial {j} does not re-share its share")
    b.put(key_deal(r.round, sender), TssDealRecord(sender, body.polys, body.boxes, b.height))
    b.put(K_TSS_ROUND, msgspec.structs.replace(r, dealt=sorted([*r.dealt, sender])))
    b.emit("tss_dealt", sender, str(r.round))


def h_tss_ack(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: TssAck = tx.body  # type: ignore[assignment]
    r = _round(b)
    if r is None or r.round != body.round or r.phase != "ack":
        raise TxFailure(Code.TSS_WRONG_PHASE, "no key-generation round is taking acks")
    if _member(r.members, sender) is None:
        raise TxFailure(Code.NOT_VALIDATOR, "not a member of this round")
    if sender in r.acked:
        raise TxFailure(Code.TSS_DUPLICATE, "this member already acked")
    against = sorted(set(body.complaints))
    for d in against:
        if d not in r.dealt:
            raise TxFailure(Code.TSS_BAD_COMPLAINT, f"{d.hex()} did not deal")
    complaints = [*r.complaints, *(TssComplaint(sender, d) for d in against)]
    complaints.sort(key=lambda c: (c.dealer, c.complainer))
    b.put(
        K_TSS_ROUND,
        msgspec.structs.replace(r, acked=sorted([*r.acked, sender]), complaints=complaints),
    )
    for d in against:
        b.emit("tss_complaint", d, sender.hex())


def h_tss_justify(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: TssJustify = tx.body  # type: ignore[assignment]
    r = _round(b)
    if r is None or r.round != body.round or r.phase not in ("ack", "justify"):
        raise TxFailure(Code.TSS_WRONG_PHASE, "no key-generation round is taking answers")
    pos = next(
        (
            i
            for i, c in enumerate(r.complaints)
            if c.dealer == sender and c.complainer == body.complainer and not c.answered
        ),
        None,
    )
    if pos is None:
        raise TxFailure(Code.TSS_BAD_COMPLAINT, "no open complaint by that member against you")
    m = _member(r.members, body.complainer)
    rec: TssDealRecord | None = b.get(key_deal(r.round, sender))
    assert m is not None and rec is not None
    want = len(rec.polys) * m.count
    ok = len(body.shares) == want
    if ok:
        try:
            vals = [frost.deserialize_scalar(s) for s in body.shares]
        except frost.FrostError:
            ok = False
    if ok:
        k = 0
        for poly in rec.polys:
            for x in range(m.first_index, m.first_index + m.count):
                if not dkg.share_matches(poly.commitment, x, vals[k]):
                    ok = False
                k += 1
    complaints = list(r.complaints)
    if ok:
        complaints[pos] = msgspec.structs.replace(complaints[pos], answered=True)
        b.put(key_just(r.round, sender, body.complainer), TssRevealed(list(body.shares)))
        b.put(K_TSS_ROUND, msgspec.structs.replace(r, complaints=complaints))
        b.emit("tss_complaint_answered", sender, body.complainer.hex())
        return
    # The dealer itself published shares that contradict its commitments: the
    # complaint is upheld from public data alone (SPEC §16.4).
    complaints[pos] = msgspec.structs.replace(complaints[pos], answered=True)
    b.put(
        K_TSS_ROUND,
        msgspec.structs.replace(
            r, complaints=complaints, disqualified=sorted({*r.disqualified, sender})
        ),
    )
    b.emit("tss_dealer_disqualified", sender, "its published shares fail its commitments")


# ------------------------------------------------------------------ nonces and signing (§16.6-16.7)


def h_tss_nonces(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: TssNonces = tx.body  # type: ignore[assignment]
    key: TssKey | None = b.get(K_TSS_KEY)
    if key is None or body.epoch != key.epoch:
        raise TxFailure(Code.TSS_WRONG_PHASE, "nonces are for the key epoch in force")
    m = _member(key.members, sender)
    if m is None:
        raise TxFailure(Code.NOT_VALIDATOR, "not a member of the committee")
    q: TssNonceQueue | None = b.get(key_nonce(sender))
    if q is None:
        q = TssNonceQueue(key.epoch, 1, 1, [])
    if q.epoch != key.epoch:
        q = TssNonceQueue(key.epoch, q.next_seq, q.next_seq, [])
    if body.first_seq != q.next_seq:
        raise TxFailure(Code.TSS_BAD_NONCES, f"first_seq {body.first_seq}, expected {q.next_seq}")
    limit = queued_slots_limit(m.count)
    if len(q.slots) + len(body.slots) > limit:
        raise TxFailure(Code.TSS_BAD_NONCES, f"at most {limit} slots may be queued")
    for s in body.slots:
        if len(s) != 64 * m.count or not dkg.valid_points(
            [s[i : i + 32] for i in range(0, len(s), 32)]
        ):
            raise TxFailure(Code.TSS_BAD_NONCES, "a slot is not count x two valid points")
    n = len(body.slots)
    b.put(
        key_nonce(sender),
        TssNonceQueue(key.epoch, q.next_seq + n, q.first_seq, [*q.slots, *body.slots]),
    )


def queued_slots_limit(count: int) -> int:
    """Slots a member with ``count`` shares may keep posted: MAX_QUEUED_SLOTS
    commitment pairs in all, so the queue record stays under 48 KiB."""
    return max(8, MAX_QUEUED_SLOTS // count)


def _commitment_list(req: TssRequest) -> list[frost.SigningCommitment]:
    out = []
    for s in req.signers:
        for j in range(s.count):
            c = s.commitments[j]
            out.append(
                frost.SigningCommitment(
                    s.first_index + j, frost.Element(c[:32]), frost.Element(c[32:])
                )
            )
    return out


def _context(req: TssRequest, key: TssKey) -> signing.AttemptContext:
    return signing.attempt_context(key.group_pk, req.tbs, _commitment_list(req))


def h_tss_sign(b: _Block, tx: Tx, sender: bytes, h: bytes) -> None:
    body: TssSign = tx.body  # type: ignore[assignment]
    key: TssKey | None = b.get(K_TSS_KEY)
    if key is None:
        raise TxFailure(Code.TSS_WRONG_PHASE, "there is no threshold key")
    taken = late = 0
    for item in body.items:
        req: TssRequest | None = b.get(key_req(item.request))
        pos = _signer_pos(req, item, sender, key)
        if req is None or pos is None:
            late += 1  # a share for an attempt that has moved on: normal, not wrong
            continue
        if not _take_share(b, req, pos, item, key, h):
            return  # the sender is jailed; nothing more of its is counted
        taken += 1
    b.emit("tss_shares", sender, f"{taken} taken, {late} late")


def _signer_pos(
    req: TssRequest | None, item: TssShareItem, sender: bytes, key: TssKey
) -> int | None:
    if req is None or req.status != "pending" or req.attempt != item.attempt:
        return None
    if req.epoch != key.epoch or not req.signers:
        return None
    for i, s in enumerate(req.signers):
        if s.address == sender:
            return None if s.shares else i
    return None


def _take_share(
    b: _Block, req: TssRequest, pos: int, item: TssShareItem, key: TssKey, h: bytes
) -> bool:
    """Store a signer's shares; once all are in, aggregate. Shares are checked
    one by one only when the aggregate fails (RFC 9591 §5.4 after §5.3), which
    costs one Ed25519 verification per certificate instead of three scalar
    multiplications per share."""
    signer = req.signers[pos]
    well_formed = len(item.shares) == signer.count
    if well_formed:
        try:
            for raw in item.shares:
                frost.deserialize_scalar(raw)
        except frost.FrostError:
            well_formed = False
    if not well_formed:
        # The malformed shares are in this tx, signed by the sender: evidence.
        _bad_share(b, req, [signer.address], {signer.address: h})
        return False
    signers = list(req.signers)
    signers[pos] = msgspec.structs.replace(signer, shares=list(item.shares), share_tx=h)
    req = msgspec.structs.replace(req, signers=signers)
    if not all(s.shares for s in signers):
        b.put(key_req(req.seq), req)
        return True
    z = 0
    for s in signers:
        for share in s.shares:
            z = (z + frost.deserialize_scalar(share)) % frost.ORDER
    try:
        sig = _context(req, key).group_commitment + frost.serialize_scalar(z)
    except frost.FrostError:  # R is the identity: chance 2^-252, start again
        b.put(key_req(req.seq), msgspec.structs.replace(req, signers=[], deadline=0))
        return True
    if verify_ed25519(key.group_pk, req.tbs, sig):
        _signed(b, req, sig)
        return True
    culprits = _bad_signers(req, key)
    if not culprits:  # cannot happen: valid shares always aggregate
        b.emit("tss_aggregate_failed", _u64(req.seq), "")
        b.put(key_req(req.seq), msgspec.structs.replace(req, signers=[], deadline=0))
        return True
    _bad_share(b, req, culprits, {s.address: s.share_tx for s in signers})
    return signer.address not in culprits


def _bad_signers(req: TssRequest, key: TssKey) -> list[bytes]:
    """Signers of ``req`` whose posted shares fail RFC 9591 §5.4."""
    posted = [s for s in req.signers if s.shares]
    if not posted:
        return []
    try:
        ctx = _context(req, key)
    except frost.FrostError:  # R is the identity (chance 2^-252): no share is judged
        return []
    return [
        s.address
        for s in posted
        if not all(
            signing.share_ok(
                ctx,
                s.first_index + j,
                key.verification_shares[s.first_index + j - 1],
                frost.deserialize_scalar(share),
            )
            for j, share in enumerate(s.shares)
        )
    ]


def _bad_share(b: _Block, req: TssRequest, culprits: list[bytes], txs: dict[bytes, bytes]) -> None:
    """RFC 9591 §5.4 identified the signers: the shares in their signed txs
    are the evidence. Each is jailed like an equivocator (SPEC §8.2) and the
    attempt starts again without them."""
    b.put(
        key_req(req.seq),
        msgspec.structs.replace(
            req, signers=[], deadline=0, excluded=sorted({*req.excluded, *culprits})
        ),
    )
    for addr in culprits:
        h = txs[addr]
        b.emit("tss_bad_share", addr, f"request {req.seq} attempt {req.attempt} tx {h.hex()}")
        jail(b, addr, h, f"invalid signature share for request {req.seq}")


def jail(b: _Block, addr: bytes, evidence_key: bytes, why: str) -> None:
    from dpkid.core.state.machine import scheduled_powers

    if b.get(P_JAIL + addr) is not None:
        b.emit("evidence_duplicate", addr, "already jailed")
        return
    rec = next((v for v in b.validators.validators if v.address == addr), None)
    pending: PendingValidatorChanges = b.get(K_VALS_PENDING)
    if rec is None:
        b.emit("evidence_not_a_validator", addr, "no longer a validator: excluded only")
        return
    if not (set(scheduled_powers(b.validators, pending)) - {addr}):
        b.emit("evidence_deferred", addr, "jailing would leave no validator")
        return
    b.put(P_JAIL + addr, Jailed(addr, b.height, evidence_key))
    change = PendingValidatorChange(b.height + 2, rec.pubkey, 0)
    b.put(K_VALS_PENDING, PendingValidatorChanges([*pending.changes, change]))
    b.emit("validator_jailed", addr, why)


def _signed(b: _Block, req: TssRequest, sig: bytes) -> None:
    req = msgspec.structs.replace(req, status="signed", sig=sig, signed_height=b.height)
    b.put(key_req(req.seq), req)
    der = tx509.assemble(req.tbs, sig)
    q = _queue(b)
    q = msgspec.structs.replace(q, active=[a for a in q.active if a.seq != req.seq])
    if req.kind == "root":
        root: TssRoot = b.get(K_TSS_ROOT)
        b.put(K_TSS_ROOT, msgspec.structs.replace(root, der=der, cert_hash=sha256(der)))
        b.emit("tss_root_signed", sha256(der), "")
    elif req.kind == "cert":
        tc: TssCert = b.get(key_x509(req.ref))
        if req.version >= tc.signed_version or not tc.der:
            tc = msgspec.structs.replace(
                tc, der=der, signed_height=b.height, signed_version=req.version
            )
            b.put(key_x509(req.ref), tc)
        b.emit("tss_cert_signed", req.ref, f"version {req.version}")
    else:
        number = int.from_bytes(req.ref[:8], "big")
        crl = _crl_from_request(req, der, b.height, number)
        b.put(K_TSS_CRL, crl)
        q = msgspec.structs.replace(q, crl_open=0)
        b.emit("tss_crl_signed", req.ref, f"crl {number}")
    b.put(K_TSS_QUEUE, q)


def _crl_from_request(req: TssRequest, der: bytes, height: int, number: int) -> TssCrl:
    this_s = int.from_bytes(req.ref[8:16], "big")
    return TssCrl(number, this_s, this_s + CRL_VALIDITY_S, der, req.seq, height)


def _new_request(
    seq: int, kind: str, ref: bytes, version: int, tbs: bytes, height: int
) -> TssRequest:
    return TssRequest(seq, kind, ref, version, tbs, height, 0, 0, 0, [], [])


# ------------------------------------------------------------------ hooks from certificate rules


def on_cert_changed(b: _Block, cert: Certificate) -> None:
    """An issued, renewed or degraded certificate gets a new X.509 version."""
    q = _queue(b)
    tc: TssCert | None = b.get(key_x509(cert.cert_id))
    version = 0 if tc is None else tc.version + 1
    if tc is not None:
        # The version it replaces must not stay usable: a degraded EV
        # certificate would otherwise still show EV to TLS clients.
        _add_revoked(b, tx509.leaf_serial(cert.cert_id, tc.version), b.now, 4, cert)
        q = msgspec.structs.replace(q, crl_due=True)
    seq = q.next_seq
    # The TBS is built when the first attempt starts, from the record as it is
    # then: that bounds the work per block (MAX_STARTS_PER_BLOCK), however many
    # certificates one transaction changes (a corrupt endorser's removal).
    b.put(key_req(seq), _new_request(seq, "cert", cert.cert_id, version, b"", b.height))
    if tc is None:
        tc = TssCert(cert.cert_id, version, b"", seq)
    b.put(key_x509(cert.cert_id), msgspec.structs.replace(tc, version=version, request=seq))
    b.put(K_TSS_QUEUE, msgspec.structs.replace(q, next_seq=seq + 1))


def on_cert_revoked(b: _Block, cert: Certificate) -> None:
    tc: TssCert | None = b.get(key_x509(cert.cert_id))
    if tc is None:
        return
    _add_revoked(
        b, tx509.leaf_serial(cert.cert_id, tc.version), b.now, cert.revocation_reason, cert
    )
    b.put(K_TSS_QUEUE, msgspec.structs.replace(_queue(b), crl_due=True))


def _add_revoked(b: _Block, serial: int, now_ms: int, reason: int, cert: Certificate) -> None:
    rv: TssRevoked | None = b.get(K_TSS_REVOKED)
    entries = list(rv.entries) if rv is not None else []
    sb = serial.to_bytes(16, "big")
    keys = [e.serial for e in entries]
    i = bisect.bisect_left(keys, sb)
    if i < len(entries) and entries[i].serial == sb:
        return
    entries.insert(
        i, TssRevokedEntry(sb, now_ms // 1000, max(reason, 0), cert.not_after_ms // 1000)
    )
    b.put(K_TSS_REVOKED, TssRevoked(entries))


# ------------------------------------------------------------------ end of block


def end_block(b: _Block) -> None:
    _dkg_step(b)
    key: TssKey | None = b.get(K_TSS_KEY)
    if key is None:
        return
    _schedule_crl(b, key)
    _run_attempts(b, key)


def _schedule_crl(b: _Block, key: TssKey) -> None:
    q = _queue(b)
    root: TssRoot | None = b.get(K_TSS_ROOT)
    if q.crl_open or root is None or not root.der:
        return
    if not q.crl_due and b.height - q.last_crl_height < CRL_INTERVAL_BLOCKS:
        return
    now_s = b.now // 1000
    rv: TssRevoked | None = b.get(K_TSS_REVOKED)
    last: TssCrl | None = b.get(K_TSS_CRL)
    # RFC 5280 §3.3: an entry may leave only after it has appeared on one CRL
    # issued beyond the certificate's validity period.
    gone_before = last.this_update_s if last is not None else 0
    live = [
        e
        for e in (rv.entries if rv else [])
        if e.not_after_s >= gone_before or e.revoked_s >= gone_before  # not yet on a CRL
    ]
    if rv is not None and len(live) != len(rv.entries):
        b.put(K_TSS_REVOKED, TssRevoked(live))
    number = q.crl_number + 1
    try:
        tbs = tx509.crl_tbs(
            b.chain_id,
            key.group_pk,
            number,
            now_s,
            now_s + CRL_VALIDITY_S,
            [(int.from_bytes(e.serial, "big"), e.revoked_s, e.reason) for e in live],
        )
    except tx509.TbsError as exc:  # only for times the X.509 rules cannot encode
        b.emit("tss_unsignable", b"crl", str(exc)[:200])
        b.put(K_TSS_QUEUE, msgspec.structs.replace(q, crl_due=False, last_crl_height=b.height))
        return
    seq = q.next_seq
    # ref = number || thisUpdate (seconds), both u64 big-endian.
    req = _new_request(seq, "crl", _u64(number) + _u64(now_s), 0, tbs, b.height)
    b.put(key_req(seq), req)
    b.put(
        K_TSS_QUEUE,
        msgspec.structs.replace(
            q,
            next_seq=seq + 1,
            crl_number=number,
            crl_due=False,
            last_crl_height=b.height,
            crl_open=seq,
        ),
    )


def _run_attempts(b: _Block, key: TssKey) -> None:
    q = _queue(b)
    active: list[TssActive] = []
    restarts: list[TssRequest] = []
    for a in q.active:
        req: TssRequest = b.get(key_req(a.seq))
        if req.status != "pending":
            continue
        if req.signers and req.deadline > b.height:
            active.append(a)
            continue
        if req.signers:
            # The deadline passed: leave out whoever did not answer this time,
            # and check the shares that did come (they are checked one by one
            # only when an attempt fails), so a bad one never goes unpunished.
            silent = [s.address for s in req.signers if not s.shares]
            bad = _bad_signers(req, key)
            if bad:
                _bad_share(b, req, bad, {s.address: s.share_tx for s in req.signers})
                req = b.get(key_req(req.seq))
            req = msgspec.structs.replace(req, excluded=sorted({*req.excluded, *silent}))
        restarts.append(req)
    starts = 0
    nxt = q.next_start
    todo = list(restarts)
    while nxt < q.next_seq and len(todo) + len(active) < MAX_ACTIVE:
        todo.append(b.get(key_req(nxt)))
        nxt += 1
    waiting: list[TssActive] = []
    for req in todo:
        if req.status != "pending":
            continue
        if starts >= MAX_STARTS_PER_BLOCK:
            waiting.append(TssActive(req.seq, 0))
            b.put(key_req(req.seq), req)
            continue
        started = _start_attempt(b, req, key)
        starts += 1
        if started is None:
            now: TssRequest = b.get(key_req(req.seq))
            if now.status == "pending":
                waiting.append(TssActive(req.seq, 0))
        else:
            active.append(TssActive(started.seq, started.deadline))
    b.put(K_TSS_QUEUE, msgspec.structs.replace(_queue(b), active=active + waiting, next_start=nxt))


def _start_attempt(b: _Block, req: TssRequest, key: TssKey) -> TssRequest | None:
    if req.kind == "cert":
        cert = b.certificate(req.ref)
        tc: TssCert | None = b.get(key_x509(req.ref))
        # Nothing to sign for a revoked or expired certificate, nor for a
        # version a newer one has replaced (its serial is on the CRL).
        gone = cert is None or cert.status == "revoked" or cert.not_after_ms <= b.now
        if gone or (tc is not None and tc.version > req.version):
            b.put(key_req(req.seq), msgspec.structs.replace(req, status="cancelled"))
            return None
        if not req.tbs:
            tbs = _leaf_tbs(b, cert, req.version, key)
            if tbs is None:
                b.put(key_req(req.seq), msgspec.structs.replace(req, status="unsignable"))
                return None
            req = msgspec.structs.replace(req, tbs=tbs)
    members = key.members
    n = len(members)
    chosen: list[tuple[TssMember, TssNonceQueue]] = []
    shares = 0
    for i in range(n):
        m = members[(req.seq + i) % n]
        jailed: Jailed | None = b.get(P_JAIL + m.address)
        # Out if its jail took effect (at jail height + 2, SPEC §8.2) after the
        # set this committee was taken from: it is in the committee only because
        # the re-sharing has not happened yet. A validator re-admitted after its
        # jail is in a committee taken from a later set, and signs again.
        if m.address in req.excluded or (jailed is not None and jailed.height + 2 > key.set_height):
            continue
        nq: TssNonceQueue | None = b.get(key_nonce(m.address))
        if nq is None or nq.epoch != key.epoch or not nq.slots:
            continue
        chosen.append((m, nq))
        shares += m.count
        if shares >= key.threshold:
            break
    if shares < key.threshold:
        # Not enough signers with nonces now.  Forget who was left out, so a
        # member that was only slow is asked again (jailed ones stay out).
        b.put(key_req(req.seq), msgspec.structs.replace(req, excluded=[], signers=[], deadline=0))
        return None
    signers: list[TssSigner] = []
    for m, nq in chosen:
        slot = nq.slots[0]
        b.put(
            key_nonce(m.address),
            msgspec.structs.replace(nq, first_seq=nq.first_seq + 1, slots=nq.slots[1:]),
        )
        comms = [slot[64 * j : 64 * j + 64] for j in range(m.count)]
        signers.append(TssSigner(m.address, m.first_index, m.count, nq.first_seq, comms, []))
    signers.sort(key=lambda s: s.first_index)
    req = msgspec.structs.replace(
        req,
        epoch=key.epoch,
        attempt=req.attempt + 1,
        deadline=b.height + SIGN_TIMEOUT_BLOCKS,
        signers=signers,
    )
    b.put(key_req(req.seq), req)
    return req


def _leaf_tbs(b: _Block, cert: Certificate | None, version: int, key: TssKey) -> bytes | None:
    """The leaf's TBS, or None (with an event) if the record cannot be encoded.
    tx509.leaf_tbs is built never to fail for a record the ledger accepts;
    this keeps a bug there from halting the chain."""
    if cert is None:
        return None
    try:
        return tx509.leaf_tbs(cert, b.chain_id, version, key.group_pk)
    except tx509.TbsError as exc:
        b.emit("tss_unsignable", cert.cert_id, str(exc)[:200])
        return None

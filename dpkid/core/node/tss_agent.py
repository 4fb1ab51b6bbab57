"""A validator's part in the threshold key (SPEC §16): pure, run by NodeCore.

After each committed block the agent reads the ledger and answers what it
asks of this validator: deal, check the shares dealt to it and complain or
acknowledge, answer complaints, post round-one nonce commitments ahead, and
sign the attempts it was picked for.  It returns transaction bodies for the
node to sign and submit, and says when its secrets changed; the shell must
persist ``secrets_blob()`` durably before any of those transactions leaves
(NodeCore puts it in ``Ready.tss`` and ``carry_out`` writes it first), the
same rule as the consensus double-sign guard.  That is what keeps a nonce
from ever signing two messages: a nonce is deleted, durably, before the share
made with it is sent, so after a crash it is gone, not reused.

Randomness comes from a deterministic generator seeded by the shell (the
daemon: 32 fresh bytes from the OS at every start; the simulator: its seed).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from dpkid.core import codec, frost
from dpkid.core.crypto import SigningKey
from dpkid.core.node.byzantine import BAD_SHARES
from dpkid.core.state import tss as rules
from dpkid.core.tss import dkg, signing
from dpkid.core.types import (
    TssAck,
    TssDeal,
    TssDealRecord,
    TssJustify,
    TssKey,
    TssNonceQueue,
    TssNonces,
    TssPoly,
    TssQueue,
    TssRequest,
    TssRevealed,
    TssRound,
    TssShareItem,
    TssSign,
)

# Nonces are posted while fewer than half of rules.queued_slots_limit are
# queued on the ledger. At the measured 100-140 certificates/s each member
# spends 50-70 slots a block, and a nonce tx takes one or two blocks to land:
# half the queue is several blocks of supply (BENCHMARKS.md "Threshold signing").
BATCH_SLOTS: Final = 200
RESUBMIT_BLOCKS: Final = 4  # resend a duty the ledger has not seen after this long
MAX_HELD_NONCES: Final = rules.MAX_QUEUED_SLOTS + rules.MAX_ACTIVE + BATCH_SLOTS
MAX_TX_PAYLOAD: Final = 14_000


class _Secrets(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """Everything the agent must not lose or repeat, as persisted."""

    round: int = 0
    coeffs: list[list[bytes]] = msgspec.field(default_factory=list)  # per polynomial
    received: list[tuple[bytes, bytes]] = msgspec.field(default_factory=list)  # dealer, shares
    epoch: int = 0
    first_index: int = 0
    shares: list[bytes] = msgspec.field(default_factory=list)  # my signing shares
    group_pk: bytes = b""
    nonces: list[tuple[int, bytes]] = msgspec.field(default_factory=list)  # seq, hiding||binding..


class _Drbg:
    """SHA-512 in counter mode over a seed the shell gives (never the global RNG)."""

    def __init__(self, seed: bytes) -> None:
        self._seed = hashlib.sha512(b"dpkid/tss-drbg/v1\x00" + seed).digest()
        self._n = 0

    def take(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self._n += 1
            out += hashlib.sha512(self._seed + self._n.to_bytes(8, "big")).digest()
        return out[:n]


@dataclass
class AgentOutput:
    bodies: list[Any] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    dirty: bool = False


class TssAgent:
    def __init__(
        self, key: SigningKey, entropy: bytes, blob: bytes | None = None, mode: str = ""
    ) -> None:
        self.key = key
        self.address = key.address
        self.mode = mode
        self._rng = _Drbg(entropy + key.public_key)
        self._x_pk = dkg.x25519_public(key.public_key)
        self._x_sk = dkg.x25519_secret(key.seed)
        self.s = _Secrets() if not blob else codec.decode(blob, _Secrets)
        self._nonces: dict[int, bytes] = dict(self.s.nonces)
        # duty -> height it was last sent, so a duty is resent only after a while
        self._sent: dict[tuple[Any, ...], int] = {}

    # -- persistence
    @staticmethod
    def check_blob(blob: bytes) -> None:
        """Raise ValueError if ``blob`` is not a secrets file this agent wrote."""
        try:
            codec.decode(blob, _Secrets)
        except codec.DecodeError as exc:
            raise ValueError(str(exc)) from exc

    def secrets_blob(self) -> bytes:
        self.s.nonces = sorted(self._nonces.items())
        return codec.encode(self.s)

    # -- the duty cycle
    def on_commit(self, state: Any) -> AgentOutput:
        out = AgentOutput()
        height: int = state.height
        for k in [k for k, h in self._sent.items() if height - h > 64]:
            del self._sent[k]
        r: TssRound | None = state.get(rules.K_TSS_ROUND)
        key: TssKey | None = state.get(rules.K_TSS_KEY)
        if r is not None:
            self._dkg_duties(state, r, key, out)
        if key is not None:
            self._adopt(state, key, r, out)
            if self.s.epoch == key.epoch and self.s.shares:
                self._nonce_duty(state, key, out)
                self._sign_duty(state, key, out)
        return out

    def _due(self, duty: tuple[Any, ...], height: int) -> bool:
        last = self._sent.get(duty)
        if last is not None and height - last < RESUBMIT_BLOCKS:
            return False
        self._sent[duty] = height
        return True

    # -- DKG
    def _dkg_duties(self, state: Any, r: TssRound, key: TssKey | None, out: AgentOutput) -> None:
        h = state.height
        dealer = rules._member(r.dealers, self.address)
        member = rules._member(r.members, self.address)
        if r.phase == "deal" and dealer is not None and self.address not in r.dealt:
            deal = (
                self._make_deal(state, r, dealer, key, out)
                if self._due(("deal", r.round), h)
                else None
            )
            if deal is not None:
                out.bodies.append(deal)
        acking = r.phase == "ack" and member is not None and self.address not in r.acked
        if acking and self._due(("ack", r.round), h):
            out.bodies.append(self._make_ack(state, r, member, out))
        if r.phase not in ("ack", "justify") or self.s.round != r.round or not self.s.coeffs:
            return
        for c in r.complaints:
            if c.dealer != self.address or c.answered:
                continue
            if not self._due(("justify", r.round, c.complainer), h):
                continue
            m = rules._member(r.members, c.complainer)
            assert m is not None
            vals = [
                dkg.poly_eval(self._coeffs(p), x)
                for p in range(len(self.s.coeffs))
                for x in range(m.first_index, m.first_index + m.count)
            ]
            shares = [frost.serialize_scalar(v) for v in vals]
            out.bodies.append(TssJustify(r.round, c.complainer, shares))

    def _coeffs(self, p: int) -> list[int]:
        return [frost.deserialize_scalar(c) for c in self.s.coeffs[p]]

    def _make_deal(
        self, state: Any, r: TssRound, me: Any, key: TssKey | None, out: AgentOutput
    ) -> TssDeal | None:
        t = r.threshold
        if self.s.round != r.round or not self.s.coeffs:
            polys: list[list[int]] = []
            if r.kind == "fresh":
                polys.append(dkg.random_polynomial(None, t, self._rng.take(64 * t)))
            else:
                if key is None or self.s.epoch != key.epoch or not self.s.shares:
                    out.events.append(("tss_cannot_reshare", "no share of the key in force"))
                    return None
                for j in range(me.count):
                    const = frost.deserialize_scalar(self.s.shares[j])
                    polys.append(dkg.random_polynomial(const, t, self._rng.take(64 * t)))
            self.s.round = r.round
            self.s.coeffs = [[frost.serialize_scalar(a) for a in p] for p in polys]
            self.s.received = []
            out.dirty = True
        ctx = dkg.context(state.chain_id, r.round, r.valset_hash)
        tpolys: list[TssPoly] = []
        for p in range(len(self.s.coeffs)):
            coeffs = self._coeffs(p)
            comm = [frost.scalar_base_mult(a) for a in coeffs]
            pok = b""
            if r.kind == "fresh":
                pok = _pok(me.first_index, coeffs[0], comm[0], ctx, self._rng.take(32))
            tpolys.append(TssPoly(comm, pok))
        boxes = []
        for m in r.members:
            vals = [
                dkg.poly_eval(self._coeffs(p), x)
                for p in range(len(self.s.coeffs))
                for x in range(m.first_index, m.first_index + m.count)
            ]
            boxes.append(
                dkg.seal(dkg.encode_scalars(vals), dkg.x25519_public(m.pubkey), self._rng.take(32))
            )
        return TssDeal(r.round, tpolys, boxes)

    def _make_ack(self, state: Any, r: TssRound, me: Any, out: AgentOutput) -> TssAck:
        complaints = []
        received = []
        for d in r.dealt:
            rec: TssDealRecord | None = state.get(rules.key_deal(r.round, d))
            if rec is None:
                continue
            pos = next(i for i, m in enumerate(r.members) if m.address == self.address)
            plain = dkg.unseal(rec.boxes[pos], self._x_pk, self._x_sk)
            ok = plain is not None
            if plain is not None:
                try:
                    vals = dkg.decode_scalars(plain)
                except dkg.DealFormatError:
                    ok = False
                    vals = []
                ok = ok and len(vals) == len(rec.polys) * me.count
                k = 0
                for poly in rec.polys:
                    for x in range(me.first_index, me.first_index + me.count):
                        if ok and not dkg.share_matches(poly.commitment, x, vals[k]):
                            ok = False
                        k += 1
            if ok:
                assert plain is not None
                received.append((d, plain))
            else:
                complaints.append(d)
                out.events.append(("tss_complain", d.hex()))
        self.s.received = received
        out.dirty = True
        return TssAck(r.round, complaints)

    def _adopt(self, state: Any, key: TssKey, r: TssRound | None, out: AgentOutput) -> None:
        """Once a round is done, compute and keep my shares of its key."""
        if self.s.epoch == key.epoch:
            return
        me = rules._member(key.members, self.address)
        if me is None:
            if self.s.shares:
                # Out of the committee: the old shares must not outlive it.
                self.s = _Secrets()
                self._nonces.clear()
                out.dirty = True
            return
        if r is None or r.round != key.round or r.phase != "done":
            return
        qual = [d for d in r.dealers if d.address in r.dealt and d.address not in r.disqualified]
        got = dict(self.s.received)
        mine = [0] * me.count
        if r.kind == "fresh":
            weights = [(d, [1]) for d in qual]
        else:
            old_idx = [i for d in qual for i in range(d.first_index, d.first_index + d.count)]
            weights = [
                (d, [dkg.lagrange_at_zero(old_idx, d.first_index + j) for j in range(d.count)])
                for d in qual
            ]
        for d, lams in weights:
            plain = got.get(d.address)
            if plain is None:
                rev: TssRevealed | None = state.get(
                    rules.key_just(r.round, d.address, self.address)
                )
                if rev is None:
                    out.events.append(("tss_missing_share", d.address.hex()))
                    return
                plain = b"".join(rev.shares)
            vals = dkg.decode_scalars(plain)
            k = 0
            for lam in lams:
                for j in range(me.count):
                    mine[j] = (mine[j] + lam * vals[k]) % frost.ORDER
                    k += 1
        for j in range(me.count):
            if frost.scalar_base_mult(mine[j]) != key.verification_shares[me.first_index + j - 1]:
                out.events.append(("tss_share_mismatch", f"index {me.first_index + j}"))
                return
        self.s = _Secrets(
            epoch=key.epoch,
            first_index=me.first_index,
            shares=[frost.serialize_scalar(v) for v in mine],
            group_pk=key.group_pk,
        )
        self._nonces.clear()
        out.dirty = True
        out.events.append(("tss_share_ready", f"epoch {key.epoch} indices {me.count}"))

    # -- nonces
    def _nonce_duty(self, state: Any, key: TssKey, out: AgentOutput) -> None:
        q: TssNonceQueue | None = state.get(rules.key_nonce(self.address))
        if q is None:
            queued, next_seq, first = 0, 1, 1
        elif q.epoch != key.epoch:
            queued, next_seq, first = 0, q.next_seq, q.next_seq
        else:
            queued, next_seq, first = len(q.slots), q.next_seq, q.first_seq
        # Nonces below the queue's head are spent or burnt, unless an open
        # attempt still names them.
        keep = self._assigned(state)
        for seq in [s for s in self._nonces if s < first and s not in keep]:
            del self._nonces[seq]
            out.dirty = True
        count = len(self.s.shares)
        limit = rules.queued_slots_limit(count)
        if queued >= limit // 2 or not self._due(("nonces", next_seq), state.height):
            return
        n = min(BATCH_SLOTS, limit - queued, MAX_TX_PAYLOAD // (64 * count))
        fresh = sum(1 for i in range(n) if next_seq + i not in self._nonces)
        if n <= 0 or len(self._nonces) + fresh > MAX_HELD_NONCES:
            return
        slots = []
        for i in range(n):
            have = self._nonces.get(next_seq + i)
            if have is not None and len(have) == 128 * count:
                # Posted before but not on the ledger yet (the tx is slow, or
                # we restarted): post the same commitments again, never new
                # secrets for a sequence number that may still land.
                slots.append(have[64 * count :])
                continue
            secret = b""
            public = b""
            for j in range(count):
                s = frost.deserialize_scalar(self.s.shares[j])
                nonces, comm = frost.commit(
                    self.s.first_index + j, s, self._rng.take(32), self._rng.take(32)
                )
                secret += frost.serialize_scalar(nonces.hiding) + frost.serialize_scalar(
                    nonces.binding
                )
                public += comm.hiding + comm.binding
            # The public half rides along so that signing can check, by
            # comparing bytes, that the ledger put our own commitment in the
            # attempt (RFC 9591 §5.2) without recomputing it.
            self._nonces[next_seq + i] = secret + public
            slots.append(public)
        out.dirty = True
        out.bodies.append(TssNonces(key.epoch, next_seq, slots))

    def _assigned(self, state: Any) -> set[int]:
        q: TssQueue | None = state.get(rules.K_TSS_QUEUE)
        seqs: set[int] = set()
        if q is None:
            return seqs
        for a in q.active:
            req: TssRequest | None = state.get(rules.key_req(a.seq))
            if req is None:
                continue
            for s in req.signers:
                if s.address == self.address and not s.shares:
                    seqs.add(s.slot_seq)
        return seqs

    # -- signing
    def _sign_duty(self, state: Any, key: TssKey, out: AgentOutput) -> None:
        q: TssQueue | None = state.get(rules.K_TSS_QUEUE)
        if q is None:
            return
        items: list[TssShareItem] = []
        for a in q.active:
            req: TssRequest | None = state.get(rules.key_req(a.seq))
            if req is None or req.status != "pending" or req.epoch != self.s.epoch:
                continue
            me = next((s for s in req.signers if s.address == self.address), None)
            if me is None or me.shares:
                continue
            secret = self._nonces.pop(me.slot_seq, None)
            if secret is None:
                continue  # spent already (sent before a crash) or lost: the attempt times out
            out.dirty = True
            shares = self._shares_for(req, me, secret, key, out)
            if shares is not None:
                items.append(TssShareItem(req.seq, req.attempt, shares))
            if len(items) >= _items_per_tx(me.count):
                out.bodies.append(TssSign(items))
                items = []
        if items:
            out.bodies.append(TssSign(items))

    def _shares_for(
        self, req: TssRequest, me: Any, secret: bytes, key: TssKey, out: AgentOutput
    ) -> list[bytes] | None:
        n = me.count
        public = secret[64 * n :]
        if b"".join(me.commitments) != public:
            # The attempt names a commitment that is not ours: never sign.
            out.events.append(("tss_sign_refused", f"request {req.seq}: not our commitment"))
            return None
        try:
            ctx = signing.attempt_context(key.group_pk, req.tbs, rules._commitment_list(req))
        except frost.FrostError as exc:  # R is the identity: the ledger restarts it
            out.events.append(("tss_sign_refused", f"request {req.seq}: {exc}"))
            return None
        shares = []
        for j in range(n):
            z = signing.sign_share(
                ctx,
                self.s.first_index + j,
                frost.deserialize_scalar(self.s.shares[j]),
                frost.deserialize_scalar(secret[64 * j : 64 * j + 32]),
                frost.deserialize_scalar(secret[64 * j + 32 : 64 * j + 64]),
            )
            if self.mode == BAD_SHARES:
                z = (z + 1) % frost.ORDER
            shares.append(frost.serialize_scalar(z))
        return shares


def _items_per_tx(count: int) -> int:
    """Share items that fit one transaction: each is about 16 + 34 * count
    bytes encoded, and MAX_TX_PAYLOAD leaves room for the envelope."""
    from dpkid.core.types import MAX_TSS_ITEMS_PER_TX

    return max(1, min(MAX_TSS_ITEMS_PER_TX, MAX_TX_PAYLOAD // (16 + 34 * count)))


def _pok(identifier: int, a_0: int, a_0_commitment: frost.Element, ctx: bytes, rnd: bytes) -> bytes:
    """Komlo-Goldberg's proof of knowledge of a_0: (R, mu), mu = k + a_0 * c."""
    k = frost.nonce_generate(a_0, rnd)
    r = frost.scalar_base_mult(k)
    c = frost.dkg_proof_challenge(ctx, identifier, a_0_commitment, r)
    return r + frost.serialize_scalar((k + a_0 * c) % frost.ORDER)

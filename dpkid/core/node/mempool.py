"""Pending transactions: admission, nonce order, eviction, reaping (SPEC §10)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from enum import Enum
from typing import Final

from dpkid.core.crypto import SignatureCache, address_of, sha256
from dpkid.core.state.codes import Code, TxFailure
from dpkid.core.state.grants import check_delegated
from dpkid.core.state.machine import State, check_tx_fee, check_tx_form
from dpkid.core.types import (
    CertApply,
    CertRenew,
    Delegated,
    DvAttest,
    TssDeal,
    TssJustify,
    TssNonces,
    TssSign,
    Tx,
)

# ------------------------------------------------------------------ mempool


class Refusal(Enum):
    """A transaction refused for the node's sake, not its own: retry later.
    Never a ledger code (SPEC §10); RPC reports it as -32006 (RPC.md §4.2)."""

    MEMPOOL_FULL = "mempool_full"
    OVERLOADED = "overloaded"


Verdict = Code | Refusal

# A sender may queue transactions ahead of its next nonce (they wait for the gap
# to fill), but only this many, this far ahead, and all senders together only a
# share of the pool: otherwise held-back nonces fill every node (issue 10 §4).
LOCAL_SHARE_DEN: Final = 2  # clients' transactions fill at most 1/2 of the pool
MAX_FUTURE_PER_SENDER: Final = 64
MAX_NONCE_GAP: Final = 256
FUTURE_SHARE_DEN: Final = 4  # future txs hold at most 1/4 of the pool
MAX_FUTURE_AGE_MS: Final = 10 * 60 * 1000
MAX_SEEN_COMMITTED: Final = 100_000
MAX_DROPPED: Final = 100_000  # why recent accepted txs left the pool uncommitted (tx_get)


# Execution cost in transfer-equivalents, from `dpkid bench state` (BENCHMARKS.md,
# "Block weight"): an application costs about 8 transfers to check and record
# (domain rules, key parsing, indexes), and each attestation about 2, since the
# one that crosses the threshold issues and logs a certificate.
CERT_APPLY_WEIGHT: Final = 8
ATTESTATION_WEIGHT: Final = 2
# Threshold signing (SPEC §16): checking one signature share costs about
# 0.75 ms here (`dpkid bench tss`: ledger_certs_per_s with two shares each),
# some eight transfers; a nonce slot is two point decodes per share.
TSS_SHARE_WEIGHT: Final = 8
TSS_SLOTS_PER_WEIGHT: Final = 8
TSS_DEAL_WEIGHT: Final = 64


def tx_weight(tx: Tx) -> int:
    """What a transaction costs a block's budget (a proposer's rule, not a
    validity rule: it keeps a block's execution short under a burst of
    applications, so rounds end in time and the committed rate holds)."""
    body = tx.body.body if isinstance(tx.body, Delegated) else tx.body
    if isinstance(body, CertApply | CertRenew):
        return CERT_APPLY_WEIGHT
    if isinstance(body, DvAttest):
        return 1 + ATTESTATION_WEIGHT * len(body.items)
    if isinstance(body, TssSign):
        return 1 + TSS_SHARE_WEIGHT * sum(len(i.shares) for i in body.items)
    if isinstance(body, TssNonces):
        return 1 + len(body.slots) // TSS_SLOTS_PER_WEIGHT
    if isinstance(body, TssDeal | TssJustify):
        return TSS_DEAL_WEIGHT
    return 1


def _interleave(
    runs: list[list[tuple[bytes, int]]],
    out: list[bytes],
    used: list[int],
    max_txs: int,
    max_bytes: int,
    budget: int,
) -> bool:
    """Take one tx per run in turn into ``out`` until a limit is reached;
    True if every run was taken whole."""
    i = 0
    while runs:
        run = runs[i % len(runs)]
        raw, w = run[0]
        full = len(out) >= max_txs or used[0] + len(raw) > max_bytes
        if full or (out and used[1] + w > budget):
            return False
        run.pop(0)
        out.append(raw)
        used[0] += len(raw)
        used[1] += w
        if not run:
            runs.pop(i % len(runs))
        else:
            i += 1
    return True


class Mempool:
    """Bounded pool ordered by account nonce; each signature is checked once.

    A tx is admitted after stateless checks (decode, chain id, signature via
    the cache) and stateful ones against the last committed state (nonce not
    used yet, fee at least the minimum, balance covers the fee).

    A sender's txs are *executable* while their nonces run on without a gap
    from the account's next nonce, and *future* after the first gap. Future
    txs are bounded per sender and in total, evicted first (furthest ahead,
    then oldest) when an executable tx needs room, and dropped when older than
    MAX_FUTURE_AGE_MS; they never keep an executable tx out.
    """

    def __init__(self, chain_id: str, sig_cache: SignatureCache, max_txs: int = 50_000) -> None:
        self.chain_id = chain_id
        self.sig_cache = sig_cache
        self.max_txs = max_txs
        self.max_future = max(1, max_txs // FUTURE_SHARE_DEN)
        self.by_hash: dict[bytes, tuple[bytes, Tx, bytes]] = {}  # hash -> (raw, tx, sender)
        self.by_sender: dict[bytes, dict[int, bytes]] = {}  # sender -> nonce -> hash
        self.added_ms: dict[bytes, int] = {}  # hash -> admission time
        self.seen_committed: OrderedDict[bytes, None] = OrderedDict()
        self.evicted = 0
        # Future txs per sender, kept current by _refresh, and their sum.
        self._fut: dict[bytes, int] = {}
        self.future_total = 0
        self.dropped: OrderedDict[bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self.by_hash)

    def full(self, local: bool = False) -> bool:
        """No room, and nothing that an executable transaction could evict. A
        client's transaction (``local``) finds the pool full at half its size:
        the other half is for what peers gossip, which every node must hold too,
        so that no node is left with gaps in a sender's nonces that keep it from
        proposing what the others accepted (issue 12)."""
        if local and len(self.by_hash) >= self.max_txs // LOCAL_SHARE_DEN:
            return True
        return len(self.by_hash) >= self.max_txs and self.future_total == 0

    # ------------------------------------------------------------------ classification
    def _run_end(self, sender: bytes, next_nonce: int) -> int:
        """The first nonce after the executable run of ``sender``."""
        q = self.by_sender.get(sender, {})
        n = next_nonce
        while n in q:
            n += 1
        return n

    def _refresh(self, sender: bytes, next_nonce: int) -> None:
        end = self._run_end(sender, next_nonce)
        n = sum(1 for x in self.by_sender.get(sender, {}) if x > end)
        self.future_total += n - self._fut.get(sender, 0)
        if n:
            self._fut[sender] = n
        else:
            self._fut.pop(sender, None)

    def _evict_one_future(self, state: State) -> bool:
        """Drop the future tx furthest ahead of its sender's run (oldest on ties)."""
        best: tuple[int, int, bytes] | None = None  # (-distance, added_ms, hash)
        for sender in sorted(self._fut):
            acct = state.account(sender)
            end = self._run_end(sender, acct.nonce if acct else 0)
            q = self.by_sender[sender]
            top = max(q)
            if top > end:
                h = q[top]
                cand = (-(top - end), self.added_ms.get(h, 0), h)
                if best is None or cand < best:
                    best = cand
        if best is None:
            return False
        sender = self.by_hash[best[2]][2]
        self._drop(best[2], "evicted: the pool needed room for an executable transaction")
        acct = state.account(sender)
        self._refresh(sender, acct.nonce if acct else 0)
        self.evicted += 1
        return True

    # ------------------------------------------------------------------ admission
    def add(self, raw: bytes, state: State, now_ms: int = 0) -> tuple[Verdict, str, bytes]:
        verdict, why, h, _added = self.admit(raw, state, now_ms)
        return verdict, why, h

    def admit(
        self, raw: bytes, state: State, now_ms: int = 0, local: bool = False
    ) -> tuple[Verdict, str, bytes, bool]:
        """(verdict, why, tx hash, whether this call added it): a tx already in
        the pool is OK but not new, and must not be gossiped again."""
        h = sha256(raw)
        if h in self.by_hash:
            return Code.OK, "already in mempool", h, False
        if h in self.seen_committed:
            return Code.BAD_NONCE, "transaction already committed", h, False
        if self.full(local):
            # Before the signature check: under overload, refusing must cost
            # next to nothing, or intake eats the CPU that commits blocks.
            return Refusal.MEMPOOL_FULL, "mempool is full, try again later", h, False
        # The ledger's own pre-checks (SPEC §4.3), so the pool admits nothing the
        # ledger would refuse before charging a fee.
        tx = check_tx_form(raw, h, self.chain_id, self.sig_cache.check)
        if isinstance(tx, TxFailure):
            return tx.code, tx.message, h, False
        sender = address_of(tx.pubkey)
        acct = state.account(sender)
        nonce = acct.nonce if acct else 0
        balance = acct.balance if acct else 0
        if tx.nonce < nonce:
            return Code.BAD_NONCE, f"nonce {tx.nonce} already used (next is {nonce})", h, False
        queue = self.by_sender.get(sender, {})
        if tx.nonce in queue:
            return Code.BAD_NONCE, f"nonce {tx.nonce} already pending", h, False
        if tx.nonce > nonce + MAX_NONCE_GAP:
            return Code.BAD_NONCE, f"nonce {tx.nonce} too far ahead of {nonce}", h, False
        if isinstance(tx.body, Delegated):
            grant = check_delegated(state.get, tx, state.time_ms)
            if isinstance(grant, TxFailure):
                return grant.code, grant.message, h, False
            payer = state.account(grant.owner)
            balance = payer.balance if payer else 0
        unpaid = check_tx_fee(tx, state.policy, balance)
        if unpaid is not None:
            return unpaid.code, unpaid.message, h, False
        end = self._run_end(sender, nonce)
        executable = tx.nonce == end
        if not executable:
            mine = sum(1 for n in queue if n > end)
            if mine >= MAX_FUTURE_PER_SENDER:
                return (
                    Refusal.MEMPOOL_FULL,
                    f"{mine} transactions of this sender already wait for nonce {end}",
                    h,
                    False,
                )
            if self.future_total >= self.max_future:
                return (
                    Refusal.MEMPOOL_FULL,
                    "too many transactions wait for earlier nonces; send nonce "
                    f"{end} first, or try again later",
                    h,
                    False,
                )
        if len(self.by_hash) >= self.max_txs and not (executable and self._evict_one_future(state)):
            return Refusal.MEMPOOL_FULL, "mempool is full, try again later", h, False
        self.by_hash[h] = (raw, tx, sender)
        self.by_sender.setdefault(sender, {})[tx.nonce] = h
        self.added_ms[h] = now_ms
        self._refresh(sender, nonce)
        return Code.OK, "accepted", h, True

    def reap(
        self, state: State, max_txs: int, max_bytes: int, max_weight: int | None = None
    ) -> list[bytes]:
        """Txs for a block: per sender a run of consecutive nonces from the
        account's next nonce, within ``max_weight`` (default ``max_txs``) units
        of execution cost (tx_weight).

        Attestations go first: they finish applications already on chain, so a
        burst of new applications cannot starve the issuing of earlier ones.
        Then the rest, senders interleaved in address order."""
        budget = max_txs if max_weight is None else max_weight
        duties: list[list[tuple[bytes, int]]] = []
        rest: list[list[tuple[bytes, int]]] = []
        for sender in sorted(self.by_sender):
            q = self.by_sender[sender]
            acct = state.account(sender)
            n = acct.nonce if acct else 0
            run: list[tuple[bytes, int]] = []
            lead = 0  # how many of the run are attestations, from its start
            while n in q and len(run) < max_txs:
                raw, tx, _ = self.by_hash[q[n]]
                if lead == len(run) and isinstance(tx.body, DvAttest):
                    lead += 1
                run.append((raw, tx_weight(tx)))
                n += 1
            if lead:
                duties.append(run[:lead])
            if run[lead:]:
                rest.append(run[lead:])
        out: list[bytes] = []
        used = [0, 0]  # bytes, weight
        if _interleave(duties, out, used, max_txs, max_bytes, budget):
            # Every sender's attestations fit, so each rest run follows its own
            # attestations without a nonce gap.
            _interleave(rest, out, used, max_txs, max_bytes, budget)
        return out

    def update(self, committed: Sequence[bytes], state: State, now_ms: int = 0) -> None:
        """After a block: drop committed txs, any whose nonce is now used, and
        future txs that waited longer than MAX_FUTURE_AGE_MS."""
        for raw in committed:
            h = sha256(raw)
            self._drop(h)
            self.seen_committed[h] = None
        while len(self.seen_committed) > MAX_SEEN_COMMITTED:
            self.seen_committed.popitem(last=False)
        for sender in sorted(self.by_sender):
            acct = state.account(sender)
            n = acct.nonce if acct else 0
            end = self._run_end(sender, n)
            for nonce in sorted(self.by_sender.get(sender, {})):
                h = self.by_sender[sender][nonce]
                stale = nonce > end and now_ms - self.added_ms.get(h, now_ms) > MAX_FUTURE_AGE_MS
                if nonce < n:
                    self._drop(h, f"dropped: nonce {nonce} was used by another transaction")
                elif stale:
                    self._drop(
                        h, f"dropped: waited over {MAX_FUTURE_AGE_MS // 60_000} min for nonce {end}"
                    )
            self._refresh(sender, n)
        for sender in [x for x in sorted(self._fut) if x not in self.by_sender]:
            self.future_total -= self._fut.pop(sender)

    def dropped_why(self, h: bytes) -> str | None:
        """Why an accepted transaction left the pool without being committed, if
        it did recently (issue 12: accepted work is never silently lost)."""
        return self.dropped.get(h)

    def _drop(self, h: bytes, why: str = "") -> None:
        if why and h in self.by_hash:
            self.dropped[h] = why
            while len(self.dropped) > MAX_DROPPED:
                self.dropped.popitem(last=False)
        item = self.by_hash.pop(h, None)
        self.added_ms.pop(h, None)
        if item is None:
            return
        _, tx, sender = item
        q = self.by_sender.get(sender)
        if q is not None:
            q.pop(tx.nonce, None)
            if not q:
                del self.by_sender[sender]

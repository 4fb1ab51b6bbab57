"""How voting power maps to key shares, and the signing threshold (SPEC §16.2).

FROST shares are counted, not weighed, so a validator with more voting power
holds more shares (consecutive identifiers).  Two properties must hold for the
mapping, and this module checks them exactly instead of trusting rounding:

* safety: no coalition with less than a third of the power (the consensus
  fault bound) holds ``threshold`` shares, so it cannot sign;
* liveness: the validators outside any such coalition (the honest ones) hold
  at least ``threshold`` shares, so they can sign without the others.

Let ``M`` be the most shares any coalition with ``3 * power < total_power``
can hold (a 0/1 knapsack over share counts).  Then ``threshold = M + 1`` gives
safety, and liveness holds exactly when ``total_shares >= 2 * M + 1``.

Pure integer arithmetic; the inputs are sorted by address, so every node maps
alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd
from typing import Final

# Shares in one committee.  It bounds the DKG's work (one Feldman evaluation
# per share) and the size of a deal, which must fit one transaction.
MAX_TSS_SHARES: Final = 64
# Bytes a deal may take inside a transaction (MAX_TX_BYTES is 16 KiB; the rest
# is the envelope).
MAX_DEAL_BYTES: Final = 15_000
SEALED_BOX_OVERHEAD: Final = 48  # X25519 ephemeral key + Poly1305 tag


@dataclass(frozen=True)
class Member:
    address: bytes
    pubkey: bytes
    first_index: int  # FROST identifiers first_index .. first_index + count - 1
    count: int

    @property
    def indices(self) -> range:
        return range(self.first_index, self.first_index + self.count)


@dataclass(frozen=True)
class Committee:
    members: tuple[Member, ...]  # sorted by address, count >= 1
    threshold: int
    total_shares: int
    max_coalition_shares: int  # M above: the most a sub-third coalition holds


def max_minority_shares(items: Sequence[tuple[int, int]], total_power: int) -> int:
    """The most shares held by any set of (shares, power) items whose power is
    below a third of ``total_power`` (strictly: ``3 * power < total_power``)."""
    total_shares = sum(s for s, _ in items)
    inf = total_power + 1
    # least[s]: the least power of a set holding exactly s shares.
    least = [0] + [inf] * total_shares
    for shares, power in items:
        if shares == 0:
            continue
        for s in range(total_shares, shares - 1, -1):
            cand = least[s - shares] + power
            if cand < least[s]:
                least[s] = cand
    best = 0
    for s in range(total_shares + 1):
        if 3 * least[s] < total_power:
            best = s
    return best


def deal_bytes(polys: int, threshold: int, total_shares: int, members: int) -> int:
    """Upper bound on the bytes of one deal (commitments, proofs, sealed shares)."""
    return (
        polys * threshold * 32
        + polys * 64
        + members * SEALED_BOX_OVERHEAD
        + polys * (total_shares * 32)
        + 16 * members
        + 64
    )


def _committee(
    vals: Sequence[tuple[bytes, bytes, int]], counts: Sequence[int], total_power: int
) -> Committee | None:
    items = list(zip(counts, (p for _, _, p in vals), strict=True))
    total = sum(counts)
    if total == 0 or total > MAX_TSS_SHARES:
        return None
    m = max_minority_shares(items, total_power)
    if total < 2 * m + 1:
        return None
    threshold = m + 1
    members: list[Member] = []
    nxt = 1
    for (addr, pk, _), c in zip(vals, counts, strict=True):
        if c > 0:
            members.append(Member(addr, pk, nxt, c))
            nxt += c
    biggest = max(counts)
    if deal_bytes(biggest, threshold, total, len(members)) > MAX_DEAL_BYTES:
        return None
    return Committee(tuple(members), threshold, total, m)


def committee_for(vals: Sequence[tuple[bytes, bytes, int]]) -> Committee | None:
    """The share mapping for a validator set given as (address, pubkey, power)
    sorted by address, or None when no mapping within the bounds keeps both
    properties (the chain then runs without a threshold key for that set).

    First choice: shares exactly proportional to power (power / gcd).  When
    that needs more than MAX_TSS_SHARES, scale to ``floor(power * S / total)``
    for the smallest S that passes the exact check above.
    """
    vals = [v for v in vals if v[2] > 0]
    if not vals:
        return None
    total_power = sum(p for _, _, p in vals)
    g = 0
    for _, _, p in vals:
        g = gcd(g, p)
    exact = [p // g for _, _, p in vals]
    c = _committee(vals, exact, total_power)
    if c is not None:
        return c
    for scale in range(1, MAX_TSS_SHARES + 1):
        counts = [p * scale // total_power for _, _, p in vals]
        c = _committee(vals, counts, total_power)
        if c is not None:
            return c
    return None

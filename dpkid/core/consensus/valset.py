"""Validator sets for consensus: quorums in integer power, and proposer
selection by weighted round robin as in CometBFT (protocol/CONSENSUS.md §3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

PRIORITY_WINDOW_FACTOR: Final = 2
MAX_PRIORITY: Final = 2**62
MIN_PRIORITY: Final = -(2**62)


def _trunc_div(a: int, b: int) -> int:
    """Integer division rounding toward zero (as Go's int64 division does)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _clip(x: int) -> int:
    return max(MIN_PRIORITY, min(MAX_PRIORITY, x))


@dataclass(frozen=True)
class ValidatorInfo:
    address: bytes
    pubkey: bytes
    power: int


class ValidatorSet:
    """An immutable validator set for one height. Members sorted by address."""

    __slots__ = ("_index", "members", "total_power")

    def __init__(self, members: Sequence[ValidatorInfo]) -> None:
        ms = sorted(members, key=lambda v: v.address)
        if not ms:
            raise ValueError("a validator set may not be empty")
        if any(v.power <= 0 for v in ms):
            raise ValueError("validator power must be positive")
        if len({v.address for v in ms}) != len(ms):
            raise ValueError("duplicate validator")
        self.members: tuple[ValidatorInfo, ...] = tuple(ms)
        self.total_power: int = sum(v.power for v in ms)
        self._index = {v.address: v for v in ms}

    def __len__(self) -> int:
        return len(self.members)

    def get(self, address: bytes) -> ValidatorInfo | None:
        return self._index.get(address)

    def power_of(self, address: bytes) -> int:
        v = self._index.get(address)
        return v.power if v else 0

    def has_quorum(self, power: int) -> bool:
        """More than 2/3 of the total: 3 * power > 2 * total (never a float)."""
        return 3 * power > 2 * self.total_power

    def has_one_third(self, power: int) -> bool:
        """At least f+1: more than 1/3 of the total, so one honest validator is included."""
        return 3 * power > self.total_power


# ------------------------------------------------------------------ proposer priorities

Priorities = tuple[tuple[bytes, int], ...]  # (address, priority), sorted by address


def _rescale_and_center(prios: dict[bytes, int], total: int) -> None:
    if not prios:
        return
    diff_max = PRIORITY_WINDOW_FACTOR * total
    hi, lo = max(prios.values()), min(prios.values())
    diff = hi - lo
    if diff > diff_max:
        ratio = -(-diff // diff_max)  # ceil
        for a in sorted(prios):
            prios[a] = _trunc_div(prios[a], ratio)
    avg = sum(prios.values()) // len(prios)  # floor, as big.Int.Div does for n > 0
    for a in sorted(prios):
        prios[a] = _clip(prios[a] - avg)


def _increment(prios: dict[bytes, int], vals: ValidatorSet) -> bytes:
    for v in vals.members:
        prios[v.address] = _clip(prios[v.address] + v.power)
    # Highest priority wins; ties go to the smaller address.
    best = min(vals.members, key=lambda v: (-prios[v.address], v.address))
    prios[best.address] = _clip(prios[best.address] - vals.total_power)
    return best.address


def initial_priorities(vals: ValidatorSet) -> Priorities:
    return tuple((v.address, 0) for v in vals.members)


def carry_priorities(prev: Priorities, vals: ValidatorSet) -> Priorities:
    """Priorities for a new height's set: members keep theirs, newcomers start
    at -1.125 * total so joining cannot make a validator propose at once."""
    old = dict(prev)
    start = -(vals.total_power + (vals.total_power >> 3))
    prios = {v.address: old.get(v.address, start) for v in vals.members}
    _rescale_and_center(prios, vals.total_power)
    return tuple(sorted(prios.items()))


def next_height_priorities(
    prios_h: Priorities, set_h: ValidatorSet, set_next: ValidatorSet
) -> Priorities:
    """One increment for the height just decided, then carried into the next set."""
    p = dict(prios_h)
    _rescale_and_center(p, set_h.total_power)
    _increment(p, set_h)
    return carry_priorities(tuple(sorted(p.items())), set_next)


def proposer_for(prios_h: Priorities, vals: ValidatorSet, round_: int) -> bytes:
    """Proposer of (height, round): the validator picked at the (round+1)-th increment."""
    p = dict(prios_h)
    _rescale_and_center(p, vals.total_power)
    chosen = b""
    for _ in range(round_ + 1):
        chosen = _increment(p, vals)
    return chosen

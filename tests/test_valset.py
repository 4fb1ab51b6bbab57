"""Validator sets: quorum arithmetic in integer power and CometBFT-style weighted
round-robin proposer selection (dpkid/core/consensus/valset.py, protocol/CONSENSUS.md §3)."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpkid.core.consensus.valset import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    Priorities,
    ValidatorInfo,
    ValidatorSet,
    _clip,
    _rescale_and_center,
    _trunc_div,
    carry_priorities,
    initial_priorities,
    next_height_priorities,
    proposer_for,
)
from dpkid.core.crypto import SigningKey

KEYS = [SigningKey.from_label(f"valset-{i}") for i in range(12)]


def addr(i: int) -> bytes:
    """Synthetic addresses whose order is their index (for readable expectations)."""
    return bytes([i + 1]) * 20


def make_set(powers: Sequence[int], first: int = 0) -> ValidatorSet:
    return ValidatorSet(
        [ValidatorInfo(addr(first + i), bytes(32), p) for i, p in enumerate(powers)]
    )


def fresh(vals: ValidatorSet) -> Priorities:
    """Priorities of a genesis set, as NodeCore makes them."""
    return carry_priorities(initial_priorities(vals), vals)


def index_of(a: bytes) -> int:
    return a[0] - 1


def proposers_by_height(vals: ValidatorSet, heights: int) -> list[int]:
    """Round-0 proposers of consecutive heights of a static set."""
    prios = fresh(vals)
    out = []
    for _ in range(heights):
        out.append(index_of(proposer_for(prios, vals, 0)))
        prios = next_height_priorities(prios, vals, vals)
    return out


# ------------------------------------------------------------------ proposer selection


def test_proposals_exactly_proportional_to_power_per_cycle() -> None:
    """Powers 1, 2, 3, 4 (total 10): every 10 consecutive heights, validator i proposes
    exactly power_i times; over 1000 heights 100, 200, 300, 400."""
    powers = [1, 2, 3, 4]
    seq = proposers_by_height(make_set(powers), 1000)
    assert seq[:10] == [3, 2, 1, 3, 0, 2, 3, 1, 2, 3]
    assert Counter(seq) == {0: 100, 1: 200, 2: 300, 3: 400}
    for start in range(len(seq) - 10 + 1):
        window = Counter(seq[start : start + 10])
        assert [window[i] for i in range(4)] == powers, start
    assert seq[10:20] == seq[:10]  # periodic: the priorities are back to 0 after a cycle


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=8))
def test_property_counts_over_one_cycle_equal_powers(powers: list[int]) -> None:
    """From fresh priorities, total-power heights give each validator exactly its power."""
    vals = make_set(powers)
    seq = proposers_by_height(vals, vals.total_power)
    c = Counter(seq)
    assert [c[i] for i in range(len(powers))] == powers


def test_rounds_use_the_same_round_robin() -> None:
    """proposer_for(prios, vals, r) is the (r+1)-th increment: in a static set it is the
    round-0 proposer of height h+r, so rounds also cycle in proportion to power."""
    vals = make_set([1, 2, 3, 4])
    prios = fresh(vals)
    by_round = [index_of(proposer_for(prios, vals, r)) for r in range(20)]
    assert by_round == proposers_by_height(vals, 20)
    assert Counter(by_round[:10]) == {0: 1, 1: 2, 2: 3, 3: 4}
    assert by_round[10:] == by_round[:10]


def test_equal_powers_round_robin_differs_across_rounds_and_cycles() -> None:
    """Equal powers: ties go to the smaller address, consecutive rounds have different
    proposers, every validator proposes once in n rounds, then the cycle repeats."""
    vals = make_set([7, 7, 7, 7])
    prios = fresh(vals)
    by_round = [index_of(proposer_for(prios, vals, r)) for r in range(9)]
    assert by_round == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert all(a != b for a, b in itertools.pairwise(by_round))
    # The next height continues the cycle where round 0 of this one left it.
    nxt = next_height_priorities(prios, vals, vals)
    assert [index_of(proposer_for(nxt, vals, r)) for r in range(4)] == [1, 2, 3, 0]


def test_tie_break_prefers_smaller_address() -> None:
    vals = make_set([5, 5])
    assert proposer_for(((addr(0), 3), (addr(1), 3)), vals, 0) == addr(0)
    assert proposer_for(((addr(0), 3), (addr(1), 4)), vals, 0) == addr(1)


def test_deterministic_regardless_of_input_order() -> None:
    """The set sorts its members by address; priorities and proposers do not depend on
    the order validators were given in."""
    infos = [
        ValidatorInfo(k.address, k.public_key, p)
        for k, p in zip(KEYS[:8], range(1, 9), strict=True)
    ]
    base = ValidatorSet(infos)
    rng = random.Random(42)
    for _ in range(5):
        shuffled = infos[:]
        rng.shuffle(shuffled)
        vs = ValidatorSet(shuffled)
        assert vs.members == base.members
        assert [m.address for m in vs.members] == sorted(k.address for k in KEYS[:8])
        p1, p2 = fresh(base), fresh(vs)
        for _h in range(40):
            assert p1 == p2
            assert [proposer_for(p1, base, r) for r in range(3)] == [
                proposer_for(p2, vs, r) for r in range(3)
            ]
            p1 = next_height_priorities(p1, base, base)
            p2 = next_height_priorities(p2, vs, vs)


def test_priorities_are_carried_sorted_by_address() -> None:
    vals = make_set([3, 1, 2])
    p = next_height_priorities(fresh(vals), vals, vals)
    assert [a for a, _ in p] == [addr(0), addr(1), addr(2)]
    assert p == ((addr(0), -3), (addr(1), 1), (addr(2), 2))  # 0 proposed: 3 - 6; 0+1; 0+2


# ------------------------------------------------------------------ validator changes


def test_newcomer_starts_at_minus_1_125_total_power() -> None:
    """A validator joining starts at -(T + T >> 3) of the NEW set's total T before
    centering; members keep their priorities."""
    old = make_set([10, 10, 10, 10])
    new = make_set([10, 10, 10, 10, 10])  # addr(4) joins: T = 50, start = -56
    carried = dict(carry_priorities(fresh(old), new))
    # -56 and four zeros: avg = floor(-56 / 5) = -12, so every priority moves up by 12.
    assert carried == {addr(0): 12, addr(1): 12, addr(2): 12, addr(3): 12, addr(4): -44}


def test_newcomer_with_large_power_does_not_propose_immediately() -> None:
    old = make_set([10, 10, 10, 10])
    new = make_set([10, 10, 10, 10, 100])  # the newcomer has 2/3 of the power
    p = next_height_priorities(fresh(old), old, new)
    first = [index_of(proposer_for(p, new, 0))]
    p = next_height_priorities(p, new, new)
    first.append(index_of(proposer_for(p, new, 0)))
    assert first[0] != 4  # not at the first height of the new set
    assert first[1] == 4  # but right after
    # Rejoining does not keep a removed validator's old priority.
    smaller = make_set([10, 10, 10])
    back = carry_priorities(carry_priorities(p, smaller), new)
    assert dict(back)[addr(4)] < 0 and dict(back)[addr(3)] < 0


def test_removed_validators_leave_the_priorities() -> None:
    old = make_set([1, 2, 3, 4])
    new = make_set([2, 3], first=1)
    p = next_height_priorities(fresh(old), old, new)
    assert [a for a, _ in p] == [addr(1), addr(2)]
    assert proposer_for(p, new, 0) in (addr(1), addr(2))


def test_rescale_divides_rounding_toward_zero_then_centers() -> None:
    """diff > 2T: every priority is divided by ceil(diff / 2T), truncating toward
    zero (Go's int64 division), then the floored average is subtracted."""
    prios = {addr(0): 101, addr(1): -100, addr(2): 0}
    _rescale_and_center(prios, 20)  # diff 201 > 40: ratio ceil(201 / 40) = 6
    # 101 / 6 -> 16, -100 / 6 -> -16, 0 -> 0; avg 0
    assert prios == {addr(0): 16, addr(1): -16, addr(2): 0}
    prios = {addr(0): 7, addr(1): 0}
    _rescale_and_center(prios, 10)  # diff 7 <= 20: no rescale; avg floor(7 / 2) = 3
    assert prios == {addr(0): 4, addr(1): -3}
    prios = {addr(0): -7, addr(1): 0}
    _rescale_and_center(prios, 10)  # avg floor(-7 / 2) = -4 (floor, not truncation)
    assert prios == {addr(0): -3, addr(1): 4}


@pytest.mark.parametrize(
    ("a", "b", "q"),
    [(7, 2, 3), (-7, 2, -3), (7, -2, -3), (-7, -2, 3), (6, 3, 2), (-6, 3, -2), (0, 5, 0)],
)
def test_trunc_div_is_go_division(a: int, b: int, q: int) -> None:
    assert _trunc_div(a, b) == q


def test_priorities_are_clipped() -> None:
    assert _clip(MAX_PRIORITY + 5) == MAX_PRIORITY
    assert _clip(MIN_PRIORITY - 5) == MIN_PRIORITY
    assert _clip(12) == 12


# ------------------------------------------------------------------ property: bounded priorities


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[int], list[list[tuple[int, int]]]]:
    """An initial power list over addresses 0..9 and, per height, a list of
    (address index, new power or 0 to remove) changes."""
    powers = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=6))
    changes = draw(
        st.lists(
            st.lists(st.tuples(st.integers(0, 9), st.integers(0, 10**6)), max_size=3),
            min_size=1,
            max_size=25,
        )
    )
    return powers, changes


@settings(max_examples=150, deadline=None)
@given(histories())
def test_property_priorities_stay_within_bounds(
    h: tuple[list[int], list[list[tuple[int, int]]]],
) -> None:
    """After every carry (rescale + center) each priority p satisfies |p| <= 2T, the
    spread max - min <= 2T, and the priorities sum to [0, n) (floored average
    subtracted), for random power sets and validator changes; every round's proposer
    is a member."""
    powers, changes = h
    current = {i: p for i, p in enumerate(powers)}
    vals = make_set_from(current)
    prios = fresh(vals)
    for step in changes:
        nxt_map = dict(current)
        for i, p in step:
            if p == 0:
                nxt_map.pop(i, None)
            else:
                nxt_map[i] = p
        if not nxt_map:
            nxt_map = dict(current)
        nxt = make_set_from(nxt_map)
        prios = next_height_priorities(prios, vals, nxt)
        check_bounds(prios, nxt)
        for r in range(3):
            assert nxt.get(proposer_for(prios, nxt, r)) is not None
        current, vals = nxt_map, nxt


def make_set_from(powers: dict[int, int]) -> ValidatorSet:
    return ValidatorSet([ValidatorInfo(addr(i), bytes(32), p) for i, p in powers.items()])


def check_bounds(prios: Priorities, vals: ValidatorSet) -> None:
    t = vals.total_power
    values = [p for _, p in prios]
    assert [a for a, _ in prios] == [m.address for m in vals.members]
    assert max(values) - min(values) <= 2 * t
    assert all(abs(p) <= 2 * t for p in values)
    assert 0 <= sum(values) < len(values)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.integers(0, 50), st.integers(-(10**15), 10**15), min_size=1),
    st.integers(1, 10**9),
)
def test_property_rescale_and_center_bounds_any_priorities(raw: dict[int, int], total: int) -> None:
    prios = {addr(i): p for i, p in raw.items()}
    _rescale_and_center(prios, total)
    values = list(prios.values())
    assert max(values) - min(values) <= 2 * total
    assert all(abs(p) <= 2 * total for p in values)


# ------------------------------------------------------------------ quorum arithmetic


@pytest.mark.parametrize(
    ("total", "power", "quorum", "one_third"),
    [
        (1, 0, False, False),
        (1, 1, True, True),
        (3, 1, False, False),  # exactly 1/3 is not more than 1/3
        (3, 2, False, True),  # exactly 2/3 is not more than 2/3
        (3, 3, True, True),
        (4, 1, False, False),  # f = 1 of 3f + 1
        (4, 2, False, True),  # f + 1
        (4, 3, True, True),  # 2f + 1
        (7, 2, False, False),
        (7, 3, False, True),
        (7, 4, False, True),
        (7, 5, True, True),
        (40, 26, False, True),
        (40, 27, True, True),
        (100, 33, False, False),
        (100, 34, False, True),
        (100, 66, False, True),
        (100, 67, True, True),
        (3 * 10**18, 10**18, False, False),
        (3 * 10**18, 10**18 + 1, False, True),
        (3 * 10**18, 2 * 10**18, False, True),
        (3 * 10**18, 2 * 10**18 + 1, True, True),
    ],
)
def test_quorum_integer_edges(total: int, power: int, quorum: bool, one_third: bool) -> None:
    """has_quorum is 3p > 2T ("2f+1"), has_one_third is 3p > T ("f+1"), in integers."""
    vals = ValidatorSet([ValidatorInfo(addr(0), bytes(32), total)])
    assert vals.total_power == total
    assert vals.has_quorum(power) is quorum
    assert vals.has_one_third(power) is one_third


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2**70), st.data())
def test_property_quorum_matches_exact_fractions(total: int, data: st.DataObject) -> None:
    power = data.draw(st.integers(0, total))
    vals = ValidatorSet([ValidatorInfo(addr(0), bytes(32), total)])
    assert vals.has_quorum(power) == (Fraction(power) > Fraction(2 * total, 3))
    assert vals.has_one_third(power) == (Fraction(power) > Fraction(total, 3))
    # Two quorums always share more than a third: some honest validator is in both.
    if vals.has_quorum(power):
        assert vals.has_one_third(2 * power - total)


def test_validator_set_rejects_bad_input_and_looks_up_power() -> None:
    with pytest.raises(ValueError, match="empty"):
        ValidatorSet([])
    with pytest.raises(ValueError, match="positive"):
        make_set([1, 0])
    with pytest.raises(ValueError, match="duplicate"):
        ValidatorSet([ValidatorInfo(addr(0), bytes(32), 1), ValidatorInfo(addr(0), bytes(32), 2)])
    vals = make_set([5, 6])
    assert len(vals) == 2 and vals.total_power == 11
    assert vals.power_of(addr(1)) == 6 and vals.power_of(addr(9)) == 0
    assert vals.get(addr(9)) is None

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dpkid.core import merkle as ctlog
from dpkid.core.merkle import (
    EMPTY_ROOT,
    MerkleLog,
    hash_leaf,
    verify_consistency,
    verify_inclusion,
)

# Reference inputs and answers from the certificate-transparency test suite (RFC 6962).
LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
H_96A2 = "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
H_5F08 = "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"
H_6B47 = "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
H_0EBC = "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"
H_CA85 = "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"
H_D37E = "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"
H_BC1A = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"
CONSISTENCY = {
    (1, 8): [H_96A2, H_5F08, H_6B47],
    (6, 8): [H_0EBC, H_CA85, H_D37E],
    (2, 5): [H_5F08, H_BC1A],
    (1, 1): [],
}
INCLUSION_8 = {
    0: [H_96A2, H_5F08, H_6B47],
    5: [H_BC1A, H_CA85, H_D37E],
}


def hexes(items: list[bytes]) -> list[str]:
    return [item.hex() for item in items]


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, straight from the recursive definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:])).digest()


def leaf_data(i: int) -> bytes:
    return b"cert-%d" % i


def build(n: int) -> MerkleLog:
    log = MerkleLog()
    for i in range(n):
        assert log.append(leaf_data(i)) == i
    return log


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x80]) + data[index + 1 :]


@pytest.fixture(scope="module")
def big_log() -> MerkleLog:
    return build(300)


# --- known answers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vector_log() -> MerkleLog:
    log = MerkleLog()
    for leaf in LEAVES:
        log.append(leaf)
    return log


def test_known_roots(vector_log: MerkleLog) -> None:
    assert EMPTY_ROOT.hex() == ROOTS[0]
    assert MerkleLog().root() == EMPTY_ROOT
    for n, expected in enumerate(ROOTS):
        assert vector_log.root(n).hex() == expected
        assert reference_mth(LEAVES[:n]).hex() == expected
    assert vector_log.root().hex() == ROOTS[8]


def test_known_consistency_proofs(vector_log: MerkleLog) -> None:
    for (old, new), expected in CONSISTENCY.items():
        proof = vector_log.consistency_proof(old, new)
        assert hexes(proof) == expected
        assert verify_consistency(
            old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), proof
        )


def test_known_inclusion_proofs(vector_log: MerkleLog) -> None:
    root = bytes.fromhex(ROOTS[8])
    for index, expected in INCLUSION_8.items():
        proof = vector_log.inclusion_proof(index, 8)
        assert hexes(proof) == expected
        assert vector_log.leaf_hash(index) == hash_leaf(LEAVES[index])
        assert verify_inclusion(hash_leaf(LEAVES[index]), index, 8, proof, root)


def test_single_leaf_tree(vector_log: MerkleLog) -> None:
    assert vector_log.inclusion_proof(0, 1) == []
    assert verify_inclusion(hash_leaf(b""), 0, 1, [], bytes.fromhex(ROOTS[1]))


# --- consistency edge cases ----------------------------------------------------------------


def test_consistency_edge_cases(big_log: MerkleLog) -> None:
    r0, r8, r9 = big_log.root(0), big_log.root(8), big_log.root(9)
    # Equal sizes: the proof is empty and the roots must match.
    assert big_log.consistency_proof(9, 9) == []
    assert verify_consistency(9, 9, r9, r9, [])
    assert not verify_consistency(9, 9, r9, r8, [])
    assert not verify_consistency(9, 9, r9, r9, [r9])
    # From the empty tree: only the empty proof from the genuine empty head.
    assert big_log.consistency_proof(0, 9) == []
    assert verify_consistency(0, 9, r0, r9, [])
    assert not verify_consistency(0, 9, r8, r9, [])
    assert not verify_consistency(0, 9, r0, r9, [r9])
    assert verify_consistency(0, 0, r0, r0, [])
    # Power-of-two old size: the old root is implied, not sent.
    proof = big_log.consistency_proof(8, 9)
    assert proof == [big_log.leaf_hash(8)]
    assert verify_consistency(8, 9, r8, r9, proof)
    # A non-trivial proof must not be empty, and sizes must not go backwards.
    assert not verify_consistency(5, 9, big_log.root(5), r9, [])
    assert not verify_consistency(9, 8, r9, r8, proof)


def test_prover_rejects_bad_arguments(big_log: MerkleLog) -> None:
    with pytest.raises(ValueError):
        big_log.inclusion_proof(300, 300)
    with pytest.raises(ValueError):
        big_log.inclusion_proof(-1, 10)
    with pytest.raises(ValueError):
        big_log.inclusion_proof(0, 301)
    with pytest.raises(ValueError):
        big_log.inclusion_proof(0, 0)
    with pytest.raises(ValueError):
        big_log.consistency_proof(10, 9)
    with pytest.raises(ValueError):
        big_log.consistency_proof(-1, 9)
    with pytest.raises(ValueError):
        big_log.consistency_proof(1, 301)
    with pytest.raises(ValueError):
        big_log.root(301)
    with pytest.raises(ValueError):
        big_log.root(-1)
    with pytest.raises(ValueError):
        big_log.leaf_hash(300)
    with pytest.raises(ValueError):
        big_log.leaf_hash(-1)
    with pytest.raises(ValueError):
        MerkleLog().append_leaf_hash(b"short")


def test_defaults_use_current_size(big_log: MerkleLog) -> None:
    assert big_log.size == len(big_log) == 300
    assert big_log.inclusion_proof(17) == big_log.inclusion_proof(17, 300)
    assert big_log.consistency_proof(17) == big_log.consistency_proof(17, 300)


def test_copy_is_independent() -> None:
    log = build(13)
    clone = log.copy()
    clone.append(b"extra")
    assert log.size == 13
    assert clone.size == 14
    assert clone.root(13) == log.root()
    assert log.root() == build(13).root()


def test_append_leaf_hash_matches_append() -> None:
    a, b = MerkleLog(), MerkleLog()
    for i in range(37):
        a.append(leaf_data(i))
        assert b.append_leaf_hash(hash_leaf(leaf_data(i))) == i
    assert a.root() == b.root()


# --- cost bounds ---------------------------------------------------------------------------


@pytest.fixture
def hash_counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    calls = [0]
    original = ctlog.hash_children

    def counting(left: bytes, right: bytes) -> bytes:
        calls[0] += 1
        return original(left, right)

    monkeypatch.setattr(ctlog, "hash_children", counting)
    yield calls


def test_costs_are_logarithmic(hash_counter: list[int]) -> None:
    log = MerkleLog()
    for i in range(4096):
        log.append(leaf_data(i))
    # Exactly one interior hash per completed perfect subtree.
    assert hash_counter[0] == 4095
    log.append(b"one more")
    for size in (1, 2, 3, 1000, 4095, 4096, 4097):
        hash_counter[0] = 0
        log.root(size)
        assert hash_counter[0] <= 13
        hash_counter[0] = 0
        log.inclusion_proof(size // 2, size)
        assert hash_counter[0] <= 13
        hash_counter[0] = 0
        log.consistency_proof(size // 3, size)
        assert hash_counter[0] <= 2 * 13


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.data())
def test_inclusion_proofs_verify_and_bind(n: int, data: st.DataObject) -> None:
    log = build(n)
    root = log.root()
    for index in range(n):
        leaf = log.leaf_hash(index)
        proof = log.inclusion_proof(index, n)
        assert verify_inclusion(leaf, index, n, proof, root)
    index = data.draw(st.integers(0, n - 1))
    leaf = log.leaf_hash(index)
    proof = log.inclusion_proof(index, n)
    for pos in range(len(proof)):
        byte = data.draw(st.integers(0, 31))
        bad = list(proof)
        bad[pos] = flip(bad[pos], byte)
        assert not verify_inclusion(leaf, index, n, bad, root)
    assert not verify_inclusion(flip(leaf, 0), index, n, proof, root)
    assert not verify_inclusion(leaf, index, n, proof, flip(root, 31))
    assert not verify_inclusion(leaf, index, n, [*proof, root], root)
    if proof:
        assert not verify_inclusion(leaf, index, n, proof[:-1], root)
    other_index = data.draw(st.integers(0, n))
    if other_index != index:
        assert not verify_inclusion(leaf, other_index, n, proof, root)
    # RFC 6962 paths do not commit to the size on their own (the 5-leaf path for leaf 0 folds
    # the same way under size 6), so the meaningful check is against the other size's root.
    other_size = data.draw(st.integers(index + 1, 301))
    if other_size != n:
        other_root = build(other_size).root()
        assert not verify_inclusion(leaf, index, other_size, proof, other_root)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.data())
def test_consistency_proofs_verify_and_bind(n: int, data: st.DataObject) -> None:
    log = build(n)
    new_root = log.root()
    roots = [log.root(m) for m in range(n + 1)]
    for m in range(n + 1):
        assert verify_consistency(m, n, roots[m], new_root, log.consistency_proof(m, n))
    m = data.draw(st.integers(1, n))
    proof = log.consistency_proof(m, n)
    for pos in range(len(proof)):
        byte = data.draw(st.integers(0, 31))
        bad = list(proof)
        bad[pos] = flip(bad[pos], byte)
        assert not verify_consistency(m, n, roots[m], new_root, bad)
    if m < n:
        assert not verify_consistency(m, n, flip(roots[m], 3), new_root, proof)
        assert not verify_consistency(m, n, roots[m], flip(new_root, 3), proof)
        assert not verify_consistency(m, n, roots[m], new_root, [*proof, new_root])
        assert not verify_consistency(m, n, roots[m], new_root, proof[:-1])
        other_m = data.draw(st.integers(1, n))
        if other_m != m:
            assert not verify_consistency(other_m, n, roots[other_m], new_root, proof)
        other_n = data.draw(st.integers(m, n + 5))
        if other_n != n:
            other_root = build(other_n).root()
            assert not verify_consistency(m, other_n, roots[m], other_root, proof)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 300))
def test_historical_roots_match_fresh_logs(n: int) -> None:
    log = build(n)
    full = build(310)
    assert full.root(n) == log.root() == reference_mth([leaf_data(i) for i in range(n)])


def test_historical_proofs_after_growth(big_log: MerkleLog) -> None:
    small = build(77)
    for index in range(0, 77, 7):
        assert big_log.inclusion_proof(index, 77) == small.inclusion_proof(index)
    for m in range(0, 77, 5):
        assert big_log.consistency_proof(m, 77) == small.consistency_proof(m)


_garbage_int = st.one_of(
    st.integers(-5, 20), st.integers(), st.booleans(), st.none(), st.floats(), st.text(max_size=3)
)
_garbage_hash = st.one_of(
    st.binary(min_size=32, max_size=32), st.binary(max_size=40), st.none(), st.integers()
)
_garbage_path = st.one_of(
    st.lists(st.binary(min_size=32, max_size=32), max_size=10),
    st.lists(_garbage_hash, max_size=10),
    st.binary(max_size=64),
    st.text(max_size=5),
    st.none(),
    st.integers(),
)


@settings(max_examples=400, deadline=None)
@given(_garbage_hash, _garbage_int, _garbage_int, _garbage_path, _garbage_hash)
def test_verify_inclusion_never_raises(
    leaf: object, index: object, size: object, proof: object, root: object
) -> None:
    result = verify_inclusion(leaf, index, size, proof, root)  # type: ignore[arg-type]
    assert isinstance(result, bool)


@settings(max_examples=400, deadline=None)
@given(_garbage_int, _garbage_int, _garbage_hash, _garbage_hash, _garbage_path)
def test_verify_consistency_never_raises(
    old_size: object, new_size: object, old_root: object, new_root: object, proof: object
) -> None:
    result = verify_consistency(old_size, new_size, old_root, new_root, proof)  # type: ignore[arg-type]
    assert isinstance(result, bool)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**70),
    st.integers(0, 2**70),
    st.lists(st.binary(min_size=32, max_size=32), max_size=80),
)
def test_verifiers_reject_random_well_typed_input(a: int, b: int, proof: list[bytes]) -> None:
    assume(proof)
    root = hashlib.sha256(b"root").digest()
    assert not verify_inclusion(proof[0], a, b, proof[1:], root)
    assert not verify_consistency(min(a, b), max(a, b), proof[0], root, proof)

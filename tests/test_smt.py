from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpkid.core.state.smt import (
    EMPTY_HASH,
    SmtProof,
    SparseMerkleTree,
    from_items,
    hash_key,
    verify_proof,
)


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf(key: bytes, value: bytes) -> bytes:
    return H(b"\x00" + H(key) + H(value))


def node(left: bytes, right: bytes) -> bytes:
    return H(b"\x01" + left + right)


def kh(i: int) -> bytes:
    return H(b"key:%d" % i)


def vh(i: int, version: int = 0) -> bytes:
    return H(b"value:%d:%d" % (i, version))


def bit(key_hash: bytes, depth: int) -> int:
    return (int.from_bytes(key_hash, "big") >> (255 - depth)) & 1


def reference_root(items: Mapping[bytes, bytes], depth: int = 0) -> bytes:
    """Canonical root straight from the definition, with no sharing or batching."""
    if not items:
        return EMPTY_HASH
    if len(items) == 1:
        ((k, v),) = items.items()
        return H(b"\x00" + k + v)
    left = {k: v for k, v in items.items() if bit(k, depth) == 0}
    right = {k: v for k, v in items.items() if bit(k, depth) == 1}
    return node(reference_root(left, depth + 1), reference_root(right, depth + 1))


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --- known answers -------------------------------------------------------------------------


def test_empty_tree() -> None:
    tree = SparseMerkleTree()
    assert tree.root_hash == EMPTY_HASH == bytes(32)
    assert tree.get(kh(1)) is None
    proof = tree.prove(kh(1))
    assert proof == SmtProof([], b"", b"")
    assert verify_proof(EMPTY_HASH, kh(1), None, proof)
    assert not verify_proof(EMPTY_HASH, kh(1), vh(1), proof)


def test_single_leaf_is_root() -> None:
    tree = from_items([(H(b"a"), H(b"1"))])
    assert tree.root_hash == leaf(b"a", b"1")


def test_known_answer_two_keys() -> None:
    # sha256("a") starts 0b110010..., sha256("g") starts 0b110011...: they share five bits, so
    # the pair sits under five single-child levels whose other side is EMPTY.
    a, g = H(b"a"), H(b"g")
    assert [bit(a, d) for d in range(6)] == [1, 1, 0, 0, 1, 0]
    assert [bit(g, d) for d in range(6)] == [1, 1, 0, 0, 1, 1]
    h = node(leaf(b"a", b"A"), leaf(b"g", b"G"))  # depth 5
    h = node(EMPTY_HASH, h)  # depth 4, bit 1
    h = node(h, EMPTY_HASH)  # depth 3, bit 0
    h = node(h, EMPTY_HASH)  # depth 2, bit 0
    h = node(EMPTY_HASH, h)  # depth 1, bit 1
    h = node(EMPTY_HASH, h)  # depth 0, bit 1
    tree = from_items([(a, H(b"A")), (g, H(b"G"))])
    assert tree.root_hash == h
    assert tree.root_hash.hex() == reference_root({a: H(b"A"), g: H(b"G")}).hex()
    proof = tree.prove(a)
    assert len(proof.siblings) == 6
    assert proof.siblings == [EMPTY_HASH] * 5 + [leaf(b"g", b"G")]


def test_known_answer_three_keys() -> None:
    # "carol" = 0b010..., "dave" = 0b011..., "a" = 0b1...
    a, carol, dave = H(b"a"), H(b"carol"), H(b"dave")
    assert (bit(carol, 0), bit(carol, 1), bit(carol, 2)) == (0, 1, 0)
    assert (bit(dave, 0), bit(dave, 1), bit(dave, 2)) == (0, 1, 1)
    assert bit(a, 0) == 1
    cd = node(leaf(b"carol", b"C"), leaf(b"dave", b"D"))
    expected = node(node(EMPTY_HASH, cd), leaf(b"a", b"A"))
    tree = from_items([(dave, H(b"D")), (a, H(b"A")), (carol, H(b"C"))])
    assert tree.root_hash == expected

    # "h" = 0b1...: its path ends in the leaf of "a" right under the root.
    h = H(b"h")
    assert bit(h, 0) == 1
    proof_h = tree.prove(h)
    assert proof_h == SmtProof([node(EMPTY_HASH, cd)], a, H(b"A"))
    assert verify_proof(expected, h, None, proof_h)

    # "b" = 0b00...: its path runs into the EMPTY left child of the depth-1 node.
    b = H(b"b")
    assert (bit(b, 0), bit(b, 1)) == (0, 0)
    proof_b = tree.prove(b)
    assert proof_b == SmtProof([leaf(b"a", b"A"), cd], b"", b"")
    assert verify_proof(expected, b, None, proof_b)


# --- canonical shape -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.integers(0, 400), st.integers(0, 3), max_size=60),
    st.randoms(use_true_random=False),
)
def test_root_independent_of_order_and_batching(spec: dict[int, int], rnd: random.Random) -> None:
    items = [(kh(i), vh(i, v)) for i, v in spec.items()]
    expected = reference_root(dict(items))

    assert from_items(items).root_hash == expected

    one_by_one = SparseMerkleTree()
    for item in items:
        one_by_one = one_by_one.update([item])
    assert one_by_one.root_hash == expected

    shuffled = list(items)
    rnd.shuffle(shuffled)
    chunked = SparseMerkleTree()
    pos = 0
    while pos < len(shuffled):
        step = rnd.randint(1, 7)
        chunked = chunked.update(shuffled[pos : pos + step])
        pos += step
    assert chunked.root_hash == expected
    assert from_items(reversed(items)).root_hash == expected
    assert list(chunked.items()) == sorted(items)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.dictionaries(st.integers(0, 40), st.one_of(st.none(), st.integers(0, 2)))))
def test_random_batches_match_model(batches: list[dict[int, int | None]]) -> None:
    tree = SparseMerkleTree()
    model: dict[bytes, bytes] = {}
    for batch in batches:
        updates = [(kh(i), None if v is None else vh(i, v)) for i, v in batch.items()]
        tree = tree.update(updates)
        for key_hash, value_hash in updates:
            if value_hash is None:
                model.pop(key_hash, None)
            else:
                model[key_hash] = value_hash
        assert tree.root_hash == reference_root(model)
        for i in range(41):
            assert tree.get(kh(i)) == model.get(kh(i))


def test_delete_recollapses() -> None:
    a, b = (kh(1), vh(1)), (kh(2), vh(2))
    only_a = from_items([a])
    both = only_a.update([b])
    assert (
        both.update([(kh(2), None)]).root_hash == only_a.root_hash == leaf(b"key:1", b"value:1:0")
    )
    assert both.update([(kh(1), None), (kh(2), None)]).root_hash == EMPTY_HASH

    big = from_items([(kh(i), vh(i)) for i in range(200)])
    emptied = big.update([(kh(i), None) for i in range(200)])
    assert emptied.root_hash == EMPTY_HASH
    assert emptied.root is None

    kept = big.update([(kh(i), None) for i in range(200) if i != 1])
    assert kept.root_hash == only_a.root_hash


def test_noop_updates_share_structure() -> None:
    tree = from_items([(kh(i), vh(i)) for i in range(50)])
    assert tree.update([]) is tree
    assert tree.update([(kh(1000), None)]).root is tree.root
    assert tree.update([(kh(3), vh(3))]).root is tree.root


def test_deep_paths() -> None:
    # Hand-made key hashes differing only in the very last bit force a 256-deep path.
    k0 = bytes(31) + b"\x00"
    k1 = bytes(31) + b"\x01"
    k2 = bytes(31) + b"\x02"
    tree = from_items([(k0, vh(0)), (k1, vh(1))])
    expected = node(H(b"\x00" + k0 + vh(0)), H(b"\x00" + k1 + vh(1)))
    for _ in range(255):
        expected = node(expected, EMPTY_HASH)
    assert tree.root_hash == expected
    proof = tree.prove(k1)
    assert len(proof.siblings) == 256
    assert verify_proof(tree.root_hash, k1, vh(1), proof)
    absent = tree.prove(k2)
    assert len(absent.siblings) == 255
    assert absent.leaf_key_hash == b""
    assert verify_proof(tree.root_hash, k2, None, absent)
    assert tree.update([(k1, None)]).root_hash == H(b"\x00" + k0 + vh(0))


def test_update_rejects_bad_batches() -> None:
    tree = SparseMerkleTree()
    with pytest.raises(ValueError):
        tree.update([(kh(1), vh(1)), (kh(1), vh(2))])
    with pytest.raises(ValueError):
        tree.update([(kh(1), vh(1)), (kh(2), None), (kh(1), None)])
    with pytest.raises(ValueError):
        tree.update([(b"short", vh(1))])
    with pytest.raises(ValueError):
        tree.update([(kh(1), b"short")])
    with pytest.raises(ValueError):
        tree.get(b"short")
    with pytest.raises(ValueError):
        tree.prove(b"")


# --- proofs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def populated() -> SparseMerkleTree:
    return from_items([(kh(i), vh(i)) for i in range(0, 600, 2)])


def test_inclusion_proofs(populated: SparseMerkleTree) -> None:
    root = populated.root_hash
    for i in range(0, 600, 2):
        proof = populated.prove(kh(i))
        assert proof.leaf_key_hash == kh(i)
        assert verify_proof(root, kh(i), vh(i), proof)
        assert not verify_proof(root, kh(i), vh(i, 1), proof)
        # A present key can never be shown absent with its honest proof.
        assert not verify_proof(root, kh(i), None, proof)


def test_non_inclusion_proofs_cover_both_endings(populated: SparseMerkleTree) -> None:
    root = populated.root_hash
    endings = {"empty": 0, "other_leaf": 0}
    for i in range(1, 600, 2):
        proof = populated.prove(kh(i))
        assert verify_proof(root, kh(i), None, proof)
        assert not verify_proof(root, kh(i), vh(i), proof)
        if proof.leaf_key_hash:
            endings["other_leaf"] += 1
            assert proof.leaf_key_hash != kh(i)
        else:
            endings["empty"] += 1
    assert endings["empty"] > 0
    assert endings["other_leaf"] > 0


def test_absence_of_present_key_cannot_be_forged(populated: SparseMerkleTree) -> None:
    root = populated.root_hash
    target = kh(10)
    honest = populated.prove(target)
    assert not verify_proof(root, target, None, honest)
    # Pretending the path ends in EMPTY, or in the leaf's sibling, must not fold to the root.
    assert not verify_proof(root, target, None, SmtProof(honest.siblings, b"", b""))
    assert not verify_proof(root, target, None, SmtProof(honest.siblings[:-1], b"", b""))
    neighbour = populated.prove(kh(12))
    assert not verify_proof(
        root,
        target,
        None,
        SmtProof(honest.siblings, neighbour.leaf_key_hash, neighbour.leaf_value_hash),
    )
    # A leaf that lives elsewhere in the tree cannot vouch for this path.
    assert not verify_proof(root, target, None, neighbour)


def test_tampered_proofs_fail(populated: SparseMerkleTree) -> None:
    root = populated.root_hash
    for i in (0, 2, 100, 598, 1, 3, 101):
        key_hash = kh(i)
        present = i % 2 == 0
        value = vh(i) if present else None
        proof = populated.prove(key_hash)
        assert verify_proof(root, key_hash, value, proof)
        for s in range(len(proof.siblings)):
            for byte in (0, 31):
                siblings = list(proof.siblings)
                siblings[s] = flip(siblings[s], byte)
                bad = SmtProof(siblings, proof.leaf_key_hash, proof.leaf_value_hash)
                assert not verify_proof(root, key_hash, value, bad)
        if proof.leaf_key_hash:
            bad_value = SmtProof(
                proof.siblings, proof.leaf_key_hash, flip(proof.leaf_value_hash, 5)
            )
            assert not verify_proof(root, key_hash, value, bad_value)
            bad_key = SmtProof(proof.siblings, flip(proof.leaf_key_hash, 31), proof.leaf_value_hash)
            assert not verify_proof(root, key_hash, value, bad_key)
        shorter = SmtProof(proof.siblings[:-1], proof.leaf_key_hash, proof.leaf_value_hash)
        longer = SmtProof([*proof.siblings, EMPTY_HASH], proof.leaf_key_hash, proof.leaf_value_hash)
        assert not verify_proof(root, key_hash, value, shorter)
        assert not verify_proof(root, key_hash, value, longer)
        assert not verify_proof(flip(root, 0), key_hash, value, proof)


def test_malformed_proof_shapes_rejected(populated: SparseMerkleTree) -> None:
    root = populated.root_hash
    proof = populated.prove(kh(4))
    assert not verify_proof(root, kh(4), vh(4), SmtProof(proof.siblings, kh(4), b""))
    assert not verify_proof(root, kh(4), vh(4), SmtProof(proof.siblings, b"", vh(4)))
    assert not verify_proof(root, kh(4), vh(4), SmtProof(proof.siblings, kh(4)[:31], vh(4)))
    assert not verify_proof(root, kh(4), vh(4), SmtProof([b"x", *proof.siblings], kh(4), vh(4)))
    assert not verify_proof(root, kh(4), vh(4), SmtProof([EMPTY_HASH] * 257, kh(4), vh(4)))
    assert not verify_proof(root[:31], kh(4), vh(4), proof)
    assert not verify_proof(root, kh(4)[:31], vh(4), proof)
    assert not verify_proof(root, kh(4), vh(4)[:31], proof)


def test_old_roots_stay_provable() -> None:
    v0 = from_items([(kh(i), vh(i)) for i in range(100)])
    v1 = v0.update([(kh(i), vh(i, 1)) for i in range(0, 100, 3)] + [(kh(5), None)])
    v2 = v1.update([(kh(i), None) for i in range(100)] + [(kh(500), vh(500))])
    assert v0.root_hash != v1.root_hash != v2.root_hash != v0.root_hash
    for i in range(100):
        assert v0.get(kh(i)) == vh(i)
        assert verify_proof(v0.root_hash, kh(i), vh(i), v0.prove(kh(i)))
        expected_v1 = None if i == 5 else vh(i, 1) if i % 3 == 0 else vh(i)
        assert v1.get(kh(i)) == expected_v1
        assert verify_proof(v1.root_hash, kh(i), expected_v1, v1.prove(kh(i)))
        assert verify_proof(v2.root_hash, kh(i), None, v2.prove(kh(i)))
    assert v2.root_hash == leaf(b"key:500", b"value:500:0")
    assert v0.root_hash == reference_root({kh(i): vh(i) for i in range(100)})


def test_proof_encodes_canonically_as_msgpack(populated: SparseMerkleTree) -> None:
    proof = populated.prove(kh(7))
    encoded = msgspec.msgpack.encode(proof)
    assert encoded == msgspec.msgpack.encode(
        [proof.siblings, proof.leaf_key_hash, proof.leaf_value_hash]
    )
    decoded = msgspec.msgpack.decode(encoded, type=SmtProof)
    assert decoded == proof
    assert verify_proof(populated.root_hash, kh(7), None, decoded)


def test_hash_key_is_sha256() -> None:
    assert hash_key(b"alice") == H(b"alice")


_hashlike = st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40))


@settings(max_examples=300, deadline=None)
@given(
    root=_hashlike,
    key=_hashlike,
    value=st.one_of(st.none(), _hashlike),
    siblings=st.lists(_hashlike, max_size=12),
    leaf_key=st.one_of(st.just(b""), _hashlike),
    leaf_value=st.one_of(st.just(b""), _hashlike),
)
def test_verify_never_raises_on_garbage(
    root: bytes,
    key: bytes,
    value: bytes | None,
    siblings: list[bytes],
    leaf_key: bytes,
    leaf_value: bytes,
) -> None:
    result = verify_proof(root, key, value, SmtProof(siblings, leaf_key, leaf_value))
    assert isinstance(result, bool)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_verify_never_raises_on_decoded_garbage(blob: bytes) -> None:
    try:
        proof = msgspec.msgpack.decode(blob, type=SmtProof)
    except msgspec.DecodeError:
        return
    assert verify_proof(bytes(32), bytes(32), None, proof) in (True, False)


def test_verify_rejects_wrong_runtime_types() -> None:
    weird = SmtProof([1, 2], 3, 4)  # type: ignore[list-item, arg-type]
    assert verify_proof(bytes(32), bytes(32), None, weird) is False
    assert verify_proof(bytes(32), bytes(32), None, "proof") is False  # type: ignore[arg-type]
    assert verify_proof(None, None, None, SmtProof([], b"", b"")) is False  # type: ignore[arg-type]


def test_bench_smoke() -> None:
    from dpkid.dev.bench_smt import bench_smt

    figures = bench_smt(300)
    assert figures["n"] == 300.0
    assert figures["proofs_per_s"] > 0
    assert figures["verifies_per_s"] > 0
    assert figures["update_keys_per_s"] > 0

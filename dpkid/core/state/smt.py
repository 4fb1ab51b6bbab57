"""Compact sparse Merkle tree: an authenticated map from 32-byte key hashes to 32-byte value hashes.

The tree is keyed by the 256 bits of ``key_hash`` (most significant bit first).  Its shape is
canonical, so the root commits to the key/value set alone and not to the history of updates:

* an empty subtree hashes to :data:`EMPTY_HASH` at every depth;
* a subtree holding exactly one leaf *is* that leaf, wherever it sits;
* anything else is an internal node over its bit-0 and bit-1 halves.

Nodes are immutable and shared between versions, so every root ever returned stays readable and
provable.  Updates are applied in batches so that each touched internal node is hashed once per
block rather than once per key.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Final, TypeAlias

import msgspec

__all__ = [
    "EMPTY_HASH",
    "HASH_LEN",
    "MAX_DEPTH",
    "Leaf",
    "Node",
    "SmtProof",
    "SparseMerkleTree",
    "from_items",
    "hash_key",
    "hash_leaf",
    "hash_node",
    "hash_value",
    "verify_proof",
]

HASH_LEN: Final = 32
MAX_DEPTH: Final = 256
EMPTY_HASH: Final = bytes(HASH_LEN)

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"
_sha256 = hashlib.sha256


def hash_key(key: bytes) -> bytes:
    return _sha256(key).digest()


def hash_value(value: bytes) -> bytes:
    return _sha256(value).digest()


def hash_leaf(key_hash: bytes, value_hash: bytes) -> bytes:
    return _sha256(_LEAF_PREFIX + key_hash + value_hash).digest()


def hash_node(left: bytes, right: bytes) -> bytes:
    return _sha256(_NODE_PREFIX + left + right).digest()


class Leaf:
    """A single key/value pair; ``path`` caches the key hash as an int for cheap bit tests."""

    __slots__ = ("hash", "key_hash", "path", "value_hash")

    path: Final[int]
    key_hash: Final[bytes]
    value_hash: Final[bytes]
    hash: Final[bytes]

    def __init__(self, path: int, key_hash: bytes, value_hash: bytes) -> None:
        self.path = path
        self.key_hash = key_hash
        self.value_hash = value_hash
        self.hash = _sha256(_LEAF_PREFIX + key_hash + value_hash).digest()


class Node:
    """An internal node; by construction it always holds at least two leaves below it."""

    __slots__ = ("hash", "left", "right")

    left: Final[Tree]
    right: Final[Tree]
    hash: Final[bytes]

    def __init__(self, left: Tree, right: Tree) -> None:
        self.left = left
        self.right = right
        self.hash = _sha256(
            _NODE_PREFIX
            + (EMPTY_HASH if left is None else left.hash)
            + (EMPTY_HASH if right is None else right.hash)
        ).digest()


Tree: TypeAlias = "Leaf | Node | None"


def _join(left: Tree, right: Tree) -> Tree:
    # A lone leaf must float up past empty siblings, or the root would depend on the order in
    # which its former neighbours were deleted.
    if left is None and (right is None or isinstance(right, Leaf)):
        return right
    if right is None and isinstance(left, Leaf):
        return left
    return Node(left, right)


def _path_of(key_hash: bytes) -> int:
    if type(key_hash) is not bytes or len(key_hash) != HASH_LEN:
        raise ValueError("key_hash must be 32 bytes")
    return int.from_bytes(key_hash, "big")


class SmtProof(msgspec.Struct, frozen=True, array_like=True):
    """Path from the root towards ``key_hash``.

    ``siblings[d]`` is the sibling hash at depth ``d`` (root first).  The path ends either in an
    empty subtree (both leaf fields ``b""``) or in the leaf that occupies it, which may belong to
    a different key when proving absence.
    """

    siblings: list[bytes]
    leaf_key_hash: bytes
    leaf_value_hash: bytes


class SparseMerkleTree:
    """Immutable handle on one version of the tree."""

    __slots__ = ("_root",)

    _root: Final[Tree]

    def __init__(self, root: Tree = None) -> None:
        self._root = root

    @property
    def root_hash(self) -> bytes:
        return EMPTY_HASH if self._root is None else self._root.hash

    @property
    def root(self) -> Tree:
        return self._root

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparseMerkleTree):
            return NotImplemented
        return self.root_hash == other.root_hash

    def __hash__(self) -> int:
        return hash(self.root_hash)

    def __repr__(self) -> str:
        return f"SparseMerkleTree(root_hash={self.root_hash.hex()})"

    def get(self, key_hash: bytes) -> bytes | None:
        path = _path_of(key_hash)
        node = self._root
        shift = MAX_DEPTH - 1
        while isinstance(node, Node):
            node = node.right if (path >> shift) & 1 else node.left
            shift -= 1
        if node is not None and node.path == path:
            return node.value_hash
        return None

    def prove(self, key_hash: bytes) -> SmtProof:
        path = _path_of(key_hash)
        siblings: list[bytes] = []
        node = self._root
        shift = MAX_DEPTH - 1
        while isinstance(node, Node):
            if (path >> shift) & 1:
                sibling, node = node.left, node.right
            else:
                sibling, node = node.right, node.left
            siblings.append(EMPTY_HASH if sibling is None else sibling.hash)
            shift -= 1
        if node is None:
            return SmtProof(siblings, b"", b"")
        return SmtProof(siblings, node.key_hash, node.value_hash)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Yield ``(key_hash, value_hash)`` in ascending key order."""
        stack: list[Tree] = [self._root]
        while stack:
            node = stack.pop()
            if isinstance(node, Node):
                stack.append(node.right)
                stack.append(node.left)
            elif node is not None:
                yield node.key_hash, node.value_hash

    def update(self, items: Iterable[tuple[bytes, bytes | None]]) -> SparseMerkleTree:
        """Apply a batch of sets (value hash) and deletes (``None``) and return the new version."""
        batch: list[tuple[int, bytes, bytes | None]] = []
        for key_hash, value_hash in items:
            path = _path_of(key_hash)
            if value_hash is not None and (
                type(value_hash) is not bytes or len(value_hash) != HASH_LEN
            ):
                raise ValueError("value_hash must be 32 bytes or None")
            batch.append((path, key_hash, value_hash))
        if not batch:
            return self
        batch.sort(key=itemgetter(0))
        paths = [entry[0] for entry in batch]
        for i in range(1, len(paths)):
            if paths[i] == paths[i - 1]:
                raise ValueError(f"duplicate key_hash in batch: {batch[i][1].hex()}")
        key_hashes = [entry[1] for entry in batch]
        value_hashes = [entry[2] for entry in batch]
        # live[j] counts the non-delete entries in batch[:j], so building a fresh subtree can
        # tell in O(1) whether a range collapses to nothing or to a single leaf.
        live = [0] * (len(batch) + 1)
        count = 0
        for j, value_hash in enumerate(value_hashes):
            if value_hash is not None:
                count += 1
            live[j + 1] = count

        def build(depth: int, lo: int, hi: int, extra: Leaf | None) -> Tree:
            """Canonical subtree of the live entries in [lo, hi) plus the surviving ``extra``."""
            n = live[hi] - live[lo] + (extra is not None)
            if n == 0:
                return None
            if n == 1:
                if extra is not None:
                    return extra
                i = bisect_right(live, live[lo], lo, hi + 1) - 1
                value_hash = value_hashes[i]
                assert value_hash is not None
                return Leaf(paths[i], key_hashes[i], value_hash)
            # Two or more distinct keys always diverge before depth 256, and at least one of
            # them comes from the batch, so paths[lo] is a valid prefix witness.
            shift = MAX_DEPTH - 1 - depth
            mid = bisect_left(paths, ((paths[lo] >> shift) | 1) << shift, lo, hi)
            if extra is None:
                return _join(build(depth + 1, lo, mid, None), build(depth + 1, mid, hi, None))
            if (extra.path >> shift) & 1:
                return _join(build(depth + 1, lo, mid, None), build(depth + 1, mid, hi, extra))
            return _join(build(depth + 1, lo, mid, extra), build(depth + 1, mid, hi, None))

        def apply(node: Tree, depth: int, lo: int, hi: int) -> Tree:
            if node is None:
                return build(depth, lo, hi, None)
            if isinstance(node, Leaf):
                i = bisect_left(paths, node.path, lo, hi)
                if i < hi and paths[i] == node.path:
                    if hi - lo == 1 and value_hashes[i] == node.value_hash:
                        return node
                    return build(depth, lo, hi, None)
                return build(depth, lo, hi, node)
            shift = MAX_DEPTH - 1 - depth
            mid = bisect_left(paths, ((paths[lo] >> shift) | 1) << shift, lo, hi)
            left = node.left if mid == lo else apply(node.left, depth + 1, lo, mid)
            right = node.right if mid == hi else apply(node.right, depth + 1, mid, hi)
            if left is node.left and right is node.right:
                return node
            return _join(left, right)

        return SparseMerkleTree(apply(self._root, 0, 0, len(batch)))


def from_items(items: Iterable[tuple[bytes, bytes]]) -> SparseMerkleTree:
    """Build a tree from ``(key_hash, value_hash)`` pairs."""
    return SparseMerkleTree().update(items)


def _is_hash(value: object) -> bool:
    return type(value) is bytes and len(value) == HASH_LEN


def verify_proof(
    root_hash: bytes, key_hash: bytes, value_hash: bytes | None, proof: SmtProof
) -> bool:
    """Check ``proof`` that ``key_hash`` maps to ``value_hash`` (or is absent when ``None``).

    Total on arbitrary input: anything malformed yields ``False`` rather than an exception,
    because proofs arrive from untrusted peers.
    """
    if not isinstance(proof, SmtProof):
        return False
    if not _is_hash(root_hash) or not _is_hash(key_hash):
        return False
    if value_hash is not None and not _is_hash(value_hash):
        return False
    siblings = proof.siblings
    leaf_key_hash = proof.leaf_key_hash
    leaf_value_hash = proof.leaf_value_hash
    if type(siblings) is not list or len(siblings) > MAX_DEPTH:
        return False
    if type(leaf_key_hash) is not bytes or type(leaf_value_hash) is not bytes:
        return False
    depth = len(siblings)
    path = int.from_bytes(key_hash, "big")
    if not leaf_key_hash and not leaf_value_hash:
        if value_hash is not None:
            return False
        current = EMPTY_HASH
    elif len(leaf_key_hash) == HASH_LEN and len(leaf_value_hash) == HASH_LEN:
        if value_hash is not None:
            if leaf_key_hash != key_hash or leaf_value_hash != value_hash:
                return False
        else:
            if leaf_key_hash == key_hash:
                return False
            # The foreign leaf must genuinely sit on the queried path, otherwise a prover could
            # splice in a leaf from elsewhere in the tree.
            leaf_path = int.from_bytes(leaf_key_hash, "big")
            if (leaf_path ^ path) >> (MAX_DEPTH - depth):
                return False
        current = hash_leaf(leaf_key_hash, leaf_value_hash)
    else:
        return False
    shift = MAX_DEPTH - depth
    for sibling in reversed(siblings):
        if type(sibling) is not bytes or len(sibling) != HASH_LEN:
            return False
        if (path >> shift) & 1:
            current = _sha256(_NODE_PREFIX + sibling + current).digest()
        else:
            current = _sha256(_NODE_PREFIX + current + sibling).digest()
        shift += 1
    return current == root_hash

"""Append-only certificate log: the RFC 9162 Merkle tree (RFC 6962 hashing).

The log keeps every complete, aligned power-of-two subtree hash, level by level.  Every subtree
that RFC 9162 proofs or historical roots refer to decomposes into O(log n) of those cached
pieces, so appends cost amortised O(1) hashes and proofs and past roots cost O(log n).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

__all__ = [
    "EMPTY_ROOT",
    "HASH_LEN",
    "MerkleLog",
    "hash_children",
    "hash_leaf",
    "verify_consistency",
    "verify_inclusion",
]

HASH_LEN: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"
_sha256 = hashlib.sha256


def hash_leaf(leaf_bytes: bytes) -> bytes:
    return _sha256(_LEAF_PREFIX + leaf_bytes).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split_point(n: int) -> int:
    """Largest power of two strictly below ``n`` (``n >= 2``): RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleLog:
    """In-memory append-only Merkle log."""

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        # _levels[k][j] is the hash of leaves [j * 2**k, (j + 1) * 2**k); only complete subtrees
        # are stored, so _levels[k] has exactly size >> k entries.
        self._levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def __len__(self) -> int:
        return len(self._levels[0])

    def copy(self) -> MerkleLog:
        clone = MerkleLog()
        clone._levels = [level.copy() for level in self._levels]
        return clone

    def append(self, leaf_bytes: bytes) -> int:
        return self.append_leaf_hash(hash_leaf(leaf_bytes))

    def append_leaf_hash(self, leaf_hash: bytes) -> int:
        if type(leaf_hash) is not bytes or len(leaf_hash) != HASH_LEN:
            raise ValueError("leaf hash must be 32 bytes")
        levels = self._levels
        index = len(levels[0])
        levels[0].append(leaf_hash)
        level = 0
        # Each trailing 1-bit of the new size closes one more complete subtree.
        while len(levels[level]) & 1 == 0:
            below = levels[level]
            if level + 1 == len(levels):
                levels.append([])
            levels[level + 1].append(hash_children(below[-2], below[-1]))
            level += 1
        return index

    def leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise ValueError(f"leaf index {index} out of range for size {self.size}")
        return self._levels[0][index]

    def root(self, size: int | None = None) -> bytes:
        """Tree head over the first ``size`` leaves (default: all of them)."""
        size = self._check_size(size)
        if size == 0:
            return EMPTY_ROOT
        return self._range_hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 audit path for leaf ``index`` in the tree of ``size`` leaves."""
        size = self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} out of range for size {size}")
        proof: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split_point(hi - lo)
            if index < lo + k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo += k
        # Collected top-down; the RFC orders the path from the leaf upwards.
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 proof that the ``old_size`` tree is a prefix of ``new_size``."""
        new_size = self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} not within [0, {new_size}]")
        if old_size in (0, new_size):
            return []
        proof: list[bytes] = []
        lo, hi = 0, new_size
        m = old_size
        complete = True
        while True:
            n = hi - lo
            if m == n:
                # While still on the left edge the verifier already knows this hash: it is the
                # old root itself.
                if not complete:
                    proof.append(self._range_hash(lo, hi))
                break
            k = _split_point(n)
            if m <= k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo += k
                m -= k
                complete = False
        proof.reverse()
        return proof

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} out of range [0, {self.size}]")
        return size

    def _range_hash(self, lo: int, hi: int) -> bytes:
        """MTH of leaves [lo, hi) for a range that is a node of some RFC 9162 tree.

        Such a range starts at a multiple of the largest power of two not exceeding its length,
        so it splits into complete aligned subtrees of strictly decreasing size, joined
        right-to-left.
        """
        levels = self._levels
        pieces: list[bytes] = []
        remaining = hi - lo
        while remaining:
            level = remaining.bit_length() - 1
            pieces.append(levels[level][lo >> level])
            lo += 1 << level
            remaining -= 1 << level
        result = pieces.pop()
        while pieces:
            result = hash_children(pieces.pop(), result)
        return result


def _is_hash(value: object) -> bool:
    return type(value) is bytes and len(value) == HASH_LEN


def _is_size(value: object) -> bool:
    return type(value) is int and value >= 0


def _is_path(proof: object) -> bool:
    if not isinstance(proof, Sequence) or isinstance(proof, (bytes, bytearray, str)):
        return False
    return all(_is_hash(item) for item in proof)


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2.  Returns ``False`` for any malformed input instead of raising."""
    if not (_is_hash(leaf_hash) and _is_hash(root) and _is_path(proof)):
        return False
    if not (_is_size(index) and _is_size(size)) or index >= size:
        return False
    fn = index
    sn = size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = hash_children(p, r)
            fn, sn = _skip_right_edge(fn, sn)
        else:
            r = hash_children(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def _skip_right_edge(fn: int, sn: int) -> tuple[int, int]:
    """RFC 9162 §2.1.3.2 step 5.3 / §2.1.4.2 step 6.2: while ``fn`` is a right
    child (LSB clear) and not zero, move both up a level."""
    while not fn & 1 and fn != 0:
        fn >>= 1
        sn >>= 1
    return fn, sn


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2.  Returns ``False`` for any malformed input instead of raising."""
    if not (_is_size(old_size) and _is_size(new_size)) or old_size > new_size:
        return False
    if not (_is_hash(old_root) and _is_hash(new_root) and _is_path(proof)):
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if old_size == 0:
        # Every log extends the empty one; the only thing to check is that the claimed old head
        # really is the empty tree's.
        return len(proof) == 0 and old_root == EMPTY_ROOT
    if len(proof) == 0:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn = old_size - 1
    sn = new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            fn, sn = _skip_right_edge(fn, sn)
        else:
            sr = hash_children(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old_root and sr == new_root and sn == 0

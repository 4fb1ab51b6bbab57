"""Micro-benchmark for :mod:`dpkid.core.state.smt`.

Kept apart from the tree itself so the deterministic core never imports a clock.
"""

from __future__ import annotations

import hashlib
import time

from dpkid.core.state.smt import SmtProof, from_items, verify_proof

__all__ = ["bench_smt"]

_BATCH = 2_000
_PROOFS = 10_000


def _key(i: int) -> bytes:
    return hashlib.sha256(b"bench-key" + i.to_bytes(8, "big")).digest()


def _value(i: int, version: int) -> bytes:
    return hashlib.sha256(
        b"bench-value" + i.to_bytes(8, "big") + version.to_bytes(4, "big")
    ).digest()


def bench_smt(n: int) -> dict[str, float]:
    """Time a build of ``n`` keys, a mixed 2,000-key batch, 10,000 proofs and verifications.

    Rates are per second; ``*_s`` entries are wall-clock seconds.
    """
    if n < 1:
        raise ValueError("n must be positive")
    items = [(_key(i), _value(i, 0)) for i in range(n)]

    start = time.perf_counter()
    tree = from_items(items)
    build_s = time.perf_counter() - start

    # A block-like batch: mostly rewrites of existing keys, plus fresh inserts and deletes.  With
    # small n the stride wraps onto the same keys, and a batch must not name a key twice.
    stride = max(1, n // _BATCH)
    batch: dict[bytes, bytes | None] = {}
    for j in range(_BATCH):
        if j % 4 == 0:
            batch.setdefault(_key(n + j), _value(n + j, 0))
        elif j % 4 == 1:
            batch.setdefault(_key((j * stride) % n), None)
        else:
            batch.setdefault(_key((j * stride) % n), _value(j, 1))
    updates = list(batch.items())

    start = time.perf_counter()
    updated = tree.update(updates)
    update_s = time.perf_counter() - start

    present = [_key((i * 7919) % n) for i in range(_PROOFS // 2)]
    absent = [_key(n + _BATCH + i) for i in range(_PROOFS - len(present))]
    queries = [k for pair in zip(present, absent, strict=False) for k in pair]
    queries += present[len(absent) :] + absent[len(present) :]

    start = time.perf_counter()
    proofs: list[SmtProof] = [tree.prove(k) for k in queries]
    prove_s = time.perf_counter() - start

    expected = [tree.get(k) for k in queries]
    root = tree.root_hash
    start = time.perf_counter()
    ok = 0
    for k, v, proof in zip(queries, expected, proofs, strict=True):
        ok += verify_proof(root, k, v, proof)
    verify_s = time.perf_counter() - start
    if ok != len(queries):
        raise AssertionError("benchmark proof failed to verify")
    if updated.root_hash == root:
        raise AssertionError("benchmark batch did not change the tree")

    return {
        "n": float(n),
        "build_s": build_s,
        "build_keys_per_s": n / build_s,
        "update_batch_size": float(len(updates)),
        "update_s": update_s,
        "update_keys_per_s": len(updates) / update_s,
        "prove_s": prove_s,
        "proofs_per_s": len(queries) / prove_s,
        "verify_s": verify_s,
        "verifies_per_s": len(queries) / verify_s,
        "avg_proof_depth": sum(len(p.siblings) for p in proofs) / len(proofs),
    }


if __name__ == "__main__":
    for name, value in bench_smt(100_000).items():
        print(f"{name:>20}: {value:,.3f}")

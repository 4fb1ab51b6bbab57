"""Hashes, Ed25519 keys and a bounded verify-once signature cache.

Pure: no I/O. Ed25519 goes through PyNaCl (libsodium), which verifies about
1.75x faster than `cryptography` on these machines (see BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import nacl.exceptions
import nacl.signing

PUBKEY_LEN = 32
SIG_LEN = 64
ADDR_LEN = 20
HASH_LEN = 32
SEED_LEN = 32

# Domain-separation tags keep a hash of one kind from ever colliding with another.
ADDR_TAG = b"dpkid/addr/v1\x00"


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def address_of(pubkey: bytes) -> bytes:
    """An account is named by a hash of its public key (first 20 bytes)."""
    if len(pubkey) != PUBKEY_LEN:
        raise ValueError(f"Ed25519 public key must be {PUBKEY_LEN} bytes, got {len(pubkey)}")
    return hashlib.sha256(ADDR_TAG + pubkey).digest()[:ADDR_LEN]


class SigningKey:
    """An Ed25519 private key. The seed is the only secret; keep it mode 0600 on disk."""

    __slots__ = ("_sk", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_LEN:
            raise ValueError(f"Ed25519 seed must be {SEED_LEN} bytes")
        self._sk = nacl.signing.SigningKey(seed)
        self.public_key: bytes = bytes(self._sk.verify_key)

    @classmethod
    def from_label(cls, label: str) -> SigningKey:
        """A deterministic key for tests, vectors and simulations. Never for real use."""
        return cls(sha256(b"dpkid/test-key/v1\x00" + label.encode()))

    @property
    def seed(self) -> bytes:
        return bytes(self._sk)

    @property
    def address(self) -> bytes:
        return address_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return bytes(self._sk.sign(message).signature)


def verify_ed25519(pubkey: bytes, message: bytes, signature: bytes) -> bool:
    """True only for a valid signature; malformed keys or signatures give False."""
    if len(pubkey) != PUBKEY_LEN or len(signature) != SIG_LEN:
        return False
    try:
        nacl.signing.VerifyKey(pubkey).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


class SignatureCache:
    """Verify each transaction's signature once and remember the answer by tx hash.

    The tx hash covers the signature, the key and the signed body, so a hit can
    only ever be the same bytes that were checked before. Bounded FIFO-LRU so a
    flood of distinct transactions cannot grow memory without limit.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._results: OrderedDict[bytes, bool] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._results)

    def check(self, tx_hash: bytes, pubkey: bytes, message: bytes, signature: bytes) -> bool:
        cached = self._results.get(tx_hash)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        ok = verify_ed25519(pubkey, message, signature)
        self._results[tx_hash] = ok
        if len(self._results) > self.max_entries:
            self._results.popitem(last=False)
        return ok

    def forget(self, tx_hash: bytes) -> None:
        self._results.pop(tx_hash, None)

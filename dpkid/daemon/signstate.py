"""The double-sign guard on disk: its own small file, like CometBFT's
``priv_validator_state.json``, never in the block store.

Why its own file: a guard that shares the SQLite database (and its WAL) with
the blocks rolls back with them when the WAL is lost, and the validator then
signs again what it already signed (issue 10: prevote for a block and nil at
one height and round). This file is replaced atomically (write a temporary
file, fsync it, rename over the old one, fsync the directory) before any
signature it guards leaves the process, and it lives in the node's home, not
in ``data/``, so moving a damaged store aside to resync keeps it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

from dpkid.core import codec
from dpkid.core.consensus.engine import LockRecord, SignState
from dpkid.core.consensus.messages import MAX_BLOCK_BYTES

SIGN_STATE_FILE: Final = "sign_state.json"
LOCK_FILE: Final = "lock.msgpack"
TSS_SECRETS_FILE: Final = "tss_secrets.msgpack"  # the threshold key share and nonces
MAX_SIGN_STATE_BYTES: Final = 4096
MAX_LOCK_BYTES: Final = 2 * MAX_BLOCK_BYTES  # a block plus its polka


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``; durable when this returns."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class SignStateError(RuntimeError):
    """The file exists but cannot be trusted; a validator must not sign then."""


def _to_json(ss: SignState) -> bytes:
    doc = {
        "height": ss.height,
        "round": ss.round,
        "step": ss.step,
        "block_hash": ss.block_hash.hex(),
        "timestamp_ms": ss.timestamp_ms,
        "signature": ss.signature.hex(),
        "lock_round": ss.lock_round,
        "lock_hash": ss.lock_hash.hex(),
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _from_json(data: bytes, where: Path) -> SignState:
    try:
        doc = json.loads(data)
        ints = {k: doc[k] for k in ("height", "round", "step", "timestamp_ms", "lock_round")}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints.values()):
            raise ValueError("a counter is not an integer")
        return SignState(
            ints["height"],
            ints["round"],
            ints["step"],
            bytes.fromhex(doc["block_hash"]),
            ints["timestamp_ms"],
            bytes.fromhex(doc["signature"]),
            ints["lock_round"],
            bytes.fromhex(doc["lock_hash"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SignStateError(
            f"{where} is damaged ({exc}); a validator cannot know what it signed."
            " Restore it from a backup, or stop this validator until the chain is past"
            " the height it last signed, then delete the file"
        ) from None


class SignStateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> SignState:
        """The last durable sign state, or the initial one if there is no file."""
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_SIGN_STATE_BYTES + 1)
        except FileNotFoundError:
            return SignState()
        if len(data) > MAX_SIGN_STATE_BYTES:
            raise SignStateError(f"{self.path} is larger than {MAX_SIGN_STATE_BYTES} bytes")
        return _from_json(data, self.path)

    def save(self, ss: SignState) -> None:
        """Durable when this returns: the caller sends the signature only after."""
        atomic_write(self.path, _to_json(ss))


class LockFile:
    """The locked block and its polka (CONSENSUS.md §6). Written when the lock
    changes (once per height at most), before the sign state that names it.
    Losing it costs liveness, never safety: the sign state keeps the lock's hash."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[LockRecord | None, str]:
        """The record, or None and why not ("" when there is simply no file)."""
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_LOCK_BYTES + 1)
        except FileNotFoundError:
            return None, ""
        try:
            rec: LockRecord = codec.decode(data, LockRecord, max_bytes=MAX_LOCK_BYTES)
        except codec.DecodeError as exc:
            # Safe to go on without it, so the node says so instead of refusing.
            return None, (
                f"{self.path} is damaged ({exc}); starting without it, which is safe: the"
                " sign state keeps the lock, only the locked block is lost, so a height"
                " this validator is locked on may wait for another proposer"
            )
        return rec, ""

    def save(self, rec: LockRecord) -> None:
        atomic_write(self.path, codec.encode(rec))

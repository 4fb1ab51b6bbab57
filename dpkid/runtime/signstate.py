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

from dpkid.consensus.engine import SignState

SIGN_STATE_FILE: Final = "sign_state.json"
MAX_SIGN_STATE_BYTES: Final = 4096


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
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _to_json(ss))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

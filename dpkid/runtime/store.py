"""Crash-safe storage: SQLite in WAL mode, behind a small interface.

One SQLite transaction per decided block writes the block, its commit, its
receipts, the state records the block changed, and the node's consensus
bookkeeping, so after ``kill -9`` the store holds either all of a block or
none of it. The double-sign guard is written (and fsynced) on its own before
any vote it guards leaves the process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec

from dpkid import codec
from dpkid.consensus.engine import SignState
from dpkid.consensus.messages import Block, Commit
from dpkid.node import PersistBlock
from dpkid.state.machine import State
from dpkid.types import Receipt

SCHEMA_VERSION: Final = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    block BLOB NOT NULL,
    seen_commit BLOB NOT NULL,
    app_hash BLOB NOT NULL,
    time_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS blocks_by_hash ON blocks(hash);
CREATE TABLE IF NOT EXISTS receipts (
    height INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    tx_hash BLOB NOT NULL,
    receipt BLOB NOT NULL,
    PRIMARY KEY (height, idx)
);
CREATE INDEX IF NOT EXISTS receipts_by_tx ON receipts(tx_hash);
CREATE TABLE IF NOT EXISTS state (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS valsets (
    height INTEGER PRIMARY KEY,
    vals BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sign_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    height INTEGER NOT NULL,
    round INTEGER NOT NULL,
    step INTEGER NOT NULL,
    block_hash BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    signature BLOB NOT NULL
);
"""


class StoreError(RuntimeError):
    pass


class _NodeMeta(msgspec.Struct, frozen=True, array_like=True):
    priorities: list[tuple[bytes, int]]


class Store:
    """Blocks, commits, receipts, state, consensus bookkeeping and the sign state."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we act on it (sign state, blocks).
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION).encode(),)
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"store schema {int(row[0])} is not {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ sign state
    def save_sign_state(self, ss: SignState) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO sign_state(id, height, round, step, block_hash, timestamp_ms,"
            " signature) VALUES (1, ?, ?, ?, ?, ?, ?)",
            (ss.height, ss.round, ss.step, ss.block_hash, ss.timestamp_ms, ss.signature),
        )

    def load_sign_state(self) -> SignState:
        row = self.db.execute(
            "SELECT height, round, step, block_hash, timestamp_ms, signature FROM sign_state"
        ).fetchone()
        if row is None:
            return SignState()
        return SignState(
            int(row[0]), int(row[1]), int(row[2]), bytes(row[3]), int(row[4]), bytes(row[5])
        )

    # ------------------------------------------------------------------ blocks
    def save_block(self, e: PersistBlock) -> None:
        """Everything a decided block changed, in one transaction."""
        block, commit, receipts = e.block, e.commit, e.receipts
        priorities, next_vals = list(e.priorities), e.next_vals
        h = block.header.height
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute(
                "INSERT INTO blocks(height, hash, block, seen_commit, app_hash, time_ms)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    h,
                    block.hash,
                    codec.encode(block),
                    codec.encode(commit),
                    e.app_hash,
                    block.header.time_ms,
                ),
            )
            cur.executemany(
                "INSERT INTO receipts(height, idx, tx_hash, receipt) VALUES (?, ?, ?, ?)",
                [(h, i, r.tx_hash, codec.encode(r)) for i, r in enumerate(receipts)],
            )
            for k, v in e.writes:
                if v is None:
                    cur.execute("DELETE FROM state WHERE key = ?", (k,))
                else:
                    cur.execute(
                        "INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)",
                        (k, codec.encode(v)),
                    )
            if next_vals:
                enc = codec.encode(next_vals)
                row = cur.execute(
                    "SELECT vals FROM valsets WHERE height <= ? ORDER BY height DESC LIMIT 1",
                    (h + 1,),
                ).fetchone()
                if row is None or bytes(row[0]) != enc:
                    cur.execute(
                        "INSERT OR REPLACE INTO valsets(height, vals) VALUES (?, ?)", (h + 1, enc)
                    )
            cur.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('node', ?)",
                (codec.encode(_NodeMeta(priorities)),),
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def save_genesis_state(self, state: State) -> None:
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute("DELETE FROM state")
            cur.executemany(
                "INSERT INTO state(key, value) VALUES (?, ?)", list(state.encoded_records())
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def save_valset(self, height: int, vals: list[tuple[bytes, int]]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO valsets(height, vals) VALUES (?, ?)",
            (height, codec.encode(vals)),
        )

    def valset_at(self, height: int) -> list[tuple[bytes, int]] | None:
        """The validator set (pubkey, power) that ran consensus at ``height``."""
        row = self.db.execute(
            "SELECT vals FROM valsets WHERE height <= ? ORDER BY height DESC LIMIT 1", (height,)
        ).fetchone()
        if row is None:
            return None
        return [
            (bytes(pk), int(p)) for pk, p in codec.decode(bytes(row[0]), list[tuple[bytes, int]])
        ]

    def height(self) -> int:
        row = self.db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def block(self, height: int) -> tuple[Block, Commit] | None:
        row = self.db.execute(
            "SELECT block, seen_commit FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        if row is None:
            return None
        return codec.decode(bytes(row[0]), Block, 1 << 26), codec.decode(bytes(row[1]), Commit)

    def blocks(self, from_height: int, count: int) -> list[tuple[Block, Commit]]:
        rows = self.db.execute(
            "SELECT block, seen_commit FROM blocks WHERE height >= ? ORDER BY height LIMIT ?",
            (from_height, count),
        ).fetchall()
        return [
            (codec.decode(bytes(b), Block, 1 << 26), codec.decode(bytes(c), Commit))
            for b, c in rows
        ]

    def block_info(self, height: int) -> tuple[bytes, bytes] | None:
        """(block hash, app hash after it)."""
        row = self.db.execute(
            "SELECT hash, app_hash FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        return (bytes(row[0]), bytes(row[1])) if row else None

    def receipts(self, height: int) -> list[Receipt]:
        rows = self.db.execute(
            "SELECT receipt FROM receipts WHERE height = ? ORDER BY idx", (height,)
        ).fetchall()
        return [codec.decode(bytes(r[0]), Receipt) for r in rows]

    def tx_location(self, tx_hash: bytes) -> tuple[int, int, Receipt] | None:
        row = self.db.execute(
            "SELECT height, idx, receipt FROM receipts WHERE tx_hash = ? ORDER BY height LIMIT 1",
            (tx_hash,),
        ).fetchone()
        if row is None:
            return None
        return int(row[0]), int(row[1]), codec.decode(bytes(row[2]), Receipt)

    # ------------------------------------------------------------------ restore
    def state_records(self) -> Iterator[tuple[bytes, bytes]]:
        for k, v in self.db.execute("SELECT key, value FROM state ORDER BY key"):
            yield bytes(k), bytes(v)

    def node_priorities(self) -> list[tuple[bytes, int]] | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'node'").fetchone()
        if row is None:
            return None
        meta = codec.decode(bytes(row[0]), _NodeMeta)
        return [(bytes(a), int(p)) for a, p in meta.priorities]

    def has_state(self) -> bool:
        return self.db.execute("SELECT 1 FROM state LIMIT 1").fetchone() is not None

    def stats(self) -> dict[str, Any]:
        return {
            "height": self.height(),
            "state_records": self.db.execute("SELECT COUNT(*) FROM state").fetchone()[0],
        }

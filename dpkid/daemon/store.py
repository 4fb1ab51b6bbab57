"""Crash-safe storage: SQLite in WAL mode, behind a small interface.

One SQLite transaction per decided block writes the block, its commit, its
receipts, the state records the block changed, and the node's consensus
bookkeeping, so after ``kill -9`` the store holds either all of a block or
none of it. The double-sign guard is written (and fsynced) on its own before
any vote it guards leaves the process.

A node must never run on a damaged store: opening one checks it first
(``Store.check``), and every SQLite or decode failure on the start-up path or
in ``save_block`` becomes a :class:`StoreError` whose message is one line
naming the file and what to do (:class:`StoreCorrupt` for damage).
"""

from __future__ import annotations

import os
import shlex
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

import msgspec

from dpkid.core import codec
from dpkid.core.consensus.engine import SignState
from dpkid.core.consensus.messages import Block, Commit, commit_hash, evidence_hash, tx_root
from dpkid.core.node.effects import PersistBlock, ResumePoint
from dpkid.core.state.machine import State
from dpkid.core.types import Receipt

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


# SQLite primary result codes that mean the file's contents are damaged (as
# opposed to busy, locked, read-only, full or unopenable, where the data is fine
# and moving it aside would throw away a good store).
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_MAX_REASON: Final = 200


def _one_line(text: str) -> str:
    """quick_check and some SQLite messages span lines; the refusal must not."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_REASON else flat[: _MAX_REASON - 3] + "..."


class StoreError(RuntimeError):
    """The store cannot be used. ``str()`` is one line naming the file."""


class StoreCorrupt(StoreError):
    """The store's contents are damaged; the node must not run on it.

    The recovery is to move the data directory aside: the node then syncs the
    chain from its peers again. That is safe for a validator only because its
    double-sign guard is kept outside ``data/`` (daemon/signstate.py).
    """

    def __init__(self, path: Path, reason: str) -> None:
        # Absolute, so the printed command works from wherever it is pasted.
        self.path = path = path.absolute()
        self.reason = _one_line(reason)
        data = path.parent
        super().__init__(
            f"store {path} is damaged ({self.reason}); move it aside and restart to resync"
            f" from peers: mv {shlex.quote(str(data))} {shlex.quote(str(data) + '.bad')}"
        )


def _disk_hint(path: Path) -> str:
    """What an operator should look at first when SQLite cannot write: the two
    causes a file system can tell us about directly."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return ""
    if st.f_flag & os.ST_RDONLY:
        return f"the data directory {path.parent} is on a read-only file system"
    if st.f_bavail == 0:
        return f"the data directory {path.parent} has no free space"
    return ""


def as_store_error(path: Path, doing: str, exc: BaseException) -> StoreError:
    """The one-line StoreError for a failure while ``doing`` something with ``path``."""
    if isinstance(exc, StoreError):
        return exc
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return StoreCorrupt(path, reason)
        hint = _disk_hint(path)
        if hint:
            return StoreError(
                f"store {path.absolute()}: {doing} failed ({_one_line(reason)}): {hint}; the"
                " data may be intact, so do not delete it: fix that, then restart"
            )
        return StoreError(
            f"store {path.absolute()}: {doing} failed ({_one_line(reason)}); the data may be"
            " intact, so do not delete it: check that no other dpkid uses this home, the file's"
            " permissions and free disk space, then restart"
        )
    # Decode errors (codec.DecodeError is a ValueError) and records that do not fit
    # together: bytes SQLite returned intact but that are not what we wrote.
    return StoreCorrupt(path, f"{doing}: {reason}")


class _NodeMeta(msgspec.Struct, frozen=True, array_like=True):
    priorities: list[tuple[bytes, int]]


class Store:
    """Blocks, commits, receipts, state, consensus bookkeeping and the sign state."""

    def __init__(self, path: Path) -> None:
        """Open ``path`` and check it (see :meth:`check`); raises :class:`StoreError`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._guard("opening"):
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            with self._guard("opening"):
                # Pages first: writing the journal mode or the schema into a
                # damaged file could make it worse.
                self._quick_check()
                self._open()
                self._check_blocks()
        except BaseException:
            self.db.close()
            raise

    def _open(self) -> None:
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we act on it (sign state, blocks).
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            if self.db.execute("SELECT 1 FROM blocks LIMIT 1").fetchone() or self.has_state():
                raise StoreCorrupt(self.path, "it holds blocks but no schema version")
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION).encode(),)
            )
            return
        try:
            version = int(bytes(row[0]))
        except (TypeError, ValueError):
            raise StoreCorrupt(self.path, f"schema version {bytes(row[0])!r}") from None
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema {version}, this dpkid reads {SCHEMA_VERSION}:"
                " run the dpkid that wrote it, or move it aside and resync"
            )

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _guard(self, doing: str, reading: bool = True) -> Iterator[None]:
        """Any SQLite failure inside, and when ``reading`` any decode failure,
        becomes a one-line StoreError. (Writes encode our own objects: an error
        there is a bug, not damage, and keeps its traceback.)"""
        errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        if reading:
            errors = (sqlite3.Error, ValueError, KeyError, TypeError, OverflowError)
        try:
            yield
        except errors as exc:
            raise as_store_error(self.path, doing, exc) from exc

    # ------------------------------------------------------------------ integrity
    def _quick_check(self) -> None:
        # quick_check reads every page once (O(size of the file), no index
        # cross-checks); (1) stops at the first problem, which is all we report.
        rows = self.db.execute("PRAGMA quick_check(1)").fetchall()
        if [tuple(r) for r in rows] != [("ok",)]:
            raise StoreCorrupt(self.path, "quick_check: " + "; ".join(str(r[0]) for r in rows))

    def check(self) -> None:
        """Refuse a damaged store with :class:`StoreCorrupt`.

        SQLite's page check does not look inside the blobs, so the latest block,
        which the node resumes from, is also decoded, rehashed and matched
        against its header, its commit and the block before it, and the
        bookkeeping the node resumes with must decode. The state records are
        checked against the block's app hash in :meth:`resume_point`.
        """
        with self._guard("checking"):
            self._quick_check()
            self._check_blocks()

    def _check_blocks(self) -> None:
        h = self.height()
        if h > 0:
            self._check_latest(h)

    def _check_latest(self, h: int) -> tuple[Block, Commit, bytes]:
        row = self.db.execute(
            "SELECT hash, block, seen_commit, app_hash FROM blocks WHERE height = ?", (h,)
        ).fetchone()
        if row is None:
            raise StoreCorrupt(self.path, f"block {h} is missing")
        stored_hash, app_hash = bytes(row[0]), bytes(row[3])
        try:
            block = codec.decode(bytes(row[1]), Block, 1 << 26)
            commit = codec.decode(bytes(row[2]), Commit)
        except codec.DecodeError as exc:
            raise StoreCorrupt(self.path, f"block {h} does not decode: {exc}") from None
        hd = block.header

        def bad(why: str) -> StoreCorrupt:
            return StoreCorrupt(self.path, f"block {h}: {why}")

        if hd.height != h:
            raise bad(f"it says it is block {hd.height}")
        if block.hash != stored_hash:
            raise bad("its hash does not match the stored hash")
        # The header hash covers the body only through these roots.
        if hd.tx_root != tx_root(block.txs):
            raise bad("its transactions do not match the header's tx_root")
        if hd.evidence_hash != evidence_hash(block.evidence):
            raise bad("its evidence does not match the header's evidence_hash")
        if hd.last_commit_hash != commit_hash(block.last_commit):
            raise bad("its last commit does not match the header's last_commit_hash")
        if commit.height != h or commit.block_hash != stored_hash:
            raise bad("its stored commit is for another block")
        prev = self.block_info(h - 1) if h > 1 else None
        if prev is not None and (hd.prev_block_hash, hd.app_hash) != prev:
            raise bad(f"it does not follow block {h - 1}")
        if self.node_priorities() is None:
            raise StoreCorrupt(self.path, "the proposer priorities are missing")
        if self.valset_at(h + 1) is None:
            raise StoreCorrupt(self.path, f"no validator set for height {h + 1}")
        return block, commit, app_hash

    def resume_point(self) -> ResumePoint | None:
        """The checked state after the latest block, or None for a store without
        blocks. Decodes every state record (O(state)) and requires their app hash
        to be the one stored with the latest block; raises :class:`StoreCorrupt`."""
        with self._guard("reading the stored state"):
            h = self.height()
            if h == 0:
                return None
            block, commit, app_hash = self._check_latest(h)
            state = State.from_records(self.state_records())
            if state.height != h or state.app_hash != app_hash:
                raise StoreCorrupt(
                    self.path,
                    f"the stored state (height {state.height}) does not match block {h}'s app hash",
                )
            prios = self.node_priorities()
            assert prios is not None  # _check_latest requires them
            return ResumePoint(state, block, commit, prios)

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
        # A failure here means the node has applied a block it cannot store:
        # the caller must stop (StoreError), never carry on ahead of its store.
        with self._guard(f"storing block {h}", reading=False), self._transaction() as cur:
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

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some errors (full, I/O,
            # corrupt); a second ROLLBACK would fail and hide the real error.
            if self.db.in_transaction:
                with suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
            raise

    def save_genesis_state(self, state: State) -> None:
        with self._guard("storing the genesis state", reading=False), self._transaction() as cur:
            cur.execute("DELETE FROM state")
            cur.executemany(
                "INSERT INTO state(key, value) VALUES (?, ?)", list(state.encoded_records())
            )

    def save_valset(self, height: int, vals: list[tuple[bytes, int]]) -> None:
        with self._guard("storing a validator set", reading=False):
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
        with self._guard("reading the height"):
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
        with self._guard("reading the state"):
            return self.db.execute("SELECT 1 FROM state LIMIT 1").fetchone() is not None

    def stats(self) -> dict[str, Any]:
        return {
            "height": self.height(),
            "state_records": self.db.execute("SELECT COUNT(*) FROM state").fetchone()[0],
        }

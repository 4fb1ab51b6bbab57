"""The ACME server's own records (SQLite): accounts, orders, authorizations
and the certificates it fetched. The ledger stays the authority for every
status; these rows only map ACME's URLs and keys onto ledger ids."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    thumbprint TEXT UNIQUE NOT NULL,
    jwk TEXT NOT NULL,
    status TEXT NOT NULL,
    contact TEXT NOT NULL,
    grant_id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    owner_pubkey TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS authzs (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    wildcard INTEGER NOT NULL,
    tokens TEXT NOT NULL,
    ledger_id TEXT NOT NULL,
    method TEXT NOT NULL,
    tx_hash TEXT NOT NULL,
    deactivated INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS authzs_by_name ON authzs (account_id, name);
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    names TEXT NOT NULL,
    authz_ids TEXT NOT NULL,
    replaces TEXT NOT NULL,
    tx_hash TEXT NOT NULL,
    app_id TEXT NOT NULL,
    error TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_account ON orders (account_id, created_ms);
CREATE TABLE IF NOT EXISTS certs (
    serial TEXT PRIMARY KEY,
    cert_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    order_id TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Account:
    id: str
    thumbprint: str
    jwk: dict[str, Any]
    status: str
    contact: list[str]
    grant_id: str
    owner: str
    owner_pubkey: str
    created_ms: int


@dataclass(frozen=True)
class Authz:
    id: str
    account_id: str
    name: str  # as the ledger names it: "*.example.com" for a wildcard
    wildcard: bool
    tokens: dict[str, str]  # challenge type -> token
    ledger_id: str  # "" until a challenge is answered
    method: str
    tx_hash: str  # the authz_request
    deactivated: bool
    created_ms: int


@dataclass(frozen=True)
class Order:
    id: str
    account_id: str
    names: list[str]
    authz_ids: list[str]
    replaces: str  # cert id the order renews (RFC 9773), or ""
    tx_hash: str  # the cert_apply/cert_renew, once finalized
    app_id: str
    error: dict[str, Any] | None
    created_ms: int
    expires_ms: int


class Store:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- accounts
    def add_account(self, a: Account) -> None:
        self.db.execute(
            "INSERT INTO accounts VALUES (?,?,?,?,?,?,?,?,?)",
            (
                a.id,
                a.thumbprint,
                json.dumps(a.jwk, sort_keys=True),
                a.status,
                json.dumps(a.contact),
                a.grant_id,
                a.owner,
                a.owner_pubkey,
                a.created_ms,
            ),
        )

    def _account(self, row: Any) -> Account | None:
        if row is None:
            return None
        return Account(row[0], row[1], json.loads(row[2]), row[3], json.loads(row[4]), *row[5:])

    def account(self, account_id: str) -> Account | None:
        cur = self.db.execute("SELECT * FROM accounts WHERE id = ?", (account_id,))
        return self._account(cur.fetchone())

    def account_by_thumbprint(self, thumbprint: str) -> Account | None:
        cur = self.db.execute("SELECT * FROM accounts WHERE thumbprint = ?", (thumbprint,))
        return self._account(cur.fetchone())

    def account_by_grant(self, grant_id: str) -> Account | None:
        cur = self.db.execute("SELECT * FROM accounts WHERE grant_id = ?", (grant_id,))
        return self._account(cur.fetchone())

    def accounts_of_owner(self, owner: str) -> list[Account]:
        cur = self.db.execute(
            "SELECT * FROM accounts WHERE owner = ? AND status = 'valid' ORDER BY created_ms",
            (owner,),
        )
        return [a for a in map(self._account, cur.fetchall()) if a is not None]

    def update_account(self, account_id: str, **fields: Any) -> None:
        for k, v in fields.items():
            if k not in ("status", "contact", "jwk", "thumbprint"):
                raise ValueError(k)
            val = json.dumps(v, sort_keys=True) if k in ("contact", "jwk") else v
            self.db.execute(f"UPDATE accounts SET {k} = ? WHERE id = ?", (val, account_id))

    # -- authorizations
    def add_authz(self, a: Authz) -> None:
        self.db.execute(
            "INSERT INTO authzs VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                a.id,
                a.account_id,
                a.name,
                int(a.wildcard),
                json.dumps(a.tokens, sort_keys=True),
                a.ledger_id,
                a.method,
                a.tx_hash,
                int(a.deactivated),
                a.created_ms,
            ),
        )

    def _authz(self, row: Any) -> Authz | None:
        if row is None:
            return None
        return Authz(
            row[0],
            row[1],
            row[2],
            bool(row[3]),
            json.loads(row[4]),
            row[5],
            row[6],
            row[7],
            bool(row[8]),
            row[9],
        )

    def authz(self, authz_id: str) -> Authz | None:
        return self._authz(
            self.db.execute("SELECT * FROM authzs WHERE id = ?", (authz_id,)).fetchone()
        )

    def answered_authzs(self, account_id: str, name: str, limit: int = 20) -> list[Authz]:
        """The account's answered authorizations of ``name``, newest first."""
        cur = self.db.execute(
            "SELECT * FROM authzs WHERE account_id = ? AND name = ? AND ledger_id != ''"
            " AND deactivated = 0 ORDER BY created_ms DESC LIMIT ?",
            (account_id, name, limit),
        )
        return [a for a in map(self._authz, cur.fetchall()) if a is not None]

    def set_authz_answer(self, authz_id: str, ledger_id: str, method: str, tx_hash: str) -> bool:
        """Record the ledger authorization a challenge answer asked for, once."""
        cur = self.db.execute(
            "UPDATE authzs SET ledger_id = ?, method = ?, tx_hash = ?"
            " WHERE id = ? AND ledger_id = ''",
            (ledger_id, method, tx_hash, authz_id),
        )
        return cur.rowcount == 1

    def deactivate_authz(self, authz_id: str) -> None:
        self.db.execute("UPDATE authzs SET deactivated = 1 WHERE id = ?", (authz_id,))

    # -- orders
    def add_order(self, o: Order) -> None:
        self.db.execute(
            "INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                o.id,
                o.account_id,
                json.dumps(o.names),
                json.dumps(o.authz_ids),
                o.replaces,
                o.tx_hash,
                o.app_id,
                json.dumps(o.error) if o.error else "",
                o.created_ms,
                o.expires_ms,
            ),
        )

    def _order(self, row: Any) -> Order | None:
        if row is None:
            return None
        return Order(
            row[0],
            row[1],
            json.loads(row[2]),
            json.loads(row[3]),
            row[4],
            row[5],
            row[6],
            json.loads(row[7]) if row[7] else None,
            row[8],
            row[9],
        )

    def order(self, order_id: str) -> Order | None:
        return self._order(
            self.db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        )

    def orders_of(self, account_id: str, limit: int) -> list[str]:
        cur = self.db.execute(
            "SELECT id FROM orders WHERE account_id = ? ORDER BY created_ms DESC LIMIT ?",
            (account_id, limit),
        )
        return [r[0] for r in cur.fetchall()]

    def set_order_finalized(self, order_id: str, tx_hash: str, app_id: str) -> bool:
        cur = self.db.execute(
            "UPDATE orders SET tx_hash = ?, app_id = ? WHERE id = ? AND tx_hash = ''",
            (tx_hash, app_id, order_id),
        )
        return cur.rowcount == 1

    def set_order_error(self, order_id: str, error: dict[str, Any]) -> None:
        self.db.execute("UPDATE orders SET error = ? WHERE id = ?", (json.dumps(error), order_id))

    # -- certificates
    def add_cert(self, serial: str, cert_id: str, account_id: str, order_id: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO certs VALUES (?,?,?,?)", (serial, cert_id, account_id, order_id)
        )

    def cert_by_serial(self, serial: str) -> tuple[str, str, str] | None:
        row = self.db.execute(
            "SELECT cert_id, account_id, order_id FROM certs WHERE serial = ?", (serial,)
        ).fetchone()
        return (row[0], row[1], row[2]) if row else None

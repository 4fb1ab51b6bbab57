"""Clients for a node's JSON-RPC socket: a blocking one for scripts and the
CLI, and a trio one for async programs. Both speak newline-delimited JSON-RPC
2.0 (protocol/RPC.md).

Low level: ``call_sync`` and ``RpcClient``. High level, with typed helpers,
wait loops and transaction building: ``SyncClient`` and ``NodeClient``.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpkid.core.crypto import SigningKey
from dpkid.core.types import TxBody, encode_tx, sign_tx

if TYPE_CHECKING:  # trio is imported where used: the blocking CLI never needs it
    import trio

SOCKET_NAME = "dpkid.sock"
MAX_REPLY_BYTES = 64 * 1024 * 1024


class RpcClientError(Exception):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.error = error
        self.code: int = int(error.get("code", 0))
        self.message: str = str(error.get("message", ""))
        self.data: Any = error.get("data")


def socket_for(home: Path, socket_path: str | None = None) -> Path:
    return Path(socket_path) if socket_path else home / SOCKET_NAME


def call_sync(
    home: Path,
    method: str,
    params: Any = None,
    socket_path: str | None = None,
    timeout_s: float = 30.0,
) -> Any:
    path = socket_for(home, socket_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        req = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": method,
            "params": params if params is not None else {},
        }
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("node closed the connection")
            buf += chunk
            if len(buf) > MAX_REPLY_BYTES:
                raise OSError("reply too large")
    resp = json.loads(buf[: buf.index(b"\n")])
    if "error" in resp:
        raise RpcClientError(resp["error"])
    return resp["result"]


class RpcClient:
    """An async (trio) client on one connection. Notifications from
    subscriptions are queued and read with ``next_notification``."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        import trio

        self._stream = stream
        self._buf = bytearray()
        self._ids = itertools.count(1)
        self._lock = trio.Lock()
        self._pending: dict[int, Any] = {}
        self.notifications: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, home: Path | None = None, socket_path: str | None = None) -> RpcClient:
        import trio

        path = socket_for(home or Path("."), socket_path)
        stream = await trio.open_unix_socket(str(path))
        return cls(stream)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def _read_msg(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise OSError("node closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_REPLY_BYTES:
                raise OSError("reply too large")
        i = self._buf.index(b"\n")
        line = bytes(self._buf[:i])
        del self._buf[: i + 1]
        msg: dict[str, Any] = json.loads(line)
        return msg

    async def call(self, method: str, params: Any = None) -> Any:
        async with self._lock:
            rid = next(self._ids)
            req = {
                "jsonrpc": "2.0",
                "id": rid,
                "method": method,
                "params": params if params is not None else {},
            }
            await self._stream.send_all(json.dumps(req).encode() + b"\n")
            while True:
                msg = await self._read_msg()
                if "id" not in msg and "method" in msg:
                    if len(self.notifications) < 10_000:
                        self.notifications.append(msg)
                    continue
                if msg.get("id") != rid:
                    continue
                if "error" in msg:
                    raise RpcClientError(msg["error"])
                return msg["result"]

    async def next_notification(self) -> dict[str, Any]:
        if self.notifications:
            return self.notifications.pop(0)
        async with self._lock:
            while True:
                msg = await self._read_msg()
                if "id" not in msg and "method" in msg:
                    return msg


# ====================================================================== typed helpers
#
# ``SyncClient`` (blocking, one short connection per call through ``call_sync``)
# and ``NodeClient`` (trio, one connection) offer the same helpers. Results are
# the JSON-RPC result objects of protocol/RPC.md, unwrapped where a method
# returns a single record (``application``, ``cert``, ``certs_by_domain``,
# ``endorsers``).

DEFAULT_POLL_S = 0.25
# A submitted transaction that is neither committed nor in the node's mempool
# for this long was dropped (replaced nonce, evicted) and will never commit.
TX_GONE_GRACE_S = 5.0


class NodeUnreachable(OSError):
    """The node's socket could not be reached or the connection broke."""

    def __init__(self, path: Path, reason: object) -> None:
        super().__init__(f"cannot reach the node at {path}: {reason}")
        self.path = path


class ClientTimeout(TimeoutError):
    """A wait helper's deadline passed before the condition held."""


class TxDropped(RuntimeError):
    """A submitted transaction left the mempool without being committed."""


def _hex_arg(value: bytes | str, length: int, what: str) -> str:
    """Bytes or hex text of an exact byte length, as lowercase hex."""
    if isinstance(value, bytes):
        raw = value
    else:
        try:
            raw = bytes.fromhex(value.strip())
        except ValueError:
            raise ValueError(f"{what} must be hex, got {value[:80]!r}") from None
    if len(raw) != length:
        raise ValueError(f"{what} must be {length} bytes ({2 * length} hex digits), got {len(raw)}")
    return raw.hex()


def app_id_for_tx(tx_hash: bytes | str) -> str:
    """The application id a CertApply/CertRenew transaction creates (SPEC: sha256(APP_TAG || h))."""
    from dpkid.core.crypto import sha256
    from dpkid.core.state.machine import APP_TAG

    return sha256(APP_TAG + bytes.fromhex(_hex_arg(tx_hash, 32, "tx hash"))).hex()


def cert_id_for_app(app_id: bytes | str) -> str:
    from dpkid.core.state.machine import cert_id_for

    return cert_id_for(bytes.fromhex(_hex_arg(app_id, 32, "application id"))).hex()


def encode_signed_tx(key: SigningKey, chain_id: str, nonce: int, fee: int, body: TxBody) -> bytes:
    return encode_tx(sign_tx(key, chain_id, nonce, fee, body))


def _proof_params(
    cert_id: bytes | str | None, domain: str | None, address: bytes | str | None
) -> dict[str, Any]:
    given = [x is not None for x in (cert_id, domain, address)]
    if sum(given) != 1:
        raise ValueError("give exactly one of cert_id, domain, address")
    if cert_id is not None:
        return {"cert_id": _hex_arg(cert_id, 32, "cert_id")}
    if domain is not None:
        return {"domain": domain}
    assert address is not None
    return {"address": _hex_arg(address, 20, "address")}


def _tx_gone(res: dict[str, Any]) -> bool:
    return not res.get("committed") and not res.get("pending")


class SyncClient:
    """Blocking client for scripts and the CLI, built on :func:`call_sync`.

    Connection failures raise :class:`NodeUnreachable` (an OSError); JSON-RPC
    errors raise :class:`RpcClientError`.
    """

    def __init__(
        self, home: Path | None = None, socket_path: str | None = None, timeout_s: float = 30.0
    ) -> None:
        self.home = home or Path(".")
        self.socket = socket_for(self.home, socket_path)
        self.timeout_s = timeout_s
        self._chain_id: str | None = None

    def call(self, method: str, params: Any = None) -> Any:
        try:
            return call_sync(
                self.home, method, params, socket_path=str(self.socket), timeout_s=self.timeout_s
            )
        except RpcClientError:
            raise
        except OSError as exc:
            raise NodeUnreachable(self.socket, exc.strerror or exc) from None
        except ValueError as exc:  # a reply that is not JSON
            raise NodeUnreachable(self.socket, f"bad reply: {exc}") from None

    # ------------------------------------------------------------------ reads
    def status(self) -> dict[str, Any]:
        res: dict[str, Any] = self.call("status")
        self._chain_id = res["chain_id"]
        return res

    def chain_id(self) -> str:
        if self._chain_id is None:
            self.status()
        assert self._chain_id is not None
        return self._chain_id

    def account(self, address: bytes | str) -> dict[str, Any]:
        res: dict[str, Any] = self.call(
            "account_get", {"address": _hex_arg(address, 20, "address")}
        )
        return res

    def block(self, height: int | None = None) -> dict[str, Any]:
        res: dict[str, Any] = self.call("block_get", {} if height is None else {"height": height})
        return res

    def tx(self, tx_hash: bytes | str) -> dict[str, Any]:
        res: dict[str, Any] = self.call("tx_get", {"hash": _hex_arg(tx_hash, 32, "tx hash")})
        return res

    def application(self, app_id: bytes | str) -> dict[str, Any]:
        res: dict[str, Any] = self.call(
            "application_get", {"app_id": _hex_arg(app_id, 32, "application id")}
        )["application"]
        return res

    def cert(self, cert_id: bytes | str) -> dict[str, Any]:
        res: dict[str, Any] = self.call("cert_get", {"cert_id": _hex_arg(cert_id, 32, "cert id")})[
            "certificate"
        ]
        return res

    def certs_by_domain(self, domain: str) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.call("certs_by_domain", {"domain": domain})["certificates"]
        return res

    def validators(self) -> dict[str, Any]:
        res: dict[str, Any] = self.call("validators_list")
        return res

    def endorsers(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.call("endorsers_list")["endorsers"]
        return res

    def proof(
        self,
        cert_id: bytes | str | None = None,
        domain: str | None = None,
        address: bytes | str | None = None,
    ) -> dict[str, Any]:
        res: dict[str, Any] = self.call("cert_proof", _proof_params(cert_id, domain, address))
        return res

    def log_checkpoint(self) -> dict[str, Any]:
        res: dict[str, Any] = self.call("log_checkpoint")
        return res

    # ------------------------------------------------------------------ writes
    def submit(self, raw: bytes) -> str:
        """Submit a signed transaction; returns its hash (hex). Rejections raise."""
        res: dict[str, Any] = self.call("tx_submit", {"tx": raw.hex()})
        return str(res["hash"])

    def build_and_submit(self, key: SigningKey, body: TxBody, fee: int | None = None) -> str:
        return build_and_submit(self, key, body, fee)

    # ------------------------------------------------------------------ waits
    def wait_tx(
        self, tx_hash: bytes | str, timeout_s: float = 60.0, interval_s: float = DEFAULT_POLL_S
    ) -> dict[str, Any]:
        """Poll ``tx_get`` until the transaction is committed; returns that result."""
        deadline = time.monotonic() + timeout_s
        gone_since: float | None = None
        while True:
            res = self.tx(tx_hash)
            if res.get("committed"):
                return res
            now = time.monotonic()
            if _tx_gone(res):
                gone_since = now if gone_since is None else gone_since
                if now - gone_since >= TX_GONE_GRACE_S:
                    raise TxDropped(f"transaction {res['hash']} left the mempool uncommitted")
            else:
                gone_since = None
            if now >= deadline:
                raise ClientTimeout(f"transaction not committed after {timeout_s:g} s")
            time.sleep(min(interval_s, max(0.0, deadline - now)))

    def wait_application(
        self,
        app_id: bytes | str,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout_s: float = 600.0,
        interval_s: float = DEFAULT_POLL_S,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll ``application_get`` until ``until(app)`` (default: no longer pending).

        ``on_update`` sees the first view and every view that differs from the one before.
        """
        cond = until or (lambda app: app["status"] != "pending")
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] | None = None
        while True:
            app = self.application(app_id)
            if on_update is not None and app != last:
                on_update(app)
            last = app
            if cond(app):
                return app
            now = time.monotonic()
            if now >= deadline:
                raise ClientTimeout(f"application still {app['status']} after {timeout_s:g} s")
            time.sleep(min(interval_s, max(0.0, deadline - now)))


def build_and_submit(
    client: SyncClient, key: SigningKey, body: TxBody, fee: int | None = None
) -> str:
    """Sign ``body`` with the account's next nonce (committed + pending) and the
    node's chain id, submit it, and return the transaction hash (hex)."""
    nonce = int(client.account(key.address)["next_nonce"])
    raw = encode_signed_tx(key, client.chain_id(), nonce, _fee(fee), body)
    return client.submit(raw)


async def build_and_submit_async(
    client: NodeClient, key: SigningKey, body: TxBody, fee: int | None = None
) -> str:
    """The trio twin of :func:`build_and_submit`."""
    nonce = int((await client.account(key.address))["next_nonce"])
    raw = encode_signed_tx(key, await client.chain_id(), nonce, _fee(fee), body)
    return await client.submit(raw)


def _fee(fee: int | None) -> int:
    from dpkid.core.types import Policy

    return Policy().min_tx_fee if fee is None else fee


class NodeClient:
    """Async (trio) typed client over one :class:`RpcClient` connection.

    Use as ``async with await NodeClient.connect(home) as c: ...``.
    """

    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc
        self._chain_id: str | None = None

    @classmethod
    async def connect(cls, home: Path | None = None, socket_path: str | None = None) -> NodeClient:
        return cls(await RpcClient.connect(home, socket_path))

    async def aclose(self) -> None:
        await self.rpc.aclose()

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def call(self, method: str, params: Any = None) -> Any:
        return await self.rpc.call(method, params)

    # ------------------------------------------------------------------ reads
    async def status(self) -> dict[str, Any]:
        res: dict[str, Any] = await self.call("status")
        self._chain_id = res["chain_id"]
        return res

    async def chain_id(self) -> str:
        if self._chain_id is None:
            await self.status()
        assert self._chain_id is not None
        return self._chain_id

    async def account(self, address: bytes | str) -> dict[str, Any]:
        res: dict[str, Any] = await self.call(
            "account_get", {"address": _hex_arg(address, 20, "address")}
        )
        return res

    async def block(self, height: int | None = None) -> dict[str, Any]:
        res: dict[str, Any] = await self.call(
            "block_get", {} if height is None else {"height": height}
        )
        return res

    async def tx(self, tx_hash: bytes | str) -> dict[str, Any]:
        res: dict[str, Any] = await self.call("tx_get", {"hash": _hex_arg(tx_hash, 32, "tx hash")})
        return res

    async def application(self, app_id: bytes | str) -> dict[str, Any]:
        res: dict[str, Any] = (
            await self.call("application_get", {"app_id": _hex_arg(app_id, 32, "application id")})
        )["application"]
        return res

    async def cert(self, cert_id: bytes | str) -> dict[str, Any]:
        res: dict[str, Any] = (
            await self.call("cert_get", {"cert_id": _hex_arg(cert_id, 32, "cert id")})
        )["certificate"]
        return res

    async def certs_by_domain(self, domain: str) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = (await self.call("certs_by_domain", {"domain": domain}))[
            "certificates"
        ]
        return res

    async def validators(self) -> dict[str, Any]:
        res: dict[str, Any] = await self.call("validators_list")
        return res

    async def endorsers(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = (await self.call("endorsers_list"))["endorsers"]
        return res

    async def proof(
        self,
        cert_id: bytes | str | None = None,
        domain: str | None = None,
        address: bytes | str | None = None,
    ) -> dict[str, Any]:
        res: dict[str, Any] = await self.call("cert_proof", _proof_params(cert_id, domain, address))
        return res

    async def log_checkpoint(self) -> dict[str, Any]:
        res: dict[str, Any] = await self.call("log_checkpoint")
        return res

    # ------------------------------------------------------------------ writes
    async def submit(self, raw: bytes) -> str:
        res: dict[str, Any] = await self.call("tx_submit", {"tx": raw.hex()})
        return str(res["hash"])

    async def build_and_submit(self, key: SigningKey, body: TxBody, fee: int | None = None) -> str:
        return await build_and_submit_async(self, key, body, fee)

    # ------------------------------------------------------------------ waits
    async def wait_tx(
        self, tx_hash: bytes | str, timeout_s: float = 60.0, interval_s: float = DEFAULT_POLL_S
    ) -> dict[str, Any]:
        """Poll ``tx_get`` until the transaction is committed; returns that result."""
        import trio

        deadline = trio.current_time() + timeout_s
        gone_since: float | None = None
        while True:
            res = await self.tx(tx_hash)
            if res.get("committed"):
                return res
            now = trio.current_time()
            if _tx_gone(res):
                gone_since = now if gone_since is None else gone_since
                if now - gone_since >= TX_GONE_GRACE_S:
                    raise TxDropped(f"transaction {res['hash']} left the mempool uncommitted")
            else:
                gone_since = None
            if now >= deadline:
                raise ClientTimeout(f"transaction not committed after {timeout_s:g} s")
            await trio.sleep(min(interval_s, max(0.0, deadline - now)))

    async def wait_application(
        self,
        app_id: bytes | str,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout_s: float = 600.0,
        interval_s: float = DEFAULT_POLL_S,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll ``application_get`` until ``until(app)`` (default: no longer pending)."""
        import trio

        cond = until or (lambda app: app["status"] != "pending")
        deadline = trio.current_time() + timeout_s
        last: dict[str, Any] | None = None
        while True:
            app = await self.application(app_id)
            if on_update is not None and app != last:
                on_update(app)
            last = app
            if cond(app):
                return app
            now = trio.current_time()
            if now >= deadline:
                raise ClientTimeout(f"application still {app['status']} after {timeout_s:g} s")
            await trio.sleep(min(interval_s, max(0.0, deadline - now)))


def verify(
    cert: bytes | str | Path,
    trust: Path | str,
    home: Path | str | None = None,
    socket_path: str | None = None,
    max_header_age_s: int = 600,
) -> Any:
    """Verify a certificate (PEM/DER bytes or a file path) against the ledger,
    trusting only the genesis at ``trust``; the node is asked, never believed.

    Returns a ``dpkid.client.lightclient.CertVerdict``; raises ``VerifyError`` when a
    node's answers do not verify. Same checks as ``dpkid verify``.
    """
    from dpkid.client.verify import parse_pem, verify_certificate
    from dpkid.core.genesis import genesis_from_json

    data = cert if isinstance(cert, bytes) else Path(cert).read_bytes()
    genesis = genesis_from_json(Path(trust).read_text())
    h = Path(home) if home is not None else Path(".")

    def rpc(method: str, params: dict[str, Any]) -> Any:
        return call_sync(h, method, params, socket_path=socket_path)

    return verify_certificate(rpc, genesis, parse_pem(data), max_header_age_s=max_header_age_s)

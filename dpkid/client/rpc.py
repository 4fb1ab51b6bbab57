"""Clients for a node's JSON-RPC socket: a blocking one for scripts and the
CLI, and a trio one for async programs. Both speak newline-delimited JSON-RPC
2.0 (protocol/RPC.md).

The protocol is written once, without I/O (h11 style): :class:`JsonRpcFraming`
turns requests into bytes and received bytes into messages, and
:class:`ClientProtocol` holds the typed API (which method and parameters each
helper sends, how each reply is read, the wait loops, transaction building) as
generators that yield the I/O they need (:class:`Call`, :class:`Sleep`,
:data:`CLOCK`). The clients only carry those effects out.

Low level: ``call_sync`` and ``RpcClient``. High level, with typed helpers,
wait loops and transaction building: ``SyncClient`` and ``NodeClient``.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Self,
    TypeAlias,
    TypeVar,
    overload,
)

from dpkid.core.crypto import SigningKey
from dpkid.core.types import TxBody, encode_tx, sign_tx

if TYPE_CHECKING:  # trio is imported where used: the blocking CLI never needs it
    import trio

SOCKET_NAME = "dpkid.sock"
MAX_REPLY_BYTES = 64 * 1024 * 1024
RECV_BYTES = 65536

T = TypeVar("T")
P = ParamSpec("P")


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


# ====================================================================== framing (sans I/O)


class JsonRpcFraming:
    """One connection's newline-delimited JSON-RPC 2.0, without the socket:
    :meth:`request` gives the bytes to send, :meth:`receive_data` takes what
    arrived, :meth:`next_message` hands out each complete message."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ids = itertools.count(1)

    def request(self, method: str, params: Any = None) -> tuple[int, bytes]:
        """(request id, the line to send)."""
        rid = next(self._ids)
        req = {
            "jsonrpc": "2.0",
            "id": rid,
            "method": method,
            "params": params if params is not None else {},
        }
        return rid, json.dumps(req).encode() + b"\n"

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the connection; empty means the node closed it."""
        if not data:
            raise OSError("node closed the connection")
        self._buf += data
        if len(self._buf) > MAX_REPLY_BYTES:
            raise OSError("reply too large")

    def next_message(self) -> dict[str, Any] | None:
        """The next complete message, or None until more data arrives."""
        i = self._buf.find(b"\n")
        if i < 0:
            return None
        line = bytes(self._buf[:i])
        del self._buf[: i + 1]
        msg: dict[str, Any] = json.loads(line)
        return msg


def is_notification(msg: dict[str, Any]) -> bool:
    return "id" not in msg and "method" in msg


def reply_result(msg: dict[str, Any]) -> Any:
    """A reply's result; an error reply raises :class:`RpcClientError`."""
    if "error" in msg:
        raise RpcClientError(msg["error"])
    return msg["result"]


def call_sync(
    home: Path,
    method: str,
    params: Any = None,
    socket_path: str | None = None,
    timeout_s: float = 30.0,
) -> Any:
    path = socket_for(home, socket_path)
    conn = JsonRpcFraming()
    _, line = conn.request(method, params)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall(line)
        while (msg := conn.next_message()) is None:
            conn.receive_data(s.recv(RECV_BYTES))
    return reply_result(msg)


class RpcClient:
    """An async (trio) client on one connection. Notifications from
    subscriptions are queued and read with ``next_notification``."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        import trio

        self._stream = stream
        self._conn = JsonRpcFraming()
        self._lock = trio.Lock()
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
        while (msg := self._conn.next_message()) is None:
            self._conn.receive_data(await self._stream.receive_some(RECV_BYTES))
        return msg

    async def call(self, method: str, params: Any = None) -> Any:
        async with self._lock:
            rid, line = self._conn.request(method, params)
            await self._stream.send_all(line)
            while True:
                msg = await self._read_msg()
                if is_notification(msg):
                    if len(self.notifications) < 10_000:
                        self.notifications.append(msg)
                    continue
                if msg.get("id") == rid:
                    return reply_result(msg)

    async def next_notification(self) -> dict[str, Any]:
        if self.notifications:
            return self.notifications.pop(0)
        async with self._lock:
            while True:
                msg = await self._read_msg()
                if is_notification(msg):
                    return msg


# ====================================================================== typed helpers
#
# ``SyncClient`` (blocking, one short connection per call through ``call_sync``)
# and ``NodeClient`` (trio, one connection) offer the same helpers, those of
# ``ClientProtocol``. Results are the JSON-RPC result objects of protocol/RPC.md,
# unwrapped where a method returns a single record (``application``, ``cert``,
# ``certs_by_domain``, ``endorsers``).

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


def _fee(fee: int | None) -> int:
    from dpkid.core.types import Policy

    return Policy().min_tx_fee if fee is None else fee


# ---------------------------------------------------------------------- effects


@dataclass(frozen=True)
class Call:
    """Send one JSON-RPC request; the reply's result is sent back."""

    method: str
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class Sleep:
    """Wait this long; None is sent back."""

    seconds: float


class Clock:
    """Read the transport's monotonic clock; the time (seconds) is sent back."""


CLOCK = Clock()

Effect: TypeAlias = Call | Sleep | Clock
# An operation: yields effects, gets each one's outcome sent back, returns its result.
Op: TypeAlias = Generator[Effect, Any, T]


@dataclass(frozen=True)
class _Done(Generic[T]):
    value: T


def _advance(op: Op[T], outcome: Any) -> Effect | _Done[T]:
    """Resume ``op`` with the outcome of its last effect: its next effect, or its result."""
    try:
        return op.send(outcome)
    except StopIteration as stop:
        return _Done(stop.value)


class ClientProtocol:
    """The node's typed client API, without I/O: each method is an operation
    (see :data:`Op`) that a transport runs. It remembers the chain id."""

    def __init__(self) -> None:
        self._chain_id: str | None = None

    # ------------------------------------------------------------------ reads
    def status(self) -> Op[dict[str, Any]]:
        res: dict[str, Any] = yield Call("status")
        self._chain_id = res["chain_id"]
        return res

    def chain_id(self) -> Op[str]:
        if self._chain_id is None:
            yield from self.status()
        assert self._chain_id is not None
        return self._chain_id

    def account(self, address: bytes | str) -> Op[dict[str, Any]]:
        res: dict[str, Any] = yield Call(
            "account_get", {"address": _hex_arg(address, 20, "address")}
        )
        return res

    def block(self, height: int | None = None) -> Op[dict[str, Any]]:
        res: dict[str, Any] = yield Call("block_get", {} if height is None else {"height": height})
        return res

    def tx(self, tx_hash: bytes | str) -> Op[dict[str, Any]]:
        res: dict[str, Any] = yield Call("tx_get", {"hash": _hex_arg(tx_hash, 32, "tx hash")})
        return res

    def application(self, app_id: bytes | str) -> Op[dict[str, Any]]:
        res: dict[str, Any] = yield Call(
            "application_get", {"app_id": _hex_arg(app_id, 32, "application id")}
        )
        app: dict[str, Any] = res["application"]
        return app

    def cert(self, cert_id: bytes | str) -> Op[dict[str, Any]]:
        res: dict[str, Any] = yield Call("cert_get", {"cert_id": _hex_arg(cert_id, 32, "cert id")})
        cert: dict[str, Any] = res["certificate"]
        return cert

    def certs_by_domain(self, domain: str) -> Op[list[dict[str, Any]]]:
        res: dict[str, Any] = yield Call("certs_by_domain", {"domain": domain})
        certs: list[dict[str, Any]] = res["certificates"]
        return certs

    def validators(self) -> Op[dict[str, Any]]:
        res: dict[str, Any] = yield Call("validators_list")
        return res

    def endorsers(self) -> Op[list[dict[str, Any]]]:
        res: dict[str, Any] = yield Call("endorsers_list")
        endorsers: list[dict[str, Any]] = res["endorsers"]
        return endorsers

    def proof(
        self,
        cert_id: bytes | str | None = None,
        domain: str | None = None,
        address: bytes | str | None = None,
    ) -> Op[dict[str, Any]]:
        res: dict[str, Any] = yield Call("cert_proof", _proof_params(cert_id, domain, address))
        return res

    def log_checkpoint(self) -> Op[dict[str, Any]]:
        res: dict[str, Any] = yield Call("log_checkpoint")
        return res

    # ------------------------------------------------------------------ writes
    def submit(self, raw: bytes) -> Op[str]:
        """Submit a signed transaction; returns its hash (hex). Rejections raise."""
        res: dict[str, Any] = yield Call("tx_submit", {"tx": raw.hex()})
        return str(res["hash"])

    def build_and_submit(self, key: SigningKey, body: TxBody, fee: int | None = None) -> Op[str]:
        """Sign ``body`` with the account's next nonce (committed + pending) and the
        node's chain id, submit it, and return the transaction hash (hex)."""
        nonce = int((yield from self.account(key.address))["next_nonce"])
        raw = encode_signed_tx(key, (yield from self.chain_id()), nonce, _fee(fee), body)
        return (yield from self.submit(raw))

    # ------------------------------------------------------------------ waits
    def wait_tx(
        self, tx_hash: bytes | str, timeout_s: float = 60.0, interval_s: float = DEFAULT_POLL_S
    ) -> Op[dict[str, Any]]:
        """Poll ``tx_get`` until the transaction is committed; returns that result."""
        deadline: float = (yield CLOCK) + timeout_s
        gone_since: float | None = None
        while True:
            res = yield from self.tx(tx_hash)
            if res.get("committed"):
                return res
            now: float = yield CLOCK
            if _tx_gone(res):
                gone_since = now if gone_since is None else gone_since
                if now - gone_since >= TX_GONE_GRACE_S:
                    raise TxDropped(f"transaction {res['hash']} left the mempool uncommitted")
            else:
                gone_since = None
            if now >= deadline:
                raise ClientTimeout(f"transaction not committed after {timeout_s:g} s")
            yield Sleep(min(interval_s, max(0.0, deadline - now)))

    def wait_application(
        self,
        app_id: bytes | str,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout_s: float = 600.0,
        interval_s: float = DEFAULT_POLL_S,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> Op[dict[str, Any]]:
        """Poll ``application_get`` until ``until(app)`` (default: no longer pending).

        ``on_update`` sees the first view and every view that differs from the one before.
        """
        cond = until or (lambda app: app["status"] != "pending")
        deadline: float = (yield CLOCK) + timeout_s
        last: dict[str, Any] | None = None
        while True:
            app = yield from self.application(app_id)
            if on_update is not None and app != last:
                on_update(app)
            last = app
            if cond(app):
                return app
            now: float = yield CLOCK
            if now >= deadline:
                raise ClientTimeout(f"application still {app['status']} after {timeout_s:g} s")
            yield Sleep(min(interval_s, max(0.0, deadline - now)))


# ---------------------------------------------------------------------- the clients


class _Endpoint(Generic[P, T]):
    """A :class:`ClientProtocol` operation as a method of a client: blocking on a
    :class:`SyncClient`, a coroutine on a :class:`NodeClient`."""

    def __init__(self, op: Callable[Concatenate[ClientProtocol, P], Op[T]]) -> None:
        self.op = op
        self.__doc__ = op.__doc__

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, client: SyncClient, owner: type[Any] | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, client: NodeClient, owner: type[Any] | None = None
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(
        self, client: SyncClient | NodeClient | None, owner: type[Any] | None = None
    ) -> Self | Callable[P, T] | Callable[P, Coroutine[Any, Any, T]]:
        if client is None:
            return self
        return client.bind(self.op)


class _ClientApi:
    """The helpers both clients offer, each written once in :class:`ClientProtocol`."""

    protocol: ClientProtocol

    status = _Endpoint(ClientProtocol.status)
    chain_id = _Endpoint(ClientProtocol.chain_id)
    account = _Endpoint(ClientProtocol.account)
    block = _Endpoint(ClientProtocol.block)
    tx = _Endpoint(ClientProtocol.tx)
    application = _Endpoint(ClientProtocol.application)
    cert = _Endpoint(ClientProtocol.cert)
    certs_by_domain = _Endpoint(ClientProtocol.certs_by_domain)
    validators = _Endpoint(ClientProtocol.validators)
    endorsers = _Endpoint(ClientProtocol.endorsers)
    proof = _Endpoint(ClientProtocol.proof)
    log_checkpoint = _Endpoint(ClientProtocol.log_checkpoint)
    submit = _Endpoint(ClientProtocol.submit)
    build_and_submit = _Endpoint(ClientProtocol.build_and_submit)
    wait_tx = _Endpoint(ClientProtocol.wait_tx)
    wait_application = _Endpoint(ClientProtocol.wait_application)


class SyncClient(_ClientApi):
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
        self.protocol = ClientProtocol()

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

    def run(self, op: Op[T]) -> T:
        """Carry out a :class:`ClientProtocol` operation, blocking."""
        step = _advance(op, None)
        while not isinstance(step, _Done):
            step = _advance(op, self._perform(step))
        return step.value

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, Call):
            return self.call(effect.method, effect.params)
        if isinstance(effect, Sleep):
            return time.sleep(effect.seconds)
        return time.monotonic()

    def bind(self, op: Callable[Concatenate[ClientProtocol, P], Op[T]]) -> Callable[P, T]:
        def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.run(op(self.protocol, *args, **kwargs))

        return method


class NodeClient(_ClientApi):
    """Async (trio) typed client over one :class:`RpcClient` connection.

    Use as ``async with await NodeClient.connect(home) as c: ...``.
    """

    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc
        self.protocol = ClientProtocol()

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

    async def run(self, op: Op[T]) -> T:
        """Carry out a :class:`ClientProtocol` operation on trio."""
        step = _advance(op, None)
        while not isinstance(step, _Done):
            step = _advance(op, await self._perform(step))
        return step.value

    async def _perform(self, effect: Effect) -> Any:
        import trio

        if isinstance(effect, Call):
            return await self.call(effect.method, effect.params)
        if isinstance(effect, Sleep):
            return await trio.sleep(effect.seconds)
        return trio.current_time()

    def bind(
        self, op: Callable[Concatenate[ClientProtocol, P], Op[T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        async def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.run(op(self.protocol, *args, **kwargs))

        return method


def build_and_submit(
    client: SyncClient, key: SigningKey, body: TxBody, fee: int | None = None
) -> str:
    """Sign ``body`` with the account's next nonce (committed + pending) and the
    node's chain id, submit it, and return the transaction hash (hex)."""
    return client.build_and_submit(key, body, fee)


async def build_and_submit_async(
    client: NodeClient, key: SigningKey, body: TxBody, fee: int | None = None
) -> str:
    """The trio twin of :func:`build_and_submit`."""
    return await client.build_and_submit(key, body, fee)


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

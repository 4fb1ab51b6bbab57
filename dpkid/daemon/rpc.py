"""JSON-RPC 2.0 over a Unix socket (mode 0600), newline-delimited (protocol/RPC.md).

Every limit is explicit: request line size, open connections, batch size,
queued notifications per subscriber. Remote garbage gets a JSON-RPC error and
never raises out of a handler; the connection survives a bad line.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
SERVER_BUSY: Final = -32000
# The node cannot take a transaction now (mempool full, input queue full): retry.
RETRY_LATER: Final = -32006  # tx_submit: retryable refusal, data.retry_after_ms
# Application errors: -33000 - code, where code is the spec's rejection code (SPEC §10).
APP_ERROR_BASE: Final = -33000

MAX_LINE_BYTES: Final = 1 << 20
MAX_CONNECTIONS: Final = 64
MAX_BATCH: Final = 100
MAX_NOTIFY_QUEUE: Final = 256
# No request of ours nests deeper than a few levels; Python's json would recurse
# (RecursionError) on ~1000, so the depth is bounded before and after parsing.
MAX_JSON_DEPTH: Final = 32
# A connection with no request for this long and no subscription is closed, so
# idle clients cannot hold every slot.
RPC_IDLE_TIMEOUT_MS: Final = 30_000
# A request line must arrive complete within this long of its first byte. The
# idle timeout alone would let a client that trickles a byte a second (or blank
# lines, which are no request) hold a slot, and a reader task, forever.
RPC_REQUEST_READ_TIMEOUT_MS: Final = 10_000
SEND_TIMEOUT_S: Final = 10
# The operator's way in (RPC.md §1.3): a second socket, HOME/admin.sock, with a
# small pool of its own that the public socket's clients cannot fill. In it the
# newest connection always gets in, by closing the longest-idle admin one.
ADMIN_SOCKET_FILE: Final = "admin.sock"
MAX_ADMIN_CONNECTIONS: Final = 8
_BLANK: Final = b" \t\r\n"  # JSON whitespace: what a blank line is made of


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


Handler = Callable[[Any, "Connection"], Awaitable[Any]]


@dataclass
class Connection:
    """One client connection; subscriptions push notifications through ``notify``."""

    stream: trio.abc.Stream
    send_lock: trio.Lock
    notify_send: trio.MemorySendChannel[bytes]
    closed: bool = False
    dropped_notice: str = ""
    subscriptions: int = 0  # kept by the subscribe methods; a subscriber is never idle
    last_active_s: float = 0.0  # trio.current_time() of the last request
    cancel: trio.CancelScope | None = None  # ends this connection (eviction)
    admin: bool = False  # came in on the admin socket (its own pool)

    def notify(self, method: str, params: Any) -> bool:
        """Queue a notification; False if the subscriber is too slow (it gets dropped)."""
        if self.closed:
            return False
        line = json.dumps({"jsonrpc": "2.0", "method": method, "params": params}).encode() + b"\n"
        try:
            self.notify_send.send_nowait(line)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True


def _too_deep(line: bytes, limit: int) -> bool:
    """Does the JSON text nest brackets deeper than ``limit``? Counted outside
    strings, in one pass over the bytes, before the parser can recurse."""
    if line.count(b"[") + line.count(b"{") <= limit:
        return False  # cheap: cannot nest deeper than it has openers
    depth = 0
    in_str = False
    esc = False
    for c in line:
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:  # backslash
                esc = True
            elif c == 0x22:  # quote
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif c in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


class RpcServer:
    def __init__(
        self,
        methods: dict[str, Handler],
        log: Callable[..., None] | None = None,
        idle_timeout_ms: int = RPC_IDLE_TIMEOUT_MS,
        max_connections: int = MAX_CONNECTIONS,
        request_read_timeout_ms: int = RPC_REQUEST_READ_TIMEOUT_MS,
        max_admin_connections: int = MAX_ADMIN_CONNECTIONS,
    ) -> None:
        self.methods = methods
        self.connections = 0
        self.idle_timeout_ms = idle_timeout_ms
        self.max_connections = max_connections
        self.request_read_timeout_ms = request_read_timeout_ms
        self.max_admin_connections = max_admin_connections
        self.evicted = 0
        self.refused_busy = 0  # connections turned away with the -32000 line
        self.read_timeouts = 0  # connections cut off for trickling a request
        self._open: dict[int, Connection] = {}
        self._admin_open: dict[int, Connection] = {}
        self._log = log or (lambda *a, **k: None)
        self.on_disconnect: list[Callable[[Connection], None]] = []

    # ------------------------------------------------------------------ dispatch
    async def handle_line(self, line: bytes, conn: Connection) -> bytes | None:
        """One request line in, one response line (or None) out. Never raises:
        remote garbage is a JSON-RPC error, a bug of ours is -32603."""
        try:
            return await self._handle_line(line, conn)
        except Exception as e:  # the last line of defence: the node must survive its clients
            self._log("rpc_internal_error", error=repr(e)[:200])
            return _err(None, INTERNAL_ERROR, "internal error")

    async def _handle_line(self, line: bytes, conn: Connection) -> bytes | None:
        if _too_deep(line, MAX_JSON_DEPTH):
            return _err(None, PARSE_ERROR, f"parse error: nested deeper than {MAX_JSON_DEPTH}")
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # ValueError also covers integers past Python's digit limit.
            return _err(None, PARSE_ERROR, "parse error: not JSON")
        if isinstance(req, list):
            if not req:
                return _err(None, INVALID_REQUEST, "empty batch")
            if len(req) > MAX_BATCH:
                return _err(None, INVALID_REQUEST, f"batch of {len(req)} > {MAX_BATCH}")
            outs = []
            for r in req:
                o = await self._one(r, conn)
                if o is not None:
                    outs.append(o)
            return (json.dumps(outs).encode() + b"\n") if outs else None
        out = await self._one(req, conn)
        return None if out is None else json.dumps(out).encode() + b"\n"

    async def _one(self, req: Any, conn: Connection) -> dict[str, Any] | None:
        if (
            not isinstance(req, dict)
            or req.get("jsonrpc") != "2.0"
            or not isinstance(req.get("method"), str)
        ):
            return _resp_err(
                _id_of(req), INVALID_REQUEST, "invalid request: need jsonrpc '2.0' and a method"
            )
        rid = req.get("id")
        is_notification = "id" not in req
        if (rid is not None and not isinstance(rid, (str, int))) or isinstance(rid, bool):
            return _resp_err(None, INVALID_REQUEST, "id must be a string, an integer or null")
        params = req.get("params", {})
        if not isinstance(params, (dict, list)):
            return _resp_err(rid, INVALID_PARAMS, "params must be an object or an array")
        handler = self.methods.get(req["method"])
        if handler is None:
            return (
                None
                if is_notification
                else _resp_err(rid, METHOD_NOT_FOUND, f"method not found: {req['method']}")
            )
        try:
            result = await handler(params, conn)
        except RpcError as e:
            return None if is_notification else _resp_err(rid, e.code, e.message, e.data)
        except Exception as e:  # a handler bug must not take the node down
            self._log("rpc_internal_error", method=req["method"], error=repr(e))
            return None if is_notification else _resp_err(rid, INTERNAL_ERROR, "internal error")
        if is_notification:
            return None
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    # ------------------------------------------------------------------ serving
    async def serve_unix(
        self, path: Path, admin: bool = False, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve ``path`` (mode 0600). ``admin``: the operator's socket, whose
        connections use their own pool (``max_admin_connections``)."""
        if path.exists() or path.is_symlink():
            path.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is created 0600: only the node's user
        try:
            await sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(4 * (self.max_admin_connections if admin else self.max_connections))
        listener = trio.SocketListener(sock)
        task_status.started()

        async def handle(stream: trio.SocketStream) -> None:
            await self._serve_conn(stream, None, admin)

        try:
            await trio.serve_listeners(handle, [listener])
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    async def serve_tcp(
        self, host: str, port: int, token: str, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(
                "the TCP RPC listens on loopback only; put a TLS proxy in front for more"
            )
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started()
        expected = f"Bearer {token}".encode()

        async def guarded(stream: trio.SocketStream) -> None:
            # The first line must be the bearer token; anything else closes the connection.
            buf = bytearray()
            try:
                with trio.fail_after(5):
                    first = await _read_line(stream, buf, 4096)
            except (
                trio.TooSlowError,
                _LineTooLong,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
            ):
                await stream.aclose()
                return
            if first is None or not hmac.compare_digest(first.strip(), expected):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(
                        _err(None, -32001, "unauthorized: send 'Bearer <token>' first")
                    )
                await stream.aclose()
                return
            await self._serve_conn(stream, buf)  # requests sent with the token line are kept

        await trio.serve_listeners(guarded, listeners)

    def _evict_idle(self, pool: dict[int, Connection], subscribers_too: bool = False) -> bool:
        """Make room: end the longest-idle connection of ``pool`` that holds no
        subscription (or any, with ``subscribers_too``: the admin pool)."""
        idle = [
            c
            for c in pool.values()
            if (subscribers_too or c.subscriptions == 0) and c.cancel is not None
        ]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active_s)
        assert victim.cancel is not None
        victim.cancel.cancel()
        del pool[id(victim)]
        self.evicted += 1
        return True

    async def _serve_conn(
        self, stream: trio.abc.Stream, initial: bytearray | None = None, admin: bool = False
    ) -> None:
        # A new client always gets in while some connection is idle and holds
        # no subscription: the longest-idle one is closed to make room. On the
        # admin socket any connection may be closed for it, so the operator's
        # newest connection always gets in.
        pool, cap = (
            (self._admin_open, self.max_admin_connections)
            if admin
            else (self._open, self.max_connections)
        )
        if len(pool) >= cap and not self._evict_idle(pool, subscribers_too=admin):
            self.refused_busy += 1
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                with trio.move_on_after(SEND_TIMEOUT_S):
                    await stream.send_all(_err(None, SERVER_BUSY, "too many connections"))
            await stream.aclose()
            return
        self.connections += 1
        send, recv = trio.open_memory_channel[bytes](MAX_NOTIFY_QUEUE)
        conn = Connection(stream, trio.Lock(), send, last_active_s=trio.current_time(), admin=admin)
        pool[id(conn)] = conn
        buf = initial if initial is not None else bytearray()
        try:
            with trio.CancelScope() as scope:
                conn.cancel = scope
                await self._conn_loop(conn, recv, buf)
        finally:
            pool.pop(id(conn), None)
            conn.closed = True
            self.connections -= 1
            for cb in self.on_disconnect:
                cb(conn)
            send.close()
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()

    async def _conn_loop(
        self, conn: Connection, recv: trio.MemoryReceiveChannel[bytes], buf: bytearray
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_notifications, conn, recv)
            while True:
                try:
                    line = await self._read_request(conn, buf)
                except _Idle:
                    break
                except _ReadTimeout:
                    self.read_timeouts += 1
                    await self._send(
                        conn,
                        _err(
                            None,
                            INVALID_REQUEST,
                            f"request line not complete within {self.request_read_timeout_ms}"
                            " ms of its first byte",
                        ),
                    )
                    break
                except _LineTooLong:
                    await self._send(
                        conn,
                        _err(None, INVALID_REQUEST, f"request line over {MAX_LINE_BYTES} bytes"),
                    )
                    break
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if line is None:
                    break
                conn.last_active_s = trio.current_time()
                out = await self.handle_line(line, conn)
                # Idle time counts from the reply: a slow call is not idleness.
                conn.last_active_s = trio.current_time()
                if out is not None and not await self._send(conn, out):
                    break
            nursery.cancel_scope.cancel()

    async def _read_request(self, conn: Connection, buf: bytearray) -> bytes | None:
        """The next request line (None at EOF). Blank lines are skipped and are
        no activity. Raises _Idle when no request began within the idle timeout
        since the last one (never for a subscriber, which waits for
        notifications, not requests), and _ReadTimeout when a request's line is
        not complete within request_read_timeout_ms of its first byte."""
        started_s: float | None = None  # when the request now in buf began
        idle_deadline_s = conn.last_active_s + self.idle_timeout_ms / 1000
        while True:
            if buf and buf[0] in _BLANK:  # blank lines and leading space: no request yet
                del buf[: len(buf) - len(buf.lstrip(_BLANK))]
            i = buf.find(b"\n")
            if i >= 0:
                line = bytes(buf[:i])
                del buf[: i + 1]
                return line
            if len(buf) > MAX_LINE_BYTES:
                raise _LineTooLong
            if buf and started_s is None:
                started_s = trio.current_time()
            deadline_s = (
                idle_deadline_s
                if started_s is None
                else started_s + self.request_read_timeout_ms / 1000
            )
            with trio.move_on_at(deadline_s) as scope:
                chunk = await conn.stream.receive_some(65536)
            if scope.cancelled_caught:
                if started_s is not None:
                    raise _ReadTimeout
                if conn.subscriptions == 0:
                    raise _Idle
                idle_deadline_s = trio.current_time() + self.idle_timeout_ms / 1000
                continue
            if not chunk:
                return None
            buf += chunk

    async def _pump_notifications(
        self, conn: Connection, recv: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        async for line in recv:
            if not await self._send(conn, line):
                return
            if conn.dropped_notice and recv.statistics().current_buffer_used == 0:
                notice = {
                    "jsonrpc": "2.0",
                    "method": "subscription_dropped",
                    "params": {"reason": conn.dropped_notice},
                }
                conn.dropped_notice = ""
                if not await self._send(conn, json.dumps(notice).encode() + b"\n"):
                    return

    async def _send(self, conn: Connection, data: bytes) -> bool:
        try:
            async with conn.send_lock:
                with trio.fail_after(SEND_TIMEOUT_S):  # a client that never reads is cut off
                    await conn.stream.send_all(data)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            conn.closed = True
            return False


class _LineTooLong(Exception):
    pass


class _Idle(Exception):
    pass


class _ReadTimeout(Exception):
    pass


async def _read_line(stream: trio.abc.Stream, buf: bytearray, limit: int) -> bytes | None:
    while True:
        i = buf.find(b"\n")
        if i >= 0:
            line = bytes(buf[:i])
            del buf[: i + 1]
            return line
        if len(buf) > limit:
            raise _LineTooLong
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buf += chunk


def _id_of(req: Any) -> Any:
    if isinstance(req, dict):
        rid = req.get("id")
        if isinstance(rid, (str, int)) and not isinstance(rid, bool):
            return rid
    return None


def _resp_err(rid: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": rid, "error": err}


def _err(rid: Any, code: int, message: str) -> bytes:
    return json.dumps(_resp_err(rid, code, message)).encode() + b"\n"


# ------------------------------------------------------------------ parameter helpers


def param(params: Any, name: str, typ: type, index: int = 0, default: Any = ...) -> Any:
    """Fetch a named (or positional) parameter with a type check."""
    if isinstance(params, dict):
        if name in params:
            v = params[name]
        elif default is not ...:
            return default
        else:
            raise RpcError(INVALID_PARAMS, f"missing parameter {name!r}")
    else:
        if index < len(params):
            v = params[index]
        elif default is not ...:
            return default
        else:
            raise RpcError(INVALID_PARAMS, f"missing parameter {name!r}")
    if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise RpcError(INVALID_PARAMS, f"{name} must be an integer")
    if typ is not int and not isinstance(v, typ):
        raise RpcError(INVALID_PARAMS, f"{name} must be {typ.__name__}")
    return v


def hex_param(
    params: Any, name: str, length: int | None = None, index: int = 0, max_len: int = 1 << 20
) -> bytes:
    s = param(params, name, str, index)
    if len(s) > 2 * max_len:
        raise RpcError(INVALID_PARAMS, f"{name} is too long")
    try:
        b = bytes.fromhex(s)
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"{name} must be hex") from None
    if length is not None and len(b) != length:
        raise RpcError(INVALID_PARAMS, f"{name} must be {length} bytes")
    return b

"""Clients for a node's JSON-RPC socket: a blocking one for scripts and the
CLI, and a trio one for async programs. Both speak newline-delimited JSON-RPC
2.0 (protocol/RPC.md)."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from typing import Any

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
        self._stream = stream
        self._buf = bytearray()
        self._ids = itertools.count(1)
        self._lock = trio.Lock()
        self._pending: dict[int, Any] = {}
        self.notifications: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, home: Path | None = None, socket_path: str | None = None) -> RpcClient:
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

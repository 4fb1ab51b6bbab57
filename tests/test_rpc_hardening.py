"""Remote garbage never raises out of the RPC server (issue 10 §3, §6).

In-process: the real RpcServer on a real Unix socket, with a method table of
its own, so every case runs in milliseconds. Each case is followed by a normal
request on a new connection that must still be answered.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpkid.daemon.rpc import (
    INVALID_REQUEST,
    MAX_JSON_DEPTH,
    PARSE_ERROR,
    Connection,
    RpcServer,
)


async def _echo(params: Any, conn: Connection) -> Any:
    return {"params": params}


async def _subscribe(params: Any, conn: Connection) -> Any:
    conn.subscriptions += 1
    return {"subscribed": True}


def _server(idle_timeout_ms: int = 30_000, max_connections: int = 64) -> RpcServer:
    return RpcServer(
        {"echo": _echo, "subscribe": _subscribe},
        idle_timeout_ms=idle_timeout_ms,
        max_connections=max_connections,
    )


async def _ask(path: Path, data: bytes, timeout_s: float = 5) -> Any:
    s = await trio.open_unix_socket(str(path))
    async with s:
        await s.send_all(data)
        buf = bytearray()
        with trio.fail_after(timeout_s):
            while b"\n" not in buf:
                chunk = await s.receive_some(65536)
                if not chunk:
                    break
                buf += chunk
    return json.loads(buf.split(b"\n")[0]) if buf else None


async def _healthy(path: Path) -> None:
    got = await _ask(path, b'{"jsonrpc": "2.0", "id": 7, "method": "echo", "params": [1]}\n')
    assert got == {"jsonrpc": "2.0", "id": 7, "result": {"params": [1]}}


GARBAGE = [
    b"[" * 1000 + b"]" * 1000,
    b"[" * 100_000,
    b'{"a":' * 100_000,
    b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'"' + b"[" * 50 + b'"',  # brackets inside a string are not nesting
    b"\xff\xfe\xfd",
    b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [1e999999]}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [' + b"9" * 100_000 + b"]}",
    b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [NaN]}',
    b'{"jsonrpc": "2.0", "id": "\\ud800", "method": "echo"}',
    b'[{"x": 1}, 5, "a", null, [[]]]',
    b"{}",
    b"null",
]


@pytest.mark.parametrize("line", GARBAGE, ids=[str(i) for i in range(len(GARBAGE))])
@pytest.mark.trio
async def test_garbage_lines_get_an_error_and_the_server_lives(line: bytes, tmp_path: Path) -> None:
    srv = _server()
    path = tmp_path / "s.sock"
    async with trio.open_nursery() as n:
        await n.start(srv.serve_unix, path)
        got = await _ask(path, line + b"\n")
        for resp in got if isinstance(got, list) else [got]:
            assert resp["jsonrpc"] == "2.0"
            if "error" in resp:
                assert resp["error"]["code"] in (PARSE_ERROR, INVALID_REQUEST, -32602)
        await _healthy(path)
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_deep_nesting_is_a_parse_error_naming_the_limit(tmp_path: Path) -> None:
    srv = _server()
    path = tmp_path / "s.sock"
    async with trio.open_nursery() as n:
        await n.start(srv.serve_unix, path)
        got = await _ask(path, b"[" * 1000 + b"]" * 1000 + b"\n")
        assert got["error"]["code"] == PARSE_ERROR
        assert str(MAX_JSON_DEPTH) in got["error"]["message"]
        ok = b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": ' + b"[" * 20
        got = await _ask(path, ok + b"]" * 20 + b"}\n")
        assert "result" in got  # nesting within the bound is fine
        n.cancel_scope.cancel()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blob=st.binary(max_size=2048))
def test_random_bytes_never_raise(blob: bytes, tmp_path: Path) -> None:
    async def main() -> None:
        srv = _server()
        path = tmp_path / f"r{random.getrandbits(32)}.sock"
        async with trio.open_nursery() as n:
            await n.start(srv.serve_unix, path)
            s = await trio.open_unix_socket(str(path))
            async with s:
                # The garbage, then a good request on the same connection: the
                # connection survives the garbage and answers the request.
                good = b'{"jsonrpc": "2.0", "id": 99, "method": "echo"}\n'
                await s.send_all(blob.replace(b"\n", b" ") + b"\n" + good)
                buf = bytearray()
                with trio.fail_after(5):
                    while b'"id": 99' not in buf:
                        chunk = await s.receive_some(65536)
                        assert chunk, "the server closed the connection"
                        buf += chunk
            await _healthy(path)
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.trio
async def test_idle_connections_cannot_lock_out_a_new_client(tmp_path: Path) -> None:
    """200 idle connections against 8 slots: the operator still gets in, at once."""
    srv = _server(max_connections=8)
    path = tmp_path / "s.sock"
    async with trio.open_nursery() as n:
        await n.start(srv.serve_unix, path)
        idle = [await trio.open_unix_socket(str(path)) for _ in range(200)]
        with trio.fail_after(1):
            await _healthy(path)
        assert srv.evicted >= 200 - 8
        for s in idle:
            await s.aclose()
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_idle_connections_are_closed_but_subscribers_kept(tmp_path: Path) -> None:
    srv = _server(idle_timeout_ms=200)
    path = tmp_path / "s.sock"
    async with trio.open_nursery() as n:
        await n.start(srv.serve_unix, path)
        quiet = await trio.open_unix_socket(str(path))
        sub = await trio.open_unix_socket(str(path))
        await sub.send_all(b'{"jsonrpc": "2.0", "id": 1, "method": "subscribe"}\n')
        with trio.fail_after(5):
            assert b"subscribed" in await sub.receive_some(65536)
        with trio.fail_after(5):
            assert await quiet.receive_some(65536) == b""  # closed by the server
        await trio.sleep(0.5)  # several idle timeouts: the subscriber must survive them
        assert srv.connections == 1
        await sub.send_all(b'{"jsonrpc": "2.0", "id": 2, "method": "echo"}\n')
        with trio.fail_after(5):
            assert b'"id": 2' in await sub.receive_some(65536)
        await quiet.aclose()
        await sub.aclose()
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_every_slot_subscribed_then_busy_is_refused_cleanly(tmp_path: Path) -> None:
    srv = _server(max_connections=2)
    path = tmp_path / "s.sock"
    async with trio.open_nursery() as n:
        await n.start(srv.serve_unix, path)
        subs = []
        for _ in range(2):
            s = await trio.open_unix_socket(str(path))
            await s.send_all(b'{"jsonrpc": "2.0", "id": 1, "method": "subscribe"}\n')
            with trio.fail_after(5):
                await s.receive_some(65536)
            subs.append(s)
        got = await _ask(path, b'{"jsonrpc": "2.0", "id": 3, "method": "echo"}\n')
        assert got["error"]["code"] == -32000
        for s in subs:
            await s.aclose()
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_socket_is_private(tmp_path: Path) -> None:
    srv = _server()
    path = tmp_path / "s.sock"
    async with trio.open_nursery() as n:
        await n.start(srv.serve_unix, path)
        assert os.stat(path).st_mode & 0o777 == 0o600
        n.cancel_scope.cancel()

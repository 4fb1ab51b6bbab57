"""Bounded RPC resources (issue 13): a trickling client is cut off, blank lines
are no activity, a connection over the cap gets the documented line, and the
operator always gets in by the admin socket.

In-process: the real RpcServer on real Unix sockets, with short timeouts so
every case runs in about a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from dpkid.daemon.rpc import INVALID_REQUEST, SERVER_BUSY, Connection, RpcServer

# The exact line RPC.md §2 documents for a connection over the cap.
BUSY_LINE = (
    b'{"jsonrpc": "2.0", "id": null, "error": {"code": -32000, "message": "too many connections"}}'
    b"\n"
)
ECHO = b'{"jsonrpc": "2.0", "id": 7, "method": "echo"}\n'
SUBSCRIBE = b'{"jsonrpc": "2.0", "id": 1, "method": "subscribe"}\n'


async def _echo(params: Any, conn: Connection) -> Any:
    return {"admin": conn.admin}


async def _subscribe(params: Any, conn: Connection) -> Any:
    conn.subscriptions += 1
    return {"subscribed": True}


def _server(**kw: Any) -> RpcServer:
    return RpcServer({"echo": _echo, "subscribe": _subscribe}, **kw)


async def _read_line(s: trio.SocketStream, timeout_s: float) -> bytes:
    """One line from the server, or b"" when it closed first."""
    buf = bytearray()
    with trio.fail_after(timeout_s):
        while b"\n" not in buf:
            chunk = await s.receive_some(65536)
            if not chunk:
                return bytes(buf)
            buf += chunk
    return bytes(buf[: buf.index(b"\n") + 1])


async def _closed_by_server(s: trio.SocketStream, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while await s.receive_some(65536):
            pass


async def _call(path: Path, line: bytes, timeout_s: float = 5) -> bytes:
    s = await trio.open_unix_socket(str(path))
    async with s:
        await s.send_all(line)
        return await _read_line(s, timeout_s)


@pytest.mark.trio
async def test_a_trickling_client_is_cut_off_with_an_error_line(tmp_path: Path) -> None:
    srv = _server(request_read_timeout_ms=500)
    path = tmp_path / "s.sock"
    async with trio.open_nursery() as n:
        await n.start(srv.serve_unix, path)
        s = await trio.open_unix_socket(str(path))
        t0 = trio.current_time()
        got = b""

        async def trickle() -> None:
            for b in ECHO[:-1]:  # never the newline; at most len(ECHO) bytes, 10 per second
                try:
                    await s.send_all(bytes([b]))
                except trio.BrokenResourceError:
                    return
                await trio.sleep(0.1)

        async with trio.open_nursery() as inner:
            inner.start_soon(trickle)
            got = await _read_line(s, timeout_s=3)
            took_s = trio.current_time() - t0
            inner.cancel_scope.cancel()
        reply = json.loads(got)
        assert reply["error"]["code"] == INVALID_REQUEST
        assert "not complete within 500 ms" in reply["error"]["message"]
        assert 0.5 <= took_s < 1.5, took_s  # at the deadline, not at the idle timeout
        await _closed_by_server(s, timeout_s=2)
        await s.aclose()
        assert srv.read_timeouts == 1
        assert json.loads(await _call(path, ECHO))["result"] == {"admin": False}
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_request_split_across_writes_within_the_deadline_is_served(
    tmp_path: Path,
) -> None:
    srv = _server(request_read_timeout_ms=2_000)
    path = tmp_path / "s.sock"
    async with trio.open_nursery() as n:
        await n.start(srv.serve_unix, path)
        s = await trio.open_unix_socket(str(path))
        async with s:
            await s.send_all(b"\n  \r\n" + ECHO[:10])  # blank lines first are fine
            await trio.sleep(0.2)  # the rest comes later, well inside the deadline
            await s.send_all(ECHO[10:])
            assert json.loads(await _read_line(s, 5))["id"] == 7
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_blank_lines_do_not_keep_a_connection_open(tmp_path: Path) -> None:
    srv = _server(idle_timeout_ms=300)
    path = tmp_path / "s.sock"
    async with trio.open_nursery() as n:
        await n.start(srv.serve_unix, path)
        s = await trio.open_unix_socket(str(path))
        closed = trio.Event()

        async def blank_lines() -> None:
            for _ in range(100):  # at most 100 lines, 20 per second: 5 s
                if closed.is_set():
                    return
                try:
                    await s.send_all(b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                await trio.sleep(0.05)

        t0 = trio.current_time()
        async with trio.open_nursery() as inner:
            inner.start_soon(blank_lines)
            await _closed_by_server(s, timeout_s=3)
            closed.set()
        assert trio.current_time() - t0 < 1.5  # the idle timeout, blank lines or not
        await s.aclose()
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_over_the_cap_gets_the_documented_line_and_the_operator_gets_in(
    tmp_path: Path,
) -> None:
    """Every public slot held by a subscriber: a new public client gets the
    documented -32000 line; the admin socket still answers at once, even when
    its own slots are all held by subscribers too."""
    srv = _server(max_connections=4, max_admin_connections=2)
    public, admin = tmp_path / "dpkid.sock", tmp_path / "admin.sock"
    async with trio.open_nursery() as n:
        await n.start(srv.serve_unix, public)
        await n.start(srv.serve_unix, admin, True)
        assert os.stat(admin).st_mode & 0o777 == 0o600
        held = []
        for path, count in ((public, 4), (admin, 2)):
            for _ in range(count):
                s = await trio.open_unix_socket(str(path))
                await s.send_all(SUBSCRIBE)
                assert b"subscribed" in await _read_line(s, 5)
                held.append(s)
        assert await _call(public, ECHO) == BUSY_LINE
        assert json.loads(BUSY_LINE)["error"]["code"] == SERVER_BUSY
        with trio.fail_after(1):
            got = json.loads(await _call(admin, ECHO))
        assert got["result"] == {"admin": True}
        assert srv.refused_busy == 1
        # The public subscribers were not touched to let the operator in.
        for s in held[:4]:
            await s.send_all(ECHO)
            assert json.loads(await _read_line(s, 5))["id"] == 7
        for s in held:
            await s.aclose()
        n.cancel_scope.cancel()

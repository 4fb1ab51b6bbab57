"""JSON-RPC 2.0 conformance of a real node: errors, batches, garbage, limits,
subscriptions. The node (a one-validator chain, in-process on trio) must stay
up and keep committing throughout."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from dpkid.core import codec
from dpkid.core.types import Transfer, sign_tx
from dpkid.daemon.config import read_key
from dpkid.daemon.daemon import NodeDaemon
from dpkid.daemon.rpc import MAX_LINE_BYTES

pytestmark = pytest.mark.slow


def _make_net(tmp: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpkid",
            "testnet",
            "--validators",
            "1",
            "--out",
            str(tmp / "tn"),
            "--json",
            "--timeout-commit-ms",
            "100",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    info: dict[str, Any] = json.loads(out.stdout)
    return info


class Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.s = stream
        self.buf = bytearray()

    async def send_raw(self, data: bytes) -> None:
        await self.s.send_all(data)

    async def line(self, timeout_s: float = 10) -> Any:
        with trio.fail_after(timeout_s):
            while b"\n" not in self.buf:
                chunk = await self.s.receive_some(65536)
                if not chunk:
                    raise EOFError("closed")
                self.buf += chunk
        i = self.buf.index(b"\n")
        raw = bytes(self.buf[:i])
        del self.buf[: i + 1]
        return json.loads(raw)

    async def call(self, method: str, params: Any = None, rid: int = 1) -> Any:
        req = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
        await self.send_raw(json.dumps(req).encode() + b"\n")
        while True:
            msg = await self.line()
            if msg.get("id") == rid:
                return msg


def run_with_node(
    tmp_path: Path, body: Callable[[NodeDaemon, Path, dict[str, Any]], Awaitable[None]]
) -> None:
    info = _make_net(tmp_path)
    home = Path(info["nodes"][0])

    async def main() -> None:
        d = NodeDaemon(home)
        try:
            async with trio.open_nursery() as n:
                await n.start(d.run)
                with trio.fail_after(120):
                    await body(d, home, info)
                n.cancel_scope.cancel()
        finally:
            await d.aclose()

    trio.run(main)


async def _open(home: Path) -> Conn:
    return Conn(await trio.open_unix_socket(str(home / "dpkid.sock")))


async def _wait_height(d: NodeDaemon, h: int) -> None:
    with trio.fail_after(60):
        while d.core.state.height < h:
            await trio.sleep(0.05)


def test_error_codes_batches_and_garbage(tmp_path: Path) -> None:
    async def body(d: NodeDaemon, home: Path, info: dict[str, Any]) -> None:
        sock = home / "dpkid.sock"
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        await _wait_height(d, 2)
        c = await _open(home)
        # -32700: not JSON. The connection survives it.
        await c.send_raw(b"{this is not json\n")
        r = await c.line()
        assert r["error"]["code"] == -32700 and r["id"] is None
        # -32600: valid JSON, not a request.
        for bad in (
            b'{"jsonrpc": "1.0", "id": 1, "method": "status"}',
            b"42",
            b"[]",
            b'{"jsonrpc":"2.0","id":1}',
        ):
            await c.send_raw(bad + b"\n")
            r = await c.line()
            assert r["error"]["code"] == -32600, bad
        # -32601: unknown method.
        r = await c.call("no_such_method")
        assert r["error"]["code"] == -32601
        # -32602: bad params.
        for m, p in (
            ("block_get", {"height": "x"}),
            ("tx_get", {"hash": "zz"}),
            ("cert_get", {}),
            ("account_get", {"address": "00"}),
            ("certs_by_domain", {"domain": "Not A Domain"}),
        ):
            r = await c.call(m, p)
            assert r["error"]["code"] == -32602, (m, r)
        # Application errors carry the spec's rejection code.
        key = read_key(Path(info["account_keys"][0]))
        wrong_chain = codec.encode(sign_tx(key, "other-chain", 0, 10, Transfer(key.address, 1)))
        r = await c.call("tx_submit", {"tx": wrong_chain.hex()})
        assert r["error"]["data"] == {"code": 3, "name": "WRONG_CHAIN_ID"}
        r = await c.call("tx_submit", {"tx": "00ff00"})
        assert r["error"]["data"]["name"] == "MALFORMED"
        # Batches: mixed results in one array; notifications get no answer.
        batch = [
            {"jsonrpc": "2.0", "id": 10, "method": "status"},
            {"jsonrpc": "2.0", "method": "status"},
            {"jsonrpc": "2.0", "id": 11, "method": "nope"},
            {"foo": "bar"},
        ]
        await c.send_raw(json.dumps(batch).encode() + b"\n")
        rs = await c.line()
        assert isinstance(rs, list) and len(rs) == 3
        by_id = {x.get("id"): x for x in rs}
        assert "result" in by_id[10] and by_id[11]["error"]["code"] == -32601
        assert by_id[None]["error"]["code"] == -32600
        # A notification alone: no reply at all; the next call still works.
        await c.send_raw(b'{"jsonrpc":"2.0","method":"status"}\n')
        r = await c.call("status", rid=99)
        assert r["result"]["chain_id"] == info["chain_id"]
        # Binary garbage and an oversized line: clear errors, node unharmed.
        await c.send_raw(bytes(range(256)) + b"\n")
        assert (await c.line())["error"]["code"] == -32700
        big = await _open(home)
        await big.send_raw(
            b'{"jsonrpc":"2.0","id":1,"method":"status","params":{"x":"'
            + b"a" * (MAX_LINE_BYTES + 10)
        )
        r = await big.line()
        assert r["error"]["code"] == -32600 and "over" in r["error"]["message"]
        h = d.core.state.height
        await _wait_height(d, h + 2)
        r = await c.call("status", rid=7)
        assert r["result"]["height"] >= h + 2

    run_with_node(tmp_path, body)


def test_subscriptions_stream_blocks_and_applications(tmp_path: Path) -> None:
    async def body(d: NodeDaemon, home: Path, info: dict[str, Any]) -> None:
        await _wait_height(d, 1)
        c = await _open(home)
        r = await c.call("subscribe", {"topic": "blocks"})
        sid = r["result"]["subscription"]
        seen: list[int] = []
        with trio.fail_after(30):
            while len(seen) < 3:
                msg = await c.line()
                if msg.get("method") == "subscription":
                    assert msg["params"]["subscription"] == sid
                    seen.append(msg["params"]["event"]["height"])
        assert seen == sorted(seen) and len(set(seen)) == 3
        r = await c.call("unsubscribe", {"subscription": sid}, rid=2)
        assert r["result"]["unsubscribed"] is True
        r = await c.call("subscribe", {"topic": "nonsense"}, rid=3)
        assert r["error"]["code"] == -32602
        # A subscriber that never reads is dropped; the node keeps going.
        lazy = await _open(home)
        await lazy.call("subscribe", {"topic": "blocks"})
        h = d.core.state.height
        await _wait_height(d, h + 3)
        assert d.core.state.height >= h + 3

    run_with_node(tmp_path, body)


def test_tcp_listener_needs_the_bearer_token_and_metrics_are_served(tmp_path: Path) -> None:
    import re
    import urllib.request

    from dpkid.cli.node import free_ports

    info = _make_net(tmp_path)
    home = Path(info["nodes"][0])
    rpc_port, metrics_port = free_ports(2)
    cfg = home / "config.toml"
    text = cfg.read_text()
    text = re.sub(r'rpc_tcp = ".*"', f'rpc_tcp = "127.0.0.1:{rpc_port}"', text)
    text = re.sub(r'metrics_listen = ".*"', f'metrics_listen = "127.0.0.1:{metrics_port}"', text)
    cfg.write_text(text)
    token = (home / "rpc_token").read_text().strip()
    assert oct((home / "rpc_token").stat().st_mode & 0o777) == "0o600"

    async def main() -> None:
        d = NodeDaemon(home)
        try:
            async with trio.open_nursery() as n:
                await n.start(d.run)
                with trio.fail_after(60):
                    await _wait_height(d, 2)
                    # Wrong token: refused with -32001 and closed.
                    s = await trio.open_tcp_stream("127.0.0.1", rpc_port)
                    c = Conn(s)
                    await c.send_raw(b"Bearer wrong\n")
                    r = await c.line()
                    assert r["error"]["code"] == -32001
                    # Right token, with the first request in the same packet.
                    s = await trio.open_tcp_stream("127.0.0.1", rpc_port)
                    c = Conn(s)
                    req = {"jsonrpc": "2.0", "id": 5, "method": "status"}
                    await c.send_raw(
                        f"Bearer {token}\n".encode() + json.dumps(req).encode() + b"\n"
                    )
                    r = await c.line()
                    assert r["id"] == 5 and r["result"]["chain_id"] == info["chain_id"]
                    body = await trio.to_thread.run_sync(
                        lambda: urllib.request.urlopen(
                            f"http://127.0.0.1:{metrics_port}/metrics", timeout=10
                        ).read()
                    )
                    text = body.decode()
                    assert "dpkid_height" in text and "dpkid_committed_txs_total" in text
                    m = re.search(r"^dpkid_height (\S+)$", text, re.M)
                    assert m and float(m.group(1)) >= 2
                n.cancel_scope.cancel()
        finally:
            await d.aclose()

    trio.run(main)

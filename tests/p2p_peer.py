"""One P2PNode in its own process, driven by JSON lines for tests/test_p2p.py.

Run as ``python tests/p2p_peer.py --seed HEX --port N --peer MADDR ...``.
It prints ``{"event": "ready", ...}`` on stdout once the node runs, then reads
one JSON command per line on stdin and answers each with one JSON line that
carries the command's ``id``:

* ``status``: peers, topic peers, stats, and what was received per publisher;
* ``publish``: ``count`` messages of ``size`` bytes in batches of ``batch`` at
  ``rate`` msgs/s; ``kind`` is ``good`` (accepted), ``garbage`` (rejected by
  the validator) or ``boom`` (makes the validator raise);
* ``reset_recv``: forget what was received (between measurement rounds);
* ``request``: ``count`` requests to ``peer`` on the test protocol, ``op`` is
  ``echo`` (``size`` bytes, echoed), ``big`` (a ``size``-byte response) or
  ``fail`` (the handler raises);
* ``quit``.

Gossip payloads are ``MAGIC || u64 seq || u64 send time_ns || padding``, so a
receiver counts distinct sequence numbers and measures one-way latency (all
processes share the machine's clock).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import struct
import sys
import time
from typing import Any

import trio

from dpkid.daemon.p2p import P2PConfig, P2PError, P2PNode, RequestError

TOPIC = "dpkid/test/1"
PROTO = "/dpkid/test/req/1"
MAGIC = b"DPK1"
HEADER = struct.Struct(">4sQQ")
MAX_LATENCIES = 200_000


def make_payload(seq: int, size: int, kind: str = "good") -> bytes:
    body = HEADER.pack(MAGIC, seq, time.time_ns())
    if kind == "garbage":
        body = b"\x00GARBAGE" + body[8:]
    elif kind == "boom":
        body = b"BOOM" + body[4:]
    return body + b"\x5a" * max(0, size - len(body))


def validator_for(accept_all: bool) -> Any:
    def validate(topic: str, data: bytes) -> bool:
        if accept_all:
            return True
        if data.startswith(b"BOOM"):
            raise RuntimeError("validator exploded on purpose")
        return topic == TOPIC and len(data) >= HEADER.size and data.startswith(MAGIC)

    return validate


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        cfg = P2PConfig(
            listen_port=args.port,
            persistent_peers=list(args.peer),
            max_frame_bytes=args.max_frame_bytes,
            max_message_bytes=args.max_message_bytes,
        )
        self.node = P2PNode(bytes.fromhex(args.seed), cfg)
        self.node.subscribe(TOPIC, validator_for(args.accept_all))
        self.node.set_stream_handler(PROTO, self.handle_request)
        self.out_lock = trio.Lock()
        self.reset_recv()

    def reset_recv(self) -> None:
        self.seqs: dict[str, set[int]] = {}
        self.garbage = 0
        self.latencies_ms: list[float] = []
        self.first_s: float | None = None
        self.last_s: float | None = None

    async def handle_request(self, req: bytes, peer: str) -> bytes:
        op, _, arg = req.partition(b":")
        if op == b"echo":
            return arg
        if op == b"big":
            return b"\xab" * int(arg)
        if op == b"fail":
            raise RuntimeError("handler failed on purpose")
        raise ValueError(f"unknown op {op!r}")

    async def emit(self, obj: dict[str, Any]) -> None:
        async with self.out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    async def receive_loop(self) -> None:
        async for msg in self.node:
            now = time.time_ns()
            if len(msg.data) < HEADER.size or not msg.data.startswith(MAGIC):
                self.garbage += 1
                continue
            _, seq, sent_ns = HEADER.unpack_from(msg.data)
            self.seqs.setdefault(msg.from_peer, set()).add(seq)
            if len(self.latencies_ms) < MAX_LATENCIES:
                self.latencies_ms.append((now - sent_ns) / 1e6)
            mono = time.monotonic()
            self.first_s = mono if self.first_s is None else self.first_s
            self.last_s = mono

    def status(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "peer_id": self.node.peer_id,
            "peers": self.node.peers(),
            "topic_peers": self.node.topic_peers(TOPIC),
            "stats": self.node.stats.as_dict(),
            "recv": {p: len(s) for p, s in self.seqs.items()},
            "garbage": self.garbage,
            "lat_ms": {
                "p50": percentile(lat, 0.5),
                "p99": percentile(lat, 0.99),
                "max": max(lat, default=None),
            },
            "recv_span_s": (self.last_s - self.first_s)
            if self.first_s is not None and self.last_s is not None
            else None,
            "backlog": self.node.outbound_backlog(),
        }

    async def publish(self, cmd: dict[str, Any]) -> dict[str, Any]:
        count, size = int(cmd["count"]), int(cmd.get("size", 300))
        batch, rate = int(cmd.get("batch", 10)), float(cmd.get("rate", 100.0))
        kind, start_seq = str(cmd.get("kind", "good")), int(cmd.get("start_seq", 0))
        t0 = time.monotonic()
        for i in range(count):
            await self.node.publish(TOPIC, make_payload(start_seq + i, size, kind))
            if (i + 1) % batch == 0:
                # pace: the batch's slot ends at t0 + (i+1)/rate
                delay = t0 + (i + 1) / rate - time.monotonic()
                if delay > 0:
                    await trio.sleep(delay)
        return {"published": count, "elapsed_s": time.monotonic() - t0}

    async def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        peer, op = str(cmd["peer"]), str(cmd.get("op", "echo"))
        size, count = int(cmd.get("size", 32)), int(cmd.get("count", 1))
        timeout_s = float(cmd.get("timeout_s", 10.0))
        if op == "echo":
            data = b"echo:" + b"q" * size
        elif op == "big":
            data = b"big:%d" % size
        elif op == "raw":
            data = b"r" * size  # e.g. an oversized request frame
        else:
            data = b"fail:"
        rtts: list[float] = []
        errors: list[str] = []
        resp_len = None
        opened0 = self.node.stats.streams_opened
        for _ in range(count):
            t = time.perf_counter()
            try:
                resp = await self.node.request(peer, PROTO, data, timeout_s)
            except (RequestError, P2PError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            rtts.append((time.perf_counter() - t) * 1000)
            resp_len = len(resp)
            if op == "echo" and resp != data[5:]:
                errors.append("echo mismatch")
        return {
            "ok": len(rtts),
            "errors": errors[:5],
            "n_errors": len(errors),
            "resp_len": resp_len,
            "rtt_ms": {"p50": percentile(rtts, 0.5), "p99": percentile(rtts, 0.99)},
            "streams_opened": self.node.stats.streams_opened - opened0,
        }

    async def command_loop(self) -> None:
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buf = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                return  # the test closed our stdin: stop
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                cmd = json.loads(line)
                if cmd.get("cmd") == "quit":
                    return
                await self.dispatch(cmd)

    async def dispatch(self, cmd: dict[str, Any]) -> None:
        name = cmd.get("cmd")
        try:
            if name == "status":
                result = self.status()
            elif name == "publish":
                result = await self.publish(cmd)
            elif name == "reset_recv":
                self.reset_recv()
                result = {}
            elif name == "request":
                result = await self.request(cmd)
            else:
                result = {"error": f"unknown command {name!r}"}
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["id"] = cmd.get("id")
        await self.emit(result)

    async def main(self) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.node.run)
            nursery.start_soon(self.receive_loop)
            await self.emit(
                {
                    "event": "ready",
                    "peer_id": self.node.peer_id,
                    "addr": self.node.listen_multiaddr,
                    "pid": os.getpid(),
                }
            )
            await self.command_loop()
            await self.node.aclose()
            nursery.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", required=True, help="32-byte node key seed, hex")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--peer", action="append", default=[], help="persistent peer multiaddr")
    ap.add_argument(
        "--accept-all", action="store_true", help="validator accepts anything (a bad node)"
    )
    ap.add_argument("--max-frame-bytes", type=int, default=8 * 1024 * 1024)
    ap.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024)
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    trio.run(Peer(args).main)


if __name__ == "__main__":
    main()

"""The libp2p transport (dpkid.daemon.p2p).

Fast in-process tests of the framing, and slow multi-process tests: separate
Python processes (tests/p2p_peer.py) on 127.0.0.1 in a full mesh through
persistent_peers. Every wait is on a condition with a deadline; every test
stops every process it started, by PID, in a finally block.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dpkid.daemon.p2p import (
    FRAME_HEADER_BYTES,
    FrameError,
    P2PConfig,
    encode_frame,
    peer_id_from_seed,
    read_frame,
)

PEER_SCRIPT = Path(__file__).resolve().parent / "p2p_peer.py"
STARTUP_TIMEOUT_S = 30.0
MESH_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 60.0
MiB = 1024 * 1024


# ---------------------------------------------------------------- framing (fast)


class _ChunkedStream:
    """A fake libp2p stream that returns at most ``chunk`` bytes per read."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data = data
        self.chunk = chunk
        self.reads = 0

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        take = min(self.chunk, len(self.data), n if n is not None else self.chunk)
        out, self.data = self.data[:take], self.data[take:]
        return out


def test_frames_round_trip_when_read_in_small_chunks() -> None:
    async def main() -> None:
        body = bytes(range(256)) * 4000  # about 1 MiB
        stream = _ChunkedStream(
            encode_frame(body) + encode_frame(b"") + encode_frame(b"x"), chunk=7777
        )
        assert await read_frame(stream, 8 * MiB) == body
        assert await read_frame(stream, 8 * MiB) == b""
        assert await read_frame(stream, 8 * MiB) == b"x"
        assert await read_frame(stream, 8 * MiB) is None  # clean EOF between frames
        assert stream.reads > len(body) // 7777

    trio.run(main)


def test_oversized_and_truncated_frames_are_rejected() -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            encode_frame(b"x" * 11, max_frame_bytes=10)
        header_only = (11).to_bytes(FRAME_HEADER_BYTES, "big")
        with pytest.raises(FrameError):
            await read_frame(_ChunkedStream(header_only + b"x" * 11, 3), 10)
        with pytest.raises(FrameError):  # truncated body
            await read_frame(_ChunkedStream(encode_frame(b"abcdef")[:-2], 3), 10)
        with pytest.raises(FrameError):  # truncated header
            await read_frame(_ChunkedStream(b"\x00\x00", 3), 10)

    trio.run(main)


def test_config_validation() -> None:
    P2PConfig(listen_port=0).validate()
    with pytest.raises(ValueError):
        P2PConfig(listen_port=0, persistent_peers=["/ip4/127.0.0.1/tcp/1"]).validate()
    with pytest.raises(ValueError):
        P2PConfig(listen_port=0, redial_backoff_min_ms=500, redial_backoff_max_ms=100).validate()
    pid = peer_id_from_seed(bytes(32))
    assert pid.startswith("12D3KooW")
    P2PConfig(listen_port=0, persistent_peers=[f"/ip4/127.0.0.1/tcp/1/p2p/{pid}"]).validate()


# ---------------------------------------------------------------- process harness


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class PeerProc:
    """One tests/p2p_peer.py process, spoken to in JSON lines."""

    def __init__(
        self, name: str, seed: bytes, port: int, peers: list[str], log_dir: Path, extra: list[str]
    ) -> None:
        self.name, self.seed, self.port, self.peers, self.extra = name, seed, port, peers, extra
        self.peer_id = peer_id_from_seed(seed)
        self.addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{self.peer_id}"
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10_000)
        self._next_id = 0
        self.started = 0

    def start(self) -> None:
        argv = [
            sys.executable,
            str(PEER_SCRIPT),
            "--seed",
            self.seed.hex(),
            "--port",
            str(self.port),
        ]
        for p in self.peers:
            argv += ["--peer", p]
        argv += self.extra
        self._lines = queue.Queue(maxsize=10_000)
        log = open(self.log_path, "a")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1
        )
        log.close()
        self.started += 1
        threading.Thread(target=self._reader, args=(self.proc, self._lines), daemon=True).start()

    @staticmethod
    def _reader(proc: subprocess.Popen[str], lines: queue.Queue[dict[str, Any]]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                lines.put(json.loads(line), timeout=10)

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
        msg = self._wait(lambda m: m.get("event") == "ready", timeout_s)
        assert msg["peer_id"] == self.peer_id
        return msg

    def _wait(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.name}: no answer within {timeout_s} s; see {self.log_path}"
                )
            if self.proc is not None and self.proc.poll() is not None and self._lines.empty():
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                msg = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if pred(msg):
                return msg

    def call(self, cmd: str, timeout_s: float = CALL_TIMEOUT_S, **kw: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self._next_id += 1
        rid = self._next_id
        self.proc.stdin.write(json.dumps({"cmd": cmd, "id": rid, **kw}) + "\n")
        self.proc.stdin.flush()
        msg = self._wait(lambda m: m.get("id") == rid, timeout_s)
        assert "error" not in msg, msg
        return msg

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop by PID: SIGTERM, then SIGKILL if it lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@contextlib.contextmanager
def mesh(
    n: int, log_dir: Path, extra: dict[int, list[str]] | None = None, wait_mesh: bool = True
) -> Iterator[list[PeerProc]]:
    """Start n peers in a full mesh (each lists all others); stop them all afterwards."""
    ports = _free_ports(n)
    seeds = [os.urandom(32) for _ in range(n)]
    addrs = [
        f"/ip4/127.0.0.1/tcp/{p}/p2p/{peer_id_from_seed(s)}"
        for p, s in zip(ports, seeds, strict=True)
    ]
    procs = [
        PeerProc(
            f"peer{i}",
            seeds[i],
            ports[i],
            [a for j, a in enumerate(addrs) if j != i],
            log_dir,
            (extra or {}).get(i, []),
        )
        for i in range(n)
    ]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()
        if wait_mesh:
            for p in procs:
                wait_until(topic_peers_are(p, n - 1), MESH_TIMEOUT_S, f"{p.name} mesh")
        yield procs
    finally:
        for p in procs:
            p.stop()


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> float:
    """Poll ``cond`` until true; returns the seconds it took. Fails the test at the deadline."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for: {what}")
        time.sleep(poll_s)


def received_from(p: PeerProc, publisher: PeerProc) -> int:
    return int(p.call("status")["recv"].get(publisher.peer_id, 0))


def has_received(p: PeerProc, publisher: PeerProc, n: int) -> Callable[[], bool]:
    return lambda: received_from(p, publisher) == n


def topic_peers_are(p: PeerProc, n: int) -> Callable[[], bool]:
    return lambda: len(p.call("status")["topic_peers"]) == n


def stats_reach(p: PeerProc, **minimum: int) -> Callable[[], bool]:
    def check() -> bool:
        stats = p.call("status")["stats"]
        return all(stats[k] >= v for k, v in minimum.items())

    return check


# ---------------------------------------------------------------- multi-process tests


@pytest.mark.slow
def test_gossip_300_messages_reach_every_peer(tmp_path: Path) -> None:
    with mesh(4, tmp_path) as procs:
        pub, receivers = procs[0], procs[1:]
        res = pub.call("publish", count=300, size=300, batch=25, rate=100.0)
        assert res["published"] == 300
        for r in receivers:
            wait_until(has_received(r, pub, 300), 30.0, f"{r.name} receives 300")
        for r in receivers:
            st = r.call("status")
            assert st["recv"] == {pub.peer_id: 300}
            assert st["garbage"] == 0
            assert st["stats"]["dropped_recv_full"] == 0
        assert pub.call("status")["recv"] == {}  # own messages are not delivered back


@pytest.mark.slow
def test_garbage_is_rejected_by_the_validator_and_nodes_stay_up(tmp_path: Path) -> None:
    # peer3 is a bad node: its validator accepts anything, so it sends garbage out.
    with mesh(4, tmp_path, extra={3: ["--accept-all"]}) as procs:
        honest, bad = procs[:3], procs[3]
        bad.call("publish", count=20, size=200, batch=20, rate=1000.0, kind="garbage")
        bad.call("publish", count=5, size=200, batch=5, rate=1000.0, kind="boom")
        bad.call("publish", count=10, size=200, batch=10, rate=1000.0, kind="good")
        for p in honest:
            wait_until(has_received(p, bad, 10), 20.0, f"{p.name} receives the good ones")
            wait_until(
                stats_reach(p, validator_rejects=20, validator_errors=5),
                20.0,
                f"{p.name} rejected the garbage",
            )
        for p in honest:
            st = p.call("status")
            assert st["garbage"] == 0, st
            assert p.alive()
        # honest nodes still carry honest traffic afterwards
        honest[0].call("publish", count=20, size=300, batch=20, rate=1000.0)
        for p in honest[1:]:
            wait_until(has_received(p, honest[0], 20), 20.0, f"{p.name} after garbage")
        assert all(p.alive() for p in procs)


@pytest.mark.slow
def test_request_response_stream_protocol(tmp_path: Path) -> None:
    # peer0 may send frames of up to 16 MiB; peer1 serves with the 8 MiB cap.
    with mesh(
        2, tmp_path, extra={0: ["--max-frame-bytes", str(16 * MiB)]}, wait_mesh=False
    ) as procs:
        client, server = procs
        wait_until(
            lambda: server.peer_id in client.call("status")["peers"], MESH_TIMEOUT_S, "connected"
        )
        # 100 + 18 requests stay under the server's request burst (200), so its
        # rate limit cannot reset a stream here (test_p2p_limits covers the limit)
        res = client.call("request", peer=server.peer_id, op="echo", size=32, count=100)
        assert res["ok"] == 100 and res["n_errors"] == 0, res
        assert res["streams_opened"] <= 1, res  # one stream, reused
        res = client.call("request", peer=server.peer_id, op="big", size=MiB, count=5)
        assert res["ok"] == 5 and res["resp_len"] == MiB, res
        # a request frame over the server's cap: the server resets that stream
        res = client.call(
            "request", peer=server.peer_id, op="raw", size=9 * MiB, count=1, timeout_s=20.0
        )
        assert res["ok"] == 0 and res["n_errors"] == 1, res
        # a response over the server's cap: refused by the server, not sent
        res = client.call("request", peer=server.peer_id, op="big", size=9 * MiB, count=1)
        assert res["ok"] == 0 and res["n_errors"] == 1, res
        # a handler that raises: that stream is reset, the client gets an error
        res = client.call("request", peer=server.peer_id, op="fail", count=1)
        assert res["ok"] == 0 and res["n_errors"] == 1, res
        # the server is still up and serving
        res = client.call("request", peer=server.peer_id, op="echo", size=1000, count=10)
        assert res["ok"] == 10 and res["n_errors"] == 0, res
        st = server.call("status")["stats"]
        assert st["frame_errors"] == 2 and st["handler_errors"] == 1, st
        assert st["requests_rate_refused"] == 0, st
        # the client's own cap stops a frame before it is sent
        res = client.call("request", peer=server.peer_id, op="raw", size=17 * MiB, count=1)
        assert res["ok"] == 0 and "ValueError" in res["errors"][0], res
        assert client.alive() and server.alive()


@pytest.mark.slow
def test_killed_peer_restarts_and_the_others_redial_it(tmp_path: Path) -> None:
    with mesh(3, tmp_path) as procs:
        a, b, c = procs
        a.call("publish", count=20, size=300, batch=20, rate=1000.0)
        # c publishes a burst before it dies, so its next life must not reuse
        # those pubsub seqnos (note 11: peers would drop them as already seen)
        c.call("publish", count=20, size=300, batch=20, rate=1000.0)
        for r in (b, c):
            wait_until(has_received(r, a, 20), 20.0, f"{r.name} before the kill")
        for r in (a, b):
            wait_until(has_received(r, c, 20), 20.0, f"{r.name} hears c before the kill")
        c.kill9()
        wait_until(lambda: c.peer_id not in a.call("status")["peers"], 20.0, "a notices c is gone")
        wait_until(lambda: c.peer_id not in b.call("status")["peers"], 20.0, "b notices c is gone")
        # let a and b run through a few failed redials while c is down
        wait_until(stats_reach(a, redials=3), 20.0, "a redials c")
        # Same key, same port, and no persistent peers of its own: only the
        # redial loops of a and b can bring it back into the mesh.
        c.peers = []
        c.start()
        c.wait_ready()
        reconnect_s = wait_until(
            lambda: (
                c.peer_id in a.call("status")["peers"] and c.peer_id in b.call("status")["peers"]
            ),
            30.0,
            "a and b reconnect to c",
        )
        wait_until(topic_peers_are(c, 2), 30.0, "c back in the topic mesh")
        wait_until(topic_peers_are(a, 2), 30.0, "a sees c subscribed")
        # messages flow both ways again; c's fresh seqnos are not taken for old ones.
        # (30 s bounds: under CI load a heartbeat or two may pass before the mesh re-grafts
        # and gossip's IHAVE/IWANT fills in what the first push missed.)
        t0 = time.monotonic()
        c.call("publish", count=20, size=300, batch=20, rate=1000.0, start_seq=500)
        # Gossip is best effort: a burst sent while the mesh is still re-grafting may
        # miss c, so a keeps publishing fresh batches (at most 3) until c hears it.
        for attempt in range(3):
            a.call(
                "publish", count=20, size=300, batch=20, rate=1000.0, start_seq=1000 + 100 * attempt
            )
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and received_from(c, a) < 20:
                time.sleep(0.2)
            if received_from(c, a) >= 20:
                break
        assert received_from(c, a) >= 20, "c receives from a after restart"
        wait_until(has_received(a, c, 40), 30.0, "a receives from restarted c")
        wait_until(has_received(b, c, 40), 30.0, "b receives from restarted c")
        flow_s = time.monotonic() - t0
        print(f"reconnect {reconnect_s:.2f} s, messages flowing {flow_s:.2f} s later")
        assert all(p.alive() for p in procs)

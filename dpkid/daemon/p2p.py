"""The daemon's libp2p transport: gossipsub topics and a request/response stream protocol.

This module moves bytes and knows nothing about consensus. It runs on trio and
py-libp2p 0.8.1, with every pitfall in ``docs/libp2p.md`` handled:

* gossipsub v1.1 (``/meshsub/1.1.0``), spam protection OFF, adaptive gossip OFF,
  heartbeat 1 s, strict signing ON (libp2p.md §1, 2, 6, 8);
* the per-peer outbound RpcQueue is replaced by a larger one, bounded in RPCs
  *and* in bytes, that counts what it drops (libp2p.md §3);
* ``SUBSCRIPTION_CHANNEL_SIZE`` is raised, and each subscription is drained by
  a task that never blocks into the app's own bounded channel (libp2p.md §4);
* ``max_inbound_rpc_size`` and the RpcQueue ``max_message_size`` are one
  setting, ``P2PConfig.max_message_bytes`` (libp2p.md §5);
* ``ConnectionConfig(max_connections_per_peer=1)`` (libp2p.md §9);
* one supervisor per persistent peer that unblocks the peer from the negative
  dial cache before every redial, with exponential backoff (libp2p.md §10);
* the pubsub seqno counter starts at ``time.time_ns()`` (libp2p.md §11);
* stream frames are our own: a 4-byte big-endian length, a hard cap, read in a
  loop until complete (libp2p.md §12);
* pubsub writes are serialised per stream, and nothing a remote peer sends can
  raise out of a handler (``_GuardedPubsub``, ``_read_pubsub_rpc`` and the
  inbound-stream guard in ``run``; see below and protocol/WIRE.md section 6).

Why the pubsub patch: libp2p 0.8.1 writes RPCs to a peer's pubsub stream from
several tasks at once. The per-peer sending task (``handle_sending_messages``)
and the replay paths (``GossipSub.flush_pending_messages`` and
``send_recent_messages``, run when a peer connects or subscribes) all call
``Pubsub.write_msg`` on the same stream. A Yamux stream's ``write`` sends an RPC
as several DATA frames when it is larger than 64 KiB or than the send window,
and other writers run between those frames, so two RPCs' bytes interleave and
the receiver reads a garbage varint length ("Message length 23566647927") or
an undecodable RPC. libp2p lets that ``DecodeError``, and one raised by a
message with a garbage public key, escape and stop the node. The subclass holds
a per-stream trio.Lock for the whole of every RPC write, and turns every error
from one peer's stream or message into: reset that stream, drop the peer from
pubsub, count it in ``bad_peers()``, log, carry on.

Wire format of the stream protocol (any ``protocol_id`` registered with
``set_stream_handler``): the client writes a request frame, the server answers
with one response frame, then the stream may carry the next request.
A frame is ``len (u32 big-endian) || body`` with ``len <= max_frame_bytes``.
There is no status byte: a handler that fails, a frame over the cap, or a
truncated frame resets the stream, and the client's ``request`` raises
``RequestError``. Application errors belong in the application's own response
encoding.

Streams are REUSED: the client keeps up to ``max_idle_streams_per_peer`` idle
streams per (peer, protocol) and runs one request at a time on each; a
concurrent request takes another idle stream or opens a new one. A stream on
which a request failed or timed out is reset and never reused (its next bytes
could belong to the abandoned response). A request is sent at most once: there
is no automatic retry, the caller decides (sync and fetch requests are reads,
so retrying them is safe).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import struct
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Final, NamedTuple

# Importing libp2p costs about 0.7 s, and on import it sets
# logging.getLogger("libp2p").propagate = False (see install_libp2p_log_bridge).
import libp2p.pubsub.pubsub as _lp_pubsub_mod
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

__all__ = [
    "FRAME_HEADER_BYTES",
    "MAX_FRAME_BYTES_DEFAULT",
    "MAX_TESTED_MESSAGE_BYTES",
    "BadRequest",
    "P2PConfig",
    "P2PError",
    "P2PMessage",
    "P2PNode",
    "RequestError",
    "RequestHandler",
    "RequestTimeout",
    "TopicValidator",
    "encode_frame",
    "install_libp2p_log_bridge",
    "peer_id_from_seed",
    "read_frame",
]

log = logging.getLogger("dpkid.p2p")

FRAME_HEADER_BYTES: Final = 4
MAX_FRAME_BYTES_DEFAULT: Final = 8 * 1024 * 1024
MAX_TESTED_MESSAGE_BYTES: Final = 4 * 1024 * 1024
# Room for what pubsub adds around the payload of one published message: the
# signature (64 B), key (36 B), from/seqno/topic, protobuf framing and the signed
# peer record attached to every RPC (about 300 B). Generous on purpose.
PUBLISH_OVERHEAD_BYTES: Final = 4096
_U32 = struct.Struct(">I")

TopicValidator = Callable[[str, bytes], bool]
RequestHandler = Callable[[bytes, str], Awaitable[bytes]]
# (peer, kind, the exception): called for every bad RPC, message or frame a peer sent.
BadPeerCallback = Callable[[ID, str, BaseException], None]
StreamHandler = Callable[[INetStream], Awaitable[None]]


class P2PError(Exception):
    """Transport-level failure (the node is not running, a peer is unreachable, ...)."""


class RequestError(P2PError):
    """A request failed: stream reset, refused protocol, oversized or truncated frame."""


class RequestTimeout(RequestError):
    """A request got no complete response within its timeout."""


class FrameError(Exception):
    """A malformed or oversized frame on a stream (a remote error)."""


class BadRequest(Exception):
    """Raised by a stream handler for a request no honest peer sends: the
    stream is reset and the peer's score lowered (WIRE.md §6.1)."""


class _PeerBanned(Exception):
    """Input from a peer that is banned: dropped without counting it again."""


class P2PMessage(NamedTuple):
    """A gossip message accepted by the topic validator and delivered to the app."""

    topic: str
    from_peer: str  # base58 peer id of the signed originator (not the forwarder)
    data: bytes


@dataclass
class P2PConfig:
    """Transport settings. Units are in the names; every queue has a bound."""

    listen_port: int
    listen_host: str = "127.0.0.1"
    # Multiaddrs with the peer id, e.g. /ip4/10.0.0.2/tcp/26656/p2p/12D3KooW...
    persistent_peers: list[str] = field(default_factory=list)
    # One limit for a whole pubsub RPC, set identically on every node: it is
    # both Pubsub(max_inbound_rpc_size) and the RpcQueue max_message_size
    # (libp2p.md §5). A publish may carry max_message_bytes - PUBLISH_OVERHEAD_BYTES.
    # Pubsub reads an RPC as one varint-prefixed read, which was measured to
    # work at 1 and 4 MiB and to fail at 16 MiB (libp2p.md §12): above
    # MAX_TESTED_MESSAGE_BYTES, run() logs a warning. Bulk goes over streams.
    max_message_bytes: int = MAX_TESTED_MESSAGE_BYTES
    heartbeat_interval_s: int = 1
    # gossipsub mesh degree (the whole validator set is meshed when small)
    mesh_degree: int = 6
    mesh_degree_low: int = 4
    mesh_degree_high: int = 12
    # libp2p's subscription channel, per topic (libp2p.md §4; the default 32 drops)
    subscription_channel_size: int = 4096
    # The app's bounded channel that recv() reads; full -> drop and count.
    recv_queue_size: int = 10_000
    # Per-peer outbound pubsub queue, bounded in RPCs and in bytes (libp2p.md §3).
    outbound_queue_size: int = 2048
    outbound_queue_max_bytes: int = 64 * 1024 * 1024
    # App-level de-duplication (from, seqno), bounded.
    seen_cache_size: int = 65_536
    # Deliver the node's own published messages to recv()?
    deliver_own_messages: bool = False
    # gossipsub's IP-diversity grafting; meaningless for a fixed validator set,
    # and every node shares 127.0.0.1 in tests.
    eclipse_protection: bool = False
    # Redial of persistent peers.
    redial_backoff_min_ms: int = 100
    redial_backoff_max_ms: int = 2_000
    peer_check_interval_ms: int = 500
    dial_timeout_ms: int = 5_000
    # Stream protocol.
    max_frame_bytes: int = MAX_FRAME_BYTES_DEFAULT
    max_idle_streams_per_peer: int = 4
    client_stream_idle_ms: int = 60_000  # idle client streams older than this are closed
    server_stream_idle_ms: int = 300_000  # must exceed client_stream_idle_ms
    handler_timeout_ms: int = 30_000
    max_inbound_streams: int = 256
    max_outbound_requests: int = 256
    shutdown_timeout_ms: int = 5_000
    # Peers remembered in bad_peers() (least recently offending forgotten first).
    bad_peer_table_size: int = 1024
    # Per-peer limits and scoring (WIRE.md §6.1). Peers with limits and scores
    # kept at once (least recently seen forgotten first), and banned at once.
    peer_table_size: int = 1024
    # Gossip messages a peer may forward to us: over it they are dropped (and
    # count as an offence once per RPC). Honest load is about a hundred a
    # second per peer (a 4-node net at 2,000 tx/s, batches of up to 512), so
    # this is far above it; the bucket only caps what a flood costs us.
    gossip_msgs_per_s: int = 2_000
    gossip_msgs_burst: int = 10_000
    # Pubsub bytes a peer may send: beyond it we read its stream slower
    # (backpressure, no offence), so it costs bandwidth, never memory.
    gossip_bytes_per_s: int = 64 * 1024 * 1024
    gossip_bytes_burst: int = 128 * 1024 * 1024
    # Stream-protocol requests a peer may make; over it the stream is reset.
    requests_per_s: int = 50
    requests_burst: int = 200
    max_inbound_streams_per_peer: int = 32
    # A peer whose score falls below ban_score is disconnected and refused for
    # ban_ms. Offences lower the score (_OFFENCE_POINTS); it recovers towards 0
    # with this half-life, so only a steady or massive offender is banned.
    ban_score: int = -100
    score_half_life_ms: int = 60_000
    ban_ms: int = 60_000

    def validate(self) -> None:
        if not 0 <= self.listen_port <= 65535:
            raise ValueError(f"listen_port out of range: {self.listen_port}")
        if self.max_message_bytes <= PUBLISH_OVERHEAD_BYTES:
            raise ValueError("max_message_bytes is too small")
        if self.max_frame_bytes <= 0 or self.max_frame_bytes >= 2**32:
            raise ValueError("max_frame_bytes must be in (0, 2**32)")
        if not 0 < self.redial_backoff_min_ms <= self.redial_backoff_max_ms:
            raise ValueError("need 0 < redial_backoff_min_ms <= redial_backoff_max_ms")
        if self.server_stream_idle_ms <= self.client_stream_idle_ms:
            raise ValueError("server_stream_idle_ms must exceed client_stream_idle_ms")
        if self.heartbeat_interval_s < 1:
            raise ValueError("heartbeat_interval_s must be >= 1 (gossipsub takes an int)")
        for name in (
            "subscription_channel_size",
            "recv_queue_size",
            "outbound_queue_size",
            "outbound_queue_max_bytes",
            "seen_cache_size",
            "max_idle_streams_per_peer",
            "max_inbound_streams",
            "max_outbound_requests",
            "dial_timeout_ms",
            "peer_check_interval_ms",
            "handler_timeout_ms",
            "shutdown_timeout_ms",
            "bad_peer_table_size",
            "peer_table_size",
            "gossip_msgs_per_s",
            "gossip_msgs_burst",
            "gossip_bytes_per_s",
            "gossip_bytes_burst",
            "requests_per_s",
            "requests_burst",
            "max_inbound_streams_per_peer",
            "score_half_life_ms",
            "ban_ms",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.ban_score >= 0:
            raise ValueError("ban_score must be negative (a fresh peer scores 0)")
        for addr in self.persistent_peers:
            _parse_peer_addr(addr)


# ---------------------------------------------------------------- identity


def _key_pair(seed: bytes) -> Any:
    if len(seed) != 32:
        raise ValueError("the node key seed must be 32 bytes")
    return create_new_key_pair(seed)


def peer_id_from_seed(seed: bytes) -> str:
    """The base58 libp2p peer id (``12D3KooW...``) of an Ed25519 node-key seed."""
    return str(ID.from_pubkey(_key_pair(seed).public_key).to_base58())


def _parse_peer_addr(addr: str) -> PeerInfo:
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:  # the multiaddr library raises many types
        raise ValueError(f"bad persistent peer multiaddr {addr!r}: {exc}") from None


# ---------------------------------------------------------------- framing


def encode_frame(body: bytes, max_frame_bytes: int = MAX_FRAME_BYTES_DEFAULT) -> bytes:
    """``len || body``, ready for a single ``write()``. Raises ValueError over the cap."""
    if len(body) > max_frame_bytes:
        raise ValueError(f"frame of {len(body)} B exceeds the cap of {max_frame_bytes} B")
    return _U32.pack(len(body)) + body


async def _read_exact(stream: Any, n: int, *, at_boundary: bool) -> bytes | None:
    """Read exactly n bytes. None on a clean EOF before the first byte (if at_boundary).

    Each read returns at least one byte or raises, so the loop runs at most n times.
    """
    from libp2p.network.stream.exceptions import StreamEOF

    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except StreamEOF:
            chunk = b""
        if not chunk:
            if at_boundary and not buf:
                return None
            raise FrameError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: Any, max_frame_bytes: int) -> bytes | None:
    """Read one frame; None on a clean EOF between frames.

    Raises FrameError on a length over the cap or a truncated frame; the body of
    an oversized frame is never read.
    """
    header = await _read_exact(stream, FRAME_HEADER_BYTES, at_boundary=True)
    if header is None:
        return None
    (length,) = _U32.unpack(header)
    if length > max_frame_bytes:
        raise FrameError(f"frame length {length} exceeds the cap of {max_frame_bytes}")
    if length == 0:
        return b""
    body = await _read_exact(stream, length, at_boundary=False)
    assert body is not None
    return body


# ---------------------------------------------------------------- libp2p patches


class _BoundedRpcQueue(RpcQueue):
    """The per-peer outbound pubsub queue, bounded in RPCs and bytes, counting drops.

    libp2p constructs ``RpcQueue()`` with no arguments by looking the name up in
    ``libp2p.pubsub.pubsub`` (libp2p.md §3), so the settings are class attributes and
    apply process-wide. One node per process is the daemon's case; in-process
    tests should give every node the same settings.
    """

    queue_max_rpcs: int = 2048
    queue_max_bytes: int = 64 * 1024 * 1024
    max_rpc_bytes: int = 4 * 1024 * 1024
    dropped_rpcs: int = 0  # process-wide counter

    def __init__(self, max_size: int | None = None, max_message_size: int | None = None) -> None:
        cls = type(self)
        super().__init__(
            max_size=max_size if max_size is not None else cls.queue_max_rpcs,
            max_message_size=(
                max_message_size if max_message_size is not None else cls.max_rpc_bytes
            ),
        )
        self._bytes = 0
        self._sizes: dict[int, int] = {}

    def push(self, rpc: rpc_pb2.RPC, priority: bool = False) -> bool:
        size = rpc.ByteSize()
        if self._bytes + size > type(self).queue_max_bytes and len(self) > 0:
            _BoundedRpcQueue.dropped_rpcs += 1
            return False
        ok = bool(super().push(rpc, priority))
        if ok:
            self._bytes += size
            self._sizes[id(rpc)] = self._sizes.get(id(rpc), 0) + size
        elif not self.closed:
            _BoundedRpcQueue.dropped_rpcs += 1
        return ok

    async def pop(self) -> rpc_pb2.RPC | None:
        item: rpc_pb2.RPC | None = await super().pop()
        if item is not None:
            size = self._sizes.pop(id(item), 0)
            self._bytes = max(0, self._bytes - size)
        return item


# The release whose write and read paths _GuardedPubsub was written against
# (pubsub.py write_msg / continuously_read_stream / push_msg, gossipsub.py
# flush_pending_messages / send_recent_messages, yamux.py YamuxStream.write).
PATCHED_LIBP2P_VERSION: Final = "0.8.1"
_MAX_VARINT_BYTES: Final = 10  # a uvarint of up to 64 bits
# Pubsub.continuously_read_stream looks read_varint_prefixed_bytes_limited up in
# its module for every inbound RPC; _apply_libp2p_patches puts _read_pubsub_rpc
# there instead, which falls back on the original for other Pubsub instances.
_lp_read_rpc_limited: Final = read_varint_prefixed_bytes_limited
# True only inside a _GuardedPubsub read loop (a task-local flag). Any other
# Pubsub in the process keeps libp2p's reader and its exceptions.
_guarded_read: ContextVar[bool] = ContextVar("dpkid_p2p_guarded_read", default=False)
# Set with _guarded_read: charges every inbound RPC to its peer's limits and may
# trim it (P2PNode._admit_rpc).
RpcAdmission = Callable[[Any, bytes], Awaitable[bytes]]
_rpc_admission: ContextVar[RpcAdmission | None] = ContextVar("dpkid_p2p_admission", default=None)


async def _read_pubsub_rpc(reader: Any, max_length: int) -> bytes:
    """Read one varint-prefixed pubsub RPC: the reader of our pubsub read loops.

    libp2p's reader raises MessageTooLarge, which its loop handles itself (a
    warning and a reset), so the peer is never counted; and a stream that ends
    inside an RPC looks like a clean end to that loop. Here an over-long varint, a length over
    ``max_length`` (the body is then never read) and a truncated RPC raise
    FrameError. FrameError is not a libp2p exception, so libp2p's loop does not
    catch it and it reaches _GuardedPubsub.stream_handler. A clean end between
    RPCs raises StreamEOF, on which libp2p's loop ends quietly, as before.
    """
    if not _guarded_read.get():
        return await _lp_read_rpc_limited(reader, max_length)
    from libp2p.network.stream.exceptions import StreamEOF

    length = 0
    for i in range(_MAX_VARINT_BYTES):
        try:
            b = await reader.read(1)
        except StreamEOF:
            b = b""
        if not b:
            if i == 0:
                raise StreamEOF("stream ended between RPCs")
            raise FrameError("stream ended inside the length prefix of an RPC")
        length |= (b[0] & 0x7F) << (7 * i)
        if not b[0] & 0x80:
            break
    else:
        raise FrameError(f"RPC length prefix longer than {_MAX_VARINT_BYTES} bytes")
    if length > max_length:
        raise FrameError(f"RPC length {length} exceeds max_inbound_rpc_size {max_length}")
    body = await _read_exact(reader, length, at_boundary=False)
    assert body is not None
    admit = _rpc_admission.get()
    return body if admit is None else await admit(reader, body)


class _GuardedPubsub(Pubsub):
    """libp2p's Pubsub with RPC writes serialised per stream and inbound errors contained.

    * ``write_msg``: every writer of a peer's pubsub stream calls it: the
      per-peer sending task (pubsub.py ``handle_sending_messages``) and
      GossipSub's replay paths (``flush_pending_messages``,
      ``send_recent_messages``), which run in other tasks when a peer connects
      or subscribes. One Yamux ``write`` sends an RPC as several frames
      (above 64 KiB or the send window) and yields between them, so without a
      lock the RPCs of two writers interleave on the wire. The stream's lock is
      held for the whole RPC. A write that raised or was cancelled part-way may
      have left half an RPC on the stream: the stream is reset, never written
      again, and the peer dropped (pubsub opens a fresh stream while the peer
      stays connected).
    * ``stream_handler``: libp2p's read loop, run with _read_pubsub_rpc. Any
      exception out of it (a bad frame, an undecodable RPC, the router failing
      on a hostile RPC) resets that stream and drops the peer from pubsub; then
      ``on_bad_peer`` counts and logs it.
    * ``push_msg`` (a task per received message): an exception out of it, e.g.
      libp2p's signature check raising on a ``key`` that is not a public key,
      is counted against the forwarder instead of stopping the pubsub service.

    The only other write, the hello RPC in ``_handle_new_peer``, happens
    before the stream is in ``peers``, so no other task can write to it yet.
    """

    def __init__(
        self,
        *args: Any,
        on_bad_peer: BadPeerCallback,
        admit_rpc: RpcAdmission | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._on_bad_peer = on_bad_peer
        self._admit_rpc = admit_rpc
        # Keyed by the stream object, so entries go away with their streams.
        self._write_locks: weakref.WeakKeyDictionary[INetStream, trio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._broken_streams: weakref.WeakSet[INetStream] = weakref.WeakSet()

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        lock = self._write_locks.get(stream)
        if lock is None:  # no await since the get: no other task can slip in
            lock = self._write_locks[stream] = trio.Lock()
        async with lock:
            if stream in self._broken_streams:
                return False
            finished = False
            try:
                ok = bool(await super().write_msg(stream, rpc_msg))
                finished = True
            finally:
                if not finished:
                    # Raised or cancelled part-way: the peer may hold half an RPC.
                    await self._break_stream(stream)
                    peer_id = stream.muxed_conn.peer_id
                    if self.peers.get(peer_id) is stream:
                        self._handle_dead_peer(peer_id)
            if not ok:
                # Closed or reset: libp2p has dropped the peer already.
                await self._break_stream(stream)
            return ok

    async def _break_stream(self, stream: INetStream) -> None:
        self._broken_streams.add(stream)
        await _reset_quietly(stream)

    async def stream_handler(self, stream: INetStream) -> None:
        peer_id = stream.muxed_conn.peer_id
        token = _guarded_read.set(True)
        admission = _rpc_admission.set(self._admit_rpc)
        try:
            await self.continuously_read_stream(stream)
        except _PeerBanned:
            await _reset_quietly(stream)
            await self._drop_peer(peer_id)
        except Exception as exc:
            # Whatever it was, nothing more on this stream can be trusted.
            await _reset_quietly(stream)
            await self._drop_peer(peer_id)
            self._on_bad_peer(peer_id, "pubsub-rpc", exc)
        finally:
            _rpc_admission.reset(admission)
            _guarded_read.reset(token)

    async def _drop_peer(self, peer_id: ID) -> None:
        """Forget the peer as libp2p does for an oversized RPC, and reset our stream to it.

        If the peer is still connected, libp2p opens a fresh outbound stream
        (and the peer, seeing its stream reset, opens a fresh one to us with its
        subscriptions), so an honest peer recovers within a round trip. The old
        outbound stream is reset rather than left open and idle on both sides.
        """
        outbound = self.peers.get(peer_id)
        self._handle_dead_peer(peer_id)
        if outbound is not None:
            await self._break_stream(outbound)

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        try:
            await super().push_msg(msg_forwarder, msg)
        except Exception as exc:
            if msg_forwarder == self.my_id:
                raise  # our own publish: publish()'s caller must see it
            self._on_bad_peer(msg_forwarder, "pubsub-message", exc)


# What _GuardedPubsub overrides or calls, and the reader it replaces. If a libp2p
# upgrade renames one, the node must not start with the race silently back.
_PUBSUB_PATCH_POINTS: Final = (
    "write_msg",
    "stream_handler",
    "continuously_read_stream",
    "push_msg",
    "_handle_dead_peer",
    "my_id",
)


def _check_libp2p_patch_points() -> None:
    missing = [name for name in _PUBSUB_PATCH_POINTS if not hasattr(Pubsub, name)]
    if not hasattr(_lp_pubsub_mod, "read_varint_prefixed_bytes_limited"):
        missing.append("read_varint_prefixed_bytes_limited")
    if missing:
        raise RuntimeError(
            f"libp2p.pubsub.pubsub lacks {missing}: re-check _GuardedPubsub in "
            "dpkid/daemon/p2p.py against this libp2p release"
        )
    try:
        version = metadata.version("libp2p")
    except metadata.PackageNotFoundError:
        version = "unknown"
    if version != PATCHED_LIBP2P_VERSION:
        log.warning(
            "p2p: libp2p %s is installed; _GuardedPubsub was checked against %s "
            "(its pubsub write paths must still all go through Pubsub.write_msg)",
            version,
            PATCHED_LIBP2P_VERSION,
        )


def _apply_libp2p_patches(cfg: P2PConfig) -> None:
    _check_libp2p_patch_points()
    setattr(  # noqa: B010 - replaces the reader libp2p's read loop looks up
        _lp_pubsub_mod, "read_varint_prefixed_bytes_limited", _read_pubsub_rpc
    )
    cur = _BoundedRpcQueue
    if getattr(_lp_pubsub_mod, "RpcQueue", None) is cur and (
        cur.queue_max_rpcs,
        cur.queue_max_bytes,
        cur.max_rpc_bytes,
    ) != (cfg.outbound_queue_size, cfg.outbound_queue_max_bytes, cfg.max_message_bytes):
        log.warning("p2p: RpcQueue settings changed by a second node in this process")
    cur.queue_max_rpcs = cfg.outbound_queue_size
    cur.queue_max_bytes = cfg.outbound_queue_max_bytes
    cur.max_rpc_bytes = cfg.max_message_bytes
    setattr(_lp_pubsub_mod, "RpcQueue", cur)  # noqa: B010 - replaces the class libp2p constructs
    if cfg.subscription_channel_size > _lp_pubsub_mod.SUBSCRIPTION_CHANNEL_SIZE:
        _lp_pubsub_mod.SUBSCRIPTION_CHANNEL_SIZE = cfg.subscription_channel_size


# ---------------------------------------------------------------- logging

_NOISY_LIBP2P_LOGGERS: Final = (
    "libp2p.transport.tcp.tcp",
    "libp2p.pubsub.gossipsub",
    "libp2p.pubsub.pubsub",
    "libp2p.host.basic_host",
    "libp2p.protocol_muxer.multiselect_client",
)


class Libp2pLogFilter(logging.Filter):
    """Handler-level filter for libp2p's records.

    The noisy loggers (an ERROR per failed dial while a peer is down, WARNINGs
    per full buffer or reconnect race) get at most ``burst`` records per
    ``window_s`` each; the rest are counted and the count is reported with the
    next record that passes. Failed TCP dials are downgraded to DEBUG: the
    redial loop logs them itself (``dpkid.p2p``).
    """

    def __init__(self, burst: int = 5, window_s: float = 30.0) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._windows: dict[str, tuple[float, int]] = {}
        self.suppressed: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not name.startswith(_NOISY_LIBP2P_LOGGERS):
            return True
        if name == "libp2p.transport.tcp.tcp" and str(record.msg).startswith("Failed to open TCP"):
            # Expected while a persistent peer is down; the redial loop reports it.
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return True
        now = time.monotonic()
        start, count = self._windows.get(name, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        if count >= self.burst:
            self._windows[name] = (start, count)
            self.suppressed[name] = self.suppressed.get(name, 0) + 1
            return False
        self._windows[name] = (start, count + 1)
        skipped = self.suppressed.pop(name, 0)
        if skipped:
            record.msg = f"{record.msg} [{skipped} similar records suppressed]"
        return True


class _ForwardToDpkid(logging.Handler):
    """Re-emits libp2p records through ``dpkid.p2p.libp2p`` so the app's handlers see them."""

    def __init__(self) -> None:
        super().__init__()
        self.target = logging.getLogger("dpkid.p2p.libp2p")

    def emit(self, record: logging.LogRecord) -> None:
        if self.target.isEnabledFor(record.levelno):
            self.target.handle(record)


_log_bridge: _ForwardToDpkid | None = None


def install_libp2p_log_bridge(level: int = logging.WARNING) -> None:
    """Route libp2p's logs (which never propagate to root) into ``dpkid.p2p.libp2p``.

    Idempotent. Attaches one handler, with a ``Libp2pLogFilter``, to the
    ``libp2p`` logger and sets its level unless LIBP2P_DEBUG is set.
    """
    global _log_bridge
    lib = logging.getLogger("libp2p")
    if _log_bridge is None:
        _log_bridge = _ForwardToDpkid()
        _log_bridge.addFilter(Libp2pLogFilter())
        lib.addHandler(_log_bridge)
    if not os.environ.get("LIBP2P_DEBUG"):
        lib.setLevel(level)


# ---------------------------------------------------------------- the node


class _LogLimiter:
    """At most one log record per key per interval: remote peers must not flood our logs."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.interval_s:
            return False
        self._last[key] = now
        return True


class _BadPeers:
    """How many bad RPCs, messages and frames each remote peer sent; bounded (LRU).

    libp2p's gossipsub scorer is no place for this: its weights are 0 by default
    and it forgets a peer as soon as pubsub drops it.
    """

    def __init__(self, max_peers: int) -> None:
        self.max_peers = max_peers
        self._counts: OrderedDict[str, int] = OrderedDict()

    def add(self, peer: str) -> int:
        """Count one more for ``peer``; returns its count."""
        count = self._counts.pop(peer, 0) + 1
        self._counts[peer] = count
        if len(self._counts) > self.max_peers:
            self._counts.popitem(last=False)
        return count

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)


class _TokenBucket:
    """``rate`` per second, up to ``burst`` saved; times from time.monotonic()."""

    __slots__ = ("burst", "rate", "t_s", "tokens")

    def __init__(self, rate: float, burst: float, now_s: float) -> None:
        self.rate, self.burst, self.tokens, self.t_s = rate, burst, burst, now_s

    def _refill(self, now_s: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now_s - self.t_s) * self.rate)
        self.t_s = now_s

    def take_upto(self, n: int, now_s: float) -> int:
        """Take up to ``n`` whole tokens; how many were taken."""
        self._refill(now_s)
        k = max(0, min(n, int(self.tokens)))
        self.tokens -= k
        return k

    def charge(self, n: int, now_s: float) -> float:
        """Take ``n`` even if that goes into debt; seconds until the debt is
        repaid (the caller waits that long before it reads more)."""
        self._refill(now_s)
        self.tokens -= n
        return max(0.0, -self.tokens / self.rate)


# Points an offence costs a peer's score (it starts at 0; ban below
# P2PConfig.ban_score, -100 by default). Honest peers commit none of these in
# normal operation: their validators match ours, they frame correctly, they
# stay under the rates. The weights let a garbage flood through in well under
# a second, and leave room for a peer that crashed mid-RPC now and then.
_OFFENCE_POINTS: Final = {
    "pubsub-rpc": 10,  # an undecodable or oversized RPC: the stream was reset
    "pubsub-message": 10,  # a message whose handling raised (e.g. a forged key)
    "stream-frame": 10,  # a bad frame on the stream protocol
    "bad-request": 5,  # a well-framed request no honest peer sends
    "invalid-gossip": 1,  # a message our topic validator rejected
    "gossip-rate": 1,  # an RPC trimmed for being over the message rate
    "request-rate": 5,  # a stream request over the request rate
}


@dataclass
class _PeerState:
    msgs: _TokenBucket
    bytes: _TokenBucket
    requests: _TokenBucket
    score: float = 0.0
    score_t_s: float = 0.0
    inbound_streams: int = 0


class _PeerGuard:
    """Per-peer token buckets, scores and bans; both tables bounded (LRU).

    An attacker that rotates peer ids only evicts old entries: each new id
    costs it a handshake and starts with the same limits.
    """

    def __init__(self, cfg: P2PConfig) -> None:
        self.cfg = cfg
        self._peers: OrderedDict[str, _PeerState] = OrderedDict()
        self._banned: OrderedDict[str, float] = OrderedDict()  # peer -> until (monotonic s)

    def state(self, peer: str, now_s: float) -> _PeerState:
        st = self._peers.pop(peer, None)
        if st is None:
            c = self.cfg
            st = _PeerState(
                _TokenBucket(c.gossip_msgs_per_s, c.gossip_msgs_burst, now_s),
                _TokenBucket(c.gossip_bytes_per_s, c.gossip_bytes_burst, now_s),
                _TokenBucket(c.requests_per_s, c.requests_burst, now_s),
                score_t_s=now_s,
            )
        self._peers[peer] = st
        if len(self._peers) > self.cfg.peer_table_size:
            self._peers.popitem(last=False)
        return st

    def penalize(self, peer: str, points: float, now_s: float) -> bool:
        """Lower ``peer``'s score; True when it just fell below ban_score."""
        st = self.state(peer, now_s)
        half_lives = (now_s - st.score_t_s) * 1000 / self.cfg.score_half_life_ms
        st.score = st.score * 0.5**half_lives - points
        st.score_t_s = now_s
        if st.score < self.cfg.ban_score and not self.is_banned(peer, now_s):
            st.score = 0.0  # a fresh start when the ban ends
            self._banned.pop(peer, None)
            self._banned[peer] = now_s + self.cfg.ban_ms / 1000
            if len(self._banned) > self.cfg.peer_table_size:
                self._banned.popitem(last=False)
            return True
        return False

    def is_banned(self, peer: str, now_s: float) -> bool:
        until = self._banned.get(peer)
        return until is not None and now_s < until

    def expire(self, now_s: float) -> list[str]:
        """Forget bans that have ended; the peers they were for."""
        done = [p for p, until in self._banned.items() if until <= now_s]
        for p in done:
            del self._banned[p]
        return done

    def banned(self) -> list[str]:
        return list(self._banned)

    def scores(self) -> dict[str, float]:
        return {p: st.score for p, st in self._peers.items() if st.score}


# What the node does about each kind of bad input from a peer (for the log).
_BAD_INPUT_ACTION: Final = {
    "pubsub-rpc": "pubsub stream reset, peer dropped from pubsub",
    "pubsub-message": "message dropped",
    "stream-frame": "stream reset",
}


class _BanNotifee(INotifee):
    """Tells the node of every new connection, so that a banned peer's is closed."""

    def __init__(self, node: P2PNode) -> None:
        self._node = weakref.ref(node)

    async def connected(self, network: Any, conn: Any) -> None:
        node = self._node()
        if node is not None:
            with contextlib.suppress(Exception):
                node._on_connected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def disconnected(self, network: Any, conn: Any) -> None:
        return None

    async def listen(self, network: Any, multiaddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        return None


@dataclass
class _Topic:
    validator: TopicValidator
    subscribed: bool = False


@dataclass
class _IdleStream:
    stream: INetStream
    last_used_s: float


@dataclass
class P2PStats:
    delivered: int = 0
    dropped_recv_full: int = 0
    duplicates: int = 0
    validator_rejects: int = 0
    validator_errors: int = 0
    own_rejected: int = 0
    published: int = 0
    redials: int = 0
    frame_errors: int = 0
    handler_errors: int = 0
    requests_served: int = 0
    inbound_streams_refused: int = 0
    streams_opened: int = 0
    # Inbound pubsub streams reset for a bad frame or an RPC whose handling raised.
    pubsub_bad_rpcs: int = 0
    # Received pubsub messages whose handling raised (dropped).
    pubsub_bad_messages: int = 0
    # Inbound streams whose libp2p handler raised anyway (caught by the outer guard).
    inbound_stream_errors: int = 0
    # Per-peer limits and scoring (WIRE.md §6.1).
    peers_banned: int = 0
    banned_refused: int = 0  # connections, streams and RPCs refused from banned peers
    gossip_rate_dropped: int = 0  # messages dropped for a peer over its message rate
    requests_rate_refused: int = 0  # stream requests refused for a peer over its rate
    bad_requests: int = 0  # stream requests a handler called bad (BadRequest)

    def as_dict(self) -> dict[str, int]:
        d = dict(self.__dict__)
        d["outbound_rpcs_dropped"] = _BoundedRpcQueue.dropped_rpcs
        return d


class P2PNode:
    """One libp2p host with gossipsub and the request/response stream protocol.

    Usage::

        node = P2PNode(seed, P2PConfig(listen_port=26656, persistent_peers=[...]))
        node.subscribe("dpkid/tx/1", validate_tx_batch)
        node.set_stream_handler("/dpkid/sync/1", serve_sync)
        async with trio.open_nursery() as n:
            await n.start(node.run)
            await node.publish("dpkid/tx/1", batch)
            async for msg in node:          # P2PMessage(topic, from_peer, data)
                ...
            await node.aclose()
    """

    def __init__(self, seed: bytes, config: P2PConfig) -> None:
        config.validate()
        self.config = config
        self._key_pair = _key_pair(seed)
        self._id = ID.from_pubkey(self._key_pair.public_key)
        self._peer_id = str(self._id.to_base58())
        self._persistent = [_parse_peer_addr(a) for a in config.persistent_peers]
        self._topics: dict[str, _Topic] = {}
        self._handlers: dict[str, RequestHandler] = {}
        self._send, self._recv = trio.open_memory_channel[P2PMessage](config.recv_queue_size)
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._idle: dict[tuple[str, str], deque[_IdleStream]] = {}
        self._inbound_slots = trio.Semaphore(config.max_inbound_streams)
        self._outbound_slots = trio.Semaphore(config.max_outbound_requests)
        self._host: IHost | None = None
        self._pubsub: Pubsub | None = None
        self._nursery: trio.Nursery | None = None
        self._run_scope: trio.CancelScope | None = None
        self._stop = trio.Event()
        self._finished = trio.Event()
        self._started = False
        self._running = False
        self._listen_port = config.listen_port
        self._log_limiter = _LogLimiter(interval_s=10.0)
        self._stream_log_limiter = _LogLimiter(interval_s=1.0)
        self._bad_peers = _BadPeers(config.bad_peer_table_size)
        self._guard = _PeerGuard(config)
        self.stats = P2PStats()

    # ------------------------------------------------------------ properties

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def listen_multiaddr(self) -> str:
        """``/ip4/<host>/tcp/<port>/p2p/<peer id>``; the real port once running."""
        proto = "ip6" if ":" in self.config.listen_host else "ip4"
        return f"/{proto}/{self.config.listen_host}/tcp/{self._listen_port}/p2p/{self._peer_id}"

    @property
    def running(self) -> bool:
        return self._running

    def peers(self) -> list[str]:
        """Peer ids with a live connection."""
        if self._host is None:
            return []
        return sorted(str(p.to_base58()) for p in self._host.get_connected_peers())

    def topic_peers(self, topic: str) -> list[str]:
        """Connected peers that have told us they subscribe to ``topic``."""
        if self._pubsub is None:
            return []
        return sorted(str(p.to_base58()) for p in self._pubsub.peer_topics.get(topic, ()))

    def bad_peers(self) -> dict[str, int]:
        """Peer id -> bad RPCs, messages and stream frames it sent (bounded, most recent last)."""
        return self._bad_peers.snapshot()

    def banned_peers(self) -> list[str]:
        """Peers banned now or recently (bounded; oldest first)."""
        return self._guard.banned()

    def peer_scores(self) -> dict[str, float]:
        """Peer id -> score, for peers whose score is not 0 (bounded)."""
        return self._guard.scores()

    def _offence(self, peer_id: ID | str, kind: str) -> None:
        """Lower the peer's score by the offence's points; ban it below ban_score."""
        peer = peer_id if isinstance(peer_id, str) else str(peer_id.to_base58())
        if peer == self._peer_id:
            return
        if self._guard.penalize(peer, _OFFENCE_POINTS[kind], time.monotonic()):
            self._ban(peer, kind)

    def _ban(self, peer: str, kind: str) -> None:
        """Disconnect a peer whose score fell below ban_score, and refuse it for ban_ms:
        its connections (the notifee), streams, pubsub RPCs, and messages it
        originated that others relay (pubsub's blacklist)."""
        self.stats.peers_banned += 1
        # A new peer id costs an attacker a handshake: one record per second at most.
        if self._stream_log_limiter.allow("ban"):
            log.warning(
                "p2p: banned peer %s for %d s: score below %d (last offence: %s); %d banned so far",
                peer,
                self.config.ban_ms // 1000,
                self.config.ban_score,
                kind,
                self.stats.peers_banned,
            )
        try:
            pid = ID.from_base58(peer)
        except Exception:
            return
        if self._pubsub is not None:
            # The set, not add_to_blacklist(): that also schedules pubsub's
            # _teardown_if_connected, which races our disconnect (both delete
            # pubsub.peers[pid]; its KeyError escapes pubsub's manager and stops
            # the node). The disconnect below does the teardown.
            self._pubsub.blacklisted_peers.add(pid)
        if self._nursery is not None:
            self._nursery.start_soon(self._disconnect, pid)

    async def _disconnect(self, pid: ID) -> None:
        if self._host is None:
            return
        with trio.move_on_after(self.config.dial_timeout_ms / 1000):
            with contextlib.suppress(Exception):
                await self._host.disconnect(pid)

    def _on_connected(self, pid: ID) -> None:
        """A new connection: one from a banned peer is closed at once."""
        if self._guard.is_banned(str(pid.to_base58()), time.monotonic()):
            self.stats.banned_refused += 1
            if self._nursery is not None:
                self._nursery.start_soon(self._disconnect, pid)

    async def _admit_rpc(self, stream: Any, body: bytes) -> bytes:
        """Charge one inbound pubsub RPC to its peer's limits (our pubsub reader calls it).

        Bytes over the peer's rate delay the next read of its stream
        (backpressure, no offence). Messages over its rate are cut from the
        RPC before libp2p sees them, so they never get a task or a validator
        run; that costs the peer one gossip-rate offence per RPC.
        """
        peer = str(stream.muxed_conn.peer_id.to_base58())
        now_s = time.monotonic()
        if self._guard.is_banned(peer, now_s):
            self.stats.banned_refused += 1
            raise _PeerBanned(peer)
        st = self._guard.state(peer, now_s)
        wait_s = st.bytes.charge(len(body), now_s)
        try:
            rpc = rpc_pb2.RPC.FromString(body)
        except Exception:
            return body  # libp2p's parse raises next, and the stream guard counts it
        n = len(rpc.publish)
        if n:
            allowed = st.msgs.take_upto(n, now_s)
            if allowed < n:
                self.stats.gossip_rate_dropped += n - allowed
                del rpc.publish[allowed:]
                body = rpc.SerializeToString()
                self._offence(peer, "gossip-rate")
        if wait_s > 0:
            await trio.sleep(wait_s)
        return body

    async def _guard_loop(self) -> None:
        """Lift bans that have ended, once a second (the table is bounded)."""
        while True:
            await trio.sleep(1.0)
            self._guard.expire(time.monotonic())
            if self._pubsub is not None:
                # pubsub's blacklist follows the bounded ban table, including bans
                # it evicted when full, so the blacklist stays bounded too.
                banned = set(self._guard.banned())
                for pid in list(self._pubsub.blacklisted_peers):
                    if str(pid.to_base58()) not in banned:
                        self._pubsub.blacklisted_peers.discard(pid)

    def _note_bad_peer(self, peer_id: ID | str, kind: str, exc: BaseException) -> None:
        """Count bad input from a peer; log its first offence, then at most one per 10 s per kind.

        The caller has already contained it (reset the stream, dropped the message).
        """
        peer = peer_id if isinstance(peer_id, str) else str(peer_id.to_base58())
        if self._guard.is_banned(peer, time.monotonic()):
            return  # the ban cut its streams mid-RPC: dealt with already
        count = self._bad_peers.add(peer)
        self._offence(peer, kind)
        if kind == "pubsub-rpc":
            self.stats.pubsub_bad_rpcs += 1
        elif kind == "pubsub-message":
            self.stats.pubsub_bad_messages += 1
        # A new peer id costs an attacker a handshake, so first offences are
        # rate-limited too (1/s); repeats by one peer are summarised by count.
        limiter, key = (
            (self._stream_log_limiter, "bad-peer-new")
            if count == 1
            else (self._log_limiter, f"bad-peer:{kind}")
        )
        if not limiter.allow(key):
            return
        # A bad frame explains itself; anything else may be a libp2p bug, so keep its traceback.
        known = isinstance(exc, FrameError) or type(exc).__name__ == "DecodeError"
        log.warning(
            "p2p: bad %s from %s: %s: %s; %s (%d from this peer)",
            kind,
            peer,
            type(exc).__name__,
            exc,
            _BAD_INPUT_ACTION.get(kind, "contained"),
            count,
            exc_info=None if known else exc,
        )

    def _contain_inbound(self, inner: StreamHandler) -> StreamHandler:
        """Wrap libp2p's handler of every inbound stream: nothing raised in it may stop the node.

        Behind the specific guards (_GuardedPubsub, _serve_stream) this catches
        what they do not know about: libp2p's own protocols (identify, ping, ...)
        and its protocol negotiation. Left alone, an exception there fails the
        connection's nursery and, through the swarm, the whole host.
        """

        async def handler(stream: INetStream) -> None:
            try:
                await inner(stream)
            except Exception:
                self.stats.inbound_stream_errors += 1
                try:
                    peer = str(stream.muxed_conn.peer_id.to_base58())
                    proto = str(stream.get_protocol())
                except Exception:
                    peer, proto = "?", "?"
                self._stream_log(
                    "inbound",
                    logging.ERROR,
                    "p2p: handling an inbound %s stream from %s raised; stream reset",
                    proto,
                    peer,
                    exc_info=True,
                )
                await _reset_quietly(stream)

        return handler

    def outbound_backlog(self) -> int:
        """Largest number of RPCs queued for any one peer: pace publishing by it."""
        if self._pubsub is None:
            return 0
        return max((len(q) for q in self._pubsub.peer_queues.values()), default=0)

    # ------------------------------------------------------------ lifecycle

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until ``aclose()``; reports started once listening and subscribed."""
        if self._started:
            raise RuntimeError("P2PNode.run() may be called once")
        self._started = True
        cfg = self.config
        install_libp2p_log_bridge()
        _apply_libp2p_patches(cfg)
        if cfg.max_message_bytes > MAX_TESTED_MESSAGE_BYTES:
            # Info, not a warning: the daemon's default needs room for a full
            # block, and a warning on every default start teaches operators to
            # ignore warnings.
            log.info(
                "p2p: max_message_bytes=%d is above the %d B measured to work for gossip"
                " (docs/libp2p.md §12); bulk data goes over the stream protocol",
                cfg.max_message_bytes,
                MAX_TESTED_MESSAGE_BYTES,
            )
        listen = multiaddr.Multiaddr(
            f"/{'ip6' if ':' in cfg.listen_host else 'ip4'}/{cfg.listen_host}/tcp/{cfg.listen_port}"
        )
        host = new_host(
            key_pair=self._key_pair,
            listen_addrs=[listen],
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,
                dial_timeout=cfg.dial_timeout_ms / 1000,
            ),
        )
        router = GossipSub(
            protocols=[PROTOCOL_ID_V11],
            degree=cfg.mesh_degree,
            degree_low=cfg.mesh_degree_low,
            degree_high=cfg.mesh_degree_high,
            heartbeat_interval=cfg.heartbeat_interval_s,
            heartbeat_initial_delay=0.1,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            eclipse_protection_enabled=cfg.eclipse_protection,
        )
        pubsub = _GuardedPubsub(
            host,
            router,
            strict_signing=True,
            max_inbound_rpc_size=cfg.max_message_bytes,
            on_bad_peer=self._note_bad_peer,
            admit_rpc=self._admit_rpc,
        )
        # Note 11: the counter starts at time.time() seconds and rises by one per
        # message, so a restarted node would reuse seqnos its peers still remember.
        # The machine's clock, never the node's test_clock_offset_ms: an offset
        # lowered between runs would bring back seqnos peers remember.
        pubsub.counter = time.time_ns()
        network: Any = host.get_network()
        # Rule: nothing a remote peer sends may raise out of its handler (WIRE.md section 6).
        network.set_stream_handler(self._contain_inbound(network.common_stream_handler))
        network.register_notifee(_BanNotifee(self))
        # We dial persistent peers ourselves (below). libp2p's auto-connector
        # would also dial every address it learns, aiming at 200 connections.
        network.auto_connector.run_background_task = _no_background_task
        network.auto_connector.maybe_connect = _no_auto_connect
        for info in self._persistent:
            network.protect(info.peer_id, "dpkid-persistent")  # never pruned
        self._host = host
        self._pubsub = pubsub
        for proto in self._handlers:
            self._register_handler(proto)
        try:
            with trio.CancelScope() as scope:
                self._run_scope = scope
                async with host.run(listen_addrs=[listen]):
                    self._listen_port = self._actual_port(host)
                    async with (
                        background_trio_service(pubsub),
                        background_trio_service(router),
                    ):
                        with trio.fail_after(10):
                            await pubsub.wait_until_ready()
                        async with trio.open_nursery() as nursery:
                            self._nursery = nursery
                            for topic in list(self._topics):
                                await self._subscribe_now(topic)
                            for info in self._persistent:
                                nursery.start_soon(self._supervise_peer, info)
                            nursery.start_soon(self._janitor)
                            nursery.start_soon(self._guard_loop)
                            self._running = True
                            log.info(
                                "p2p: started %s persistent_peers=%d",
                                self.listen_multiaddr,
                                len(self._persistent),
                            )
                            task_status.started()
                            await self._stop.wait()
                            self._running = False
                            nursery.cancel_scope.cancel()
                        self._nursery = None
                        await self._close_idle_streams()
        finally:
            self._running = False
            self._nursery = None
            self._send.close()
            self._finished.set()
            log.info("p2p: stopped %s", self._peer_id)

    async def aclose(self) -> None:
        """Stop the node; returns when ``run()`` has finished (bounded by shutdown_timeout_ms)."""
        self._stop.set()
        if not self._started:
            self._send.close()
            return
        with trio.move_on_after(self.config.shutdown_timeout_ms / 1000):
            await self._finished.wait()
            return
        log.warning("p2p: clean shutdown took too long; cancelling")
        if self._run_scope is not None:
            self._run_scope.cancel()
        with trio.move_on_after(self.config.shutdown_timeout_ms / 1000):
            await self._finished.wait()

    @staticmethod
    def _actual_port(host: IHost) -> int:
        for addr in host.get_addrs():
            try:
                port = addr.value_for_protocol("tcp")
            except Exception:
                continue
            if port:
                return int(port)
        raise P2PError("the host reports no TCP listen address")

    # ------------------------------------------------------------ gossip

    def subscribe(self, topic: str, validator: TopicValidator) -> None:
        """Subscribe to ``topic``: messages where ``validator(topic, data) is True`` reach recv().

        The validator is synchronous, runs before a message is forwarded (so
        garbage is not relayed), and must be cheap. It also runs on this node's
        own publishes: one it rejects is not sent (counted in
        ``stats.own_rejected``). An exception in it counts as a rejection. May be
        called before or after ``run()``.
        """
        if topic in self._topics:
            raise ValueError(f"already subscribed to {topic!r}")
        self._topics[topic] = _Topic(validator)
        if self._nursery is not None:
            self._nursery.start_soon(self._subscribe_now, topic)

    async def _subscribe_now(self, topic: str) -> None:
        pubsub = self._pubsub
        entry = self._topics[topic]
        if pubsub is None or entry.subscribed:
            return
        entry.subscribed = True
        validator = entry.validator

        def check(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            try:
                ok = validator(topic, msg.data) is True
            except Exception:
                self.stats.validator_errors += 1
                self._offence(forwarder, "invalid-gossip")
                if self._log_limiter.allow("validator"):
                    log.exception(
                        "p2p: topic validator for %r raised; message rejected (%d so far)",
                        topic,
                        self.stats.validator_errors,
                    )
                return False
            if not ok:
                self._offence(forwarder, "invalid-gossip")  # ignored for our own publish
                if forwarder == self._id:
                    # Our own publish: libp2p drops it silently, so say so.
                    self.stats.own_rejected += 1
                    if self._log_limiter.allow("own_rejected"):
                        log.warning("p2p: own message on %r rejected by its validator", topic)
                else:
                    self.stats.validator_rejects += 1
            return ok

        pubsub.set_topic_validator(topic, check, False)
        sub = await pubsub.subscribe(topic)
        assert self._nursery is not None
        self._nursery.start_soon(self._drain, topic, sub)

    async def _drain(self, topic: str, sub: Any) -> None:
        """Move messages from libp2p's channel into the app's; never blocks on the app."""
        own = self._id.to_bytes()
        async for msg in sub:
            try:
                self._deliver(topic, msg, own)
            except Exception:
                log.exception("p2p: dropping a message on %r that could not be delivered", topic)

    def _deliver(self, topic: str, msg: rpc_pb2.Message, own: bytes) -> None:
        if msg.from_id == own and not self.config.deliver_own_messages:
            return
        msg_id = bytes(msg.from_id) + bytes(msg.seqno) + topic.encode()
        if msg_id in self._seen:
            self.stats.duplicates += 1
            return
        self._seen[msg_id] = None
        if len(self._seen) > self.config.seen_cache_size:
            self._seen.popitem(last=False)
        item = P2PMessage(topic, str(ID(msg.from_id).to_base58()), bytes(msg.data))
        try:
            self._send.send_nowait(item)
            self.stats.delivered += 1
        except trio.WouldBlock:
            self.stats.dropped_recv_full += 1
            if self._log_limiter.allow("recv_full"):
                log.warning(
                    "p2p: recv queue full (%d); dropped %d messages so far",
                    self.config.recv_queue_size,
                    self.stats.dropped_recv_full,
                )
        except trio.ClosedResourceError:
            pass

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and gossip ``data`` on ``topic``. Best effort: gossip can drop under load."""
        pubsub = self._pubsub
        if pubsub is None or not self._running:
            raise P2PError("the node is not running")
        limit = self.config.max_message_bytes - PUBLISH_OVERHEAD_BYTES
        if len(data) > limit:
            raise ValueError(f"message of {len(data)} B exceeds the publish limit of {limit} B")
        await pubsub.publish(topic, data)
        self.stats.published += 1

    async def recv(self) -> P2PMessage:
        """The next accepted gossip message. Raises trio.EndOfChannel once the node stops."""
        return await self._recv.receive()

    def __aiter__(self) -> AsyncIterator[P2PMessage]:
        return self._recv.__aiter__()

    # ------------------------------------------------------------ waiters

    async def wait_peers(self, count: int, timeout_s: float) -> None:
        """Wait until at least ``count`` peers are connected; trio.TooSlowError after timeout_s."""
        with trio.fail_after(timeout_s):
            while len(self.peers()) < count:
                await trio.sleep(0.05)

    async def wait_topic_peers(self, topic: str, count: int, timeout_s: float) -> None:
        """Wait until ``count`` peers subscribe to ``topic`` (so that a publish reaches them)."""
        with trio.fail_after(timeout_s):
            while len(self.topic_peers(topic)) < count:
                await trio.sleep(0.05)

    # ------------------------------------------------------------ persistent peers

    async def _supervise_peer(self, info: PeerInfo) -> None:
        """Keep one persistent peer connected; check it every peer_check_interval_ms.

        When the connection is gone: unblock the peer, redial under dial_timeout_ms,
        and back off exponentially (with jitter) between failed dials.
        """
        cfg = self.config
        assert self._host is not None and self._pubsub is not None
        host, pubsub = self._host, self._pubsub
        network: Any = host.get_network()
        pid = info.peer_id
        name = str(pid.to_base58())
        if pid == self._id:
            log.warning("p2p: persistent peer %s is this node; ignored", name)
            return
        backoff_ms = cfg.redial_backoff_min_ms
        failures = 0
        unregistered_since: float | None = None
        # Simultaneous dials leave two connections per pair (libp2p never trims
        # a protected peer's). Tie-break: the node with the larger peer id gives
        # the other side one check interval to dial first, every time the
        # connection is found missing.
        defer_s = cfg.peer_check_interval_ms / 1000 if self._id.to_bytes() > pid.to_bytes() else 0.0
        await trio.sleep(random.uniform(0, cfg.redial_backoff_min_ms) / 1000)
        while True:  # runs until the nursery is cancelled; every wait in it is bounded
            if self._guard.is_banned(name, time.monotonic()):
                await trio.sleep(cfg.peer_check_interval_ms / 1000)  # no redial while banned
                continue
            if not network.get_connections(pid) and defer_s and failures == 0:
                await trio.sleep(defer_s)
            if network.get_connections(pid):
                if failures:
                    log.info("p2p: reconnected to %s after %d failed dials", name, failures)
                failures = 0
                backoff_ms = cfg.redial_backoff_min_ms
                if pid in pubsub.peers:
                    unregistered_since = None
                elif unregistered_since is None:
                    unregistered_since = time.monotonic()
                elif time.monotonic() - unregistered_since > 2.0:
                    # Pubsub registers a new connection by itself (a notifee). If it
                    # has not after 2 s (connect() that reused a connection fires no
                    # notifee), open the pubsub stream ourselves, bounded in time.
                    unregistered_since = None
                    with trio.move_on_after(cfg.peer_check_interval_ms / 1000):
                        try:
                            await pubsub.ensure_peer_stream(
                                pid, timeout=cfg.peer_check_interval_ms / 1000
                            )
                        except Exception as exc:
                            log.debug("p2p: pubsub stream to %s not ready: %s", name, exc)
                await trio.sleep(cfg.peer_check_interval_ms / 1000)
                continue
            network.unblock_peer(pid)  # libp2p.md §10: skip the 60 s negative cache
            self.stats.redials += 1
            ok = False
            with trio.move_on_after(cfg.dial_timeout_ms / 1000):
                try:
                    await host.connect(PeerInfo(pid, list(info.addrs)))
                    ok = True
                except Exception as exc:
                    if failures == 0 or failures % 20 == 0:
                        log.info("p2p: dial %s failed (%d): %s", name, failures + 1, exc)
            if ok:
                continue
            failures += 1
            delay_ms = backoff_ms * random.uniform(0.5, 1.0)
            backoff_ms = min(backoff_ms * 2, cfg.redial_backoff_max_ms)
            await trio.sleep(delay_ms / 1000)

    # ------------------------------------------------------------ stream protocol

    def set_stream_handler(self, protocol_id: str, handler: RequestHandler) -> None:
        """Serve ``protocol_id``: ``await handler(request_bytes, from_peer_id) -> response_bytes``.

        A handler that raises, times out (handler_timeout_ms) or returns more than
        max_frame_bytes resets that stream; the node carries on.
        """
        self._handlers[protocol_id] = handler
        if self._host is not None:
            self._register_handler(protocol_id)

    def _register_handler(self, protocol_id: str) -> None:
        assert self._host is not None

        async def on_stream(stream: INetStream) -> None:
            await self._serve_stream(protocol_id, stream)

        self._host.set_stream_handler(TProtocol(protocol_id), on_stream)

    def _stream_log(
        self, kind: str, level: int, msg: str, *args: object, exc_info: bool = False
    ) -> None:
        """Log a stream failure, at most once per second per kind (peers can cause these)."""
        if self._stream_log_limiter.allow(kind):
            log.log(level, msg, *args, exc_info=exc_info)

    async def _serve_stream(self, protocol_id: str, stream: INetStream) -> None:
        from libp2p.network.stream.exceptions import StreamError

        peer = str(stream.muxed_conn.peer_id.to_base58())
        now_s = time.monotonic()
        if self._guard.is_banned(peer, now_s):
            self.stats.banned_refused += 1
            await _reset_quietly(stream)
            return
        # One peer may hold only part of the global inbound slots.
        state = self._guard.state(peer, now_s)
        if state.inbound_streams >= self.config.max_inbound_streams_per_peer:
            self.stats.inbound_streams_refused += 1
            self._stream_log(
                "refused-peer",
                logging.WARNING,
                "p2p: %s has %d inbound streams open; refused one more",
                peer,
                state.inbound_streams,
            )
            await _reset_quietly(stream)
            return
        if self._inbound_slots.value == 0:
            self.stats.inbound_streams_refused += 1
            self._stream_log(
                "refused",
                logging.WARNING,
                "p2p: too many inbound streams; refused one from %s",
                peer,
            )
            await _reset_quietly(stream)
            return
        state.inbound_streams += 1
        async with self._inbound_slots:
            try:
                await self._serve_requests(protocol_id, stream, peer)
            except FrameError as exc:
                self.stats.frame_errors += 1
                self._note_bad_peer(peer, "stream-frame", FrameError(f"{protocol_id}: {exc}"))
            except trio.TooSlowError:
                self._stream_log(
                    "write",
                    logging.WARNING,
                    "p2p: a %s response to %s timed out",
                    protocol_id,
                    peer,
                )
            except StreamError as exc:
                log.debug("p2p: %s stream from %s ended: %r", protocol_id, peer, exc)
            except Exception:
                self._stream_log(
                    "stream",
                    logging.ERROR,
                    "p2p: %s stream from %s failed",
                    protocol_id,
                    peer,
                    exc_info=True,
                )
            finally:
                state.inbound_streams = max(0, state.inbound_streams - 1)
                # A no-op after a clean close; otherwise the stream must not linger.
                await _reset_quietly(stream)

    async def _serve_requests(self, protocol_id: str, stream: INetStream, peer: str) -> None:
        """One request/response per iteration, until EOF, the idle timeout or an error.

        Every iteration is bounded in time (idle timeout, handler timeout, write timeout).
        """
        cfg = self.config
        while True:
            request: bytes | None = None
            with trio.move_on_after(cfg.server_stream_idle_ms / 1000) as idle:
                request = await read_frame(stream, cfg.max_frame_bytes)
            if idle.cancelled_caught:
                log.debug("p2p: closing idle %s stream from %s", protocol_id, peer)
                return
            if request is None:  # the client closed the stream between requests
                with trio.move_on_after(1):
                    await stream.close()
                return
            handler = self._handlers.get(protocol_id)
            if handler is None:
                return
            if not self._guard.state(peer, time.monotonic()).requests.take_upto(
                1, time.monotonic()
            ):
                self.stats.requests_rate_refused += 1
                self._offence(peer, "request-rate")
                self._stream_log(
                    "request-rate", logging.WARNING, "p2p: %s is over its request rate", peer
                )
                return
            try:
                with trio.fail_after(cfg.handler_timeout_ms / 1000):
                    response = await handler(request, peer)
            except BadRequest as exc:
                self.stats.bad_requests += 1
                self._offence(peer, "bad-request")
                self._stream_log(
                    "bad-request",
                    logging.INFO,
                    "p2p: bad %s request from %s: %s",
                    protocol_id,
                    peer,
                    exc,
                )
                return
            except trio.TooSlowError:
                self.stats.handler_errors += 1
                self._stream_log(
                    "handler", logging.ERROR, "p2p: %s handler timed out for %s", protocol_id, peer
                )
                return
            except Exception:
                self.stats.handler_errors += 1
                self._stream_log(
                    "handler",
                    logging.ERROR,
                    "p2p: %s handler failed for %s",
                    protocol_id,
                    peer,
                    exc_info=True,
                )
                return
            if not isinstance(response, bytes | bytearray | memoryview):
                self.stats.handler_errors += 1
                self._stream_log(
                    "handler",
                    logging.ERROR,
                    "p2p: %s handler returned %s, not bytes",
                    protocol_id,
                    type(response),
                )
                return
            if len(response) > cfg.max_frame_bytes:
                self.stats.frame_errors += 1
                self._stream_log(
                    "frame",
                    logging.ERROR,
                    "p2p: %s response of %d B exceeds max_frame_bytes; stream reset",
                    protocol_id,
                    len(response),
                )
                return
            with trio.fail_after(cfg.handler_timeout_ms / 1000):
                await stream.write(encode_frame(bytes(response), cfg.max_frame_bytes))
            self.stats.requests_served += 1

    async def request(self, peer_id: str, protocol_id: str, data: bytes, timeout_s: float) -> bytes:
        """Send one request frame to ``peer_id`` and return the response frame.

        Raises RequestTimeout after ``timeout_s``, RequestError on any stream
        failure, ValueError if ``data`` exceeds max_frame_bytes or the peer id is bad.
        """
        from libp2p.network.stream.exceptions import StreamError

        host = self._host
        if host is None or not self._running:
            raise P2PError("the node is not running")
        cfg = self.config
        frame = encode_frame(data, cfg.max_frame_bytes)
        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            raise ValueError(f"bad peer id {peer_id!r}") from None
        key = (peer_id, protocol_id)
        with trio.move_on_after(timeout_s) as scope:
            async with self._outbound_slots:
                stream = self._take_idle(key)
                if stream is None:
                    try:
                        stream = await host.new_stream(pid, [TProtocol(protocol_id)])
                    except Exception as exc:
                        raise RequestError(
                            f"cannot open {protocol_id} to {peer_id}: {exc}"
                        ) from exc
                    self.stats.streams_opened += 1
                done = False
                try:
                    await stream.write(frame)
                    response = await read_frame(stream, cfg.max_frame_bytes)
                    if response is None:
                        raise RequestError(f"{peer_id} closed the {protocol_id} stream")
                    done = True
                    self._put_idle(key, stream)
                    return response
                except StreamError as exc:
                    raise RequestError(f"{protocol_id} to {peer_id}: {exc!r}") from exc
                except FrameError as exc:
                    raise RequestError(f"bad response frame from {peer_id}: {exc}") from exc
                finally:
                    if not done:
                        await _reset_quietly(stream)
        assert scope.cancelled_caught
        raise RequestTimeout(f"{protocol_id} to {peer_id}: no response within {timeout_s} s")

    def _take_idle(self, key: tuple[str, str]) -> INetStream | None:
        pool = self._idle.get(key)
        now = time.monotonic()
        limit_s = self.config.client_stream_idle_ms / 1000
        while pool:
            entry = pool.pop()  # most recently used first
            if now - entry.last_used_s < limit_s and not getattr(entry.stream, "is_closed", False):
                return entry.stream
            if self._nursery is not None:
                self._nursery.start_soon(_reset_quietly, entry.stream)
        return None

    def _put_idle(self, key: tuple[str, str], stream: INetStream) -> None:
        pool = self._idle.setdefault(key, deque())
        if len(pool) >= self.config.max_idle_streams_per_peer or self._nursery is None:
            if self._nursery is not None:
                self._nursery.start_soon(_close_quietly, stream)
            return
        pool.append(_IdleStream(stream, time.monotonic()))

    async def _janitor(self) -> None:
        """Close client streams idle longer than client_stream_idle_ms; drop empty pools."""
        limit_s = self.config.client_stream_idle_ms / 1000
        while True:
            await trio.sleep(min(limit_s / 2, 10.0))
            now = time.monotonic()
            for key in list(self._idle):
                pool = self._idle[key]
                keep = deque(e for e in pool if now - e.last_used_s < limit_s)
                for e in pool:
                    if e not in keep:
                        await _close_quietly(e.stream)
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]

    async def _close_idle_streams(self) -> None:
        pools, self._idle = self._idle, {}
        with trio.move_on_after(1.0):
            for pool in pools.values():
                for entry in pool:
                    await _reset_quietly(entry.stream)


async def _no_background_task(_nursery: trio.Nursery) -> None:
    return None


async def _no_auto_connect() -> None:
    return None


async def _reset_quietly(stream: INetStream) -> None:
    with trio.move_on_after(1.0) as scope:
        scope.shield = True
        with contextlib.suppress(Exception):
            await stream.reset()


async def _close_quietly(stream: INetStream) -> None:
    with trio.move_on_after(1.0):
        with contextlib.suppress(Exception):
            await stream.close()

"""The dpkid daemon: the pure NodeCore driven by trio, libp2p, SQLite and a clock.

One driver task owns the core. Everything else (gossip, sync requests, RPC
submissions, timers) reaches it through one bounded channel of typed inputs,
so the core sees one input at a time. The daemon is a ``Shell``: it carries out
each ``Ready`` with the same ``carry_out`` as the simulator, so a sign state is
on disk before the vote it guards is published, and sync requests are
answered through the core's ``ServeBlocks``, as in the simulator.
"""

from __future__ import annotations

import os
import signal
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from dpkid.core import codec
from dpkid.core.consensus.engine import LockRecord, SignState
from dpkid.core.crypto import SignatureCache, sha256
from dpkid.core.node import effects as fx
from dpkid.core.node import wire
from dpkid.core.node.byzantine import BAD_SHARES, EQUIVOCATE, conflicting_msg
from dpkid.core.node.core import NodeCore
from dpkid.core.node.mempool import Refusal
from dpkid.core.node.tss_agent import TssAgent
from dpkid.core.types import Receipt
from dpkid.daemon.config import (
    Home,
    check_settings_for_genesis,
    read_genesis,
    read_key,
    read_settings,
)
from dpkid.daemon.logs import get_logger, quiet_libp2p
from dpkid.daemon.metrics import Metrics
from dpkid.daemon.signstate import (
    LOCK_FILE,
    SIGN_STATE_FILE,
    TSS_SECRETS_FILE,
    LockFile,
    SignStateError,
    SignStateFile,
    atomic_write,
)
from dpkid.daemon.store import Store

INPUT_QUEUE: Final = 10_000  # urgent inputs (consensus, timers, sync) waiting for the driver
# Transaction inputs waiting: a few blocks' worth. Beyond it a submission is
# refused as overloaded (retryable) rather than queued for seconds.
BULK_QUEUE: Final = 2_000
OUTBOX_QUEUE: Final = 10_000  # gossip waiting for the publisher; beyond it, like loss
SYNC_PROTOCOL: Final = "/dpkid/sync/1.0.0"
SYNC_TIMEOUT_S: Final = 10.0
MAX_SYNC_REPLY_BYTES: Final = 32 * 1024 * 1024
# The watchdog warns when consensus has not moved for this many rounds' worth of
# timeouts (every timer expiring): with §10.1's stall timers that means the node
# is starved or cut off, never that it waits for nothing.
WATCHDOG_ROUNDS: Final = 3
WATCHDOG_INTERVAL_S: Final = 1.0
# Node events that mean the operator must look now.
LOUD_EVENTS: Final = frozenset({"store_behind_sign_state", "liveness_invariant"})
# Node events that are news, not trouble (the threshold key's progress).
INFO_EVENTS: Final = frozenset({"tss_share_ready"})


def topics(chain_id: str) -> dict[str, str]:
    """Gossip topic names, versioned (protocol/WIRE.md)."""
    return {
        "txs": f"/dpkid/{chain_id}/txs/v1",
        "consensus": f"/dpkid/{chain_id}/consensus/v1",
        "blocks": f"/dpkid/{chain_id}/blocks/v1",
    }


# Which wire messages may travel on which topic; anything else is rejected
# by the topic validator before libp2p forwards it.
TOPIC_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "txs": (wire.TxBatch,),
    "consensus": (wire.ProposalMsg, wire.VoteMsg, wire.EvidenceMsg, wire.StatusMsg),
    "blocks": (wire.BlockResponse,),
}


# The driver's inputs: a closed union, one type per source.
@dataclass(frozen=True)
class _Gossip:
    """A gossip message, or the answer to one of our fetches."""

    peer: str
    msg: wire.WireMsg


@dataclass(frozen=True)
class _Timer:
    timer: fx.SetTimer


@dataclass(frozen=True)
class _Submit:
    raw: bytes
    reply: trio.MemorySendChannel[fx.TxVerdict]


@dataclass(frozen=True)
class _Request:
    """A peer's sync or proposal request on the stream protocol; the core's
    ServeBlocks (or Send) for that peer in the same step is the answer."""

    peer: str
    msg: wire.BlockRequest | wire.ProposalRequest
    reply: trio.MemorySendChannel[bytes]


_Input = _Gossip | _Timer | _Submit | _Request


class _Inbox:
    """The driver's input queue, in two bounded lanes. Consensus (votes,
    proposals, timers, sync) is never queued behind transactions (gossiped
    batches, RPC submissions): the driver takes every urgent input first, so
    under a flood of transactions consensus keeps its pace (issue 12)."""

    def __init__(self, urgent_max: int, bulk_max: int) -> None:
        self._urgent: deque[_Input] = deque()
        self._bulk: deque[_Input] = deque()
        self._urgent_max = urgent_max
        self._bulk_max = bulk_max
        self._lot = trio.lowlevel.ParkingLot()

    @staticmethod
    def is_urgent(item: _Input) -> bool:
        if isinstance(item, _Submit):
            return False
        if isinstance(item, _Gossip):
            return not isinstance(item.msg, wire.TxBatch)
        return True

    def put_nowait(self, item: _Input) -> bool:
        """False when the item's lane is full (the caller decides what that means)."""
        lane, cap = (
            (self._urgent, self._urgent_max)
            if self.is_urgent(item)
            else (self._bulk, self._bulk_max)
        )
        if len(lane) >= cap:
            return False
        lane.append(item)
        self._lot.unpark()
        return True

    async def put(self, item: _Input) -> None:
        """For inputs that must not be lost (timers): wait for room."""
        while not self.put_nowait(item):
            await trio.sleep(0.001)

    def bulk_len(self) -> int:
        return len(self._bulk)

    async def get(self) -> _Input:
        while not (self._urgent or self._bulk):
            await self._lot.park()
        return self._urgent.popleft() if self._urgent else self._bulk.popleft()


def now_ms() -> int:
    """The machine's wall clock; the node reads its own through ``clock_ms``."""
    return time.time_ns() // 1_000_000


class NodeDaemon:
    def __init__(self, home: Path) -> None:
        self.home = Home(home)
        self.settings = read_settings(self.home.config_file)
        self.key = read_key(self.home.key_file)
        self.genesis = read_genesis(self.home.genesis_file)
        check_settings_for_genesis(self.settings, self.genesis, str(self.home.config_file))
        self.log = get_logger(node=self.settings.moniker)
        self.metrics = Metrics()
        self.store = Store(self.home.db_file)
        cfg = self.settings.node_config()
        self.sign_file = SignStateFile(self.home.path / SIGN_STATE_FILE)
        if not self.sign_file.exists():
            # Homes made before the guard had its own file kept it in the store.
            ss = self.store.load_sign_state()
            stored = self.store.height()
            if stored > 0 and ss.height < stored + 2:
                # The file is gone but blocks are stored (deleted, or restored from
                # an older backup): this key may have signed anything at the next
                # height, but nothing above it, since votes for a height leave only
                # after the block before it is stored (effects.carry_out). So sign
                # nothing until height stored + 2 (CONSENSUS.md §6).
                self.log.warning(
                    "sign_state_missing",
                    file=str(self.sign_file.path),
                    detail=f"blocks are stored up to {stored}: not signing below height"
                    f" {stored + 2}",
                )
                ss = SignState(height=stored + 2)
            self.sign_file.save(ss)
        self.lock_file = LockFile(self.home.path / LOCK_FILE)
        lock, why = self.lock_file.load()
        if why:
            self.log.warning("lock_unreadable", detail=why)
        self.tss_file = self.home.path / TSS_SECRETS_FILE
        self.core = NodeCore(
            self.genesis,
            self.key,
            cfg,
            SignatureCache(),
            self.sign_file.load(),
            lock=lock,
            tss_secrets=self._load_tss(),
            # Fresh at every start, so a restarted node never draws the nonces
            # it drew before (the ones it posted are in tss_secrets).
            entropy=os.urandom(32),
            tss_mode=self.settings.test_byzantine
            if self.settings.test_byzantine == BAD_SHARES
            else "",
        )
        self._restore()
        self.topics = topics(self.genesis.chain_id)
        self._decoded: OrderedDict[bytes, wire.WireMsg] = OrderedDict()
        self.catching_up = False
        # Test only (config.check_settings_for_genesis refuses it elsewhere).
        self.clock_offset_ms = self.settings.test_clock_offset_ms
        self.byzantine = self.settings.test_byzantine == EQUIVOCATE
        if self.settings.test_byzantine or self.clock_offset_ms:
            self.log.warning(
                "test_faults_on",
                test_byzantine=self.settings.test_byzantine,
                test_clock_offset_ms=self.clock_offset_ms,
            )
        self.started_ms = self.clock_ms()
        self.block_listeners: list[Callable[[fx.PersistBlock], None]] = []
        self.p2p: Any = None
        self._nursery: trio.Nursery | None = None
        self._inbox = _Inbox(INPUT_QUEUE, BULK_QUEUE)
        self._out_send, self._out_recv = trio.open_memory_channel[tuple[str, bytes]](OUTBOX_QUEUE)
        self._answering: _Request | None = None
        self._answered = False

    def clock_ms(self) -> int:
        """The node's wall clock: every time the core sees (vote timestamps,
        mempool and gossip pacing, progress) comes from here. The test-only
        offset shifts all of it at once, as a machine with a wrong clock would;
        durations (trio timers, time.monotonic) do not move."""
        return now_ms() + self.clock_offset_ms

    # ------------------------------------------------------------------ restore
    def _restore(self) -> None:
        # resume_point checks the latest block and that the state records decode
        # to its app hash; a damaged store raises StoreCorrupt (one line), which
        # `dpkid start` prints instead of running on it.
        rp = self.store.resume_point()
        if rp is None:
            if not self.store.has_state():
                self.store.save_genesis_state(self.core.state)
                vals = self.core.validators.members
                self.store.save_valset(1, [(v.pubkey, v.power) for v in vals])
            return
        self.core.resume(rp)
        self.log.info("restored", height=rp.state.height, app_hash=rp.state.app_hash.hex())

    # ------------------------------------------------------------------ run
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from dpkid.daemon.p2p import P2PConfig, P2PNode
        from dpkid.daemon.rpc import ADMIN_SOCKET_FILE
        from dpkid.daemon.rpc_methods import build_rpc

        s = self.settings
        self.p2p = P2PNode(
            self.key.seed,
            P2PConfig(
                listen_host=s.listen_host,
                listen_port=s.listen_port,
                persistent_peers=list(s.peers),
                max_message_bytes=16 * 1024 * 1024,
                max_frame_bytes=MAX_SYNC_REPLY_BYTES,
            ),
        )
        quiet_libp2p()
        rpc = build_rpc(self)
        from dpkid.daemon.dv_checker import AuthzChecker, DvChecker

        dv = DvChecker(
            self, fault=s.dv_fault, resume_pending=True
        )  # domain validation (SPEC §7.3), validators only
        self.block_listeners.append(dv.on_block)
        authz = AuthzChecker(dv)  # domain authorizations (SPEC §7.9), the same checks
        self.block_listeners.append(authz.on_block)
        if s.metrics_listen:
            self.metrics.serve(s.metrics_listen)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.p2p.run)
            for name, topic in self.topics.items():
                self.p2p.subscribe(topic, self._validator_for(name))
            self.p2p.set_stream_handler(SYNC_PROTOCOL, self._serve_sync)
            nursery.start_soon(self._receive_loop)
            nursery.start_soon(self._publish_loop)
            await nursery.start(rpc.serve_unix, self.home.socket_path(s))
            # The operator's own socket (RPC.md §1.4): `dpkid status` gets in
            # even when clients hold every slot of the public one.
            await nursery.start(rpc.serve_unix, self.home.path / ADMIN_SOCKET_FILE, True)
            if s.rpc_tcp:
                host, _, port = s.rpc_tcp.rpartition(":")
                host = host.strip("[]")  # "[::1]:PORT" in the config
                token = (self.home.path / "rpc_token").read_text().strip()
                await nursery.start(rpc.serve_tcp, host, int(port), token)
            nursery.start_soon(self._signals, nursery)
            nursery.start_soon(self._metrics_loop)
            await nursery.start(dv.run)
            await nursery.start(authz.run)
            self._step(fx.Start(self.clock_ms()))
            self.log.info(
                "started",
                height=self.core.ledger.height,
                peer_id=self.p2p.peer_id,
                validator=self.core.is_validator,
            )
            task_status.started()
            await self._drive()

    async def _signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
            async for sig in sigs:
                self.log.info("stopping", signal=signal.Signals(sig).name)
                break
        # Everything committed is already on disk (one transaction per block).
        nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        if self.p2p is not None:
            await self.p2p.aclose()
        self.store.close()

    # ------------------------------------------------------------------ inputs
    def _validator_for(self, name: str) -> Callable[[str, bytes], bool]:
        allowed = TOPIC_TYPES[name]

        def validate(peer: str, data: bytes) -> bool:
            try:
                msg = wire.decode_msg(data)
            except codec.DecodeError:
                self.metrics.bad_messages.inc()
                return False
            if not isinstance(msg, allowed):
                self.metrics.bad_messages.inc()
                return False
            k = sha256(data)
            self._decoded[k] = msg
            while len(self._decoded) > 512:
                self._decoded.popitem(last=False)
            return True

        return validate

    async def _receive_loop(self) -> None:
        async for m in self.p2p:
            topic, peer, data = m.topic, m.from_peer, m.data
            msg = self._decoded.pop(sha256(data), None)
            if msg is None:
                try:
                    msg = wire.decode_msg(data)
                except codec.DecodeError:
                    self.metrics.bad_messages.inc()
                    continue
            if topic == self.topics["blocks"]:
                continue  # for monitors; nodes sync through the stream protocol
            if not self._inbox.put_nowait(_Gossip(peer, msg)):
                self.metrics.bad_messages.inc()  # overloaded: like gossip loss, re-gossip recovers

    async def _serve_sync(self, data: bytes, peer: str) -> bytes:
        """The stream protocol: the request goes to the core like any input, and
        the core's answer (ServeBlocks, or a Send of the proposal) comes back."""
        from dpkid.daemon.p2p import BadRequest

        empty = wire.encode_msg(wire.BlockResponse([]))
        # No honest peer sends these: the stream is reset and the peer's score
        # lowered (WIRE.md §6.1), where an empty answer would invite a retry.
        try:
            req = wire.decode_msg(data)
        except codec.DecodeError:
            raise BadRequest("undecodable sync request") from None
        if not isinstance(req, (wire.BlockRequest, wire.ProposalRequest)):
            raise BadRequest(f"{type(req).__name__} is no sync request")
        send, recv = trio.open_memory_channel[bytes](1)
        if not self._inbox.put_nowait(_Request(peer, req, send)):
            return empty  # overloaded: the peer asks another or again
        with trio.move_on_after(SYNC_TIMEOUT_S):
            return await recv.receive()
        return empty

    async def submit_tx(self, raw: bytes) -> fx.TxVerdict:
        if self.core.mempool_full():
            return fx.TxVerdict(
                Refusal.MEMPOOL_FULL, "mempool is full, try again later", sha256(raw)
            )
        send, recv = trio.open_memory_channel[fx.TxVerdict](1)
        if not self._inbox.put_nowait(_Submit(raw, send)):
            return fx.TxVerdict(
                Refusal.OVERLOADED, "node is overloaded, try again later", sha256(raw)
            )
        return await recv.receive()

    # ------------------------------------------------------------------ the driver
    async def _drive(self) -> None:
        while True:
            item = await self._inbox.get()
            now = self.clock_ms()
            inp: fx.NodeInput
            if isinstance(item, _Timer):
                inp = fx.TimerFired(item.timer, now)
            elif isinstance(item, _Submit):
                inp = fx.SubmitTx(item.raw, now)
            else:
                inp = fx.Receive(item.peer, item.msg, now)
            self._answering = item if isinstance(item, _Request) else None
            self._answered = False
            try:
                tx = self._step(inp)
            finally:
                if isinstance(item, _Request) and not self._answered:
                    item.reply.send_nowait(wire.encode_msg(wire.BlockResponse([])))
                self._answering = None
            if isinstance(item, _Submit):
                assert tx is not None
                item.reply.send_nowait(tx)

    def _step(self, inp: fx.NodeInput) -> fx.TxVerdict | None:
        t0 = time.perf_counter()
        ready = self.core.step(inp)
        self.metrics.step_seconds.labels(type(inp).__name__).observe(time.perf_counter() - t0)
        fx.carry_out(ready, self)
        return ready.tx

    # ------------------------------------------------------------------ the Shell
    def persist_lock(self, lock: LockRecord) -> None:
        self.lock_file.save(lock)

    def persist_sign_state(self, state: SignState) -> None:
        self.sign_file.save(state)  # fsynced: durable before the vote it guards is sent

    def persist_tss(self, blob: bytes) -> None:
        # fsynced and 0600: the key share and nonces, durable before anything
        # made with them is sent (dpkid/core/node/tss_agent.py).
        atomic_write(self.tss_file, blob)

    def _load_tss(self) -> bytes | None:
        try:
            blob = self.tss_file.read_bytes()
        except FileNotFoundError:
            return None
        try:
            TssAgent.check_blob(blob)
        except ValueError as exc:
            raise SignStateError(
                f"{self.tss_file} is damaged ({exc}); it holds this validator's key share and"
                " nonces. Restore it from a backup, or move it away to rejoin without a share"
                " (the validator then cannot sign until the next key re-sharing)"
            ) from exc
        return blob

    def persist_block(self, block: fx.PersistBlock) -> None:
        self.store.save_block(block)
        self._on_block(block)

    def send(self, send: fx.Send) -> None:
        m = send.msg
        if send.to is None:
            topic = self.topics["txs"] if isinstance(m, wire.TxBatch) else self.topics["consensus"]
            out = [m]
            if self.byzantine:
                # Test only: the honest message went through the core's
                # double-sign guard; its twin is signed beside it, bypassing the
                # guard, as the simulator's equivocators do (CONSENSUS.md §7.1).
                alt = conflicting_msg(self.key, m, proposals=True, votes=True)
                out += [alt] if alt is not None else []
            for msg in out:
                try:
                    self._out_send.send_nowait((topic, wire.encode_msg(msg)))
                except trio.WouldBlock:
                    self.metrics.dropped_sends.inc()  # like gossip loss: re-gossip recovers
            return
        req = self._answering
        if req is not None and send.to == req.peer and isinstance(m, wire.ProposalMsg):
            self._answer(wire.encode_msg(m))
        elif isinstance(m, (wire.BlockRequest, wire.ProposalRequest)):
            assert self._nursery is not None
            self._nursery.start_soon(self._fetch, send.to, m)

    def serve(self, serve: fx.ServeBlocks) -> None:
        req = self._answering
        if req is None or serve.to != req.peer:
            return  # sync requests arrive only on the stream protocol
        blocks = self.store.blocks(serve.from_height, serve.count)
        self._answer(wire.encode_msg(fx.block_response(blocks, wire.SYNC_REPLY_MAX_BYTES)))

    def set_timer(self, timer: fx.SetTimer) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._timer, timer)

    def event(self, event: fx.NodeEvent) -> None:
        if event.kind in LOUD_EVENTS:
            self.log.error("node_event", kind=event.kind, detail=event.detail)
            if event.kind == "liveness_invariant":
                self.metrics.liveness_violations.inc()
        elif event.kind in INFO_EVENTS:
            self.log.info("node_event", kind=event.kind, detail=event.detail)
        else:
            self.log.warning("node_event", kind=event.kind, detail=event.detail)

    def _answer(self, data: bytes) -> None:
        req = self._answering
        if req is not None and not self._answered:
            self._answered = True
            req.reply.send_nowait(data)

    async def _publish_loop(self) -> None:
        """One publisher keeps gossip in the order the core produced it."""
        async for topic, data in self._out_recv:
            try:
                await self.p2p.publish(topic, data)
            except Exception as exc:  # gossip is best effort; re-gossip covers the loss
                self.log.warning("publish_failed", topic=topic, error=repr(exc))

    async def _timer(self, t: fx.SetTimer) -> None:
        await trio.sleep(t.delay_ms / 1000)
        await self._inbox.put(_Timer(t))  # timers must not be lost

    async def _fetch(self, peer: str, req: wire.BlockRequest | wire.ProposalRequest) -> None:
        """Block sync and lost-proposal fetches go over the direct stream protocol."""
        connected = self.p2p.peers()
        if peer not in connected and connected:
            # The gossip originator may not be a direct peer: ask one that is.
            peer = sorted(connected)[len(self._decoded) % len(connected)]
        if isinstance(req, wire.BlockRequest):
            self.catching_up = True
        try:
            data = await self.p2p.request(peer, SYNC_PROTOCOL, wire.encode_msg(req), SYNC_TIMEOUT_S)
            resp = wire.decode_msg(data)
        except Exception as exc:
            self.log.info("fetch_failed", peer=peer, request=type(req).__name__, error=repr(exc))
            return
        if (isinstance(resp, wire.BlockResponse) and resp.blocks) or isinstance(
            resp, wire.ProposalMsg
        ):
            await self._inbox.put(_Gossip(peer, resp))

    def _on_block(self, e: fx.PersistBlock) -> None:
        h = e.block.header.height
        self.metrics.height.set(h)
        self.metrics.blocks.inc()
        self.metrics.committed_txs.inc(len(e.block.txs))
        self.catching_up = self.core.status().sync_target > self.core.ledger.height
        if h % 10 == 0 or e.block.txs:
            self.log.info(
                "committed", height=h, txs=len(e.block.txs), app_hash=e.app_hash.hex()[:16]
            )
        for cb in self.block_listeners:
            cb(e)
        # One event per block into the gossip net, from the validator that built
        # it: every node relays it (all subscribe), and a copy per node would
        # ship each full block N times (WIRE.md §4.3).
        if self._nursery is not None and e.block.header.proposer == self.key.address:
            self._nursery.start_soon(self._publish_block_event, e)

    async def _publish_block_event(self, e: fx.PersistBlock) -> None:
        """Committed blocks go out on the blocks topic for monitors."""
        try:
            await self.p2p.publish(
                self.topics["blocks"],
                wire.encode_msg(wire.BlockResponse([wire.SyncedBlock(e.block, e.commit)])),
            )
        except Exception as exc:
            self.log.info("publish_failed", topic="blocks", error=repr(exc))

    async def _metrics_loop(self) -> None:
        """Metrics, and the watchdog: one warning per stall, naming what we wait for."""
        warned_at = -1
        while True:
            core = self.core
            st = core.status()
            self.metrics.round.set(st.round)
            self.metrics.peers.set(len(self.p2p.peers()))
            self.metrics.mempool.set(st.mempool_txs)
            now = self.clock_ms()
            stalled = core.stalled_ms(now)
            self.metrics.since_progress.set(stalled / 1000)
            if stalled > core.stall_bound_ms(WATCHDOG_ROUNDS) and warned_at != st.last_progress_ms:
                warned_at = st.last_progress_ms
                self.log.warning(
                    "consensus_stalled",
                    height=st.height,
                    round=st.round,
                    step=st.step,
                    waiting_for=st.waiting_for,
                    stalled_ms=stalled,
                    peers=len(self.p2p.peers()),
                )
            await trio.sleep(WATCHDOG_INTERVAL_S)

    # ------------------------------------------------------------------ queries (RPC)
    def status(self) -> dict[str, Any]:
        ledger = self.core.ledger
        st = self.core.status()
        info = self.store.block_info(ledger.height)
        return {
            "chain_id": self.genesis.chain_id,
            "node_id": self.p2p.peer_id if self.p2p else "",
            "moniker": self.settings.moniker,
            "validator_address": self.key.address.hex() if st.is_validator else None,
            "height": ledger.height,
            "block_hash": info[0].hex() if info else "",
            "app_hash": ledger.app_hash.hex(),
            "time_ms": ledger.time_ms,
            "round": st.round,
            "step": st.step,
            "waiting_for": st.waiting_for,
            "last_progress_ms": st.last_progress_ms,
            "since_progress_ms": self.core.stalled_ms(self.clock_ms()),
            "liveness_violations": st.liveness_violations,
            "sign_state": {
                "height": st.sign_state.height,
                "round": st.sign_state.round,
                "step": st.sign_state.step,
            },
            "peers": len(self.p2p.peers()) if self.p2p else 0,
            "catching_up": self.catching_up,
            "mempool_txs": st.mempool_txs,
        }

    def receipts(self, height: int) -> list[Receipt]:
        return self.store.receipts(height)

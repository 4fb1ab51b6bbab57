"""A validator that crashes at any write of a block commit recovers (issue 13).

Four validators run in one process on virtual time with in-memory message
passing. Three are bare NodeCores; the victim is a real ``NodeDaemon`` on a
real home (SQLite store, ``sign_state.json``, ``lock.msgpack``), driven by the
same ``carry_out`` the daemon runs. When the victim reaches the chosen write
point, the Ready it was carrying out is handed to a forked child that runs the
real write path and ``os._exit``s just before that point: nothing after it
runs, no Python buffer is flushed, no SQLite rollback or checkpoint happens,
and what the child wrote stays in the OS page cache, as after ``kill -9``.
The victim is then built again from its home by ``NodeDaemon(home)``, the
daemon's own start-up path, and must:

* hold exactly the writes that completed before the crash, each one whole;
* catch up to blocks and app hashes equal to its peers' at every height;
* never have sent two different signatures for one (height, round, step);
* leave a network that keeps committing, with no evidence against it.

(A power cut, where the page cache is lost too, is outside this model: the
fsyncs are what cover it.)
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

import pytest

from dpkid.cli.main import main as dpkid_main
from dpkid.core import codec
from dpkid.core.consensus.engine import LockRecord, SignState
from dpkid.core.consensus.messages import PREVOTE, Block, Commit, SignStep
from dpkid.core.crypto import SigningKey
from dpkid.core.node import effects as fx
from dpkid.core.node.core import NodeConfig, NodeCore
from dpkid.core.node.wire import (
    SYNC_REPLY_MAX_BYTES,
    ProposalMsg,
    VoteMsg,
    WireMsg,
    decode_msg,
    encode_msg,
)
from dpkid.core.types import Genesis, Transfer, sign_tx
from dpkid.daemon import signstate
from dpkid.daemon.config import Home, read_genesis, read_key, read_settings
from dpkid.daemon.daemon import NodeDaemon
from dpkid.daemon.signstate import LOCK_FILE, SIGN_STATE_FILE, LockFile, SignStateFile
from dpkid.daemon.store import Store
from tests.netutil import LocalNet, wait_for
from tests.test_store_integrity import Running, dpkid_start

GENESIS_TIME_MS: Final = 1_700_000_000_000
VALIDATORS: Final = 4
VICTIM: Final = 3
LATENCY_MS: Final = 5
ARM_HEIGHT: Final = 2  # crash at the first matching write once the victim stored this
MORE_BLOCKS: Final = 4  # every node must commit this far past the crash
LATE_BLOCKS: Final = 3  # a "late" restart waits until the peers are this far ahead
# A "soon" restart: while the network is still in the crash's round, and late
# enough that a re-signed vote would carry another timestamp (so another signature).
RESTART_MS: Final = 1
OFFLINE: Final = 2  # the peer that is down in the "needed" runs
MAX_EVENTS: Final = 300_000
CHILD_DEADLINE_S: Final = 60.0
CRASHED: Final = 86  # the child's exit status at the crash point
NOT_REACHED: Final = 87  # the child carried out the whole Ready without crashing
CHILD_FAILED: Final = 88


def _crash() -> NoReturn:
    os._exit(CRASHED)


# ------------------------------------------------------------------ crash points


@dataclass(frozen=True)
class Write:
    """One durable write of a Ready, in carry_out's order."""

    kind: str  # "lock" | "sign" | "block"
    index: int  # which block, for "block"


def writes_of(ready: fx.Ready) -> list[Write]:
    out: list[Write] = []
    if ready.lock is not None:
        out.append(Write("lock", 0))
    if ready.sign_state is not None:
        out.append(Write("sign", 0))
    out += [Write("block", i) for i in range(len(ready.blocks))]
    return out


def _is_state_write(sql: str) -> bool:
    return sql.startswith(("DELETE FROM state", "INSERT OR REPLACE INTO state("))


# save_block's statements, each as (matches, which occurrence), the occurrence
# counted from the Ready's first SQL statement.
def _nth(n: int) -> Callable[[fx.Ready], int]:
    return lambda ready: n


def _last_state_write(ready: fx.Ready) -> int:
    return len(ready.blocks[0].writes)


SQL_POINTS: Final[dict[str, tuple[Callable[[str], bool], Callable[[fx.Ready], int]]]] = {
    "begin": (lambda s: s.startswith("BEGIN"), _nth(1)),
    "block_row": (lambda s: s.startswith("INSERT INTO blocks"), _nth(1)),
    "receipts": (lambda s: s.startswith("INSERT INTO receipts"), _nth(1)),
    "first_state_write": (_is_state_write, _nth(1)),
    "last_state_write": (_is_state_write, _last_state_write),
    "valsets": (lambda s: "FROM valsets" in s, _nth(1)),
    "meta": (lambda s: "INTO meta" in s, _nth(1)),
    "commit": (lambda s: s == "COMMIT", _nth(1)),
    # The second block of a Ready (catching up): the first is committed.
    "second_block_begin": (lambda s: s.startswith("BEGIN"), _nth(2)),
}

# atomic_write's steps; the first four leave the old file in place.
FILE_PHASES: Final = (
    "before_write",  # nothing written yet
    "mid_write",  # half the temporary file written
    "before_fsync",  # temporary file written, not fsynced
    "before_rename",  # temporary file fsynced, not renamed
    "after_rename",  # renamed over the old file, directory not fsynced
    "after",  # atomic_write returned: between this persist and the next
)
LANDED_PHASES: Final = frozenset({"after_rename", "after"})


@dataclass(frozen=True)
class CrashPoint:
    name: str
    target: Write  # the write the crash interrupts (or follows)
    landed: bool  # whether ``target`` is whole on disk at the crash
    file: str = ""  # for a step of atomic_write: the file it writes
    phase: str = ""
    sql: str = ""  # for a statement of save_block: a key of SQL_POINTS
    after_commit: bool = False  # save_block returned, persist_block did not
    after_persist: bool = False  # the persist_* of ``target`` returned
    sign_step: int = 0  # for the sign state: the SignStep signed (0: any)
    late_start: bool = False  # the victim joins late, to catch up several blocks in one step

    def reaches(self, ready: fx.Ready, own: bytes) -> bool:
        """Whether carrying out ``ready`` (of the validator ``own``) passes this point."""
        if self.target.kind == "lock":
            return ready.lock is not None
        if self.target.kind == "sign":
            ss = ready.sign_state
            if ss is None:
                return False
            if self.sign_step == SignStep.PROPOSE:
                # A proposer prevotes its own proposal in the same step, and that
                # later sign state is the one written: crash in the Ready that
                # carries our proposal.
                return any(
                    isinstance(s.msg, ProposalMsg) and s.msg.proposal.proposer == own
                    for s in ready.sends
                )
            return self.sign_step == 0 or ss.step == self.sign_step
        if len(ready.blocks) <= self.target.index:
            return False
        # Statement points in the first block need one that runs every
        # statement: one with txs.
        b = ready.blocks[0]
        return self.target.index > 0 or not self.sql or (bool(b.receipts) and len(b.writes) >= 2)


def _points() -> list[CrashPoint]:
    pts = [
        CrashPoint(
            f"lock:{ph}",
            Write("lock", 0),
            ph in LANDED_PHASES,
            LOCK_FILE,
            ph,
            after_persist=ph == "after",
        )
        for ph in FILE_PHASES
    ]
    steps = ((SignStep.PROPOSE, "proposal"), (SignStep.PREVOTE, "prevote"))
    for step, step_name in (*steps, (SignStep.PRECOMMIT, "precommit")):
        pts += [
            CrashPoint(
                f"sign:{step_name}:{ph}",
                Write("sign", 0),
                ph in LANDED_PHASES,
                SIGN_STATE_FILE,
                ph,
                after_persist=ph == "after",
                sign_step=step,
            )
            for ph in FILE_PHASES
        ]
    for name in SQL_POINTS:
        second = name == "second_block_begin"
        pts.append(
            CrashPoint(
                f"store:before_{name}",
                Write("block", 1 if second else 0),
                False,
                sql=name,
                late_start=second,
            )
        )
    pts.append(CrashPoint("store:after_commit", Write("block", 0), True, after_commit=True))
    pts.append(CrashPoint("block:after", Write("block", 0), True, after_persist=True))
    return pts


POINTS: Final = _points()


class _CrashingOs:
    """``os`` as signstate.atomic_write sees it in the crashing child: the real
    calls, with a crash at ``phase`` of the write of ``file``."""

    def __init__(self, file: str, phase: str) -> None:
        self.file = file
        self.phase = phase
        self.writing = False  # inside the write of ``file``

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        if Path(path).name == self.file + ".tmp":
            self.writing = True
            if self.phase == "before_write":
                _crash()
        return os.open(path, flags, mode)

    def write(self, fd: int, data: Any) -> int:
        if self.writing and self.phase == "mid_write":
            os.write(fd, bytes(data)[: max(1, len(data) // 2)])
            _crash()
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.writing and self.phase == "before_fsync":
            _crash()
        os.fsync(fd)

    def replace(self, src: Any, dst: Any) -> None:
        if self.writing and self.phase == "before_rename":
            _crash()
        os.replace(src, dst)
        if self.writing and self.phase == "after_rename":
            _crash()
        self.writing = False


# ------------------------------------------------------------------ the network


def _own_signatures(msg: WireMsg, addr: bytes) -> Iterator[tuple[tuple[int, int, int], bytes]]:
    """(height, round, step) and signature of each of ``addr``'s own messages."""
    if isinstance(msg, ProposalMsg) and msg.proposal.proposer == addr:
        p = msg.proposal
        yield (p.height, p.round, SignStep.PROPOSE), p.sig
    elif isinstance(msg, VoteMsg):
        for v in msg.votes:
            if v.validator == addr:
                step = SignStep.PREVOTE if v.type == PREVOTE else SignStep.PRECOMMIT
                yield (v.height, v.round, step), v.sig


@dataclass
class Peer:
    core: NodeCore
    blocks: list[tuple[Block, Commit]] = field(default_factory=list)
    app_hashes: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Durable:
    """What the victim holds on disk: before a crash, or read back after it."""

    sign: SignState
    lock: LockRecord | None
    height: int


class Net:
    def __init__(self, root: Path, point: CrashPoint, mode: str) -> None:
        self.point = point
        # "late": restart only once the peers are LATE_BLOCKS ahead; "needed":
        # one peer is down throughout, so no block commits without the victim
        # and it must sign again at the height (and round) it crashed in.
        self.late = mode == "late"
        absent = {OFFLINE} if mode == "needed" else set()
        self.homes = [root / f"node{i}" for i in range(VALIDATORS)]
        self.genesis: Genesis = read_genesis(Home(self.homes[0]).genesis_file)
        self.keys: list[SigningKey] = [read_key(Home(h).key_file) for h in self.homes]
        cfg: NodeConfig = read_settings(Home(self.homes[0]).config_file).node_config()
        self.peers = {
            i: Peer(NodeCore(self.genesis, self.keys[i], cfg))
            for i in range(VALIDATORS)
            if i != VICTIM and i not in absent
        }
        self.victim: NodeDaemon | None = NodeDaemon(self.homes[VICTIM])
        self.started = False  # the victim's first Start was scheduled
        self.running = False  # the victim took its Start and has not crashed since
        self.epoch = 0  # the victim's lives: timers of an earlier one are void
        self.now_ms = 0
        self.heap: list[tuple[int, int, tuple[Any, ...]]] = []
        self.seq = itertools.count()
        # (height, round, step) -> every signature the victim sent there
        self.signed: dict[tuple[int, int, int], set[bytes]] = {}
        self.crashed_at: tuple[fx.Ready, Durable] | None = None  # the Ready, and before it
        self.restarted: NodeDaemon | None = None
        self.restart_when: Callable[[], bool] | None = None
        self.restored: Durable | None = None  # what NodeDaemon(home) read back
        for i in self.peers:
            self._push(0, ("start", i))

    # -------------------------------------------------------------- plumbing
    def _push(self, delay_ms: int, ev: tuple[Any, ...]) -> None:
        heapq.heappush(self.heap, (self.now_ms + delay_ms, next(self.seq), ev))

    def clock(self) -> int:
        return GENESIS_TIME_MS + self.now_ms

    def name(self, i: int) -> str:
        return f"n{i}"

    def index(self, name: str) -> int:
        return int(name[1:])

    def deliver(self, src: int, to: str | None, msg: WireMsg) -> None:
        if src == VICTIM:
            for hrs, sig in _own_signatures(msg, self.keys[VICTIM].address):
                self.signed.setdefault(hrs, set()).add(sig)
        dsts = [self.index(to)] if to is not None else range(VALIDATORS)
        for d in dsts:
            if d != src and (d == VICTIM or d in self.peers):
                self._push(LATENCY_MS, ("msg", src, d, msg))

    def height(self, i: int) -> int:
        if i == VICTIM:
            return self.victim.core.ledger.height if self.victim is not None else -1
        return self.peers[i].core.ledger.height

    def heights(self) -> list[int]:
        return [self.height(i) for i in (*self.peers, VICTIM)]

    def peer_top(self) -> int:
        return max(self.height(i) for i in self.peers)

    # -------------------------------------------------------------- stepping
    def _step(self, i: int, inp: fx.NodeInput) -> None:
        if i != VICTIM:
            fx.carry_out(self.peers[i].core.step(inp), _PeerShell(self, i))
            return
        d = self.victim
        if isinstance(inp, fx.Start):
            self.running = True
        if d is None or not self.running:
            return  # down, or not listening yet: what reaches it is lost
        ready = d.core.step(inp)
        if (
            self.crashed_at is None
            and d.core.ledger.height >= (0 if self.point.late_start else ARM_HEIGHT)
            and self.point.reaches(ready, self.keys[VICTIM].address)
        ):
            self._crash(d, ready)
            return
        fx.carry_out(ready, _VictimShell(self, d))

    def _dispatch(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == "msg":
            _, src, dst, msg = ev
            self._step(dst, fx.Receive(self.name(src), msg, self.clock()))
        elif kind == "timer":
            _, i, epoch, t = ev
            if i != VICTIM or epoch == self.epoch:
                self._step(i, fx.TimerFired(t, self.clock()))
        elif kind == "start":
            self._step(ev[1], fx.Start(self.clock()))
        elif kind == "submit":
            self._submit()

    def _submit(self) -> None:
        """A transfer into peer 0's mempool, so blocks carry receipts."""
        core = self.peers[0].core
        src, dst = self.keys[0], self.keys[1]
        raw = codec.encode(
            sign_tx(
                src,
                self.genesis.chain_id,
                core.next_nonce(src.address),
                10,
                Transfer(dst.address, 1),
            )
        )
        fx.carry_out(core.step(fx.SubmitTx(raw, self.clock())), _PeerShell(self, 0))

    def run_until(self, cond: Callable[[], bool], what: str, by_height: int) -> None:
        """Run until ``cond``; fail once the peers pass ``by_height`` without it."""
        for _ in range(MAX_EVENTS):
            if cond():
                return
            if self.peer_top() > by_height:
                raise AssertionError(f"{what}: not by height {by_height}, heights {self.heights()}")
            if not self.started and (
                not self.point.late_start or self.peer_top() >= 2 * LATE_BLOCKS
            ):
                self.started = True
                self._push(0, ("start", VICTIM))
            if self.victim is None and self.restart_when is not None and self.restart_when():
                self._restart()
            self.now_ms, _, ev = heapq.heappop(self.heap)
            self._dispatch(ev)
        raise AssertionError(f"{what}: not within {MAX_EVENTS} events, heights {self.heights()}")

    # -------------------------------------------------------------- crash, restart
    def _crash(self, d: NodeDaemon, ready: fx.Ready) -> None:
        home = d.home.path
        before = Durable(
            SignStateFile(home / SIGN_STATE_FILE).load(),
            LockFile(home / LOCK_FILE).load()[0],
            d.store.height(),
        )
        # The child must hold the store's only connection, as the one process
        # that dies: a connection left in this process would keep the WAL's
        # index alive and spare the restart SQLite's crash recovery.
        d.store.close()
        sent = home.parent / "sent-before-crash.bin"
        wire_fd = os.open(sent, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        pid = os.fork()
        if pid == 0:
            _die_at(self.point, d, ready, wire_fd)
        os.close(wire_fd)
        status = _wait_child(pid)
        assert os.WIFEXITED(status), f"child ended with status {status}"
        code = os.WEXITSTATUS(status)
        assert code == CRASHED, f"{self.point.name}: the child exited {code}, not at the point"
        self.crashed_at = (ready, before)
        for to, msg in _sent_by_child(sent):
            self.deliver(VICTIM, to, msg)
        self.victim = None
        self.running = False
        self.epoch += 1
        top, at_ms = self.peer_top(), self.now_ms
        if self.late:
            self.restart_when = lambda: self.peer_top() >= top + LATE_BLOCKS
        else:
            self.restart_when = lambda: self.now_ms >= at_ms + RESTART_MS

    def _restart(self) -> None:
        # The daemon's own start-up path: read the home, check the store, restore.
        d = self.victim = self.restarted = NodeDaemon(self.homes[VICTIM])
        self.restored = Durable(d.core.sign_state, d.core.lock, d.store.height())
        assert d.core.ledger.height == self.restored.height
        self._push(0, ("start", VICTIM))


def _wait_child(pid: int) -> int:
    deadline = time.monotonic() + CHILD_DEADLINE_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the crashing child did not exit within {CHILD_DEADLINE_S} s")


def _die_at(point: CrashPoint, d: NodeDaemon, ready: fx.Ready, wire_fd: int) -> NoReturn:
    """In the forked child: carry out ``ready`` on the real write path and
    crash at ``point``. Never returns into pytest."""
    code = NOT_REACHED
    try:
        d.store = Store(d.home.db_file)
        if point.file and not point.after_persist:
            signstate.os = _CrashingOs(point.file, point.phase)  # type: ignore[attr-defined,assignment]
        if point.sql:
            matches, nth = SQL_POINTS[point.sql]
            want = nth(ready)
            seen = itertools.count(1)

            def trace(sql: str) -> None:
                if matches(sql) and next(seen) == want:
                    _crash()

            d.store.db.set_trace_callback(trace)
        if point.after_commit:
            save = d.store.save_block

            def save_then_crash(e: fx.PersistBlock) -> None:
                save(e)
                _crash()

            d.store.save_block = save_then_crash  # type: ignore[method-assign]
        crash_after = point.target if point.after_persist else None
        fx.carry_out(ready, _CrashingShell(d, crash_after, wire_fd))
    except BaseException:
        traceback.print_exc()
        code = CHILD_FAILED
    os._exit(code)


class _CrashingShell:
    """The victim's shell in the child. What it sends before the crash has left
    the process: it goes, unbuffered, to ``wire_fd`` for the parent to deliver."""

    def __init__(self, d: NodeDaemon, crash_after: Write | None, wire_fd: int) -> None:
        self.d = d
        self.crash_after = crash_after
        self.wire_fd = wire_fd
        self.blocks = 0

    def _out(self, to: str | None, msg: WireMsg) -> None:
        frame = codec.encode([to or "", encode_msg(msg)])
        os.write(self.wire_fd, len(frame).to_bytes(4, "big") + frame)

    def _done(self, w: Write) -> None:
        if w == self.crash_after:
            _crash()

    def persist_lock(self, lock: LockRecord) -> None:
        self.d.persist_lock(lock)
        self._done(Write("lock", 0))

    def persist_sign_state(self, state: SignState) -> None:
        self.d.persist_sign_state(state)
        self._done(Write("sign", 0))

    def persist_tss(self, blob: bytes) -> None:
        self.d.persist_tss(blob)

    def persist_block(self, block: fx.PersistBlock) -> None:
        self.d.persist_block(block)
        self._done(Write("block", self.blocks))
        self.blocks += 1

    def send(self, send: fx.Send) -> None:
        self._out(send.to, send.msg)

    def serve(self, serve: fx.ServeBlocks) -> None:
        blocks = self.d.store.blocks(serve.from_height, serve.count)
        self._out(serve.to, fx.block_response(blocks, SYNC_REPLY_MAX_BYTES))

    def set_timer(self, timer: fx.SetTimer) -> None:
        pass  # dies with the process

    def event(self, event: fx.NodeEvent) -> None:
        pass


def _sent_by_child(path: Path) -> Iterator[tuple[str | None, WireMsg]]:
    data = path.read_bytes()
    at = 0
    while at < len(data):
        n = int.from_bytes(data[at : at + 4], "big")
        to, raw = codec.decode(data[at + 4 : at + 4 + n], tuple[str, bytes])
        at += 4 + n
        yield to or None, decode_msg(raw)


class _PeerShell:
    def __init__(self, net: Net, i: int) -> None:
        self.net = net
        self.i = i
        self.peer = net.peers[i]

    def persist_lock(self, lock: LockRecord) -> None:
        pass

    def persist_sign_state(self, state: SignState) -> None:
        pass

    def persist_tss(self, blob: bytes) -> None:
        pass

    def persist_block(self, block: fx.PersistBlock) -> None:
        self.peer.blocks.append((block.block, block.commit))
        self.peer.app_hashes.append(block.app_hash)
        if self.i == 0:
            self.net._push(1, ("submit",))

    def send(self, send: fx.Send) -> None:
        self.net.deliver(self.i, send.to, send.msg)

    def serve(self, serve: fx.ServeBlocks) -> None:
        first = serve.from_height - 1
        blocks = self.peer.blocks[first : first + serve.count]
        resp = fx.block_response(blocks, SYNC_REPLY_MAX_BYTES)
        if resp.blocks:
            self.net.deliver(self.i, serve.to, resp)

    def set_timer(self, timer: fx.SetTimer) -> None:
        self.net._push(timer.delay_ms, ("timer", self.i, 0, timer))

    def event(self, event: fx.NodeEvent) -> None:
        pass


class _VictimShell:
    """The daemon's own persistence; the network and the clock are the test's."""

    def __init__(self, net: Net, d: NodeDaemon) -> None:
        self.net = net
        self.d = d

    def persist_lock(self, lock: LockRecord) -> None:
        self.d.persist_lock(lock)

    def persist_sign_state(self, state: SignState) -> None:
        self.d.persist_sign_state(state)

    def persist_tss(self, blob: bytes) -> None:
        self.d.persist_tss(blob)

    def persist_block(self, block: fx.PersistBlock) -> None:
        self.d.persist_block(block)

    def send(self, send: fx.Send) -> None:
        self.net.deliver(VICTIM, send.to, send.msg)

    def serve(self, serve: fx.ServeBlocks) -> None:
        blocks = self.d.store.blocks(serve.from_height, serve.count)
        resp = fx.block_response(blocks, SYNC_REPLY_MAX_BYTES)
        if resp.blocks:
            self.net.deliver(VICTIM, serve.to, resp)

    def set_timer(self, timer: fx.SetTimer) -> None:
        self.net._push(timer.delay_ms, ("timer", VICTIM, self.net.epoch, timer))

    def event(self, event: fx.NodeEvent) -> None:
        pass


# ------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "tn"
    # Fixed keys, so every run plays the same schedule (who proposes when).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(secrets, "token_bytes", random.Random(13).randbytes)
        rc = dpkid_main(
            [
                "testnet",
                "--validators",
                str(VALIDATORS),
                "--out",
                str(root),
                "--genesis-time-ms",
                str(GENESIS_TIME_MS),
                "--json",
            ]
        )
    assert rc == 0
    return root


def _expected(ready: fx.Ready, before: Durable, point: CrashPoint) -> Durable:
    """The durable state the crash must leave: every write before the point
    whole, the interrupted one whole iff it landed, none after."""
    sign, lock, height = before.sign, before.lock, before.height
    for w in writes_of(ready):
        if w == point.target and not point.landed:
            break
        if w.kind == "lock":
            lock = ready.lock
        elif w.kind == "sign":
            assert ready.sign_state is not None
            sign = ready.sign_state
        else:
            height = ready.blocks[w.index].block.header.height
        if w == point.target:
            break
    return Durable(sign, lock, height)


# A late joiner cannot be needed: nothing commits before it joins.
CASES: Final = [
    pytest.param(p, mode, id=f"{p.name}-{mode}")
    for p in POINTS
    for mode in ("soon", "late", "needed")
    if not (p.late_start and mode == "needed")
]


@pytest.mark.parametrize(("point", "mode"), CASES)
def test_crash_at_every_write_point_recovers_and_never_double_signs(
    template: Path, tmp_path: Path, point: CrashPoint, mode: str
) -> None:
    root = tmp_path / "tn"
    shutil.copytree(template, root)
    net = Net(root, point, mode)
    net.run_until(
        lambda: net.crashed_at is not None, f"the victim to reach {point.name}", by_height=30
    )
    net.run_until(lambda: net.restarted is not None, "the victim to restart", by_height=60)
    assert net.crashed_at is not None and net.restarted is not None
    ready, before = net.crashed_at
    d = net.restarted

    # Exactly the writes that completed before the crash, each whole.
    want = _expected(ready, before, point)
    got = net.restored
    assert got is not None
    assert got.sign == want.sign, "the sign state is not the last durable one"
    assert got.lock == want.lock, "the lock is not the last durable one"
    assert got.height == want.height, "the store is not at the last durable block"

    target = net.peer_top() + MORE_BLOCKS  # the peers' tip at the restart, plus some
    net.run_until(
        lambda: min(net.heights()) >= target,
        f"every node to commit height {target}",
        by_height=target + 20,
    )

    # One signature per (height, round, step), across the crash, and it signs again.
    doubles = {hrs: sigs for hrs, sigs in net.signed.items() if len(sigs) > 1}
    assert not doubles, f"the victim signed twice: {doubles}"
    assert any(hrs[0] > want.sign.height for hrs in net.signed), "it never signed again"

    # Equal to its peers at every height, and nothing against it on the chain.
    peer_chains = [(p.blocks, p.app_hashes) for p in net.peers.values()]
    for h in range(1, net.height(VICTIM) + 1):
        mine = d.store.block_info(h)
        assert mine is not None, f"the victim's store has no block {h}"
        for blocks, apps in peer_chains:
            if h <= len(blocks):
                assert mine == (blocks[h - 1][0].hash, apps[h - 1]), f"diverged at {h}"
    assert d.core.ledger.app_hash == peer_chains[0][1][net.height(VICTIM) - 1]
    for blocks, _ in peer_chains:
        assert all(not b.evidence for b, _ in blocks), "evidence against the victim was committed"


# ------------------------------------------------------------------ damaged files at start


@dataclass(frozen=True)
class StoppedHome:
    home: Path  # a 1-validator home whose node committed blocks and was stopped
    height: int


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoppedHome]:
    net = LocalNet(tmp_path_factory.mktemp("start") / "tn", validators=1)
    try:
        net.start(0)
        net.wait_height([0], 4, timeout_s=60)
        height = net.height(0)
        p = net.procs[0]
        net.stop(0)
        assert p.returncode == 0, net.log_text(0)
        home = net.home(0)
        assert (home / SIGN_STATE_FILE).exists() and (home / LOCK_FILE).exists()
        yield StoppedHome(home, height)
    finally:
        net.close()


@pytest.fixture
def home(stopped: StoppedHome, tmp_path: Path) -> Path:
    """A fresh copy of the stopped home, to damage."""
    dst = tmp_path / "node0"
    shutil.copytree(stopped.home, dst)
    for f in dst.glob("*.sock"):
        f.unlink()
    return dst


def _damage(path: Path, how: str) -> bytes:
    data = path.read_bytes()
    bad = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\xc1\xff" * 40}[how]
    path.write_bytes(bad)
    return bad


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_start_refuses_a_damaged_sign_state_naming_the_file(home: Path, how: str) -> None:
    """A validator that cannot know what it signed must not sign: it refuses
    to start, says which file and what to do, and leaves the file as it is."""
    ss = home / SIGN_STATE_FILE
    bad = _damage(ss, how)
    out = subprocess.run(dpkid_start(home), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.strip("\n").split("\n")
    assert len(lines) == 1, out.stderr
    assert str(ss) in lines[0] and "damaged" in lines[0] and "backup" in lines[0], lines[0]
    assert ss.read_bytes() == bad, "the refusal must not overwrite the evidence"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_start_with_a_damaged_lock_file_says_it_is_safe_and_keeps_committing(
    home: Path, stopped: StoppedHome, how: str
) -> None:
    """The lock file is safe to lose (the sign state keeps the lock's hash):
    the node says so, naming the file, and goes on committing."""
    lock = home / LOCK_FILE
    _damage(lock, how)
    node = Running(dpkid_start(home), home)
    try:
        target = stopped.height + 3
        wait_for(lambda: node.height() >= target, 60, f"the node to reach height {target}")
    finally:
        node.close()
    assert node.p.returncode == 0, node.stderr()[-2000:]
    warnings = [
        json.loads(line)
        for line in node.stderr().splitlines()
        if line.startswith("{") and "lock_unreadable" in line
    ]
    assert len(warnings) == 1, node.stderr()[-2000:]
    detail = warnings[0]["detail"]
    assert str(lock) in detail and "damaged" in detail and "safe" in detail, detail

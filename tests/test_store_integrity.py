"""A damaged store is refused before the node runs on it, in one line that names
the file and the way out; a block the node cannot store stops it the same way.

The in-process tests build a real store by driving one validator's NodeCore in
virtual time (no sockets, milliseconds). The slow tests run real `dpkid start`
processes on a 1-validator testnet and damage copies of its stopped store.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from dpkid.cli.node import _store_error
from dpkid.client.rpc import call_sync
from dpkid.core import codec
from dpkid.core.consensus.messages import Block
from dpkid.core.node.core import NodeCore
from dpkid.core.node.effects import (
    PersistBlock,
    Ready,
    SetTimer,
    Start,
    SubmitTx,
    TimerFired,
)
from dpkid.core.state.machine import State
from dpkid.core.types import Account, Transfer, sign_tx
from dpkid.daemon.config import Home
from dpkid.daemon.store import Store, StoreCorrupt, StoreError
from dpkid.dev.devchain import DevKeys, dev_genesis
from tests.netutil import LocalNet, wait_for

RANDOM_BYTES = 64 * 1024
PAGE = 4096  # SQLite's default page size: page 1 holds the header and the schema


# ------------------------------------------------------------------ damage


def truncate_half(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def random_middle(db: Path, seed: int = 1234) -> None:
    """64 KiB of seeded random bytes centred on the middle of the file. Page 1
    is spared so SQLite still opens the file and only the page check can tell
    (the case that used to start and then die in save_block)."""
    size = db.stat().st_size
    off = max(PAGE, size // 2 - RANDOM_BYTES // 2)
    with db.open("r+b") as f:
        f.seek(off)
        f.write(random.Random(seed).randbytes(RANDOM_BYTES))


def latest_block_row(db: Path) -> tuple[int, bytes]:
    with sqlite3.connect(db) as con:
        h, blob = con.execute(
            "SELECT height, block FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
    con.close()
    return int(h), bytes(blob)


def set_latest_block(db: Path, blob: bytes) -> None:
    h, _ = latest_block_row(db)
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE blocks SET block = ? WHERE height = ?", (blob, h))
    con.close()


def flip_latest_block_hash_bytes(db: Path) -> None:
    """Flip bytes of the app hash inside the latest block's blob: the blob
    still decodes and SQLite's pages are sound, only the block hash differs."""
    _, blob = latest_block_row(db)
    app_hash = codec.decode(blob, Block, 1 << 26).header.app_hash
    i = blob.index(app_hash)
    flipped = bytearray(blob)
    flipped[i] ^= 0xFF
    flipped[i + 1] ^= 0xFF
    set_latest_block(db, bytes(flipped))


def quick_check(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return str(con.execute("PRAGMA quick_check").fetchone()[0])
    finally:
        con.close()


def assert_one_line_refusal(text: str, db: Path) -> None:
    lines = text.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), f"not one line: {text!r}"
    assert str(db.absolute()) in lines[0], lines[0]
    data = db.absolute().parent
    assert f"mv {data} {data}.bad" in lines[0], lines[0]
    assert "resync" in lines[0], lines[0]
    assert "Traceback" not in text


# ------------------------------------------------------------------ in-process chain


@dataclass
class Chain:
    core: NodeCore
    store: Store
    now: int
    timers: list[tuple[int, int, SetTimer]]
    seq: Iterator[int]
    held: list[PersistBlock]
    keys: DevKeys
    hold: bool = False  # keep PersistBlocks in ``held`` instead of storing them

    def run(self, ready: Ready) -> None:
        for e in ready.timers:
            heapq.heappush(self.timers, (self.now + e.delay_ms, next(self.seq), e))
        for b in ready.blocks:
            if self.hold:
                self.held.append(b)
            else:
                self.store.save_block(b)

    def until(self, height: int) -> None:
        while self.core.state.height < height:
            self.now, _, t = heapq.heappop(self.timers)
            self.run(self.core.step(TimerFired(t, self.now)))


def build_chain(db: Path, blocks: int) -> Chain:
    """One validator committing ``blocks`` blocks, some with transfers, into db."""
    g, keys = dev_genesis(n_validators=1, n_accounts=2)
    core = NodeCore(g, keys.validators[0])
    store = Store(db)
    store.save_genesis_state(core.state)
    store.save_valset(1, [(v.pubkey, v.power) for v in core.validators.members])
    c = Chain(core, store, g.genesis_time_ms, [], itertools.count(), [], keys)
    c.run(core.step(Start(c.now)))
    a, b = keys.accounts
    for n in range(blocks):
        if n % 3 == 0:
            raw = codec.encode(sign_tx(a, g.chain_id, n // 3, 10, Transfer(b.address, 5 + n)))
            ready = core.step(SubmitTx(raw, c.now))
            assert ready.tx is not None and ready.tx.verdict == 0
            c.run(ready)
        c.until(n + 1)
    return c


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "dpkid.sqlite"
    build_chain(path, 30).store.close()
    return path


def refusal(db: Path) -> StoreCorrupt:
    with pytest.raises(StoreCorrupt) as ei:
        Store(db).resume_point()
    assert_one_line_refusal(str(ei.value), db)
    return ei.value


def test_an_intact_store_opens_checks_and_resumes(db: Path) -> None:
    s = Store(db)
    s.check()
    rp = s.resume_point()
    info = s.block_info(30)
    assert rp is not None and info is not None and rp.state.height == 30 == s.height()
    assert rp.block.hash == info[0] and rp.state.app_hash == info[1]
    s.close()


def test_truncated_store_is_refused(db: Path) -> None:
    truncate_half(db)
    assert "malformed" in refusal(db).reason


def test_random_bytes_in_the_middle_are_refused_by_the_page_check(db: Path) -> None:
    random_middle(db)
    assert refusal(db).reason.startswith("quick_check:")


def test_random_header_is_refused(db: Path) -> None:
    with db.open("r+b") as f:
        f.write(random.Random(7).randbytes(100))
    assert "not a database" in refusal(db).reason


def test_flipped_bytes_in_the_latest_block_fail_its_hash_check(db: Path) -> None:
    flip_latest_block_hash_bytes(db)
    assert quick_check(db) == "ok"  # invisible to SQLite: only the hash check sees it
    assert "block 30: its hash does not match" in refusal(db).reason


def test_garbage_latest_block_blob_does_not_decode(db: Path) -> None:
    set_latest_block(db, b"\xc1" + random.Random(3).randbytes(200))
    assert "block 30 does not decode" in refusal(db).reason


def test_latest_block_with_other_transactions_fails_the_tx_root(db: Path) -> None:
    _, blob = latest_block_row(db)
    block = codec.decode(blob, Block, 1 << 26)
    forged = msgspec.structs.replace(block, txs=[*block.txs, b"\x00" * 40])
    set_latest_block(db, codec.encode(forged))
    assert "tx_root" in refusal(db).reason


def _records(db: Path) -> dict[bytes, bytes]:
    con = sqlite3.connect(db)
    try:
        return {bytes(k): bytes(v) for k, v in con.execute("SELECT key, value FROM state")}
    finally:
        con.close()


def _set_record(db: Path, key: bytes, value: bytes) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE state SET value = ? WHERE key = ?", (value, key))
    con.close()


def test_a_state_record_that_does_not_decode_is_refused(db: Path) -> None:
    key = next(k for k in _records(db) if k.startswith(b"acct:"))
    _set_record(db, key, b"\xc1garbage")
    Store(db).close()  # pages, schema and latest block are fine: the open check passes
    assert "reading the stored state" in refusal(db).reason


def test_a_state_that_does_not_match_the_app_hash_is_refused(db: Path) -> None:
    key, raw = next((k, v) for k, v in _records(db).items() if k.startswith(b"acct:"))
    acct = codec.decode(raw, Account)
    _set_record(db, key, codec.encode(msgspec.structs.replace(acct, balance=acct.balance + 1)))
    assert "does not match block 30's app hash" in refusal(db).reason


def test_missing_bookkeeping_is_refused(db: Path) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute("DELETE FROM meta WHERE key = 'node'")
    con.close()
    assert "priorities are missing" in refusal(db).reason


def test_an_unusable_but_undamaged_store_is_not_called_damaged(tmp_path: Path) -> None:
    """Locked, unopenable or full is not damage: moving such a store aside would
    throw good data away, so the message says not to."""
    path = tmp_path / "data" / "dpkid.sqlite"
    path.mkdir(parents=True)  # a directory where the file should be: cannot open
    with pytest.raises(StoreError) as ei:
        Store(path)
    assert not isinstance(ei.value, StoreCorrupt)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg and "do not delete" in msg


def test_a_failed_save_block_is_rolled_back_whole(tmp_path: Path) -> None:
    """save_block fails on its last-but-one statement: nothing of the block stays."""
    db = tmp_path / "data" / "dpkid.sqlite"
    c = build_chain(db, 5)
    c.hold = True
    a, b = c.keys.accounts
    raw = codec.encode(sign_tx(a, c.core.chain_id, 2, 10, Transfer(b.address, 1)))
    c.run(c.core.step(SubmitTx(raw, c.now)))
    c.until(6)
    (pb,) = c.held
    assert pb.receipts, "the held block must carry a receipt"
    # A receipt row already where block 6's goes: its INSERT fails after the block's.
    c.store.db.execute("INSERT INTO receipts VALUES (6, 0, x'00', x'00')")
    with pytest.raises(StoreError) as ei:
        c.store.save_block(pb)
    assert "storing block 6 failed" in str(ei.value) and "\n" not in str(ei.value)
    assert not c.store.db.in_transaction
    assert c.store.height() == 5 and c.store.block(6) is None
    rp = c.store.resume_point()
    assert rp is not None and rp.state.height == 5
    c.store.db.execute("DELETE FROM receipts WHERE height = 6")
    c.store.save_block(pb)  # the store is still good: the same block stores now
    rp = c.store.resume_point()
    assert rp is not None and rp.state.height == 6 and rp.state.app_hash == pb.app_hash
    c.store.close()


def test_store_error_is_found_inside_trio_exception_groups(tmp_path: Path) -> None:
    err = StoreCorrupt(tmp_path / "x.sqlite", "boom")
    nested = BaseExceptionGroup("outer", [ValueError("x"), ExceptionGroup("inner", [err])])
    assert _store_error(nested) is err
    assert _store_error(BaseExceptionGroup("g", [KeyboardInterrupt()])) is None


def test_the_resume_point_is_the_state_the_core_had(tmp_path: Path) -> None:
    """The resume point is not just accepted: it is the chain's real state."""
    db = tmp_path / "data" / "dpkid.sqlite"
    c = build_chain(db, 12)
    rp = c.store.resume_point()
    assert rp is not None
    assert rp.state.app_hash == c.core.state.app_hash and rp.block.hash == c.core.last_block_hash
    assert State.from_records(list(c.core.state.encoded_records())).app_hash == rp.state.app_hash
    c.store.close()


# ------------------------------------------------------------------ real processes


START_DEADLINE_S = 60.0


def dpkid_start(home: Path) -> list[str]:
    return [sys.executable, "-m", "dpkid", "start", "--home", str(home), "--log-format", "json"]


@dataclass(frozen=True)
class Stopped:
    home: Path  # a 1-validator home whose node committed blocks and was stopped
    height: int


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stopped]:
    net = LocalNet(tmp_path_factory.mktemp("integrity") / "tn", validators=1)
    try:
        net.start(0)
        net.wait_height([0], 8, timeout_s=60)
        height = net.height(0)
        p = net.procs[0]
        net.stop(0)  # SIGTERM, wait
        assert p.returncode == 0, net.log_text(0)
        yield Stopped(net.home(0), height)
    finally:
        net.close()


@pytest.fixture
def home(stopped: Stopped, tmp_path: Path) -> Path:
    """A fresh copy of the stopped home, to damage."""
    dst = tmp_path / "node0"
    shutil.copytree(stopped.home, dst)
    for f in dst.glob("*.sock"):
        f.unlink()
    return dst


def refused_start(home: Path) -> None:
    db = Home(home).db_file
    t0 = time.monotonic()
    out = subprocess.run(
        dpkid_start(home), capture_output=True, text=True, timeout=START_DEADLINE_S
    )
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert time.monotonic() - t0 < START_DEADLINE_S
    assert "Traceback" not in out.stdout + out.stderr
    assert_one_line_refusal(out.stderr, db)


@pytest.mark.slow
def test_start_refuses_a_truncated_store(home: Path) -> None:
    truncate_half(Home(home).db_file)
    refused_start(home)


@pytest.mark.slow
def test_start_refuses_random_bytes_in_the_middle(home: Path) -> None:
    random_middle(Home(home).db_file)
    refused_start(home)


@pytest.mark.slow
def test_start_refuses_a_latest_block_whose_hash_does_not_match(home: Path) -> None:
    db = Home(home).db_file
    flip_latest_block_hash_bytes(db)
    assert quick_check(db) == "ok"
    refused_start(home)


class Running:
    """One `dpkid start` this test started; stopped by its own PID only."""

    def __init__(self, cmd: list[str], home: Path) -> None:
        self.home = home
        self.err_path = home.parent / "node.stderr"
        self.err = self.err_path.open("wb")
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.err)

    def height(self) -> int:
        h: int = call_sync(self.home, "status", None, timeout_s=10)["height"]
        return h

    def wait_exit(self, timeout_s: float) -> int:
        try:
            return self.p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node did not exit within {timeout_s} s") from None

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)
        self.err.close()


@pytest.mark.slow
def test_the_undamaged_copy_starts_and_keeps_committing(home: Path, stopped: Stopped) -> None:
    node = Running(dpkid_start(home), home)
    try:
        wait_for(lambda: node.height() >= stopped.height, 60, "the copy to serve status")
        target = node.height() + 3
        wait_for(lambda: node.height() >= target, 60, f"the copy to reach height {target}")
        assert node.p.poll() is None
    finally:
        node.close()
    assert node.p.returncode == 0, node.stderr()[-2000:]
    assert "Traceback" not in node.stderr()


@pytest.mark.slow
def test_a_block_that_cannot_be_stored_stops_the_node_in_one_line(
    home: Path, stopped: Stopped
) -> None:
    """Writes past a file-size limit fail (EFBIG; Python ignores SIGXFSZ), as on
    a full or failing disk: save_block fails at run time and the node must stop,
    not run on ahead of its store."""
    db = Home(home).db_file
    limit = db.stat().st_size + 64 * 1024  # room for a few blocks in the WAL
    launcher = (
        "import resource, runpy, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "sys.argv = ['dpkid', *sys.argv[1:]]\n"
        "runpy.run_module('dpkid', run_name='__main__')\n"
    )
    node = Running([sys.executable, "-c", launcher, *dpkid_start(home)[3:]], home)
    try:
        rc = node.wait_exit(START_DEADLINE_S)
    finally:
        node.close()
    err = node.stderr()
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err
    last = err.strip("\n").split("\n")[-1]
    assert last.startswith("dpkid start: stopped: store ") and str(db.absolute()) in last, last
    assert "storing block" in last and "do not delete" in last, last
    # Nothing half-applied: the store opens, checks and resumes at a whole block.
    s = Store(db)
    rp = s.resume_point()
    assert rp is not None and rp.state.height == s.height() >= stopped.height
    s.close()

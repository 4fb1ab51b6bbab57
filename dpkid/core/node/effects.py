"""The one door into and out of the node core: inputs, and the ``Ready`` a
step returns (the shape of raft's ``Step``/``Ready`` and malachite's
``Input``/``Output``).

A shell (the daemon, the simulator) turns what happens to it into a
``NodeInput``, calls ``NodeCore.step``, and carries out the ``Ready`` with
``carry_out``: everything to persist is made durable before anything is sent,
served, timed or reported (CONSENSUS.md §1.3, §6). Both shells implement
``Shell``, so the contract they honour is this one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dpkid.core import codec
from dpkid.core.consensus.engine import LockRecord, PersistSignState, SignState
from dpkid.core.consensus.messages import Block, Commit
from dpkid.core.consensus.valset import Priorities
from dpkid.core.node.mempool import Verdict
from dpkid.core.node.wire import BlockResponse, SyncedBlock, WireMsg
from dpkid.core.state.machine import State
from dpkid.core.types import Event, Receipt

# ------------------------------------------------------------------ node effects


@dataclass(frozen=True)
class Send:
    to: str | None  # peer id, or None for every peer (gossip)
    msg: WireMsg


@dataclass(frozen=True)
class PersistBlock:
    """Everything one decided block changed, captured when it was applied
    (several blocks can be applied in one step while catching up)."""

    block: Block
    commit: Commit
    receipts: list[Receipt]
    app_hash: bytes
    writes: list[tuple[bytes, Any]]  # state records the block wrote (None = deleted)
    events: list[Event]  # begin/end-block events
    priorities: Priorities  # proposer priorities for the next height
    next_vals: list[tuple[bytes, int]]  # (pubkey, power) of the next height's set


@dataclass(frozen=True)
class SetTimer:
    kind: str  # "consensus" | "commit" | "gossip"
    height: int
    round: int
    step: str
    delay_ms: int


@dataclass(frozen=True)
class ServeBlocks:
    to: str
    from_height: int
    count: int


@dataclass(frozen=True)
class NodeEvent:
    """Something an operator or monitor wants to see (evidence, catch-up)."""

    kind: str
    detail: str


@dataclass(frozen=True)
class PersistTss:
    """The threshold-signing agent's secrets (dpkid/core/node/tss_agent.py): durable
    before any transaction made with them leaves, like the sign state."""

    blob: bytes


NodeEffect = (
    Send | PersistSignState | PersistTss | PersistBlock | SetTimer | ServeBlocks | NodeEvent
)


# ------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Start:
    """Begin (or, after ``resume``, continue) consensus."""

    now_ms: int


@dataclass(frozen=True)
class Receive:
    """A decoded message from ``peer`` (gossip, or a direct request)."""

    peer: str
    msg: WireMsg
    now_ms: int


@dataclass(frozen=True)
class ReceiveBytes:
    """Undecoded bytes from ``peer``; garbage is reported, never raised."""

    peer: str
    data: bytes
    now_ms: int


@dataclass(frozen=True)
class TimerFired:
    timer: SetTimer
    now_ms: int


@dataclass(frozen=True)
class SubmitTx:
    """A client's transaction; the verdict comes back in ``Ready.tx``."""

    raw: bytes
    now_ms: int


NodeInput = Start | Receive | ReceiveBytes | TimerFired | SubmitTx


# ------------------------------------------------------------------ outputs


@dataclass(frozen=True)
class TxVerdict:
    verdict: Verdict
    why: str
    tx_hash: bytes


@dataclass
class Ready:
    """What one step asks of its shell. Persist ``lock``, then ``sign_state``,
    then ``blocks`` in order, all durably; only then the rest."""

    lock: LockRecord | None = None  # the latest lock record, if it changed
    sign_state: SignState | None = None  # the latest double-sign guard, if it moved
    tss: bytes | None = None  # the latest threshold-signing secrets, if they changed
    blocks: list[PersistBlock] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    serve: list[ServeBlocks] = field(default_factory=list)
    timers: list[SetTimer] = field(default_factory=list)
    events: list[NodeEvent] = field(default_factory=list)
    tx: TxVerdict | None = None

    @classmethod
    def of(cls, effects: Iterable[NodeEffect], tx: TxVerdict | None = None) -> Ready:
        r = cls(tx=tx)
        for e in effects:
            if isinstance(e, PersistSignState):
                # The guard only moves forward, so the last one covers the others;
                # a lock record rides with the sign state that first names it.
                r.sign_state = e.state
                if e.lock is not None:
                    r.lock = e.lock
            elif isinstance(e, PersistTss):
                r.tss = e.blob  # each blob is the whole secret state: the last wins
            elif isinstance(e, PersistBlock):
                r.blocks.append(e)
            elif isinstance(e, Send):
                r.sends.append(e)
            elif isinstance(e, ServeBlocks):
                r.serve.append(e)
            elif isinstance(e, SetTimer):
                r.timers.append(e)
            else:
                r.events.append(e)
        return r


class Shell(Protocol):
    """What a shell provides to carry out a ``Ready``. The persist methods
    return only once their data is durable."""

    def persist_lock(self, lock: LockRecord) -> None: ...

    def persist_sign_state(self, state: SignState) -> None: ...

    def persist_tss(self, blob: bytes) -> None: ...

    def persist_block(self, block: PersistBlock) -> None: ...

    def send(self, send: Send) -> None: ...

    def serve(self, serve: ServeBlocks) -> None: ...

    def set_timer(self, timer: SetTimer) -> None: ...

    def event(self, event: NodeEvent) -> None: ...


def carry_out(ready: Ready, shell: Shell) -> None:
    """The interpreter both shells run: persistence strictly first."""
    if ready.lock is not None:
        shell.persist_lock(ready.lock)  # before the sign state that names it
    if ready.sign_state is not None:
        shell.persist_sign_state(ready.sign_state)  # before any vote it guards leaves
    if ready.tss is not None:
        shell.persist_tss(ready.tss)  # before any deal, nonce or share made with it leaves
    for b in ready.blocks:
        shell.persist_block(b)
    for s in ready.sends:
        shell.send(s)
    for sb in ready.serve:
        shell.serve(sb)
    for t in ready.timers:
        shell.set_timer(t)
    for e in ready.events:
        shell.event(e)


def block_response(blocks: Iterable[tuple[Block, Commit]], max_bytes: int) -> BlockResponse:
    """The answer to ``ServeBlocks`` from a shell's stored blocks: as many as fit
    in ``max_bytes`` of encoded blocks, but always at least one."""
    out: list[SyncedBlock] = []
    size = 0
    for b, c in blocks:
        n = len(codec.encode(b))
        if out and size + n > max_bytes:
            break
        out.append(SyncedBlock(b, c))
        size += n
    return BlockResponse(out)


@dataclass(frozen=True)
class ResumePoint:
    """What a node continues from after a restart, in both shells: the state
    after its latest stored block, that block, its commit, and the proposer
    priorities for the next height."""

    state: State
    block: Block
    commit: Commit
    priorities: list[tuple[bytes, int]]

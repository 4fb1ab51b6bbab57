"""What one step of the node core asks its shell to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dpkid.core.consensus.engine import (
    PersistSignState,
)
from dpkid.core.consensus.messages import (
    Block,
    Commit,
)
from dpkid.core.consensus.valset import (
    Priorities,
)
from dpkid.core.node.wire import WireMsg
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


NodeEffect = Send | PersistSignState | PersistBlock | SetTimer | ServeBlocks | NodeEvent

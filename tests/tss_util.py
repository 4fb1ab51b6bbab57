"""Drive the validators' real threshold-signing agents over a DevChain."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dpkid.core.crypto import SigningKey, sha256
from dpkid.core.node.tss_agent import TssAgent
from dpkid.core.state import tss as rules
from dpkid.core.types import Receipt, TssKey
from dpkid.dev.devchain import DevChain

# Rewrites one agent's bodies before they are sent (a Byzantine dealer or signer).
Tamper = Callable[[SigningKey, Any], Any]


def agents_for(
    c: DevChain, keys: Sequence[SigningKey] | None = None, seed: str = "t"
) -> dict[bytes, TssAgent]:
    ks = list(keys) if keys is not None else c.keys.validators
    return {k.address: TssAgent(k, sha256(f"{seed}/{k.address.hex()}".encode())) for k in ks}


def step(
    c: DevChain,
    agents: dict[bytes, TssAgent],
    tamper: Tamper | None = None,
    offline: Sequence[bytes] = (),
) -> list[Receipt]:
    """Every online agent answers the ledger as it is; then one block."""
    for addr in sorted(agents):
        if addr in offline:
            continue
        a = agents[addr]
        for body in a.on_commit(c.state).bodies:
            if tamper is not None:
                body = tamper(a.key, body)
                if body is None:
                    continue
            c.tx(a.key, body)
    receipts = c.block()
    block_events(c).extend(c.state.last_events)
    return receipts


def block_events(c: DevChain) -> list[Any]:
    """Begin/end-block events of the blocks ``step`` made (receipts hold the rest)."""
    ev: list[Any] = c.__dict__.setdefault("tss_block_events", [])
    return ev


def run_until(
    c: DevChain,
    agents: dict[bytes, TssAgent],
    done: Callable[[DevChain], bool],
    max_blocks: int = 80,
    tamper: Tamper | None = None,
    offline: Sequence[bytes] = (),
) -> int:
    """Blocks it took for ``done``; fails after ``max_blocks``."""
    for i in range(max_blocks):
        if done(c):
            return i
        step(c, agents, tamper, offline)
    raise AssertionError(f"not done after {max_blocks} blocks at height {c.state.height}")


def key_of(c: DevChain) -> TssKey | None:
    k: TssKey | None = c.state.get(rules.K_TSS_KEY)
    return k


def root_signed(c: DevChain) -> bool:
    r = c.state.get(rules.K_TSS_ROOT)
    return r is not None and bool(r.der)

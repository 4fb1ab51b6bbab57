"""Synthetic signed header chains for light-client tests and benchmarks.

Headers, commits and validator sets as the consensus core makes them
(CONSENSUS.md §3: hash links, validators_hash/next_validators_hash, >2/3
precommit signatures), without executing blocks: what a light client checks
and nothing more. ``changes`` schedules validator-set changes by height.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dpkid.client.lightclient import LightBlock
from dpkid.core.consensus.messages import PRECOMMIT, Commit, CommitSig, header_hash, vote_sign_bytes
from dpkid.core.consensus.validity import valset_hash
from dpkid.core.consensus.valset import ValidatorInfo, ValidatorSet
from dpkid.core.crypto import SigningKey
from dpkid.core.types import Genesis, GenesisValidator, Policy

BLOCK_MS = 1_000


def valset_of(keys: Sequence[tuple[SigningKey, int]]) -> ValidatorSet:
    return ValidatorSet([ValidatorInfo(k.address, k.public_key, p) for k, p in keys])


@dataclass
class SynthChain:
    chain_id: str
    genesis: Genesis
    keysets: dict[int, list[tuple[SigningKey, int]]]  # from height -> the set signing from there
    blocks: dict[int, LightBlock] = field(default_factory=dict)

    def keys_at(self, height: int) -> list[tuple[SigningKey, int]]:
        start = max(h for h in self.keysets if h <= height)
        return self.keysets[start]

    def fetch(self, height: int) -> LightBlock:
        return self.blocks[height]


def sign_commit(
    chain_id: str, height: int, block_hash: bytes, keys: Sequence[tuple[SigningKey, int]], ts: int
) -> Commit:
    sigs = []
    for k, _ in sorted(keys, key=lambda kp: kp[0].address):
        msg = vote_sign_bytes(chain_id, PRECOMMIT, height, 0, block_hash, ts, k.address)
        sigs.append(CommitSig(k.address, ts, k.sign(msg)))
    return Commit(height, 0, block_hash, sigs)


def build(
    heights: int,
    first: Sequence[tuple[SigningKey, int]],
    changes: Mapping[int, Sequence[tuple[SigningKey, int]]] | None = None,
    chain_id: str = "dpkid-synth",
    genesis_time_ms: int = 1_700_000_000_000,
    policy: Policy | None = None,
    signers: Callable[[int, list[tuple[SigningKey, int]]], list[tuple[SigningKey, int]]]
    | None = None,
) -> SynthChain:
    """``heights`` headers; ``changes[h]`` is the set that signs from height h.
    ``signers`` may pick which members sign each commit (default: all)."""
    from dpkid.core.types import Header

    g = Genesis(
        chain_id=chain_id,
        genesis_time_ms=genesis_time_ms,
        validators=[GenesisValidator(k.public_key, p) for k, p in first],
        endorsers=[],
        accounts=[],
        policy=policy or Policy(),
    )
    c = SynthChain(
        chain_id, g, {1: list(first), **{h: list(v) for h, v in (changes or {}).items()}}
    )
    prev = b""
    sets: dict[int, ValidatorSet] = {}

    def vs(h: int) -> ValidatorSet:
        if h not in sets:
            sets[h] = valset_of(c.keys_at(h))
        return sets[h]

    for h in range(1, heights + 1):
        keys = c.keys_at(h)
        header = Header(
            chain_id=chain_id,
            height=h,
            time_ms=genesis_time_ms + h * BLOCK_MS,
            proposer=keys[h % len(keys)][0].address,
            prev_block_hash=prev,
            validators_hash=valset_hash(vs(h)),
            next_validators_hash=valset_hash(vs(h + 1)),
        )
        bh = header_hash(header)
        who = signers(h, keys) if signers else keys
        commit = sign_commit(chain_id, h, bh, who, header.time_ms + 1)
        c.blocks[h] = LightBlock(header, commit, vs(h), vs(h + 1))
        prev = bh
        if h - 2 in sets and h - 2 not in c.keysets:
            sets.pop(h - 2, None)  # keep memory flat on long chains
    return c

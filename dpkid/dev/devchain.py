"""DevChain: drive the state machine without consensus, in virtual time.

Used by the walk-through command, the tests, the benchmarks and the golden
vectors. Keys are derived from labels (``SigningKey.from_label``), so every
run with the same script yields the same bytes. Never use these keys for real.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dpkid.core import codec
from dpkid.core.crypto import SignatureCache, SigningKey
from dpkid.core.state.machine import SigCheck, State, apply_block, genesis_state
from dpkid.core.types import (
    Genesis,
    GenesisAccount,
    GenesisEndorser,
    GenesisValidator,
    Header,
    Policy,
    Receipt,
    TxBody,
    sign_tx,
)

DEFAULT_CHAIN_ID = "dpkid-devnet"
GENESIS_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
BLOCK_INTERVAL_MS = 1_000


@dataclass
class DevKeys:
    validators: list[SigningKey]
    endorsers: list[SigningKey]
    accounts: list[SigningKey]


def dev_genesis(
    n_validators: int = 4,
    n_endorsers: int = 3,
    n_accounts: int = 4,
    balance: int = 10_000_000,
    chain_id: str = DEFAULT_CHAIN_ID,
    policy: Policy | None = None,
    powers: Sequence[int] | None = None,
) -> tuple[Genesis, DevKeys]:
    vals = [SigningKey.from_label(f"validator-{i}") for i in range(n_validators)]
    ends = [SigningKey.from_label(f"endorser-{i}") for i in range(n_endorsers)]
    accts = [SigningKey.from_label(f"account-{i}") for i in range(n_accounts)]
    pw = list(powers) if powers is not None else [10] * n_validators
    funded = [*accts, *ends, *vals]
    g = Genesis(
        chain_id=chain_id,
        genesis_time_ms=GENESIS_TIME_MS,
        validators=[
            GenesisValidator(k.public_key, p, f"v{i}")
            for i, (k, p) in enumerate(zip(vals, pw, strict=True))
        ],
        endorsers=[GenesisEndorser(k.public_key, f"endorser-{i}") for i, k in enumerate(ends)],
        accounts=[GenesisAccount(k.address, balance) for k in funded],
        policy=policy or Policy(),
    )
    return g, DevKeys(vals, ends, accts)


@dataclass
class DevChain:
    """A single-node chain: you hand it bodies, it signs, nonces and commits blocks."""

    genesis: Genesis
    keys: DevKeys
    state: State = field(init=False)
    nonces: dict[bytes, int] = field(default_factory=dict)
    pending: list[bytes] = field(default_factory=list)
    interval_ms: int = BLOCK_INTERVAL_MS
    sig_check: SigCheck | SignatureCache | None = None
    receipts: list[list[Receipt]] = field(default_factory=list)
    blocks: list[tuple[Header, list[bytes]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = genesis_state(self.genesis)

    @classmethod
    def create(cls, **kw: object) -> DevChain:
        g, keys = dev_genesis(**kw)  # type: ignore[arg-type]
        return cls(g, keys)

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    def tx(self, key: SigningKey, body: TxBody, fee: int | None = None) -> bytes:
        """Sign and queue a tx for the next block; returns its bytes."""
        acct = self.state.account(key.address)
        n = self.nonces.get(key.address, acct.nonce if acct else 0)
        self.nonces[key.address] = n + 1
        f = self.state.policy.min_tx_fee if fee is None else fee
        raw = codec.encode(sign_tx(key, self.chain_id, n, f, body))
        self.pending.append(raw)
        return raw

    def raw(self, data: bytes) -> None:
        self.pending.append(data)

    def block(self, advance_ms: int | None = None) -> list[Receipt]:
        """Commit the queued txs as the next block."""
        h = self.state.height + 1
        vals = self.state.validators.validators
        proposer = vals[h % len(vals)].address
        header = Header(
            chain_id=self.chain_id,
            height=h,
            time_ms=self.state.time_ms + (self.interval_ms if advance_ms is None else advance_ms),
            proposer=proposer,
            app_hash=self.state.app_hash,
        )
        txs, self.pending = self.pending, []
        self.state, receipts, _ = apply_block(self.state, header, txs, self.sig_check)
        # Nonces of txs that failed pre-checks were not consumed: resync.
        self.nonces.clear()
        self.receipts.append(receipts)
        self.blocks.append((header, txs))
        return receipts

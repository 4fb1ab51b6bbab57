"""Simulation settings: one documented dataclass per concern, loaded from TOML.

Every field is listed in simulations/README.md. Rates are probabilities in
[0, 1]; times are in simulated milliseconds.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from dpkid.core.consensus.engine import TimeoutConfig
from dpkid.core.node.core import NodeConfig

_T = TimeoutConfig()
_N = NodeConfig()


@dataclass
class Partition:
    """Between start_ms and heal_ms, messages cross only inside a group (and
    messages in flight across groups are lost). Nodes are named by index:
    validators first, then the twins (in ``byzantine.twins`` order), then full
    nodes. A node in no group is cut off from every other node."""

    start_ms: int
    heal_ms: int
    groups: list[list[int]]


@dataclass
class Crash:
    """Node ``node`` stops at ``at_ms`` (losing everything not persisted) and,
    if restart_ms > 0, restarts from its persisted blocks and sign state."""

    node: int
    at_ms: int
    restart_ms: int = 0


@dataclass
class Starvation:
    """Node ``node`` gets no CPU between start_ms and end_ms: it handles no
    message and no timer; everything queues and runs, in order and late, when
    it gets the CPU back (a loaded machine, a GC pause, SIGSTOP)."""

    node: int
    start_ms: int
    end_ms: int


@dataclass
class Chaos:
    """Faults drawn from the seed, at arbitrary points of the run, in
    [fault_start_ms, fault_end_ms). All counts are per run."""

    starve_count: int = 0  # periods of CPU starvation of one whole validator
    starve_max_ms: int = 5_000
    restart_count: int = 0  # kill (losing memory) and restart one validator
    restart_all_share: float = 0.0  # share of restarts that take every validator down at once
    down_max_ms: int = 3_000
    # Share of restarts whose store lost its last blocks (a lost SQLite WAL);
    # the sign state is its own file and survives (CONSENSUS.md §6).
    store_loss_share: float = 0.0
    store_loss_max_blocks: int = 5
    fault_start_ms: int = 1_000
    fault_end_ms: int = 30_000
    # With a quorum of honest power up, connected and not starved for this long,
    # some height must commit (0: off). The checker is in the runner.
    liveness_bound_ms: int = 0


@dataclass
class NetworkSettings:
    latency: str = "uniform"  # "uniform" | "lognormal" | "fixed"
    latency_min_ms: int = 5
    latency_max_ms: int = 60
    latency_median_ms: int = 20  # lognormal
    latency_sigma: float = 0.5  # lognormal
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0  # this share of messages gets extra delay up to reorder_ms
    reorder_ms: int = 200
    partitions: list[Partition] = field(default_factory=list)
    crashes: list[Crash] = field(default_factory=list)
    starvations: list[Starvation] = field(default_factory=list)


@dataclass
class ByzantineSettings:
    """Validator indices (0-based) for each misbehaviour."""

    equivocating_proposers: list[int] = field(default_factory=list)
    double_voters: list[int] = field(default_factory=list)
    twins: list[int] = field(default_factory=list)  # a second node runs with this validator's key
    silent: list[int] = field(default_factory=list)
    delaying: list[int] = field(default_factory=list)
    delay_ms: int = 800
    false_attestors: list[int] = field(default_factory=list)  # attest ok for bogus applications
    byzantine_endorsers: int = 0  # the first N endorsers
    endorser_mode: str = "approve_bogus"  # "approve_bogus" | "collude" | "withhold"
    bad_signers: list[int] = field(default_factory=list)  # send invalid threshold-signature shares


@dataclass
class Workload:
    tx_per_s: int = 20
    start_ms: int = 500
    stop_ms: int = 0  # 0: until the run's target heights
    transfer_share: float = 0.6
    dv_share: float = 0.2
    ov_share: float = 0.1
    ev_share: float = 0.1
    bogus_share: float = 0.25  # applications for domains the applicant does not control
    # OV/EV applications for a domain the applicant controls but with a false
    # organisation identity: validators attest ok, only endorsers can tell.
    bogus_org_share: float = 0.0
    accounts: int = 20
    # The demo's lifecycle transactions, per workload tick, on certificates
    # issued so far (drawn only when non-zero, so other runs keep their stream).
    revoke_share: float = 0.0
    renew_share: float = 0.0
    withdraw_share: float = 0.0  # an endorser withdraws from an OV/EV cert (it degrades)


@dataclass
class Scenario:
    name: str = "unnamed"
    seed: int = 1
    validators: int = 4
    powers: list[int] = field(default_factory=list)  # default: all 10
    full_nodes: int = 0
    endorsers: int = 3
    k_ov: int = 2
    k_ev: int = 3
    heights: int = 20
    max_sim_ms: int = 300_000
    block_txs: int = 500
    sig_check: str = "cached"  # "real": every node verifies; "cached": one shared verify-once cache
    tss: bool = True  # validators run the threshold key (SPEC §16)
    # Defaults are the daemon's own (TimeoutConfig, NodeConfig): one place each.
    timeout_propose_ms: int = _T.propose_ms
    timeout_delta_ms: int = _T.propose_delta_ms
    timeout_commit_ms: int = _T.commit_ms
    gossip_interval_ms: int = _N.gossip_interval_ms
    liveness_window_ms: int = 60_000  # after the last fault ends, progress must resume within this
    network: NetworkSettings = field(default_factory=NetworkSettings)
    chaos: Chaos = field(default_factory=Chaos)
    byzantine: ByzantineSettings = field(default_factory=ByzantineSettings)
    workload: Workload = field(default_factory=Workload)

    @property
    def peers(self) -> int:
        return self.validators + len(self.byzantine.twins) + self.full_nodes


class ScenarioError(ValueError):
    pass


_TABLES: dict[str, type[Any]] = {}  # filled in below, once the classes exist


def _type_ok(want: str, v: Any) -> bool:
    """Does the TOML value ``v`` fit the field annotation ``want`` (a string,
    as ``from __future__ import annotations`` leaves it)?"""
    if want == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if want == "float":
        return isinstance(v, int | float) and not isinstance(v, bool)
    if want == "str":
        return isinstance(v, str)
    if want.startswith("list[") and want.endswith("]"):
        return isinstance(v, list) and all(_type_ok(want[5:-1], x) for x in v)
    return True  # nested tables are checked by _build itself


def _build(cls: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: expected a table, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if k not in known:
            raise ScenarioError(
                f"{where}: unknown setting {k!r} (known: {', '.join(sorted(known))})"
            )
        sub = _TABLES.get(k)
        if sub is not None and k in ("network", "byzantine", "workload", "chaos"):
            kwargs[k] = _build(sub, v, f"{where}.{k}")
        elif k in ("partitions", "crashes", "starvations"):
            if not isinstance(v, list):
                raise ScenarioError(f"{where}.{k}: expected an array of tables")
            kwargs[k] = [_build(_TABLES[k], x, f"{where}.{k}[{i}]") for i, x in enumerate(v)]
        else:
            want = str(known[k].type)
            if not _type_ok(want, v):
                raise ScenarioError(f"{where}.{k}: expected {want}, got {v!r}")
            kwargs[k] = float(v) if want == "float" else v
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ScenarioError(f"{where}: {exc}") from None
    assert is_dataclass(obj)
    return obj


_TABLES.update(
    {
        "network": NetworkSettings,
        "byzantine": ByzantineSettings,
        "workload": Workload,
        "partitions": Partition,
        "crashes": Crash,
        "starvations": Starvation,
        "chaos": Chaos,
    }
)


def scenario_from_toml(text: str, where: str = "scenario") -> Scenario:
    """Parse a scenario manifest's text (reading the file is the caller's job)."""
    sc: Scenario = _build(Scenario, tomllib.loads(text), where)
    validate(sc)
    return sc


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    sc: Scenario = _build(Scenario, data, "scenario")
    validate(sc)
    return sc


def validate(sc: Scenario) -> None:
    if sc.validators < 1:
        raise ScenarioError("at least one validator")
    if sc.full_nodes < 0 or sc.endorsers < 0:
        raise ScenarioError("full_nodes and endorsers cannot be negative")
    if sc.heights < 1:
        raise ScenarioError("heights must be at least 1")
    if sc.powers and len(sc.powers) != sc.validators:
        raise ScenarioError("powers must list one power per validator")
    if any(p < 1 for p in sc.powers):
        raise ScenarioError("every power must be at least 1")
    net = sc.network
    if net.latency not in ("uniform", "lognormal", "fixed"):
        raise ScenarioError("network.latency is 'uniform', 'lognormal' or 'fixed'")
    if not 0 <= net.latency_min_ms <= net.latency_max_ms:
        raise ScenarioError("network: need 0 <= latency_min_ms <= latency_max_ms")
    for name in ("drop_rate", "duplicate_rate", "reorder_rate"):
        if not 0.0 <= getattr(net, name) <= 1.0:
            raise ScenarioError(f"network.{name} is a probability in [0, 1]")
    w = sc.workload
    for name in (
        "transfer_share",
        "dv_share",
        "ov_share",
        "ev_share",
        "bogus_share",
        "bogus_org_share",
        "revoke_share",
        "renew_share",
        "withdraw_share",
    ):
        if not 0.0 <= getattr(w, name) <= 1.0:
            raise ScenarioError(f"workload.{name} is a share in [0, 1]")
    if abs(w.transfer_share + w.dv_share + w.ov_share + w.ev_share - 1.0) > 1e-9:
        raise ScenarioError("workload: transfer_share + dv_share + ov_share + ev_share must be 1")
    if w.accounts < 1:
        raise ScenarioError("workload.accounts must be at least 1")
    b = sc.byzantine
    for name in (
        "equivocating_proposers",
        "double_voters",
        "twins",
        "silent",
        "delaying",
        "false_attestors",
    ):
        for i in getattr(b, name):
            if not 0 <= i < sc.validators:
                raise ScenarioError(f"byzantine.{name}: {i} is not a validator index")
    if len(set(b.twins)) != len(b.twins):
        raise ScenarioError("byzantine.twins: a validator is twinned at most once")
    if not 0 <= b.byzantine_endorsers <= sc.endorsers:
        raise ScenarioError("byzantine_endorsers must be between 0 and endorsers")
    if b.endorser_mode not in ("approve_bogus", "collude", "withhold"):
        raise ScenarioError("byzantine.endorser_mode is 'approve_bogus', 'collude' or 'withhold'")
    if sc.sig_check not in ("real", "cached"):
        raise ScenarioError("sig_check is 'real' or 'cached'")
    n = sc.validators + len(b.twins) + sc.full_nodes
    for p in net.partitions:
        if not 0 <= p.start_ms < p.heal_ms:
            raise ScenarioError("partition: need 0 <= start_ms < heal_ms")
        for g in p.groups:
            for i in g:
                if not 0 <= i < n:
                    raise ScenarioError(f"partition names node {i}, but there are {n}")
    for c in net.crashes:
        if not 0 <= c.node < n:
            raise ScenarioError(f"crash names node {c.node}, but there are {n}")
        if c.restart_ms and c.restart_ms <= c.at_ms:
            raise ScenarioError(f"crash of node {c.node}: restart_ms must be after at_ms")
    for st in net.starvations:
        if not 0 <= st.node < n:
            raise ScenarioError(f"starvation names node {st.node}, but there are {n}")
        if not 0 <= st.start_ms < st.end_ms:
            raise ScenarioError("starvation: need 0 <= start_ms < end_ms")
    ch = sc.chaos
    for name in ("restart_all_share", "store_loss_share"):
        if not 0.0 <= getattr(ch, name) <= 1.0:
            raise ScenarioError(f"chaos.{name} is a share in [0, 1]")
    counts = ("starve_count", "restart_count", "starve_max_ms", "down_max_ms", "liveness_bound_ms")
    for name in counts:
        if getattr(ch, name) < 0:
            raise ScenarioError(f"chaos.{name} cannot be negative")
    if ch.starve_count or ch.restart_count:
        if not 0 <= ch.fault_start_ms < ch.fault_end_ms:
            raise ScenarioError("chaos: need 0 <= fault_start_ms < fault_end_ms")
        if ch.starve_max_ms < 1 or ch.down_max_ms < 1:
            raise ScenarioError("chaos: starve_max_ms and down_max_ms must be at least 1")

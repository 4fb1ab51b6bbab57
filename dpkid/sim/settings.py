"""Simulation settings: one documented dataclass per concern, loaded from TOML.

Every field is listed in simulations/README.md. Rates are probabilities in
[0, 1]; times are in simulated milliseconds.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any


@dataclass
class Partition:
    """Between start_ms and heal_ms, messages cross only inside a group.
    Nodes are named by index: validators first, then full nodes."""

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
    accounts: int = 20


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
    timeout_propose_ms: int = 1_000
    timeout_delta_ms: int = 500
    timeout_commit_ms: int = 200
    gossip_interval_ms: int = 500
    liveness_window_ms: int = 60_000  # after the last fault ends, progress must resume within this
    network: NetworkSettings = field(default_factory=NetworkSettings)
    byzantine: ByzantineSettings = field(default_factory=ByzantineSettings)
    workload: Workload = field(default_factory=Workload)

    @property
    def peers(self) -> int:
        return self.validators + len(self.byzantine.twins) + self.full_nodes


class ScenarioError(ValueError):
    pass


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if k not in known:
            raise ScenarioError(
                f"{where}: unknown setting {k!r} (known: {', '.join(sorted(known))})"
            )
        sub = {
            "network": NetworkSettings,
            "byzantine": ByzantineSettings,
            "workload": Workload,
        }.get(k)
        if sub is not None and isinstance(v, dict):
            kwargs[k] = _build(sub, v, f"{where}.{k}")
        elif k == "partitions":
            kwargs[k] = [_build(Partition, p, f"{where}.partitions") for p in v]
        elif k == "crashes":
            kwargs[k] = [_build(Crash, c, f"{where}.crashes") for c in v]
        else:
            kwargs[k] = v
    obj = cls(**kwargs)
    assert is_dataclass(obj)
    return obj


def load_scenario(path: str | Path) -> Scenario:
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    sc: Scenario = _build(Scenario, data, str(path))
    validate(sc)
    return sc


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    sc: Scenario = _build(Scenario, data, "scenario")
    validate(sc)
    return sc


def validate(sc: Scenario) -> None:
    if sc.validators < 1:
        raise ScenarioError("at least one validator")
    if sc.powers and len(sc.powers) != sc.validators:
        raise ScenarioError("powers must list one power per validator")
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
    if b.byzantine_endorsers > sc.endorsers:
        raise ScenarioError("more Byzantine endorsers than endorsers")
    if sc.sig_check not in ("real", "cached"):
        raise ScenarioError("sig_check is 'real' or 'cached'")
    n = sc.validators + len(b.twins) + sc.full_nodes
    for p in sc.network.partitions:
        for g in p.groups:
            for i in g:
                if not 0 <= i < n:
                    raise ScenarioError(f"partition names node {i}, but there are {n}")
    for c in sc.network.crashes:
        if not 0 <= c.node < n:
            raise ScenarioError(f"crash names node {c.node}, but there are {n}")

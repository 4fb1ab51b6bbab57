"""Simulation sweeps: many seeds of small scenarios, a Twins enumeration, and
every manifest in simulations/ (the 300-peer one as a slow test).

Each sweep case is a small scenario (4 validators, about 8 heights) of one of
the KINDS below, with its fault times and rates drawn from the seed. It is
written to a TOML file and run from there, exactly as ``dpkid sim run`` would,
so a failure names the seed and a command that replays it. To get the TOML of
a case without pytest::

    python tests/test_sim_sweep.py SEED > sweep.toml
    dpkid sim run sweep.toml --seed SEED

Besides the simulator's own checkers (agreement on block and app hash,
validity, policy, liveness) every run checks that no honest validator was
jailed: only double voters and twinned keys may be.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from dpkid.cli.sim import load_scenario, repro_command
from dpkid.core.state.machine import P_JAIL
from dpkid.sim.runner import Simulation
from dpkid.sim.settings import Scenario

ROOT = Path(__file__).resolve().parent.parent
SIMULATIONS = ROOT / "simulations"

KINDS: tuple[str, ...] = (
    "drop",
    "duplicate",
    "reorder",
    "lossy",
    "partition-halves",
    "partition-minority",
    "crash-restart",
    "crash-two",
    "double-voter",
    "equivocating-proposer",
    "silent",
    "delaying",
    "false-attestor",
    "endorsers-approve-bogus",
    "endorsers-collude",
    "endorsers-withhold",
    "twins",
    "full-nodes",
    "mixed",
    "mixed",
)
SWEEP_SEEDS = 300  # 15 of each kind
CHUNK = 10
CHUNKS = [range(i, min(i + CHUNK, SWEEP_SEEDS)) for i in range(0, SWEEP_SEEDS, CHUNK)]


# ------------------------------------------------------------------ scenarios


def sweep_case(seed: int) -> dict[str, Any]:
    """The small scenario for ``seed``: kind ``KINDS[seed % len(KINDS)]``."""
    kind = KINDS[seed % len(KINDS)]
    r = random.Random(f"sweep-{seed}")
    v = r.randrange(4)  # the validator the fault is about
    others = [i for i in range(4) if i != v]
    r.shuffle(others)
    net: dict[str, Any] = {
        "latency": "uniform",
        "latency_min_ms": 5,
        "latency_max_ms": r.randint(20, 80),
    }
    byz: dict[str, Any] = {}
    workload: dict[str, Any] = {"tx_per_s": 30, "start_ms": 200, "bogus_share": 0.3}
    d: dict[str, Any] = {
        "name": f"sweep-{kind}",
        "seed": seed,
        "validators": 4,
        "endorsers": 4,
        "k_ov": 2,
        "k_ev": 3,
        "heights": 8,
        "max_sim_ms": 120_000,
        "liveness_window_ms": 30_000,
    }
    t0 = r.randint(500, 4000)

    def partition(groups: list[list[int]]) -> dict[str, Any]:
        return {"start_ms": t0, "heal_ms": t0 + r.randint(2000, 10_000), "groups": groups}

    if kind == "mixed":
        # One Byzantine validator and one network fault on an honest node at once.
        byz[r.choice(["double_voters", "equivocating_proposers", "silent", "delaying"])] = [v]
        fault = r.choice(["lossy", "crash", "partition"])
        w = others[0]
        if fault == "lossy":
            net.update(drop_rate=0.1, duplicate_rate=0.1, reorder_rate=0.3)
        elif fault == "crash":
            net["crashes"] = [{"node": w, "at_ms": t0, "restart_ms": t0 + r.randint(1000, 6000)}]
        else:
            net["partitions"] = [partition([[w], [v, *others[1:]]])]
    elif kind == "drop":
        net["drop_rate"] = round(r.uniform(0.05, 0.25), 3)
    elif kind == "duplicate":
        net["duplicate_rate"] = round(r.uniform(0.1, 0.5), 3)
    elif kind == "reorder":
        net["reorder_rate"] = round(r.uniform(0.2, 0.6), 3)
        net["reorder_ms"] = r.randint(100, 600)
    elif kind == "lossy":
        net.update(
            latency="lognormal",
            latency_median_ms=r.randint(10, 40),
            latency_sigma=round(r.uniform(0.3, 1.0), 2),
            drop_rate=0.1,
            duplicate_rate=0.1,
            reorder_rate=0.2,
        )
    elif kind == "partition-halves":  # 2 | 2: no side has a quorum until the heal
        net["partitions"] = [partition([[v, others[0]], others[1:]])]
    elif kind == "partition-minority":
        net["partitions"] = [partition([[v], others])]
    elif kind == "crash-restart":
        net["crashes"] = [{"node": v, "at_ms": t0, "restart_ms": t0 + r.randint(1000, 8000)}]
    elif kind == "crash-two":  # two of four down at once: no quorum until one is back
        t1 = t0 + r.randint(0, 1500)
        net["crashes"] = [
            {"node": v, "at_ms": t0, "restart_ms": t1 + r.randint(2000, 6000)},
            {"node": others[0], "at_ms": t1, "restart_ms": t1 + r.randint(2000, 6000)},
        ]
    elif kind == "double-voter":
        byz["double_voters"] = [v]
    elif kind == "equivocating-proposer":
        byz["equivocating_proposers"] = [v]
    elif kind == "silent":
        byz["silent"] = [v]
    elif kind == "delaying":
        byz["delaying"] = [v]
        byz["delay_ms"] = r.randint(200, 1500)
    elif kind == "false-attestor":
        byz["false_attestors"] = [v]
        workload["bogus_share"] = 0.6
    elif kind.startswith("endorsers-"):
        byz["byzantine_endorsers"] = 1  # below k_ov = 2 and k_ev = 3
        byz["endorser_mode"] = kind.removeprefix("endorsers-").replace("-", "_")
        workload.update(
            transfer_share=0.4, dv_share=0.1, ov_share=0.25, ev_share=0.25, bogus_org_share=0.5
        )
    elif kind == "twins":
        byz["twins"] = [v]
        net["drop_rate"] = 0.05
    elif kind == "full-nodes":
        d["full_nodes"] = 3
        full = 4 + r.randrange(3)
        net["drop_rate"] = 0.05
        net["crashes"] = [{"node": full, "at_ms": t0, "restart_ms": t0 + r.randint(1000, 6000)}]
        cut = 4 + (full - 3) % 3  # another full node, cut off for a while
        net["partitions"] = [partition([[cut], [i for i in range(7) if i != cut]])]
    d["network"] = net
    if byz:
        d["byzantine"] = byz
    d["workload"] = workload
    return d


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def to_toml(d: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for scenario dicts: scalars, arrays, tables, arrays of tables."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, t in tables:
        out += f"\n[{prefix}{k}]\n" + to_toml(t, f"{prefix}{k}.")
    for k, items in arrays:
        for item in items:
            out += f"\n[[{prefix}{k}]]\n" + to_toml(item, f"{prefix}{k}.")
    return out


# ------------------------------------------------------------------ running


def jailed_honest(sim: Simulation) -> list[str]:
    """Honest validators that some honest node's state jails (must be none)."""
    b = sim.sc.byzantine
    may = {sim.val_keys[i].address for i in {*b.double_voters, *b.twins, *b.bad_signers}}
    bad: set[int] = set()
    for n in sim.nodes:
        if n.honest and n.core is not None:
            for k, _ in n.core.state.items():
                if k.startswith(P_JAIL) and k[len(P_JAIL) :] not in may:
                    addr = k[len(P_JAIL) :]
                    bad |= {i for i, key in enumerate(sim.val_keys) if key.address == addr}
    return [f"validator {i}" for i in sorted(bad)]


def run_file(path: Path, seed: int | None = None) -> tuple[Simulation, dict[str, Any], list[str]]:
    """Run a manifest as ``dpkid sim run`` does; return what went wrong (if anything)."""
    sc: Scenario = load_scenario(path)
    if seed is not None:
        sc.seed = seed
    sim = Simulation(sc, repro_command(str(path), sc.seed))
    rep = sim.run()
    problems = list(rep["violations"])
    if rep["safety_violations"] or rep["policy_violations"] or not rep["liveness_ok"]:
        problems.append(
            f"safety {rep['safety_violations']}, policy {rep['policy_violations']}, "
            f"liveness_ok {rep['liveness_ok']}"
        )
    if rep["violations"] and not problems:
        problems.append("violations reported")
    jailed = jailed_honest(sim)
    if jailed:
        problems.append(f"honest {', '.join(jailed)} jailed")
    return sim, rep, problems


def failure_text(seed: int, kind: str, path: Path, problems: list[str], toml: str) -> str:
    return (
        f"seed {seed} ({kind}): {'; '.join(problems)}\n"
        f"  reproduce: {repro_command(str(path), seed)}\n"
        f"  or, without this file: python tests/test_sim_sweep.py {seed} > sweep-{seed}.toml"
        f" && dpkid sim run sweep-{seed}.toml --seed {seed}\n"
        f"  scenario:\n" + "".join(f"    {line}\n" for line in toml.splitlines())
    )


@pytest.mark.parametrize(
    "seeds",
    [
        pytest.param(c, marks=[pytest.mark.slow] if i else [], id=f"seeds{c[0]}-{c[-1]}")
        for i, c in enumerate(CHUNKS)
    ],
)
def test_sweep(seeds: range, tmp_path: Path) -> None:
    """The first chunk (one seed of every kind) is quick; the rest are marked slow."""
    failures: list[str] = []
    for seed in seeds:
        d = sweep_case(seed)
        toml = to_toml(d)
        path = tmp_path / f"sweep-{seed}.toml"
        path.write_text(toml)
        _sim, _rep, problems = run_file(path)
        if problems:
            failures.append(failure_text(seed, KINDS[seed % len(KINDS)], path, problems, toml))
    assert not failures, "\n".join(failures)


def test_sweep_case_round_trips(tmp_path: Path) -> None:
    """The TOML written for a case loads back to the same scenario."""
    from dpkid.sim.settings import scenario_from_dict

    for seed in range(len(KINDS)):
        d = sweep_case(seed)
        path = tmp_path / f"c{seed}.toml"
        path.write_text(to_toml(d))
        assert load_scenario(path) == scenario_from_dict(d)


# ------------------------------------------------------------------ Twins


def twins_layouts(t: int) -> dict[str, list[list[list[int]]]]:
    """Partition phases that put validator ``t`` and its twin (node 4) on
    different sides; consecutive phases move honest nodes across."""
    a, b, c = (i for i in range(4) if i != t)
    tw = 4
    return {
        "2|3": [[[t, a], [tw, b, c]]],  # the twin's side has a quorum
        "3|2": [[[t, a, b], [tw, c]]],  # the original's side has a quorum
        "1|4": [[[t], [tw, a, b, c]]],
        "2|2|1": [[[t, a], [tw, b], [c]]],  # no side has a quorum
        "swap": [[[t, a], [tw, b, c]], [[t, b, c], [tw, a]]],
        "flip": [[[t, a, b], [tw, c]], [[t, c], [tw, a, b]]],
    }


TWINS_SEEDS = (1, 2, 3)


@pytest.mark.parametrize("layout", list(twins_layouts(0)))
@pytest.mark.parametrize("twin", range(4))
def test_twins(twin: int, layout: str, tmp_path: Path) -> None:
    failures: list[str] = []
    for seed in TWINS_SEEDS:
        r = random.Random(f"twins-{twin}-{layout}-{seed}")
        phases = twins_layouts(twin)[layout]
        start = 0
        partitions = []
        for groups in phases:
            end = start + r.randint(1500, 4000)
            partitions.append({"start_ms": start, "heal_ms": end, "groups": groups})
            start = end
        d: dict[str, Any] = {
            "name": f"twins-{twin}-{layout}",
            "seed": seed,
            "validators": 4,
            "heights": 8,
            "max_sim_ms": 120_000,
            "liveness_window_ms": 30_000,
            "network": {"drop_rate": 0.02, "partitions": partitions},
            "byzantine": {"twins": [twin]},
        }
        toml = to_toml(d)
        path = tmp_path / f"twins-{seed}.toml"
        path.write_text(toml)
        _sim, rep, problems = run_file(path)
        assert rep["peers"] == 5
        if problems:
            failures.append(failure_text(seed, f"twins {layout}", path, problems, toml))
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------ the manifests


MANIFESTS = sorted(p.name for p in SIMULATIONS.glob("*.toml") if p.stem != "byzantine-endorsers")


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest(name: str) -> None:
    path = SIMULATIONS / name
    sim, rep, problems = run_file(path, seed=1)
    assert not problems, f"{name} seed 1: {problems}; reproduce: {repro_command(str(path), 1)}"
    assert rep["heights"] >= sim.sc.heights


def test_manifests_are_all_here() -> None:
    names = {p.stem for p in SIMULATIONS.glob("*.toml")}
    assert {
        "baseline-4",
        "byzantine-endorsers",
        "byzantine-validators",
        "twins",
        "partition-heal",
        "crash-restart",
        "lossy-network",
        "silent-delaying",
        "tss-signing",
    } <= names
    readme = (SIMULATIONS / "README.md").read_text()
    for n in names:
        assert f"{n}.toml" in readme, f"{n}.toml has no row in simulations/README.md"


@pytest.mark.parametrize("seed", [1, 2])
def test_equivocators_are_jailed(seed: int) -> None:
    """byzantine-validators: the double votes become committed evidence, and
    both equivocators lose their seat on every honest node."""
    path = SIMULATIONS / "byzantine-validators.toml"
    sim, _rep, problems = run_file(path, seed=seed)
    assert not problems, f"seed {seed}: {problems}; reproduce: {repro_command(str(path), seed)}"
    byz = set(sim.sc.byzantine.double_voters)
    assert len(byz) == 2 and sim.sc.validators == 7
    byz_addrs = {sim.val_keys[i].address for i in byz}
    honest_addrs = {k.address for i, k in enumerate(sim.val_keys) if i not in byz}
    for n in sim.nodes:
        if not n.honest or n.core is None:
            continue
        st = n.core.state
        jailed = {k[len(P_JAIL) :] for k, _ in st.items() if k.startswith(P_JAIL)}
        assert jailed == byz_addrs, f"{n.name}: seed {seed}"
        seated = {v.address for v in st.validators.validators}
        assert seated == honest_addrs, f"{n.name}: seed {seed}"


@pytest.mark.slow
def test_byzantine_endorsers_300_peers() -> None:
    path = SIMULATIONS / "byzantine-endorsers.toml"
    sim, rep, problems = run_file(path, seed=1)
    cmd = repro_command(str(path), 1)
    assert not problems, f"seed 1: {problems}; reproduce: {cmd}"
    assert rep["peers"] >= 300, cmd
    assert rep["heights"] >= 50, cmd
    assert rep["safety_violations"] == 0 and rep["policy_violations"] == 0, cmd
    assert rep["liveness_ok"], cmd
    assert rep["bogus_certs_issued"] == 0, cmd
    b = sim.sc.byzantine
    assert 4 * b.byzantine_endorsers >= sim.sc.endorsers
    assert b.byzantine_endorsers < min(sim.sc.k_ov, sim.sc.k_ev)
    assert 0 < 3 * len(b.false_attestors) < sim.sc.validators


if __name__ == "__main__":
    print(to_toml(sweep_case(int(sys.argv[1]))), end="")

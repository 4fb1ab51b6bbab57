"""The faults that found the halt at height 28 (issue 10), over 200 seeds:
whole validators starved of CPU, validators killed and restarted at arbitrary
points (all four at once, or with a store that lost its last blocks), under
the demo's transaction mix. Every run checks the simulator's checkers plus:

* after every step of every node a consensus timer is armed (CONSENSUS.md §10.1);
* with a quorum of honest power up and connected for chaos.liveness_bound_ms,
  some height commits.

A failure names the seed and the command that replays it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dpkid.cli.sim import load_scenario, repro_command
from dpkid.core.consensus import engine
from dpkid.sim.runner import Simulation

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "simulations" / "starvation-restart.toml"
SEEDS = 200
CHUNK = 10
CHUNKS = [range(i, min(i + CHUNK, SEEDS)) for i in range(0, SEEDS, CHUNK)]


def _sim(seed: int) -> Simulation:
    sc = load_scenario(MANIFEST)
    sc.seed = seed
    return Simulation(sc, repro_command(str(MANIFEST), seed))


def _run(seed: int) -> tuple[Simulation, dict[str, Any]]:
    sim = _sim(seed)
    return sim, sim.run()


@pytest.mark.parametrize(
    "seeds",
    [
        pytest.param(c, marks=[pytest.mark.slow] if i else [], id=f"seeds{c[0]}-{c[-1]}")
        for i, c in enumerate(CHUNKS)
    ],
)
def test_starvation_and_restarts_keep_the_chain_live_and_safe(seeds: range) -> None:
    failures = []
    for seed in seeds:
        sim, rep = _run(seed)
        assert sim.crashes and sim.starvations, "the chaos plan must inject faults"
        problems = list(rep["violations"])
        if rep["timer_invariant_violations"]:
            problems.append(f"{rep['timer_invariant_violations']} steps with no timer armed")
        if not (rep["liveness_ok"] and rep["safety_violations"] == 0):
            problems.append("liveness or safety failed")
        if problems:
            failures.append(
                f"seed {seed}: {'; '.join(map(str, problems))}\n"
                f"  reproduce: {repro_command(str(MANIFEST), seed)}"
            )
    assert not failures, "\n".join(failures)


def test_the_plan_covers_every_fault_kind() -> None:
    """Over the first seeds: restarts of all four at once, restarts that lose
    stored blocks, and starvation of every validator all occur."""
    all_at_once = store_loss = 0
    starved: set[int] = set()
    for seed in range(20):
        sim = _sim(seed)
        ats: dict[int, int] = {}
        for c in sim.crashes:
            ats[c.at_ms] = ats.get(c.at_ms, 0) + 1
        all_at_once += sum(1 for n in ats.values() if n == 4)
        store_loss += len(sim.store_loss)
        starved |= {s.node for s in sim.starvations}
    assert all_at_once > 0 and store_loss > 0 and starved == {0, 1, 2, 3}


def test_the_timer_checker_catches_an_engine_that_arms_no_stall_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Negative control: with the §10.1 stall timers removed, steps end with no
    timer armed and the run reports it (this is the class of the halt at 28)."""

    def enter_without_timer(self: engine.HeightState, step: str, eff: list[engine.Effect]) -> None:
        self.step = step

    monkeypatch.setattr(engine.HeightState, "_enter", enter_without_timer)
    _sim, rep = _run(3)
    assert rep["timer_invariant_violations"] > 0
    assert not rep["liveness_ok"]
    assert any("no consensus timer armed" in v for v in rep["violations"])


def test_the_liveness_bound_checker_reports_a_halt() -> None:
    """Negative control: a bound shorter than one height's commit is violated."""
    sc = load_scenario(MANIFEST)
    sc.chaos.liveness_bound_ms = 50
    rep = Simulation(sc).run()
    assert not rep["liveness_ok"]
    assert any("quorum-up time" in v for v in rep["violations"])

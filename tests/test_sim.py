"""The simulator itself: deterministic, its checkers catch what they should,
and ``dpkid sim run`` reports (exit 0), flags violations (exit 1, with the
seed and a reproduce command) and rejects bad manifests (exit 2)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dpkid.cli.main import main
from dpkid.cli.sim import load_scenario, repro_command
from dpkid.core.node.effects import PersistBlock
from dpkid.core.types import TxBody
from dpkid.sim.runner import SimNode, Simulation, run_scenario
from dpkid.sim.settings import ScenarioError, scenario_from_dict

ROOT = Path(__file__).resolve().parent.parent

SMALL = """\
name = "small"
seed = 3
validators = 4
heights = 8

[network]
latency = "lognormal"
latency_median_ms = 20
drop_rate = 0.05
duplicate_rate = 0.05
reorder_rate = 0.2

[[network.crashes]]
node = 2
at_ms = 1500
restart_ms = 4000

[byzantine]
double_voters = [3]
"""


def small(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "small",
        "seed": 3,
        "validators": 4,
        "heights": 8,
        "network": {
            "latency": "lognormal",
            "latency_median_ms": 20,
            "drop_rate": 0.05,
            "duplicate_rate": 0.05,
            "reorder_rate": 0.2,
            "crashes": [{"node": 2, "at_ms": 1500, "restart_ms": 4000}],
        },
        "byzantine": {"double_voters": [3]},
    }
    d.update(over)
    return d


def write(tmp_path: Path, text: str, name: str = "sc.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def without_wall(report: dict[str, Any]) -> dict[str, Any]:
    """A report without its timings (wall and CPU seconds), which vary."""
    return {k: v for k, v in report.items() if k not in ("wall_s", "cpu_s")}


# ------------------------------------------------------------------ determinism


def test_same_seed_same_report() -> None:
    a = run_scenario(scenario_from_dict(small()))
    b = run_scenario(scenario_from_dict(small()))
    assert a["safety_violations"] == 0 and a["liveness_ok"]
    assert without_wall(a) == without_wall(b)
    assert a["series"] and a["latency_series"]  # the plotted series are compared too


def test_different_seeds_differ() -> None:
    events = {run_scenario(scenario_from_dict(small(seed=s)))["events"] for s in (1, 2, 3)}
    assert len(events) == 3


def test_same_report_across_processes(tmp_path: Path) -> None:
    """No hash-order dependence: PYTHONHASHSEED must not change a run."""
    path = write(tmp_path, SMALL)
    outs = []
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-m", "dpkid", "sim", "run", path, "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outs.append(without_wall(json.loads(proc.stdout)))
    assert outs[0] == outs[1]
    inproc = run_scenario(load_scenario(path))
    assert outs[0]["events"] == inproc["events"]
    assert outs[0]["committed_txs"] == inproc["committed_txs"]


# ------------------------------------------------------------------ the CLI


def test_cli_summary_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SMALL)
    assert main(["sim", "run", path, "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "scenario small  seed 5  signature check: cached" in out
    assert "peers 4 (validators 4, full nodes 0)" in out
    assert "safety violations 0, policy violations 0, liveness ok" in out
    assert "VIOLATION" not in out


def test_cli_json_and_peers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SMALL)
    assert main(["sim", "run", path, "--json", "--peers", "7"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and "reproduce" not in out
    assert out["peers"] == 7 and out["full_nodes"] == 3
    assert "series" not in out and "latency_series" not in out
    for key in (
        "validators",
        "byzantine_validators",
        "heights",
        "committed_txs",
        "certs_issued",
        "sim_tps",
        "latency_p50_s",
        "latency_p99_s",
        "wall_s",
        "events",
    ):
        assert key in out


def test_cli_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = write(tmp_path, SMALL)
    png = tmp_path / "run.png"
    assert main(["sim", "run", path, "--plot", str(png)]) == 0
    assert png.stat().st_size > 1000
    assert f"plot written to {png}" in capsys.readouterr().out


def test_cli_liveness_failure_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two of four validators crash for good: no quorum, so no liveness."""
    path = write(
        tmp_path,
        """\
name = "no-quorum"
validators = 4
heights = 10
max_sim_ms = 20000

[[network.crashes]]
node = 0
at_ms = 1000

[[network.crashes]]
node = 1
at_ms = 1000
""",
    )
    assert main(["sim", "run", path, "--seed", "11"]) == 1
    out = capsys.readouterr().out
    assert "liveness FAILED" in out
    assert "VIOLATION with seed 11" in out
    assert f"dpkid sim run {path} --seed 11" in out
    assert main(["sim", "run", path, "--seed", "11", "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)  # one JSON object, nothing else
    assert rep["ok"] is False and rep["liveness_ok"] is False
    assert rep["reproduce"] == repro_command(path, 11)
    assert rep["safety_violations"] == 0  # stuck is not forked
    assert any(v.startswith("liveness:") for v in rep["violations"])


def _corrupt_app_hash(monkeypatch: pytest.MonkeyPatch, node: int, height: int) -> None:
    """Make one honest node report a wrong app hash for one height, as a
    non-deterministic state machine would."""
    orig = Simulation._on_commit

    def on_commit(self: Simulation, n: SimNode, e: PersistBlock) -> None:
        if n.idx == node and e.block.header.height == height:
            e = dataclasses.replace(e, app_hash=b"\xee" * 32)
        orig(self, n, e)

    monkeypatch.setattr(Simulation, "_on_commit", on_commit)


def test_safety_checker_catches_app_hash_divergence(monkeypatch: pytest.MonkeyPatch) -> None:
    _corrupt_app_hash(monkeypatch, node=1, height=3)
    sim = Simulation(scenario_from_dict(small(byzantine={})), "hint")
    rep = sim.run()
    assert rep["safety_violations"] >= 1
    assert any("app hash" in v and "height 3" in v for v in rep["violations"])
    assert rep["heights"] < 8  # the run stops at the first safety violation


def test_safety_checker_catches_conflicting_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """One honest node 'decides' a different block at height 4."""
    orig = Simulation._on_commit

    def on_commit(self: Simulation, n: SimNode, e: PersistBlock) -> None:
        if n.idx == 2 and e.block.header.height == 4:
            hdr = msgspec.structs.replace(e.block.header, time_ms=e.block.header.time_ms + 1)
            e = dataclasses.replace(e, block=msgspec.structs.replace(e.block, header=hdr))
        orig(self, n, e)

    monkeypatch.setattr(Simulation, "_on_commit", on_commit)
    rep = run_scenario(scenario_from_dict(small(byzantine={}, network={})))
    assert rep["safety_violations"] >= 1
    assert any("height 4" in v and "another honest node" in v for v in rep["violations"])


def test_cli_safety_violation_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _corrupt_app_hash(monkeypatch, node=0, height=2)
    path = write(tmp_path, SMALL)
    assert main(["sim", "run", path, "--seed", "7"]) == 1
    out = capsys.readouterr().out
    assert "safety violations 1" in out
    assert "VIOLATION with seed 7" in out
    assert f"reproduce with: dpkid sim run {path} --seed 7" in out


def test_policy_checker() -> None:
    """Three of four endorsers approve false organisation identities and k_ov =
    k_ev = 3: bogus OV/EV certificates do get issued. That is within what the
    policy allows (the Byzantine endorsers reach k), so it is no violation;
    told the Byzantine sets were below the thresholds, the checker flags it."""
    d = small(
        seed=1,
        heights=15,
        endorsers=4,
        k_ov=3,
        k_ev=3,
        network={},
        byzantine={"byzantine_endorsers": 3, "endorser_mode": "approve_bogus"},
        workload={
            "tx_per_s": 30,
            "transfer_share": 0.2,
            "dv_share": 0.0,
            "ov_share": 0.4,
            "ev_share": 0.4,
            "bogus_share": 0.0,
            "bogus_org_share": 0.7,
        },
    )
    rep = run_scenario(scenario_from_dict(d))
    assert rep["bogus_certs_issued"] > 0
    assert rep["policy_violations"] == 0 and rep["liveness_ok"]

    sim = Simulation(scenario_from_dict(d))
    sim._byzantine_below_thresholds = lambda: True  # type: ignore[method-assign]
    rep = sim.run()
    assert rep["policy_violations"] == rep["bogus_certs_issued"] > 0
    assert any("bogus application" in v for v in rep["violations"])


def test_false_attestor_minority_cannot_issue_bogus() -> None:
    d = small(
        seed=2,
        heights=12,
        network={},
        byzantine={"false_attestors": [0]},
        workload={
            "tx_per_s": 30,
            "transfer_share": 0.2,
            "dv_share": 0.8,
            "ov_share": 0.0,
            "ev_share": 0.0,
            "bogus_share": 0.6,
        },
    )
    rep = run_scenario(scenario_from_dict(d))
    assert rep["bogus_applications"] > 0 and rep["certs_issued"]["DV"] > 0
    assert rep["bogus_certs_issued"] == 0 and rep["policy_violations"] == 0


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("validatorz = 4\n", "unknown setting 'validatorz'"),
        ("[network]\ndorp_rate = 0.1\n", "network: unknown setting 'dorp_rate'"),
        ("[[network.crashes]]\nnode = 1\nat_ms = 5\nwhen = 3\n", "unknown setting 'when'"),
        ("[[network.crashes]]\nnode = 1\n", "at_ms"),
        ('validators = "four"\n', "validators: expected int"),
        ("network = 3\n", "network: expected a table"),
        ('[network]\nlatency = "gaussian"\n', "latency"),
        ('[byzantine]\nendorser_mode = "bribe"\n', "endorser_mode"),
        ("[network]\ndrop_rate = 1.5\n", "drop_rate"),
        ("[workload]\ndv_share = 0.5\n", "must be 1"),
        ("[byzantine]\nsilent = [9]\n", "9 is not a validator index"),
        ("heights = \n", "cannot load"),
    ],
)
def test_bad_manifest_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    path = write(tmp_path, text)
    assert main(["sim", "run", path]) == 2
    err = capsys.readouterr().err  # a usage error: one line on stderr (README, exit codes)
    assert err.startswith(f"dpkid sim run: cannot load {path}: "), err
    assert needle in err and err.count("\n") == 1


def test_missing_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "run", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml does not exist" in capsys.readouterr().err


def test_overrides_are_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        "validators = 4\nfull_nodes = 3\n\n[[network.crashes]]\nnode = 6\nat_ms = 100\n",
    )
    assert main(["sim", "run", path, "--peers", "5"]) == 2
    assert "crash names node 6, but there are 5" in capsys.readouterr().err


def test_load_scenario_errors_are_scenario_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="unknown setting 'tx_rate'"):
        load_scenario(write(tmp_path, "[workload]\ntx_rate = 3\n"))


# ------------------------------------------------------------------ runner details


def test_workload_rate_keeps_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    """tx_per_s = 15 submits 15 client transactions a second, not 10."""
    sim = Simulation(scenario_from_dict({"workload": {"tx_per_s": 15}}))
    calls: list[TxBody] = []

    def submit(agent: object, body: TxBody, prefer: int | None = None) -> None:
        calls.append(body)

    monkeypatch.setattr(sim, "_submit", submit)
    monkeypatch.setattr(sim, "_done", lambda: False)
    for _ in range(20):
        sim._workload_tick()
    assert len(calls) == 30


def test_liveness_waits_for_the_last_fault() -> None:
    """Heights reached before a crash ends do not end the run: progress must
    be seen after the restart."""
    d = small(
        heights=3,
        network={"crashes": [{"node": 1, "at_ms": 5000, "restart_ms": 9000}]},
        byzantine={},
    )
    sim = Simulation(scenario_from_dict(d))
    rep = sim.run()
    assert rep["liveness_ok"]
    assert sim.progress_after_fault_ms is not None and sim.progress_after_fault_ms >= 9000
    assert sim.nodes[1].core is not None and sim.nodes[1].core.state.height >= 3


def test_real_signature_checks_change_nothing_but_cost() -> None:
    """Every node verifying for itself decides exactly what the shared cache does."""
    real = run_scenario(scenario_from_dict(small(heights=4, sig_check="real")))
    cached = run_scenario(scenario_from_dict(small(heights=4, sig_check="cached")))
    assert real["sig_check"] == "real"
    assert real["safety_violations"] == 0 and real["liveness_ok"]
    skip = ("wall_s", "cpu_s", "sig_check")
    assert {k: v for k, v in real.items() if k not in skip} == {
        k: v for k, v in cached.items() if k not in skip
    }


def test_partition_without_quorum_stalls_then_heals() -> None:
    d = small(
        heights=10,
        byzantine={},
        network={"partitions": [{"start_ms": 1000, "heal_ms": 6000, "groups": [[0, 1], [2, 3]]}]},
    )
    sim = Simulation(scenario_from_dict(d))
    rep = sim.run()
    assert rep["liveness_ok"] and rep["safety_violations"] == 0
    during = [h for h, (_b, _a, t) in sim.decided.items() if 1500 <= t < 6000]
    assert during == []  # decided in flight at 1000 ms may land just after; then nothing
    assert sim.progress_after_fault_ms is not None and sim.progress_after_fault_ms >= 6000

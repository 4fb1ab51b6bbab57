"""`dpkid sim run`: run a scenario, print a summary or JSON, exit 1 on a violation."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from dpkid.cli.common import (
    EXIT_HELP,
    Exit,
    UsageError,
    add_json,
    print_json,
    read_text,
)
from dpkid.sim.runner import run_scenario
from dpkid.sim.settings import Scenario, ScenarioError, scenario_from_toml, validate


def load_scenario(path: str | Path) -> Scenario:
    """Read and parse a scenario manifest (*.toml)."""
    return scenario_from_toml(Path(path).read_text(), str(path))


def repro_command(path: str, seed: int, peers: int | None = None) -> str:
    cmd = f"dpkid sim run {shlex.quote(path)} --seed {seed}"
    return cmd if peers is None else f"{cmd} --peers {peers}"


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: list[tuple[float, int]] = report["series"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    if series:
        end = int(series[-1][0]) + 1
        per_s = [0] * (end + 1)
        for t, n in series:
            per_s[int(t)] += n
        ax1.bar(range(len(per_s)), per_s, width=1.0, color="#3a7bd5")
    ax1.set_ylabel("committed tx/s")
    ax1.set_title(f"{report['scenario']} (seed {report['seed']}, {report['peers']} peers)")
    lat = report.get("latency_series", [])
    if lat:
        ax2.plot([t for t, _ in lat], [v for _, v in lat], ".", markersize=2, color="#d5533a")
    ax2.set_ylabel("submit-to-commit latency (s)")
    ax2.set_xlabel("simulated time (s)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def cmd_sim_run(args: argparse.Namespace) -> int:
    text = read_text(args.scenario, "scenario", "is not a TOML manifest (not text)")
    try:
        sc = scenario_from_toml(text, str(args.scenario))
    except (ScenarioError, ValueError, TypeError) as exc:
        why = str(exc)
        where = "" if why.startswith(f"{args.scenario}:") else f"{args.scenario}: "
        raise UsageError(f"cannot load {where}{why}") from None
    if args.seed is not None:
        sc.seed = args.seed
    if args.peers is not None:
        sc.full_nodes = max(0, args.peers - sc.validators - len(sc.byzantine.twins))
    try:
        validate(sc)  # the overrides must still fit the partitions and crashes
    except ScenarioError as exc:
        raise UsageError(f"{args.scenario} with these options: {exc}") from None
    repro = repro_command(args.scenario, sc.seed, args.peers)
    report = run_scenario(sc, repro, time.perf_counter, time.process_time)
    ok = (
        report["safety_violations"] == 0
        and report["policy_violations"] == 0
        and report["liveness_ok"]
        and report.get("tss_violations", 0) == 0
    )
    if args.plot:
        plot(report, Path(args.plot))
    out = {k: v for k, v in report.items() if k not in ("series", "latency_series")}
    out["ok"] = ok
    if not ok:
        out["reproduce"] = repro
    if args.json:
        print_json(out)
    else:
        print(
            f"scenario {out['scenario']}  seed {out['seed']}  signature check: {out['sig_check']}"
        )
        print(
            f"peers {out['peers']} (validators {out['validators']}, "
            f"full nodes {out['full_nodes']}), endorsers {out['endorsers']}"
        )
        print(
            f"byzantine validators {out['byzantine_validators']}, "
            f"byzantine endorsers {out['byzantine_endorsers']}"
        )
        print(
            f"heights {out['heights']}, committed txs {out['committed_txs']}, "
            f"certs issued {out['certs_issued']}, bogus applications "
            f"{out['bogus_applications']} ({out['bogus_certs_issued']} issued)"
        )
        print(
            f"simulated {out['sim_s']} s: {out['sim_tps']} tx/s, "
            f"latency p50 {out['latency_p50_s']} s p99 {out['latency_p99_s']} s; "
            f"wall {out['wall_s']} s (cpu {out['cpu_s']} s)"
        )
        print(
            f"safety violations {out['safety_violations']}, policy violations "
            f"{out['policy_violations']}, liveness {'ok' if out['liveness_ok'] else 'FAILED'}"
        )
        t = out.get("tss") or {}
        if t:
            print(
                f"threshold key: epoch {t['key_epoch']}, t={t['threshold']}, root "
                f"{'signed' if t['root_signed'] else 'NOT signed'}; {t['signed']} of "
                f"{t['requests']} requests signed in {t['attempts']} attempts, latency p50 "
                f"{t.get('latency_blocks_p50', 0)} max {t.get('latency_blocks_max', 0)} blocks; "
                f"{t['jailed']} jailed; violations {out['tss_violations']}"
            )
        for v in out["violations"]:
            print(f"  {v}")
        if args.plot:
            print(f"plot written to {args.plot}")
    if not ok:
        if not args.json:  # under --json, out["reproduce"] says it
            print(f"VIOLATION with seed {sc.seed}; reproduce with: {repro}")
        return Exit.NO
    return Exit.OK


def add_parser(sub: Any) -> None:
    s = sub.add_parser(
        "sim", help="deterministic network simulation of many peers", epilog=EXIT_HELP
    )
    ssub = s.add_subparsers(dest="sim_command", metavar="SIM_COMMAND", required=True)
    r = ssub.add_parser(
        "run",
        help="run a scenario manifest (simulations/*.toml)",
        description="Run a scenario manifest; exit 1 on a safety, policy or liveness violation.",
        epilog=EXIT_HELP,
    )
    r.add_argument("scenario", help="path to a scenario .toml")
    r.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    r.add_argument(
        "--peers", type=int, default=None, help="override the peer count (full nodes fill up)"
    )
    add_json(r)
    r.add_argument("--plot", metavar="FILE.png", help="plot committed tx/s and latency")
    r.set_defaults(func=cmd_sim_run)

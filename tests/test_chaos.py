"""`dpkid chaos run`: the shipped manifests parse, bad ones are refused with a
clear message, and short smokes on real processes pass their checks (plain
loopback, and per-node network namespaces with a link-level partition). The
full manifests in simulations/chaos/ are long runs; their results are in
docs/RELIABILITY.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dpkid.dev.chaos import ChaosError, load_manifest, parse_manifest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "simulations" / "chaos").glob("*.toml"))
RUN_TIMEOUT_S = 400


def test_at_least_six_manifests_ship_and_parse() -> None:
    assert len(SHIPPED) >= 6
    kinds = set()
    for p in SHIPPED:
        m = load_manifest(p)
        assert m.perturbations, p
        kinds |= {x.kind for x in m.perturbations}
    assert any(load_manifest(p).netns for p in SHIPPED)
    assert {"kill", "kill_all", "pause", "partition", "wipe", "clock_skew"} <= kinds
    assert {"disk_full", "read_only"} <= kinds


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("validators = 40", "validators"),
        ("bogus = 1", "unknown keys"),
        ('[[perturbation]]\nkind = "explode"\nat_s = 1\nnodes = [0]', "kind must be one of"),
        ('[[perturbation]]\nkind = "partition"\nat_s = 1\ngroups = [[0], [1]]', "needs netns"),
        ('[[perturbation]]\nkind = "kill"\nat_s = 1', "needs nodes"),
        ('[[perturbation]]\nkind = "kill"\nat_s = 1\nnodes = [7]', "node indexes"),
        (
            'duration_s = 10\n[[perturbation]]\nkind = "kill"\nat_s = 8\nfor_s = 5\nnodes = [0]',
            "past",
        ),
        ('[[perturbation]]\nkind = "disk_full"\nat_s = 1\nnodes = [0]', "tmpfs_mib"),
        ("validators = [", "not valid TOML"),
    ],
)
def test_bad_manifests_are_refused_naming_the_problem(text: str, needle: str) -> None:
    with pytest.raises(ChaosError, match=needle):
        parse_manifest(text, "m.toml")


def _run(manifest: Path, seed: int, tmp_path: Path) -> dict[str, object]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpkid",
            "chaos",
            "run",
            str(manifest),
            "--seed",
            str(seed),
            "--json",
            "--dir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    r: dict[str, object] = json.loads(out.stdout)
    assert out.returncode == (0 if r["ok"] else 1)
    return r


@pytest.mark.slow
def test_smoke_kill_and_pause_on_loopback(tmp_path: Path) -> None:
    r = _run(ROOT / "tests" / "chaos" / "smoke.toml", 7, tmp_path)
    assert r["ok"], r["failures"]
    assert r["txs_lost"] == 0
    assert isinstance(r["txs_acked_committed"], int) and r["txs_acked_committed"] > 0
    kinds = [p["kind"] for p in r["perturbations"]]  # type: ignore[attr-defined]
    assert kinds == ["kill", "pause"]
    assert all(p["recovered_s"] is not None for p in r["perturbations"])  # type: ignore[attr-defined]


@pytest.mark.slow
def test_smoke_partition_in_network_namespaces(tmp_path: Path) -> None:
    r = _run(ROOT / "tests" / "chaos" / "smoke-netns.toml", 3, tmp_path)
    assert r["ok"], r["failures"]
    assert r["netns"] is True and r["txs_lost"] == 0
    # The namespaces are gone afterwards.
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = r["namespaces"]
    assert isinstance(names, list) and len(names) == 4
    assert not set(names) & set(left.stdout.split())

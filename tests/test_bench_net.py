"""`dpkid bench net` works and reports honestly. It asserts no speed: the
figures are for BENCHMARKS.md, measured on an idle machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FIELDS = {
    "validators",
    "duration_s",
    "offered_tps",
    "accepted",
    "refused",
    "committed_txs",
    "committed_tps",
    "lost",
    "latency_p50_s",
    "latency_p99_s",
    "blocks",
    "block_interval_p50_s",
    "cpu_percent",
    "rss_mib",
    "verify_ceiling_tps",
    "ratio_to_ceiling",
    "status_p99_ms",
}


def test_bench_net_runs_and_its_counts_add_up(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpkid",
            "bench",
            "net",
            "--validators",
            "4",
            "--duration",
            "5",
            "--rate",
            "200",
            "--accounts",
            "40",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr == ""  # --json keeps the progress quiet
    r = json.loads(out.stdout)
    assert set(r) >= FIELDS, FIELDS - set(r)
    assert r["errors"] == []
    # Counted from committed blocks: never more than was accepted, and what was
    # accepted but not committed is reported as lost, not hidden.
    assert 0 < r["committed_txs"] <= r["accepted"] <= r["submitted"]
    assert r["lost"] == r["accepted"] - r["committed_txs"]
    assert r["committed_tps"] <= r["committed_txs"] / 5 + 1
    assert 0 < r["latency_p50_s"] <= r["latency_p99_s"]
    assert len(r["cpu_percent"]) == 4 and len(r["rss_mib"]["end"]) == 4
    assert r["blocks"] >= 1 and r["verify_ceiling_tps"] > 0
    assert r["status_p99_ms"] > 0 and r["status_failures"] == 0

"""`dpkid demo --json` in a fresh process: every step must do what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXPECTED_STEPS = [
    "dv_applied",
    "dv_issued_and_verified",
    "ov_issued_and_verified",
    "ev_issued_and_verified",
    "x509_verified_by_standard_clients",
    "dv_revoked_verification_fails",
    "dv_revoked_on_signed_crl",
    "ev_degraded_to_dv",
    "ev_resigned_as_dv",
    "bogus_application_rejected",
]


def test_demo_json_every_step_ok(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dpkid", "demo", "--json", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.stdout.strip(), out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert [s["name"] for s in report["steps"]] == EXPECTED_STEPS, report
    failed = [s for s in report["steps"] if not s["ok"]]
    assert not failed, failed
    assert report["ok"] is True and report["error"] == "" and out.returncode == 0
    heights = [s["height"] for s in report["steps"]]
    assert heights == sorted(heights) and heights[0] >= 1
    degraded = next(s for s in report["steps"] if s["name"] == "ev_degraded_to_dv")
    assert "degraded" in degraded["detail"]
    assert report["summary"]["log_size"] >= 5  # 3 issued, 1 revoked, 1 degraded
    # Every process the demo started is gone: the RPC sockets were removed on shutdown.
    assert not list((tmp_path / "demo").glob("net/node*/dpkid.sock"))

"""`dpkid demo --repeat N [--cpu-burners K]`: the demo, N times in a row, each
as a fresh `dpkid demo --json` process, optionally while K bounded CPU burners
load the machine. Its summary goes in docs/RELIABILITY.md (issue 10's bar)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any, Final

MAX_REPEAT: Final = 1_000
DEMO_TIMEOUT_S: Final = 900
BURNER_SECONDS_PER_RUN: Final = DEMO_TIMEOUT_S

# A busy loop that ends by itself, so a crashed parent cannot leave it behind.
_BURNER = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_repeat(repeat: int, cpu_burners: int, as_json: bool) -> int:
    if not 1 <= repeat <= MAX_REPEAT:
        print(f"dpkid demo: --repeat must be between 1 and {MAX_REPEAT}", file=sys.stderr)
        return 2
    if not 0 <= cpu_burners <= 64:
        print("dpkid demo: --cpu-burners must be between 0 and 64", file=sys.stderr)
        return 2
    burners = [
        subprocess.Popen(
            [sys.executable, "-c", _BURNER.format(s=BURNER_SECONDS_PER_RUN * repeat)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(cpu_burners)
    ]
    runs: list[dict[str, Any]] = []
    try:
        for i in range(repeat):
            t0 = time.monotonic()
            try:
                p = subprocess.run(
                    [sys.executable, "-m", "dpkid", "demo", "--json"],
                    capture_output=True,
                    text=True,
                    timeout=DEMO_TIMEOUT_S,
                )
                lines = [x for x in p.stdout.splitlines() if x.strip()]
                try:
                    doc = json.loads(lines[-1]) if lines else {}
                except ValueError:
                    doc = {}
                ok = p.returncode == 0 and doc.get("ok") is True
                err = "" if ok else (doc.get("error") or p.stderr.strip()[-300:])
            except subprocess.TimeoutExpired:
                ok, err = False, f"no result within {DEMO_TIMEOUT_S} s"
            took_s = round(time.monotonic() - t0, 1)
            run: dict[str, Any] = {"run": i + 1, "ok": ok, "seconds": took_s}
            if err:
                run["error"] = str(err)
            runs.append(run)
            verdict = "ok" if ok else "FAILED"
            _progress(f"demo run {i + 1}/{repeat}: {verdict} in {run['seconds']} s")
    finally:
        for b in burners:
            b.kill()
            b.wait(timeout=10)
    secs = sorted(r["seconds"] for r in runs)
    summary = {
        "ok": all(r["ok"] for r in runs),
        "runs": len(runs),
        "passed": sum(1 for r in runs if r["ok"]),
        "cpu_burners": cpu_burners,
        "median_seconds": secs[len(secs) // 2],
        "max_seconds": secs[-1],
        "failures": [r for r in runs if not r["ok"]],
    }
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(
            f"{summary['passed']} of {summary['runs']} demo runs ok with {cpu_burners} CPU"
            f" burners; median {summary['median_seconds']} s, max {summary['max_seconds']} s"
        )
    return 0 if summary["ok"] else 1

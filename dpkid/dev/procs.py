"""Node processes for the dev tools (demo, bench net): lay out a testnet with
`dpkid testnet`, start `dpkid start` per home with its log in a file, and stop
them, politely first."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

STOP_TIMEOUT_S: Final = 20.0  # after SIGTERM, before SIGKILL
KILL_TIMEOUT_S: Final = 10.0
TESTNET_TIMEOUT_S: Final = 300.0  # key generation and genesis for a large account set


def make_testnet(out: Path, validators: int, *options: str) -> dict[str, Any]:
    """Run `dpkid testnet --json` into ``out`` and return what it printed
    (the homes, the chain id, the key files)."""
    argv = [sys.executable, "-m", "dpkid", "testnet", "--validators", str(validators)]
    argv += ["--out", str(out), "--json", *options]
    done = subprocess.run(
        argv, check=True, capture_output=True, text=True, timeout=TESTNET_TIMEOUT_S
    )
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def start_node(home: Path, log_path: Path, json_logs: bool = True) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "dpkid", "start", "--home", str(home)]
    if json_logs:
        argv += ["--log-format", "json"]
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def stop_nodes(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every one still running, then wait; SIGKILL what does not stop."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=KILL_TIMEOUT_S)

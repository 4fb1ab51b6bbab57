"""Node processes for the dev tools (demo, bench net): start `dpkid start` per
home with its log in a file, and stop them, politely first."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

STOP_TIMEOUT_S: Final = 20.0  # after SIGTERM, before SIGKILL
KILL_TIMEOUT_S: Final = 10.0


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

"""The README's walk-through, run as written: every ```sh block of its section, in order.

The blocks are joined into one bash script under ``set -euo pipefail``, with
the section's ``export DNS_PORT=... HTTP_PORT=...`` line given free ports, and
run in a fresh directory with this venv's ``bin`` first on PATH. The script
starts a 4-validator network, the development DNS and challenge servers and a
monitor in the background; it records their PIDs in ``net/pids`` and stops
them itself (at the end, and in an EXIT trap). Whatever happens, this test
then stops whatever is still running from that file, and the rest of the
script's process group.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpkid.cli.node import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Walk-through: every role, copy and paste"
PORTS_LINE = re.compile(r"^export DNS_PORT=\d+ HTTP_PORT=\d+$", re.MULTILINE)
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SCRIPT_TIMEOUT_S = 750.0
STOP_GRACE_S = 30.0


def section_text(readme: str) -> str:
    """The walk-through section: from its heading to the next level-2 heading."""
    start = readme.index(SECTION + "\n")
    end = readme.find("\n## ", start + len(SECTION))
    return readme[start : end if end != -1 else len(readme)]


def walkthrough_script(dns_port: int, http_port: int) -> str:
    blocks = SH_BLOCK.findall(section_text(README.read_text()))
    assert len(blocks) >= 10, "the walk-through lost its ```sh blocks"
    body = "\n".join(blocks)
    assert len(PORTS_LINE.findall(body)) == 1, "one `export DNS_PORT=N HTTP_PORT=N` line"
    body = PORTS_LINE.sub(f"export DNS_PORT={dns_port} HTTP_PORT={http_port}", body)
    return "set -euo pipefail\n" + body


def _alive(pid: int) -> bool:
    """Running (not a zombie) and still one of the walk-through's processes."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and b"dpkid" in cmdline


def _running(pids_file: Path) -> dict[int, str]:
    """The recorded processes still running, with their command lines."""
    if not pids_file.exists():
        return {}
    pids = [int(x) for x in pids_file.read_text().split() if x.isdigit()]
    out = {}
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(OSError):
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return out


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def stop_recorded(pids_file: Path) -> list[int]:
    """SIGTERM every recorded process still running, then SIGKILL what is left
    after STOP_GRACE_S; return the PIDs that needed SIGKILL."""
    if not pids_file.exists():
        return []
    pids = [int(x) for x in pids_file.read_text().split() if x.isdigit()]
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    stubborn = [p for p in pids if _alive(p)]
    _signal_all(stubborn, signal.SIGKILL)
    return stubborn


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of the script's process group (the script's own id)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def test_readme_walkthrough(tmp_path: Path) -> None:
    dns_port, http_port = free_ports(2)
    script = tmp_path / "walkthrough.sh"
    script.write_text(walkthrough_script(dns_port, http_port))
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DPKID_HOME", None)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(script)],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so nothing can escape the cleanup
    )
    try:
        try:
            out, _ = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # The background processes first (gently), then the script and whatever
            # it runs in the foreground, which holds the output pipe open.
            stop_recorded(work / "net" / "pids")
            _kill_group(proc.pid)
            out, _ = proc.communicate(timeout=30)
            (tmp_path / "walkthrough.out").write_text(out)
            pytest.fail(f"the walk-through took over {SCRIPT_TIMEOUT_S:g} s:\n{out[-6000:]}")
    finally:
        left = _running(work / "net" / "pids")
        stubborn = stop_recorded(work / "net" / "pids")
        _kill_group(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    elapsed = time.monotonic() - started
    (tmp_path / "walkthrough.out").write_text(out)
    logs = "".join(
        f"\n--- {p.name} (tail)\n{p.read_text(errors='replace')[-1500:]}"
        for p in sorted((work / "net").glob("*.log"))
    )
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}:\n{out[-8000:]}{logs}\n--- still running: {left}"
    )
    assert not stubborn, f"processes ignored SIGTERM after the script: {stubborn}"
    assert not (work / "net" / "pids").exists(), "the clean-up step did not run"

    # The outcomes the section promises, in this order.
    pos = 0
    for pattern in (
        r"wrote a 4-validator testnet to net",
        r"4 validators, total power 40",
        r"signed, NOT submitted: saved to shop-app\.json",
        r"issued: certificate [0-9a-f]{64}",
        r"subject=CN = shop\.example",
        r"DNS:shop\.example",
        r"VALID: valid DV certificate",
        r"issued; .*endorsements 2 approve of 2 needed",
        r"subject=C = US, O = Example Corp, CN = corp\.example",
        r"VALID: valid OV certificate",
        r"NOT VALID: revoked",
        r"exit status 1",
        r"audited up to height \d+: OK",
        r'"cert_type": "DV", "domains": \["shop\.example"\], "event": "issued"',
        r'"cert_type": "OV", "domains": \["corp\.example"\], "event": "issued"',
        r'"cert_type": "DV", "domains": \["shop\.example"\], "event": "revoked"',
    ):
        m = re.compile(pattern).search(out, pos)
        assert m, f"{pattern!r} not in the output after offset {pos}:\n{out}"
        pos = m.end()
    print(f"walk-through ran in {elapsed:.0f} s")

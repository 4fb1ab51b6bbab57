"""kill -9 and restart under signed load, 10 times, on real processes (issue 10 §3).

Before the fix a restarted node died 1-3 s after start in 3 of 6 such runs:
corrupted pubsub framing raised a protobuf DecodeError out of libp2p's stream
reader into the daemon. Each cycle here kills one validator with SIGKILL,
restarts it, and requires that it catches up and is still running after the
chain has moved on; at the end every node holds the same chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netutil import LocalNet, SignedLoad, wait_for

pytestmark = pytest.mark.slow
CYCLES = 10


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNet]:
    t = LocalNet(tmp_path / "tn", validators=4)
    try:
        yield t
    finally:
        t.close()


def test_kill_and_restart_under_load_never_crashes_the_restarted_node(net: LocalNet) -> None:
    net.start_all()
    net.wait_height([0, 1, 2, 3], 2, timeout_s=90)
    load = SignedLoad(net, rate_per_s=50, max_s=900)
    try:
        for cycle in range(CYCLES):
            victim = 1 + cycle % 3  # node0 stays up as the reference
            net.kill(victim)
            net.start(victim)
            tip = net.height(0)
            net.wait_height([victim], tip + 2, timeout_s=90)
            # Still alive after the chain moved on by three more heights.
            net.wait_height([0], net.height(0) + 3, timeout_s=60)
            assert net.procs[victim].poll() is None, (
                f"cycle {cycle}: node{victim} died after restart:\n" + net.log_text(victim)[-3000:]
            )
            assert "Traceback" not in net.log_text(victim), f"cycle {cycle}: node{victim}"
    finally:
        load.close()
    assert load.accepted > 0
    top = min(net.height(i) for i in range(4))

    def same_chain() -> bool:
        ref = net.block_hashes(0, top)
        return all(net.block_hashes(i, top) == ref for i in (1, 2, 3))

    wait_for(same_chain, 30, "every node to hold the same chain")

"""The agent's secrets are durable before anything made with them leaves
(SPEC §16.9): checked at every send of every node in simulated runs, through
the same carry_out the daemon uses. So a crash can never leave a nonce that
was used for a share on disk (it would be reused after restart), nor a posted
nonce commitment whose secret was never stored."""

from __future__ import annotations

from typing import Any

import pytest

from dpkid.core import codec
from dpkid.core.node import effects as fx
from dpkid.core.node.tss_agent import _Secrets
from dpkid.sim import runner
from dpkid.sim.settings import Scenario


@pytest.mark.parametrize("seed", [1, 2])
def test_disk_holds_exactly_the_live_nonces_at_every_send(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = {"sends": 0, "with_nonces": 0}
    orig = runner._NodeShell.send

    def send(self: Any, s: fx.Send) -> None:
        n = self.n
        agent = n.core.tss if n.core is not None else None
        if agent is not None:
            disk = codec.decode(n.disk_tss, _Secrets) if n.disk_tss else _Secrets()
            assert {seq for seq, _ in disk.nonces} == set(agent._nonces), n.name
            assert disk.shares == agent.s.shares and disk.epoch == agent.s.epoch
            assert disk.coeffs == agent.s.coeffs  # a dealt polynomial is never redrawn
            checked["sends"] += 1
            checked["with_nonces"] += bool(agent._nonces)
        orig(self, s)

    monkeypatch.setattr(runner._NodeShell, "send", send)
    sc = Scenario(name="tss-persist", seed=seed, validators=4, heights=30)
    sc.chaos.restart_count = 2
    sc.chaos.down_max_ms = 2_000
    rep = runner.Simulation(sc).run()
    assert rep["safety_violations"] == 0 and rep["tss_violations"] == 0, rep["violations"]
    assert rep["tss"]["signed"] > 5
    assert checked["sends"] > 300 and checked["with_nonces"] > 150  # not vacuous

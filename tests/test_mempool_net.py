"""The mempool-wedge pattern against a real node process (issue 10 §4).

60 funded accounts hold back nonce 0 and send nonces 1-100 through the RPC
socket. The node refuses what it cannot hold with the retryable -32006, and
new valid transactions from other accounts are still accepted and committed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from dpkid.client.rpc import RpcClientError
from dpkid.core import codec
from dpkid.core.types import Transfer, sign_tx
from dpkid.daemon.config import read_key
from dpkid.daemon.rpc import RETRY_LATER
from tests.netutil import LocalNet, wait_for

pytestmark = pytest.mark.slow
ATTACKERS = 60
HONEST = 4
POOL = 2_000


def test_held_back_nonces_do_not_lock_out_new_transactions(tmp_path: Path) -> None:
    accounts = ["--accounts", str(ATTACKERS + HONEST)]
    net = LocalNet(tmp_path / "tn", validators=1, extra_args=accounts)
    try:
        cfg = net.home(0) / "config.toml"
        doc = tomllib.loads(cfg.read_text())
        doc["node"]["mempool_max_txs"] = POOL
        cfg.write_text(tomli_w.dumps(doc))
        net.start(0)
        net.wait_height([0], 2, timeout_s=60)
        keys = [read_key(Path(p)) for p in net.info["account_keys"]]
        assert len(keys) == ATTACKERS + HONEST
        chain = net.info["chain_id"]

        def tx(i: int, nonce: int) -> str:
            to = keys[(i + 1) % len(keys)].address
            return codec.encode(sign_tx(keys[i], chain, nonce, 10, Transfer(to, 1))).hex()

        accepted = retry_later = 0
        for i in range(ATTACKERS):
            for n in range(1, 101):
                try:
                    net.rpc(0, "tx_submit", {"tx": tx(i, n)})
                    accepted += 1
                except RpcClientError as exc:
                    assert exc.code == RETRY_LATER, exc
                    assert exc.data["retryable"] is True and exc.data["retry_after_ms"] > 0
                    retry_later += 1
        assert retry_later > 0 and accepted <= POOL
        hashes = [
            net.rpc(0, "tx_submit", {"tx": tx(i, n)})["hash"]
            for i in range(ATTACKERS, ATTACKERS + HONEST)
            for n in range(5)
        ]

        def committed() -> bool:
            return all(net.rpc(0, "tx_get", {"hash": h})["committed"] for h in hashes)

        wait_for(committed, 60, "the honest transactions to commit")
        assert net.procs[0].poll() is None
    finally:
        net.close()

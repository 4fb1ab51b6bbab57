"""A hostile gossip peer for tests/test_flood.py: a real libp2p peer (a P2PNode
whose validator accepts anything) that floods a dpkid node's topics.

Run as ``python tests/flood_peer.py --chain-id ID --peer MADDR --junk N
--garbage N --max-s S``. It prints ``{"event": "ready", "peer_id": ...}`` once
the node is its topic peer, then publishes, bounded in count and in time:

* ``--junk`` valid-looking junk: well-formed ``TxBatch`` wire messages of 64
  random "transactions" each on the txs topic (they pass the topic validator
  and cost the node a decode and a mempool check each);
* ``--garbage`` bytes that are no wire message, on the txs and consensus topics.

Then it watches its connection to the node for ``--watch-s`` and prints one
JSON line of figures: what it published, and whether the node cut it off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import trio

from dpkid.core.node import wire
from dpkid.daemon.daemon import topics
from dpkid.daemon.p2p import P2PConfig, P2PError, P2PNode

JUNK_TXS_PER_BATCH = 64


def accept(topic: str, data: bytes) -> bool:
    return True


async def main(args: argparse.Namespace) -> None:
    t = topics(args.chain_id)
    node = P2PNode(os.urandom(32), P2PConfig(listen_port=0, persistent_peers=list(args.peer)))
    for name in ("txs", "consensus"):
        node.subscribe(t[name], accept)
    out: dict[str, object] = {"event": "done", "junk_sent": 0, "garbage_sent": 0}
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.wait_topic_peers(t["txs"], 1, 60)
        print(json.dumps({"event": "ready", "peer_id": node.peer_id}), flush=True)
        deadline = time.monotonic() + args.max_s
        t0 = time.monotonic()
        # Junk gets at most a third of the window, so that on a loaded machine
        # (the publisher's own queue drops what it cannot write) the garbage that
        # should get this peer banned still goes out.
        junk_deadline = t0 + args.max_s / 3
        for i in range(args.junk):
            if time.monotonic() > junk_deadline or not node.peers():
                break
            batch = wire.TxBatch([os.urandom(180) for _ in range(JUNK_TXS_PER_BATCH)])
            try:
                await node.publish(t["txs"], wire.encode_msg(batch))
            except P2PError:
                break
            out["junk_sent"] = i + 1
            if i % 16 == 0:
                await trio.sleep(0.001)  # let the node's reads and our writes run
        for i in range(args.garbage):
            if time.monotonic() > deadline or not node.peers():
                break
            topic = t["txs"] if i % 2 else t["consensus"]
            try:
                await node.publish(topic, b"\x00garbage" + os.urandom(64))
            except P2PError:
                break
            out["garbage_sent"] = i + 1
            await trio.sleep(0.001)  # paced: sent, not dropped in our own queue
        out["flood_s"] = round(time.monotonic() - t0, 2)
        # Was it cut off, and does it stay cut off while its supervisor redials?
        connected_samples = samples = 0
        watch_end = time.monotonic() + args.watch_s
        while time.monotonic() < watch_end:
            samples += 1
            connected_samples += bool(node.topic_peers(t["txs"]))
            await trio.sleep(0.1)
        out["topic_peer_samples"] = [connected_samples, samples]
        out["stats"] = node.stats.as_dict()
        await node.aclose()
        nursery.cancel_scope.cancel()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--chain-id", required=True)
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--junk", type=int, default=0)
    ap.add_argument("--garbage", type=int, default=0)
    ap.add_argument("--max-s", type=float, default=20.0)
    ap.add_argument("--watch-s", type=float, default=5.0)
    a = ap.parse_args()
    try:
        trio.run(main, a)
    except KeyboardInterrupt:
        sys.exit(1)

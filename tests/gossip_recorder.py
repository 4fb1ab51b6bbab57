"""A passive gossip peer for tests: records every vote and proposal it sees on
a chain's consensus topic, and can publish raw messages there.

Run as ``python tests/gossip_recorder.py --chain-id ID --out FILE --peer MADDR ...``.
It prints ``{"event": "ready"}`` once it has a peer, appends one JSON line per
signed consensus message to FILE, and reads commands on stdin: ``publish HEX``
(a wire message to gossip) and ``quit``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import trio

from dpkid.core import codec
from dpkid.core.node.wire import ProposalMsg, VoteMsg, decode_msg
from dpkid.daemon.daemon import topics
from dpkid.daemon.p2p import P2PConfig, P2PNode

MAX_RECORDS = 1_000_000


def record(msg: Any) -> list[dict[str, Any]]:
    if isinstance(msg, VoteMsg):
        return [
            {
                "kind": "vote",
                "validator": v.validator.hex(),
                "height": v.height,
                "round": v.round,
                "type": v.type,
                "block_hash": v.block_hash.hex(),
                "timestamp_ms": v.timestamp_ms,
                "sig": v.sig.hex(),
            }
            for v in msg.votes
        ]
    if isinstance(msg, ProposalMsg):
        p = msg.proposal
        return [
            {
                "kind": "proposal",
                "validator": p.proposer.hex(),
                "height": p.height,
                "round": p.round,
                "block_hash": p.block.hash.hex(),
                "sig": p.sig.hex(),
            }
        ]
    return []


async def main(args: argparse.Namespace) -> None:
    topic = topics(args.chain_id)["consensus"]
    node = P2PNode(
        os.urandom(32),
        P2PConfig(
            listen_port=0, persistent_peers=list(args.peer), max_message_bytes=16 * 1024 * 1024
        ),
    )
    node.subscribe(topic, lambda _peer, _data: True)
    out = open(args.out, "a")  # noqa: SIM115 -- closed below
    written = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.wait_peers(1, 60)
        print(json.dumps({"event": "ready"}), flush=True)

        async def receive() -> None:
            nonlocal written
            async for m in node:
                try:
                    msg = decode_msg(m.data)
                except codec.DecodeError:
                    continue
                for rec in record(msg):
                    if written < MAX_RECORDS:
                        out.write(json.dumps(rec) + "\n")
                        written += 1
                out.flush()

        nursery.start_soon(receive)
        stdin = trio.wrap_file(sys.stdin)
        async for line in stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "publish":
                await node.publish(topic, bytes.fromhex(arg))
                print(json.dumps({"event": "published"}), flush=True)
            elif cmd == "quit":
                break
        out.close()
        await node.aclose()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--chain-id", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--peer", action="append", default=[])
    trio.run(main, ap.parse_args())

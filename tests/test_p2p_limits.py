"""Per-peer limits and peer scoring (issue 13; protocol/WIRE.md §6.1).

Real P2PNodes on 127.0.0.1, in this process, under trio: a peer that floods
invalid gossip is banned (disconnected and refused), a peer over its message
or request rate is cut down to the rate, a handler's BadRequest counts against
the peer, and an honest peer is never touched. Every wait is on a condition
with a deadline; every loop is bounded in count, and each test in time.
"""

from __future__ import annotations

import os

import pytest
import trio

from dpkid.daemon.p2p import BadRequest, P2PConfig, P2PNode, RequestError
from tests.test_p2p_garbage import accept, recv_until, started, wait_for

TOPIC = "dpkid/test/limits/1"
PROTO = "/dpkid/test/limits/req/1"
TEST_TIMEOUT_S = 60.0


def only_good(topic: str, data: bytes) -> bool:
    return data.startswith(b"good")


async def serve(req: bytes, peer: str) -> bytes:
    if req == b"junk":
        raise BadRequest("not a request")
    return b"ok:" + req


def test_an_invalid_gossip_flood_gets_the_peer_banned_and_the_honest_peer_is_kept() -> None:
    async def main() -> None:
        with trio.fail_after(TEST_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                node = P2PNode(os.urandom(32), P2PConfig(listen_port=0, ban_ms=30_000))
                node.subscribe(TOPIC, only_good)
                async with started(nursery, node):
                    addr = [node.listen_multiaddr]
                    good = P2PNode(os.urandom(32), P2PConfig(listen_port=0, persistent_peers=addr))
                    good.subscribe(TOPIC, only_good)
                    # The flooder's own validator accepts anything, as a hostile node's would.
                    bad = P2PNode(os.urandom(32), P2PConfig(listen_port=0, persistent_peers=addr))
                    bad.subscribe(TOPIC, accept)
                    async with started(nursery, good), started(nursery, bad):
                        await bad.wait_topic_peers(TOPIC, 1, 10)
                        await good.wait_topic_peers(TOPIC, 1, 10)
                        sent = 0
                        for i in range(1_000):  # bounded; the ban ends it much sooner
                            if bad.peer_id in node.banned_peers():
                                break
                            with trio.move_on_after(1):
                                await bad.publish(TOPIC, b"junk %d" % i)
                                sent += 1
                            await trio.sleep(0)
                        await wait_for(lambda: bad.peer_id in node.banned_peers(), "bad banned")
                        assert node.stats.peers_banned == 1
                        # From the ban on, its messages are not even validated.
                        await wait_for(lambda: not bad.peers(), "bad sees the connection end")
                        assert node.stats.validator_rejects < sent
                        await wait_for(lambda: bad.peer_id not in node.peers(), "bad cut off")
                        # Its supervisor redials; the node refuses every new connection.
                        await wait_for(lambda: node.stats.banned_refused > 0, "redial refused")
                        assert bad.peer_id not in node.topic_peers(TOPIC)
                        # The honest peer was never penalised and still delivers.
                        assert good.peer_id not in node.peer_scores()
                        assert good.peer_id in node.peers()
                        await good.publish(TOPIC, b"good after the flood")
                        msg = await recv_until(
                            node, lambda m: m.data == b"good after the flood", "good gossip"
                        )
                        assert msg.from_peer == good.peer_id
                        assert node.running

    trio.run(main)


def test_messages_over_a_peers_rate_are_dropped_before_validation() -> None:
    async def main() -> None:
        with trio.fail_after(TEST_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                cfg = P2PConfig(listen_port=0, gossip_msgs_per_s=5, gossip_msgs_burst=20)
                node = P2PNode(os.urandom(32), cfg)
                node.subscribe(TOPIC, only_good)
                async with started(nursery, node):
                    addr = [node.listen_multiaddr]
                    fast = P2PNode(os.urandom(32), P2PConfig(listen_port=0, persistent_peers=addr))
                    fast.subscribe(TOPIC, accept)
                    async with started(nursery, fast):
                        await fast.wait_topic_peers(TOPIC, 1, 10)
                        t0 = trio.current_time()
                        for i in range(60):
                            await fast.publish(TOPIC, b"good %d" % i)
                        await wait_for(
                            lambda: node.stats.delivered + node.stats.gossip_rate_dropped >= 60,
                            "every message delivered or dropped",
                        )
                        took_s = trio.current_time() - t0
                        # burst + rate x time, and no more
                        assert node.stats.delivered <= 20 + 5 * took_s + 1
                        assert node.stats.gossip_rate_dropped >= 60 - 20 - 5 * took_s - 1
                        assert node.stats.validator_rejects == 0
                        # One offence per trimmed RPC: not yet a ban ...
                        assert fast.peer_id not in node.banned_peers()
                        # ... but a sustained flood over the rate is one.
                        for i in range(300):
                            if fast.peer_id in node.banned_peers():
                                break
                            await fast.publish(TOPIC, b"good more %d" % i)
                            await trio.sleep(0.001)
                        await wait_for(lambda: fast.peer_id in node.banned_peers(), "banned")
                        assert node.running

    trio.run(main)


def test_requests_over_the_rate_and_bad_requests_count_against_the_peer() -> None:
    async def main() -> None:
        with trio.fail_after(TEST_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                cfg = P2PConfig(listen_port=0, requests_per_s=1, requests_burst=5)
                node = P2PNode(os.urandom(32), cfg)
                node.set_stream_handler(PROTO, serve)
                async with started(nursery, node):
                    addr = [node.listen_multiaddr]
                    client = P2PNode(
                        os.urandom(32), P2PConfig(listen_port=0, persistent_peers=addr)
                    )
                    async with started(nursery, client):
                        await client.wait_peers(1, 10)
                        assert await client.request(node.peer_id, PROTO, b"a", 5) == b"ok:a"
                        with pytest.raises(RequestError):
                            await client.request(node.peer_id, PROTO, b"junk", 5)
                        assert node.stats.bad_requests == 1
                        assert node.peer_scores()[client.peer_id] < 0
                        answered = 2
                        refused = 0
                        for i in range(10):  # burst 5: about 3 more get through
                            try:
                                await client.request(node.peer_id, PROTO, b"%d" % i, 5)
                                answered += 1
                            except RequestError:
                                refused += 1
                        assert answered <= 5 + 2  # the burst, and a token or two of refill
                        assert refused >= 3
                        assert node.stats.requests_rate_refused == refused
                        assert client.peer_id not in node.banned_peers()  # not yet -100
                        assert node.running

    trio.run(main)

"""Prometheus text metrics, served on 127.0.0.1 only when configured."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("dpkid_height", "Latest committed height", registry=r)
        self.round = Gauge("dpkid_round", "Consensus round at the current height", registry=r)
        self.peers = Gauge("dpkid_peers", "Connected libp2p peers", registry=r)
        self.mempool = Gauge("dpkid_mempool_txs", "Transactions waiting in the mempool", registry=r)
        self.committed_txs = Counter(
            "dpkid_committed_txs_total", "Transactions committed", registry=r
        )
        self.blocks = Counter("dpkid_blocks_total", "Blocks committed by this node", registry=r)
        self.bad_messages = Counter(
            "dpkid_bad_messages_total", "Undecodable or invalid peer messages", registry=r
        )
        self.dropped_sends = Counter(
            "dpkid_dropped_gossip_total",
            "Gossip messages dropped because the publisher queue was full",
            registry=r,
        )
        self.liveness_violations = Counter(
            "dpkid_liveness_violations_total",
            "Steps after which no consensus timer was armed (CONSENSUS.md §10.1)",
            registry=r,
        )
        self.since_progress = Gauge(
            "dpkid_seconds_since_progress",
            "Seconds since the consensus height, round or step last changed",
            registry=r,
        )
        self.step_seconds = Histogram(
            "dpkid_step_seconds",
            "Time the node core spends per input, by kind",
            ["kind"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=r,
        )

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("metrics listen on loopback only; put a proxy in front for more")
        start_http_server(int(port), addr=host, registry=self.registry)

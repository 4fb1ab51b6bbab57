"""Bad input at every interface of a node, fuzzed with hypothesis (issue 13).

The gossip topic validators, the sync stream handler, and the JSON-RPC method
table over the real Unix and TCP servers (with the token line) of a real
NodeDaemon: a one-validator chain in this process, with libp2p, its store and
both RPC listeners. Hypothesis runs in a worker thread and reaches the node
through its sockets, or through trio.from_thread for the libp2p handlers.

Every input gets a clear answer (a JSON-RPC error with a code and a message, the
empty sync answer, a validator rejection counted against the peer), committed
state and the mempool stay as they were, and the node answers a valid request
afterwards. The oracles are dpkid.dev.fuzz's, which the long run uses too.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpkid.core import codec
from dpkid.core.node import wire
from dpkid.core.state.codes import Code
from dpkid.core.types import MAX_TX_BYTES, Transfer, encode_tx, sign_tx
from dpkid.daemon.config import Home, read_key
from dpkid.daemon.daemon import TOPIC_TYPES, NodeDaemon
from dpkid.daemon.rpc import APP_ERROR_BASE, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR
from dpkid.daemon.rpc_methods import METHODS, NOT_FOUND
from dpkid.dev import fuzz

_HEALTH: Final = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
PURE: Final = settings(max_examples=150, deadline=None, suppress_health_check=_HEALTH)
LIVE: Final = settings(max_examples=60, deadline=None, suppress_health_check=_HEALTH)


@functools.cache
def wire_corpus() -> tuple[bytes, ...]:
    return tuple(fuzz.pure_corpus().wire_msgs)


# Inputs for the bytes interfaces: random bytes, the mutator's classes (structural
# edits, invalid UTF-8, huge integers, deep nesting, lying length headers)
# driven by hypothesis's random, each valid message, and well-formed requests
# with any field values.
BYTES_INPUTS: Final = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda r: fuzz.gen_bytes(r, list(wire_corpus())), st.randoms(use_true_random=False)),
    st.deferred(lambda: st.sampled_from(wire_corpus())),
    st.builds(
        lambda h, n: wire.encode_msg(wire.BlockRequest(h, n)),
        st.integers(0, 2**64 - 1),
        st.integers(1, wire.MAX_SYNC_BLOCKS),
    ),
    st.builds(
        lambda h, r: wire.encode_msg(wire.ProposalRequest(h, r)),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**31 - 1),
    ),
)
EDGE_BYTES: Final = [
    b"",
    b"\x91" * 100_000,  # deep nesting
    b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
    b"\xdb\xff\xff\xff\xff",  # a string claiming 4 GiB
    fuzz.pack(["status", 2**64, 0]),  # huge integer
    fuzz.pack(["get_blocks", 1, 2**64 - 1]),  # count far past the limit
    fuzz.pack([fuzz.RawStr(b"st\xffatus"), 1, 0]),  # invalid UTF-8 tag
    fuzz.pack(["txs", [b"\x00" * (MAX_TX_BYTES + 1)]]),  # oversized transaction
    b"\x92\xa6status" + bytes(2 * 1024 * 1024),  # past decode_msg's size limit
]


# ----------------------------------------------------------------------------- gossip


@pytest.fixture(scope="module")
def idle_daemon(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A node built from a real home but not started: the validators need no network."""
    home, _ = fuzz.make_home(tmp_path_factory.mktemp("gossip"))
    d = NodeDaemon(home)
    yield d
    d.store.close()


def _records(d: NodeDaemon) -> dict[bytes, bytes]:
    return {k: codec.encode(v) for k, v in d.core.state.items()}


@pytest.mark.parametrize("topic", sorted(TOPIC_TYPES))
def test_topic_validators_admit_exactly_their_messages(topic: str, idle_daemon: Any) -> None:
    d = idle_daemon
    validate = d._validator_for(topic)
    before = _records(d)

    @PURE
    @given(data=BYTES_INPUTS)
    def fuzzed(data: bytes) -> None:
        fuzz.gossip_verdict(d, topic, validate, data)  # raises Broken on a broken contract

    fuzzed()
    for data in EDGE_BYTES:
        assert fuzz.gossip_verdict(d, topic, validate, data) is False
    # Each message type is admitted on its own topics only, and rejected (and
    # counted against the sender) everywhere else.
    for data in wire_corpus():
        ok = fuzz.gossip_verdict(d, topic, validate, data)
        assert ok is isinstance(wire.decode_msg(data), TOPIC_TYPES[topic])
    assert _records(d) == before
    assert d.core.status().mempool_txs == 0


# ----------------------------------------------------------------------------- live node


def with_node(tmp_path: Path, body: Callable[[fuzz.FuzzNode], None]) -> None:
    """Run ``body(node)`` in a worker thread while the node runs in this one."""

    async def main() -> None:
        async with fuzz.fuzz_node(tmp_path, quiet=False) as node:
            with trio.fail_after(240):
                await trio.to_thread.run_sync(body, node)

    trio.run(main)


def assert_unchanged(node: fuzz.FuzzNode, before: dict[bytes, bytes]) -> None:
    assert trio.from_thread.run_sync(node.records) == before
    assert trio.from_thread.run_sync(lambda: node.daemon.core.status().mempool_txs) == 0


@pytest.mark.slow
def test_sync_stream_answers_every_request_clearly(tmp_path: Path) -> None:
    def body(node: fuzz.FuzzNode) -> None:
        d = node.daemon
        before = trio.from_thread.run_sync(node.records)

        @LIVE
        @given(data=BYTES_INPUTS)
        def fuzzed(data: bytes) -> None:
            trio.from_thread.run(fuzz.sync_verdict, d, data)
            assert_unchanged(node, before)

        fuzzed()
        for data in EDGE_BYTES:
            assert trio.from_thread.run(fuzz.sync_verdict, d, data) is False
        # Still serving: the first block, to a well-formed request.
        req = wire.encode_msg(wire.BlockRequest(1, 1))
        resp = wire.decode_msg(trio.from_thread.run(d._serve_sync, req, "peer"))
        assert isinstance(resp, wire.BlockResponse)
        assert [sb.block.header.height for sb in resp.blocks] == [1]

    with_node(tmp_path, body)


PARAM_NAMES: Final = st.sampled_from(
    [
        *("height", "from", "count", "tx", "hash", "address", "cert_id", "domain", "app_id"),
        *("index", "size", "old_size", "new_size", "topic", "subscription"),
    ]
)
JSON_LEAVES: Final = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([v for v in fuzz.JSON_NASTY if not isinstance(v, list | dict)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.binary(min_size=19, max_size=33).map(bytes.hex),
    st.lists(st.sampled_from(fuzz.NAME_PIECES), min_size=1, max_size=4).map(".".join),
)
JSON_VALUES: Final = st.recursive(
    JSON_LEAVES,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
REQUESTS: Final = st.fixed_dictionaries(
    {
        "jsonrpc": st.just("2.0"),
        "id": st.integers(0, 10**6),
        "method": st.sampled_from(sorted(METHODS)) | st.text(max_size=12),
        "params": st.one_of(
            st.dictionaries(PARAM_NAMES, JSON_VALUES, max_size=4),
            st.lists(JSON_VALUES, max_size=3),
            JSON_VALUES,
        ),
    }
)


def _lines(requests: list[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Request lines: generated requests (alone or batched, maybe byte-corrupted),
    and the mutator's edits of a valid request for each method."""
    one = REQUESTS.map(lambda r: json.dumps(r).encode())
    batch = st.lists(REQUESTS, min_size=1, max_size=5).map(lambda r: json.dumps(r).encode())
    corrupted = st.tuples(one, st.integers(0, 10_000), st.sampled_from(fuzz.INVALID_UTF8)).map(
        lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1) :]
    )
    mutated = st.builds(lambda r: fuzz.gen_line(r, requests), st.randoms(use_true_random=False))
    return st.one_of(one, batch, corrupted, mutated).map(lambda b: b.replace(b"\n", b" "))


def _fuzz_rpc(node: fuzz.FuzzNode, tcp: bool) -> None:
    client = fuzz.RpcClient(node, tcp)
    before = trio.from_thread.run_sync(node.records)
    requests = trio.from_thread.run_sync(fuzz.valid_requests, node)

    @LIVE
    @given(line=_lines(requests))
    def fuzzed(line: bytes) -> None:
        for answer in trio.from_thread.run(client.exchange, line):  # ends with a status call
            fuzz.check_rpc_answer(answer)  # raises Broken: not JSON-RPC, or a handler raised
        assert_unchanged(node, before)

    fuzzed()
    trio.from_thread.run(client.close)


def _call(client: fuzz.RpcClient, line: bytes) -> dict[str, Any]:
    (answer,) = trio.from_thread.run(client.exchange, line)
    assert isinstance(answer, dict)
    return answer


def _req(method: str, params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


def _error_cases(node: fuzz.FuzzNode) -> list[tuple[bytes, int, str]]:
    """(line, expected error code, a word the message must contain)."""
    key = read_key(Home(node.home).key_file)
    chain = node.daemon.genesis.chain_id
    good = sign_tx(key, chain, 0, 10, Transfer(bytes(20), 1))
    forged = encode_tx(sign_tx(key, chain, 0, 10, Transfer(bytes(20), 2)))[:-64] + good.sig
    other = encode_tx(sign_tx(key, chain + "x", 0, 10, Transfer(bytes(20), 1)))
    addr = node.accounts[0].hex()
    return [
        (b"\xff\xfe{", PARSE_ERROR, "parse"),
        (_req("status", {}).replace(b"status", b"st\xffatus"), PARSE_ERROR, "parse"),
        (_req("block_get", {"height": 1}).replace(b"1", b"9" * 5_000), PARSE_ERROR, "parse"),
        (_req("status", {}).replace(b"{}", b"[" * 1_000), PARSE_ERROR, "32"),
        (_req("block_get", {"height": 2**64}), NOT_FOUND, "no block"),
        (_req("block_get", {"height": "1"}), INVALID_PARAMS, "integer"),
        (_req("validators_at", {"height": -(2**63)}), NOT_FOUND, "validator set"),
        (_req("log_proof", {"old_size": -1}), INVALID_PARAMS, "old_size"),
        (_req("log_proof", {"index": 2**70, "size": 2**71}), INVALID_PARAMS, "index"),
        (_req("account_get", {"address": addr[:-2]}), INVALID_PARAMS, "20 bytes"),
        (_req("account_get", {"address": "\ud800" * 20}), INVALID_PARAMS, "hex"),
        (_req("cert_get", {"cert_id": "zz" * 32}), INVALID_PARAMS, "hex"),
        (_req("certs_by_domain", {"domain": "\u0430pple.com"}), INVALID_PARAMS, "domain"),
        (_req("certs_by_domain", {"domain": "*.*.example.com"}), INVALID_PARAMS, "domain"),
        (_req("certs_by_domain", {"domain": "www.*.example.com"}), INVALID_PARAMS, "domain"),
        (_req("certs_by_domain", {"domain": "xn--"}), INVALID_PARAMS, "dom"),
        (_req("certs_by_domain", {"domain": "Example.COM"}), INVALID_PARAMS, "dom"),
        (_req("subscribe", {"topic": "blocks", "domain": "a\u200d.b"}), INVALID_PARAMS, "dom"),
        (_req("tx_submit", {"tx": "00" * (MAX_TX_BYTES + 2)}), INVALID_PARAMS, "too long"),
        (_req("tx_submit", {"tx": "93" * 3}), APP_ERROR_BASE - Code.MALFORMED, ""),
        (_req("tx_submit", {"tx": other.hex()}), APP_ERROR_BASE - Code.WRONG_CHAIN_ID, "chain"),
        (_req("tx_submit", {"tx": forged.hex()}), APP_ERROR_BASE - Code.BAD_SIGNATURE, "signature"),
        (b"[" + b"1, " * 100 + b"1]", INVALID_REQUEST, "batch"),
    ]  # fmt: skip


@pytest.mark.slow
def test_rpc_over_unix_gives_clear_errors_and_keeps_serving(tmp_path: Path) -> None:
    def body(node: fuzz.FuzzNode) -> None:
        client = fuzz.RpcClient(node, tcp=False)
        before = trio.from_thread.run_sync(node.records)
        for line, code, word in _error_cases(node):
            err = _call(client, line)["error"]
            assert err["code"] == code, (line[:80], err)
            assert word.lower() in err["message"].lower(), (line[:80], err)
        assert_unchanged(node, before)
        # A line past the limit: an error, the connection closed, the server serving.
        # (The error may be lost when the server closes while we still write.)
        too_long = {"code": INVALID_REQUEST, "message": f"request line over {1 << 20} bytes"}
        got = trio.from_thread.run(client.exchange, b"[" + b" " * (2 << 20) + b"]")
        assert got in ([], [{"jsonrpc": "2.0", "id": None, "error": too_long}]), got
        _fuzz_rpc(node, tcp=False)
        _replay_is_refused(node, client)

    with_node(tmp_path, body)


def _replay_is_refused(node: fuzz.FuzzNode, client: fuzz.RpcClient) -> None:
    """A committed transaction sent again is BAD_NONCE and moves nothing again."""
    key = read_key(Home(node.home).key_file)
    to = bytes(range(20))
    # The validator's account has sent its threshold-signing txs: its next nonce.
    nonce = node.daemon.core.state.account(key.address).nonce
    raw = encode_tx(sign_tx(key, node.daemon.genesis.chain_id, nonce, 10, Transfer(to, 5))).hex()
    assert "result" in _call(client, _req("tx_submit", {"tx": raw}))
    for _ in range(600):  # until committed, at most 600 x 50 ms
        if _call(client, _req("account_get", {"address": to.hex()}))["result"]["exists"]:
            break
        trio.from_thread.run(trio.sleep, 0.05)
    got = _call(client, _req("account_get", {"address": to.hex()}))["result"]
    assert got["balance"] == 5
    err = _call(client, _req("tx_submit", {"tx": raw}))["error"]
    assert err["code"] == APP_ERROR_BASE - Code.BAD_NONCE, err
    assert _call(client, _req("account_get", {"address": to.hex()}))["result"]["balance"] == 5


@pytest.mark.slow
def test_rpc_over_tcp_needs_the_token_and_gives_clear_errors(tmp_path: Path) -> None:
    def body(node: fuzz.FuzzNode) -> None:
        client = fuzz.RpcClient(node, tcp=True)

        @LIVE
        @given(rng=st.randoms(use_true_random=False))
        def bad_tokens(rng: Any) -> None:
            assert trio.from_thread.run(fuzz.bad_token, rng, client) is False

        bad_tokens()
        status = _call(client, _req("status", {}))
        assert status["result"]["chain_id"] == node.daemon.genesis.chain_id
        _fuzz_rpc(node, tcp=True)

    with_node(tmp_path, body)


@pytest.mark.slow
def test_the_long_run_command_counts_inputs_per_decoder() -> None:
    """The reliability run's command, with a small budget: every decoder, every
    input counted, no crashes, and the table a reader checks."""
    out = subprocess.run(
        [sys.executable, "-m", "dpkid", "fuzz", "--inputs", "200", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["crashes"] == 0
    assert [d["name"] for d in doc["decoders"]] == list(fuzz.DECODERS)
    for d in doc["decoders"]:
        assert d["inputs"] == 200 and d["accepted"] + d["rejected"] == 200, d
    text = subprocess.run(
        [sys.executable, "-m", "dpkid.dev.fuzz", "--inputs", "20", "--decoder", "domain"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0 and re.search(r"^domain\s+20\s+\d+\s+\d+\s+0\s", text.stdout, re.M)

"""The long fuzz run: every decoder and interface fed N generated inputs (issue 13).

``python -m dpkid.dev.fuzz --inputs 100000 [--decoder NAME] [--seed S] [--json]``

Inputs come from a seeded structured mutator over valid encodings, not from
hypothesis. Input ``i`` of decoder ``d`` depends on ``(seed, d, i)`` alone, so
one failing input replays by itself (``--index I``) without a database; the
cost per input is constant, so 100,000 inputs per decoder take minutes; and a
run does not stop at the first failure but counts them all. The CI tests
(tests/test_fuzz_interfaces.py, tests/test_fuzz_intake.py) use hypothesis, whose
shrinking is what a developer wants from a failing test.

A *crash* is any exception that is not the decoder's documented error, or a
broken contract: a decoded object that does not re-encode to its input, a
topic validator that admits a message of the wrong type, an RPC answer that is
not JSON-RPC or is -32603 (a handler raised), a node that stops answering, or
committed state that changed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import random
import re
import socket
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from dpkid.core import codec, types
from dpkid.core.domains import DomainError, normalize_domain, validate_domain
from dpkid.core.node import wire
from dpkid.core.state.codes import PRECHECK_CODES
from dpkid.core.state.machine import K_META, RECORD_TYPES
from dpkid.core.types import MAX_TX_BYTES, CertApply, OrgIdentity, Transfer, decode_tx
from dpkid.dev.procs import make_testnet

DEFAULT_SEED: Final = 13
MAX_REPORTED_CRASHES: Final = 5  # per decoder; the count is always complete
HEALTH_EVERY: Final = 500  # inputs between checks that committed state is unchanged
INTERNAL_ERROR: Final = -32603
UNAUTHORIZED: Final = -32001
RPC_ANSWER_TIMEOUT_S: Final = 30.0


class Broken(Exception):
    """A decoder broke its contract (distinct from raising an undocumented error)."""


# ----------------------------------------------------------------------------- generation


class RawStr(bytes):
    """Packed as a msgpack str holding these bytes, which need not be UTF-8."""


def pack(value: Any) -> bytes:
    """msgpack of a plain tree; unlike msgspec it packs RawStr (invalid UTF-8)."""
    if isinstance(value, RawStr):
        n = len(value)
        if n < 32:
            head = bytes([0xA0 | n])
        elif n < 256:
            head = b"\xd9" + n.to_bytes(1, "big")
        elif n < 1 << 16:
            head = b"\xda" + n.to_bytes(2, "big")
        else:
            head = b"\xdb" + n.to_bytes(4, "big")
        return head + bytes(value)
    if isinstance(value, list):
        n = len(value)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
        return head + b"".join(pack(v) for v in value)
    if isinstance(value, dict):
        n = len(value)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
        return head + b"".join(pack(k) + pack(v) for k, v in value.items())
    if isinstance(value, str):
        try:
            return msgspec.msgpack.encode(value)
        except UnicodeEncodeError:  # a lone surrogate: sent as the bytes a peer would send
            return pack(RawStr(value.encode("utf-8", "surrogatepass")))
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 1 << 64:
            return b"\xcf" + b"\xff" * 8  # msgpack's largest integer
        if value < -(1 << 63):
            return b"\xd3\x80" + bytes(7)  # and its smallest
    return msgspec.msgpack.encode(value)


INTERESTING_BYTES: Final = (
    0x00, 0x01, 0x7F, 0x80, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC6,
    0xCA, 0xCB, 0xCC, 0xCF, 0xD0, 0xD3, 0xD4, 0xD9, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0xFF,
)  # fmt: skip
HUGE_INTS: Final = (
    0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
    -(2**63), -(2**63) - 1, 10**40, -(10**40), 3650, 3651, 0x7FFFFFFF, 86_400_000 * 365_000,
)  # fmt: skip
INVALID_UTF8: Final = (
    b"\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc", b"\xed\xa0\x80",
    b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"dpkid-\xfftestnet", b"a.example\xff",
)  # fmt: skip
# Look-alikes of ASCII in names (Cyrillic, Greek, fullwidth), invisible and
# direction-changing characters, combining marks, other dots.
CONFUSABLES: Final = (
    "\u0430", "\u0435", "\u043e", "\u0440", "\u0441", "\u03bf", "\u0391", "\uff41", "\uff0e",
    "\u3002", "\uff61", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e", "\u0301",
    "\u00df", "\u03c2", "\u0131", "\u0130", "\u212a", "\u2024", "\ud800", "\x00", "\u00a0",
)  # fmt: skip
NAME_PIECES: Final = (
    "example", "com", "a", "xn--", "xn--nxasmq6b", "xn--bcher-kva", "xn--bcher-kvab", "xn---",
    "b\u00fccher", "*", "**", "-", "--", "_", "0", "127", "1", "256", "::1", "localhost",
    "EXAMPLE", "www", "x" * 63, "x" * 64, "\u0440\u0430\u0443\u0440\u0430\u04cf",
    "xn--80ak6aa92e", "\u4f8b\u3048", "1e100", "0x7f",
)  # fmt: skip


def tree_paths(tree: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = [prefix]
    if isinstance(tree, list):
        for i, child in enumerate(tree):
            out += tree_paths(child, (*prefix, i))
    return out


def nasty_value(rng: random.Random, like: Any) -> Any:
    """A value of the same kind that is slightly or wildly off, or another kind."""
    r = rng.random()
    if r < 0.15:
        return rng.choice([None, True, False, 0, 1.5, float("inf"), "", b"", [], {}])
    if isinstance(like, bool) or like is None:
        return rng.choice([True, False, None, 0, 1, -1])
    if isinstance(like, int):
        return rng.choice([like + 1, like - 1, -like, *HUGE_INTS])
    if isinstance(like, str):
        return rng.choice(
            [
                like + "\n",
                like.upper(),
                like + rng.choice(CONFUSABLES),
                rng.choice(CONFUSABLES) + like,
                like * 60,
                "x" * rng.choice([255, 256, 65_536]),
                RawStr(like.encode("utf-8", "surrogatepass") + rng.choice(INVALID_UTF8)),
                RawStr(rng.choice(INVALID_UTF8)),
                like.encode("utf-8", "surrogatepass"),
            ]
        )
    if isinstance(like, bytes):
        return rng.choice(
            [like[:-1], like + b"\x00", b"", like.hex(), bytes(len(like)), b"\xff" * len(like)]
        )
    if isinstance(like, list):
        return rng.choice([[], like[:-1], [*like, None], like * 3, [like], list(reversed(like))])
    return rng.choice([{}, [like], None])


def deep(levels: int, leaf: bytes = b"\xc0") -> bytes:
    return b"\x91" * levels + leaf


def structural(rng: random.Random, original: bytes) -> bytes:
    """Decode a valid encoding to plain values, edit one to three nodes, re-pack."""
    tree = msgspec.msgpack.decode(original)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(tree_paths(tree))
        if not path:
            tree = rng.choice([[tree], [*tree, None] if isinstance(tree, list) else [tree]])
            continue
        parent = tree
        for i in path[:-1]:
            parent = parent[i]
        i = path[-1]
        op = rng.random()
        if op < 0.7:
            parent[i] = nasty_value(rng, parent[i])
        elif op < 0.85:
            del parent[i]
        else:
            parent.insert(i, nasty_value(rng, parent[i]))
    data = pack(tree)
    return data if data != original else data + b"\xc0"  # an edit may restore the original


def byte_edits(rng: random.Random, original: bytes) -> bytes:
    buf = bytearray(original)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(max(len(buf), 1))
        op = rng.randrange(6)
        if op == 0 and buf:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[pos] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)
        elif op == 2:
            del buf[pos:]
        elif op == 3:
            buf += rng.randbytes(rng.randint(1, 16))
        elif op == 4:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif buf:
            del buf[pos : pos + rng.randint(1, 8)]
    data = bytes(buf)
    return data if data != original else data + b"\xc0"


def gen_bytes(rng: random.Random, corpus: list[bytes]) -> bytes:
    """One input for a bytes decoder, from one of several classes of bad input."""
    r = rng.random()
    if r < 0.40:
        return structural(rng, rng.choice(corpus))
    if r < 0.75:
        return byte_edits(rng, rng.choice(corpus))
    if r < 0.85:
        return rng.randbytes(rng.randint(0, 400))
    if r < 0.90:  # deep nesting, inside a valid prefix or bare
        levels = rng.choice([33, 100, 1_000, 100_000])
        return rng.choice(corpus)[:1] + deep(levels) if rng.random() < 0.5 else deep(levels)
    if r < 0.95:  # length headers that lie, and oversized bodies
        return rng.choice(
            [
                b"\xdd\xff\xff\xff\xff",
                b"\xdb\xff\xff\xff\xff",
                b"\xc6\x7f\xff\xff\xff",
                b"\xdf\xff\xff\xff\xff",
                b"\x96" + bytes(MAX_TX_BYTES),
                b"\x92\xa3txs\x91\xc6" + (MAX_TX_BYTES + 1).to_bytes(4, "big") + bytes(8),
                rng.choice(corpus) + bytes(rng.choice([1, 1 << 16])),
            ]
        )
    # a valid encoding with an invalid UTF-8 or huge-integer leaf spliced in
    original = rng.choice(corpus)
    splice = pack(RawStr(rng.choice(INVALID_UTF8))) if rng.random() < 0.5 else b"\xcf" + b"\xff" * 8
    pos = rng.randrange(len(original) + 1)
    return original[:pos] + splice + original[pos:]


def gen_name(rng: random.Random) -> str:
    """A domain name-ish string: canonical pieces, look-alikes, wildcards, IDNA, limits."""
    labels = [rng.choice(NAME_PIECES) for _ in range(rng.randint(1, 5))]
    for _ in range(rng.randint(0, 3)):
        i = rng.randrange(len(labels))
        c = rng.choice(CONFUSABLES)
        pos = rng.randint(0, len(labels[i]))
        labels[i] = labels[i][:pos] + c + labels[i][pos:]
    name = rng.choice([".", ".", ".", "..", "\u3002"]).join(labels)
    r = rng.random()
    if r < 0.1:
        name += "."
    elif r < 0.2:
        name = "*." + name
    elif r < 0.25:
        name = ".".join(["a" * 63] * 4)[: rng.choice([252, 253, 254, 255])]
    elif r < 0.3:
        name = name.upper()
    return name


# ----------------------------------------------------------------------------- the decoders


@dataclass
class Tally:
    name: str
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    crashes: int = 0
    seconds: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)


Check = Callable[[random.Random], Awaitable[bool]]  # True: accepted, False: clear rejection


def struct_types() -> list[type[msgspec.Struct]]:
    """Every msgspec Struct of dpkid.core.types and every state record type."""
    found = {
        obj
        for name, obj in vars(types).items()
        if isinstance(obj, type)
        and issubclass(obj, msgspec.Struct)
        and obj.__module__ == types.__name__
        and not name.startswith("_")
    }
    found |= {typ for _, typ in RECORD_TYPES}
    return sorted(found, key=lambda t: t.__name__)


def collect_encodings(obj: Any, out: list[bytes]) -> None:
    if isinstance(obj, msgspec.Struct):
        out.append(codec.encode(obj))
        for name in obj.__struct_fields__:
            collect_encodings(getattr(obj, name), out)
    elif isinstance(obj, list | tuple):
        for item in obj:
            collect_encodings(item, out)


@dataclass
class PureCorpus:
    """Valid encodings from a short dev chain: state records, txs, headers, wire messages."""

    chain: Any
    objects: list[bytes]
    txs: list[bytes]
    wire_msgs: list[bytes]


def pure_corpus() -> PureCorpus:
    from dpkid.core.consensus.messages import PREVOTE, Vote, vote_sign_bytes
    from dpkid.dev.devchain import DevChain

    c = DevChain.create()
    a = c.keys.accounts
    spki = _spki()
    c.tx(a[0], Transfer(a[1].address, 100))
    c.tx(a[1], CertApply("DV", ["a.example", "www.a.example"], spki, 90, 1_000))
    org = OrgIdentity("Fuzz Org", "DE", registration_id="HRB 1", jurisdiction="DE-BE")
    c.tx(a[2], CertApply("EV", ["*.c.example"], spki, 90, 20_001, org))
    c.block()
    txs = [
        c.tx(a[0], Transfer(a[1].address, 7)),
        c.tx(a[3], CertApply("DV", ["d.example"], spki, 30, 1_500)),
    ]
    c.pending.clear()
    objects: list[bytes] = []
    collect_encodings([rec for _, rec in c.state.items()], objects)
    collect_encodings(c.genesis, objects)
    collect_encodings([h for h, _ in c.blocks], objects)
    collect_encodings(c.receipts, objects)
    collect_encodings([decode_tx(t) for t in txs], objects)
    k = c.keys.validators[0]
    g = c.genesis
    sb = vote_sign_bytes(g.chain_id, PREVOTE, 1, 0, b"", g.genesis_time_ms + 1, k.address)
    vote = Vote(g.chain_id, PREVOTE, 1, 0, b"", g.genesis_time_ms + 1, k.address, k.sign(sb))
    msgs: list[wire.WireMsg] = [
        wire.VoteMsg([vote]),
        wire.StatusMsg(5, 0),
        wire.BlockRequest(1, 4),
        wire.BlockResponse([]),
        wire.TxBatch(txs),
        wire.ProposalRequest(1, 0),
    ]
    return PureCorpus(c, sorted(set(objects)), txs, [wire.encode_msg(m) for m in msgs])


def _spki() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from dpkid.core.keys import spki_der_of

    return spki_der_of(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def check_codec(corpus: list[bytes]) -> Check:
    typs = struct_types()

    async def check(rng: random.Random) -> bool:
        data = gen_bytes(rng, corpus)
        accepted = False
        for typ in typs:
            try:
                obj = codec.decode(data, typ)
            except codec.DecodeError:
                continue
            if type(obj) is not typ or codec.encode(obj) != data:
                raise Broken(f"{typ.__name__}: decoded object does not re-encode to the input")
            accepted = True
        return accepted

    return check


def check_tx(corpus: list[bytes]) -> Check:
    async def check(rng: random.Random) -> bool:
        data = gen_bytes(rng, corpus)
        try:
            tx = decode_tx(data)
        except codec.DecodeError:
            return False
        if len(data) > MAX_TX_BYTES or types.encode_tx(tx) != data:
            raise Broken("decode_tx accepted a non-canonical or oversized transaction")
        return True

    return check


def check_wire(corpus: list[bytes]) -> Check:
    async def check(rng: random.Random) -> bool:
        data = gen_bytes(rng, corpus)
        try:
            msg = wire.decode_msg(data)
        except codec.DecodeError:
            return False
        if wire.encode_msg(msg) != data:
            raise Broken(f"{type(msg).__name__} does not re-encode to the input")
        return True

    return check


def check_block(pc: PureCorpus) -> Check:
    """Bad transactions in a block: pre-check receipts, nothing changes but the meta record."""
    from dpkid.dev.devchain import DevChain

    base = pc.chain

    async def check(rng: random.Random) -> bool:
        blobs = [gen_bytes(rng, pc.txs) for _ in range(rng.randint(1, 4))]
        d = DevChain(base.genesis, base.keys)
        d.state = base.state.copy()
        before = {k: codec.encode(v) for k, v in d.state.items() if k != K_META}
        for b in blobs:
            d.raw(b)
        receipts = d.block()
        if len(receipts) != len(blobs):
            raise Broken(f"{len(blobs)} txs but {len(receipts)} receipts")
        for r in receipts:
            if r.code not in PRECHECK_CODES or r.fee_charged or r.events:
                raise Broken(f"a mutated tx got receipt {r.code} ({r.log})")
        if {k: codec.encode(v) for k, v in d.state.items() if k != K_META} != before:
            raise Broken("state changed")
        return False

    return check


def check_domain() -> Check:
    async def check(rng: random.Random) -> bool:
        name = gen_name(rng)
        ok = True
        try:
            if validate_domain(name) != name:
                raise Broken(f"validate_domain changed {name!r}")
        except DomainError:
            ok = False
        try:
            canon = normalize_domain(name)
        except DomainError:
            return ok
        if validate_domain(canon) != canon:
            raise Broken(f"normalize_domain({name!r}) = {canon!r}, which does not validate")
        if ok and canon != name:
            raise Broken(f"a canonical name {name!r} normalised to {canon!r}")
        return True

    return check


# ----------------------------------------------------------------------------- the live node


@dataclass
class FuzzNode:
    """A one-validator node in this process: real libp2p, store, RPC (Unix and TCP)."""

    daemon: Any
    home: Path
    tcp_port: int
    token: str
    accounts: list[bytes]

    def records(self) -> dict[bytes, bytes]:
        """Committed state without the meta record (height, time, app hash move on)."""
        return {k: codec.encode(v) for k, v in self.daemon.core.state.items() if k != K_META}


class FuzzUsageError(ValueError):
    """Arguments the run cannot use (the CLI reports it as a usage error)."""


def make_home(tmp: Path, timeout_commit_ms: int = 200) -> tuple[Path, int]:
    """A one-validator testnet home with the TCP RPC on; returns (home, tcp port)."""
    make_testnet(tmp / "tn", 1, "--timeout-commit-ms", str(timeout_commit_ms))
    home = tmp / "tn" / "node0"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = home / "config.toml"
    cfg.write_text(re.sub(r'rpc_tcp = ".*"', f'rpc_tcp = "127.0.0.1:{port}"', cfg.read_text()))
    return home, port


@contextlib.asynccontextmanager
async def fuzz_node(tmp: Path, min_height: int = 2, quiet: bool = True) -> AsyncIterator[FuzzNode]:
    """Start the node, wait for ``min_height`` blocks, yield; stop it on exit."""
    from dpkid.daemon.daemon import NodeDaemon
    from dpkid.daemon.logs import setup_logging

    home, port = make_home(tmp)
    if quiet:
        setup_logging("error")  # the fuzz provokes warnings by the thousand
    d = NodeDaemon(home)
    try:
        async with trio.open_nursery() as n:
            await n.start(d.run)
            with trio.fail_after(60):
                while d.core.state.height < min_height or not tss_settled(d):
                    await trio.sleep(0.05)
            accounts = [k for k, v in d.core.state.items() if type(v) is types.Account]
            yield FuzzNode(d, home, port, (home / "rpc_token").read_text().strip(), accounts)
            n.cancel_scope.cancel()
    finally:
        await d.aclose()


def tss_settled(d: Any) -> bool:
    """The node's own threshold-key work is done (key made, root and first CRL
    signed, nonces posted, nothing pending): from then on only a transaction
    from outside can change committed state, which is what the fuzz checks."""
    from dpkid.core.state import tss as rules

    st = d.core.state
    root = st.get(rules.K_TSS_ROOT)
    q = st.get(rules.K_TSS_QUEUE)
    key = st.get(rules.K_TSS_KEY)
    if d.core.tss is None:
        return True
    if key is None or root is None or not root.der or st.get(rules.K_TSS_CRL) is None:
        return False
    nq = st.get(rules.key_nonce(d.key.address))
    count = next((m.count for m in key.members if m.address == d.key.address), 1)
    return bool(
        q is not None
        and not q.active
        and q.next_start == q.next_seq
        and nq is not None
        and len(nq.slots) >= rules.queued_slots_limit(count) // 2
        and d.core.pending_count(d.key.address) == 0
    )


def gossip_verdict(d: Any, topic: str, validate: Callable[[str, bytes], bool], data: bytes) -> bool:
    """The topic validator's answer for ``data``, checked: it admits exactly the
    canonical messages of the topic's types, and counts every rejection (the
    peer's penalty: libp2p drops the message and does not forward it)."""
    from dpkid.daemon.daemon import TOPIC_TYPES

    bad_before = bad_messages(d)
    ok = validate("fuzz-peer", data)
    try:
        msg: Any = wire.decode_msg(data)
    except codec.DecodeError:
        msg = None
    if ok is not (msg is not None and isinstance(msg, TOPIC_TYPES[topic])):
        raise Broken(f"validator said {ok!r} for a {type(msg).__name__} on {topic}")
    if not ok and bad_messages(d) != bad_before + 1:
        raise Broken("a rejected message was not counted against the peer")
    return ok


def bad_messages(d: Any) -> float:
    got = d.metrics.registry.get_sample_value("dpkid_bad_messages_total")
    return float(got or 0.0)


def check_gossip(node: FuzzNode, topic: str, corpus: list[bytes]) -> Check:
    validate = node.daemon._validator_for(topic)

    async def check(rng: random.Random) -> bool:
        return gossip_verdict(node.daemon, topic, validate, gen_bytes(rng, corpus))

    return check


async def sync_verdict(d: Any, data: bytes) -> bool:
    """The sync stream handler's answer to ``data``, checked: anything but a
    request raises BadRequest (the stream is reset and the peer's score lowered);
    a request gets one decodable message, requested blocks in order."""
    from dpkid.daemon.p2p import BadRequest

    try:
        req: Any = wire.decode_msg(data)
    except codec.DecodeError:
        req = None
    with trio.fail_after(RPC_ANSWER_TIMEOUT_S):
        try:
            out = await d._serve_sync(data, "fuzz-peer")
        except BadRequest:
            if isinstance(req, wire.BlockRequest | wire.ProposalRequest):
                raise Broken(f"a well-formed {req} was called bad") from None
            return False
    if not isinstance(req, wire.BlockRequest | wire.ProposalRequest):
        raise Broken(f"a {type(req).__name__} was answered, not refused")
    resp = wire.decode_msg(out)  # our own answer must always decode
    if isinstance(resp, wire.BlockResponse):
        heights = [sb.block.header.height for sb in resp.blocks]
        if isinstance(req, wire.BlockRequest):
            first = max(req.from_height, 1)  # there is no block 0: a request from 0 means 1
            want = list(range(first, first + len(heights)))
            if heights != want or len(heights) > req.count:
                raise Broken(f"asked {req} and got heights {heights}")
        return bool(heights)
    if not isinstance(resp, wire.ProposalMsg):
        raise Broken(f"a sync answer was a {type(resp).__name__}")
    return True


def check_sync(node: FuzzNode, corpus: list[bytes]) -> Check:
    async def check(rng: random.Random) -> bool:
        if rng.random() < 0.1:  # well-formed requests for any heights, past the end too
            h = rng.choice([0, 1, 2, rng.randrange(1 << 64)])
            req = wire.BlockRequest(h, rng.randint(1, wire.MAX_SYNC_BLOCKS))
            return await sync_verdict(node.daemon, wire.encode_msg(req))
        return await sync_verdict(node.daemon, gen_bytes(rng, corpus))

    return check


def valid_requests(node: FuzzNode) -> list[dict[str, Any]]:
    """One sensible request per RPC method (the mutator's starting points)."""
    st = node.daemon.core.state
    addr = node.accounts[0].hex() if node.accounts else "00" * 20
    info = node.daemon.store.block(1)
    bhash = info[0].hash.hex() if info else "00" * 32
    bad_tx = _near_miss_tx(node)
    params: list[tuple[str, Any]] = [
        ("status", {}),
        ("block_get", {"height": 1}),
        ("block_get", [1]),
        ("headers_get", {"from": 1, "count": 2}),
        ("tx_submit", {"tx": bad_tx}),
        ("tx_submit", [bad_tx]),
        ("tx_get", {"hash": bhash}),
        ("account_get", {"address": addr}),
        ("cert_get", {"cert_id": "00" * 32}),
        ("certs_by_domain", {"domain": "a.example"}),
        ("application_get", {"app_id": "11" * 32}),
        ("cert_proof", {"cert_id": "00" * 32}),
        ("cert_proof", {"domain": "a.example"}),
        ("cert_proof", {"address": addr}),
        ("log_checkpoint", {}),
        ("log_proof", {"index": 0, "size": 1}),
        ("log_proof", {"old_size": 0, "new_size": 0}),
        ("endorsers_list", {}),
        ("validators_list", {}),
        ("validators_at", {"height": max(st.height, 1)}),
        ("subscribe", {"topic": "blocks"}),
        ("subscribe", {"topic": "certs", "domain": "a.example"}),
        ("subscribe", {"topic": "applications", "app_id": "22" * 32}),
        ("unsubscribe", {"subscription": 1}),
    ]
    return [
        {"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(params)
    ]


def _near_miss_tx(node: FuzzNode) -> str:
    """A transaction signed for another chain: every mutation of it is refused too."""
    from dpkid.core.crypto import SigningKey

    key = SigningKey(bytes(range(32)))
    tx = types.sign_tx(key, "not-" + node.daemon.genesis.chain_id, 0, 10, Transfer(bytes(20), 1))
    return types.encode_tx(tx).hex()


JSON_NASTY: Final[tuple[Any, ...]] = (
    None, True, False, 0, -1, 1.5, 1e308, -0.0, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64,
    -(2**63) - 1, 10**40, -(10**40), "", "zz", "0x00", "00" * 19, "00" * 21, "00" * 31,
    "00" * 33, "ff" * 32, "\ud800", "\x00", "*.example", "xn--", "a..example", "\u0430.example",
    "EXAMPLE.COM", "x" * 70_000, [], {}, [[[[]]]], {"a": {"b": {}}}, [1, 2, 3], "blocks",
)  # fmt: skip
HUGE_DIGITS: Final = "9" * 5_000  # past Python's int-from-text limit (4,300 digits)


def _nasty_json(rng: random.Random, among: int = len(JSON_NASTY)) -> Any:
    # A copy: later edits must not reach into the shared table (and make cycles).
    return copy.deepcopy(rng.choice(JSON_NASTY[:among]))


def gen_request(rng: random.Random, requests: list[dict[str, Any]], in_batch: bool = False) -> Any:
    req: dict[str, Any] = json.loads(json.dumps(rng.choice(requests)))
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        params = req.get("params")
        if r < 0.45 and isinstance(params, dict) and params:
            params[rng.choice(sorted(params))] = _nasty_json(rng)
        elif r < 0.55 and isinstance(params, list) and params:
            params[rng.randrange(len(params))] = _nasty_json(rng)
        elif r < 0.62:
            req["params"] = _nasty_json(rng)
        elif r < 0.69 and isinstance(params, dict):
            params[rng.choice(["height", "from", "count", "domain", "tx", "x", ""])] = rng.choice(
                JSON_NASTY
            )
        elif r < 0.76:
            req["method"] = rng.choice([*JSON_NASTY[:8], "", "STATUS", "status\n", "__init__"])
        elif r < 0.83:
            req["id"] = _nasty_json(rng, 16)
        elif r < 0.88:
            req.pop(rng.choice(["jsonrpc", "id", "method", "params"]), None)
        elif r < 0.93:
            req["jsonrpc"] = rng.choice(["1.0", "2", 2.0, None])
        elif not in_batch:  # batches of requests, not of batches: the size stays bounded
            n = rng.choice([1, 3, 100, 101])
            return [gen_request(rng, requests, in_batch=True) for _ in range(n)]
    return req


def gen_line(rng: random.Random, requests: list[dict[str, Any]]) -> bytes:
    """One request line: structured edits of a valid request, then maybe byte edits."""
    text = json.dumps(gen_request(rng, requests))
    r = rng.random()
    if r < 0.06:
        text = re.sub(r"\b\d+\b", HUGE_DIGITS, text, count=1)
    elif r < 0.10:
        levels = rng.choice([31, 33, 1_000, 100_000])
        text = text.replace('"params": ', '"params": ' + "[" * levels, 1) + "]" * levels
    line = text.encode()
    r = rng.random()
    if r < 0.15:
        pos = rng.randrange(len(line) + 1)
        line = line[:pos] + rng.choice(INVALID_UTF8) + line[pos:]
    elif r < 0.30:
        line = byte_edits(rng, line)
    return line.replace(b"\n", b" ")


class RpcClient:
    """One connection; reopened when the server closes it (as it may on a bad line)."""

    def __init__(self, node: FuzzNode, tcp: bool) -> None:
        self.node = node
        self.tcp = tcp
        self.stream: trio.abc.Stream | None = None
        self.buf = bytearray()
        self.sentinel = 0

    async def open(self, first_line: bytes | None = None) -> trio.abc.Stream:
        if self.tcp:
            s: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", self.node.tcp_port)
            token = f"Bearer {self.node.token}\n".encode() if first_line is None else first_line
            await s.send_all(token)
        else:
            s = await trio.open_unix_socket(str(self.node.home / "dpkid.sock"))
        self.buf = bytearray()
        return s

    async def close(self) -> None:
        if self.stream is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.aclose()
        self.stream = None

    async def read_line(self) -> bytes | None:
        assert self.stream is not None
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        i = self.buf.index(b"\n")
        line = bytes(self.buf[:i])
        del self.buf[: i + 1]
        return line

    async def exchange(self, line: bytes) -> list[Any]:
        """Send ``line`` and a status request; the answers before the status's.

        Raises Broken if the node stops answering or an answer is not JSON-RPC."""
        if self.stream is None:
            self.stream = await self.open()
        self.sentinel += 1
        sid = f"sentinel-{self.sentinel}"
        probe = json.dumps({"jsonrpc": "2.0", "id": sid, "method": "status"}).encode()
        answers: list[Any] = []
        with trio.fail_after(RPC_ANSWER_TIMEOUT_S):
            try:
                await self.stream.send_all(line + b"\n" + probe + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # Closed while we wrote (a line past the limit): others must still be served.
                await self.close()
                await self.health()
                return answers
            while True:
                raw = await self.read_line()
                if raw is None:  # closed after a bad line (too long): must still serve others
                    await self.close()
                    await self.health()
                    return answers
                try:
                    msg = json.loads(raw)
                except ValueError:
                    raise Broken(f"answer is not JSON: {raw[:200]!r}") from None
                if isinstance(msg, dict) and msg.get("id") == sid:
                    if "result" not in msg:
                        raise Broken(f"status failed after a bad line: {msg}")
                    return answers
                if isinstance(msg, dict) and "method" in msg and "id" not in msg:
                    continue  # a notification of a subscription the fuzz made
                answers.append(msg)

    async def health(self) -> None:
        self.stream = await self.open()
        got = await self.exchange(b"")
        if got:
            raise Broken(f"an empty line was answered: {got}")


def check_rpc_answer(msg: Any) -> bool:
    """True for a result, False for a clear error; Broken for anything else."""
    items = msg if isinstance(msg, list) else [msg]
    accepted = False
    for m in items:
        if not isinstance(m, dict) or m.get("jsonrpc") != "2.0" or "id" not in m:
            raise Broken(f"not a JSON-RPC 2.0 response: {str(m)[:200]}")
        if "result" in m:
            accepted = True
            continue
        err = m.get("error")
        if not isinstance(err, dict) or type(err.get("code")) is not int:
            raise Broken(f"error without a code: {str(m)[:200]}")
        if not isinstance(err.get("message"), str) or not err["message"]:
            raise Broken(f"error without a message: {str(m)[:200]}")
        if err["code"] == INTERNAL_ERROR:
            raise Broken(f"a handler raised (-32603): {str(m)[:200]}")
    return accepted


def check_rpc(node: FuzzNode, tcp: bool) -> Check:
    client = RpcClient(node, tcp)
    requests = valid_requests(node)

    async def check(rng: random.Random) -> bool:
        if tcp and rng.random() < 0.1:
            return await bad_token(rng, client)
        accepted = False
        for msg in await client.exchange(gen_line(rng, requests)):
            accepted = check_rpc_answer(msg) or accepted
        return accepted

    return check


async def bad_token(rng: random.Random, client: RpcClient) -> bool:
    """A wrong first line on TCP: -32001 (or a plain close), never a served request."""
    token = f"Bearer {client.node.token}".encode()
    first = rng.choice(
        [
            byte_edits(rng, token),
            token[:-1],
            token + b"x",
            b"Bearer " + rng.choice(INVALID_UTF8),
            b'{"jsonrpc": "2.0", "id": 1, "method": "status"}',
            b"x" * 5_000,
            b"",
        ]
    ).replace(b"\n", b" ")
    if first.strip() == token:
        first += b"x"
    s = await client.open(first + b"\n" + b'{"jsonrpc": "2.0", "id": 1, "method": "status"}\n')
    data = bytearray()
    with trio.fail_after(RPC_ANSWER_TIMEOUT_S):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while chunk := await s.receive_some(1 << 16):
                data += chunk
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await s.aclose()
    if data:
        msg = json.loads(data.split(b"\n")[0])
        if msg.get("error", {}).get("code") != UNAUTHORIZED or b"result" in data:
            raise Broken(f"a wrong token line was answered with {bytes(data[:200])!r}")
    return False


# ----------------------------------------------------------------------------- the run

PURE: Final = ("codec", "tx", "wire", "block", "domain")
LIVE: Final = ("gossip-txs", "gossip-consensus", "gossip-blocks", "sync", "rpc-unix", "rpc-tcp")
DECODERS: Final = (*PURE, *LIVE)


def input_rng(seed: int, decoder: str, index: int) -> random.Random:
    return random.Random((seed << 40) ^ (zlib.crc32(decoder.encode()) << 20) ^ index)


async def run_decoder(
    name: str,
    check: Check,
    n_inputs: int,
    seed: int,
    start: int = 0,
    health: Callable[[], Awaitable[None]] | None = None,
) -> Tally:
    t = Tally(name)
    t0 = time.perf_counter()
    for i in range(start, start + n_inputs):
        try:
            if await check(input_rng(seed, name, i)):
                t.accepted += 1
            else:
                t.rejected += 1
            if health is not None and (i + 1) % HEALTH_EVERY == 0:
                await health()
        except trio.Cancelled:
            raise
        except Exception as exc:
            t.crashes += 1
            if len(t.examples) < MAX_REPORTED_CRASHES:
                t.examples.append(
                    {
                        "index": i,
                        "error": f"{type(exc).__name__}: {exc}"[:500],
                        "traceback": traceback.format_exc(limit=6)[-2000:],
                        "reproduce": reproduce_command(name, seed, i),
                    }
                )
        t.inputs += 1
    if health is not None:
        try:
            await health()
        except Exception as exc:
            t.crashes += 1
            t.examples.append({"index": -1, "error": f"after the run: {exc}"})
    t.seconds = time.perf_counter() - t0
    return t


def reproduce_command(name: str, seed: int, index: int) -> str:
    return f"python -m dpkid.dev.fuzz --decoder {name} --seed {seed} --index {index} --inputs 1"


async def run_all(
    decoders: list[str], n_inputs: int, seed: int, start: int, report: Callable[[Tally], None]
) -> list[Tally]:
    pc = pure_corpus()
    pure: dict[str, Callable[[], Check]] = {
        "codec": lambda: check_codec(pc.objects),
        "tx": lambda: check_tx(pc.txs),
        "wire": lambda: check_wire(pc.wire_msgs),
        "block": lambda: check_block(pc),
        "domain": check_domain,
    }
    out: list[Tally] = []
    for name in decoders:
        if name in pure:
            out.append(await run_decoder(name, pure[name](), n_inputs, seed, start))
            report(out[-1])
    live = [n for n in decoders if n in LIVE]
    if not live:
        return out
    with tempfile.TemporaryDirectory(prefix="dpkid-fuzz-") as tmp:
        async with fuzz_node(Path(tmp)) as node:
            before = node.records()
            d = node.daemon
            blocks = [
                wire.encode_msg(wire.BlockResponse([wire.SyncedBlock(b, c)]))
                for b, c in d.store.blocks(1, 2)
            ]
            msgs = [*pc.wire_msgs, *blocks]

            async def health() -> None:
                if node.records() != before:
                    raise Broken("committed state changed")
                if d.core.status().mempool_txs:
                    raise Broken("a fuzzed input reached the mempool")

            live_checks: dict[str, Callable[[], Check]] = {
                "gossip-txs": lambda: check_gossip(node, "txs", msgs),
                "gossip-consensus": lambda: check_gossip(node, "consensus", msgs),
                "gossip-blocks": lambda: check_gossip(node, "blocks", msgs),
                "sync": lambda: check_sync(node, msgs),
                "rpc-unix": lambda: check_rpc(node, tcp=False),
                "rpc-tcp": lambda: check_rpc(node, tcp=True),
            }
            for name in live:
                out.append(
                    await run_decoder(name, live_checks[name](), n_inputs, seed, start, health)
                )
                report(out[-1])
    return out


def table(tallies: list[Tally]) -> str:
    head = ("decoder", "inputs", "accepted", "rejected", "crashes", "seconds")
    rows = ["{:<18} {:>9} {:>9} {:>9} {:>8} {:>8}".format(*head)]
    for t in tallies:
        cells = (t.name, t.inputs, t.accepted, t.rejected, t.crashes, f"{t.seconds:.1f}")
        rows.append("{:<18} {:>9} {:>9} {:>9} {:>8} {:>8}".format(*cells))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dpkid.dev.fuzz", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", type=int, default=10_000, help="inputs per decoder")
    p.add_argument("--decoder", action="append", choices=DECODERS, help="repeatable; default all")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--index", type=int, default=0, help="first input index (to replay one input)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def run(args: argparse.Namespace) -> int:
    decoders = list(args.decoder or DECODERS)
    if args.inputs < 1:
        raise FuzzUsageError(f"--inputs must be at least 1, not {args.inputs}")
    t0 = time.perf_counter()

    def report(t: Tally) -> None:
        if not args.json:
            print(
                f"{t.name}: {t.inputs} inputs, {t.crashes} crashes, {t.seconds:.1f} s",
                file=sys.stderr,
            )
            for ex in t.examples:
                print(f"  CRASH at input {ex['index']}: {ex['error']}", file=sys.stderr)
                if "reproduce" in ex:
                    print(f"    reproduce: {ex['reproduce']}", file=sys.stderr)

    tallies = trio.run(run_all, decoders, args.inputs, args.seed, args.index, report)
    crashes = sum(t.crashes for t in tallies)
    wall_s = time.perf_counter() - t0
    if args.json:
        doc = {
            "seed": args.seed,
            "inputs_per_decoder": args.inputs,
            "first_index": args.index,
            "wall_seconds": round(wall_s, 1),
            "crashes": crashes,
            "decoders": [
                {k: v for k, v in vars(t).items() if k != "seconds"}
                | {"seconds": round(t.seconds, 1)}
                for t in tallies
            ],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(table(tallies))
        print(f"seed {args.seed}, wall {wall_s:.0f} s, {crashes} crashes")
        if crashes:
            print(f"rerun: python -m dpkid.dev.fuzz --seed {args.seed} --inputs {args.inputs}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())

"""The load generator of ``dpkid bench net``: its own process, so the load it
drives costs the nodes nothing but what a real client would.

It pre-signs every transaction before the clock starts (transfers, or with
``"mix": "certs"`` DV certificate applications, each for its own name, whose
http-01 challenges it publishes to the bench's loopback DNS and HTTP servers
through their zone and map files), then offers them at a
fixed rate through each node's RPC socket as JSON-RPC batches. Every account
is pinned to one node and sends in nonce order; a transaction the node refuses
as retryable (-32005) stays at the head of its account's queue and is sent
again after the node's ``retry_after_ms``, as a polite client would. The
result file holds, per accepted transaction, its hash and submit time, and the
refusals by error code. Committed transactions are counted elsewhere, from
committed blocks.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dpkid.core import codec
from dpkid.core.challenges import Challenge, dns_txt_value, key_authorization, token_for
from dpkid.core.crypto import SigningKey, sha256
from dpkid.core.keys import spki_der_of
from dpkid.core.state.machine import APP_TAG
from dpkid.core.types import CertApply, Transfer, sign_tx
from dpkid.daemon.config import read_key
from dpkid.dev.dns_server import Zone
from dpkid.dev.http_server import ChallengeMap
from dpkid.dev.labelkeys import subject_key

BATCH_TXS: Final = 50  # tx_submit calls per JSON-RPC batch (the RPC server takes up to 100)
TICK_S: Final = 0.01  # how often each node's sender checks what is due
RETRY_LATER: Final = -32006  # RPC.md §4.2
DEFAULT_RETRY_MS: Final = 200
MAX_REPLY_BYTES: Final = 16 * 1024 * 1024
SOCKET_TIMEOUT_S: Final = 30.0
BENCH_ZONE: Final = "bench.test"  # every certificate's name is <account>-<nonce>.bench.test
CERT_VALIDITY_DAYS: Final = 30


@dataclass
class _Account:
    txs: list[bytes]  # pre-signed, nonce order
    next: int = 0
    wait_until: float = 0.0


@dataclass
class _NodeLoad:
    socket_path: str
    accounts: list[_Account]
    rate_tps: float
    accepted: dict[str, float] = field(default_factory=dict)  # tx hash hex -> submit wall time
    refused: Counter[str] = field(default_factory=Counter)
    offered: int = 0
    rpc_s: list[float] = field(default_factory=list)  # per batch round trip
    error: str = ""


def presign(keys: list[SigningKey], chain_id: str, fee: int, per_account: int) -> list[_Account]:
    """Transfers of 1 token to the next account, nonces 0..per_account-1."""
    out = []
    for i, k in enumerate(keys):
        to = keys[(i + 1) % len(keys)].address
        txs = [
            codec.encode(sign_tx(k, chain_id, n, fee, Transfer(to, 1))) for n in range(per_account)
        ]
        out.append(_Account(txs))
    return out


def cert_name(account: int, nonce: int) -> str:
    return f"c{account}-{nonce}.{BENCH_ZONE}"


def presign_certs(
    keys: list[SigningKey], chain_id: str, fee: int, escrow: int, per_account: int
) -> tuple[list[_Account], dict[str, str], dict[str, Any], dict[str, Any]]:
    """DV applications, one name each, nonces 0..per_account-1; with, per tx
    hash, its name, and the zone and challenge map that let validators check it."""
    spki = spki_der_of(subject_key("bench-net-cert").public_key())
    out: list[_Account] = []
    names: dict[str, str] = {}
    zone: dict[str, Any] = {}
    challenges: dict[str, Any] = {}
    for i, k in enumerate(keys):
        txs = []
        for n in range(per_account):
            name = cert_name(i, n)
            body = CertApply("DV", [name], spki, CERT_VALIDITY_DAYS, escrow)
            raw = codec.encode(sign_tx(k, chain_id, n, fee, body))
            h = sha256(raw)
            # SPEC §3.4: the application id comes from the hash of the tx that made it, so
            # its challenge is known before it is sent (as an ACME client's is not).
            token = token_for(sha256(APP_TAG + h), k.public_key)
            ka = key_authorization(token, k.public_key)
            ch = Challenge(token, ka, dns_txt_value(ka), (name,))
            names[h.hex()] = name
            zone[name] = {"A": ["127.0.0.1"]}
            challenges[name] = {"paths": {ch.http_path: ka}}
            txs.append(raw)
        out.append(_Account(txs))
    return out, names, zone, challenges


class _Conn:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(SOCKET_TIMEOUT_S)
        self.sock.connect(path)
        self.buf = bytearray()

    def call(self, batch: list[dict[str, Any]]) -> Any:
        self.sock.sendall(json.dumps(batch).encode() + b"\n")
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return json.loads(line)
            data = self.sock.recv(1 << 20)
            if not data:
                raise OSError("node closed the connection")
            self.buf += data
            if len(self.buf) > MAX_REPLY_BYTES:
                raise OSError("reply too large")


def drive(load: _NodeLoad, t0: float, duration_s: float) -> None:
    """Offer this node's share of the rate until the duration is over."""
    try:
        conn = _Conn(load.socket_path)
    except OSError as exc:
        load.error = f"cannot connect to {load.socket_path}: {exc}"
        return
    ready = deque(range(len(load.accounts)))
    rid = 0
    while True:
        now = time.perf_counter()
        elapsed = now - t0
        if elapsed >= duration_s:
            break
        due = int(elapsed * load.rate_tps) - load.offered
        if due <= 0:
            time.sleep(TICK_S)
            continue
        batch: list[dict[str, Any]] = []
        picked: dict[int, int] = {}
        for _ in range(len(ready)):
            if len(batch) >= min(due, BATCH_TXS):
                break
            a = ready[0]
            ready.rotate(-1)
            acct = load.accounts[a]
            if acct.next >= len(acct.txs) or acct.wait_until > now:
                continue
            rid += 1
            picked[rid] = a
            raw = acct.txs[acct.next]
            batch.append(
                {"jsonrpc": "2.0", "id": rid, "method": "tx_submit", "params": {"tx": raw.hex()}}
            )
        if not batch:
            time.sleep(TICK_S)
            continue
        sent = time.time()
        c0 = time.perf_counter()
        try:
            replies = conn.call(batch)
        except (OSError, ValueError) as exc:
            load.error = f"{load.socket_path}: {exc}"
            return
        load.rpc_s.append(time.perf_counter() - c0)
        load.offered += len(batch)
        for rep in replies if isinstance(replies, list) else [replies]:
            got = picked.get(rep.get("id", -1))
            if got is None:
                continue
            acct = load.accounts[got]
            raw = acct.txs[acct.next]
            err = rep.get("error")
            if err is None:
                load.accepted[sha256(raw).hex()] = sent
                acct.next += 1
            elif err.get("code") == RETRY_LATER:
                load.refused[str(err.get("code"))] += 1
                data = err.get("data") or {}
                retry_ms = int(data.get("retry_after_ms", DEFAULT_RETRY_MS))
                acct.wait_until = time.perf_counter() + retry_ms / 1000
            else:
                # Refused for good (a code of the ledger): the nonce is never used,
                # so this account cannot go on.
                load.refused[str(err.get("code"))] += 1
                acct.next = len(acct.txs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dpkid.dev.loadgen")
    ap.add_argument("--plan", required=True, help="JSON written by dpkid bench net")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    plan = json.loads(Path(args.plan).read_text())
    sockets: list[str] = plan["sockets"]
    keys = [read_key(Path(p)) for p in plan["account_keys"]]
    rate = float(plan["rate_tps"])
    duration = float(plan["duration_s"])
    per_account = int(rate * duration / len(keys)) + 2
    names: dict[str, str] = {}
    if plan.get("mix", "transfers") == "certs":
        accounts, names, zone, challenges = presign_certs(
            keys, plan["chain_id"], int(plan["fee"]), int(plan["escrow"]), per_account
        )
        Zone.write_file(Path(plan["zone_file"]), zone)
        ChallengeMap.write_file(Path(plan["map_file"]), challenges)
        print("published", flush=True)
        # The bench checks that its servers serve the challenges, then says go.
        if sys.stdin.readline().strip() != "go":
            return 2
    else:
        accounts = presign(keys, plan["chain_id"], int(plan["fee"]), per_account)
    loads = [
        _NodeLoad(s, accounts[j :: len(sockets)], rate / len(sockets))
        for j, s in enumerate(sockets)
    ]
    # The clock starts once everything is signed (and published).
    print("signed", flush=True)
    t0 = time.perf_counter()
    started = time.time()
    threads = [threading.Thread(target=drive, args=(ld, t0, duration)) for ld in loads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 120)
    refused: Counter[str] = Counter()
    accepted: dict[str, float] = {}
    rpc_s: list[float] = []
    for ld in loads:
        refused.update(ld.refused)
        accepted.update(ld.accepted)
        rpc_s += ld.rpc_s
    rpc_s.sort()
    out = {
        "started": started,
        "ended": time.time(),
        "offered": sum(ld.offered for ld in loads),
        "accepted": accepted,
        "names": {h: names[h] for h in accepted if h in names},
        "refused": dict(refused),
        "errors": [ld.error for ld in loads if ld.error],
        "batch_rtt_p50_s": rpc_s[len(rpc_s) // 2] if rpc_s else 0.0,
        "batch_rtt_p99_s": rpc_s[int(len(rpc_s) * 0.99)] if rpc_s else 0.0,
    }
    Path(args.out).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

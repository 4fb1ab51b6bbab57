"""The node's JSON-RPC methods (protocol/RPC.md)."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from dpkid.core import codec
from dpkid.core.consensus.messages import Block, Commit
from dpkid.core.domains import DomainError, validate_domain
from dpkid.core.jsonview import to_json
from dpkid.core.node.mempool import Refusal
from dpkid.core.state import tss as tss_rules
from dpkid.core.state.codes import Code
from dpkid.core.state.machine import (
    K_META,
    REASON_NAMES,
    cert_status,
    key_account,
    key_cert,
    key_domain,
)
from dpkid.core.state.proofs import RecordProof
from dpkid.core.types import MAX_TX_BYTES, Certificate, Event
from dpkid.daemon.rpc import (
    APP_ERROR_BASE,
    INVALID_PARAMS,
    RETRY_LATER,
    Connection,
    Handler,
    RpcError,
    RpcServer,
    hex_param,
    param,
)

if TYPE_CHECKING:
    from dpkid.core.node.effects import PersistBlock
    from dpkid.daemon.daemon import NodeDaemon

NOT_FOUND: Final = -32004
NOT_READY: Final = -32005
OVERLOAD_RETRY_MS: Final = 100  # RPC.md §7 tx_submit: when an overloaded node may be asked again
MAX_SUBSCRIPTIONS_PER_CONN: Final = 32
MAX_LIST: Final = 500
SUB_TOPICS: Final = ("blocks", "certs", "applications")


def app_error(code: Code, message: str) -> RpcError:
    return RpcError(APP_ERROR_BASE - int(code), message, {"code": int(code), "name": code.name})


def code_name(code: int) -> str:
    return Code(code).name if code in Code._value2member_map_ else str(code)


def cert_view(cert: Certificate, time_ms: int) -> dict[str, Any]:
    v: dict[str, Any] = to_json(cert)
    v["status_at_head"] = cert_status(cert, time_ms)
    if cert.status == "revoked":
        v["revocation_reason_name"] = REASON_NAMES.get(cert.revocation_reason, "unknown")
    return v


def domain_watch_matches(watched: str, cert_domains: list[str]) -> bool:
    """A watch on example.com sees example.com, its subdomains and wildcards under it."""
    for d in cert_domains:
        base = d[2:] if d.startswith("*.") else d
        if base == watched or base.endswith("." + watched):
            return True
    return False


class Subscriptions:
    """Per-connection subscriptions, fed from committed blocks."""

    def __init__(self, d: NodeDaemon) -> None:
        self.d = d
        self.ids = itertools.count(1)
        self.subs: dict[int, tuple[Connection, str, dict[str, Any]]] = {}

    def add(self, conn: Connection, topic: str, filt: dict[str, Any]) -> int:
        mine = [s for s in self.subs.values() if s[0] is conn]
        if len(mine) >= MAX_SUBSCRIPTIONS_PER_CONN:
            raise RpcError(
                INVALID_PARAMS, f"at most {MAX_SUBSCRIPTIONS_PER_CONN} subscriptions per connection"
            )
        sid = next(self.ids)
        self.subs[sid] = (conn, topic, filt)
        conn.subscriptions += 1  # a subscriber is never closed as idle
        return sid

    def remove(self, conn: Connection, sid: int) -> bool:
        s = self.subs.get(sid)
        if s is None or s[0] is not conn:
            return False
        del self.subs[sid]
        conn.subscriptions -= 1
        return True

    def drop_conn(self, conn: Connection) -> None:
        for sid in [k for k, v in self.subs.items() if v[0] is conn]:
            del self.subs[sid]

    def on_block(self, e: PersistBlock) -> None:
        if not self.subs:
            return
        st = self.d.core.ledger
        h = e.block.header.height
        block_ev = {
            "height": h,
            "hash": e.block.hash.hex(),
            "time_ms": e.block.header.time_ms,
            "txs": len(e.block.txs),
            "app_hash": e.app_hash.hex(),
        }
        events: list[Event] = list(e.events)
        # Records as this block left them (several blocks may be applied at once).
        written = dict(e.writes)
        for r in e.receipts:
            events.extend(r.events)
        cert_evs: list[dict[str, Any]] = []
        app_evs: list[dict[str, Any]] = []
        for ev in events:
            if ev.kind in ("cert_issued", "cert_revoked", "cert_degraded"):
                cert = written.get(key_cert(ev.ref)) or st.certificate(ev.ref)
                if cert is not None:
                    cert_evs.append(
                        {
                            "event": ev.kind.removeprefix("cert_"),
                            "height": h,
                            "detail": ev.detail,
                            "certificate": cert_view(cert, st.time_ms),
                        }
                    )
            if ev.kind.startswith("app_") or ev.kind in ("attested", "endorsed", "attest_conflict"):
                app_evs.append(
                    {"event": ev.kind, "height": h, "app_id": ev.ref.hex(), "detail": ev.detail}
                )
            if ev.kind == "cert_issued":
                cert = written.get(key_cert(ev.ref)) or st.certificate(ev.ref)
                if cert is not None:
                    app_evs.append(
                        {
                            "event": "issued",
                            "height": h,
                            "app_id": cert.app_id.hex(),
                            "cert_id": cert.cert_id.hex(),
                            "detail": "",
                        }
                    )
        for sid, (conn, topic, filt) in list(self.subs.items()):
            items: list[dict[str, Any]]
            if topic == "blocks":
                items = [block_ev]
            elif topic == "certs":
                dom = filt.get("domain")
                items = [
                    c
                    for c in cert_evs
                    if not dom or domain_watch_matches(dom, c["certificate"]["domains"])
                ]
            else:
                aid = filt.get("app_id")
                items = [a for a in app_evs if not aid or a["app_id"] == aid]
            for item in items:
                if not conn.notify(
                    "subscription", {"subscription": sid, "topic": topic, "event": item}
                ):
                    # A subscriber that cannot keep up is dropped, never waited for.
                    self.subs.pop(sid, None)
                    conn.dropped_notice = f"subscription {sid} dropped: client too slow"
                    break


def header_and_commit(block: Block, commit: Commit) -> dict[str, Any]:
    """A block's header and commit as views and as the bytes a client hashes:
    last_commit_bytes and evidence_bytes check the header's last_commit_hash and
    evidence_hash without re-encoding the JSON views (RPC.md §6.1)."""
    lc = block.last_commit
    return {
        "header": to_json(block.header),
        "header_bytes": codec.encode(block.header).hex(),
        "commit": to_json(commit),
        "commit_bytes": codec.encode(commit).hex(),
        "last_commit_bytes": codec.encode(lc).hex() if lc is not None else "",
        "evidence_bytes": codec.encode(block.evidence).hex() if block.evidence else "",
    }


@dataclass(frozen=True)
class Ctx:
    """What every method reads: the daemon (through its queries) and the
    subscription table."""

    d: NodeDaemon
    subs: Subscriptions


Method = Callable[[Ctx, Any, Connection], Awaitable[Any]]


async def status(c: Ctx, params: Any, conn: Connection) -> Any:
    return c.d.status()


async def block_get(c: Ctx, params: Any, conn: Connection) -> Any:
    h = param(params, "height", int, 0, default=c.d.core.ledger.height)
    if h < 1 or h > c.d.core.ledger.height:
        raise RpcError(NOT_FOUND, f"no block at height {h} (latest is {c.d.core.ledger.height})")
    got = c.d.store.block(h)
    if got is None:
        raise RpcError(NOT_FOUND, f"block {h} is not stored")
    block, commit = got
    return {
        "height": h,
        "hash": block.hash.hex(),
        "txs": [t.hex() for t in block.txs],
        "evidence": to_json(block.evidence),
        "last_commit": to_json(block.last_commit),
        **header_and_commit(block, commit),
    }


async def headers_get(c: Ctx, params: Any, conn: Connection) -> Any:
    """Headers with their commits, for light clients walking the chain."""
    start = param(params, "from", int, 0, default=1)
    count = max(1, min(param(params, "count", int, 1, default=100), 100))
    if start < 1 or start > 2**62:
        raise RpcError(INVALID_PARAMS, "from must be between 1 and 2**62")
    out = []
    for block, commit in c.d.store.blocks(start, count):
        out.append(
            {
                "height": block.header.height,
                "header_bytes": codec.encode(block.header).hex(),
                "commit_bytes": codec.encode(commit).hex(),
            }
        )
    return {"latest": c.d.core.ledger.height, "headers": out}


async def tx_submit(c: Ctx, params: Any, conn: Connection) -> Any:
    raw = hex_param(params, "tx", index=0, max_len=MAX_TX_BYTES + 1)
    v = await c.d.submit_tx(raw)
    code, why, h = v.verdict, v.why, v.tx_hash
    if isinstance(code, Refusal):
        # Not the transaction's fault: the same bytes may be sent again later. A
        # full mempool drains when a block commits; an overloaded input queue
        # within a step or two.
        retry_ms = (
            c.d.settings.timeout_commit_ms if code is Refusal.MEMPOOL_FULL else OVERLOAD_RETRY_MS
        )
        data = {"reason": code.value, "retryable": True, "retry_after_ms": retry_ms}
        raise RpcError(RETRY_LATER, why, data)
    if code != Code.OK:
        raise app_error(code, why)
    return {"hash": h.hex(), "status": why}


async def tx_get(c: Ctx, params: Any, conn: Connection) -> Any:
    h = hex_param(params, "hash", 32)
    loc = c.d.store.tx_location(h)
    if loc is None:
        return {
            "hash": h.hex(),
            "committed": False,
            "pending": c.d.core.tx_pending(h),
            "dropped": c.d.core.tx_dropped(h),
        }
    height, idx, receipt = loc
    return {
        "hash": h.hex(),
        "committed": True,
        "height": height,
        "index": idx,
        "code": receipt.code,
        "code_name": code_name(receipt.code),
        "log": receipt.log,
        "receipt": to_json(receipt),
    }


async def account_get(c: Ctx, params: Any, conn: Connection) -> Any:
    addr = hex_param(params, "address", 20)
    st = c.d.core.ledger
    a = st.account(addr)
    pending = c.d.core.pending_count(addr)
    return {
        "address": addr.hex(),
        "exists": a is not None,
        "balance": a.balance if a else 0,
        "nonce": a.nonce if a else 0,
        "next_nonce": (a.nonce if a else 0) + pending,
        "pubkey": a.pubkey.hex() if a else "",
        "height": st.height,
    }


def state_and_record(c: Ctx, params: Any, name: str, what: str) -> tuple[Any, Any]:
    """The state now and its record whose 32-byte id is the hex param ``name``;
    NOT_FOUND if none. ``what`` ("certificate", "application") is both the
    state's getter and the word in the error."""
    rid = hex_param(params, name, 32)
    st = c.d.core.ledger
    rec = getattr(st, what)(rid)
    if rec is None:
        raise RpcError(NOT_FOUND, f"no such {what}", {name: rid.hex()})
    return st, rec


def domain_param(c: Ctx, params: Any) -> str:
    """The ``domain`` param in its canonical form; INVALID_PARAMS if it is not a name."""
    try:
        return validate_domain(param(params, "domain", str))
    except DomainError as exc:
        raise RpcError(INVALID_PARAMS, f"domain: {exc}") from None


async def cert_get(c: Ctx, params: Any, conn: Connection) -> Any:
    st, cert = state_and_record(c, params, "cert_id", "certificate")
    return {
        "height": st.height,
        "time_ms": st.time_ms,
        "certificate": cert_view(cert, st.time_ms),
    }


async def certs_by_domain(c: Ctx, params: Any, conn: Connection) -> Any:
    dom = domain_param(c, params)
    st = c.d.core.ledger
    certs = st.certs_by_domain(dom)[-MAX_LIST:]
    return {
        "height": st.height,
        "domain": dom,
        "certificates": [cert_view(c, st.time_ms) for c in certs],
    }


async def application_get(c: Ctx, params: Any, conn: Connection) -> Any:
    st, app = state_and_record(c, params, "app_id", "application")
    from dpkid.core.challenges import challenge_for

    v = to_json(app)
    v["challenge"] = challenge_for(app).as_json()
    return {"height": st.height, "application": v}


async def cert_proof(c: Ctx, params: Any, conn: Connection) -> Any:
    """A proof against the latest header's app hash, with that header and its commit."""
    if isinstance(params, dict) and "domain" in params:
        key = key_domain(domain_param(c, params))
    elif isinstance(params, dict) and "address" in params:
        key = key_account(hex_param(params, "address", 20))
    else:
        key = key_cert(hex_param(params, "cert_id", 32))
    return record_proof(c, key)


def record_proof(c: Ctx, key: bytes) -> dict[str, Any]:
    st = c.d.core.ledger
    try:
        prev_h, root, value, path = st.prove_previous(key)
    except ValueError:
        raise RpcError(NOT_READY, "no proof yet: retry after the next block") from None
    header_h = prev_h + 1
    got = c.d.store.block(header_h)
    if got is None:
        raise RpcError(NOT_READY, "header not stored yet")
    block, commit = got
    if block.header.app_hash != root:
        raise RpcError(NOT_READY, "state moved on; retry")
    proof = RecordProof(key, value is not None, value or b"", path)
    return {
        "height": header_h,
        "state_height": prev_h,
        "app_hash": root.hex(),
        **header_and_commit(block, commit),
        "present": value is not None,
        "record": to_json(st.get_previous(key)) if value is not None else None,
        "proof": codec.encode(proof).hex(),
    }


async def log_checkpoint(c: Ctx, params: Any, conn: Connection) -> Any:
    """The certificate log's size and root, proven through the meta record."""
    out = record_proof(c, K_META)
    meta = c.d.core.ledger.get_previous(K_META)
    out["log_size"] = meta.log_size
    out["log_root"] = meta.log_root.hex()
    return out


async def log_proof(c: Ctx, params: Any, conn: Connection) -> Any:
    log = c.d.core.ledger.log
    if isinstance(params, dict) and "old_size" in params:
        old = param(params, "old_size", int)
        new = param(params, "new_size", int, default=log.size)
        if not 0 <= old <= new <= log.size:
            raise RpcError(INVALID_PARAMS, f"need 0 <= old_size <= new_size <= {log.size}")
        return {
            "old_size": old,
            "new_size": new,
            "old_root": log.root(old).hex(),
            "new_root": log.root(new).hex(),
            "proof": [x.hex() for x in log.consistency_proof(old, new)],
        }
    index = param(params, "index", int, 0)
    size = param(params, "size", int, 1, default=log.size)
    if not 0 <= index < size <= log.size:
        raise RpcError(INVALID_PARAMS, f"need 0 <= index < size <= {log.size}")
    entry = c.d.core.ledger.log_entry(index)
    return {
        "index": index,
        "size": size,
        "root": log.root(size).hex(),
        "leaf": codec.encode(entry).hex(),
        "entry": to_json(entry),
        "proof": [x.hex() for x in log.inclusion_proof(index, size)],
    }


async def endorsers_list(c: Ctx, params: Any, conn: Connection) -> Any:
    st = c.d.core.ledger
    return {"height": st.height, "endorsers": to_json(st.endorsers.endorsers)}


async def validators_at(c: Ctx, params: Any, conn: Connection) -> Any:
    """The set that signed commits at ``height``; a light client checks its
    hash against the header's validators_hash."""
    h = param(params, "height", int)
    if h < 1 or h > c.d.core.ledger.height + 1:
        raise RpcError(NOT_FOUND, f"no validator set known for height {h}")
    vals = c.d.store.valset_at(h)
    if vals is None:
        raise RpcError(NOT_FOUND, f"no validator set stored for height {h}")
    return {"height": h, "validators": [{"pubkey": pk.hex(), "power": p} for pk, p in vals]}


async def validators_list(c: Ctx, params: Any, conn: Connection) -> Any:
    st = c.d.core.ledger
    vals = to_json(st.validators.validators)
    total = sum(v.power for v in st.validators.validators)
    return {
        "height": st.height,
        "total_power": total,
        "validators": vals,
        "pending_changes": to_json(st.pending_validator_changes.changes),
    }


async def subscribe(c: Ctx, params: Any, conn: Connection) -> Any:
    topic = param(params, "topic", str)
    if topic not in SUB_TOPICS:
        raise RpcError(INVALID_PARAMS, f"topic must be one of {list(SUB_TOPICS)}")
    filt: dict[str, Any] = {}
    if isinstance(params, dict) and params.get("domain"):
        try:
            filt["domain"] = validate_domain(param(params, "domain", str))
        except DomainError as exc:
            raise RpcError(INVALID_PARAMS, f"domain: {exc}") from None
    if isinstance(params, dict) and params.get("app_id"):
        filt["app_id"] = hex_param(params, "app_id", 32).hex()
    return {"subscription": c.subs.add(conn, topic, filt), "topic": topic}


async def unsubscribe(c: Ctx, params: Any, conn: Connection) -> Any:
    sid = param(params, "subscription", int)
    return {"unsubscribed": c.subs.remove(conn, sid)}


def _tss_proof(c: Ctx, key: bytes) -> tuple[dict[str, Any], Any]:
    """A record of the threshold key with its proof (as cert_proof), and the
    record as of the proof's state; NOT_FOUND while there is none."""
    out = record_proof(c, key)
    rec = c.d.core.ledger.get_previous(key)
    return out, rec


def _pem(der: bytes, label: str = "CERTIFICATE") -> str:
    from dpkid.core.tss.x509 import pem

    return pem(der, label).decode()


async def tss_status(c: Ctx, params: Any, conn: Connection) -> Any:
    """The threshold key: committee, threshold, the DKG round, signing backlog."""
    st = c.d.core.ledger
    key = st.get(tss_rules.K_TSS_KEY)
    rnd = st.get(tss_rules.K_TSS_ROUND)
    q = st.get(tss_rules.K_TSS_QUEUE)
    root = st.get(tss_rules.K_TSS_ROOT)
    crl = st.get(tss_rules.K_TSS_CRL)
    signed = 0
    if q is not None:
        # Requests below next_start that are not in flight are done; count the
        # in-flight ones to report the backlog.
        signed = q.next_start - 1 - len(q.active)
    return {
        "height": st.height,
        "key": None
        if key is None
        else {
            "epoch": key.epoch,
            "group_pk": key.group_pk.hex(),
            "threshold": key.threshold,
            "total_shares": len(key.verification_shares),
            "members": [
                {"address": m.address.hex(), "first_index": m.first_index, "count": m.count}
                for m in key.members
            ],
            "height": key.height,
        },
        "round": None
        if rnd is None
        else {
            "round": rnd.round,
            "kind": rnd.kind,
            "phase": rnd.phase,
            "phase_end": rnd.phase_end,
            "dealt": len(rnd.dealt),
            "dealers": len(rnd.dealers),
            "acked": len(rnd.acked),
            "complaints": len(rnd.complaints),
            "disqualified": [d.hex() for d in rnd.disqualified],
            "note": rnd.note,
        },
        "root_signed": bool(root is not None and root.der),
        "root_hash": root.cert_hash.hex() if root is not None and root.der else None,
        "requests": 0 if q is None else q.next_seq - 1,
        "in_flight": 0 if q is None else len(q.active),
        "unstarted": 0 if q is None else q.next_seq - q.next_start,
        "done": max(0, signed),
        "crl_number": crl.number if crl is not None else 0,
    }


async def root_get(c: Ctx, params: Any, conn: Connection) -> Any:
    """The root certificate, threshold-signed by the validators, with its proof."""
    out, root = _tss_proof(c, tss_rules.K_TSS_ROOT)
    if root is None or not root.der:
        raise RpcError(NOT_READY, "the root is not signed yet: the validators' key is being made")
    out.update(
        {
            "root_pem": _pem(root.der),
            "root_der": root.der.hex(),
            "root_hash": root.cert_hash.hex(),
            "group_pk": root.group_pk.hex(),
        }
    )
    return out


async def crl_get(c: Ctx, params: Any, conn: Connection) -> Any:
    """The newest threshold-signed CRL (RFC 5280), with its proof."""
    out, crl = _tss_proof(c, tss_rules.K_TSS_CRL)
    if crl is None:
        raise RpcError(NOT_READY, "no CRL is signed yet")
    out.update(
        {
            "crl_pem": _pem(crl.der, "X509 CRL"),
            "crl_der": crl.der.hex(),
            "number": crl.number,
            "this_update_s": crl.this_update_s,
            "next_update_s": crl.next_update_s,
        }
    )
    return out


async def cert_x509(c: Ctx, params: Any, conn: Connection) -> Any:
    """The threshold-signed X.509 of a ledger certificate and the root, with the
    proof of the signed record."""
    cert_id = hex_param(params, "cert_id", 32)
    if c.d.core.ledger.certificate(cert_id) is None:
        raise RpcError(NOT_FOUND, "no such certificate", {"cert_id": cert_id.hex()})
    out, tc = _tss_proof(c, tss_rules.key_x509(cert_id))
    root = c.d.core.ledger.get(tss_rules.K_TSS_ROOT)
    if tc is None or not tc.der or root is None or not root.der:
        raise RpcError(
            NOT_READY, "not signed yet: the validators sign within a few blocks of issuance"
        )
    leaf = _pem(tc.der)
    root_pem = _pem(root.der)
    out.update(
        {
            "cert_id": cert_id.hex(),
            "version": tc.signed_version,
            "newest_version": tc.version,
            "leaf_pem": leaf,
            "leaf_der": tc.der.hex(),
            "root_pem": root_pem,
            "chain_pem": leaf + root_pem,
        }
    )
    return out


async def authz_get(c: Ctx, params: Any, conn: Connection) -> Any:
    """A domain authorization (SPEC §7.9): its status now, each validator's
    latest check with its ACME problem type and reason, and the challenge to
    publish."""
    from dpkid.core.challenges import challenge_for_authz
    from dpkid.core.state.authz import authz_status, key_authz

    aid = hex_param(params, "authz_id", 32)
    st = c.d.core.ledger
    a = st.get(key_authz(aid))
    if a is None:
        raise RpcError(NOT_FOUND, "no such authorization", {"authz_id": aid.hex()})
    v = to_json(a)
    v["status_at_head"] = authz_status(a, st.time_ms)
    v["challenge"] = challenge_for_authz(a).as_json()
    return {"height": st.height, "time_ms": st.time_ms, "authorization": v}


async def grant_get(c: Ctx, params: Any, conn: Connection) -> Any:
    """A delegation grant (SPEC §7.10): owner, delegate, spend limit and what
    is spent, and its status now."""
    from dpkid.core.state.grants import grant_status, key_grant

    gid = hex_param(params, "grant_id", 32)
    st = c.d.core.ledger
    g = st.get(key_grant(gid))
    if g is None:
        raise RpcError(NOT_FOUND, "no such grant", {"grant_id": gid.hex()})
    v = to_json(g)
    v["status_at_head"] = grant_status(g, st.time_ms)
    return {"height": st.height, "time_ms": st.time_ms, "grant": v}


# Method name -> handler (RPC.md §7; tests/test_rpc_doc.py reads this table).
METHODS: dict[str, Method] = {
    "status": status,
    "block_get": block_get,
    "headers_get": headers_get,
    "tx_submit": tx_submit,
    "tx_get": tx_get,
    "account_get": account_get,
    "cert_get": cert_get,
    "certs_by_domain": certs_by_domain,
    "application_get": application_get,
    "cert_proof": cert_proof,
    "log_checkpoint": log_checkpoint,
    "log_proof": log_proof,
    "endorsers_list": endorsers_list,
    "validators_list": validators_list,
    "validators_at": validators_at,
    "subscribe": subscribe,
    "unsubscribe": unsubscribe,
    "tss_status": tss_status,
    "root_get": root_get,
    "crl_get": crl_get,
    "cert_x509": cert_x509,
    "authz_get": authz_get,
    "grant_get": grant_get,
}


def build_rpc(d: NodeDaemon) -> RpcServer:
    subs = Subscriptions(d)
    d.block_listeners.append(subs.on_block)
    c = Ctx(d, subs)
    methods: dict[str, Handler] = {name: partial(fn, c) for name, fn in METHODS.items()}
    server = RpcServer(methods, log=lambda ev, **kw: d.log.warning(ev, **kw))
    server.on_disconnect.append(subs.drop_conn)
    return server

"""The node's JSON-RPC methods (protocol/RPC.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dpkid.jsonview import to_json
from dpkid.runtime.rpc import (
    APP_ERROR_BASE,
    INVALID_PARAMS,
    Connection,
    Handler,
    RpcError,
    RpcServer,
    hex_param,
    param,
)
from dpkid.state.codes import Code
from dpkid.types import MAX_TX_BYTES

if TYPE_CHECKING:
    from dpkid.runtime.daemon import NodeDaemon


def app_error(code: Code, message: str) -> RpcError:
    return RpcError(APP_ERROR_BASE - int(code), message, {"code": int(code), "name": code.name})


def build_rpc(d: NodeDaemon) -> RpcServer:
    async def status(params: Any, conn: Connection) -> Any:
        return d.status()

    async def block_get(params: Any, conn: Connection) -> Any:
        h = param(params, "height", int, 0, default=d.core.state.height)
        if h < 1 or h > d.core.state.height:
            raise RpcError(
                INVALID_PARAMS, f"no block at height {h} (latest is {d.core.state.height})"
            )
        got = d.store.block(h)
        if got is None:
            raise RpcError(INVALID_PARAMS, f"block {h} is not stored")
        block, commit = got
        return {
            "height": h,
            "hash": block.hash.hex(),
            "header": to_json(block.header),
            "txs": [t.hex() for t in block.txs],
            "evidence": to_json(block.evidence),
            "last_commit": to_json(block.last_commit),
            "commit": to_json(commit),
        }

    async def tx_submit(params: Any, conn: Connection) -> Any:
        raw = hex_param(params, "tx", index=0, max_len=MAX_TX_BYTES + 1)
        code, why, h = await d.submit_tx(raw)
        if code != Code.OK:
            raise app_error(code, why)
        return {"hash": h.hex(), "status": why}

    async def tx_get(params: Any, conn: Connection) -> Any:
        h = hex_param(params, "hash", 32)
        loc = d.store.tx_location(h)
        if loc is None:
            pending = h in d.core.mempool.by_hash
            return {"hash": h.hex(), "committed": False, "pending": pending}
        height, idx, receipt = loc
        return {
            "hash": h.hex(),
            "committed": True,
            "height": height,
            "index": idx,
            "code": receipt.code,
            "code_name": Code(receipt.code).name
            if receipt.code in Code._value2member_map_
            else str(receipt.code),
            "receipt": to_json(receipt),
        }

    methods: dict[str, Handler] = {
        "status": status,
        "block_get": block_get,
        "tx_submit": tx_submit,
        "tx_get": tx_get,
    }
    return RpcServer(methods, log=lambda ev, **kw: d.log.warning(ev, **kw))

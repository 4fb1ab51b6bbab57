"""protocol/RPC.md stays in step with the RPC methods the node registers.

Fast and static: the method table is read from the source of
``dpkid/daemon/rpc_methods.py`` with ``ast`` (no node is started), and
RPC.md is parsed as text. Checked:

* every method registered in ``build_rpc`` has a ``### `name` `` section under
  "## 7. Methods", and every such section names a registered method;
* each section mentions (in backticks) every parameter its handler reads with
  ``param(...)`` / ``hex_param(...)``, and shows at least one example request;
* every ``json request`` example is valid JSON-RPC 2.0 naming a real method;
* every ``json ...`` block is valid JSON, and response blocks are well-formed;
* every rejection code of ``dpkid/core/state/codes.py`` appears in the application
  error table with its RPC code ``-33000 - code``; the limits match rpc.py.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RPC_MD = ROOT / "protocol" / "RPC.md"
RPC_METHODS_PY = ROOT / "dpkid" / "daemon" / "rpc_methods.py"
RPC_PY = ROOT / "dpkid" / "daemon" / "rpc.py"
CODES_PY = ROOT / "dpkid" / "core" / "state" / "codes.py"

METHODS_HEADING = re.compile(r"^## 7\. Methods\s*$")
METHOD_HEADING = re.compile(r"^### `([A-Za-z_][A-Za-z0-9_]*)`\s*$")
FENCE = re.compile(r"^```(.*)$")
PARAM_HELPERS = frozenset({"param", "hex_param"})


# ------------------------------------------------------------------ the source side


def _methods_dict(tree: ast.Module) -> ast.Dict:
    """The module-level ``METHODS = {...}`` table of rpc_methods.py."""
    for node in tree.body:
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        if isinstance(target, ast.Name) and target.id == "METHODS" and isinstance(value, ast.Dict):
            return value
    raise AssertionError("no module-level `METHODS = {...}` in rpc_methods.py")


def registered_methods() -> dict[str, str]:
    """Method name -> name of its handler function, from the METHODS table."""
    table = _methods_dict(ast.parse(RPC_METHODS_PY.read_text(encoding="utf-8")))
    out: dict[str, str] = {}
    for key, value in zip(table.keys, table.values, strict=True):
        assert isinstance(key, ast.Constant) and isinstance(key.value, str), "non-literal key"
        assert isinstance(value, ast.Name), f"handler of {key.value!r} is not a plain name"
        out[key.value] = value.id
    return out


def handler_params() -> dict[str, set[str]]:
    """Handler function name -> the parameter names it reads via param()/hex_param().
    Handlers are top-level functions; helpers they call are counted for them too."""
    tree = ast.parse(RPC_METHODS_PY.read_text(encoding="utf-8"))
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef)}

    def reads(node: ast.AST, seen: set[str]) -> set[str]:
        names: set[str] = set()
        for call in ast.walk(node):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
                continue
            f = call.func.id
            if f in PARAM_HELPERS and len(call.args) >= 2:
                arg = call.args[1]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
            elif f in funcs and f not in seen:
                names |= reads(funcs[f], seen | {f})
        return names

    return {name: reads(fn, {name}) for name, fn in funcs.items()}


def rejection_codes() -> dict[str, int]:
    """Code name -> value, from the ``class Code(IntEnum)`` body in codes.py."""
    tree = ast.parse(CODES_PY.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Code":
            out: dict[str, int] = {}
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and len(stmt.targets) == 1
                    and isinstance(stmt.targets[0], ast.Name)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, int)
                ):
                    out[stmt.targets[0].id] = stmt.value.value
            return out
    raise AssertionError("class Code not found in codes.py")


def _int_value(node: ast.expr) -> int | None:
    """The value of an integer literal expression (``1 << 20``, ``-32000``, ``8 * 1024``)."""
    if isinstance(node, ast.Constant):
        v = node.value
        return v if isinstance(v, int) and not isinstance(v, bool) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _int_value(node.operand)
        return None if v is None else -v
    if isinstance(node, ast.BinOp):
        a, b = _int_value(node.left), _int_value(node.right)
        if a is None or b is None:
            return None
        if isinstance(node.op, ast.LShift):
            return a << b
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
    return None


def int_constants(path: Path) -> dict[str, int]:
    """Module-level ``NAME: Final = <integer literal expression>`` values."""
    out: dict[str, int] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            value = _int_value(node.value)
            if value is not None:
                out[node.target.id] = value
    return out


# ------------------------------------------------------------------ the document side


@dataclass(frozen=True)
class Block:
    info: str  # the fence's info string, e.g. "json request"
    text: str
    line: int  # 1-based line of the opening fence


def doc_lines() -> list[str]:
    return RPC_MD.read_text(encoding="utf-8").splitlines()


def code_blocks(lines: list[str]) -> list[Block]:
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start, info = i, m.group(1).strip()
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"RPC.md:{start + 1}: unterminated code block"
        blocks.append(Block(info, "\n".join(body), start + 1))
        i += 1
    return blocks


def method_sections(lines: list[str]) -> dict[str, list[str]]:
    """``### `name` `` sections inside "## 7. Methods", each up to the next heading."""
    start = next((i for i, ln in enumerate(lines) if METHODS_HEADING.match(ln)), None)
    assert start is not None, "RPC.md has no '## 7. Methods' section"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    sections: dict[str, list[str]] = {}
    current: str | None = None
    in_fence = False
    for ln in lines[start + 1 : end]:
        if ln.startswith("```"):
            in_fence = not in_fence
        m = None if in_fence else METHOD_HEADING.match(ln)
        if m is not None:
            current = m.group(1)
            assert current not in sections, f"method {current!r} has two sections"
            sections[current] = []
        elif current is not None:
            sections[current].append(ln)
    return sections


def requests_in(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def check_request(req: Any, methods: set[str], where: str) -> str:
    """Assert ``req`` is a valid JSON-RPC 2.0 request (or notification); return its method."""
    assert isinstance(req, dict), f"{where}: a request must be a JSON object"
    assert req.get("jsonrpc") == "2.0", f"{where}: jsonrpc must be '2.0'"
    method = req.get("method")
    assert isinstance(method, str), f"{where}: method must be a string"
    assert method in methods, f"{where}: {method!r} is not a registered method"
    if "id" in req:
        rid = req["id"]
        assert rid is None or (isinstance(rid, str | int) and not isinstance(rid, bool)), (
            f"{where}: id must be a string, an integer or null"
        )
    if "params" in req:
        assert isinstance(req["params"], dict | list), f"{where}: params must be object or array"
    extra = set(req) - {"jsonrpc", "method", "params", "id"}
    assert not extra, f"{where}: unexpected members {sorted(extra)}"
    return method


def check_response(resp: Any, where: str) -> None:
    assert isinstance(resp, dict), f"{where}: a response must be a JSON object"
    assert resp.get("jsonrpc") == "2.0", f"{where}: jsonrpc must be '2.0'"
    assert "id" in resp, f"{where}: a response has an id"
    assert ("result" in resp) != ("error" in resp), f"{where}: exactly one of result / error"
    if "error" in resp:
        err = resp["error"]
        assert isinstance(err, dict), f"{where}: error must be an object"
        assert isinstance(err.get("code"), int), f"{where}: error.code must be an integer"
        assert isinstance(err.get("message"), str), f"{where}: error.message must be a string"


# ------------------------------------------------------------------ tests


def test_every_registered_method_has_a_section() -> None:
    methods = set(registered_methods())
    assert len(methods) >= 17
    documented = set(method_sections(doc_lines()))
    assert methods - documented == set(), f"methods without a section: {methods - documented}"
    assert documented - methods == set(), f"sections for unknown methods: {documented - methods}"


def test_sections_name_their_parameters_and_show_a_request() -> None:
    handlers = registered_methods()
    params = handler_params()
    sections = method_sections(doc_lines())
    blocks = code_blocks(doc_lines())
    requested: set[str] = set()
    for b in blocks:
        if b.info == "json request":
            for req in requests_in(json.loads(b.text)):
                if isinstance(req, dict) and isinstance(req.get("method"), str):
                    requested.add(req["method"])
    for method, handler in handlers.items():
        assert method in sections, f"method {method!r} has no section"
        text = "\n".join(sections[method])
        for name in sorted(params.get(handler, set())):
            assert f"`{name}`" in text, f"section of {method!r} does not mention `{name}`"
        assert method in requested, f"no example request for {method!r}"


def test_example_requests_are_valid_json_rpc() -> None:
    methods = set(registered_methods())
    blocks = [b for b in code_blocks(doc_lines()) if b.info == "json request"]
    assert len(blocks) >= len(methods)
    for b in blocks:
        where = f"RPC.md:{b.line}"
        value = json.loads(b.text)
        reqs = requests_in(value)
        assert reqs, f"{where}: empty batch"
        for req in reqs:
            check_request(req, methods, where)


def test_json_blocks_parse_and_responses_are_well_formed() -> None:
    kinds = {"json request", "json response", "json notification"}
    for b in code_blocks(doc_lines()):
        if not b.info.startswith("json"):
            continue
        where = f"RPC.md:{b.line}"
        assert b.info in kinds, f"{where}: unknown json block kind {b.info!r}"
        assert "\n" not in b.text.strip(), f"{where}: an example must be one line (NDJSON)"
        value = json.loads(b.text)
        if b.info == "json response":
            for resp in requests_in(value):
                check_response(resp, where)
        elif b.info == "json notification":
            assert isinstance(value, dict), where
            assert value.get("jsonrpc") == "2.0" and "id" not in value, where
            assert value.get("method") in {"subscription", "subscription_dropped"}, where


def test_application_error_table_is_complete() -> None:
    text = RPC_MD.read_text(encoding="utf-8")
    codes = rejection_codes()
    assert codes.get("OK") == 0 and len(codes) > 10
    base = int_constants(RPC_PY)["APP_ERROR_BASE"]
    for name, value in codes.items():
        if value == 0:
            continue
        row = re.compile(rf"^\|\s*`{base - value}`\s*\|\s*{value}\s*\|\s*`{name}`\s*\|", re.M)
        assert row.search(text), f"no application-error row for {name} ({base - value})"


def test_limits_and_error_codes_match_the_code() -> None:
    text = RPC_MD.read_text(encoding="utf-8")
    rpc = int_constants(RPC_PY)
    methods = int_constants(RPC_METHODS_PY)
    for name in (
        "MAX_LINE_BYTES",
        "MAX_CONNECTIONS",
        "MAX_BATCH",
        "MAX_NOTIFY_QUEUE",
        "MAX_JSON_DEPTH",
        "RPC_IDLE_TIMEOUT_MS",
    ):
        row = re.compile(rf"^\|\s*`{name}`\s*\|\s*{rpc[name]}\b", re.M)
        assert row.search(text), f"limit {name} = {rpc[name]} is not in the table"
    for name in ("MAX_SUBSCRIPTIONS_PER_CONN", "MAX_LIST"):
        row = re.compile(rf"^\|\s*`{name}`\s*\|\s*{methods[name]}\b", re.M)
        assert row.search(text), f"limit {name} = {methods[name]} is not in the table"
    codes = [rpc[n] for n in ("PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND")]
    codes += [rpc[n] for n in ("INVALID_PARAMS", "INTERNAL_ERROR", "SERVER_BUSY")]
    codes += [methods["NOT_FOUND"], methods["NOT_READY"], -32001]
    for code in codes:
        assert re.search(rf"^\|\s*`{code}`\s*\|", text, re.M), f"error code {code} not listed"

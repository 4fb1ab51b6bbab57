"""The pure core does no I/O, reads no clock and uses no global randomness.

Walks the import statements of the core modules, following imports inside
the dpkid package, and fails if any reaches a forbidden module. Third-party
libraries (msgspec, PyNaCl, cryptography, idna) are pure computation here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dpkid"

CORE_ROOTS = [
    "dpkid.codec",
    "dpkid.crypto",
    "dpkid.types",
    "dpkid.domains",
    "dpkid.keys",
    "dpkid.proofs",
    "dpkid.state.machine",
    "dpkid.state.smt",
    "dpkid.state.ctlog",
    "dpkid.state.codes",
    "dpkid.state.devchain",
    "dpkid.consensus",
    "dpkid.consensus.messages",
    "dpkid.consensus.valset",
    "dpkid.consensus.engine",
    "dpkid.node",
    "dpkid.challenges",
    "dpkid.lightclient",
    "dpkid.jsonview",
    "dpkid.vectors",
    "dpkid.sim",
    "dpkid.sim.settings",
    "dpkid.sim.runner",
]

FORBIDDEN = {
    "time",
    "os",
    "socket",
    "random",
    "trio",
    "libp2p",
    "asyncio",
    "threading",
    "subprocess",
    "datetime",
    "sqlite3",
    "selectors",
    "signal",
    "secrets",
    "uuid",
    "multiprocessing",
    "urllib",
    "http",
    "ssl",
    "shutil",
    "tempfile",
    "pathlib",
    "io",
}
# An injected, seeded generator is how randomness may enter the core.
ALLOWED_FROM = {("random", "Random")}


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for cand in (PKG.parent / rel.with_suffix(".py"), PKG.parent / rel / "__init__.py"):
        if cand.exists():
            return cand
    return None


def _imports(path: Path) -> list[tuple[str, str | None]]:
    tree = ast.parse(path.read_text())
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, a.name) for a in node.names]
    return out


def test_core_imports_nothing_impure() -> None:
    seen: set[str] = set()
    todo = list(CORE_ROOTS)
    problems: list[str] = []
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = _module_file(mod)
        assert path is not None, f"core module {mod} not found"
        for target, name in _imports(path):
            top = target.split(".")[0]
            if top in FORBIDDEN and (target, name) not in ALLOWED_FROM:
                problems.append(f"{mod} imports {target}{'.' + name if name else ''}")
            if top == "dpkid":
                sub = f"{target}.{name}" if name and _module_file(f"{target}.{name}") else target
                if sub not in CORE_ROOTS and sub not in ("dpkid",):
                    problems.append(f"{mod} reaches non-core module {sub}")
                todo.append(sub)
    assert not problems, "\n".join(problems)
    assert "dpkid.state.machine" in seen


def test_walker_catches_a_clock_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom os import getpid\nfrom random import Random\n")
    found = _imports(bad)
    flagged = [t for t, n in found if t.split(".")[0] in FORBIDDEN and (t, n) not in ALLOWED_FROM]
    assert flagged == ["time", "os"]

"""The layers are folders, and the folders keep their rules.

* ``dpkid/core/`` is pure: it imports nothing outside ``dpkid/core/`` and no
  module that does I/O, reads a clock or draws global randomness.
* ``dpkid/sim/`` is deterministic: it runs the core on a virtual clock and a
  seeded generator, so neither it nor anything it reaches may import those.
* No two packages import each other, directly or through others.

Third-party libraries (msgspec, PyNaCl, cryptography, idna) are pure
computation here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dpkid"

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
    "structlog",
}
# An injected, seeded generator is how randomness may enter the core.
# cryptography's X.509 builders take datetimes: dpkid/core/tss/x509.py turns
# ledger seconds into them and never reads the clock (checked below).
ALLOWED_FROM = {("random", "Random"), ("datetime", "datetime"), ("datetime", "UTC")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for cand in (PKG.parent / rel.with_suffix(".py"), PKG.parent / rel / "__init__.py"):
        if cand.exists():
            return cand
    return None


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """Every import in the file, including those inside functions."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, a.name) for a in node.names]
    return out


def _dpkid_target(target: str, name: str | None) -> str:
    sub = f"{target}.{name}" if name else target
    return sub if _module_file(sub) else target


def _impure(mod: str, imports: list[tuple[str, str | None]]) -> list[str]:
    return [
        f"{mod} imports {t}{'.' + n if n else ''}"
        for t, n in imports
        if t.split(".")[0] in FORBIDDEN and (t, n) not in ALLOWED_FROM
    ]


def _modules(folder: str) -> list[str]:
    return sorted(_module_name(p) for p in (PKG / folder).rglob("*.py"))


def test_core_imports_only_core_and_nothing_impure() -> None:
    problems: list[str] = []
    mods = _modules("core")
    assert "dpkid.core.state.machine" in mods and "dpkid.core.consensus.engine" in mods
    for mod in mods:
        path = _module_file(mod)
        assert path is not None
        imps = _imports(path)
        problems += _impure(mod, imps)
        for t, n in imps:
            if t.split(".")[0] == "dpkid" and not _dpkid_target(t, n).startswith("dpkid.core"):
                problems.append(f"{mod} reaches {_dpkid_target(t, n)}, outside dpkid/core/")
    assert not problems, "\n".join(problems)


def test_core_never_reads_the_clock_through_datetime() -> None:
    """The datetime import allowed above is for conversions only."""
    calls = {"now", "utcnow", "today", "fromtimestamp_now"}
    problems = []
    for mod in _modules("core"):
        path = _module_file(mod)
        assert path is not None
        if not any(t == "datetime" for t, _ in _imports(path)):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in calls:
                problems.append(f"{mod}: .{node.attr}")
    assert not problems, problems


def test_simulator_reaches_nothing_impure() -> None:
    seen: set[str] = set()
    todo = _modules("sim")
    problems: list[str] = []
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = _module_file(mod)
        assert path is not None, mod
        imps = _imports(path)
        problems += _impure(mod, imps)
        todo += [_dpkid_target(t, n) for t, n in imps if t.split(".")[0] == "dpkid"]
    assert not problems, "\n".join(problems)
    assert "dpkid.core.node.core" in seen


def _package_of(mod: str) -> str:
    """dpkid.core.consensus.engine -> dpkid.core.consensus; a module directly in
    dpkid.core belongs to dpkid.core."""
    path = _module_file(mod)
    assert path is not None, mod
    return mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        mod = _module_name(path)
        pkg = _package_of(mod)
        deps = graph.setdefault(pkg, set())
        for t, n in _imports(path):
            if t.split(".")[0] == "dpkid":
                dep = _package_of(_dpkid_target(t, n))
                if dep != pkg and dep != "dpkid":
                    deps.add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycles_between_packages() -> None:
    graph = package_graph()
    assert {"dpkid.core", "dpkid.core.consensus", "dpkid.daemon", "dpkid.cli"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_walker_catches_a_clock_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom os import getpid\nfrom random import Random\n")
    assert [p.split(" imports ")[1] for p in _impure("bad", _imports(bad))] == ["time", "os.getpid"]

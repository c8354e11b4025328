"""The import contract: three sides, imports in one direction, no circles, small modules.

Read from the source with ``ast`` (nothing is imported), so a new import that breaks the layout
fails here before anyone has to notice it in review. docs/architecture.md draws the same picture.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400

# Which rooms a room may import from (itself always). The gateway's rooms are layered:
# config below runtime below control; tools and the command line sit on top.
ALLOWED: dict[str, frozenset[str]] = {
    "protocol": frozenset(),
    "codecs": frozenset({"protocol", "fastpath"}),
    "fastpath": frozenset({"protocol"}),
    "drivers": frozenset({"protocol"}),
    "config": frozenset({"protocol", "drivers"}),
    "runtime": frozenset({"protocol", "drivers", "codecs", "config"}),
    "control": frozenset({"protocol", "drivers", "codecs", "config", "runtime", "update"}),
    # software updates: the supervisor must run with the standard library and protocol only
    "update": frozenset({"protocol"}),
    "tools": frozenset({"protocol", "drivers", "codecs", "config", "runtime", "control",
                        "update"}),
    "root": frozenset(),
    "gateway": frozenset({"protocol", "drivers", "codecs", "config", "runtime", "control",
                          "tools", "update"}),
    "fleet": frozenset({"protocol", "codecs", "fastpath"}),
}
GATEWAY_ROOMS = ("config", "runtime", "control", "tools", "update")
# Third-party packages that belong to one side only.
ONLY_IN: dict[str, frozenset[str]] = {
    "psycopg": frozenset({"fleet"}),
    "psycopg2": frozenset({"fleet"}),
    "asyncpg": frozenset({"fleet"}),
    "sqlalchemy": frozenset({"fleet"}),
    # the web console's stack (fleet/console)
    "starlette": frozenset({"fleet"}),
    "uvicorn": frozenset({"fleet"}),
    "jinja2": frozenset({"fleet"}),
    "pymodbus": frozenset({"drivers", "tools"}),
    "serial": frozenset({"drivers", "tools"}),
}
# The test harness, the HIL bench and the benchmarks are not installed: the product never
# imports them (a module moved out of the product must not be reached back into).
NOT_INSTALLED = frozenset({"tests", "hil_tests", "bench", "scripts", "conftest"})
# The codec is decoded by consumers that have only the standard library (msgpack is imported
# lazily, for the old version 1 batches).
CODEC_THIRD_PARTY = frozenset({"msgpack"})


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module


def _package_dirs() -> dict[str, Path]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {pkg: ROOT / folder
            for pkg, folder in cfg["tool"]["setuptools"]["package-dir"].items()}


def product_modules() -> list[Module]:
    """Every installed Python module of the product, named as it is imported."""
    dirs = _package_dirs()
    mapped = sorted(dirs.items(), key=lambda kv: -len(kv[0]))
    seen: dict[Path, Module] = {}
    for pkg, folder in mapped:
        for path in sorted(folder.rglob("*.py")):
            if path in seen:
                continue
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            # a file inside a folder mapped to a longer package name belongs to that package
            inner = next((p for p, f in mapped if p != pkg and path.is_relative_to(f)
                          and len(p) > len(pkg)), None)
            if inner is not None:
                continue
            name = ".".join([pkg, *parts])
            seen[path] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return sorted(seen.values(), key=lambda m: m.name)


def room(module: str) -> str:
    """The room of a module name: protocol, codecs, drivers, a gateway room, or fleet."""
    parts = module.split(".")
    if parts[0] != "edge_agent":
        return ""
    if len(parts) == 1:
        return "root"  # only the version: every module imports it on the way to its own
    second = parts[1]
    if second in ("protocol", "codecs", "fastpath", "drivers", "fleet", *GATEWAY_ROOMS):
        return second
    return "gateway"  # edge_agent.cli, edge_agent.__main__


def imports(mod: Module) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in the module, lazy ones included."""
    package = mod.name if mod.path.name == "__init__.py" else mod.name.rpartition(".")[0]
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:  # "from pkg import module" imports pkg.module
                yield f"{target}.{alias.name}", node.lineno


MODULES = product_modules()
NAMES = {m.name for m in MODULES}


def _resolve(target: str) -> str | None:
    """The product module an import names (a name imported from a module resolves to it)."""
    while target and target not in NAMES:
        target = target.rpartition(".")[0]
    return target or None


def test_the_root_package_holds_only_the_version() -> None:
    root = next(m for m in MODULES if m.name == "edge_agent")
    assert not list(imports(root)), "edge_agent/__init__.py must import nothing"


def test_the_product_is_found() -> None:
    rooms = {room(m.name) for m in MODULES}
    assert rooms >= {"protocol", "codecs", "drivers", "fleet", *GATEWAY_ROOMS}, rooms


def test_imports_go_one_way() -> None:
    wrong = []
    for mod in MODULES:
        mine = room(mod.name)
        for target, line in imports(mod):
            resolved = _resolve(target)
            if resolved is None:
                continue
            theirs = room(resolved)
            if theirs not in (mine, "root") and theirs not in ALLOWED[mine]:
                wrong.append(f"{mod.path.relative_to(ROOT)}:{line}: {mine} imports {resolved} "
                             f"({theirs})")
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_third_party_packages_stay_on_their_side() -> None:
    wrong = []
    for mod in MODULES:
        mine = room(mod.name)
        for target, line in imports(mod):
            top = target.split(".")[0]
            if top in ONLY_IN and mine not in ONLY_IN[top]:
                wrong.append(f"{mod.path.relative_to(ROOT)}:{line}: {mine} imports {top}")
            if top in NOT_INSTALLED:
                wrong.append(f"{mod.path.relative_to(ROOT)}:{line}: {mine} imports {target}, "
                             "which is not installed with the product")
            if mine in ("codecs", "protocol") and mod.name.startswith("edge_agent.codecs") \
                    and top not in ("edge_agent", "__future__") \
                    and top not in CODEC_THIRD_PARTY and not _stdlib(top):
                wrong.append(f"{mod.path.relative_to(ROOT)}:{line}: the codec imports {top}")
    assert not wrong, "\n".join(wrong)


def _stdlib(name: str) -> bool:
    import sys

    return name in sys.stdlib_module_names


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {m.name: set() for m in MODULES}
    for mod in MODULES:
        for target, _ in imports(mod):
            resolved = _resolve(target)
            # a package's __init__ is imported on the way to its modules: not an edge of its own
            if resolved and resolved != mod.name and not mod.name.startswith(resolved + "."):
                graph[mod.name].add(resolved)
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("mod", MODULES, ids=lambda m: m.name)
def test_every_module_says_its_job_and_stays_small(mod: Module) -> None:
    doc = ast.get_docstring(mod.tree)
    assert doc and doc.strip(), f"{mod.path.relative_to(ROOT)} has no module docstring"
    lines = len(mod.path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, (f"{mod.path.relative_to(ROOT)} has {lines} lines; "
                                       f"split it by job (limit {MAX_MODULE_LINES})")


def test_the_contract_catches_a_wrong_import(tmp_path: Path) -> None:
    # The checker itself must be able to fail: a gateway module importing the fleet.
    bad = Module("edge_agent.runtime.bad", tmp_path / "bad.py",
                 ast.parse("from edge_agent.fleet import registry\n"))
    targets = [_resolve(t) for t, _ in imports(bad)]
    assert "edge_agent.fleet.registry" in targets
    assert room("edge_agent.fleet.registry") not in ALLOWED["runtime"]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    harness = Module("edge_agent.fleet.bad", tmp_path / "bad.py",
                     ast.parse("from tests.support.fleetkit import Pki\n"))
    assert {t.split(".")[0] for t, _ in imports(harness)} & NOT_INSTALLED

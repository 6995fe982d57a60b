"""The package's layering, read from the source: imports point downward only.

STYLE.md's shape: adapters (cli/, server/) over one service over policy,
audit, crypto and the vault store. Function-level (lazy) imports count too: a
cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kmscli

ROOT = Path(kmscli.__file__).parent
#: What may use a terminal or network framework: the entry point, the adapters, the agent that runs the CLI,
#: and the client of a remote KMS (botocore), which the CLI chooses instead of the service.
ADAPTERS = ("kmscli.__main__", "kmscli.cli", "kmscli.server", "kmscli.agent", "kmscli.remote")
FRAMEWORKS = ("typer", "click", "rich", "uvicorn", "starlette", "aiohttp", "hypercorn", "h11", "httptools", "botocore")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it, as absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from . import audit` imports the submodule kmscli.audit.
            found.update(f"{target}.{a.name}" for a in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read() -> None:
    g = graph()
    assert "kmscli.service._core" in g["kmscli.service.keys"]
    assert "kmscli.cli.pipes" in g["kmscli.cli.output"]


def test_no_import_cycles() -> None:
    """Not even through lazy imports: cli.app and cli.main once imported each other."""
    assert cycles(graph()) == []


def test_the_core_imports_no_framework() -> None:
    """Below the adapters nothing imports Typer, Rich, an HTTP framework or botocore."""
    offenders = []
    for p in ROOT.rglob("*.py"):
        name = module_name(p)
        if name.startswith(ADAPTERS):
            continue
        bad = sorted(i for i in imports_of(p) if i.split(".")[0] in FRAMEWORKS)
        if bad:
            offenders.append(f"{name}: {bad}")
    assert offenders == []


def test_the_service_knows_no_adapter() -> None:
    offenders = [f"{m} -> {i}" for m, deps in graph().items() if not m.startswith(ADAPTERS)
                 for i in deps if i.startswith(ADAPTERS)]
    assert offenders == []

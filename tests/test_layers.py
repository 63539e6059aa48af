"""The layering of docs/architecture.md, read from the import graph of src/apprentice.

Every ``apprentice`` import counts, at module level or inside a function (a lazy import is
still a dependency); only ``if TYPE_CHECKING:`` blocks are left out. A layer may import its
own modules and the layers below it, and no modules may import each other in a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "apprentice"

# Lowest first. Each top-level module or package of apprentice belongs to one layer.
LAYERS = [
    (
        "contracts",
        {
            "adapter",
            "config",
            "example",
            "files",
            "fingerprint",
            "formats",
            "gguf",
            "metric",
            "model_context",
            "progress",
            "sandbox",
            "signature",
            "student_loading",
        },
    ),
    ("lm", {"lm"}),
    ("programs", {"module", "predict", "retrieve", "settings", "tracing"}),
    # serving binds programs to LMs and adapters; it needs nothing from data or training
    ("serving", {"serve"}),
    ("traces and data", {"traces", "dataset"}),
    ("training", {"train"}),
    ("evaluation", {"evaluate"}),
    (
        "pipeline",
        {
            "optimize",
            "recipe",
            "recipe_optimize",
            "recipe_sections",
            "run",
            "pipeline",
            "student_prompt",
            "eval_file",
            "estimate",
            "cli",
        },
    ),
]
RANK = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(sub) for sub in ast.walk(node))
    return skipped


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        found = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _part(module: str) -> str | None:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else None


def test_every_module_has_a_layer():
    parts = {_part(m) for m in import_graph()} - {None, "__main__"}
    assert parts <= set(RANK), f"put {sorted(parts - set(RANK))} in a layer of LAYERS"


def test_no_import_points_up_a_layer():
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if _part(source) in RANK
        and _part(target) in RANK
        and RANK[_part(target)] > RANK[_part(source)]
    )
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_a_cycle_and_an_upward_import():
    # The test of the tests: a graph with both defects is caught.
    graph = {"apprentice.lm.a": {"apprentice.train.b"}, "apprentice.train.b": {"apprentice.lm.a"}}
    assert _cycles(graph) == [["apprentice.lm.a", "apprentice.train.b"]]
    assert RANK[_part("apprentice.train.b")] > RANK[_part("apprentice.lm.a")]

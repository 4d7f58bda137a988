"""The package tree is the architecture (docs/architecture.md): imports run one way, from the entry
points down to the foundations, and no package imports one above it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "chefgenius"

# Lower layers never import higher ones; packages of one layer do not import each other in a circle.
LAYERS = {
    "errors": 0, "config": 0, "durable": 0,
    "runtime": 1,
    "data": 2,
    "checkpoint": 3,
    "models": 4,
    "generation": 5,
    "training": 6, "evaluation": 6,
    "serving": 7,
    "cli": 8, "__main__": 8, "__init__": 8,
}
# Known exceptions, each with the reason it stands; the test fails when one is no longer needed, too.
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def part_of(module: str) -> str:
    return module.split(".")[0]


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("chefgenius"):
            mod = node.module[len("chefgenius"):].lstrip(".")
            if mod:
                out.add(mod)
            else:  # from chefgenius import x: a module, or a name of the package's __init__
                out |= {a.name if (SRC / a.name).is_dir() or (SRC / f"{a.name}.py").is_file() else "__init__"
                        for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name[len("chefgenius."):] for a in node.names if a.name.startswith("chefgenius.")}
        assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}: relative import"
    return out


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        out[".".join(rel.parts)] = path
    return out


def test_every_module_belongs_to_a_layer():
    assert not {part_of(m) for m in modules()} - LAYERS.keys()


def test_no_import_runs_upward():
    upward = set()
    for name, path in modules().items():
        for imported in imports_of(path):
            if LAYERS[part_of(imported)] > LAYERS[part_of(name)]:
                upward.add((name, part_of(imported)))
    assert upward == ALLOWED_UPWARD


def test_no_two_packages_import_each_other():
    edges = set()
    for name, path in modules().items():
        for imported in imports_of(path):
            a, b = part_of(name), part_of(imported)
            if a != b:
                edges.add((a, b))
    circles = {tuple(sorted((a, b))) for a, b in edges if (b, a) in edges}
    explained = {tuple(sorted((part_of(m), p))) for m, p in ALLOWED_UPWARD}
    assert circles == explained, circles


# Modules whose function-local imports of chefgenius are on purpose, each for the reason its docstring
# gives: the CLI and the package's API defer torch until a command needs it (a launcher that only execs
# torchrun never loads it); the server binds before torch loads. Elsewhere a deferred import says why on
# its line ("# deferred: ...").
DEFERRING = {"cli", "__init__", "__main__", "serving.app", "serving.openai_api", "serving.jobs", "serving.streams"}


def test_chefgenius_imports_are_at_the_top_except_where_start_up_time_is_saved():
    hidden = []
    for name, path in modules().items():
        if name in DEFERRING:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = path.read_text().splitlines()
                hidden += [f"{name}:{n.lineno}" for n in ast.walk(node) if isinstance(n, ast.ImportFrom)
                           and (n.module or "").startswith("chefgenius") and "# deferred: " not in lines[n.lineno - 1]]
    assert not hidden, f"function-local imports of chefgenius that save nothing: {hidden}"


@pytest.mark.parametrize("module, heavy", [
    ("chefgenius.serving.app", ("torch", "transformers")),  # the server binds before torch loads
    ("chefgenius.cli", ("torch", "transformers")),  # the launcher execs torchrun without them
    ("chefgenius.checkpoint.run_directory", ("transformers",)),  # naming a run's files
    ("chefgenius.data.prepared", ("transformers",)),
    ("chefgenius.evaluation.report", ("transformers",)),  # plotting metrics.jsonl
])
def test_light_modules_do_not_load_heavy_ones(module, heavy):
    """What the deferred imports are for: these modules import without the heavy libraries."""
    code = f"import sys, {module}; print(*[m in sys.modules for m in {heavy!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"] * len(heavy), dict(zip(heavy, out))

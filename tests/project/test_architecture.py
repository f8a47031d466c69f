"""The layout's rules (docs/ARCHITECTURE.md), checked on the code itself: every module imports,
the import graph has no circle, `ppo/` stays below the stages, modules import only from their own
row of the layout and below, validating a config loads no torch, and no module outside the stage
table, the config schema and a stage's own runner spells a stage's name."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.paths import PROJECT_ROOT
from rlhf.stages.table import STAGES

PACKAGE = PROJECT_ROOT / "rlhf"


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """rlhf modules `path` imports: at module level, inside functions (lazy imports) and under
    `if TYPE_CHECKING:` alike, since each ties the two modules together all the same."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:  # `from rlhf.ppo import core` imports rlhf.ppo.core
                    submodule = f"{child.module}.{alias.name}"
                    found.add(submodule if submodule in MODULES else child.module)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in found if name in MODULES}


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_the_import_graph_has_no_circle():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]


def test_ppo_imports_nothing_from_stages_pipeline_or_app():
    above = ("rlhf.stages", "rlhf.pipeline", "rlhf.app")
    reaching_up = {
        module: sorted(t for t in targets if t.startswith(above))
        for module, targets in import_graph().items()
        if module.startswith("rlhf.ppo")
    }
    assert {module: targets for module, targets in reaching_up.items() if targets} == {}


# The rows of docs/ARCHITECTURE.md, top to bottom: a module imports from its row and below.
LAYERS = [
    ("rlhf.chat", "rlhf.compare", "rlhf.session"),
    ("rlhf.app", "rlhf.pipeline"),
    ("rlhf.stages",),
    ("rlhf.ppo", "rlhf.rewards"),
    ("rlhf.runs", "rlhf.sweeps"),
    ("rlhf.models", "rlhf.runtime", "rlhf.data", "rlhf.reporting"),
    ("rlhf.config", "rlhf.schemas", "rlhf.errors", "rlhf.paths", "rlhf"),
]
# validation reads the stage table
UPWARD_ALLOWED = {("rlhf.config", "rlhf.stages.table"), ("rlhf.schemas.run", "rlhf.stages.table")}


def layer(module: str) -> int:
    """The row of the longest prefix of `module` in LAYERS."""
    matches = [
        (len(prefix), row)
        for row, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1]


def test_modules_import_only_from_their_row_and_below():
    upward = [
        (module, target)
        for module, targets in import_graph().items()
        for target in targets
        if layer(target) < layer(module) and (module, target) not in UPWARD_ALLOWED
    ]
    assert upward == []


def test_validating_a_config_imports_no_torch():
    code = (
        "import sys; import rlhf.app, rlhf.config, rlhf.schemas.reference, rlhf.stages.table, "
        "rlhf.runs.resume; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True
    )
    assert done.stdout.strip() == "[]"


# Literals equal to a stage's name that are not a stage: TRL's evaluation split prefix, and the
# fault points of the PPO package's checkpoints (`RLHF_FAULT=ppo:during_checkpoint:4`).
NOT_A_STAGE = {("rlhf.stages.trl_stage", "eval"), ("rlhf.ppo.checkpoint", "ppo")}


def test_stage_names_are_spelled_only_where_the_stage_is_declared():
    """A stage's name may appear in the table, the config schemas (its section, the defaults)
    and its own runner module; anywhere else code asks the table."""
    owners = {d.name: d.runner.partition(":")[0] for d in STAGES.values()}
    spelled = []
    for module, path in MODULES.items():
        if module in ("rlhf.stages.table", "rlhf.config") or module.startswith("rlhf.schemas."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = node.value if isinstance(node, ast.Constant) else None
            if name in owners and owners[name] != module and (module, name) not in NOT_A_STAGE:
                spelled.append(f"{module}:{node.lineno} {name!r}")
    assert spelled == []


@pytest.mark.parametrize("entry", ["rlhf.compare", "rlhf.chat"])
def test_python_m_entry_points_still_start(entry):
    done = subprocess.run(
        [sys.executable, "-m", entry, "--help"], capture_output=True, text=True, cwd=PROJECT_ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {entry}")

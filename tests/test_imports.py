"""Imports flow one way: no cycle between modules or between parts of safety_lab; the registry imports nothing
from reporting (README, "Architecture").

A walk of every `import` in safety_lab with `ast`, function-local ones included (they only hide a cycle until the
function runs); imports under `if TYPE_CHECKING:` never run and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import safety_lab

PACKAGE = Path(safety_lab.__file__).resolve().parent


def modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node, the bodies of `if TYPE_CHECKING:` aside."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _targets(node: ast.AST, name: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, *([node.module] if node.module else [])])
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (an imported name resolves to the longest known module)."""
    known = modules(package)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(node, name, path.name == "__init__.py"):
                parts = target.split(".")
                prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))
                hit = next((prefix for prefix in prefixes if prefix in known), None)
                if hit is not None and hit != name and hit != package.name:
                    graph[name].add(hit)
    return graph


def layers(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph between the package's top-level parts (safety_lab.evaluation.suites -> evaluation)."""

    def layer(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else parts[0]

    out: dict[str, set[str]] = {}
    for source, targets in graph.items():
        out.setdefault(layer(source), set()).update(layer(t) for t in targets if layer(t) != layer(source))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_walk_finds_function_local_and_relative_cycles_and_skips_type_checking(tmp_path):
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/models/__init__.py": "def load():\n    from pkg.registry import resolve\n    return resolve\n",
            "pkg/registry/__init__.py": "from ..models import load\nfrom . import lifecycle\n",
            "pkg/registry/lifecycle.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.cli\n",
            "pkg/cli.py": "import pkg.registry.lifecycle as lc\n",
        },
    )
    graph = import_graph(package)
    assert graph["pkg.models"] == {"pkg.registry"}
    assert graph["pkg.registry"] == {"pkg.models", "pkg.registry.lifecycle"}
    assert graph["pkg.registry.lifecycle"] == set() and graph["pkg.cli"] == {"pkg.registry.lifecycle"}
    assert cycles(graph) == [["pkg.models", "pkg.registry"]]
    assert cycles(layers(graph)) == [["models", "registry"]]


def test_the_walk_sees_the_real_package():
    graph = import_graph(PACKAGE)
    assert "safety_lab.config" in graph["safety_lab.cli"] and "safety_lab.errors" in graph["safety_lab.config"]


def test_no_import_cycle_between_parts_of_safety_lab():
    found = cycles(layers(import_graph(PACKAGE)))
    assert found == [], f"import cycles between parts of safety_lab: {found}"


def test_no_import_cycle_between_modules_of_safety_lab():
    found = cycles(import_graph(PACKAGE))
    assert found == [], f"import cycles between modules of safety_lab: {found}"


HEAVY = ("torch", "transformers", "peft", "trl", "datasets")


def _loaded_after(code: str) -> set[str]:
    """The heavy libraries a fresh interpreter has imported after running `code`."""
    import subprocess
    import sys

    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize("command", ["promote", "report", "lineage"])
def test_registry_commands_start_without_the_model_stack(command):
    """`promote --help` builds the whole parser (every stage's flags) and loads no model library."""
    code = (
        "import contextlib, io\nfrom safety_lab.cli import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    try:\n        build_parser().parse_args([{command!r}, '--help'])\n    except SystemExit:\n        pass"
    )
    assert _loaded_after(code) == set()


def test_metric_specs_are_data_that_import_nothing_heavy():
    """Every built-in suite's metrics are declared on import of the specs alone (the policy, the registry and the
    reports read them), with no model library loaded."""
    code = (
        "from safety_lab.evaluation.specs import METRICS\n"
        "assert {s.suite for s in METRICS} == {'asr', 'calibration', 'drift', 'form_swap'}\n"
        "assert METRICS.higher_is_better('smooth_ece') is False and METRICS.get('asr_form_gap').tag\n"
        "import safety_lab.policy, safety_lab.reporting.tables"
    )
    assert _loaded_after(code) == set()


def test_the_registry_imports_nothing_from_reporting():
    """registry <- reporting: the registry writes what reporting rendered, never renders (or imports a renderer)."""
    graph = import_graph(PACKAGE)
    upward = {
        f"{source} -> {target}"
        for source, targets in graph.items()
        if source.startswith("safety_lab.registry")
        for target in targets
        if target.startswith("safety_lab.reporting")
    }
    assert upward == set(), f"registry modules import reporting: {sorted(upward)}"

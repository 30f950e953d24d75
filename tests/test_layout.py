"""The package's import graph: no cycles, and no module inside the package imports its root.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import`` of a
``pymc_amortize`` module, at module level, inside functions and under ``if TYPE_CHECKING:`` alike
(an import an annotation needs is still a dependency; only docstrings do not count).
"""

import ast
import functools
from pathlib import Path

import pytest

import pymc_amortize

PACKAGE = Path(pymc_amortize.__file__).parent
ROOT = "pymc_amortize"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules) -> set:
    """The package's modules that one import statement loads by name (``from pymc_amortize
    import x`` names the submodule ``x`` where there is one, else the root)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == ROOT}
    if node.level:  # relative: resolve against this module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != ROOT:
        return set()
    found = set()
    for alias in node.names:
        submodule = f"{target}.{alias.name}"
        found.add(submodule if submodule in modules else target)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports (itself left out)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _imported(node, module, is_package, modules)
        graph[module] = edges - {module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_graph_sees_imports_inside_functions_and_type_checking_blocks():
    graph = import_graph()
    # registration imports fit inside install's wrapper, to keep the root import light.
    assert "pymc_amortize.fit" in graph["pymc_amortize.registration"]
    assert "pymc_amortize.errors" in graph["pymc_amortize.model.analysis"]
    assert graph[ROOT] >= {"pymc_amortize.registration", "pymc_amortize.posterior.approximation"}


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    graph = import_graph()
    cycles = _cycles({m: {t for t in ts if t != ROOT} for m, ts in graph.items() if m != ROOT})
    described = [
        " ; ".join(f"{m} -> {', '.join(sorted(set(c) & graph[m]))}" for m in c) for c in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(described)


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m != ROOT))
def test_no_module_imports_the_package_root(module):
    # The root imports nearly every module, so importing it from inside is a cycle through it.
    assert ROOT not in import_graph()[module], (
        f"{module} imports the package root: import the defining module instead "
        "(e.g. `from pymc_amortize.fitting.vi import AmortizedVI`)"
    )


def test_the_model_layer_imports_only_itself_and_errors():
    # model/ reads a PyMC model (analysis, plates, log joint, forward draws); the guide, the fit,
    # the data readers and the results build on it, never the other way round.
    model_modules = [m for m in import_graph() if m.startswith(f"{ROOT}.model")]
    assert model_modules
    for module in model_modules:
        outside = {
            t
            for t in import_graph()[module]
            if not t.startswith(f"{ROOT}.model") and t != f"{ROOT}.errors"
        }
        assert not outside, f"{module} imports {sorted(outside)}"


#: The subpackages from the bottom up: each may import those before it, never one after it.
LAYERS = ("model", "data", "guide", "posterior", "fitting")


def test_subpackages_import_only_the_layers_below_them():
    graph = import_graph()
    upward = []
    for module, imported in graph.items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in LAYERS:
            continue
        level = LAYERS.index(parts[1])
        for target in imported:
            target_parts = target.split(".")
            if len(target_parts) > 1 and target_parts[1] in LAYERS[level + 1 :]:
                upward.append(f"{module} -> {target}")
    assert not upward, f"imports from a lower layer to a higher one: {upward}"

"""The code's shape: no import circles among the package's modules, counting the imports inside
functions too (a lazy import hides a circle from the interpreter, not from a reader)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "ape_crowdml"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules `path` imports, anywhere in it (the package itself excluded: its
    __init__ only re-exports lazily)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package
                for _ in range(node.level - 1):
                    prefix = prefix.rpartition(".")[0]
                base = f"{prefix}.{base}" if base else prefix
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m not in (here, PACKAGE.name)}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(paths)) for name, path in paths.items()}


def test_no_module_of_the_package_imports_itself_back_through_others():
    assert circles(import_graph()) == []


def test_a_circle_is_found():
    """The control: the check finds a circle where there is one."""
    graph = import_graph()
    graph["ape_crowdml.states"] = graph["ape_crowdml.states"] | {"ape_crowdml.preflight"}
    assert ["ape_crowdml.preflight", "ape_crowdml.states"] in circles(graph)


COMPUTE = PACKAGE.parent / "crowdml_compute"


def test_the_compute_package_imports_nothing_of_ape_or_the_plugin():
    """It runs in job environments that hold no ape: by construction, not by a guard."""
    for path in COMPUTE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            for name in names:
                assert name.split(".")[0] not in ("ape", "ape_crowdml"), f"{path}: {name}"


def test_the_plugin_imports_no_jax_when_loaded():
    """Registering the plugin, and importing its API modules, loads no jax (ape starts fast; a
    plugin install need not carry a numeric stack to run the chain side)."""
    import subprocess
    import sys

    code = ("import sys, ape_crowdml, ape_crowdml.parties, ape_crowdml.purchase, "
            "ape_crowdml.agent, ape_crowdml._cli, ape_crowdml.delivery, ape_crowdml.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

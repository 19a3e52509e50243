"""The package's layers import each other in one direction: no module reaches back, at run time,
to a module that imports it, directly or through others (imports inside functions count; imports
only for type checking do not)."""

import ast
import pathlib

import actqkv_llm

ROOT = pathlib.Path(actqkv_llm.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _runtime_imports(tree: ast.AST) -> list[ast.stmt]:
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a package's import of its own submodule through
    ``from . import x`` counts as importing ``x``, not the package)."""
    mods = _modules()
    edges: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names]
                targets = [n for n in names if n in mods] or [target]
            else:
                targets = [a.name for a in node.names]
            for t in targets:
                if t in mods and t != name and not name.startswith(t + "."):
                    edges[name].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
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
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            strong(v)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "actqkv_llm.session" in graph["actqkv_llm.engine"]   # it sees real imports


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def layer_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Module edges collapsed to the package's layers: its subpackages and top-level modules
    (``actqkv_llm.persist.reader`` -> ``persist``, ``actqkv_llm.cli`` -> ``cli``)."""
    def layer(name: str) -> str:
        parts = name.split(".")
        return parts[1] if len(parts) > 1 else "__init__"

    layers: dict[str, set[str]] = {}
    for a, targets in edges.items():
        layers.setdefault(layer(a), set())
        for b in targets:
            layers.setdefault(layer(b), set())
            if layer(a) != layer(b):
                layers[layer(a)].add(layer(b))
    return layers


def test_layers_import_one_way():
    """No layer reaches back to one that imports it, even through modules that do not cycle
    (models -> persist -> document -> session -> models did before files/ held the shared paths)."""
    collapsed = layer_graph({"p.a.x": {"p.b.y"}, "p.b.z": {"p.a.w"}, "p.a.w": set(), "p.b.y": set()})
    assert cycles(collapsed) == [["a", "b"]]            # module-wise acyclic, layer-wise a circle
    assert cycles(layer_graph(import_graph())) == []

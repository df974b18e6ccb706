"""The package's layering, checked by reading its source with ``ast``: every module has a
layer, imports point down, no cycles, no private names across modules, size limits and docstrings.

This test must not import covidxr (nor Keras, NumPy or anything else the package needs): it
only parses the files under ``src/covidxr``, so it runs in well under a second and also
catches imports that sit inside functions and would only run late.

The checkers are plain functions taking a source root and a layer list and returning a list of
violation strings; the ``test_*`` functions at the top assert those lists are empty for the
real tree, and the tests at the bottom run the same checkers on small synthetic trees to show
that each check both passes on a clean structure and detects what it is meant to detect.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

# The layers, bottom-up. This list mirrors docs/architecture.md; change both
# together. A module may import only from its own layer or a layer below. A name covers the
# module itself and, when it is a package, all its submodules (``covidxr.data`` covers
# ``covidxr/data/__init__.py`` and ``covidxr/data/readers.py``); the entry naming the top-level
# package itself (``covidxr``) covers only ``covidxr/__init__.py``.
LAYERS: list[tuple[str, list[str]]] = [
    ("root", ["covidxr"]),  # covidxr/__init__.py only (version, RESEARCH_ONLY)
    ("atomic", ["covidxr.atomic", "covidxr.locks", "covidxr.records"]),
    ("data", ["covidxr.data"]),
    ("images", ["covidxr.images"]),
    ("sampling", ["covidxr.sampling"]),
    ("weights", ["covidxr.weights"]),
    ("models", ["covidxr.models"]),
    ("runtime", ["covidxr.runtime"]),
    ("config", ["covidxr.config"]),
    ("training", ["covidxr.training"]),
    ("inference", ["covidxr.inference", "covidxr.gradcam", "covidxr.lungmasks"]),
    ("evaluation", ["covidxr.evaluation", "covidxr.audit"]),
    ("figures and reports", ["covidxr.figures", "covidxr.reports"]),
    ("application", ["covidxr.tracking", "covidxr.runfolder", "covidxr.artifacts", "covidxr.train", "covidxr.evaluate", "covidxr.executors", "covidxr.grid", "covidxr.predict", "covidxr.calibrate", "covidxr.download", "covidxr.lungs"]),
    ("cli", ["covidxr.cli"]),
]

SRC_ROOT = Path(__file__).resolve().parents[1] / "src" / "covidxr"
ALLOWLIST = Path(__file__).resolve().with_name("size_allowlist.txt")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# --------------------------------------------------------------------------------------------
# The tests on the real tree
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _keras_backend_is_the_requested_one():
    """Overrides the conftest's session check of the Keras backend for this module only: these
    tests never import Keras (nor covidxr), so there is no backend to check and no reason to
    spend seconds importing it."""


def _fail_if_any(violations: list[str], what: str) -> None:
    if violations:
        pytest.fail(f"{len(violations)} {what}:\n  " + "\n  ".join(violations), pytrace=False)


def test_every_module_is_placed_in_exactly_one_layer():
    _fail_if_any(check_placement(SRC_ROOT, LAYERS), "module(s) not placed in exactly one layer")


def test_imports_point_down_the_layers():
    _fail_if_any(check_layering(SRC_ROOT, LAYERS), "upward import(s)")


def test_no_import_cycles():
    _fail_if_any(check_cycles(SRC_ROOT), "import cycle(s)")


def test_no_importlib_of_covidxr_modules():
    _fail_if_any(check_dynamic_imports(SRC_ROOT), "dynamic import(s) of covidxr modules")


def test_no_private_names_across_modules():
    _fail_if_any(check_private_names(SRC_ROOT), "use(s) of another module's private names")


def test_module_and_function_sizes():
    _fail_if_any(check_sizes(SRC_ROOT, ALLOWLIST), "size violation(s)")


def test_module_docstrings_say_what_the_module_must_not_do():
    _fail_if_any(check_docstrings(SRC_ROOT), "module docstring problem(s)")


# --------------------------------------------------------------------------------------------
# Reading the tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. covidxr.data.readers
    rel: str  # path relative to the source root, e.g. data/readers.py
    is_package: bool  # an __init__.py
    source: str
    tree: ast.Module


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    lineno: int
    names: tuple[str, ...]  # the names a ``from ... import`` took from ``imported``'s parent or itself


@functools.lru_cache(maxsize=None)
def _parse(path: str, mtime_ns: int, size: int) -> tuple[str, ast.Module]:
    """A file's text and tree, read once per version of the file (the checks share them)."""
    source = Path(path).read_text(encoding="utf-8")
    return source, ast.parse(source, filename=path)


def discover(root: Path) -> dict[str, Module]:
    """Every ``.py`` file under ``root`` (the package directory), by dotted module name."""
    root = Path(root)
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        parts = [root.name, *rel.parts[:-1]]
        is_package = rel.name == "__init__.py"
        if not is_package:
            parts.append(rel.stem)
        stat = path.stat()
        source, tree = _parse(str(path), stat.st_mtime_ns, stat.st_size)
        name = ".".join(parts)
        modules[name] = Module(name, rel.as_posix(), is_package, source, tree)
    return modules


def _known_prefix(name: str, modules: dict[str, Module]) -> str | None:
    """The longest dotted prefix of ``name`` that is a module of the tree."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def _from_base(module: Module, node: ast.ImportFrom, top: str) -> str | None:
    """The absolute package a ``from X import ...`` reads from, or None when it is not ours."""
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.name if module.is_package else module.name.rpartition(".")[0]
        parts = package.split(".")
        if node.level - 1 >= len(parts):
            return None  # beyond the top-level package
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    return base if base == top or base.startswith(top + ".") else None


def _resolve_from(base: str, alias: str, modules: dict[str, Module]) -> str | None:
    """``from base import alias``: the module ``base.alias`` when there is one, else ``base``."""
    if alias != "*" and f"{base}.{alias}" in modules:
        return f"{base}.{alias}"
    return _known_prefix(base, modules)


def module_edges(module: Module, modules: dict[str, Module], top: str) -> list[Edge]:
    """Every import of a module of the tree, at any depth of ``module``'s code."""
    edges = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == top or alias.name.startswith(top + "."):
                    target = _known_prefix(alias.name, modules)
                    if target:
                        edges.append(Edge(module.name, target, node.lineno, ()))
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node, top)
            if base is None:
                continue
            for alias in node.names:
                target = _resolve_from(base, alias.name, modules)
                if target:
                    edges.append(Edge(module.name, target, node.lineno, (alias.name,)))
    return sorted(edges, key=lambda e: (e.lineno, e.imported))


def import_edges(root: Path, modules: dict[str, Module] | None = None) -> list[Edge]:
    modules = discover(root) if modules is None else modules
    top = Path(root).name
    return [edge for module in modules.values() for edge in module_edges(module, modules, top)]


def _where(modules: dict[str, Module], name: str, lineno: int | None = None) -> str:
    rel = modules[name].rel
    return f"{rel}:{lineno}" if lineno else rel


# --------------------------------------------------------------------------------------------
# 1. Placement and 2. layering
# --------------------------------------------------------------------------------------------


def _covers(entry: str, name: str, top: str) -> bool:
    if entry == top:
        return name == top
    return name == entry or name.startswith(entry + ".")


def layers_of(name: str, layers, top: str) -> list[int]:
    """The indices of every layer that has an entry covering module ``name``."""
    return [i for i, (_, entries) in enumerate(layers) if any(_covers(e, name, top) for e in entries)]


def check_placement(root: Path = SRC_ROOT, layers=LAYERS) -> list[str]:
    modules = discover(root)
    top = Path(root).name
    violations = []
    for name, module in modules.items():
        found = layers_of(name, layers, top)
        if not found:
            violations.append(f"{name} ({module.rel}) is in no layer")
        elif len(found) > 1:
            listed = ", ".join(repr(layers[i][0]) for i in found)
            violations.append(f"{name} ({module.rel}) is in several layers: {listed}")
    return violations


def check_layering(root: Path = SRC_ROOT, layers=LAYERS) -> list[str]:
    modules = discover(root)
    top = Path(root).name
    violations = []
    for edge in import_edges(root, modules):
        src, dst = layers_of(edge.importer, layers, top), layers_of(edge.imported, layers, top)
        if len(src) != 1 or len(dst) != 1:
            continue  # reported by check_placement
        if src[0] < dst[0]:
            violations.append(
                f"{_where(modules, edge.importer, edge.lineno)}: {edge.importer} (layer {layers[src[0]][0]!r}) "
                f"imports {edge.imported} (layer {layers[dst[0]][0]!r}, which is above)"
            )
    return violations


# --------------------------------------------------------------------------------------------
# 3. Cycles
# --------------------------------------------------------------------------------------------


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; the components with more than one node, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
    return sorted(found)


def _shortest_cycle(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected component."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    return [start]


def check_cycles(root: Path = SRC_ROOT) -> list[str]:
    modules = discover(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    first_line: dict[tuple[str, str], int] = {}
    for edge in import_edges(root, modules):
        if edge.importer != edge.imported:  # `from . import NAME` in an __init__ reads itself
            graph[edge.importer].add(edge.imported)
            first_line.setdefault((edge.importer, edge.imported), edge.lineno)
    violations = []
    for component in strongly_connected(graph):
        cycle = _shortest_cycle(graph, component[0], set(component))
        steps = " -> ".join(
            f"{a} ({_where(modules, a, first_line[a, b])})" for a, b in zip(cycle, cycle[1:])
        )
        inside = ", ".join(
            f"{a} -> {b} ({_where(modules, a, line)})"
            for (a, b), line in sorted(first_line.items())
            if a in component and b in component
        )
        violations.append(
            f"cycle {steps} -> {cycle[-1]}; the whole strongly connected group: {', '.join(component)}; "
            f"the imports inside it: {inside}"
        )
    return violations


# --------------------------------------------------------------------------------------------
# 4. importlib of our own modules
# --------------------------------------------------------------------------------------------

_IMPORT_FUNCTIONS = {"import_module", "__import__"}


def _literal_prefix(node: ast.expr) -> str | None:
    """A string literal's value, or the literal start of an f-string; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        head = node.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            return head.value
    return None


def _called_name(call: ast.Call) -> str | None:
    """``f`` for ``f(...)`` and for ``anything.f(...)``."""
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def check_dynamic_imports(root: Path = SRC_ROOT) -> list[str]:
    """``importlib.import_module``/``import_module``/``__import__`` of a literal naming our code.

    A non-literal argument is allowed: the images layer loads optional third-party packages
    (pydicom, ...) that way.
    """
    modules = discover(root)
    top = Path(root).name
    violations = []
    for name, module in modules.items():
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Call):
                continue
            called = _called_name(node)
            if called not in _IMPORT_FUNCTIONS:
                continue
            argument = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
            text = _literal_prefix(argument) if argument is not None else None
            if text is not None and (text == top or text.startswith((top + ".", "."))):
                violations.append(
                    f"{_where(modules, name, node.lineno)}: {name} calls {called}({text!r}); "
                    f"use an import statement (inside the function if it must be late)"
                )
    return violations


# --------------------------------------------------------------------------------------------
# 5. Private names across modules
# --------------------------------------------------------------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_bindings(module: Module, modules: dict[str, Module], top: str) -> dict[str, str]:
    """The names this file binds to one of our modules, anywhere in it (best effort, no scopes)."""
    bound: dict[str, str] = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not (alias.name == top or alias.name.startswith(top + ".")):
                    continue
                if alias.asname:
                    target = _known_prefix(alias.name, modules)
                    if target == alias.name:
                        bound[alias.asname] = target
                elif top in modules:
                    bound[top] = top  # `import covidxr.x` binds `covidxr`
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node, top)
            if base is None:
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and node.value.args:
            # x = importlib.import_module("covidxr.y"): already refused by check 4, tracked anyway
            text = _literal_prefix(node.value.args[0])
            if _called_name(node.value) == "import_module" and text in modules:
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        bound[target.id] = text
    return bound


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"]; None for anything that is not a chain of names."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def check_private_names(root: Path = SRC_ROOT) -> list[str]:
    """``from X import _name`` and ``mod._name`` where X or mod is another module of ours.

    A package may import its own private submodules (``from . import _impl`` inside the
    package ``X`` whose submodule ``_impl`` is); that is the package's business.
    """
    modules = discover(root)
    top = Path(root).name
    violations = []
    for name, module in modules.items():
        package = name if module.is_package else name.rpartition(".")[0]
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _from_base(module, node, top)
            if base is None:
                continue
            source = _known_prefix(base, modules)
            for alias in node.names:
                if not _is_private(alias.name) or source in (None, name):
                    continue
                own_submodule = f"{base}.{alias.name}" in modules and (package == base or package.startswith(base + "."))
                if not own_submodule:
                    violations.append(
                        f"{_where(modules, name, node.lineno)}: {name} imports private {alias.name} from {source}"
                    )
        bound = _module_bindings(module, modules, top)
        for node in ast.walk(module.tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            chain = _dotted(node.value)
            if not chain or chain[0] not in bound:
                continue
            target = ".".join([bound[chain[0]], *chain[1:]])
            if target in modules and target != name:
                violations.append(
                    f"{_where(modules, name, node.lineno)}: {name} uses private "
                    f"{'.'.join(chain)}.{node.attr} of {target}"
                )
    return violations


# --------------------------------------------------------------------------------------------
# 6. Sizes, with the allow-list
# --------------------------------------------------------------------------------------------


def physical_lines(source: str) -> int:
    return source.count("\n") + (1 if source and not source.endswith("\n") else 0)


def function_sizes(tree: ast.Module) -> list[tuple[str, int, int]]:
    """(qualname, first line, length) of every function and method, nested ones included.

    The qualname joins the enclosing classes and functions with dots (``Class.method``,
    ``outer.inner``); the length runs from the ``def`` line (decorators not counted) to the
    last line of the body, docstring included.
    """
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((qualname, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, qualname + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


@dataclass(frozen=True)
class AllowEntry:
    lineno: int
    path: str
    qualname: str | None
    maximum: int


def read_allowlist(path: Path) -> tuple[list[AllowEntry], list[str]]:
    """The entries ``PATH[:QUALNAME] MAX  # reason`` and the problems with the file itself."""
    entries, problems, seen = [], [], set()
    if not Path(path).exists():
        return entries, [f"{path} is missing (it may hold only its header comment)"]
    for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{Path(path).name}:{lineno}"
        spec, hash_, reason = line.partition("#")
        if not hash_ or not reason.strip():
            problems.append(f"{where}: entry {spec.strip()!r} gives no reason after '#'")
        fields = spec.split()
        if len(fields) != 2 or not fields[1].isdigit():
            problems.append(f"{where}: expected 'PATH[:QUALNAME] MAX  # reason'. Received: {raw!r}")
            continue
        target, _, qualname = fields[0].partition(":")
        key = (target, qualname or None)
        if key in seen:
            problems.append(f"{where}: {fields[0]} is listed twice")
        seen.add(key)
        entries.append(AllowEntry(lineno, target, qualname or None, int(fields[1])))
    return entries, problems


def check_sizes(
    root: Path = SRC_ROOT,
    allowlist: Path = ALLOWLIST,
    max_module_lines: int = MAX_MODULE_LINES,
    max_function_lines: int = MAX_FUNCTION_LINES,
) -> list[str]:
    """No module over ``max_module_lines`` lines, no function over ``max_function_lines``.

    The allow-list raises a limit for one module or function; an entry that is not needed
    any more (the code is within the normal limit, or gone) is itself a violation.
    """
    modules = {m.rel: m for m in discover(root).values()}
    entries, violations = read_allowlist(allowlist)
    allowed = {(e.path, e.qualname): e for e in entries}
    functions = {rel: function_sizes(m.tree) for rel, m in modules.items()}
    for rel, module in modules.items():
        lines = physical_lines(module.source)
        entry = allowed.get((rel, None))
        limit = entry.maximum if entry else max_module_lines
        if lines > limit:
            violations.append(f"{rel}: {lines} lines, over the limit of {limit}" + (" (allow-listed)" if entry else ""))
        for qualname, lineno, length in functions[rel]:
            entry = allowed.get((rel, qualname))
            limit = entry.maximum if entry else max_function_lines
            if length > limit:
                violations.append(
                    f"{rel}:{lineno}: function {qualname} is {length} lines, over the limit of {limit}"
                    + (" (allow-listed)" if entry else "")
                )
    for entry in entries:
        label = f"{Path(allowlist).name}:{entry.lineno}: {entry.path}" + (f":{entry.qualname}" if entry.qualname else "")
        if entry.path not in modules:
            violations.append(f"{label} is stale: there is no such module")
        elif entry.qualname is None:
            if physical_lines(modules[entry.path].source) <= max_module_lines:
                violations.append(f"{label} is stale: the module is within {max_module_lines} lines")
        else:
            lengths = [n for q, _, n in functions[entry.path] if q == entry.qualname]
            if not lengths:
                violations.append(f"{label} is stale: there is no such function")
            elif max(lengths) <= max_function_lines:
                violations.append(f"{label} is stale: the function is within {max_function_lines} lines")
    return violations


# --------------------------------------------------------------------------------------------
# 7. Module docstrings
# --------------------------------------------------------------------------------------------

_MUST_NOT = re.compile(r"\bmust not\b|\bnever\b|\bno\s|\bnothing\b", re.IGNORECASE)


def first_paragraph(docstring: str) -> list[str]:
    lines = []
    for line in docstring.strip().splitlines():
        if not line.strip():
            break
        lines.append(line)
    return lines


def check_docstrings(root: Path = SRC_ROOT) -> list[str]:
    """Every module opens with a docstring whose first paragraph has two lines or more and
    says what the module must not do ("must not", "never", "no ..." or "nothing")."""
    violations = []
    for name, module in discover(root).items():
        doc = ast.get_docstring(module.tree, clean=True)
        if not doc:
            violations.append(f"{name} ({module.rel}): no module docstring")
            continue
        paragraph = first_paragraph(doc)
        problems = []
        if len(paragraph) < 2:
            problems.append(f"its first paragraph has {len(paragraph)} line, expected at least 2")
        if not _MUST_NOT.search(" ".join(" ".join(paragraph).split()) + " "):
            problems.append("its first paragraph does not say what the module must not do")
        if problems:
            violations.append(f"{name} ({module.rel}): " + "; ".join(problems))
    return violations


# --------------------------------------------------------------------------------------------
# The checkers on synthetic trees
# --------------------------------------------------------------------------------------------

SMALL_LAYERS = [
    ("root", ["pkg"]),
    ("base", ["pkg.base"]),
    ("core", ["pkg.core"]),
    ("app", ["pkg.app", "pkg.cli"]),
]


def _doc(what: str) -> str:
    return f'"""{what}, in a synthetic tree for the layering tests;\nit must not do anything else."""\n'


GOOD_TREE = {
    "__init__.py": _doc("The top package") + '__version__ = "0"\n',
    "base.py": _doc("The bottom layer") + "def _helper():\n    return 1\n\n\ndef helper():\n    return _helper()\n",
    "core/__init__.py": _doc("The core package") + "from .impl import run\nfrom . import _private_impl\n",
    "core/_private_impl.py": _doc("A private submodule of core") + "from .. import base\n",
    "core/impl.py": (
        _doc("The core's implementation")
        + "import importlib\n\nfrom .. import base\nfrom ..base import helper\n\n\n"
        + "def run(name):\n    from . import _private_impl\n    import pkg.base as b\n"
        + "    optional = importlib.import_module(name)\n    return helper(), b.helper(), base.__name__, optional\n"
    ),
    "app.py": (
        _doc("The application")
        + "import pkg\nimport pkg.core.impl\nfrom pkg import base\nfrom pkg.core import run\n\n\n"
        + "def main():\n    try:\n        from .core import impl\n    except ImportError:\n        raise\n"
        + "    if True:\n        import pkg.base\n    return run('json'), impl.run, base.helper(), pkg.__name__\n"
    ),
    "cli.py": _doc("The command line") + "from . import app\n\n\nclass Cli:\n    def go(self):\n        return app.main()\n",
}


def _tree(tmp_path: Path, changes: dict[str, str | None] | None = None) -> Path:
    """The good tree under tmp_path/pkg, with some files replaced (or, for None, removed)."""
    files = {**GOOD_TREE, **(changes or {})}
    root = tmp_path / "pkg"
    for rel, text in files.items():
        if text is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text, encoding="utf-8")
    return root


def _allowlist(tmp_path: Path, text: str = "# no entries\n") -> Path:
    path = tmp_path / "allow.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _all_checks(root: Path, allowlist: Path) -> list[str]:
    return (
        check_placement(root, SMALL_LAYERS)
        + check_layering(root, SMALL_LAYERS)
        + check_cycles(root)
        + check_dynamic_imports(root)
        + check_private_names(root)
        + check_sizes(root, allowlist)
        + check_docstrings(root)
    )


def test_a_clean_tree_has_no_violations(tmp_path):
    assert _all_checks(_tree(tmp_path), _allowlist(tmp_path)) == []


def test_the_real_allowlist_has_only_well_formed_entries():
    assert read_allowlist(ALLOWLIST)[1] == []


def test_imports_resolve_relative_nested_and_from_package(tmp_path):
    root = _tree(tmp_path)
    edges = {(e.importer, e.imported) for e in import_edges(root)}
    assert ("pkg.core", "pkg.core.impl") in edges  # from .impl import run, in an __init__
    assert ("pkg.core", "pkg.core._private_impl") in edges  # from . import NAME where NAME is a module
    assert ("pkg.core.impl", "pkg.base") in edges  # from .. import base / from ..base import helper
    assert ("pkg.core._private_impl", "pkg.base") in edges
    assert ("pkg.app", "pkg.core") in edges  # from pkg.core import run: run is no module
    assert ("pkg.app", "pkg.core.impl") in edges  # import pkg.core.impl, and `from .core import impl` in a try
    assert ("pkg.app", "pkg") in edges  # import pkg
    assert ("pkg.cli", "pkg.app") in edges
    assert ("pkg.core", "pkg") not in edges and ("pkg.core.impl", "pkg.core") not in edges  # no implicit parents
    lines = {e.lineno for e in import_edges(root) if e.importer == "pkg.app" and e.imported == "pkg.core.impl"}
    assert len(lines) == 2  # the module-level import and the one inside the function


def test_unplaced_and_doubly_placed_modules_are_named(tmp_path):
    root = _tree(tmp_path, {"extra.py": _doc("Not in any layer")})
    assert check_placement(root, SMALL_LAYERS) == ["pkg.extra (extra.py) is in no layer"]
    overlapping = [*SMALL_LAYERS, ("again", ["pkg.core.impl"])]
    (found,) = [v for v in check_placement(root, overlapping) if "several" in v]
    assert "pkg.core.impl" in found and "'core'" in found and "'again'" in found
    # the top package's entry covers only its __init__
    assert "pkg.extra (extra.py) is in no layer" in check_placement(root, [("root", ["pkg"])])


def test_upward_imports_are_found_at_any_depth_and_level(tmp_path):
    base = GOOD_TREE["base.py"] + "\n\ndef late():\n    if True:\n        from .core.impl import run\n    return run\n"
    impl = GOOD_TREE["core/impl.py"] + "\n\nclass Late:\n    def m(self):\n        from ..app import main\n"
    root = _tree(tmp_path, {"base.py": base, "core/impl.py": impl})
    found = check_layering(root, SMALL_LAYERS)
    assert len(found) == 2, found
    assert found[0].startswith("base.py:13: pkg.base (layer 'base') imports pkg.core.impl (layer 'core'")
    assert found[1].startswith("core/impl.py:18: pkg.core.impl (layer 'core') imports pkg.app (layer 'app'")


def test_cycles_are_found_through_imports_inside_functions(tmp_path):
    cycle_a = _doc("One side") + "from . import b\n"
    cycle_b = _doc("The other side") + "def late():\n    from .a import x\n    return x\n"
    root = _tree(tmp_path, {"core/a.py": cycle_a, "core/b.py": cycle_b})
    found = check_cycles(root)
    assert len(found) == 1, found
    assert found[0].startswith("cycle pkg.core.a (core/a.py:3) -> pkg.core.b (core/b.py:4) -> pkg.core.a;")
    assert check_layering(root, SMALL_LAYERS) == []  # same layer: only the cycle check sees it
    # three modules in a ring, one of them through `import pkg.x`
    ring = {
        "core/a.py": _doc("Ring a") + "import pkg.core.b\n",
        "core/b.py": _doc("Ring b") + "from .c import y\n",
        "core/c.py": _doc("Ring c") + "def f():\n    from pkg.core import a\n",
    }
    (found,) = check_cycles(_tree(tmp_path / "ring", ring))
    assert found.startswith(
        "cycle pkg.core.a (core/a.py:3) -> pkg.core.b (core/b.py:3) -> pkg.core.c (core/c.py:4) -> pkg.core.a; "
        "the whole strongly connected group: pkg.core.a, pkg.core.b, pkg.core.c; the imports inside it: "
        "pkg.core.a -> pkg.core.b (core/a.py:3), pkg.core.b -> pkg.core.c (core/b.py:3), "
        "pkg.core.c -> pkg.core.a (core/c.py:4)"
    ), found


def test_strongly_connected_components():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert strongly_connected(graph) == [["a", "b", "c"], ["d", "e"]]
    assert _shortest_cycle(graph, "a", {"a", "b", "c"}) == ["a", "b", "c", "a"]


def test_importlib_of_our_modules_is_refused_and_third_party_is_not(tmp_path):
    impl = GOOD_TREE["core/impl.py"] + (
        "\n\ndef more(n):\n"
        "    from importlib import import_module\n"
        '    importlib.import_module("pkg.app")\n'
        '    import_module(".app", package="pkg")\n'
        '    __import__("pkg")\n'
        '    importlib.import_module(name=f"pkg.{n}")\n'
        '    importlib.import_module("pydicom")\n'
        "    importlib.import_module(n)\n"
    )
    found = check_dynamic_imports(_tree(tmp_path, {"core/impl.py": impl}))
    assert [v.split(":")[1] for v in found] == ["18", "19", "20", "21"], found
    assert "import_module('pkg.app')" in found[0]


def test_private_names_of_other_modules_are_refused(tmp_path):
    app = GOOD_TREE["app.py"] + (
        "\n\ndef peek():\n"
        "    from .base import _helper, __name__ as n\n"
        "    from .core import _private_impl\n"
        "    import pkg.base as b\n"
        "    from pkg import core\n"
        "    return _helper(), b._helper(), core.impl._x, pkg.core._y, base.__doc__, b.helper()\n"
    )
    found = check_private_names(_tree(tmp_path, {"app.py": app}))
    assert len(found) == 5, found
    assert "app.py:20: pkg.app imports private _helper from pkg.base" in found
    assert "app.py:21: pkg.app imports private _private_impl from pkg.core" in found
    assert "app.py:24: pkg.app uses private b._helper of pkg.base" in found
    assert "app.py:24: pkg.app uses private core.impl._x of pkg.core.impl" in found
    assert "app.py:24: pkg.app uses private pkg.core._y of pkg.core" in found


def _function(name: str, length: int, indent: str = "") -> str:
    """A function of exactly ``length`` lines."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(length - 2))
    return f"{indent}def {name}():\n{body}{indent}    return 0\n"


def _long_code(length: int) -> str:
    return (
        _doc("Long code")  # 2 lines
        + "class K:\n"
        + _function("m", length, "    ")  # from line 4
        + "\n    @staticmethod\n"
        + _function("s", 2, "    ")
        + "\n\n"
        + _function("ok", length)
    )


def test_long_modules_and_functions_and_the_allowlist(tmp_path):
    long_mod = _doc("A long module") + "".join(f"v{i} = {i}\n" for i in range(498))
    assert physical_lines(long_mod) == 500
    root = _tree(tmp_path, {"core/long.py": _long_code(80), "core/big.py": long_mod})
    assert check_sizes(root, _allowlist(tmp_path)) == []  # exactly at the limits
    root = _tree(tmp_path, {"core/long.py": _long_code(81), "core/big.py": long_mod + "one_more = 1\n"})
    found = check_sizes(root, _allowlist(tmp_path))
    assert found == [
        "core/big.py: 501 lines, over the limit of 500",
        "core/long.py:4: function K.m is 81 lines, over the limit of 80",
        "core/long.py:91: function ok is 81 lines, over the limit of 80",
    ], found
    allow = "# header\n\ncore/big.py 510  # generated table\ncore/long.py:K.m 81  # one day\ncore/long.py:ok 90  # later\n"
    assert check_sizes(root, _allowlist(tmp_path, allow)) == []
    allow = "core/big.py 500  # too low\ncore/long.py:K.m 81\ncore/long.py:ok 90  #\n"
    found = check_sizes(root, _allowlist(tmp_path, allow))
    assert found == [
        "allow.txt:2: entry 'core/long.py:K.m 81' gives no reason after '#'",
        "allow.txt:3: entry 'core/long.py:ok 90' gives no reason after '#'",
        "core/big.py: 501 lines, over the limit of 500 (allow-listed)",
    ], found
    stale = (
        "base.py 600  # was long\n"
        "core/long.py:K.s 100  # was long\n"
        "core/gone.py 600  # removed\n"
        "core/long.py:gone 100  # removed\n"
        "x.py:f  # no max\n"
    )
    found = check_sizes(root, _allowlist(tmp_path, stale))
    assert found == [
        "allow.txt:5: expected 'PATH[:QUALNAME] MAX  # reason'. Received: 'x.py:f  # no max'",
        "core/big.py: 501 lines, over the limit of 500",
        "core/long.py:4: function K.m is 81 lines, over the limit of 80",
        "core/long.py:91: function ok is 81 lines, over the limit of 80",
        "allow.txt:1: base.py is stale: the module is within 500 lines",
        "allow.txt:2: core/long.py:K.s is stale: the function is within 80 lines",
        "allow.txt:3: core/gone.py is stale: there is no such module",
        "allow.txt:4: core/long.py:gone is stale: there is no such function",
    ], found


def test_function_sizes_count_from_def_without_decorators_and_include_nested():
    source = '@deco\n@deco2\ndef outer():\n    """Doc\n    string."""\n\n    async def inner():\n        pass\n    return inner\n'
    assert function_sizes(ast.parse(source)) == [("outer", 3, 7), ("outer.inner", 7, 2)]


def test_module_docstrings_need_two_lines_and_a_must_not(tmp_path):
    changes = {
        "base.py": "x = 1\n",
        "core/impl.py": '"""One line that must not be alone."""\n',
        "app.py": '"""Two lines, whenever it runs,\nbut nowhere a prohibition.\n\nIt must not be found in the second paragraph."""\n',
        "cli.py": '"""Two lines,\nwith no\nline-broken prohibition missed."""\n',
    }
    found = check_docstrings(_tree(tmp_path, changes))
    assert found == [
        "pkg.app (app.py): its first paragraph does not say what the module must not do",
        "pkg.base (base.py): no module docstring",
        "pkg.core.impl (core/impl.py): its first paragraph has 1 line, expected at least 2",
    ], found


def test_the_real_layer_list_accepts_a_tree_of_the_target_shape(tmp_path):
    files = {
        "__init__.py": _doc("The version") + '__version__ = "0"\nRESEARCH_ONLY = "research only"\n',
        "atomic.py": _doc("Atomic writes"),
        "data/__init__.py": _doc("The data package") + "from .readers import read\n",
        "data/readers.py": _doc("The readers") + "from .. import RESEARCH_ONLY\nfrom ..atomic import *\n",
        "models/__init__.py": _doc("The models") + "from ..data import readers\n",
        "inference/__init__.py": _doc("Inference") + "from ..models import build\n",
        "gradcam.py": _doc("Grad-CAM") + "from .inference import predict\n",
        "train.py": _doc("Training") + "from .gradcam import gradcam\nfrom .data.readers import read\n",
        "cli/__init__.py": _doc("The command line") + "from .options import parser\n",
        "cli/options.py": _doc("The options") + "def parser():\n    from .. import train\n    from ..data import readers\n",
    }
    root = tmp_path / "covidxr"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    found = check_placement(root, LAYERS) + check_layering(root, LAYERS) + check_cycles(root)
    assert found == [], found
    (root / "atomic.py").write_text(_doc("Atomic writes") + "def f():\n    from .cli import options\n")
    assert check_layering(root, LAYERS) == [
        "atomic.py:4: covidxr.atomic (layer 'atomic') imports covidxr.cli.options (layer 'cli', which is above)"
    ]

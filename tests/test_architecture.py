"""The import rules of docs/architecture.md, read from the source with `ast` (nothing imported).

Every module of `bigssl_jax` and `bigssl_tasks` (tasks/) belongs to one layer of `LAYERS`; a
module may import its own layer and the layers below it, never one above. Besides:

  * the core (every layer below `bigssl_tasks`) imports neither gin, `bigssl_tasks` nor the
    commands;
  * gin is imported only by the commands, `cli.py`, `configurables.py` and `gin_utils.py`;
  * the packages (and flat modules) import each other without a cycle;
  * no library file is over 600 lines, no library function over 80 lines.

Imports inside functions count as much as those at the top of a file.
"""

import ast
import collections
import dataclasses
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
ROOTS = {"bigssl_jax": REPO / "bigssl_jax", "bigssl_tasks": REPO / "tasks"}

# Lowest first: (name, module prefixes). A prefix names a module or a package.
LAYERS = (
    ("utilities", ("bigssl_jax.paths", "bigssl_jax.console")),
    ("layers and losses", ("bigssl_jax.layers", "bigssl_jax.losses")),
    (
        "data, decoding, evaluation",
        ("bigssl_jax.data", "bigssl_jax.decoding", "bigssl_jax.evaluation"),
    ),
    ("models", ("bigssl_jax.models",)),
    (
        "training core",
        (
            "bigssl_jax.train_state",
            "bigssl_jax.train_step",
            "bigssl_jax.trainer",
            "bigssl_jax.optimizers",
            "bigssl_jax.checkpointing",
            "bigssl_jax.partitioning",
            "bigssl_jax.distributed",
            "bigssl_jax.input_pipeline",
            "bigssl_jax.feature_converters",
            "bigssl_jax.batch_mixing",
            "bigssl_jax.inference",
            "bigssl_jax.platform_defaults",
            "bigssl_jax.summaries",
        ),
    ),
    ("seqio tasks", ("bigssl_tasks",)),
    ("experiment", ("bigssl_jax.experiment",)),
    ("jobs", ("bigssl_jax.jobs",)),
    ("gin seam", ("bigssl_jax.configurables", "bigssl_jax.gin_utils")),
    ("commands", ("bigssl_jax.commands",)),
    ("cli", ("bigssl_jax.cli",)),
)
CORE = {name for name, _ in LAYERS[: [n for n, _ in LAYERS].index("seqio tasks")]}
GIN_ALLOWED = (
    "bigssl_jax.commands",
    "bigssl_jax.cli",
    "bigssl_jax.configurables",
    "bigssl_jax.gin_utils",
)
PACKAGES = (  # the nodes of the cycle check; every other module is a node of its own
    "bigssl_jax.layers",
    "bigssl_jax.losses",
    "bigssl_jax.data",
    "bigssl_jax.decoding",
    "bigssl_jax.evaluation",
    "bigssl_jax.models",
    "bigssl_jax.jobs",
    "bigssl_jax.commands",
    "bigssl_tasks",
)
MAX_FILE_LINES, MAX_FUNCTION_LINES = 600, 80


@dataclasses.dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (or package), e.g. 'bigssl_jax.models.asr', 'gin'
    line: int

    def where(self, modules: dict) -> str:
        path = modules[self.module].relative_to(REPO)
        return f"{path}:{self.line} ({self.module}) imports {self.target}"


def _modules() -> dict[str, pathlib.Path]:
    """{dotted name: path} of every module of the two packages."""
    modules = {}
    for package, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imports(modules: dict[str, pathlib.Path]) -> list[Import]:
    """Every import statement of every module, resolved to a module where it names one."""
    found = []
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [Import(name, alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package[: len(package) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.append(Import(name, full if full in modules else base, node.lineno))
    return found


MODULES = _modules()
IMPORTS = _imports(MODULES)


def _owner(name: str, prefixes) -> str | None:
    """The longest of `prefixes` that is `name` or a package holding it."""
    matches = [p for p in prefixes if name == p or name.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def _layer(name: str) -> int | None:
    for index, (_, prefixes) in enumerate(LAYERS):
        if _owner(name, prefixes):
            return index
    return None


def _ours(target: str) -> bool:
    return target.split(".")[0] in ROOTS


def _internal_imports():
    """Imports of our modules (a package's own `__init__` and the bare roots left out)."""
    return [i for i in IMPORTS if _ours(i.target) and i.target not in ROOTS]


def test_every_module_has_a_layer():
    loose = [m for m in MODULES if m not in ROOTS and _layer(m) is None]
    assert not loose, (
        f"modules in no layer of tests/test_architecture.py LAYERS: {loose}; place each in "
        "one (see docs/architecture.md)"
    )


def test_no_import_from_a_lower_layer_to_a_higher_one():
    wrong = []
    for imp in _internal_imports():
        low, high = _layer(imp.module), _layer(imp.target)
        if low is not None and high is not None and high > low:
            wrong.append(
                f"{imp.where(MODULES)}: layer '{LAYERS[low][0]}' may not import layer "
                f"'{LAYERS[high][0]}'"
            )
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_no_gin_tasks_or_commands():
    wrong = []
    for imp in IMPORTS:
        layer = _layer(imp.module)
        if layer is None or LAYERS[layer][0] not in CORE:
            continue
        top = imp.target.split(".")[0]
        if top in ("gin", "bigssl_tasks") or _owner(imp.target, ("bigssl_jax.commands",)):
            wrong.append(f"{imp.where(MODULES)}: the core ('{LAYERS[layer][0]}') may not")
    assert not wrong, "\n".join(wrong)


def test_gin_only_at_the_seam():
    wrong = [
        f"{imp.where(MODULES)}: gin belongs to the commands, cli.py, configurables.py and "
        "gin_utils.py only"
        for imp in IMPORTS
        if imp.target.split(".")[0] == "gin" and not _owner(imp.module, GIN_ALLOWED)
    ]
    assert not wrong, "\n".join(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _cycle_report(components, node_of) -> str:
    lines = []
    for component in components:
        lines.append(f"cycle between {component}:")
        lines += [
            f"  {imp.where(MODULES)}"
            for imp in _internal_imports()
            if node_of(imp.module) in component
            and node_of(imp.target) in component
            and node_of(imp.module) != node_of(imp.target)
        ]
    return "\n".join(lines)


def test_no_cycle_between_packages():
    def node_of(name):
        return _owner(name, PACKAGES) or name

    edges = collections.defaultdict(set)
    for imp in _internal_imports():
        if node_of(imp.module) != node_of(imp.target):
            edges[node_of(imp.module)].add(node_of(imp.target))
    components = _cycles(edges)
    assert not components, _cycle_report(components, node_of)


def test_no_cycle_between_modules():
    def node_of(name):
        return name

    edges = collections.defaultdict(set)
    for imp in _internal_imports():
        if imp.target in MODULES and imp.target != imp.module:
            edges[imp.module].add(imp.target)
    components = _cycles(edges)
    assert not components, _cycle_report(components, node_of)


def test_library_files_and_functions_are_short():
    long = []
    for path in MODULES.values():
        source = path.read_text()
        where = path.relative_to(REPO)
        if (lines := len(source.splitlines())) > MAX_FILE_LINES:
            long.append(f"{where}: {lines} lines (at most {MAX_FILE_LINES}): split it by owner")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(
                        f"{where}:{node.lineno}: function {node.name} has {length} lines "
                        f"(at most {MAX_FUNCTION_LINES})"
                    )
    assert not long, "\n".join(long)


def test_the_rules_see_the_imports():
    """The walk finds what it must: a known upward-free import, an in-function import and gin."""
    pairs = {(imp.module, imp.target) for imp in IMPORTS}
    assert ("bigssl_jax.trainer", "bigssl_jax.train_step") in pairs
    assert ("bigssl_jax.configurables", "gin") in pairs
    assert ("bigssl_jax.experiment", "bigssl_tasks.vocab") in pairs  # inside a function

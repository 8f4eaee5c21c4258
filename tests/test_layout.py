"""The package's layout keeps its rules (DESIGN.md, "Layout"): no import circles, a lower room never
imports a higher one, no file over 500 lines (the network's own file excepted), and imports made
inside functions only where they keep ``unio --help`` fast or guard an optional dependency."""
import ast
from collections import defaultdict
from pathlib import Path

UNIO = Path(__file__).resolve().parent.parent / "unio"
MAX_LINES = 500
EXEMPT_LENGTH = {"unio.model.modeling_unio"}  # transformers' "one model, one file"

# Rooms, lowest first; a module may import its own room and the ones below.
LAYERS = [
    ("unio.errors", "unio.resources", "unio.images"),
    ("unio.data", "unio.tokenizers", "unio.metrics", "unio.prompts", "unio.viz"),
    ("unio.vocab",),
    ("unio.model",),
    ("unio.tasks",),
    ("unio.export", "unio.interop", "unio.backends"),
    ("unio.pipeline", "unio.batching"),
    ("unio.evaluate",),
    ("unio.serving",),
    ("unio.recipe", "unio.training"),
    ("unio.cli", "unio.__main__"),
]

# Function-level imports that are there on purpose: heavy modules the `unio` command must not load
# before a subcommand runs, optional dependencies, and lazy registries.
LAZY_ALLOWED = {
    "unio.cli.main",                 # each subcommand imports its library only when it runs
    "unio.training.engine",          # deepspeed: heavy, and its accelerator is picked from the environment
    "unio.training.loop",            # tensorboard: optional
    "unio.tokenizers.image_nets",    # vector-quantize-pytorch: 1.5 s, only when a quantizer is built
    "unio.tokenizers.text",          # torch, only for tensors given to encode/decode
    "unio.data.formats",             # the readers' registry imports a reader when a spec names it
}


def modules() -> dict[str, Path]:
    out = {}
    for path in UNIO.rglob("*.py"):
        name = ".".join(path.relative_to(UNIO.parent).with_suffix("").parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(unio module imported, inside a function) for every import statement of a module."""
    tree = ast.parse(path.read_text())
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" for a in node.names]  # a module, or a name of ``target``
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("unio"):
                found.append((t, id(node) in inner))
    return found


def resolve(target: str, names) -> str | None:
    """The module of ``names`` that ``target`` (a module or a name in one) lives in; None for the
    package's front door, unio/__init__.py, which imports nothing at the top but the errors."""
    while target and target not in names:
        target = target.rpartition(".")[0]
    return None if target in ("", "unio") else target


def layer(name: str) -> int:
    for rank, rooms in enumerate(LAYERS):
        if any(name == r or name.startswith(r + ".") for r in rooms):
            return rank
    return len(LAYERS)  # unio/__init__.py: the front door may reach anything (lazily)


def test_no_import_circles():
    names = modules()
    graph = defaultdict(set)
    for name, path in names.items():
        for target, _ in imports(name, path):
            t = resolve(target, names)
            if t and t != name and not name.startswith(t + "."):  # a package importing its parent: fine
                graph[name].add(t)
    seen, stack, circles = set(), [], []

    def visit(node, path):
        if node in path:
            circles.append(path[path.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        for nxt in sorted(graph[node]):
            # a package's __init__ re-exporting its own modules is not a circle of the layout
            if not nxt.startswith(node + "."):
                visit(nxt, path + [node])

    for n in sorted(names):
        visit(n, [])
    assert not circles, f"import circles: {circles[:3]}"


def test_a_lower_room_never_imports_a_higher_one():
    names = modules()
    wrong = []
    for name, path in names.items():
        for target, _ in imports(name, path):
            t = resolve(target, names)
            if t and layer(t) > layer(name):
                wrong.append(f"{name} imports {t}")
    assert not wrong, "\n".join(wrong)


def test_no_file_over_500_lines():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES and name not in EXEMPT_LENGTH}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_imports_inside_functions_only_where_they_pay():
    hidden = sorted({f"{name}: {target}" for name, path in modules().items() if name not in LAZY_ALLOWED
                     for target, inside in imports(name, path) if inside})
    assert not hidden, "imports made inside functions (move them to the module's top):\n" + "\n".join(hidden)


def test_no_table_keyed_by_task_name_outside_the_tasks():
    """Outside unio/tasks no dict is keyed by task names: what differs between tasks lives in the
    task. Sample fields that share a task's name ("caption", "depth") are not tasks: the readers
    in unio/data and the shapes annotation writer are left out."""
    from unio.tasks import task_names
    names = set(task_names())
    tables = []
    for name, path in modules().items():
        if name.startswith(("unio.tasks", "unio.data", "unio.tokenizers")) or name == "unio.cli.shapes":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value in names for k in node.keys):
                tables.append(f"{name}:{node.lineno}")
    assert not tables, f"dicts keyed by task names: {tables}"

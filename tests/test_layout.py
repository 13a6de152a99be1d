"""The package's shape: rooms and the dependency rule, one atomic writer, thin CLI modules, short files."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "smaformer"
ROOMS_BELOW_VERBS = ("models", "weights", "data", "checkpoint", "runtime", "io_utils")


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    return mods


def _module_name(path: Path, root: Path = PKG) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_imports(path: Path, modules: set[str], root: Path = PKG) -> set[str]:
    """The package's modules that ``path`` imports anywhere (top level, in functions, under TYPE_CHECKING):
    ``from a.b import c`` counts as ``a.b.c`` when that is a module, else as ``a.b``."""
    me, found = _module_name(path, root), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the module's package, one level up per extra dot
                pkg = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return (found & modules) - {me}


def import_cycles(root: Path = PKG) -> list[list[str]]:
    """Strongly connected groups of more than one module in the package's import graph (Tarjan)."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {m: sorted(_package_imports(p, set(files), root)) for m, p in files.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    """Arrows run one way inside the package, lazy imports included (a lazy import only hides a cycle)."""
    assert import_cycles() == []


def test_cycle_finder_sees_a_lazy_cycle(tmp_path):
    pkg = tmp_path / "smaformer"
    (pkg / "train").mkdir(parents=True)
    for name, text in {"__init__.py": "", "train/__init__.py": "",
                       "train/a.py": "from smaformer.train.b import f\n",
                       "train/b.py": "def f():\n    from smaformer.train import a\n"}.items():
        (pkg / name).write_text(text)
    assert import_cycles(pkg) == [["smaformer.train.a", "smaformer.train.b"]]


def _files(*rooms: str) -> list[Path]:
    return [p for r in rooms for p in sorted((PKG / r).rglob("*.py"))] if rooms else sorted(PKG.rglob("*.py"))


def test_rooms_exist_and_engine_is_gone():
    assert not (PKG / "engine").exists()
    for room in ("train", "infer", "export", "tools", "cli", "models", "weights", "data"):
        assert (PKG / room / "__init__.py").is_file(), room


@pytest.mark.parametrize(("room", "forbidden"), [
    ("infer", ("smaformer.train", "smaformer.cli", "smaformer.tools")),
    ("export", ("smaformer.train", "smaformer.cli", "smaformer.tools", "smaformer.infer")),
    ("train", ("smaformer.cli", "smaformer.tools")),
    ("tools", ("smaformer.cli",)),
    *[(r, ("smaformer.train", "smaformer.infer", "smaformer.export", "smaformer.tools", "smaformer.cli"))
      for r in ("models", "weights", "data")],
])
def test_dependency_rule(room, forbidden):
    """cli -> {train, infer, export, tools} -> {models, weights, data, checkpoint, runtime}."""
    for path in _files(room):
        bad = sorted(m for m in _imports(path) if m.startswith(forbidden))
        assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def test_os_replace_lives_in_one_helper():
    users = [p.relative_to(PKG).as_posix() for p in _files() if "os.replace(" in p.read_text(encoding="utf-8")]
    assert users == ["io_utils.py"]


WRITERS = {"write_text", "write_bytes", "savefig", "save", "savez", "savez_compressed", "imwrite"}
# helpers that only ever receive the temp path of their caller's atomic_path block
TEMP_PATH_HELPERS = {"_torch_onnx_export", "_finish_onnx"}


def test_every_file_write_goes_through_atomic_path():
    """A writer call must sit in ``with atomic_path(...)`` or in a lambda handed to ``atomic_write``."""
    bad = []
    for path in _files():
        if path.name == "io_utils.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded: set[int] = set()
        for node in ast.walk(tree):
            atomic = isinstance(node, ast.With) and any(
                isinstance(i.context_expr, ast.Call) and getattr(i.context_expr.func, "id", "") == "atomic_path"
                for i in node.items)
            helper = isinstance(node, ast.FunctionDef) and node.name in TEMP_PATH_HELPERS
            if atomic or helper or isinstance(node, ast.Lambda):
                guarded.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in WRITERS and id(node) not in guarded):
                continue
            first = node.args[0] if node.args else None
            if first is None or (isinstance(first, ast.Name) and first.id == "buf"):   # a method, an in-memory buffer
                continue
            bad.append(f"{path.relative_to(PKG)}:{node.lineno} {node.func.attr}")
    assert not bad, bad


def test_cli_modules_only_parse_and_call():
    for path in _files("cli"):
        if path.name in ("__init__.py", "_common.py"):   # main, and the arguments several commands share
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        public = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                  and not n.name.startswith("_")}
        assert public == {"configure_parser", "run"}, f"{path.name}: {sorted(public)}"


def test_no_file_over_400_lines():
    long = {p.relative_to(PKG).as_posix(): n for p in _files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long

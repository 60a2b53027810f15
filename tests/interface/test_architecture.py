"""The package's layers, read from its own imports: a lower layer never imports a higher one, prediction never
needs the trainer, there is no import circle, and files and functions stay short enough to read: few lines, few
parameters, few medtl modules imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "medtl"
# low to high; a module may import its own layer and the ones below
LAYERS = ("core", "data", "models", "evaluation", "training", "deploy", "experiments", "api", "cli")
TOP_LEVEL = {"__init__": "api", "__main__": "cli"}  # medtl/__init__.py (the lazy API front), python -m medtl
FORBIDDEN = {("deploy", "training")}  # predicting, exporting and serving never load the trainer
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 50
# A function taking more than this wants an options record (deploy/options.py); *args and **kwargs count one
# each (one slot a reader has to understand, and a function cannot hide a list behind them for free); self/cls
# do not count. The one exemption: typer command functions, whose parameters are the command's options.
MAX_PARAMETERS = 8
# A module importing more medtl modules than this does more than one job: split it by responsibility.
MAX_MEDTL_IMPORTS = 12


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    return TOP_LEVEL.get(parts[1], parts[1])


def _dynamic_import(node: ast.AST) -> str | None:
    """The module named by `__import__("medtl.x")`, `importlib.import_module("medtl.x")` or `import_module(...)`
    with a constant name: an import all the same, so it counts like one."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return None
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return node.args[0].value if name in ("__import__", "import_module") else None


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every medtl module `path` imports, at module level or inside functions, by statement or by
    `__import__`/`importlib`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (dynamic := _dynamic_import(node)) is not None:
            names = [dynamic]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from medtl.api import model` imports the module medtl.api.model; `from medtl.api import Run`, the package
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules and n != "medtl"}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports_of(p, set(files)) - {m} for m, p in files.items()}


def test_every_module_is_in_a_known_layer():
    unknown = {m: layer_of(m) for m in graph() if layer_of(m) not in LAYERS}
    assert not unknown, f"modules outside the layers {LAYERS}: {unknown}"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    bad = []
    for module, targets in graph().items():
        low = layer_of(module)
        for target in targets:
            high = layer_of(target)
            if high in LAYERS and (LAYERS.index(high) > LAYERS.index(low) or (low, high) in FORBIDDEN):
                bad.append(f"{module} ({low}) imports {target} ({high})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_circle():
    edges = graph()
    # packages are namespaces here: a module importing `medtl.data.images` does not import `medtl.data`'s siblings
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_files_and_functions_are_short():
    long_files, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(PACKAGE)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and not node.name.isupper():
                    long_functions.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert not long_files and not long_functions, "\n".join(long_files + long_functions)


def parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """What a caller passes: named parameters (self/cls left out), *args and **kwargs one each."""
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + (a.vararg is not None) + (a.kwarg is not None)


def _is_command(node: ast.AST) -> bool:
    """`app.command(...)`: the typer call that registers a command."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "command"


def commands(tree: ast.Module) -> set[str]:
    """Functions of a cli module registered as typer commands: decorated with `@app.command(...)`, or passed
    to `app.command(...)(function)` in its `register(app)`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(map(_is_command, node.decorator_list)):
            names.add(node.name)
        elif isinstance(node, ast.Call) and _is_command(node.func):
            names |= {a.id for a in node.args if isinstance(a, ast.Name)}
    return names


def too_many_parameters(path: Path, relative_to: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    exempt = commands(tree) if "cli" in path.relative_to(relative_to).parts else set()  # medtl/cli/*.py
    return [f"{path.relative_to(relative_to)}:{node.lineno} {node.name}: {parameters(node)} parameters"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and parameters(node) > MAX_PARAMETERS and node.name not in exempt]


def test_functions_take_few_parameters():
    bad = [line for path in sorted(PACKAGE.rglob("*.py")) for line in too_many_parameters(path, PACKAGE)]
    assert not bad, "\n".join(bad)


def dependencies(targets: set[str]) -> set[str]:
    """The medtl modules imported, a package left out when a module inside it is imported (`from
    medtl.training import distributed` depends on one module: the package is a namespace, as for the circles)."""
    return {t for t in targets if not any(o.startswith(t + ".") for o in targets)}


def test_modules_import_few_medtl_modules():
    bad = {m: sorted(dependencies(t)) for m, t in graph().items() if len(dependencies(t)) > MAX_MEDTL_IMPORTS}
    assert not bad, "\n".join(f"{m} imports {len(t)} medtl modules: {', '.join(t)}" for m, t in sorted(bad.items()))


def test_the_caps_see_a_violation(tmp_path):
    """The parameter and import caps can fail: nine parameters are reported, a typer command's are not; a
    package imported beside its module counts once, and thirteen modules are too many."""
    cli = tmp_path / "cli" / "x.py"
    cli.parent.mkdir()
    cli.write_text("def register(app):\n    app.command()(cmd)\n\n"
                   "def cmd(a, b, c, d, e, f, g, h, i):\n    pass\n\n"
                   "@app.command()\ndef other(a, b, c, d, e, f, g, h, i):\n    pass\n\n"
                   "def helper(self, a, b, c, d, e, f, g, *rest, **options):\n    pass\n\n"
                   "def fine(self, a, b, c, d, e, f, g, h):\n    pass\n")
    assert [line.split()[1] for line in too_many_parameters(cli, tmp_path)] == ["helper:"]
    assert dependencies({"medtl.training", "medtl.training.loop", "medtl.core.io"}) == {"medtl.training.loop",
                                                                                         "medtl.core.io"}
    assert len(dependencies({f"medtl.core.m{i}" for i in range(MAX_MEDTL_IMPORTS + 1)})) > MAX_MEDTL_IMPORTS


def test_the_walker_sees_a_violation(tmp_path):
    """The check can fail: a data module importing the trainer is reported."""
    pkg = tmp_path / "medtl" / "data"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text("def f():\n    from medtl.training.run import run\n"
                                "def g():\n    return importlib.import_module('medtl.deploy.serve')\n"
                                "def h():\n    return __import__('medtl.cli.card', fromlist=['register'])\n")
    found = imports_of(pkg / "bad.py", {"medtl.training.run", "medtl.data.bad", "medtl.deploy.serve",
                                        "medtl.cli.card"})
    assert found == {"medtl.training.run", "medtl.deploy.serve", "medtl.cli.card"}
    assert LAYERS.index(layer_of("medtl.training.run")) > LAYERS.index(layer_of("medtl.data.bad"))


def _strings(node: ast.AST) -> list[str]:
    """The string constants of an operand: itself, or the items of a literal tuple, list or set."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]


def test_no_strategy_name_is_compared_outside_the_registry():
    """A strategy is asked for its record (medtl/core/strategies/: `get_strategy(name).cached`, ...), never
    compared by name: a new strategy is then one module and one registry line."""
    from medtl.core.strategies import NAMES

    registry = PACKAGE / "core" / "strategies"
    bad = []
    for path in sorted(p for p in PACKAGE.rglob("*.py") if registry not in p.parents):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            named = {s for o in operands for s in _strings(o)} & set(NAMES)
            if named and any("strategy" in ast.unparse(o) for o in operands):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "\n".join(bad)


def test_the_config_and_the_strategy_registry_load_without_torch():
    """The command line reads and checks its config before torch is loaded (a memory limit, `--help`, a bad
    setting: one line, no wait); a strategy's module imports torch only where its rule runs."""
    import subprocess
    import sys

    code = "import sys, medtl.core.config, medtl.core.strategies; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def _records() -> set[str]:
    """The names of medtl's dataclasses (its records)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    "dataclass" in ast.unparse(d) for d in node.decorator_list):
                names.add(node.name)
    return names


MAX_POSITIONAL = 5  # a record built with more positional arguments than this is read by counting commas


def test_no_record_is_built_with_more_than_five_positional_arguments():
    records, bad = _records(), []
    for path in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "tests").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and len(node.args) > MAX_POSITIONAL:
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in records:
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name} with {len(node.args)}")
    assert not bad, "name the fields past the fifth:\n" + "\n".join(bad)


PHASES = ("medtl.training.initialize", "medtl.training.train", "medtl.training.finalize")


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for t in edges.get(todo.pop(), ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_the_run_phases_stand_side_by_side():
    """Issue 35: initialize, train and finalize hand each other records (training/prepared.py: Prepared,
    Trained, Scored), never import each other, not even through another module; the run puts them together."""
    edges = graph()
    crossed = [f"{a} reaches {b}" for a in PHASES for b in PHASES if a != b and b in reachable(edges, a)]
    assert not crossed, "\n".join(crossed)
    assert set(PHASES) <= edges["medtl.training.run"]

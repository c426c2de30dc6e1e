"""The folder tree is the architecture: each subpackage of top/ is a layer, and imports point down.

Read from the source with ``ast`` (nothing is imported), so a new module is held to the rule the
moment it exists. docs/DESIGN.md draws the same picture.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

TOP = Path(__file__).resolve().parents[1] / "top"

# Each layer and the layers it may import, besides itself and ``top.errors`` (which every module
# may import). Bottom to top; a layer never imports one above it or beside it.
LAYERS: Dict[str, Set[str]] = {
    "settings": set(),
    "storage": {"settings"},
    "method": {"settings", "storage"},
    "data": {"settings", "storage"},
    "runtime": {"settings"},
    "deploy": {"settings", "storage", "method"},
    "evaluation": {"settings", "storage", "method", "data", "runtime", "deploy"},
    "training": {"settings", "storage", "method", "data", "runtime", "deploy", "evaluation"},
    "commands": {"settings", "storage", "method", "data", "runtime", "deploy", "evaluation", "training"},
}
# The modules at top/ itself: the package, the one-sentence error, and the entry points above the
# commands (``cli`` imports the command modules by name, when one is asked for, and the storage
# layer's reading of a full disk and of the crash tests' hook).
ROOT_MODULES = {"top", "top.errors", "top.cli", "top.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(TOP.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(path): path for path in sorted(TOP.rglob("*.py"))}


def top_imports(path: Path) -> Iterator[Tuple[str, int, bool]]:
    """(imported top name, line, inside a function) for every import of ``top.*`` in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def walk(node: ast.AST, in_function: bool) -> Iterator[Tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # ``from top.x import y`` names a module or an attribute; resolve() finds which.
                if child.module == "top" or child.module.startswith("top."):
                    for alias in child.names:
                        yield f"{child.module}.{alias.name}", child.lineno, in_function
            elif isinstance(child, ast.ImportFrom) and child.level:
                yield "<relative>", child.lineno, in_function
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "top" or alias.name.startswith("top."):
                        yield alias.name, child.lineno, in_function
            yield from walk(child, inside)

    yield from walk(tree, False)


def resolve(target: str, names: Dict[str, Path]) -> str:
    """The module an imported name lives in: the longest prefix that is a module of top."""
    while target not in names and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def layer_of(name: str) -> str:
    """The layer a module belongs to: its subpackage, or the module itself at top/."""
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else name


def test_top_holds_the_layers_and_the_entry_points_only():
    found = {module_name(path) for path in TOP.glob("*.py")} | {
        f"top.{path.name}" for path in TOP.iterdir() if path.is_dir() and (path / "__init__.py").is_file()
    }
    assert found == ROOT_MODULES | {f"top.{layer}" for layer in LAYERS}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_says_its_one_job(layer):
    docstring = ast.get_docstring(ast.parse((TOP / layer / "__init__.py").read_text(encoding="utf-8")))
    assert docstring and len(docstring.split(".")[0]) > 20, f"top/{layer}/__init__.py needs a docstring"


def test_imports_point_down_the_layers():
    names = modules()
    wrong: List[str] = []
    for name, path in names.items():
        source = layer_of(name)
        for target, line, _ in top_imports(path):
            if target == "<relative>":
                wrong.append(f"{name}:{line} uses a relative import")
                continue
            target = resolve(target, names)
            destination = layer_of(target)
            if target in ("top", "top.errors") or destination == source:
                continue
            if source in LAYERS and destination in LAYERS[source]:
                continue
            if source in ("top.cli", "top.__main__") and (destination in ("commands", "top.cli") or (
                    source == "top.cli" and destination == "storage")):
                continue  # the command line sits above the commands; it reads a full disk as storage sees it
            wrong.append(f"{name}:{line} imports {target} ({source} -> {destination})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_imports_of_top_sit_at_module_top():
    """A file's dependencies are read at its top; none is hidden inside a function."""
    inner = [f"{name}:{line} imports {target}" for name, path in modules().items()
             for target, line, in_function in top_imports(path) if in_function]
    assert not inner, "imports of top inside functions:\n" + "\n".join(inner)


def test_no_import_cycles():
    names = modules()
    graph: Dict[str, Set[str]] = {}
    for name, path in names.items():
        targets = set()
        for target, _, _ in top_imports(path):
            target = resolve(target, names)
            if target not in (name, "top") and target in names:
                targets.add(target)
        graph[name] = targets
    state: Dict[str, int] = {}

    def visit(node: str, trail: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_rule_sees_an_import_against_it(tmp_path):
    """The checker itself: an upward import and a function-level one are both found."""
    probe = tmp_path / "probe.py"
    probe.write_text("from top.commands import train\n\ndef f():\n    from top.method import gates\n")
    assert list(top_imports(probe)) == [("top.commands.train", 1, False), ("top.method.gates", 4, True)]
    names = modules()
    assert resolve("top.storage.io.atomic_write_json", names) == "top.storage.io"
    assert layer_of("top.commands.train") == "commands" and layer_of("top.storage") == "storage"
    assert "commands" not in LAYERS["training"] and "training" not in LAYERS["evaluation"]


def command_modules() -> Dict[str, str]:
    """``top.commands.<module>`` of each sub-command, by command name (read from top/cli.py's COMMANDS)."""
    tree = ast.parse((TOP / "cli.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMMANDS" for t in node.targets):
            table = ast.literal_eval(node.value)
            return {name: module for name, (module, _) in table.items()}
    raise AssertionError("top/cli.py has no COMMANDS table")


# The modules of commands/ that every command may use; a command's own helpers are named after it
# (``demo_stages`` is the demo's).
SHARED_COMMAND_MODULES = {"top.commands.flags"}
MAX_COMMAND_LINES = 300


def test_no_command_imports_another_command():
    names = modules()
    commands = command_modules()
    wrong = []
    for module in commands.values():
        own = module.rsplit(".", 1)[1]
        for target, line, _ in top_imports(names[module]):
            target = resolve(target, names)
            if layer_of(target) != "commands" or target in SHARED_COMMAND_MODULES or target == module:
                continue
            if not target.rsplit(".", 1)[1].startswith(own + "_"):
                wrong.append(f"{module}:{line} imports {target}")
    assert not wrong, "commands that import other commands:\n" + "\n".join(wrong)


def test_commands_are_the_thin_edge():
    """The command line is flags -> config -> one library call: no module in commands/ is long."""
    long = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()
            if layer_of(name) == "commands"}
    assert {k: v for k, v in long.items() if v > MAX_COMMAND_LINES} == {}


SCRIPTS = TOP.parent / "scripts"


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*.py")), ids=lambda p: p.name)
def test_scripts_are_thin_entry_points(script):
    """A script changes no import path and imports no private name of top (the library's, or a test's)."""
    source = script.read_text(encoding="utf-8")
    tree = ast.parse(source)
    assert "sys.path" not in source, f"{script.name} changes sys.path; import the installed package instead"
    private = [f"{script.name}:{node.lineno} imports {alias.name}" for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "top"
               for alias in node.names if alias.name.startswith("_")]
    assert not private, "\n".join(private)
    upward = [f"{script.name}:{node.lineno} imports {node.module}" for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("top.commands")]
    assert not upward, "scripts call the library, not the commands:\n" + "\n".join(upward)


# The command layer's edge: the functions that may read an argparse Namespace (``args``).
EDGE = {"run", "add_arguments", "config_from_args", "parse_known_args"}


def test_no_namespace_below_the_commands_edge():
    """Only a command's run() and the builders of its settings objects take ``args``; all else takes settings."""
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.args + node.args.kwonlyargs + node.args.posonlyargs
                takes = any(a.arg == "args" or "Namespace" in ast.dump(a.annotation or ast.Constant(None))
                            for a in arguments)
                if takes and (layer_of(name) != "commands" or node.name not in EDGE):
                    found.append(f"{name}:{node.lineno} {node.name}")
    assert not found, "functions below the commands' edge that take a Namespace:\n" + "\n".join(found)

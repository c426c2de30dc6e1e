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
    "storage": set(),
    "method": {"storage"},
    "data": {"storage"},
    "evaluation": {"storage", "method", "data"},
    "training": {"storage", "method", "data", "evaluation"},
    "commands": {"storage", "method", "data", "evaluation", "training"},
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


# The command layer's edge: the functions that may read an argparse Namespace (``args``).
EDGE = {"run", "add_arguments", "settings_from", "arguments_record", "data_source", "run_options", "schedule",
        "train_options", "finetune_options"}


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

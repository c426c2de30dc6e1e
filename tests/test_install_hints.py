"""Every install hint in the repository installs this project.

The distribution is `top-pruning`, installed from a clone (`pip install -e '.[onnx]'`); PyPI's `top`
is an unrelated package, so a hint like `pip install top` or `pip install 'top[onnx]'` installs the
wrong thing. This test reads the repository's code and docs for such hints.
"""

import re
from pathlib import Path

import pytest

from top.errors import DISTRIBUTION, install_hint

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()

# `pip install top`, `pip install -U top`, `pip install 'top[onnx]'`, `pip3 install "top[data,plot]"`; and
# the extra quoted as if it were this project's distribution name: `top[onnx]`.
WRONG = re.compile(
    r"pip3?\s+install\s+(?:-[-\w]+\s+)*['\"]?top(?:\[[^\]]*\])?['\"]?(?![-\w.\[])"
    r"|[`'\"]top\[[\w,\s]+\][`'\"]"
)
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".in", ".ini", ".rst"}
TEXT_NAMES = {"Dockerfile", "run"}  # .ci/run
SKIP_DIRS = {".git", ".nox", ".venv", "venv", "node_modules", "outputs", "checkpoints", "data", "bench",
             "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", ".hf-cache"}


def repository_files():
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
            continue
        if parts[0].startswith(".") and parts[0] != ".ci":
            continue
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES) and path != THIS:
            yield path


@pytest.mark.parametrize("line", [
    "pip install top",
    "run `pip install top` first",
    "pip install -U top",
    "pip install 'top[onnx]'",
    'pip3 install "top[data,plot]"',
    "null without `top[onnx]`)",
])
def test_the_pattern_finds_a_wrong_hint(line):
    assert WRONG.search(line), line


@pytest.mark.parametrize("line", [
    "pip install -e '.[onnx]' in a clone of this project (top-pruning)",
    "pip install -e .",
    "pip install top-pruning",
    "pip install topk",
    "pip install tomli",
    "pip install nox && nox -s demo",
    "python -m top eval",
    install_hint("onnx"),
    install_hint(),
])
def test_the_pattern_passes_a_right_hint(line):
    assert not WRONG.search(line), line


def test_no_file_hints_at_pypis_top():
    files = list(repository_files())
    names = {path.relative_to(ROOT).as_posix() for path in files}
    assert {"README.md", "docs/DEPLOY.md", "top/errors.py", "scripts/prepare_glue.py"} <= names
    wrong = [
        f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if WRONG.search(line)
    ]
    assert not wrong, "hints that install PyPI's unrelated `top`:\n" + "\n".join(wrong)


def test_the_one_hint_names_this_project():
    hint = install_hint("onnx")
    assert hint.startswith("pip install -e '.[onnx]'") and DISTRIBUTION in hint
    assert f'name = "{DISTRIBUTION}"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")

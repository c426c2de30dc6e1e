"""`top` refuses transformers 5 or later in one sentence (exit 2) instead of failing deep in modeling."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from top import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "version, refused",
    [("4.16.0", False), ("4.57.6", False), ("4.99.0.dev0", False), (None, False),
     ("5.0.0", True), ("5.0.0rc1", True), ("5.2.1", True), ("12.0", True)],
)
def test_only_transformers_5_and_later_are_refused(monkeypatch, version, refused):
    monkeypatch.setattr(cli, "installed_version", lambda name: version if name == "transformers" else "1.0")
    problem = cli.unsupported_stack()
    assert (problem is not None) == refused
    if refused:
        assert f"transformers {version} is installed" in problem and "needs transformers 4.x" in problem
        assert problem.endswith(".") and problem.count(". ") == 0 and "\n" not in problem


def test_main_exits_2_before_parsing_anything(monkeypatch, capsys):
    monkeypatch.setattr(cli, "installed_version", lambda name: "5.0.0")
    # An argument that would otherwise be an argparse error (exit 2 with usage): the stack check comes first.
    assert cli.main(["reproduce", "--report", "absent.json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == ["error: " + cli.unsupported_stack()]


def test_the_real_metadata_is_read():
    import transformers

    assert cli.installed_version("transformers") == transformers.__version__
    assert cli.installed_version("no-such-distribution-top") is None
    assert cli.unsupported_stack() is None


def test_python_m_top_with_transformers_5_metadata_first_on_the_path(tmp_path):
    """A transformers 5.0.0 distribution found first on sys.path, as pip would leave it: one line, exit 2."""
    dist = tmp_path / "transformers-5.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 5.0.0\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    done = subprocess.run([sys.executable, "-m", "top", "eval", "--help"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: top needs transformers 4.x but transformers 5.0.0")

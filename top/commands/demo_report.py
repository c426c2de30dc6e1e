"""``top demo``'s report: what ToP keeps of one sentence, the plots, report.json and report.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from top.commands.demo_recipe import TARGETS
from top.data import batching
from top.runtime import machine


def token_example(loaded, eval_data, max_seq_length: int, index: int = 0) -> List[Dict[str, Any]]:
    """The word pieces that survive each layer for one dev sentence (faithful mode)."""
    example = eval_data.dev[index]
    encoded = batching.encode([example], loaded.tokenizer, max_seq_length, padding="longest")
    inputs = {k: v.to(next(loaded.model.parameters()).device) for k, v in encoded.items() if k != "labels"}
    with torch.no_grad():
        out = loaded.model(**inputs, mode="faithful", token_z=loaded.token_z, pruner_z=loaded.pruner_z)
    tokens = loaded.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    layers = []
    for layer, keep in enumerate(out.keep_masks):
        kept = tokens if keep is None else [t for t, k in zip(tokens, keep[0].tolist()) if k]
        layers.append({"layer": layer, "kept": len(kept), "tokens": kept})
    return layers


def plot(out: Path, records: Dict[str, Any]) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    teacher_kept = records["teacher"]["mean_kept_tokens_per_layer"]
    pruned_kept = records["faithful"]["mean_kept_tokens_per_layer"]
    layers = list(range(len(teacher_kept)))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar([i - 0.2 for i in layers], teacher_kept, width=0.4, label="teacher (dense)", color="#9aa5b1")
    ax.bar([i + 0.2 for i in layers], pruned_kept, width=0.4, label="ToP (pruned)", color="#2f6fb0")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean tokens computed")
    ax.set_title("Tokens kept per layer (dev set)")
    ax.set_xticks(layers)
    ax.legend()
    fig.tight_layout()
    paths.append(out / "kept_tokens_per_layer.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
    names = ["teacher", "ToP"]
    scores = [100 * records["teacher"]["metrics"]["accuracy"], 100 * records["faithful"]["metrics"]["accuracy"]]
    reductions = [1.0, records["faithful"]["flops_reduction_unpadded"]]
    axes[0].bar(names, scores, color=["#9aa5b1", "#2f6fb0"])
    axes[0].set_ylim(min(scores) - 5, 100)
    axes[0].set_ylabel("dev accuracy (%)")
    axes[1].bar(names, reductions, color=["#9aa5b1", "#2f6fb0"])
    axes[1].set_ylabel("FLOPs reduction (x, unpadded)")
    axes[1].set_ylim(0, max(reductions) * 1.15)
    for ax, values, fmt in ((axes[0], scores, "{:.1f}"), (axes[1], reductions, "{:.2f}x")):
        for i, v in enumerate(values):
            ax.text(i, v, fmt.format(v), ha="center", va="bottom")
    fig.suptitle("Teacher against the pruned model")
    fig.tight_layout()
    paths.append(out / "teacher_vs_pruned.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def standard_error(accuracy: float, n: int) -> float:
    """One binomial standard error of an accuracy measured on ``n`` examples, in points."""
    return 100 * math.sqrt(accuracy * (1 - accuracy) / n)


def build_report(records, bench, recipe, duration, example, pruned_dir: Path,
                 onnx: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    teacher, faithful, compact = records["teacher"], records["faithful"], records["compact"]
    n_dev = max(1, len(faithful["predictions"]))
    agree = sum(
        a["prediction"] == b["prediction"] for a, b in zip(faithful["predictions"], compact["predictions"])
    ) / n_dev
    pruned = {
        "score": 100 * faithful["metrics"]["accuracy"],
        "score_standard_error": standard_error(faithful["metrics"]["accuracy"], n_dev),
        "flops_reduction": faithful["flops_reduction"],
        "flops_reduction_unpadded": faithful["flops_reduction_unpadded"],
        "compact_speedup": bench["baselines"]["dense_padded"]["speedup"] if bench else None,
        "compact_speedup_vs_dense_dynamic": bench["baselines"]["dense_dynamic"]["speedup"] if bench else None,
        "compact_score": 100 * compact["metrics"]["accuracy"],
        "compact_agreement_with_faithful": agree,
        "checkpoint": str(pruned_dir),
        "reached_target": pruned_dir.name == "best",
        "expected_sparsity": faithful["expected_sparsity"],
        "remaining_token_ratio": faithful["remaining_token_ratio"],
        "mean_kept_tokens_per_layer": faithful["mean_kept_tokens_per_layer"],
    }
    onnx_bench = (onnx or {}).get("bench")
    # The pruned ONNX graph against the same weights exported dense, batch 1, in onnxruntime, and
    # against the stock export after onnxruntime's transformer optimizer (what a user would deploy).
    pruned["onnx_speedup"] = onnx_bench["baselines"]["dense_padded"]["speedup"] if onnx_bench else None
    pruned["onnx_speedup_vs_dense_dynamic"] = (
        onnx_bench["baselines"]["dense_dynamic"]["speedup"] if onnx_bench else None
    )
    optimized = (onnx_bench or {}).get("baselines", {}).get("optimized_dense_dynamic")
    pruned["onnx_speedup_vs_optimized_dense_dynamic"] = optimized["speedup"] if optimized else None
    pruned["onnx_model"] = (onnx or {}).get("model")
    pruned["onnx_note"] = (onnx or {}).get("note") if onnx is not None else "not run (--no-bench)"
    return {
        "teacher": {"metric": "accuracy", "score": 100 * teacher["metrics"]["accuracy"],
                    "score_standard_error": standard_error(teacher["metrics"]["accuracy"], n_dev)},
        "pruned": pruned,
        "duration_s": round(duration, 1),
        "targets": dict(TARGETS, min_score=100 * teacher["metrics"]["accuracy"] - TARGETS["max_score_drop"]),
        "recipe": recipe,
        "bench": bench,
        "bench_onnx": onnx_bench,
        "example": example,
    }


def render_markdown(report: Dict[str, Any]) -> str:
    t, p, r, goal = report["teacher"], report["pruned"], report["recipe"], report["targets"]
    lines = [
        "# ToP demo: MiniLM-L6 on Rotten Tomatoes snippets",
        "",
        f"Data: {r['n_train']} train / {r['n_select']} selection / {r['n_dev']} dev sentences (seed {r['seed']}): "
        "best/ is chosen on the selection set, and every score below is on the dev set. Labels from the sign of the",
        "mean human rating. Model: MiniLM-L6-H384-uncased, fine-tuned, then pruned at layers "
        f"{r['prune_location']} to a MAC sparsity of {r['target_sparsity']}.",
        "",
        "| | accuracy (%, ± one standard error) | FLOPs reduction (vs 64 tokens) | FLOPs reduction (unpadded) "
        "| speed-up (CPU) |",
        "| --- | --- | --- | --- | --- |",
        f"| teacher (dense) | {t['score']:.2f} ± {t['score_standard_error']:.2f} | 1.00x | 1.00x | 1.00x |",
        f"| ToP, faithful | {p['score']:.2f} ± {p['score_standard_error']:.2f} | {p['flops_reduction']:.2f}x | "
        f"{p['flops_reduction_unpadded']:.2f}x | |",
        f"| ToP, compact | {p['compact_score']:.2f} | | | "
        + (f"{p['compact_speedup']:.2f}x vs padded, {p['compact_speedup_vs_dense_dynamic']:.2f}x vs dynamic |"
           if p["compact_speedup"] else "not measured |"),
        "",
        "ONNX (onnxruntime, batch 1): "
        + (f"{p['onnx_speedup']:.2f}x vs dense padded, {p['onnx_speedup_vs_dense_dynamic']:.2f}x vs dense "
           "unpadded"
           + (f", {p['onnx_speedup_vs_optimized_dense_dynamic']:.2f}x vs the stock export optimized by "
              "onnxruntime, unpadded" if p.get("onnx_speedup_vs_optimized_dense_dynamic") else "")
           + f"; the model is {p['onnx_model']}." if p.get("onnx_speedup") else f"{p.get('onnx_note')}."),
        "",
        f"Compact agrees with faithful on {100 * p['compact_agreement_with_faithful']:.1f}% of the predictions. "
        f"Wall time: {report['duration_s'] / 60:.1f} minutes"
        + (f" on {machine.one_line(report['machine'])}" if report.get("machine") else "")
        + "".join(f"; estimated {e['minutes']:.0f} after {e['step']} {e['after']} steps"
                  for e in report.get("time_estimates", [])) + ".",
        "",
        f"Targets: pruned score at least the teacher's minus {goal['max_score_drop']:g} points "
        f"({'met' if p['score'] >= goal['min_score'] else 'MISSED'}); unpadded FLOPs reduction at "
        f"least {goal['min_flops_reduction_unpadded']:g}x "
        f"({'met' if p['flops_reduction_unpadded'] >= goal['min_flops_reduction_unpadded'] else 'MISSED'}); "
        f"at most {goal['max_minutes']:g} minutes "
        f"({'met' if report['duration_s'] <= 60 * goal['max_minutes'] else 'MISSED'}).",
        "",
        "Kept tokens per layer (mean over the dev set): "
        + ", ".join(f"{v:.1f}" for v in p["mean_kept_tokens_per_layer"]),
        "",
        "![kept tokens](kept_tokens_per_layer.png) ![teacher vs pruned](teacher_vs_pruned.png)",
        "",
        "## What ToP keeps: one dev sentence",
        "",
    ]
    for layer in report["example"]:
        lines.append(f"- layer {layer['layer']} ({layer['kept']} tokens): `{' '.join(layer['tokens'])}`")
    return "\n".join(lines) + "\n"

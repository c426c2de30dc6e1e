"""``top.calibrate(config)``: time compact inference on this machine and fit its latency model (``latency.json``).

What is timed is what ``top bench`` times, on the same batches: the validation file's examples
sorted by length into batches of ``--batch-size`` (each cut to its longest), compact inference
(:func:`top.method.compact.compact_forward` on the prepacked kernels of :mod:`top.method.prepacked`
where ``top bench`` uses them; with ``--runtime onnxruntime`` the exported pruned graph) and the
stock dense model on the same batches (``dense_dynamic``; the dense export in onnxruntime).

A point is one batch under one gate setting (a *profile*): no pruning, the same keep ratio at
every prune location, or random ratios with some locations off; for the dense model, one batch
cut to a shorter width. Each profile changes how many tokens each layer keeps, so the points
spread over the terms of :mod:`top.method.latency`. Every point runs once untimed, then
``--repeats`` rounds time every point once, in a fresh random order each round (so drift in the
machine's load falls on all alike); a point's time is its median. A quarter of the points, drawn
at random, are held back; the models are fitted on the rest and their error is reported on the
held-back ones. Nothing here depends on the model's gates or its weights' values, only on its
architecture: a dense fine-tuned model calibrates as well as a pruned one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch

from top.data import sources
from top.data.batching import check_max_seq_length, check_token_ids, encode
from top.data.tasks import get_task
from top.deploy.export import ONNX_INSTALL, export_model, onnxruntime_available, onnxruntime_session
from top.errors import UserError
from top.evaluation.config import CalibrateConfig
from top.evaluation.torch_timing import sorted_batches
from top.method import latency, prepacked
from top.method.checkpoint import load_checkpoint
from top.method.compact import CompactPlan, compact_forward
from top.method.gates import check_prune_locations, default_prune_locations
from top.method.modeling import ToPClassifier, stock_model_from_checkpoint
from top.runtime import determinism, machine
from top.runtime.devices import resolve_device
from top.storage.hub import resolve_model
from top.storage.io import atomic_write_json
from top.storage.model_files import load_tokenizer

logger = logging.getLogger(__name__)

BIN_NUM = 50  # rank bins of the timed gates (the custom-data preset's)
EVEN_KEEPS = (0.7, 0.4, 0.15)  # the profiles that keep the same ratio at every location
DENSE_CUTS = (1.0, 0.6, 0.3)  # the widths each batch is timed at by the dense model, as fractions of its own
HELD_BACK = 0.25
# Repeats of the same call that differ by more than this (median over points, (max - min) / median) mean
# the machine was busy while it was timed: a warning.
NOISY = 0.15


@dataclasses.dataclass
class Point:
    """One timed call: a batch under a profile (compact) or at a width (dense)."""

    method: str  # "compact" or "dense"
    label: str
    lengths: List[int]
    features: List[float]
    run: Callable[[], Any]
    seconds: List[float] = dataclasses.field(default_factory=list)
    held_back: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """How much the repeats of this call differ: ``(max - min) / median``."""
        return (max(self.seconds) - min(self.seconds)) / self.median


@dataclasses.dataclass(frozen=True)
class CalibrateResult:
    """Where ``latency.json`` went, and what it holds."""

    path: Path
    record: Dict[str, Any]

    @property
    def summary(self) -> str:
        r = self.record
        per_layer = r["per_layer_ms"]
        held = r["compact"]["fit_error"]["held_back"]
        error = "n/a" if held["median_relative_error"] is None else "{:.1%} (max {:.1%})".format(
            held["median_relative_error"], held["max_relative_error"])
        return (
            "latency model of compact inference at batch {b} on {where} ({t} threads, {rt}): per layer {f:.3f} ms "
            "fixed + {a:.4f} ms per attention token + {ff:.4f} ms per feed-forward token; held-back error {e}; "
            "compact without pruning {s:.2f}x over dense -> {path}".format(
                b=r["batch_size"], where=r["machine"]["gpu"] or r["machine"]["cpu"], t=r["machine"]["threads"],
                rt=r["runtime"], f=per_layer["fixed"], a=per_layer["per_attention_token"],
                ff=per_layer["per_feed_forward_token"], e=error, s=r["measured_unpruned_speedup"], path=self.path,
            )
        )


def calibrate(config: CalibrateConfig) -> CalibrateResult:
    """Run ``top calibrate`` with ``config``: time, fit, write ``config.output``, return the record. Torch's thread
    count and random state are put back on return."""
    with determinism.global_state_restored():
        record = measure(config)
    atomic_write_json(config.output, record)
    return CalibrateResult(Path(config.output), record)


# ----------------------------------------------------------------------------------------------
# What is timed


def _length(config: CalibrateConfig) -> int:
    if config.max_seq_length is not None:
        return config.max_seq_length
    if config.task is None:
        raise UserError("Calibrating on --validation-file without --task needs the length inputs are cut to; "
                        "pass --max-seq-length, e.g. 128 (or --task to take a task's).")
    return get_task(config.task).task_length


def _locations(config: CalibrateConfig, checkpoint, num_layers: int) -> List[int]:
    if config.prune_location is not None:
        locations = [int(p) for p in config.prune_location.split(",") if p.strip()]
        source = f"--prune-location {config.prune_location}"
    elif checkpoint.is_pruned:
        locations, source = list(checkpoint.prune_locations), f"the checkpoint {checkpoint.path}"
    else:
        locations, source = default_prune_locations(num_layers), "the default locations"
    return check_prune_locations(locations, num_layers, source=source, allow_empty=False,
                                 fix=f"give distinct layers of 1..{num_layers - 1} in increasing order")


def _pick(batches: List[Any], count: int) -> List[Any]:
    """``count`` of ``batches`` spread evenly over them (all when there are no more)."""
    if len(batches) <= count:
        return list(batches)
    return [batches[int((k + 0.5) * len(batches) / count)] for k in range(count)]


def profiles(n_locations: int, count: int, seed: int, bin_num: int = BIN_NUM) -> List[Dict[str, Any]]:
    """``count`` gate settings: no pruning, then EVEN_KEEPS at every location, then random keep ratios
    (some locations switched off), as 0/1 masks ``token_z [locations, bins]`` and ``pruner_z [locations]``."""
    rng = random.Random(seed)
    keeps = [[1.0] * n_locations] + [[k] * n_locations for k in EVEN_KEEPS]
    layer_on = [[1.0] * n_locations for _ in keeps]
    while len(keeps) < count:
        keeps.append([rng.uniform(0.05, 1.0) for _ in range(n_locations)])
        layer_on.append([0.0 if rng.random() < 0.25 else 1.0 for _ in range(n_locations)])
    made = []
    for index, (keep, on) in enumerate(zip(keeps[:count], layer_on)):
        token_z = torch.zeros(n_locations, bin_num)
        for row, ratio in enumerate(keep):
            token_z[row, : int(round(ratio * bin_num))] = 1.0
        made.append({"label": f"p{index}", "keep": [round(k, 3) for k in keep], "layer_gates": on,
                     "token_z": token_z, "pruner_z": torch.tensor(on)})
    return made


def _cut(inputs: Dict[str, torch.Tensor], width: int) -> Dict[str, torch.Tensor]:
    return {k: v[:, :width].contiguous() for k, v in inputs.items()}


def _lengths(inputs: Dict[str, torch.Tensor]) -> List[int]:
    return [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(config: CalibrateConfig) -> Dict[str, Any]:
    """The ``latency.json`` record of ``config`` (nothing written)."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    runtime = config.runtime
    if runtime == "onnxruntime" and device.type != "cpu":
        raise UserError("--runtime onnxruntime times the CPU execution provider only; pass --device cpu.")
    if runtime == "onnxruntime" and not onnxruntime_available():
        raise UserError(f"--runtime onnxruntime needs onnx and onnxruntime; {ONNX_INSTALL}.")
    length = _length(config)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    threads = torch.get_num_threads()

    checkpoint = load_checkpoint(resolve_model(config.model, "--model"))
    model_config = checkpoint.config
    check_max_seq_length(length, model_config, f"--model {config.model}")
    num_layers = int(model_config.num_hidden_layers)
    locations = _locations(config, checkpoint, num_layers)
    tokenizer = load_tokenizer(checkpoint.path, "--model", "put the tokenizer files next to the weights")
    data = sources.load(config, length, splits=("dev",))
    encoded = encode(data.dev, tokenizer, length, padding="max_length")
    check_token_ids(encoded, model_config, checkpoint.path)
    encoded.pop("labels", None)
    every = sorted_batches(encoded, config.batch_size)
    full = [b for b in every if b["size"] == config.batch_size]
    if not full:
        raise UserError(f"--validation-file {config.validation_file} has {len(data.dev)} examples, fewer than one "
                        f"batch of {config.batch_size}; pass a smaller --batch-size or a larger file.")
    batches = [{k: v.to(device) for k, v in b["trimmed"].items()} for b in _pick(full, config.max_batches)]

    top_model = ToPClassifier.from_config(copy.deepcopy(model_config), prune_locations=locations)
    top_model.load_checkpoint_weights(checkpoint)
    top_model.eval().to(device)
    dense = stock_model_from_checkpoint(checkpoint).to(device)
    if device.type == "cpu" and runtime == "torch":
        prepacked.prepack(top_model)
    settings = profiles(len(locations), config.profiles, config.seed)
    plans = [CompactPlan.from_gates(p["token_z"].to(device), p["pruner_z"].to(device), locations, length)
             for p in settings]

    workspace = tempfile.TemporaryDirectory(prefix="top-calibrate-") if runtime == "onnxruntime" else None
    try:
        compact_runs, dense_run = _runners(runtime, top_model, dense, settings, threads, workspace)
        points = _points(batches, settings, plans, compact_runs, dense_run, num_layers, runtime)
        _hold_back(points, config.seed)
        logger.info("timing %d points (%d batches of %d, %d profiles, %d repeats) on %s", len(points), len(batches),
                    config.batch_size, len(settings), config.repeats, device.type)
        time_points(points, config.repeats, config.seed, device)
    finally:
        if workspace is not None:
            workspace.cleanup()
    spread = statistics.median(p.spread for p in points)
    if spread > NOISY:
        logger.warning("The repeats of the same call differ by %.0f%% (the median over the points): the machine "
                       "was busy while it was timed; calibrate again when it is quiet, or with more --repeats.",
                       100 * spread)
    return _record(config, checkpoint, locations, length, device, threads, points, settings, batches,
                   time.perf_counter() - started)


def _runners(runtime: str, top_model, dense, settings, threads: int, workspace):
    """Per profile, ``run(inputs, plan)`` of compact inference, and ``run(inputs)`` of the dense model. With
    onnxruntime every profile is its own exported graph (the gates are constants of the graph) and the inputs
    carry numpy copies under ``numpy``, so a timed call converts nothing."""
    if runtime == "torch":
        def compact(inputs, plan):
            return compact_forward(top_model, plan, inputs["input_ids"], inputs["attention_mask"],
                                   inputs.get("token_type_ids")).logits

        def dense_run(inputs):
            return dense(**{k: v for k, v in inputs.items() if k != "numpy"}).logits

        return [compact] * len(settings), dense_run
    directory = Path(workspace.name)
    export_model(top_model, None, None, directory / "dense.onnx", dense=True)
    dense_session = onnxruntime_session(directory / "dense.onnx", threads)
    runs = []
    for setting in settings:
        path = directory / f"{setting['label']}.onnx"
        export_model(top_model, setting["token_z"], setting["pruner_z"], path, source="being calibrated")
        session = onnxruntime_session(path, threads)
        runs.append(lambda inputs, plan, session=session: session.run(["logits"], inputs["numpy"])[0])

    def dense_numpy(inputs):
        return dense_session.run(["logits"], inputs["numpy"])[0]

    return runs, dense_numpy


def _with_numpy(inputs: Dict[str, torch.Tensor], runtime: str) -> Dict[str, Any]:
    if runtime == "torch":
        return inputs
    return dict(inputs, numpy={k: v.cpu().numpy() for k, v in inputs.items()})


def _points(batches, settings, plans, compact_runs, dense_run, num_layers: int, runtime: str) -> List[Point]:
    """The compact points (every batch under every profile) and the dense ones (every batch at DENSE_CUTS)."""
    packed, static = runtime == "torch", runtime != "torch"
    points = []
    for b, batch in enumerate(batches):
        inputs = _with_numpy(batch, runtime)
        lengths = _lengths(batch)
        for setting, plan, run in zip(settings, plans, compact_runs):
            layer_lengths, prune_after = plan.layer_lengths(lengths, num_layers)
            ranking = latency.ranking_layers(plan, prune_after, static)
            features = latency.compact_features(layer_lengths, ranking, packed)
            points.append(Point("compact", f"b{b}-{setting['label']}", lengths, features,
                                lambda run=run, inputs=inputs, plan=plan: run(inputs, plan)))
        width = max(lengths)
        for cut in sorted({max(2, int(round(width * fraction))) for fraction in DENSE_CUTS}, reverse=True):
            cut_batch = _cut(batch, cut)
            cut_inputs = _with_numpy(cut_batch, runtime)
            cut_lengths = _lengths(cut_batch)
            points.append(Point("dense", f"b{b}-w{cut}", cut_lengths, latency.dense_features(cut_lengths),
                                lambda cut_inputs=cut_inputs: dense_run(cut_inputs)))
    return points


def _hold_back(points: List[Point], seed: int) -> None:
    """Mark a random HELD_BACK share of each method's points (never so many that too few are left to fit)."""
    rng = random.Random(seed + 1)
    for method, terms in (("compact", latency.COMPACT_TERMS), ("dense", latency.DENSE_TERMS)):
        mine = [p for p in points if p.method == method]
        count = min(int(round(HELD_BACK * len(mine))), max(0, len(mine) - len(terms) - 1))
        for point in rng.sample(mine, count):
            point.held_back = True


def time_points(points: Sequence[Point], repeats: int, seed: int, device: torch.device) -> None:
    """Every point once untimed, then ``repeats`` rounds of every point once, each round in a fresh random order."""
    rng = random.Random(seed + 2)
    order = list(points)
    with torch.no_grad():
        for point in order:
            point.run()
        _sync(device)
        for _ in range(repeats):
            rng.shuffle(order)
            for point in order:
                _sync(device)
                start = time.perf_counter()
                point.run()
                _sync(device)
                point.seconds.append(time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# The fit and the record


def _fit(points: List[Point], method: str, terms: Sequence[str]) -> Dict[str, Any]:
    mine = [p for p in points if p.method == method]
    fitted = [p for p in mine if not p.held_back]
    coefficients = latency.fit([p.features for p in fitted], [p.median for p in fitted])
    held = [p for p in mine if p.held_back]
    return {
        "terms": list(terms),
        "coefficients": dict(zip(terms, coefficients)),
        "fit_error": {
            "fit": latency.error_summary(latency.relative_errors(coefficients, [p.features for p in fitted],
                                                                 [p.median for p in fitted])),
            "held_back": latency.error_summary(latency.relative_errors(coefficients, [p.features for p in held],
                                                                       [p.median for p in held])),
        },
    }


def _record(config: CalibrateConfig, checkpoint, locations, length: int, device: torch.device, threads: int,
            points: List[Point], settings, batches, seconds: float) -> Dict[str, Any]:
    compact = _fit(points, "compact", latency.COMPACT_TERMS)
    compact.update(packed_tokens=config.runtime == "torch", static_ranking=config.runtime != "torch")
    dense = _fit(points, "dense", latency.DENSE_TERMS)
    c = compact["coefficients"]
    num_layers = int(checkpoint.config.num_hidden_layers)
    coefficients = {"compact": compact["coefficients"], "dense": dense["coefficients"]}
    # Compact without pruning against the dense model at each batch's full width (measured).
    unpruned = {p.label.split("-")[0]: p for p in points if p.method == "compact" and p.label.endswith("-p0")}
    widest: Dict[str, Point] = {}
    for p in points:
        batch = p.label.split("-")[0]
        if p.method == "dense" and (batch not in widest or max(p.lengths) > max(widest[batch].lengths)):
            widest[batch] = p
    measured_unpruned = sum(widest[b].median for b in unpruned) / sum(p.median for p in unpruned.values())
    record = {
        "format": latency.FORMAT,
        "version": latency.VERSION,
        "model": str(checkpoint.path),
        "shape": latency.shape_of(checkpoint.config),
        "batch_size": config.batch_size,
        "max_seq_length": length,
        "validation_file": str(config.validation_file),
        "runtime": config.runtime,
        "machine": latency.timing_conditions(machine.timing_machine(device.type, config.runtime, threads)),
        "prune_locations": list(locations),
        "compact": compact,
        "dense": dense,
        # The compact coefficients read per layer, in milliseconds (the fixed part of the whole pass,
        # embeddings, head and host work included, spread over its layers).
        "per_layer_ms": {
            "fixed": 1000.0 * c["fixed"] / num_layers,
            "per_attention_token": 1000.0 * c["attention_tokens"],
            "per_feed_forward_token": 1000.0 * c["feed_forward_tokens"],
            "per_attention_grid_cell": 1000.0 * c["attention_grid"],
            "ranking": 1000.0 * c["ranking_layers"],
            "per_ranking_grid_cell": 1000.0 * c["ranking_grid"],
        },
        "measured_unpruned_speedup": measured_unpruned,
        "repeat_spread": {"median": statistics.median(p.spread for p in points),
                          "max": max(p.spread for p in points)},
        "profiles": [{k: s[k] for k in ("label", "keep", "layer_gates")} for s in settings],
        "bin_num": BIN_NUM,
        "batches": [_lengths(b) for b in batches],
        "repeats": config.repeats,
        "points": [
            {"method": p.method, "label": p.label, "features": p.features, "median_ms": 1000.0 * p.median,
             "predicted_ms": 1000.0 * latency.predict(
                 [coefficients[p.method][t] for t in (latency.COMPACT_TERMS if p.method == "compact"
                                                      else latency.DENSE_TERMS)], p.features),
             "held_back": p.held_back}
            for p in points
        ],
        "seconds": round(seconds, 1),
        "environment": determinism.environment_record(),
    }
    return record

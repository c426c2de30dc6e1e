"""The frozen teacher's outputs for a whole ``top train`` schedule, computed once per example.

Every step of ``top train`` needs the teacher's logits (logit distillation) and its last layer's
token importance (rank distillation). The teacher is in eval mode and never changes, so its
outputs for an example depend on nothing but the example and one setting of the batch: the
length the batch is cut to (its longest member's; in data parallel, the whole global batch's).
Nothing else about the batch reaches the teacher: no dropout, no gates, no batch statistics.

The cut length ``L`` matters only to the importance, which averages the attention probabilities
over heads and over every query row of the cut batch, padding rows included. Padding keys get
-10000 in the attention mask (a probability of exactly 0), so a real row, the logits and a padding
row ``j`` (which attends to the example's real keys only, at a position that depends on ``j`` alone)
are the same whatever ``L`` is, up to float rounding. With ``S`` the last layer's probabilities
summed over heads (rows are queries), an example of real length ``n`` cut to ``L >= n`` has

    importance_L[c - 1] = sum_{r < L} S[r, c] / (heads * L)   for c = 1 .. n-1, and 0 past n-1.

The batch order is seeded (``top.training.BatchOrder``), so every (example, L) pair of the run's
schedule is known before the first step (:func:`schedule_pairs`). The build runs the teacher once
per example, batched by ``--eval-batch-size`` and padded to the longest ``L`` each example meets,
and keeps the row sums up to each of its ``L`` (in float64, stored as float32).

``OUT/teacher-cache/`` holds ``importance.npy`` (flat float32 values), ``index.npy`` (int64 rows
example, L, offset, count, sorted by example then L), ``logits.npy`` (``[examples, labels]``) and,
written last, ``meta.json``: the key, its parts and each file's size and sha256. The key hashes the
format, the teacher's weights file and config.json, the encoded training set, the schedule
(examples, batch size, seed, processes, steps, length grouping), the attention implementation, the device and the
torch and transformers versions. A cache whose key differs, or that is missing, unreadable,
misshapen or altered, is rebuilt with one log line saying why; files are read with
``numpy.load(allow_pickle=False)``, so nothing in them runs. In data parallel every rank builds a
share of the batches into the temporary directory (``OUT`` must be shared, as ``last/`` assumes);
rank 0 merges the parts and swaps the directory in.

``top train --no-teacher-cache`` runs the teacher at every step instead.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from top.data.batching import MODEL_INPUT_KEYS, Encoded, EncodedSet, as_encoded_set
from top.method.checkpoint import CONFIG_FILE
from top.method.modeling import weights_file
from top.storage.io import atomic_directory, atomic_write_json, sha256_of
from top.training.batch_order import BatchOrder
from top.training.distributed import Distributed

logger = logging.getLogger(__name__)

FORMAT = 2  # 2: the data part hashes the compact encoded set (top.data.batching.EncodedSet)
DIRECTORY = "teacher-cache"
META_FILE = "meta.json"
IMPORTANCE_FILE, INDEX_FILE, LOGITS_FILE = "importance.npy", "index.npy", "logits.npy"
DATA_FILES = (IMPORTANCE_FILE, INDEX_FILE, LOGITS_FILE)
_COPY_CHUNK = 1 << 24  # values per copy when merging the ranks' parts


# ----------------------------------------------------------------------------------------------
# The schedule


def step_cut_lengths(
    lengths: np.ndarray, order: BatchOrder, epoch: int, steps: int
) -> Tuple[np.ndarray, np.ndarray]:
    """The examples of the first ``steps`` global batches of ``epoch`` and the length each is cut to."""
    used = order.permutation(epoch).numpy()[: steps * order.global_batch]
    padded = np.zeros(steps * order.global_batch, dtype=np.int64)
    padded[: len(used)] = lengths[used]
    cut = padded.reshape(steps, order.global_batch).max(axis=1)
    return used.astype(np.int64), np.repeat(cut, order.global_batch)[: len(used)]


def schedule_pairs(lengths: np.ndarray, order: BatchOrder, total_steps: int) -> np.ndarray:
    """The distinct (example, cut length) pairs of steps 0 .. total_steps-1, ``[P, 2]`` int64, sorted."""
    lengths = np.asarray(lengths, dtype=np.int64)
    stride = int(lengths.max()) + 1
    keys = []
    for epoch in range(-(-int(total_steps) // order.steps_per_epoch)):
        steps = min(order.steps_per_epoch, int(total_steps) - epoch * order.steps_per_epoch)
        examples, cut = step_cut_lengths(lengths, order, epoch, steps)
        keys.append(np.unique(examples * stride + cut))
    unique = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
    return np.stack([unique // stride, unique % stride], axis=1)


# ----------------------------------------------------------------------------------------------
# Lookup


@dataclasses.dataclass
class CachedTeacherOutput:
    """What ``top.commands.train.top_loss`` reads of a teacher output: logits and the last layer's importance."""

    logits: torch.Tensor  # [B, C]
    importance: List[torch.Tensor]  # one entry, [B, L-1]: the last layer's


class TeacherCache:
    """The memory-mapped cache files of one schedule (see :func:`prepare`)."""

    def __init__(self, directory: Path, key: Optional[str], importance, index, logits, stride: int):
        self.directory = directory
        self.key = key
        self._importance, self._index, self._logits = importance, index, logits
        self._stride = stride
        self._keys = np.asarray(index[:, 0]) * stride + np.asarray(index[:, 1])

    def teacher_outputs(self, indices: torch.Tensor, length: int, device: torch.device) -> CachedTeacherOutput:
        """The teacher's outputs for the examples ``indices`` in a batch cut to ``length``."""
        examples = np.asarray(indices.cpu().numpy(), dtype=np.int64)
        wanted = examples * self._stride + int(length)
        rows = np.minimum(np.searchsorted(self._keys, wanted), len(self._keys) - 1)
        if not np.array_equal(self._keys[rows], wanted):
            raise RuntimeError(f"the teacher cache has no entry for examples {examples.tolist()} cut to {length}")
        offsets, counts = np.asarray(self._index[rows, 2]), np.asarray(self._index[rows, 3])
        columns = np.arange(int(length) - 1)
        real = columns[None, :] < counts[:, None]
        importance = np.zeros((len(examples), int(length) - 1), dtype=np.float32)
        importance[real] = self._importance[(offsets[:, None] + columns[None, :])[real]]
        logits = np.array(self._logits[examples], dtype=np.float32)
        return CachedTeacherOutput(torch.from_numpy(logits).to(device), [torch.from_numpy(importance).to(device)])


class _Unusable(Exception):
    """Why a cache on disk cannot be used (a sentence fragment for the log)."""


def _load_array(path: Path, dtype, shape: Tuple[Optional[int], ...]) -> np.ndarray:
    try:
        array = np.load(str(path), mmap_mode="r", allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - missing, truncated, pickled: any unreadable file is rebuilt
        raise _Unusable(f"{path.name} cannot be read ({type(error).__name__})") from None
    fits = isinstance(array, np.ndarray) and array.dtype == dtype and array.ndim == len(shape)
    if not fits or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        raise _Unusable(f"{path.name} holds {getattr(array, 'dtype', '?')} {getattr(array, 'shape', '?')}")
    return array


def _load(directory: Path, key: Optional[str], pairs: np.ndarray, lengths: np.ndarray, num_labels: int) -> TeacherCache:
    """The cache files, their shapes and index checked against this run's schedule."""
    index = _load_array(directory / INDEX_FILE, np.int64, (len(pairs), 4))
    importance = _load_array(directory / IMPORTANCE_FILE, np.float32, (None,))
    logits = _load_array(directory / LOGITS_FILE, np.float32, (len(lengths), num_labels))
    table = np.asarray(index)
    offsets, counts = table[:, 2], table[:, 3]
    if not np.array_equal(table[:, :2], pairs) or not np.array_equal(counts, lengths[pairs[:, 0]] - 1):
        raise _Unusable(f"{INDEX_FILE} does not list this run's examples and cut lengths")
    if len(table) and (offsets.min() < 0 or (offsets + counts).max() > len(importance)):
        raise _Unusable(f"{INDEX_FILE} points outside {IMPORTANCE_FILE}")
    return TeacherCache(directory, key, importance, index, logits, int(lengths.max()) + 1)


def _file_record(path: Path) -> Dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def _check(directory: Path, key: str, parts: Dict[str, Any], pairs, lengths, num_labels: int) -> TeacherCache:
    """The cache in ``directory`` if it is this run's, whole and unaltered; else ``_Unusable``."""
    if not directory.is_dir():
        raise _Unusable("there is none yet")
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        files, saved_key, saved_parts = meta["files"], meta["key"], meta["parts"]
    except Exception as error:  # noqa: BLE001 - a missing or damaged meta.json means an unfinished or altered cache
        raise _Unusable(f"its {META_FILE} cannot be read ({type(error).__name__})") from None
    if saved_key != key:
        saved_parts = saved_parts if isinstance(saved_parts, dict) else {}
        changed = [name for name in parts if saved_parts.get(name) != parts[name]]
        raise _Unusable(f"its key differs ({', '.join(changed) or 'key'} changed)")
    cache = _load(directory, key, pairs, lengths, num_labels)
    for name in DATA_FILES:
        entry = files.get(name) if isinstance(files, dict) else None
        if not isinstance(entry, dict) or entry != _file_record(directory / name):
            raise _Unusable(f"{name} differs from what {META_FILE} records")
    return cache


# ----------------------------------------------------------------------------------------------
# The key


def _hash_arrays(arrays: Sequence[Tuple[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for name, array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(json.dumps([name, str(array.dtype), list(array.shape)]).encode("utf-8"))
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _hash_encoded(train_set: EncodedSet) -> str:
    """The encoded training set, as it is stored: each model input's values, the row offsets, the padded
    width and the padding values (the padded tensors follow from them)."""
    digest = hashlib.sha256(json.dumps({"width": train_set.width, "padding": train_set.pad_values},
                                       sort_keys=True).encode("utf-8"))
    arrays = [(key, train_set.fields[key]) for key in train_set.keys] + [("offsets", train_set.offsets)]
    digest.update(_hash_arrays(arrays).encode("ascii"))
    return digest.hexdigest()


def key_parts(teacher, teacher_dir: Path, train_set: Encoded, order: BatchOrder,
              total_steps: int) -> Dict[str, Any]:
    """Everything the cached values depend on, each part hashed or spelt out (the key hashes them all)."""
    import transformers


    digest = hashlib.sha256()
    for path in (weights_file(teacher_dir), Path(teacher_dir) / CONFIG_FILE):
        digest.update(path.name.encode("utf-8") + b"\0" + sha256_of(path).encode("ascii"))
    device = next(teacher.parameters()).device
    return {
        "format": FORMAT,
        "teacher": digest.hexdigest(),
        "data": _hash_encoded(as_encoded_set(train_set)),
        "schedule": {
            "examples": order.num_examples,
            "batch_size": order.global_batch // order.world_size,
            "seed": order.seed,
            "world_size": order.world_size,
            "total_steps": int(total_steps),
            "grouped_by_length": order.lengths is not None,
        },
        "attention": getattr(teacher.config, "_attn_implementation", None) or "eager",
        "device": device.type if device.type != "cuda" else f"cuda {torch.cuda.get_device_name(device)}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def key_of(parts: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------
# Building


@dataclasses.dataclass
class BuildPlan:
    """Which rank computes which examples, in which batches, and where each pair's values go.

    Examples are sorted by the longest cut length they meet and batched; rank ``r`` takes batches
    ``r, r + world_size, ...``. ``importance.npy`` holds rank 0's values, then rank 1's, ...; within
    a rank, batch by batch, example by example, shorter cut lengths first (the "file order").
    """

    pairs: np.ndarray  # [P, 2] example, L (sorted)
    counts: np.ndarray  # [P] values per pair: the example's real length - 1
    layout: np.ndarray  # pair rows in file order
    value_starts: np.ndarray  # [P + 1] where the k-th pair in file order starts in importance.npy
    pair_positions: np.ndarray  # [P] the file-order position of each file-order pair's example
    batches: List[np.ndarray]  # example ids per build batch
    batch_ranks: np.ndarray  # [batches] the rank computing each batch
    batch_positions: np.ndarray  # [batches] the file-order position of each batch's first example

    @classmethod
    def make(cls, pairs: np.ndarray, lengths: np.ndarray, batch_size: int, world_size: int) -> BuildPlan:
        examples, first = np.unique(pairs[:, 0], return_index=True)
        longest = pairs[np.r_[first[1:], len(pairs)] - 1, 1]  # pairs are sorted: each example's last L
        by_length = examples[np.lexsort((examples, longest))]
        batches = [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
        ranks = np.arange(len(batches), dtype=np.int64) % world_size
        sizes = np.array([len(batch) for batch in batches], dtype=np.int64)
        file_order = np.lexsort((np.arange(len(batches)), ranks))
        batch_positions = np.zeros(len(batches), dtype=np.int64)
        batch_positions[file_order] = np.cumsum(sizes[file_order]) - sizes[file_order]
        position = np.zeros(len(lengths), dtype=np.int64)
        if batches:
            position[np.concatenate([batches[b] for b in file_order])] = np.arange(len(examples))
        layout = np.lexsort((pairs[:, 1], position[pairs[:, 0]]))
        counts = lengths[pairs[:, 0]] - 1
        value_starts = np.concatenate([[0], np.cumsum(counts[layout])]).astype(np.int64)
        return cls(pairs, counts, layout, value_starts, position[pairs[layout, 0]], batches, ranks, batch_positions)

    def _pair_range(self, start: int, end: int) -> Tuple[int, int]:
        """The file-order pairs of the examples at file-order positions ``[start, end)``."""
        low, high = np.searchsorted(self.pair_positions, [start, end])
        return int(low), int(high)

    def batch_pairs(self, batch: int) -> Tuple[int, int]:
        start = int(self.batch_positions[batch])
        return self._pair_range(start, start + len(self.batches[batch]))

    def rank_batches(self, rank: int) -> List[int]:
        return [b for b in range(len(self.batches)) if self.batch_ranks[b] == rank]

    def rank_examples(self, rank: int) -> np.ndarray:
        mine = self.rank_batches(rank)
        return np.concatenate([self.batches[b] for b in mine]) if mine else np.zeros(0, dtype=np.int64)

    def segment(self, rank: int) -> Tuple[int, int]:
        """Where rank ``rank``'s values sit in importance.npy: ``[start, end)``."""
        sizes = np.array([len(batch) for batch in self.batches], dtype=np.int64)
        start = int(sizes[self.batch_ranks < rank].sum())
        low, high = self._pair_range(start, start + int(sizes[self.batch_ranks == rank].sum()))
        return int(self.value_starts[low]), int(self.value_starts[high])

    def index(self) -> np.ndarray:
        """``index.npy``: example, L, offset, count per pair, sorted by example then L."""
        offsets = np.zeros(len(self.pairs), dtype=np.int64)
        offsets[self.layout] = self.value_starts[:-1]
        return np.stack([self.pairs[:, 0], self.pairs[:, 1], offsets, self.counts], axis=1).astype(np.int64)


def _part_file(kind: str, rank: int) -> str:
    return f"{kind}.part-{rank}.npy"


def _row_sums(teacher, train_set: EncodedSet, examples: np.ndarray, length: int):
    """One teacher pass over ``examples`` cut to ``length``: the last layer's probabilities summed
    over heads and accumulated over query rows (float64 ``[B, length, length]``), the head count
    and the logits."""
    last = teacher.config.num_hidden_layers - 1
    device = next(teacher.parameters()).device
    batch = train_set.rows(examples, length)
    inputs = {k: batch[k].to(device) for k in MODEL_INPUT_KEYS if k in batch}
    seen: Dict[int, torch.Tensor] = {}

    def keep(index: int, probabilities: torch.Tensor) -> None:
        seen[index] = probabilities

    with torch.no_grad():
        out = teacher(**inputs, mode="faithful", probability_layers=[last], attention_hook=keep)
    probabilities = seen[last]
    summed = probabilities.to(torch.float64).sum(dim=1).cpu().numpy()
    return np.cumsum(summed, axis=1), probabilities.shape[1], out.logits.float().cpu().numpy()


def _new_values(path: Path, size: int) -> Optional[np.ndarray]:
    """A float32 ``.npy`` of ``size`` values mapped for writing (None, and an empty file, for none).

    Its blocks are reserved first: a store through the mapping into a file the disk has no room
    for kills the process (SIGBUS), where reserving them is an ``OSError`` naming the file.
    """
    if size == 0:
        np.save(str(path), np.zeros(0, dtype=np.float32))
        return None
    values = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=(size,))
    _reserve(path)
    return values


def _reserve(path: Path) -> None:
    fd = os.open(str(path), os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # a file system that cannot: as before
            return
        error.filename = str(path)
        raise
    except AttributeError:  # no posix_fallocate (macOS): as before
        return
    finally:
        os.close(fd)


def build_part(tmp: Path, plan: BuildPlan, rank: int, teacher, train_set: EncodedSet,
               progress: bool) -> None:
    """Rank ``rank``'s share: its batches' importance values and logits as part files in ``tmp``."""
    from tqdm import tqdm

    start, end = plan.segment(rank)
    path = tmp / _part_file("importance", rank)
    values = _new_values(path, end - start)
    mine = plan.rank_batches(rank)
    logits = [np.zeros((0, teacher.config.num_labels), dtype=np.float32)]
    for batch in tqdm(mine, desc="teacher cache", disable=not progress, dynamic_ncols=True):
        low, high = plan.batch_pairs(batch)
        rows = plan.layout[low:high]
        cut, counts = plan.pairs[rows, 1], plan.counts[rows]
        in_batch = plan.pair_positions[low:high] - plan.batch_positions[batch]
        running, heads, batch_logits = _row_sums(teacher, train_set, plan.batches[batch], int(cut.max()))
        # Pair by pair, columns 1 .. count of the row sums up to its cut length, over heads * L rows.
        pair = np.repeat(np.arange(len(rows)), counts)
        column = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts) + 1
        mean = running[in_batch[pair], cut[pair] - 1, column] / (heads * cut[pair])
        values[plan.value_starts[low] - start : plan.value_starts[high] - start] = mean.astype(np.float32)
        logits.append(batch_logits)
    if values is not None:
        values.flush()
        del values
    np.save(str(tmp / _part_file("logits", rank)), np.concatenate(logits).astype(np.float32))
    atomic_write_json(tmp / f"part-{rank}.json", {"rank": rank, "pid": os.getpid(), "batches": len(mine)})


def merge_parts(tmp: Path, plan: BuildPlan, num_examples: int, num_labels: int, world_size: int) -> List[Dict]:
    """The ranks' part files joined into importance.npy, logits.npy and index.npy; returns who built what."""
    target = tmp / IMPORTANCE_FILE
    if world_size == 1:
        os.replace(tmp / _part_file("importance", 0), target)
    else:
        merged = _new_values(target, int(plan.value_starts[-1]))
        for rank in range(world_size):
            start, end = plan.segment(rank)
            part = np.load(str(tmp / _part_file("importance", rank)), mmap_mode="r", allow_pickle=False)
            if part.shape != (end - start,):
                raise RuntimeError(f"rank {rank} wrote {part.shape[0]} teacher-cache values, not {end - start}")
            for at in range(0, end - start, _COPY_CHUNK):
                merged[start + at : start + min(at + _COPY_CHUNK, end - start)] = part[at : at + _COPY_CHUNK]
            del part
            (tmp / _part_file("importance", rank)).unlink()
        merged.flush()
        del merged
    logits = np.zeros((num_examples, num_labels), dtype=np.float32)
    built_by = []
    for rank in range(world_size):
        logits[plan.rank_examples(rank)] = np.load(str(tmp / _part_file("logits", rank)), allow_pickle=False)
        (tmp / _part_file("logits", rank)).unlink()
        built_by.append(json.loads((tmp / f"part-{rank}.json").read_text(encoding="utf-8")))
        (tmp / f"part-{rank}.json").unlink()
    np.save(str(tmp / LOGITS_FILE), logits)
    np.save(str(tmp / INDEX_FILE), plan.index())
    return built_by


def build(directory: Path, plan: BuildPlan, teacher, train_set: EncodedSet, key: str,
          parts: Dict[str, Any], dist: Distributed, progress: bool) -> None:
    """Every rank computes its share into one temporary directory; rank 0 merges it and swaps it in."""
    began = time.time()
    num_examples, num_labels = len(train_set), teacher.config.num_labels
    if not dist.is_main:
        tmp = Path(dist.gather_objects(None)[0])
        build_part(tmp, plan, dist.rank, teacher, train_set, progress=False)
        dist.barrier()  # every part written
        dist.barrier()  # rank 0 has swapped the cache in
        return
    with atomic_directory(directory) as tmp:
        dist.gather_objects(str(tmp))
        build_part(tmp, plan, 0, teacher, train_set, progress)
        dist.barrier()
        built_by = merge_parts(tmp, plan, num_examples, num_labels, dist.world_size)
        files = {name: _file_record(tmp / name) for name in DATA_FILES}
        meta = {
            "format": FORMAT, "key": key, "parts": parts, "files": files, "examples": num_examples,
            "pairs": len(plan.pairs), "values": int(plan.value_starts[-1]), "built_by": built_by,
            "seconds": round(time.time() - began, 1),
        }
        atomic_write_json(tmp / META_FILE, meta)  # last: a cache without it is unfinished
    dist.barrier()
    megabytes = sum(entry["bytes"] for entry in files.values()) / 1e6
    logger.info(
        "teacher cache: %d examples, %d (example, cut length) pairs, %d batches: %.1f s, %.1f MB",
        len(np.unique(plan.pairs[:, 0])), len(plan.pairs), len(plan.batches), meta["seconds"], megabytes,
    )


def prepare(directory: Path, teacher, teacher_dir: Path, train_set: Encoded,
            order: BatchOrder, total_steps: int, batch_size: int, dist: Optional[Distributed] = None,
            progress: bool = True) -> TeacherCache:
    """The cache of this run's schedule in ``directory``: reused when its key matches and its files
    are whole, else built (with one log line saying why). Every rank calls it."""
    dist = dist or Distributed()
    directory = Path(directory)
    train_set = as_encoded_set(train_set)
    lengths = train_set.lengths.numpy().astype(np.int64)
    pairs = schedule_pairs(lengths, order, total_steps)
    num_labels = teacher.config.num_labels
    cache = key = parts = reason = None
    if dist.is_main:
        parts = key_parts(teacher, teacher_dir, train_set, order, total_steps)
        key = key_of(parts)
        try:
            cache = _check(directory, key, parts, pairs, lengths, num_labels)
            logger.info("teacher cache: reusing %s (key %s)", directory, key[:12])
        except _Unusable as why:
            reason = str(why)
            logger.info("teacher cache: building %s, because %s", directory, reason)
    key, reason = dist.gather_objects((key, reason))[0]
    if reason is not None:
        plan = BuildPlan.make(pairs, lengths, batch_size, dist.world_size)
        build(directory, plan, teacher, train_set, key, parts, dist, progress and dist.is_main)
    if cache is None:
        try:
            cache = _load(directory, key, pairs, lengths, num_labels)
        except _Unusable as why:
            raise RuntimeError(f"the teacher cache in {directory} cannot be read after it was built: {why}") from None
    return cache

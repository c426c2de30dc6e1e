"""Finding a published checkpoint: a local copy, the Hugging Face cache, or a download.

The environment is read at call time (not at import time, as ``huggingface_hub`` does), so
``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` set by a caller or a test are honoured.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from top.errors import UserError, error_detail
from top.storage.io import atomic_directory, is_local_write_failure

PathLike = Union[str, "os.PathLike[str]"]

# Training leftovers and other frameworks' weights: never needed to evaluate a checkpoint.
IGNORE_PATTERNS = ["optimizer.pt", "scheduler.pt", "rng_state*.pth", "*.msgpack", "*.h5", "*.ot", "*.onnx"]
_TRUE = {"1", "on", "yes", "true"}


# The libraries under a download, whose own warnings (a line per retry of a refused connection,
# `MaxRetryError(...)` reprs) would come before the one sentence a failure ends in.
NETWORK_LOGGERS = ("urllib3", "requests", "huggingface_hub", "datasets", "fsspec", "httpx", "httpcore", "filelock")


@contextlib.contextmanager
def quiet_network_logs() -> Iterator[None]:
    """Silence the HTTP and hub libraries' loggers and warnings for the call, and restore them after.

    A failure still becomes the caller's one sentence (with the library's reason in it); ``top -v``
    (DEBUG) keeps everything.
    """
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in NETWORK_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="(huggingface_hub|urllib3|requests|datasets|fsspec)")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def repo_name(repo_id: str) -> str:
    """``senfu/bert-base-uncased-top-pruned-cola`` -> ``bert-base-uncased-top-pruned-cola``."""
    return repo_id.rstrip("/").split("/")[-1]


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) asks for no network."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The normal Hugging Face hub cache, by the same environment variables huggingface_hub reads."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "huggingface" / "hub"


def missing_message(repo_id: str, task: Optional[str] = None) -> str:
    """One sentence: which checkpoint is missing and the two ways to provide it."""
    what = f"the {task} checkpoint {repo_id}" if task else f"the checkpoint {repo_id}"
    online = "go online (unset HF_HUB_OFFLINE)" if is_offline() else "run once with network access"
    return (
        f"No copy of {what} was found; put it in DIR/{repo_name(repo_id)} and pass --checkpoint-dir DIR, "
        f"or {online} so it downloads into the Hugging Face cache."
    )


def unpublished_message(task: Optional[str] = None) -> str:
    """One sentence: a results-table row without a checkpoint id, and how to evaluate one anyway."""
    return (
        f"The results table lists no checkpoint for {task or 'this task'} (the authors published none); "
        "give its row a Hugging Face id in a table of your own (--results-table FILE) and put the files in "
        "DIR/<repo name> (--checkpoint-dir DIR) or on the Hugging Face hub."
    )


def nothing_found_message(tasks: Sequence[str], checkpoint_dir: Optional[PathLike] = None) -> str:
    """One sentence for a run that found no checkpoint at all: what to download and how."""
    where = f"in --checkpoint-dir {checkpoint_dir} or " if checkpoint_dir is not None else ""
    cause = (f"HF_HUB_OFFLINE is set and the Hugging Face cache at {hub_cache_dir()} has none"
             if is_offline() else "none could be downloaded")
    return (
        f"No checkpoint of {', '.join(tasks)} was found {where}in the Hugging Face cache ({cause}); download them "
        "once online with `python scripts/download_checkpoints.py --output-dir checkpoints`, then pass "
        "--checkpoint-dir checkpoints."
    )


def cached_checkpoint(repo_id: str) -> Optional[Path]:
    """The cached snapshot of ``repo_id`` on its main branch, without touching the network."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, cache_dir=str(hub_cache_dir()), local_files_only=True)
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and friends: simply not cached
        return None
    return Path(path)


def resolve_checkpoint(
    repo_id: str,
    checkpoint_dir: Optional[PathLike] = None,
    progress: bool = True,
    task: Optional[str] = None,
) -> Path:
    """The directory holding ``repo_id``'s files.

    Looked up as ``checkpoint_dir/<repo name>`` first; then the Hugging Face cache, downloading
    into it when online; otherwise a :class:`UserError` naming ``task`` and the two ways to
    provide the checkpoint. Offline (``HF_HUB_OFFLINE=1``) nothing touches the network.
    """
    if not repo_id:
        raise UserError(unpublished_message(task))
    if checkpoint_dir is not None:
        local = Path(checkpoint_dir).expanduser() / repo_name(repo_id)
        if local.is_dir():
            return local
    if is_offline():
        cached = cached_checkpoint(repo_id)
        if cached is None:
            raise UserError(missing_message(repo_id, task))
        return cached
    return _download_to_cache(repo_id, progress, task)


def _download_to_cache(repo_id: str, progress: bool, task: Optional[str]) -> Path:
    from huggingface_hub import snapshot_download

    try:
        with _progress_bars(progress), quiet_network_logs():
            path = snapshot_download(repo_id, cache_dir=str(hub_cache_dir()), ignore_patterns=IGNORE_PATTERNS)
    except Exception as exc:  # noqa: BLE001 - no network, unknown repo, hub down: the same advice
        if is_local_write_failure(exc):
            raise  # a full disk or no permission: the command line names the path (exit 1)
        cached = cached_checkpoint(repo_id)
        if cached is not None:
            return cached
        raise UserError(f"{missing_message(repo_id, task)[:-1]} (the download failed: {_reason(exc)}).") from None
    return Path(path)


def download_checkpoint(repo_id: str, output_dir: PathLike, progress: bool = True) -> Path:
    """Put a full copy of ``repo_id`` in ``output_dir/<repo name>`` (the layout --checkpoint-dir reads).

    Online it downloads there (resuming a partial copy); offline it copies the cached snapshot.
    An existing non-empty copy is kept as it is. Returns ``output_dir/<repo name>``.
    """
    if not repo_id:
        raise UserError("An empty checkpoint id cannot be downloaded; give a Hugging Face id such as senfu/<name>.")
    target = Path(output_dir).expanduser() / repo_name(repo_id)
    if is_offline():
        if target.is_dir() and any(target.iterdir()):
            return target
        cached = cached_checkpoint(repo_id)
        if cached is None:
            raise UserError(
                f"HF_HUB_OFFLINE is set and {repo_id} is not in the Hugging Face cache at {hub_cache_dir()}; "
                "unset HF_HUB_OFFLINE to download it."
            )
        with atomic_directory(target) as tmp:
            for item in cached.iterdir():
                if item.is_file():  # the cache's files are symlinks into blobs/: copy their contents
                    shutil.copyfile(str(item), str(tmp / item.name))
                elif item.is_dir():
                    shutil.copytree(str(item), str(tmp / item.name), symlinks=False)
        return target
    from huggingface_hub import snapshot_download

    target.mkdir(parents=True, exist_ok=True)
    try:
        with _progress_bars(progress), quiet_network_logs():
            snapshot_download(repo_id, local_dir=str(target), ignore_patterns=IGNORE_PATTERNS)
    except Exception as exc:  # noqa: BLE001
        if is_local_write_failure(exc):
            raise
        raise UserError(
            f"Downloading {repo_id} into {target} failed ({_reason(exc)}); check the id and the network and run again."
        ) from None
    return target


def _reason(exc: Exception) -> str:
    return error_detail(exc, limit=160)


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub shows its own download bars; switch them off for the call when asked."""
    if enabled:
        yield
        return
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:  # very old huggingface_hub: no switch
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


# A model given by hub id: its config, tokenizer and weights, and nothing else (no pickled
# training leftovers). Weights are fetched as safetensors when the repository has them.
MODEL_FILES = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
]
MODEL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def resolve_model(name_or_path: str, flag: str) -> Path:
    """The local directory of a ``--model``/``--teacher``: the directory itself, or the hub id's
    config, tokenizer and weights in the Hugging Face cache (downloaded unless offline)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return local
    looks_local = local.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local or not name_or_path.strip():
        raise UserError(f"{flag} {name_or_path} is not a model directory; give a directory with config.json.")
    from huggingface_hub import snapshot_download

    offline = is_offline()
    path: Optional[Path] = None
    try:
        with quiet_network_logs():
            for weights in MODEL_WEIGHTS:
                path = Path(snapshot_download(
                    name_or_path, cache_dir=str(hub_cache_dir()), allow_patterns=MODEL_FILES + [weights],
                    local_files_only=offline,
                ))
                if (path / weights).is_file():
                    break
    except Exception as exc:  # noqa: BLE001 - offline and not cached, unknown id, no network
        where = "in the Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "on the Hugging Face hub"
        raise UserError(
            f"{flag} {name_or_path} is not a model directory and could not be found {where} ({_reason(exc)}); "
            "give a local directory or a valid hub id."
        ) from None
    return path


def resolve_checkpoint_path(name_or_path: str, flag: str = "--checkpoint", progress: bool = True) -> Path:
    """A checkpoint given as a directory, or as a Hugging Face id (looked up as :func:`resolve_checkpoint` does)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return local
    looks_local = local.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1
    if looks_local or not name_or_path.strip():
        raise UserError(
            f"Checkpoint directory {local} does not exist; give a directory with config.json and the model weights, "
            "or a Hugging Face id such as senfu/bert-base-uncased-top-pruned-sst2."
        )
    return resolve_checkpoint(name_or_path, progress=progress)

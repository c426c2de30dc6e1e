"""Atomic writes: a reader sees the old file or the new one, never half of one.

Every write leaves nothing half-written behind when it fails (a full disk, no permission): its
temporary file or directory is removed and an ``OSError`` goes up naming the path, which the
command line turns into one sentence and exit status 1. Writers below Python report a full disk
in their own ways (safetensors' ``SafetensorError``, the tokenizers' ``Exception``, torch.save's
``RuntimeError``); :func:`storage_failure` turns each into that ``OSError``.
"""

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

from top.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]

# Test hook: ``TOP_TEST_KILL_AT=PHASE:NAME:N`` ends the process (as SIGKILL would, status 137) at
# PHASE of the N-th (default first) ``atomic_directory`` swap of a directory called NAME.
# It is read only at those points and costs nothing when unset.
KILL_ENV = "TOP_TEST_KILL_AT"
KILL_PHASES = ("mid-write", "written", "moved-aside", "renamed-in", "removing-old")
_kill_counts: Dict[str, int] = {}


def kill_spec() -> Optional[Tuple[str, str, int]]:
    """``TOP_TEST_KILL_AT`` as ``(phase, name, n)``, None when unset; a value of another form is bad input."""
    spec = os.environ.get(KILL_ENV, "")
    if not spec:
        return None
    phase, _, rest = spec.partition(":")
    name, _, nth = rest.partition(":")
    if phase not in KILL_PHASES or ":" in nth or not (nth == "" or (nth.isdigit() and nth.isascii() and int(nth) >= 1)):
        raise UserError(
            f"{KILL_ENV}={spec[:60]!r} is not PHASE[:NAME[:N]] with PHASE one of {', '.join(KILL_PHASES)} and N a "
            "whole number from 1 (it is a test hook); unset it."
        )
    return phase, name, int(nth or 1)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_directory(path: PathLike) -> Path:
    """``mkdir -p`` that names a file standing where a directory must be as bad input."""
    path = Path(path)
    for part in [path, *path.parents]:
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                raise UserError(
                    f"{part} exists and is not a directory; give an output path whose parts are directories."
                )
            break
    path.mkdir(parents=True, exist_ok=True)
    return path


def _name_path(error: OSError, path: PathLike) -> OSError:
    """Make sure an ``OSError`` names a path, so the command line can say which one failed."""
    if error.filename is None:
        error.filename = str(path)
    return error


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    path = Path(path)
    make_directory(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _name_path(error, path.parent) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            _name_path(error, path)
        raise


# OSError numbers that mean this machine cannot store a file, whatever the network does.
LOCAL_WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def is_local_write_failure(error: BaseException) -> bool:
    """A full disk or a permission problem: the command line's exit 1, never to be turned into other advice."""
    return isinstance(error, OSError) and error.errno in LOCAL_WRITE_FAILURES


# How writers below Python name an OSError number in their messages: Python's "[Errno 28]" (also in
# shutil.Error's list), Rust's "(os error 28)" (safetensors, tokenizers).
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]|\(os error (\d+)\)")
_PROBE_BYTES = 1 << 16


def storage_failure(error: BaseException, path: Optional[PathLike], probe: Optional[PathLike] = None
                    ) -> Optional[OSError]:
    """The ``OSError`` naming ``path`` (None: no path known) that ``error``, raised while writing it, stands
    for when the storage refused the write (a full disk, a quota, a read-only file system, no permission);
    None otherwise.

    An ``OSError`` says so by its number, a ``SafetensorError`` or a tokenizers ``Exception`` in its
    message; torch.save's ``RuntimeError`` ("unexpected pos ...") names nothing, so with ``probe`` (a
    directory on the same file system) a small write of our own there settles it.
    """
    if not isinstance(error, Exception) or isinstance(error, UserError):
        return None
    if isinstance(error, OSError) and error.errno in LOCAL_WRITE_FAILURES:
        return _name_path(error, path) if error.filename is None and path is not None else error
    number = None
    for match in _ERRNO_IN_TEXT.finditer(str(error)):
        if int(match.group(1) or match.group(2)) in LOCAL_WRITE_FAILURES:
            number = int(match.group(1) or match.group(2))
            break
    if number is None and probe is not None and not isinstance(error, OSError):
        number = _write_refused(Path(probe))
    if number is None:
        return None
    return OSError(number, os.strerror(number)) if path is None else OSError(number, os.strerror(number), str(path))


def _write_refused(directory: Path) -> Optional[int]:
    """The OSError number with which ``directory``'s file system refuses a small write, or None if it takes it."""
    try:
        fd, name = tempfile.mkstemp(dir=str(directory), prefix=".write-probe-")
    except OSError as error:
        return error.errno if error.errno in LOCAL_WRITE_FAILURES else None
    try:
        os.write(fd, b"\0" * _PROBE_BYTES)
        os.fsync(fd)
    except OSError as error:
        return error.errno if error.errno in LOCAL_WRITE_FAILURES else None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
    return None


def json_text(obj: Any, **kwargs: Any) -> str:
    """Strict JSON: a NaN or infinity is a bug upstream (undefined values are ``None``), so it raises."""
    return json.dumps(obj, allow_nan=False, **kwargs)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None`` (JSON's null), for logs of raw numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(value) for value in obj]
    return obj


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_text(path, json_text(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` whole.

    The swap is two renames: ``path`` to ``.name.old``, then the temporary directory to
    ``path``; ``.name.old`` is removed last. A kill at any instant leaves one whole copy that
    :func:`recover_directory` finds: before the first rename ``path`` is the old copy (and a
    stale ``.name.tmp-*`` is left, which :func:`remove_stale_temporaries` deletes); between the
    renames ``.name.old`` is, and it is put back; after the second ``path`` is the new copy.
    A failure inside the block (a full disk) removes the temporary directory and re-raises.
    """
    path = Path(path)
    make_directory(path.parent)
    recover_directory(path)
    try:
        tmp = Path(tempfile.mkdtemp(dir=str(path.parent), prefix=f".{path.name}.tmp-"))
    except OSError as error:
        raise _name_path(error, path.parent) from None
    _kill_counts[path.name] = _kill_counts.get(path.name, 0) + 1
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
        yield tmp
        _test_kill_point("mid-write", path, tmp)
        _test_kill_point("written", path)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old"
            os.replace(path, old)
            _test_kill_point("moved-aside", path)
        os.replace(tmp, path)
        if old is not None:
            _test_kill_point("renamed-in", path)
            _test_kill_point("removing-old", path, old)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as error:
        failure = storage_failure(error, path, probe=tmp)  # probed before the removal frees its space
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:  # named by the directory asked for, not by a file of its temporary copy
            raise OSError(failure.errno, failure.strerror, str(path)) from None
        if isinstance(error, OSError):
            _name_path(error, path)
        raise


def recover_directory(path: PathLike) -> None:
    """Finish a swap of ``atomic_directory`` that a kill interrupted.

    ``.name.old`` without ``path`` means the kill came between the two renames: the old copy,
    whole, is put back. With ``path`` present, ``path`` is the new copy, whole, and what is left
    of ``.name.old`` (its removal may have been cut short) is removed.
    """
    path = Path(path)
    old = path.parent / f".{path.name}.old"
    if old.exists():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)


def remove_stale_temporaries(path: PathLike) -> None:
    """Delete the ``.name.tmp-*`` directories (and files) that killed swaps of ``path`` left behind.

    Only call this while no other process can be writing ``path`` (``top.storage.rundir`` holds the lock).
    A save nested in another's temporary directory leaves ``..name.tmp-*`` siblings; they go too.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    for stale in list(path.parent.glob(f".{path.name}.tmp-*")) + list(path.parent.glob(f"..{path.name}.tmp-*")):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _test_kill_point(phase: str, path: Path, victim: Optional[Path] = None) -> None:
    """End the process at ``phase`` when the test hook asks for it (see ``KILL_ENV``).

    ``mid-write`` first cuts the largest file of ``victim`` (the temporary directory) in half,
    which is what a kill in the middle of writing it leaves; ``removing-old`` first deletes the
    largest file of ``victim`` (the old copy), as a kill in the middle of its removal would.
    """
    spec = kill_spec()
    if spec is None:
        return
    want, name, nth = spec
    if want != phase or (name and name != path.name) or _kill_counts.get(path.name) != nth:
        return
    if victim is not None:
        files = sorted((f for f in victim.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
        if files:
            if phase == "mid-write":
                with open(files[-1], "r+b") as handle:
                    handle.truncate(files[-1].stat().st_size // 2)
            else:
                files[-1].unlink()
    os._exit(137)


def sha256_of(path: Union[str, Path]) -> str:
    """The sha256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

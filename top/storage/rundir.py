"""One training run per output directory: its lock, and the repair of saves a kill interrupted.

``claim(out)`` is held for the whole of ``top train`` or ``top finetune``. It takes
``OUT/.top.lock`` (created with O_CREAT|O_EXCL, holding the pid, host and kernel boot id, and
``flock``ed for as long as the run lives), so a second run on the same directory is refused
before it touches anything. A lock is stale, and taken over with a warning, when its holder ran
on this kernel and its ``flock`` is gone (the kernel drops it with the process, whichever
container or pid namespace the process was in: a killed ``docker compose run`` leaves a lock
from another hostname and a pid of 1), or, for a lock without a boot id, when its pid no longer
runs on this host. Another machine's lock is never taken. Holding the lock, it puts back any
``last/``/``best/`` a kill left half-swapped and removes the temporary directories of
interrupted saves, before the command looks for a saved run.

What a new run may find there (issue 33: nothing of a finished run is replaced unasked):
:func:`refuse_reading_into` refuses an ``OUT`` that is, lies inside, or holds (in what the run
writes) a model directory the run reads; :func:`take_over`, under the lock, refuses an ``OUT``
that holds another run's ``best/`` or ``last/`` unless the run resumes it or was told to
overwrite, and then moves the old run's files aside into ``OUT/previous-N/`` (renames only,
nothing is deleted; a move a kill interrupted is finished by the next claim).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Sequence

try:
    import fcntl
except ImportError:  # not on Windows: there the pid and host decide, as for a lock without a boot id
    fcntl = None  # type: ignore[assignment]

from top.errors import UserError
from top.storage.io import make_directory, recover_directory, remove_stale_temporaries

logger = logging.getLogger(__name__)

LOCK_FILE = ".top.lock"
SAVED_DIRECTORIES = ("last", "best")
# What a training run writes in OUT; --overwrite-output-dir moves these aside into OUT/previous-N/.
# (OUT/teacher-cache/ stays: it is checked against the teacher and data it was built from.)
RUN_FILES = SAVED_DIRECTORIES + ("log.jsonl", "run.json", "summary.json")
PREVIOUS = "previous-"
OVERWRITE_FLAG = "--overwrite-output-dir"
# A lock file younger than this whose contents cannot be read may be one being written right now.
_UNREADABLE_GRACE_S = 10.0
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
# The open descriptors that hold each claimed lock's flock, by lock path.
_HELD: Dict[str, int] = {}


def boot_id() -> Optional[str]:
    """This kernel's boot id: the same in every container on this machine, new at every boot."""
    with contextlib.suppress(OSError):
        return BOOT_ID_FILE.read_text(encoding="ascii").strip() or None
    return None


def _flock(fd: int) -> bool:
    """Take an exclusive flock on ``fd`` without waiting; False when someone holds it."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by someone (BlockingIOError), or a filesystem without flock
        return False
    return True


@contextlib.contextmanager
def claim(out: Path, is_main: bool = True, saved: Sequence[str] = SAVED_DIRECTORIES) -> Iterator[None]:
    """Hold ``out`` for this run (rank 0 only; other ranks wait for it at the caller's barrier)."""
    if not is_main:
        yield
        return
    created = not out.exists()
    out = make_directory(out)
    lock = out / LOCK_FILE
    _acquire(lock)
    try:
        _finish_moving_aside(out)
        for name in saved:
            recover_directory(out / name)
            remove_stale_temporaries(out / name)
        yield
    finally:
        _release(lock)
        if created:  # a run refused before it wrote anything leaves no empty directory behind
            with contextlib.suppress(OSError):
                out.rmdir()


def _acquire(lock: Path) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id()}
    for _ in range(3):
        try:
            fd = os.open(str(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(lock)
            if _holder_alive(lock, holder):
                raise UserError(_in_use_message(lock, holder)) from None
            logger.warning(
                "%s was left by pid %s on %s, which no longer runs; taking it over",
                lock,
                holder.get("pid") if holder else "?",
                holder.get("host") if holder else "?",
            )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(lock))
            continue
        if not _flock(fd):
            me["boot_id"] = None  # no flock to show that we live: judged by pid and host, as before
        try:
            os.write(fd, (json.dumps(me) + "\n").encode("utf-8"))
            os.fsync(fd)
        except OSError as error:  # a full disk: no lock of ours is left behind, and the error names it
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(lock))
            error.filename = str(lock)
            raise
        _HELD[str(lock)] = fd
        return
    raise UserError(f"{lock.parent} is being claimed by another top run right now; give another --output-dir.")


def _release(lock: Path) -> None:
    holder = _read(lock)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(lock))
    fd = _HELD.pop(str(lock), None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _read(lock: Path) -> Optional[dict]:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return None
    return holder


def _holder_alive(lock: Path, holder: Optional[dict]) -> bool:
    if holder is None:
        # Unreadable: stale unless it was created a moment ago (its writer may still be writing it).
        with contextlib.suppress(OSError):
            return time.time() - lock.stat().st_mtime < _UNREADABLE_GRACE_S
        return False
    if holder.get("boot_id") is not None and holder.get("boot_id") == boot_id():
        return _flock_held(lock)  # this kernel's: its flock lives exactly as long as its process
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: we cannot tell, so we do not take its lock
    return _pid_alive(int(holder["pid"]))


def _flock_held(lock: Path) -> bool:
    try:
        fd = os.open(str(lock), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not _flock(fd)
    finally:
        os.close(fd)  # closing also drops the flock this probe may have taken


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _in_use_message(lock: Path, holder: Optional[dict]) -> str:
    who = "another top run" if holder is None else f"another top run (pid {holder['pid']} on {holder.get('host')})"
    return (
        f"{lock.parent} is in use by {who}; wait for it to finish or give another --output-dir "
        f"(delete {lock} only if no run is using it)."
    )


def holder(out: Path) -> Optional[dict]:
    """Who holds ``out``'s lock (pid, host, boot id), or None when no live run holds it."""
    lock = Path(out) / LOCK_FILE
    if not lock.exists():
        return None
    found = _read(lock)
    return (found or {}) if _holder_alive(lock, found) else None


def release_for_lost_host(out: Path, host: str, reason: str) -> bool:
    """Remove a lock that ``host`` left, when something that can tell (a cluster that saw the node die)
    says that host's run is gone; False if the lock is not that host's."""
    lock = Path(out) / LOCK_FILE
    found = _read(lock)
    if found is None or found.get("host") != host or host == socket.gethostname():
        return False
    logger.warning("%s was left by pid %s on %s, whose node %s; taking it over", lock, found.get("pid"), host, reason)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(str(lock))
    return True


# --------------------------------------------------------------------------- what a new run may find


def _is_within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def refuse_reading_into(out: Path, reads: Mapping[str, str], written: Sequence[str] = RUN_FILES) -> None:
    """One sentence when ``out`` is, lies inside, or holds in one of the ``written`` entries a local
    model directory that the run reads (``reads``: flag -> value, e.g. ``{"--teacher": "R/best"}``).

    Paths are compared with symbolic links resolved. Such a run would overwrite the model it reads
    (``--model R/best --output-dir R`` writes ``R/best``), and moving that model aside while it is read
    cannot work either, so no flag allows it. A model elsewhere inside ``out`` (``OUT/teacher/best``,
    as the containers' ``train-<task>`` keeps it) is not touched by the run and is allowed.
    """
    target = Path(out).expanduser().resolve()
    for flag, value in reads.items():
        if value is None or not Path(value).expanduser().is_dir():
            continue  # a hub id: its files are in the Hugging Face cache, never under an output directory
        model = Path(value).expanduser().resolve()
        if model == target:
            raise UserError(f"--output-dir {out} is {flag} {value}, the model this run reads, and the run would write "
                            "over it; choose another --output-dir.")
        if model in target.parents:
            raise UserError(f"--output-dir {out} lies inside {flag} {value}, the model this run reads, and the run "
                            "would write into it; choose another --output-dir, outside the model.")
        for name in written:
            entry = Path(out) / name
            if (entry.exists() or entry.is_symlink()) and _is_within(model, entry.resolve()):
                raise UserError(
                    f"{flag} {value} lies in {entry}, which this run writes (or {OVERWRITE_FLAG} would move aside) "
                    "while it reads that model; choose another --output-dir."
                )


def held_run(out: Path) -> Sequence[str]:
    """The ``best``/``last`` entries in ``out`` (directories, files or links: anything by that name)."""
    return [name for name in ("best", "last") if (out / name).exists() or (out / name).is_symlink()]


def _describe(entry: Path) -> str:
    if entry.is_symlink():
        return f"{entry.name} (a link to {os.readlink(str(entry))})"
    return f"{entry.name}/" if entry.is_dir() else f"{entry.name} (a file)"


def take_over(out: Path, overwrite: bool, resume: bool = False, can_resume: bool = True) -> Optional[Path]:
    """Make ``out`` ready for a new run (call it holding the lock, before the run writes anything).

    ``resume``: the run continues what ``out`` holds, so nothing is checked here. Otherwise an
    ``out`` holding another run's ``best/`` or ``last/`` is refused in one sentence naming
    ``--resume`` (where ``can_resume``) and ``--overwrite-output-dir``; with ``overwrite`` the old
    run's files (``RUN_FILES``) are moved into ``out/previous-N/``, whose path is returned.
    """
    out = Path(out)
    if resume:
        return None
    held = held_run(out)
    if not held:
        return None
    if not overwrite:
        what = " and ".join(_describe(out / name) for name in held)
        continue_it = "pass --resume to continue it, or " if can_resume and "last" in held else ""
        raise UserError(
            f"--output-dir {out} holds another run's {what}; {continue_it}pass {OVERWRITE_FLAG} to move that run "
            f"aside into {out / (PREVIOUS + 'N')}/ and start afresh, or choose another --output-dir."
        )
    return move_aside(out)


def _previous_number(name: str) -> Optional[int]:
    for prefix in (PREVIOUS, "." + PREVIOUS):
        digits = name[len(prefix):].split(".", 1)[0]
        if name.startswith(prefix) and digits.isdigit():
            return int(digits)
    return None


def move_aside(out: Path) -> Optional[Path]:
    """Move the run in ``out`` (its ``RUN_FILES``) into ``out/previous-N/``, N one past the last used.

    The files are renamed, one by one, into ``out/.previous-N.partial/``, which is then renamed
    ``previous-N``: nothing is copied or deleted, and a kill in between leaves the partial folder,
    which the next :func:`claim` completes (nothing else writes ``out`` before the move ends).
    """
    out = Path(out)
    present = [name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink()]
    if not present:
        return None
    numbers = [n for n in (_previous_number(p.name) for p in out.iterdir()) if n is not None]
    number = max(numbers, default=0) + 1
    partial = out / f".{PREVIOUS}{number}.partial"
    partial.mkdir()
    return _complete_move(out, partial, number)


def _complete_move(out: Path, partial: Path, number: int) -> Path:
    for name in RUN_FILES:
        source = out / name
        if source.exists() or source.is_symlink():  # a link is moved as the link, never followed
            os.replace(str(source), str(partial / name))
    previous = out / f"{PREVIOUS}{number}"
    os.replace(str(partial), str(previous))
    logger.warning("moved the earlier run in %s aside into %s", out, previous)
    return previous


def _finish_moving_aside(out: Path) -> None:
    """Complete a move into ``out/previous-N/`` that a kill interrupted (see :func:`move_aside`)."""
    for partial in sorted(out.glob(f".{PREVIOUS}*.partial")):
        number = _previous_number(partial.name)
        if partial.is_dir() and not partial.is_symlink() and number is not None:
            _complete_move(out, partial, number)

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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

try:
    import fcntl
except ImportError:  # not on Windows: there the pid and host decide, as for a lock without a boot id
    fcntl = None  # type: ignore[assignment]

from top.errors import UserError
from top.storage.io import make_directory, recover_directory, remove_stale_temporaries

logger = logging.getLogger(__name__)

LOCK_FILE = ".top.lock"
SAVED_DIRECTORIES = ("last", "best")
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

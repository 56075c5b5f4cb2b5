"""What keeps a stage's output folder from harming other data: one writer at a time, no input inside it.

`hold`: an advisory lock (`flock`) on the folder itself while a stage writes it. A second process that
would write the same folder (the same command started twice, an `--overwrite` while the first run still
writes) stops with a one-line error instead of interleaving its files with the first run's or deleting
them. The slices of one sliced run (`--num-shards/--shard-index`) share their folder: they take the lock
shared, and a whole run (or `impsamp finalize`) takes it exclusive, so `finalize` refuses while a slice
still writes.

The kernel drops a lock when its process ends, however it ends: a killed run leaves no stale lock to clear
by hand. A stage's entry function (`released_on_return`) lets go of the locks it took when it returns or
raises: a run stopped in a notebook does not block the same command in a terminal. Where the filesystem
has no locks (some network mounts) locking is skipped, with a warning.

`refuse_input_inside`: `--overwrite` empties a folder; never one that is, or holds, an input of the run.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import StageError

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

class FolderBusy(StageError):
    """Another process (or thread) is writing the folder."""


_HELD: dict[tuple[int, int], tuple[int, int]] = {}
"""This process's locks: (device, inode) of the folder -> (the open descriptor holding it, its thread)."""
_MUTEX = threading.Lock()
BUSY = ("is being written by another process (this or another impsamp command still running, or a slice of "
        "a sliced run); wait for it to end, or choose another output directory")


def hold(folder: Path, *, shared: bool = False) -> tuple[int, int] | None:
    """Lock `folder` (it must exist) for writing: exclusive, or `shared` with other slices of one run; a
    folder this thread holds already is re-locked in the mode asked. Returns the key to `release`, None where
    the filesystem has no locks. Raises StageError when another process (or thread) holds it."""
    if fcntl is None:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # unreadable: what follows fails with its own error
        return None
    st = os.fstat(fd)
    key, me = (st.st_dev, st.st_ino), threading.get_ident()
    with _MUTEX:
        if key in _HELD:
            os.close(fd)
            fd, owner = _HELD[key]
            if owner != me and any(t.ident == owner for t in threading.enumerate()):
                raise FolderBusy(f"{folder} is being written by another thread of this process; wait for it "
                                 "to end, or choose another output directory")
            del _HELD[key]  # ours, or left by a thread that has ended: the same open file, re-locked
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusy(f"{folder} {BUSY}") from None
            logger.warning("cannot lock %s (%s): nothing stops a second process from writing it at the same "
                           "time", folder, e.strerror or e)
            return None
        _HELD[key] = (fd, me)
    return key


def release(key: tuple[int, int] | None) -> None:
    """Drop a lock taken by `hold` (closing its descriptor releases it)."""
    with _MUTEX:
        fd = _HELD.pop(key, (None, None))[0] if key is not None else None
    if fd is not None:
        os.close(fd)


def _mine() -> set[tuple[int, int]]:
    me = threading.get_ident()
    with _MUTEX:
        return {key for key, (_, owner) in _HELD.items() if owner == me}


F = TypeVar("F", bound=Callable[..., Any])


def released_on_return(fn: F) -> F:
    """Decorate a stage's entry function: the folder locks its thread took during a call are let go when it
    ends, however it ends (its nested stages' too)."""
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        before = _mine()
        try:
            return fn(*args, **kwargs)
        finally:
            for key in _mine() - before:
                release(key)
    return call  # type: ignore[return-value]


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, (str, Path)):
        yield str(obj)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def refuse_input_inside(out: Path, inputs: Any) -> None:
    """Refuse an output folder that is, or holds, one of the run's inputs (any path named in `inputs`):
    replacing it would delete that input."""
    if not out.exists():
        return
    root = out.resolve()
    for s in _strings(inputs):
        if not s or "\n" in s or len(s) > 4096:
            continue
        try:
            p = Path(s).resolve()
            hit = p.exists() and (p == root or root in p.parents)
        except (OSError, ValueError):
            continue
        if hit:
            raise StageError(f"{out} is also an input of this run ({s}): writing there would delete it; "
                             "choose another output directory")

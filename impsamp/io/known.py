"""What a full read of a corpus file found (rows, seek checkpoints, sha256 of its content), kept in the user cache
under the file's identity on disk, so that opening the corpus again (each `resample` of an embedding checks its
corpus is unchanged; each Slurm slice, `compare` and `train` open it too) does not read and hash every byte again.

The identity is what the operating system changes on any write: device, inode, size, modification and change
times in nanoseconds (git's index trusts the same fields). A program cannot set the change time back (`touch`
and `os.utime` set the modification time and so move the change time forward), so a file edited in place, even
to the same size with its old modification time put back, is read again. The identity is taken from an open
file (`fstat`): on NFS, opening revalidates the attributes a plain `stat` may serve from the client's cache.
What a read finds is kept only when the file's times were at least `SETTLED_SECONDS` old when the read began
and its identity did not change during it: file systems stamp times in ticks (a few ms on Linux's local file
systems, 1-2 s on some others), and a write in the same tick as the stamp could leave the identity as it was.
`IMPSAMP_NO_FILE_CACHE=1` turns it off (every open reads every file), for mounts that do not keep these
times (some FUSE and object-store file systems).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import usercache

SETTLED_SECONDS = 2.0
MAX_ENTRIES = 50_000
"""Entries kept (one per corpus file path read; about 5 KB per million lines): past it the least recently used
go, a quarter at once (`usercache.prune`). Looked at every `PRUNE_EVERY`-th new entry, so a corpus of many
files is not slowed by it."""
PRUNE_EVERY = 64
Counted = tuple[int, tuple[tuple[int, int], ...], str]
"""rows, (row, byte offset) seek checkpoints, digest: what `jsonl.count_lines` returns."""


def identity(path: Path) -> list[int]:
    """Device, inode, size, modification and change times (ns) of the file, from an open descriptor."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def entry_path(path: Path) -> Path:
    from ..config import cache_dir

    return cache_dir() / "files" / (hashlib.sha256(os.fsencode(path)).hexdigest()[:32] + ".json")


def enabled() -> bool:
    return os.environ.get("IMPSAMP_NO_FILE_CACHE", "").strip().lower() in ("", "0", "false", "no", "off")


def counted(path: Path, count: Callable[[Path], Counted], *, wait: bool = True) -> Counted | None:
    """`count(path)`, or what it gave when this file, with this identity, was last read through. The cache is
    a help, never a failure: one that cannot be found, read or written is read past.

    Processes that open one corpus at once (the slices of a Slurm array) read each settled file once between
    them: the reader holds a lock on its entry while it counts. With `wait=False` a file another process is
    counting gives None at once (come back to it later, when its entry is likely there)."""
    if not enabled():
        return count(path)
    before = identity(path)
    kept = _load(path, before)
    if kept is not None:
        return kept
    settled = time.time_ns() - max(before[3], before[4]) >= SETTLED_SECONDS * 1e9
    if not settled:  # its read will not be kept: no point in making others wait for it
        return count(path)
    with _counting(path, wait) as mine:
        if not mine:
            return None
        kept = _load(path, before)  # counted by another process while this one waited
        if kept is not None:
            return kept
        result = count(path)
        if identity(path) == before:  # not written during the read
            _store(path, before, result)
        return result


@contextlib.contextmanager
def _counting(path: Path, wait: bool) -> Iterator[bool]:
    """An exclusive `flock` on the entry's lock file while this process counts the file: True when held (or
    when the cache cannot be locked: count anyway), False when another holds it and `wait` is False."""
    fd = None
    try:
        import fcntl

        lock = entry_path(path).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        yield False
        return
    except Exception:  # noqa: BLE001 - no cache, no flock (some NFS), no fcntl: count without the lock
        if fd is not None:
            os.close(fd)
        fd = None
    try:
        yield True
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _load(path: Path, ident: list[int]) -> Counted | None:
    try:
        e = json.loads(entry_path(path).read_text())
        if e["path"] != os.fsencode(path).hex() or e["identity"] != ident:
            return None
        rows, checkpoints, digest = int(e["rows"]), tuple((int(r), int(o)) for r, o in e["checkpoints"]), e["digest"]
        if not (isinstance(digest, str) and digest):
            return None
        usercache.touch(entry_path(path))
        return rows, checkpoints, digest
    except Exception:  # noqa: BLE001 - none yet, damaged, or no cache folder to be found: read the file
        return None


def _store(path: Path, ident: list[int], result: Counted) -> None:
    rows, checkpoints, digest = result
    entry = {"path": os.fsencode(path).hex(), "identity": ident, "rows": rows,
             "checkpoints": [list(c) for c in checkpoints], "digest": digest}
    tmp = None
    try:
        target = entry_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        new = not target.exists()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(entry, separators=(",", ":")))
        os.replace(tmp, target)  # whole or not there: a reader never sees half an entry
        tmp = None
        if new and int(target.stem[:8], 16) % PRUNE_EVERY == 0:
            _prune(target.parent)
    except Exception:  # noqa: BLE001 - a read-only, full or missing cache: the next open reads the file again
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _prune(folder: Path) -> None:
    """Down to three quarters of `MAX_ENTRIES` when over it (names only are listed first: cheap)."""
    if sum(1 for n in os.listdir(folder) if n.endswith(".json")) > MAX_ENTRIES:
        usercache.prune("files", keep=MAX_ENTRIES * 3 // 4)

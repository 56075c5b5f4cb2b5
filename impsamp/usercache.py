"""What impsamp keeps in its user cache (`config.cache_dir()`) between runs, by kind, and clearing it.

    kind        one entry                                                         where, under the cache
    onnx        an embedding model exported to ONNX (and its int8 copy)           onnx/<key>-v<recipe>/
    tokenizers  an embedding model's tokenizer as `tokenizers` reads it           tokenizers/<key>.json
    ngram       one embedding run's hashed n-gram features (~1.5x the embedding)  ngram/<key>/
    files       what a full read of one JSONL file found (rows, seeks, hash)      files/<key>.json
    demo        the demo's embeddings (per version, backend, length, install)     demo-<version>/embeddings-*/

Only names of these shapes (<key>: 32 hex digits) are entries: a file someone else put in the folder is
"other" and never removed. Every entry is a help, never a need: one that is missing is made again (the
export, the tokenizer, the n-gram hashing, a read of the file, the demo's embedding), so clearing costs time,
not results.

    usercache.summary()                         # {kind: {"entries", "bytes", "used"}}, "temporary", "other"
    usercache.clear(["ngram"], older_than_s=30 * 86400)
    usercache.use(folder)                       # a run reads this entry: stamp it, keep it while it lives

`use` stamps the entry (its modification time: `older_than_s` counts from it) and, for a folder, holds a
shared `flock` on it until the process ends; the stage writing a folder holds an exclusive one
(`guards.hold`). `clear` removes a folder only under an exclusive lock it gets at once, so never one a live
run writes or reads, and moves it aside before removing it, so a run never finds half of one. An entry
changed in the last `BUSY_SECONDS` counts as in use too (the only sign where a file system has no locks).
Names that start with a dot are a run's temporary files; those of killed runs (over a day old) go with their
kind.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import cache_dir

try:
    import fcntl
except ImportError:  # not POSIX: the modification time alone says what is in use
    fcntl = None  # type: ignore[assignment]

_HEX = "[0-9a-f]{32}"
KINDS: dict[str, tuple[str, str, str]] = {
    "onnx": ("onnx", "onnx", rf"{_HEX}-v\d+"),
    "tokenizers": ("tokenizers", "tokenizers", rf"{_HEX}\.json"),
    "ngram": ("ngram", "ngram", _HEX),
    "files": ("files", "files", rf"{_HEX}\.json"),
    "demo": ("demo-*", r"demo-\d+\.\d+\.\d+[\w.+-]*", r"embeddings-[\w.+-]+-\d+-[0-9a-f]{12}"),
}
"""Each kind's folders (a glob under the cache, and the shape of their names), and the shape of its entries.
The modules that write them name the same places (tests/test_usercache.py checks it)."""
DESCRIPTIONS = {
    "onnx": "embedding models exported to ONNX",
    "tokenizers": "embedding models' tokenizers",
    "ngram": "embeddings' hashed n-gram features",
    "files": "JSONL files' row counts and hashes",
    "demo": "the demo's embeddings",
    "temporary": "files of runs in progress, or left by killed ones",
    "other": "not impsamp's: left alone",
}
BUSY_SECONDS = 60.0
LEFTOVER_SECONDS = 86_400.0
_IN_USE: dict[Path, int] = {}
"""This process's shared locks on the entries it uses, by path: held until it ends (or clears them itself)."""
_MUTEX = threading.Lock()


@dataclass(frozen=True)
class Entry:
    kind: str
    path: Path
    bytes: int
    used: float
    """The newest modification time inside it (seconds since the epoch): when a run last wrote or read it."""


@dataclass(frozen=True)
class Cleared:
    entries: int
    bytes: int
    busy: int
    """Entries left because a live run writes or reads them (without locks: changed in the last minute)."""
    failed: int = 0
    """Entries that could not be removed (permissions): still there."""


def entries(kind: str, root: Path | None = None) -> list[Entry]:
    """The kind's entries, oldest use first."""
    found = []
    for path in _candidates(kind, cache_dir() if root is None else root):
        size, used = _measure(path)
        if used is not None:
            found.append(Entry(kind, path, size, used))
    return sorted(found, key=lambda e: (e.used, str(e.path)))


def _candidates(kind: str, root: Path) -> Iterator[Path]:
    folders, folder_name, entry_name = KINDS[kind]
    try:
        parents = [p for p in root.glob(folders) if re.fullmatch(folder_name, p.name) and p.is_dir()]
    except OSError:
        return
    for parent in sorted(parents):
        with contextlib.suppress(OSError):
            for p in sorted(parent.iterdir()):
                if re.fullmatch(entry_name, p.name) and not p.is_symlink():
                    yield p


def summary() -> dict[str, dict]:
    """Per kind, then "temporary" (dot names) and "other": entries, bytes, last use (None: none)."""
    root = cache_dir()
    facts, known = {}, set()
    for kind in KINDS:
        es = entries(kind, root)
        facts[kind] = {"entries": len(es), "bytes": sum(e.bytes for e in es),
                       "used": max((e.used for e in es), default=None)}
        known.update(e.path for e in es)
    rest: dict[str, list[int]] = {"temporary": [], "other": []}
    for p, st in _files(root):
        rel = p.relative_to(root)
        if any(root.joinpath(*rel.parts[:i]) in known for i in range(1, len(rel.parts) + 1)):
            continue
        locks = rel.parts[0] == "files" and rel.suffix == ".lock"  # the file entries' locks
        temporary = locks or any(x.startswith(".") for x in rel.parts)
        rest["temporary" if temporary else "other"].append(st.st_size)
    for name, sizes in rest.items():
        facts[name] = {"entries": len(sizes), "bytes": sum(sizes), "used": None}
    return facts


def clear(kinds: Iterable[str], older_than_s: float | None = None) -> Cleared:
    """Remove the kinds' entries (those unused for `older_than_s` seconds, or all) and their leftovers."""
    if older_than_s is not None and not (math.isfinite(older_than_s) and older_than_s >= 0):
        raise ValueError(f"older_than_s must be a finite number >= 0, got {older_than_s!r}")
    now = time.time()
    removed = freed = busy = failed = 0
    for kind in kinds:
        for e in entries(kind):
            if older_than_s is not None and now - e.used < older_than_s:
                continue
            outcome = _remove(e, now)
            removed, freed = removed + (outcome == "removed"), freed + e.bytes * (outcome == "removed")
            busy, failed = busy + (outcome == "busy"), failed + (outcome == "failed")
        _remove_leftovers(kind, now)
    return Cleared(removed, freed, busy, failed)


def prune(kind: str, keep: int) -> int:
    """Remove the kind's least recently used entries beyond the newest `keep`; how many went."""
    es = entries(kind)
    now = time.time()
    return sum(_remove(e, now) == "removed" for e in es[:max(0, len(es) - keep)])


def use(path: Path) -> None:
    """A run reads this entry: stamp it for `older_than_s`, and hold a folder's shared lock while this process
    lives, so that `clear` leaves it (a read-only cache, or one without locks, is used as it is)."""
    with contextlib.suppress(OSError):
        os.utime(path)
    if fcntl is None or not path.is_dir():
        return
    with _MUTEX:
        if path in _IN_USE:
            return
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # being written (its stage holds it exclusive: done soon), or no locks here
            os.close(fd)
            return
        _IN_USE[path] = fd


def _measure(path: Path) -> tuple[int, float | None]:
    """Bytes and newest modification time of a file or a folder's tree (None: gone meanwhile)."""
    try:
        st = path.stat()
    except OSError:
        return 0, None
    size, used = (0 if path.is_dir() else st.st_size), st.st_mtime
    for _, s in _files(path, dirs=True) if path.is_dir() else ():
        used = max(used, s.st_mtime)
        size += s.st_size if not _is_dir(s) else 0
    return size, used


def _files(folder: Path, dirs: bool = False) -> Iterator[tuple[Path, os.stat_result]]:
    """Every file (and folder, with `dirs`) under `folder` with its `lstat`; what cannot be read is passed."""
    for top, subdirs, names in os.walk(folder):
        for name in (subdirs + names) if dirs else names:
            p = Path(top) / name
            with contextlib.suppress(OSError):
                yield p, p.lstat()


def _is_dir(st: os.stat_result) -> bool:
    import stat

    return stat.S_ISDIR(st.st_mode)


def _remove(e: Entry, now: float) -> str:
    """"removed", "busy" (a live run holds it, or it changed in the last minute) or "failed"."""
    if now - e.used < BUSY_SECONDS:
        return "busy"
    if not e.path.is_dir():
        try:
            e.path.unlink()
        except FileNotFoundError:
            return "removed"  # another clear got there first
        except OSError:
            return "failed"
        if e.kind == "files":
            _unlink_unheld(e.path.with_suffix(".lock"))
        return "removed"
    with _exclusive(e.path) as mine:
        if not mine:
            return "busy"
        aside = e.path.with_name(f".deleting-{e.path.name}-{os.getpid()}")
        try:
            os.rename(e.path, aside)  # whole or gone: no run finds half a folder
        except FileNotFoundError:
            return "removed"
        except OSError:
            return "failed"
    shutil.rmtree(aside, ignore_errors=True)
    if e.kind == "demo":  # an emptied demo-<version>/ goes too
        with contextlib.suppress(OSError):
            e.path.parent.rmdir()
    return "failed" if aside.exists() else "removed"  # what stays is retried as a leftover


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[bool]:
    """An exclusive lock on `folder` got at once (True), or False when a live run holds it. This process's own
    use of it is given up first: clearing is its own choice. Without locks here, True."""
    with _MUTEX:
        fd = _IN_USE.pop(folder, None)
    if fd is not None:
        os.close(fd)
    if fcntl is None:
        yield True
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield True  # gone, or unreadable: the rename says which
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:  # no locks on this file system: the modification time has spoken
            pass
        yield True
    finally:
        os.close(fd)


def _unlink_unheld(lock: Path) -> None:
    """Remove a file entry's lock file unless a process holds it (it is reading that file through)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_leftovers(kind: str, now: float) -> None:
    """Temporary files and folders of killed runs (a day old: a live run's are younger), half-removed entries,
    and for `files` the locks no process holds whose entry is gone."""
    root = cache_dir()
    folders, folder_name, _ = KINDS[kind]
    with contextlib.suppress(OSError):
        for parent in (p for p in root.glob(folders) if re.fullmatch(folder_name, p.name) and p.is_dir()):
            for p in parent.glob(".*"):
                with contextlib.suppress(OSError):
                    if p.name.startswith(".deleting-") or now - p.lstat().st_mtime > LEFTOVER_SECONDS:
                        _remove_path(p)
            for lock in parent.glob("*.lock") if kind == "files" else ():
                if not lock.with_suffix(".json").exists():
                    _unlink_unheld(lock)


def _remove_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink()

"""What impsamp keeps in its user cache (`config.cache_dir()`) between runs, by kind, and clearing it.

    kind        one entry                                                         where, under the cache
    onnx        an embedding model exported to ONNX (and its int8 copy)           onnx/<key>-v<recipe>-<libs>/
    tokenizers  an embedding model's tokenizer as `tokenizers` reads it           tokenizers/<key>.json
    ngram       one embedding run's hashed n-gram features (~1.5x the embedding)  ngram/<key>/
    files       what a full read of one corpus file found (rows, seeks, hash)     files/<key>.json
    demo        the demo's embeddings (per version, backend, length, install)     demo-<version>/embeddings-*/

Only names of these shapes (<key>: 32 hex digits) are entries: a file someone else put in the folder is
"other" and never removed. Every entry is a help, never a need: one that is missing is made again (the
export, the tokenizer, the n-gram hashing, a read of the file, the demo's embedding), so clearing costs time,
not results.

    usercache.summary()                         # {kind: {"entries", "bytes", "used"}}, "temporary", "other"
    usercache.clear(["ngram"], older_than_s=30 * 86400)
    with usercache.Hold(folder) as held: ...   # a run reads this entry folder: `clear` leaves it meanwhile
    usercache.touch(path)                       # a run used this entry: `older_than_s` counts from now

A run holds a shared `flock` on an entry folder while it reads it (`Hold`); the stage writing a folder holds
an exclusive one (`guards.hold`; on file systems without locks on folders, such as NFS, both lock the same
file inside it). `clear` removes a folder only under an exclusive lock it gets at once, so never one a live
run reads or writes, and moves it aside before removing it, so a run never finds half of one. An entry
changed in the last `BUSY_SECONDS` counts as in use too (the only sign where a file system has no locks at
all). The temporary files runs write under names of known shapes (`LEFTOVERS`) go with their kind once a day
old (a killed run's; a live run's are younger).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import cache_dir
from .guards import BUSY_ERRNOS, LOCK_FILE

try:
    import fcntl
except ImportError:  # not POSIX: the modification time alone says what is in use
    fcntl = None  # type: ignore[assignment]

_HEX = "[0-9a-f]{32}"
KINDS: dict[str, tuple[str, str, str]] = {
    "onnx": ("onnx", "onnx", rf"{_HEX}-v\d+(-[0-9a-f]{{12}})?"),  # <libs>: the exporting libraries' versions
    "tokenizers": ("tokenizers", "tokenizers", rf"{_HEX}\.json"),
    "ngram": ("ngram", "ngram", _HEX),
    "files": ("files", "files", rf"{_HEX}\.json"),
    "demo": ("demo-*", r"demo-\d+\.\d+\.\d+[\w.+-]*", r"embeddings-[\w.+-]+-\d+-[0-9a-f]{12}"),
}
"""Each kind's folders (a glob under the cache, and the shape of their names), and the shape of its entries
(folders for FOLDER_KINDS, files for the others). The modules that write them name the same places
(tests/test_usercache.py checks it)."""
FOLDER_KINDS = {"onnx", "ngram", "demo"}
LEFTOVERS: dict[str, str] = {
    "onnx": r"\.tmp-export-.+",
    "tokenizers": rf"\.{_HEX}\.json\.tmp-\d+",
    "ngram": "",
    "files": rf"\.{_HEX}\.json\..+\.tmp|{_HEX}\.lock",
    "demo": "",
}
"""The temporary files runs leave beside a kind's entries (besides `.deleting-<entry>-<pid>`, an entry `clear`
was removing); temporary files inside an entry go with it. A file entry's lock is one too."""
DESCRIPTIONS = {
    "onnx": "embedding models exported to ONNX",
    "tokenizers": "embedding models' tokenizers",
    "ngram": "embeddings' hashed n-gram features",
    "files": "corpus files' row counts and hashes",
    "demo": "the demo's embeddings",
    "temporary": "files of runs in progress, or left by killed ones",
    "other": "not impsamp's: left alone",
}
BUSY_SECONDS = 60.0
Stat = os.stat_result
LEFTOVER_SECONDS = 86_400.0


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
                if re.fullmatch(entry_name, p.name) and not p.is_symlink() and \
                        p.is_dir() == (kind in FOLDER_KINDS):
                    yield p


def summary() -> dict[str, dict]:
    """Per kind, then "temporary" (`LEFTOVERS`, entries set aside) and "other" (files impsamp did not write):
    entries (files, for the last two), bytes, last use (None: none)."""
    root = cache_dir()
    facts, known = {}, set()
    for kind in KINDS:
        es = entries(kind, root)
        facts[kind] = {"entries": len(es), "bytes": sum(e.bytes for e in es),
                       "used": max((e.used for e in es), default=None)}
        known.update(e.path for e in es)
        if kind == "files":  # an entry's lock (0 bytes) goes with it: not a leftover while the entry is there
            known.update(e.path.with_suffix(".lock") for e in es)
    rest: dict[str, list[int]] = {"temporary": [], "other": []}
    for p, st in _files(root, skip=known):  # the entries were measured above
        rel = p.relative_to(root)
        rest["temporary" if _temporary(rel) else "other"].append(st.st_size)
    for name, sizes in rest.items():
        facts[name] = {"entries": len(sizes), "bytes": sum(sizes), "used": None}
    return facts


def _temporary(rel: Path) -> bool:
    """A file in or under a leftover beside a kind's entries (`rel`: relative to the cache)."""
    return len(rel.parts) > 1 and any(re.fullmatch(folder, rel.parts[0]) and _leftover(kind, rel.parts[1])
                                      for kind, (_, folder, _) in KINDS.items())


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
            outcome = _remove(e, now)  # "gone": another clear removed it and counts it
            removed, freed = removed + (outcome == "removed"), freed + e.bytes * (outcome == "removed")
            busy, failed = busy + (outcome == "busy"), failed + (outcome == "failed")
        _remove_leftovers(kind, now)
    return Cleared(removed, freed, busy, failed)


def prune(kind: str, keep: int) -> int:
    """Remove the kind's least recently used entries beyond the newest `keep`; how many went. Recent ones
    too: a cap is kept even while one run makes more entries than it (a folder a live run holds is left)."""
    es = entries(kind)
    now = time.time()
    return sum(_remove(e, now, recent=True) == "removed" for e in es[:max(0, len(es) - keep)])


def touch(path: Path) -> None:
    """A run used this entry: stamp it for `older_than_s` (a read-only cache is left as it is)."""
    with contextlib.suppress(OSError):
        os.utime(path)


class Hold:
    """A shared lock on an entry folder while a run reads it: `clear` leaves the folder until `release` (or
    the end of the `with` block, or of the process). `held` is False where the folder is gone, is being
    written (and `wait` is False) or cannot be locked: check the folder after taking the hold, not before.

        with Hold(folder) as held:
            if held and (folder / "model.onnx").is_file(): ...
    """

    def __init__(self, folder: Path, *, wait: bool = False):
        touch(folder)
        self.fd, state = _lock(folder, shared=True, wait=wait)
        self.held = state in ("held", "no locks")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> bool:
        return self.held

    def __exit__(self, *exc) -> None:
        self.release()


def _lock(folder: Path, *, shared: bool, wait: bool) -> tuple[int | None, str]:
    """Lock `folder` (as `guards.hold` does: the folder, else guards' lock file in it), and check that the
    path still names the folder locked. Returns (descriptor to close, "held"); (None, "busy") when another
    process holds it the other way; (None, "gone") when it is not there or not readable; (None, "moved") when
    another folder took its path meanwhile; (None, "no locks").
    """
    if fcntl is None:
        return None, "no locks"
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        inode = os.fstat(fd).st_ino
    except OSError:
        return None, "gone"
    state = _flock(fd, mode)
    if state == "unsupported":  # no flock on a folder (NFS): on the file guards locks there
        os.close(fd)
        fd, state = _lock_file(folder / LOCK_FILE, mode)
    if state == "held":
        with contextlib.suppress(OSError):
            if os.stat(folder).st_ino == inode:
                return fd, "held"
        state = "moved"  # moved or removed while this process waited for the lock
    if fd is not None:
        os.close(fd)
    return None, state


def _lock_file(path: Path, mode: int) -> tuple[int | None, str]:
    """The lock on guards' lock file: "no locks" where files cannot be locked either (Lustre mounted
    noflock); taken again when a writer's `guards.release` removed the file meanwhile (as guards does)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None, "gone"
        state = _flock(fd, mode)
        if state == "unsupported":  # no locks at all here: nothing to keep the file for (as guards does)
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            return None, "no locks"
        if state != "held":
            os.close(fd)
            return None, state
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd, "held"
        os.close(fd)


def _flock(fd: int, mode: int) -> str:
    try:
        fcntl.flock(fd, mode)
        return "held"
    except OSError as e:  # busy, or this file system has no flock on this kind of file (EBADF: NFS, a folder)
        return "busy" if e.errno in BUSY_ERRNOS else "unsupported"


def _measure(path: Path) -> tuple[int, float | None]:
    """Bytes and newest modification time of a file or a folder's tree (None: gone meanwhile)."""
    try:
        st = path.stat()
    except OSError:
        return 0, None
    size, used = (0 if path.is_dir() else st.st_size), st.st_mtime
    for _, s in _files(path, dirs=True) if path.is_dir() else ():
        used = max(used, s.st_mtime)
        size += 0 if stat.S_ISDIR(s.st_mode) else s.st_size
    return size, used


def _files(folder: Path, dirs: bool = False, skip: Iterable[Path] = ()) -> Iterator[tuple[Path, Stat]]:
    """Every file (and folder, with `dirs`) under `folder` with its `lstat`, except those in or under `skip`;
    what cannot be read is passed."""
    skip = set(skip)
    for top, subdirs, names in os.walk(folder):
        subdirs[:] = [d for d in subdirs if Path(top) / d not in skip]
        for name in (subdirs + names) if dirs else names:
            p = Path(top) / name
            if p not in skip:
                with contextlib.suppress(OSError):
                    yield p, p.lstat()


def _remove(e: Entry, now: float, recent: bool = False) -> str:
    """"removed", "gone" (another clear got there first), "busy" (a live run holds it, or, unless `recent`, it
    changed in the last minute) or "failed"."""
    if not recent and now - e.used < BUSY_SECONDS:
        return "busy"
    if not e.path.is_dir():
        try:
            e.path.unlink()
        except FileNotFoundError:
            return "gone"
        except OSError:
            return "failed"
        if e.kind == "files":
            _unlink_unheld(e.path.with_suffix(".lock"))
        return "removed"
    fd, state = _lock(e.path, shared=False, wait=False)
    if state == "gone":
        return "gone" if not e.path.exists() else "failed"
    if state in ("busy", "moved"):  # moved: set aside by another clear, and made again by a run since
        return "busy"
    aside = e.path.with_name(f".deleting-{e.path.name}-{os.getpid()}")
    try:
        os.rename(e.path, aside)  # whole or gone: no run finds half a folder
    except FileNotFoundError:
        return "gone"
    except OSError:
        return "failed"
    finally:
        if fd is not None:
            os.close(fd)
    shutil.rmtree(aside, ignore_errors=True)
    if e.kind == "demo":  # an emptied demo-<version>/ goes too
        with contextlib.suppress(OSError):
            e.path.parent.rmdir()
    return "failed" if aside.exists() else "removed"  # what stays is retried as a leftover


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


def _leftover(kind: str, name: str) -> bool:
    """A name of the shapes runs leave beside the kind's entries (`LEFTOVERS`), or an entry set aside."""
    entry = KINDS[kind][2]
    return bool(re.fullmatch(rf"\.deleting-(?:{entry})-\d+", name)
                or (LEFTOVERS[kind] and re.fullmatch(LEFTOVERS[kind], name)))


def _remove_leftovers(kind: str, now: float) -> None:
    """Temporary files and folders of killed runs (a day old: a live run's are younger), entries set aside and
    not yet removed, and for `files` the locks no process holds whose entry is gone."""
    root = cache_dir()
    folders, folder_name, _ = KINDS[kind]
    with contextlib.suppress(OSError):
        for parent in (p for p in root.glob(folders) if re.fullmatch(folder_name, p.name) and p.is_dir()):
            for p in parent.iterdir():
                if not _leftover(kind, p.name):
                    continue
                if p.name.endswith(".lock"):
                    if not p.with_suffix(".json").exists():
                        _unlink_unheld(p)
                    continue
                with contextlib.suppress(OSError):
                    if p.name.startswith(".deleting-") or now - p.lstat().st_mtime > LEFTOVER_SECONDS:
                        _remove_path(p)


def _remove_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink()

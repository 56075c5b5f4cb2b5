"""What impsamp keeps in its user cache (`config.cache_dir()`) between runs, by kind, and clearing it.

    kind        one entry                                                           where, under the cache
    onnx        an embedding model exported to ONNX (and its int8 copy)             onnx/<key>/
    tokenizers  an embedding model's tokenizer as `tokenizers` reads it             tokenizers/<key>.json
    ngram       one embedding run's hashed n-gram features (~1.5x the embedding)    ngram/<key>/
    files       what a full read of one JSONL file found (rows, seek points, hash)  files/<key>.json
    demo        the demo's embeddings, per impsamp version and installation         demo-<version>/<name>/

Every entry is a help, never a need: one that is missing is made again (the export, the tokenizer, the n-gram
hashing, a read of the file, the demo's embedding), so clearing loses time, never results. Runs mark the
entries they read (`mark_used`: the modification time), so `--older-than` finds what no run has used lately.

    usercache.summary()                         # {kind: {"entries", "bytes", "used"}} and "other"
    usercache.clear(["ngram"], older_than_s=30 * 86400)
    usercache.prune("files", keep=20_000)       # the oldest beyond the newest `keep`

An entry changed in the last `BUSY_SECONDS` is left alone: a run may be writing it. A folder is renamed out of
the way before it is removed, so a run never finds half of one. Names that start with a dot are a run's
temporary files (left by a killed run when they are over a day old, and then removed with their kind).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .config import cache_dir

KINDS: dict[str, str] = {
    "onnx": "onnx/*",
    "tokenizers": "tokenizers/*.json",
    "ngram": "ngram/*",
    "files": "files/*.json",
    "demo": "demo-*/*",
}
"""Each kind's entries, as a glob under the cache folder (tests/test_usercache.py: the writers agree)."""
DESCRIPTIONS = {
    "onnx": "embedding models exported to ONNX",
    "tokenizers": "embedding models' tokenizers",
    "ngram": "embeddings' hashed n-gram features",
    "files": "JSONL files' row counts and hashes",
    "demo": "the demo's embeddings",
}
BUSY_SECONDS = 60.0
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
    """Entries left alone because they changed in the last `BUSY_SECONDS`."""


def entries(kind: str, root: Path | None = None) -> list[Entry]:
    """The kind's entries, oldest use first."""
    root = cache_dir() if root is None else root
    found = []
    for path in root.glob(KINDS[kind]):
        if path.name.startswith(".") or path.parent.name.startswith("."):
            continue
        size, used = _measure(path)
        if used is not None:
            found.append(Entry(kind, path, size, used))
    return sorted(found, key=lambda e: (e.used, str(e.path)))


def summary() -> dict[str, dict]:
    """Per kind, and for "other" (whatever else is in the folder): entries, bytes, last use (None: none)."""
    root = cache_dir()
    facts, known = {}, set()
    for kind in KINDS:
        es = entries(kind, root)
        facts[kind] = {"entries": len(es), "bytes": sum(e.bytes for e in es),
                       "used": max((e.used for e in es), default=None)}
        known.update(e.path for e in es)
    other = [p for p in _walk(root) if p.is_file() and not _ours(p.relative_to(root), known, root)]
    facts["other"] = {"entries": len(other), "bytes": sum(_size(p) for p in other), "used": None}
    return facts


def _ours(rel: Path, known: set[Path], root: Path) -> bool:
    """Inside an entry, a run's temporary file (a dot name) or a `files` entry's lock."""
    if any(part.startswith(".") for part in rel.parts) or (rel.parts[0] == "files" and rel.suffix == ".lock"):
        return True
    return any(root.joinpath(*rel.parts[:i]) in known for i in range(1, len(rel.parts) + 1))


def clear(kinds: Iterable[str], older_than_s: float | None = None) -> Cleared:
    """Remove the kinds' entries (those unused for `older_than_s` seconds, or all) and their leftovers."""
    now = time.time()
    removed = freed = busy = 0
    for kind in kinds:
        for e in entries(kind):
            if now - e.used < BUSY_SECONDS:
                busy += 1
            elif older_than_s is None or now - e.used >= older_than_s:
                removed, freed = removed + _remove(e), freed + e.bytes
        _remove_leftovers(kind, now)
    return Cleared(removed, freed, busy)


def prune(kind: str, keep: int) -> int:
    """Remove the kind's least recently used entries beyond the newest `keep`; how many went."""
    es = entries(kind)
    now = time.time()
    gone = [e for e in es[:max(0, len(es) - keep)] if now - e.used >= BUSY_SECONDS]
    return sum(_remove(e) for e in gone)


def mark_used(path: Path) -> None:
    """Stamp an entry a run has just read, for `--older-than` (a read-only cache is left as it is)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _measure(path: Path) -> tuple[int, float | None]:
    """Bytes and newest modification time of a file or a folder's tree (None: gone meanwhile)."""
    try:
        st = path.stat()
    except OSError:
        return 0, None
    size, used = (0, st.st_mtime) if path.is_dir() else (st.st_size, st.st_mtime)
    for p in _walk(path) if path.is_dir() else ():
        with contextlib.suppress(OSError):
            s = p.stat()
            used = max(used, s.st_mtime)
            size += s.st_size if p.is_file() else 0
    return size, used


def _walk(folder: Path) -> Iterable[Path]:
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            yield Path(top) / name


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove(e: Entry) -> int:
    """1 when the entry went, 0 when it could not be removed (another run removed it first, say)."""
    try:
        if e.path.is_dir():
            aside = e.path.with_name(f".deleting-{e.path.name}-{os.getpid()}")
            os.rename(e.path, aside)  # whole or gone: no run finds half a folder
            shutil.rmtree(aside, ignore_errors=True)
        else:
            e.path.unlink()
            if e.kind == "files":
                e.path.with_suffix(".lock").unlink(missing_ok=True)
    except OSError:
        return 0
    if e.kind == "demo":  # an emptied demo-<version>/ goes too
        with contextlib.suppress(OSError):
            e.path.parent.rmdir()
    return 1


def _remove_leftovers(kind: str, now: float) -> None:
    """Temporary files and folders of killed runs (a day old: a live run's are younger), half-removed entries,
    and for `files` the locks of entries no longer there."""
    root = cache_dir()
    parents = {p.parent for p in root.glob(KINDS[kind])} | {root / KINDS[kind].split("/")[0]}
    for parent in parents:
        for p in parent.glob(".*") if parent.is_dir() else ():
            with contextlib.suppress(OSError):
                if p.name.startswith(".deleting-") or now - p.stat().st_mtime > LEFTOVER_SECONDS:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        for lock in parent.glob("*.lock") if kind == "files" and parent.is_dir() else ():
            with contextlib.suppress(OSError):
                if not lock.with_suffix(".json").exists() and now - lock.stat().st_mtime > BUSY_SECONDS:
                    lock.unlink()

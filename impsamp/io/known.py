"""What a full read of a JSONL file found (rows, seek checkpoints, sha256 of its content), kept in the user cache
under the file's identity on disk, so that opening the corpus again (each `resample` of an embedding checks its
corpus is unchanged; each Slurm slice, `compare` and `train` open it too) does not read and hash every byte again.

The identity is what the operating system changes on any write: device, inode, size, modification and change
times in nanoseconds (git's index trusts the same fields). The change time cannot be set back by a program
(`touch` and `os.utime` set the modification time and so move it forward), so a file edited in place, even to
the same size with its old modification time put back, is read again. A file whose times are under
`SETTLED_SECONDS` old when it is read is not kept: file systems stamp times in ticks (a few ms on Linux, 2 s on
FAT, the server's on NFS), and a write in the tick just after the read could leave the identity as it was.
`IMPSAMP_NO_FILE_CACHE=1` turns it off (every open reads every file).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

SETTLED_SECONDS = 2.0
Counted = tuple[int, tuple[tuple[int, int], ...], str]
"""rows, (row, byte offset) seek checkpoints, digest: what `jsonl.count_lines` returns."""


def identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def entry_path(path: Path) -> Path:
    from ..config import cache_dir

    return cache_dir() / "files" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")


def counted(path: Path, count: Callable[[Path], Counted]) -> Counted:
    """`count(path)`, or what it gave when this file, with this identity, was last read through."""
    if os.environ.get("IMPSAMP_NO_FILE_CACHE", "").strip() not in ("", "0"):
        return count(path)
    before = identity(path)
    kept = _load(path, before)
    if kept is not None:
        return kept
    result = count(path)
    settled = time.time_ns() - max(before[3], before[4]) >= SETTLED_SECONDS * 1e9
    if settled and identity(path) == before:  # not written during the read, nor just before it
        _store(path, before, result)
    return result


def _load(path: Path, ident: list[int]) -> Counted | None:
    try:
        e = json.loads(entry_path(path).read_text())
        if e["path"] != str(path) or e["identity"] != ident:
            return None
        rows, checkpoints, digest = int(e["rows"]), tuple((int(r), int(o)) for r, o in e["checkpoints"]), e["digest"]
        return (rows, checkpoints, digest) if isinstance(digest, str) and digest else None
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or damaged: read the file
        return None


def _store(path: Path, ident: list[int], result: Counted) -> None:
    rows, checkpoints, digest = result
    entry = {"path": str(path), "identity": ident, "rows": rows, "checkpoints": [list(c) for c in checkpoints],
             "digest": digest}
    target = entry_path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entry, separators=(",", ":")))
        os.replace(tmp, target)  # whole or not there: a reader never sees half an entry
    except OSError:  # a read-only, full or broken cache: the next open reads the file again
        try:
            tmp.unlink()
        except OSError:
            pass

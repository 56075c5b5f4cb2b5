"""What keeps a stage's output folder from harming other data: one writer at a time, no input inside it.

`hold`: an advisory lock (`flock`) on the folder itself while a stage writes it. A second process that
would write the same folder (the same command started twice, an `--overwrite` while the first run still
writes) stops with a one-line error instead of interleaving its files with the first run's or deleting
them. A whole run (or `impsamp finalize`) holds it exclusive. The slices of one sliced run
(`--num-shards/--shard-index`) share it: a slice holds it exclusive while it sets the folder up (and may
empty it for `--overwrite` only then, while no other slice writes), then shared, and locks its own slice's
file in it (`hold_slice`): the same slice is run by one process at a time.

The kernel drops a lock when its process ends, however it ends: a killed run leaves no stale lock to clear
by hand. A stage's entry function (`released_on_return`) lets go of the locks its thread took when it
returns or raises: a run stopped in a notebook does not block the same command in a terminal. NFS has no
`flock` on a folder (an exclusive one needs a file open for writing): there the lock is on LOCK_FILE inside
it. Where a filesystem has no locks at all, locking is skipped, with a warning.

`refuse_input_inside`: `--overwrite` clears a folder; never one that is, or holds, an input of the run.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, TypeVar

from .errors import StageError
from .outdir import complete_manifest, is_hf_dataset_dir

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock.tmp-impsamp"
"""Where a filesystem has no flock on a folder (NFS): the lock is on this file in it. A temp name: never
payload, residue to `outdir.only_residue`; `release` removes it once no other slice holds it."""
SLICE_WAIT = 10.0
"""Seconds a slice waits for another slice that is setting the folder up (it holds the lock exclusive)."""
BUSY = ("is being written by another process (this or another impsamp command still running, or a slice of "
        "a sliced run), or read by one as its input; wait for it to end, or choose another output directory")


class FolderBusy(StageError):
    """Another process (or thread) is writing the folder."""


@dataclass
class _Held:
    fd: int
    owner: threading.Thread
    exclusive: bool
    lock_file: Path | None = None  # the lock is on this file, not on the folder (NFS)


_HELD: dict[tuple[int, int], _Held] = {}
"""This process's locks, by (device, inode) of the folder."""
_MUTEX = threading.Lock()
BUSY_ERRNOS = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
"""What `flock` fails with when another process holds the lock; any other error means this file system
cannot lock here (NFS on a folder: EBADF; Lustre mounted noflock; ...). `usercache` reads them the same way."""


def hold(folder: Path, *, shared: bool = False) -> tuple[int, int] | None:
    """Lock `folder` (it must exist) for writing. A whole run's lock is exclusive. A slice's (`shared`) is
    exclusive while no other slice writes (it may set the folder up, `--overwrite` included; then `share`
    it), else shared with them. A folder this thread holds is locked again (a failed change of mode drops
    it). Returns the key to `release`; None where the filesystem has no locks. Raises FolderBusy."""
    if fcntl is None:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        return _unlocked(folder, e)
    st = os.fstat(fd)
    key, me = (st.st_dev, st.st_ino), threading.current_thread()
    with _MUTEX:
        held = _HELD.pop(key, None)
        if held is not None:
            os.close(fd)
            fd = held.fd
            if held.owner is not me and held.owner.is_alive():
                _HELD[key] = held
                raise FolderBusy(f"{folder} is being written by another thread of this process; wait for it "
                                 "to end, or choose another output directory")
    try:
        got = _lock(fd, folder, shared)
    except BaseException:
        os.close(fd)
        raise
    lock_file = held.lock_file if held is not None else None
    if isinstance(got, OSError):  # no flock on a folder here (NFS): on a file inside it, then
        os.close(fd)
        fd, got = _lock_file(folder, shared)
        if fd is None:
            return _unlocked(folder, got)
        lock_file = folder / LOCK_FILE
    with _MUTEX:
        _HELD[key] = _Held(fd, me, got, lock_file)
    return key


def _lock(fd: int, folder: Path, shared: bool) -> bool | OSError:
    """flock `fd`: True exclusive; False shared (a slice beside running slices); the error where the
    filesystem refuses it."""
    deadline = time.monotonic() + (SLICE_WAIT if shared else 0.0)
    modes = (fcntl.LOCK_EX, fcntl.LOCK_SH) if shared else (fcntl.LOCK_EX,)
    while True:
        for mode in modes:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return mode == fcntl.LOCK_EX
            except OSError as e:
                if e.errno not in BUSY_ERRNOS:
                    return e
        if time.monotonic() >= deadline:  # a slice waits out another that holds it exclusive for its set-up
            raise FolderBusy(f"{folder} {BUSY}")
        time.sleep(0.05)


def slice_lock(name: str) -> str:
    """The file in a sliced run's folder that the process running slice `name` ("3-of-16") locks."""
    return f".slice-{name}.tmp-impsamp"


def hold_slice(folder: Path, name: str) -> tuple[int, int] | None:
    """One process per slice: lock `folder`'s `slice_lock(name)` file exclusive, so the same --shard-index
    started twice (an array task requeued while the first still runs) stops at once instead of doing that
    slice's work twice beside it. `release` removes the file; one a killed slice left is removed by whoever
    next holds the folder exclusive (a whole run, `finalize`; no slice holds its file then). Returns the key
    to `release`; None where the filesystem has no locks. Raises FolderBusy."""
    if fcntl is None:
        return None
    path = folder / slice_lock(name)
    fd = _take_file_lock(path, wait=False)
    if fd is None:
        raise FolderBusy(f"slice {name.replace('-', ' ')} of {folder} is running in another process (the same "
                         "--shard-index started twice); wait for it to end, or run another slice")
    if isinstance(fd, OSError):
        return _unlocked(folder, fd)
    st = os.fstat(fd)
    with _MUTEX:
        _HELD[(st.st_dev, st.st_ino)] = _Held(fd, threading.current_thread(), True, lock_file=path)
    return (st.st_dev, st.st_ino)


@contextlib.contextmanager
def claim(folder: Path, name: str, *, wait: bool = True) -> Iterator[bool]:
    """Work on `name` (a shard the slices of a run all need) in this process alone: yields True once claimed;
    another process claiming it waits until this one lets go (its shard committed, or it failed or was
    killed), then finds it done or does it; without `wait` it gets False at once (do something else first).
    Where the filesystem has no locks, nothing is held and it yields True (the work may be done twice, to the
    same bytes)."""
    path = folder / f".claim-{name}.tmp-impsamp"
    fd = _take_file_lock(path, wait=wait) if fcntl is not None else None
    try:
        yield fd is not None
    finally:
        if isinstance(fd, int):
            with contextlib.suppress(OSError):  # while held: a waiter then takes the name anew
                path.unlink()
            os.close(fd)


def _take_file_lock(path: Path, wait: bool) -> int | OSError | None:
    """An exclusive flock on the file `path` (created), held while it is still that name's: its descriptor;
    None where another process holds it and not `wait`; the error where this filesystem has no locks."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            return e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            os.close(fd)
            return None if e.errno in BUSY_ERRNOS else e
        except BaseException:  # Ctrl-C while waiting
            os.close(fd)
            raise
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:  # not removed meanwhile
            return fd
        os.close(fd)


def _flock_now(fd: int, mode: int, busy: str) -> OSError | None:
    """flock `fd` in `mode` without waiting: None when taken; where another process holds it, FolderBusy(busy);
    where this filesystem has no locks, the error. `fd` is closed unless taken."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return None
    except OSError as e:
        os.close(fd)
        if e.errno in BUSY_ERRNOS:
            raise FolderBusy(busy) from None
        return e


def _lock_file(folder: Path, shared: bool) -> tuple[int, bool] | tuple[None, OSError]:
    """The lock on LOCK_FILE in `folder`, opened for writing (NFS locks a file only so). `finish` removes
    the file: a lock on a file no longer at that name is dropped and taken again."""
    path = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            return None, e
        try:
            got = _lock(fd, folder, shared)
            if isinstance(got, OSError):  # no locks at all here: nothing to keep the file for
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
                return None, got
            if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd, got
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


_WARNED: list[str] = []


def _unlocked(folder: Path, e: OSError) -> None:
    """No lock here (a filesystem without them: Lustre mounted noflock): said once per process, not on every
    stage of a pipeline."""
    if not _WARNED:
        _WARNED.append(str(folder))
        logger.warning("cannot lock %s (%s): nothing stops a second process from writing the same output "
                       "folder at the same time (said once per process)", folder, e.strerror or e)
    return None


def hold_inputs(*folders: Path | str) -> None:
    """Share-lock each stage output a run reads, until its stage function returns (`released_on_return`): an
    `--overwrite` of one (which locks it exclusive) is refused while the run reads it, rather than changing the
    centroids or vectors under it (a review: a selection marked complete with KL 1.43 from its target, made half
    from the old clusters and half from the new); one being written now is refused here. A folder this thread
    holds already is left as it is; where the filesystem has no `flock` on a folder (NFS), nothing is locked."""
    if fcntl is None:
        return
    for folder in map(Path, folders):
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue  # the stage's own checks say what is wrong with it
        st, me = os.fstat(fd), threading.current_thread()
        key = (st.st_dev, st.st_ino)
        with _MUTEX:
            held = _HELD.get(key)
        if held is not None and held.owner is me:
            os.close(fd)
            continue
        if _flock_now(fd, fcntl.LOCK_SH, f"{folder} is being written by another process; wait for it to end before "
                      "reading it"):
            continue  # no locks on this filesystem
        with _MUTEX:  # another thread's lock on it stays its own: this one is kept under this thread's key
            _HELD[key if key not in _HELD else (*key, me.ident)] = _Held(fd, me, False)


def refuse_busy(folder: Path, *, shared: bool = False, slice_name: str | None = None) -> None:
    """Stop now if another process writes `folder` (or, given `slice_name`, runs that slice of it), before a
    stage's slow set-up (loading a model, embedding a target) rather than after it: `hold` it and let go at
    once. `StageRun.begin` takes the locks for good."""
    try:
        st = os.stat(folder)
    except OSError:
        return  # not there yet: nobody writes it
    if (st.st_dev, st.st_ino) not in _mine():  # this thread's own (a demo's nested stage): nothing to ask
        key = hold(Path(folder), shared=shared or slice_name is not None)
        try:
            if slice_name is not None:
                release(hold_slice(Path(folder), slice_name))
        finally:
            release(key)


def exclusive(key: tuple[int, int] | None) -> bool:
    """Whether this process may set the folder up alone (no lock at all counts as yes)."""
    with _MUTEX:
        return key not in _HELD or _HELD[key].exclusive


def share(key: tuple[int, int] | None, folder: Path) -> None:
    """A slice's folder is set up: let the other slices of its run write beside it. Linux drops the exclusive
    lock before it takes the shared one; where another process takes the folder in between, this slice
    waits for it as `hold` does: for a slice setting up, then shared beside it; a whole run still holding
    it after SLICE_WAIT stops this slice (FolderBusy) rather than let it write into that run's output."""
    with _MUTEX:
        held = _HELD.get(key) if key is not None else None
    while held is not None and held.exclusive:
        try:
            fcntl.flock(held.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held.exclusive = False
        except BlockingIOError:  # another process took it in between: a slice setting up waits, a run wins
            try:
                held.exclusive = _lock(held.fd, folder, shared=True) is True
            except FolderBusy:
                release(key)
                raise


def release(key: tuple[int, int] | None) -> None:
    """Drop a lock taken by `hold` (closing its descriptor releases it)."""
    with _MUTEX:
        held = _HELD.pop(key, None) if key is not None else None
    if held is None:
        return
    if held.lock_file is not None:  # removed unless another slice still holds it
        with contextlib.suppress(OSError):
            fcntl.flock(held.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(held.lock_file).st_ino == os.fstat(held.fd).st_ino:
                os.unlink(held.lock_file)
    os.close(held.fd)


def _mine() -> set[tuple[int, int]]:
    me = threading.current_thread()
    with _MUTEX:
        return {key for key, held in _HELD.items() if held.owner is me}


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


def _recorded_inputs(folder: Path) -> tuple[list[Any], set[str]] | None:
    """What a complete stage output's manifest records it was made from (None: not one): the values under its
    inputs' `path`, `paths` and `folders` keys (files and folders), and the corpus globs (`globs` keys)."""
    m = complete_manifest(folder)
    if m is None:
        return None
    found: list[Any] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                found.append(v) if k in ("path", "paths", "folders") else walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(m.get("inputs", {}))
    return found, _globs(m.get("inputs", {}))


def _paths(obj: Any) -> set[Path]:
    found = set()
    for s in _strings(obj):
        if not s or "\n" in s or len(s) > 4096:
            continue
        try:
            p = Path(s).resolve()
            if p.exists():
                found.add(p)
        except (OSError, ValueError):
            continue
    return found


def refuse_input_inside(out: Path, inputs: Any) -> None:
    """Refuse an output folder that is, or holds, one of the run's inputs (any path named in `inputs`), or
    what a stage output among them was made from (a projected network's clustering, an expert's experts
    folder and its inputs), or that lies inside such a stage output: replacing it would delete that input
    or damage the output it is part of. (A stage records its input paths as given: a relative one is found
    from the folder it was run in.)"""
    if not out.exists():
        return
    root = out.resolve()
    named, stages, _ = _inputs_behind(inputs)
    for p in sorted(named | stages):
        if p == root or root in p.parents or (p in stages and p in root.parents):
            raise StageError(f"{out} is {'inside' if p in root.parents else 'also'} an input of this run "
                             f"({p}): writing there would delete or damage it; choose another output directory")


def _inputs_behind(inputs: Any) -> tuple[set[Path], set[Path], set[str]]:
    """The existing paths named in `inputs` with what the stage outputs among them (or holding them: an expert
    of an experts run) were made from, those stage outputs, and the corpus globs of them all."""
    named, globs = _paths(inputs), _globs(inputs)
    stages: set[Path] = set()
    seen: set[Path] = set()
    todo = list(named)
    while todo:  # through every stage behind (a selection's embeddings' corpus)
        p = todo.pop()
        for folder in (p, *p.parents):
            if folder in seen:
                break  # its ancestors were walked from another input
            seen.add(folder)
            recorded = _recorded_inputs(folder)
            if recorded is not None:
                stages.add(folder)
                new = _paths(recorded[0]) - named
                named |= new
                globs |= recorded[1]
                todo += new
    return named, stages, globs


def refuse_inside_input_folder(out: Path, inputs: Any) -> None:
    """Refuse an output folder inside a folder the run reads as input, or that a stage output among its
    inputs was made from (a corpus given as a folder), or where a glob given as such a corpus could match
    it or what it will hold: the output would become part of that corpus, read again (or refused) by every
    later run over it."""
    root = Path(out).resolve()
    named, stages, globs = _inputs_behind(inputs)
    for p in sorted(named):
        if not (p.is_dir() and p in root.parents) or is_hf_dataset_dir(p):
            continue  # a `datasets` folder reads only the files its state.json lists
        if p in stages:
            raise StageError(f"{out} is inside {p}, an impsamp output this run reads: no stage writes inside "
                             "another's output; choose an output directory outside it")
        if not root.relative_to(p).parts[0].startswith((".", "_")):  # a corpus folder skips those names
            raise StageError(f"{out} is inside {p}, a corpus folder this run's input comes from: the output "
                             "would become part of that corpus; choose an output directory outside it")
    for pattern in sorted(globs):
        if glob_may_reach(pattern, root):
            raise StageError(f"{out} could be matched by {pattern}, a corpus pattern this run's input comes "
                             "from: the output would become part of that corpus; choose an output directory "
                             "the pattern does not reach (its `*` and `**` pass over names that start with '.')")


def _globs(obj: Any) -> set[str]:
    """The glob patterns under `globs` keys (`io.Corpus.spec`) anywhere in `obj`."""
    if isinstance(obj, Mapping):
        return set().union(*(set(_strings(v)) if k == "globs" else _globs(v) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return set().union(*map(_globs, obj))
    return set()


def glob_may_reach(pattern: str, path: Path) -> bool:
    """Whether `glob.glob(pattern, recursive=True)` (an absolute pattern) could match `path`, a folder above
    it (read as a corpus folder, so `path` is read too) or something a stage will write inside it."""
    parts, rel = Path(pattern).parts, Path(path).parts
    plain = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
    if rel[:plain] != parts[:plain]:
        return False
    for i, (name, part) in enumerate(zip_longest(rel[plain:], parts[plain:])):
        if part == "**":  # anything below, but hidden names (as `*`), unless a later part names one
            later = parts[plain + i + 1:]
            return not any(n.startswith(".") for n in rel[plain + i:]) or any(p.startswith(".") for p in later)
        if part is None or name is None:
            return True  # a folder above `path` matched; or inside `path` may
        if name.startswith(".") and not part.startswith(".") or not fnmatch.fnmatchcase(name, part):
            return False  # glob's `*` passes over hidden names
    return True


def refuse_inside_output(out: Path) -> None:
    """Refuse an output folder inside a complete stage output (a finished run, an experts folder): writing
    there would change an output that is done, and another run may be reading it."""
    for folder in Path(out).resolve().parents:
        if _recorded_inputs(folder) is not None:
            raise StageError(f"{out} is inside {folder}, a finished impsamp output; choose an output path "
                             "outside it")

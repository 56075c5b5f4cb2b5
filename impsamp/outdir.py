"""What a stage's output folder holds, read from its files: complete, interrupted, being replaced.

`manifest.StageRun` writes the folders; this module names their parts, tells their states apart, moves
a complete output aside while `--overwrite` replaces it, and finishes what a kill cut short (`recover`):

    out_dir/
      manifest.json   the output is complete (written last)
      _run.json       a run was started here (and, without manifest.json, interrupted)
      _shards/        that run's committed shards
      _replaced/      the complete output an `--overwrite` run replaces: kept until the new one
                      completes, put back if it stops on bad input (`_replaced.part/`,
                      `_replaced.undo/`, `_replaced.back/`: a move stopped halfway, that the next
                      run holding the folder's lock alone finishes, see `recover`)
      .lock.tmp-impsamp   on NFS only: the file a run locks while it writes (elsewhere the folder itself; `guards`)
      .slice-3-of-16.tmp-impsamp   the file slice 3 of a sliced run locks while it runs (`guards.hold_slice`)
      .claim-NAME.tmp-impsamp      a shard a slice is writing for all the slices (`guards.claim`: experts' data)

It imports nothing of impsamp but `errors`, so `guards`, `io.discovery` and the CLI share its checks.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import StageError

MANIFEST = "manifest.json"
RUN_RECORD = "_run.json"
SHARD_RECORDS = "_shards"
REPLACED = "_replaced"
SETTING_ASIDE, UNDOING, MOVING_BACK = "_replaced.part", "_replaced.undo", "_replaced.back"
MOVES = (SETTING_ASIDE, UNDOING, MOVING_BACK)  # a replacement's moves that a kill may cut short
MARK = ".impsamp-replaced"  # in each of those folders: impsamp made it (a user's `_replaced/` is not ours)
BOOKKEEPING = (SHARD_RECORDS, RUN_RECORD, REPLACED, *MOVES)


def tmp_name(path: Path) -> Path:
    """The temporary name a file is written under before it is committed by rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_tmp_name(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name


def read_json_dict(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def is_hf_dataset_dir(path: Path) -> bool:
    """A `datasets.save_to_disk` folder (its state.json lists the data files it reads)."""
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def complete_manifest(folder: Path) -> dict[str, Any] | None:
    """`folder`'s manifest when impsamp wrote it (another tool's manifest.json is not ours), else None."""
    m = read_json_dict(folder / MANIFEST)
    return m if m is not None and {"stage", "impsamp_version", "outputs"} <= set(m) else None


def is_stage_dir(path: Path) -> bool:
    """A stage directory: complete, interrupted, or an output an `--overwrite` run stopped while moving it
    (not a folder that merely holds another tool's manifest.json, or a stage output in a subfolder)."""
    if (path / RUN_RECORD).is_file() or complete_manifest(path) is not None:
        return True
    if any(_ours(path / n) for n in MOVES):
        return True
    return last_complete(path) is not None and all(
        is_tmp_name(p.name) for p in path.iterdir() if p.name != REPLACED)


def describe_dir(path: Path) -> str:
    """What `path` looks like, for error messages."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is a file, not a stage directory"
    if (path / MANIFEST).exists():
        if (ours := complete_manifest(path)) is not None:
            return f"is a complete '{ours['stage']}' output"
        if read_json_dict(path / MANIFEST) is None:
            return "has an unreadable manifest.json"
        if not (path / RUN_RECORD).exists():
            return "holds a manifest.json impsamp did not write (another tool's?), not an impsamp output"
    kept = kept_note(path)
    moving = [path / n for n in MOVES if _ours(path / n)]
    if moving or (kept and not (path / RUN_RECORD).exists()):
        return (f"holds an output that an --overwrite run stopped while moving it ({(moving or [path / REPLACED])[0]}): "
                "rerun the command to put it back")
    if (path / RUN_RECORD).exists():
        record = read_json_dict(path / RUN_RECORD) or {}
        stage = record.get("stage") if isinstance(record.get("stage"), str) else "?"
        command = record.get("command") if isinstance(record.get("command"), str) else stage
        sliced = (f" (slices of a --num-shards run: run the missing ones, then `impsamp finalize {path}`)"
                  if stage in ("embed", "cluster", "experts") else "")
        return (f"is an incomplete '{stage}' output ({_progress(path, stage)}; the run was interrupted or is "
                f"still running): rerun the same `impsamp {command}` command to resume it{sliced}{kept}")
    return "is not an impsamp output (no manifest.json)"


def _progress(path: Path, stage: str) -> str:
    """How far an interrupted run got: a training run's last checkpoint (`training.checkpoint` names them
    checkpoints/ckpt-PHASEINDEX-PHASE-STEP/), another stage's committed shards."""
    if stage == "train":
        done = sorted(p.name for p in (path / "checkpoints").glob("ckpt-*") if (p / "state.json").is_file())
        if not done:
            return "no checkpoint yet"
        *_, phase, step = done[-1].split("-")
        return f"last checkpoint at {phase} step {int(step):,}" if step.isdigit() else f"last checkpoint {done[-1]}"
    n = len(list((path / SHARD_RECORDS).glob("*.json"))) if (path / SHARD_RECORDS).exists() else 0
    return f"{n} shard{'' if n == 1 else 's'} committed"


def kept_note(out: Path) -> str:
    """Where the complete output that an unfinished `--overwrite` run replaces is kept ("": none)."""
    old = last_complete(out)
    return "" if old is None else f" (the '{old['stage']}' output it replaces is kept in {out / REPLACED})"


# ----------------------------------------------------------------------------- emptying and replacing


def empty(paths: set[Path], *, strict: bool = False) -> None:
    """Remove `paths` (files, links, folders); `strict`: an error stops it."""
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=not strict)
        else:
            p.unlink(missing_ok=not strict)


def only_residue(out: Path) -> bool:
    """True when `out` holds nothing but temp files and an empty `_shards/` (a run killed at its start)."""
    for p in out.iterdir():
        if is_tmp_name(p.name) and p.is_file():
            continue
        if p.name == SHARD_RECORDS and p.is_dir() and not any(p.iterdir()):
            continue
        return False
    return True


def set_aside(out: Path, keep: set[Path]) -> None:
    """Clear `out` for a new run, all but `keep` (the lock file). A complete output is moved into
    `_replaced.part/` (marked as impsamp's first, then the manifest, then the rest), which becomes
    `_replaced/` once whole (one rename): stopped halfway, `recover` moves it back. An interrupted run is
    deleted; a `_replaced/` beside it stays (a replacement that never finished: still the last complete
    output)."""
    aside, part = out / REPLACED, out / SETTING_ASIDE
    if complete_manifest(out) is not None:
        drop_replaced(out)  # left over from a finished replacement
        part.mkdir()
        (part / MARK).write_text("the output an `impsamp --overwrite` run replaces\n")
        os.replace(out / MANIFEST, part / MANIFEST)
        for p in sorted(set(out.iterdir()) - keep - {part}):
            os.replace(p, part / p.name)
        os.replace(part, aside)
        return
    if last_complete(out) is not None:
        keep = keep | {aside}
    empty(set(out.iterdir()) - keep, strict=True)


def put_back(out: Path, keep: set[Path]) -> bool:
    """Undo `set_aside` after the new run stopped on bad input: what the run wrote (all but `keep`) goes,
    the replaced output comes back, its manifest last. False: there was nothing to put back."""
    if last_complete(out) is None:
        return False
    os.replace(out / REPLACED, out / UNDOING)  # one rename: from here on, `recover` finishes it
    recover(out, keep)
    return True


def recover(out: Path, keep: set[Path]) -> str | None:
    """Finish what a kill cut short, before a run reads the folder (with its lock held alone). Each step
    is one rename, so a kill leaves one of these states:

        set_aside   OUT's files -> _replaced.part/ (filling) -> _replaced/
        put_back    _replaced/ -> _replaced.undo/ (OUT emptied of the new run) -> _replaced.back/ (moved
                    back, manifest last)
        cleanup     the new manifest.json written -> bookkeeping and _replaced/ deleted (manifest first)

    Only folders marked as impsamp's (MARK) are touched; a state no step leaves is refused, never
    deleted. Returns what it did, for the log.

    Raises:
        StageError: `out` holds folders by these names that impsamp did not leave so.
    """
    moves = [out / n for n in MOVES if (out / n).exists()]
    complete = complete_manifest(out) is not None
    if moves:
        src = moves[0]
        if len(moves) == 1 and complete and not any(src.iterdir()):
            src.rmdir()  # made and not marked yet, or emptied and unmarked: nothing is in it
            return "removed the empty folder of a move that had not begun or had ended"
        if len(moves) > 1 or not _ours(src) or (complete and set(src.iterdir()) != {src / MARK}):
            raise StageError(f"{out} holds {', '.join(p.name for p in moves)} in a state impsamp does not leave "
                             "(an --overwrite stopped halfway, then changed by hand?); move them out of the "
                             "folder and run again")
        if src.name == UNDOING:  # the new run's files go first, then the old ones come back
            empty(set(out.iterdir()) - keep - {src}, strict=True)
            os.replace(src, out / MOVING_BACK)
            src = out / MOVING_BACK
        _move_back(src, out)
        return {SETTING_ASIDE: "moved back the output an --overwrite had begun to set aside"}.get(
            moves[0].name, "put back the output an --overwrite run was replacing")
    if complete and ((out / RUN_RECORD).exists() or (out / SHARD_RECORDS).exists() or _ours(out / REPLACED)):
        # complete, then stopped in its cleanup (or one that could not delete everything: said again)
        return finish_cleanup(out) or "removed what a finished run left of its bookkeeping"
    others = set(out.iterdir()) - keep - {out / REPLACED}
    if last_complete(out) is not None and not (out / RUN_RECORD).exists() and all(is_tmp_name(p.name) for p in others):
        empty(others, strict=True)  # set aside, then stopped before its run began: put it back
        _move_back(out / REPLACED, out)
        return "put back the output an --overwrite run was replacing"
    return None


def moving(out: Path) -> bool:
    """Whether a replacement's move was cut short in `out` (the next run holding its lock finishes it)."""
    return any(_ours(out / n) for n in MOVES)


def last_complete(out: Path) -> dict[str, Any] | None:
    """The manifest of the complete output an unfinished `--overwrite` run replaces (in `_replaced/`)."""
    return complete_manifest(out / REPLACED) if _ours(out / REPLACED) else None


def finish_cleanup(out: Path) -> str | None:
    """Remove a complete output's run bookkeeping and the output it replaced (`StageRun.cleanup`).
    Returns None, or what could not be removed and why (the output itself is complete either way)."""
    for part, remove in ((SHARD_RECORDS, shutil.rmtree), (RUN_RECORD, Path.unlink), (REPLACED, drop_replaced)):
        try:
            remove(out if part == REPLACED else out / part)
        except FileNotFoundError:
            pass
        except OSError as e:  # said at every run until it goes (permissions, say)
            return (f"could not delete {e.filename or out / part} ({e.strerror or e}): the output is complete; "
                    f"delete {out / part} yourself")
    return None


def drop_replaced(out: Path) -> None:
    """Delete `_replaced/` if impsamp made it: its manifest first (stopped halfway, what is left never
    looks complete), its mark last (what is left is still known as impsamp's, and deleted next time)."""
    aside = out / REPLACED
    if not _ours(aside):
        return
    (aside / MANIFEST).unlink(missing_ok=True)
    for p in sorted(set(aside.iterdir()) - {aside / MARK}):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    (aside / MARK).unlink()
    aside.rmdir()


def _ours(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and (folder / MARK).is_file()


def _move_back(src: Path, out: Path) -> None:
    entries = sorted(set(src.iterdir()) - {src / MANIFEST, src / MARK})
    if clash := [p.name for p in entries if (out / p.name).exists()]:
        raise StageError(f"{out} holds {clash[0]} both in it and in {src}: impsamp cannot tell which to keep; "
                         f"move one of them out and run again")
    for p in entries:
        os.replace(p, out / p.name)
    if (src / MANIFEST).exists():
        os.replace(src / MANIFEST, out / MANIFEST)
    (src / MARK).unlink(missing_ok=True)
    src.rmdir()


def iter_stage_files(path: Path) -> Iterator[Path]:
    """Payload files of a stage directory (no bookkeeping, no temp residue)."""
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if p.is_file() and not any(is_tmp_name(part) or part in BOOKKEEPING for part in rel.parts):
            yield p

"""`impsamp export RUN OUT`: a finished run as a `transformers` folder, for the families that have one."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from pathlib import Path

from .._deps import require
from ..errors import StageError
from ..guards import refuse_input_inside, refuse_inside_output
from ..manifest import atomic_write_json
from .checkpoint import make_readable
from .families import get_family
from .result import TrainRun


logger = logging.getLogger(__name__)

MARKER = "impsamp_export.json"
"""What the run was and which weights: it also marks the folder as an export `--overwrite` may replace."""


def _an_export(out: Path) -> bool:
    """Whether `out` holds an earlier export: its marker, or (before 0.7.8, which had none) only the files an
    export writes, weights and config among them."""
    if (out / MARKER).is_file():
        return True
    names = {p.name for p in out.iterdir()}
    return {"config.json", "model.safetensors"} <= names and names <= {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "chat_template.jinja"}


def export(run_dir: str | Path, out_dir: str | Path, *, weights: str = "model.safetensors",
           overwrite: bool = False) -> Path:
    """Write `out_dir` as a `transformers` folder: config.json, model.safetensors, tokenizer files.

    Args:
        run_dir: a complete `impsamp train` output.
        weights: "model.safetensors" (final) or "pretrained.safetensors" (before fine-tuning).
        overwrite: replace an existing `out_dir`.
    """
    from safetensors.torch import load_file, save_file

    from .. import __version__

    transformers = require("transformers")
    run = TrainRun.load(run_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise StageError(f"{out} is a file; choose a folder to export to")
    refuse_input_inside(out, [str(run.path)])
    refuse_inside_output(out)
    _recover(out)
    if out.exists() and any(out.iterdir()):
        if not _an_export(out):  # --overwrite replaces an export, never a folder of something else
            raise StageError(f"{out} is not empty and is not an `impsamp export` output; refusing to replace it "
                             "(choose a new or empty folder)")
        if not overwrite:
            raise StageError(f"{out} already exists; pass --overwrite to replace it or choose another folder")
    src = run.path / weights
    if not src.is_file():
        raise StageError(f"{src} does not exist; weights must be model.safetensors or pretrained.safetensors "
                         "(kept by a run that both pretrained on --data and fine-tuned)")
    family = get_family(run.config.arch)
    if family.export is None:
        raise StageError(f"{run.path} is a '{family.name}' model, which has no transformers equivalent; "
                         "`impsamp export` writes families that have one (dense)"
                         + ("; export the small model `impsamp project` makes from it" if family.name == "projected"
                            else ""))
    tok = run.load_tokenizer()
    eos = tok.tokenizer.id_to_token(tok.eos_id)
    tmp = out.with_name(f".{out.name}.tmp-{_me()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        hf_config, state = family.export(load_file(str(src)), run.model_config, tok.eos_id)
        hf_config.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        make_readable(tmp / "model.safetensors")
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.tokenizer, eos_token=eos,
                                                    bos_token=eos, unk_token=None, pad_token=eos,
                                                    model_max_length=run.model_config.block_size)
        fast.save_pretrained(tmp)
        atomic_write_json(tmp / MARKER, {"run": str(run.path.resolve()),  # not as typed
                                         "run_fingerprint": run.manifest and run.manifest.fingerprint,
                                         "weights": weights, "impsamp_version": __version__})
        _put_in_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _me() -> str:
    """This export's mark in the names of its temp folders (`.NAME.tmp-HOST-PID`, `.NAME.old-HOST-PID`): the
    host as well, so a folder shared by several machines (NFS) is only tidied of this one's dead exports."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _left_beside(out: Path) -> dict[str, list[Path]]:
    """What killed exports to `out` on this host left beside it, by kind ("tmp": a new export being
    written, "old": an earlier one renamed aside), only those of processes no longer running; the newest
    last."""
    found: dict[str, list[Path]] = {"tmp": [], "old": []}
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-{re.escape(socket.gethostname())}-(\d+)")
    for p in out.parent.iterdir() if out.parent.is_dir() else []:
        if (m := pattern.fullmatch(p.name)) and not _running(int(m[2])):
            found[m[1]].append(p)
    for paths in found.values():
        paths.sort(key=lambda p: (p.lstat().st_mtime_ns, p.name))
    return found


def _running(pid: int) -> bool:
    """Whether process `pid` runs on this host (this process too: another thread may be exporting)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def _recover(out: Path) -> None:
    """Finish what a killed export left: half-written new exports go; an earlier export renamed aside
    comes back if nothing took its place (the kill fell between `_put_in_place`'s renames; the newest,
    where several), and goes if the new one is in place (the kill fell in its deletion)."""
    left = _left_beside(out)
    for p in left["tmp"]:
        shutil.rmtree(p, ignore_errors=True)
    olds = left["old"]
    if olds and not out.exists() and not out.is_symlink():
        os.replace(olds[-1], out)
        logger.warning("%s: put back the earlier export an interrupted `impsamp export --overwrite` had "
                       "renamed to %s", out, olds[-1].name)
        olds = olds[:-1]
    for p in olds:
        p.unlink() if p.is_symlink() else shutil.rmtree(p, ignore_errors=True)


def _put_in_place(tmp: Path, out: Path) -> None:
    """Rename the finished export `tmp` to `out`. An earlier export there is renamed aside (as
    `.NAME.old-PID`, beside it), not deleted, until the new one is in place, and renamed back if that
    fails: a kill between the two renames leaves both, named so, and the next export to `out` finishes it
    (`_recover`)."""
    old = out.with_name(f".{out.name}.old-{_me()}")
    if out.exists() or out.is_symlink():
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if (old.exists() or old.is_symlink()) and not out.exists():
            os.replace(old, out)
        raise
    if old.is_symlink():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)

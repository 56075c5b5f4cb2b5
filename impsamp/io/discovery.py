"""Finding a corpus's files: paths, folders, globs and `datasets.save_to_disk` folders; file digests."""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import CorpusError
from ..outdir import describe_dir, is_hf_dataset_dir, is_stage_dir
from .records import SUPPORTED, detect_format, short_error

logger = logging.getLogger(__name__)


def is_glob(spec: str | Path) -> bool:
    """A corpus spec that is a glob pattern, not a path."""
    return any(c in str(spec) for c in "*?[")


def absolute_glob(spec: str | Path) -> str:
    """A glob pattern anchored where it was given: its leading plain folders resolved (so a pattern recorded in
    a manifest means the same from any working folder), the rest as written."""
    parts = Path(spec).parts
    plain = next((i for i, p in enumerate(parts) if is_glob(p)), len(parts))
    return str(Path(*parts[:plain]).resolve().joinpath(*parts[plain:]))


def short_name(spec: str | Path) -> str:
    """What a data card calls a path, folder or glob, wherever it lies and however it was typed: its name; a
    pattern from the folder above its first wildcard (`law/*.jsonl`)."""
    parts = Path(absolute_glob(spec)).parts
    first = next((i for i, p in enumerate(parts) if is_glob(p)), None)
    return Path(*parts[max(first - 1, 1):]).as_posix() if first is not None else parts[-1]


def expand(spec: str | Path) -> list[Path]:
    """Files of one path, folder or glob, sorted; HF folders expand to their data files."""
    s = str(spec)
    if is_glob(s):
        matches = sorted(Path(p) for p in _glob.glob(s, recursive=True))
        if not matches:
            raise CorpusError(f"{s}: the pattern matches no file; check the path")
        return [f for m in matches for f in expand(m)]
    path = Path(s)
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    if path.is_file():
        if detect_format(path) is None:
            raise CorpusError(f"{path}: unsupported file type; impsamp reads {SUPPORTED}")
        return [path]
    return expand_dir(path)


def expand_dir(path: Path, _nested: bool = False) -> list[Path]:
    """Corpus files under a folder, in sorted path order; HF dataset subfolders give their data files."""
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        except (ValueError, AttributeError, OSError):
            splits = []
        raise CorpusError(f"{path} is a `datasets` DatasetDict; name one split's folder instead "
                          f"(splits: {splits}), e.g. {path / (splits[0] if splits else 'train')}")
    # A stage directory is not a corpus, except a complete `resample` output: its data files, in any format.
    if is_stage_dir(path):
        selection = _selection_files(path)
        if selection is None:
            raise CorpusError(f"{path} {describe_dir(path)}, not a corpus; give the corpus files it was made "
                              "from (only a `resample` output can be read as a corpus)")
        if not is_hf_dataset_dir(path):  # Parquet or JSONL; an Arrow one is a `datasets` folder, below
            return selection
    if is_hf_dataset_dir(path):
        try:
            files = json.loads((path / "state.json").read_text())["_data_files"]
            return [path / f["filename"] for f in files]
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CorpusError(f"{path / 'state.json'} is not a readable `datasets` state file ({short_error(e)}); "
                              "save the dataset again with `save_to_disk`") from None
    found: list[Path] = []
    skipped: list[str] = []
    for p in sorted(path.iterdir()):
        if p.name.startswith((".", "_")):
            continue  # hidden files, temp residue, bookkeeping
        if p.is_dir():
            found += expand_dir(p, _nested=True)
        elif p.is_file() and detect_format(p):
            found.append(p)
        elif p.is_file():
            skipped.append(p.name)
    if not found and not _nested:
        raise CorpusError(f"{path}: the folder holds no corpus file; impsamp reads {SUPPORTED}")
    if skipped and found and str(path) not in _WARNED:  # once per folder: a corpus is opened more than once
        _WARNED.add(str(path))
        logger.warning("%s: skipped %d file(s) of a type impsamp does not read (%s%s); it reads %s", path,
                       len(skipped), ", ".join(skipped[:3]), ", ..." if len(skipped) > 3 else "", SUPPORTED)
    return found


_WARNED: set[str] = set()


def as_specs(paths: Any) -> list[str]:
    """One corpus spec or several as a list of strings: a bare path is one spec, not its characters."""
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    items = list(paths) if isinstance(paths, Iterable) else [paths]
    if not all(isinstance(p, (str, os.PathLike)) for p in items):
        raise CorpusError(f"expected a corpus path (file, folder, glob) or a list of them, got {paths!r}")
    return [os.fspath(p) for p in items]


def data_text_field(specs, text_field: str, flag: str = "--data") -> str:
    """The field `specs` are read with: `text` when they are an impsamp selection (a `resample` folder, or
    its data files, keeps its text there), whatever `--text-field` names for the user's own files (the
    in-domain sample, the eval text); else `text_field`.

    Raises:
        CorpusError: a selection beside files of another text field (one corpus reads one field).
    """
    files = [f.resolve() for s in as_specs(specs) for f in expand(s)]
    listed: set[Path] = set().union(*(selection_files(p) for p in {f.parent for f in files}))
    ours = [f for f in files if f in listed]
    if files and len(ours) == len(files):
        return "text"
    if ours and text_field != "text":
        raise CorpusError(f"{flag} mixes a selection ({ours[0].parent}, text under 'text') with files read "
                          f"with --text-field {text_field}; give those files a 'text' field, or give them apart")
    return text_field


def selection_files(folder: Path) -> set[Path]:
    """The data files (resolved) of `folder` when it is a complete `resample` output, else none: their text
    is under `text`, whatever field the user's own files use."""
    return {p.resolve() for p in _selection_files(folder) or ()} if folder.is_dir() else set()


def _selection_files(path: Path) -> list[Path] | None:
    """The data files a complete `resample` output lists (Arrow, Parquet or JSONL); None for another folder."""
    from ..errors import StageError
    from ..manifest import read_manifest

    try:
        manifest = read_manifest(path, expect_stage="resample")  # checks its listed paths stay inside it
    except StageError:
        return None
    return sorted(path / o.path for o in manifest.outputs
                  if o.path.startswith("data-") and detect_format(path / o.path))


def file_digest(path: Path, size: int, sample: int = 1 << 20) -> str:
    """sha256 over the size and the first and last MiB: the digest of Parquet and Arrow files up to 0.7.13 (and
    of JSONL files up to 0.7.10), kept to compare a file with a manifest that recorded it so. Missed: an edit
    past the first MiB and before the last that keeps the file's size; files are now hashed whole."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(sample))
        if size > 2 * sample:
            f.seek(size - sample)
            h.update(f.read(sample))
        elif size > sample:
            h.update(f.read())
    return h.hexdigest()

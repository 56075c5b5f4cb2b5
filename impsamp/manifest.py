"""The stage contract: one output directory per stage, shards committed by rename, manifest last.

A stage (embed, cluster, resample, train, experts, compare, ...) writes exactly one directory:

    out_dir/
      _run.json            what this run is (stage, config, inputs): the key that lets a rerun resume
      _shards/NNNNN.json   one completion record per committed shard (files, sizes, sha256, stats)
      <payload files>      each written as `.name.tmp-PID`, then renamed into place
      manifest.json        written last, atomically: "has a manifest" means "complete"

A rerun with the same config and inputs skips every shard that has a record; a killed run resumes
and ends with the same payload bytes as an uninterrupted one. A complete output is only replaced
with `overwrite=True`, and stays whole in `_replaced/` until the new one completes (put back if the new
run stops on bad input; see `outdir`). A directory that is not an impsamp output is never deleted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ImpsampError, StageError, a_or_an, stopped_outside_input
from .guards import (LOCK_FILE, FolderBusy, exclusive, hold, hold_slice, refuse_input_inside,
                     refuse_inside_input_folder, refuse_inside_output, release, share)
from .outdir import (  # noqa: F401  (describe_dir, iter_stage_files, is_tmp_name: re-exported)
    MANIFEST, RUN_RECORD, SHARD_RECORDS, complete_manifest, describe_dir, empty, finish_cleanup, is_tmp_name,
    is_stage_dir, iter_stage_files, kept_note, only_residue, put_back, read_json_dict, recover, set_aside, tmp_name)

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- small file helpers


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def inside(root: Path, rel: str) -> Path:
    """`root / rel`, refusing a name that would lead outside `root` (absolute, `..`, empty): names and
    ids read from inputs (an input manifest's shard names, ...) never choose where a stage writes."""
    p = Path(str(rel))
    if not str(rel) or p.is_absolute() or ".." in p.parts:
        raise StageError(f"the file name {str(rel)!r} (from an input or a run record) would lead outside "
                         f"{root}; the input was edited or is corrupt: rerun the stage that made it with "
                         "--overwrite")
    return Path(root) / p


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit_file(tmp: Path, final: Path, *, durable: bool = True) -> None:
    """fsync `tmp` (unless not `durable`) and rename it to `final` (atomic on POSIX)."""
    if durable:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, final)
    if durable:
        fsync_dir(final.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def fingerprint(obj: Any) -> str:
    """A stable `sha256:` hash of a JSON-able object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


_DISTRIBUTIONS = {"numpy": ("numpy",), "pyarrow": ("pyarrow",), "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
                  "torch": ("torch",), "sentence_transformers": ("sentence-transformers",),
                  "transformers": ("transformers",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                  "tokenizers": ("tokenizers",), "sklearn": ("scikit-learn",), "ray": ("ray",)}


def library_versions() -> dict[str, str]:
    """Versions of Python and of the numeric libraries installed, whichever this process imported (the same
    record whether a stage ran here, in Ray tasks or in slices that `finalize` completed)."""
    import importlib.metadata

    env = {"python": platform.python_version(), "platform": platform.platform()}
    for name, dists in _DISTRIBUTIONS.items():
        for dist in dists:
            try:
                env[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return env


# ----------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class FileRef:
    """One output file of a stage, relative to the stage directory."""

    path: str
    bytes: int
    sha256: str
    rows: int | None = None


@dataclass(frozen=True)
class Manifest:
    """What a complete stage directory holds and how it was made."""

    stage: str
    impsamp_version: str
    config: dict[str, Any]
    inputs: dict[str, Any]
    outputs: list[FileRef]
    stats: dict[str, Any]
    env: dict[str, str]
    created_at: str
    fingerprint: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        d = dict(d)
        d["outputs"] = [FileRef(**o) for o in d.get("outputs", [])]
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def output(self, path: str) -> FileRef:
        for ref in self.outputs:
            if ref.path == path:
                return ref
        raise KeyError(path)


def read_manifest(path: str | Path, *, expect_stage: str | tuple[str, ...] | None = None,
                  check_sizes: bool = True) -> Manifest:
    """Load the manifest of a complete stage directory, checking its stage and its files.

    Raises:
        StageError: the directory is missing, incomplete, corrupt or of another stage.
    """
    expected = (expect_stage,) if isinstance(expect_stage, str) else expect_stage
    if not isinstance(path, (str, os.PathLike)):
        what = f"`impsamp {'/'.join(expected)}`" if expected else "impsamp"
        raise StageError(f"expected the folder of an {what} output, got {path!r}")
    path = Path(path)
    want = (f"; expected {a_or_an(expected[0])} '{'/'.join(expected)}' output (from `impsamp {expected[0]}`)"
            if expected else "")
    if not (path / MANIFEST).is_file():
        raise StageError(f"{path} {describe_dir(path)}{want}")
    try:
        record = json.loads((path / MANIFEST).read_text())
        if isinstance(record, dict) and "impsamp_version" not in record:
            raise StageError(f"{path / MANIFEST} is not an impsamp manifest (it records no impsamp_version: another "
                             f"tool's file?){want or '; give the folder of an impsamp output'}")
        manifest = Manifest.from_dict(record)
    except (ValueError, TypeError, KeyError) as e:
        raise StageError(f"{path / MANIFEST} is corrupt ({e}); rerun the stage with --overwrite") from e
    if expected and manifest.stage not in expected:
        experts = (f"; each of its experts is one: {path / 'experts' / 'g000'}, ..."
                   if manifest.stage == "experts" and "train" in expected else "")
        raise StageError(f"{path} is {a_or_an(manifest.stage)} '{manifest.stage}' output{want}{experts}")
    for ref in manifest.outputs:
        if not ref.path or Path(ref.path).is_absolute() or ".." in Path(ref.path).parts:
            raise StageError(f"{path / MANIFEST} lists {ref.path!r}, outside {path}: the manifest is corrupt "
                             "or was edited; rerun the stage with --overwrite")
    if check_sizes:
        for ref in manifest.outputs:
            f = path / ref.path
            size = f.stat().st_size if f.exists() else None
            if size != ref.bytes:
                found = "is missing" if size is None else f"has {size} bytes, the manifest says {ref.bytes}"
                raise StageError(f"{f} {found}: the stage output is damaged; rerun it with --overwrite")
    return manifest


def verify_outputs(path: str | Path, manifest: Manifest) -> None:
    """Check every output file against its sha256 (slow on big outputs)."""
    for ref in manifest.outputs:
        if sha256_file(Path(path) / ref.path) != ref.sha256:
            raise StageError(f"{Path(path) / ref.path} does not match its sha256 in the manifest: "
                             "the file was changed or damaged; rerun the stage with --overwrite")


# ----------------------------------------------------------------------------- a stage being built

TEST_SLOW_SHARD_ENV = "IMPSAMP_TEST_SLOW_SHARD"
"""Test-only: SECONDS to sleep after every committed shard, so the crash tests can SIGKILL a stage between
(or, with the rename in flight, during) shard commits."""


COMMAND: str | None = None
"""The `impsamp` command this process runs (set by the CLI): an interrupted run's record names it."""


@dataclass
class StageRun:
    """An output directory being built by one stage: shard commits, resume, manifest last.

    Use as:

        run = StageRun(out_dir, "embed", config=asdict(cfg), inputs={...}, overwrite=False).begin()
        for shard in shards:
            if run.is_done(shard.name):
                continue
            tmp = run.tmp_path("vectors-00000.npy"); ...write...
            run.commit_shard(shard.name, {"vectors-00000.npy": tmp}, stats={...})
        manifest = run.finish(stats={...})
    """

    out_dir: Path
    stage: str
    config: dict[str, Any]
    inputs: dict[str, Any]
    overwrite: bool = False
    version: str = ""
    input_paths: Any = ()
    """Paths the run reads that `inputs` does not name (nested lists): --overwrite never deletes them."""
    slice_name: str | None = None
    """A slice of a sliced run ("3-of-16", `Execution.slice_name`): its folder's lock is shared with the other
    slices (`guards.hold`), and the slice itself is run by one process at a time (`guards.hold_slice`)."""
    unkeyed: tuple[str, ...] = ()
    """Config fields that do not change the output (how many processes, how often to log): left out of the key,
    so an interrupted run resumes with other values of them."""
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if not self.version:
            from . import __version__

            self.version = __version__
        keyed = {k: v for k, v in self.config.items() if k not in self.unkeyed}
        self.key = fingerprint({"stage": self.stage, "config": keyed, "inputs": self.inputs, "version": self.version})
        self.fresh, self._all_ours, self._found, self._lock = False, False, set(), None  # set by `begin`
        self._slice_lock = None

    @property
    def records_dir(self) -> Path:
        return self.out_dir / SHARD_RECORDS

    def begin(self) -> StageRun:
        """Create (or reopen for resume) the output directory, locked; refuse to clobber what is not ours."""
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise StageError(f"{out} exists and is a file; choose another output directory")
        refuse_inside_output(out)
        refuse_inside_input_folder(out, [self.inputs, self.input_paths])
        existed = out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StageError(f"cannot write to {out}: {e.strerror or e}; choose a writable output "
                             "directory with free space") from e
        self._lock = hold(out, shared=self.shared)  # before anything is read: no one else writes
        try:
            self._set_up(out, existed)
            if self.slice_name is not None:
                share(self._lock, out)  # set up: the run's other slices may write beside this one
                self._slice_lock = hold_slice(out, self.slice_name)  # but not this slice's twin
        except BaseException:
            self.release()
            raise
        return self

    @property
    def shared(self) -> bool:
        return self.slice_name is not None

    def _set_up(self, out: Path, existed: bool) -> None:
        if existed and exclusive(self._lock) and (done := recover(out, {out / LOCK_FILE})):
            logger.warning("%s: %s", out, done)
        residue = only_residue(out)
        self._all_ours = not existed or (not residue and self._reuse_existing(out))  # True: cleared
        self.fresh = self._all_ours or residue  # nothing to resume; `discard` keeps what was found
        self._found = set() if self._all_ours else {p for p in out.iterdir() if not p.is_dir()}
        try:
            # The run record first: a run killed right after it is resumable, one killed before it
            # leaves only temp residue (see `only_residue`), never a directory we dare not touch.
            if not (out / RUN_RECORD).exists():
                atomic_write_json(out / RUN_RECORD, {"stage": self.stage, "key": self.key, "command": COMMAND,
                                                     "config": self.config, "inputs": self.inputs})
            self.records_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise StageError(f"cannot write to {out}: {e.strerror or e}; choose a writable output "
                             "directory with free space") from e

    def _reuse_existing(self, out: Path) -> bool:
        # Only a manifest or run record that impsamp wrote makes a directory ours: another tool's
        # manifest.json must not let --overwrite delete that tool's output. True: cleared (--overwrite).
        manifest = complete_manifest(out)
        if manifest is not None:
            if not self.overwrite:
                raise StageError(f"{out} already holds a complete '{manifest['stage']}' output; pass "
                                 "--overwrite to replace it or choose another output directory")
            return self._clear(out)
        run = read_json_dict(out / RUN_RECORD)
        if not (out / MANIFEST).exists() and run is not None and {"stage", "key"} <= set(run):
            if run.get("key") == self.key:
                logger.info("resuming the interrupted run in %s", out)
                return False
            if not self.overwrite:
                raise StageError(f"{out} holds an interrupted '{run.get('stage', '?')}' run with other "
                                 "settings or inputs; rerun it with the same ones to resume, or pass "
                                 f"--overwrite to start over{kept_note(out)}")
            return self._clear(out)
        if is_stage_dir(out):  # a replacement a kill cut short, left for a run holding the lock alone
            raise StageError(f"{out} {describe_dir(out)}")
        raise StageError(f"{out} is not empty and is not an impsamp output; refusing to write into it "
                         "(choose a new or empty output directory)")

    def _clear(self, out: Path) -> bool:
        """Make room for a fresh run (--overwrite): a complete output is set aside, an interrupted run deleted."""
        refuse_input_inside(out, [self.inputs, self.input_paths])
        if not exclusive(self._lock):  # a slice while other slices write: emptying would delete their work
            raise FolderBusy(f"{out} is being written by slices of another run; pass --overwrite when none "
                             "of them runs (or start one slice with it first, then the others)")
        set_aside(out, {out / LOCK_FILE})  # the lock file (NFS) is held; a complete output goes to _replaced/
        return True

    @contextlib.contextmanager
    def discarded_on_error(self, enabled: bool = True) -> Iterator[StageRun]:
        """Inside, bad input met by a fresh run (an `ImpsampError`) removes what it wrote. A resumed run, a
        kill, an I/O failure (`errors.stopped_outside_input`), a Slurm slice (`enabled=False`) stay."""
        try:
            yield self
        except ImpsampError as e:
            if enabled and self.fresh and not stopped_outside_input(e):
                self.discard()
            raise

    def discard(self) -> None:
        """Remove what this fresh run wrote: the folder if the run made it or cleared it (`--overwrite`; a
        complete output it was replacing is put back, a folder behind a symlink emptied), else what it
        added to the folder."""
        out = self.out_dir
        try:
            if self._all_ours and put_back(out, keep={out / LOCK_FILE}):  # (removes the run record too)
                logger.warning("%s: the output this run was replacing is put back", out)
                return
            (out / RUN_RECORD).unlink(missing_ok=True)  # first: a half-removed folder is not a resumable run
            if self._all_ours and not out.is_symlink():
                shutil.rmtree(out, ignore_errors=True)
            else:  # the user's folder, or one behind a symlink: emptied of what this run added
                empty(set(out.iterdir()) - self._found)
        except (OSError, ImpsampError) as e:  # the bad input stays the error to report; the next run finishes
            logger.warning("%s: could not remove what this run wrote (%s)", out, e)
        finally:
            self.release()

    # ---- shards

    def tmp_path(self, name: str) -> Path:
        """Where to write the payload file `name` before `commit_shard` renames it into place."""
        final = inside(self.out_dir, name)
        final.parent.mkdir(parents=True, exist_ok=True)
        return tmp_name(final)

    def is_done(self, shard: str) -> bool:
        return inside(self.records_dir, f"{shard}.json").exists()

    def shard_record(self, shard: str) -> dict[str, Any]:
        return json.loads((self.records_dir / f"{shard}.json").read_text())

    def commit_shard(self, shard: str, files: Mapping[str, Path], stats: Mapping[str, Any] | None = None,
                     rows: Mapping[str, int] | None = None, *, intermediate: bool = False) -> dict[str, Any]:
        """Rename each temp file to its final name, then write the shard's completion record.

        `intermediate` files (e.g. spill files of a two-pass shuffle) are kept for resume but are
        not outputs: `finish` deletes them and leaves them out of the manifest. They are not
        checksummed nor fsynced (a killed process loses nothing that the page cache holds; after a
        machine crash the stage must check them before trusting them, as `resample` does with its
        spill files).
        """
        refs = []
        record_file = inside(self.records_dir, f"{shard}.json")
        for name, tmp in sorted(files.items()):
            final = inside(self.out_dir, name)
            commit_file(Path(tmp), final, durable=not intermediate)
            # intermediate files are deleted by finish() and never listed: no checksum for them
            digest = "" if intermediate else sha256_file(final)
            refs.append(asdict(FileRef(name, final.stat().st_size, digest, (rows or {}).get(name))))
        record = {"shard": shard, "files": refs, "stats": dict(stats or {}), "intermediate": intermediate}
        atomic_write_json(record_file, record)
        if delay := os.environ.get(TEST_SLOW_SHARD_ENV):
            time.sleep(float(delay))
        return record

    def forget(self, shard: str) -> None:
        """Drop a shard's completion record (its work is redone), e.g. a damaged intermediate file."""
        inside(self.records_dir, f"{shard}.json").unlink(missing_ok=True)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.records_dir.glob("*.json"))]

    # ---- finish

    def finish(self, stats: Mapping[str, Any], extra_files: Mapping[str, Path] | None = None,
               rows: Mapping[str, int] | None = None) -> Manifest:
        """Commit whole-stage files, then write manifest.json last and remove the run bookkeeping."""
        records = self.records()
        for rec in records:
            if rec.get("intermediate"):
                for ref in rec["files"]:
                    inside(self.out_dir, ref["path"]).unlink(missing_ok=True)
        outputs = [FileRef(**ref) for rec in records if not rec.get("intermediate") for ref in rec["files"]]
        for name, tmp in sorted((extra_files or {}).items()):
            final = inside(self.out_dir, name)
            if Path(tmp) != final:
                commit_file(Path(tmp), final)
            outputs.append(FileRef(name, final.stat().st_size, sha256_file(final), (rows or {}).get(name)))
        outputs.sort(key=lambda r: r.path)
        manifest = Manifest(
            stage=self.stage, impsamp_version=self.version, config=self.config, inputs=self.inputs,
            outputs=outputs, stats={**stats, "seconds": round(time.time() - self.started, 3)},
            env=library_versions(),
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            fingerprint=self.key,
        )
        atomic_write_json(self.out_dir / MANIFEST, manifest.to_dict())
        self.cleanup()
        return manifest

    def cleanup(self) -> None:
        """Remove run bookkeeping and temp residue (after the manifest is written)."""
        if failed := finish_cleanup(self.out_dir):  # records, run record, the output this one replaced
            logger.warning("%s: %s", self.out_dir, failed)
        for p in set(self.out_dir.rglob(".*.tmp-*")) - {self.out_dir / LOCK_FILE}:  # `release` removes that one
            p.unlink(missing_ok=True)
        # folders emptied by removing intermediate files (e.g. resample's _spill/)
        for d in sorted((p for p in self.out_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(d.iterdir()):
                d.rmdir()
        self.release()

    def release(self) -> None:
        """Let go of the folder's lock (and a slice's own); a stage's entry function does it anyway when it ends
        (`guards.released_on_return`)."""
        release(self._slice_lock)
        release(self._lock)
        self._slice_lock = self._lock = None

"""The corpus model: `Corpus` (files, shards fixed by the data, streaming reads, taking rows),
`open_corpus`, `reopen_corpus` and `corpus_summary`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import CorpusError
from ..manifest import sha256_file
from .columnar import arrow_batches, arrow_schema, arrow_schema_rows, read_arrow, read_parquet
from .discovery import absolute_glob, as_specs, expand, file_digest, is_glob
from .jsonl import FULL_DIGEST, count_lines, open_binary, read_errors, read_jsonl, take_jsonl
from .known import counted, identity
from .records import (BATCH_ROWS, ENCODING_ERRORS, CorpusFile, ReadStats, Shard, check_fields, detect_format,
                      short_error)


@dataclass
class Corpus:
    """An opened corpus: its files with row counts, and readers over shards of them."""

    files: list[CorpusFile]
    text_field: str = "text"
    id_field: str | None = None
    encoding_errors: str = "strict"
    stats: ReadStats = field(default_factory=ReadStats)
    folders: tuple[str, ...] = ()
    """The folders (resolved) given as the corpus: a stage writing inside one would add to its own input."""
    globs: tuple[str, ...] = ()
    """The glob patterns given as the corpus (`discovery.absolute_glob`): the same, for what they match."""
    opened: dict[str, list[int]] = field(default_factory=dict, compare=False, repr=False)
    """Each file's identity (`known.identity`) when the corpus was opened: `check_unchanged`."""

    def check_unchanged(self) -> None:
        """Refuse a file written since the corpus was opened (its identity changed: an edit in place keeps its
        size and inode, not its times): what a run read from it may mix two versions, and its manifest would
        record the first. Called before a stage that read the text marks its output complete."""
        for path, was in self.opened.items():
            try:
                now = identity(Path(path))
            except OSError:
                now = None
            if now != was:
                raise CorpusError(f"{path} was {'written' if now else 'removed'} while this run read it: what the "
                                  "run read may mix two versions of it; rerun once it stays as it is (a change "
                                  "since the embedding needs `impsamp embed` again)")

    @property
    def n_rows(self) -> int:
        return sum(f.rows for f in self.files)

    def spec(self) -> dict[str, Any]:
        """What is needed to reopen this corpus and check it has not changed (stored in manifests)."""
        spec = {"files": [f.describe() for f in self.files], "text_field": self.text_field,
                "id_field": self.id_field, "encoding_errors": self.encoding_errors}
        found = {"folders": list(self.folders), "globs": list(self.globs)}
        return {**spec, **{k: v for k, v in found.items() if v}}

    def fingerprint(self) -> str:
        from ..manifest import fingerprint

        return fingerprint([[Path(f.path).name, f.format, f.rows, f.bytes, f.digest] for f in self.files]
                           + [self.text_field, self.id_field])

    def shards(self, rows_per_shard: int = 10_000) -> list[Shard]:
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        out: list[Shard] = []
        for i, f in enumerate(self.files):
            for start in range(0, f.rows, rows_per_shard):
                out.append(Shard(len(out), i, start, min(f.rows, start + rows_per_shard)))
        return out

    def read(self, shard: Shard | None = None, *, batch_rows: int = BATCH_ROWS,
             stats: ReadStats | None = None) -> Iterator[pa.RecordBatch]:
        """Stream the documents of one shard (or of the whole corpus) as `DOC_SCHEMA` batches."""
        stats = stats if stats is not None else self.stats
        if shard is None:
            for s in self.shards(rows_per_shard=1 << 62):
                yield from self.read(s, batch_rows=batch_rows, stats=stats)
            return
        f = self.files[shard.file]
        reader = {"jsonl": read_jsonl, "parquet": read_parquet, "arrow": read_arrow}[f.format]
        yield from reader(self, f, shard.file, shard.start, shard.stop, batch_rows, stats)

    def iter_texts(self) -> Iterator[str]:
        for batch in self.read():
            yield from batch.column("text").to_pylist()

    def count_documents(self) -> int:
        """Documents with text, every row read (a bad one raises `CorpusError` here, not later)."""
        return sum(batch.num_rows for batch in self.read())

    def take_rows(self, shard: Shard, rows: np.ndarray) -> pa.Array:
        """Text of the given rows (in-file row numbers within `shard`), in the order given.

        Parquet and Arrow files with a string text column are read with Arrow alone (the rows not
        asked for are never turned into Python strings); other files go through the reader.

        Raises:
            CorpusError: a row is not in the shard or holds no text (the corpus changed).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return pa.array([], pa.string())
        f = self.files[shard.file]
        path = Path(f.path)
        if rows.min() < shard.start or rows.max() >= shard.stop:
            raise CorpusError(f"{path}: rows {rows.min()}..{rows.max()} are outside shard {shard.name} "
                              f"(rows {shard.start}..{shard.stop - 1}); the corpus changed since it was read")
        if f.format in ("parquet", "arrow") and self.encoding_errors == "strict":
            text_type = arrow_schema(path, f.format).field(self.text_field).type
            if pa.types.is_string(text_type) or pa.types.is_large_string(text_type):
                return self._take_columnar(f, rows)
        wanted = set(rows.tolist())
        if f.format == "jsonl":  # the wanted lines parsed, the others only counted
            got = {r: text for r, (text, _) in take_jsonl(self, f, wanted).items()}
        else:
            got = {}
            for b in self.read(shard, stats=ReadStats()):
                for r, t in zip(b.column("row").to_pylist(), b.column("text").to_pylist()):
                    if r in wanted:
                        got[r] = t
        if len(got) < len(wanted):
            missing = min(wanted - got.keys())
            raise CorpusError(f"{path}: row {missing} holds no text any more; the corpus changed since it "
                              "was embedded: embed it again")
        return pa.array([got[r] for r in rows.tolist()], pa.string())

    def _take_columnar(self, f: CorpusFile, rows: np.ndarray) -> pa.Array:
        path = Path(f.path)
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        parts = []
        try:
            for first, batch in arrow_batches(path, f.format, [self.text_field], int(wanted[0]),
                                               int(wanted[-1]) + 1):
                lo, hi = np.searchsorted(wanted, [first, first + batch.num_rows])
                if hi > lo:
                    parts.append(batch.column(0).take(pa.array(wanted[lo:hi] - first)))
        except (OSError, pa.ArrowException) as e:
            raise CorpusError(f"{path}: cannot read it as {f.format} ({short_error(e)}); is the file complete?") from e
        texts = pa.concat_arrays(parts).cast(pa.string()) if parts else pa.array([], pa.string())
        if len(texts) != len(rows) or texts.null_count:
            raise CorpusError(f"{path}: {len(rows) - len(texts) + texts.null_count} selected row(s) are "
                              "missing or empty; the corpus changed since it was embedded: embed it again")
        if (order[1:] > order[:-1]).all():  # asked in file order (the usual case): no reordering copy
            return texts
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return texts.take(pa.array(inverse))

    def take(self, doc_index: np.ndarray) -> dict[int, tuple[str, str]]:
        """Id and text of the given global document indices: of a JSONL file only those lines are parsed; the
        shards of other files that hold one are read."""
        wanted = set(int(i) for i in doc_index)
        out: dict[int, tuple[str, str]] = {}
        for f in self.files:
            if f.format != "jsonl":
                continue
            mine = [i - f.offset for i in wanted if f.offset <= i < f.offset + f.rows]
            for row, (text, doc_id) in take_jsonl(self, f, mine).items():
                out[f.offset + row] = (doc_id if doc_id is not None else f.row_id(row), text)
        for s in self.shards():
            if self.files[s.file].format == "jsonl":
                continue
            lo = self.files[s.file].offset + s.start
            if not any(lo <= i < lo + s.rows for i in wanted):
                continue
            for b in self.read(s, stats=ReadStats()):
                for i, d, t in zip(b.column("doc_index").to_pylist(), b.column("id").to_pylist(),
                                   b.column("text").to_pylist()):
                    if i in wanted:
                        out[i] = (d, t)
        return out


def open_corpus(paths: str | Path | Sequence[str | Path], *, text_field: str = "text",
                id_field: str | None = None, encoding_errors: str = "strict") -> Corpus:
    """Find the files of a corpus, count their rows and check the text field exists.

    Args:
        paths: files, folders or glob patterns.
        text_field: column or JSON key holding the document text.
        id_field: column holding a document id; default: `id` if present, else `FILE:ROW`.
        encoding_errors: "strict" (invalid UTF-8 is an error) or "replace" (U+FFFD, counted).

    Raises:
        CorpusError: no file, an unsupported file, a missing field, or an empty corpus.
    """
    if encoding_errors not in ENCODING_ERRORS:
        raise CorpusError(f"encoding_errors must be one of {ENCODING_ERRORS}, got {encoding_errors!r}")
    specs = as_specs(paths)
    if not specs:
        raise CorpusError("no corpus given; name at least one file, folder or glob")
    paths: list[Path] = []
    seen: set[str] = set()
    found_in: dict[Path, str] = {}  # .json files a folder's reading found: maybe not data (`_check_found_json`)
    for spec in specs:
        for p in expand(spec):
            key = str(p.resolve())
            if key not in seen:
                seen.add(key)
                paths.append(p.resolve())
                if p.name.lower().endswith(".json") and not is_glob(spec) and Path(spec).is_dir():
                    found_in[p.resolve()] = str(spec)
    # a file another process is reading through (a slice of the same array) is left for last, when its
    # reading is likely kept: slices opening one corpus together share the reading of its files
    for p, folder in found_in.items():
        _check_found_json(p, folder, text_field)
    opened = {str(p): identity(p) for p in paths}  # before reading them: an edit from now on is seen
    described = {i: describe_file(p, text_field, id_field, wait=False) for i, p in enumerate(paths)}
    files, offset = [], 0
    for i, p in enumerate(paths):
        f = described[i] or describe_file(p, text_field, id_field, wait=True)
        files.append(replace(f, offset=offset))
        offset += f.rows
    files = with_id_prefixes(files)
    folders = tuple(dict.fromkeys(str(Path(s).resolve()) for s in specs
                                  if not is_glob(s) and Path(s).is_dir()))
    globs = tuple(dict.fromkeys(absolute_glob(s) for s in specs if is_glob(s)))
    corpus = Corpus(files, text_field, id_field, encoding_errors, folders=folders, globs=globs, opened=opened)
    if corpus.n_rows == 0:
        raise CorpusError(f"the corpus {', '.join(map(str, specs))} is empty (0 rows); give a non-empty file")
    return corpus


def _check_found_json(path: Path, folder: str, text_field: str) -> None:
    """A .json file a folder's reading found may be another tool's metadata (a manifest.json), not JSON
    Lines: its first line must be an object with the text field, else the error says how to leave it out."""
    with open(path, "rb") as f:
        first = next((line for line in f if line.strip()), b"")
    try:
        row = json.loads(first)
    except ValueError:
        row = None
    if first and not (isinstance(row, dict) and text_field in row):
        raise CorpusError(f"{path}: its first line is not a JSON object with a '{text_field}' field, and it was found "
                          f"in the folder {folder}; if it is not data (another tool's metadata), name the data files "
                          f"instead, e.g. '{Path(folder) / '*.jsonl'}', else pass --text-field NAME")


def with_id_prefixes(files: list[CorpusFile]) -> list[CorpusFile]:
    names = [Path(f.path).name for f in files]
    if len(set(names)) < len(names):
        root = os.path.commonpath([str(Path(f.path).parent) for f in files])
        names = [Path(os.path.relpath(f.path, root)).as_posix() for f in files]
    return [replace(f, id_prefix=n) for f, n in zip(files, names)]


def reopen_corpus(spec: dict[str, Any], *, check: bool = True, source: str = "the manifest") -> Corpus:
    """Reopen a corpus from `Corpus.spec()`; with `check`, refuse it if a file changed since. `source` names
    the file the spec came from, in the error for a damaged one."""
    recorded = spec.get("files") if isinstance(spec, dict) else None
    if not isinstance(recorded, list) or not recorded or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) for f in recorded) \
            or not isinstance(spec.get("text_field"), str):
        raise CorpusError(f"the corpus record in {source} is damaged (no list of files with their paths, or "
                          "no text field); embed the corpus again")
    files = [f["path"] for f in recorded]
    try:
        corpus = open_corpus(files, text_field=spec["text_field"], id_field=spec.get("id_field"),
                             encoding_errors=spec.get("encoding_errors", "strict"))
    except CorpusError as e:
        missing = next((f for f in files if not Path(f).exists()), None)
        fix = ("; the embeddings read their text there: put it back, or embed the corpus again where it is now"
               if missing else "")
        raise CorpusError(f"cannot reopen the corpus recorded in {source}: {e}{fix}") from e
    if check:
        if len(spec["files"]) != len(corpus.files):
            raise CorpusError(f"the corpus recorded in the manifest had {len(spec['files'])} file(s); "
                              f"{len(corpus.files)} are found now; embed it again")
        for old, new in zip(spec["files"], corpus.files):
            if (how := file_changed(old, new)) is not None:
                raise CorpusError(f"{new.path} changed since it was embedded ({how}); embed it again")
        # the same files: keep the digests as recorded (an earlier version's too), so the corpus's
        # fingerprint is the one the outputs made from it were keyed by
        kept = [replace(f, digest=old["digest"]) for old, f in zip(spec["files"], corpus.files)]
        corpus = replace(corpus, files=kept)
    given = {k: tuple(spec[k]) for k in ("folders", "globs") if isinstance(spec.get(k), list)}  # as recorded
    return replace(corpus, **given)


def file_changed(recorded: Any, f: CorpusFile) -> str | None:
    """How `f` differs from the file a manifest recorded (`CorpusFile.describe()`: size, rows, digest), or None
    when it is the same file. A file recorded by an earlier version (JSONL before 0.7.11, Parquet and Arrow
    before 0.7.14) has the digest of its size and first and last MiB (no `sha256:` prefix): it is compared by
    that one."""
    if not isinstance(recorded, dict):
        return "the manifest's record of it is damaged"
    was = (recorded.get("bytes"), recorded.get("rows"))
    if was != (f.bytes, f.rows):
        return f"was {was[0]} bytes / {was[1]} rows, now {f.bytes} bytes / {f.rows} rows"
    old = recorded.get("digest")
    if not isinstance(old, str) or not old:
        return "the manifest records no usable digest of it"
    legacy = ":" not in old and f.digest.startswith(FULL_DIGEST)
    if old == (file_digest(Path(f.path), f.bytes) if legacy else f.digest):
        return None
    return "same size and rows, other content: its sha256 differs"


def describe_file(path: Path, text_field: str, id_field: str | None, *, wait: bool = True) -> CorpusFile | None:
    """Format, rows, size and digest of one file (its offset 0); None when `wait` is False and another process
    is reading the file through (see `known.counted`)."""
    fmt = detect_format(path)
    size = path.stat().st_size
    try:
        if fmt == "jsonl":
            got = counted(path, count_lines, wait=wait)  # read through once per version of the file
            if got is None:
                return None
            rows, checkpoints, digest = got
            names = None
        else:
            schema, rows = arrow_schema_rows(path, fmt)
            names = schema.names
            check_fields(path, names, text_field, id_field, where="")
            # hashed whole once per version of the file, as JSONL is: a same-size edit mid-file is seen
            got = counted(path, lambda p: (rows, (), FULL_DIGEST + sha256_file(p, chunk=1 << 22)), wait=wait)
            if got is None:
                return None
            checkpoints, digest = (), got[2]
    except CorpusError:
        raise
    except (pa.ArrowException, ValueError, *read_errors()) as e:
        raise CorpusError(f"{path}: cannot read it as {fmt} ({short_error(e)}); is the file complete?") from e
    return CorpusFile(str(path), fmt, rows, size, digest, 0, checkpoints)


def corpus_summary(corpus: Corpus) -> dict[str, Any]:
    """Counts over a whole corpus (a full read): documents, characters, skipped, fields per file."""
    stats = ReadStats()
    n_docs = n_chars = 0
    # A repeated id (a user's id field that is not unique) is told by 64-bit hashes, 8 bytes a document
    # (and a sort): past ~10^8 documents a spurious repeat from two ids of one hash becomes possible.
    id_hashes = []
    for batch in corpus.read(stats=stats):
        n_docs += batch.num_rows
        n_chars += sum(len(t) for t in batch.column("text").to_pylist())
        ids = batch.column("id").to_pylist()
        id_hashes.append(np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids)))
    fields = {}
    for f in corpus.files:
        if f.format != "jsonl":
            fields[f.path] = arrow_schema_rows(Path(f.path), f.format)[0].names
        else:
            with open_binary(Path(f.path)) as fh:
                first = next((ln for ln in fh if ln.strip()), b"{}")
            try:
                fields[f.path] = list(json.loads(first))
            except ValueError:
                fields[f.path] = []
    return {"files": len(corpus.files), "rows": corpus.n_rows, "documents": n_docs, "characters": n_chars,
            "skipped_empty": stats.skipped_empty, "replaced_utf8": stats.replaced_utf8,
            "distinct_ids": len(np.unique(np.concatenate(id_hashes))) if id_hashes else 0,
            "bytes": sum(f.bytes for f in corpus.files), "fields": fields,
            "formats": sorted({f.format for f in corpus.files})}

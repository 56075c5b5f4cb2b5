"""Corpus readers: JSONL (.gz/.zst), Parquet, Arrow IPC/Feather, HF `save_to_disk` folders, globs.

    corpus = open_corpus("data/generic/*.jsonl.gz", text_field="text")
    for shard in corpus.shards(rows_per_shard=10_000):
        for batch in corpus.read(shard):      # pa.RecordBatch: doc_index, file, row, id, text
            ...

Reading streams record batches, so memory does not grow with file size. A corpus is split into
shards fixed by the data (file and row range), never by the number of workers, and every document
keeps a stable index: its row counted over the files in order. Empty and whitespace-only documents
are skipped and counted, never fatal.
"""

from __future__ import annotations

import glob as _glob
import gzip
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import CorpusError

logger = logging.getLogger(__name__)

FORMATS = {
    "jsonl": (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".jsonl.zst",
              ".json.zst", ".jsonl.zstd", ".ndjson.zst"),
    "parquet": (".parquet", ".pq"),
    "arrow": (".arrow", ".feather", ".ipc"),
}
SUPPORTED = ("JSONL (.jsonl/.json/.ndjson, optionally .gz or .zst), Parquet (.parquet), "
             "Arrow IPC/Feather (.arrow/.feather/.ipc), a `datasets.save_to_disk` folder, "
             "or a folder or glob of these")
BATCH_ROWS = 2048
ENCODING_ERRORS = ("strict", "replace")
DOC_SCHEMA = pa.schema([("doc_index", pa.int64()), ("file", pa.int32()), ("row", pa.int64()),
                        ("id", pa.string()), ("text", pa.string())])


def detect_format(path: Path) -> str | None:
    name = path.name.lower()
    for fmt, suffixes in FORMATS.items():
        if name.endswith(suffixes):
            return fmt
    return None


def _is_hf_dataset_dir(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def _expand(spec: str | Path) -> list[Path]:
    """Files of one path, folder or glob, sorted; HF folders expand to their data files."""
    s = str(spec)
    if any(c in s for c in "*?["):
        matches = sorted(Path(p) for p in _glob.glob(s, recursive=True))
        if not matches:
            raise CorpusError(f"{s}: the pattern matches no file; check the path")
        return [f for m in matches for f in _expand(m)]
    path = Path(s)
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    if path.is_file():
        if detect_format(path) is None:
            raise CorpusError(f"{path}: unsupported file type; impsamp reads {SUPPORTED}")
        return [path]
    return _expand_dir(path)


def _expand_dir(path: Path, _nested: bool = False) -> list[Path]:
    """Corpus files under a folder, in sorted path order; HF dataset subfolders give their data files."""
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        except (ValueError, AttributeError, OSError):
            splits = []
        raise CorpusError(f"{path} is a `datasets` DatasetDict; name one split's folder instead "
                          f"(splits: {splits}), e.g. {path / (splits[0] if splits else 'train')}")
    # A stage directory is not a corpus, except a complete `resample` output (a `datasets` folder).
    if _is_impsamp_output(path) and not ((path / "manifest.json").is_file() and _is_hf_dataset_dir(path)):
        from .manifest import describe_dir

        raise CorpusError(f"{path} {describe_dir(path)}, not a corpus; give the corpus files it was made "
                          "from (only a `resample` output can be read as a corpus)")
    if _is_hf_dataset_dir(path):
        try:
            files = json.loads((path / "state.json").read_text())["_data_files"]
            return [path / f["filename"] for f in files]
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CorpusError(f"{path / 'state.json'} is not a readable `datasets` state file ({_short(e)}); "
                              "save the dataset again with `save_to_disk`") from None
    found: list[Path] = []
    for p in sorted(path.iterdir()):
        if p.name.startswith((".", "_")):
            continue  # hidden files, temp residue, bookkeeping
        if p.is_dir():
            found += _expand_dir(p, _nested=True)
        elif p.is_file() and detect_format(p):
            found.append(p)
    if not found and not _nested:
        raise CorpusError(f"{path}: the folder holds no corpus file; impsamp reads {SUPPORTED}")
    return found


def _is_impsamp_output(path: Path) -> bool:
    """A stage directory (complete or interrupted), recognised by its manifest or its run record."""
    from .manifest import MANIFEST, RUN_RECORD

    if (path / RUN_RECORD).is_file():
        return True
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and "stage" in m and "impsamp_version" in m


def _file_digest(path: Path, size: int, sample: int = 1 << 20) -> str:
    """sha256 over the size and the first and last MiB: catches edits without reading 100 GB."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(sample))
        if size > 2 * sample:
            f.seek(size - sample)
            h.update(f.read(sample))
        elif size > sample:
            h.update(f.read())
    return h.hexdigest()


# ----------------------------------------------------------------------------- files and shards


@dataclass(frozen=True)
class CorpusFile:
    """One input file: where it is, its format, its row count and a fingerprint of its bytes."""

    path: str
    format: str
    rows: int
    bytes: int
    digest: str
    offset: int
    """Global document index of this file's first row."""
    line_offsets: tuple[tuple[int, int], ...] = ()
    """(row, byte offset) checkpoints for plain JSONL, so a shard can seek to its first row."""
    id_prefix: str = ""
    """FILE in the `FILE:ROW` ids of documents without an id: the file name, or its path below the
    corpus's common folder when two files share a name (e.g. two `data-00000-of-00001.arrow`)."""

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "rows": self.rows, "bytes": self.bytes,
                "digest": self.digest}


@dataclass(frozen=True)
class Shard:
    """A row range of one file: the unit of work, fixed by the data."""

    index: int
    file: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.index:05d}"

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class ReadStats:
    """What reading skipped or repaired."""

    documents: int = 0
    skipped_empty: int = 0
    replaced_utf8: int = 0

    def add(self, other: ReadStats) -> None:
        self.documents += other.documents
        self.skipped_empty += other.skipped_empty
        self.replaced_utf8 += other.replaced_utf8


@dataclass
class Corpus:
    """An opened corpus: its files with row counts, and readers over shards of them."""

    files: list[CorpusFile]
    text_field: str = "text"
    id_field: str | None = None
    encoding_errors: str = "strict"
    stats: ReadStats = field(default_factory=ReadStats)

    @property
    def n_rows(self) -> int:
        return sum(f.rows for f in self.files)

    def spec(self) -> dict[str, Any]:
        """What is needed to reopen this corpus and check it has not changed (stored in manifests)."""
        return {"files": [f.describe() for f in self.files], "text_field": self.text_field,
                "id_field": self.id_field, "encoding_errors": self.encoding_errors}

    def fingerprint(self) -> str:
        from .manifest import fingerprint

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
        reader = {"jsonl": _read_jsonl, "parquet": _read_parquet, "arrow": _read_arrow}[f.format]
        yield from reader(self, f, shard.file, shard.start, shard.stop, batch_rows, stats)

    def iter_texts(self) -> Iterator[str]:
        for batch in self.read():
            yield from batch.column("text").to_pylist()

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
            text_type = _arrow_schema(path, f.format).field(self.text_field).type
            if pa.types.is_string(text_type) or pa.types.is_large_string(text_type):
                return self._take_columnar(f, rows)
        got: dict[int, str] = {}
        wanted = set(rows.tolist())
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
            for first, batch in _arrow_batches(path, f.format, [self.text_field], int(wanted[0]),
                                               int(wanted[-1]) + 1):
                lo, hi = np.searchsorted(wanted, [first, first + batch.num_rows])
                if hi > lo:
                    parts.append(batch.column(0).take(pa.array(wanted[lo:hi] - first)))
        except (OSError, pa.ArrowException) as e:
            raise CorpusError(f"{path}: cannot read it as {f.format} ({_short(e)}); is the file complete?") from e
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
        """Text and id of the given global document indices (a streaming pass over their shards)."""
        wanted = set(int(i) for i in doc_index)
        out: dict[int, tuple[str, str]] = {}
        for s in self.shards():
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
    specs = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not specs:
        raise CorpusError("no corpus given; name at least one file, folder or glob")
    files: list[CorpusFile] = []
    seen: set[str] = set()
    offset = 0
    for spec in specs:
        for p in _expand(spec):
            key = str(p.resolve())
            if key in seen:
                continue
            seen.add(key)
            f = _describe_file(p.resolve(), offset, text_field, id_field)
            files.append(f)
            offset += f.rows
    files = _with_id_prefixes(files)
    corpus = Corpus(files, text_field, id_field, encoding_errors)
    if corpus.n_rows == 0:
        raise CorpusError(f"the corpus {', '.join(map(str, specs))} is empty (0 rows); give a non-empty file")
    return corpus


def _with_id_prefixes(files: list[CorpusFile]) -> list[CorpusFile]:
    names = [Path(f.path).name for f in files]
    if len(set(names)) < len(names):
        root = os.path.commonpath([str(Path(f.path).parent) for f in files])
        names = [Path(os.path.relpath(f.path, root)).as_posix() for f in files]
    return [replace(f, id_prefix=n) for f, n in zip(files, names)]


def reopen_corpus(spec: dict[str, Any], *, check: bool = True) -> Corpus:
    """Reopen a corpus from `Corpus.spec()`; with `check`, refuse it if a file changed since."""
    files = [f["path"] for f in spec["files"]]
    try:
        corpus = open_corpus(files, text_field=spec["text_field"], id_field=spec["id_field"],
                             encoding_errors=spec["encoding_errors"])
    except CorpusError as e:
        raise CorpusError(f"cannot reopen the corpus recorded in the manifest: {e}") from e
    if check:
        if len(spec["files"]) != len(corpus.files):
            raise CorpusError(f"the corpus recorded in the manifest had {len(spec['files'])} file(s); "
                              f"{len(corpus.files)} are found now; embed it again")
        for old, new in zip(spec["files"], corpus.files):
            if (old["bytes"], old["digest"], old["rows"]) != (new.bytes, new.digest, new.rows):
                raise CorpusError(f"{new.path} changed since it was embedded (was {old['bytes']} bytes / "
                                  f"{old['rows']} rows, now {new.bytes} bytes / {new.rows} rows); "
                                  "embed it again")
    return corpus


def _describe_file(path: Path, offset: int, text_field: str, id_field: str | None) -> CorpusFile:
    fmt = detect_format(path)
    size = path.stat().st_size
    try:
        if fmt == "jsonl":
            rows, checkpoints = _count_lines(path)
            names = None
        else:
            schema, rows = _arrow_schema_rows(path, fmt)
            names = schema.names
            _check_fields(path, names, text_field, id_field, where="")
            checkpoints = ()
    except CorpusError:
        raise
    except (OSError, pa.ArrowException, EOFError, ValueError, _zstd_error()) as e:
        raise CorpusError(f"{path}: cannot read it as {fmt} ({_short(e)}); is the file complete?") from e
    return CorpusFile(str(path), fmt, rows, size, _file_digest(path, size), offset, checkpoints)


def _short(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _check_fields(path: Path, names: list[str], text_field: str, id_field: str | None, where: str) -> None:
    if text_field not in names:
        raise CorpusError(f"{path}{where}: no '{text_field}' field; available fields: {sorted(names)}. "
                          f"Pass --text-field NAME")
    if id_field is not None and id_field not in names:
        raise CorpusError(f"{path}{where}: no '{id_field}' field; available fields: {sorted(names)}. "
                          f"Pass --id-field NAME, or leave it out to use 'FILE:ROW' ids")


# ----------------------------------------------------------------------------- JSONL


def _open_binary(path: Path) -> io.BufferedIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith((".zst", ".zstd")):
        from ._deps import require

        return io.BufferedReader(_ZstdRaw(path, require("zstandard")), buffer_size=1 << 20)
    return open(path, "rb")


class _ZstdRaw(io.RawIOBase):
    """A zstd file as a raw stream: reads every frame, and a file cut mid-frame raises EOFError.

    (`ZstdDecompressor.stream_reader` returns a silent EOF on a truncated file, which would drop
    documents without a word, and before zstandard 0.23 it also stopped after the first frame.)
    """

    def __init__(self, path: Path, zstd: Any):
        self._fh = open(path, "rb")
        self._dctx = zstd.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = self._fh.read(1 << 18)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd file ended in the middle of a frame")
                return 0
            self._buf = memoryview(self._feed(chunk))
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _feed(self, data: bytes) -> bytes:
        out = []
        while data:
            out.append(self._obj.decompress(data))
            self._in_frame = not self._obj.eof
            if not self._obj.eof:
                break
            data = self._obj.unused_data  # the next frame, if any
            self._obj = self._dctx.decompressobj()
        return b"".join(out)

    def close(self) -> None:
        self._fh.close()
        super().close()


_CHECKPOINT_EVERY = 4096


def _count_lines(path: Path) -> tuple[int, tuple[tuple[int, int], ...]]:
    """Rows (lines) of a JSONL file, with byte offsets every 4096 lines for plain files."""
    plain = detect_format(path) == "jsonl" and not path.name.lower().endswith((".gz", ".zst", ".zstd"))
    rows, pos, checkpoints = 0, 0, [(0, 0)]
    last = b"\n"
    with _open_binary(path) as f:
        if not plain:
            while block := f.read(1 << 22):
                rows += block.count(b"\n")
                last = block[-1:]
        else:
            for line in f:
                rows += 1
                pos += len(line)
                if rows % _CHECKPOINT_EVERY == 0:
                    checkpoints.append((rows, pos))
                last = line[-1:]
            return rows, tuple(checkpoints)
    if last != b"\n":
        rows += 1  # a last line without a newline is still a row
    return rows, ()


def _read_jsonl(corpus: Corpus, f: CorpusFile, file_i: int, start: int, stop: int, batch_rows: int,
                stats: ReadStats) -> Iterator[pa.RecordBatch]:
    path = Path(f.path)
    row, seek = 0, 0
    for r, off in f.line_offsets:
        if r <= start:
            row, seek = r, off
    builder = _BatchBuilder(f, file_i, batch_rows)
    try:
        with _open_binary(path) as fh:
            if seek:
                fh.seek(seek)
            for raw in fh:
                if row >= stop:
                    break
                if row >= start:
                    text, doc_id = _parse_json_line(corpus, path, row, raw, stats)
                    if text is not None:
                        if (batch := builder.add(row, doc_id, text)) is not None:
                            yield batch
                row += 1
    except (OSError, EOFError, _zstd_error()) as e:
        raise CorpusError(f"{path} line {row + 1}: cannot read it as jsonl ({_short(e)}); "
                          "is the file complete?") from None
    if row < stop:
        raise CorpusError(f"{path}: has {row} lines, {f.rows} when the corpus was opened; "
                          "the file changed while it was being read")
    if (batch := builder.flush()) is not None:
        yield batch


def _zstd_error() -> type[BaseException]:
    """zstandard's error class (a plain Exception subclass), or a stand-in when it is not installed."""
    import sys

    mod = sys.modules.get("zstandard")
    return getattr(mod, "ZstdError", EOFError) if mod is not None else EOFError


def _parse_json_line(corpus: Corpus, path: Path, row: int, raw: bytes, stats: ReadStats
                     ) -> tuple[str | None, str | None]:
    line_no = row + 1
    if row == 0 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if corpus.encoding_errors != "replace":
            raise CorpusError(f"{path} line {line_no}: invalid UTF-8 at byte {e.start}; fix the file or "
                              "pass --encoding-errors replace") from None
        line = raw.decode("utf-8", errors="replace")
        stats.replaced_utf8 += 1
    if not line.strip():
        stats.skipped_empty += 1
        return None, None
    try:
        obj = json.loads(line)
    except ValueError as e:
        if not raw.endswith(b"\n"):  # the last line, with no newline: most likely a cut file
            raise CorpusError(f"{path} line {line_no}: malformed JSON ({e}) on the last line, which has no "
                              "newline: is the file complete?") from None
        raise CorpusError(f"{path} line {line_no}: malformed JSON ({e}); fix or remove the line") from None
    if not isinstance(obj, dict):
        raise CorpusError(f"{path} line {line_no}: expected a JSON object, got {type(obj).__name__}; "
                          "impsamp reads JSON Lines (one object per line), not a JSON array")
    _check_fields(path, list(obj), corpus.text_field, corpus.id_field, where=f" line {line_no}")
    text = obj[corpus.text_field]
    if text is None:
        stats.skipped_empty += 1
        return None, None
    if not isinstance(text, str):
        kind = {"int": "an int", "float": "a float", "bool": "a boolean", "list": "a list",
                "dict": "an object"}.get(type(text).__name__, type(text).__name__)
        raise CorpusError(f"{path} line {line_no}: field '{corpus.text_field}' is {kind}, not a string; "
                          "pass --text-field with a text field")
    if not text.strip():
        stats.skipped_empty += 1
        return None, None
    id_field = corpus.id_field or ("id" if "id" in obj else None)
    doc_id = str(obj[id_field]) if id_field and obj.get(id_field) is not None else None
    if b"\\u" in raw:  # a \uD800-\uDFFF escape can decode to a lone surrogate, which is not text
        text = _no_surrogates(corpus, path, line_no, text, stats)
        doc_id = None if doc_id is None else _no_surrogates(corpus, path, line_no, doc_id, ReadStats())
    return text, doc_id


def _no_surrogates(corpus: Corpus, path: Path, line_no: int, text: str, stats: ReadStats) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        if corpus.encoding_errors != "replace":
            raise CorpusError(f"{path} line {line_no}: a \\u escape encodes a lone surrogate (invalid "
                              "UTF-16, e.g. a cut emoji); fix the file or pass --encoding-errors replace"
                              ) from None
        stats.replaced_utf8 += 1
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class _BatchBuilder:
    def __init__(self, f: CorpusFile, file_i: int, batch_rows: int):
        self.f, self.file_i, self.batch_rows = f, file_i, batch_rows
        self.prefix = f.id_prefix or Path(f.path).name
        self.rows: list[int] = []
        self.ids: list[str] = []
        self.texts: list[str] = []

    def add(self, row: int, doc_id: str | None, text: str) -> pa.RecordBatch | None:
        self.rows.append(row)
        self.ids.append(doc_id if doc_id is not None else f"{self.prefix}:{row}")
        self.texts.append(text)
        return self.flush() if len(self.rows) >= self.batch_rows else None

    def flush(self) -> pa.RecordBatch | None:
        if not self.rows:
            return None
        rows = np.asarray(self.rows, dtype=np.int64)
        batch = pa.record_batch([pa.array(rows + self.f.offset), pa.array(np.full(len(rows), self.file_i,
                                 dtype=np.int32)), pa.array(rows), pa.array(self.ids, pa.string()),
                                 pa.array(self.texts, pa.string())], schema=DOC_SCHEMA)
        self.rows, self.ids, self.texts = [], [], []
        return batch


# ----------------------------------------------------------------------------- Parquet and Arrow


def _arrow_kind(path: Path) -> str:
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:4] == b"FEA1":
        raise CorpusError(f"{path}: a Feather V1 file, which impsamp does not read; convert it with "
                          "pyarrow.feather.write_feather(pyarrow.feather.read_table(PATH), NEW_PATH)")
    return "file" if magic == b"ARROW1" else "stream"


def _arrow_schema(path: Path, fmt: str) -> pa.Schema:
    """The schema alone (cheap: no pass over the rows)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).schema_arrow
    with pa.memory_map(str(path)) as src:
        if _arrow_kind(path) == "file":
            return pa.ipc.open_file(src).schema
        return pa.ipc.open_stream(src).schema


def _arrow_schema_rows(path: Path, fmt: str) -> tuple[pa.Schema, int]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        return meta.schema_arrow, meta.metadata.num_rows
    if _arrow_kind(path) == "file":
        with pa.memory_map(str(path)) as src:
            reader = pa.ipc.open_file(src)
            return reader.schema, sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    with pa.memory_map(str(path)) as src:
        reader = pa.ipc.open_stream(src)
        return reader.schema, sum(b.num_rows for b in reader)


def _arrow_batches(path: Path, fmt: str, columns: list[str], start: int, stop: int
                   ) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row, batch) pairs covering rows [start, stop) of a Parquet or Arrow file."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        row = 0
        for rg in range(pf.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if row + n > start and row < stop:
                for b in pf.iter_batches(row_groups=[rg], columns=columns, batch_size=BATCH_ROWS):
                    if row + b.num_rows > start and row < stop:
                        yield row, b
                    row += b.num_rows
                    if row >= stop:
                        return
            else:
                row += n
            if row >= stop:
                return
        return
    with pa.memory_map(str(path)) as src:
        if _arrow_kind(path) == "file":
            reader = pa.ipc.open_file(src)
            batches: Iterator[pa.RecordBatch] = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(pa.ipc.open_stream(src))
        row = 0
        for b in batches:
            if row + b.num_rows > start:
                yield row, b.select(columns)
            row += b.num_rows
            if row >= stop:
                return


def _read_parquet(corpus: Corpus, f: CorpusFile, file_i: int, start: int, stop: int, batch_rows: int,
                  stats: ReadStats) -> Iterator[pa.RecordBatch]:
    yield from _read_columnar(corpus, f, file_i, start, stop, batch_rows, stats)


_read_arrow = _read_parquet


def _read_columnar(corpus: Corpus, f: CorpusFile, file_i: int, start: int, stop: int, batch_rows: int,
                   stats: ReadStats) -> Iterator[pa.RecordBatch]:
    path = Path(f.path)
    try:
        schema = _arrow_schema(path, f.format)
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(f"{path}: cannot read it as {f.format} ({_short(e)}); "
                          "is the file complete?") from None
    id_field = corpus.id_field or ("id" if "id" in schema.names else None)
    columns = [corpus.text_field] + ([id_field] if id_field and id_field != corpus.text_field else [])
    text_type = schema.field(corpus.text_field).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)
            or pa.types.is_binary(text_type) or pa.types.is_large_binary(text_type)):
        raise CorpusError(f"{path}: field '{corpus.text_field}' has type {text_type}, not a string; "
                          "pass --text-field with a text column")
    builder = _BatchBuilder(f, file_i, batch_rows)
    try:
        for first, batch in _arrow_batches(path, f.format, columns, start, stop):
            lo, hi = max(start - first, 0), min(stop - first, batch.num_rows)
            if hi <= lo:
                continue
            texts = _to_pylist(batch.column(0).slice(lo, hi - lo))
            ids = _to_pylist(batch.column(1).slice(lo, hi - lo)) if len(columns) > 1 else [None] * (hi - lo)
            for j, (text, doc_id) in enumerate(zip(texts, ids)):
                row = first + lo + j
                if isinstance(text, bytes):
                    text = _decode(corpus, path, row, text, stats)
                if isinstance(doc_id, bytes):
                    doc_id = _decode(corpus, path, row, doc_id, ReadStats())
                if text is None or not text.strip():
                    stats.skipped_empty += 1
                    continue
                out = builder.add(row, None if doc_id is None else str(doc_id), text)
                if out is not None:
                    yield out
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(f"{path}: cannot read it as {f.format} ({_short(e)}); is the file complete?") from e
    if (batch := builder.flush()) is not None:
        yield batch


def _to_pylist(col: pa.Array) -> list[Any]:
    """Python values of a column; a string column holding invalid UTF-8 comes back as bytes."""
    try:
        return col.to_pylist()
    except UnicodeDecodeError:
        binary = pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary()
        return col.view(binary).to_pylist()


def _decode(corpus: Corpus, path: Path, row: int, raw: bytes, stats: ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if corpus.encoding_errors != "replace":
            raise CorpusError(f"{path} row {row}: invalid UTF-8 at byte {e.start}; fix the file or pass "
                              "--encoding-errors replace") from None
        stats.replaced_utf8 += 1
        return raw.decode("utf-8", errors="replace")


def corpus_summary(corpus: Corpus) -> dict[str, Any]:
    """Counts over a whole corpus (a full read): documents, characters, skipped, fields per file."""
    stats = ReadStats()
    n_docs = n_chars = 0
    for batch in corpus.read(stats=stats):
        n_docs += batch.num_rows
        n_chars += sum(len(t) for t in batch.column("text").to_pylist())
    fields = {}
    for f in corpus.files:
        if f.format != "jsonl":
            fields[f.path] = _arrow_schema_rows(Path(f.path), f.format)[0].names
        else:
            with _open_binary(Path(f.path)) as fh:
                first = next((ln for ln in fh if ln.strip()), b"{}")
            try:
                fields[f.path] = list(json.loads(first))
            except ValueError:
                fields[f.path] = []
    return {"files": len(corpus.files), "rows": corpus.n_rows, "documents": n_docs, "characters": n_chars,
            "skipped_empty": stats.skipped_empty, "replaced_utf8": stats.replaced_utf8,
            "bytes": sum(f.bytes for f in corpus.files), "fields": fields,
            "formats": sorted({f.format for f in corpus.files})}


__all__ = ["Corpus", "CorpusFile", "Shard", "ReadStats", "open_corpus", "reopen_corpus", "corpus_summary",
           "DOC_SCHEMA", "SUPPORTED", "asdict"]

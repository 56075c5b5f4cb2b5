"""JSON Lines (plain, gzip, zstd): opening, counting rows (with seek checkpoints) and reading documents."""

from __future__ import annotations

import gzip
import io
import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ..errors import CorpusError
from .records import BatchBuilder, CorpusFile, ReadStats, check_fields, detect_format, id_text, short_error

if TYPE_CHECKING:
    from .corpus import Corpus


def compressed(path: Path) -> bool:
    """gzip or zstd by its name (`open_binary` decompresses it; it cannot seek)."""
    return path.name.lower().endswith((".gz", ".zst", ".zstd"))


def open_binary(path: Path) -> io.BufferedIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        try:  # ISA-L's gzip (the `isal` package): the same bytes at 3-4x the zlib module's speed
            from isal import igzip
        except ImportError:
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return igzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith((".zst", ".zstd")):
        from .._deps import require

        return io.BufferedReader(ZstdRaw(path, require("zstandard")), buffer_size=1 << 20)
    return open(path, "rb")


class ZstdRaw(io.RawIOBase):
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


CHECKPOINT_EVERY = 4096
FULL_DIGEST = "sha256:"
"""The prefix of a digest over a file's whole content (JSONL since 0.7.11, Parquet and Arrow since 0.7.14); a bare
hex digest covers the file's size and first and last MiB (`discovery.file_digest`: the earlier versions)."""


def count_lines(path: Path) -> tuple[int, tuple[tuple[int, int], ...], str]:
    """Rows (lines) of a JSONL file, byte offsets every 4096 lines for plain files, and the sha256 of its
    whole content (decompressed), all in one read: the file is read through to count its rows anyway.
    A thread hashes each block (hashlib lets go of the GIL) while this one finds its newlines."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    plain = detect_format(path) == "jsonl" and not compressed(path)
    h = hashlib.sha256()
    rows, pos, checkpoints = 0, 0, [(0, 0)]
    last = b"\n"
    with open_binary(path) as f, ThreadPoolExecutor(1) as hasher:
        hashed = None
        while block := f.read(1 << 22):
            if hashed is not None:
                hashed.result()  # blocks are hashed in order, one at a time
            hashed = hasher.submit(h.update, block)
            if plain:  # a checkpoint just after every 4096th newline (none at the end: no shard starts there)
                ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + 1
                first = -rows % CHECKPOINT_EVERY or CHECKPOINT_EVERY  # lines in this block up to the next one
                checkpoints += [(rows + int(i) + 1, pos + int(ends[i]))
                                for i in range(first - 1, len(ends), CHECKPOINT_EVERY)]
                rows += len(ends)
            else:
                rows += block.count(b"\n")
            pos += len(block)
            last = block[-1:]
        if hashed is not None:
            hashed.result()
    if last != b"\n":
        rows += 1  # a last line without a newline is still a row
    return rows, tuple(checkpoints) if plain else (), FULL_DIGEST + h.hexdigest()


def read_jsonl(corpus: Corpus, f: CorpusFile, file_i: int, start: int, stop: int, batch_rows: int,
                stats: ReadStats) -> Iterator[pa.RecordBatch]:
    path = Path(f.path)
    builder = BatchBuilder(f, file_i, batch_rows)
    with LineReader(f, start) as reader:
        for row, raw in reader.lines(stop):
            if row >= start:
                text, doc_id = parse_json_line(corpus, path, row, raw, stats)
                if text is not None:
                    if (batch := builder.add(row, doc_id, text)) is not None:
                        yield batch
    reader.check_reached(stop)
    if (batch := builder.flush()) is not None:
        yield batch


def take_jsonl(corpus: Corpus, f: CorpusFile, rows: Iterable[int]) -> dict[int, tuple[str, str | None]]:
    """(text, id or None) of the given lines (0-based) of a JSONL file, by line number; a line with no text is
    left out. Only those lines are parsed; the others are only counted, which is safe because the caller
    reopened the corpus and so checked the file's digest."""
    wanted = sorted(set(rows))
    got: dict[int, tuple[str, str | None]] = {}
    if not wanted:
        return got
    stats, i, path = ReadStats(), 0, Path(f.path)
    with LineReader(f, wanted[0]) as reader:
        for row, raw in reader.lines(wanted[-1] + 1):
            if row == wanted[i]:
                text, doc_id = parse_json_line(corpus, path, row, raw, stats)
                if text is not None:
                    got[row] = (text, doc_id)
                i += 1
    reader.check_reached(wanted[-1] + 1)
    return got


class LineReader:
    """A JSONL file open at a line, to read its lines `start..stop`. A plain file seeks to the checkpoint at or
    before `start`. A compressed one (gzip and zstd cannot seek) goes on from an idle reader of this process
    that stopped at or before `start`, if there is one: reading a file's shards in order decompresses it once,
    not once per shard. A reader that read to its `stop` without error, short of the end of the file, waits
    in `_idle` for the next shard (at most `IDLE_READERS`); any other is closed."""

    def __init__(self, f: CorpusFile, start: int):
        self.path, self.rows, self.key = Path(f.path), f.rows, (f.path, f.bytes, f.digest)
        self.compressed = compressed(self.path)
        self.row, self.finished, seek = 0, False, 0
        for r, off in f.line_offsets:
            if r <= start:
                self.row, seek = r, off
        idle = _take_idle(self.key, start) if self.compressed else None
        if idle is not None:
            self.row, self.fh = idle
            return
        try:
            self.fh = open_binary(self.path)
        except OSError as e:
            raise self._error(e) from None
        try:
            if seek:
                self.fh.seek(seek)
        except OSError as e:
            self.fh.close()
            raise self._error(e) from None

    def _error(self, e: BaseException) -> CorpusError:
        return CorpusError(f"{self.path} line {self.row + 1}: cannot read it as jsonl ({short_error(e)}); "
                           "is the file complete?")

    def lines(self, stop: int) -> Iterator[tuple[int, bytes]]:
        """(line number, raw line) up to `stop` or the end of the file; `row` is then the next line's number."""
        try:
            while self.row < stop:
                raw = self.fh.readline()
                if not raw:
                    return
                yield self.row, raw
                self.row += 1
            self.finished = True
        except read_errors() as e:
            raise self._error(e) from None

    def check_reached(self, stop: int) -> None:
        """Raise if the file ended before line `stop` (it is shorter than when the corpus was opened)."""
        if self.row < stop:
            raise CorpusError(f"{self.path}: has {self.row} lines, {self.rows} when the corpus was opened; "
                              "the file changed since")

    def __enter__(self) -> LineReader:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None and self.finished and self.compressed and self.row < self.rows:
            _make_idle(self.key, self.row, self.fh)
        else:
            self.fh.close()


IDLE_READERS = 8
"""Readers of compressed JSONL files left open per process between shards, the longest idle closed first."""
_idle: list[tuple[tuple[Any, ...], int, io.BufferedIOBase]] = []
_idle_lock = threading.Lock()


def _take_idle(key: tuple[Any, ...], start: int) -> tuple[int, io.BufferedIOBase] | None:
    """The idle reader of this file furthest along but not past `start`, taken out of the pool."""
    with _idle_lock:
        best = max((i for i, (k, row, _) in enumerate(_idle) if k == key and row <= start),
                   key=lambda i: _idle[i][1], default=None)
        if best is None:
            return None
        _, row, fh = _idle.pop(best)
        return row, fh


def _make_idle(key: tuple[Any, ...], row: int, fh: io.BufferedIOBase) -> None:
    with _idle_lock:
        _idle.append((key, row, fh))
        while len(_idle) > IDLE_READERS:
            _idle.pop(0)[2].close()


def close_idle_readers() -> None:
    """Close the readers kept between shards (a long-lived process done with a corpus frees their memory and,
    for a deleted file, its disk space)."""
    with _idle_lock:
        while _idle:
            _idle.pop()[2].close()


def _after_fork_in_child() -> None:
    """A forked child gets an empty pool and a lock no thread holds; the parent's readers stay the parent's."""
    global _idle, _idle_lock
    _idle, _idle_lock = [], threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or cut file raises: an OS error (gzip's `BadGzipFile` is one), a stream cut short
    (`EOFError`), a damaged deflate stream (zlib's or ISA-L's error), a damaged zstd frame."""
    import sys
    import zlib

    isal = sys.modules.get("isal.igzip_lib")
    return (OSError, EOFError, zlib.error, zstd_error()) + ((isal.IsalError,) if isal is not None else ())


def zstd_error() -> type[BaseException]:
    """zstandard's error class (a plain Exception subclass), or a stand-in when it is not installed."""
    import sys

    mod = sys.modules.get("zstandard")
    return getattr(mod, "ZstdError", EOFError) if mod is not None else EOFError


COMPRESSED_MAGIC = {b"\x1f\x8b": ("gzip", ".gz"), b"\x28\xb5\x2f\xfd": ("zstd", ".zst")}
"""The first bytes of a gzip and a zstd stream, and the suffix that makes impsamp decompress the file."""


def _refuse_compressed(path: Path, first_line: bytes) -> None:
    """A compressed file named as plain JSONL: one line naming the suffix (it read as invalid UTF-8 or bad JSON)."""
    for magic, (kind, suffix) in COMPRESSED_MAGIC.items():
        if first_line.startswith(magic):
            raise CorpusError(f"{path} is {kind}-compressed but its name does not end in {suffix}; rename it "
                              f"to {path.name}{suffix}")


def parse_json_line(corpus: Corpus, path: Path, row: int, raw: bytes, stats: ReadStats
                     ) -> tuple[str | None, str | None]:
    line_no = row + 1
    if row == 0:
        _refuse_compressed(path, raw)
    if row == 0 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if corpus.encoding_errors != "replace":
            raise CorpusError(f"{path} line {line_no}: invalid UTF-8 at byte {e.start}; fix the file, or "
                              "pass --encoding-errors replace to `embed` (or `info`)") from None
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
        if line_no == 1 and path.suffix == ".json":  # a JSON document, say a manifest, given as a corpus
            raise CorpusError(f"{path} line 1: malformed JSON ({e}); a .json file is read as JSON Lines, one "
                              "document per line: is it a corpus?") from None
        raise CorpusError(f"{path} line {line_no}: malformed JSON ({e}); fix or remove the line") from None
    if not isinstance(obj, dict):
        raise CorpusError(f"{path} line {line_no}: expected a JSON object, got {type(obj).__name__}; "
                          "impsamp reads JSON Lines (one object per line), not a JSON array")
    check_fields(path, list(obj), corpus.text_field, corpus.id_field, where=f" line {line_no}")
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
    doc_id = id_text(obj[id_field]) if id_field and obj.get(id_field) is not None else None
    if b"\\u" in raw:  # a \uD800-\uDFFF escape can decode to a lone surrogate, which is not text
        text = no_surrogates(corpus, path, line_no, text, stats)
        doc_id = None if doc_id is None else no_surrogates(corpus, path, line_no, doc_id, ReadStats())
    return text, doc_id


def no_surrogates(corpus: Corpus, path: Path, line_no: int, text: str, stats: ReadStats) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        if corpus.encoding_errors != "replace":
            raise CorpusError(f"{path} line {line_no}: a \\u escape encodes a lone surrogate (invalid "
                              "UTF-16, e.g. a cut emoji); fix the file, or pass --encoding-errors replace to `embed` (or `info`)"
                              ) from None
        stats.replaced_utf8 += 1
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")

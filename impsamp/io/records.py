"""What the corpus readers share: the formats, the file / shard / read-statistics records, batches of
documents (`DOC_SCHEMA`), and UTF-8 decoding under the corpus's `encoding_errors`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..errors import CorpusError

if TYPE_CHECKING:
    from .corpus import Corpus

FORMATS = {
    "jsonl": (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".jsonl.zst",
              ".json.zst", ".ndjson.zst", ".jsonl.zstd", ".json.zstd", ".ndjson.zstd"),
    "parquet": (".parquet", ".pq"),
    "arrow": (".arrow", ".feather", ".ipc"),
}
SUPPORTED = ("JSONL (.jsonl/.json/.ndjson, optionally .gz, .zst or .zstd), Parquet (.parquet), "
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

    def row_id(self, row: int) -> str:
        """The id of a document without one: `FILE:ROW`."""
        return f"{self.id_prefix or Path(self.path).name}:{row}"

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


class BatchBuilder:
    def __init__(self, f: CorpusFile, file_i: int, batch_rows: int):
        self.f, self.file_i, self.batch_rows = f, file_i, batch_rows
        self.rows: list[int] = []
        self.ids: list[str] = []
        self.texts: list[str] = []

    def add(self, row: int, doc_id: str | None, text: str) -> pa.RecordBatch | None:
        self.rows.append(row)
        self.ids.append(doc_id if doc_id is not None else self.f.row_id(row))
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


def id_text(value: Any) -> str:
    """A document id as text, the way JSON writes it: `7` -> "7", `true` -> "true", `1e3` -> "1000.0",
    `{"a": 1}` -> '{"a": 1}' (Python's str() gave "True" and "{'a': 1}", which join back to nothing)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float, list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)  # Parquet's dates, decimals, ...: their own text


def short_error(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def check_fields(path: Path, names: list[str], text_field: str, id_field: str | None, where: str) -> None:
    if text_field not in names:
        raise CorpusError(f"{path}{where}: no '{text_field}' field; available fields: {sorted(names)}. "
                          f"Pass --text-field NAME (every command that reads text), or name the "
                          f"field '{text_field}'")
    if id_field is not None and id_field not in names:
        raise CorpusError(f"{path}{where}: no '{id_field}' field; available fields: {sorted(names)}. "
                          f"Pass --id-field NAME, or leave it out to use 'FILE:ROW' ids")


def decode_utf8(corpus: Corpus, path: Path, row: int, raw: bytes, stats: ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if corpus.encoding_errors != "replace":
            raise CorpusError(f"{path} row {row} (counted from 0): invalid UTF-8 at byte {e.start}; fix the file "
                              "or pass --encoding-errors replace") from None
        stats.replaced_utf8 += 1
        return raw.decode("utf-8", errors="replace")

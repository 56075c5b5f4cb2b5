"""Parquet and Arrow IPC / Feather files: schemas, row counts, batches over a row range, and documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ..errors import CorpusError
from .records import BATCH_ROWS, BatchBuilder, CorpusFile, ReadStats, decode_utf8, id_text, short_error

if TYPE_CHECKING:
    from .corpus import Corpus


def arrow_kind(path: Path) -> str:
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:4] == b"FEA1":
        raise CorpusError(f"{path}: a Feather V1 file, which impsamp does not read; convert it with "
                          "pyarrow.feather.write_feather(pyarrow.feather.read_table(PATH), NEW_PATH)")
    return "file" if magic == b"ARROW1" else "stream"


def arrow_schema(path: Path, fmt: str) -> pa.Schema:
    """The schema alone (cheap: no pass over the rows)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).schema_arrow
    with pa.memory_map(str(path)) as src:
        if arrow_kind(path) == "file":
            return pa.ipc.open_file(src).schema
        return pa.ipc.open_stream(src).schema


def arrow_schema_rows(path: Path, fmt: str) -> tuple[pa.Schema, int]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        return meta.schema_arrow, meta.metadata.num_rows
    if arrow_kind(path) == "file":
        with pa.memory_map(str(path)) as src:
            reader = pa.ipc.open_file(src)
            return reader.schema, sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    with pa.memory_map(str(path)) as src:
        reader = pa.ipc.open_stream(src)
        return reader.schema, sum(b.num_rows for b in reader)


def arrow_batches(path: Path, fmt: str, columns: list[str], start: int, stop: int
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
        if arrow_kind(path) == "file":
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


def read_parquet(corpus: Corpus, f: CorpusFile, file_i: int, start: int, stop: int, batch_rows: int,
                  stats: ReadStats) -> Iterator[pa.RecordBatch]:
    yield from read_columnar(corpus, f, file_i, start, stop, batch_rows, stats)


read_arrow = read_parquet


def read_columnar(corpus: Corpus, f: CorpusFile, file_i: int, start: int, stop: int, batch_rows: int,
                   stats: ReadStats) -> Iterator[pa.RecordBatch]:
    path = Path(f.path)
    try:
        schema = arrow_schema(path, f.format)
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(f"{path}: cannot read it as {f.format} ({short_error(e)}); "
                          "is the file complete?") from None
    id_field = corpus.id_field or ("id" if "id" in schema.names else None)
    columns = [corpus.text_field] + ([id_field] if id_field and id_field != corpus.text_field else [])
    text_type = schema.field(corpus.text_field).type
    if pa.types.is_dictionary(text_type):  # pandas' categorical strings: read as their values
        text_type = text_type.value_type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)
            or pa.types.is_binary(text_type) or pa.types.is_large_binary(text_type)):
        raise CorpusError(f"{path}: field '{corpus.text_field}' has type {text_type}, not a string; "
                          "pass --text-field with a text column")
    builder = BatchBuilder(f, file_i, batch_rows)
    try:
        for first, batch in arrow_batches(path, f.format, columns, start, stop):
            lo, hi = max(start - first, 0), min(stop - first, batch.num_rows)
            if hi <= lo:
                continue
            texts = to_pylist(batch.column(0).slice(lo, hi - lo))
            ids = to_pylist(batch.column(1).slice(lo, hi - lo)) if len(columns) > 1 else [None] * (hi - lo)
            for j, (text, doc_id) in enumerate(zip(texts, ids)):
                row = first + lo + j
                if isinstance(text, bytes):
                    text = decode_utf8(corpus, path, row, text, stats)
                if isinstance(doc_id, bytes):
                    doc_id = decode_utf8(corpus, path, row, doc_id, ReadStats())
                if text is None or not text.strip():
                    stats.skipped_empty += 1
                    continue
                out = builder.add(row, None if doc_id is None else id_text(doc_id), text)
                if out is not None:
                    yield out
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(f"{path}: cannot read it as {f.format} ({short_error(e)}); is the file complete?") from e
    if (batch := builder.flush()) is not None:
        yield batch


def to_pylist(col: pa.Array) -> list[Any]:
    """Python values of a column; a string column holding invalid UTF-8 comes back as bytes."""
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    try:
        return col.to_pylist()
    except UnicodeDecodeError:
        binary = pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary()
        return col.view(binary).to_pylist()

"""Writing a selection: the selected rows' texts, spill files (pass 1) and shuffled output shards (pass 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from .config import SELECTION_SCHEMA


def unit_texts(corpus, corpus_shard, table: pa.Table, units: np.ndarray, windowed: bool) -> pa.Array:
    """Text of the given units (row numbers of one shard's embedding table), read from the corpus.

    A window is its own training unit; otherwise the whole document is (even when the embedding
    model only read its beginning). Columnar corpora are read with Arrow `take` on the file rows.
    """
    if len(units) == 0:
        return pa.array([], pa.string())
    texts = corpus.take_rows(corpus_shard, table.column("row").to_numpy()[units])
    if not windowed:
        return texts
    starts = table.column("char_start").to_numpy()[units]
    ends = table.column("char_end").to_numpy()[units]
    return pa.array([t[s:e] for t, s, e in zip(texts.to_pylist(), starts, ends)], pa.string())


def selected_rows(corpus, corpus_shard, table: pa.Table, reps: np.ndarray, leaves: np.ndarray,
                   unit_weights: np.ndarray, windowed: bool) -> pa.Table:
    """The selected units of one input shard, each repeated as planned, with their text."""
    sel = np.flatnonzero(reps)
    if len(sel) == 0:
        return SELECTION_SCHEMA.empty_table()
    unit_text = unit_texts(corpus, corpus_shard, table, sel, windowed)
    r = reps[sel]
    rep_of = np.repeat(np.arange(len(sel)), r)
    repeat_idx = np.arange(len(rep_of)) - np.repeat(np.cumsum(r) - r, r)
    rows = sel[rep_of]
    paths = pa.array([f.path for f in corpus.files], pa.string())
    cols = {
        "text": unit_text if len(rep_of) == len(sel) else unit_text.take(pa.array(rep_of)),
        "id": table.column("id").take(pa.array(rows)).cast(pa.string()),
        "source_file": paths.take(pa.array(table.column("file").to_numpy()[rows])),
        "source_row": pa.array(table.column("row").to_numpy()[rows].astype(np.int64)),
        "doc_index": pa.array(table.column("doc_index").to_numpy()[rows].astype(np.int64)),
        "window": pa.array(table.column("window").to_numpy()[rows].astype(np.int32)),
        "cluster": pa.array(leaves[rows].astype(np.int32)),
        "weight": pa.array(unit_weights[rows].astype(np.float32)),
        "repeat": pa.array(repeat_idx.astype(np.int32)),
    }
    return pa.table(cols, schema=SELECTION_SCHEMA)


def write_spill(path: Path, rows: pa.Table, buckets: np.ndarray, n_buckets: int) -> None:
    """One record batch per output shard, in output-shard order (an IPC file: random access)."""
    order = np.argsort(buckets, kind="stable")
    rows = rows.take(pa.array(order))
    bounds = np.searchsorted(buckets[order], np.arange(n_buckets + 1))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SELECTION_SCHEMA) as w:
        for b in range(n_buckets):
            part = rows.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b]))
            w.write_batch(part.combine_chunks().to_batches()[0] if part.num_rows else
                          pa.record_batch([pa.array([], f.type) for f in SELECTION_SCHEMA], schema=SELECTION_SCHEMA))


def spill_ok(path: Path, n_buckets: int, rows: int) -> bool:
    """Whether a committed spill file is whole: readable, one valid batch per output shard, `rows` rows."""
    try:
        with pa.memory_map(str(path)) as src:
            reader = pa.ipc.open_file(src)
            if reader.num_record_batches != n_buckets:
                return False
            total = 0
            for i in range(n_buckets):
                batch = reader.get_batch(i)
                batch.validate(full=True)
                total += batch.num_rows
            return total == rows
    except (OSError, pa.ArrowException):
        return False


def data_name(b: int, n: int, fmt: str) -> str:
    return f"data-{b:05d}-of-{n:05d}." + {"arrow": "arrow", "parquet": "parquet", "jsonl": "jsonl"}[fmt]


WRITE_CHUNK = 10_000
"""Rows gathered (Arrow `take`) and written at a time."""
COMBINE_BYTES = 1 << 30
"""An output shard's rows (memory-mapped spill batches) are copied into one contiguous chunk per
column before the shuffle when they are smaller than this: the shuffle's `take` is ~3x faster, at
the cost of holding the shard in memory (~110 MB per 100,000 rows of the demo corpus; at most this
much, per process or Ray task). Larger shards are taken from the mapped batches (and string
offsets are 32-bit: one chunk holds at most 2 GiB of text)."""


def write_output_shard(path: Path, rows: pa.Table, fmt: str, order: np.ndarray | None = None) -> None:
    """Write `rows` (in `order`, if given) as one output shard, WRITE_CHUNK rows at a time."""
    n = rows.num_rows
    order = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    chunks = (rows.take(pa.array(order[i:i + WRITE_CHUNK])).combine_chunks() for i in range(0, n, WRITE_CHUNK))
    if fmt == "arrow":  # IPC stream, as datasets.save_to_disk writes
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, SELECTION_SCHEMA) as w:
            for chunk in chunks:
                w.write_table(chunk, max_chunksize=1000)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(path, SELECTION_SCHEMA, compression="zstd") as w:
            for chunk in chunks:
                w.write_table(chunk, row_group_size=WRITE_CHUNK)
    else:
        with open(path, "w", encoding="utf-8") as f:
            for chunk in chunks:
                for rec in chunk.to_pylist():
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")

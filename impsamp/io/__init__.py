"""Corpus readers: JSONL (.gz/.zst), Parquet, Arrow IPC/Feather, HF `save_to_disk` folders, globs.

    corpus = open_corpus("data/generic/*.jsonl.gz", text_field="text")
    for shard in corpus.shards(rows_per_shard=10_000):
        for batch in corpus.read(shard):      # pa.RecordBatch: doc_index, file, row, id, text
            ...

Reading streams record batches, so memory does not grow with file size. A corpus is split into
shards fixed by the data (file and row range), never by the number of workers, and every document
keeps a stable index: its row counted over the files in order. Empty and whitespace-only documents
are skipped and counted, never fatal.

Modules: `records` (formats, CorpusFile, Shard, ReadStats, batches, decoding), `discovery` (paths,
folders, globs, `datasets` folders, the field a selection is read with), `jsonl` (plain, gzip, zstd), `known` (what a JSONL file's full read found,
kept by the file's identity on disk), `columnar` (Parquet, Arrow) and
`corpus` (Corpus, open_corpus, reopen_corpus, file_changed, corpus_summary).
"""

from __future__ import annotations

from .corpus import Corpus, corpus_summary, file_changed, open_corpus, reopen_corpus
from .discovery import as_specs, data_text_field
from .jsonl import open_binary
from .records import BATCH_ROWS, DOC_SCHEMA, FORMATS, SUPPORTED, CorpusFile, ReadStats, Shard, detect_format

__all__ = ["BATCH_ROWS", "DOC_SCHEMA", "FORMATS", "SUPPORTED", "Corpus", "CorpusFile", "ReadStats", "Shard",
           "as_specs", "corpus_summary", "data_text_field", "detect_format", "file_changed", "open_binary",
           "open_corpus", "reopen_corpus"]

"""The embedding engine: read a corpus shard by shard, tokenize ahead (threads or processes), run the model."""

from __future__ import annotations

import collections
import multiprocessing
import os
import queue
import threading
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import StageError, keeping_output
from ..io import Corpus, ReadStats, Shard
from .config import (AHEAD_CHARS, DOCS_SCHEMA, FIRST_CHUNK, SORT_BUFFER, TEXTS_SCHEMA, EmbedConfig,
                     EmbedderError)
from .contract import EmbeddedBatch, Embedder, l2_normalize
from .loading import load_embedder
from .transformer import Prepared, TransformerEmbedder


def check_embedder(embedder: Any) -> None:
    missing = [a for a in ("name", "dim", "identity", "embed_texts") if not hasattr(embedder, a)]
    if missing:
        raise EmbedderError(f"{type(embedder).__name__} is not an Embedder: it lacks {missing}")
    if "name" not in embedder.identity or "weights_sha256" not in embedder.identity:
        raise EmbedderError(f"{embedder.name}: identity must hold 'name' and 'weights_sha256', "
                            f"got keys {sorted(embedder.identity)}")


def _checked(batch: Any, n_texts: int, dim: int, name: str) -> EmbeddedBatch:
    """Validate what a (possibly user-written) embedder returned, and put units in (text, window) order."""
    if not isinstance(batch, EmbeddedBatch):
        raise EmbedderError(f"{name}.embed_texts returned {type(batch).__name__}, expected an EmbeddedBatch "
                            "(wrap plain vectors with EmbeddedBatch.one_per_text(vectors, texts))")
    v = np.asarray(batch.vectors, dtype=np.float32)
    n = len(batch.text_index)
    if v.ndim != 2 or v.shape != (n, dim):
        raise EmbedderError(f"{name} returned vectors of shape {v.shape}, expected ({n}, {dim})")
    if not np.isfinite(v).all():
        raise EmbedderError(f"{name} returned non-finite vectors")
    owner = np.asarray(batch.text_index, dtype=np.int64)
    sizes = {len(batch.window), len(batch.tokens), len(batch.char_start), len(batch.char_end)}
    if sizes != {n}:
        raise EmbedderError(f"{name} returned unit arrays of lengths {sorted(sizes)}, expected {n} each")
    if n and (owner.min() < 0 or owner.max() >= n_texts) or len(np.unique(owner)) != n_texts:
        raise EmbedderError(f"{name} must return at least one unit for each of the {n_texts} texts")
    order = np.lexsort((np.asarray(batch.window), owner))
    return EmbeddedBatch(l2_normalize(v[order]), owner[order], np.asarray(batch.window, np.int32)[order],
                         np.asarray(batch.tokens, np.int32)[order],
                         np.asarray(batch.char_start, np.int64)[order],
                         np.asarray(batch.char_end, np.int64)[order])


def _background(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate `items` in a thread, up to `depth` items ahead; its exceptions re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for it in items:
                put(("item", it))
                if stop.is_set():
                    return
            put(("done", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(("error", e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's pools (tokenizing threads or processes) shut down now
                close()

    thread = threading.Thread(target=work, name="impsamp-embed-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass
class _Chunk:
    """Up to SORT_BUFFER documents of one shard, tokenized ahead; or the end marker of a shard."""

    shard: Shard | None
    meta: pa.Table | None = None
    lengths: np.ndarray | None = None
    """Characters of each document."""
    byte_lengths: np.ndarray | None = None
    """UTF-8 bytes of each document."""
    texts: list[str] | None = None
    prepared: Prepared | None = None
    end_stats: ReadStats | None = None


def _text_chunks(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """One shard's rows in chunks of FIRST_CHUNK, then SORT_BUFFER rows (the last one shorter): the
    model starts on a small chunk instead of waiting for a whole buffer to be tokenized."""
    buf: list[pa.RecordBatch] = []
    n, size = 0, FIRST_CHUNK
    for b in batches:
        buf.append(b)
        n += b.num_rows
        while n >= size:
            table = pa.Table.from_batches(buf)
            yield table.slice(0, size)
            rest = table.slice(size)
            buf, n, size = rest.to_batches(), rest.num_rows, SORT_BUFFER
    if n:
        yield pa.Table.from_batches(buf)


def tokenize_serially() -> None:
    """Make each `tokenizers` call run on its caller's thread, for callers that are themselves the
    parallelism (several tokenizing threads), as every CLI run does. The library's own pool inside each
    call, on top of such threads, was slower: 2 threads on 2 cores 5,730 docs/s with it, 6,536 without.
    An explicit `TOKENIZERS_PARALLELISM` wins."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _read_chunks(corpus: Corpus, shards: Sequence[Shard]) -> Iterator[_Chunk]:
    """Each shard's text chunks (not tokenized yet), then its end marker."""
    for shard in shards:
        stats = ReadStats()
        for table in _text_chunks(corpus.read(shard, stats=stats)):
            texts = table.column("text").to_pylist()
            lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
            n_bytes = pc.binary_length(table.column("text")).to_numpy(zero_copy_only=False)
            yield _Chunk(shard, table.drop_columns(["text"]), lengths, n_bytes.astype(np.int64), texts)
        yield _Chunk(shard, end_stats=stats)


def tokenize_shard(corpus: Corpus, shard: Shard, tokenizer: TransformerEmbedder) -> list[_Chunk]:
    """One shard read and tokenized, with no model: what a CPU-only tokenizing task hands to the task
    that runs the model (`embed_chunks`). The chunks are the ones `embed_shards` makes, so the vectors
    are too. `tokenizer`: a `TransformerEmbedder.tokenizing_only()` copy."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the task holds one CPU: tasks are the parallelism
    chunks = list(_read_chunks(corpus, [shard]))
    for chunk in chunks:
        if chunk.texts is not None:
            chunk.prepared = tokenizer.prepare(chunk.texts)
    return chunks


def _chunks(corpus: Corpus, shards: Sequence[Shard], embedder: Embedder, processes: int = 0
            ) -> Iterator[_Chunk]:
    """Each shard's chunks, then its end marker; a `TransformerEmbedder`'s chunks come tokenized, by
    `prepare_threads` threads, or `processes` processes, at once (each chunk's result is the same
    whichever thread or process made it). Chunks waiting or being tokenized are bounded in number
    (one per thread or process, plus one) and in characters (`AHEAD_CHARS`)."""
    if not isinstance(embedder, TransformerEmbedder):
        yield from _read_chunks(corpus, shards)
        return
    thread_pool = None
    if processes > 0:
        n, pool = processes, _process_pool(embedder, processes)
        prepare: Any = _tokenize_in_process
    else:
        n = max(1, embedder.prepare_threads)
        pool = thread_pool = ThreadPoolExecutor(n, thread_name_prefix="impsamp-tokenize")
        prepare = embedder.prepare
    ahead: collections.deque[tuple[_Chunk, Any]] = collections.deque()
    chars = 0
    try:
        for chunk in _read_chunks(corpus, shards):
            if chunk.texts is not None:
                chars += int(chunk.lengths.sum())
            ahead.append((chunk, None if chunk.texts is None else pool.submit(prepare, chunk.texts)))
            while len(ahead) > n or (len(ahead) > 1 and chars > AHEAD_CHARS):
                done = _prepared(*ahead.popleft())
                chars -= 0 if done.lengths is None else int(done.lengths.sum())
                yield done
        while ahead:
            yield _prepared(*ahead.popleft())
    finally:  # early stop or error: drop what has not started
        for _, future in ahead:
            if future is not None:
                future.cancel()
        if thread_pool is not None:
            thread_pool.shutdown(wait=True, cancel_futures=True)


def _prepared(chunk: _Chunk, future: Any) -> _Chunk:
    if future is not None:
        try:
            chunk.prepared = future.result()
        except BrokenProcessPool as e:
            raise keeping_output(StageError(
                f"a tokenizing process died ({e}): killed, out of memory, or started from a script "
                "without the `if __name__ == '__main__':` guard; rerun to resume (committed shards are "
                "kept)")) from None
    return chunk


def _process_pool(embedder: TransformerEmbedder, processes: int) -> ProcessPoolExecutor:
    """The embedder's pool of `processes` tokenizing processes, started once and kept while it lives
    (a worker process embeds many shards with one)."""
    pool = getattr(embedder, "_tokenizing_pool", None)
    if pool is None or pool[0] != processes:
        if pool is not None:
            pool[1].shutdown(wait=False, cancel_futures=True)
        executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_tokenizing_init, initargs=(embedder.tokenizing_only(), os.getpid()))
        weakref.finalize(embedder, executor.shutdown, wait=False, cancel_futures=True)
        pool = embedder._tokenizing_pool = (processes, executor)
    return pool[1]


_TOKENIZING: TransformerEmbedder | None = None
"""The tokenizing copy of the embedder, in a tokenizing process."""


def _tokenizing_init(twin: TransformerEmbedder, parent: int) -> None:
    global _TOKENIZING
    from ..pools import pool_process_init

    pool_process_init(parent, die_with_parent=False)  # Ctrl-C is the parent's; the pool outlives the thread
    # that started it (kept on the embedder for its later calls), so no death signal tied to that thread
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes are the parallelism
    _TOKENIZING = twin


def _tokenize_in_process(texts: list[str]) -> Prepared:
    assert _TOKENIZING is not None, "not a tokenizing process"
    return _TOKENIZING.prepare(texts)


@dataclass
class ShardResult:
    shard: Shard
    vectors: np.ndarray
    table: pa.Table
    stats: dict[str, Any]


def _unit_table(meta: pa.Table, batch: EmbeddedBatch, lengths: np.ndarray, byte_lengths: np.ndarray,
                texts: Sequence[str], windowed: bool) -> pa.Table:
    take = pa.array(batch.text_index)
    cols = {name: meta.column(name).take(take) for name in ("doc_index", "id", "file", "row")}
    chars = (batch.char_end - batch.char_start).astype(np.int32)
    text_chars, text_bytes, text_tokens = text_lengths(batch, lengths, byte_lengths, texts, windowed)
    return pa.table({**cols, "chars": chars, "tokens": batch.tokens, "window": batch.window,
                     "char_start": batch.char_start, "char_end": batch.char_end, "text_chars": text_chars,
                     "text_bytes": text_bytes, "text_tokens": text_tokens}, schema=DOCS_SCHEMA)


def text_lengths(batch: EmbeddedBatch, lengths: np.ndarray, byte_lengths: np.ndarray, texts: Sequence[str],
                 windowed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Characters, UTF-8 bytes and tokens of each unit's text as a selection writes it: its window, or
    (truncated) the whole document, whose tokens past the span the model read are estimated at that
    span's tokens per character. Windows tile their document, so their counts are exact.

    The estimate's error, against the model's tokenizer on whole documents of the bundled domains:
    -0.3% to +1.0% per domain at 128 tokens, -2.8% (factbook) at worst; -6.5% to +3.2% at 32 tokens
    (BENCHMARKS.md, "budget")."""
    owner = np.asarray(batch.text_index, dtype=np.int64)
    span = (batch.char_end - batch.char_start).astype(np.int64)
    tokens = np.asarray(batch.tokens, dtype=np.int64)
    if windowed:
        n_bytes = span.copy()
        for i in np.flatnonzero(byte_lengths[owner] != lengths[owner]):  # non-ASCII text: encode the window
            n_bytes[i] = len(texts[owner[i]][batch.char_start[i]:batch.char_end[i]].encode("utf-8"))
        return span, n_bytes, tokens
    chars = np.asarray(lengths, dtype=np.int64)[owner]
    rest = np.maximum(chars - span, 0)
    estimated = tokens + np.rint(rest * (tokens / np.maximum(span, 1))).astype(np.int64)
    return chars, np.asarray(byte_lengths, dtype=np.int64)[owner], estimated


def embed_shards(corpus: Corpus, shards: Sequence[Shard], embedder: Embedder,
                  on_chunk: Any = None, processes: int = 0) -> Iterator[ShardResult]:
    """Embed shards in order; a reader thread reads and tokenizes ahead of the model."""
    if getattr(embedder, "prepare_threads", 1) > 1:
        tokenize_serially()  # before any tokenizing thread starts
    chunks = _background(_chunks(corpus, shards, embedder, processes), depth=1)
    yield from embed_chunks(chunks, embedder, on_chunk)


def embed_chunks(chunks: Iterator[_Chunk], embedder: Embedder, on_chunk: Any = None
                 ) -> Iterator[ShardResult]:
    """Run the model over chunks (tokenized ahead, or texts for a plain `Embedder`), one `ShardResult`
    at each shard's end marker. `on_chunk(documents, tokens)` after each chunk."""
    vecs: list[np.ndarray] = []
    tables: list[pa.Table] = []
    docs = chars = truncated = 0
    windowed = bool(embedder.identity.get("windows"))
    for chunk in chunks:
        if chunk.end_stats is not None:
            vectors = np.concatenate(vecs) if vecs else np.zeros((0, embedder.dim), np.float16)
            table = pa.concat_tables(tables) if tables else DOCS_SCHEMA.empty_table()
            stats = {"documents": docs, "units": table.num_rows, "characters": chars,
                     "tokens": int(pc.sum(table.column("tokens")).as_py() or 0),
                     "characters_embedded": int(pc.sum(table.column("chars")).as_py() or 0),
                     "text_tokens": int(pc.sum(table.column("text_tokens")).as_py() or 0),
                     "text_bytes": int(pc.sum(table.column("text_bytes")).as_py() or 0),
                     "truncated_documents": truncated, "skipped_empty": chunk.end_stats.skipped_empty,
                     "replaced_utf8": chunk.end_stats.replaced_utf8}
            if on_chunk is not None:
                on_chunk(chunk.end_stats.skipped_empty, 0)
            yield ShardResult(chunk.shard, vectors, table, stats)
            vecs, tables, docs, chars, truncated = [], [], 0, 0, 0
            continue
        if chunk.prepared is not None:
            batch = embedder.run(chunk.prepared)
        else:
            batch = _checked(embedder.embed_texts(chunk.texts), len(chunk.texts), embedder.dim, embedder.name)
        vecs.append(batch.vectors.astype(np.float16))
        tables.append(_unit_table(chunk.meta, batch, chunk.lengths, chunk.byte_lengths, chunk.texts, windowed))
        docs += chunk.meta.num_rows
        chars += int(chunk.lengths.sum())
        covered = np.zeros(len(chunk.lengths), dtype=np.int64)  # end of the last unit of each document
        np.maximum.at(covered, batch.text_index, batch.char_end)
        truncated += int((covered < chunk.lengths).sum())
        if on_chunk is not None:
            on_chunk(chunk.meta.num_rows, int(batch.tokens.sum()))


def embed_texts(texts: Sequence[str], embedder: Embedder | None = None,
                config: EmbedConfig | None = None) -> tuple[np.ndarray, pa.Table]:
    """Embed in-memory texts the way `embed` embeds a corpus (same model, truncation or windows).

    Meant for a small sample, e.g. an in-domain target that `resample` assigns to existing clusters:
    pass `Embeddings.embedder()` so the sample is embedded exactly like the generic corpus.

    Args:
        texts: the documents. Empty or whitespace-only ones get no unit (as in `embed`).
        embedder: default `load_embedder(config)`.
        config: used only to load the embedder when none is given.

    Returns:
        vectors: (n_units, d) float32, L2-normalised (`embed` stores them as float16).
        table: row-aligned units: text_index (position in `texts`), chars, tokens, window,
            char_start, char_end (`TEXTS_SCHEMA`).
    """
    emb = embedder if embedder is not None else load_embedder(config)
    check_embedder(emb)
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    vecs, tables = [], []
    for lo in range(0, len(keep), SORT_BUFFER):
        idx = keep[lo:lo + SORT_BUFFER]
        chunk = [texts[i] for i in idx]
        if isinstance(emb, TransformerEmbedder):
            batch = emb.run(emb.prepare(chunk))
        else:
            batch = _checked(emb.embed_texts(chunk), len(chunk), emb.dim, emb.name)
        vecs.append(batch.vectors)
        tables.append(pa.table({
            "text_index": np.asarray(idx, np.int64)[batch.text_index],
            "chars": (batch.char_end - batch.char_start).astype(np.int32), "tokens": batch.tokens,
            "window": batch.window, "char_start": batch.char_start, "char_end": batch.char_end},
            schema=TEXTS_SCHEMA))
    if not vecs:
        return np.zeros((0, emb.dim), np.float32), TEXTS_SCHEMA.empty_table()
    return np.concatenate(vecs), pa.concat_tables(tables)

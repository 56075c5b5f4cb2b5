"""The `embed` stage: a resumable run over shards, here, in a local process pool or as Ray tasks."""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import as_config, from_dict
from ..errors import ConfigError, CorpusError, StageError
from ..guards import refuse_busy, released_on_return
from ..hardware import cpu_count
from ..io import Corpus, Shard, open_corpus, reopen_corpus
from ..manifest import StageRun, tmp_name
from ..progress import progress_bar
from ..scale import (LOCAL, Execution, Shared, SliceResult, Upstream, check_complete, commit_once,
                     run_tasks, slice_result)
from .config import BACKENDS, EmbedConfig
from .contract import EmbeddedBatch, Embedder
from .engine import ShardResult, check_embedder, embed_chunks, embed_shards, tokenize_shard
from .loading import load_embedder
from .result import Embeddings, docs_name, vectors_name
from .transformer import TransformerEmbedder

logger = logging.getLogger(__name__)


def _write_shard(out_dir: Path, result: ShardResult) -> dict[str, Path]:
    """Write a shard's payload under temporary names (committed by the caller)."""
    import pyarrow.parquet as pq

    name = result.shard.name
    tmp_v = tmp_name(out_dir / vectors_name(name))
    tmp_d = tmp_name(out_dir / docs_name(name))
    with open(tmp_v, "wb") as f:  # np.save on a path would append ".npy" to the temp name
        np.save(f, np.ascontiguousarray(result.vectors, dtype=np.float16))
    pq.write_table(result.table, tmp_d, compression="zstd")
    return {vectors_name(name): tmp_v, docs_name(name): tmp_d}


class _Progress:
    """The progress bar in documents, with the tokens per second so far beside it."""

    def __init__(self, total: int, enabled: bool):
        self.enabled, self.started, self.tokens = enabled, time.time(), 0
        self.bar = progress_bar(enabled, "embed", "doc", total=total, smoothing=0.1)

    def __call__(self, docs: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(docs)
        if self.enabled:
            rate = self.tokens / max(time.time() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)

    def close(self) -> None:
        self.bar.close()


def _config_of(cfg: EmbedConfig, identity: dict[str, Any]) -> EmbedConfig:
    """The config as the embedder actually ran it (a plugged-in embedder overrides model, tokens, ...)."""
    updates: dict[str, Any] = {"model": str(identity.get("name", cfg.model))}
    for key in ("max_tokens", "windows"):
        if key in identity:
            updates[key] = identity[key]
    if identity.get("backend") in BACKENDS:
        updates.update(backend=identity["backend"], quantize=identity.get("quantize"))
    try:
        return replace(cfg, **updates)
    except ConfigError:
        return replace(cfg, model=updates["model"])


@released_on_return
def embed(corpus: str | Path | Sequence[str | Path] | Corpus, out_dir: str | Path,
          config: EmbedConfig | None = None, *, embedder: Embedder | None = None, overwrite: bool = False,
          progress: bool = False, execution: Execution | None = None) -> Embeddings | SliceResult:
    """Embed every document of a corpus into `out_dir` (resumable; see the module docstring).

    Args:
        corpus: files, folders or globs, or an opened `io.Corpus` (its fields win over the config's).
        out_dir: the stage directory; an interrupted run there is resumed.
        config: model, truncation or windows, backend, device, sharding, workers.
        embedder: any `Embedder` to use instead of the config's model (must pickle when workers > 1,
            unless it came from `load_embedder`: workers then load their own copy).
        overwrite: replace a complete output.
        progress: show a progress bar (documents, tokens/s, ETA).
        execution: where the shards run (`impsamp.scale.Execution`): Ray tasks, or one slice of a Slurm
            array (then no manifest is written: see `impsamp.finalize`). The bytes are the same whichever.

    Returns:
        The `Embeddings` handle of the finished directory (a `SliceResult` for a slice).

    Raises:
        ConfigError, CorpusError, StageError: bad flags, unreadable input, an existing output.

    With `workers > 1` the worker processes are spawned: a script that calls `embed` needs the usual
    `if __name__ == "__main__":` guard.
    """
    cfg = as_config(EmbedConfig, config) or EmbedConfig()
    ex = execution or LOCAL
    if not isinstance(corpus, Corpus):
        corpus = open_corpus(corpus, text_field=cfg.text_field, id_field=cfg.id_field,
                             encoding_errors=cfg.encoding_errors)
    cfg = replace(cfg, text_field=corpus.text_field, id_field=corpus.id_field,
                  encoding_errors=corpus.encoding_errors)
    threads = max(1, cpu_count() // cfg.workers)
    refuse_busy(Path(out_dir), slice_name=ex.slice_name)  # before the model loads (seconds, minutes for an export)
    emb = embedder if embedder is not None else load_embedder(cfg, threads=threads)
    check_embedder(emb)
    if ex.tokenize_tasks and not isinstance(emb, TransformerEmbedder):
        raise ConfigError(f"--tokenize-tasks needs a transformer model; {emb.name} tokenizes inside its own "
                          "embed_texts: drop the flag")
    cfg = _config_of(cfg, emb.identity)
    run = StageRun(Path(out_dir), "embed", config={**asdict(cfg), "model_identity": dict(emb.identity)},
                   inputs={"corpus": {**corpus.spec(), "fingerprint": corpus.fingerprint()}},
                   overwrite=overwrite, slice_name=ex.slice_name, unkeyed=("workers", "tokenize_processes"))
    run.begin()
    shards = corpus.shards(cfg.rows_per_shard)
    if ex.require_complete:
        check_complete(run, [s.name for s in shards])
    pending = [s for s in shards if not run.is_done(s.name) and ex.mine(s.index)]
    if len(pending) < len(shards):
        logger.info("resuming: %d of %d shards already done", len(shards) - len(pending), len(shards))
    bar = _Progress(sum(s.rows for s in pending), progress)
    started = time.time()
    with run.discarded_on_error(enabled=not ex.sliced):  # a bad row found by a fresh run: nothing left behind
        try:
            _run_shards(run, ex, corpus, pending, cfg, embedder, emb, threads, bar)
        finally:
            bar.close()
        if ex.sliced:
            return slice_result(run, ex, len(pending), [s.name for s in shards])
        return _finish(run, corpus, shards, pending, emb, time.time() - started)


def _finish(run: StageRun, corpus: Corpus, shards: list[Shard], pending: list[Shard], emb: Embedder,
            seconds: float) -> Embeddings:
    """Totals over the shards' records, then the manifest (which makes the output complete)."""
    records = {r["shard"]: r for r in run.records()}
    totals: dict[str, Any] = {}
    for key in ("documents", "units", "tokens", "characters", "characters_embedded", "text_tokens", "text_bytes",
                "truncated_documents", "skipped_empty", "replaced_utf8"):
        totals[key] = sum(int(records[s.name]["stats"].get(key, 0)) for s in shards)
    if totals["documents"] == 0:  # a complete output of no vectors would only fail in the next stage
        raise CorpusError(f"the corpus {', '.join(f.path for f in corpus.files)} has {corpus.n_rows:,} row(s) but "
                          f"no document with text ({totals['skipped_empty']:,} empty or whitespace-only); "
                          "check --text-field, or give a corpus with text")
    new_docs = sum(int(records[s.name]["stats"]["documents"]) for s in pending)
    shard_rows = [{"name": s.name, "rows": records[s.name]["stats"]["units"]} for s in shards]
    run.finish(stats={**totals, "dim": emb.dim, "shards": shard_rows,
                      "docs_per_second": round(new_docs / seconds, 2) if pending and seconds > 0 else None,
                      "model": emb.identity.get("name"), "resumed_shards": len(shards) - len(pending)})
    return Embeddings.load(run.out_dir)


def finalize_embed(out_dir: Path, record: dict[str, Any], execution: Execution) -> Embeddings:
    """`impsamp finalize` of an embed directory: the recorded config, corpus and model identity
    (the model is not loaded: every shard is already embedded)."""
    config = dict(record["config"])
    identity = dict(config.pop("model_identity"))
    cfg = from_dict(EmbedConfig, config, source=str(out_dir / "_run.json"))
    inputs = record.get("inputs")
    corpus = reopen_corpus(inputs.get("corpus") if isinstance(inputs, dict) else None, source=str(out_dir / "_run.json"))
    dim = identity.get("dim")
    if not isinstance(dim, int):
        first = sorted(out_dir.glob("vectors-*.npy"))
        dim = int(np.load(first[0], mmap_mode="r").shape[1]) if first else 0
    return embed(corpus, out_dir, cfg, embedder=_RecordedEmbedder(identity, dim), execution=execution)


class _RecordedEmbedder:
    """Stands for the embedder a sliced run used, when finalize only writes the manifest."""

    def __init__(self, identity: dict[str, Any], dim: int):
        self.identity, self.dim, self.name = identity, dim, str(identity.get("name"))

    def embed_texts(self, texts: Sequence[str]) -> EmbeddedBatch:  # pragma: no cover - never called
        raise StageError("finalize embeds nothing: a shard is missing")


# ---- where the shards run (`scale.run_tasks`): here as one stream, or in worker processes / Ray tasks


def _run_shards(run: StageRun, ex: Execution, corpus: Corpus, pending: list[Shard], cfg: EmbedConfig,
                embedder: Embedder | None, emb: Embedder, threads: int, bar: _Progress) -> None:
    """Here the model reads ahead across shards (one stream), and a thread writes and commits each
    finished shard while the model goes on (one shard in flight: memory bounded, commits in order).
    In `--workers` processes or Ray tasks each shard is one task; a worker loads the model once."""
    def done(name: str, result: ShardResult | tuple[str, dict[str, str], dict[str, Any]]) -> None:
        if isinstance(result, ShardResult):
            files, stats = _write_shard(run.out_dir, result), result.stats
        else:
            files, stats = {k: Path(v) for k, v in result[1].items()}, result[2]
        if commit_once(run, name, files, stats=stats,
                       rows={vectors_name(name): stats["units"], docs_name(name): stats["units"]}):
            if not isinstance(result, ShardResult):  # the stream counts its chunks as they pass
                bar(stats["documents"] + stats["skipped_empty"], stats["tokens"])

    workers = bool(pending) and ex.in_workers(cfg.workers, len(pending))
    wcfg, blob = _for_workers(cfg, embedder) if workers else (cfg, None)
    gpu = cfg.device == "cuda" or getattr(emb, "_device", None) == "cuda"
    if ex.tokenize_tasks:
        _run_fed(run, ex, corpus, pending, wcfg, blob, emb, threads, gpu, done)
    else:
        tasks = [(s.name, (wcfg, blob, Shared("corpus"), threads, s, str(run.out_dir))) for s in pending]
        run_tasks(ex, _embed_in_worker, tasks, done, shared={"corpus": corpus}, processes=cfg.workers,
                  stream=None if workers else lambda check: ((r.shard.name, r) for r in embed_shards(
                      corpus, pending, emb, on_chunk=lambda docs, tokens: (check(), bar(docs, tokens)),
                      processes=cfg.tokenize_processes)),
                  done_in_background=True,
                  # CPU: each task gets the threads a local worker would (cpu_count // workers); GPU: its
                  # GPU's share of the node's CPUs, which tokenize for it (one task per GPU on 16 cores: 16)
                  num_cpus=None if gpu else threads, num_gpus=ex.gpus_per_worker if gpu else 0)
    corpus.check_unchanged()  # a file written while it was read: its vectors may mix two versions


def _run_fed(run: StageRun, ex: Execution, corpus: Corpus, pending: list[Shard], wcfg: EmbedConfig,
             blob: bytes | None, emb: Embedder, threads: int, gpu: bool, done: Any) -> None:
    """`--tokenize-tasks`: per shard, a CPU-only Ray task reads and tokenizes it and hands the token ids
    to the task that runs the model (on a GPU, with one CPU: it tokenizes nothing)."""
    tasks = [(s.name, (wcfg, blob, Upstream(tokenize_shard, (Shared("corpus"), s, Shared("tokenizer"))),
                       threads, s, str(run.out_dir))) for s in pending]
    shared = {"corpus": corpus, "tokenizer": emb.tokenizing_only()}
    run_tasks(ex, _embed_tokenized, tasks, done, shared=shared, num_cpus=1 if gpu else threads,
              num_gpus=ex.gpus_per_worker if gpu else 0)


_WORKER: dict[str, Any] = {}


def _worker_embedder(cfg: EmbedConfig, blob: bytes | None, threads: int) -> Embedder:
    """The embedder of a worker process or Ray worker: loaded once per process and reused. A Ray task
    runs on the CPUs Ray gave it (a GPU task: its GPU's share of the node)."""
    from ..scale import task_cpus

    cpus = task_cpus(0)
    threads = cpus if cpus > 1 else threads  # 1: no GPU node was up to size the share (see run_ray)
    key = (pickle.dumps(cfg), blob, threads)
    if _WORKER.get("key") != key:
        _WORKER["embedder"] = pickle.loads(blob) if blob is not None else load_embedder(cfg, threads=threads)
        _WORKER["key"] = key
    return _WORKER["embedder"]


def _written(out_dir: str, result: ShardResult) -> tuple[str, dict[str, str], dict[str, Any]]:
    files = _write_shard(Path(out_dir), result)
    return result.shard.name, {k: str(v) for k, v in files.items()}, result.stats


def _embed_in_worker(cfg: EmbedConfig, blob: bytes | None, corpus: Corpus, threads: int, shard: Shard,
                     out_dir: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """One shard in a worker process (`--workers`) or a Ray task."""
    embedder = _worker_embedder(cfg, blob, threads)
    (result,) = list(embed_shards(corpus, [shard], embedder, processes=cfg.tokenize_processes))
    return _written(out_dir, result)


def _embed_tokenized(cfg: EmbedConfig, blob: bytes | None, chunks: list[Any], threads: int, shard: Shard,
                     out_dir: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """One shard's model task fed by its tokenizing task (`tokenize_shard`'s chunks)."""
    (result,) = list(embed_chunks(iter(chunks), _worker_embedder(cfg, blob, threads)))
    return _written(out_dir, result)


def _for_workers(cfg: EmbedConfig, embedder: Embedder | None) -> tuple[EmbedConfig, bytes | None]:
    """How worker processes get the embedder: a model loaded from its config (each worker loads it
    once), or a pickled plug-in embedder. -> (config to load from, pickled embedder or None)."""
    if isinstance(embedder, TransformerEmbedder) and getattr(embedder, "config", None) is not None:
        return replace(embedder.config, workers=cfg.workers), None
    if embedder is None:
        return cfg, None
    try:
        return cfg, pickle.dumps(embedder)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--workers > 1 and --engine ray need an embedder that can be pickled to the worker "
                          f"processes ({type(e).__name__}: {e}); use one worker here") from None

"""The `embed` stage: a resumable run over shards, here, in a local process pool or as Ray tasks."""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import from_dict
from ..errors import ConfigError, CorpusError, StageError
from ..io import Corpus, Shard, open_corpus, reopen_corpus
from ..manifest import StageRun, fingerprint, tmp_name
from ..scale import Execution, LOCAL, Shared, SliceResult, check_complete, commit_once, run_ray, slice_result
from .config import BACKENDS, EmbedConfig
from .contract import EmbeddedBatch, Embedder
from .transformer import TransformerEmbedder, cpu_count, load_embedder
from .engine import _ShardResult, _check_embedder, _embed_shards
from .result import Embeddings, _docs_name, _vectors_name

logger = logging.getLogger(__name__)


def _write_shard(out_dir: Path, result: _ShardResult) -> dict[str, Path]:
    """Write a shard's payload under temporary names (committed by the caller)."""
    import pyarrow.parquet as pq

    name = result.shard.name
    tmp_v = tmp_name(out_dir / _vectors_name(name))
    tmp_d = tmp_name(out_dir / _docs_name(name))
    with open(tmp_v, "wb") as f:  # np.save on a path would append ".npy" to the temp name
        np.save(f, np.ascontiguousarray(result.vectors, dtype=np.float16))
    pq.write_table(result.table, tmp_d, compression="zstd")
    return {_vectors_name(name): tmp_v, _docs_name(name): tmp_d}


def _commit(run: StageRun, name: str, files: dict[str, Path], stats: dict[str, Any]) -> None:
    rows = stats["units"]
    # (the test-only IMPSAMP_TEST_SLOW_SHARD pause lives in StageRun.commit_shard)
    run.commit_shard(name, files, stats=stats, rows={_vectors_name(name): rows, _docs_name(name): rows})


def _run_here(run: StageRun, corpus: Corpus, pending: list[Shard], emb: Embedder, bar: _Progress,
              processes: int) -> None:
    """Embed the shards in this process; a thread writes and commits each finished shard while the
    model goes on with the next (one shard in flight: memory stays bounded, commits stay in order)."""

    def write_and_commit(result: _ShardResult) -> None:
        _commit(run, result.shard.name, _write_shard(run.out_dir, result), result.stats)

    writing: Future[None] | None = None

    def on_chunk(documents: int, tokens: int) -> None:
        if writing is not None and writing.done():
            writing.result()  # a failed commit stops the run at the next chunk, not a shard later
        bar(documents, tokens)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="impsamp-commit") as committer:
        for result in _embed_shards(corpus, pending, emb, on_chunk=on_chunk, processes=processes):
            if writing is not None:
                writing.result()  # the previous shard is committed (or its error raised) first
            writing = committer.submit(write_and_commit, result)
        if writing is not None:
            writing.result()


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.started, self.tokens = time.time(), 0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="doc", desc="embed", dynamic_ncols=True, smoothing=0.1)

    def __call__(self, docs: int, tokens: int) -> None:
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(docs)
            rate = self.tokens / max(time.time() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
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


def _resume_key(run: StageRun) -> str:
    """StageRun's key without `workers` and `tokenize_processes`: a run may be resumed with other
    numbers of either (they do not change the bytes)."""
    config = {k: v for k, v in run.config.items() if k not in ("workers", "tokenize_processes")}
    return fingerprint({"stage": run.stage, "config": config, "inputs": run.inputs, "version": run.version})


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
        execution: where the shards run (`impsamp.scale.Execution`): Ray tasks, or one slice of a
            Slurm array (then no manifest is written: see `impsamp.scale.finalize`). The bytes are
            the same whichever.

    Returns:
        The `Embeddings` handle of the finished directory (a `SliceResult` for a slice).

    Raises:
        ConfigError, CorpusError, StageError: bad flags, unreadable input, an existing output.

    With `workers > 1` the worker processes are spawned: a script that calls `embed` needs the usual
    `if __name__ == "__main__":` guard.
    """
    cfg = config or EmbedConfig()
    ex = execution or LOCAL
    if not isinstance(corpus, Corpus):
        corpus = open_corpus(corpus, text_field=cfg.text_field, id_field=cfg.id_field,
                             encoding_errors=cfg.encoding_errors)
    cfg = replace(cfg, text_field=corpus.text_field, id_field=corpus.id_field,
                  encoding_errors=corpus.encoding_errors)
    threads = max(1, cpu_count() // cfg.workers)
    emb = embedder if embedder is not None else load_embedder(cfg, threads=threads)
    _check_embedder(emb)
    cfg = _config_of(cfg, emb.identity)
    run = StageRun(Path(out_dir), "embed", config={**asdict(cfg), "model_identity": dict(emb.identity)},
                   inputs={"corpus": {**corpus.spec(), "fingerprint": corpus.fingerprint()}},
                   overwrite=overwrite)
    run.key = _resume_key(run)
    run.begin()
    shards = corpus.shards(cfg.rows_per_shard)
    if ex.require_complete:
        check_complete(run, [s.name for s in shards])
    pending = [s for s in shards if not run.is_done(s.name) and ex.mine(s.index)]
    if len(pending) < len(shards):
        logger.info("resuming: %d of %d shards already done", len(shards) - len(pending), len(shards))
    bar = _Progress(sum(s.rows for s in pending), progress)
    started = time.time()
    try:
        if ex.engine == "ray" and pending:
            _run_ray(run, corpus, pending, cfg, embedder, emb, threads, bar, ex)
        elif cfg.workers > 1 and len(pending) > 1:
            _run_pool(run, corpus, pending, cfg, embedder, threads, bar)
        else:
            _run_here(run, corpus, pending, emb, bar, cfg.tokenize_processes)
    finally:
        bar.close()
    seconds = time.time() - started
    if ex.sliced:
        return slice_result(run, ex, len(pending), [s.name for s in shards])
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


def _finalize(out_dir: Path, record: dict[str, Any], execution: Execution) -> Embeddings:
    """`impsamp finalize` of an embed directory: the recorded config, corpus and model identity
    (the model is not loaded: every shard is already embedded)."""
    config = dict(record["config"])
    identity = dict(config.pop("model_identity"))
    cfg = from_dict(EmbedConfig, config, source=str(out_dir / "_run.json"))
    corpus = reopen_corpus(record["inputs"]["corpus"])
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


# ---- Ray tasks over shards (same shards, same bytes; the driver commits)


def _ray_embed_shard(cfg: EmbedConfig, blob: bytes | None, corpus: Corpus, threads: int, shard: Shard,
                     out_dir: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """One shard in a Ray worker process; the model is loaded once per worker process and reused.

    It runs on the CPUs Ray gave the task (a GPU task: its GPU's share of the node, see `_run_ray`)."""
    from ..scale import task_cpus

    cpus = task_cpus(0)
    threads = cpus if cpus > 1 else threads  # 1: no GPU node was up to size the share (see run_ray)
    key = (pickle.dumps(cfg), blob, threads)
    if _WORKER.get("key") != key:
        _worker_init(cfg, blob, corpus, threads)
        _WORKER["key"] = key
    _WORKER["corpus"] = corpus
    return _worker_shard(shard, out_dir)


def _for_workers(cfg: EmbedConfig, embedder: Embedder | None, flag: str, where: str
                 ) -> tuple[EmbedConfig, bytes | None]:
    """How worker processes get the embedder: a model loaded from its config (each worker loads it
    once), or a pickled plug-in embedder. -> (config to load from, pickled embedder or None)."""
    if isinstance(embedder, TransformerEmbedder) and getattr(embedder, "config", None) is not None:
        return replace(embedder.config, workers=cfg.workers), None
    if embedder is None:
        return cfg, None
    try:
        return cfg, pickle.dumps(embedder)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{flag} needs an embedder that can be pickled to {where} "
                          f"({type(e).__name__}: {e})") from None


def _run_ray(run: StageRun, corpus: Corpus, pending: list[Shard], cfg: EmbedConfig, embedder: Embedder | None,
             emb: Embedder, threads: int, bar: _Progress, ex: Execution) -> None:
    cfg, blob = _for_workers(cfg, embedder, "--engine ray", "the Ray workers")
    gpu = cfg.device == "cuda" or getattr(emb, "_device", None) == "cuda"
    num_gpus = ex.gpus_per_worker if gpu else 0
    # CPU: each task gets the threads a local worker would (cpu_count // workers); GPU: its GPU's share
    # of the node's CPUs, which tokenize for it (one task per GPU on a 16-core node holds all 16)
    num_cpus = None if gpu else threads

    def done(_key: str, result: tuple[str, dict[str, str], dict[str, Any]]) -> None:
        name, files, stats = result
        if commit_once(run, name, {k: Path(v) for k, v in files.items()}, stats=stats,
                       rows={_vectors_name(name): stats["units"], _docs_name(name): stats["units"]}):
            bar(stats["documents"] + stats["skipped_empty"], stats["tokens"])

    tasks = [(s.name, (cfg, blob, Shared("corpus"), threads, s, str(run.out_dir))) for s in pending]
    run_ray(ex, _ray_embed_shard, tasks, done, num_cpus=num_cpus, num_gpus=num_gpus,
            shared={"corpus": corpus})


# ---- a local process pool over shards

_WORKER: dict[str, Any] = {}


def _worker_init(cfg: EmbedConfig, embedder_blob: bytes | None, corpus: Corpus, threads: int) -> None:
    _WORKER["corpus"] = corpus
    _WORKER["processes"] = cfg.tokenize_processes
    _WORKER["embedder"] = (pickle.loads(embedder_blob) if embedder_blob is not None
                           else load_embedder(cfg, threads=threads))


def _worker_shard(shard: Shard, out_dir: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    (result,) = list(_embed_shards(_WORKER["corpus"], [shard], _WORKER["embedder"],
                                   processes=_WORKER["processes"]))
    files = _write_shard(Path(out_dir), result)
    return shard.name, {k: str(v) for k, v in files.items()}, result.stats


def _run_pool(run: StageRun, corpus: Corpus, pending: list[Shard], cfg: EmbedConfig,
              embedder: Embedder | None, threads: int, bar: _Progress) -> None:
    cfg, blob = _for_workers(cfg, embedder, f"--workers {cfg.workers}", "the worker processes (or use workers=1)")
    ctx = multiprocessing.get_context("spawn")  # torch and threads do not survive fork
    pool = ProcessPoolExecutor(max_workers=min(cfg.workers, len(pending)), mp_context=ctx,
                               initializer=_worker_init, initargs=(cfg, blob, corpus, threads))
    try:
        futures = [pool.submit(_worker_shard, shard, str(run.out_dir)) for shard in pending]
        for fut in as_completed(futures):
            name, files, stats = fut.result()
            _commit(run, name, {k: Path(v) for k, v in files.items()}, stats)
            bar(stats["documents"] + stats["skipped_empty"], stats["tokens"])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)

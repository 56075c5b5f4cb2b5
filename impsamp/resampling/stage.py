"""The `resample` stage: target histogram, weights, plan, then the two writing passes (resumable)."""

from __future__ import annotations

import logging
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, StageError
from ..histograms import Histogram, generic_histogram, histogram, mixture
from ..manifest import StageRun, tmp_name
from ..scale import Execution, LOCAL, Shared, commit_once, run_ray
from ..weighting import compute_weights
from .config import ResampleConfig, SELECTION_SCHEMA
from .selection import Selection
from .planning import _ROUTE, _SHUFFLE, Plan, _plan, _shard_rng, _unit_repeats
from .budget import BudgetCounter, UnitSizes
from .tables import _PerShard, _ShardTables, _hist_key, _progress
from .writing import COMBINE_BYTES, _data_name, _selected_rows, _spill_ok, _write_output_shard, _write_spill
from .methods import _classifier_log_weights, _ngram_log_weights, _parse_target
from .report import _diagnostics, _plot, _write_extras

logger = logging.getLogger(__name__)


def target_histogram(targets: Sequence[Any], clusters, embeddings, cfg: ResampleConfig,
                     progress: bool = False) -> tuple[Histogram, list[dict[str, Any]]]:
    """The (mixture) target histogram, and a description of each part for the manifest."""
    parts, described = [], []
    for t in targets:
        spec, w = _parse_target(t)
        h = histogram(spec, clusters, embeddings=embeddings, text_field=cfg.text_field, id_field=cfg.id_field,
                      progress=progress)
        if h.total <= 0:
            raise ConfigError(f"target {spec} has no documents; give a non-empty in-domain sample")
        parts.append((h, w))
        described.append({"target": str(spec), "weight": w, "documents": h.total})
    return mixture(parts), described


def resample(embeddings, clusters, out_dir: str | Path, *, targets: Sequence[Any] = (),
             config: ResampleConfig | None = None, weighting: Callable[..., Any] | None = None,
             overwrite: bool = False, progress: bool = False, command: str | None = None,
             execution: Execution | None = None) -> Selection:
    """Draw a selection from the clustered generic corpus and write it as shards with a data card.

    Args:
        embeddings: the generic corpus's `impsamp embed` output (an `Embeddings` or its path).
        clusters: the `impsamp cluster` output fitted on it (a `Clusters` or its path).
        targets: in-domain samples: corpus paths, target `embed` dirs, saved histograms, each
            optionally with a mixture weight (`"law.jsonl:0.7"` or `("law.jsonl", 0.7)`).
        config: budget, method, scheme, weighting options, seed, output format.
        weighting: a Python callable overriding `config.weighting`.
        execution: `impsamp.scale.Execution(engine="ray")` runs both passes' shards as Ray tasks
            (same bytes). Slices (`num_shards`) are refused: the output is one global shuffle.

    Raises:
        ConfigError, StageError, WeightingError: bad budget, mismatched inputs, bad weights.
    """
    from ..clustering import Clusters
    from ..embedding import Embeddings

    cfg = config or ResampleConfig(docs=1000)
    ex = execution or LOCAL
    if ex.sliced:
        raise ConfigError("resample --num-shards/--shard-index: the output is one global shuffle of every "
                          "input shard, so it cannot be cut into independent slices; run it as one job "
                          "(--engine ray spreads its shards over a Ray cluster)")
    emb = embeddings if isinstance(embeddings, Embeddings) else Embeddings.load(embeddings)
    clu = clusters if isinstance(clusters, Clusters) else Clusters.load(clusters)
    recorded = clu.manifest.inputs.get("embeddings", {}).get("fingerprint")
    if recorded != emb.manifest.fingerprint:
        raise StageError(f"{clu.path} was not clustered from {emb.path} (its manifest records "
                         f"{clu.manifest.inputs.get('embeddings', {}).get('path')}); pass the matching pair")
    corpus = emb.corpus()  # reopened and checked unchanged since it was embedded
    generic = generic_histogram(clu)
    if cfg.method == "uniform":
        target, described, spec = generic, [], "uniform"
    else:
        if not targets:
            raise ConfigError("no target given; pass --target with an in-domain sample (or --method uniform)")
        target, described = target_histogram(targets, clu, emb, cfg, progress=progress)
        spec = (weighting or cfg.weighting) if cfg.method == "importance" else "ratio"
    builtin = {"smoothing": cfg.smoothing, "temperature": cfg.temperature, "cap": cfg.cap, "backoff": cfg.backoff}
    weights, weighting_name = compute_weights(spec, target, generic, **builtin)
    # uniform, ngram and classifier draw without replacement; importance uses the chosen scheme
    cfg_eff = cfg if cfg.method == "importance" else ResampleConfig(**{**asdict(cfg), "scheme": "topk"})
    if cfg.method in ("ngram", "classifier"):
        weighting_name = cfg.method

    names = list(emb.shard_names)
    windowed = bool(emb.model_info.get("windows"))
    # Per-unit cluster ids and token counts are read shard by shard where needed, never all at once:
    # planning keeps per-(shard, cluster) counts only, so memory does not grow with the corpus (topk,
    # ngram and classifier still hold one log-weight per unit).
    shard_leaves = _PerShard(names, lambda n: np.asarray(clu.shard_assign(n)[:, -1], dtype=np.int64))
    # Unit tables are read again where needed, one shard at a time: holding every shard's table (ids
    # and all) made peak memory grow ~180 bytes per corpus row; the plan needs only leaves and sizes.
    shard_tables = _ShardTables(emb)
    corpus_shards = {s.name: s for s in corpus.shards(emb.manifest.config.get("rows_per_shard", 10_000))}
    counter = BudgetCounter(emb, corpus, corpus_shards, windowed, cfg.budget_tokenizer)
    unit = cfg.budget[0]
    shard_sizes = _PerShard(names, lambda n: counter[n].of(unit))
    inputs = {"embeddings": {"path": str(emb.path.resolve()), "stage": "embed", "fingerprint": emb.manifest.fingerprint},
              "clusters": {"path": str(clu.path.resolve()), "stage": "cluster", "fingerprint": clu.manifest.fingerprint},
              "targets": described, "target_fingerprint": _hist_key(target), "budget": counter.describe()}
    run = StageRun(Path(out_dir), "resample", config={**asdict(cfg), "weighting": weighting_name},
                   inputs=inputs, overwrite=overwrite).begin()
    if not counter.in_tables:
        with _progress(progress, len(names), "counting tokens" if cfg.budget_tokenizer else "reading lengths") as b:
            counter.prepare(run, names, b)
    else:
        counter.prepare(run, names)

    doc_log_w = None
    if cfg.method == "ngram":
        doc_log_w = _ngram_log_weights(run, cfg, targets, corpus, corpus_shards, shard_tables, names, windowed,
                                       progress)
    elif cfg.method == "classifier":
        doc_log_w = _classifier_log_weights(cfg, targets, emb, names)
    plan = _plan(cfg_eff, weights, generic, shard_leaves, shard_sizes, doc_log_w)
    total_rows = int(plan.draws.sum())
    n_out = max(1, math.ceil(total_rows / cfg.rows_per_shard))

    bar = _progress(progress, len(names) + n_out, "resample")

    def route_done(key: str, result: tuple[str, dict[str, int]]) -> None:
        name = key[len("route-"):]
        commit_once(run, key, {f"_spill/{name}.arrow": Path(result[0])}, stats=result[1], intermediate=True)
        bar.update(1)

    for name in names:  # spill files are not fsynced: after a machine crash, redo any that is damaged
        key = f"route-{name}"
        if run.is_done(key) and not _spill_ok(run.out_dir / "_spill" / f"{name}.arrow", n_out,
                                                run.shard_record(key)["stats"]["rows"]):
            logger.warning("spill file of input shard %s is damaged; recomputing it", name)
            run.forget(key)
    route = [(s, name) for s, name in enumerate(names) if not run.is_done(f"route-{name}")]
    bar.update(len(names) - len(route))
    if ex.engine == "ray" and route:
        tasks = [(f"route-{name}", (cfg_eff, Shared("plan"), s, name, corpus, corpus_shards[name],
                                    Shared("tables"), shard_leaves[s], counter[name], Shared("weights"),
                                    None if doc_log_w is None else doc_log_w[s], windowed, n_out,
                                    str(run.out_dir / "_spill" / f"{name}.arrow"), True))
                 for s, name in route]
        run_ray(ex, _route_shard, tasks, route_done,
                shared={"plan": plan, "weights": weights, "tables": shard_tables})
    else:
        _in_threads(route_done, [(f"route-{name}", lambda s=s, name=name: _route_shard(
            cfg_eff, plan, s, name, corpus, corpus_shards[name], shard_tables, shard_leaves[s], counter[name],
            weights, None if doc_log_w is None else doc_log_w[s], windowed, n_out,
            str(run.tmp_path(f"_spill/{name}.arrow")), False)) for s, name in route])
    # the histogram plot (~0.7 s of CPU, mostly importing matplotlib) is drawn on a thread during the
    # gathering pass, which leaves a core idle (Arrow takes and writes; the routing pass uses both)
    plot = _in_background(_plot, run.out_dir / "histograms.png", target, generic, plan)
    unique = sum(run.shard_record(f"route-{name}")["stats"]["unique"] for name in names)
    spills = [str(run.out_dir / "_spill" / f"{n}.arrow") for n in names]

    def write_done(key: str, result: tuple[str, int]) -> None:
        name = _data_name(int(key[len("write-"):]), n_out, cfg.format)
        commit_once(run, key, {name: Path(result[0])}, rows={name: result[1]})
        bar.update(1)

    write = [b for b in range(n_out) if not run.is_done(f"write-{b:05d}")]
    bar.update(n_out - len(write))
    if ex.engine == "ray" and write:
        tasks = [(f"write-{b:05d}", (spills, b, cfg.seed, cfg.format,
                                     str(run.out_dir / _data_name(b, n_out, cfg.format)), True))
                 for b in write]
        run_ray(ex, _gather_shard, tasks, write_done)
    else:  # one output shard gathered at a time: each holds up to rows_per_shard rows (threads would
        # double that); its commit (fsync, checksum) runs on a thread while the next one is gathered
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as committer:
            pending = None
            for b in write:
                if pending is not None and pending.done():
                    pending.result()  # a failed commit stops the run before the next shard is gathered
                tmp = str(run.tmp_path(_data_name(b, n_out, cfg.format)))
                result = _gather_shard(spills, b, cfg.seed, cfg.format, tmp, False)
                if pending is not None:
                    pending.result()
                pending = committer.submit(write_done, f"write-{b:05d}", result)
            if pending is not None:
                pending.result()
    bar.close()

    selected = {key: int(sum(run.shard_record(f"route-{name}")["stats"][key] for name in names))
                for key in ("tokens", "chars", "bytes")}
    stats = _diagnostics(target, generic, plan, weights, total_rows, unique, selected["tokens"])
    stats.update({"characters": selected["chars"], "bytes": selected["bytes"],
                  "budget": {"unit": unit, "amount": cfg.budget[1], **counter.describe()},
                  "output_shards": n_out, "targets": described, "weighting": weighting_name,
                  "method": cfg.method, "scheme": cfg_eff.scheme})
    extra = _write_extras(run, cfg, stats, target, generic, plan, emb, clu, command, n_out, corpus, shard_tables,
                          names, shard_leaves, plot)
    manifest = run.finish(stats=stats, extra_files=extra)
    return Selection(run.out_dir, manifest)


def _in_background(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on a daemon thread; -> a Future."""
    import threading
    from concurrent.futures import Future

    fut: Future = Future()

    def work() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the result
            fut.set_exception(e)

    threading.Thread(target=work, daemon=True, name="impsamp-plot").start()
    return fut


def _in_threads(done: Callable[[str, Any], None], jobs: list[tuple[str, Callable[[], Any]]]) -> None:
    """Run `jobs` (key, thunk) on a few threads (Arrow reads, takes and writes release the GIL), each
    followed by `done(key, result)` on the same thread (jobs have distinct keys, so their commits are
    independent). Every job's output depends only on its key, so the bytes do not depend on the
    order; at most `threads` shards are in memory at once."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from ..embedding import cpu_count

    threads = max(1, min(len(jobs), cpu_count(), 4))
    if threads == 1:
        for key, job in jobs:
            done(key, job())
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: set[Any] = set()
        try:
            for key, job in jobs:
                # the commit (fsync, checksum) runs on the worker thread too, overlapping the others' reads
                pending.add(pool.submit(lambda key=key, job=job: done(key, job())))
                if len(pending) >= threads:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        f.result()
            for f in pending:
                f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def _route_shard(cfg: ResampleConfig, plan: Plan, s: int, name: str, corpus, corpus_shard, tables,
                 leaves: np.ndarray, sizes: UnitSizes, weights: np.ndarray, doc_log_w: np.ndarray | None,
                 windowed: bool, n_out: int, path: str, own_tmp: bool) -> tuple[str, dict[str, int]]:
    """Pass 1 for input shard `s` (embedding shard `name`, its unit table read from `tables` here):
    its selected rows, routed to output shards, in a spill file at `path` (or, with `own_tmp`, at
    this process's temp name of `path`: a Ray task); -> (file, stats)."""
    reps = _unit_repeats(cfg, plan, s, leaves)
    unit_w = weights[leaves] if doc_log_w is None else np.exp(np.clip(doc_log_w, -80, 80))
    table = tables[name]
    rows = _selected_rows(corpus, corpus_shard, table, reps, leaves, unit_w, windowed)
    buckets = _shard_rng(cfg.seed, s, _ROUTE).integers(n_out, size=rows.num_rows)
    tmp = tmp_name(Path(path)) if own_tmp else Path(path)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _write_spill(tmp, rows, buckets, n_out)
    return str(tmp), {"unique": int((reps > 0).sum()), "rows": rows.num_rows, **sizes.totals(reps)}


def _gather_shard(spills: Sequence[str], b: int, seed: int, fmt: str, path: str, own_tmp: bool
                  ) -> tuple[str, int]:
    """Pass 2 for output shard `b`: its rows from every spill file, shuffled, written at `path` (or its
    temp name in this process, with `own_tmp`); -> (file, rows)."""
    parts = []
    for p in spills:
        with pa.memory_map(p) as src:
            batch = pa.ipc.open_file(src).get_batch(b)
            if batch.num_rows:
                parts.append(pa.Table.from_batches([batch]))
    rows = pa.concat_tables(parts) if parts else SELECTION_SCHEMA.empty_table()
    if rows.nbytes < COMBINE_BYTES:  # random `take` from one chunk per column is ~3x faster than from many
        rows = rows.combine_chunks()
    perm = _shard_rng(seed, b, _SHUFFLE).permutation(rows.num_rows)
    tmp = tmp_name(Path(path)) if own_tmp else Path(path)
    _write_output_shard(tmp, rows, fmt, perm)
    return str(tmp), rows.num_rows


def command_line() -> str:
    return "impsamp " + " ".join(shlex.quote(a) for a in sys.argv[1:])

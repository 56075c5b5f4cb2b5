"""The `cluster` stage: fit on a sample (committed once), then assign every shard (resumable, Ray or local)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._deps import require
from ..config import as_config
from ..errors import StageError
from ..guards import claim, hold_inputs, released_on_return
from ..manifest import StageRun, inside, sha256_file, tmp_name
from ..progress import progress_bar
from ..scale import (LOCAL, Execution, Shared, SliceResult, check_complete, commit_once, run_tasks,
                     slice_result)
from .checks import (check_embeddings, check_sizes, check_table_rows, check_vectors, embedding_model_name,
                     load_embeddings)
from .config import BATCH_ROWS, FIT_RECORD, ClusterConfig
from .kmeans import sample_rows, use_gpu
from .result import Clusters
from .tree import Tree, fit_tree, read_tree, tree_files

if TYPE_CHECKING:
    from ..embedding import Embeddings

logger = logging.getLogger(__name__)


@released_on_return
def cluster(embeddings: Embeddings | str | Path, out_dir: str | Path, config: ClusterConfig | None = None, *,
            overwrite: bool = False, progress: bool = False,
            execution: Execution | None = None) -> Clusters | SliceResult:
    """Fit k-means (flat or hierarchical) on a sample of `embeddings`, then assign every vector.

    Args:
        embeddings: an `impsamp embed` output (handle or path).
        out_dir: the output directory; an interrupted run with the same inputs and config resumes.
        config: see `ClusterConfig`.
        overwrite: replace a complete output.
        progress: show progress bars.
        execution: where the assignment shards run (`impsamp.scale.Execution`): Ray tasks, or one
            slice of a Slurm array. Every slice needs the same centroids: the first slice to get
            there fits them (seeded: the same bytes in every slice) and commits them as the 'fit'
            record; a slice that finds the fit committed reuses it, and one that fitted while another
            committed first checks that both fits are byte-identical (refusing otherwise).

    Returns:
        The `Clusters` handle of the finished directory (a `SliceResult` for a slice).

    Raises:
        StageError: the embeddings are incomplete, damaged, not normalised, or the output exists.
        ConfigError: k or levels do not fit the number of vectors.
    """
    cfg = as_config(ClusterConfig, config) or ClusterConfig()
    ex = execution or LOCAL
    out_dir = Path(out_dir)
    emb = load_embeddings(embeddings)
    hold_inputs(emb.path)  # an --overwrite of the embeddings is refused while this run reads them
    emb = load_embeddings(emb.path)  # as they are, now that no one may replace them
    shards = check_embeddings(emb)
    n = sum(rows for _, rows in shards)
    size = check_sizes(cfg, n, Path(emb.path))
    gpu = use_gpu(cfg.device)
    inputs = {"embeddings": {"path": str(Path(emb.path).resolve()), "stage": "embed",
                             "fingerprint": emb.manifest.fingerprint, "model": embedding_model_name(emb)}}
    run = StageRun(out_dir, "cluster", config=asdict(cfg), inputs=inputs, overwrite=overwrite,
                   slice_name=ex.slice_name).begin()
    if ex.require_complete:
        check_complete(run, [FIT_RECORD] + [name for name, _ in shards])
    with run.discarded_on_error(enabled=not ex.sliced):  # bad vectors found by this run: nothing left behind
        tree, fit_stats, fitted = _fit_stage(run, emb, shards, cfg, size, gpu, progress)
        if ex.sliced:
            committed = fitted + _assign_stage(run, emb, shards, tree, gpu, progress, ex)[2]
            return slice_result(run, ex, committed, [FIT_RECORD] + [name for name, _ in shards])
        seconds_assign, score_sum, _ = _assign_stage(run, emb, shards, tree, gpu, progress, ex)
        counts_tmp, level_stats = _write_counts(run, emb, shards, tree)
    stats = {"dim": int(emb.dim), "rows": n, "sample_points": size, **fit_stats, "objective": score_sum / n,
             "seconds_assign": seconds_assign, "device": "gpu" if gpu else "cpu",
             "shards": [{"name": name, "rows": rows} for name, rows in shards]}
    run.finish({**stats, **_shape_stats(tree, level_stats, cfg.spherical)}, extra_files={"counts.parquet": counts_tmp})
    return Clusters.load(out_dir)


def _shape_stats(tree: Tree, level_stats: list[dict[str, Any]], spherical: bool) -> dict[str, Any]:
    leaf = level_stats[-1]
    return {"n_leaves": len(tree.centroids[-1]), "levels": [len(c) for c in tree.centroids],
            "n_levels": tree.n_levels, "imbalance": leaf["imbalance"], "empty_clusters": leaf["empty"],
            "level_stats": level_stats,
            "objective_kind": ("mean cosine similarity of every vector to its leaf centroid (higher is better)"
                               if spherical else "mean squared L2 distance to the leaf centroid (lower is better)")}


def _fit_stage(run: StageRun, emb: Embeddings, shards: list[tuple[str, int]], cfg: ClusterConfig, size: int,
               gpu: bool, progress: bool) -> tuple[Tree, dict[str, Any], bool]:
    """Fit once and commit the centroids as the 'fit' record; a resumed run reloads them, and so do the slices
    started beside the one that fits: they wait on its claim (`guards.claim`) rather than fit too. Returns the
    tree, the fit's stats and whether this run committed it."""
    with claim(run.out_dir, FIT_RECORD):
        if run.is_done(FIT_RECORD):
            logger.info("the fit is already committed: reusing it")
            return (*_committed_fit(run, cfg), False)
        t0 = time.perf_counter()
        rows = sample_rows(sum(r for _, r in shards), size, cfg.seed)
        x = _gather(emb, shards, rows)
        tree, info = fit_tree(x, cfg, gpu, progress)
        del x
        info["seconds_fit"] = round(time.perf_counter() - t0, 3)
        files = {}
        for name, arr in tree_files(tree, hierarchical=cfg.levels is not None):
            files[name] = tmp = run.tmp_path(name)
            _save_npy(tmp, arr)
        if run.is_done(FIT_RECORD):  # committed meanwhile by a slice on a filesystem without locks
            ours = {name: sha256_file(tmp) for name, tmp in files.items()}
            for tmp in files.values():
                tmp.unlink(missing_ok=True)
            if ours != {ref["path"]: ref["sha256"] for ref in run.shard_record(FIT_RECORD)["files"]}:
                raise StageError(f"{run.out_dir}: this slice fitted other centroids than the slice that "
                                 "committed the fit first (the k-means fit is not bit-reproducible here, e.g. on "
                                 "GPU); run --shard-index 0 alone first, then the other slices reuse its fit")
            return (*_committed_fit(run, cfg), False)
        run.commit_shard(FIT_RECORD, files, stats={"n_levels": tree.n_levels, "fit": info})
        return tree, info, True


def _committed_fit(run: StageRun, cfg: ClusterConfig) -> tuple[Tree, dict[str, Any]]:
    record = run.shard_record(FIT_RECORD)
    return read_tree(run.out_dir, record["stats"]["n_levels"], cfg.spherical), record["stats"]["fit"]


def _gather(emb: Embeddings, shards: list[tuple[str, int]], rows: np.ndarray) -> np.ndarray:
    """Rows (sorted global indices) of the concatenated shards as one checked (len(rows), d) float32 array."""
    out = np.empty((len(rows), emb.dim), dtype=np.float32)
    start = filled = 0
    for name, n_i in shards:
        lo, hi = np.searchsorted(rows, [start, start + n_i])
        vectors, local = emb.shard_vectors(name), rows[lo:hi] - start
        for a in range(0, n_i, BATCH_ROWS):  # contiguous reads (one batch of rows at a time), then pick
            i, j = np.searchsorted(local, [a, a + BATCH_ROWS])
            if j > i:
                block = out[filled:filled + j - i]
                block[:] = np.asarray(vectors[a:a + BATCH_ROWS])[local[i:j] - a]
                check_vectors(block, f"{emb.path}: shard {name},", local[i:j])  # fail before a long fit
                filled += j - i
        start += n_i
    return out


def _assign_shard(emb: Embeddings, name: str, n_i: int, tree: Tree, gpu: bool, path: str) -> tuple[str, float]:
    """Assign one embedding shard, writing its ids at this process's temp name of `path` (committed by
    the caller; a retried Ray task never collides with another attempt). Returns (file, sum of scores)."""
    vectors = emb.shard_vectors(name)
    ids = np.empty((n_i, tree.n_levels), dtype=np.int32)
    score_sum = 0.0
    for lo in range(0, n_i, BATCH_ROWS):
        x = np.asarray(vectors[lo:lo + BATCH_ROWS], dtype=np.float32)
        check_vectors(x, f"{emb.path}: shard {name},", lo)
        ids[lo:lo + len(x)], score = tree.descend(x, gpu=gpu)
        score_sum += float(score.sum(dtype=np.float64))
    tmp = tmp_name(Path(path))
    _save_npy(tmp, ids)
    return str(tmp), score_sum


def _assign_stage(run: StageRun, emb: Embeddings, shards: list[tuple[str, int]], tree: Tree, gpu: bool,
                  progress: bool, ex: Execution = LOCAL) -> tuple[float, float, int]:
    """Assign every shard of this run (skipping committed ones); returns (seconds of this pass, sum of
    scores over all shards (nan for a slice), shards committed now)."""
    t0 = time.perf_counter()
    todo = [(i, name, n_i) for i, (name, n_i) in enumerate(shards) if not run.is_done(name) and ex.mine(i)]
    committed = 0

    def commit(name: str, result: tuple[str, float]) -> None:
        nonlocal committed
        tmp, score_sum = result
        n_i = dict(shards)[name]
        committed += commit_once(run, name, {f"assign-{name}.npy": Path(tmp)}, stats={"score_sum": score_sum},
                                 rows={f"assign-{name}.npy": n_i})

    tasks = [(name, (Shared("emb"), name, n_i, Shared("tree"), gpu, str(inside(run.out_dir, f"assign-{name}.npy"))))
             for _, name, n_i in todo]
    with progress_bar(progress, "assign", "shard", total=len(tasks), leave=False) as bar:
        run_tasks(ex, _assign_shard, tasks, lambda name, result: (commit(name, result), bar.update(1)),
                  shared={"emb": emb, "tree": tree}, num_gpus=ex.gpus_per_worker if gpu else 0)
    seconds = time.perf_counter() - t0
    if ex.sliced:
        return round(seconds, 3), float("nan"), committed
    score_sum = sum(run.shard_record(name)["stats"]["score_sum"] for name, _ in shards)
    return round(seconds, 3), score_sum, committed


def _write_counts(run: StageRun, emb: Embeddings, shards: list[tuple[str, int]], tree: Tree
                  ) -> tuple[Path, list[dict[str, Any]]]:
    """counts.parquet (one row per node of every level) and per-level balance statistics."""
    pa = require("pyarrow")
    pq = require("pyarrow.parquet")
    sizes = [len(c) for c in tree.centroids]
    docs = [np.zeros(s, dtype=np.int64) for s in sizes]
    tokens = [np.zeros(s, dtype=np.int64) for s in sizes]
    for name, n_i in shards:
        ids = np.load(run.out_dir / f"assign-{name}.npy", mmap_mode="r")
        tok = _shard_tokens(emb, name, n_i)
        for j in range(tree.n_levels):
            col = np.asarray(ids[:, j], dtype=np.int64)
            docs[j] += np.bincount(col, minlength=sizes[j])
            tokens[j] += np.bincount(col, weights=tok, minlength=sizes[j]).round().astype(np.int64)
    table = pa.table({
        "level": np.concatenate([np.full(s, j, dtype=np.int32) for j, s in enumerate(sizes)]),
        "node": np.concatenate([np.arange(s, dtype=np.int32) for s in sizes]),
        "parent": np.concatenate(tree.parents).astype(np.int32),
        "documents": np.concatenate(docs), "tokens": np.concatenate(tokens),
    })
    tmp = run.tmp_path("counts.parquet")
    pq.write_table(table, tmp)
    stats = [{"nodes": s, "imbalance": float(d.max() / d.mean()), "empty": int((d == 0).sum())}
             for s, d in zip(sizes, docs, strict=True)]
    return tmp, stats


def _shard_tokens(emb: Embeddings, name: str, n_i: int) -> np.ndarray:
    """Tokens of each unit's whole text (`text_tokens`); older tables have only the embedded span's."""
    have = emb.shard_columns(name)  # an older or foreign table may lack the columns
    column = next((c for c in ("text_tokens", "tokens") if c in have), None)
    table = emb.shard_table(name, columns=[column] if column else [])
    check_table_rows(emb, name, n_i, table.num_rows)
    if column is None:
        return np.zeros(n_i, dtype=np.float64)
    return table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to the temp name
        np.save(f, np.ascontiguousarray(arr))

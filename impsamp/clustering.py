"""Cluster an `embed` output with faiss k-means, flat or hierarchical (CRISP), fitted once on a sample.

    impsamp cluster runs/emb --out runs/clusters --k 1024           # flat spherical k-means
    impsamp cluster runs/emb --out runs/clusters --levels 32,32     # 2-level tree, up to 1,024 leaves

    clusters = impsamp.cluster("runs/emb", "runs/clusters", ClusterConfig(levels=(32, 32)))
    ids = clusters.assign(target_vectors)        # (n, n_levels) int32; leaf id = ids[:, -1]

The fit uses a seeded sample of the vectors (held in memory); then every vector of every embedding
shard is assigned in a streaming pass (bounded memory, one committed file per shard, resumable).

Output directory (the `cluster` stage contract):

    centroids.npy               (n_leaves, d) float32 leaf centroids (flat: the k centroids)
    centroids-level{j}.npy      (n_j, d) float32 node centroids of level j (hierarchy only; level 0 = top)
    parents-level{j}.npy        (n_j,) int32 parent (a level j-1 node) of each level-j node (hierarchy, j>=1)
    assign-{shard}.npy          (n_i, n_levels) int32 per embedding shard, row-aligned with it;
                                column j = node id at level j, last column = leaf id
    counts.parquet              one row per node of every level: level, node, parent (-1 at level 0),
                                documents (embedding rows), tokens (sum of the rows' `tokens`)
    manifest.json               config, inputs (embeddings path + fingerprint + model), stats

Hierarchy: the children of a node are fitted on the sample points that the node holds under the
same descent rule `Clusters.assign` uses, so generic and target vectors are assigned identically.
A node with fewer sample points than its level's k gets min(k, points) children (a single child,
copying the node's centroid, when it holds at most one point); node ids stay dense 0..n_j-1 and
the children of a node are contiguous, in the order of their parents.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._deps import require
from .errors import ConfigError, ImpsampError, StageError
from .manifest import Manifest, StageRun, read_manifest, sha256_file
from .scale import LOCAL, Execution, Shared, SliceResult, check_complete, commit_once, run_ray, slice_result

if TYPE_CHECKING:
    from .embedding import Embeddings

logger = logging.getLogger(__name__)

__all__ = ["ClusterConfig", "Clusters", "cluster", "fit_kmeans", "sample_rows"]

BATCH_ROWS = 65_536
"""Rows per faiss search call in the streaming assignment pass."""
NORM_TOLERANCE = 1e-2
"""|norm - 1| allowed for a stored (float16) L2-normalised vector."""
FIT_RECORD = "fit"
"""Name of the shard record that holds the fitted centroids, committed before any assignment."""
SLOW_SHARDS_ENV = "IMPSAMP_TEST_SLOW_SHARD"  # read by StageRun.commit_shard
"""Test-only hook (shared with `embed`): seconds to sleep after each committed shard, so a test can
kill a run in the middle. Never set it otherwise."""
DEVICES = ("auto", "cpu", "gpu")


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ClusterConfig:
    """k-means over L2-normalised sentence embeddings (faiss), flat or hierarchical."""

    k: int = 1024
    """Number of clusters of a flat clustering (ignored when `levels` is set)."""
    levels: tuple[int, ...] | None = None
    """Children per node at each level of a hierarchy, e.g. (32, 32): at most their product leaves."""
    niter: int = 20
    """Lloyd iterations of every k-means fit."""
    seed: int = 0
    """Seed of the training sample and of faiss's initialisation."""
    sample: int | None = None
    """Vectors drawn to fit on [default: n_leaves * max_points_per_centroid, at most all]."""
    max_points_per_centroid: int = 256
    """faiss fits k centroids on at most k * this many points (subsampled); the manifest records the count."""
    spherical: bool = True
    """Cosine geometry: inner-product assignment and unit-norm centroids (for L2-normalised vectors)."""
    device: str = "auto"
    """'auto' (faiss GPU when a GPU and a GPU faiss build are present), 'cpu' or 'gpu'."""

    def __post_init__(self) -> None:
        if self.levels is not None:
            levels = self.levels
            if isinstance(levels, str):
                levels = [p for p in levels.replace(" ", "").split(",") if p]
            try:
                levels = tuple(_as_int(v) for v in levels)
            except (TypeError, ValueError):
                raise ConfigError(f"--levels must be integers like 32,32, got {self.levels!r}") from None
            if not levels or any(v < 2 for v in levels):
                raise ConfigError(f"--levels needs integers >= 2 (e.g. 32,32), got {list(levels)}")
            object.__setattr__(self, "levels", levels)
        _check_int("--k", self.k, minimum=2)
        _check_int("--niter", self.niter, minimum=1)
        _check_int("--seed", self.seed, minimum=0, maximum=2**31 - 1)
        _check_int("--max-points-per-centroid", self.max_points_per_centroid, minimum=1)
        if self.sample is not None:
            _check_int("--sample", self.sample, minimum=1)
        if not isinstance(self.spherical, bool):
            raise ConfigError(f"spherical must be true or false, got {self.spherical!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    @property
    def branching(self) -> tuple[int, ...]:
        """Children per node at each level; a flat clustering is one level of k."""
        return self.levels if self.levels is not None else (self.k,)

    @property
    def max_leaves(self) -> int:
        return math.prod(self.branching)


def _as_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, str)):
        raise TypeError(v)
    return int(v)


def _check_int(flag: str, value: Any, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{flag} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigError(f"{flag} must be {bound}, got {value}")


# ----------------------------------------------------------------------------- faiss primitives


_GPU_RESOURCES: Any = None


def _use_gpu(device: str) -> bool:
    """Resolve `device` against the faiss build and the visible GPUs."""
    if device == "cpu":
        return False
    faiss = require("faiss")
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "gpu" and n_gpus == 0:
        raise ConfigError("--device gpu: this faiss build sees no GPU (faiss.get_num_gpus() == 0); install "
                          "faiss-gpu on a machine with a GPU, or use --device cpu")
    return n_gpus > 0


def _flat_index(d: int, spherical: bool, gpu: bool = False) -> Any:
    global _GPU_RESOURCES
    faiss = require("faiss")
    if gpu:
        if _GPU_RESOURCES is None:
            _GPU_RESOURCES = faiss.StandardGpuResources()
        return (faiss.GpuIndexFlatIP if spherical else faiss.GpuIndexFlatL2)(_GPU_RESOURCES, d)
    return faiss.IndexFlatIP(d) if spherical else faiss.IndexFlatL2(d)


def _nearest(x: np.ndarray, centroids: np.ndarray, *, spherical: bool, gpu: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row: (n,) int64 ids and (n,) float32 scores (similarity or squared L2)."""
    if len(centroids) == 1:  # a single child: no search needed
        c = centroids[0]
        score = x @ c if spherical else np.sum((x - c) ** 2, axis=1)
        return np.zeros(len(x), dtype=np.int64), score.astype(np.float32)
    index = _flat_index(centroids.shape[1], spherical, gpu)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    with _omp_threads(1 if _is_small(len(x), len(centroids), centroids.shape[1]) else None):
        score, ids = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return ids[:, 0], score[:, 0]


SMALL_WORK = 1 << 26
"""n * k * d below which a faiss call runs on one OpenMP thread: thread start-up and spin-waits cost
more than they save there (on a busy 2-core machine a 2-thread fit of 3,000 x 32 was 12x slower)."""


def _is_small(n: int, k: int, d: int) -> bool:
    return n * k * d < SMALL_WORK


@contextlib.contextmanager
def _omp_threads(n: int | None) -> Iterator[None]:
    """Run faiss with `n` OpenMP threads in this thread (None: leave as is). Results do not depend on it."""
    if n is None:
        yield
        return
    faiss = require("faiss")
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def _n_workers() -> int:
    """Threads for many small independent faiss calls (faiss releases the GIL), one OpenMP thread each."""
    return max(1, require("faiss").omp_get_max_threads())


def _map_small(fn: Any, items: Sequence[Any]) -> list[Any]:
    """`[fn(item) for item in items]`, run on a thread pool with one OpenMP thread per call, in order."""
    if len(items) <= 1 or _n_workers() == 1:
        with _omp_threads(1):
            return [fn(item) for item in items]

    def one(item: Any) -> Any:
        require("faiss").omp_set_num_threads(1)  # this pool thread's own OpenMP setting
        return fn(item)

    with ThreadPoolExecutor(max_workers=_n_workers()) as pool:
        return list(pool.map(one, items))


def fit_kmeans(x: np.ndarray, k: int, *, niter: int = 20, seed: int = 0, spherical: bool = True,
               gpu: bool = False) -> tuple[np.ndarray, float]:
    """Fit k centroids on all of `x` with faiss (no further subsampling).

    This is `faiss.Kmeans(d, k, niter=niter, spherical=spherical, seed=seed).train(x)` with faiss's
    point cap lifted to len(x) and its "too few points" warning silenced (callers choose the sample).

    Args:
        x: (n, d) float32 training points, n >= k.

    Returns:
        (k, d) float32 centroids and faiss's final objective (sum of similarities, or of squared
        distances when not spherical).
    """
    faiss = require("faiss")
    n, d = x.shape
    assert n >= k >= 1, (n, k)
    if k == 1:
        c = x.mean(axis=0, dtype=np.float64)
        if spherical:
            c /= max(np.linalg.norm(c), 1e-12)
        c = c.astype(np.float32)[None]
        _, score = _nearest(x, c, spherical=spherical)
        return c, float(score.sum(dtype=np.float64))
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=spherical, gpu=gpu,
                      max_points_per_centroid=max(256, -(-n // k)), min_points_per_centroid=1)
    with _omp_threads(1 if not gpu and _is_small(n, k, d) else None):
        obj = km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32), float(obj)


def sample_rows(n: int, size: int, seed: int, *, salt: Sequence[int] = ()) -> np.ndarray:
    """`size` distinct row indices out of `n`, sorted, drawn with a seeded generator (all when size >= n)."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([seed, *salt])
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


# ----------------------------------------------------------------------------- the tree


@dataclass
class _Tree:
    """Fitted centroids per level and each node's parent; the descent rule lives here."""

    centroids: list[np.ndarray]   # level j: (n_j, d) float32
    parents: list[np.ndarray]     # level j: (n_j,) int32; level 0: all -1
    spherical: bool

    @property
    def n_levels(self) -> int:
        return len(self.centroids)

    def child_starts(self, j: int) -> np.ndarray:
        """(n_{j-1} + 1,) offsets: the children of node p of level j-1 are [starts[p], starts[p+1])."""
        return np.searchsorted(self.parents[j], np.arange(len(self.centroids[j - 1]) + 1)).astype(np.int64)

    def descend(self, x: np.ndarray, *, gpu: bool = False, levels: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Assign rows of x level by level: (n, levels) int32 ids, (n,) float32 scores at the last level."""
        levels = self.n_levels if levels is None else levels
        ids = np.empty((len(x), levels), dtype=np.int32)
        top, score = _nearest(x, self.centroids[0], spherical=self.spherical, gpu=gpu)
        ids[:, 0] = top
        for j in range(1, levels):
            ids[:, j], score = self._descend_level(x, ids[:, j - 1], j)
        return ids, score

    def _descend_level(self, x: np.ndarray, parent: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
        starts = self.child_starts(j)
        out = np.empty(len(x), dtype=np.int32)
        score = np.empty(len(x), dtype=np.float32)
        order = np.argsort(parent, kind="stable")
        bounds = np.searchsorted(parent[order], np.arange(len(starts)))
        groups = [(starts[p], starts[p + 1], order[bounds[p]:bounds[p + 1]])
                  for p in np.flatnonzero(np.diff(bounds))]          # parents that hold rows

        def nearest_child(group: tuple[int, int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            lo, hi, rows = group
            return _nearest(x[rows], self.centroids[j][lo:hi], spherical=self.spherical)

        for (lo, _, rows), (local, s) in zip(groups, _map_small(nearest_child, groups), strict=True):
            out[rows] = lo + local
            score[rows] = s
        return out, score


def _fit_tree(x: np.ndarray, cfg: ClusterConfig, gpu: bool, progress: bool) -> tuple[_Tree, dict[str, Any]]:
    """Fit every level on the sample `x` (S, d) float32; children on their parent's points."""
    mppc = cfg.max_points_per_centroid
    k0 = cfg.branching[0]
    sub = sample_rows(len(x), k0 * mppc, cfg.seed, salt=(0,))  # faiss's cap, applied here, seeded
    c0, train_obj = fit_kmeans(x[sub], k0, niter=cfg.niter, seed=cfg.seed, spherical=cfg.spherical, gpu=gpu)
    tree = _Tree([c0], [np.full(k0, -1, dtype=np.int32)], cfg.spherical)
    used = [len(sub)]
    small_nodes = 0
    for j, k in enumerate(cfg.branching[1:], start=1):
        parent_of = tree.descend(x, gpu=gpu)[0][:, -1]       # the sample's nodes at level j-1
        order = np.argsort(parent_of, kind="stable")
        bounds = np.searchsorted(parent_of[order], np.arange(len(tree.centroids[-1]) + 1))
        members = [order[bounds[p]:bounds[p + 1]] for p in range(len(tree.centroids[-1]))]

        def fit_children(p: int, k: int = k, j: int = j, members: list = members) -> tuple[np.ndarray, int]:
            pts = x[members[p]]                               # members are sorted: a stable order
            n_children = min(k, len(pts))
            if n_children <= 1:                               # 0 or 1 point: one child, the node itself
                return (pts if len(pts) == 1 else tree.centroids[-1][p:p + 1]), 0
            pick = sample_rows(len(pts), k * mppc, cfg.seed, salt=(j, p))
            c, _ = fit_kmeans(pts[pick], n_children, niter=cfg.niter, seed=cfg.seed, spherical=cfg.spherical,
                              gpu=gpu)
            return c, len(pick)

        nodes = list(range(len(tree.centroids[-1])))
        if gpu:
            fitted = [fit_children(p) for p in _progress(nodes, progress, f"fit level {j}")]
        else:
            logger.info("fitting %d node(s) of level %d", len(nodes), j)
            fitted = _map_small(fit_children, nodes)
        centroids = [np.asarray(c, dtype=np.float32) for c, _ in fitted]
        small_nodes += sum(len(c) < k for c in centroids)
        tree.centroids.append(np.concatenate(centroids))
        tree.parents.append(np.concatenate([np.full(len(c), p, dtype=np.int32)
                                            for p, c in enumerate(centroids)]))
        used.append(sum(n for _, n in fitted))
    if small_nodes:
        logger.warning("%d node(s) held fewer sample points than their level's k and got fewer children; "
                       "raise --sample for a fuller tree", small_nodes)
    info = {"train_points": int(len(x)) if cfg.levels else used[0], "train_points_per_level": used,
            "train_objective": train_obj if cfg.levels is None else None, "small_nodes": small_nodes}
    return tree, info


# ----------------------------------------------------------------------------- checks


def _check_vectors(x: np.ndarray, where: str, rows: np.ndarray | int = 0) -> None:
    """Refuse NaN/inf or rows that are not L2-normalised (float16 storage allows ~1e-3 of error).

    `rows` names the rows of x in messages: an offset, or one row number per row of x.
    """
    norm2 = np.einsum("ij,ij->i", x, x, dtype=np.float32)
    bad = ~np.isfinite(norm2)
    off = np.abs(np.sqrt(norm2) - 1.0) > NORM_TOLERANCE
    if not (bad.any() or off.any()):
        return
    i = int(np.flatnonzero(bad if bad.any() else off)[0])
    row = int(rows[i]) if isinstance(rows, np.ndarray) else rows + i
    if bad.any():
        raise StageError(f"{where} row {row} holds NaN or infinite values ({int(bad.sum())} such row(s) in "
                         "this batch); the embeddings are damaged: rerun `impsamp embed` with --overwrite")
    raise StageError(f"{where} row {row} has L2 norm {math.sqrt(float(norm2[i])):.4g}, not 1 "
                     f"({int(off.sum())} such row(s) in this batch); clustering needs L2-normalised vectors "
                     "as `impsamp embed` writes them")


def _load_embeddings(embeddings: Embeddings | str | Path) -> Embeddings:
    from .embedding import Embeddings

    return embeddings if isinstance(embeddings, Embeddings) else Embeddings.load(embeddings)


def _model_name(emb: Embeddings) -> str:
    identity = emb.manifest.config.get("model_identity") or {}
    return str(identity.get("name") or emb.manifest.config.get("model", ""))


def _check_embeddings(emb: Embeddings) -> list[tuple[str, int]]:
    """Every shard present, float16 (n_i, dim), row-aligned with its table; returns (name, rows)."""
    listed = {s["name"]: int(s["rows"]) for s in emb.manifest.stats.get("shards", [])}
    shards = []
    for name in emb.shard_names:
        try:
            vec = emb.shard_vectors(name)
        except (OSError, ValueError) as e:
            raise StageError(f"{emb.path}: the vectors of shard {name} cannot be read ({e}); the embeddings "
                             "are incomplete or damaged: rerun `impsamp embed` with --overwrite") from e
        if vec.ndim != 2 or vec.shape[1] != emb.dim:
            raise StageError(f"{emb.path}: shard {name} holds vectors of shape {tuple(vec.shape)} but the "
                             f"manifest says dimension {emb.dim}: the directory mixes models or runs; "
                             "rerun `impsamp embed` with --overwrite")
        if name in listed and listed[name] != len(vec):
            raise StageError(f"{emb.path}: shard {name} holds {len(vec):,} vectors, the manifest says "
                             f"{listed[name]:,}; rerun `impsamp embed` with --overwrite")
        _check_table_rows(emb, name, len(vec))
        shards.append((name, len(vec)))
    if not shards or sum(r for _, r in shards) == 0:
        raise StageError(f"{emb.path} holds no vectors; nothing to cluster")
    return shards


def _check_table_rows(emb: Embeddings, name: str, n_i: int, table_rows: int | None = None) -> None:
    """The unit table of a shard is row-aligned with its vectors (from the Parquet footer when not given)."""
    if table_rows is None:
        try:
            table_rows = require("pyarrow.parquet").ParquetFile(Path(emb.path) / f"docs-{name}.parquet"
                                                                ).metadata.num_rows
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid (a damaged footer) is a ValueError
            raise StageError(f"{emb.path}: the table of shard {name} cannot be read ({e}); rerun "
                             "`impsamp embed` with --overwrite") from e
    if table_rows != n_i:
        raise StageError(f"{emb.path}: the table of shard {name} has {table_rows:,} rows but its vectors "
                         f"{n_i:,}; the embeddings are damaged: rerun `impsamp embed` with --overwrite")


def _check_sizes(cfg: ClusterConfig, n: int, emb_path: Path) -> int:
    """Check k / levels / sample against n vectors; return the sample size S."""
    if cfg.levels is None and cfg.k > n:
        raise ConfigError(f"--k {cfg.k:,} is larger than the number of vectors ({n:,}) in {emb_path}; "
                          f"use --k {n:,} or fewer")
    if cfg.levels is not None and cfg.max_leaves > n:
        raise ConfigError(f"--levels {','.join(map(str, cfg.levels))} asks for up to {cfg.max_leaves:,} "
                          f"leaves but {emb_path} holds only {n:,} vectors; use fewer or smaller levels")
    cap = cfg.max_leaves * cfg.max_points_per_centroid
    size = min(n, cfg.sample if cfg.sample is not None else cap)
    if cfg.levels is None and cfg.sample is not None and cfg.sample > cap:
        logger.warning("--sample %d: faiss fits %d centroids on at most k * max_points_per_centroid = %d "
                       "points; raise --max-points-per-centroid to use more", cfg.sample, cfg.k, cap)
        size = min(size, cap)
    need = cfg.max_leaves if cfg.levels is not None else cfg.k
    if size < need:
        raise ConfigError(f"--sample {size:,} is smaller than the {need:,} clusters asked for; "
                          f"use --sample {need:,} or more")
    return size


# ----------------------------------------------------------------------------- the stage


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
    cfg = config if config is not None else ClusterConfig()
    ex = execution or LOCAL
    out_dir = Path(out_dir)
    emb = _load_embeddings(embeddings)
    shards = _check_embeddings(emb)
    n = sum(rows for _, rows in shards)
    size = _check_sizes(cfg, n, Path(emb.path))
    gpu = _use_gpu(cfg.device)
    inputs = {"embeddings": {"path": str(Path(emb.path).resolve()), "stage": "embed",
                             "fingerprint": emb.manifest.fingerprint, "model": _model_name(emb)}}
    existed = out_dir.exists()
    # (a slice never cleans up: other slices may be committing into the same directory)
    fresh = not ex.sliced and (not existed or (out_dir.is_dir() and not any(out_dir.iterdir())))
    run = StageRun(out_dir, "cluster", config=asdict(cfg), inputs=inputs, overwrite=overwrite).begin()
    if ex.require_complete:
        check_complete(run, [FIT_RECORD] + [name for name, _ in shards])
    try:
        tree, fit_stats = _fit_stage(run, emb, shards, cfg, size, gpu, progress)
        if ex.sliced:
            committed = _assign_stage(run, emb, shards, tree, gpu, progress, ex)[2]
            return slice_result(run, ex, committed, [FIT_RECORD] + [name for name, _ in shards])
        seconds_assign, score_sum, _ = _assign_stage(run, emb, shards, tree, gpu, progress, ex)
        counts_tmp, level_stats = _write_counts(run, emb, shards, tree)
    except ImpsampError:
        if fresh:  # bad data found by this run: leave nothing behind (an interrupted run stays resumable)
            _remove_run(out_dir, keep_dir=existed)
        raise
    leaf = level_stats[-1]
    stats = {
        "n_leaves": len(tree.centroids[-1]), "levels": [len(c) for c in tree.centroids],
        "n_levels": tree.n_levels, "dim": int(emb.dim), "rows": n, "sample_points": size,
        **fit_stats,
        "objective": score_sum / n,
        "objective_kind": ("mean cosine similarity of every vector to its leaf centroid (higher is better)"
                           if cfg.spherical else
                           "mean squared L2 distance to the leaf centroid (lower is better)"),
        "imbalance": leaf["imbalance"], "empty_clusters": leaf["empty"], "level_stats": level_stats,
        "seconds_assign": seconds_assign, "device": "gpu" if gpu else "cpu",
        "shards": [{"name": name, "rows": rows} for name, rows in shards],
    }
    run.finish(stats, extra_files={"counts.parquet": counts_tmp})
    return Clusters.load(out_dir)


def _remove_run(out_dir: Path, *, keep_dir: bool) -> None:
    if not keep_dir:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    for p in out_dir.iterdir():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _fit_stage(run: StageRun, emb: Embeddings, shards: list[tuple[str, int]], cfg: ClusterConfig, size: int,
               gpu: bool, progress: bool) -> tuple[_Tree, dict[str, Any]]:
    """Fit once and commit the centroids as the 'fit' record; a resumed run reloads them."""
    if run.is_done(FIT_RECORD):
        record = run.shard_record(FIT_RECORD)
        logger.info("resuming: the fit is already committed")
        return _read_tree(run.out_dir, record["stats"]["n_levels"], cfg.spherical), record["stats"]["fit"]
    t0 = time.perf_counter()
    rows = sample_rows(sum(r for _, r in shards), size, cfg.seed)
    x = _gather(emb, shards, rows)
    tree, info = _fit_tree(x, cfg, gpu, progress)
    del x
    info["seconds_fit"] = round(time.perf_counter() - t0, 3)
    files = {}
    for name, arr in _tree_files(tree, hierarchical=cfg.levels is not None):
        files[name] = tmp = run.tmp_path(name)
        _save_npy(tmp, arr)
    if run.is_done(FIT_RECORD):  # a concurrent slice committed its fit while this one was fitting
        record = run.shard_record(FIT_RECORD)
        ours = {name: sha256_file(tmp) for name, tmp in files.items()}
        for tmp in files.values():
            tmp.unlink(missing_ok=True)
        if ours != {ref["path"]: ref["sha256"] for ref in record["files"]}:
            raise StageError(f"{run.out_dir}: this slice fitted other centroids than the slice that "
                             "committed the fit first (the k-means fit is not bit-reproducible here, e.g. on "
                             "GPU); run --shard-index 0 alone first, then the other slices reuse its fit")
        return _read_tree(run.out_dir, record["stats"]["n_levels"], cfg.spherical), record["stats"]["fit"]
    run.commit_shard(FIT_RECORD, files, stats={"n_levels": tree.n_levels, "fit": info})
    return tree, info


def _tree_files(tree: _Tree, hierarchical: bool) -> Iterator[tuple[str, np.ndarray]]:
    yield "centroids.npy", tree.centroids[-1]
    if hierarchical:
        for j in range(tree.n_levels):
            yield f"centroids-level{j}.npy", tree.centroids[j]
            if j:
                yield f"parents-level{j}.npy", tree.parents[j]


def _read_tree(path: Path, n_levels: int, spherical: bool) -> _Tree:
    if n_levels == 1:
        c = np.load(path / "centroids.npy")
        return _Tree([c], [np.full(len(c), -1, dtype=np.int32)], spherical)
    centroids = [np.load(path / f"centroids-level{j}.npy") for j in range(n_levels)]
    parents = [np.full(len(centroids[0]), -1, dtype=np.int32)]
    parents += [np.load(path / f"parents-level{j}.npy") for j in range(1, n_levels)]
    return _Tree(centroids, parents, spherical)


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
                _check_vectors(block, f"{emb.path}: shard {name},", local[i:j])  # fail before a long fit
                filled += j - i
        start += n_i
    return out


def _assign_shard(vectors: np.ndarray, emb_path: str, name: str, n_i: int, tree: _Tree, gpu: bool, tmp: str
                  ) -> tuple[str, float]:
    """Assign one embedding shard, writing its ids to `tmp` (committed by the caller).

    Returns (tmp, sum of scores)."""
    ids = np.empty((n_i, tree.n_levels), dtype=np.int32)
    score_sum = 0.0
    for lo in range(0, n_i, BATCH_ROWS):
        x = np.asarray(vectors[lo:lo + BATCH_ROWS], dtype=np.float32)
        _check_vectors(x, f"{emb_path}: shard {name},", lo)
        ids[lo:lo + len(x)], score = tree.descend(x, gpu=gpu)
        score_sum += float(score.sum(dtype=np.float64))
    _save_npy(Path(tmp), ids)
    return tmp, score_sum


def _ray_assign_shard(emb_path: str, name: str, n_i: int, tree: _Tree, gpu: bool, out_dir: str
                      ) -> tuple[str, float]:
    from .embedding.result import _vectors_name
    from .manifest import tmp_name  # a temp name of this (Ray worker) process: retries never collide

    vectors = np.load(Path(emb_path) / _vectors_name(name), mmap_mode="r")
    return _assign_shard(vectors, emb_path, name, n_i, tree, gpu,
                         str(tmp_name(Path(out_dir) / f"assign-{name}.npy")))


def _assign_stage(run: StageRun, emb: Embeddings, shards: list[tuple[str, int]], tree: _Tree, gpu: bool,
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

    if ex.engine == "ray" and todo:
        tasks = [(name, (str(emb.path), name, n_i, Shared("tree"), gpu, str(run.out_dir)))
                 for _, name, n_i in todo]
        run_ray(ex, _ray_assign_shard, tasks, commit, shared={"tree": tree},
                num_gpus=ex.gpus_per_worker if gpu else 0)
    else:
        for _, name, n_i in _progress(todo, progress, "assign"):
            commit(name, _assign_shard(emb.shard_vectors(name), str(emb.path), name, n_i, tree, gpu,
                                       str(run.tmp_path(f"assign-{name}.npy"))))
    seconds = time.perf_counter() - t0
    if ex.sliced:
        return round(seconds, 3), float("nan"), committed
    score_sum = sum(run.shard_record(name)["stats"]["score_sum"] for name, _ in shards)
    return round(seconds, 3), score_sum, committed


def _write_counts(run: StageRun, emb: Embeddings, shards: list[tuple[str, int]], tree: _Tree
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
    table = emb.shard_table(name, columns=["tokens"])  # an older or foreign table may lack the column
    _check_table_rows(emb, name, n_i, table.num_rows)
    if "tokens" not in table.column_names:
        return np.zeros(n_i, dtype=np.float64)
    return table.column("tokens").to_numpy(zero_copy_only=False).astype(np.float64)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to the temp name
        np.save(f, np.ascontiguousarray(arr))


def _progress(items: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="shard" if desc == "assign" else "node", leave=False)


# ----------------------------------------------------------------------------- the handle


class Clusters:
    """A finished `cluster` stage directory: centroids per level, per-shard assignments, counts."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest
        from .config import from_dict

        self.config: ClusterConfig = from_dict(ClusterConfig, manifest.config,
                                               source=str(path / "manifest.json"))
        self._tree = _read_tree(path, int(manifest.stats["n_levels"]), self.config.spherical)

    @classmethod
    def load(cls, path: str | Path) -> Clusters:
        """Open a complete `impsamp cluster` output.

        Raises:
            StageError: the directory is missing, incomplete, damaged or of another stage.
        """
        path = Path(path)
        return cls(path, read_manifest(path, expect_stage="cluster"))

    def __repr__(self) -> str:
        return f"Clusters({str(self.path)!r}, n_leaves={self.n_leaves}, levels={self.levels})"

    @property
    def n_leaves(self) -> int:
        return len(self._tree.centroids[-1])

    @property
    def n_levels(self) -> int:
        return self._tree.n_levels

    @property
    def levels(self) -> list[int]:
        """Number of nodes at each level (the last is n_leaves)."""
        return [len(c) for c in self._tree.centroids]

    @property
    def dim(self) -> int:
        return int(self._tree.centroids[0].shape[1])

    @property
    def centroids(self) -> np.ndarray:
        """(n_leaves, d) float32 leaf centroids."""
        return self._tree.centroids[-1]

    @property
    def level_centroids(self) -> list[np.ndarray]:
        """Per level j (0 = top): (n_j, d) float32 node centroids; for flat, [centroids]."""
        return list(self._tree.centroids)

    @property
    def parents(self) -> list[np.ndarray]:
        """Per level j: (n_j,) int32 parent at level j-1 of each node; level 0 is all -1 (no parent)."""
        return list(self._tree.parents)

    @property
    def shard_names(self) -> list[str]:
        return [s["name"] for s in self.manifest.stats["shards"]]

    def assign(self, vectors: np.ndarray, *, batch_size: int = BATCH_ROWS,
               device: str | None = None) -> np.ndarray:
        """Node ids of new L2-normalised vectors, by the same descent rule as the generic corpus.

        Args:
            vectors: (n, d) float (float16 embeddings are cast to float32).
            batch_size: rows per faiss search.
            device: 'cpu', 'gpu' or 'auto' [default: the device the clustering was made on, when present].

        Returns:
            (n, n_levels) int32; column j = node at level j, the last column = leaf id.

        Raises:
            StageError: wrong dimension, NaN, or not L2-normalised.
        """
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise StageError(f"vectors of shape {vectors.shape} cannot be assigned to {self.path}: its "
                             f"centroids have dimension {self.dim}; embed them with the model of the "
                             "clustered corpus")
        if device is None:
            device = "auto" if self.manifest.stats.get("device") == "gpu" else "cpu"
        gpu = _use_gpu(device)
        out = np.empty((len(vectors), self.n_levels), dtype=np.int32)
        for lo in range(0, len(vectors), batch_size):
            x = np.asarray(vectors[lo:lo + batch_size], dtype=np.float32)
            _check_vectors(x, "vectors to assign:", lo)
            out[lo:lo + len(x)], _ = self._tree.descend(x, gpu=gpu)
        return out

    def shard_assign(self, name: str) -> np.ndarray:
        """(n_i, n_levels) int32 assignments of embedding shard `name`, memory-mapped."""
        if name not in self.shard_names:
            raise StageError(f"{self.path} has no shard {name!r}; shards: {', '.join(self.shard_names[:5])}"
                             + (" ..." if len(self.shard_names) > 5 else ""))
        return np.load(self.path / f"assign-{name}.npy", mmap_mode="r")

    def leaf_assign(self) -> np.ndarray:
        """(n,) int32 leaf id of every embedding row, shards concatenated in embedding order."""
        return np.concatenate([np.asarray(self.shard_assign(s)[:, -1]) for s in self.shard_names])

    def counts(self, level: int = -1) -> dict[str, np.ndarray]:
        """Per node of `level` (default: leaves): 'documents' (embedding rows) and 'tokens', int64."""
        pq = require("pyarrow.parquet")
        j = range(self.n_levels)[level]
        with pq.ParquetFile(self.path / "counts.parquet") as f:  # (read_table goes through pyarrow.dataset)
            table = f.read()
        mask = table.column("level").to_numpy() == j
        return {key: table.column(key).to_numpy()[mask] for key in ("documents", "tokens")}

    def embeddings(self) -> Embeddings:
        """Reopen the embeddings this clustering was made from, checking they are the same run.

        Raises:
            StageError: they are missing or were rebuilt since (fingerprint differs).
        """
        from .embedding import Embeddings

        rec = self.manifest.inputs["embeddings"]
        emb = Embeddings.load(rec["path"])
        if emb.manifest.fingerprint != rec["fingerprint"]:
            raise StageError(f"{rec['path']} is not the embeddings {self.path} was made from (fingerprint "
                             f"{emb.manifest.fingerprint[:19]}..., recorded {rec['fingerprint'][:19]}...); "
                             f"rerun `impsamp cluster {rec['path']} --out {self.path} --overwrite`")
        return emb

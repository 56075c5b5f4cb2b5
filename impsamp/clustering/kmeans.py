"""faiss primitives: nearest centroids (CPU or GPU), seeded k-means, thread control, row sampling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError

_GPU_RESOURCES: Any = None


def use_gpu(device: str) -> bool:
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


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, *, spherical: bool, gpu: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row: (n,) int64 ids and (n,) float32 scores (similarity or squared L2)."""
    ids, score = nearest(x, centroids, spherical=spherical, gpu=gpu)
    return ids, score.astype(np.float32)


CANDIDATES = 4
"""Points faiss returns per row for `nearest` to re-score."""
EXACT_ROWS = 1 << 14
"""Rows re-scored in float64 at a time."""
NEAR = 1e-4
"""Candidates whose float32 scores are within NEAR of the first (relative to the scores' size) are re-scored:
far more than faiss's rounding (under 1e-6 for unit vectors), so which rows count as near does not depend on it."""


def nearest(x: np.ndarray, points: np.ndarray, *, spherical: bool, gpu: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """The nearest of `points` to every row of x: (n,) int64 ids and (n,) float64 scores (similarity, or squared
    L2 distance), the same on any machine's thread count: faiss's float32 matrix product rounds by the BLAS
    thread count (on the demo pool 815 of 4,800 scores moved between 1 and 2 threads; a near tie's winner could),
    so faiss only proposes CANDIDATES per row and the winner is chosen, and scored, in float64 row by row: among
    the candidates within NEAR of faiss's first, or where even the last is that near among every point; of equal
    scores the lowest id."""
    if len(points) == 1 or not len(x):  # a single child: no search needed
        ids = np.zeros(len(x), dtype=np.int64)
        return ids, _scores(x, points, ids, spherical)
    index = _flat_index(points.shape[1], spherical, gpu)
    index.add(np.ascontiguousarray(points, dtype=np.float32))
    with _omp_threads(1 if _is_small(len(x), len(points), points.shape[1]) else None):
        rough, cand = index.search(np.ascontiguousarray(x, dtype=np.float32), min(CANDIDATES, len(points)))
    best = cand[:, 0].astype(np.int64)
    size = np.abs(rough[:, 0]) if spherical else (np.einsum("ij,ij->i", x, x, dtype=np.float64)
                                                  + float(np.einsum("ij,ij->i", points, points).max()))
    tol = NEAR * np.maximum(1.0, size)  # (faiss's L2 error grows with the norms, not with the distance)
    near = np.flatnonzero(np.abs(rough[:, 0] - rough[:, 1]) <= tol)
    full = near[np.abs(rough[near, 0] - rough[near, -1]) <= tol[near]] if cand.shape[1] < len(points) else near[:0]
    part = np.setdiff1d(near, full)
    best[part] = _best_of(x[part], points, cand[part], spherical)
    best[full] = _best_of(x[full], points, np.broadcast_to(np.arange(len(points)), (len(full), len(points))),
                          spherical)
    score = np.concatenate([_scores(x[lo:lo + EXACT_ROWS], points, best[lo:lo + EXACT_ROWS], spherical)
                            for lo in range(0, len(x), EXACT_ROWS)])
    return best, score


def _best_of(x: np.ndarray, points: np.ndarray, cand: np.ndarray, spherical: bool) -> np.ndarray:
    """Per row, the candidate with the best float64 score; of equals the lowest id."""
    cand = np.sort(cand, axis=1)
    s = np.stack([_scores(x, points, cand[:, j], spherical) for j in range(cand.shape[1])], axis=1)
    pick = np.argmax(s, axis=1) if spherical else np.argmin(s, axis=1)  # the first of equals: the lowest id
    return cand[np.arange(len(cand)), pick] if len(cand) else cand[:, 0].astype(np.int64)


def _scores(x: np.ndarray, points: np.ndarray, ids: np.ndarray, spherical: bool) -> np.ndarray:
    """float64 similarity (or squared distance) of each row of x to its point `ids[i]`, summed row by row (no
    BLAS: no thread count in the sums)."""
    c = points[ids]
    if spherical:
        return np.einsum("ij,ij->i", x, c, dtype=np.float64)
    diff = np.asarray(x, dtype=np.float64) - c
    return np.einsum("ij,ij->i", diff, diff)


SMALL_WORK = 1 << 26
"""n * k * d below which a faiss call runs on one OpenMP thread: thread start-up and spin-waits cost
more than they save there (on a busy 2-core machine a 2-thread fit of 3,000 x 32 was 12x slower)."""


def _is_small(n: int, k: int, d: int) -> bool:
    return n * k * d < SMALL_WORK


def fit_threads(n: int, k: int, d: int, gpu: bool = False) -> int | None:
    """The OpenMP threads a CPU fit of n points, k centroids, d dimensions runs on (None on GPU): its bytes
    depend on the count (`_omp_threads`)."""
    return None if gpu else 1 if _is_small(n, k, d) else require("faiss").omp_get_max_threads()


@contextlib.contextmanager
def _omp_threads(n: int | None) -> Iterator[None]:
    """Run faiss with `n` OpenMP threads in this thread (None: leave as is). `nearest_centroid`'s ids and scores
    do not depend on it (re-scored in float64); a k-means fit large enough for several threads (`_is_small`) does,
    slightly: its matrix
    products split the sums by thread, and a near tie goes the other way (a review: k = 128 on 40k vectors,
    1,712 of 39,766 assignments moved between 1 and 2 threads). The cluster manifest records the count."""
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


def map_small(fn: Any, items: Sequence[Any]) -> list[Any]:
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
        _, score = nearest_centroid(x, c, spherical=spherical)
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

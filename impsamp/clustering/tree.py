"""The centroid tree: flat k-means is one level, a hierarchy fits each node's children on its points; its files."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import progress_bar
from .config import ClusterConfig
from .kmeans import fit_kmeans, fit_threads, map_small, nearest_centroid, sample_rows

logger = logging.getLogger(__name__)


@dataclass
class Tree:
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
        top, score = nearest_centroid(x, self.centroids[0], spherical=self.spherical, gpu=gpu)
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
            return nearest_centroid(x[rows], self.centroids[j][lo:hi], spherical=self.spherical)

        for (lo, _, rows), (local, s) in zip(groups, map_small(nearest_child, groups), strict=True):
            out[rows] = lo + local
            score[rows] = s
        return out, score


def fit_tree(x: np.ndarray, cfg: ClusterConfig, gpu: bool, progress: bool) -> tuple[Tree, dict[str, Any]]:
    """Fit every level on the sample `x` (S, d) float32; children on their parent's points."""
    mppc = cfg.max_points_per_centroid
    k0 = cfg.branching[0]
    sub = sample_rows(len(x), k0 * mppc, cfg.seed, salt=(0,))  # faiss's cap, applied here, seeded
    c0, train_obj = fit_kmeans(x[sub], k0, niter=cfg.niter, seed=cfg.seed, spherical=cfg.spherical, gpu=gpu)
    tree = Tree([c0], [np.full(k0, -1, dtype=np.int32)], cfg.spherical)
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
            fitted = [fit_children(p) for p in progress_bar(progress, f"fit level {j}", "node", items=nodes, leave=False)]
        else:
            logger.info("fitting %d node(s) of level %d", len(nodes), j)
            fitted = map_small(fit_children, nodes)
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
            "train_objective": train_obj if cfg.levels is None else None, "small_nodes": small_nodes,
            # the top level's fit threads (a tree's children fit on one each): its bytes depend on the count
            "omp_threads": fit_threads(len(sub), k0, x.shape[1], gpu)}
    return tree, info


def tree_files(tree: Tree, hierarchical: bool) -> Iterator[tuple[str, np.ndarray]]:
    yield "centroids.npy", tree.centroids[-1]
    if hierarchical:
        for j in range(tree.n_levels):
            yield f"centroids-level{j}.npy", tree.centroids[j]
            if j:
                yield f"parents-level{j}.npy", tree.parents[j]


def read_tree(path: Path, n_levels: int, spherical: bool) -> Tree:
    if n_levels == 1:
        c = np.load(path / "centroids.npy")
        return Tree([c], [np.full(len(c), -1, dtype=np.int32)], spherical)
    centroids = [np.load(path / f"centroids-level{j}.npy") for j in range(n_levels)]
    parents = [np.full(len(centroids[0]), -1, dtype=np.int32)]
    parents += [np.load(path / f"parents-level{j}.npy") for j in range(1, n_levels)]
    return Tree(centroids, parents, spherical)

"""What the explorer shows about a clustering itself, whatever the selection: built once per clustering.

Sizes per node of every level, top terms per node, example snippets per leaf and a 2-D map of the
leaf centroids (PCA, scikit-learn). `impsamp compare` builds it once and writes one page per selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._deps import require
from .sampling import docs_per_cluster, read_sample, snippets_by_leaf
from .terms import top_terms


@dataclass(frozen=True)
class ClusterView:
    """A clustering as the page shows it; per level j, arrays have one entry per node of level j."""

    name: str
    fingerprint: str
    levels: list[int]
    parents: list[np.ndarray]
    """Per level: the parent (a node of level j-1) of each node; -1 at level 0."""
    ancestors: tuple[np.ndarray, ...]
    """Per level: each leaf's node at that level."""
    documents: list[np.ndarray]
    tokens: list[np.ndarray]
    terms: list[list[list[str]]]
    snippets: list[list[str]]
    """Per leaf."""
    xy: np.ndarray
    """(n_leaves, 2) float64 map position of each leaf (PCA of the centroids)."""
    sample: dict[str, Any]

    @property
    def n_leaves(self) -> int:
        return self.levels[-1]


def cluster_view(clusters, *, seed: int = 0, per_cluster: int | None = None) -> ClusterView:
    """Read a sample of each cluster's documents and describe every node of the clustering.

    Args:
        clusters: an `impsamp cluster` output (a `Clusters` or its path).
        per_cluster: documents sampled per leaf for the terms [default: `docs_per_cluster(k)`].

    Raises:
        StageError: the clustering, its embeddings or its corpus is missing or changed since.
    """
    from ..clustering import Clusters
    from ..histograms import leaf_ancestors
    from ..resampling.config import ResampleConfig
    from ..resampling.inputs import open_inputs

    clu = clusters if isinstance(clusters, Clusters) else Clusters.load(clusters)
    per = per_cluster or docs_per_cluster(clu.n_leaves)
    inputs = open_inputs(clu.embeddings(), clu, ResampleConfig(docs=1))
    sample = read_sample(inputs, per, seed)
    ancestors = leaf_ancestors(clu)
    levels = clu.levels
    terms = top_terms(sample.texts, [a[sample.leaf] for a in ancestors], levels)
    parents = [np.asarray(p, dtype=np.int64) for p in clu.parents]  # level 0: all -1
    counts = [clu.counts(level=j) for j in range(len(levels))]
    return ClusterView(
        name=clu.path.name, fingerprint=clu.manifest.fingerprint, levels=levels, parents=parents,
        ancestors=ancestors, documents=[np.asarray(c["documents"], dtype=np.int64) for c in counts],
        tokens=[np.asarray(c["tokens"], dtype=np.int64) for c in counts], terms=terms,
        snippets=snippets_by_leaf(sample, clu.n_leaves), xy=centroid_map(clu.centroids, seed),
        sample={"per_cluster": per, "units": len(sample.texts), "seed": seed})


def centroid_map(centroids: np.ndarray, seed: int = 0) -> np.ndarray:
    """(k, 2) PCA projection of the centroids (exact SVD: the same numbers on every run)."""
    decomposition = require("sklearn.decomposition")
    x = np.asarray(centroids, dtype=np.float64)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    pca = decomposition.PCA(n_components=min(2, x.shape[1]), svd_solver="full", random_state=seed)
    xy = pca.fit_transform(x)
    if xy.shape[1] < 2:
        xy = np.concatenate([xy, np.zeros((len(xy), 1))], axis=1)
    return xy

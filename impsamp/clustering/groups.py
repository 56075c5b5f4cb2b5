"""Groups of clusters, one expert each (or one code of a projected network): the clusters themselves,
a level of the tree, or leaves merged by k-means on their centroids (weighted by their documents)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..histograms import leaf_ancestors

DEFAULT_GROUPS = 4


@dataclass(frozen=True)
class Grouping:
    leaf_group: np.ndarray
    """(n_leaves,) group of every leaf cluster."""
    how: str

    @property
    def n_groups(self) -> int:
        return int(self.leaf_group.max()) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"how": self.how, "groups": self.n_groups, "leaf_group": self.leaf_group.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grouping:
        return cls(np.asarray(d["leaf_group"], dtype=np.int64), d["how"])


def make_grouping(clusters, groups: int | None, level: int | None, seed: int, *,
                  allow_empty: bool = False) -> Grouping:
    """Split `clusters` into groups (see the module doc); a one-line ConfigError when it cannot
    (a group without documents too, unless `allow_empty`)."""
    k, where = clusters.n_leaves, clusters.path
    if level is not None:
        if level >= clusters.n_levels:
            raise ConfigError(f"--level {level}: {where} has {clusters.n_levels} level(s) "
                              f"({' and '.join(map(str, clusters.levels))} clusters); use 0..{clusters.n_levels - 1}")
        n = clusters.levels[level]
        if groups is not None and groups != n:
            raise ConfigError(f"--groups {groups} and --level {level} disagree: level {level} of {where} has "
                              f"{n} nodes; drop one of them")
        leaf_group = leaf_ancestors(clusters)[level]
        return _checked(Grouping(np.asarray(leaf_group, dtype=np.int64), f"level {level} of the tree"), clusters,
                        allow_empty)
    g = DEFAULT_GROUPS if groups is None else groups
    if g > k:
        raise ConfigError(f"--groups {g} is larger than the {k} clusters of {where}; give --groups <= {k} "
                          "or cluster with a larger k")
    if g == k:
        return _checked(Grouping(np.arange(k, dtype=np.int64), "one group per cluster"), clusters, allow_empty)
    from sklearn.cluster import KMeans

    docs = np.asarray(clusters.counts()["documents"], dtype=np.float64)
    km = KMeans(n_clusters=g, n_init=4, random_state=seed).fit(clusters.centroids.astype(np.float64),
                                                                sample_weight=np.maximum(docs, 1e-6))
    # number the groups by their first leaf, so the labels do not depend on k-means' numbering
    first = {int(label): i for i, label in reversed(list(enumerate(km.labels_)))}
    order = {label: rank for rank, label in enumerate(sorted(first, key=first.get))}
    leaf_group = np.asarray([order[int(label)] for label in km.labels_], dtype=np.int64)
    return _checked(Grouping(leaf_group, f"{k} leaves merged by k-means on their centroids (seed {seed})"), clusters,
                    allow_empty)


def _checked(grouping: Grouping, clusters, allow_empty: bool) -> Grouping:
    docs = np.bincount(grouping.leaf_group, weights=clusters.counts()["documents"], minlength=grouping.n_groups)
    empty = np.flatnonzero(docs == 0)
    if len(empty) and not allow_empty:
        raise ConfigError(f"expert group(s) {empty.tolist()[:5]} of {clusters.path} hold no documents; "
                          "ask for fewer --groups")
    return grouping


def group_mass(hist_counts: np.ndarray, grouping: Grouping) -> np.ndarray:
    """A leaf histogram summed per group, normalised."""
    mass = np.bincount(grouping.leaf_group, weights=np.asarray(hist_counts, dtype=np.float64),
                       minlength=grouping.n_groups)
    return mass / mass.sum() if mass.sum() > 0 else mass

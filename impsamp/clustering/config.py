"""The cluster stage's settings (`ClusterConfig`) and constants."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import check_fields, documented
from ..errors import ConfigError

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


@documented
@dataclass(frozen=True)
class ClusterConfig:
    """k-means over L2-normalised sentence embeddings (faiss), flat or hierarchical."""

    ALTERNATIVES = (("k", "levels"),)  # not a field: --levels replaces a config file's k (and --k its levels)

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
        check_fields(self)
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
        _check_int("--niter", self.niter, minimum=1, maximum=2**31 - 1)  # faiss's C int
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

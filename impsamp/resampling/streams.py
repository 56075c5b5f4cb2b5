"""The resample stage's random streams: one per (seed, shard, purpose), so a selection's bytes do not
depend on how many workers drew it, and no two uses share a stream.

    rng = shard_rng(cfg.seed, shard, KEYS)     # the Gumbel keys of one input shard
"""

from __future__ import annotations

import numpy as np

KEYS, DRAWS, ROUTE, SHUFFLE, WITHIN = 1, 2, 3, 4, 5
"""Purposes: Gumbel keys and draws per input shard, routing per input shard, the shuffle per output shard,
and `within`'s remainder per cluster (its `shard` is the cluster). Nonzero: a key `[seed, x]` is numpy's
`[seed, x, 0]`, so purpose 0 would collide with the two-number keys used elsewhere."""


def shard_rng(seed: int, shard: int, purpose: int) -> np.random.Generator:
    """The random stream of one (shard, purpose)."""
    return np.random.default_rng([seed, shard, purpose])

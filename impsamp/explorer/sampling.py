"""A seeded sample of each cluster's documents, read from the corpus: the text behind terms and snippets.

Every embedding shard gets its own random stream (`[seed, shard index]`), each unit a random key, and
each leaf keeps the units with the smallest keys (bottom-k): a uniform sample of the leaf's units
whatever the number of shards, with the same bytes for the same seed. Only the sampled units' text
is read, cut to `chars` characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SNIPPETS = 3
"""Example snippets per cluster."""
SNIPPET_CHARS = 200
"""Longest snippet, in characters (cut at a word boundary, with an ellipsis)."""
TEXT_CHARS = 1_000
"""Characters of each sampled unit read for the terms."""


@dataclass(frozen=True)
class Sample:
    """The sampled units: their leaf and their text (cut), in key order within each leaf."""

    leaf: np.ndarray
    """(n,) int64 leaf of each sampled unit, non-decreasing."""
    texts: list[str]


def docs_per_cluster(k: int) -> int:
    """Default sample per leaf: 32 up to k = 1,024, fewer above (16 at 2,048, 8 at 4,096) so the text
    read stays near 32,000 units x `TEXT_CHARS`."""
    return int(np.clip(32_768 // max(k, 1), 8, 32))


def sample_units(leaves, per_cluster: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bottom-k sample per leaf over every shard.

    Args:
        leaves: per shard, (n_i,) leaf id of each unit (a sequence read shard by shard).

    Returns:
        (leaf, where): (n,) int64 leaf and (n, 2) int64 (shard index, unit row) of the kept units,
        ordered by leaf, then key.
    """
    keys = np.empty(0)
    leaf = np.empty(0, dtype=np.int64)
    where = np.empty((0, 2), dtype=np.int64)
    for s in range(len(leaves)):
        ids = np.asarray(leaves[s], dtype=np.int64)
        keys = np.concatenate([keys, np.random.default_rng([seed, s]).random(len(ids))])
        leaf = np.concatenate([leaf, ids])
        where = np.concatenate([where, np.stack([np.full(len(ids), s), np.arange(len(ids))], axis=1)])
        order = np.lexsort((keys, leaf))  # by leaf, then key
        sorted_leaf = leaf[order]
        rank = np.arange(len(order)) - np.searchsorted(sorted_leaf, sorted_leaf, side="left")
        keep = order[rank < per_cluster]
        keys, leaf, where = keys[keep], leaf[keep], where[keep]
    return leaf, where


def read_sample(inputs, per_cluster: int, seed: int, chars: int = TEXT_CHARS) -> Sample:
    """The sampled units' text (first `chars` characters), grouped by leaf in key order.

    Args:
        inputs: `impsamp.resampling.inputs.Inputs` of the clustering (corpus, shards, unit tables).
    """
    from ..resampling.writing import unit_texts

    leaf, where = sample_units(inputs.leaves, per_cluster, seed)
    texts = [""] * len(leaf)
    for s in np.unique(where[:, 0]).tolist():
        idx = np.flatnonzero(where[:, 0] == s)
        idx = idx[np.argsort(where[idx, 1], kind="stable")]  # read in row order
        name = inputs.names[s]
        got = unit_texts(inputs.corpus, inputs.corpus_shards[name], inputs.tables[name], where[idx, 1],
                         inputs.windowed).to_pylist()
        for i, t in zip(idx.tolist(), got, strict=True):
            texts[i] = clean(t or "", chars)
    return Sample(leaf, texts)


_SPACE = re.compile(r"\s+")


def clean(text: str, chars: int) -> str:
    """Whitespace collapsed, the first `chars` characters, invalid UTF-8 (lone surrogates) replaced."""
    text = _SPACE.sub(" ", text[: chars * 2]).strip()[:chars]
    return text.encode("utf-8", "replace").decode("utf-8")


def snippet(text: str, chars: int = SNIPPET_CHARS) -> str:
    """`text` cut to at most `chars` characters at a word boundary, with an ellipsis when cut."""
    if len(text) <= chars:
        return text
    cut = text[: chars - 1]
    space = cut.rfind(" ")
    if space > chars // 2:
        cut = cut[:space]
    return cut.rstrip() + "\u2026"


def snippets_by_leaf(sample: Sample, n_leaves: int, per: int = SNIPPETS) -> list[list[str]]:
    """The first `per` distinct snippets of each leaf's sample."""
    out: list[list[str]] = [[] for _ in range(n_leaves)]
    for leaf, text in zip(sample.leaf.tolist(), sample.texts, strict=True):
        s = snippet(text)
        if s and len(out[leaf]) < per and s not in out[leaf]:
            out[leaf].append(s)
    return out

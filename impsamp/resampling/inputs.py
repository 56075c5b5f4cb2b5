"""The generic side of a selection, opened once: embeddings, clusters, corpus, per-shard views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..histograms import Histogram, generic_histogram
from .budget import BudgetCounter
from .config import ResampleConfig
from .tables import PerShard, ShardTables


@dataclass
class Inputs:
    """The generic side, opened once: embeddings, clusters, corpus, and per-shard views read on access
    (leaves, unit tables, unit sizes), so memory does not grow with the corpus."""

    emb: Any
    clu: Any
    corpus: Any
    generic: Histogram
    names: list[str]
    windowed: bool
    corpus_shards: dict[str, Any]
    tables: ShardTables
    leaves: PerShard
    counter: BudgetCounter

    def described(self) -> dict[str, Any]:
        emb, clu = self.emb, self.clu
        return {"embeddings": {"path": str(emb.path.resolve()), "stage": "embed", "fingerprint": emb.manifest.fingerprint},
                "clusters": {"path": str(clu.path.resolve()), "stage": "cluster", "fingerprint": clu.manifest.fingerprint},
                "budget": self.counter.describe()}


def open_inputs(embeddings, clusters, cfg: ResampleConfig) -> Inputs:
    """Load and check the generic side: the clustering must come from these embeddings, the corpus be
    unchanged since it was embedded."""
    from ..clustering import Clusters
    from ..embedding import Embeddings
    from ..guards import hold_inputs

    # read-locked first (an --overwrite of either is refused while this run reads them), then opened
    hold_inputs(*(x.path if isinstance(x, (Embeddings, Clusters)) else x for x in (embeddings, clusters)))
    emb = Embeddings.load(embeddings.path if isinstance(embeddings, Embeddings) else embeddings)
    clu = Clusters.load(clusters.path if isinstance(clusters, Clusters) else clusters)
    clu.check_made_from(emb)
    corpus = emb.corpus()  # reopened and checked unchanged since it was embedded
    names = list(emb.shard_names)
    windowed = bool(emb.model_info.get("windows"))
    corpus_shards = {s.name: s for s in corpus.shards(emb.manifest.config.get("rows_per_shard", 10_000))}
    return Inputs(emb, clu, corpus, generic_histogram(clu), names, windowed, corpus_shards, ShardTables(emb),
                  PerShard(names, lambda n: np.asarray(clu.shard_assign(n)[:, -1], dtype=np.int64)),
                  BudgetCounter(emb, corpus, corpus_shards, windowed, cfg.budget_tokenizer))

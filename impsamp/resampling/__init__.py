"""Resample the generic corpus toward a target: plan per-cluster draws, then write shuffled shards.

    impsamp resample runs/emb runs/clusters --target law.jsonl --out runs/law-sel --tokens 50000000

Three schemes (DESIGN.md):
- `match` (default, the seed paper): the selection's cluster histogram matches the weighted
  generic histogram (= the target's with the density ratio). Inside a cluster's quota, `--within`
  says which documents: `uniform` (the seed paper) takes them as evenly as possible, each repeated
  floor(m/n) times and (m mod n) of them once more, so a repeat only happens once every document of
  the cluster has been used; the weighted ones (`ngram-classifier`, the default for a corpus target,
  `knn`, ...) favour the target-like documents, up to a repeat cap (`within`). Units far over their
  cluster's share of a token or byte budget are left out (`within.OUTSIZED`).
- `crisp`: draw a cluster from the weighted histogram, then a document uniformly inside it, i.i.d. (for a
  token or byte budget, among the documents `match` may draw: none far over its cluster's share).
- `topk`: without replacement, Gumbel top-k on log w(c(x)) (DSIR's form); no repeats.

Everything runs in data-fixed shards (the embedding shards) with a random stream per shard, so the
bytes do not depend on the number of workers. Writing is a bounded-memory global shuffle: pass 1
routes every selected row of an input shard to a random output shard (one Arrow record batch per
output shard in a spill file); pass 2 gathers each output shard's rows from the spill files,
shuffles them and writes `data-XXXXX-of-NNNNN.arrow` (the `datasets.save_to_disk` layout).

Modules: `config` (ResampleConfig, schemes, the output schema), `streams` (one random stream per shard
and purpose), `planning` (draws per cluster and per unit), `within` (document weights inside the
clusters, the repeat cap, the spill), `tables` (per-shard views of the embedding), `writing` (spill
files and shuffled shards), `methods` (targets; the n-gram and classifier baselines), `report`
(diagnostics, plot, data card), `stage` (`resample`) and `selection` (the `Selection` handle).
"""

from __future__ import annotations

from .config import FORMATS, METHODS, SCHEMES, SELECTION_SCHEMA, WITHIN_REPEATS, ResampleConfig
from .report import render_card
from .selection import Selection
from .stage import command_line, resample, target_histogram

__all__ = ["FORMATS", "METHODS", "SCHEMES", "SELECTION_SCHEMA", "WITHIN_REPEATS", "ResampleConfig", "Selection",
           "command_line", "render_card", "resample", "target_histogram"]

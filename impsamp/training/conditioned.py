"""Cluster-conditioned pretraining data for the projected family: the clustering's corpus tokenized
per group of clusters, and batches that carry their condition.

    groups = tokenize_groups("runs/clu", None, tok, cache_dir, val_fraction=0.01)
    batches = GroupBatches(groups, block_size=256, batch_size=16, seed=0, condition="cluster")
    x, y, cond = batches.get(step=12, micro=0)      # cond: the micro-batch's group (an int)

Groups: every leaf cluster of `CLU` (default) or the nodes of one level of its tree (`level`). The
documents are read from the corpus the clustering's embeddings were made from (windows when it was
embedded in windows), each into its group's token memmap, with the validation split of `data.py`.

Batches. Condition "cluster": each micro-batch is one group's, the group drawn in proportion to its
training tokens. Condition "histogram" (a soup of experts): each micro-batch draws a random mixture,
s clusters (s uniform in 1..4) chosen in proportion to their tokens without replacement and weights
on them from a flat Dirichlet; each sequence picks its group from those weights, and the condition
is the micro-batch's actual composition (sequences per group / batch size). The draw of groups is
seeded by (seed, stream, step, micro-step), the same on every rank of a torchrun job (each rank
then reads windows from its own slice of each group): every rank conditions on the same thing, so
the codes a step does not use get no gradient anywhere. Groups with fewer tokens than one sequence
are never drawn (recorded in the run's metrics).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import atomic_write_json, fingerprint
from .config import TrainError
from .data import BinWriter, TokenBin, held_out, split_key, token_dtype
from .tokenizer import LoadedTokenizer

META = "groups.json"
MAX_SUPPORT = 4


@dataclass(frozen=True)
class GroupBins:
    """Per group, its training and validation token memmaps; and how the groups were made."""

    train: list[TokenBin]
    val: list[TokenBin]
    how: str
    leaf_group: list[int]
    clusters: dict[str, Any]
    """The clustering the groups come from (path, fingerprint, leaves): what a target must match."""

    @property
    def n_groups(self) -> int:
        return len(self.train)

    def to_dict(self) -> dict[str, Any]:
        return {"train": [asdict(b) for b in self.train], "val": [asdict(b) for b in self.val], "how": self.how,
                "leaf_group": self.leaf_group, "clusters": self.clusters}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupBins:
        return cls([TokenBin(**b) for b in d["train"]], [TokenBin(**b) for b in d["val"]], d["how"],
                   list(d["leaf_group"]), d["clusters"])


def open_grouping(clusters: str, level: int | None):
    """The clustering's inputs (embeddings, corpus) and its groups: every leaf, or one level's nodes."""
    from ..clustering import Clusters
    from ..clustering.groups import make_grouping
    from ..resampling.config import ResampleConfig
    from ..resampling.inputs import open_inputs

    clu = Clusters.load(clusters)
    inputs = open_inputs(clu.embeddings(), clu, ResampleConfig(docs=1))
    grouping = make_grouping(clu, clu.n_leaves if level is None else None, level, 0, allow_empty=True)
    return inputs, grouping


def count_groups(clusters: str, level: int | None) -> int:
    """How many groups (codes) `open_grouping` will make, without reading the corpus."""
    from ..clustering import Clusters

    clu = Clusters.load(clusters)
    return clu.levels[level] if level is not None and level < clu.n_levels else clu.n_leaves


def tokenize_groups(clusters: str, level: int | None, tok: LoadedTokenizer, cache_dir: Path, *,
                    val_fraction: float, text_field: str = "text") -> GroupBins:
    """Tokenize the clustering's corpus into one memmap per group; reuse them if already made."""
    from ..resampling.writing import unit_texts

    inputs, grouping = open_grouping(clusters, level)
    clu = inputs.clu
    described = {"path": str(clu.path.resolve()), "fingerprint": clu.manifest.fingerprint,
                 "leaves": clu.n_leaves, "level": level}
    key = fingerprint({"clusters": clu.manifest.fingerprint, "leaf_group": grouping.leaf_group.tolist(),
                       "tokenizer": tok.tokenizer.to_str(), **split_key(val_fraction), "text_field": text_field})
    meta = cache_dir / META
    if meta.exists():
        old = json.loads(meta.read_text())
        if old.get("key") == key:
            bins = GroupBins.from_dict(old["groups"])
            if all(Path(b.path).exists() for b in bins.train + bins.val):
                return bins
    cache_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tok.vocab_size)
    is_val = held_out(val_fraction)
    writers = [{split: BinWriter(cache_dir / f"group-{g:04d}{'-val' if split == 'val' else ''}.bin", dtype)
                for split in ("train", "val")} for g in range(grouping.n_groups)]
    for s, shard in enumerate(inputs.names):
        table = inputs.tables[shard]
        units = np.arange(table.num_rows)
        texts = unit_texts(inputs.corpus, inputs.corpus_shards[shard], table, units, inputs.windowed).to_pylist()
        groups = grouping.leaf_group[inputs.leaves[s]]
        for text, ids, g in zip(texts, tok.encode_batch(texts), groups, strict=True):
            raw = text.encode("utf-8")
            writers[int(g)]["val" if is_val(raw) else "train"].add(ids, tok.eos_id, len(raw))
    committed = [{split: w.commit() for split, w in pair.items()} for pair in writers]
    bins = GroupBins([c["train"] for c in committed], [c["val"] for c in committed], grouping.how,
                     grouping.leaf_group.tolist(), described)
    atomic_write_json(meta, {"key": key, "groups": bins.to_dict()})
    return bins


def load_group_bins(cache_dir: Path) -> GroupBins:
    """What `tokenize_groups` wrote (read by the other ranks of a torchrun job)."""
    return GroupBins.from_dict(json.loads((cache_dir / META).read_text())["groups"])


def clustered_corpus(clusters: str) -> tuple[list[str], str]:
    """The files of the corpus a clustering's embeddings were made from, and its text field."""
    from ..clustering import Clusters

    corpus = Clusters.load(clusters).embeddings().corpus()
    return [f.path for f in corpus.files], corpus.text_field


def conditioning_record(groups: GroupBins, batches: GroupBatches) -> dict[str, Any]:
    """What `impsamp project` needs to turn a target's histogram into a condition (config.json)."""
    return {"clusters": groups.clusters, "groups": groups.n_groups, "how": groups.how,
            "leaf_group": groups.leaf_group, "condition": batches.condition,
            "group_tokens": [b.tokens for b in groups.train], "untrained_groups": batches.untrained}


def check_projected(cfg, data: list[str], finetune: list[str], eval: list[str]) -> None:
    """What a projected network's run refuses (one line each)."""
    if cfg.arch != "projected":
        return
    if cfg.init:
        raise TrainError(f"--init {cfg.init}: a projected network starts from scratch; fine-tune the small "
                         "model `impsamp project` makes from it (train --init PROJECTED_MODEL)")
    for flag, given in (("--data", data), ("--finetune", finetune), ("--eval", eval)):
        if given:
            why = ("it trains on the corpus of --clusters" if flag == "--data" else
                   "fine-tune and evaluate the small model `impsamp project` makes from it")
            raise TrainError(f"--arch projected takes no {flag}: {why}")


class GroupBatches:
    """Seeded random windows, each micro-batch conditioned on a group or a mixture of groups."""

    def __init__(self, groups: GroupBins, block_size: int, batch_size: int, seed: int, condition: str, *,
                 stream: int = 0, rank: int = 0, world: int = 1):
        self.groups, self.condition = groups, condition
        self.block_size, self.batch_size = block_size, batch_size
        self.seed, self.stream, self.rank = seed, stream, rank
        self.arrays, self.bounds = [], []
        for b in groups.train:
            arr = b.array()
            n = len(arr)
            lo, hi = rank * n // world, (rank + 1) * n // world
            if hi - lo < 2 * (block_size + 1):  # too small to slice: every rank draws from everything
                lo, hi = 0, n
            self.arrays.append(arr)
            self.bounds.append((lo, hi))
        tokens = np.array([hi - lo if hi - lo > block_size + 1 else 0 for lo, hi in self.bounds], dtype=np.float64)
        self.untrained = [g for g in range(len(tokens)) if tokens[g] == 0]
        if tokens.sum() == 0:
            from ..errors import CorpusError

            raise CorpusError(f"no group of {groups.clusters['path']} has one sequence of --block-size "
                              f"{block_size} + 1 tokens; give more data or a smaller --block-size (set when the model is pretrained)")
        self.p = tokens / tokens.sum()
        self.offsets = np.arange(block_size + 1)

    def composition(self, step: int, micro: int) -> np.ndarray:
        """Sequences per group in this micro-batch (the same on every rank)."""
        rng = np.random.default_rng([self.seed, self.stream, step, micro])
        counts = np.zeros(len(self.p), dtype=np.int64)
        if self.condition == "cluster":
            counts[rng.choice(len(self.p), p=self.p)] = self.batch_size
            return counts
        s = int(rng.integers(1, min(MAX_SUPPORT, int((self.p > 0).sum())) + 1))
        support = rng.choice(len(self.p), size=s, replace=False, p=self.p)
        weights = rng.dirichlet(np.ones(s))
        np.add.at(counts, support[rng.choice(s, size=self.batch_size, p=weights)], 1)
        return counts

    def get(self, step: int, micro: int = 0, device=None):
        """(x, y, cond) of micro-batch `micro` of `step`: cond a group (int) or a (n_groups,) histogram."""
        import torch

        counts = self.composition(step, micro)
        rng = np.random.default_rng([self.seed, self.stream, step, micro, self.rank, 1])
        rows = []
        for g in np.flatnonzero(counts):
            lo, hi = self.bounds[g]
            starts = rng.integers(lo, hi - self.block_size, size=int(counts[g]))
            rows.append(self.arrays[g][starts[:, None] + self.offsets])
        buf = torch.from_numpy(np.concatenate(rows).astype(np.int64))
        if device is not None and torch.device(device).type != "cpu":
            buf = buf.pin_memory().to(device, non_blocking=True)
        cond = int(np.argmax(counts)) if self.condition == "cluster" else counts / counts.sum()
        return buf[:, :-1], buf[:, 1:], cond

    def cond_of(self, g: int):
        """Group g alone, as this condition takes it."""
        if self.condition == "cluster":
            return g
        h = np.zeros(len(self.p))
        h[g] = 1.0
        return h

    def val_nll(self, model, device, autocast, max_windows: int | None) -> tuple[float, int]:
        """Nats and tokens of the validation split, each group's text under its own condition
        (`max_windows` shared among the groups in proportion to their validation tokens)."""
        from .evaluation import stream_nll
        from .projected import Bound

        tokens = np.array([b.tokens for b in self.groups.val], dtype=np.float64)
        nats, count = 0.0, 0
        for g in np.flatnonzero(tokens >= 2):
            cap = None if max_windows is None else max(1, math.ceil(max_windows * tokens[g] / tokens.sum()))
            n, c = stream_nll(Bound(model, self.cond_of(int(g))), self.groups.val[g].array(), self.block_size,
                              self.batch_size, device, autocast, max_windows=cap)
            nats, count = nats + n, count + c
        return nats, count

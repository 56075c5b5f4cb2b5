"""Routed perplexity: each document scored by the expert of its own group (the paper's "generic"
column for the mixture), so a mixture is compared with a dense model on the same held-out text.
`score_routed` does it for any model per group (a projected network's small model of each cluster).

    evaluate_routed("runs/experts", ["heldout/*.parquet"])["macro_ppl"]

A document is embedded like the generic corpus, assigned to its nearest leaf cluster (by its first
unit when documents are windowed) and so to a group. Each group's documents form one token stream
[EOS, doc, EOS, doc, ...] scored by that group's expert in non-overlapping windows, as
`impsamp evaluate` scores a file; a file's perplexity is exp(its nats over all groups / its tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorpusError
from .result import TOKENIZER, Experts


def route(experts: Experts, texts: Sequence[str], embedder=None, clusters=None) -> np.ndarray:
    """Group of each text (-1 for a text with no unit, e.g. whitespace only)."""
    clu = clusters if clusters is not None else experts.clusters()
    return route_to_groups(clu, experts.grouping.leaf_group, texts, embedder)


def route_to_groups(clu, leaf_group: np.ndarray, texts: Sequence[str], embedder=None) -> np.ndarray:
    """Group (`leaf_group` of its nearest leaf cluster) of each text; -1 for a text with no unit."""
    from ..embedding import embed_texts

    embedder = embedder if embedder is not None else clu.embeddings().embedder()
    vectors, table = embed_texts(list(texts), embedder)
    leaves = clu.assign(vectors)[:, -1] if len(vectors) else np.zeros(0, dtype=np.int64)
    index = table.column("text_index").to_numpy()
    groups = np.full(len(texts), -1, dtype=np.int64)
    first = np.unique(index, return_index=True)[1]  # the first unit of each text
    groups[index[first]] = np.asarray(leaf_group, dtype=np.int64)[leaves[first]]
    return groups


def evaluate_routed(experts: Experts | str | Path, eval_files: Sequence[str | Path], *, text_field: str = "text",
                    device: str = "auto", progress: bool = False) -> dict[str, Any]:
    """Perplexity and bits per byte of the mixture on each file, every document scored by its group's expert.

    Returns the shape of `impsamp.training.evaluate` plus, per file, `documents_per_group`.
    """
    from ..training.runtime import resolve_device
    from ..training.tokenizer import load_tokenizer

    ex = experts if isinstance(experts, Experts) else Experts.load(experts)
    dev = resolve_device(device)

    def model_of(g: int):
        run = ex.expert(g)
        return run.load_model(dev), run

    return score_routed(ex.clusters(), ex.grouping.leaf_group, ex.n_groups, load_tokenizer(ex.path / TOKENIZER),
                        model_of, eval_files, text_field=text_field, device=dev,
                        routing="nearest leaf cluster's group", progress=progress)


def score_routed(clu, leaf_group: np.ndarray, n_groups: int, tok, model_of: Callable[[int], tuple[Any, Any]],
                 eval_files: Sequence[str | Path], *, text_field: str, device, routing: str,
                 progress: bool = False) -> dict[str, Any]:
    """Each file's documents routed to groups and scored by `model_of(g)` -> (model, its TrainRun),
    one model in memory at a time (see the module doc); `progress`: a bar per group and file."""
    import torch

    from ..io import open_corpus
    from ..training.evaluation import eval_specs, stream_nll
    from ..training.runtime import resolve_dtype

    embedder = clu.embeddings().embedder()  # opened once for every file
    files = []  # (absolute path, texts, group of each text)
    for key, spec in eval_specs(eval_files).items():
        texts = list(open_corpus(spec, text_field=text_field).iter_texts())
        if not texts:
            raise CorpusError(f"{spec}: no document with text to evaluate")
        files.append((key, texts, route_to_groups(clu, leaf_group, texts, embedder)))
    nats = np.zeros(len(files))
    count = np.zeros(len(files))
    for g in range(n_groups):
        if not any((groups == g).any() for _, _, groups in files):
            continue
        model, run = model_of(g)
        dtype = resolve_dtype(run.config.dtype, device)
        ctx = (lambda d=dtype: torch.autocast(device.type, dtype=d)) if dtype != torch.float32 else None
        for i, (_, texts, groups) in enumerate(files):
            docs = [texts[j] for j in np.flatnonzero(groups == g)]
            if not docs:
                continue
            ids = np.concatenate([[tok.eos_id]] + [[*t, tok.eos_id] for t in tok.encode_batch(docs)]).astype(np.int64)
            n, c = stream_nll(model, ids, run.model_config.block_size, run.config.resolved("batch_size"), device, ctx,
                              progress=progress, desc=f"scoring group {g}")
            nats[i] += n
            count[i] += c
        del model
    per_file: dict[str, dict[str, Any]] = {}
    for i, (key, texts, groups) in enumerate(files):
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        per_file[key] = {"ppl": math.exp(nats[i] / count[i]), "bpb": nats[i] / (math.log(2) * max(n_bytes, 1)),
                          "tokens": int(count[i]), "bytes": n_bytes, "loss": nats[i] / count[i],
                          "documents_per_group": np.bincount(groups[groups >= 0], minlength=n_groups).tolist()}
    n = max(len(per_file), 1)
    return {"per_file": per_file, "macro_ppl": sum(v["ppl"] for v in per_file.values()) / n,
            "macro_bpb": sum(v["bpb"] for v in per_file.values()) / n, "routing": routing}

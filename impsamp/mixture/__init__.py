"""Cluster experts (the seed paper's SLM-mix): one small LM per group of clusters, picked per target.

    import impsamp
    ex = impsamp.experts("runs/emb", "runs/clusters", "runs/experts",
                         impsamp.ExpertsConfig(groups=4, total_tokens=2_000_000))
    run = impsamp.specialize(ex, ["law.jsonl"], "runs/law", select="top")   # a fine-tuned `train` run
    impsamp.evaluate_routed(ex, ["generic-heldout.jsonl"])                 # each document by its expert

Modules: config (ExpertsConfig), grouping (clusters -> groups), stage (experts(): group data,
shared tokenizer, one `train` run per group), result (Experts), routing (routed perplexity),
specializing (`specialize`: pick an expert for a target and fine-tune it; a module of the
function's name would, once imported, shadow it).
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import SELECT_RULES, ExpertsConfig

_LAZY = {"experts": "stage", "Experts": "result", "specialize": "specializing",
         "evaluate_routed": "routing"}

__all__ = ["SELECT_RULES", "ExpertsConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'impsamp.mixture' has no attribute {name!r}")

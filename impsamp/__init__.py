"""impsamp: a domain-like pretraining corpus from a generic one, by clustered importance sampling.

    import impsamp
    emb = impsamp.embed("generic/*.jsonl.gz", "runs/emb")
    clusters = impsamp.cluster(emb, "runs/clusters", impsamp.ClusterConfig(k=1024))
    sel = impsamp.resample(emb, clusters, "runs/sel", targets=["law.jsonl"],
                           config=impsamp.ResampleConfig(tokens=50_000_000))

Importing this package loads numpy and pyarrow only; each stage imports its heavy dependencies
(sentence-transformers, faiss, torch) when it runs.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError, CorpusError, ImpsampError, StageError, WeightingError

__version__ = "0.7.21"

# public name -> module that defines it; resolved on first use so `import impsamp` stays light
_LAZY = {
    "open_corpus": "io", "Corpus": "io", "corpus_summary": "io",
    "Manifest": "manifest", "read_manifest": "manifest",
    "embed": "embedding", "Embeddings": "embedding", "EmbedConfig": "embedding",
    "Embedder": "embedding", "HashingEmbedder": "embedding",
    "cluster": "clustering", "Clusters": "clustering", "ClusterConfig": "clustering",
    "histogram": "histograms", "Histogram": "histograms",
    "density_ratio": "weighting", "generic_histogram": "histograms",
    "resample": "resampling", "Selection": "resampling", "ResampleConfig": "resampling",
    "demo_corpus": "datasets",
    "Execution": "scale", "finalize": "finalizing",
    "experts": "mixture", "Experts": "mixture", "ExpertsConfig": "mixture", "specialize": "mixture",
    "evaluate_routed": "mixture", "Costs": "costs",
    "project": "projection", "evaluate_projected": "projection", "distill": "distillation",
    "inspect": "explorer", "evaluate": "scoring",
    "train": "training", "TrainConfig": "training", "TrainRun": "training",
    "compare": "comparison", "CompareConfig": "comparison", "demo": "demonstration", "demo_config": "demonstration",
}

__all__ = ["ImpsampError", "ConfigError", "CorpusError", "StageError", "WeightingError", "__version__",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'impsamp' has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazy names too, for tab completion
    return sorted(set(globals()) | set(__all__))

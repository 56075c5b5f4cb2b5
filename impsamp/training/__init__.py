"""The bundled small-LM trainer: pretrain, fine-tune, evaluate, export (imports torch when used).

    from impsamp.training import TrainConfig, train, evaluate
    run = train(["runs/sel"], "runs/lm", TrainConfig(preset="tiny", steps=300),
                finetune=["law.jsonl"], eval=["law-eval.jsonl"])
    run.metrics["finetuned"]["macro_ppl"]
    evaluate("runs/lm", ["law-eval.jsonl"])            # same shape as run.metrics["pretrained"]
    export("runs/lm", "hf/lm")                         # a transformers LlamaForCausalLM folder

Modules: config (TrainConfig, presets; no torch), shape (ModelConfig), families (the model registry:
`--arch`), model (the Llama-style GPT, family "dense"), projected (family "projected": the shared
network of a projected network / soup of experts, and its small models), tokenizer (BPE),
data (token memmaps, batches), conditioned (per-cluster memmaps and cluster- or histogram-conditioned
batches), checkpoint (safetensors), runtime (device, DDP, memory), loop (train), distill (the
distillation loss), provenance (`--init`, `--teacher`, cost accounting), stopping (early stopping),
result (TrainRun: a finished run), evaluation (ppl, bits per byte), hf (the dense family as a
transformers Llama), exporting (`export`: a run as a transformers folder; a module named `export` would,
once imported, shadow the function).
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import PRESETS, ModelConfig, TokenizerError, TrainConfig, TrainError

_LAZY = {
    "train": "loop", "TrainRun": "result",
    "evaluate": "evaluation",
    "train_tokenizer": "tokenizer", "load_tokenizer": "tokenizer",
    "export": "exporting",
    "GPT": "model",
}

__all__ = ["PRESETS", "ModelConfig", "TokenizerError", "TrainConfig", "TrainError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'impsamp.training' has no attribute {name!r}")

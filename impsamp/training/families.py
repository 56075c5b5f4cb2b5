"""Model families: what the trainer builds from `TrainConfig.arch`, and what it may ask of a model.

The loop, evaluation, checkpointing and `TrainRun` use only this contract, so a new family (cluster
experts, a projected network, ...) is one module plus a `register(ModelFamily(...))` call:

- `build(ModelConfig) -> torch.nn.Module`, a module with
  - `config`: its `ModelConfig`;
  - `forward(idx, targets=None, reduction="mean")`: logits (B, T, V) without targets, else the
    next-token cross-entropy (`reduction` as in `F.cross_entropy`; "none" gives (B, T));
  - optionally `param_groups(weight_decay) -> list[dict]` for AdamW (default: decay on matrices only);
- `export(state_dict, ModelConfig, eos_id) -> (transformers config, state_dict)`, or None when the
  family has no `transformers` equivalent (`impsamp export` then says so).

No torch import here: `TrainConfig` checks `arch` against the registry without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelFamily:
    name: str
    build: Callable[[Any], Any]
    """ModelConfig -> torch.nn.Module (see the module docstring)."""
    description: str
    export: Callable[[dict[str, Any], Any, int], tuple[Any, dict[str, Any]]] | None = None


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    if family.name in FAMILIES and FAMILIES[family.name] != family:
        raise ValueError(f"model family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"--arch {name!r} is unknown; model families: {', '.join(sorted(FAMILIES))}") from None


def build_model(arch: str, model_config: Any) -> Any:
    """A freshly initialised model of family `arch` (seed torch first for reproducible weights)."""
    return get_family(arch).build(model_config)


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: the model's own, or weight decay on matrices (dim >= 2) and none on vectors."""
    if hasattr(model, "param_groups"):
        return model.param_groups(weight_decay)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _build_dense(model_config: Any) -> Any:
    from .model import GPT

    return GPT(model_config)


def _export_dense(state: dict[str, Any], model_config: Any, eos_id: int) -> tuple[Any, dict[str, Any]]:
    from .hf import hf_state_dict, llama_config

    return llama_config(model_config, eos_id), hf_state_dict(state, model_config)


register(ModelFamily("dense", _build_dense, "the Llama-style decoder (RMSNorm, RoPE, SwiGLU, tied embeddings)",
                     _export_dense))


def _build_projected(model_config: Any) -> Any:
    from .projected import ProjectedGPT

    return ProjectedGPT(model_config)


register(ModelFamily("projected", _build_projected,
                     "one shared network whose MLPs are combinations of a basis bank, conditioned on a cluster "
                     "or a histogram (`impsamp project` makes a dense model from it)"))

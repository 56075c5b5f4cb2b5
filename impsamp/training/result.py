"""A finished training run: `TrainRun.load(dir)` reads its config, model shape, metrics and weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import from_dict
from ..manifest import Manifest, read_manifest
from .config import ModelConfig, TrainConfig, TrainError
from .families import build_model
from .tokenizer import LoadedTokenizer, load_tokenizer

PAYLOAD = ("tokenizer.json", "model.safetensors", "config.json", "metrics.jsonl", "eval.json")
"""The files every finished run holds (`TrainRun.load` reads config.json and eval.json)."""


def run_config(model: ModelConfig, train: TrainConfig, *, steps: dict[str, int], tokenizer: dict[str, Any],
               world_size: int = 1, conditioning: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's config.json, as `TrainRun.load` reads it back: whoever writes a run (`train`, `project`)
    writes it through here."""
    return {"model": model.to_dict(), "train": asdict(train), "world_size": world_size, "steps": steps,
            "n_params": model.n_params(), "tokenizer": tokenizer,
            **({"conditioning": conditioning} if conditioning is not None else {})}


def last_window_loss(recs: list[dict[str, Any]], log_every: int) -> float | None:
    """The mean training loss of a phase's last `log_every` window (the steps after the last multiple of it), from
    its log lines weighted by the steps each covers: a checkpoint's line splits a window without moving the figure
    (the last line alone was the loss since the checkpoint, so `--checkpoint-every` changed it)."""
    if not recs:
        return None
    end = recs[-1]["step"]
    start = (end - 1) // log_every * log_every  # lines come at every multiple of log_every: a window starts there
    steps, total, before = 0, 0.0, start
    for r in recs:
        if r["step"] > start:
            total += r["loss"] * (r["step"] - before)
            steps += r["step"] - before
        before = r["step"]
    return round(total / steps, 6)


@dataclass
class TrainRun:
    """A finished training run: its config, model shape and metrics (what `TrainRun.load` reads)."""

    path: Path
    config: TrainConfig
    model_config: ModelConfig
    metrics: dict[str, Any]
    manifest: Manifest | None = None

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainRun:
        manifest = read_manifest(run_dir, expect_stage="train")  # first: it checks `run_dir` is a path
        path = Path(run_dir).absolute()  # the handle outlives an os.chdir
        info = json.loads((path / "config.json").read_text())
        return cls(path, from_dict(TrainConfig, info["train"], source=str(path / "config.json")),
                   ModelConfig(**info["model"]), json.loads((path / "eval.json").read_text()), manifest)

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    def load_tokenizer(self) -> LoadedTokenizer:
        return load_tokenizer(self.tokenizer_path)

    def load_model(self, device: str | torch.device = "cpu", weights: str = "model.safetensors") -> torch.nn.Module:
        from .checkpoint import load_weights

        if not (self.path / weights).is_file():
            raise TrainError(f"{self.path / weights} does not exist (pretrained.safetensors is kept by a run "
                             "that both pretrained on --data and fine-tuned; one started from --init has the "
                             "--init run's)")
        model = build_model(self.config.arch, self.model_config)
        load_weights(model, self.path / weights)
        return model.to(device).eval()

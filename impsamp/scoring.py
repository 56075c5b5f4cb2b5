"""`impsamp.evaluate`: perplexity and bits per byte of any trained output on evaluation files.

    impsamp.evaluate("runs/lm", ["law-eval.jsonl"])["macro_ppl"]          # a dense `train` run
    impsamp.evaluate("runs/experts", ["web-heldout.jsonl"])               # each document by its group's expert
    impsamp.evaluate("runs/pn", ["web-heldout.jsonl"])                    # ... by its cluster's small model

What `impsamp evaluate` runs. A dense run is scored by `training.evaluate`; an `impsamp experts` output by
`mixture.evaluate_routed` and a projected network by `projection.evaluate_projected`, which route each document
to the small model of its own group or cluster (their final weights).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .outdir import complete_manifest


def evaluate(run_dir: str | Path | Any, eval_files: Sequence[str | Path], text_field: str = "text", *,
             device: str = "auto", weights: str = "model.safetensors", progress: bool = False) -> dict[str, Any]:
    """{"per_file": {file: {ppl, bpb, tokens, bytes, loss}}, "macro_ppl", "macro_bpb"} of `run_dir` (a `train`
    run, dense or projected, or an `experts` output) on `eval_files` (each one entry of `per_file`).
    `weights`: "model.safetensors" (final) or "pretrained.safetensors" (a dense run before fine-tuning).
    `progress`: a bar over each file's batches (routed: over each group's)."""
    from .training.evaluation import eval_specs

    run_dir = getattr(run_dir, "path", run_dir)  # a `TrainRun` or `Experts` handle, as the routed scorers take
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ConfigError(f"evaluate: give a run's folder (or its TrainRun / Experts), got {type(run_dir).__name__}")
    eval_files = list(eval_specs(eval_files).values())  # one line for none, before any model is loaded
    manifest = complete_manifest(Path(run_dir)) or {}
    routed = None
    if manifest.get("stage") == "experts":
        routed = "an `impsamp experts` output"
    elif (manifest.get("config") or {}).get("arch") == "projected":
        routed = "a projected network"
    if routed and weights != "model.safetensors":
        raise ConfigError(f"{run_dir} is {routed}: its documents are scored with each small model's final "
                          "weights; drop --weights")
    if routed == "a projected network":
        from .projection import evaluate_projected

        return evaluate_projected(run_dir, eval_files, text_field=text_field, device=device, progress=progress)
    if routed:
        from .mixture import evaluate_routed

        return evaluate_routed(run_dir, eval_files, text_field=text_field, device=device, progress=progress)
    from .training import evaluate as evaluate_dense

    return evaluate_dense(run_dir, eval_files, text_field, device=device, weights=weights, progress=progress)

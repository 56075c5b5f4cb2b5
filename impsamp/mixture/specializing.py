"""`specialize()`: pick the expert for a target and fine-tune it (the seed paper's SLM-mix, per target).

    run = specialize("runs/experts", ["law-sample.jsonl"], "runs/law", select="top",
                     config=TrainConfig(finetune_steps=60, early_stopping=3), eval=["law-heldout.jsonl"])

The target's histogram over the generic clusters, summed per group, says where its mass lies.
Rules: `top` picks the group with the most target mass (the paper's default); `lowest-loss` the
expert with the lowest loss on the sample before fine-tuning; `all` fine-tunes every expert
(candidates in `OUT.candidates/gNNN`) and keeps the one with the lowest loss on the sample's
held-out split (G fine-tunes; the winner is then fine-tuned once more into OUT with the evaluation
files: the same seed gives it the candidate's weights, and that copy is not counted in its cost).
OUT is an ordinary `train` run; `specialization.json` in it records the histogram per group, the
scores and why the expert won, and its costs count the experts' pretraining as generic, the
target's embedding (`top`, which decides by it) and any scoring as selection, and every candidate's
fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..clustering.groups import group_mass
from ..costs import Costs, encoder_flops, forward_flops
from ..errors import ConfigError
from ..histograms import target_counts
from ..io import as_specs
from ..io.discovery import absolute_glob
from .config import SELECT_RULES
from .result import Experts

SPECIALIZATION = "specialization.json"


def specialize(experts: Experts | str | Path, target: str | Path | Sequence[str | Path], out_dir: str | Path, *,
               select: str = "top", config=None, eval: Sequence[str | Path] | None = None,
               progress: bool = False, overwrite: bool = False):
    """Fine-tune the expert a rule picks for `target` into `out_dir`; returns the `TrainRun`.

    Args:
        experts: an `impsamp experts` output.
        target: the in-domain sample (files, folder, glob), or an `impsamp embed` output of it.
        select: top, lowest-loss or all (see the module doc).
        config: a `TrainConfig` for fine-tuning (finetune_steps, finetune_lr, early_stopping, seed, ...);
            the model, tokenizer and shape are the expert's.
        eval: in-domain evaluation files, scored before and after fine-tuning.
    """
    from ..config import as_config
    from ..training import TrainConfig, train

    config = as_config(TrainConfig, config)
    if select not in SELECT_RULES:
        raise ConfigError(f"--select {select!r} is unknown; valid: {', '.join(SELECT_RULES)}")
    ex = experts if isinstance(experts, Experts) else Experts.load(experts)
    text_field = config.text_field if config is not None else "text"
    targets, counts, enc_tokens, enc_params = target_counts(ex.clusters(), target, text_field)
    mass = group_mass(counts, ex.grouping)
    ft = specialization_config(ex, config or TrainConfig(), select)
    if select == "all" and not ft.finetune_val_fraction:
        raise ConfigError("--select all compares the experts on a held-out split of the sample: "
                          "--finetune-val-fraction must be above 0")
    # embedding the target is what `top` decides by; the other rules decide by the experts' losses (the mass is
    # recorded for the report, not charged)
    base = ex.costs.with_part("selection", encoder_flops(enc_params, enc_tokens) if select == "top" else 0.0)
    record: dict[str, Any] = {
        "experts": str(ex.path), "experts_fingerprint": ex.manifest.fingerprint, "select": select,
        "target": [absolute_glob(t) for t in targets], "group_mass": [round(float(m), 6) for m in mass], "top_group": int(np.argmax(mass)),
        "selection_flops": {"target_embedding": encoder_flops(enc_params, enc_tokens)},
        "finetune_config": asdict(ft)}
    if select == "top":
        chosen = int(np.argmax(mass))
        record["why"] = f"group {chosen} holds the most target mass ({mass[chosen]:.1%})"
    elif select == "lowest-loss":
        losses, flops = _losses(ex, targets, ft.text_field, ft.device)
        base = base.with_part("selection", flops)
        record["selection_flops"]["scoring_experts"] = flops
        chosen = int(np.argmin(losses))
        record["scores"] = {"loss_before_finetuning": [round(x, 6) for x in losses]}
        record["why"] = f"expert {chosen} has the lowest loss on the sample before fine-tuning ({losses[chosen]:.4f})"
    else:
        chosen, val, spent = _fine_tune_all(ex, targets, Path(out_dir), ft, progress)
        base = base.with_part("finetuning", spent)
        record["scores"] = {"val_loss_after_finetuning": val}
        record["why"] = (f"fine-tuned all {ex.n_groups} experts; expert {chosen} has the lowest loss on the "
                         f"sample's held-out split ({val[chosen]:.4f})")
    record.update(chosen=chosen, target_mass_on_chosen=round(float(mass[chosen]), 6))
    run_cfg = replace(ft, init=str(ex.expert_path(chosen)))
    return train(None, out_dir, run_cfg, finetune=targets, eval=as_specs(eval) or None, progress=progress,
                 overwrite=overwrite, base_costs=base, records={SPECIALIZATION: record})


def specialization_config(ex: Experts, config, select: str):
    """The fine-tuning settings `specialize` records and uses: `config`'s, with the experts' preset and
    family, and no init, tokenizer or pretraining; `all` holds out 0.1 of the sample unless told otherwise."""
    first = ex.expert(0)
    ft = replace(config, init=None, tokenizer=None, steps=None, tokens=None, preset=first.config.preset,
                 arch=first.config.arch)
    return replace(ft, finetune_val_fraction=0.1) if select == "all" and ft.finetune_val_fraction is None else ft


def _losses(ex: Experts, targets: list[str], text_field: str, device: str = "auto") -> tuple[list[float], float]:
    """Each expert's loss on the whole sample before fine-tuning, and the FLOPs of scoring them."""
    from ..training.evaluation import encode_file, stream_nll
    from ..training.runtime import resolve_device

    dev = resolve_device(device)
    losses, flops = [], 0.0
    tok = ex.expert(0).load_tokenizer()
    ids = np.concatenate([encode_file(t, tok, text_field)[0] for t in targets])
    for g in range(ex.n_groups):
        run = ex.expert(g)
        nats, n = stream_nll(run.load_model(dev), ids, run.model_config.block_size,
                             run.config.resolved("batch_size"), dev)
        losses.append(nats / n)
        flops += forward_flops(run.model_config, n)
    return losses, flops


def _finished(path: Path, cfg, targets: list[str]):
    """The complete candidate run in `path` if it fine-tuned this expert (by fingerprint) on these targets with
    `cfg` (as `train` records it) in this version: the same inputs would give the same bytes."""
    from ..training.provenance import finished_run

    return finished_run(path, cfg, [], targets)


def _fine_tune_all(ex: Experts, targets: list[str], out: Path, ft, progress: bool) -> tuple[int, list[float], float]:
    """Fine-tune every expert; (the best one, each one's held-out loss, the FLOPs of all but the best)."""
    from ..training import train

    where = out.with_name(out.name + ".candidates")
    val, flops = [], []
    for g in range(ex.n_groups):
        cfg = replace(ft, init=str(ex.expert_path(g)))
        run = _finished(where / f"g{g:03d}", cfg, targets)
        if run is None:  # a candidate finished before (a kill, an --overwrite of the same settings) is kept
            run = train(None, where / f"g{g:03d}", cfg, finetune=targets, progress=progress, overwrite=True,
                        base_costs=Costs())
        stop = run.metrics.get("early_stopping")
        loss = stop["best_val_loss"] if stop else run.metrics["train_finetune"]["val_loss"]
        if loss is None:
            raise ConfigError("--select all needs a held-out split of the sample: raise --finetune-val-fraction")
        val.append(round(float(loss), 6))
        flops.append(Costs.from_dict(run.metrics["costs"]).finetuning)
    best = int(np.argmin(val))
    return best, val, sum(f for g, f in enumerate(flops) if g != best)

"""The experts as a `compare` model: pretrained on the generic corpus at the dense model's generic
FLOPs, then specialised for the compare's target (used by `impsamp.comparison`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import StageError


def experts_entry(out: Path, cfg, tcfg, emb, clu, targets: list, evals: list[str], progress: bool,
                  log) -> dict[str, Any]:
    """Build (or reuse) `out/experts` and `out/runs/experts-<select>`; return the report's entry.

    `cfg`: the CompareConfig (groups, expert_select, steps, finetune_steps, seed); `tcfg`: the dense
    runs' TrainConfig, whose shape, tokenizer and batch every expert shares. Each expert trains on its
    share of steps x the dense batch in tokens, so all of them together spend the dense model's
    generic pretraining FLOPs (up to rounding to whole steps).
    """
    from dataclasses import asdict, replace

    from .config import ExpertsConfig
    from .result import Experts
    from .specializing import SPECIALIZATION, specialization_config, specialize
    from .stage import experts

    shape = {k: getattr(tcfg, k) for k in ("preset", "n_layer", "n_embd", "n_head", "block_size", "batch_size",
                                           "dtype", "device") if getattr(tcfg, k) is not None}
    per_step = tcfg.resolved("batch_size") * tcfg.resolved("block_size")
    # the LM seed (--train-seed, else --seed): it seeds the grouping of the clusters and each expert's training
    ecfg = ExpertsConfig(groups=cfg.groups, total_tokens=cfg.steps * per_step, train=shape,
                         tokenizer=tcfg.tokenizer, seed=tcfg.seed)
    path = out / "experts"
    try:
        ex = Experts.load(path)
        if ex.manifest.config != json.loads(json.dumps(asdict(ecfg))) or \
                ex.manifest.inputs["clusters"]["fingerprint"] != clu.manifest.fingerprint:
            raise StageError("stale")
    except StageError:
        log(progress, f"training {cfg.groups} experts")
        ex = experts(emb, clu, path, ecfg, overwrite=True, progress=progress)
    run_path = out / "runs" / f"experts-{cfg.expert_select}"
    ft = replace(tcfg, steps=None, tokenizer=None, finetune_steps=cfg.finetune_steps)
    want = json.loads(json.dumps(asdict(specialization_config(ex, ft, cfg.expert_select))))

    def make():
        log(progress, f"specializing the experts ({cfg.expert_select})")
        return specialize(ex, targets, run_path, select=cfg.expert_select, config=ft, eval=evals, progress=progress,
                          overwrite=True)

    run = _reuse_or(run_path, make, ex, want)
    rec = json.loads((run.path / SPECIALIZATION).read_text())
    return {"metrics": run.metrics, "costs": run.metrics["costs"],  # (its params_total: all the experts')
            "groups": ex.n_groups, "select": cfg.expert_select, "chosen": rec["chosen"],
            "target_mass_on_chosen": rec["target_mass_on_chosen"], "group_mass": rec["group_mass"]}


def _reuse_or(path: Path, make, ex, finetune_config: dict[str, Any]):
    """The finished specialization in `path` if it was made from these experts by this version, else `make()`."""
    from .. import __version__
    from ..training import TrainRun

    try:
        run = TrainRun.load(path)
        rec = json.loads((path / "specialization.json").read_text())
        if rec.get("experts_fingerprint") == ex.manifest.fingerprint and rec.get("finetune_config") == finetune_config \
                and run.manifest.impsamp_version == __version__:
            return run
    except (StageError, OSError, ValueError):
        pass
    return make()

"""The `compare` models beside the dense model per method: each builds (or reuses) its runs under the
compare folder and returns its row of the report.

- experts: `mixture.strategy.experts_entry` (G experts at the dense model's generic FLOPs);
- projected, soup: `projection.projected_entry` (one shared network for the dense steps);
- large: the large preset (`planning.LARGE_PRESET`, about 5x the small one) pretrained on the
  uniform selection (else the generic corpus) at the dense model's generic FLOPs (fewer steps;
  `large_steps` overrides), fine-tuned on the target like the dense runs;
- distill: the dense model pretrained on the same data without fine-tuning (`runs/dense-generic`),
  fine-tuned on the target with the fine-tuned large model as its teacher (`distill_alpha`,
  `distill_temperature`); its costs count the teacher.
Every run is reused when a finished one of the same config, version and data is there, so a killed
compare resumes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import ConfigError


def model_entries(out: Path, cfg, tcfg, emb, clu, selections: dict[str, Any], generic_corpus, targets: list,
                  evals: list[str], progress: bool, log) -> dict[str, Any]:
    """Every non-dense model of `cfg.models`, in a fixed order: {name: report entry}."""
    entries: dict[str, Any] = {}
    if "experts" in cfg.models:
        from .mixture.strategy import experts_entry

        entries["experts"] = experts_entry(out, cfg, tcfg, emb, clu, targets, evals, progress, log)
    for name, condition in (("projected", "cluster"), ("soup", "histogram")):
        if name in cfg.models:
            from .projection import projected_entry

            entries[name] = projected_entry(out, cfg, tcfg, clu, targets, evals, progress, log, condition)
    if "large" in cfg.models or "distill" in cfg.models:
        data = [str(selections["uniform"].path)] if "uniform" in selections else \
            [f.path for f in generic_corpus.files]
        large = _large(out, cfg, tcfg, data, targets, evals, progress, log)
        if "large" in cfg.models:
            entries["large"] = {"metrics": large.metrics, "costs": large.metrics["costs"],
                                "preset": large.config.preset, "steps": large.metrics["train"]["steps"]}
        if "distill" in cfg.models:
            entries["distill"] = _distilled(out, cfg, tcfg, data, large, targets, evals, progress, log)
    return entries


def _large(out: Path, cfg, tcfg, data: list[str], targets: list, evals: list[str], progress: bool, log):
    from .training import train
    from .training.config import padded_vocab
    from .training.provenance import finished_run
    from .training.tokenizer import load_tokenizer

    lcfg = large_config(cfg, tcfg, padded_vocab(load_tokenizer(tcfg.tokenizer).vocab_size))
    path = out / "runs" / "large"
    if (run := finished_run(path, lcfg, data, targets, evals)) is not None:
        return run
    log(progress, f"training the large model ({lcfg.preset}, {lcfg.steps} steps)")
    return train(data, path, lcfg, finetune=targets, eval=evals, progress=progress, overwrite=True)


def large_config(cfg, tcfg, vocab: int):
    """The large model's settings: the large preset of the dense runs' (`planning.LARGE_PRESET`), their tokenizer,
    seed, precision and fine-tuning, and `--large-steps` or as many steps as spend the dense model's generic
    FLOPs, each step its own preset's batch (llm-771m's is a quarter of slm-126m's)."""
    from .planning import LARGE_PRESET
    from .training import TrainConfig

    if tcfg.preset not in LARGE_PRESET:
        raise ConfigError(f"--models large/distill: no large preset for --preset {tcfg.preset} "
                          f"(known: {', '.join(LARGE_PRESET)})")
    lcfg = TrainConfig(preset=LARGE_PRESET[tcfg.preset], tokenizer=tcfg.tokenizer, seed=tcfg.seed,
                       block_size=tcfg.block_size, batch_size=tcfg.batch_size, finetune_steps=cfg.finetune_steps,
                       pretrain_costs="generic", text_field=tcfg.text_field, dtype=tcfg.dtype, device=tcfg.device)

    def step_flops(c) -> float:
        return c.model_config(vocab).flops_per_token() * c.resolved("batch_size") * c.resolved("block_size")

    return replace(lcfg, steps=cfg.large_steps or max(1, round(cfg.steps * step_flops(tcfg) / step_flops(lcfg))))


def _distilled(out: Path, cfg, tcfg, data: list[str], teacher, targets: list, evals: list[str], progress: bool,
               log) -> dict[str, Any]:
    from .distillation import distill, distill_config
    from .training import train
    from .training.provenance import finished_run

    scfg = replace(tcfg, finetune_steps=None, pretrain_costs="generic")
    student_path = out / "runs" / "dense-generic"
    student = finished_run(student_path, scfg, data)
    if student is None:
        log(progress, "pretraining the student (the dense model, no fine-tuning)")
        student = train(data, student_path, scfg, progress=progress, overwrite=True)
    ft, _ = distill_config(replace(tcfg, finetune_steps=cfg.finetune_steps), student.path, teacher.path,
                           cfg.distill_alpha, cfg.distill_temperature)  # (the shape it leaves is the student's)
    path = out / "runs" / "distill"
    run = finished_run(path, ft, [], targets, evals)
    if run is None:
        log(progress, f"distilling {teacher.config.preset} into {student.config.preset}")
        run = distill(teacher.path, student.path, targets, path, alpha=cfg.distill_alpha,
                      temperature=cfg.distill_temperature, config=ft, eval=evals, progress=progress, overwrite=True)
    c = run.metrics["costs"]
    return {"metrics": run.metrics, "costs": c, "teacher": teacher.config.preset, "alpha": cfg.distill_alpha,
            "per_target_without_teacher": c["per_target"] - c["teacher"]}

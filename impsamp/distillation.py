"""`distill()`: fine-tune a small student on a target with a larger teacher's guidance (the seed
paper's SLM-d).

    teacher = train(None, "runs/law-large", TrainConfig(init="runs/large", finetune_steps=60), finetune=[sample])
    run = impsamp.distill("runs/law-large", "runs/dense", "law-sample.jsonl", "runs/law-distilled", alpha=0.5)

The student starts from its run's weights and is fine-tuned on the sample with the loss
(1 - alpha) x cross-entropy + alpha x T^2 x KL(teacher_T || student_T) (`training/distill.py`).
Teacher and student must share one tokenizer. The run's costs count the teacher: its generic
pretraining as generic, its own fine-tuning and its forward passes over the sample as `teacher`
(per target), so a table can show the student's cost with and without its teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .io import as_specs


def distill(teacher: str | Path, student: str | Path, target: str | Path | Sequence[str | Path],
            out_dir: str | Path, *, alpha: float = 0.5, temperature: float = 2.0, config=None,
            eval: Sequence[str | Path] | None = None, progress: bool = False, overwrite: bool = False):
    """Fine-tune `student` (a run) on `target` guided by `teacher` (a run with the same tokenizer).

    `config`: a `TrainConfig` for fine-tuning (finetune_steps, finetune_lr, early_stopping, seed...);
    the model shape and tokenizer are the student's. Returns the `TrainRun` in `out_dir`.
    """
    from .config import as_config
    from .training import TrainConfig, TrainRun, train

    config = as_config(TrainConfig, config)
    base = TrainRun.load(student) if Path(student, "manifest.json").is_file() else None
    cfg = replace(config or TrainConfig(), init=str(student), teacher=str(teacher), alpha=alpha,
                  temperature=temperature, tokenizer=None, steps=None, tokens=None)
    if base is not None:  # the student's own preset and family
        cfg = replace(cfg, preset=base.config.preset, arch=base.config.arch)
    return train(None, out_dir, cfg, finetune=as_specs(target), eval=as_specs(eval) or None, progress=progress,
                 overwrite=overwrite)

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

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .io import as_specs

logger = logging.getLogger(__name__)

FIXED = ("steps", "tokens", "tokenizer", "n_layer", "n_embd", "n_head", "mlp_hidden", "block_size", "vocab_size")
"""`TrainConfig` fields distill does not use: the student fixes the model and its tokenizer, and it only fine-tunes."""


def distill(teacher: str | Path, student: str | Path, target: str | Path | Sequence[str | Path],
            out_dir: str | Path, *, alpha: float = 0.5, temperature: float = 2.0, config=None,
            eval: Sequence[str | Path] | None = None, progress: bool = False, overwrite: bool = False):
    """Fine-tune `student` (a run) on `target` guided by `teacher` (a run with the same tokenizer).

    `config`: a `TrainConfig` for fine-tuning (finetune_steps, finetune_lr, early_stopping, seed...);
    the model shape and tokenizer are the student's. Returns the `TrainRun` in `out_dir`.
    """
    from .training import train

    cfg, unused = distill_config(config, student, teacher, alpha, temperature)
    if unused:  # a shared config file's [train] pretraining settings: said, not silently dropped
        logger.warning("distill does not use %s: the student %s fixes the model and its tokenizer, and distill only "
                       "fine-tunes (--finetune-steps sets how long)", ", ".join(unused), student)
    return train(None, out_dir, cfg, finetune=as_specs(target), eval=as_specs(eval) or None, progress=progress,
                 overwrite=overwrite)


def distill_config(config, student: str | Path, teacher: str | Path, alpha: float, temperature: float):
    """The `TrainConfig` a distillation runs with (`config` with the student as init and the teacher, the student's
    preset and family, nothing of `FIXED`), and the names of `config`'s settings it leaves unused."""
    from .config import as_config
    from .training import TrainConfig, TrainRun

    given = as_config(TrainConfig, config) or TrainConfig()
    cfg = replace(given, init=str(student), teacher=str(teacher), alpha=alpha, temperature=temperature,
                  **dict.fromkeys(FIXED))
    if Path(student, "manifest.json").is_file():  # the student's own preset and family
        own = TrainRun.load(student).config
        cfg = replace(cfg, preset=own.preset, arch=own.arch)
    default = TrainConfig()
    unused = [n for n in (*FIXED, "preset", "arch")
              if getattr(given, n) != getattr(default, n) and getattr(given, n) != getattr(cfg, n)]
    return cfg, unused

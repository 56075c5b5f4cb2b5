"""`impsamp distill`: fine-tune a small student with a larger teacher's next-token distributions."""

from __future__ import annotations

from pathlib import Path

import click

from .app import cli, config_option, out_option, overwrite_option, plural, progress_option, show_progress


@cli.command()
@click.option("--teacher", required=True, type=click.Path(file_okay=False),
              help="A finished run (a larger model, fine-tuned on the target) with the student's tokenizer.")
@click.option("--student", required=True, type=click.Path(file_okay=False),
              help="The run to fine-tune (its weights, tokenizer and shape).")
@click.option("--target", multiple=True, required=True, help="The in-domain sample (repeatable).")
@out_option
@click.option("--alpha", type=float, default=None,
              help="Weight of the distillation term; 0 is plain fine-tuning [default: 0.5].")
@click.option("--temperature", type=float, default=None, help="Softmax temperature of both distributions [default: 2].")
@click.option("--finetune-steps", type=int, default=None, help="Fine-tuning steps [default: one pass].")
@click.option("--finetune-lr", type=float, default=None, help="Fine-tuning peak lr [default: the student's lr / 10].")
@click.option("--early-stopping", type=int, default=None,
              help="Stop after N validations without a lower held-out loss; keep the best weights.")
@click.option("--eval", "eval_files", multiple=True, help="In-domain evaluation files (repeatable).")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N, mps [default: auto].")
@click.option("--seed", type=int, default=None, help="Random seed [default: 0].")
@click.option("--text-field", default=None, help="Text field of --target and --eval [default: text].")
@config_option(section="train")
@overwrite_option
@progress_option
def distill(teacher, student, target, out_dir, alpha, temperature, finetune_steps, finetune_lr, early_stopping,
            eval_files, device, seed, text_field, config_file, overwrite, progress):
    """Fine-tune --student on --target, guided by --teacher (the seed paper's distillation).

    \b
    Example:
      impsamp train --init runs/large --finetune law.jsonl --out runs/law-large   # the teacher
      impsamp distill --teacher runs/law-large --student runs/dense --target law.jsonl --out runs/law-d \\
          --alpha 0.5 --temperature 2 --eval law-eval.jsonl
    The loss is (1 - alpha) x cross-entropy + alpha x T^2 x KL(teacher || student) at temperature T.
    The run's costs count the teacher (its pretraining as generic; its fine-tuning and its forward
    passes over the sample per target): `impsamp info OUT` shows them.
    """
    from impsamp.distillation import distill as run_distill

    from impsamp.config import resolve_config
    from impsamp.training import TrainConfig

    cfg = resolve_config(TrainConfig, config_file, "train", finetune_steps=finetune_steps, finetune_lr=finetune_lr,
                         early_stopping=early_stopping, device=device, seed=seed, text_field=text_field)
    run = run_distill(teacher, student, list(target), out_dir, alpha=0.5 if alpha is None else alpha,
                      temperature=2.0 if temperature is None else temperature, config=cfg,
                      eval=list(eval_files), progress=show_progress(progress), overwrite=overwrite)
    c = run.metrics["costs"]
    line = f"{Path(out_dir)}: distilled for {plural(run.metrics['train_finetune']['steps'], 'step')}"
    if "finetuned" in run.metrics:
        line += (f"; macro ppl {run.metrics['pretrained']['macro_ppl']:.2f} -> "
                 f"{run.metrics['finetuned']['macro_ppl']:.2f}")
    click.echo(line + f"; per-target FLOPs {c['per_target']:.3g} (teacher {c['teacher']:.3g})")


__all__ = ["distill"]

"""`impsamp train`, `impsamp evaluate`, `impsamp export`: the bundled small-LM trainer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from impsamp.config import resolve_config
from impsamp.errors import ImpsampError
from impsamp.training.config import PRESETS, TrainConfig
from impsamp.training.families import FAMILIES

from .app import COUNT, cli, config_option, out_option, overwrite_option, plural, progress_option, show_progress

_INT_FLAGS = {
    "n_layer": "Transformer layers.", "n_embd": "Model width.", "n_head": "Attention heads.",
    "mlp_hidden": "Hidden size of the SwiGLU MLP.", "block_size": "Context length in tokens.",
    "vocab_size": "BPE vocabulary to train [preset: 4096 tiny, mini and tiny-large; 32000 slm-126m and "
                  "llm-771m].",
    "steps": "Optimizer steps [default: one pass over the data].",
    "batch_size": "Sequences per micro-batch per process (global batch: see above).",
    "grad_accum": "Micro-batches per optimizer step.",
    "warmup_steps": "Pretraining's linear warm-up steps [default: min(1000, steps/20)].",
    "finetune_steps": "Fine-tuning steps [default: one pass over the fine-tuning data].",
    "finetune_warmup_steps": "Fine-tuning's linear warm-up steps [default: min(1000, finetune steps/20)].",
    "checkpoint_every": "Steps between resumable checkpoints.", "seed": "Random seed.",
    "log_every": "Steps between metrics lines.",
    "early_stopping": "Stop fine-tuning after N validations without a lower in-domain validation loss; "
                      "keep the best weights [default: off].",
    "eval_every": "Fine-tuning steps between those validations [default: finetune steps / 10].",
}
_FLOAT_FLAGS = {"lr": "Peak learning rate [preset].", "finetune_lr": "Fine-tuning peak lr [default: lr/10].",
                "grad_clip": "Clip the gradient norm (0: off).", "weight_decay": "AdamW weight decay.",
                "val_fraction": "Share of documents held out for the validation loss.",
                "finetune_val_fraction": "Share of the in-domain sample held out for validation "
                                         "[default: 0.1 with --early-stopping, else --val-fraction]."}


def _train_options(f):
    f = click.option("--tokens", type=COUNT, default=None,
                     help="Token budget instead of --steps (2e9 is fine), in steps of the global batch.")(f)
    for name, text in reversed(list(_FLOAT_FLAGS.items())):
        f = click.option("--" + name.replace("_", "-"), name, type=float, default=None, help=text)(f)
    for name, text in reversed(list(_INT_FLAGS.items())):
        f = click.option("--" + name.replace("_", "-"), name, type=int, default=None, help=text)(f)
    return f


@cli.command()
@click.option("--data", multiple=True,
              help="Training corpus: a `resample` selection, Parquet, JSONL, a folder or glob (repeatable); "
                   "optional with --init.")
@click.option("--init", "init", type=click.Path(file_okay=False), default=None,
              help="Start from this finished run: its weights, tokenizer and shape (fine-tune any model).")
@out_option
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help="Model size [default: tiny].")
@click.option("--arch", type=click.Choice(sorted(FAMILIES)), default=None,
              help="Model family [default: dense, the Llama-style decoder].")
@click.option("--clusters", type=click.Path(file_okay=False), default=None,
              help="--arch projected: a `cluster` output; its corpus is the data, its clusters the conditions.")
@click.option("--level", type=int, default=None,
              help="--arch projected: condition on the nodes of this level of the tree [default: every leaf].")
@click.option("--condition", type=click.Choice(["cluster", "histogram"]), default=None,
              help="--arch projected: one cluster per micro-batch (projected network) or random mixtures of "
                   "clusters (soup of experts) [default: cluster].")
@click.option("--basis", type=int, default=None, help="--arch projected: basis matrices h per MLP weight [16].")
@click.option("--code-dim", type=int, default=None, help="--arch projected: size m of a cluster's code [16].")
@click.option("--codes", type=click.Choice(["learned", "onehot"]), default=None,
              help="--arch projected: learned codes, or one basis per cluster (a mixture of experts).")
@click.option("--tokenizer", type=click.Path(dir_okay=False), default=None,
              help="Use this tokenizer.json instead of training a BPE on the data.")
@click.option("--finetune", multiple=True,
              help="In-domain sample to fine-tune on after pretraining (repeatable).")
@click.option("--eval", "eval_files", multiple=True,
              help="Files to score before/after fine-tuning (repeatable).")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N, mps [default: auto].")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default=None,
              help="Autocast dtype [default: bfloat16 on CUDA and on CPUs with AMX or AVX512-BF16, "
              "else float32].")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile [default: on CUDA].")
@click.option("--text-field", default=None, help="Field holding the document text of --finetune, --eval and "
              "--data files; a selection folder as --data is read from its own `text` [default: text].")
@click.option("--keep-checkpoints", is_flag=True, default=None, help="Keep the last checkpoint in the run.")
@click.option("--pretrain-costs", type=click.Choice(["auto", "generic", "per-target"]), default=None,
              help="Charge pretraining FLOPs to generic (paid once) or per-target [default: auto: per-target "
                   "when --data is a `resample` selection].")
@click.option("--resume", is_flag=True,
              help="Require an interrupted run in --out (rerunning resumes anyway).")
@_train_options
@config_option
@overwrite_option
@progress_option
def train(data, init, out_dir, preset, arch, clusters, level, condition, basis, code_dim, codes, tokenizer, finetune, eval_files, device, dtype, compile_, text_field,
          keep_checkpoints, pretrain_costs, resume, config_file, overwrite, progress, **numbers):
    """Pretrain a small LM on --data, optionally fine-tune on --finetune, score --eval files.

    \b
    Examples:
      impsamp train --data runs/sel --out runs/lm --steps 300
      impsamp train --data runs/sel --out runs/lm --preset slm-126m --tokens 2e9 \\
          --finetune law-sample.jsonl --finetune-steps 500 --eval law-eval.jsonl
      torchrun --nproc_per_node 8 -m impsamp train --data runs/sel --out runs/lm --preset slm-126m
      impsamp train --init runs/lm --finetune law-sample.jsonl --early-stopping 3 --out runs/law
      impsamp train --arch projected --clusters runs/clu --out runs/pn --steps 2000   # then `impsamp project`
    A killed run resumes when the same command is run again. Every run records its cost in FLOPs
    (generic, per target, inference) in eval.json; `impsamp info RUN` shows it.

    Under torchrun every process trains a replica with DistributedDataParallel (NCCL on GPU, gloo on
    CPU), draws its batches from its own slice of the tokens and averages gradients, so one optimizer
    step sees a global batch of --batch-size x --grad-accum x world size sequences of --block-size
    tokens (world size = torchrun's --nproc_per_node x --nnodes). Rank 0 alone trains the tokenizer,
    tokenizes, writes checkpoints, logs and outputs, and scores --eval; fine-tuning runs on all
    ranks. Resume with the same world size. On several nodes --out must be on a shared filesystem.
    """
    from impsamp.training import train as run_training

    if not data and not init and not clusters:
        raise click.UsageError("give --data (the training corpus), or --init RUN with --finetune "
                               "(or --arch projected --clusters CLU)")
    _check_tuning(numbers, finetune, pretrains=bool(data or clusters))
    if init and preset is not None:  # train() takes the run's preset, family, lr and batch (`with_init_defaults`);
        _check_init_preset(init, preset)  # an explicit --preset of its default (tiny) it could not tell apart
    cfg = resolve_config(TrainConfig, config_file, "train", preset=preset, arch=arch, tokenizer=tokenizer,
                         device=device, dtype=dtype, compile=compile_, text_field=text_field, init=init,
                         clusters=clusters, level=level, condition=condition, basis=basis, code_dim=code_dim,
                         codes=codes, pretrain_costs=pretrain_costs, keep_checkpoints=keep_checkpoints, **numbers)
    run = run_training(list(data), out_dir, cfg, finetune=list(finetune) or None,
                       eval=list(eval_files) or None,
                       progress=show_progress(progress), overwrite=overwrite, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for phase in ("train", "train_finetune"):
        t = run.metrics.get(phase)
        if t is None:
            continue
        val = f", validation loss {t['val_loss']:.4f}" if t.get("val_loss") is not None else ""
        what = "trained" if phase == "train" else "fine-tuned"
        click.echo(f"{out_dir}: {what} {run.model_config.n_params():,} parameters for {plural(t.get('steps'), 'step')} "
                   f"({t.get('tokens', 0):,} tokens, {t.get('tokens_per_s') or 0:,.0f} tokens/s), "
                   f"final loss {t.get('final_loss'):.4f}{val}")
    if stop := run.metrics.get("early_stopping"):
        click.echo(f"  early stopping: best validation loss {stop['best_val_loss']:.4f} at step "
                   f"{stop['best_step']}" + (f", stopped at {stop['stopped_at']}" if stop["stopped_at"] else ""))
    init_only = run.config.init and "train" not in run.metrics  # with --data the run pretrained them further
    before = "before fine-tuning (the --init run's weights)" if init_only else "pretrained"
    for key, label in (("pretrained", before), ("finetuned", "finetuned")):
        if key in run.metrics:
            m = run.metrics[key]
            click.echo(f"  {label}: macro ppl {m['macro_ppl']:.2f}, bits/byte {m['macro_bpb']:.3f} "
                       f"over {plural(len(m['per_file']), 'file')}")


def _check_tuning(numbers: dict, finetune, pretrains: bool) -> None:
    """Warn of flags of a phase the run has not: scripts pass one set of flags to every run."""
    tuning = [f"--{k.replace('_', '-')}" for k in ("finetune_steps", "finetune_lr", "finetune_warmup_steps",
                                                    "early_stopping", "eval_every", "finetune_val_fraction")
              if numbers.get(k) is not None]
    if tuning and not finetune:
        click.echo(f"warning: {', '.join(tuning)} ignored: no --finetune sample to fine-tune on", err=True)
    pretraining = [f"--{k.replace('_', '-')}" for k in ("steps", "tokens", "warmup_steps") if numbers.get(k) is not None]
    if pretraining and not pretrains:
        click.echo(f"warning: {', '.join(pretraining)} ignored: no --data to pretrain on (--finetune-steps and "
                   "--finetune-warmup-steps set fine-tuning's)", err=True)


def _check_init_preset(init: str, preset: str) -> None:
    from impsamp.training import TrainRun

    try:
        own = TrainRun.load(init).config.preset
    except (ImpsampError, OSError, ValueError, TypeError):
        return  # train() says what is wrong with the run
    if own != preset:
        raise click.UsageError(f"--init {init} fixes the model (preset {own}): drop --preset {preset}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--eval", "eval_files", multiple=True, required=True, help="File to score (repeatable).")
@click.option("--text-field", default="text", show_default=True, help="Field holding the document text.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N, mps.")
@click.option("--weights", type=click.Choice(["model.safetensors", "pretrained.safetensors"]),
              default="model.safetensors", show_default=True, help="Final or pre-fine-tuning weights.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@progress_option
def evaluate(run_dir, eval_files, text_field, device, weights, as_json, progress):
    """Perplexity and bits per byte of a trained run on each --eval file, and their macro average.

    \b
    Example:
      impsamp evaluate runs/lm --eval law-eval.jsonl --eval med-eval.jsonl
      impsamp evaluate runs/experts --eval generic-heldout.parquet
    On an `impsamp experts` output each document is scored by the expert of its own group; on a
    projected network (`--arch projected`), by the small model of its own cluster.
    """
    from impsamp.scoring import evaluate as run_eval

    if int(os.environ.get("RANK", "0")) != 0:
        return  # scoring is one process's work: under torchrun, rank 0 does it and the others exit
    m = run_eval(run_dir, list(eval_files), text_field, device=device, weights=weights,
                 progress=show_progress(progress))
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    here = Path.cwd()  # the files under the working folder shown relative to it (the JSON keeps absolute paths)
    shown = {k: Path(k).relative_to(here).as_posix() if Path(k).is_relative_to(here) else k for k in m["per_file"]}
    width = max(len(k) for k in shown.values())
    click.echo(f"{'file':<{width}}  {'tokens':>10}  {'bytes':>12}  {'ppl':>9}  {'bits/byte':>9}")
    for path, v in m["per_file"].items():
        click.echo(f"{shown[path]:<{width}}  {v['tokens']:>10,}  {v['bytes']:>12,}  {v['ppl']:>9.2f}  "
                   f"{v['bpb']:>9.3f}")
    label = f"macro average ({plural(len(m['per_file']), 'file')})"
    click.echo(f"{label:<{width + 26}}  {m['macro_ppl']:>9.2f}  {m['macro_bpb']:>9.3f}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--weights", type=click.Choice(["model.safetensors", "pretrained.safetensors"]),
              default="model.safetensors", show_default=True, help="Final or pre-fine-tuning weights.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in OUT (never a folder of something else).")
def export(run_dir, out, weights, overwrite):
    """Write a trained run as a Hugging Face transformers (Llama) checkpoint folder.

    \b
    Example:
      impsamp export runs/lm hf/lm
      python -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('hf/lm')"
    """
    from impsamp.training import export as run_export

    path = run_export(run_dir, out, weights=weights, overwrite=overwrite)
    click.echo(f"{path}: transformers LlamaForCausalLM checkpoint with its tokenizer")


__all__ = ["train", "evaluate", "export", "out_option"]

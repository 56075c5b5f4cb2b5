"""`impsamp experts` (one small LM per group of clusters) and `impsamp specialize` (pick one, fine-tune it)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from impsamp.config import config_section, from_dict, named_where_given, without_replaced
from impsamp.errors import ConfigError
from impsamp.training.config import PRESETS

from .app import (COUNT, cli, config_option, execution, out_option, overwrite_option, plural, progress_option,
                  scale_options, show_progress)


@cli.command()
@click.argument("embeddings_dir", type=click.Path(path_type=Path))
@click.argument("clusters_dir", type=click.Path(path_type=Path))
@out_option
@click.option("--groups", type=int, default=None,
              help="Experts: merge the clusters into this many groups by k-means on their centroids "
                   "(a clustering with exactly this many clusters is used as is) [default: 4].")
@click.option("--level", type=int, default=None,
              help="Group by the nodes of this level of a hierarchical clustering (0: the top).")
@click.option("--tokens-per-expert", type=COUNT, default=None, help="Training tokens of every expert.")
@click.option("--total-tokens", type=COUNT, default=None,
              help="Training tokens of all experts, split in proportion to the groups' tokens (the generic "
                   "pretraining FLOPs of one dense model on that many tokens) [default: one pass over each group].")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help="Every expert's size [default: tiny].")
@click.option("--tokenizer", type=click.Path(dir_okay=False), default=None,
              help="A tokenizer.json the experts share [default: a BPE trained on the generic corpus].")
@click.option("--seed", type=int, default=None, help="Seed of the grouping and the training [default: 0].")
@scale_options(slices_help="Slices of a Slurm array: each trains the experts with index % --num-shards == "
                           "--shard-index (then `impsamp finalize DIR`).")
@config_option
@overwrite_option
@progress_option
def experts(embeddings_dir, clusters_dir, out_dir, groups, level, tokens_per_expert, total_tokens, preset,
            tokenizer, seed, engine, ray_address, num_shards, shard_index, config_file, overwrite, progress):
    """Pretrain one small LM per group of clusters of the generic corpus (the seed paper's SLM-mix).

    \b
    Examples:
      impsamp experts runs/emb runs/clusters --out runs/experts --groups 4 --total-tokens 2e6
      impsamp experts runs/emb runs/tree --out runs/experts --level 0 --engine ray
      impsamp experts runs/emb runs/clusters --out runs/experts --num-shards 4 --shard-index $SLURM_ARRAY_TASK_ID

    Each expert is an ordinary `impsamp train` run in OUT/experts/gNNN (evaluate, export and --init
    work on it); OUT/data/gNNN holds its group's documents. The [experts] section of --config takes
    the same keys, and [experts.train] any `impsamp train` setting of the experts (lr, batch_size, ...).
    A killed run resumes where it stopped. `impsamp specialize OUT --target SAMPLE` then picks and
    fine-tunes one expert per target; `impsamp evaluate OUT --eval FILE` scores held-out text with
    each document routed to its group's expert.
    """
    from impsamp.mixture import ExpertsConfig
    from impsamp.mixture import experts as run_experts

    section = config_section(config_file, "experts") if config_file else {}
    if not isinstance(section.get("train", {}), dict):
        raise ConfigError(f"{config_file}: 'experts.train' must be a table ([experts.train] with keys under it)")
    in_section = section.pop("preset", None)  # [experts] preset = ..., as the flag (which wins)
    preset = preset or in_section
    if preset:  # the flag wins over [experts.train] preset, the section's other keys stay
        section["train"] = {**(section.get("train") or {}), "preset": preset}
    flags = {k: v for k, v in dict(groups=groups, level=level, tokens_per_expert=tokens_per_expert,
                                   total_tokens=total_tokens, tokenizer=tokenizer, seed=seed).items() if v is not None}
    source = f"{config_file} [experts]" if config_file else "flags"
    try:
        cfg = from_dict(ExpertsConfig, {**without_replaced(ExpertsConfig, section, flags), **flags}, source=source)
    except ConfigError as e:
        if config_file and str(e).startswith("[experts.train]"):  # the train settings' own check: name the file
            raise ConfigError(f"{config_file} {e}") from None
        raise named_where_given(ExpertsConfig, e, section, flags, source) from None
    ex = execution(engine, ray_address, num_shards, shard_index)
    result = run_experts(embeddings_dir, clusters_dir, out_dir, cfg, execution=ex, overwrite=overwrite,
                         progress=show_progress(progress))
    if ex.sliced:
        click.echo(result.summary())
        return
    s = result.manifest.stats
    click.echo(f"{out_dir}: {s['groups']} experts ({s['grouping']})")
    for g in s["per_group"]:
        val = f", validation loss {g['val_loss']:.4f}" if g["val_loss"] is not None else ""
        click.echo(f"  expert {g['group']}: {plural(g['clusters'], 'cluster')}, {g['documents']:,} documents, trained "
                   f"{g['trained_tokens']:,} tokens{val}")


@cli.command()
@click.argument("experts_dir", type=click.Path(path_type=Path))
@click.option("--target", "target", multiple=True, required=True,
              help="The in-domain sample (files, folder, glob; repeatable), or an `impsamp embed` output of it.")
@out_option
@click.option("--select", type=click.Choice(["top", "lowest-loss", "all"]), default="top", show_default=True,
              help="top: the group with the most target mass; lowest-loss: the expert with the lowest loss on "
                   "the sample; all: fine-tune each, keep the best on a held-out split (G times the cost).")
@click.option("--eval", "eval_files", multiple=True, help="In-domain evaluation text (repeatable).")
@click.option("--finetune-steps", type=int, default=None, help="Fine-tuning steps [default: one pass].")
@click.option("--finetune-lr", type=float, default=None, help="Fine-tuning peak lr [default: the expert's lr/10].")
@click.option("--early-stopping", type=int, default=None,
              help="Stop after N validations without improvement, keep the best weights [default: off].")
@click.option("--eval-every", type=int, default=None, help="Steps between validations [default: steps/10].")
@click.option("--finetune-val-fraction", type=float, default=None,
              help="Share of the sample held out for validation [default: 0.1 with --early-stopping or --select all].")
@click.option("--seed", type=int, default=None, help="Seed [default: 0].")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N [default: auto].")
@click.option("--text-field", default=None, help="Text field of --target and --eval [default: text].")
@overwrite_option
@progress_option
def specialize(experts_dir, target, out_dir, select, eval_files, finetune_steps, finetune_lr, early_stopping,
               eval_every, finetune_val_fraction, seed, device, text_field, overwrite, progress):
    """Pick the expert for a target by its cluster histogram, and fine-tune it.

    \b
    Example:
      impsamp specialize runs/experts --target law-sample.jsonl --out runs/law --early-stopping 3 \\
          --eval law-heldout.jsonl
    OUT is an ordinary `impsamp train` run; OUT/specialization.json says which expert won and why.
    """
    from impsamp.mixture import specialize as run_specialize
    from impsamp.training import TrainConfig

    flags = dict(finetune_steps=finetune_steps, finetune_lr=finetune_lr, early_stopping=early_stopping,
                 eval_every=eval_every, finetune_val_fraction=finetune_val_fraction, seed=seed, device=device,
                 text_field=text_field)
    cfg = TrainConfig(**{k: v for k, v in flags.items() if v is not None})
    run = run_specialize(experts_dir, list(target), out_dir, select=select, config=cfg, eval=list(eval_files),
                         progress=show_progress(progress), overwrite=overwrite)
    rec = json.loads((run.path / "specialization.json").read_text())
    click.echo(f"{out_dir}: expert {rec['chosen']} ({select}): {rec['why']}")
    click.echo("  target mass per group: " + ", ".join(f"{g}: {m:.1%}" for g, m in enumerate(rec["group_mass"])))
    for key in ("pretrained", "finetuned"):
        if key in run.metrics:
            click.echo(f"  {key}: macro ppl {run.metrics[key]['macro_ppl']:.2f}")


__all__ = ["experts", "specialize"]

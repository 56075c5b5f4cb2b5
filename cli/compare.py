"""`impsamp compare` (the paper's experiment on your data) and `impsamp demo` (on the bundled corpus)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from impsamp.comparison import K_DEFAULT, METHODS, MODELS, CompareConfig
from impsamp.comparison import compare as _compare
from impsamp.config import resolve_config
from impsamp.demonstration import DEMO_DEFAULTS
from impsamp.resampling import WITHIN_REPEATS
from impsamp.resampling.stage import command_line
from impsamp.training.config import DTYPES

from .app import COUNT, cli, config_option, overwrite_option, progress_option, show_progress

_methods = click.option("--methods", default=None, metavar="M1,M2,...",
                        help=f"Selectors to compare, from {', '.join(METHODS)} [default: uniform,importance].")


def _split(methods: str | None, flag: str = "--methods") -> tuple[str, ...] | None:
    if methods is None:
        return None
    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    if not names:
        raise click.BadParameter("names no entry; give a comma-separated list, or leave the flag out for the "
                                 "default", param_hint=f"'{flag}'")
    return names


def _shared_options(f=None, *, defaults: dict | None = None):
    d = {name: getattr(CompareConfig, name) for name in ("tokens", "steps", "finetune_steps", "preset")}
    d["k"] = f"{K_DEFAULT}, or the k of --clusters"
    d.update(defaults or {})

    def apply(f):
        for opt in reversed([
            click.option("--tokens", type=COUNT, default=None, help="Selection budget per method, in tokens "
                         f"[default: {d['tokens']:,}]."),
            click.option("--k", type=int, default=None, help=f"k-means clusters [default: {d['k']}]."),
            click.option("--steps", type=int, default=None,
                         help=f"Pretraining steps [default: {d['steps']}]."),
            click.option("--finetune-steps", type=int, default=None,
                         help=f"Fine-tuning steps on the in-domain sample [default: {d['finetune_steps']}]."),
            click.option("--preset", default=None, help=f"LM preset [default: {d['preset']}]."),
            click.option("--seed", type=int, default=None, help="Seed of every stage [default: 0]."),
        ]):
            f = opt(f)
        return f

    return apply(f) if f is not None else apply


@cli.command()
@click.option("--generic", "generic", multiple=True, required=True, help="The generic corpus (file, folder, glob).")
@click.option("--target", "target", multiple=True, required=True, help="The in-domain sample (file, folder, glob; repeat for more files, read as one sample).")
@click.option("--eval", "eval_files", multiple=True, required=True, help="In-domain evaluation text (repeat: each file scored on its own, the report gives their mean).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Report folder.")
@click.option("--embeddings", type=click.Path(path_type=Path), default=None,
              help="Reuse an `impsamp embed` output of the generic corpus.")
@click.option("--clusters", type=click.Path(path_type=Path), default=None,
              help="Reuse an `impsamp cluster` output of those embeddings.")
@_methods
@click.option("--models", default=None, metavar="M1,M2",
              help=f"Models to compare, from {', '.join(MODELS)} [default: dense]. dense: the preset trained on "
                   "each method's selection; experts: --groups experts trained on the generic corpus at the same "
                   "generic FLOPs, the target's expert fine-tuned; projected / soup: a projected network / a soup "
                   "of experts trained on the generic corpus for the same steps, its small model for the target "
                   "projected and fine-tuned; large: the large preset (tiny-large for tiny) at the same generic "
                   "FLOPs; distill: the dense model fine-tuned with the fine-tuned large one as its teacher.")
@click.option("--large-steps", type=int, default=None,
              help="Pretraining steps of the large model [default: the dense model's generic FLOPs].")
@click.option("--alpha", "distill_alpha", type=float, default=None, help="Distillation weight [default: 0.5].")
@click.option("--targets-expected", type=int, default=None,
              help="Planning: how many targets you expect (C(N) is reported there).")
@click.option("--inference-budget", default=None,
              help="Planning: the largest model you can serve, active parameters (5e6) or FLOPs per token (1e7flops).")
@click.option("--per-target-budget", type=float, default=None, help="Planning: the most FLOPs you can spend per target.")
@click.option("--pretraining-budget", type=float, default=None,
              help="Planning: the most generic FLOPs you can spend before any target is known.")
@click.option("--total-budget", type=float, default=None,
              help="Planning: the most FLOPs for all the targets expected together, C(N) = generic + N x per-target "
                   "(needs --targets-expected).")
@click.option("--groups", type=int, default=None, help=f"Experts [default: {CompareConfig.groups}].")
@click.option("--basis", type=int, default=None,
              help="Basis matrices per layer (h) of the projected network and the soup [default: 16].")
@click.option("--select", "expert_select", type=click.Choice(["top", "lowest-loss", "all"]), default=None,
              help="How the target's expert is picked [default: top].")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="Every model's autocast dtype [default: auto: bfloat16 on a GPU or on a CPU with AMX or "
                   "AVX512-BF16, else float32]; fix it to compare figures across machines.")
@click.option("--within", default=None, metavar="auto|uniform|knn|knn+ngram|ngram-classifier|MODULE:FUNCTION",
              help="importance: how documents are weighted inside the clusters' quotas (resample --within) "
                   "[default: auto: ngram-classifier].")
@click.option("--within-temperature", type=float, default=None,
              help="importance: tau of the document weights inside the clusters' quotas: ngram-classifier "
                   "exp(z(log-odds) / (2 tau)), knn exp((cosine to the nearest target document - 1) / tau), "
                   "knn+ngram exp((z(cosine) + z(n-gram log-ratio)) / (5 tau)) [default: 0.05].")
@click.option("--within-repeats", type=click.Choice(WITHIN_REPEATS), default=None,
              help="importance: even (no document drawn more often than its cluster's quota needs, "
                   "ceil(quota / cluster size)) or weighted (the weights decide, up to the cap) [default: even].")
@click.option("--max-repeat", type=int, default=None,
              help="importance methods: most draws of one document, the rest spilled to the nearest clusters "
                   "[default: 4 for importance (1 with --within-top), none for importance-uniform].")
@click.option("--within-top", type=float, default=None, metavar="F",
              help="importance: only the units of highest --within weight holding F times the budget may be "
                   "drawn, each once (with --max-repeat R: F / R times the budget, each up to R times); the "
                   "quotas bend toward them (resample --within-top) [default: off].")
@_shared_options
@click.option("--train-seed", type=int, default=None,
              help="Seed of the LMs' initialisation and batches, to train the same selections again and see how "
                   "much of a difference is the training's own noise [default: --seed].")
@click.option("--lm-seeds", type=int, default=None, metavar="N",
              help="Train every selection's LM under N seeds (--train-seed, else --seed, and the N - 1 after "
                   "it): the report gives mean perplexities ± a standard error, and each method's difference from "
                   "the first one paired on the seed, so a gap can be told from the training's noise (N times the "
                   "training time) [default: 1].")
@click.option("--text-field", default=None, help="Text field of --generic, --target and --eval (one field for all) [default: text].")
@config_option
@overwrite_option
@progress_option
def compare(generic, target, eval_files, out_dir, embeddings, clusters, methods, models, groups, basis, expert_select,
            large_steps, distill_alpha, targets_expected, inference_budget, per_target_budget, pretraining_budget,
            total_budget, dtype,
            within, within_temperature, within_repeats, within_top, max_repeat, tokens, k, steps, finetune_steps,
            preset, seed, train_seed, lm_seeds, text_field, config_file,
            overwrite, progress):
    """Select with each method at the same budget, train the same LM on each, compare perplexities.

    \b
    Example:
      impsamp compare --generic 'web/*.jsonl.gz' --target law_sample.jsonl --eval law_heldout.jsonl \\
          --out runs/law-compare --methods uniform,importance,ngram,classifier
      impsamp compare --generic 'web/*.jsonl.gz' --target law_sample.jsonl --eval law_heldout.jsonl \\
          --out runs/law-plan --methods uniform,importance --models dense,experts,projected,large,distill \\
          --targets-expected 100 --inference-budget 5e6 --per-target-budget 3e13

    Every row carries its costs: generic pretraining FLOPs (paid once for all targets), per-target FLOPs,
    inference FLOPs per token and the parameters that run at inference. The report's planning section
    gives C(N) = generic + N x per-target (plan.png), the strategy with the lowest perplexity within
    the budgets you state and the runner-up, and the decision figure (decision.png).
    """
    cfg = resolve_config(CompareConfig, config_file, "compare", methods=_split(methods),
                         models=_split(models, "--models"),
                         groups=groups, basis=basis, expert_select=expert_select, large_steps=large_steps,
                         distill_alpha=distill_alpha, targets_expected=targets_expected,
                         inference_budget=inference_budget, per_target_budget=per_target_budget,
                         pretraining_budget=pretraining_budget, total_budget=total_budget,
                         dtype=dtype, within=within, within_temperature=within_temperature, within_repeats=within_repeats,
                         within_top=within_top, max_repeat=max_repeat, tokens=tokens, k=k,
                         steps=steps, finetune_steps=finetune_steps, preset=preset, seed=seed, train_seed=train_seed,
                         lm_seeds=lm_seeds, text_field=text_field)
    report = _compare(list(generic), list(target), list(eval_files), out_dir, cfg, embeddings=embeddings,
                      clusters=clusters, overwrite=overwrite, progress=show_progress(progress), command=command_line())
    click.echo(report.table())
    plan = report.results.get("plan", {})
    if plan.get("budgets", {}) and any(v is not None for k, v in plan["budgets"].items() if k != "inference_unit"):
        runner_up = f"runner-up {plan['runner_up']}" if plan.get("runner_up") else "no other strategy fits"
        click.echo(f"plan: {plan['best']} ({runner_up})" if plan["best"] else f"plan: {plan['why']}")
    click.echo(f"report: {out_dir / 'report.md'} (in a browser: {out_dir / 'report.html'})")


@cli.command()
@click.option("--target", "domain", default="python_docs", show_default=True,
              help="Bundled domain to imitate (see data_cards/impsamp-demo.md).")
@click.option("--all-methods", is_flag=True,
              help="Also run the importance-uniform (the seed paper's), ngram (DSIR-style) and classifier selectors.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("impsamp-demo"), show_default=True,
              help="Report folder.")
@_shared_options(defaults=DEMO_DEFAULTS)
@progress_option
def demo(domain, all_methods, out_dir, tokens, k, steps, finetune_steps, preset, seed, progress):
    """The main job on the bundled real corpus, no argument needed.

    Generic corpus: the pool of all 8 bundled domains (4,800 documents). Target: one domain's
    in-domain sample; evaluation: that domain's held-out text. Selects with uniform sampling and
    clustered importance sampling (and the other methods with --all-methods), trains the same
    small LM on each, fine-tunes it on the sample and prints the in-domain perplexities.
    Embeddings are cached between runs (IMPSAMP_CACHE_DIR or IMPSAMP_CACHE, else $XDG_CACHE_HOME/impsamp, else
    ~/.cache/impsamp).
    """
    from impsamp.datasets import demo_corpus
    from impsamp.demonstration import demo as run_demo, demo_config

    started = time.time()
    cfg = demo_config(all_methods=all_methods, tokens=tokens, k=k, seed=seed, steps=steps,
                      finetune_steps=finetune_steps, preset=preset)
    report = run_demo(domain, out_dir, config=cfg, progress=show_progress(progress), command=command_line())
    corpus = demo_corpus()
    click.echo(f"\nimpsamp demo: target domain {domain}; generic pool of {len(corpus.domains)} domains\n")
    click.echo(report.table())
    click.echo(f"\nreport: {out_dir / 'report.md'}  (selections, runs, plots and results.json beside it)")
    click.echo(f"finished in {time.time() - started:.0f} s")
    click.echo(f"open in a browser: {out_dir / 'report.html'}  (plots, each selection's cluster explorer)")

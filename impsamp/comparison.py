"""The seed paper's experiment on the user's data: one selection per method, one LM per selection.

    impsamp compare --generic pool.parquet --target sample.jsonl --eval heldout.jsonl --out runs/cmp

The generic corpus is embedded and clustered once (or existing stage outputs are reused), each
method selects the same token budget, the same LM preset is pretrained on each selection with the
same seed and steps, fine-tuned on the in-domain sample, and evaluated on the evaluation text.
Every step is a stage directory under the report folder, so an interrupted compare resumes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .domains import domain_column, domain_shares, majority_domain
from .errors import ConfigError, StageError
from .manifest import MANIFEST, StageRun, atomic_write_bytes, read_manifest
from .training_noise import (lm_seeds, mean_metrics, paired, per_seed, plus_minus, report_lines, run_dir, seed_words,
                             standard_error)

logger = logging.getLogger(__name__)

METHODS = ("uniform", "importance", "importance-uniform", "ngram", "classifier")
"""Selectors; `importance` is `resample`'s default (the cluster histogram matched, documents inside each
cluster's quota weighted by a cross-fitted n-gram classifier's odds: `--within ngram-classifier`),
`importance-uniform` the seed paper's (documents drawn uniformly inside the quotas: `--within uniform`)."""
MODELS = ("dense", "experts", "projected", "soup", "large", "distill")


@dataclass(frozen=True)
class CompareConfig:
    """What `compare` runs; the defaults are sized for a 2-core CPU and the bundled corpus."""

    methods: tuple[str, ...] = ("uniform", "importance")
    models: tuple[str, ...] = ("dense",)
    """dense: the preset trained on each method's selection; experts: G experts trained on the generic
    corpus at the same generic FLOPs as one dense run, the target's expert picked and fine-tuned;
    projected / soup: one shared network conditioned on a cluster / a histogram, trained on the generic
    corpus for the dense steps, its small model for the target projected and fine-tuned; large: the
    large preset at the same generic FLOPs; distill: the dense model fine-tuned with the large one as
    its teacher (`impsamp.strategies`)."""
    groups: int = 4
    """Experts (with `experts` in models)."""
    large_steps: int | None = None
    """Pretraining steps of the large model [default: the dense model's generic FLOPs]."""
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    targets_expected: int | None = None
    """Planning: targets expected (C(N) is reported at this N)."""
    inference_budget: str | None = None
    """Planning: the largest deployed model, in active parameters (5e6) or FLOPs per token (1e7flops)."""
    per_target_budget: float | None = None
    """Planning: the largest per-target FLOPs."""
    expert_select: str = "top"
    """How the target's expert is picked: top, lowest-loss or all."""
    tokens: int = 200_000
    """Selection budget per method, in embedding-model tokens (about the size of one bundled domain)."""
    k: int = 64
    """Flat k-means clusters."""
    scheme: str = "match"
    within: str = "auto"
    """`importance`'s `--within`: auto (ngram-classifier for a corpus target), knn, knn+ngram, ngram-classifier,
    uniform, or a function."""
    within_temperature: float = 0.05
    within_repeats: str = "even"
    within_top: float | None = None
    """`importance`'s `--within-temperature`, `--within-repeats` and `--within-top` (`impsamp.resampling.within`)."""
    max_repeat: int | None = None
    """`importance` and `importance-uniform`: most draws of one document (`resample --max-repeat`;
    `importance`'s default 4, 1 with `within_top`)."""
    max_tokens: int = 128
    """Tokens the embedding model reads per document."""
    backend: str = "auto"
    """Embedding backend: torch, onnx (float32), or auto: torch on a GPU or on a CPU with AMX (bfloat16,
    2.6x float32), else ONNX Runtime int8 (~2.4x float32 on CPUs without AMX; 98.8% of the bundled
    pool's documents in the same k=64 cluster as float32, 99.7% at k=1024). A later target is embedded
    the same way, without torch once the ONNX model and tokenizer are cached."""
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    preset: str = "tiny"
    steps: int = 100
    """Pretraining steps (tiny: 4,096 tokens a step, about 0.7 s on 2 CPU cores)."""
    finetune_steps: int = 30
    vocab_size: int = 4096
    n_layer: int | None = None
    """Model shape overrides of the preset (None: the preset's)."""
    n_embd: int | None = None
    n_head: int | None = None
    block_size: int | None = None
    batch_size: int | None = None
    dtype: str = "auto"
    """Every model's autocast dtype (`train --dtype`; auto: bfloat16 on a GPU or a CPU that multiplies
    it in hardware, else float32): fix it to compare figures across machines."""
    seed: int = 0
    train_seed: int | None = None
    """Seed of every LM's initialisation and batches; None: `seed`. Another value trains on the same selections
    again: how far a method's perplexity moves with it is the training's own noise, the yardstick for a
    difference between methods."""
    lm_seeds: int = 1
    """LMs trained on each selection (dense rows), seeds `train_seed` (else `seed`) and the ones after it: the
    report gives the means, their standard errors and each method paired with the first (`impsamp.training_noise`)."""
    text_field: str = "text"

    def __post_init__(self) -> None:
        from .training.config import DTYPES

        if self.backend not in ("auto", "torch", "onnx"):
            raise ConfigError(f"backend must be auto, torch or onnx, got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.methods:
            raise ConfigError("--methods: give at least one method")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"--methods: unknown {unknown}; valid: {', '.join(METHODS)}")
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ConfigError(f"--models: unknown {unknown}; valid: {', '.join(MODELS)}")
        for m in (*self.methods, "importance"):  # importance's settings are checked even when it does not run
            self.selection_config(m)  # resample's checks of --within, --within-temperature, --max-repeat, ...
        if self.expert_select not in ("top", "lowest-loss", "all"):
            raise ConfigError(f"--select must be top, lowest-loss or all, got {self.expert_select!r}")
        from .planning import parse_inference_budget

        parse_inference_budget(self.inference_budget)  # a bad budget is a one-line error
        if self.groups < 2:
            raise ConfigError(f"--groups must be >= 2, got {self.groups}")
        for name in ("tokens", "k", "steps", "finetune_steps", "max_tokens", "lm_seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "train_seed"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")

    def selection_config(self, method: str):
        """`resample`'s settings for one method's selection (`importance-uniform`: importance with
        `--within uniform`; the other selections stay reusable whatever `importance`'s --within settings)."""
        from .resampling import ResampleConfig

        within = {"importance": {"within": self.within, "within_temperature": self.within_temperature,
                                 "within_repeats": self.within_repeats, "within_top": self.within_top},
                  "importance-uniform": {"within": "uniform"}}.get(method, {})
        importance = method in ("importance", "importance-uniform")
        return ResampleConfig(tokens=self.tokens, method="importance" if importance else method,
                              scheme=self.scheme, seed=self.seed, text_field=self.text_field,
                              max_repeat=self.max_repeat if importance else None, **within)


@dataclass
class Report:
    """The numbers of a finished compare (also in `results.json`)."""

    path: Path
    results: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Report:
        path = Path(path)
        read_manifest(path, expect_stage="compare")
        return cls(path, json.loads((path / "results.json").read_text()))

    def table(self) -> str:
        return markdown_table(self.results)


def _reuse(path: Path, stage: str, config: dict[str, Any], fingerprints: dict[str, str]) -> bool:
    """True if `path` is a complete `stage` output of this impsamp version with this config and these input
    fingerprints (another version may count or draw differently)."""
    from . import __version__

    if not (path / MANIFEST).is_file():
        return False
    try:
        m = read_manifest(path, expect_stage=stage)
    except StageError:
        return False
    if m.impsamp_version != __version__:
        return False
    same_cfg = all(m.config.get(k) == v for k, v in config.items())
    same_inputs = all(m.inputs.get(role, {}).get("fingerprint") == fp for role, fp in fingerprints.items())
    return same_cfg and same_inputs


def compare(generic: str | Path | Sequence[str | Path], target: str | Path | Sequence[str | Path],
            eval_files: Sequence[str | Path], out_dir: str | Path, config: CompareConfig | None = None, *,
            embeddings: str | Path | None = None, clusters: str | Path | None = None,
            overwrite: bool = False, progress: bool = False) -> Report:
    """Select with each method at the same budget, train the same LM on each, and report perplexities.

    Args:
        generic: the generic corpus (files, folder, glob).
        target: the in-domain sample (used to select, then to fine-tune).
        eval_files: in-domain evaluation text (never seen in selection or training).
        embeddings, clusters: existing stage outputs of the generic corpus to reuse.

    Every step reuses a finished output of the same settings and inputs, so a killed run resumes.
    """
    from .io import open_corpus

    cfg = config or CompareConfig()
    out = Path(out_dir)
    targets = [target] if isinstance(target, (str, Path)) else list(target)
    evals = [str(Path(e).resolve()) for e in eval_files]
    if not evals:
        raise ConfigError("--eval: give at least one evaluation file")
    generic_corpus = open_corpus(generic, text_field=cfg.text_field)
    target_corpus = open_corpus(targets, text_field=cfg.text_field)
    for e in evals:
        open_corpus(e, text_field=cfg.text_field)  # fail early on a bad evaluation file
    inputs = {"generic": {"fingerprint": generic_corpus.fingerprint()},
              "target": {"fingerprint": target_corpus.fingerprint()}, "eval": evals}
    run = StageRun(out, "compare", config=asdict(cfg), inputs=inputs, overwrite=overwrite).begin()
    emb, clu = _embed_and_cluster(out, cfg, generic_corpus, embeddings, clusters, progress)
    selections = _select(out, cfg, emb, clu, targets, progress)
    tcfg = _train_config(out, cfg, generic_corpus, progress)
    results = _train_and_score(out, cfg, tcfg, selections, generic_corpus, target_corpus, targets, evals, progress)
    if set(cfg.models) - {"dense"}:
        from .strategies import model_entries

        results["models"] = model_entries(out, cfg, tcfg, emb, clu, selections, generic_corpus, targets, evals,
                                          progress, _log)
    files = _write_report(out, results, clu)
    run.finish(stats={"methods": list(cfg.methods), "models": list(cfg.models), "table": _summary(results)},
               extra_files=files)
    return Report(out, results)


def _embed_and_cluster(out: Path, cfg: CompareConfig, generic_corpus, embeddings, clusters, progress: bool):
    """1. The generic corpus embedded and clustered once (or the given outputs)."""
    from .clustering import ClusterConfig, Clusters, cluster
    from .embedding import EmbedConfig, Embeddings, embed

    from .embedding.loading import embed_backend

    backend, quantize = embed_backend(cfg.backend)
    if embeddings is not None:
        emb = Embeddings.load(embeddings)
    elif _reuse(out / "embeddings", "embed",
                {"max_tokens": cfg.max_tokens, "backend": backend, "quantize": quantize},
                {"corpus": generic_corpus.fingerprint()}):
        emb = Embeddings.load(out / "embeddings")
    else:
        _log(progress, "embedding the generic corpus")
        ecfg = EmbedConfig(model=cfg.model, max_tokens=cfg.max_tokens, backend=backend, quantize=quantize,
                           text_field=cfg.text_field)
        emb = embed(generic_corpus, out / "embeddings", ecfg, overwrite=True, progress=progress)
    if clusters is not None:
        return emb, Clusters.load(clusters)
    if _reuse(out / "clusters", "cluster", {"k": cfg.k, "seed": cfg.seed}, {"embeddings": emb.manifest.fingerprint}):
        return emb, Clusters.load(out / "clusters")
    _log(progress, f"clustering (k={cfg.k})")
    return emb, cluster(emb, out / "clusters", ClusterConfig(k=cfg.k, seed=cfg.seed), overwrite=True,
                        progress=progress)


def _select(out: Path, cfg: CompareConfig, emb, clu, targets: list, progress: bool) -> dict[str, Any]:
    """2. One selection per method, at the same budget."""
    from .resampling import Selection, resample

    selections: dict[str, Any] = {}
    if "dense" not in cfg.models:
        return selections
    for method in cfg.methods:
        rcfg = cfg.selection_config(method)
        path = out / "selections" / method
        ran = rcfg.resolved(True, target_has_text=True).effective()  # as the manifest records it: targets are corpora
        if _reuse(path, "resample", {k: v for k, v in asdict(ran).items() if k != "weighting"},
                  {"clusters": clu.manifest.fingerprint}):
            selections[method] = Selection.load(path)
            continue
        _log(progress, f"selecting: {method}")
        selections[method] = resample(emb, clu, path, targets=targets, config=rcfg, overwrite=True,
                                      progress=progress, command=f"impsamp compare (method {method})")
    return selections


def _train_config(out: Path, cfg: CompareConfig, generic_corpus, progress: bool):
    """3. One tokenizer for all runs (trained on the generic corpus, so perplexities compare), and the
    one training config every selection gets."""
    from .training import TrainConfig, train_tokenizer

    tok_path = out / "tokenizer.json"
    if not tok_path.exists():
        _log(progress, "training the tokenizer")
        train_tokenizer([f.path for f in generic_corpus.files], cfg.vocab_size, tok_path, text_field=cfg.text_field)
    return TrainConfig(preset=cfg.preset, steps=cfg.steps, finetune_steps=cfg.finetune_steps,
                       seed=cfg.seed if cfg.train_seed is None else cfg.train_seed,
                       tokenizer=str(tok_path.resolve()), dtype=cfg.dtype, n_layer=cfg.n_layer, n_embd=cfg.n_embd,
                       n_head=cfg.n_head, block_size=cfg.block_size, batch_size=cfg.batch_size)


def _train_and_score(out: Path, cfg: CompareConfig, tcfg, selections: dict[str, Any], generic_corpus,
                     target_corpus, targets: list, evals: list[str], progress: bool) -> dict[str, Any]:
    """4. The same LM on each selection, fine-tuned on the target, evaluated on the eval text."""
    from . import __version__

    results: dict[str, Any] = {"config": asdict(cfg), "impsamp_version": __version__, "methods": {}}
    domains = domain_column(generic_corpus)
    target_domain = majority_domain(target_corpus)
    seeds = lm_seeds(cfg.seed, cfg.train_seed, cfg.lm_seeds)
    for method, sel in selections.items():
        # a uniform selection does not depend on the target: its model is pretrained once for all of them
        mcfg = replace(tcfg, pretrain_costs="generic" if method == "uniform" else "per-target")
        runs = [_trained(run_dir(out / "runs", method, i, s), replace(mcfg, seed=s), sel, targets, evals, progress)
                for i, s in enumerate(seeds)]
        metrics = [tr.metrics for tr in runs]
        entry = {"metrics": mean_metrics(metrics), "costs": metrics[0].get("costs"), "selection": {
            k: sel.stats.get(k) for k in ("rows", "tokens", "unique_documents", "repetition_rate", "kl_target_generic",
                                          "kl_target_selected", "effective_sample_size")}}
        if len(seeds) > 1:
            entry["lm_seeds"] = per_seed(metrics, seeds)
        if domains is not None:
            entry["domain_shares"] = domain_shares(sel, domains)
            if target_domain:
                entry["target_domain_share"] = entry["domain_shares"].get(target_domain, 0.0)
        results["methods"][method] = entry
    if len(seeds) > 1:
        results["lm_seeds"] = paired(results["methods"])
    results["target_domain"] = target_domain
    return results


def _trained(path: Path, tcfg, sel, targets: list, evals: list[str], progress: bool):
    """A finished run of this config and version on this selection, or a new one."""
    from .training import train
    from .training.provenance import finished_run

    if (tr := finished_run(path, tcfg, [str(sel.path)])) is not None:
        return tr
    _log(progress, f"training on the {path.name} selection")
    return train([sel.path], path, tcfg, finetune=targets, eval=evals, progress=progress, overwrite=True)


def _log(progress: bool, msg: str) -> None:
    logger.info(msg)
    if progress:
        import sys

        print(f"[impsamp] {msg}", file=sys.stderr, flush=True)



def rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, entry) of every row of the report: the dense model per method, then the other models."""
    out = [(m if "models" not in results else f"dense, {m}", e) for m, e in results["methods"].items()]
    for name, e in results.get("models", {}).items():
        out.append((_model_label(name, e), e))
    return out


def _model_label(name: str, e: dict[str, Any]) -> str:
    if name == "experts":
        return f"experts G={e['groups']} ({e['select']})"
    if name == "projected":
        return f"projected network (cluster {e['condition']})"
    if name == "large":
        return f"large ({e['preset']}, {e['steps']} steps)"
    if name == "distill":
        return f"distilled (teacher {e['teacher']}, alpha {e['alpha']})"
    return "soup of experts" if name == "soup" else name


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    return {label: {"pretrained_ppl": e["metrics"]["pretrained"]["macro_ppl"],
                    "finetuned_ppl": e["metrics"].get("finetuned", {}).get("macro_ppl")}
            for label, e in rows(results)}


def markdown_table(results: dict[str, Any]) -> str:
    """The paper-style table: one row per strategy, perplexity and bits per byte before and after
    fine-tuning, what its selection repeated, and its costs (FLOPs paid once and per target,
    parameters at inference)."""
    from .costs import format_flops

    entries = rows(results)
    has_domain = any("target_domain_share" in e for _, e in entries)
    head = ["method", "ppl pretrained", "bpb pretrained", "ppl fine-tuned", "bpb fine-tuned",
            "repetition", "KL(t||sel)"] + (["target-domain share"] if has_domain else []) + \
        ["generic FLOPs", "per-target FLOPs", "inference FLOPs/token", "params (inference)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, e in entries:
        pre, fin = e["metrics"]["pretrained"], e["metrics"].get("finetuned", {})
        s = e.get("selection")
        noise = e.get("lm_seeds") or {}
        row = [label, f"{pre['macro_ppl']:.2f}" + plus_minus(noise.get("pretrained_ppl")), f"{pre['macro_bpb']:.3f}",
               f"{fin.get('macro_ppl', float('nan')):.2f}" + plus_minus(noise.get("finetuned_ppl")),
               f"{fin.get('macro_bpb', float('nan')):.3f}",
               f"{s['repetition_rate']:.1%}" if s else "-", f"{s['kl_target_selected']:.3f}" if s else "-"]
        if has_domain:
            row.append(f"{e['target_domain_share']:.1%}" if "target_domain_share" in e else "-")
        c = e.get("costs") or {}
        row += [format_flops(c.get("generic", 0)), format_flops(c.get("per_target", 0)),
                format_flops(c.get("inference_flops_per_token", 0)),
                f"{c.get('params_active', 0) / 1e6:.2f}M" + (f" of {c['params_total'] / 1e6:.2f}M"
                                                             if c.get("params_total", 0) > c.get("params_active", 0)
                                                             else "")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _write_report(out: Path, results: dict[str, Any], clu) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if _plot_perplexity(out / "perplexity.png", results):
        files["perplexity.png"] = out / "perplexity.png"
    cfg = results["config"]
    lines = [
        "# impsamp compare", "",
        f"Same LM preset (`{cfg['preset']}`, {cfg['steps']} pretraining steps, {cfg['finetune_steps']} "
        f"fine-tuning steps, {seed_words(cfg)}) pretrained on each selection of {cfg['tokens']:,} "
        f"tokens from the generic corpus, then fine-tuned on the in-domain sample; perplexity and bits "
        f"per byte on the evaluation text (macro-averaged over files). Clusters: k={clu.n_leaves}.", "",
        markdown_table(results), "",
    ]
    lines += report_lines(results)
    if results.get("target_domain"):
        lines += [f"Target domain: `{results['target_domain']}`. Domain shares of each selection:", ""]
        for m, e in results["methods"].items():
            shares = sorted(e.get("domain_shares", {}).items(), key=lambda kv: -kv[1])
            lines.append(f"- {m}: " + ", ".join(f"{d} {s:.0%}" for d, s in shares[:8]))
        lines.append("")
    if "experts" in results.get("models", {}):
        e = results["models"]["experts"]
        lines += [f"Experts: {e['groups']} groups of the clusters, trained on the generic corpus at the dense "
                  f"model's generic FLOPs; rule `{e['select']}` chose expert {e['chosen']}, which holds "
                  f"{e['target_mass_on_chosen']:.0%} of the target's cluster mass (per group: "
                  + ", ".join(f"{m:.0%}" for m in e["group_mass"]) + "). The experts are in `experts/`, the "
                  f"fine-tuned one in `runs/experts-{e['select']}/`.", ""]
    for name in ("projected", "soup"):
        if name in results.get("models", {}):
            e = results["models"][name]
            lines += [f"{_model_label(name, e).capitalize()}: one shared network trained on the generic corpus for "
                      f"the dense runs' steps, its small model computed for the target ({e['why']}), then "
                      f"fine-tuned: `{name}/`, `runs/{name}-small/`, `runs/{name}/`.", ""]
    plan_lines, results["plan"] = _plan(out, results, files)
    lines += plan_lines
    lines += ["Selections are in `selections/<method>/` (each with its data card, histogram plot and cluster "
              "explorer, `explorer.html`, linked from `report.html`), "
              "runs in `runs/<method>/`, every number in `results.json`. FLOPs: training 6 x parameters x "
              "tokens plus attention; generic is paid once for all targets, per-target for each new one.", ""]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
    files["report.md"] = out / "report.md"
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2, default=float) + "\n").encode())
    files["results.json"] = out / "results.json"
    from .explorer import write_report_html  # report.html beside report.md, each selection's explorer linked

    return {**files, **write_report_html(out, clu, list(results["methods"]), seed=cfg["seed"])}


def _plan(out: Path, results: dict[str, Any], files: dict[str, Path]) -> tuple[list[str], dict[str, Any]]:
    """The planning section (C(N), the choice under the stated budgets, the decision figure)."""
    from .planning import Budgets, parse_inference_budget, plan_section, plot_costs, plot_decision

    cfg = results["config"]
    value, unit = parse_inference_budget(cfg.get("inference_budget"))
    budgets = Budgets(cfg.get("targets_expected"), value, unit, cfg.get("per_target_budget"))
    entries = rows(results)
    for name, plot in (("plan.png", lambda p: plot_costs(p, entries, budgets.targets)),
                       ("decision.png", lambda p: plot_decision(p, entries))):
        if plot(out / name):
            files[name] = out / name
    return plan_section(entries, budgets)


def _plot_perplexity(path: Path, results: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    entries = rows(results)
    methods = [label for label, _ in entries]
    pre = [e["metrics"]["pretrained"]["macro_ppl"] for _, e in entries]
    fin = [e["metrics"].get("finetuned", {}).get("macro_ppl", np.nan) for _, e in entries]
    pre_se, fin_se = ([standard_error(e["lm_seeds"][key]) if "lm_seeds" in e else np.nan for _, e in entries]
                      for key in ("pretrained_ppl", "finetuned_ppl"))  # error bars where there are several LM seeds
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(methods)), 3.8), dpi=100)
    ax.bar(x - 0.2, pre, width=0.4, yerr=pre_se, capsize=3, label="pretrained only")
    ax.bar(x + 0.2, fin, width=0.4, yerr=fin_se, capsize=3, label="after fine-tuning")
    ax.set_ylim(top=1.2 * np.nanmax([*pre, *fin]))  # room for the legend above the bars
    ax.set_xticks(x, methods, rotation=20 if max(map(len, methods)) > 12 else 0, ha="right" if
                  max(map(len, methods)) > 12 else "center")
    ax.set_ylabel("in-domain perplexity (lower is better)")
    ax.legend(loc="upper right", ncol=2)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)
    return True

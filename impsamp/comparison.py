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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .comparison_report import markdown_table, rows, write_report
from .config import as_config, check_fields, check_seed, documented, flags_set, positive
from .domains import domain_column, domain_shares, majority_domain
from .errors import ConfigError, StageError
from .guards import released_on_return
from .manifest import MANIFEST, StageRun, read_manifest
from .training_noise import lm_seeds, mean_metrics, paired, per_seed, run_dir

logger = logging.getLogger(__name__)

METHODS = ("uniform", "importance", "importance-uniform", "ngram", "classifier")
"""Selectors; `importance` is `resample`'s default (the cluster histogram matched, documents inside each
cluster's quota weighted by a cross-fitted n-gram classifier's odds: `--within ngram-classifier`),
`importance-uniform` the seed paper's (documents drawn uniformly inside the quotas: `--within uniform`)."""
MODELS = ("dense", "experts", "projected", "soup", "large", "distill")
LM_SETTINGS = ("preset", "steps", "finetune_steps", "dtype", "n_layer", "n_embd", "n_head", "block_size", "batch_size",
               "text_field")
"""`CompareConfig`'s fields that every dense run's `TrainConfig` takes as they are, under the same name."""


K_DEFAULT = 64
"""`compare`'s k-means clusters when neither --k nor --clusters says."""


PLANNING_BUDGETS = ("targets_expected", "inference_budget", "per_target_budget", "pretraining_budget", "total_budget")
"""CompareConfig's fields that choose among the runs and train nothing (`impsamp plan` changes them after)."""


@documented
@dataclass(frozen=True)
class CompareConfig:
    """What `compare` runs; the defaults are sized for a 2-core CPU and the bundled corpus."""

    FLAGS = {"alpha": "distill_alpha", "select": "expert_select"}  # not a field: flags named otherwise than theirs

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
    basis: int | None = None
    """Basis matrices per layer, h, of the projected network and the soup [default: 16] (the paper's grew with its
    clusters: its main runs used 16, 32 and 64)."""
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
    pretraining_budget: float | None = None
    """Planning: the largest generic FLOPs, spent before any target is known."""
    total_budget: float | None = None
    """Planning: the largest C(N) = generic + N x per-target FLOPs for the targets expected (needs them)."""
    expert_select: str = "top"
    """How the target's expert is picked: top, lowest-loss or all."""
    tokens: int = 200_000
    """Selection budget per method, in embedding-model tokens (about the size of one bundled domain)."""
    k: int | None = None
    """Flat k-means clusters: K_DEFAULT (64), or the k of the clusters given (another k is refused)."""
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
        for name in ("methods", "models"):  # a config file's "uniform,importance" reads as the flag does
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, tuple(m.strip() for m in getattr(self, name).split(",") if m.strip()))
        check_fields(self)
        from .training.config import DTYPES, PRESETS

        check_seed(self.seed)  # it seeds faiss's k-means too: 31 bits
        check_seed(self.train_seed, "--train-seed")
        first = self.seed if self.train_seed is None else self.train_seed
        if self.lm_seeds >= 1:
            check_seed(first + self.lm_seeds - 1, "the last LM seed, --train-seed (else --seed) + --lm-seeds - 1,")
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
        within_set = flags_set(self, ("within", "within_temperature", "within_repeats", "within_top"))
        if within_set and "importance" not in self.methods:
            raise ConfigError(f"{', '.join(within_set)} set(s) how `importance` draws inside the clusters; add "
                              "importance to --methods, or leave them out")
        self._check_model_flags()
        for m in (*self.methods, "importance"):  # importance's settings are checked even when it does not run
            self.selection_config(m)  # resample's checks of --within, --within-temperature, --max-repeat, ...
        if self.expert_select not in ("top", "lowest-loss", "all"):
            raise ConfigError(f"--select must be top, lowest-loss or all, got {self.expert_select!r}")
        from .planning import LARGE_PRESET

        self._check_budgets()
        if {"large", "distill"} & set(self.models) and self.preset not in LARGE_PRESET:
            raise ConfigError(f"--models large/distill: no large preset for --preset {self.preset} (they run "
                              f"with {' or '.join(LARGE_PRESET)}); drop them or choose one of those presets")
        for name in ("groups", "k"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ConfigError(f"--{name} must be >= 2, got {getattr(self, name)}")
        k = K_DEFAULT if self.k is None else self.k  # (given clusters' k is checked again once it is known)
        if "experts" in self.models and self.groups > k:  # here, not after the other models have trained
            raise ConfigError(f"--groups {self.groups} is more than the {k} clusters the experts split (--k, "
                              f"or those of --clusters); give --groups <= {k}")
        for name in ("tokens", "steps", "finetune_steps", "max_tokens", "lm_seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        positive("large_steps", self.large_steps, flag="--large-steps")  # before the dense runs train
        positive("basis", self.basis, flag="--basis")
        if not 0 <= self.distill_alpha <= 1:  # checked here, not minutes later when `distill` trains
            raise ConfigError(f"--alpha must be in [0, 1], got {self.distill_alpha}")
        positive("distill_temperature", self.distill_temperature)
        if self.preset not in PRESETS:
            raise ConfigError(f"--preset {self.preset!r} is unknown; valid presets: {', '.join(PRESETS)}")
        self._check_lm_shape()

    def _check_budgets(self) -> None:
        """The planning budgets, checked before anything runs (they only choose among the runs)."""
        from .planning import Budgets, parse_inference_budget

        parse_inference_budget(self.inference_budget)  # a bad budget is a one-line error
        for name in ("targets_expected", "per_target_budget", "pretraining_budget", "total_budget"):
            positive(name, getattr(self, name), flag="--" + name.replace("_", "-"))
        Budgets(targets=self.targets_expected, total=self.total_budget)  # C(N) needs its N

    def _check_lm_shape(self) -> None:
        """The LM's settings checked now, not after the selections and the tokenizer; compare takes the shape
        from its config file only, so the error names the keys there."""
        try:
            self.train_config()
        except ConfigError as e:
            msg, shape = str(e), ("n_layer", "n_embd", "n_head", "block_size", "batch_size")
            for name in shape:
                msg = msg.replace(f"--{name.replace('_', '-')}", name)
            raise ConfigError(f"{msg} (the [compare] table of --config)" if any(n in msg for n in shape) else msg
                              ) from None

    def train_config(self, tokenizer: str | None = None):
        """The one training config every dense run of the compare gets (`TrainConfig`)."""
        from .training import TrainConfig

        return TrainConfig(**{name: getattr(self, name) for name in LM_SETTINGS}, tokenizer=tokenizer,
                           seed=self.seed if self.train_seed is None else self.train_seed)

    def _check_model_flags(self) -> None:
        """A model's settings given without the model did nothing: refused, as `--within` without importance is."""
        for fields, models in ((("groups", "expert_select"), ("experts",)), (("large_steps",), ("large", "distill")),
                               (("basis",), ("projected", "soup")),
                               (("distill_alpha", "distill_temperature"), ("distill",))):
            given = flags_set(self, fields)
            if given and not set(models) & set(self.models):
                flags = [{f"--{v.replace('_', '-')}": f"--{k}" for k, v in self.FLAGS.items()}.get(g, g) for g in given]
                raise ConfigError(f"{', '.join(flags)} set(s) the {' or '.join(models)} model; add it to --models, or "
                                  "leave them out")

    def selection_config(self, method: str):
        """`resample`'s settings for one method's selection (`importance-uniform`: importance with
        `--within uniform`; the other selections stay reusable whatever `importance`'s --within settings)."""
        from .resampling import ResampleConfig

        within = {"importance": {"within": self.within, "within_temperature": self.within_temperature,
                                 "within_repeats": self.within_repeats, "within_top": self.within_top},
                  "importance-uniform": {"within": "uniform"}}.get(method, {})
        importance = method in ("importance", "importance-uniform")
        return ResampleConfig(tokens=self.tokens, method="importance" if importance else method,
                              scheme=self.scheme if importance else "match", seed=self.seed, text_field=self.text_field,
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


@released_on_return
def compare(generic: str | Path | Sequence[str | Path], target: str | Path | Sequence[str | Path],
            eval_files: Sequence[str | Path], out_dir: str | Path, config: CompareConfig | None = None, *,
            embeddings: str | Path | None = None, clusters: str | Path | None = None,
            overwrite: bool = False, progress: bool = False, command: str | None = None) -> Report:
    """Select with each method at the same budget, train the same LM on each, and report perplexities.

    Args:
        generic: the generic corpus (files, folder, glob).
        target: the in-domain sample (used to select, then to fine-tune).
        eval_files: in-domain evaluation text (never seen in selection or training).
        embeddings, clusters: existing stage outputs of the generic corpus to reuse.
        command: the command line that ran this (the CLI's), recorded on each selection's data card.

    Every step reuses a finished output of the same settings and inputs, so a killed run resumes.
    """
    from .io import as_specs, open_corpus

    cfg = resolve_k(as_config(CompareConfig, config) or CompareConfig(), clusters)
    out = Path(out_dir)
    targets = as_specs(target)
    evals = [str(Path(e).resolve()) for e in as_specs(eval_files)]
    if not evals:
        raise ConfigError("--eval: give at least one evaluation file")
    generic_corpus = open_corpus(generic, text_field=cfg.text_field)
    target_corpus = open_corpus(targets, text_field=cfg.text_field)
    eval_corpora = [open_corpus(e, text_field=cfg.text_field) for e in evals]
    for what, corpus in [("--target", target_corpus), *(("--eval", c) for c in eval_corpora)]:
        # read through now (they are small): a bad row fails here, not after the generic corpus's embedding
        if corpus.count_documents() == 0:
            raise ConfigError(f"{what} {', '.join(f.path for f in corpus.files)}: no document with text")
    # every input by content: a run resumed after an evaluation file was edited would mix old and new scores
    inputs = {"generic": {"fingerprint": generic_corpus.fingerprint()},
              "target": {"fingerprint": target_corpus.fingerprint()},
              "eval": [{"path": e, "fingerprint": c.fingerprint()} for e, c in zip(evals, eval_corpora)]}
    # the corpora's files, folders and globs (--out inside one, or where a pattern reaches: refused before it is made)
    read = [generic_corpus.spec(), target_corpus.spec(), embeddings, clusters]
    emb, clu = _given_outputs(generic_corpus, embeddings, clusters)  # checked before anything is written
    # the planning budgets only shape the report's choice: an interrupted run resumes with other ones
    run = StageRun(out, "compare", config=asdict(cfg), inputs=inputs, overwrite=overwrite, input_paths=read,
                   unkeyed=PLANNING_BUDGETS).begin()
    # bad input met by a fresh run (a row of the generic corpus, a budget the pool cannot hold): what it wrote is
    # removed and a report it was replacing (--overwrite) put back, so the same command runs once it is fixed
    with run.discarded_on_error():
        emb, clu = _embed_and_cluster(out, cfg, generic_corpus, emb, clu, progress)
        selections = _select(out, cfg, emb, clu, targets, progress, command or "impsamp.compare(...)")
        tcfg = _train_config(out, cfg, generic_corpus, progress)
        results = _train_and_score(out, cfg, tcfg, selections, generic_corpus, target_corpus, targets, evals,
                                   progress)
        # what embedded the pool, as it ran: given --embeddings keep their own settings, whatever the config's
        results["embedding"] = {k: emb.manifest.config.get(k) for k in (
            "model", "backend", "quantize", "precision", "max_tokens", "windows")}
        if set(cfg.models) - {"dense"}:
            from .strategies import model_entries

            results["models"] = model_entries(out, cfg, tcfg, emb, clu, selections, generic_corpus, targets, evals,
                                              progress, _log)
        files = write_report(out, results, clu)
    run.finish(stats={"methods": list(cfg.methods), "models": list(cfg.models), "table": _summary(results)},
               extra_files=files)
    return Report(out, results)


def resolve_k(cfg: CompareConfig, clusters: str | Path | None = None) -> CompareConfig:
    """The k the selections use, made concrete: the given `clusters`' (a k asked for that differs is refused),
    else the config's, else K_DEFAULT. The report and the manifest record it."""
    if clusters is None:
        return cfg if cfg.k is not None else replace(cfg, k=K_DEFAULT)
    from .clustering import Clusters

    n = Clusters.load(clusters).n_leaves
    if cfg.k not in (n, None):
        raise ConfigError(f"--clusters {clusters} has k = {n}: drop --k {cfg.k}, or leave --clusters out to "
                          f"cluster with --k {cfg.k}")
    return replace(cfg, k=n)


def _given_outputs(generic_corpus, embeddings, clusters):
    """The `--embeddings` and `--clusters` outputs given (None where not), checked to be of the generic corpus."""
    from .clustering import Clusters
    from .embedding import Embeddings
    from .io import file_changed

    emb, clu, given = None, (Clusters.load(clusters) if clusters is not None else None), "--embeddings"
    if embeddings is None and clu is not None:  # the clusters' own embeddings
        embeddings = clu.manifest.inputs.get("embeddings", {}).get("path")
        if not (embeddings and (Path(embeddings) / MANIFEST).is_file()):
            raise ConfigError(f"--clusters {clusters}: the embeddings they were made from ({embeddings}) are "
                              "gone; pass them with --embeddings, or leave --clusters out")
        given = f"--clusters {clusters}: their embeddings"
    if embeddings is not None:
        emb = Embeddings.load(embeddings)
        made_of = emb.manifest.inputs.get("corpus", {}).get("files", [])
        if len(made_of) != len(generic_corpus.files) or any(map(file_changed, made_of, generic_corpus.files)):
            raise ConfigError(f"{given} {embeddings} were made from another corpus than --generic; pass "
                              "the embeddings of --generic, or leave them out to embed it")
    if clu is not None and clu.manifest.inputs.get("embeddings", {}).get("fingerprint") != emb.manifest.fingerprint:
        raise ConfigError(f"--clusters {clusters} were made from other embeddings than those of --generic; "
                          "pass a clustering of them, or leave --clusters out")
    return emb, clu


def _embed_and_cluster(out: Path, cfg: CompareConfig, generic_corpus, emb, clu, progress: bool):
    """1. The generic corpus embedded and clustered once (or the given outputs, checked by `_given_outputs`)."""
    from .clustering import ClusterConfig, Clusters, cluster
    from .embedding import EmbedConfig, Embeddings, embed
    from .embedding.loading import embed_backend

    if clu is not None:  # given (with their embeddings)
        return emb, clu
    backend, quantize = embed_backend(cfg.backend)
    if emb is None and _reuse(out / "embeddings", "embed",
                {"max_tokens": cfg.max_tokens, "backend": backend, "quantize": quantize},
                {"corpus": generic_corpus.fingerprint()}):
        emb = Embeddings.load(out / "embeddings")
    elif emb is None:
        _log(progress, "embedding the generic corpus")
        ecfg = EmbedConfig(model=cfg.model, max_tokens=cfg.max_tokens, backend=backend, quantize=quantize,
                           text_field=cfg.text_field)
        emb = embed(generic_corpus, out / "embeddings", ecfg, overwrite=True, progress=progress)
    if _reuse(out / "clusters", "cluster", {"k": cfg.k, "seed": cfg.seed}, {"embeddings": emb.manifest.fingerprint}):
        return emb, Clusters.load(out / "clusters")
    _log(progress, f"clustering (k={cfg.k})")
    return emb, cluster(emb, out / "clusters", ClusterConfig(k=cfg.k, seed=cfg.seed), overwrite=True,
                        progress=progress)


def _select(out: Path, cfg: CompareConfig, emb, clu, targets: list, progress: bool, command: str) -> dict[str, Any]:
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
                                      progress=progress, command=f"{command}  # its {method} selection")
    return selections


def _train_config(out: Path, cfg: CompareConfig, generic_corpus, progress: bool):
    """3. One tokenizer for all runs (trained on the generic corpus, so perplexities compare), and the
    one training config every selection gets."""
    from .training import train_tokenizer

    tok_path = out / "tokenizer.json"
    if not tok_path.exists():
        _log(progress, "training the tokenizer")
        train_tokenizer([f.path for f in generic_corpus.files], cfg.vocab_size, tok_path, text_field=cfg.text_field)
    return cfg.train_config(str(tok_path.resolve()))


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

    if (tr := finished_run(path, tcfg, [str(sel.path)], targets, evals)) is not None:
        return tr
    _log(progress, f"training on the {path.name} selection")
    return train([sel.path], path, tcfg, finetune=targets, eval=evals, progress=progress, overwrite=True)


def _log(progress: bool, msg: str) -> None:
    logger.info(msg)
    if progress:
        import sys

        print(f"[impsamp] {msg}", file=sys.stderr, flush=True)


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    return {label: {"pretrained_ppl": e["metrics"]["pretrained"]["macro_ppl"],
                    "finetuned_ppl": e["metrics"].get("finetuned", {}).get("macro_ppl")}
            for label, e in rows(results)}

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

from .comparison_config import K_DEFAULT, LM_SETTINGS, METHODS, MODELS, PLANNING_BUDGETS, CompareConfig
from .comparison_report import markdown_table, rows, write_report
from .config import as_config
from .domains import domain_column, domain_shares, majority_domain
from .errors import ConfigError, StageError
from .guards import released_on_return
from .manifest import MANIFEST, StageRun, read_manifest
from .training_noise import lm_seeds, mean_metrics, paired, per_seed, run_dir

logger = logging.getLogger(__name__)
__all__ = ["K_DEFAULT", "LM_SETTINGS", "METHODS", "MODELS", "PLANNING_BUDGETS", "CompareConfig", "Report", "compare",
           "resolve_k"]

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
    from .io import as_specs, data_text_field, open_corpus

    cfg = resolve_k(as_config(CompareConfig, config) or CompareConfig(), clusters)
    out = Path(out_dir)
    targets = _unweighted(as_specs(target))
    evals = [str(Path(e).resolve()) for e in as_specs(eval_files)]
    if not evals:
        raise ConfigError("--eval: give at least one evaluation file")
    generic_corpus = open_corpus(generic, text_field=cfg.text_field)
    target_corpus = open_corpus(targets, text_field=data_text_field(targets, cfg.text_field, "--target"))
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


def _unweighted(targets: list[str]) -> list[str]:
    """The targets, refused in one line where one is given as `resample`'s PATH:WEIGHT (read as resample reads it)."""
    from .resampling.methods import parse_target

    for t in targets:
        if (path := str(parse_target(t)[0])) != str(t):
            raise ConfigError(f"--target {t}: compare reads its targets as one sample, without weights (a PATH:WEIGHT "
                              f"mixture is `impsamp resample`'s); give --target {path}")
    return targets


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
        field = emb.manifest.inputs.get("corpus", {}).get("text_field", "text")
        if field != generic_corpus.text_field:  # the selections would read one field, the tokenizer another
            raise ConfigError(f"{given} {embeddings} read --generic's field {field!r}, and this compare reads "
                              f"{generic_corpus.text_field!r} (--text-field); pass --text-field {field}, or leave "
                              "the embeddings out to embed that field")
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

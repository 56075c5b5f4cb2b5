"""What a resample run reports: diagnostics, the cluster plot and the data card."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..histograms import Histogram, describe, kl
from ..io.discovery import short_name
from ..manifest import StageRun, atomic_write_bytes, fingerprint
from ..plots import figure, save_png
from .config import FEATURES, ResampleConfig
from .inputs import Inputs
from .planning import Plan, unit_repeats
from .writing import data_name

logger = logging.getLogger(__name__)


def selection_diagnostics(target: Histogram, generic: Histogram, plan: Plan, weights: np.ndarray, rows: int,
                          unique: int, tokens: int, *, weighed: bool = True, documents: int | None = None
                          ) -> dict[str, Any]:
    """The selection's statistics. `unique`: distinct units drawn (the repetition rate counts them); `documents`:
    the distinct documents they come from (windows: fewer; None: as many). `weighed`: it was drawn by the cluster
    weights `weights`, so their effective sample size means something (`ngram` and `classifier` rank documents:
    None there)."""
    n_c = generic.counts
    ess = float((weights * n_c).sum() ** 2 / max((weights ** 2 * n_c).sum(), 1e-300)) if weighed else None
    t = describe(target)
    return {
        "rows": rows, "tokens": tokens, "unique_documents": unique if documents is None else documents,
        "unique_units": unique,
        "unique_share": unique / rows if rows else 0.0,
        "repetition_rate": 1 - unique / rows if rows else 0.0,
        "kl_target_generic": kl(target.probs(), generic.probs()),
        # kl's floor for a cluster the selection missed (a floor on the counts would grow with the budget)
        "kl_target_selected": kl(target.probs(), plan.draws),
        "effective_sample_size": ess,
        "effective_sample_share": ess / max(generic.total, 1.0) if ess is not None else None,
        "target_documents": t["documents"], "target_entropy": t["entropy"],
        "target_top_cluster_mass": t["top_cluster_mass"], "empty_target_clusters": t["empty_clusters"],
        "clusters": t["clusters"],
    }


def write_extras(run: StageRun, cfg: ResampleConfig, stats: dict[str, Any], target: Histogram, inputs: Inputs,
                 plan: Plan, command: str | None, n_out: int, plot=None) -> dict[str, Path]:
    """histograms.json, the `datasets` state files (arrow), the plot and the data card."""
    out, generic = run.out_dir, inputs.generic
    files: dict[str, Path] = {}
    hist = {"target": target.counts.tolist(), "generic": generic.counts.tolist(),
            "selected": plan.draws.tolist(), "weights": plan.weights.tolist(),
            **({"spilled": plan.spilled.tolist()} if plan.spilled is not None else {})}
    atomic_write_bytes(out / "histograms.json", json.dumps(hist).encode())
    files["histograms.json"] = out / "histograms.json"
    if cfg.format == "arrow":
        data_files = [{"filename": data_name(b, n_out, "arrow")} for b in range(n_out)]
        state = {"_data_files": data_files, "_fingerprint": content_key(run, inputs.emb, inputs.clu)[7:23],
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                 "_output_all_columns": False, "_split": None}
        info = {"citation": "", "description": "impsamp selection", "features": FEATURES,
                "homepage": "", "license": ""}
        for name, obj in (("state.json", state), ("dataset_info.json", info)):
            atomic_write_bytes(out / name, (json.dumps(obj, indent=2) + "\n").encode())
            files[name] = out / name
    if plot.result() if plot is not None else plot_histograms(out / "histograms.png", target, generic, plan):
        files["histograms.png"] = out / "histograms.png"
    card = render_card(cfg, stats, target, inputs, plan, command, data_key(run))
    atomic_write_bytes(out / "README.md", card.encode())
    files["README.md"] = out / "README.md"
    return files


def data_key(run: StageRun) -> str:
    """A fingerprint of the selection's data files (their committed sha256s): what the card names the
    selection by, so the same selection, made in any folder or by any engine, has the same card."""
    return fingerprint(sorted((ref["path"], ref["sha256"]) for rec in run.records() if not rec.get("intermediate")
                              for ref in rec["files"]))


def content_key(run: StageRun, emb, clu) -> str:
    """A fingerprint of what the selection is made of, wherever its inputs lie: the corpus's content, the
    embed, cluster and resample settings, the target histogram, the plan (the cluster weights and the document
    weights: two targets of one histogram weigh documents apart), how the budget was counted and the version (the
    run key also covers the input paths). `datasets` keys its caches by it."""
    budget = {k: v for k, v in run.inputs.get("budget", {}).items() if k != "tokens_counted_with"}
    return fingerprint({"corpus": emb.manifest.inputs.get("corpus", {}).get("fingerprint"),
                        "embed": emb.manifest.config, "cluster": clu.manifest.config,
                        "resample": {k: v for k, v in run.config.items() if k != "budget_tokenizer"},
                        "target": run.inputs.get("target_fingerprint"), "within": run.inputs.get("within_fingerprint"),
                        "plan": run.shard_record("plan")["stats"]["fingerprint"], "budget": budget, "version": run.version})


def plot_histograms(path: Path, target: Histogram, generic: Histogram, plan: Plan, top: int = 40) -> bool:
    fig = figure((10, 4))
    if fig is None:
        logger.warning("matplotlib is not installed: no histogram plot (pip install matplotlib)")
        return False
    p_t, p_g = target.probs(), generic.probs()
    p_s = plan.draws / max(plan.draws.sum(), 1)
    order = np.lexsort((-p_g, -(p_t + p_s)))[:top]  # then the largest clusters of the generic corpus
    x = np.arange(len(order))
    ax = fig.add_subplot()
    # the cluster explorer's colours: generic grey, target orange, selection blue
    for off, p, label, color in ((-0.27, p_g, "generic", "#9a9a9a"), (0.0, p_t, "target", "#e66101"),
                                 (0.27, p_s, "selected", "#2c7bb6")):
        ax.bar(x + off, p[order], width=0.27, label=label, color=color)
    ax.set_xticks(x, [str(c) for c in order], rotation=90, fontsize=9)
    ax.set_xlabel(f"cluster (top {len(order)} by target + selected mass, then by generic mass)")
    ax.set_ylabel("share (of documents; selected: of rows)")
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0))  # as the cluster explorer writes shares
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)
    return True


def _yaml(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False) if isinstance(v, str) else str(v)  # YAML reads no surrogate pairs


def _within_how(cfg: ResampleConfig, stats: dict[str, Any]) -> str:
    """The card's sentences on how documents were picked inside the clusters."""
    within = stats.get("within", "uniform")
    if cfg.method == "uniform":
        return "This is a uniform random sample of the generic corpus: nothing in it was matched to a target."
    if cfg.method in ("ngram", "classifier"):
        return (f"Each document was scored on its own (`--method {cfg.method}`), so the selection follows what "
                "that score separates, not the target's cluster histogram.")
    if cfg.scheme != "match" or within == "uniform":  # importance left: crisp, or the seed paper's draw
        return ("The budget is shared out between clusters, not documents: inside a cluster every document is "
                "equally likely to be drawn, whether or not it resembles the target.")
    how = {"knn": "the closeness of its embedding to the nearest target document",
           "knn+ngram": "its closeness to the nearest target document and its hashed n-gram log-ratio",
           "ngram-classifier": "its odds under a logistic regression on hashed n-grams, the target sample "
                               "against this corpus"}.get(within, f"the function {within}")
    top = ""
    if "eligible_units" in stats:  # --within-top
        cap = stats.get("max_repeat") or 1
        top = (f" Only the {stats['eligible_units']:,} units ranked highest by it could be drawn (`--within-top "
               f"{cfg.within_top:g}`), {'each once' if cap == 1 else f'each at most {cap:g} times'}")
        top += "; a cluster's quota past what they hold went to the nearest clusters." if stats.get("spilled_units") \
            else "."
    return (f"The budget is shared out between clusters; inside a cluster's quota each document was weighted by "
            f"{how} (`--within {within}`), which ranks documents only as well as that score separates the target "
            f"from its neighbours.{top}")


def render_card(cfg: ResampleConfig, stats: dict[str, Any], target: Histogram, inputs: Inputs, plan: Plan,
                command: str | None, fingerprint_key: str) -> str:
    """The selection's README.md data card, filled from the template in `data_cards/TEMPLATE.md`."""
    from .. import __version__

    corpus, generic, clu = inputs.corpus, inputs.generic, inputs.clu

    template = (Path(__file__).parents[1] / "data" / "selection_card.md").read_text()
    budget = stats["budget"]
    generic_name = ", ".join(Path(f.path).name for f in corpus.files[:3]) + (
        f" and {len(corpus.files) - 3:,} more files" if len(corpus.files) > 3 else "")
    mixed = len(stats["targets"]) > 1  # a mixture names each part's weight (`law.jsonl:0.7, web.jsonl:0.3`)
    target_name = ", ".join(short_name(t["target"]) + (f":{t['weight']:g}" if mixed else "")
                            for t in stats["targets"]) or "(none: uniform sample)"
    diag = ["| diagnostic | value |", "|---|---:|"] + [
        f"| {k.replace('_', ' ')} | {_num(stats[k])} |" for k in (
            "rows", "tokens", "characters", "bytes", "unique_documents", "repetition_rate", "kl_target_generic",
            "kl_target_selected", "effective_sample_size", "target_top_cluster_mass", "target_entropy",
            "empty_target_clusters")]
    p_t, p_g = target.probs(), generic.probs()
    p_s = plan.draws / max(plan.draws.sum(), 1)
    top = [int(c) for c in np.argsort(-p_s, kind="stable")[:5] if p_s[c] > 0]
    examples = _examples(top, corpus, inputs.tables, inputs.names, inputs.leaves,
                         lambda s: unit_repeats(cfg, plan, s, inputs.leaves[s]) > 0)
    weighed = cfg.method == "importance"  # the others never weigh clusters: no weight column
    lines = ["| cluster | target | generic | selected |" + (" weight |" if weighed else "") + " examples |",
             "|---:|---:|---:|---:|" + ("---:|" if weighed else "") + "---|"]
    for c in top:
        ex = " / ".join(card_text(e[:80]) for e in examples.get(c, []))
        weight = f" {plan.weights[c]:.3g} |" if weighed else ""
        lines.append(f"| {c} | {p_t[c]:.3f} | {p_g[c]:.3f} | {p_s[c]:.3f} |{weight} {ex} |")
    name = f"impsamp-selection-{fingerprint_key[7:15]}"
    scheme = cfg.scheme if cfg.method == "importance" else f"{cfg.method} (topk)"
    plain = {"name": name, "license": "that of the generic corpus", "target": target_name,
             "tokens_counted_with": budget["tokens_counted_with"], "scheme": scheme,
             "weighting": stats["weighting"], "fingerprint": fingerprint_key, "impsamp_version": __version__}
    values = {
        **plain, **{f"{k}_y": _yaml(v) for k, v in plain.items()}, "title": name, "configs": _configs(cfg.format),
        "generic_corpus": generic_name, "source_datasets": _source_datasets(corpus.files),
        "description": _yaml(_description(cfg, stats, generic_name, target_name)),
        "chosen": _chosen(cfg, clu.n_leaves, target_name), "budget_how": _budget_how(cfg, stats),
        "num_rows": stats["rows"], "num_documents": stats["unique_documents"], "num_tokens": stats["tokens"],
        "num_characters": stats["characters"],
        "num_bytes": stats["bytes"], "budget": f"{budget['amount']:,} {budget['unit']}",
        "tokens_how": budget.get("how", "exact, every unit's whole text tokenized"), "k": clu.n_leaves,
        "kl_target_generic": f"{stats['kl_target_generic']:.4f}",
        "kl_target_selected": f"{stats['kl_target_selected']:.4f}", "seed": cfg.seed,
        "command": command or "impsamp.resample(...)",
        # the weighting that ran (a function given to `resample(weighting=...)` replaces the config's name)
        "config": json.dumps({**asdict(cfg), **({"weighting": stats["weighting"]} if weighed else {})}, indent=2,
                             sort_keys=True),
        "diagnostics_table": "\n".join(diag), "top_clusters": "\n".join(lines),
        "within_how": _within_how(cfg, stats), **_weight_words(cfg, stats),
        "copied": _copied(inputs), "target_step": _target_step(stats["targets"]),
    }
    return template.format(**values)


def _copied(inputs: Inputs) -> str:
    """How the text relates to the generic corpus's (windows of it; bytes that were not UTF-8 replaced)."""
    what = ("Every row is a window of a document of the generic corpus (`embed --windows`), copied"
            if inputs.windowed else "Every document is copied")
    replaced = int(inputs.emb.manifest.stats.get("replaced_utf8", 0) or 0)
    if replaced:
        return (f"{what} from the generic corpus as impsamp read it: {replaced:,} of its documents held bytes that "
                "are not UTF-8, each replaced with U+FFFD (`--encoding-errors replace`); the rest is unchanged.")
    return f"{what} unchanged from the generic corpus."


def _target_step(targets: list[dict[str, Any]]) -> str:
    """Step 2 of the card: how the target's histogram over the clusters was had."""
    if not targets:
        return "No in-domain sample was given: there is no target histogram."
    how = {"corpus": "embedded with the same encoder, each of its documents assigned to the nearest centroid",
           "embeddings": "its stored vectors (an `impsamp embed` output of the same encoder) assigned to the "
                         "nearest centroids",
           "histogram": "its cluster histogram as saved by `impsamp histogram`, read as it is"}
    kinds = sorted({t.get("kind", "corpus") for t in targets}, key=list(how).index)
    return ("It took the target histogram over clusters from the in-domain sample: "
            + "; ".join(how[k] for k in kinds) + ("." if len(kinds) == 1 else " (by part)."))


def _weight_words(cfg: ResampleConfig, stats: dict[str, Any]) -> dict[str, str]:
    """What the `weight` column holds and how the method weighed, for the card's provenance and step 3."""
    if cfg.method == "uniform":
        return {"weight_column": "its weight (1: every document was equally likely)",
                "weigh_step": "Nothing was weighed: every document of the generic corpus was equally likely (a "
                              "uniform sample; the target is only measured against, in the diagnostics)."}
    if cfg.method == "ngram":
        return {"weight_column": "its own importance weight (the ratio of its hashed n-gram likelihoods under "
                                 "the target sample and the generic corpus)",
                "weigh_step": "Each document received its own importance weight, the ratio of its hashed n-gram "
                              "likelihoods under the target sample and under the generic corpus (as DSIR does); "
                              "the clusters played no part in the choice."}
    if cfg.method == "classifier":
        return {"weight_column": "its own weight (the odds a logistic regression on the embeddings gives it of "
                                 "being target text)",
                "weigh_step": "Each document received its own weight, the odds a logistic regression on the "
                              "embeddings (the target sample against a sample of the generic corpus) gives it of "
                              "being target text; the clusters played no part in the choice."}
    return {"weight_column": "the importance weight of that cluster",
            "weigh_step": f"Each cluster received an importance weight ({stats['weighting']})"
                          + (": the ratio of its share in the target to its share in the generic corpus."
                             if stats["weighting"] == "ratio" else ".")}


def _source_datasets(files) -> str:
    """The card's `source_datasets`: the generic corpus's files by the names its ids use (the file name, or
    the path from their common folder where two share a name), the first 20, then how many more."""
    names = [f.id_prefix or Path(f.path).name for f in files]
    return json.dumps(names[:20] + ([f"and {len(names) - 20:,} more files"] if len(names) > 20 else []),
                      ensure_ascii=False)


def _configs(fmt: str) -> str:
    """The card's `configs` (Hugging Face's dataset card field): `datasets.load_dataset(DIR)` reads the data
    files named there, not the folder's manifest.json and histograms.json as well."""
    if fmt == "arrow":  # a `save_to_disk` folder: `datasets.load_from_disk`
        return ""
    return f"configs:\n- config_name: default\n  data_files: \"data-*.{fmt}\""


def _description(cfg: ResampleConfig, stats: dict[str, Any], generic: str, target: str) -> str:
    what = f"{stats['rows']:,} rows of {generic}"
    if cfg.method == "uniform":
        return f"{what} drawn uniformly at random by impsamp"
    if cfg.method in ("ngram", "classifier"):
        return f"{what} selected by impsamp (--method {cfg.method}) to resemble the in-domain sample {target}"
    return f"{what} resampled by impsamp so that their embedding-cluster histogram matches the in-domain " \
        f"sample {target}"


def _chosen(cfg: ResampleConfig, k: int, target: str) -> str:
    if cfg.method == "uniform":
        return "They are a uniform random sample: nothing in it was matched to a target" + (
            f" ({target} is only measured against, in the diagnostics)." if "(none" not in target else ".")
    if cfg.method in ("ngram", "classifier"):
        return f"Each was scored on its own against the in-domain sample {target} (`--method {cfg.method}`)."
    return f"They were chosen so that their distribution over {k} embedding clusters follows the in-domain " \
        f"sample {target}."


def _budget_how(cfg: ResampleConfig, stats: dict[str, Any]) -> str:
    """How close to the budget the draw lands: whole documents by size, or a count of documents."""
    if stats["budget"]["unit"] == "docs":
        return "The budget is a count of rows."
    if cfg.method != "importance":
        return ("Each document's key is its log-weight plus seeded Gumbel noise, and documents were taken in "
                "order of their keys until they held the budget: a draw without replacement in proportion to "
                "the weights.")
    if cfg.scheme == "match" and stats.get("within", "uniform") != "uniform":
        return ("Each cluster's share of the budget was filled with whole documents by their sizes, so the "
                "total is close to the budget.")
    return ("As in the seed paper, each cluster gave a number of documents (its share of the budget over its "
            "mean document size), so the total varies with the sizes of the documents drawn: on a small "
            "budget and a corpus with some very long documents it can miss by much (split them with "
            "`--windows`).")


def _num(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v)


def card_text(text: str) -> str:
    """A document's text as a table cell of the Markdown card, shown as written: JSON-escaped (one line), then
    Markdown's and HTML's specials backslash-escaped (a document's <script>, `**` or `|` is not rendered)."""
    return re.sub(r"([`*_\[\]<>#~|])", r"\\\1", json.dumps(text, ensure_ascii=False)[1:-1])


def _examples(clusters: list[int], corpus, shard_tables, names, shard_leaves, selected, per: int = 3
              ) -> dict[int, list[str]]:
    """First few selected documents of each cluster (in corpus order), for the data card; `selected(s)`: which
    units of input shard s the selection holds."""
    want: dict[int, list[int]] = {c: [] for c in clusters}
    for s, (name, leaves) in enumerate(zip(names, shard_leaves)):
        idx = shard_tables.column(name, "doc_index")
        chosen = selected(s)
        for c in clusters:
            if len(want[c]) < per:
                want[c].extend(idx[(leaves == c) & chosen][: per - len(want[c])].tolist())
        if all(len(v) >= per for v in want.values()):
            break
    texts = corpus.take(np.asarray([i for v in want.values() for i in v], dtype=np.int64))
    return {c: [" ".join(texts[i][1].split()) for i in v if i in texts] for c, v in want.items()}

"""`impsamp resample`: draw a domain-like selection from the clustered generic corpus."""

from __future__ import annotations

from pathlib import Path

import click

from impsamp.config import resolve_config
from impsamp.errors import ConfigError
from impsamp.resampling import FORMATS, METHODS, SCHEMES, WITHIN_REPEATS, ResampleConfig, command_line
from impsamp.resampling import resample as _resample

from .app import (COUNT, cli, config_option, execution, out_option, overwrite_option, plural, progress_option,
                  scale_options, show_progress)


@cli.command()
@click.argument("embeddings_dir", type=click.Path(path_type=Path))
@click.argument("clusters_dir", type=click.Path(path_type=Path))
@click.option("--target", "targets", multiple=True, metavar="TARGET[:WEIGHT]",
              help="In-domain sample: a corpus file/folder/glob, its `impsamp embed` output, or a saved "
                   "histogram (.json). Repeat for a mixture, e.g. --target law.jsonl:0.7 --target med.jsonl:0.3.")
@out_option
@click.option("--tokens", type=COUNT, default=None,
              help="Budget in tokens of the text written (whole documents, or windows with embed --windows), "
                   "counted with the embedding model's tokenizer (past its window, estimated from the tokens "
                   "per character of the part it read) or with --budget-tokenizer.")
@click.option("--budget-tokenizer", type=click.Path(dir_okay=False), default=None, metavar="TOKENIZER.JSON",
              help="Count --tokens with this tokenizer (e.g. your trainer's), exactly: reads and tokenizes the "
                   "generic corpus's text once (resumable).")
@click.option("--bytes", "n_bytes", type=COUNT, default=None, help="Budget in UTF-8 bytes of the text written.")
@click.option("--docs", type=COUNT, default=None, help="Budget in documents (windows with embed --windows).")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help=f"Selector [default: {ResampleConfig.method}]; uniform is the random-sample baseline.")
@click.option("--scheme", type=click.Choice(SCHEMES), default=None,
              help=f"match: histogram matches the target, with replacement; crisp: cluster then document; "
                   f"topk: without replacement [default: {ResampleConfig.scheme}].")
@click.option("--weighting", default=None, metavar="NAME|MODULE:FUNCTION",
              help="Cluster weights: ratio, uniform, or your own function (target_hist, generic_hist) -> "
                   "one weight per leaf; both are impsamp.Histogram objects (.counts, .probs(), .k) "
                   "[default: ratio].")
@click.option("--smoothing", type=float, default=None, help="Laplace pseudo-documents per target cluster [default: 0].")
@click.option("--temperature", type=float, default=None, help="Exponent on the density ratio [default: 1].")
@click.option("--cap", type=float, default=None,
              help="Largest cluster weight, as a multiple (>= 1) of the mean weight of a generic document once capped.")
@click.option("--backoff", type=float, default=None,
              help="Hierarchical clusters: pseudo-documents pulling sparse leaves toward their parent [default: 0].")
@click.option("--max-repeat", type=int, default=None,
              help="match: most times a document may be drawn; the rest spills to the nearest clusters "
                   "[default: 4 when documents are weighted inside clusters (--within other than uniform, auto's "
                   "usual pick included), 1 with --within-top, raised if the budget needs more; none with --within "
                   "uniform].")
@click.option("--within", default=None, metavar="auto|uniform|knn|knn+ngram|ngram-classifier|MODULE:FUNCTION",
              help="match: documents inside a cluster's quota drawn uniformly (the seed paper), weighted by "
                   "closeness to the nearest target document (knn), by that and their hashed n-gram log-ratio "
                   "(knn+ngram), by the odds of a logistic regression on hashed n-grams, target against pool "
                   "(ngram-classifier: the purest and best measured; both n-gram options hash the pool's text once "
                   "per embedding and keep it, --ngram-cache), or by your "
                   "function(target_vectors, vectors) -> positive weights [default: auto: for --method "
                   "importance, ngram-classifier when every target is a corpus, knn when one is its embed "
                   "output (no text), uniform when one is a saved histogram].")
@click.option("--within-temperature", type=float, default=None,
              help="--within knn: tau in exp((cosine to the nearest target document - 1) / tau); knn+ngram: "
                   "exp((z(cosine) + z(n-gram log-ratio)) / (5 tau)); ngram-classifier: exp(z(log-odds) / (2 tau)) "
                   "[default: 0.05].")
@click.option("--within-repeats", type=click.Choice(WITHIN_REPEATS), default=None,
              help="--within other than uniform: even (no document repeated past the fewest repeats that hold its "
                   "cluster's quota; the weights choose which documents) or weighted (the weights decide how "
                   "often, up to --max-repeat) [default: even].")
@click.option("--within-top", type=float, default=None, metavar="F",
              help="match with a weighted --within: only the units of highest --within weight holding F times the "
                   "budget may be drawn, each once (with --max-repeat R: F / R times the budget, each up to R "
                   "times; without it, raised with a warning where the clusters the target weighs hold less than "
                   "the budget); a cluster's quota past what they hold spills to the nearest clusters, so the quotas bend toward the target-like units. F >= 1; "
                   "measured at 1.25, with --max-repeat 2 where the target holds less text than the budget "
                   "[default: off].")
@click.option("--seed", type=int, default=None, help="Random seed [default: 0].")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="arrow (datasets.load_from_disk), parquet or jsonl [default: arrow].")
@click.option("--rows-per-shard", type=int, default=None, help="Rows per output shard [default: 100000].")
@click.option("--text-field", default=None, help="Text field of target corpora [default: text].")
@click.option("--id-field", default=None, help="Id field of target corpora.")
@click.option("--ngram-cache/--no-ngram-cache", default=True, show_default=True,
              help="--method ngram and the --within n-gram options (auto's pick for a corpus target): keep the generic corpus's hashed n-grams in the user "
                   "cache (IMPSAMP_CACHE_DIR, else $XDG_CACHE_HOME/impsamp, else ~/.cache/impsamp; ~4 bytes per distinct n-gram of a document: "
                   "1.5x the bundled pool's embeddings, more for long documents), so later targets on the same "
                   "embeddings skip reading its text; the selection is the same either way.")
@scale_options(slices_help="Not supported by resample: its output is one global shuffle of every input "
                                "shard (run it as one job; --engine ray spreads it).")
@config_option
@overwrite_option
@progress_option
def resample(embeddings_dir, clusters_dir, targets, out_dir, tokens, budget_tokenizer, n_bytes, docs, method, scheme, weighting, smoothing,
             temperature, cap, backoff, max_repeat, within, within_temperature, within_repeats, within_top, seed, fmt, rows_per_shard, text_field, id_field,
             ngram_cache, engine, ray_address, num_shards, shard_index, config_file, overwrite, progress):
    """Resample the generic corpus so its cluster histogram imitates the target's.

    EMBEDDINGS_DIR is the generic corpus's `impsamp embed` output and CLUSTERS_DIR the
    `impsamp cluster` output fitted on it; the text is read from the corpus they record (checked
    to be unchanged). Writes shards in the `datasets.save_to_disk` layout, histograms, a plot and
    a README.md data card.

    \b
    Example:
      impsamp resample runs/emb runs/clusters --target law_sample.jsonl --out runs/law --tokens 50000000

    --engine ray runs the per-shard passes as Ray tasks, and the hashing of the shards' n-grams
    that the first target on an embedding does (same bytes). Slurm-array slices
    (--num-shards/--shard-index) are refused: the output is one global shuffle of every input shard.
    """
    ex = execution(engine, ray_address, num_shards, shard_index)
    cfg = resolve_config(ResampleConfig, config_file, "resample", tokens=tokens, docs=docs, bytes=n_bytes,
                         budget_tokenizer=None if budget_tokenizer is None else str(budget_tokenizer), method=method,
                         scheme=scheme, weighting=weighting, smoothing=smoothing, temperature=temperature, cap=cap,
                         backoff=backoff, max_repeat=max_repeat, within=within,
                         within_temperature=within_temperature, within_repeats=within_repeats, within_top=within_top,
                         seed=seed, format=fmt,
                         rows_per_shard=rows_per_shard, text_field=text_field, id_field=id_field)
    if scheme == "match" and cfg.method != "importance":  # the default, so the config cannot tell it was asked
        raise ConfigError(f"--scheme match draws with replacement for --method importance; --method {cfg.method} "
                          "draws each unit at most once (topk): leave --scheme out")
    sel = _resample(embeddings_dir, clusters_dir, out_dir, targets=list(targets), config=cfg, overwrite=overwrite,
                    progress=show_progress(progress), command=command_line(), execution=ex,
                    ngram_cache=ngram_cache)
    s = sel.stats
    click.echo(f"{plural(s['rows'], 'row')} ({s['tokens']:,} tokens, {s['bytes']:,} bytes, "
               f"{plural(s['unique_documents'], 'unique document')}, repetition {s['repetition_rate']:.1%}"
               + (f", {s['spilled_units']:,.0f} draws spilled over the repeat cap" if s.get("spilled_units") else "")
               + f") -> {out_dir}")
    t = "target" if s.get("targets") else "generic"  # --method uniform without a target: the pool itself
    click.echo(f"KL({t}||generic) {s['kl_target_generic']:.3f} -> KL({t}||selected) "
               f"{s['kl_target_selected']:.3f}"
               + (f"; effective sample size {s['effective_sample_size']:,.0f}"
                  if s.get("effective_sample_size") is not None else "")
               + (f"; documents inside the clusters: --within {s['within']}"
                  if s.get("within") and (cfg.method, cfg.scheme) == ("importance", "match") else ""))

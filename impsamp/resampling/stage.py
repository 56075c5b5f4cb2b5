"""The `resample` stage as named steps: open the inputs, weigh the clusters, plan the draws, route the
selected rows to output shards (pass 1), gather and shuffle each output shard (pass 2), report.

Both passes are shard tasks handed to `scale.run_tasks` (threads here, or Ray tasks: the same bytes),
each committed through the stage contract, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import as_config
from ..costs import encoder_flops, encoder_params
from ..errors import ConfigError, StageError
from ..guards import refuse_busy, refuse_inside_input_folder, released_on_return
from ..hardware import cpu_count
from ..histograms import (Histogram, embed_like, from_assignments, histogram, is_embed_output,
                          is_histogram_file, mixture, stored_target_vectors)
from ..io.discovery import absolute_glob, is_glob
from ..manifest import StageRun, inside, tmp_name
from ..progress import progress_bar
from ..scale import LOCAL, Execution, Shared, commit_once, engine_session, run_tasks
from ..weighting import compute_weights, resolve_weighting
from .budget import UnitSizes
from .config import DOCUMENT_RANKERS, RATIO_SHAPING, SELECTION_SCHEMA, ResampleConfig
from .inputs import Inputs, open_inputs
from .methods import (classifier_unit_log_weights, mixture_row_weights, ngram_classifier_unit_log_odds,
                      ngram_unit_log_weights, parse_target, target_text_parts, targets_have_text)
from .planning import Plan, arrays_fingerprint, make_plan, plan_fingerprint, unit_repeats
from .report import plot_histograms, selection_diagnostics, write_extras
from .selection import Selection
from .streams import ROUTE, SHUFFLE, shard_rng
from .tables import PerShard, hist_key
from .within import classifier_log_weights, knn_ngram_log_weights, knn_similarity, within_log_weights
from .writing import COMBINE_BYTES, data_name, selected_rows, spill_ok, write_output_shard, write_spill

logger = logging.getLogger(__name__)
NGRAM_WITHIN = ("knn+ngram", "ngram-classifier")
"""The `--within` settings that read the units' hashed n-grams (and so the target's text)."""


@dataclass
class Target:
    """The target side: its histogram, its parts for the manifest, its vectors (None if a part is a saved
    histogram), weights."""

    histogram: Histogram
    described: list[dict[str, Any]]
    vectors: np.ndarray | None
    weights: np.ndarray
    weighting: str
    vector_weights: np.ndarray | None = None
    """Per target vector, its part's mixture weight over the part's size (`methods.mixture_row_weights`);
    None for one part."""

    @property
    def weighed_vectors(self) -> np.ndarray | None:
        """The vectors of the parts the mixture weighs (a part given weight 0 is not the target's)."""
        if self.vectors is None or self.vector_weights is None:
            return self.vectors
        return self.vectors[self.vector_weights > 0]


def target_histogram(targets: Sequence[Any], clusters, embeddings, cfg: ResampleConfig
                     ) -> tuple[Histogram, list[dict[str, Any]]]:
    """The (mixture) target histogram, and a description of each part for the manifest."""
    hist, described, _, _ = target_parts(targets, clusters, embeddings, cfg)
    return hist, described


def target_parts(targets: Sequence[Any], clusters, embeddings, cfg: ResampleConfig
                 ) -> tuple[Histogram, list[dict[str, Any]], np.ndarray | None, np.ndarray | None]:
    """`target_histogram`, and the vectors of the parts when no part is a saved histogram (a corpus is
    embedded once here, each part on its own; an `impsamp embed` output gives its stored vectors), else None,
    with each vector's weight in the mixture (`mixture_row_weights`)."""
    parts, described, vectors = [], [], []
    for t in targets:
        spec, w = parse_target(t)
        embedded = 0  # tokens the encoder read here (for the selection's cost)
        kind = "histogram" if is_histogram_file(spec) else "embeddings" if is_embed_output(spec) else "corpus"
        if kind == "histogram":
            h = histogram(spec, clusters, embeddings=embeddings)
        else:
            if kind == "embeddings":  # embedded before: its stored vectors (same model, checked)
                v = stored_target_vectors(spec, embeddings)
            else:
                v, table = embed_like(spec, embeddings, text_field=cfg.text_field, id_field=cfg.id_field)
                embedded = int(np.asarray(table.column("tokens")).sum())
            h = from_assignments(clusters.assign(v)[:, -1], clusters, source=absolute_glob(spec))
            vectors.append(v)
        if h.total <= 0:
            raise ConfigError(f"target {spec} has no documents; give a non-empty in-domain sample")
        parts.append((h, w))
        described.append({"target": absolute_glob(spec), "kind": kind, "weight": w, "documents": h.total,
                          "embedded_tokens": embedded,
                          **({"globs": [absolute_glob(spec)]} if is_glob(spec) else {})})  # (as `guards` reads)
    if len(vectors) < len(parts):
        return mixture(parts), described, None, None
    row_weights = mixture_row_weights([len(v) for v in vectors], [w for _, w in parts])
    return mixture(parts), described, np.concatenate(vectors), row_weights


def weigh(inputs: Inputs, targets: Sequence[Any], cfg: ResampleConfig, weighting: Callable[..., Any] | None
          ) -> Target:
    """The target histogram and the cluster weights (uniform: the generic histogram, weight 1)."""
    if weighting is not None and cfg.method != "importance":  # as ResampleConfig refuses --weighting
        raise ConfigError(f"weighting= shapes the cluster weights of --method importance; --method {cfg.method} "
                          "has none: leave it out")
    if weighting is not None and weighting != "ratio":  # (the built-in's name, given here: its settings apply)
        cfg.refuse_ratio_shaping("weighting= replaces it")
    if cfg.method == "uniform":  # a target given is measured against (the diagnostics), not matched
        hist, described, vectors, row_w = target_parts(targets, inputs.clu, inputs.emb, cfg) if targets else \
            (inputs.generic, [], None, None)
        spec = "uniform"
    else:
        if not targets:
            raise ConfigError("no target given; pass --target with an in-domain sample (or --method uniform)")
        hist, described, vectors, row_w = target_parts(targets, inputs.clu, inputs.emb, cfg)
        spec = (weighting or cfg.weighting) if cfg.method == "importance" else "ratio"
    if cfg.backoff > 0 and inputs.clu.n_levels < 2:
        logger.warning("--backoff %g does nothing on a flat clustering (%s): it pulls a sparse leaf toward its "
                       "parent in a tree (`impsamp cluster --levels`)", cfg.backoff, inputs.clu.path)
    builtin = {name: getattr(cfg, name) for name in RATIO_SHAPING}
    weights, name = compute_weights(spec, hist, inputs.generic, **builtin)
    return Target(hist, described, vectors, weights, cfg.method if cfg.method in DOCUMENT_RANKERS else name, row_w)


@released_on_return
def resample(embeddings, clusters, out_dir: str | Path, *, targets: Sequence[Any] = (),
             config: ResampleConfig | None = None, weighting: Callable[..., Any] | None = None,
             overwrite: bool = False, progress: bool = False, command: str | None = None,
             execution: Execution | None = None, ngram_cache: bool = True) -> Selection:
    """Draw a selection from the clustered generic corpus and write it as shards with a data card.

    Args:
        embeddings: the generic corpus's `impsamp embed` output (an `Embeddings` or its path).
        clusters: the `impsamp cluster` output fitted on it (a `Clusters` or its path).
        targets: in-domain samples: corpus paths, target `embed` dirs, saved histograms, each
            optionally with a mixture weight (`"law.jsonl:0.7"` or `("law.jsonl", 0.7)`); one path alone
            is one target.
        config: budget (required), method, scheme, weighting options, seed, output format (a
            `ResampleConfig`, or a dict of its fields).
        weighting: a Python callable overriding `config.weighting`: (target Histogram, generic Histogram)
            -> one finite weight >= 0 per leaf cluster.
        overwrite: replace a complete output in `out_dir` (kept in `out_dir/_replaced` until the new one
            is complete); without it a complete output is refused and an interrupted one resumed.
        progress: show progress bars.
        command: the command line to record in the data card (the CLI passes it).
        execution: `impsamp.scale.Execution(engine="ray")` runs both passes' shards as Ray tasks, and
            the first n-gram target's hashing of the shards the cache lacks (same bytes). Slices
            (`num_shards`) are refused: the output is one global shuffle.
        ngram_cache: `--method ngram` and `--within knn+ngram|ngram-classifier` keep the generic units'
            hashed n-grams in the user cache for later targets (`ngram_features`); False keeps nothing
            outside the run.
            The selection is the same either way.

    Returns:
        The `Selection` written (`.stats`, `.data_files`, `.to_table()`).

    Raises:
        ConfigError, StageError, WeightingError: bad budget, mismatched inputs, bad weights.
    """
    cfg = as_config(ResampleConfig, config)
    if cfg is None:
        raise ConfigError("resample: give a budget, config=ResampleConfig(tokens=N) (or docs=N, bytes=N)")
    targets = _target_list(targets)
    ex = execution or LOCAL
    if ex.sliced:
        raise ConfigError("resample --num-shards/--shard-index: the output is one global shuffle of every "
                          "input shard, so it cannot be cut into independent slices; run it as one job "
                          "(--engine ray spreads its shards over a Ray cluster)")
    if isinstance(weighting, str):  # a name or import string: checked (and imported) before the target's work
        resolve_weighting(weighting)
    refuse_busy(Path(out_dir))  # before the target is embedded
    inputs = open_inputs(embeddings, clusters, cfg)
    target = weigh(inputs, targets, cfg, weighting)
    # `--within auto`: ngram-classifier for corpus targets, knn for `embed` outputs, uniform for histograms
    has_text = targets_have_text(targets)
    resolved = cfg.resolved(target.vectors is not None, has_text)
    if cfg.within == "auto" and resolved.within == "knn" and has_text:  # not the n-gram classifier: why
        logger.warning("--within auto: scikit-learn is not installed (pip install 'impsamp[select]'), so "
                       "documents are weighted by --within knn instead of ngram-classifier")
    cfg = resolved
    _check_target_kinds(cfg, targets, target)  # before anything is written
    refuse_inside_input_folder(Path(out_dir), [inputs.described(), target.described])  # before the weights' work
    # with Ray: one session for every pass (each would start and stop its own), once the inputs are checked
    with engine_session(ex):
        return _resample(inputs, target, out_dir, targets, cfg, overwrite, progress, command, ex, ngram_cache)


def _target_list(targets: Any) -> list[Any]:
    """`resample`'s targets as a list: one target alone (a path, a stage's handle, one (path, weight) pair) or
    any iterable of them (a generator is read once, here)."""
    if targets is None:  # (`--method uniform` takes no target)
        return []
    if isinstance(targets, (str, os.PathLike)) or not isinstance(targets, Iterable) or (
            isinstance(targets, tuple) and len(targets) == 2 and isinstance(targets[1], numbers.Real)):
        return [targets]
    return list(targets)


def _resample(inputs: Inputs, target: Target, out_dir: str | Path, targets: Sequence[Any], cfg: ResampleConfig,
              overwrite: bool, progress: bool, command: str | None, ex: Execution, ngram_cache: bool) -> Selection:
    """`resample`'s passes, on checked inputs, target and config."""
    cfg_eff = cfg.effective()  # uniform, ngram and classifier draw without replacement
    within = _within_log_weights(cfg, targets, target, inputs, progress, ngram_cache, ex)
    # the document weights go into the run's inputs: a resume whose weights differ (another thread count
    # of the embedder, say) is refused instead of mixing two plans' shards
    # and so do the cluster weights: a weighting function edited under the same name weighs otherwise
    within_key = {"within_fingerprint": arrays_fingerprint(within)} if within is not None else {}
    run = StageRun(Path(out_dir), "resample", config={**asdict(cfg_eff), "weighting": target.weighting},
                   inputs={**inputs.described(), "targets": target.described,
                           "target_fingerprint": hist_key(target.histogram),
                           "weights_fingerprint": arrays_fingerprint([target.weights]), **within_key},
                   overwrite=overwrite).begin()
    with run.discarded_on_error():  # e.g. a unit table or a weighting hook found bad: nothing left behind
        _count_sizes(run, inputs, cfg, progress)
        plan = make_plan(cfg_eff, target.weights, inputs.generic, inputs.leaves,
                         PerShard(inputs.names, lambda n: inputs.counter[n].of(cfg.budget[0])),
                         _document_log_weights(run, cfg, targets, target, inputs, progress, ngram_cache, ex),
                         within, inputs.clu.centroids)
        _check_plan(run, plan)
        if plan.draws.sum() < 1:
            unit, amount = cfg.budget
            raise ConfigError(f"--{unit} {amount:,} selects no document: the budget is smaller than the "
                              "documents of the clusters the target weighs; raise it")
    n_out = max(1, math.ceil(int(plan.draws.sum()) / cfg.rows_per_shard))
    bar = progress_bar(progress, "resample", "shard", total=len(inputs.names) + n_out)
    _route_pass(run, ex, cfg_eff, inputs, plan, target.weights, n_out, bar)
    # the histogram plot (~0.7 s of CPU, mostly importing matplotlib) is drawn on a thread during the
    # gathering pass, which leaves a core idle (Arrow takes and writes; the routing pass uses both)
    plot = _in_background(plot_histograms, run.out_dir / "histograms.png", target.histogram, inputs.generic, plan)
    _gather_pass(run, ex, cfg, inputs.names, n_out, bar)
    bar.close()
    return _finish(run, cfg_eff, inputs, target, plan, n_out, command, plot)


def _count_sizes(run: StageRun, inputs: Inputs, cfg: ResampleConfig, progress: bool) -> None:
    """Each unit's size in the budget's unit: from the unit tables, or counted once (resumable)."""
    if inputs.counter.in_tables:
        inputs.counter.prepare(run, inputs.names)
        return
    what = "counting tokens" if cfg.budget_tokenizer else "reading lengths"
    with progress_bar(progress, what, "shard", total=len(inputs.names)) as bar:
        inputs.counter.prepare(run, inputs.names, bar)


def _ngram_scores(run: StageRun, cfg: ResampleConfig, targets: Sequence[Any], target: Target, inputs: Inputs,
                  progress: bool, ngram_cache: bool, ex: Execution) -> list[np.ndarray]:
    """`--method ngram`: each unit's hashed n-gram log-ratio, target against pool (DSIR's)."""
    return ngram_unit_log_weights(run, cfg, targets, inputs, progress, cache=ngram_cache, execution=ex)


def _classifier_scores(run: StageRun, cfg: ResampleConfig, targets: Sequence[Any], target: Target,
                       inputs: Inputs, progress: bool, ngram_cache: bool, ex: Execution) -> list[np.ndarray]:
    """`--method classifier`: each unit's log-odds from a logistic regression on the embeddings."""
    return classifier_unit_log_weights(cfg, target.vectors, inputs.emb, inputs.names, target.vector_weights)


DOCUMENT_SCORERS: dict[str, Callable[..., list[np.ndarray]]] = {"ngram": _ngram_scores,
                                                                "classifier": _classifier_scores}
"""Per-unit log-weights of each `DOCUMENT_RANKERS` method, by name: a method added there needs its scorer here
(tests/test_resampling.py checks the two agree)."""


def _document_log_weights(run: StageRun, cfg: ResampleConfig, targets: Sequence[Any], target: Target,
                          inputs: Inputs, progress: bool, ngram_cache: bool, ex: Execution
                          ) -> list[np.ndarray] | None:
    """Per-unit log-weights of the document-level selectors (`DOCUMENT_SCORERS`); None for the others."""
    if cfg.method not in DOCUMENT_RANKERS:
        return None
    return DOCUMENT_SCORERS[cfg.method](run, cfg, targets, target, inputs, progress, ngram_cache, ex)


def _within_log_weights(cfg: ResampleConfig, targets: Sequence[Any], target: Target, inputs: Inputs,
                        progress: bool, ngram_cache: bool, ex: Execution) -> list[np.ndarray] | None:
    """Per-unit log-weights inside the clusters' quotas (`--within knn`, `knn+ngram`, `ngram-classifier`
    or a function); None for `uniform`."""
    if cfg.within == "uniform":
        return None
    if cfg.within == "ngram-classifier":
        odds = ngram_classifier_unit_log_odds(cfg, targets, inputs, progress, cache=ngram_cache, execution=ex)
        return classifier_log_weights(odds, cfg.within_temperature)
    if cfg.within == "knn+ngram":
        ngram = ngram_unit_log_weights(None, cfg, targets, inputs, progress, cache=ngram_cache, execution=ex)
        return knn_ngram_log_weights(knn_similarity(target.weighed_vectors, inputs.emb, inputs.names), ngram,
                                     cfg.within_temperature)
    return within_log_weights(cfg.within, target.weighed_vectors, inputs.emb, inputs.names, cfg.within_temperature)


def _check_target_kinds(cfg: ResampleConfig, targets: Sequence[Any], target: Target) -> None:
    """One line for a setting the targets cannot serve: the n-grams need each target's text, and the
    document-level comparisons (`--method classifier`, `--within` other than uniform) its vectors, which
    a saved histogram does not have."""
    if cfg.method == "ngram" or (cfg.method == "importance" and cfg.within in NGRAM_WITHIN):
        target_text_parts(targets, cfg, "ngram" if cfg.method == "ngram" else f"importance --within {cfg.within}")
    what = ("--method classifier" if cfg.method == "classifier" else
            f"--within {cfg.within}" if cfg.method == "importance" and cfg.within != "uniform" else None)
    if what and target.vectors is None:
        specs = [parse_target(t)[0] for t in targets]
        spec = next((sp for sp in specs if is_histogram_file(sp)), specs[0] if specs else "the target")
        raise ConfigError(f"{what} needs the target's documents (the sample, or its `impsamp embed` output); "
                          f"{spec} is a saved histogram: pass the in-domain sample itself")


def _check_plan(run: StageRun, plan: Plan) -> None:
    """The plan's fingerprint, committed before any routing: a resume whose plan differs (the document weights
    of `--method ngram|classifier`, made inside the run, from a target file changed where its histogram did
    not) is refused instead of mixing two plans' spill files."""
    fp = plan_fingerprint(plan)
    if not run.is_done("plan"):
        run.commit_shard("plan", {}, stats={"fingerprint": fp}, intermediate=True)
    elif run.shard_record("plan")["stats"].get("fingerprint") != fp:
        raise StageError(f"{run.out_dir} holds an interrupted resample whose draws were planned from other "
                         "document weights: a target's text edited where its histogram stayed, or another machine, "
                         "BLAS thread count or embedding backend (`--method classifier` fits on floats they round "
                         "apart); resume it where it started, or pass --overwrite to start over")


def _route_pass(run: StageRun, ex: Execution, cfg: ResampleConfig, inputs: Inputs, plan: Plan,
                weights: np.ndarray, n_out: int, bar) -> None:
    """Pass 1: each input shard's selected rows, routed to output shards, in a spill file."""
    names = inputs.names
    for name in names:  # spill files are not fsynced: after a machine crash, redo any that is damaged
        key = f"route-{name}"
        if run.is_done(key) and not spill_ok(run.out_dir / "_spill" / f"{name}.arrow", n_out,
                                             run.shard_record(key)["stats"]["rows"]):
            logger.warning("spill file of input shard %s is damaged; recomputing it", name)
            run.forget(key)

    def done(key: str, result: tuple[str, dict[str, int]]) -> None:
        name = key[len("route-"):]
        commit_once(run, key, {f"_spill/{name}.arrow": Path(result[0])}, stats=result[1], intermediate=True)
        bar.update(1)

    todo = [(s, name) for s, name in enumerate(names) if not run.is_done(f"route-{name}")]
    bar.update(len(names) - len(todo))
    tasks = [(f"route-{name}", (cfg, Shared("plan"), s, name, Shared("inputs"), Shared("weights"), n_out,
                                str(inside(run.out_dir, f"_spill/{name}.arrow")))) for s, name in todo]
    run_tasks(ex, _route_shard, tasks, done, shared={"plan": plan, "weights": weights, "inputs": inputs},
              threads=max(1, min(cpu_count(), 4)))


def _gather_pass(run: StageRun, ex: Execution, cfg: ResampleConfig, names: list[str], n_out: int, bar) -> None:
    """Pass 2: each output shard's rows from every spill file, shuffled. Here one output shard is
    gathered at a time (each holds up to rows_per_shard rows; threads would double that) while the
    previous one is committed (fsync, checksum) on a thread."""
    spills = [str(run.out_dir / "_spill" / f"{n}.arrow") for n in names]

    def done(key: str, result: tuple[str, int]) -> None:
        name = data_name(int(key[len("write-"):]), n_out, cfg.format)
        commit_once(run, key, {name: Path(result[0])}, rows={name: result[1]})
        bar.update(1)

    todo = [b for b in range(n_out) if not run.is_done(f"write-{b:05d}")]
    bar.update(n_out - len(todo))
    tasks = [(f"write-{b:05d}", (spills, b, cfg.seed, cfg.format, str(inside(run.out_dir, data_name(b, n_out, cfg.format)))))
             for b in todo]
    run_tasks(ex, _gather_shard, tasks, done, done_in_background=True)


def _finish(run: StageRun, cfg: ResampleConfig, inputs: Inputs, target: Target, plan: Plan, n_out: int,
            command: str | None, plot) -> Selection:
    """Diagnostics, histograms, plot, data card, then the manifest (which makes the output complete)."""
    inputs.corpus.check_unchanged()  # a file written while the routing pass read it: not a selection to keep
    names = inputs.names
    records = [run.shard_record(f"route-{name}")["stats"] for name in names]
    selected = {key: int(sum(r[key] for r in records)) for key in ("tokens", "chars", "bytes")}
    stats = selection_diagnostics(target.histogram, inputs.generic, plan, target.weights, int(plan.draws.sum()),
                                  sum(r["unique"] for r in records), selected["tokens"],
                                  weighed=cfg.method in ("importance", "uniform"),
                                  documents=sum(r.get("documents", r["unique"]) for r in records))
    stats.update({"characters": selected["chars"], "bytes": selected["bytes"],
                  "budget": {"unit": cfg.budget[0], "amount": cfg.budget[1], **inputs.counter.describe()},
                  "output_shards": n_out, "targets": target.described, "weighting": target.weighting,
                  "method": cfg.method, "scheme": cfg.scheme, "within": cfg.within,
                  "spilled_units": float(plan.spilled.sum()) if plan.spilled is not None else 0.0,
                  "max_repeat": plan.max_repeat,
                  **({"eligible_units": plan.eligible} if plan.eligible is not None else {}),
                  **_embedding_flops(cfg, inputs, target)})
    extra = write_extras(run, cfg, stats, target.histogram, inputs, plan, command, n_out, plot)
    return Selection(Path(run.out_dir).absolute(), run.finish(stats=stats, extra_files=extra))  # outlives a chdir


def _embedding_flops(cfg: ResampleConfig, inputs: Inputs, target: Target) -> dict[str, float]:
    """What the method's embeddings cost: the target's sample (per target, `selection_flops`) and the generic
    corpus (paid once, `generic_flops`), for the methods that read vectors (`importance`: the clusters;
    `classifier`). `uniform` and `ngram` need neither (the target is embedded for the diagnostics only)."""
    if cfg.method not in ("importance", "classifier"):
        return {"selection_flops": 0.0, "generic_flops": 0.0}
    target_tokens = sum(t.get("embedded_tokens", 0) for t in target.described)
    return {"selection_flops": encoder_flops(encoder_params(inputs.emb.model_info.get("name", "")), target_tokens),
            "generic_flops": inputs.emb.flops}


def _in_background(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on a thread; -> a Future. Not a daemon: a run that fails before it waits for the plot (a
    corpus file written meanwhile, a full disk) must not exit while matplotlib draws, which aborted the
    interpreter ("terminate called without an active exception", exit 134) in 4 runs of 6."""
    import threading
    from concurrent.futures import Future

    fut: Future = Future()

    def work() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the result
            fut.set_exception(e)

    threading.Thread(target=work, daemon=False, name="impsamp-plot").start()
    return fut


def _route_shard(cfg: ResampleConfig, plan: Plan, s: int, name: str, inputs: Inputs, weights: np.ndarray,
                 n_out: int, path: str) -> tuple[str, dict[str, int]]:
    """Pass 1 for input shard `s` (embedding shard `name`): its selected rows, routed to output shards,
    in a spill file at this process's temp name of `path`; -> (file, stats)."""
    leaves = inputs.leaves[s]
    reps = unit_repeats(cfg, plan, s, leaves)
    doc_log_w = None if plan.doc_log_w is None else plan.doc_log_w[s]
    unit_w = weights[leaves] if doc_log_w is None else np.exp(np.clip(doc_log_w, -80, 80))
    rows = selected_rows(inputs.corpus, inputs.corpus_shards[name], inputs.tables[name], reps, leaves, unit_w,
                         inputs.windowed)
    buckets = shard_rng(cfg.seed, s, ROUTE).integers(n_out, size=rows.num_rows)
    tmp = tmp_name(Path(path))
    tmp.parent.mkdir(parents=True, exist_ok=True)
    write_spill(tmp, rows, buckets, n_out)
    sizes: UnitSizes = inputs.counter[name]
    # a document's windows are all in its shard (shards are ranges of the corpus's rows): counted here
    documents = (int(np.unique(inputs.tables[name].column("doc_index").to_numpy()[reps > 0]).size)
                 if inputs.windowed else int((reps > 0).sum()))
    return str(tmp), {"unique": int((reps > 0).sum()), "documents": documents, "rows": rows.num_rows,
                      **sizes.totals(reps)}


def _gather_shard(spills: Sequence[str], b: int, seed: int, fmt: str, path: str) -> tuple[str, int]:
    """Pass 2 for output shard `b`: its rows from every spill file, shuffled, written at this process's
    temp name of `path`; -> (file, rows)."""
    parts = []
    for p in spills:
        with pa.memory_map(p) as src:
            batch = pa.ipc.open_file(src).get_batch(b)
            if batch.num_rows:
                parts.append(pa.Table.from_batches([batch]))
    rows = pa.concat_tables(parts) if parts else SELECTION_SCHEMA.empty_table()
    if rows.nbytes < COMBINE_BYTES:  # random `take` from one chunk per column is ~3x faster than from many
        rows = rows.combine_chunks()
    perm = shard_rng(seed, b, SHUFFLE).permutation(rows.num_rows)
    tmp = tmp_name(Path(path))
    write_output_shard(tmp, rows, fmt, perm)
    return str(tmp), rows.num_rows


WHERE_FLAGS = {"--engine": 1, "--ray-address": 1, "--progress": 0, "--no-progress": 0, "--ngram-cache": 0,
               "--no-ngram-cache": 0, "--overwrite": 0, "-v": 0, "--verbose": 0}
"""Flags that say where or how a run goes, not what it selects: left out of the command the data card
records, so a selection's files are the same bytes whichever engine, cache or progress display made it."""


def command_line(argv: list[str] | None = None) -> str:
    """The `impsamp` command that made a selection, for its data card (without `WHERE_FLAGS`)."""
    args, kept, skip = sys.argv[1:] if argv is None else argv, [], 0
    for a in args:
        if skip:
            skip -= 1
        elif a.split("=", 1)[0] in WHERE_FLAGS:
            skip = WHERE_FLAGS[a] if "=" not in a else 0
        else:
            kept.append(a)
    return "impsamp " + " ".join(shlex.quote(a) for a in kept)

"""Targets and the document-level weights: DSIR-style n-grams, the embedding classifier and the n-gram
classifier of `--within ngram-classifier`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError
from ..manifest import StageRun
from ..progress import progress_bar
from ..scale import LOCAL, Execution, Shared, run_tasks
from .config import ResampleConfig
from .inputs import Inputs
from .writing import unit_texts


def parse_target(t: str | Path | tuple[Any, float]) -> tuple[str | Path, float]:
    if isinstance(t, tuple):
        if len(t) != 2:
            raise ConfigError(f"target {t!r}: give a path or a (path, weight) pair")
        try:
            return _target_path(t[0]), float(t[1])
        except (TypeError, ValueError):
            raise ConfigError(f"target {t!r}: the weight {t[1]!r} is not a number; give (path, 0.3)") from None
    t = _target_path(t)
    s = str(t)
    head, sep, tail = s.rpartition(":")
    if sep and head and not Path(s).exists():
        try:
            return head, float(tail)
        except ValueError:
            if Path(head).exists():
                raise ConfigError(f"--target {s}: {tail!r} after the colon is not a weight; give FILE or "
                                  "FILE:WEIGHT (law.jsonl:0.3)") from None
    return t, 1.0


def _target_path(t: Any) -> str | Path:
    """A target's path: itself, or a stage output's (`Embeddings`); anything else one line."""
    t = getattr(t, "path", t)
    if not isinstance(t, (str, os.PathLike)):
        hint = " (save it with .save(path) and pass the path)" if hasattr(t, "clusters_fingerprint") else ""
        raise ConfigError(f"target: give a path (an in-domain corpus, its `embed` output or a saved histogram), "
                          f"got a {type(t).__name__}{hint}")
    return t


def _textless(spec: str | Path) -> bool:
    """A target given as a stage output (its `embed` run) or a saved histogram: no text to hash."""
    from ..histograms import is_embed_output, is_histogram_file

    return is_embed_output(spec) or is_histogram_file(spec)


def targets_have_text(targets: Sequence[Any]) -> bool:
    """Every target is an in-domain corpus (what the n-gram weights need), none a stage output or histogram."""
    return bool(targets) and not any(_textless(parse_target(t)[0]) for t in targets)


def target_text_parts(targets: Sequence[Any], cfg: ResampleConfig, method: str) -> list[tuple[Any, float]]:
    """Each target part's corpus (a selection read from its own `text`) and its mixture weight."""
    from ..io import data_text_field, open_corpus

    _text_specs(targets, method)
    return [(open_corpus([sp], text_field=data_text_field([sp], cfg.text_field, "--target"), id_field=cfg.id_field), w)
            for sp, w in map(parse_target, targets)]


def _text_specs(targets: Sequence[Any], method: str) -> list[Any]:
    """The targets' specs, refused in one line where one has no text (a stage output or a histogram)."""
    specs = [parse_target(t)[0] for t in targets]
    for sp in specs:
        if _textless(sp):
            raise ConfigError(f"--method {method} needs the target's text; {sp} is a stage output or "
                              "histogram: pass the in-domain corpus itself")
    return specs


def mixture_row_weights(sizes: Sequence[int], weights: Sequence[float]) -> np.ndarray | None:
    """Per target document (the parts' in order), the weight that gives each part its share of a document-level
    signal as `histograms.mixture` gives it its share of the histogram (each part normalised first:
    `law:0.7 med:0.3` is 70% law's whatever the sample sizes), scaled to sum to the number of documents; a
    part given weight 0 is left out. None for one part: every document alike."""
    if len(sizes) < 2:
        return None
    n = np.asarray(sizes, np.float64)
    share = np.asarray(weights, np.float64) / float(np.sum(weights))
    return np.repeat(np.where(n > 0, share / np.maximum(n, 1), 0.0) * n.sum(), np.asarray(sizes, np.int64))


def mixed_ngram_counts(parts: Sequence[tuple[Any, float]]) -> np.ndarray:
    """The target's hashed n-gram counts: one part's, or the parts' distributions mixed by their weights (as
    the histogram is), scaled to all the parts' total count (the smoothing sees the sample's size)."""
    from ..selectors import ngram_counts

    counts = [ngram_counts(corpus.iter_texts()) for corpus, _ in parts]
    if len(counts) == 1:
        return counts[0]
    share = np.asarray([w for _, w in parts], np.float64)
    share /= share.sum()
    total = float(sum(c.sum() for c in counts))
    return total * sum(s * c / max(float(c.sum()), 1e-12) for s, c in zip(share, counts))


CLASSIFIER_ROWS = 5_000
"""`--within ngram-classifier`: the most generic units the classifier is fitted on (a seeded sample of a
larger pool; the units outside it are scored by the mean of the fold models). The fit is most of what a target
costs beyond `knn`, and more negatives did not buy purity: on the bundled pool a fit on a sample of 2,400
of its 4,800 units put as much of the selection on the target domain as a fit on all of them (94.95% and
94.93%, 8 domains x 3 seeds; BENCHMARKS.md `paper`, 0.7.0), while fitting on 20,000 units made a target
on a 48,000-document pool cost 14.0 s instead of 10.5 s."""


PARALLEL_HASH_UNITS = 50_000
"""The first target on an embedding: when the shards whose n-grams are not kept yet hold at least this
many units (two shards or more), they are hashed in one spawned process per core (each costs ~2 s to
start; hashing costs ~200 us a unit on one core) and kept, before the weights read them. With `--engine
ray` they are Ray tasks whatever their number, spread over the cluster like the stage's other passes."""


def _hash_shard(corpus, corpus_shard, table, windowed: bool, rows: np.ndarray | None = None):
    """One shard's units' (or the given rows') hashed n-gram counts (CSR); also a process task."""
    from ..selectors import ngram_matrix

    rows = np.arange(table.num_rows) if rows is None else rows
    return ngram_matrix(unit_texts(corpus, corpus_shard, table, rows, windowed).to_pylist())


def _hash_missing_in_parallel(inputs: Inputs, folder: Path, execution: Execution, progress: bool) -> None:
    """Hash the shards the cache lacks as Ray tasks (`--engine ray`), or here in `cpu_count()` processes
    (large pools only), and keep them; the driver writes every cache file."""
    from ..hardware import cpu_count
    from .ngram_features import keep, missing

    todo = missing(folder, inputs.names)
    units = sum(len(inputs.tables.column(n, "row")) for n in todo)
    on_ray = execution.engine == "ray"
    if not todo or (not on_ray and (len(todo) < 2 or units < PARALLEL_HASH_UNITS or cpu_count() < 2)):
        return
    tasks = [(n, (Shared("corpus"), inputs.corpus_shards[n], inputs.tables[n], inputs.windowed)) for n in todo]
    with progress_bar(progress, "hashing n-grams", "shard", total=len(todo)) as bar:
        def done(name: str, x) -> None:
            keep(folder, name, x)
            bar.update(1)

        run_tasks(execution if on_ray else LOCAL, _hash_shard, tasks, done, shared={"corpus": inputs.corpus},
                  processes=cpu_count())


def _unit_ngrams(inputs: Inputs, cache: bool, execution: Execution = LOCAL, progress: bool = False):
    """(texts(name), matrix(name, rows=None)): a shard's unit texts, and its units' (or the given rows')
    hashed n-gram counts (CSR), read from the user cache (hashed once per embedding and kept: the shards
    it lacks are hashed first, as Ray tasks with `--engine ray`) or, with `cache` False, hashed now (only
    the rows asked for)."""
    from .ngram_features import features_folder, shard_features

    def texts(name: str) -> list[str]:
        table = inputs.tables[name]
        return unit_texts(inputs.corpus, inputs.corpus_shards[name], table, np.arange(table.num_rows),
                          inputs.windowed).to_pylist()

    if not cache:
        return texts, lambda name, rows=None: _hash_shard(inputs.corpus, inputs.corpus_shards[name],
                                                          inputs.tables[name], inputs.windowed, rows)
    folder = features_folder(inputs.emb.manifest)
    _hash_missing_in_parallel(inputs, folder, execution, progress)

    def matrix(name: str, rows: np.ndarray | None = None):
        x = shard_features(folder, name, len(inputs.tables.column(name, "row")), lambda: texts(name))
        return x if rows is None else x[rows]

    return texts, matrix


def ngram_classifier_unit_log_odds(cfg: ResampleConfig, targets, inputs: Inputs, progress, cache: bool = True,
                                   execution: Execution = LOCAL) -> list[np.ndarray]:
    """`--within ngram-classifier`: per input shard, each unit's log-odds under a logistic regression on
    hashed n-grams, the target's documents against the pool's units (`selectors.ngram_classifier_odds`:
    cross-fitted, so a unit fitted on is scored by the fold model that did not see it; units past
    CLASSIFIER_ROWS, not fitted on, by the fold models' mean)."""
    from ..selectors import ngram_classifier_features, ngram_classifier_odds, ngram_matrix

    sparse = require("scipy.sparse")

    parts = target_text_parts(targets, cfg, "importance --within ngram-classifier")
    texts = [list(c.iter_texts()) for c, _ in parts]
    target = ngram_matrix([t for part in texts for t in part])
    row_w = mixture_row_weights([len(t) for t in texts], [w for _, w in parts])
    _, matrix = _unit_ngrams(inputs, cache, execution, progress)
    names = inputs.names
    sizes = [len(inputs.tables.column(n, "row")) for n in names]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(starts[-1])
    fit = (np.arange(n) if n <= CLASSIFIER_ROWS else
           np.sort(np.random.default_rng([cfg.seed, 23]).choice(n, CLASSIFIER_ROWS, replace=False)))
    bar = progress_bar(progress, "ngram classifier", "shard", total=2 * len(names))
    parts = []
    for name, lo, hi in zip(names, starts[:-1], starts[1:]):
        parts.append(matrix(name, fit[(fit >= lo) & (fit < hi)] - lo))  # without the cache: only these rows hashed
        bar.update(1)
    fitted_odds, models = ngram_classifier_odds(sparse.vstack(parts, format="csr"), target, target_weights=row_w,
                                                 seed=cfg.seed)
    if len(fit) < n:  # the units not fitted on are scored by the fold models' mean: one linear model
        mean_coef = np.mean([m.coef_[0] for m in models], axis=0)
        mean_intercept = float(np.mean([m.intercept_[0] for m in models]))
    out = []
    for name, lo, hi in zip(names, starts[:-1], starts[1:]):
        inside = (fit >= lo) & (fit < hi)
        odds = np.zeros(hi - lo)
        if inside.sum() < hi - lo:  # units not fitted on (a pool past CLASSIFIER_ROWS): the folds' mean,
            # one product with the mean of the (linear) fold models; the shard is read again rather than
            # held since the first loop, so memory stays at one shard's matrix whatever the pool
            odds = ngram_classifier_features(matrix(name)) @ mean_coef + mean_intercept
        odds[fit[inside] - lo] = fitted_odds[inside]
        out.append(odds)
        bar.update(1)
    bar.close()
    return out


def ngram_unit_log_weights(run: StageRun | None, cfg: ResampleConfig, targets, inputs: Inputs, progress,
                           cache: bool = True, execution: Execution = LOCAL) -> list[np.ndarray]:
    """DSIR-style log-weights per unit. `cache`: the generic units' hashed n-grams are read from (or, for
    the first target, written to) the user cache (`ngram_features`), so later targets skip the text;
    else the text is hashed twice here, the generic counts committed per shard in `run` (resumable;
    None: not kept)."""
    from ..selectors import N_FEATURES, ngram_counts, ngram_log_ratio
    from .ngram_features import features_folder, shard_totals

    target_counts = mixed_ngram_counts(target_text_parts(targets, cfg, "ngram"))
    names = inputs.names
    texts, matrix = _unit_ngrams(inputs, cache, execution, progress)  # the second pass reads these
    bar = progress_bar(progress, "ngram weights", "shard", total=2 * len(names))

    if cache:  # the user cache: read, or hashed once and kept for the next target
        folder = features_folder(inputs.emb.manifest)

        def totals(name: str) -> np.ndarray:
            return shard_totals(folder, name, len(inputs.tables.column(name, "row")), lambda: texts(name))
    else:
        def totals(name: str) -> np.ndarray:
            return ngram_counts(texts(name)) if run is None else _committed_counts(run, name, texts)

    generic_counts = np.zeros(N_FEATURES)
    for name in names:
        generic_counts += totals(name)
        bar.update(1)
    log_ratio = ngram_log_ratio(target_counts, generic_counts)
    out = []
    for name in names:
        out.append(np.asarray(matrix(name) @ log_ratio).ravel())
        bar.update(1)
    bar.close()
    return out


def _committed_counts(run: StageRun, name: str, texts) -> np.ndarray:
    """One shard's generic n-gram counts: committed in the run once, read back on a resume."""
    from ..selectors import N_FEATURES, ngram_counts

    key, path = f"ngram-{name}", run.out_dir / "_ngram" / f"{name}.npy"
    counts = _load_counts(path, N_FEATURES) if run.is_done(key) else None  # not fsynced: check it
    if counts is None:
        counts = ngram_counts(texts(name))
        tmp = run.tmp_path(f"_ngram/{name}.npy")
        with open(tmp, "wb") as f:
            np.save(f, counts)
        run.forget(key)
        run.commit_shard(key, {f"_ngram/{name}.npy": tmp}, intermediate=True)
    return counts


def _load_counts(path: Path, n: int) -> np.ndarray | None:
    """A committed n-gram count vector, or None when it is unreadable or damaged (then it is redone)."""
    try:
        counts = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return counts if counts.shape == (n,) and np.isfinite(counts).all() and (counts >= 0).all() else None


def classifier_unit_log_weights(cfg: ResampleConfig, tvec: np.ndarray, emb, names,
                                tweights: np.ndarray | None = None) -> list[np.ndarray]:
    """Log-odds of a logistic regression, target vectors (embedded once, for the histogram too; weighed by
    `tweights`, their parts' mixture weights) against a generic sample, per unit."""
    from ..selectors import classifier_log_weights, fit_classifier, sample_rows

    sizes = [emb.shard_table(n, columns=["row"]).num_rows for n in names]
    rows = sample_rows(sum(sizes), max(10 * len(tvec), 5000), cfg.seed)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    generic = np.concatenate([np.asarray(emb.shard_vectors(n)[rows[(rows >= lo) & (rows < hi)] - lo], np.float32)
                              for n, lo, hi in zip(names, starts[:-1], starts[1:])])
    clf = fit_classifier(tvec, generic, seed=cfg.seed, target_weights=tweights)
    return [classifier_log_weights(clf, np.asarray(emb.shard_vectors(n), np.float32)) for n in names]

"""What a selection and a target put on each leaf: target mass, weight, rows selected, repeats.

A selection's `histograms.json` gives the target histogram and the weights the resampler used; its
data files give the rows and repeats per cluster (only the `cluster` and `repeat` columns are read).
A target alone (a sample, its `embed` output or a saved histogram) gives the target mass, and the
weights `impsamp resample` would use with its defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import StageError
from ..io.discovery import short_name


@dataclass(frozen=True)
class Masses:
    """Per leaf (None where unknown): the target's share, the weight, selected rows and repeated rows."""

    target: np.ndarray | None = None
    weights: np.ndarray | None = None
    rows: np.ndarray | None = None
    repeats: np.ndarray | None = None
    about: dict[str, Any] = field(default_factory=dict)
    """What the header says: the selection's and the target's description."""


def load_selection(selection, clusters):
    """The `Selection` at `selection`, checked to be drawn from `clusters`.

    Raises:
        StageError: not a complete resample output, or made from another clustering.
    """
    from ..resampling import Selection

    sel = selection if isinstance(selection, Selection) else Selection.load(selection)
    recorded = sel.manifest.inputs.get("clusters", {})
    if recorded.get("fingerprint") != clusters.manifest.fingerprint:
        raise StageError(f"{sel.path} was not drawn from the clustering {clusters.path} (its manifest "
                         f"records {recorded.get('path')}); pass the clustering it was resampled from")
    return sel


def selection_masses(sel, n_leaves: int) -> Masses:
    """Target, weights, rows and repeats per leaf of a finished selection."""
    hist = json.loads((sel.path / "histograms.json").read_text())
    rows, repeats = selection_counts(sel, n_leaves)
    s = sel.stats
    targets = s.get("targets") or []
    about = {"name": sel.path.name, "method": s.get("method"), "scheme": s.get("scheme"),
             "weighting": s.get("weighting"), "rows": s.get("rows"), "tokens": s.get("tokens"),
             "unique_documents": s.get("unique_documents"), "repetition_rate": s.get("repetition_rate"),
             "kl_target_generic": s.get("kl_target_generic") if targets else None,
             "kl_target_selected": s.get("kl_target_selected") if targets else None}
    target, described = None, {"selection": about}
    counts = np.asarray(hist["target"], dtype=np.float64)
    if targets and counts.sum() > 0:  # a uniform selection has none: its histograms.json repeats the generic
        target = counts / counts.sum()
        described["target"] = {"source": ", ".join(short_name(t["target"]) for t in targets),
                               "documents": float(sum(t.get("documents", 0) for t in targets))}
    # only `importance` weighs clusters: the others weigh documents (ngram, classifier) or nothing (uniform), and
    # the page must not colour clusters by weights the draw never used
    weights = np.asarray(hist["weights"], dtype=np.float64) if s.get("method") == "importance" else None
    return Masses(target, weights, rows, repeats, described)


def selection_counts(sel, n_leaves: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, repeated rows) per leaf, read from the selection's data files a batch at a time."""
    rows = np.zeros(n_leaves, dtype=np.int64)
    repeats = np.zeros(n_leaves, dtype=np.int64)
    for cluster, repeat in _cluster_batches(sel):
        rows += np.bincount(cluster, minlength=n_leaves)[:n_leaves]
        repeats += np.bincount(cluster[repeat > 0], minlength=n_leaves)[:n_leaves]
    return rows, repeats


def _cluster_batches(sel):
    import pyarrow as pa

    fmt = sel.manifest.config.get("format", "arrow")
    for path in sel.data_files:
        if fmt == "arrow":
            with pa.memory_map(str(path)) as src:
                for b in pa.ipc.open_stream(src):
                    yield _ints(b.column("cluster")), _ints(b.column("repeat"))
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetFile(path) as f:
                for b in f.iter_batches(columns=["cluster", "repeat"]):
                    yield _ints(b.column("cluster")), _ints(b.column("repeat"))
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            recs = [json.loads(line) for line in lines if line.strip()]
            yield (np.asarray([r["cluster"] for r in recs], dtype=np.int64),
                   np.asarray([r["repeat"] for r in recs], dtype=np.int64))


def _ints(col) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)


def target_masses(target, clusters, masses: Masses | None = None, *, text_field: str = "text") -> Masses:
    """`masses` with the target's share per leaf from `target`; without a selection, also the weights
    `impsamp resample` would use by default (the density ratio, no smoothing); a selection keeps its own (none
    for a method that weighs no clusters).

    Args:
        target: a corpus (files, folder, glob), its `embed` output, a saved histogram, or a `Histogram`.
    """
    from ..histograms import Histogram, generic_histogram, histogram, kl
    from ..resampling import ResampleConfig
    from ..weighting import compute_weights

    hist = target if isinstance(target, Histogram) else histogram(target, clusters, text_field=text_field)
    about = {"source": hist.source and ", ".join(short_name(s.strip()) for s in hist.source.split(",")),
             "documents": hist.total}
    masses = masses or Masses()
    weights, described = masses.weights, dict(masses.about)
    if masses.rows is not None and masses.rows.sum() > 0:  # a selection, measured against this target
        drawn_for = (described.get("target") or {}).get("source")
        if drawn_for and drawn_for != about["source"]:
            about["selection_drawn_for"] = drawn_for  # its weights are those it was drawn with
        described["selection"] = {**described["selection"],
                                  "kl_target_generic": kl(hist.probs(), generic_histogram(clusters).probs()),
                                  "kl_target_selected": kl(hist.probs(), masses.rows / masses.rows.sum())}
    if weights is None and masses.rows is None:  # no selection: what `resample` would use by default
        d = ResampleConfig(docs=1)
        weights, _ = compute_weights("ratio", hist, generic_histogram(clusters), smoothing=d.smoothing,
                                     temperature=d.temperature, cap=d.cap, backoff=d.backoff)
    return replace(masses, target=hist.probs(), weights=weights, about={**described, "target": about})

"""Cluster histograms: how a corpus spreads over the clusters of one clustering, and distances.

    hist = impsamp.histogram("law_sample.jsonl", "runs/clusters")   # embeds + assigns the sample
    hist.save("runs/law.hist.json")                                  # reuse as --target later

A histogram counts documents (embedding units) per leaf cluster and knows the cluster tree, so a
sparse leaf can back off to its parent's estimate.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, StageError

if TYPE_CHECKING:
    from .clustering import Clusters
    from .embedding import Embeddings

logger = logging.getLogger(__name__)

HIST_FORMAT = "impsamp-histogram/1"


@dataclass(frozen=True, eq=False)
class Histogram:
    """Documents per leaf cluster (float, so mixtures and smoothing stay exact).

    `ancestors[j]` maps each leaf to its node at level j of the tree (the last level is the leaf
    itself); a flat clustering has one level. Two are equal when their counts, tree, clustering and
    source are (`==`, `in`, dict keys and sets work; the numpy fields are compared by value).
    """

    counts: np.ndarray
    ancestors: tuple[np.ndarray, ...]
    clusters_fingerprint: str
    source: str = ""
    tokens: np.ndarray | None = field(default=None, compare=False)
    centroids_sha256: str = field(default="", compare=False)
    """The clustering's centroids file (`centroids_key`): a clustering of other inputs or folders whose centroids
    are these bytes assigns as this one, so a saved histogram is read over it too."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self.clusters_fingerprint == other.clusters_fingerprint and self.source == other.source
                and np.array_equal(self.counts, other.counts) and len(self.ancestors) == len(other.ancestors)
                and all(np.array_equal(a, b) for a, b in zip(self.ancestors, other.ancestors)))

    def __hash__(self) -> int:
        # + 0.0: -0.0 and 0.0 are equal counts, and must hash alike
        return hash((self.clusters_fingerprint, self.source, (np.asarray(self.counts, np.float64) + 0.0).tobytes()))

    @property
    def k(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def probs(self, smoothing: float = 0.0) -> np.ndarray:
        """p(c) with `smoothing` pseudo-documents added to every leaf (Laplace)."""
        c = self.counts + smoothing
        s = c.sum()
        if s <= 0:
            raise ConfigError(f"histogram of {self.source or 'the target'} is empty: no documents were assigned")
        return c / s

    def entropy(self) -> float:
        p = self.probs()
        p = p[p > 0]
        return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: one cluster's entropy is 0, not -0.0

    def top(self, n: int = 10) -> list[tuple[int, float]]:
        p = self.probs()
        order = np.argsort(-p, kind="stable")[:n]
        return [(int(c), float(p[c])) for c in order]

    def save(self, path: str | Path) -> Path:
        from .manifest import atomic_write_json

        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; give the histogram a file path (e.g. {path / 'target.json'})")
        if path.suffix != ".json":  # `--target` knows a histogram by it (`is_histogram_file`)
            raise ConfigError(f"{path}: give a path ending in .json (a --target is read as a histogram only so)")
        path.parent.mkdir(parents=True, exist_ok=True)  # as every stage's --out folder is made
        atomic_write_json(path, {"format": HIST_FORMAT, "clusters_fingerprint": self.clusters_fingerprint,
                                 "source": self.source, "counts": self.counts.tolist(),
                                 "ancestors": [a.tolist() for a in self.ancestors],
                                 **({"centroids_sha256": self.centroids_sha256} if self.centroids_sha256 else {})})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Histogram:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            if d.get("format") != HIST_FORMAT:
                raise ValueError(f"format is {d.get('format')!r}, expected {HIST_FORMAT!r}")
            counts = np.asarray(d["counts"], dtype=np.float64)
            if counts.ndim != 1 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
                raise ValueError("its counts must be one list of finite numbers >= 0")
            ancestors = tuple(np.asarray(a, dtype=np.int64) for a in d["ancestors"])
            if any(a.shape != counts.shape for a in ancestors):
                raise ValueError(f"it holds {len(counts)} counts for {len(ancestors[0]) if ancestors else 0} "
                                 "clusters")
            return cls(counts, ancestors, d["clusters_fingerprint"], d.get("source", str(path)),
                       centroids_sha256=str(d.get("centroids_sha256", "")))  # (none before 0.7.20)
        except (ValueError, KeyError, OSError, TypeError) as e:
            raise ConfigError(f"{path}: not a saved impsamp histogram ({e})") from None


def is_histogram_file(path: str | Path) -> bool:
    """True for a file written by `Histogram.save` (a .json file whose format says so)."""
    p = Path(path)
    if p.suffix != ".json" or not p.is_file() or p.stat().st_size > 256 << 20:
        return False
    try:
        d = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(d, dict) and d.get("format") == HIST_FORMAT


def leaf_ancestors(clusters: Clusters) -> tuple[np.ndarray, ...]:
    """For each level, the node id of every leaf (from the clustering's parent maps)."""
    n_levels = clusters.n_levels
    anc = [np.arange(clusters.n_leaves, dtype=np.int64)]
    for j in range(n_levels - 1, 0, -1):
        anc.insert(0, np.asarray(clusters.parents[j], dtype=np.int64)[anc[0]])
    return tuple(anc)


def from_assignments(leaf_assign: np.ndarray, clusters: Clusters, *, source: str = "",
                     tokens: np.ndarray | None = None) -> Histogram:
    """Histogram of leaf ids (n,) over `clusters`."""
    counts = np.bincount(np.asarray(leaf_assign, dtype=np.int64), minlength=clusters.n_leaves).astype(np.float64)
    tok = None
    if tokens is not None:
        tok = np.bincount(np.asarray(leaf_assign, dtype=np.int64), weights=tokens, minlength=clusters.n_leaves)
    return Histogram(counts, leaf_ancestors(clusters), clusters.manifest.fingerprint, source, tok,
                     centroids_key(clusters))


def centroids_key(clusters: Clusters) -> str:
    """The sha256 its manifest records of a clustering's centroids file ("" if none): what assigns a vector."""
    return next((o.sha256 for o in clusters.manifest.outputs if o.path == "centroids.npy"), "")


def made_over(hist: Histogram, clusters: Clusters) -> bool:
    """Whether a saved histogram counts documents over `clusters`: made over it, or over a clustering whose
    centroids file is the same bytes with the same tree (the same commands in another folder; the fingerprint
    holds the folders)."""
    if hist.k != clusters.n_leaves:
        return False
    if hist.clusters_fingerprint == clusters.manifest.fingerprint:
        return True
    tree = leaf_ancestors(clusters)
    return (hist.centroids_sha256 != "" and hist.centroids_sha256 == centroids_key(clusters)
            and len(tree) == len(hist.ancestors) and all(map(np.array_equal, tree, hist.ancestors)))


def generic_histogram(clusters: Clusters | str | Path) -> Histogram:
    """The generic corpus's histogram, from the counts the `cluster` stage recorded (`clusters`: its output or
    path)."""
    from .clustering import Clusters

    clusters = clusters if isinstance(clusters, Clusters) else Clusters.load(clusters)
    c = clusters.counts()
    return Histogram(np.asarray(c["documents"], dtype=np.float64), leaf_ancestors(clusters),
                     clusters.manifest.fingerprint, "generic", np.asarray(c["tokens"], dtype=np.float64))


def mixture(parts: Sequence[tuple[Histogram, float]]) -> Histogram:
    """Mixture of normalised histograms with the given weights (CRISP's multi-target case).

    Each part is normalised first, so `law:0.7 med:0.3` means 70% of the target mass is law's,
    whatever the sample sizes. The mixture's total is the parts' total (for smoothing scale).
    """
    if not parts:
        raise ConfigError("no target given; pass at least one --target")
    weights = np.asarray([w for _, w in parts], dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ConfigError(f"target mixture weights (--target FILE:WEIGHT) must be finite, >= 0 and not all 0, "
                          f"got {weights.tolist()}")
    fps = {h.clusters_fingerprint for h, _ in parts}
    if len(fps) > 1:
        raise StageError("the target histograms were made over different clusterings; "
                         "make them all against the same `impsamp cluster` output")
    if len(parts) == 1:
        return parts[0][0]
    weights = weights / weights.sum()
    total = sum(h.total for h, _ in parts)
    counts = total * sum(w * h.probs() for (h, _), w in zip(parts, weights))
    first = parts[0][0]
    return Histogram(counts, first.ancestors, first.clusters_fingerprint,
                     " + ".join(f"{w:.2f}*{h.source}" for (h, _), w in zip(parts, weights)))


def kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    """KL(p || q) in nats over clusters; q is floored at `eps` where p has mass and q has none."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = p > 0
    return max(0.0, float(np.sum(p[m] * (np.log(p[m]) - np.log(np.maximum(q[m], eps))))))  # not -0.000 for p = q


def histogram(target: str | Path | Sequence[str | Path], clusters: Clusters | str | Path, *,
              embeddings: Embeddings | str | Path | None = None, text_field: str = "text",
              id_field: str | None = None) -> Histogram:
    """The histogram of a target over a clustering.

    Args:
        target: a corpus (files, folder, glob), an `impsamp embed` directory of the target, or a
            saved histogram (.json).
        clusters: an `impsamp cluster` output (or its path).
        embeddings: the generic embeddings the clustering was fitted on (default: recorded in the
            clustering); a corpus target is embedded with exactly their model and settings.
        text_field, id_field: the fields of a corpus target's text and document id.

    Returns:
        A `Histogram`: documents per leaf cluster (`.counts`, `.probs()`, `.top(n)`, `.save(path)`).

    Raises:
        StageError: the target was embedded with another model or made over another clustering, or the
            embeddings given are not the clustering's.
    """
    from .clustering import Clusters
    from .embedding import Embeddings
    from .io import as_specs
    from .io.discovery import absolute_glob

    clusters = clusters if isinstance(clusters, Clusters) else Clusters.load(clusters)
    target = getattr(target, "path", target)  # the target's `Embeddings` handle: its folder
    spec = target if isinstance(target, (str, Path)) else None
    if spec is not None and is_histogram_file(spec):
        hist = Histogram.load(spec)
        if not made_over(hist, clusters):
            raise StageError(f"{spec} is a histogram over another clustering (not {clusters.path}); "
                             "make it again against this clustering (`impsamp histogram`, or `impsamp.histogram`)")
        return replace(hist, clusters_fingerprint=clusters.manifest.fingerprint)  # read over this clustering
    generic = embeddings if isinstance(embeddings, Embeddings) else (
        Embeddings.load(embeddings) if embeddings is not None else clusters.embeddings())
    clusters.check_made_from(generic)
    if spec is not None and is_embed_output(spec):
        vectors = stored_target_vectors(spec, generic)
        return from_assignments(clusters.assign(vectors)[:, -1], clusters, source=absolute_glob(spec))
    vectors, _table = embed_like(target, generic, text_field=text_field, id_field=id_field)
    return from_assignments(clusters.assign(vectors)[:, -1], clusters,  # the files' absolute paths: not as typed
                            source=", ".join(absolute_glob(t) for t in as_specs(target)))


def target_counts(clu: Clusters, target, text_field: str = "text") -> tuple[list[str], np.ndarray, int, int]:
    """A target's documents per leaf cluster of `clu`: (target corpus specs, leaf counts, tokens the
    encoder read, encoder parameters). `target`: files, folder, glob, or an `embed` output of them
    (checked to come from the same model as the clustering's embeddings); `text_field` names a corpus's
    text field."""
    from .costs import encoder_params
    from .embedding import Embeddings

    specs = [str(target)] if isinstance(target, (str, Path)) else [str(t) for t in target]
    if len(specs) == 1 and is_embed_output(specs[0]):
        emb = Embeddings.load(specs[0])          # a target embedded before: checked to be the same model
        return [f.path for f in emb.corpus().files], histogram(specs[0], clu).counts, 0, 0
    generic = clu.embeddings()
    vectors, table = embed_like(specs, generic, text_field=text_field)
    counts = np.bincount(clu.assign(vectors)[:, -1], minlength=clu.n_leaves).astype(np.float64)
    return specs, counts, int(np.asarray(table.column("tokens")).sum()), encoder_params(generic.model_info.get("name", ""))


def is_embed_output(path: str | Path) -> bool:
    """A complete `impsamp embed` output (a target embedded before). Any other folder is read as a corpus: one
    holding another tool's manifest.json, or a `resample` output (a corpus of its selected text); another
    stage's output is refused there, by name."""
    from .outdir import complete_manifest

    return Path(path).is_dir() and (complete_manifest(Path(path)) or {}).get("stage") == "embed"


def stored_target_vectors(spec: str | Path, generic: Embeddings) -> np.ndarray:
    """The vectors of a target's `impsamp embed` output (float32, in unit order), checked to come from the
    generic embeddings' model and settings (else StageError naming `spec`)."""
    from .embedding import Embeddings

    emb = Embeddings.load(spec)
    check_same_model(emb, generic, what=str(spec))
    return emb.vectors()


def embed_like(corpus, generic: Embeddings, *, text_field: str = "text", id_field: str | None = None):
    """Embed a small corpus (e.g. a target sample) exactly as `generic` was embedded.

    Returns (vectors (n_units, d) float32, unit table) from `impsamp.embedding.embed_texts`.
    """
    from .embedding import embed_texts
    from .io import Corpus, as_specs, data_text_field, open_corpus

    if not isinstance(corpus, Corpus):  # a selection given as the target: read from its own `text`
        specs = as_specs(corpus)  # (a generator read once)
        corpus = open_corpus(specs, text_field=data_text_field(specs, text_field, "--target"), id_field=id_field)
    texts = list(corpus.iter_texts())
    if not texts:
        raise ConfigError(f"the target {', '.join(f.path for f in corpus.files)} has no documents")
    return embed_texts(texts, generic.embedder())


def check_same_model(emb: Embeddings, generic: Embeddings, *, what: str) -> None:
    """Refuse a target embedded with another model or other settings than the generic corpus."""
    a, b = emb.model_info, generic.model_info
    keys = ("name", "weights_sha256", "max_tokens", "windows")
    diff = [k for k in keys if a.get(k) != b.get(k)]
    if diff:
        raise StageError(f"{what} was embedded with {', '.join(f'{k}={a.get(k)!r}' for k in diff)} but the generic "
                         f"corpus with {', '.join(f'{k}={b.get(k)!r}' for k in diff)}; embed the target "
                         "with the same model and settings (or pass the raw corpus as --target)")


def describe(hist: Histogram) -> dict[str, Any]:
    """Diagnostics of a target histogram the seed paper found predictive."""
    p = hist.probs()
    # (documents rounded: a mixture's sum of shares printed 249.99999999999997 for 250)
    return {"documents": round(hist.total, 6), "entropy": hist.entropy(), "top_cluster_mass": float(p.max()),
            "empty_clusters": int((hist.counts == 0).sum()), "clusters": hist.k}

"""Resample the generic corpus toward a target: plan per-cluster draws, then write shuffled shards.

    impsamp resample runs/emb runs/clusters --target law.jsonl --out runs/law-sel --tokens 50000000

Three schemes (DESIGN.md):
- `match` (default, the seed paper): the selection's cluster histogram matches the weighted
  generic histogram (= the target's with the density ratio). Inside a cluster, documents are taken
  as evenly as possible: each is repeated floor(m/n) times and (m mod n) of them once more, so a
  repeat only happens once every document of the cluster has been used.
- `crisp`: draw a cluster from the weighted histogram, then a document uniformly inside it, i.i.d.
- `topk`: without replacement, Gumbel top-k on log w(c(x)) (DSIR's form); no repeats.

Everything runs in data-fixed shards (the embedding shards) with a random stream per shard, so the
bytes do not depend on the number of workers. Writing is a bounded-memory global shuffle: pass 1
routes every selected row of an input shard to a random output shard (one Arrow record batch per
output shard in a spill file); pass 2 gathers each output shard's rows from the spill files,
shuffles them and writes `data-XXXXX-of-NNNNN.arrow` (the `datasets.save_to_disk` layout).
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import ConfigError, StageError
from .histograms import Histogram, describe, generic_histogram, histogram, kl, mixture
from .manifest import Manifest, StageRun, atomic_write_bytes, read_manifest, tmp_name
from .scale import LOCAL, Execution, Shared, commit_once, run_ray
from .weighting import compute_weights

logger = logging.getLogger(__name__)

SCHEMES = ("match", "crisp", "topk")
METHODS = ("importance", "uniform", "ngram", "classifier")
FORMATS = ("arrow", "parquet", "jsonl")
SELECTION_SCHEMA = pa.schema([
    ("text", pa.string()), ("id", pa.string()), ("source_file", pa.string()), ("source_row", pa.int64()),
    ("doc_index", pa.int64()), ("window", pa.int32()), ("cluster", pa.int32()), ("weight", pa.float32()),
    ("repeat", pa.int32()),
])
_FEATURES = {f.name: {"dtype": {"string": "string", "int64": "int64", "int32": "int32", "float": "float32"}[
    str(f.type)], "_type": "Value"} for f in SELECTION_SCHEMA}


@dataclass(frozen=True)
class ResampleConfig:
    """How to draw a selection from the clustered generic corpus."""

    tokens: int | None = None
    """Budget in tokens (of the embedding model's tokenizer, counted at embed time)."""
    docs: int | None = None
    """Budget in documents (embedding units: windows with `embed --windows`)."""
    method: str = "importance"
    """`importance` (clustered importance sampling), `uniform` (random sample: the paper's baseline),
    `ngram` (DSIR-style hashed n-grams) or `classifier` (logistic regression on the embeddings);
    the last three draw without replacement (Gumbel top-k)."""
    scheme: str = "match"
    """`match`, `crisp` or `topk` (see the module docstring)."""
    weighting: str = "ratio"
    """`ratio` (p_target / p_generic), `uniform`, or `package.module:function`."""
    smoothing: float = 0.0
    """Laplace pseudo-documents added to every target cluster. 0 by default: on the bundled corpus
    any smoothing spread selection over off-target clusters (BENCHMARKS.md, smoothing sweep)."""
    temperature: float = 1.0
    """Exponent on the density ratio: < 1 flattens toward uniform."""
    cap: float | None = None
    """Largest cluster weight, as a multiple of the mean weight of a generic document."""
    backoff: float = 0.0
    """Hierarchy: pseudo-documents pulling a sparse leaf's target share toward its parent's."""
    max_repeat: int | None = None
    """`match`: most times one document may be drawn; the surplus moves to other clusters."""
    seed: int = 0
    format: str = "arrow"
    """`arrow` (datasets.save_to_disk layout), `parquet` or `jsonl`."""
    rows_per_shard: int = 100_000
    """Rows per output shard."""
    text_field: str = "text"
    """Text field of target corpora."""
    id_field: str | None = None

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.docs is None):
            raise ConfigError("give exactly one budget: --tokens N or --docs N")
        for name in ("tokens", "docs", "rows_per_shard", "max_repeat"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        for name in ("smoothing", "backoff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0 or (self.cap is not None and self.cap <= 0):
            raise ConfigError("--temperature and --cap must be > 0")
        for name, allowed in (("scheme", SCHEMES), ("method", METHODS), ("format", FORMATS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


# ----------------------------------------------------------------------------- the selection handle


@dataclass(frozen=True)
class Selection:
    """A finished `resample` directory."""

    path: Path
    manifest: Manifest

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        path = Path(path)
        return cls(path, read_manifest(path, expect_stage="resample"))

    @property
    def data_files(self) -> list[Path]:
        return [self.path / o.path for o in self.manifest.outputs if o.path.startswith("data-")]

    @property
    def stats(self) -> dict[str, Any]:
        return self.manifest.stats

    def to_table(self) -> pa.Table:
        """All rows (small selections only: this loads everything)."""
        fmt = self.manifest.config["format"]
        if fmt == "arrow":
            tables = []
            for f in self.data_files:
                with pa.memory_map(str(f)) as src:
                    tables.append(pa.ipc.open_stream(src).read_all())
            return pa.concat_tables(tables)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pa.concat_tables([pq.read_table(f) for f in self.data_files])
        rows = [json.loads(line) for f in self.data_files for line in f.read_text(encoding="utf-8").splitlines()
                if line.strip()]
        return pa.Table.from_pylist(rows, schema=SELECTION_SCHEMA)


# ----------------------------------------------------------------------------- planning


def _largest_remainder(expected: np.ndarray, total: int) -> np.ndarray:
    """Integers summing to `total`, each floor or ceil of `expected` (ties to the lower cluster id)."""
    base = np.floor(expected).astype(np.int64)
    short = int(total - base.sum())
    if short > 0:
        frac = expected - base
        order = np.lexsort((np.arange(len(frac)), -frac))
        base[order[:short]] += 1
    return base


def _cap_draws(q: np.ndarray, n_total: int, limit: np.ndarray) -> np.ndarray:
    """Expected draws per cluster, proportional to q, never above `limit` (water-filling)."""
    expected = np.zeros_like(q)
    free = q > 0
    remaining = float(n_total)
    while remaining > 1e-9 and free.any():
        share = remaining * q[free] / q[free].sum()
        room = limit[free] - expected[free]
        add = np.minimum(share, room)
        expected[free] += add
        remaining -= add.sum()
        free &= expected < limit - 1e-9
    return expected


@dataclass
class Plan:
    """How many draws each (input shard, cluster) gets, and the numbers behind them."""

    weights: np.ndarray       # (k,) w(c)
    draws: np.ndarray         # (k,) m_c: selected units per cluster (topk: expected)
    shard_counts: np.ndarray  # (S, k) generic units per shard and cluster
    shard_draws: np.ndarray | None   # (S, k) draws per shard and cluster (match, crisp)
    topk_threshold: float | None = None
    doc_log_w: list[np.ndarray] | None = None  # per shard, per unit (topk)


def _shard_rng(seed: int, shard: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, shard, purpose])


_KEYS, _DRAWS, _ROUTE, _SHUFFLE = 1, 2, 3, 4


def _plan(cfg: ResampleConfig, weights: np.ndarray, generic: Histogram, shard_leaves: list[np.ndarray],
          shard_tokens: list[np.ndarray], doc_log_w: list[np.ndarray] | None = None) -> Plan:
    """Draws per shard and cluster (match, crisp), or the top-k key threshold (topk).

    `doc_log_w` gives document-level log-weights (ngram, classifier); by default a unit's
    log-weight is that of its cluster.
    """
    k = len(weights)
    if cfg.scheme == "topk" or doc_log_w is not None:
        shard_counts = np.stack([np.bincount(a, minlength=k) for a in shard_leaves]).astype(np.int64)
        if doc_log_w is None:
            with np.errstate(divide="ignore"):
                log_w = np.log(weights)
            doc_log_w = [log_w[a] for a in shard_leaves]
        return _plan_topk(cfg, weights, doc_log_w, shard_leaves, shard_tokens, shard_counts)
    # one pass over the shards (each read once): units and tokens per (shard, cluster)
    counts, tok_c = [], np.zeros(k)
    for a, t in zip(shard_leaves, shard_tokens):
        counts.append(np.bincount(a, minlength=k))
        tok_c += np.bincount(a, weights=t, minlength=k)
    shard_counts = np.stack(counts).astype(np.int64)
    n_c = shard_counts.sum(axis=0)
    mean_tok = np.where(n_c > 0, tok_c / np.maximum(n_c, 1), 0.0)
    q = weights * n_c
    q = q / q.sum()
    # units to draw: a doc budget directly; a token budget through each cluster's mean length
    n_units = cfg.docs if cfg.docs is not None else cfg.tokens / max(float((q * mean_tok).sum()), 1e-12)
    rng = np.random.default_rng([cfg.seed, _DRAWS])
    if cfg.scheme == "match":
        limit = np.where(q > 0, n_c * (cfg.max_repeat or np.inf), 0.0)
        if cfg.max_repeat is not None and limit.sum() < n_units:
            most = int(limit.sum()) if cfg.docs is not None else int((limit * mean_tok).sum())
            raise ConfigError(f"budget impossible with --max-repeat {cfg.max_repeat}: at most {most:,} "
                              f"{'documents' if cfg.docs is not None else 'tokens'} can be drawn; "
                              "lower the budget or raise --max-repeat")
        draws = _largest_remainder(_cap_draws(q, n_units, limit), int(round(n_units)))
        extra = draws % np.maximum(n_c, 1)
        shard_draws = shard_counts * (draws // np.maximum(n_c, 1))
        for c in np.flatnonzero(extra):
            shard_draws[:, c] += rng.multivariate_hypergeometric(shard_counts[:, c], int(extra[c]))
    else:  # crisp: i.i.d. cluster draws, then uniform documents inside the cluster
        draws = rng.multinomial(int(round(n_units)), q)
        shard_draws = np.zeros_like(shard_counts)
        for c in np.flatnonzero(draws):
            shard_draws[:, c] = rng.multinomial(int(draws[c]), shard_counts[:, c] / n_c[c])
    return Plan(weights, draws.astype(np.int64), shard_counts, shard_draws)


def _topk_keys(cfg: ResampleConfig, log_w: np.ndarray, shard: int) -> np.ndarray:
    """Gumbel keys: the top-n keys are a draw of n units without replacement, P ~ exp(log_w)."""
    keys = log_w + _shard_rng(cfg.seed, shard, _KEYS).gumbel(size=len(log_w))
    return np.where(np.isfinite(log_w), keys, -np.inf)


def _plan_topk(cfg: ResampleConfig, weights: np.ndarray, doc_log_w: list[np.ndarray],
               shard_leaves: list[np.ndarray], shard_tokens: list[np.ndarray], shard_counts: np.ndarray) -> Plan:
    eligible = [np.isfinite(lw) for lw in doc_log_w]
    available = int(sum(e.sum() for e in eligible))
    available_tokens = float(sum(t[e].sum() for t, e in zip(shard_tokens, eligible)))
    if cfg.docs is not None and cfg.docs > available:
        raise ConfigError(f"budget impossible without replacement: --docs {cfg.docs:,} but only "
                          f"{available:,} documents have a non-zero weight; lower --docs or use --scheme match")
    if cfg.tokens is not None and cfg.tokens > available_tokens:
        raise ConfigError(f"budget impossible without replacement: --tokens {cfg.tokens:,} but only "
                          f"{int(available_tokens):,} tokens have a non-zero weight; lower --tokens or "
                          "use --scheme match")
    # A running top set (O(selected) memory): keys and token counts of the best candidates so far.
    best_k = np.empty(0)
    best_t = np.empty(0)
    for s, (lw, toks) in enumerate(zip(doc_log_w, shard_tokens)):
        best_k = np.concatenate([best_k, _topk_keys(cfg, lw, s)])
        best_t = np.concatenate([best_t, toks.astype(np.float64)])
        order = np.argsort(-best_k, kind="stable")
        if cfg.docs is not None:
            keep = order[:cfg.docs]
        else:
            cum = np.cumsum(best_t[order])
            keep = order[:int(np.searchsorted(cum, cfg.tokens)) + 1]
        best_k, best_t = best_k[keep], best_t[keep]
    threshold = float(best_k.min())
    draws = np.zeros(len(weights), dtype=np.int64)
    for s, (lw, leaves) in enumerate(zip(doc_log_w, shard_leaves)):
        draws += np.bincount(leaves[_topk_keys(cfg, lw, s) >= threshold], minlength=len(weights))
    return Plan(weights, draws, shard_counts, None, threshold, doc_log_w)


def _unit_repeats(cfg: ResampleConfig, plan: Plan, shard: int, leaves: np.ndarray) -> np.ndarray:
    """How many times each unit of one input shard is selected."""
    if plan.topk_threshold is not None:
        return (_topk_keys(cfg, plan.doc_log_w[shard], shard) >= plan.topk_threshold).astype(np.int64)
    rng = _shard_rng(cfg.seed, shard, _DRAWS)
    counts = plan.shard_counts[shard]
    draws = plan.shard_draws[shard]
    reps = np.zeros(len(leaves), dtype=np.int64)
    order = np.argsort(leaves, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for c in np.flatnonzero(draws):
        members = order[bounds[c]:bounds[c + 1]]
        if cfg.scheme == "match":
            base, extra = divmod(int(draws[c]), len(members))
            reps[members] = base
            if extra:
                reps[rng.choice(members, size=extra, replace=False)] += 1
        else:
            reps[members] = rng.multinomial(int(draws[c]), np.full(len(members), 1.0 / len(members)))
    return reps


# ----------------------------------------------------------------------------- writing


def _unit_texts(corpus, corpus_shard, table: pa.Table, units: np.ndarray, windowed: bool) -> pa.Array:
    """Text of the given units (row numbers of one shard's embedding table), read from the corpus.

    A window is its own training unit; otherwise the whole document is (even when the embedding
    model only read its beginning). Columnar corpora are read with Arrow `take` on the file rows.
    """
    if len(units) == 0:
        return pa.array([], pa.string())
    texts = corpus.take_rows(corpus_shard, table.column("row").to_numpy()[units])
    if not windowed:
        return texts
    starts = table.column("char_start").to_numpy()[units]
    ends = table.column("char_end").to_numpy()[units]
    return pa.array([t[s:e] for t, s, e in zip(texts.to_pylist(), starts, ends)], pa.string())


def _selected_rows(corpus, corpus_shard, table: pa.Table, reps: np.ndarray, leaves: np.ndarray,
                   unit_weights: np.ndarray, windowed: bool) -> pa.Table:
    """The selected units of one input shard, each repeated as planned, with their text."""
    sel = np.flatnonzero(reps)
    if len(sel) == 0:
        return SELECTION_SCHEMA.empty_table()
    unit_text = _unit_texts(corpus, corpus_shard, table, sel, windowed)
    r = reps[sel]
    rep_of = np.repeat(np.arange(len(sel)), r)
    repeat_idx = np.arange(len(rep_of)) - np.repeat(np.cumsum(r) - r, r)
    rows = sel[rep_of]
    paths = pa.array([f.path for f in corpus.files], pa.string())
    cols = {
        "text": unit_text if len(rep_of) == len(sel) else unit_text.take(pa.array(rep_of)),
        "id": table.column("id").take(pa.array(rows)).cast(pa.string()),
        "source_file": paths.take(pa.array(table.column("file").to_numpy()[rows])),
        "source_row": pa.array(table.column("row").to_numpy()[rows].astype(np.int64)),
        "doc_index": pa.array(table.column("doc_index").to_numpy()[rows].astype(np.int64)),
        "window": pa.array(table.column("window").to_numpy()[rows].astype(np.int32)),
        "cluster": pa.array(leaves[rows].astype(np.int32)),
        "weight": pa.array(unit_weights[rows].astype(np.float32)),
        "repeat": pa.array(repeat_idx.astype(np.int32)),
    }
    return pa.table(cols, schema=SELECTION_SCHEMA)


def _write_spill(path: Path, rows: pa.Table, buckets: np.ndarray, n_buckets: int) -> None:
    """One record batch per output shard, in output-shard order (an IPC file: random access)."""
    order = np.argsort(buckets, kind="stable")
    rows = rows.take(pa.array(order))
    bounds = np.searchsorted(buckets[order], np.arange(n_buckets + 1))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SELECTION_SCHEMA) as w:
        for b in range(n_buckets):
            part = rows.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b]))
            w.write_batch(part.combine_chunks().to_batches()[0] if part.num_rows else
                          pa.record_batch([pa.array([], f.type) for f in SELECTION_SCHEMA], schema=SELECTION_SCHEMA))


def _spill_ok(path: Path, n_buckets: int, rows: int) -> bool:
    """Whether a committed spill file is whole: readable, one valid batch per output shard, `rows` rows."""
    try:
        with pa.memory_map(str(path)) as src:
            reader = pa.ipc.open_file(src)
            if reader.num_record_batches != n_buckets:
                return False
            total = 0
            for i in range(n_buckets):
                batch = reader.get_batch(i)
                batch.validate(full=True)
                total += batch.num_rows
            return total == rows
    except (OSError, pa.ArrowException):
        return False


def _data_name(b: int, n: int, fmt: str) -> str:
    return f"data-{b:05d}-of-{n:05d}." + {"arrow": "arrow", "parquet": "parquet", "jsonl": "jsonl"}[fmt]


WRITE_CHUNK = 10_000
"""Rows gathered (Arrow `take`) and written at a time."""
COMBINE_BYTES = 1 << 30
"""An output shard's rows (memory-mapped spill batches) are copied into one contiguous chunk per
column before the shuffle when they are smaller than this: the shuffle's `take` is ~3x faster, at
the cost of holding the shard in memory (~110 MB per 100,000 rows of the demo corpus; at most this
much, per process or Ray task). Larger shards are taken from the mapped batches (and string
offsets are 32-bit: one chunk holds at most 2 GiB of text)."""


def _write_output_shard(path: Path, rows: pa.Table, fmt: str, order: np.ndarray | None = None) -> None:
    """Write `rows` (in `order`, if given) as one output shard, WRITE_CHUNK rows at a time."""
    n = rows.num_rows
    order = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    chunks = (rows.take(pa.array(order[i:i + WRITE_CHUNK])).combine_chunks() for i in range(0, n, WRITE_CHUNK))
    if fmt == "arrow":  # IPC stream, as datasets.save_to_disk writes
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, SELECTION_SCHEMA) as w:
            for chunk in chunks:
                w.write_table(chunk, max_chunksize=1000)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(path, SELECTION_SCHEMA, compression="zstd") as w:
            for chunk in chunks:
                w.write_table(chunk, row_group_size=WRITE_CHUNK)
    else:
        with open(path, "w", encoding="utf-8") as f:
            for chunk in chunks:
                for rec in chunk.to_pylist():
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- the stage


def _parse_target(t: str | Path | tuple[Any, float]) -> tuple[str | Path, float]:
    if isinstance(t, tuple):
        return t[0], float(t[1])
    s = str(t)
    head, sep, tail = s.rpartition(":")
    if sep and head and not Path(s).exists():
        try:
            return head, float(tail)
        except ValueError:
            pass
    return t, 1.0


def target_histogram(targets: Sequence[Any], clusters, embeddings, cfg: ResampleConfig,
                     progress: bool = False) -> tuple[Histogram, list[dict[str, Any]]]:
    """The (mixture) target histogram, and a description of each part for the manifest."""
    parts, described = [], []
    for t in targets:
        spec, w = _parse_target(t)
        h = histogram(spec, clusters, embeddings=embeddings, text_field=cfg.text_field, id_field=cfg.id_field,
                      progress=progress)
        if h.total <= 0:
            raise ConfigError(f"target {spec} has no documents; give a non-empty in-domain sample")
        parts.append((h, w))
        described.append({"target": str(spec), "weight": w, "documents": h.total})
    return mixture(parts), described


def resample(embeddings, clusters, out_dir: str | Path, *, targets: Sequence[Any] = (),
             config: ResampleConfig | None = None, weighting: Callable[..., Any] | None = None,
             overwrite: bool = False, progress: bool = False, command: str | None = None,
             execution: Execution | None = None) -> Selection:
    """Draw a selection from the clustered generic corpus and write it as shards with a data card.

    Args:
        embeddings: the generic corpus's `impsamp embed` output (an `Embeddings` or its path).
        clusters: the `impsamp cluster` output fitted on it (a `Clusters` or its path).
        targets: in-domain samples: corpus paths, target `embed` dirs, saved histograms, each
            optionally with a mixture weight (`"law.jsonl:0.7"` or `("law.jsonl", 0.7)`).
        config: budget, method, scheme, weighting options, seed, output format.
        weighting: a Python callable overriding `config.weighting`.
        execution: `impsamp.scale.Execution(engine="ray")` runs both passes' shards as Ray tasks
            (same bytes). Slices (`num_shards`) are refused: the output is one global shuffle.

    Raises:
        ConfigError, StageError, WeightingError: bad budget, mismatched inputs, bad weights.
    """
    from .clustering import Clusters
    from .embedding import Embeddings

    cfg = config or ResampleConfig(docs=1000)
    ex = execution or LOCAL
    if ex.sliced:
        raise ConfigError("resample --num-shards/--shard-index: the output is one global shuffle of every "
                          "input shard, so it cannot be cut into independent slices; run it as one job "
                          "(--engine ray spreads its shards over a Ray cluster)")
    emb = embeddings if isinstance(embeddings, Embeddings) else Embeddings.load(embeddings)
    clu = clusters if isinstance(clusters, Clusters) else Clusters.load(clusters)
    recorded = clu.manifest.inputs.get("embeddings", {}).get("fingerprint")
    if recorded != emb.manifest.fingerprint:
        raise StageError(f"{clu.path} was not clustered from {emb.path} (its manifest records "
                         f"{clu.manifest.inputs.get('embeddings', {}).get('path')}); pass the matching pair")
    corpus = emb.corpus()  # reopened and checked unchanged since it was embedded
    generic = generic_histogram(clu)
    if cfg.method == "uniform":
        target, described, spec = generic, [], "uniform"
    else:
        if not targets:
            raise ConfigError("no target given; pass --target with an in-domain sample (or --method uniform)")
        target, described = target_histogram(targets, clu, emb, cfg, progress=progress)
        spec = (weighting or cfg.weighting) if cfg.method == "importance" else "ratio"
    builtin = {"smoothing": cfg.smoothing, "temperature": cfg.temperature, "cap": cfg.cap, "backoff": cfg.backoff}
    weights, weighting_name = compute_weights(spec, target, generic, **builtin)
    # uniform, ngram and classifier draw without replacement; importance uses the chosen scheme
    cfg_eff = cfg if cfg.method == "importance" else ResampleConfig(**{**asdict(cfg), "scheme": "topk"})
    if cfg.method in ("ngram", "classifier"):
        weighting_name = cfg.method

    names = list(emb.shard_names)
    windowed = bool(emb.model_info.get("windows"))
    # Per-unit cluster ids and token counts are read shard by shard where needed, never all at once:
    # planning keeps per-(shard, cluster) counts only, so memory does not grow with the corpus (topk,
    # ngram and classifier still hold one log-weight per unit).
    shard_leaves = _PerShard(names, lambda n: np.asarray(clu.shard_assign(n)[:, -1], dtype=np.int64))
    # Unit tables are read again where needed, one shard at a time: holding every shard's table (ids
    # and all) made peak memory grow ~180 bytes per corpus row; the plan needs only leaves and tokens.
    shard_tables = _ShardTables(emb)
    shard_tokens = _PerShard(names, lambda n: _unit_tokens(emb.shard_table(n, columns=_TOKEN_COLUMNS), windowed))
    corpus_shards = {s.name: s for s in corpus.shards(emb.manifest.config.get("rows_per_shard", 10_000))}
    inputs = {"embeddings": {"path": str(emb.path.resolve()), "stage": "embed", "fingerprint": emb.manifest.fingerprint},
              "clusters": {"path": str(clu.path.resolve()), "stage": "cluster", "fingerprint": clu.manifest.fingerprint},
              "targets": described, "target_fingerprint": _hist_key(target)}
    run = StageRun(Path(out_dir), "resample", config={**asdict(cfg), "weighting": weighting_name},
                   inputs=inputs, overwrite=overwrite).begin()

    doc_log_w = None
    if cfg.method == "ngram":
        doc_log_w = _ngram_log_weights(run, cfg, targets, corpus, corpus_shards, shard_tables, names, windowed,
                                       progress)
    elif cfg.method == "classifier":
        doc_log_w = _classifier_log_weights(cfg, targets, emb, names)
    plan = _plan(cfg_eff, weights, generic, shard_leaves, shard_tokens, doc_log_w)
    total_rows = int(plan.draws.sum())
    n_out = max(1, math.ceil(total_rows / cfg.rows_per_shard))

    bar = _progress(progress, len(names) + n_out, "resample")

    def route_done(key: str, result: tuple[str, dict[str, int]]) -> None:
        name = key[len("route-"):]
        commit_once(run, key, {f"_spill/{name}.arrow": Path(result[0])}, stats=result[1], intermediate=True)
        bar.update(1)

    for name in names:  # spill files are not fsynced: after a machine crash, redo any that is damaged
        key = f"route-{name}"
        if run.is_done(key) and not _spill_ok(run.out_dir / "_spill" / f"{name}.arrow", n_out,
                                                run.shard_record(key)["stats"]["rows"]):
            logger.warning("spill file of input shard %s is damaged; recomputing it", name)
            run.forget(key)
    route = [(s, name) for s, name in enumerate(names) if not run.is_done(f"route-{name}")]
    bar.update(len(names) - len(route))
    if ex.engine == "ray" and route:
        tasks = [(f"route-{name}", (cfg_eff, Shared("plan"), s, name, corpus, corpus_shards[name],
                                    Shared("tables"), shard_leaves[s], Shared("weights"),
                                    None if doc_log_w is None else doc_log_w[s], windowed, n_out,
                                    str(run.out_dir / "_spill" / f"{name}.arrow"), True))
                 for s, name in route]
        run_ray(ex, _route_shard, tasks, route_done,
                shared={"plan": plan, "weights": weights, "tables": shard_tables})
    else:
        _in_threads(route_done, [(f"route-{name}", lambda s=s, name=name: _route_shard(
            cfg_eff, plan, s, name, corpus, corpus_shards[name], shard_tables, shard_leaves[s], weights,
            None if doc_log_w is None else doc_log_w[s], windowed, n_out,
            str(run.tmp_path(f"_spill/{name}.arrow")), False)) for s, name in route])
    # the histogram plot (~0.7 s of CPU, mostly importing matplotlib) is drawn on a thread during the
    # gathering pass, which leaves a core idle (Arrow takes and writes; the routing pass uses both)
    plot = _in_background(_plot, run.out_dir / "histograms.png", target, generic, plan)
    unique = sum(run.shard_record(f"route-{name}")["stats"]["unique"] for name in names)
    spills = [str(run.out_dir / "_spill" / f"{n}.arrow") for n in names]

    def write_done(key: str, result: tuple[str, int]) -> None:
        name = _data_name(int(key[len("write-"):]), n_out, cfg.format)
        commit_once(run, key, {name: Path(result[0])}, rows={name: result[1]})
        bar.update(1)

    write = [b for b in range(n_out) if not run.is_done(f"write-{b:05d}")]
    bar.update(n_out - len(write))
    if ex.engine == "ray" and write:
        tasks = [(f"write-{b:05d}", (spills, b, cfg.seed, cfg.format,
                                     str(run.out_dir / _data_name(b, n_out, cfg.format)), True))
                 for b in write]
        run_ray(ex, _gather_shard, tasks, write_done)
    else:  # one output shard gathered at a time: each holds up to rows_per_shard rows (threads would
        # double that); its commit (fsync, checksum) runs on a thread while the next one is gathered
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as committer:
            pending = None
            for b in write:
                if pending is not None and pending.done():
                    pending.result()  # a failed commit stops the run before the next shard is gathered
                tmp = str(run.tmp_path(_data_name(b, n_out, cfg.format)))
                result = _gather_shard(spills, b, cfg.seed, cfg.format, tmp, False)
                if pending is not None:
                    pending.result()
                pending = committer.submit(write_done, f"write-{b:05d}", result)
            if pending is not None:
                pending.result()
    bar.close()

    selected_tokens = int(sum(run.shard_record(f"route-{name}")["stats"]["tokens"] for name in names))
    stats = _diagnostics(target, generic, plan, weights, total_rows, unique, selected_tokens)
    stats.update({"output_shards": n_out, "targets": described, "weighting": weighting_name,
                  "method": cfg.method, "scheme": cfg_eff.scheme})
    extra = _write_extras(run, cfg, stats, target, generic, plan, emb, clu, command, n_out, corpus, shard_tables,
                          names, shard_leaves, plot)
    manifest = run.finish(stats=stats, extra_files=extra)
    return Selection(run.out_dir, manifest)


def _in_background(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on a daemon thread; -> a Future."""
    import threading
    from concurrent.futures import Future

    fut: Future = Future()

    def work() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the result
            fut.set_exception(e)

    threading.Thread(target=work, daemon=True, name="impsamp-plot").start()
    return fut


def _in_threads(done: Callable[[str, Any], None], jobs: list[tuple[str, Callable[[], Any]]]) -> None:
    """Run `jobs` (key, thunk) on a few threads (Arrow reads, takes and writes release the GIL), each
    followed by `done(key, result)` on the same thread (jobs have distinct keys, so their commits are
    independent). Every job's output depends only on its key, so the bytes do not depend on the
    order; at most `threads` shards are in memory at once."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from .embedding import cpu_count

    threads = max(1, min(len(jobs), cpu_count(), 4))
    if threads == 1:
        for key, job in jobs:
            done(key, job())
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: set[Any] = set()
        try:
            for key, job in jobs:
                # the commit (fsync, checksum) runs on the worker thread too, overlapping the others' reads
                pending.add(pool.submit(lambda key=key, job=job: done(key, job())))
                if len(pending) >= threads:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        f.result()
            for f in pending:
                f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def _route_shard(cfg: ResampleConfig, plan: Plan, s: int, name: str, corpus, corpus_shard, tables,
                 leaves: np.ndarray, weights: np.ndarray, doc_log_w: np.ndarray | None, windowed: bool,
                 n_out: int, path: str, own_tmp: bool) -> tuple[str, dict[str, int]]:
    """Pass 1 for input shard `s` (embedding shard `name`, its unit table read from `tables` here):
    its selected rows, routed to output shards, in a spill file at `path` (or, with `own_tmp`, at
    this process's temp name of `path`: a Ray task); -> (file, stats)."""
    reps = _unit_repeats(cfg, plan, s, leaves)
    unit_w = weights[leaves] if doc_log_w is None else np.exp(np.clip(doc_log_w, -80, 80))
    table = tables[name]
    rows = _selected_rows(corpus, corpus_shard, table, reps, leaves, unit_w, windowed)
    buckets = _shard_rng(cfg.seed, s, _ROUTE).integers(n_out, size=rows.num_rows)
    tmp = tmp_name(Path(path)) if own_tmp else Path(path)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _write_spill(tmp, rows, buckets, n_out)
    tokens = float((reps * _unit_tokens(table, windowed)).sum())
    return str(tmp), {"unique": int((reps > 0).sum()), "rows": rows.num_rows, "tokens": tokens}


def _gather_shard(spills: Sequence[str], b: int, seed: int, fmt: str, path: str, own_tmp: bool
                  ) -> tuple[str, int]:
    """Pass 2 for output shard `b`: its rows from every spill file, shuffled, written at `path` (or its
    temp name in this process, with `own_tmp`); -> (file, rows)."""
    parts = []
    for p in spills:
        with pa.memory_map(p) as src:
            batch = pa.ipc.open_file(src).get_batch(b)
            if batch.num_rows:
                parts.append(pa.Table.from_batches([batch]))
    rows = pa.concat_tables(parts) if parts else SELECTION_SCHEMA.empty_table()
    if rows.nbytes < COMBINE_BYTES:  # random `take` from one chunk per column is ~3x faster than from many
        rows = rows.combine_chunks()
    perm = _shard_rng(seed, b, _SHUFFLE).permutation(rows.num_rows)
    tmp = tmp_name(Path(path)) if own_tmp else Path(path)
    _write_output_shard(tmp, rows, fmt, perm)
    return str(tmp), rows.num_rows


def _target_corpus(targets: Sequence[Any], cfg: ResampleConfig, method: str):
    from .io import open_corpus

    from .histograms import is_histogram_file

    specs = [_parse_target(t)[0] for t in targets]
    for sp in specs:
        if (Path(sp).is_dir() and (Path(sp) / "manifest.json").exists()) or is_histogram_file(sp):
            raise ConfigError(f"--method {method} needs the target's text; {sp} is a stage output or "
                              "histogram: pass the in-domain corpus itself")
    return open_corpus(specs, text_field=cfg.text_field, id_field=cfg.id_field)


def _ngram_log_weights(run: StageRun, cfg: ResampleConfig, targets, corpus, corpus_shards, shard_tables,
                       names, windowed, progress) -> list[np.ndarray]:
    """DSIR-style log-weights per unit; the generic n-gram counts are committed per shard (resumable)."""
    from .selectors import N_FEATURES, ngram_counts, ngram_log_ratio, ngram_log_weights

    target_counts = ngram_counts(_target_corpus(targets, cfg, "ngram").iter_texts())
    generic_counts = np.zeros(N_FEATURES)
    bar = _progress(progress, 2 * len(names), "ngram weights")
    for name in names:
        key, path = f"ngram-{name}", run.out_dir / "_ngram" / f"{name}.npy"
        counts = _load_counts(path, N_FEATURES) if run.is_done(key) else None  # not fsynced: check it
        if counts is None:
            table = shard_tables[name]
            texts = _unit_texts(corpus, corpus_shards[name], table, np.arange(table.num_rows), windowed).to_pylist()
            counts = ngram_counts(texts)
            tmp = run.tmp_path(f"_ngram/{name}.npy")
            with open(tmp, "wb") as f:
                np.save(f, counts)
            run.forget(key)
            run.commit_shard(key, {f"_ngram/{name}.npy": tmp}, intermediate=True)
        generic_counts += counts
        bar.update(1)
    log_ratio = ngram_log_ratio(target_counts, generic_counts)
    out = []
    for name in names:
        table = shard_tables[name]
        texts = _unit_texts(corpus, corpus_shards[name], table, np.arange(table.num_rows), windowed).to_pylist()
        out.append(ngram_log_weights(texts, log_ratio))
        bar.update(1)
    bar.close()
    return out


def _load_counts(path: Path, n: int) -> np.ndarray | None:
    """A committed n-gram count vector, or None when it is unreadable or damaged (then it is redone)."""
    try:
        counts = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return counts if counts.shape == (n,) and np.isfinite(counts).all() and (counts >= 0).all() else None


def _classifier_log_weights(cfg: ResampleConfig, targets, emb, names) -> list[np.ndarray]:
    """Log-odds of a logistic regression, target sample against a generic sample, per unit."""
    from .histograms import embed_like
    from .selectors import classifier_log_weights, fit_classifier, sample_rows

    tvec, _ = embed_like(_target_corpus(targets, cfg, "classifier"), emb)
    sizes = [emb.shard_table(n).num_rows for n in names]
    rows = sample_rows(sum(sizes), max(10 * len(tvec), 5000), cfg.seed)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    generic = np.concatenate([np.asarray(emb.shard_vectors(n)[rows[(rows >= lo) & (rows < hi)] - lo], np.float32)
                              for n, lo, hi in zip(names, starts[:-1], starts[1:])])
    clf = fit_classifier(tvec, generic, seed=cfg.seed)
    return [classifier_log_weights(clf, np.asarray(emb.shard_vectors(n), np.float32)) for n in names]


class _PerShard(Sequence):
    """A per-shard array, read by `load(shard name)` on each access (nothing kept)."""

    def __init__(self, names: Sequence[str], load: Callable[[str], np.ndarray]) -> None:
        self.names, self.load = list(names), load

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self.load(self.names[i])


class _ShardTables:
    """name -> that embedding shard's unit table, read on each access (nothing kept)."""

    def __init__(self, emb) -> None:
        self.emb = emb

    def __getitem__(self, name: str) -> pa.Table:
        return self.emb.shard_table(name, columns=_ROW_COLUMNS)

    def column(self, name: str, column: str) -> np.ndarray:
        return self.emb.shard_table(name, columns=[column]).column(column).to_numpy()


_TOKEN_COLUMNS = ["tokens", "chars", "char_start", "char_end"]
_ROW_COLUMNS = ["doc_index", "id", "file", "row", "window", "char_start", "char_end", "tokens", "chars"]
"""What writing a selected unit needs from the unit table."""


def _unit_tokens(table: pa.Table, windowed: bool) -> np.ndarray:
    """Tokens of each unit as it will be written: a truncated document counts in full, estimated
    from the characters the embedding model read and the document's length."""
    tokens = table.column("tokens").to_numpy().astype(np.float64)
    if windowed:
        return tokens
    chars = table.column("chars").to_numpy().astype(np.float64)
    read = (table.column("char_end").to_numpy() - table.column("char_start").to_numpy()).astype(np.float64)
    return np.where(read < chars, tokens * chars / np.maximum(read, 1.0), tokens)


def _hist_key(h: Histogram) -> str:
    from .manifest import fingerprint

    return fingerprint(np.round(h.probs(), 12).tolist())


def _diagnostics(target: Histogram, generic: Histogram, plan: Plan, weights: np.ndarray, rows: int,
                 unique: int, tokens: int) -> dict[str, Any]:
    n_c = generic.counts
    w_docs = weights * n_c
    ess = float(w_docs.sum() ** 2 / max((weights ** 2 * n_c).sum(), 1e-300))
    t = describe(target)
    return {
        "rows": rows, "tokens": tokens, "unique_documents": unique,
        "unique_share": unique / rows if rows else 0.0,
        "repetition_rate": 1 - unique / rows if rows else 0.0,
        "kl_target_generic": kl(target.probs(), generic.probs()),
        "kl_target_selected": kl(target.probs(), plan.draws.astype(np.float64) + 1e-12),
        "effective_sample_size": ess, "effective_sample_share": ess / max(generic.total, 1.0),
        "target_documents": t["documents"], "target_entropy": t["entropy"],
        "target_top_cluster_mass": t["top_cluster_mass"], "empty_target_clusters": t["empty_clusters"],
        "clusters": t["clusters"],
    }


def _write_extras(run: StageRun, cfg: ResampleConfig, stats: dict[str, Any], target: Histogram,
                  generic: Histogram, plan: Plan, emb, clu, command: str | None, n_out: int, corpus,
                  shard_tables, names, shard_leaves, plot=None) -> dict[str, Path]:
    out = run.out_dir
    files: dict[str, Path] = {}
    hist = {"target": target.counts.tolist(), "generic": generic.counts.tolist(),
            "selected": plan.draws.tolist(), "weights": plan.weights.tolist()}
    atomic_write_bytes(out / "histograms.json", json.dumps(hist).encode())
    files["histograms.json"] = out / "histograms.json"
    if cfg.format == "arrow":
        data_files = [{"filename": _data_name(b, n_out, "arrow")} for b in range(n_out)]
        from .manifest import fingerprint

        state = {"_data_files": data_files, "_fingerprint": fingerprint(stats["kl_target_selected"])[7:23],
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                 "_output_all_columns": False, "_split": None}
        info = {"citation": "", "description": "impsamp selection", "features": _FEATURES,
                "homepage": "", "license": ""}
        for name, obj in (("state.json", state), ("dataset_info.json", info)):
            atomic_write_bytes(out / name, (json.dumps(obj, indent=2) + "\n").encode())
            files[name] = out / name
    if plot.result() if plot is not None else _plot(out / "histograms.png", target, generic, plan):
        files["histograms.png"] = out / "histograms.png"
    card = render_card(cfg, stats, target, generic, plan, emb, clu, command, corpus, shard_tables, names,
                       shard_leaves, run.key)
    atomic_write_bytes(out / "README.md", card.encode())
    files["README.md"] = out / "README.md"
    return files


def _plot(path: Path, target: Histogram, generic: Histogram, plan: Plan, top: int = 40) -> bool:
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, a faster import
    except ImportError:
        logger.warning("matplotlib is not installed: no histogram plot (pip install matplotlib)")
        return False
    p_t, p_g = target.probs(), generic.probs()
    p_s = plan.draws / max(plan.draws.sum(), 1)
    order = np.argsort(-(p_t + p_s), kind="stable")[:top]
    x = np.arange(len(order))
    fig = Figure(figsize=(10, 4), dpi=100)
    ax = fig.add_subplot()
    for off, p, label in ((-0.27, p_t, "target"), (0.0, p_g, "generic"), (0.27, p_s, "selected")):
        ax.bar(x + off, p[order], width=0.27, label=label)
    ax.set_xticks(x, [str(c) for c in order], rotation=90, fontsize=7)
    ax.set_xlabel(f"cluster (top {len(order)} by target + selected mass)")
    ax.set_ylabel("share of documents")
    ax.legend()
    fig.tight_layout()
    tmp = tmp_name(path)
    fig.savefig(tmp, format="png", metadata={"Software": None})
    tmp.replace(path)
    return True


def _yaml(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v)


def render_card(cfg, stats, target, generic, plan, emb, clu, command, corpus, shard_tables, names,
                shard_leaves, fingerprint_key) -> str:
    """The selection's README.md data card, filled from the template in `data_cards/TEMPLATE.md`."""
    from . import __version__

    template = (Path(__file__).parent / "data" / "selection_card.md").read_text()
    generic_name = ", ".join(Path(f.path).name for f in corpus.files[:3]) + (" ..." if len(corpus.files) > 3 else "")
    target_name = ", ".join(t["target"] for t in stats["targets"]) or "(none: uniform sample)"
    diag = ["| diagnostic | value |", "|---|---:|"] + [
        f"| {k.replace('_', ' ')} | {_num(stats[k])} |" for k in (
            "rows", "tokens", "unique_documents", "repetition_rate", "kl_target_generic", "kl_target_selected",
            "effective_sample_size", "target_top_cluster_mass", "target_entropy", "empty_target_clusters")]
    p_t, p_g = target.probs(), generic.probs()
    p_s = plan.draws / max(plan.draws.sum(), 1)
    top = [int(c) for c in np.argsort(-p_s, kind="stable")[:5] if p_s[c] > 0]
    examples = _examples(top, corpus, shard_tables, names, shard_leaves)
    lines = ["| cluster | target | generic | selected | weight | examples |", "|---:|---:|---:|---:|---:|---|"]
    for c in top:
        ex = " / ".join(json.dumps(e[:80])[1:-1].replace("|", "\\|") for e in examples.get(c, []))
        lines.append(f"| {c} | {p_t[c]:.3f} | {p_g[c]:.3f} | {p_s[c]:.3f} | {plan.weights[c]:.3g} | {ex} |")
    values = {
        "name": _yaml(f"impsamp-selection-{fingerprint_key[7:15]}"), "generic_corpus": _yaml(generic_name),
        "target": _yaml(target_name), "license": _yaml("that of the generic corpus"),
        "num_documents": stats["rows"], "num_tokens": stats["tokens"], "k": clu.n_leaves,
        "scheme": _yaml(cfg.scheme if cfg.method == "importance" else "uniform"),
        "weighting": _yaml(stats["weighting"]), "kl_target_generic": f"{stats['kl_target_generic']:.4f}",
        "kl_target_selected": f"{stats['kl_target_selected']:.4f}", "seed": cfg.seed,
        "fingerprint": _yaml(fingerprint_key), "impsamp_version": _yaml(__version__),
        "command": command or "impsamp.resample(...)",
        "config": json.dumps(asdict(cfg), indent=2, sort_keys=True),
        "diagnostics_table": "\n".join(diag), "top_clusters": "\n".join(lines),
    }
    return template.format(**values)


def _num(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else str(v)


def _examples(clusters: list[int], corpus, shard_tables, names, shard_leaves, per: int = 3
              ) -> dict[int, list[str]]:
    """First few documents of each cluster (in corpus order), for the data card."""
    want: dict[int, list[int]] = {c: [] for c in clusters}
    for name, leaves in zip(names, shard_leaves):
        idx = shard_tables.column(name, "doc_index")
        for c in clusters:
            if len(want[c]) < per:
                want[c].extend(idx[leaves == c][: per - len(want[c])].tolist())
        if all(len(v) >= per for v in want.values()):
            break
    texts = corpus.take(np.asarray([i for v in want.values() for i in v], dtype=np.int64))
    return {c: [" ".join(texts[i][1].split()) for i in v if i in texts] for c, v in want.items()}


def _progress(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="shard", disable=not enabled, file=sys.stderr)


def command_line() -> str:
    return "impsamp " + " ".join(shlex.quote(a) for a in sys.argv[1:])


__all__ = ["ResampleConfig", "Selection", "resample", "target_histogram", "SELECTION_SCHEMA", "Iterator"]

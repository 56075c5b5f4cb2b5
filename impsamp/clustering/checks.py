"""Checks on the input embeddings (vectors, shard tables, sizes) before anything is fitted."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._deps import require
from ..errors import ConfigError, StageError
from .config import NORM_TOLERANCE, ClusterConfig

if TYPE_CHECKING:
    from ..embedding import Embeddings

logger = logging.getLogger(__name__)


def check_vectors(x: np.ndarray, where: str, rows: np.ndarray | int = 0) -> None:
    """Refuse NaN/inf or rows that are not L2-normalised (float16 storage allows ~1e-3 of error).

    `rows` names the rows of x in messages: an offset, or one row number per row of x.
    """
    norm2 = np.einsum("ij,ij->i", x, x, dtype=np.float32)
    bad = ~np.isfinite(norm2)
    off = np.abs(np.sqrt(norm2) - 1.0) > NORM_TOLERANCE
    if not (bad.any() or off.any()):
        return
    i = int(np.flatnonzero(bad if bad.any() else off)[0])
    row = int(rows[i]) if isinstance(rows, np.ndarray) else rows + i
    if bad.any():
        raise StageError(f"{where} row {row} holds NaN or infinite values ({int(bad.sum())} such row(s) in "
                         "this batch); the embeddings are damaged: rerun `impsamp embed` with --overwrite")
    raise StageError(f"{where} row {row} has L2 norm {math.sqrt(float(norm2[i])):.4g}, not 1 "
                     f"({int(off.sum())} such row(s) in this batch); clustering needs L2-normalised vectors "
                     "as `impsamp embed` writes them")


def load_embeddings(embeddings: Embeddings | str | Path) -> Embeddings:
    from ..embedding import Embeddings

    return embeddings if isinstance(embeddings, Embeddings) else Embeddings.load(embeddings)


def embedding_model_name(emb: Embeddings) -> str:
    identity = emb.manifest.config.get("model_identity") or {}
    return str(identity.get("name") or emb.manifest.config.get("model", ""))


def check_embeddings(emb: Embeddings) -> list[tuple[str, int]]:
    """Every shard present, float16 (n_i, dim), row-aligned with its table; returns (name, rows)."""
    listed = {s["name"]: int(s["rows"]) for s in emb.manifest.stats.get("shards", [])}
    shards = []
    for name in emb.shard_names:
        try:
            vec = emb.shard_vectors(name)
        except (OSError, ValueError) as e:
            raise StageError(f"{emb.path}: the vectors of shard {name} cannot be read ({e}); the embeddings "
                             "are incomplete or damaged: rerun `impsamp embed` with --overwrite") from e
        if vec.ndim != 2 or vec.shape[1] != emb.dim:
            raise StageError(f"{emb.path}: shard {name} holds vectors of shape {tuple(vec.shape)} but the "
                             f"manifest says dimension {emb.dim}: the directory mixes models or runs; "
                             "rerun `impsamp embed` with --overwrite")
        if name in listed and listed[name] != len(vec):
            raise StageError(f"{emb.path}: shard {name} holds {len(vec):,} vectors, the manifest says "
                             f"{listed[name]:,}; rerun `impsamp embed` with --overwrite")
        check_table_rows(emb, name, len(vec))
        shards.append((name, len(vec)))
    if not shards or sum(r for _, r in shards) == 0:
        raise StageError(f"{emb.path} holds no vectors; nothing to cluster")
    return shards


def check_table_rows(emb: Embeddings, name: str, n_i: int, table_rows: int | None = None) -> None:
    """The unit table of a shard is row-aligned with its vectors (from the Parquet footer when not given)."""
    if table_rows is None:
        try:
            table_rows = require("pyarrow.parquet").ParquetFile(Path(emb.path) / f"docs-{name}.parquet"
                                                                ).metadata.num_rows
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid (a damaged footer) is a ValueError
            raise StageError(f"{emb.path}: the table of shard {name} cannot be read ({e}); rerun "
                             "`impsamp embed` with --overwrite") from e
    if table_rows != n_i:
        raise StageError(f"{emb.path}: the table of shard {name} has {table_rows:,} rows but its vectors "
                         f"{n_i:,}; the embeddings are damaged: rerun `impsamp embed` with --overwrite")


def check_sizes(cfg: ClusterConfig, n: int, emb_path: Path) -> int:
    """Check k / levels / sample against n vectors; return the sample size S."""
    if cfg.levels is None and cfg.k > n:
        fix = f"use --k {n:,} or fewer" if n >= 2 else "embed a corpus of at least 2 documents (k-means needs k >= 2)"
        raise ConfigError(f"--k {cfg.k:,} is larger than the number of vectors ({n:,}) in {emb_path}; {fix}")
    if cfg.levels is not None and cfg.max_leaves > n:
        raise ConfigError(f"--levels {','.join(map(str, cfg.levels))} asks for up to {cfg.max_leaves:,} "
                          f"leaves but {emb_path} holds only {n:,} vectors; use fewer or smaller levels")
    cap = cfg.max_leaves * cfg.max_points_per_centroid
    size = min(n, cfg.sample if cfg.sample is not None else cap)
    if cfg.levels is None and cfg.sample is not None and cfg.sample > cap:
        logger.warning("--sample %d: faiss fits %d centroids on at most k * max_points_per_centroid = %d "
                       "points; raise --max-points-per-centroid to use more", cfg.sample, cfg.k, cap)
        size = min(size, cap)
    need = cfg.max_leaves if cfg.levels is not None else cfg.k
    if size < need:
        raise ConfigError(f"--sample {size:,} is smaller than the {need:,} clusters asked for; "
                          f"use --sample {need:,} or more")
    if cfg.sample is not None and size < MIN_POINTS_PER_CENTROID * need:  # a sample asked for: maybe too small
        logger.warning("--sample %d fits %d clusters on %.1f points each: faiss advises at least %d; the "
                       "centroids will follow the sample's noise (raise --sample, or lower --k)",
                       size, need, size / need, MIN_POINTS_PER_CENTROID)
    elif size < MIN_POINTS_PER_CENTROID * need:  # the whole corpus is small for k (the default 1024, say)
        fix = (f"--k {max(2, n // MIN_POINTS_PER_CENTROID)} or fewer" if cfg.levels is None else
               f"--levels whose product is {max(2, n // MIN_POINTS_PER_CENTROID)} or less")
        logger.warning("%s clusters over %s vectors: %.1f each, where faiss advises at least %d; the centroids follow "
                       "noise and a target's histogram spreads over clusters too small to estimate: %s suits this "
                       "corpus", f"{need:,}", f"{n:,}", n / need, MIN_POINTS_PER_CENTROID, fix)
    return size


MIN_POINTS_PER_CENTROID = 39
"""faiss's own advice (its k-means warns below it): fewer sample points per centroid fit the noise."""

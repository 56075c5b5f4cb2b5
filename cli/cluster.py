"""`impsamp cluster EMBEDDINGS_DIR --out DIR`: faiss k-means over an `embed` output, flat or hierarchical."""

from __future__ import annotations

from pathlib import Path

import click

from impsamp.clustering import ClusterConfig
from impsamp.clustering import cluster as run_cluster
from impsamp.config import resolve_config

from .app import (cli, config_option, execution, out_option, overwrite_option, progress_option,
                  scale_options, show_progress)


def _parse_levels(ctx, param, value):
    if value is None:
        return None
    try:
        levels = tuple(int(p) for p in value.replace(" ", "").split(",") if p)
    except ValueError:
        raise click.BadParameter(f"expected integers like 32,32, got {value!r}") from None
    if not levels:
        raise click.BadParameter("expected integers like 32,32")
    return levels


@cli.command()
@click.argument("embeddings_dir", type=click.Path(path_type=Path))
@out_option
@click.option("--k", type=int, default=None,
              help=f"Clusters of a flat clustering [default: {ClusterConfig.k}].")
@click.option("--levels", callback=_parse_levels, default=None,
              help="Hierarchical k-means: children per node at each level, e.g. 32,32 (up to 1,024 leaves).")
@click.option("--sample", type=int, default=None,
              help="Vectors to fit on [default: leaves x --max-points-per-centroid].")
@click.option("--niter", type=int, default=None, help=f"k-means iterations [default: {ClusterConfig.niter}].")
@click.option("--seed", type=int, default=None,
              help=f"Seed of the sample and the fit [default: {ClusterConfig.seed}].")
@click.option("--max-points-per-centroid", type=int, default=None,
              help="faiss's cap on training points per centroid "
              f"[default: {ClusterConfig.max_points_per_centroid}].")
@click.option("--spherical/--no-spherical", default=None,
              help="Cosine geometry (inner product, unit centroids) [default: spherical].")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default=None,
              help="faiss GPU or CPU [default: auto = GPU when faiss sees one].")
@scale_options()
@config_option
@overwrite_option
@progress_option
def cluster(embeddings_dir, out_dir, k, levels, sample, niter, seed, max_points_per_centroid, spherical,
            device, engine, ray_address, num_shards, shard_index, config_file, overwrite, progress):
    """Cluster the vectors of EMBEDDINGS_DIR (an `impsamp embed` output) once, for every target domain.

    \b
    Examples:
      impsamp cluster runs/emb --out runs/clusters --k 1024
      impsamp cluster runs/emb --out runs/clusters --levels 32,32 --sample 500000
      impsamp cluster runs/emb --out runs/clusters --num-shards 8 --shard-index $SLURM_ARRAY_TASK_ID

    With --num-shards/--shard-index every slice uses the same seeded fit (the first slice to get
    there commits it, the others reuse it) and assigns its own embedding shards; then
    `impsamp finalize DIR` writes counts.parquet and the manifest. --engine ray runs the
    assignment pass as Ray tasks.
    """
    if k is not None and levels is not None:
        raise click.UsageError("--k and --levels cannot be combined: --levels sets the k of every level")
    cfg = resolve_config(ClusterConfig, config_file, "cluster", k=k, levels=levels, sample=sample,
                         niter=niter, seed=seed, max_points_per_centroid=max_points_per_centroid,
                         spherical=spherical, device=device)
    ex = execution(engine, ray_address, num_shards, shard_index)
    result = run_cluster(embeddings_dir, out_dir, cfg, overwrite=overwrite, progress=show_progress(progress),
                         execution=ex)
    if ex.sliced:
        click.echo(result.summary())
        return
    s = result.manifest.stats
    shape = "x".join(map(str, cfg.levels)) + " tree" if cfg.levels else "flat"
    click.echo(f"{s['n_leaves']:,} clusters ({shape}) fitted on {s['train_points']:,} points; "
               f"{s['rows']:,} vectors assigned; objective {s['objective']:.4f}, "
               f"largest/mean {s['imbalance']:.2f}, {s['empty_clusters']} empty -> {out_dir}")

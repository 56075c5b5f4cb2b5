"""`impsamp inspect`: the cluster explorer, one self-contained HTML page to open from disk."""

from __future__ import annotations

from pathlib import Path

import click

from .app import cli


@cli.command()
@click.argument("clusters_dir", type=click.Path(path_type=Path))
@click.option("--selection", type=click.Path(path_type=Path), default=None,
              help="An `impsamp resample` output drawn from CLUSTERS_DIR: its weights, target, rows and "
                   "repeats.")
@click.option("--target", "targets", multiple=True,
              help="The target sample (file, folder, glob; repeatable), its `embed` output or a saved "
                   "histogram: its mass per cluster (and, without --selection, the weights resample would "
                   "use).")
@click.option("--out", "out_file", required=True, type=click.Path(path_type=Path),
              help="The .html file to write (an explorer already there is replaced).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the documents sampled per cluster.")
@click.option("--sample", "per_cluster", type=click.IntRange(min=1), default=None,
              help="Documents sampled per cluster for its terms [default: 32 up to k=1,024, then fewer].")
@click.option("--text-field", default="text", show_default=True, help="Text field of a --target corpus.")
def inspect(clusters_dir, selection, targets, out_file, seed, per_cluster, text_field):
    """Write the cluster explorer of a clustering (and a selection, a target) as one HTML file.

    \b
    Examples:
      impsamp inspect runs/clusters --selection runs/law --out law-explorer.html
      impsamp inspect runs/clusters --target law_sample.jsonl --out law-explorer.html
    Per cluster: documents, tokens, top terms (TF-IDF over a seeded sample of its documents), three
    example snippets, generic and target mass, weight, share of the selection and repeats, in a sortable,
    filterable table; a map of the centroids (PCA) sized by documents and coloured by weight; the
    generic vs target histogram; the tree of a hierarchy. No network needed: open the file in a browser.
    """
    from impsamp.explorer import inspect as run_inspect

    target = None if not targets else (targets[0] if len(targets) == 1 else list(targets))
    path = run_inspect(clusters_dir, out_file, selection=selection, target=target, seed=seed,
                       per_cluster=per_cluster, text_field=text_field)
    size = path.stat().st_size
    shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
    click.echo(f"{path}: cluster explorer, {shown}; open it in a browser")


__all__ = ["inspect"]

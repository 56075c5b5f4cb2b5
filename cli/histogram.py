"""`impsamp histogram`: a target sample's cluster histogram, saved as a file `resample` and `inspect` take."""

from __future__ import annotations

from pathlib import Path

import click

from .app import cli


@cli.command()
@click.argument("clusters_dir", type=click.Path(path_type=Path))
@click.option("--target", "targets", multiple=True, required=True,
              help="The in-domain sample (file, folder, glob; repeatable) or its `impsamp embed` output.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .json file to write.")
@click.option("--text-field", default="text", show_default=True, help="Text field of a --target corpus.")
@click.option("--overwrite", is_flag=True, help="Replace a histogram already at --out.")
def histogram(clusters_dir, targets, out_file, text_field, overwrite):
    """Save the target's histogram over CLUSTERS_DIR: how many of its documents fall in each cluster.

    \b
    Example:
      impsamp histogram runs/clusters --target law_sample.jsonl --out law.hist.json
      impsamp resample runs/emb runs/clusters --target law.hist.json --out runs/law --tokens 50000000
    The file holds counts only, no text: a team can share what its domain looks like without its
    documents. `resample` weighs clusters by it (document-level weights need the sample itself).
    """
    from impsamp.errors import ConfigError
    from impsamp.guards import refuse_inside_output
    from impsamp.histograms import describe, histogram as target_histogram, is_histogram_file

    if out_file.suffix != ".json":
        raise ConfigError(f"--out {out_file}: give a path ending in .json")
    refuse_inside_output(out_file)  # a file inside a finished output would go with its next --overwrite
    if out_file.exists():
        if not is_histogram_file(out_file):
            raise ConfigError(f"--out {out_file} exists and is not a saved histogram; choose another path")
        if not overwrite:
            raise ConfigError(f"--out {out_file} exists; pass --overwrite to replace it")
    hist = target_histogram(targets[0] if len(targets) == 1 else list(targets), clusters_dir, text_field=text_field)
    hist.save(out_file)
    d = describe(hist)
    click.echo(f"{out_file}: {d['documents']:,.0f} documents over {d['clusters']:,} clusters (top cluster "
               f"{d['top_cluster_mass']:.1%}, entropy {d['entropy']:.2f}, {d['empty_clusters']:,} empty)")


__all__ = ["histogram"]

"""`impsamp finalize DIR`: write the manifest of a stage whose shards were committed by array slices."""

from __future__ import annotations

from pathlib import Path

import click

from .app import cli, plural


@cli.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
def finalize(out_dir):
    """Complete OUT_DIR, an embed, cluster or experts output written by --num-shards/--shard-index slices.

    Checks that every shard is committed (exit 1 with how many are missing otherwise) and writes
    the stage's last files and manifest.json: the bytes a single run writes. Rerunning the stage
    command without --num-shards completes it too (and computes any missing shard).

    \b
    Example (a Slurm array of 8, then one finalize job):
      impsamp embed data/generic --out runs/emb --num-shards 8 --shard-index $SLURM_ARRAY_TASK_ID
      impsamp finalize runs/emb
    """
    from impsamp.finalizing import finalize as run_finalize

    was_complete = (Path(out_dir) / "manifest.json").is_file()
    handle = run_finalize(out_dir)
    n = len(handle.manifest.outputs)
    did = "already complete, nothing to do" if was_complete else "manifest.json written"
    click.echo(f"{out_dir}: complete '{handle.manifest.stage}' output ({plural(n, 'file')}); {did}")

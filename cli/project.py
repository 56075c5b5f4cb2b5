"""`impsamp project`: the small model of a projected network (or a soup of experts) for one target."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .app import cli, out_option, overwrite_option


@cli.command()
@click.argument("network", type=click.Path(file_okay=False, path_type=Path))
@click.option("--target", multiple=True,
              help="The in-domain sample (file, folder, glob; repeatable), its `embed` output, or a saved "
                   "histogram of the network's clustering.")
@click.option("--cluster", type=int, default=None, help="A cluster (group) number instead of --target.")
@click.option("--text-field", default="text", show_default=True, help="Text field of a --target corpus.")
@out_option
@overwrite_option
def project(network, target, cluster, text_field, out_dir, overwrite):
    """Compute the dense small model of a projected network for a target, in seconds (no data pass).

    \b
    Examples:
      impsamp train --arch projected --clusters runs/clu --out runs/pn --steps 2000
      impsamp project runs/pn --target law-sample.jsonl --out runs/law-pn
      impsamp train --init runs/law-pn --finetune law-sample.jsonl --early-stopping 3 --out runs/law
    A network trained with --condition cluster takes the cluster with the most target mass; one
    trained with --condition histogram (a soup of experts) takes the target's whole histogram. The
    output is an ordinary dense run: `evaluate`, `export`, `train --init` and `info` take it.
    """
    from impsamp.projection import project as run_project

    spec = None if not target else (target[0] if len(target) == 1 else list(target))
    run = run_project(network, out_dir, target=spec, cluster=cluster, text_field=text_field,
                      overwrite=overwrite)
    rec = json.loads((run.path / "projection.json").read_text())
    click.echo(f"{out_dir}: {run.model_config.n_params():,}-parameter dense model in {rec['seconds']:.2f} s; "
               f"{rec['why']}")


__all__ = ["project"]

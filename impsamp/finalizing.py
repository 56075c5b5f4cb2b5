"""`impsamp finalize DIR`: complete a stage directory whose shards were committed by array slices.

It sits above the stages (it dispatches to each), so that `scale`, which the stages use, needs none of them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .errors import StageError
from .guards import LOCK_FILE, hold, release
from .manifest import MANIFEST, RUN_RECORD, describe_dir
from .outdir import BOOKKEEPING, recover
from .scale import Execution

logger = logging.getLogger(__name__)


def finalize(out_dir: str | Path) -> Any:
    """Write the manifest of a stage whose shards were committed by slices.

    Returns the stage's handle (`Embeddings`, `Clusters`).

    Raises:
        StageError: not a sliced stage directory, or shards are missing (how many, and which).
    """
    out = Path(out_dir)
    if (out / MANIFEST).is_file():  # finalized already (or run whole): say so, like a rerun would
        from .manifest import read_manifest

        _end_cleanup(out)

        stage = read_manifest(out).stage
        if stage == "embed":
            from .embedding import Embeddings

            return Embeddings.load(out)
        if stage == "cluster":
            from .clustering import Clusters

            return Clusters.load(out)
        if stage == "experts":
            from .mixture import Experts

            return Experts.load(out)
        raise StageError(f"{out} is a complete '{stage}' output; finalize applies to embed, cluster and experts")
    try:
        record = json.loads((out / RUN_RECORD).read_text())
        stage = record["stage"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StageError(f"{out} {describe_dir(out)}; `impsamp finalize` completes a directory written by "
                         "`--num-shards/--shard-index` slices of embed, cluster or experts") from None
    done = Execution(require_complete=True)
    if stage == "embed":
        from .embedding.stage import finalize_embed

        return finalize_embed(out, record, done)
    if stage == "cluster":
        from .clustering import ClusterConfig, cluster
        from .config import from_dict

        cfg = from_dict(ClusterConfig, record["config"], source=str(out / RUN_RECORD))
        return cluster(record["inputs"]["embeddings"]["path"], out, cfg, execution=done)
    if stage == "experts":
        from .config import from_dict
        from .mixture import ExpertsConfig, experts

        cfg = from_dict(ExpertsConfig, record["config"], source=str(out / RUN_RECORD))
        inputs = record["inputs"]
        return experts(inputs["embeddings"]["path"], inputs["clusters"]["path"], out, cfg, execution=done)
    raise StageError(f"{out} is an interrupted '{stage}' run; only embed, cluster and experts run in slices: rerun "
                     f"the same `impsamp {stage}` command to resume it")


def _end_cleanup(out: Path) -> None:
    """A finalize killed after its manifest left the run's bookkeeping (and, for `--overwrite`, the output
    it replaced): remove it, as the stage's own next run would, with the folder's lock held alone."""
    if not any((out / name).exists() for name in BOOKKEEPING):
        return
    key = hold(out)
    try:
        if done := recover(out, {out / LOCK_FILE}):
            logger.warning("%s: %s", out, done)
    finally:
        release(key)

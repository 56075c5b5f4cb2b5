"""`inspect`: one self-contained HTML page to look inside a clustering, a selection and a target.

    impsamp inspect runs/clusters --selection runs/law --out law-explorer.html
    impsamp.inspect("runs/clusters", "law-explorer.html", selection="runs/law")
"""

from __future__ import annotations

import numbers
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import MAX_SEED_32, check_seed
from ..errors import ConfigError
from .masses import Masses, load_selection, selection_masses, target_masses
from .page import is_ours, payload, render
from .view import ClusterView, cluster_view

EXPLORER = "explorer.html"
"""The page `impsamp compare` writes in each selection's folder."""


def inspect(clusters, out: str | Path, *, selection=None, target=None, seed: int = 0,
            per_cluster: int | None = None, text_field: str = "text") -> Path:
    """Write the cluster explorer of a clustering (with a selection's and a target's masses) to `out`.

    Args:
        clusters: an `impsamp cluster` output (a `Clusters` or its path).
        out: the .html file to write (an explorer already there is replaced; any other file is not).
        selection: an `impsamp resample` output drawn from `clusters`: its weights, target, rows and repeats.
        target: the target sample (files, folder, glob, its `embed` output or a saved histogram): its
            mass per cluster and, without a selection, the weights `resample` would use.
        seed: the seed of the sample of documents behind the terms and snippets.
        per_cluster: documents sampled per cluster [default: 32 up to k = 1,024, then fewer].
        text_field: the text field of a corpus target.

    Returns:
        The path written.

    Raises:
        ConfigError: `out` is not an .html path or is a file this function did not write.
        StageError: a missing or incomplete input, or a selection drawn from another clustering.
    """
    from ..clustering import Clusters

    out = check_out(out)
    check_seed(seed, "--seed", maximum=MAX_SEED_32)  # it seeds scikit-learn's TF-IDF sample
    if per_cluster is not None and (isinstance(per_cluster, bool) or not isinstance(per_cluster, numbers.Integral)
                                    or per_cluster < 1):
        raise ConfigError(f"--sample (per_cluster) must be an integer >= 1: documents sampled per cluster, "
                          f"got {per_cluster!r}")
    clu = clusters if isinstance(clusters, Clusters) else Clusters.load(clusters)
    masses = Masses()
    if selection is not None:
        masses = selection_masses(load_selection(selection, clu), clu.n_leaves)
    if target is not None and not (isinstance(target, (list, tuple)) and not target):
        masses = target_masses(target, clu, masses, text_field=text_field)
    view = cluster_view(clu, seed=seed, per_cluster=per_cluster)
    return write_page(out, view, masses)


def check_out(out: str | Path) -> Path:
    """`out` as a Path, refused when it is not an .html file path or holds a file of something else."""
    if not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"--out: give the .html file to write, got {out!r}")
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: give a path ending in .html (the explorer is one HTML file)")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file path such as {out / EXPLORER}")
    if out.exists() and not is_ours(out):
        raise ConfigError(f"--out {out} exists and is not an explorer page impsamp wrote; choose another "
                          "path or remove it")
    from ..guards import refuse_inside_output

    refuse_inside_output(out)  # a page inside a finished output would go with its next --overwrite
    return out


def write_page(out: Path, view: ClusterView, masses: Masses) -> Path:
    from ..manifest import atomic_write_bytes

    sel = masses.about.get("selection")
    title = f"Cluster explorer: {view.name}" + (f", selection {sel['name']}" if sel else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, render(payload(view, masses, title)).encode("utf-8"))
    return out


def selection_pages(clusters, selections: dict[str, Path], *, seed: int = 0) -> dict[str, Path]:
    """One explorer per selection (`<selection>/explorer.html`), the clustering described once. A
    selection without a target (uniform) shows the target of a sibling that has one.

    Returns:
        name -> the page written.
    """
    if not selections:
        return {}
    loaded = {name: load_selection(path, clusters) for name, path in selections.items()}
    masses = {name: selection_masses(sel, clusters.n_leaves) for name, sel in loaded.items()}
    donor = next((m for m in masses.values() if m.target is not None), None)
    view = cluster_view(clusters, seed=seed)
    pages = {}
    for name, m in masses.items():
        if m.target is None and donor is not None:
            m = _with_target_of(m, donor)
        pages[name] = write_page(Path(loaded[name].path) / EXPLORER, view, m)
    return pages


def _with_target_of(m: Masses, donor: Masses) -> Masses:
    about: dict[str, Any] = {**m.about, "target": donor.about.get("target")}
    return replace(m, target=donor.target, about=about)

"""The PNG plots' shared parts: a matplotlib `Figure` without pyplot (no global backend switched in
the caller's process, say a notebook) and a save that leaves no half-written file under the final name.

    fig = figure((7.0, 4.2))        # None when matplotlib is not installed
    ax = fig.add_subplot()
    save_png(fig, out / "plan.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def figure(size: tuple[float, float], dpi: int = 100) -> Any | None:
    """A matplotlib Figure of `size` inches, or None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(figsize=size, dpi=dpi)


def save_png(fig: Any, path: Path) -> None:
    """`fig` as a PNG at `path`, through a temporary file (no timestamp or version: the same bytes each run)."""
    from .outdir import tmp_name

    tmp = tmp_name(path)
    fig.savefig(tmp, format="png", metadata={"Software": None})
    tmp.replace(path)

"""Entry point of the `impsamp` console script: the group plus every command module."""

from __future__ import annotations

from . import compare, info, resample  # noqa: F401  (each module registers its commands on `cli`)
from . import cluster  # noqa: F401
from . import embed  # noqa: F401
from . import finalize  # noqa: F401
from . import train  # noqa: F401
from .app import cli


def main() -> None:
    cli(prog_name="impsamp")


__all__ = ["cli", "main"]

"""Entry point of the `impsamp` console script: the group plus every command module."""

from __future__ import annotations

from . import (cache, cluster, compare, distill, embed, experts, finalize, histogram, info,  # noqa: F401
               inspect, plan, project, resample, train)
from .app import cli


def main() -> None:
    cli(prog_name="impsamp")


__all__ = ["cli", "main"]

"""Entry point of the `impsamp` console script: the group plus every command module."""

from __future__ import annotations

from . import info  # noqa: F401  (each module registers its commands on `cli`)
from .app import cli


def main() -> None:
    cli(prog_name="impsamp")


__all__ = ["cli", "main"]

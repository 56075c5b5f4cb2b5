"""`impsamp cache`: what impsamp keeps in its user cache, and clearing it."""

from __future__ import annotations

import json
import math
import time

import click

from .app import cli


@cli.command()
@click.option("--clear", "kinds", multiple=True, metavar="KIND",
              type=click.Choice(["onnx", "tokenizers", "ngram", "files", "demo", "all"]),
              help="Remove this kind's entries (repeatable; all: every kind). Nothing a result needs: a "
                   "missing entry is made again when a run wants it.")
@click.option("--older-than", "days", type=click.FloatRange(min=0), metavar="DAYS",
              help="With --clear: only the entries no run has used for DAYS days.")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def cache(kinds, days, as_json):
    """Show what impsamp keeps between runs in its user cache, by kind, or clear it.

    The cache is IMPSAMP_CACHE_DIR (or IMPSAMP_CACHE), else $XDG_CACHE_HOME/impsamp, else ~/.cache/impsamp.
    It holds exported ONNX models and tokenizers (`embed --backend onnx`), each embedding's hashed n-gram
    features (`resample`'s n-gram weightings; the kind that grows), what a read of each corpus file found, and
    the demo's embeddings. Nothing there is a result: what a run wants again is made again. Entries changed
    in the last minute, a running demo's embeddings and a model being exported or loaded are left, and so
    is anything impsamp did not make.

    \b
    Examples:
      impsamp cache
      impsamp cache --clear ngram --older-than 30
      impsamp cache --clear all
    """
    from impsamp.config import cache_dir
    from impsamp.errors import ConfigError
    from impsamp.usercache import KINDS

    if days is not None and not kinds:
        raise ConfigError("--older-than needs --clear KIND (or --clear all)")
    if days is not None and not math.isfinite(days * 86_400):
        raise ConfigError(f"--older-than must be a number of days, got {days}")
    if cache_dir().exists() and not cache_dir().is_dir():
        raise ConfigError(f"the user cache {cache_dir()} is a file, not a folder: point IMPSAMP_CACHE_DIR "
                          "at a folder (or remove the file)")
    if kinds:
        _clear(list(KINDS) if "all" in kinds else list(dict.fromkeys(kinds)), days, as_json)
    else:
        _show(as_json)


def _clear(chosen: list[str], days: float | None, as_json: bool) -> None:
    from impsamp.config import cache_dir
    from impsamp.errors import ConfigError
    from impsamp.usercache import clear

    done = clear(chosen, older_than_s=None if days is None else days * 86_400)
    if as_json:
        click.echo(json.dumps({"cache": str(cache_dir()), "cleared": chosen, "entries": done.entries,
                               "bytes": done.bytes, "busy": done.busy, "failed": done.failed}, indent=2))
    else:
        unused = "" if days is None else f" unused for {days:g} days"
        click.echo(f"{cache_dir()}: removed {done.entries} {', '.join(chosen)} entries{unused} "
                   f"({_size(done.bytes)})")
        if done.busy:
            click.echo(f"left {done.busy} entries in use (changed in the last minute, or held by a running "
                       "impsamp); clear again later")
    if done.failed:
        raise ConfigError(f"could not remove {done.failed} entries in {cache_dir()}: check its permissions")


def _show(as_json: bool) -> None:
    from impsamp.config import cache_dir
    from impsamp.usercache import DESCRIPTIONS, summary

    facts = summary()
    if as_json:
        click.echo(json.dumps({"cache": str(cache_dir()), "kinds": facts}, indent=2))
        return
    click.echo(f"{cache_dir()}")
    click.echo(f"  {'kind':<11} {'entries':>7} {'size':>10}  {'last used':<16}  what")
    for kind, f in facts.items():
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(f["used"])) if f["used"] else "-"
        size, what = _size(f["bytes"]), DESCRIPTIONS[kind]
        click.echo(f"  {kind:<11} {f['entries']:>7} {size:>10}  {used:<16}  {what}")
    click.echo(f"  {'total':<11} {'':>7} {_size(sum(f['bytes'] for f in facts.values())):>10}")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} GB"

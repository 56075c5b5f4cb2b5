"""`impsamp cache`: what impsamp keeps in its user cache, and clearing it."""

from __future__ import annotations

import json
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
    features (`resample`'s n-gram methods; the largest kind), what a read of each JSONL file found, and the
    demo's embeddings. Entries a run changed in the last minute are left alone (it may be writing them).

    \b
    Examples:
      impsamp cache
      impsamp cache --clear ngram --older-than 30
      impsamp cache --clear all
    """
    from impsamp.config import cache_dir
    from impsamp.errors import ConfigError
    from impsamp.usercache import DESCRIPTIONS, KINDS, clear, summary

    if days is not None and not kinds:
        raise ConfigError("--older-than needs --clear KIND (or --clear all)")
    if kinds:
        chosen = list(KINDS) if "all" in kinds else list(dict.fromkeys(kinds))
        done = clear(chosen, older_than_s=None if days is None else days * 86_400)
        facts = {"cache": str(cache_dir()), "cleared": chosen, "entries": done.entries, "bytes": done.bytes,
                 "busy": done.busy}
        if as_json:
            click.echo(json.dumps(facts, indent=2))
            return
        unused = "" if days is None else f" unused for {days:g} days"
        click.echo(f"{cache_dir()}: removed {done.entries} {', '.join(chosen)} entries{unused} "
                   f"({_size(done.bytes)})")
        if done.busy:
            click.echo(f"left {done.busy} entries a run changed in the last minute; clear again after it")
        return
    facts = summary()
    if as_json:
        click.echo(json.dumps({"cache": str(cache_dir()), "kinds": facts}, indent=2))
        return
    click.echo(f"{cache_dir()}")
    click.echo(f"  {'kind':<11} {'entries':>7} {'size':>10}  {'last used':<16}  what")
    for kind, f in facts.items():
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(f["used"])) if f["used"] else "-"
        what = DESCRIPTIONS.get(kind, "not impsamp's, or an older impsamp's: left alone")
        click.echo(f"  {kind:<11} {f['entries']:>7} {_size(f['bytes']):>10}  {used:<16}  {what}")
    total = sum(f["bytes"] for f in facts.values())
    click.echo(f"  {'total':<11} {'':>7} {_size(total):>10}")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} GB"

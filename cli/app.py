"""The `impsamp` click group, its error handling, and options shared by the commands."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import click

import impsamp
from impsamp.errors import ImpsampError


MEMORY_HINTS = {
    "embed": "lower --batch-tokens", "cluster": "lower --sample (the vectors k-means trains on)",
    "train": "lower --batch-size (--grad-accum keeps the batch) or --block-size",
    "experts": "lower the experts' batch_size in --config", "compare": "lower batch_size in --config",
    "distill": "lower batch_size in --config", "inspect": "lower --sample"}
"""What to lower when a command runs out of memory."""


def plural(n: int, word: str) -> str:
    """`1 step`, `3 steps`: a count and its noun as a sentence has them."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


class ImpsampGroup(click.Group):
    """Turn library errors into one line `Error: ...` and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            # click prints a bad flag as usage + hint + error (three lines): one line, like ours
            hint = f"; see `{e.ctx.command_path} --help`" if e.ctx is not None else ""
            err = click.ClickException(_one_line(e.format_message()).rstrip(".") + hint)
            err.exit_code = e.exit_code
            raise err from None
        except ImpsampError as e:
            raise click.ClickException(_one_line(str(e))) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; rerun the same command to resume.", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            raise  # the reader went away (`impsamp info DIR | head`): click's main exits quietly
        except (NotADirectoryError, FileExistsError) as e:
            # A path through a file (--out notes.txt/x): nothing to resume, another path to give.
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            raise click.ClickException(f"{e.strerror or e}{where}: a file is where a folder is expected; choose "
                                       "another path") from None
        except OSError as e:
            # Disk full, permission denied, ...: name the file and what to do.
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            raise click.ClickException(f"{e.strerror or e}{where}; check the path, its permissions and "
                                       "free disk space, then rerun to resume") from None
        except MemoryError:
            lower = MEMORY_HINTS.get(ctx.invoked_subcommand or "", "use a smaller input")
            raise click.ClickException(f"out of memory; {lower}") from None
        finally:
            from impsamp import manifest

            manifest.COMMAND = None  # set by `cli` for this command only (the API, or a next command in-process)


@click.group(cls=ImpsampGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(impsamp.__version__, prog_name="impsamp")
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage does.")
def cli(verbose: bool) -> None:
    """Build a domain-like pretraining corpus from a generic one by clustered importance sampling.

    \b
    The pipeline (each stage writes one directory, resumable, with a manifest):
      impsamp embed CORPUS --out runs/emb              sentence embeddings of the generic corpus
      impsamp cluster runs/emb --out runs/clusters     faiss k-means over them (done once)
      impsamp resample runs/emb runs/clusters --target DOMAIN_SAMPLE --out runs/sel --tokens N
      impsamp train --data runs/sel --out runs/lm      pretrain a small LM (--finetune, --eval: fine-tune, score)
    Or everything at once on the bundled corpus:  impsamp demo
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from impsamp import manifest

    # the command an interrupted run is resumed with (`specialize` and `distill` write `train` runs)
    manifest.COMMAND = click.get_current_context().invoked_subcommand


def _one_line(message: str) -> str:
    """Errors print as one line: a multi-line library message is joined with '; '."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip()) or "unknown error"


class Count(click.ParamType):
    """A count that may be written as a float (2e9): a finite number, rounded down to an integer."""

    name = "N"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return int(value)
        except (TypeError, ValueError):
            pass
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number != int(number):
            self.fail(f"{value!r} is not a whole finite number (give a count such as 2e9)", param, ctx)
        return int(number)


COUNT = Count()


def overwrite_option(f):
    return click.option("--overwrite", is_flag=True,
                        help="Replace an existing complete output. It is moved to OUT/_replaced and deleted once "
                             "the new one completes (the disk holds both meanwhile: short of space, delete OUT "
                             "instead); an interrupted run resumes without --overwrite.")(f)


def config_option(f=None, *, section: str | None = None):
    """`--config FILE`; `section` names the TOML section read where it is not the command's own."""
    where = f"its [{section}] section" if section else "its own [section]"

    def deco(g):
        return click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                            default=None, help=f"TOML file; this command reads {where}. "
                            "Flags override it.")(g)
    return deco(f) if f is not None else deco


def progress_option(f):
    return click.option("--progress/--no-progress", default=None,
                        help="Show progress bars [default: when stderr is a terminal].")(f)


def show_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def out_option(f):
    return click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
                        help="Output directory (created; resumed if a previous run was interrupted).")(f)


def scale_options(*, gpus: bool = False, slices_help: str | None = None):
    """--engine, --ray-address, --num-shards/--shard-index (and --gpus-per-worker for embed)."""
    def decorate(f):
        if gpus:
            f = click.option("--gpus-per-worker", type=float, default=None,
                             help="--engine ray on cuda: GPUs each embedding task requests; 0.5 runs two "
                                  "model replicas per GPU [default: 1].")(f)
        f = click.option("--shard-index", type=int, default=None,
                         help=slices_help or "This slice of a Slurm array: process only the shards with "
                              "index % --num-shards == --shard-index, commit them, write no manifest "
                              "(then `impsamp finalize DIR`).")(f)
        f = click.option("--num-shards", type=int, default=None,
                         help=slices_help or "Slices of a Slurm array run (with --shard-index).")(f)
        f = click.option("--ray-address", default=None,
                         help="--engine ray: a running Ray cluster (e.g. auto, ray://head:10001) "
                              "[default: start a local Ray on this machine].")(f)
        f = click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                         help="Run the shards here, or as Ray tasks (same output bytes).")(f)
        return f
    return decorate


def execution(engine: str, ray_address: str | None, num_shards: int | None, shard_index: int | None,
              gpus_per_worker: float | None = None, tokenize_tasks: bool = False):
    from impsamp.errors import ConfigError
    from impsamp.scale import Execution, check_reachable

    if gpus_per_worker is not None and engine != "ray":
        raise ConfigError("--gpus-per-worker sizes Ray tasks: it needs --engine ray")
    ex = Execution(engine=engine, ray_address=ray_address, num_shards=num_shards, shard_index=shard_index,
                   gpus_per_worker=1.0 if gpus_per_worker is None else gpus_per_worker, tokenize_tasks=tokenize_tasks)
    if ex.ray_address:  # before the stage writes anything (the stage checks again when it connects)
        check_reachable(ex.ray_address)
    return ex

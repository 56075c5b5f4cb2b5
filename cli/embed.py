"""`impsamp embed CORPUS... --out DIR`: sentence embeddings of every document, resumable."""

from __future__ import annotations

import click

from impsamp.config import resolve_config
from impsamp.embedding import BACKENDS, DEVICES, PRECISIONS, EmbedConfig, embed

from .app import (cli, config_option, execution, out_option, overwrite_option, progress_option,
                  scale_options, show_progress)


@cli.command("embed")
@click.argument("corpus", nargs=-1, required=True)
@out_option
@click.option("--model", default=None,
              help=f"sentence-transformers model: hub name, local folder, or hashing:DIM (offline test "
                   f"embedder) [default: {EmbedConfig.model}]")
@click.option("--max-tokens", type=click.IntRange(min=4), default=None,
              help=f"Model tokens per unit, special tokens included [default: {EmbedConfig.max_tokens}]")
@click.option("--windows/--truncate", default=None,
              help="Split long documents into non-overlapping windows of --max-tokens, one vector each, "
                   "instead of truncating them [default: truncate]")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help=f"torch (sentence-transformers) or onnx (ONNX Runtime) [default: {EmbedConfig.backend}]")
@click.option("--quantize", type=click.Choice(["none", "int8"]), default=None,
              help="int8: dynamic int8 quantization of the ONNX model (with --backend onnx) [default: none]")
@click.option("--device", type=click.Choice(DEVICES), default=None,
              help=f"auto picks the GPU when there is one [default: {EmbedConfig.device}]")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Torch backend: auto = float16 on GPU, bfloat16 on CPUs with AMX, else float32 "
                   "[default: auto]")
@click.option("--batch-tokens", type=click.IntRange(min=1), default=None,
              help="Padded tokens per batch [default: 4096 on CPU with torch, 512 with onnx; 65536 on GPU]")
@click.option("--rows-per-shard", type=click.IntRange(min=1), default=None,
              help=f"Corpus rows per output shard [default: {EmbedConfig.rows_per_shard}]")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help=f"Local worker processes over shards [default: {EmbedConfig.workers}]")
@click.option("--tokenize-processes", type=click.IntRange(min=0), default=None,
              help="Processes that tokenize ahead of the model instead of threads, for GPU runs that "
                   "tokenizing bounds (per worker; on an H200 host level with threads on large corpora, "
                   "slower on small ones, as they take seconds to start) [default: 0: threads]")
@click.option("--tokenize-tasks", is_flag=True, default=False,
              help="--engine ray: tokenize each shard in a CPU-only Ray task that hands its token ids to the "
                   "model's task, so that GPU nodes are fed by the CPU-only nodes too (same output bytes).")
@click.option("--text-field", default=None, help="Field holding the document text [default: text].")
@click.option("--id-field", default=None, help="Field holding a document id [default: 'id' if present].")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default=None,
              help="What to do with invalid UTF-8 [default: strict].")
@scale_options(gpus=True)
@config_option
@overwrite_option
@progress_option
def embed_command(corpus, out_dir, model, max_tokens, windows, backend, quantize, device, precision,
                  batch_tokens, rows_per_shard, workers, tokenize_processes, tokenize_tasks, text_field, id_field,
                  encoding_errors, engine, ray_address, num_shards, shard_index, gpus_per_worker,
                  config_file, overwrite, progress):
    """Embed every document of CORPUS (files, folders, globs) into --out.

    Writes vectors-NNNNN.npy (float16, L2-normalised) and docs-NNNNN.parquet per shard, then
    manifest.json. Rerunning an interrupted command resumes it.

    \b
    Examples:
      impsamp embed data/generic/*.jsonl.gz --out runs/emb
      impsamp embed data/generic --out runs/emb --backend onnx --quantize int8 --max-tokens 128
      impsamp embed data/books.parquet --out runs/emb --windows --workers 4
      impsamp embed data/tiny.jsonl --out runs/emb --model hashing:256
      impsamp embed data/generic --out runs/emb --device cuda --max-tokens 128
      impsamp embed data/generic --out runs/emb --engine ray --ray-address auto
      impsamp embed data/generic --out runs/emb --engine ray --ray-address auto --device cuda --tokenize-tasks
      impsamp embed data/generic --out runs/emb --num-shards 8 --shard-index $SLURM_ARRAY_TASK_ID
    """
    cfg = resolve_config(EmbedConfig, config_file, "embed", model=model, max_tokens=max_tokens,
                         windows=windows, backend=backend, quantize=quantize, device=device,
                         precision=precision, batch_tokens=batch_tokens, rows_per_shard=rows_per_shard,
                         workers=workers, tokenize_processes=tokenize_processes, text_field=text_field,
                         id_field=id_field, encoding_errors=encoding_errors)
    ex = execution(engine, ray_address, num_shards, shard_index, gpus_per_worker, tokenize_tasks)
    result = embed(list(corpus), out_dir, cfg, overwrite=overwrite, progress=show_progress(progress),
                   execution=ex)
    if ex.sliced:
        click.echo(result.summary())
        return
    s = result.manifest.stats
    info = result.model_info
    rate = f", {s['docs_per_second']:,.1f} docs/s" if s.get("docs_per_second") else ""
    click.echo(f"{s['documents']:,} documents -> {s['units']:,} vectors ({result.dim}-d {info['name']}, "
               f"{info['backend']} {info['precision']}{rate}) -> {out_dir}")

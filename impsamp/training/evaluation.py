"""Perplexity and bits per byte of a model on evaluation files, per file and macro-averaged.

    metrics = evaluate("runs/lm", ["eval/law.jsonl", "eval/med.jsonl"])
    metrics["per_file"]["/data/eval/law.jsonl"]   # {"ppl": 14.2, "bpb": 1.03, "tokens": ..., "bytes": ...}
    metrics["macro_ppl"], metrics["macro_bpb"]

Each file's documents are tokenized like the training data and joined into one stream that starts
with EOS and has EOS after every document; the stream is scored in non-overlapping windows of
`block_size`, so every token (end-of-document tokens included) is predicted exactly once.
ppl = exp(total nats / predicted tokens); bpb = total nats / (ln 2 * UTF-8 bytes of the documents),
which does not depend on the tokenizer. `per_file` is keyed by each file's absolute path (however it was typed,
so the same files give the same bytes of metrics). Macro averages are the plain means over files of ppl and
of bpb (the paper averages perplexity over domains).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, CorpusError
from ..io import as_specs, open_corpus
from ..io.discovery import absolute_glob
from ..progress import progress_bar
from .tokenizer import LoadedTokenizer


def encode_file(spec: str | Path, tok: LoadedTokenizer, text_field: str = "text") -> tuple[np.ndarray, int]:
    """Token stream [EOS, doc, EOS, doc, EOS, ...] of one corpus spec and its text bytes."""
    corpus = open_corpus(spec, text_field=text_field)
    parts, n_bytes = [np.array([tok.eos_id], dtype=np.int64)], 0
    for batch in corpus.read():
        texts = batch.column("text").to_pylist()
        for text, ids in zip(texts, tok.encode_batch(texts), strict=True):
            parts.append(np.array([*ids, tok.eos_id], dtype=np.int64))
            n_bytes += len(text.encode("utf-8"))
    return np.concatenate(parts), n_bytes


def check_eval_files(eval_files: Sequence[str | Path], text_field: str = "text") -> None:
    """Read every evaluation file through before training (parsing only): a bad row or an empty file is
    then one line at the start (and a new run leaves nothing behind), not an error after the training."""
    for spec in as_specs(eval_files):
        if open_corpus(spec, text_field=text_field).count_documents() == 0:
            raise CorpusError(f"{spec}: no document with text to evaluate")


@torch.no_grad()
def stream_nll(model: torch.nn.Module, ids: np.ndarray, block_size: int, batch_size: int,
               device: torch.device, autocast=None, max_windows: int | None = None, progress: bool = False,
               desc: str = "scoring") -> tuple[float, int]:
    """Summed nats and number of predicted tokens over non-overlapping windows of `ids`.

    `autocast`: None or a zero-argument callable returning a context manager (e.g. torch.autocast).
    `progress`: a bar over the batches, labelled `desc`.
    """
    was_training = model.training
    model.eval()
    n_full = (len(ids) - 1) // block_size
    if max_windows is not None:
        n_full = min(n_full, max_windows)
    starts = [i * block_size for i in range(n_full)]
    total, count = 0.0, 0
    windows = [starts[i:i + batch_size] for i in range(0, len(starts), batch_size)]
    tail = n_full * block_size
    if (max_windows is None or n_full < max_windows) and len(ids) - tail >= 2:
        windows.append([tail])  # the last, shorter window
    for group in progress_bar(progress, desc, "batch", items=windows, leave=False):
        length = min(block_size, len(ids) - 1 - group[0])
        buf = torch.from_numpy(np.stack([ids[s:s + length + 1] for s in group]).astype(np.int64)).to(device)
        with autocast() if autocast is not None else contextlib.nullcontext():
            nll = model(buf[:, :-1], buf[:, 1:], reduction="sum")
        total += float(nll)
        count += buf[:, 1:].numel()
    model.train(was_training)
    return total, count


def eval_specs(eval_files: str | Path | Sequence[str | Path]) -> dict[str, str]:
    """Each evaluation file once, keyed by its absolute path (`ev.jsonl` and `./ev.jsonl` are one file: they
    were counted twice in the macro mean, and named as typed), mapped to the spec as given."""
    specs: dict[str, str] = {}
    for s in as_specs(eval_files):
        specs.setdefault(absolute_glob(s), str(s))
    if not specs:  # (every scorer comes through here: a macro perplexity of 0.0 over no file looked like a result)
        raise ConfigError("give at least one evaluation file (--eval)")
    return specs


def evaluate_model(model: torch.nn.Module, tok: LoadedTokenizer, eval_files: Sequence[str | Path], *,
                   block_size: int, batch_size: int, device: torch.device, autocast=None,
                   text_field: str = "text", progress: bool = False) -> dict[str, Any]:
    per_file: dict[str, dict[str, float]] = {}
    for key, spec in eval_specs(eval_files).items():
        ids, n_bytes = encode_file(spec, tok, text_field)
        nats, n_tok = stream_nll(model, ids, block_size, batch_size, device, autocast, progress=progress,
                                 desc=f"scoring {Path(spec).name}")
        if n_tok == 0:
            raise CorpusError(f"{spec}: no document with text to evaluate")
        per_file[key] = {"ppl": math.exp(nats / n_tok), "bpb": nats / (math.log(2) * max(n_bytes, 1)),
                               "tokens": n_tok, "bytes": n_bytes, "loss": nats / n_tok}
    n = max(len(per_file), 1)
    return {"per_file": per_file, "macro_ppl": sum(v["ppl"] for v in per_file.values()) / n,
            "macro_bpb": sum(v["bpb"] for v in per_file.values()) / n}


def evaluate(run_dir: str | Path, eval_files: Sequence[str | Path], text_field: str = "text", *,
             device: str = "auto", batch_size: int | None = None, weights: str = "model.safetensors",
             progress: bool = False) -> dict[str, Any]:
    """Perplexity and bits per byte of a finished run's model on `eval_files` (see module doc).

    Args:
        run_dir: a complete `impsamp train` output of a dense model (`impsamp.evaluate` takes any trained
            output: also cluster experts and projected networks, each document scored by its own small model).
        eval_files: corpus specs (files, folders, globs); each is one entry of `per_file`.
        weights: "model.safetensors" (final) or "pretrained.safetensors" (before fine-tuning).
    """
    from .result import TrainRun
    from .runtime import resolve_device, resolve_dtype

    run = run_dir if isinstance(run_dir, TrainRun) else TrainRun.load(run_dir)
    eval_files = list(eval_specs(eval_files).values())  # before the model is loaded
    if run.config.arch == "projected":
        raise ConfigError(f"{run_dir} is a projected network: each document is scored by the small model "
                          "of its own cluster; use impsamp.evaluate (or impsamp.evaluate_projected)")
    dev = resolve_device(device)
    model = run.load_model(dev, weights=weights)
    dtype = resolve_dtype(run.config.dtype, dev)
    ctx = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype != torch.float32 else None
    return evaluate_model(model, run.load_tokenizer(), eval_files, block_size=run.model_config.block_size,
                          batch_size=batch_size or run.config.resolved("batch_size"), device=dev,
                          autocast=ctx, text_field=text_field, progress=progress)

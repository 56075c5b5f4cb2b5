"""Token memmaps: a corpus tokenized once, in a stream, with EOS after every document.

    bins = tokenize_corpus(["runs/sel"], tok, cache_dir, "train", val_fraction=0.01)
    batches = Batches(bins["train"], block_size=256, batch_size=16, seed=0)
    x, y = batches.get(step=12, micro=0)          # (16, 256) int64 each, y = x shifted by one

A document goes to the validation memmap by the CRC-32 of its text (`held_out`): for val_fraction = 1/k
when it is a multiple of k (about one in k), for any other fraction when it is below that share of 2^32;
the same for every copy of a text (a resampled selection repeats documents, and a repeat must not sit on
both sides of the split). Batches are random
windows drawn by a generator seeded with (seed, stream, step, micro-step, rank): a batch is a
pure function of its step, so a resumed run reads exactly what an uninterrupted one would. In a
`torchrun` job each rank draws from its own contiguous slice of the tokens.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorpusError
from ..io import open_corpus
from ..io.discovery import data_text_field  # noqa: F401 - where the trainer's callers find it
from ..manifest import atomic_write_json, fingerprint, tmp_name
from .tokenizer import LoadedTokenizer


@dataclass(frozen=True)
class TokenBin:
    """A flat array of token ids on disk."""

    path: str
    dtype: str
    tokens: int
    documents: int
    bytes: int
    """UTF-8 bytes of the documents' text."""

    def array(self) -> np.ndarray:
        if self.tokens == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.tokens,))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class BinWriter:
    def __init__(self, final: Path, dtype: np.dtype):
        self.final, self.dtype = final, dtype
        self.tmp = tmp_name(final)
        self.fh = open(self.tmp, "wb")
        self.tokens = self.documents = self.bytes = 0

    def add(self, ids: list[int], eos: int, n_bytes: int) -> None:
        arr = np.fromiter((*ids, eos), dtype=self.dtype, count=len(ids) + 1)
        arr.tofile(self.fh)
        self.tokens += arr.size
        self.documents += 1
        self.bytes += n_bytes

    def commit(self) -> TokenBin:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.final)
        return TokenBin(str(self.final), self.dtype.name, self.tokens, self.documents, self.bytes)


def _one_in(val_fraction: float) -> int | None:
    """k where val_fraction is 1/k; None for any other share (and for 0)."""
    k = round(1 / val_fraction) if val_fraction > 0 else 0
    return k if k and abs(k * val_fraction - 1) < 1e-9 else None


def held_out(val_fraction: float) -> Callable[[bytes], bool]:
    """Whether a text (its UTF-8 bytes) is held out for validation, by its CRC-32: a multiple of k for
    val_fraction = 1/k, else below val_fraction x 2^32 (a share of 0.4 is 0.4, not 1/round(2.5))."""
    if val_fraction <= 0:
        return lambda raw: False
    if (k := _one_in(val_fraction)) is not None:
        return lambda raw: zlib.crc32(raw) % k == 0
    limit = val_fraction * 2 ** 32
    return lambda raw: zlib.crc32(raw) < limit


def split_key(val_fraction: float) -> dict[str, Any]:
    """What the split depends on, for a token cache's key (a 1/k fraction's key is as before `held_out`)."""
    share = val_fraction > 0 and _one_in(val_fraction) is None
    return {"val_fraction": val_fraction, **({"split": "share"} if share else {})}


def tokenize_corpus(paths: Sequence[str | Path], tok: LoadedTokenizer, cache_dir: Path, name: str, *,
                    text_field: str = "text", val_fraction: float = 0.0) -> dict[str, TokenBin]:
    """Tokenize a corpus into `{name}.bin` and `{name}-val.bin`; reuse them if already made.

    Returns {"train": TokenBin, "val": TokenBin} (val may hold 0 tokens).
    """
    corpus = open_corpus(list(paths), text_field=text_field)
    key = fingerprint({"corpus": corpus.fingerprint(), "tokenizer": tok.tokenizer.to_str(),
                       **split_key(val_fraction)})
    meta = cache_dir / f"{name}.json"
    if meta.exists():
        old = json.loads(meta.read_text())
        if old.get("key") == key and all(Path(b["path"]).exists() for b in old["bins"].values()):
            return {k: TokenBin(**v) for k, v in old["bins"].items()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tok.vocab_size)
    is_val = held_out(val_fraction)
    writers = {"train": BinWriter(cache_dir / f"{name}.bin", dtype),
               "val": BinWriter(cache_dir / f"{name}-val.bin", dtype)}
    for batch in corpus.read():
        texts = batch.column("text").to_pylist()
        for text, ids in zip(texts, tok.encode_batch(texts), strict=True):
            raw = text.encode("utf-8")
            writers["val" if is_val(raw) else "train"].add(ids, tok.eos_id, len(raw))
    bins = {k: w.commit() for k, w in writers.items()}
    if bins["train"].documents == 0:
        raise CorpusError(f"{', '.join(map(str, paths))}: no document with text to train on "
                          f"({corpus.stats.skipped_empty} empty skipped)")
    atomic_write_json(meta, {"key": key, "bins": {k: asdict(b) for k, b in bins.items()}})
    return bins


class TooLittleData(CorpusError):
    """Fewer tokens than one training sequence."""

    def __init__(self, message: str, tokens: int, block_size: int) -> None:
        super().__init__(message)
        self.tokens, self.block_size = tokens, block_size

    def __reduce__(self):  # out of a worker process or Ray task whole
        return type(self), (str(self), self.tokens, self.block_size)


def check_enough(bin: TokenBin, block_size: int, what: str) -> None:
    if bin.tokens < block_size + 1:
        raise TooLittleData(f"the {what} data has {bin.tokens:,} tokens, fewer than one sequence of "
                            f"--block-size {block_size} + 1; give more data or a smaller --block-size (set when the model is pretrained)",
                            bin.tokens, block_size)


class Batches:
    """Seeded random windows of `block_size + 1` tokens from a token memmap."""

    def __init__(self, bin: TokenBin, block_size: int, batch_size: int, seed: int, *, stream: int = 0,
                 rank: int = 0, world: int = 1):
        self.arr = bin.array()
        self.block_size, self.batch_size = block_size, batch_size
        self.seed, self.stream, self.rank = seed, stream, rank
        n = len(self.arr)
        lo, hi = rank * n // world, (rank + 1) * n // world
        if hi - lo < 2 * (block_size + 1):  # too small to slice: every rank draws from everything
            lo, hi = 0, n
        self.lo, self.hi = lo, hi
        self.offsets = np.arange(block_size + 1)

    def get(self, step: int, micro: int = 0, device=None):
        """(x, y) of micro-batch `micro` of `step`, on `device` (one host-to-device copy)."""
        import torch

        rng = np.random.default_rng([self.seed, self.stream, step, micro, self.rank])
        starts = rng.integers(self.lo, self.hi - self.block_size, size=self.batch_size)
        buf = torch.from_numpy(self.arr[starts[:, None] + self.offsets].astype(np.int64))
        if device is not None and torch.device(device).type != "cpu":
            buf = buf.pin_memory().to(device, non_blocking=True)
        return buf[:, :-1], buf[:, 1:]


def load_bins(cache_dir: Path, name: str) -> dict[str, TokenBin]:
    """The bins `tokenize_corpus` wrote (what the other ranks of a torchrun job read)."""
    meta = json.loads((cache_dir / f"{name}.json").read_text())
    return {k: TokenBin(**v) for k, v in meta["bins"].items()}

"""Budgets: the size of every unit's text in the budget's unit, read from the unit tables or counted.

A selection's budget is in what a trainer reads: tokens of the written text (the whole document when
the embedding model read only its beginning, the window with `--windows`), UTF-8 bytes, or documents.
`embed` records each unit's full characters, bytes and tokens (`text_chars`, `text_bytes`,
`text_tokens`). Two cases count again, once per input shard, committed as resumable intermediates:
a `--budget-tokenizer` (tokens of that tokenizer, exact), and embeddings written before the full
lengths existed (lengths read from the corpus; tokens past the embedded span estimated at the span's
tokens per character, as `embed` does).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError
from ..manifest import StageRun
from .writing import unit_texts

logger = logging.getLogger(__name__)

_SPAN_COLUMNS = ["row", "char_start", "char_end", "tokens"]
_LENGTH_COLUMNS = ["text_chars", "text_bytes", "text_tokens"]
COUNT_BATCH = 1024
"""Texts per `encode_batch` call when counting tokens with a budget tokenizer."""


@dataclass
class UnitSizes:
    """One input shard's units: tokens, characters and UTF-8 bytes of the text each one writes."""

    tokens: np.ndarray
    chars: np.ndarray
    bytes: np.ndarray

    def of(self, unit: str) -> np.ndarray:
        """Sizes in a budget unit, float64 (`docs`: one per unit)."""
        if unit == "docs":
            return np.ones(len(self.tokens))
        return (self.tokens if unit == "tokens" else self.bytes).astype(np.float64)

    def totals(self, reps: np.ndarray) -> dict[str, int]:
        """Tokens, characters and bytes of the units selected `reps` times each."""
        return {name: int((reps * getattr(self, name)).sum()) for name in ("tokens", "chars", "bytes")}


class BudgetCounter:
    """name -> that shard's `UnitSizes`, from its unit table or from the counts `prepare` committed."""

    def __init__(self, emb, corpus, corpus_shards: dict[str, Any], windowed: bool,
                 tokenizer_path: str | None = None) -> None:
        self.emb, self.corpus, self.corpus_shards, self.windowed = emb, corpus, corpus_shards, windowed
        self.tokenizer_path = tokenizer_path
        self.in_tables = tokenizer_path is None and all(
            c in emb.shard_columns(n) for n in emb.shard_names[:1] for c in _LENGTH_COLUMNS)
        self.run: StageRun | None = None

    def describe(self) -> dict[str, Any]:
        """How tokens are counted, for the manifest and the data card."""
        model = self.emb.model_info.get("name", "the embedding model")
        if self.tokenizer_path is not None:
            return {"tokens_counted_with": str(Path(self.tokenizer_path).resolve()), "tokenizer_sha256": _sha256(self.tokenizer_path),
                    "tokens_exact": True}
        how = "each window's own tokens" if self.windowed else (
            "exact for documents the model read whole; past its window, estimated at the read span's "
            "tokens per character")
        return {"tokens_counted_with": f"{model} tokenizer", "how": how, "tokens_exact": self.windowed,
                "lengths_from": "unit tables" if self.in_tables else "corpus (embeddings predate full lengths)"}

    def prepare(self, run: StageRun, names: list[str], bar=None) -> None:
        """Count what the unit tables lack, shard by shard, each committed (a killed run resumes)."""
        self.run = run
        if self.in_tables:
            return
        if self.tokenizer_path is None:
            logger.warning("%s predates full document lengths (impsamp < 0.2): reading them from the corpus "
                           "once; embed again to skip this pass", self.emb.path)
        tokenizer = None if self.tokenizer_path is None else load_tokenizer(self.tokenizer_path)
        for name in names:
            key = f"sizes-{name}"
            if not (run.is_done(key) and self._load(name) is not None):  # not fsynced: check it
                sizes = self._count(name, tokenizer)
                tmp = run.tmp_path(f"_sizes/{name}.npy")
                with open(tmp, "wb") as f:
                    np.save(f, np.stack([sizes.tokens, sizes.chars, sizes.bytes]))
                run.forget(key)
                run.commit_shard(key, {f"_sizes/{name}.npy": tmp}, intermediate=True)
            if bar is not None:
                bar.update(1)

    def __getitem__(self, name: str) -> UnitSizes:
        if self.in_tables:
            t = self.emb.shard_table(name, columns=_LENGTH_COLUMNS)
            return UnitSizes(*(t.column(c).to_numpy().astype(np.int64) for c in
                               ("text_tokens", "text_chars", "text_bytes")))
        sizes = self._load(name)
        if sizes is None:
            raise RuntimeError(f"unit sizes of shard {name} were not counted: call prepare() first")
        return sizes

    def _load(self, name: str) -> UnitSizes | None:
        assert self.run is not None
        try:
            arr = np.load(self.run.out_dir / "_sizes" / f"{name}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        units = self.emb.shard_table(name, columns=[]).num_rows
        ok = arr.ndim == 2 and arr.shape == (3, units) and (arr >= 0).all()
        return UnitSizes(arr[0], arr[1], arr[2]) if ok else None

    def _count(self, name: str, tokenizer) -> UnitSizes:
        table = self.emb.shard_table(name, columns=_SPAN_COLUMNS)
        texts = unit_texts(self.corpus, self.corpus_shards[name], table, np.arange(table.num_rows), self.windowed)
        chars = pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64)
        n_bytes = pc.binary_length(texts).to_numpy(zero_copy_only=False).astype(np.int64)
        if tokenizer is not None:
            tokens = count_tokens(tokenizer, texts)
        else:
            read = (table.column("char_end").to_numpy() - table.column("char_start").to_numpy()).astype(np.int64)
            span_tokens = table.column("tokens").to_numpy().astype(np.int64)
            rest = np.maximum(chars - read, 0)
            tokens = span_tokens + np.rint(rest * (span_tokens / np.maximum(read, 1))).astype(np.int64)
        return UnitSizes(tokens, chars, n_bytes)


def load_tokenizer(path: str | Path):
    """A `tokenizers` tokenizer from a tokenizer.json, counting text tokens only (no truncation)."""
    from .._deps import require

    tokenizers = require("tokenizers")
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the Rust library raises plain Exceptions
        raise ConfigError(f"--budget-tokenizer {path}: cannot be read as a tokenizer.json ({str(e)[:160]}); "
                          "give the `tokenizer.json` of a Hugging Face tokenizer") from None
    tok.no_truncation()
    tok.no_padding()
    return tok


def count_tokens(tokenizer, texts: pa.Array | list[str]) -> np.ndarray:
    """Tokens of each text, special tokens not counted."""
    texts = texts.to_pylist() if isinstance(texts, pa.Array) else list(texts)
    out = np.zeros(len(texts), dtype=np.int64)
    for lo in range(0, len(texts), COUNT_BATCH):
        encs = tokenizer.encode_batch(texts[lo:lo + COUNT_BATCH], add_special_tokens=False)
        out[lo:lo + len(encs)] = [len(e.ids) for e in encs]
    return out


def _sha256(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise ConfigError(f"--budget-tokenizer {path}: cannot be read ({e.strerror}); check the path") from None

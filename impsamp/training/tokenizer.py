"""Byte-level BPE tokenizers (HF `tokenizers`): train one on a corpus sample, or load a user's.

    path = train_tokenizer(["runs/sel"], vocab_size=4096, out_file="tok/tokenizer.json")
    tok = load_tokenizer(path)            # -> LoadedTokenizer(tokenizer, eos_id, path)

The BPE is trained on documents spread evenly over the corpus (every k-th one), so a corpus whose
files are sorted by source is sampled from all of them; the same data gives the same file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._deps import require
from ..errors import ConfigError
from ..io import open_corpus
from ..manifest import atomic_write_bytes
from .config import TokenizerError

EOS = "<|endoftext|>"
EOS_CANDIDATES = (EOS, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")
MAX_DOC_CHARS = 20_000
"""Characters of each sampled document the BPE sees (bounds the trainer's memory)."""


@dataclass(frozen=True)
class LoadedTokenizer:
    tokenizer: Any
    """A `tokenizers.Tokenizer`."""
    eos_id: int
    path: Path

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


def _sample_texts(paths: Sequence[str | Path], sample_docs: int, text_field: str) -> Iterator[str]:
    corpus = open_corpus(list(paths), text_field=text_field)
    stride = max(1, corpus.n_rows // sample_docs)
    taken = 0
    for batch in corpus.read():
        texts = batch.column("text").to_pylist()
        for i, text in zip(batch.column("doc_index").to_pylist(), texts, strict=True):
            if i % stride == 0 and taken < sample_docs:
                taken += 1
                yield text[:MAX_DOC_CHARS]
        if taken >= sample_docs:
            return


def train_tokenizer(corpus_paths: Sequence[str | Path] | str | Path, vocab_size: int, out_file: str | Path,
                    sample_docs: int = 50_000, text_field: str = "text") -> Path:
    """Train a byte-level BPE with an `<|endoftext|>` token on a sample of a corpus; write tokenizer.json.

    Args:
        corpus_paths: any corpus `impsamp.io.open_corpus` reads (files, folders, globs, selections).
        vocab_size: target vocabulary, special token included (small data may stop short of it).
        out_file: where to write the `tokenizer.json` (atomically).
        sample_docs: documents to train on, spread evenly over the corpus.

    Returns:
        `out_file` as a Path.
    """
    tk = require("tokenizers")
    if vocab_size < 260:
        raise ConfigError(f"vocab_size must be >= 260 (256 bytes + special tokens), got {vocab_size}")
    paths = [corpus_paths] if isinstance(corpus_paths, (str, Path)) else list(corpus_paths)
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    tok.train_from_iterator(_sample_texts(paths, sample_docs, text_field), trainer=trainer)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, tok.to_str(pretty=True).encode())
    return out


def load_tokenizer(path: str | Path) -> LoadedTokenizer:
    """Load a `tokenizer.json` and find its end-of-text token."""
    tk = require("tokenizers")
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"--tokenizer {path}: no such file; name a tokenizer.json (HF tokenizers)")
    try:
        tok = tk.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise TokenizerError(f"{path}: not a HF tokenizers tokenizer.json ({why})") from e
    # a tokenizer made for an encoder (a BERT's) may cut or pad every text to its window: the LM reads whole
    # documents, and a cut one would score fewer tokens than its bytes (bits per byte too low)
    tok.no_truncation()
    tok.no_padding()
    vocab = tok.get_vocab(with_added_tokens=True)
    for name in EOS_CANDIDATES:
        if name in vocab:
            return LoadedTokenizer(tok, vocab[name], path)
    raise TokenizerError(f"{path} has no end-of-text token (one of {', '.join(EOS_CANDIDATES)}); add one "
                         "as a special token, or let impsamp train a tokenizer (leave out --tokenizer)")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

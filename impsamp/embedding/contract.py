"""What an embedder gives (`EmbeddedBatch`) and is (`Embedder`), and the text-span helpers they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class EmbeddedBatch:
    """Units embedded from a list of texts, ordered by (text_index, window).

    Every text gets at least one unit; `text_index` says which text a unit comes from.
    """

    vectors: np.ndarray
    """(n_units, d) float32, L2-normalised."""
    text_index: np.ndarray
    """(n_units,) int64."""
    window: np.ndarray
    """(n_units,) int32: 0, 1, ... within a text (always 0 without windows)."""
    tokens: np.ndarray
    """(n_units,) int32: text tokens of the unit (special tokens not counted)."""
    char_start: np.ndarray
    """(n_units,) int64: first character of the text the unit covers."""
    char_end: np.ndarray
    """(n_units,) int64: end (exclusive) of the span the unit covers."""

    @classmethod
    def one_per_text(cls, vectors: np.ndarray, texts: Sequence[str],
                     tokens: Sequence[int] | None = None) -> EmbeddedBatch:
        """The batch of an encoder that embeds each whole text as one unit."""
        n = len(texts)
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
        return cls(np.asarray(vectors, dtype=np.float32), np.arange(n, dtype=np.int64),
                   np.zeros(n, np.int32), np.asarray(tokens if tokens is not None else np.zeros(n), np.int32),
                   np.zeros(n, np.int64), lengths)


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into unit vectors.

    `identity` goes into the manifest; two embedders are the same model iff their identities have
    the same `name` and `weights_sha256` (see `same_model`). Wrap a plain encoder returning
    (n, d) vectors with `EmbeddedBatch.one_per_text(vectors, texts)`.
    """

    name: str
    dim: int
    identity: dict[str, Any]

    def embed_texts(self, texts: Sequence[str]) -> EmbeddedBatch:
        """Embed non-empty texts; vectors are (n_units, dim) float32, L2-normalised."""
        ...


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two embedder identities name the same model and weights."""
    return (a.get("name"), a.get("weights_sha256")) == (b.get("name"), b.get("weights_sha256"))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


WORD_SNAP = 64
"""How far back (characters) a window's text may start to begin at its first word's first character."""


def window_spans(starts: list[int], n_chars: int, truncated_end: int | None, text: str | None = None
                 ) -> tuple[list[int], list[int]]:
    """Windows tile [0, n_chars): window w starts at its first token (window 0 at 0), ends where the next
    starts. A single truncated unit ends at `truncated_end`. With `text`, a window whose first token is inside a
    word (a subword) starts at that word's first character instead, found within `WORD_SNAP` characters and
    past the window before: the text a selection writes holds whole words (the vectors are the tokens')."""
    starts = [0] + list(starts[1:])
    if text is not None:
        for w in range(1, len(starts)):
            b, floor = starts[w], max(starts[w - 1] + 1, starts[w] - WORD_SNAP)
            if b >= len(text) or text[b].isspace() or b < floor:  # on the space before a word (sentencepiece's
                continue                                          # offsets): a word's start already
            while b > floor and not text[b - 1].isspace():
                b -= 1
            if text[b - 1].isspace():  # a word's start (else no space near: the token's start stays)
                starts[w] = b
    ends = starts[1:] + [n_chars if truncated_end is None else truncated_end]
    return starts, ends

"""A fast deterministic embedder for unit tests and smoke runs (no model)."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..errors import ConfigError
from .contract import EmbeddedBatch, l2_normalize, window_spans

_WORD = re.compile(r"\S+")


@lru_cache(maxsize=1 << 18)
def _bucket_hash(key: str) -> int:
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class HashingEmbedder:
    """Offline and deterministic: hashed word unigram + bigram counts, L2-normalised (DSIR's features).

    Tokens are whitespace-separated words (lowercased); `max_tokens` words per unit, truncated or in
    windows like the transformer embedders. Selected with `--model hashing:256`; used by the tests.
    """

    VERSION = "impsamp.HashingEmbedder/v1 blake2b-64 unigram+bigram"

    def __init__(self, dim: int = 256, *, max_tokens: int = 256, windows: bool = False):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ConfigError(f"hashing:DIM needs an integer DIM >= 2, got {dim!r}")
        self.dim, self.max_tokens, self.windows = dim, max_tokens, windows
        self.name = f"hashing:{dim}"
        weights = hashlib.sha256(f"{self.VERSION} dim={dim}".encode()).hexdigest()
        self.identity = {"name": self.name, "weights_sha256": weights, "source": "built-in", "dim": dim,
                         "max_tokens": max_tokens, "windows": windows, "backend": "hashing", "quantize": None,
                         "precision": "float32", "pooling": "sum"}

    def _vector(self, words: list[str]) -> np.ndarray:
        keys = words + [a + "\x00" + b for a, b in zip(words, words[1:], strict=False)]
        idx = np.fromiter((_bucket_hash(k) % self.dim for k in keys), dtype=np.int64, count=len(keys))
        return np.bincount(idx, minlength=self.dim).astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> EmbeddedBatch:
        vecs, owner, window, tokens, starts_all, ends_all = [], [], [], [], [], []
        for i, text in enumerate(texts):
            n = self.max_tokens
            # truncating: only the first n words (+1 to know it was cut) are looked at, so a 50 MB
            # document costs what a short one does
            found = _WORD.finditer(text) if self.windows else itertools.islice(_WORD.finditer(text), n + 1)
            spans = [(m.start(), m.end()) for m in found]
            words = [text[a:b].lower() for a, b in spans]
            pieces = [range(s, min(s + n, len(words))) for s in range(0, max(len(words), 1), n)]
            if not self.windows:
                pieces = pieces[:1]
            truncated = None if self.windows or len(words) <= n else spans[n - 1][1]
            starts, ends = window_spans([spans[p.start][0] if len(p) else 0 for p in pieces], len(text), truncated)
            for w, p in enumerate(pieces):
                vecs.append(self._vector(words[p.start:p.stop]))
                owner.append(i), window.append(w), tokens.append(len(p))
            starts_all += starts
            ends_all += ends
        vectors = l2_normalize(np.stack(vecs)) if vecs else np.zeros((0, self.dim), np.float32)
        return EmbeddedBatch(vectors, np.asarray(owner, np.int64), np.asarray(window, np.int32),
                             np.asarray(tokens, np.int32), np.asarray(starts_all, np.int64),
                             np.asarray(ends_all, np.int64))

"""Per-shard helpers: views of the embedding's unit tables and arrays, read from disk on each access (nothing kept)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from ..histograms import Histogram


class PerShard(Sequence):
    """A per-shard array, read by `load(shard name)` on each access (nothing kept)."""

    def __init__(self, names: Sequence[str], load: Callable[[str], np.ndarray]) -> None:
        self.names, self.load = list(names), load

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self.load(self.names[i])


class ShardTables:
    """name -> that embedding shard's unit table, read on each access (nothing kept)."""

    def __init__(self, emb) -> None:
        self.emb = emb

    def __getitem__(self, name: str) -> pa.Table:
        return self.emb.shard_table(name, columns=_ROW_COLUMNS)

    def column(self, name: str, column: str) -> np.ndarray:
        return self.emb.shard_table(name, columns=[column]).column(column).to_numpy()


_ROW_COLUMNS = ["doc_index", "id", "file", "row", "window", "char_start", "char_end", "tokens", "chars"]
"""What writing a selected unit needs from the unit table."""


def hist_key(h: Histogram) -> str:
    from ..manifest import fingerprint

    return fingerprint(np.round(h.probs(), 12).tolist())

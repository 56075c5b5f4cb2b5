"""Which domain a document is from, where the corpus says so (a `domain` column or field): `compare`
reports each selection's domain shares with it, on the bundled corpus and on any labelled pool."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def domain_column(corpus) -> np.ndarray | None:
    """The `domain` column of the generic corpus by document index, if it has one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: list[Any] = []
    for f in corpus.files:
        if f.format == "parquet":
            schema = pq.ParquetFile(f.path).schema_arrow
            if "domain" not in schema.names:
                return None
            out.extend(pq.read_table(f.path, columns=["domain"]).column("domain").to_pylist())
        elif f.format == "jsonl":
            from .io import open_binary

            with open_binary(Path(f.path)) as fh:
                for line in fh:
                    try:
                        out.append(json.loads(line).get("domain") if line.strip() else None)
                    except ValueError:
                        out.append(None)
            if all(d is None for d in out):
                return None
        else:
            with pa.memory_map(f.path) as src:
                try:
                    t = pa.ipc.open_file(src).read_all()
                except pa.ArrowInvalid:
                    t = pa.ipc.open_stream(pa.memory_map(f.path)).read_all()
            if "domain" not in t.column_names:
                return None
            out.extend(t.column("domain").to_pylist())
    return np.asarray(out, dtype=object)


def majority_domain(corpus) -> str | None:
    """The most frequent `domain` of a corpus (the target's), None without the column."""
    d = domain_column(corpus)
    if d is None or not len(d):
        return None
    values, counts = np.unique(d[d != None].astype(str), return_counts=True)  # noqa: E711
    return str(values[np.argmax(counts)]) if len(values) else None


def domain_shares(sel, domains: np.ndarray) -> dict[str, float]:
    """Each domain's share of a selection's rows (`domains`: `domain_column` of the generic corpus)."""
    idx = sel.to_table().column("doc_index").to_numpy()
    values, counts = np.unique(domains[idx].astype(str), return_counts=True)
    return {str(v): float(c / counts.sum()) for v, c in zip(values, counts)}

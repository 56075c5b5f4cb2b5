"""`Selection`: the handle on a finished resample output (a `datasets` folder and its manifest)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..manifest import Manifest, read_manifest
from .config import SELECTION_SCHEMA


@dataclass(frozen=True, repr=False)
class Selection:
    """A finished `resample` directory: its data files (`data_files`, read them with `to_table`,
    `datasets.load_from_disk(path)` or any Arrow/Parquet/JSONL reader) and what the draw did (`stats`)."""

    path: Path
    manifest: Manifest

    def __repr__(self) -> str:
        s = self.stats
        return (f"Selection({str(self.path)!r}, rows={s.get('rows')}, tokens={s.get('tokens')}, "
                f"format={self.manifest.config.get('format')!r})")

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        manifest = read_manifest(path, expect_stage="resample")  # first: it checks `path` is a path
        return cls(Path(path).absolute(), manifest)  # absolute: the handle outlives an os.chdir

    @property
    def data_files(self) -> list[Path]:
        """The selection's shards, in order (`data-00000-of-0000N.arrow`, `.parquet` or `.jsonl`)."""
        return [self.path / o.path for o in self.manifest.outputs if o.path.startswith("data-")]

    @property
    def stats(self) -> dict[str, Any]:
        """What the draw did, as the data card reports it: rows, tokens, bytes, unique_documents,
        repetition_rate, kl_target_generic and kl_target_selected (KL of the target's cluster histogram
        from the generic's and from the selection's), effective_sample_size (None for
        `ngram` and `classifier`, which draw by no cluster weights), budget, max_repeat and
        spilled_units (the repeat cap and what it moved to neighbouring clusters), selection_flops,
        seconds, ...; `sorted(sel.stats)` lists them all."""
        return self.manifest.stats

    def to_table(self) -> pa.Table:
        """All rows (small selections only: this loads everything)."""
        fmt = self.manifest.config["format"]
        if fmt == "arrow":
            tables = []
            for f in self.data_files:
                with pa.memory_map(str(f)) as src:
                    tables.append(pa.ipc.open_stream(src).read_all())
            return pa.concat_tables(tables)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pa.concat_tables([pq.read_table(f) for f in self.data_files])
        rows = [json.loads(line) for f in self.data_files for line in f.read_text(encoding="utf-8").splitlines()
                if line.strip()]
        return pa.Table.from_pylist(rows, schema=SELECTION_SCHEMA)

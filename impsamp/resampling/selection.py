"""`Selection`: the handle on a finished resample output (a `datasets` folder and its manifest)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..manifest import Manifest, read_manifest
from .config import SELECTION_SCHEMA


@dataclass(frozen=True)
class Selection:
    """A finished `resample` directory."""

    path: Path
    manifest: Manifest

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        path = Path(path)
        return cls(path, read_manifest(path, expect_stage="resample"))

    @property
    def data_files(self) -> list[Path]:
        return [self.path / o.path for o in self.manifest.outputs if o.path.startswith("data-")]

    @property
    def stats(self) -> dict[str, Any]:
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

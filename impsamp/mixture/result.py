"""`Experts`: a finished `experts` directory, its grouping, and each group's expert as a `TrainRun`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..clustering.groups import Grouping
from ..costs import Costs
from ..errors import StageError
from ..manifest import Manifest, read_manifest

GROUPS = "groups.json"
TOKENIZER = "tokenizer.json"


def expert_dir(g: int) -> str:
    return f"experts/g{g:03d}"


def data_dir(g: int) -> str:
    return f"data/g{g:03d}"


class Experts:
    """A complete `impsamp experts` output."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path, self.manifest = path, manifest
        self.grouping = Grouping.from_dict(json.loads((path / GROUPS).read_text()))

    @classmethod
    def load(cls, path: str | Path) -> Experts:
        manifest = read_manifest(path, expect_stage="experts")  # first: it checks `path` is a path
        return cls(Path(path).absolute(), manifest)  # absolute: the handle outlives an os.chdir

    def __repr__(self) -> str:
        return f"Experts({str(self.path)!r}, groups={self.n_groups})"

    @property
    def n_groups(self) -> int:
        return self.grouping.n_groups

    @property
    def costs(self) -> Costs:
        """Generic pretraining of all experts; parameters stored (all) and active (one)."""
        return Costs.from_dict(self.manifest.stats["costs"])

    @property
    def per_group(self) -> list[dict[str, Any]]:
        return list(self.manifest.stats["per_group"])

    def expert_path(self, g: int) -> Path:
        if not 0 <= g < self.n_groups:
            raise StageError(f"{self.path} has experts 0..{self.n_groups - 1}, not {g}")
        return self.path / expert_dir(g)

    def expert(self, g: int):
        from ..training import TrainRun

        return TrainRun.load(self.expert_path(g))

    def clusters(self):
        """The clustering the groups were made of, checked to be the same run."""
        from ..clustering import Clusters

        rec = self.manifest.inputs["clusters"]
        clu = Clusters.load(rec["path"])
        if clu.manifest.fingerprint != rec["fingerprint"]:
            raise StageError(f"{rec['path']} is not the clustering {self.path} was made of (it was "
                             "rebuilt since); rebuild the experts or restore the clustering")
        return clu

    def groups_of(self, leaves: np.ndarray) -> np.ndarray:
        """Group of each leaf cluster id."""
        return self.grouping.leaf_group[np.asarray(leaves, dtype=np.int64)]

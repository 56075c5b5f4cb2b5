"""`Clusters`: the handle on a finished cluster output (tree, assignments, counts, `assign`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._deps import require
from ..errors import StageError
from ..manifest import Manifest, read_manifest
from .checks import check_vectors
from .config import BATCH_ROWS, ClusterConfig
from .kmeans import use_gpu
from .tree import read_tree

if TYPE_CHECKING:
    from ..embedding import Embeddings


class Clusters:
    """A finished `cluster` stage directory: centroids per level, per-shard assignments, counts."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest
        from ..config import from_dict

        self.config: ClusterConfig = from_dict(ClusterConfig, manifest.config,
                                               source=str(path / "manifest.json"))
        self._tree = read_tree(path, int(manifest.stats["n_levels"]), self.config.spherical)
        self._checked: set[str] = set()  # shards whose assignments were checked (`shard_assign`)

    @classmethod
    def load(cls, path: str | Path) -> Clusters:
        """Open a complete `impsamp cluster` output.

        Raises:
            StageError: the directory is missing, incomplete, damaged or of another stage.
        """
        manifest = read_manifest(path, expect_stage="cluster")  # first: it checks `path` is a path
        return cls(Path(path).absolute(), manifest)  # absolute: the handle outlives an os.chdir

    def __repr__(self) -> str:
        return f"Clusters({str(self.path)!r}, n_leaves={self.n_leaves}, levels={self.levels})"

    @property
    def n_leaves(self) -> int:
        return len(self._tree.centroids[-1])

    @property
    def n_levels(self) -> int:
        return self._tree.n_levels

    @property
    def levels(self) -> list[int]:
        """Number of nodes at each level (the last is n_leaves)."""
        return [len(c) for c in self._tree.centroids]

    @property
    def dim(self) -> int:
        return int(self._tree.centroids[0].shape[1])

    @property
    def centroids(self) -> np.ndarray:
        """(n_leaves, d) float32 leaf centroids."""
        return self._tree.centroids[-1]

    @property
    def parents(self) -> list[np.ndarray]:
        """Per level j: (n_j,) int32 parent at level j-1 of each node; level 0 is all -1 (no parent)."""
        return list(self._tree.parents)

    @property
    def shard_names(self) -> list[str]:
        return [s["name"] for s in self.manifest.stats["shards"]]

    def assign(self, vectors: np.ndarray, *, batch_size: int = BATCH_ROWS,
               device: str | None = None) -> np.ndarray:
        """Node ids of new L2-normalised vectors, by the same descent rule as the generic corpus.

        Args:
            vectors: (n, d) float (float16 embeddings are cast to float32).
            batch_size: rows per faiss search.
            device: 'cpu', 'gpu' or 'auto' [default: the device the clustering was made on, when present].

        Returns:
            (n, n_levels) int32; column j = node at level j, the last column = leaf id.

        Raises:
            StageError: wrong dimension, NaN, or not L2-normalised.
        """
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise StageError(f"vectors of shape {vectors.shape} cannot be assigned to {self.path}: its "
                             f"centroids have dimension {self.dim}; embed them with the model of the "
                             "clustered corpus")
        if device is None:
            device = "auto" if self.manifest.stats.get("device") == "gpu" else "cpu"
        gpu = use_gpu(device)
        out = np.empty((len(vectors), self.n_levels), dtype=np.int32)
        for lo in range(0, len(vectors), batch_size):
            x = np.asarray(vectors[lo:lo + batch_size], dtype=np.float32)
            check_vectors(x, "vectors to assign:", lo)
            out[lo:lo + len(x)], _ = self._tree.descend(x, gpu=gpu)
        return out

    def shard_assign(self, name: str) -> np.ndarray:
        """(n_i, n_levels) int32 assignments of embedding shard `name`, memory-mapped."""
        if name not in self.shard_names:
            raise StageError(f"{self.path} has no shard {name!r}; shards: {', '.join(self.shard_names[:5])}"
                             + (" ..." if len(self.shard_names) > 5 else ""))
        path = self.path / f"assign-{name}.npy"
        damaged = (f"the cluster output is damaged; rerun `impsamp cluster` with --overwrite (`impsamp info --verify "
                   f"{self.path}` checks every file against its sha256)")
        try:
            a = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise StageError(f"{path} cannot be read ({e}): {damaged}") from None
        if a.ndim != 2 or a.shape[1] != self.n_levels or a.dtype.kind not in "iu":
            raise StageError(f"{path} holds a {a.dtype} array of shape {a.shape}, not (rows, {self.n_levels}) "
                             f"cluster ids: {damaged}")
        if name not in self._checked:  # once per shard (a resample reads each several times)
            for j, k in enumerate(self.levels):
                col = a[:, j]  # a column at a time: reductions over a strided column are far faster
                lo, hi = (int(col.min()), int(col.max())) if len(col) else (0, 0)
                if lo < 0 or hi >= k:
                    raise StageError(f"{path} holds cluster id {lo if lo < 0 else hi} at level {j}, "
                                     f"outside 0..{k - 1}: {damaged}")
            self._checked.add(name)
        return a

    def leaf_assign(self) -> np.ndarray:
        """(n,) int32 leaf id of every embedding row, shards concatenated in embedding order."""
        return np.concatenate([np.asarray(self.shard_assign(s)[:, -1]) for s in self.shard_names])

    def counts(self, level: int = -1) -> dict[str, np.ndarray]:
        """Per node of `level` (default: leaves): 'documents' (embedding rows) and 'tokens', int64."""
        pq = require("pyarrow.parquet")
        j = range(self.n_levels)[level]
        with pq.ParquetFile(self.path / "counts.parquet") as f:  # (read_table goes through pyarrow.dataset)
            table = f.read()
        mask = table.column("level").to_numpy() == j
        return {key: table.column(key).to_numpy()[mask] for key in ("documents", "tokens")}

    def check_made_from(self, emb: Embeddings) -> None:
        """Raise StageError unless this clustering was fitted on `emb` (an embeddings/clusters pair)."""
        recorded = self.manifest.inputs.get("embeddings", {})
        if recorded.get("fingerprint") != emb.manifest.fingerprint:
            if recorded.get("path") == str(Path(emb.path).resolve()):  # the same folder, embedded again since
                raise StageError(f"{self.path} was clustered from an earlier run in {emb.path}, which has been "
                                 "embedded again since; run `impsamp cluster` on it again")
            raise StageError(f"{self.path} was not clustered from {emb.path} (its manifest records "
                             f"{recorded.get('path')}); pass the matching pair")

    def embeddings(self) -> Embeddings:
        """Reopen the embeddings this clustering was made from, checking they are the same run.

        Raises:
            StageError: they are missing or were rebuilt since (fingerprint differs).
        """
        from ..embedding import Embeddings

        rec = self.manifest.inputs["embeddings"]
        emb = Embeddings.load(rec["path"])
        if emb.manifest.fingerprint != rec["fingerprint"]:
            raise StageError(f"{rec['path']} is not the embeddings {self.path} was made from (fingerprint "
                             f"{emb.manifest.fingerprint[:19]}..., recorded {rec['fingerprint'][:19]}...); "
                             f"rerun `impsamp cluster {rec['path']} --out {self.path} --overwrite`")
        return emb

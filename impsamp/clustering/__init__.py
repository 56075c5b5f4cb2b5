"""Cluster an `embed` output with faiss k-means, flat or hierarchical (CRISP), fitted once on a sample.

    impsamp cluster runs/emb --out runs/clusters --k 1024           # flat spherical k-means
    impsamp cluster runs/emb --out runs/clusters --levels 32,32     # 2-level tree, up to 1,024 leaves

    clusters = impsamp.cluster("runs/emb", "runs/clusters", ClusterConfig(levels=(32, 32)))
    ids = clusters.assign(target_vectors)        # (n, n_levels) int32; leaf id = ids[:, -1]

The fit uses a seeded sample of the vectors (held in memory); then every vector of every embedding
shard is assigned in a streaming pass (bounded memory, one committed file per shard, resumable).

Output directory (the `cluster` stage contract):

    centroids.npy               (n_leaves, d) float32 leaf centroids (flat: the k centroids)
    centroids-level{j}.npy      (n_j, d) float32 node centroids of level j (hierarchy only; level 0 = top)
    parents-level{j}.npy        (n_j,) int32 parent (a level j-1 node) of each level-j node (hierarchy, j>=1)
    assign-{shard}.npy          (n_i, n_levels) int32 per embedding shard, row-aligned with it;
                                column j = node id at level j, last column = leaf id
    counts.parquet              one row per node of every level: level, node, parent (-1 at level 0),
                                documents (embedding rows), tokens (sum of the rows' `text_tokens`,
                                their whole texts')
    manifest.json               config, inputs (embeddings path + fingerprint + model), stats

Hierarchy: the children of a node are fitted on the sample points that the node holds under the
same descent rule `Clusters.assign` uses, so generic and target vectors are assigned identically.
A node with fewer sample points than its level's k gets min(k, points) children (a single child,
copying the node's centroid, when it holds at most one point); node ids stay dense 0..n_j-1 and
the children of a node are contiguous, in the order of their parents.

Modules: `config` (ClusterConfig), `kmeans` (faiss primitives, seeded k-means, sampling), `tree` (the
centroid tree, flat or hierarchical, and its files), `checks` (input checks), `stage` (`cluster`) and
`result` (the `Clusters` handle).
"""

from __future__ import annotations

from .config import DEVICES, SLOW_SHARDS_ENV, ClusterConfig
from .kmeans import fit_kmeans, sample_rows
from .result import Clusters
from .stage import cluster

__all__ = ["DEVICES", "SLOW_SHARDS_ENV", "ClusterConfig", "Clusters", "cluster", "fit_kmeans", "sample_rows"]

"""Inside each cluster's quota: which documents, and how often (`--within`, `--max-repeat`).

`match` fixes how many draws each cluster gets from the target's histogram: that outer budget is what
makes clustered importance sampling robust, and it stays. Inside a cluster:

- `--within uniform` (the seed paper): every document of the cluster equally likely; what `auto` picks
  when a target is a saved histogram (no documents to weigh);
- `--within knn`: document i weighted by its closeness to the target, w_i = exp((s_i - 1) / tau), with
  s_i the cosine similarity of its vector to the nearest target document's (exact search, faiss) and
  tau = `--within-temperature` (smaller: sharper; tau -> infinity is `uniform`); what `auto` picks when
  a target is given as its `embed` output (vectors, no text);
- `--within knn+ngram`: that closeness and the unit's DSIR-style hashed n-gram log-ratio (target against
  pool, `impsamp.selectors`), each standardised over the pool's units, summed and divided by 5 tau: the
  embedding says what a document is about, the n-grams how it is written. Measured 1.2% lower
  macro perplexity than `knn` at 40,000 tokens and level at 200,000 (three seeds each, BENCHMARKS.md
  `paper`);
- `--within ngram-classifier` (what `auto` picks when every target is an in-domain corpus): the log-odds
  of a logistic regression on the units' hashed n-grams (log(1 + count), rows L2-normalised), the
  target's documents against the pool's units, cross-fitted in 5 folds (no unit scored by a model fitted
  on it; at most 5,000 units fitted on, a seeded sample of a larger pool), standardised over the pool
  and divided by 2 tau. Where the embedding cannot tell two domains apart inside a shared cluster, the
  classifier learns the n-grams that do: at 40,000 tokens it put 94.9% of the selected tokens on the
  target domain against 89.8% for `knn` and 92.9% for `knn+ngram` (three seeds, BENCHMARKS.md
  `within_purity`), and it measured 1.7% lower macro perplexity than `knn` at both 40,000 and 200,000
  tokens (three seeds each; `paper`). Both n-gram options need every unit's hashed n-grams, like
  `--method ngram`: hashed once per embedding and kept (`ngram_features`);
- `--within package.module:function`: your own document weights, `function(target_vectors (m, d),
  vectors (n, d)) -> (n,)` positive finite numbers for one input shard's units (checked; relative
  inside each cluster: the cluster's quota is drawn whatever their scale).

Either way no document is drawn more than `--max-repeat` times: a cluster's draws are spread in
proportion to w_i with each document's expected count capped (water-filling), rounded to whole draws
with a seeded draw of the remainders. With `--within-repeats even` (the default) the cap inside a
cluster is also the fewest repeats that hold its quota (1 while the quota is smaller than the cluster):
the weights pick which documents are drawn rather than how often; `weighted` lets the weights alone
decide, up to the cap (measured worse: fewer unique documents, BENCHMARKS.md `paper`). What a cluster
cannot hold under the cap (fewer than draws / max_repeat documents) spills to the clusters nearest to
it by centroid that still have room, nearest first, and the selection's diagnostics say how much
spilled.

`--within-top F` bends the quotas toward the documents the weights rank first: only the pool's units of
highest weight, over the clusters the target weighs, that together hold F / R times the budget may be
drawn (`top_units`), each up to R = `--max-repeat` times (1 when not given); a cluster's room is what its
eligible units hold, R times, and its quota past that spills like the repeat cap's. Where two domains
share a cluster, the target's quota there no longer has to be filled with its neighbour's documents once
the target-like ones run out. Where the target's text in the pool is less than the budget, R > 1 keeps
the selection on it (BENCHMARKS.md `paper`, 0.7.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, WeightingError
from ..weighting import load_function
from .streams import WITHIN, shard_rng

HYBRID_SCALE = 5.0
"""`knn+ngram`: the summed standardised score is divided by HYBRID_SCALE * tau, so at the default tau
(0.05) a unit one standard deviation above another weighs e^4 ~ 55 times more (the setting measured)."""
CLASSIFIER_SCALE = 2.0
"""`ngram-classifier`: the standardised log-odds are divided by CLASSIFIER_SCALE * tau, so at the default
tau a unit one standard deviation above another weighs e^10 times more (the setting measured)."""


OUTSIZED = 4.0
"""A unit longer than this many times its cluster's share of a token or byte budget is not drawn
(`planning._drawable_units`): taken, it would put that many times the target's share in the cluster.
Passing over every unit longer than the share instead lowered the selection's share on target at 40,000 tokens (94.9% against 95.9%, 8 domains x 3 seeds:
the target's documents are often a little longer than a small quota)."""


def cap_draws(q: np.ndarray, total: float, limit: np.ndarray, size: np.ndarray | None = None) -> np.ndarray:
    """Expected counts proportional to q, never above `limit` (water-filling), holding `total` in all:
    sum(counts * size) = total, `size` each item's size in the budget's unit (default 1: a count)."""
    size = np.ones_like(q, dtype=np.float64) if size is None else np.asarray(size, dtype=np.float64)
    expected = np.zeros_like(q, dtype=np.float64)
    free = (q > 0) & (size > 0)
    remaining = float(total)
    while remaining > 1e-9 * max(total, 1.0) and free.any():
        mass = q[free] * size[free]
        add = np.minimum(remaining * q[free] / mass.sum(), limit[free] - expected[free])
        expected[free] += add
        remaining -= float((add * size[free]).sum())
        free &= expected < limit - 1e-9
    return expected


def knn_similarity(target_vectors: np.ndarray, emb, names: Sequence[str]) -> list[np.ndarray]:
    """Per input shard, each unit's cosine similarity to the nearest target vector (exact search; chosen and
    scored in float64, `clustering.kmeans.nearest`: the same on any machine's thread count)."""
    from ..clustering.kmeans import nearest

    tvec = np.ascontiguousarray(target_vectors, dtype=np.float32)
    return [nearest(np.ascontiguousarray(emb.shard_vectors(name), dtype=np.float32), tvec, spherical=True)[1]
            for name in names]


def knn_log_weights(target_vectors: np.ndarray, emb, names: Sequence[str], temperature: float
                    ) -> list[np.ndarray]:
    """Per input shard, each unit's log-weight (s - 1) / tau: s its cosine to the nearest target vector."""
    return [(s - 1.0) / temperature for s in knn_similarity(target_vectors, emb, names)]


def standardise(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Per-shard scores minus their mean over all the pool's units, over their standard deviation (so the
    weights do not depend on how the pool is cut into shards)."""
    flat = np.concatenate(parts) if parts else np.zeros(0)
    mean, sd = (float(flat.mean()), float(flat.std())) if len(flat) else (0.0, 1.0)
    return [(p - mean) / max(sd, 1e-12) for p in parts]


def knn_ngram_log_weights(similarity: list[np.ndarray], ngram: list[np.ndarray], temperature: float
                          ) -> list[np.ndarray]:
    """`--within knn+ngram`: per input shard, (z(s) + z(g)) / (HYBRID_SCALE * tau), s the nearest-target
    cosine and g the DSIR-style n-gram log-ratio of each unit, z standardised over all the pool's units."""
    scale = HYBRID_SCALE * temperature
    return [(zs + zg) / scale for zs, zg in zip(standardise(similarity), standardise(ngram))]


def classifier_log_weights(log_odds: list[np.ndarray], temperature: float) -> list[np.ndarray]:
    """`--within ngram-classifier`: per input shard, z(o) / (CLASSIFIER_SCALE * tau), o each unit's log-odds
    under the n-gram classifier, z standardised over all the pool's units."""
    return [z / (CLASSIFIER_SCALE * temperature) for z in standardise(log_odds)]


def within_log_weights(spec: str, target_vectors: np.ndarray, emb, names: Sequence[str], temperature: float
                       ) -> list[np.ndarray]:
    """Per input shard, each unit's log-weight inside its cluster: `knn`, or the user's function
    (`knn+ngram` needs the units' text: `knn_ngram_log_weights`)."""
    if spec == "knn":
        return knn_log_weights(target_vectors, emb, names, temperature)
    fn = load_function(spec, "--within")
    tvec = np.array(target_vectors, dtype=np.float32)  # a read-only copy: one shard's call cannot change the next's
    tvec.flags.writeable = False
    out = []
    for name in names:
        v = np.asarray(emb.shard_vectors(name), dtype=np.float32)
        try:
            w = fn(tvec, v)
        except (Exception, SystemExit) as e:  # the user's code: any error is theirs, named in one line
            raise WeightingError(f"--within {spec} raised {type(e).__name__}: {e}") from None
        out.append(np.log(check_document_weights(w, len(v), spec, name)))
    return out


def check_document_weights(w, n: int, spec: str, shard: str) -> np.ndarray:
    """A document-weight function's output for one shard: n positive finite numbers, else a one-line error."""
    try:
        if np.iscomplexobj(w):  # (numpy would drop the imaginary part with a warning)
            raise TypeError("complex numbers")
        w = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise WeightingError(f"--within {spec} returned {type(w).__name__}, not numbers ({e})") from None
    where = f"--within {spec} on embedding shard {shard}"
    if w.shape != (n,):
        raise WeightingError(f"{where} returned shape {w.shape}, expected ({n},): one weight per unit")
    bad = ~np.isfinite(w) | (w <= 0)
    if bad.any():
        raise WeightingError(f"{where} returned {int(bad.sum())} weight(s) that are not positive finite numbers "
                             f"(first at unit {int(np.flatnonzero(bad)[0])}); weights must be > 0")
    return w


def spill(expected: np.ndarray, room: np.ndarray, centroids: np.ndarray, size: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Expected draws per cluster moved off clusters over their `room` (draws they can hold) to the
    nearest clusters by centroid with room left, nearest first. `size`: each cluster's mean unit size in
    the budget's unit, so the budget moved is kept, not the count. -> (new expected, spilled out per cluster)."""
    expected = expected.astype(np.float64).copy()
    out = np.zeros_like(expected)
    over = np.flatnonzero(expected > room + 1e-9)
    if len(over) == 0:
        return expected, out
    c = np.asarray(centroids, dtype=np.float64)
    for k in over:  # in cluster order: deterministic
        excess = (expected[k] - room[k]) * size[k]
        expected[k] = room[k]
        out[k] = excess / max(size[k], 1e-12)
        order = np.argsort(((c - c[k]) ** 2).sum(axis=1), kind="stable")  # nearest first (any centroid norm)
        for j in order:
            if excess <= 1e-9:
                break
            free = (room[j] - expected[j]) * size[j]
            if j == k or free <= 1e-9 or size[j] <= 0:
                continue
            moved = min(free, excess)
            expected[j] += moved / size[j]
            excess -= moved
        if excess > 1e-6 * max(float((expected * size).sum()), 1.0):
            raise ConfigError(f"budget impossible under the repeat cap: cluster {int(k)}'s surplus finds no "
                              "cluster with room; lower the budget or raise --max-repeat")
    return expected, out


def spread(quota: float, log_w: np.ndarray, cap: float, rng: np.random.Generator,
           size: np.ndarray | None = None) -> np.ndarray:
    """Whole repeats per member holding `quota` (in the budget's unit; `size`: each member's size in it,
    default 1, so `quota` is a count): expected counts proportional to exp(log_w), none over `cap`
    (water-filling). The fractional parts decide the rest in the order of a seeded draw without replacement
    (Gumbel top-k on their logs), so that rounding favours no member by its position: as many members as
    the rest counts. With sizes, the rest is a size: the members the draw reaches are taken while they fit
    in what is left, and the first that does not is taken with probability (what is left) / (its size), so
    the quota is met on average and the weights' order is kept. Which members may be drawn at all (not a
    long document in a small share: `planning._drawable_units`) is decided before, for the plan and the
    spread alike."""
    n = len(log_w)
    if quota <= 0 or n == 0:
        return np.zeros(n, np.int64)
    w = np.exp(np.maximum(log_w - log_w.max(), -700.0))  # > 0: every member can take a share
    expected = cap_draws(w / w.sum(), float(quota), np.full(n, float(cap)), size)
    base = np.floor(expected + 1e-9).astype(np.int64)
    frac = np.clip(expected - base, 0.0, None)
    if not (frac > 0).any():
        return base
    with np.errstate(divide="ignore"):
        keys = np.where(frac > 0, np.log(frac), -np.inf) + rng.gumbel(size=n)
    order = np.argsort(-keys, kind="stable")[:int((frac > 0).sum())]
    if size is None:
        base[order[:max(0, int(round(expected.sum() - base.sum())))]] += 1
        return base
    left = float(quota) - float((base * size).sum())
    for i in order:
        if left <= 0:
            break
        if size[i] <= left:
            base[i] += 1
            left -= float(size[i])
        else:  # the one that crosses: taken in proportion to the part it fills, then done
            base[i] += int(rng.random() < left / size[i])
            break
    return base


def top_units(log_w: list[np.ndarray], shard_leaves: list[np.ndarray], weighed: np.ndarray, sizes: list,
              amount: float) -> list[np.ndarray]:
    """`--within-top`: per input shard, a mask of the units of highest log-weight, over the clusters
    `weighed` (a bool per cluster), that together hold `amount` (each unit's size in `sizes`, None: 1),
    the unit that crosses it included; equal weights are taken in the pool's order."""
    lw = np.concatenate(log_w)
    lw = np.where(weighed[np.concatenate(shard_leaves)], lw, -np.inf)
    order = np.argsort(-lw, kind="stable")
    order = order[np.isfinite(lw[order])]
    t = np.concatenate([np.ones(len(a)) if s is None else s for a, s in zip(shard_leaves, sizes)])
    n = int(np.searchsorted(np.cumsum(t[order]), amount * (1 - 1e-12))) + 1
    mask = np.zeros(len(lw), bool)
    mask[order[:n]] = True
    starts = np.cumsum([0] + [len(a) for a in shard_leaves])
    return [mask[a:b] for a, b in zip(starts[:-1], starts[1:])]


def unit_repeats_within(quota: np.ndarray, shard_leaves: list[np.ndarray], log_w: list[np.ndarray],
                        cap: float, seed: int, shard_sizes=None, even: bool = True,
                        eligible: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Each input shard's repeats per unit: every cluster's `quota` (in the budget's unit; units' sizes in
    `shard_sizes`, None: counts) spread over its members (all shards together) by `spread`. `even`: no
    member past the fewest repeats that hold the cluster's quota (ceil(quota / the cluster's size)), so
    the weights choose which documents are drawn rather than how often. `eligible` (`--within-top`): per
    shard, a mask of the only units that may be drawn. The clusters are filled in order, the quotas of those
    still to fill scaled to what the ones before left of the budget, so whole documents miss it by about one
    document, not by one per cluster (a 20,000-token budget over 16 clusters: 0.8% standard deviation
    against 3.8% without; a few long documents among short ones had put it 29% short)."""
    leaves = np.concatenate(shard_leaves)
    weights = np.concatenate(log_w)
    sizes = None if shard_sizes is None else np.concatenate([np.asarray(t, np.float64) for t in shard_sizes])
    reps = np.zeros(len(leaves), np.int64)
    order = np.argsort(leaves, kind="stable")
    bounds = np.searchsorted(leaves[order], np.arange(len(quota) + 1))
    allowed = None if eligible is None else np.concatenate(eligible)
    active = np.flatnonzero(quota > 0)
    # what the clusters before took past their quotas (or left) is made up by the ones after, in proportion to
    # their quotas: the total is missed by about one document, and no one cluster pays for another's
    left, unfilled = float(quota[active].sum()), float(quota[active].sum())
    for c in active:
        members = order[bounds[c]:bounds[c + 1]]
        if allowed is not None:
            members = members[allowed[members]]
        want = float(quota[c]) * max(left, 0.0) / max(unfilled, 1e-12)
        unfilled -= float(quota[c])
        room = cap
        if even:
            held = float(len(members) if sizes is None else sizes[members].sum())
            room = min(cap, max(1.0, float(np.ceil(want / max(held, 1e-12) - 1e-9))))
        reps[members] = spread(want, weights[members], room, shard_rng(seed, int(c), WITHIN),
                               None if sizes is None else sizes[members])
        left -= float(reps[members].sum() if sizes is None else (reps[members] * sizes[members]).sum())
    starts = np.cumsum([0] + [len(a) for a in shard_leaves])
    return [reps[a:b] for a, b in zip(starts[:-1], starts[1:])]

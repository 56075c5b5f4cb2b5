"""Planning the draws: how many units each cluster gives (match, crisp, topk) and each unit's repeats."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..histograms import Histogram
from .config import ResampleConfig
from .streams import DRAWS, KEYS, shard_rng

logger = logging.getLogger(__name__)


def _largest_remainder(expected: np.ndarray, total: int, room: np.ndarray | None = None) -> np.ndarray:
    """Integers summing to `total`, each floor or ceil of `expected` (ties to the lower cluster id), none
    above `room` (clusters at their room are not rounded up)."""
    base = np.floor(expected).astype(np.int64)
    short = int(total - base.sum())
    if short > 0:
        frac = np.clip(expected - base, 0.0, None)
        if room is not None:
            frac = np.where(base + 1 <= room + 1e-9, frac, -1.0)
        order = np.lexsort((np.arange(len(frac)), -frac))
        order = order[frac[order] >= 0]
        base[order[:short]] += 1
    return base


@dataclass
class Plan:
    """How many draws each (input shard, cluster) gets, and the numbers behind them."""

    weights: np.ndarray       # (k,) w(c)
    draws: np.ndarray         # (k,) m_c: selected units per cluster (topk: counted from the chosen units)
    shard_counts: np.ndarray  # (S, k) generic units per shard and cluster
    shard_draws: np.ndarray | None   # (S, k) draws per shard and cluster (match, crisp)
    topk_threshold: float | None = None
    keys: list[np.ndarray] | None = None  # per shard, per unit: Gumbel keys (topk), computed once
    doc_log_w: list[np.ndarray] | None = None  # per shard, per unit: a document-level selector's log-weights
    repeats: list[np.ndarray] | None = None  # per shard, per unit: repeats fixed in the plan (`--within` weights)
    spilled: np.ndarray | None = None  # (k,) expected draws each cluster passed to its neighbours (repeat cap)
    max_repeat: float | None = None  # the repeat cap the plan kept (None: no cap)
    eligible: int | None = None  # `--within-top`: how many units could be drawn
    drawable: list[np.ndarray] | None = None  # per shard, per unit: may be drawn (`_drawable_units`; None: all)


def arrays_fingerprint(arrays: list[np.ndarray]) -> str:
    """sha256 of float arrays (what a plan is made from, or the plan itself). The rounding to 1e-9 is no
    tolerance: two sets of weights that differ in any unit almost surely differ here too."""
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.round(np.asarray(a, np.float64), 9).tobytes())
    return "sha256:" + h.hexdigest()


def plan_fingerprint(plan: Plan) -> str:
    """What decides which units a plan draws and the weight each row records: a resume whose plan differs
    (a weighting function edited under its name, a target's text changed where its histogram did not) must
    not reuse the spill files of the first plan."""
    parts: list[np.ndarray] = [plan.weights, plan.draws, np.asarray([plan.topk_threshold or 0.0])]
    for per_shard in (plan.shard_draws, plan.doc_log_w, plan.repeats, plan.drawable):
        parts.append(np.asarray([per_shard is None], np.float64))
        if per_shard is not None:
            parts.extend(np.asarray(a, np.float64).ravel() for a in per_shard)
    return arrays_fingerprint(parts)


_UNIT_NAMES = {"tokens": "tokens", "bytes": "bytes", "docs": "documents"}


def make_plan(cfg: ResampleConfig, weights: np.ndarray, generic: Histogram, shard_leaves: list[np.ndarray],
              shard_sizes: list[np.ndarray], doc_log_w: list[np.ndarray] | None = None,
              within_log_w: list[np.ndarray] | None = None, centroids: np.ndarray | None = None) -> Plan:
    """Draws per shard and cluster (match, crisp), or the top-k key threshold (topk).

    `shard_sizes` gives each unit's size in the budget's unit (`cfg.budget`). `doc_log_w` gives
    document-level log-weights (ngram, classifier); by default a unit's log-weight is its cluster's.
    `within_log_w` (`--within` other than uniform) weighs the units inside each cluster's `match` quota
    (`within = auto` counts as weighted when they are given); `centroids`
    (leaf clusters') say where a cluster's draws over the repeat cap spill (`within.spill`).
    """
    cfg = cfg.resolved(target_has_vectors=within_log_w is not None)
    k = len(weights)
    if cfg.scheme == "topk" or doc_log_w is not None:
        shard_counts = np.stack([np.bincount(a, minlength=k) for a in shard_leaves]).astype(np.int64)
        log_w = doc_log_w
        if log_w is None:
            with np.errstate(divide="ignore"):
                log_wc = np.log(weights)
            log_w = [log_wc[a] for a in shard_leaves]
        plan = _plan_topk(cfg, weights, log_w, shard_leaves, shard_sizes, shard_counts)
        plan.doc_log_w = doc_log_w
        return plan
    # one pass over the shards (each read once): units and their sizes per (shard, cluster)
    unit, amount = cfg.budget
    counts, size_c = [], np.zeros(k)
    for a, t in zip(shard_leaves, shard_sizes):
        counts.append(np.bincount(a, minlength=k))
        if unit != "docs":
            size_c += np.bincount(a, weights=t, minlength=k)
    shard_counts = np.stack(counts).astype(np.int64)
    n_c = shard_counts.sum(axis=0)
    mean_size = np.where(n_c > 0, size_c / np.maximum(n_c, 1), 0.0)
    q = weights * n_c
    q = q / q.sum()
    _check_not_absurd(amount, unit, float(np.where(q > 0, n_c if unit == "docs" else size_c, 0.0).sum()))
    drawable = None
    if unit != "docs":  # match and crisp alike
        shard_sizes = [np.asarray(t, np.float64) for t in shard_sizes]  # read once, kept for the spread
        drawable, n_drawable, mean_size = _drawable_units(q, float(amount), shard_leaves, shard_sizes)
    # units to draw: a doc budget directly; a token or byte budget through each cluster's mean size
    n_units = amount if unit == "docs" else amount / max(float((q * mean_size).sum()), 1e-12)
    rng = np.random.default_rng([cfg.seed, DRAWS])
    if cfg.scheme == "match":
        return _plan_match(cfg, weights, q, n_units, n_c if drawable is None else n_drawable, mean_size,
                           shard_counts, shard_leaves, shard_sizes, within_log_w, centroids, rng, drawable)
    # crisp: i.i.d. cluster draws, then uniform documents inside the cluster (among the drawable ones)
    draws = rng.multinomial(int(round(n_units)), q)
    counts = _drawable_counts(shard_counts, shard_leaves, drawable)
    shard_draws = np.zeros_like(shard_counts)
    for c in np.flatnonzero(draws):
        shard_draws[:, c] = rng.multinomial(int(draws[c]), counts[:, c] / counts[:, c].sum())
    return Plan(weights, draws.astype(np.int64), shard_counts, shard_draws, drawable=drawable)


def _drawable_units(q: np.ndarray, amount: float, shard_leaves: list[np.ndarray], shard_sizes: list[np.ndarray]
                    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The units the spread may draw for a token or byte budget (per shard, a mask), how many each cluster
    holds, and their mean size (each cluster's share of the budget follows the target's documents through
    it). A unit over OUTSIZED times its cluster's share would swamp it: it is passed over, judged against the
    share its cluster's median unit gives (a mean would let one long document raise its own cluster's share,
    which the cluster's other documents then cannot fill while the other clusters go short). A cluster whose
    every unit is over: all of them, drawn now and then."""
    from .within import OUTSIZED

    leaves, sizes = np.concatenate(shard_leaves), np.concatenate(shard_sizes)
    k = len(q)
    n = np.bincount(leaves, minlength=k)
    scale = float(sizes.max()) + 1.0
    by_size = np.sort(leaves + sizes / scale)  # by cluster, then size, in one key: a sort, not an argsort
    starts = np.concatenate([[0], np.cumsum(n)])
    mid = np.minimum((starts[:-1] + starts[1:]) // 2, len(sizes) - 1)
    median = np.where(n > 0, (by_size[mid] - np.arange(k)) * scale, 0.0)
    share = amount * q * median / max(float((q * median).sum()), 1e-12)
    ok = sizes <= OUTSIZED * share[leaves]
    ok |= (np.bincount(leaves[ok], minlength=k) == 0)[leaves]
    n_ok = np.bincount(leaves[ok], minlength=k)
    mean = np.where(n_ok > 0, np.bincount(leaves[ok], weights=sizes[ok], minlength=k) / np.maximum(n_ok, 1), 0.0)
    ends = np.cumsum([len(a) for a in shard_leaves])
    return np.split(ok, ends[:-1]), n_ok, mean


def _drawable_counts(shard_counts: np.ndarray, shard_leaves: list[np.ndarray], drawable: list[np.ndarray] | None
                     ) -> np.ndarray:
    """(S, k) units per shard and cluster that may be drawn."""
    if drawable is None:
        return shard_counts
    k = shard_counts.shape[1]
    return np.stack([np.bincount(a[d], minlength=k) for a, d in zip(shard_leaves, drawable)]).astype(np.int64)


MAX_MEAN_REPEATS = 100
"""A budget over this many times the text of the clusters the target weighs is refused: data-constrained
scaling (Muennighoff et al., 2023) finds repeated text worth little past ~4 epochs and nothing past ~40, and
such a selection only costs disk and memory (and overflows Arrow's 32-bit string offsets)."""


def _check_not_absurd(amount: float, unit: str, held: float) -> None:
    if amount > MAX_MEAN_REPEATS * held:
        raise ConfigError(f"--{unit} {amount:,.0f} is {amount / max(held, 1e-12):,.0f} times the {held:,.0f} "
                          f"{_UNIT_NAMES[unit]} of the clusters the target weighs: every document would be repeated "
                          f"over {MAX_MEAN_REPEATS} times, which teaches a model nothing new; lower --{unit} or give "
                          "a larger generic corpus")


def _plan_match(cfg: ResampleConfig, weights: np.ndarray, q: np.ndarray, n_units: float, n_c: np.ndarray,
                mean_size: np.ndarray, shard_counts: np.ndarray, shard_leaves: list[np.ndarray], shard_sizes,
                within_log_w: list[np.ndarray] | None, centroids: np.ndarray | None,
                rng: np.random.Generator, drawable: list[np.ndarray] | None = None) -> Plan:
    """`match`: each cluster's draws in proportion to q, under the repeat cap (spilled to neighbours).
    `drawable` (`_drawable_units`; `n_c` then counts them): the only units that may be drawn, whether the
    spread weighs them or they are drawn uniformly."""
    from .within import spill, unit_repeats_within

    unit = cfg.budget[0]
    size = np.ones_like(q) if unit == "docs" else mean_size
    need = n_units * float((q * size).sum())
    ranked = within_log_w if drawable is None or within_log_w is None else [
        np.where(d, w, -np.inf) for d, w in zip(drawable, within_log_w)]
    cap, room, eligible = _room(cfg, q, n_c, size, need, shard_leaves, shard_sizes, ranked)
    expected, spilled = q * n_units, None
    if room is not None:
        if centroids is None:  # no geometry given: every cluster equally near, the lower id first
            centroids = np.eye(len(q))
        expected, spilled = spill(expected, room, centroids, size)
    # whole draws: the units the (spilled) budget holds, no cluster past its room
    draws = _largest_remainder(expected, int(round(expected.sum())), room)
    repeats = None
    if cfg.within != "uniform":
        # a token or byte budget's quotas stay in its unit (`spread` rounds each to whole documents by their
        # sizes): whole draws of the cluster's mean size would round each cluster by a mean document
        quota = (draws if unit == "docs" else expected) * size
        allowed = drawable if eligible is None else eligible if drawable is None else [
            e & d for e, d in zip(eligible, drawable)]
        repeats = unit_repeats_within(quota, shard_leaves, within_log_w, float(cap), cfg.seed,
                                      None if unit == "docs" else shard_sizes, even=cfg.within_repeats == "even",
                                      eligible=allowed)
        shard_draws = np.stack([np.bincount(a, weights=r, minlength=len(q)) for a, r in zip(shard_leaves, repeats)]
                               ).astype(np.int64)
        draws = shard_draws.sum(axis=0)
    else:  # uniform inside the clusters: whole rounds over the units that may be drawn, the rest spread
        counts = _drawable_counts(shard_counts, shard_leaves, drawable)
        extra = draws % np.maximum(n_c, 1)
        shard_draws = counts * (draws // np.maximum(n_c, 1))
        for c in np.flatnonzero(extra):
            shard_draws[:, c] += rng.multivariate_hypergeometric(counts[:, c], int(extra[c]))
    return Plan(weights, draws.astype(np.int64), shard_counts, shard_draws, repeats=repeats, spilled=spilled,
                max_repeat=cap, eligible=None if eligible is None else int(sum(e.sum() for e in eligible)),
                drawable=drawable if repeats is None else None)


def _room(cfg: ResampleConfig, q: np.ndarray, n_c: np.ndarray, size: np.ndarray, need: float,
          shard_leaves: list[np.ndarray], shard_sizes, within_log_w: list[np.ndarray] | None):
    """`match`'s repeat cap and each cluster's room (draws it can hold; None: no limit), and with
    `--within-top` the units that may be drawn (per shard, a mask). `need`: the budget in its unit."""
    from .config import WITHIN_MAX_REPEAT
    from .within import top_units

    unit = cfg.budget[0]
    if cfg.within_top is not None:
        # the room is F x the budget: the top units holding F / R of it, each drawn up to R = --max-repeat times
        sizes = [None] * len(shard_leaves) if unit == "docs" else shard_sizes
        eligible = top_units(within_log_w, shard_leaves, q > 0, sizes, cfg.within_top * need / (cfg.max_repeat or 1))
        held = sum(np.bincount(a[e], weights=None if t is None else t[e], minlength=len(q))  # in the budget's unit
                   for a, e, t in zip(shard_leaves, eligible, sizes))
        cap = cfg.max_repeat or max(1, int(np.ceil(need / max(held.sum(), 1e-12) - 1e-9)))
        if cap > 1 and not cfg.max_repeat:  # fewer eligible units than the budget: all of them, repeated
            logger.warning("--within-top: the clusters the target weighs hold less than the budget; each of their "
                           "units may be drawn up to %d times", cap)
        room = np.where(size > 0, held / np.maximum(size, 1e-12), 0.0) * float(cap)
        _check_room(room, size, need, cap, unit, " (every unit of them eligible)")
        return cap, room, eligible
    cap = cfg.max_repeat or (WITHIN_MAX_REPEAT if cfg.within != "uniform" else None)
    if cap is None:
        return None, None, None
    held = np.where(q > 0, n_c, 0.0) * size  # a cluster weighted 0 is never drawn, not even spilled to
    if not cfg.max_repeat and held.sum() * cap < need * (1 - 1e-9):
        # the default cap gives way to the fewest repeats that hold the budget (never a failure where
        # uniform drawing succeeds); a --max-repeat the user gives is kept, and refused below
        cap = max(cap, int(np.ceil(need / max(held.sum(), 1e-12) - 1e-9)))
        logger.warning("the budget needs up to %d draws of a document in the clusters the target weighs: "
                       "the default repeat cap (%d) is raised to it", cap, WITHIN_MAX_REPEAT)
    room = np.where(q > 0, n_c * float(cap), 0.0)
    _check_room(room, size, need, cap, unit)
    return cap, room, None


def _check_room(room: np.ndarray, size: np.ndarray, need: float, cap: int, unit: str, which: str = "") -> None:
    """One line for a budget the clusters' rooms under the repeat cap cannot hold."""
    most = (room * size).sum()
    if most < need * (1 - 1e-9):
        raise ConfigError(f"budget impossible with --max-repeat {cap}: at most {int(most):,} {_UNIT_NAMES[unit]} "
                          f"can be drawn from the clusters the target weighs{which}; lower the budget or raise "
                          "--max-repeat")


def _topk_keys(cfg: ResampleConfig, log_w: np.ndarray, shard: int) -> np.ndarray:
    """Gumbel keys: the top-n keys are a draw of n units without replacement, P ~ exp(log_w)."""
    keys = log_w + shard_rng(cfg.seed, shard, KEYS).gumbel(size=len(log_w))
    return np.where(np.isfinite(log_w), keys, -np.inf)


def _plan_topk(cfg: ResampleConfig, weights: np.ndarray, doc_log_w: list[np.ndarray],
               shard_leaves: list[np.ndarray], shard_sizes: list[np.ndarray], shard_counts: np.ndarray) -> Plan:
    unit, amount = cfg.budget
    eligible = [np.isfinite(lw) for lw in doc_log_w]
    available = (sum(int(e.sum()) for e in eligible) if unit == "docs" else
                 float(sum(t[e].sum() for t, e in zip(shard_sizes, eligible))))
    if amount > available:
        other = ("use --scheme match" if cfg.method == "importance" else
                 f"draw with repeats (--method importance; --method {cfg.method} draws each unit at most once)")
        raise ConfigError(f"budget impossible without replacement: --{unit} {amount:,} but only "
                          f"{int(available):,} {_UNIT_NAMES[unit]} have a non-zero weight; lower --{unit} or {other}")
    # A running top set (O(selected) memory): keys and token counts of the best candidates so far.
    keys = [_topk_keys(cfg, lw, s) for s, lw in enumerate(doc_log_w)]
    if unit != "docs":  # a unit over OUTSIZED times the whole budget would multiply it: passed over, as
        from .within import OUTSIZED  # `_drawable_units` does for a share, while the others hold the budget

        small = [np.asarray(t, np.float64) <= OUTSIZED * amount for t in shard_sizes]
        if sum(float(np.asarray(t)[e & m].sum()) for t, e, m in zip(shard_sizes, eligible, small)) >= amount:
            keys = [np.where(m, k, -np.inf) for k, m in zip(keys, small)]
    best_k = np.empty(0)
    best_t = np.empty(0)
    for s, sizes in enumerate(shard_sizes):
        best_k = np.concatenate([best_k, keys[s]])
        best_t = np.concatenate([best_t, np.asarray(sizes, dtype=np.float64)])
        order = np.argsort(-best_k, kind="stable")
        if unit == "docs":
            keep = order[:amount]
        else:
            cum = np.cumsum(best_t[order])
            keep = order[:int(np.searchsorted(cum, amount)) + 1]
        best_k, best_t = best_k[keep], best_t[keep]
    threshold = float(best_k.min())
    draws = np.zeros(len(weights), dtype=np.int64)
    for s, leaves in enumerate(shard_leaves):
        draws += np.bincount(leaves[keys[s] >= threshold], minlength=len(weights))
    return Plan(weights, draws, shard_counts, None, threshold, keys)


def unit_repeats(cfg: ResampleConfig, plan: Plan, shard: int, leaves: np.ndarray) -> np.ndarray:
    """How many times each unit of one input shard is selected."""
    if plan.topk_threshold is not None:
        return (plan.keys[shard] >= plan.topk_threshold).astype(np.int64)
    if plan.repeats is not None:
        return plan.repeats[shard]
    rng = shard_rng(cfg.seed, shard, DRAWS)
    counts = plan.shard_counts[shard]
    draws = plan.shard_draws[shard]
    reps = np.zeros(len(leaves), dtype=np.int64)
    order = np.argsort(leaves, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for c in np.flatnonzero(draws):
        members = order[bounds[c]:bounds[c + 1]]
        if plan.drawable is not None:  # (match: a long document in a small share is never drawn)
            members = members[plan.drawable[shard][members]]
        if cfg.scheme == "match":
            base, extra = divmod(int(draws[c]), len(members))
            reps[members] = base
            if extra:
                reps[rng.choice(members, size=extra, replace=False)] += 1
        else:
            reps[members] = rng.multinomial(int(draws[c]), np.full(len(members), 1.0 / len(members)))
    return reps

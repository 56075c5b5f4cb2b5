"""The resampler's behaviour: histograms match, no duplicates without replacement, seeded, checked."""

from __future__ import annotations

import re

import numpy as np
import pytest

from impsamp.errors import ConfigError, WeightingError
from impsamp.histograms import Histogram, kl, mixture
from impsamp.resampling import ResampleConfig
from impsamp.resampling.planning import make_plan, unit_repeats
from impsamp.weighting import capped, check_weights, compute_weights, density_ratio, resolve_weighting

K = 8


def _hist(counts, fp="sha256:x", source="t"):
    counts = np.asarray(counts, dtype=np.float64)
    return Histogram(counts, (np.arange(len(counts)),), fp, source)


@pytest.fixture
def generic_shards():
    """Three input shards of a generic corpus over 8 clusters of very different sizes."""
    rng = np.random.default_rng(0)
    sizes = np.array([400, 300, 150, 80, 40, 20, 8, 2])
    leaves = rng.permutation(np.repeat(np.arange(K), sizes))
    shards = np.array_split(leaves, 3)
    tokens = [rng.integers(50, 150, size=len(s)) for s in shards]
    return [s.astype(np.int64) for s in shards], tokens, _hist(sizes, source="generic")


def _centroids():
    """Leaf centroids on an arc at uneven angles (no two at the same distance from a third)."""
    a = np.radians([0, 10, 25, 45, 70, 100, 135, 175])
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _run(cfg, weights, generic, shards, tokens, within_log_w=None):
    plan = make_plan(cfg, weights, generic, shards, tokens, within_log_w=within_log_w, centroids=_centroids())
    reps = [unit_repeats(cfg, plan, i, s) for i, s in enumerate(shards)]
    return plan, reps


def test_match_reproduces_the_target_histogram(generic_shards):
    shards, tokens, generic = generic_shards
    target = _hist([1, 1, 1, 1, 10, 30, 40, 16])
    w = density_ratio(target, generic, smoothing=0.0)
    cfg = ResampleConfig(docs=2000, scheme="match")
    plan, reps = _run(cfg, w, generic, shards, tokens)
    got = np.zeros(K)
    for s, r in zip(shards, reps):
        np.add.at(got, s, r)
    assert got.sum() == 2000
    np.testing.assert_allclose(got / got.sum(), target.probs(), atol=1 / 2000 + 1e-9)
    assert kl(target.probs(), got) < 1e-3 < kl(target.probs(), generic.counts)


@pytest.mark.parametrize("cap", [1.2, 2.0, 5.0])
def test_cap_bounds_the_largest_weight_by_the_mean_of_the_capped_weights(cap):
    """The cap is a multiple of the mean weight of a generic document after capping (the mean falls as the
    heavy clusters are cut: capping at the old mean's multiple left 6.9x for cap 2); weights below the level
    are kept as they were, and a cap already met changes nothing."""
    rng = np.random.default_rng(0)
    generic = _hist(rng.integers(1, 200, size=40))
    target = _hist(np.r_[rng.integers(50, 500, size=3), rng.integers(0, 5, size=37)])
    free = density_ratio(target, generic)
    w = density_ratio(target, generic, cap=cap)
    mean = (w * generic.counts).sum() / generic.total
    assert w.max() == pytest.approx(cap * mean, rel=1e-9, abs=0)
    kept = free <= w.max()
    np.testing.assert_array_equal(w[kept], free[kept])
    assert (w[~kept] == w.max()).all() and (~kept).any()
    np.testing.assert_array_equal(density_ratio(target, generic, cap=1e6), free)
    # a level on a weight itself (rounding put it a hair outside both neighbouring intervals: all alike)
    np.testing.assert_allclose(capped(np.array([4.0, 9, 5]), np.array([2.0, 13, 6]), 1.0194174757281553), [4, 5, 5])
    # out of reach (all the weight on 2 of 40 clusters: their mean is below the top by at least 20x): alike
    np.testing.assert_array_equal(density_ratio(_hist([1, 1] + [0] * 38), generic, cap=3), [1, 1] + [0] * 38)
    with pytest.raises(ConfigError, match="cap must be >= 1"):
        density_ratio(target, generic, cap=0.5)
    with pytest.raises(ConfigError, match="--cap must be >= 1"):
        ResampleConfig(docs=1, cap=0.5)


def test_match_spreads_repeats_evenly_inside_a_cluster(generic_shards):
    shards, tokens, generic = generic_shards
    target = _hist([0, 0, 0, 0, 0, 0, 1, 1])
    w = density_ratio(target, generic, smoothing=0.0)
    plan, reps = _run(ResampleConfig(docs=101, scheme="match"), w, generic, shards, tokens)
    for c in (6, 7):
        r = np.concatenate([rr[s == c] for s, rr in zip(shards, reps)])
        assert r.max() - r.min() <= 1  # every document is used before any is used again


def test_max_repeat_spills_to_the_nearest_clusters_and_refuses_the_impossible(generic_shards):
    shards, tokens, generic = generic_shards
    target = _hist([1, 1, 1, 1, 1, 1, 50, 50])
    w = density_ratio(target, generic, smoothing=0.0)
    plan, reps = _run(ResampleConfig(docs=200, scheme="match", max_repeat=2), w, generic, shards, tokens)
    assert max(r.max() for r in reps) <= 2 and sum(r.sum() for r in reps) == 200
    # clusters 6 (8 documents) and 7 (2) hold 16 and 4 draws under the cap; the rest of their ~189 draws
    # (~169) spills to the nearest centroids with room: 6's to 5 (20 documents: room for 40), then 4; 7's to
    # 4 (6 and 5 are full) until it is full too, then 3. Clusters 0-2, the farthest, keep their own ~1.9.
    assert plan.draws[6] == 16 and plan.draws[7] == 4 and plan.draws[5] == 40 and plan.draws[4] == 80
    assert plan.draws[3] > 50 and plan.draws[[0, 1, 2]].max() <= 2
    assert plan.spilled[:6].sum() == 0 and abs(plan.spilled.sum() - (200 * 100 / 106 - 20)) < 1e-6
    with pytest.raises(ConfigError, match="at most 2,000 documents"):
        make_plan(ResampleConfig(docs=5000, scheme="match", max_repeat=2), w, generic, shards, tokens)


def test_the_default_repeat_cap_gives_way_where_a_given_one_is_refused(generic_shards):
    shards, tokens, generic = generic_shards
    w = density_ratio(_hist([1, 1, 1, 1, 1, 1, 50, 50]), generic, smoothing=0.0)
    log_w = _knn(shards)
    plan, reps = _run(ResampleConfig(docs=200, scheme="match", within="knn"), w, generic, shards, tokens,
                      within_log_w=log_w)
    assert plan.max_repeat == 4 and max(r.max() for r in reps) <= 4  # the default cap: spills, as above
    # 5,000 draws from 1,000 documents need 5 each: the default cap (4) is raised, not a failure
    plan, reps = _run(ResampleConfig(docs=5000, scheme="match", within="knn"), w, generic, shards, tokens,
                      within_log_w=log_w)
    assert plan.max_repeat == 5 and max(r.max() for r in reps) <= 5 and sum(r.sum() for r in reps) == 5000
    with pytest.raises(ConfigError, match="budget impossible with --max-repeat 4: at most 4,000 documents"):
        make_plan(ResampleConfig(docs=5000, scheme="match", within="knn", max_repeat=4), w, generic, shards,
                  tokens, within_log_w=log_w)


def test_topk_has_no_duplicates_and_prefers_heavy_clusters(generic_shards):
    shards, tokens, generic = generic_shards
    target = _hist([0, 0, 0, 0, 1, 1, 1, 1])
    w = density_ratio(target, generic, smoothing=0.1)
    plan, reps = _run(ResampleConfig(docs=40, scheme="topk"), w, generic, shards, tokens)
    assert all(r.max() <= 1 for r in reps) and sum(r.sum() for r in reps) == 40
    picked = np.concatenate([s[r > 0] for s, r in zip(shards, reps)])
    assert np.isin(picked, [4, 5, 6, 7]).mean() > 0.8


def test_topk_budget_larger_than_the_pool_says_the_maximum(generic_shards):
    shards, tokens, generic = generic_shards
    w = np.ones(K)
    with pytest.raises(ConfigError, match="only 1,000 documents"):
        make_plan(ResampleConfig(docs=1001, scheme="topk"), w, generic, shards, tokens)


def test_token_budget_is_met_approximately(generic_shards):
    shards, tokens, generic = generic_shards
    w = density_ratio(_hist([5, 5, 5, 5, 5, 5, 5, 5]), generic)
    for scheme in ("match", "crisp", "topk"):
        _, reps = _run(ResampleConfig(tokens=20_000, scheme=scheme), w, generic, shards, tokens)
        got = sum(float((r * t).sum()) for r, t in zip(reps, tokens))
        assert abs(got - 20_000) / 20_000 < 0.05, (scheme, got)


def test_same_seed_same_draws_other_seed_other_draws(generic_shards):
    shards, tokens, generic = generic_shards
    w = density_ratio(_hist([3, 1, 4, 1, 5, 9, 2, 6]), generic)
    for scheme in ("match", "crisp", "topk"):
        a = _run(ResampleConfig(docs=300, scheme=scheme, seed=1), w, generic, shards, tokens)[1]
        b = _run(ResampleConfig(docs=300, scheme=scheme, seed=1), w, generic, shards, tokens)[1]
        c = _run(ResampleConfig(docs=300, scheme=scheme, seed=2), w, generic, shards, tokens)[1]
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_every_method_has_its_code():
    """A name added to METHODS must be the cluster weigher, the uniform baseline, or a document ranker with its
    scorer: anything else would run unnoticed as a ratio ranked by top-k."""
    from impsamp.resampling.config import DOCUMENT_RANKERS, METHODS
    from impsamp.resampling.stage import DOCUMENT_SCORERS

    assert set(DOCUMENT_SCORERS) == set(DOCUMENT_RANKERS)
    assert set(METHODS) == {"importance", "uniform", *DOCUMENT_RANKERS}
    assert len(METHODS) == len(set(METHODS))


def test_budget_flags_are_checked():
    with pytest.raises(ConfigError, match="exactly one budget"):
        ResampleConfig()
    with pytest.raises(ConfigError, match="--docs must be >= 1"):
        ResampleConfig(docs=0)
    with pytest.raises(ConfigError, match="--scheme must be one of"):
        ResampleConfig(docs=5, scheme="nope")


def test_mixture_weights_the_normalised_parts():
    a, b = _hist([10, 0, 0, 0]), _hist([0, 0, 0, 1000])
    m = mixture([(a, 0.7), (b, 0.3)])
    np.testing.assert_allclose(m.probs(), [0.7, 0, 0, 0.3])


def test_hierarchical_backoff_fills_sparse_leaves_from_the_parent():
    # 2 parents x 2 leaves; the target saw leaf 0 only, leaf 1 shares its parent
    anc = (np.array([0, 0, 1, 1]), np.arange(4))
    target = Histogram(np.array([10.0, 0, 0, 0]), anc, "fp")
    generic = Histogram(np.array([100.0, 100, 100, 100]), anc, "fp")
    flat = density_ratio(target, generic, smoothing=0.0)
    backed = density_ratio(target, generic, smoothing=0.0, backoff=5)
    assert flat[1] == 0 and backed[1] > 0 and backed[0] > backed[1] and backed[2] == backed[3] == 0
    assert backed[0] + backed[1] == pytest.approx(flat[0] + flat[1])  # the parent keeps its target mass


def test_custom_weighting_by_import_string():
    generic, target = _hist([10, 10, 10, 10]), _hist([9, 1, 0, 0])
    w, name = compute_weights("tests.weighting_plugins:capped_ratio", target, generic)
    assert name == "tests.weighting_plugins:capped_ratio" and w.max() <= 3.0


@pytest.mark.parametrize("fn, message", [
    ("wrong_shape", r"returned shape \(3,\), expected \(4,\)"),
    ("negative", "negative weight"),
    ("raises", "raised RuntimeError: boom"),
    ("exits", "raised SystemExit: 3"),
    ("all_zero", "all-zero"),
    ("writes_its_inputs", "raised ValueError: assignment destination is read-only"),
])
def test_bad_custom_weighting_is_named_in_the_error(fn, message):
    generic, target = _hist([10, 10, 10, 10]), _hist([9, 1, 0, 0])
    with pytest.raises(WeightingError, match=message) as e:
        compute_weights(f"tests.weighting_plugins:{fn}", target, generic)
    assert f"tests.weighting_plugins:{fn}" in str(e.value)


def test_weights_of_any_valid_scale_are_kept_within_float32_and_ordinary_ones_as_they_are():
    """Weights are relative: 1e50 or 1e-50 everywhere the target has documents is a valid weighting, which the
    selection's float32 weight column (and the planner's products) could not hold; such weights are rescaled so
    the largest is 1. Ordinary weights are returned unchanged."""
    generic, target = _hist([10, 10, 10, 10]), _hist([9, 1, 0, 0])
    for fn in ("huge", "tiny"):
        w, _ = compute_weights(f"tests.weighting_plugins:{fn}", target, generic)
        assert w.tolist() == [1.0, 1.0, 0.0, 0.0] and np.isfinite(w.astype(np.float32)).all()
    w, _ = compute_weights("tests.weighting_plugins:capped_ratio", target, generic)
    assert w.tolist() == np.minimum(target.probs(1.0) / generic.probs(1.0), 3.0).tolist()


def test_the_ratios_settings_are_refused_with_a_weighting_that_ignores_them(tmp_path):
    """--temperature, --cap, --smoothing and --backoff shape the built-in ratio only: with --weighting uniform or a
    function they changed nothing while the manifest recorded them."""
    for weighting in ("uniform", "tests.weighting_plugins:capped_ratio"):
        with pytest.raises(ConfigError, match=f"--temperature, --cap shape.*--weighting {weighting} does not"):
            ResampleConfig(docs=10, weighting=weighting, temperature=0.5, cap=2.0)
    ResampleConfig(docs=10, weighting="ratio", temperature=0.5, cap=2.0)  # the ratio takes them

    from impsamp.resampling import resample

    from ._helpers import build_pipeline

    p = build_pipeline(tmp_path)
    with pytest.raises(ConfigError, match="--smoothing shape.*weighting= replaces it"):
        resample(p["emb"], p["clu"], tmp_path / "s", targets=[str(p["target"])],
                 config=ResampleConfig(docs=50, smoothing=1.0), weighting=lambda t, g: np.ones(g.k))
    assert not (tmp_path / "s" / "manifest.json").exists()
    # weighting="ratio" names the built-in, which takes them, as config.weighting="ratio" does
    shaped = ResampleConfig(docs=50, temperature=0.5)
    by_name = resample(p["emb"], p["clu"], tmp_path / "r", targets=[str(p["target"])], config=shaped, weighting="ratio")
    by_config = resample(p["emb"], p["clu"], tmp_path / "c", targets=[str(p["target"])], config=shaped)
    assert by_name.to_table().column("doc_index").to_pylist() == by_config.to_table().column("doc_index").to_pylist()


def test_unknown_weighting_lists_the_builtins():
    with pytest.raises(ConfigError, match=r"\['ratio', 'uniform'\]"):
        resolve_weighting("nope")
    with pytest.raises(ConfigError, match="cannot load it"):
        resolve_weighting("no_such_module_xyz:fn")
    for bad in ("", "nope", "module:"):  # refused with the config, not after the target is embedded
        with pytest.raises(ConfigError, match=f"--weighting must be one of ratio, uniform or package.module:function, "
                                              f"got '{bad}'"):
            ResampleConfig(docs=10, weighting=bad)


def test_check_weights_rejects_nan():
    with pytest.raises(WeightingError, match="non-finite"):
        check_weights([1.0, np.nan], 2, "f")


def _knn(shards, seed=0):
    """Per-unit log-weights as `--within knn` makes them: (similarity - 1) / tau, similarities in (0, 1)."""
    rng = np.random.default_rng(seed)
    return [(rng.uniform(0.2, 1.0, size=len(s)) - 1.0) / 0.05 for s in shards]


@pytest.mark.parametrize("budget", [5_000, 20_000])
@pytest.mark.parametrize("within,scheme", [("knn", "match"), ("uniform", "match"), ("uniform", "crisp")])
def test_one_very_long_document_neither_starves_the_budget_nor_skews_the_mix(generic_shards, budget, within,
                                                                             scheme):
    """A token budget's cluster shares follow the target's documents through each cluster's mean size. One
    document far longer than its cluster's share (never drawn there) used to raise that mean, and the share:
    its small neighbours could not fill it, the other clusters went short and the selection held a fraction
    of the budget, mixed unlike the target (a user's corpus: 24-47% of --tokens, KL 2.45 from the target)."""
    shards, tokens, generic = generic_shards
    tokens = [t.astype(np.float64) for t in tokens]
    in_3 = [np.flatnonzero(s == 3) for s in shards]
    first = next(i for i, idx in enumerate(in_3) if len(idx))
    tokens[first][in_3[first][0]] = 1_000_000  # one of cluster 3's 80 documents: 10,000 times the others
    target = _hist([10, 10, 10, 30, 10, 10, 0, 0])  # every share within what its cluster holds 4 times
    w = density_ratio(target, generic)
    plan, reps = _run(ResampleConfig(tokens=budget, within=within, scheme=scheme), w, generic, shards, tokens,
                      within_log_w=_knn(shards) if within == "knn" else None)
    got = sum(float((r * t).sum()) for r, t in zip(reps, tokens))
    # met (uniform: whole documents; crisp: i.i.d. draws, met on average)
    assert abs(got - budget) / budget < {"knn": 0.05, "uniform": 0.1}[within] * (2 if scheme == "crisp" else 1)
    assert reps[first][in_3[first][0]] == 0  # the long document is passed over
    mix, p = plan.draws / plan.draws.sum(), target.probs()
    noise = 0.0 if scheme == "match" else 4 * np.sqrt(p * (1 - p) / plan.draws.sum())  # crisp: i.i.d. draws
    assert (np.abs(mix - p) <= 0.03 + noise).all(), (mix, p)  # the target's mix


def test_a_ranking_passes_over_a_document_that_would_multiply_its_budget(generic_shards):
    """`ngram`, `classifier` and `uniform` take the best-ranked units until the budget is met, the last whole:
    one ranked first and 50 times the budget made a 20,000-token selection 6 times too large. It is passed
    over while the others can hold the budget, and taken where only it can."""
    shards, tokens, generic = generic_shards
    tokens = [t.astype(np.float64) for t in tokens]
    tokens[0][0] = 1_000_000.0
    log_w = [np.zeros(len(s)) for s in shards]
    log_w[0][0] = 50.0  # ranked first by any seed's Gumbel keys
    cfg = ResampleConfig(tokens=20_000, method="classifier")
    plan = make_plan(cfg, np.ones(K), generic, shards, tokens, doc_log_w=log_w)
    reps = [unit_repeats(cfg.effective(), plan, i, s) for i, s in enumerate(shards)]
    got = sum(float((r * t).sum()) for r, t in zip(reps, tokens))
    assert reps[0][0] == 0 and abs(got - 20_000) < 150  # within the last document taken whole
    alone = [np.full(len(s), -np.inf) for s in shards]
    alone[0][0] = 0.0  # the only unit with a weight: the budget needs it
    plan = make_plan(ResampleConfig(tokens=20_000, method="classifier"), np.ones(K), generic, shards, tokens,
                     doc_log_w=alone)
    assert unit_repeats(cfg.effective(), plan, 0, shards[0])[0] == 1


def test_within_knn_keeps_the_cluster_quotas_and_prefers_close_documents(generic_shards):
    shards, tokens, generic = generic_shards
    target = _hist([50, 1, 1, 1, 1, 1, 1, 1])
    w = density_ratio(target, generic, smoothing=0.0)
    base, _ = _run(ResampleConfig(docs=300, scheme="match", max_repeat=3), w, generic, shards, tokens)
    log_w = _knn(shards)
    cfg = ResampleConfig(docs=300, scheme="match", within="knn", max_repeat=3, within_repeats="weighted")
    plan, reps = _run(cfg, w, generic, shards, tokens, within_log_w=log_w)
    assert np.array_equal(plan.draws, base.draws)  # the outer budget is `uniform`'s under the same cap
    got = np.zeros(K)
    for s, r in zip(shards, reps):
        np.add.at(got, s, r)
    assert np.array_equal(got, plan.draws) and max(r.max() for r in reps) == 3
    lw, r = np.concatenate(log_w), np.concatenate(reps)
    lw0, r0 = lw[np.concatenate(shards) == 0], r[np.concatenate(shards) == 0]  # ~260 draws, 400 documents
    assert lw0[r0 == 3].min() > lw0[r0 == 0].max()  # the closest fill up to the cap first
    assert np.average(lw0, weights=r0) > np.quantile(lw0, 0.75) and (r0 == 0).sum() > 100
    again = _run(cfg, w, generic, shards, tokens, within_log_w=log_w)[1]
    assert all(np.array_equal(a, b) for a, b in zip(reps, again))
    other = _run(ResampleConfig(docs=300, scheme="match", within="knn", max_repeat=3, seed=1,
                                within_repeats="weighted"), w, generic, shards, tokens, within_log_w=log_w)[1]
    assert not all(np.array_equal(a, b) for a, b in zip(reps, other))


def test_within_knn_even_repeats_no_document_while_its_cluster_has_undrawn_ones(generic_shards):
    shards, tokens, generic = generic_shards
    w = density_ratio(_hist([50, 1, 1, 1, 1, 1, 1, 1]), generic, smoothing=0.0)
    log_w = _knn(shards)
    plan, reps = _run(ResampleConfig(docs=300, scheme="match", within="knn", max_repeat=3), w, generic, shards,
                      tokens, within_log_w=log_w)
    base, _ = _run(ResampleConfig(docs=300, scheme="match", max_repeat=3), w, generic, shards, tokens)
    assert np.array_equal(plan.draws, base.draws)  # the same cluster quotas as `uniform`
    leaves, lw, r = np.concatenate(shards), np.concatenate(log_w), np.concatenate(reps)
    for c in np.flatnonzero(plan.draws):
        n_c, rc = (leaves == c).sum(), r[leaves == c]
        assert rc.sum() == plan.draws[c] and rc.max() <= -(-plan.draws[c] // n_c)  # ceil(quota / members)
    lw0, r0 = lw[leaves == 0], r[leaves == 0]  # ~260 draws over 400 documents: each drawn at most once
    assert r0.max() == 1 and lw0[r0 == 1].mean() > lw0[r0 == 0].mean() + 1.0  # the closer ones are drawn


def test_within_knn_spreads_over_many_documents_at_a_high_temperature(generic_shards):
    from impsamp.resampling.within import spread

    rng = np.random.default_rng(0)
    log_w = (rng.uniform(0.5, 1.0, size=50) - 1.0) / 1e6  # tau -> infinity: uniform
    r = spread(120, log_w, cap=4, rng=np.random.default_rng(1))
    assert r.sum() == 120 and r.max() - r.min() <= 1
    sharp = spread(120, (rng.uniform(0.5, 1.0, size=50) - 1.0) / 0.01, cap=4, rng=np.random.default_rng(1))
    assert sharp.sum() == 120 and sharp.max() == 4 and (sharp == 4).sum() >= 25 and (sharp == 0).sum() >= 15


@pytest.mark.parametrize("kw, message", [
    ({"within": "nearest"}, "--within must be one of auto, uniform, knn"),
    ({"within": "knn", "scheme": "crisp"}, "--within knn weighs documents inside `match`"),
    ({"within": "knn", "method": "uniform"}, "--within knn weighs documents inside `match`"),
    ({"within": "knn", "within_temperature": 0}, "--within-temperature must be > 0"),
    ({"within": "knn+ngram", "method": "ngram"}, "--within knn+ngram weighs documents inside `match`"),
    # settings the run would ignore are refused, not dropped
    ({"scheme": "topk", "within_repeats": "weighted"}, "--within-repeats shape(s) how --within's document weights"),
    ({"scheme": "topk", "within_temperature": 0.5}, "--scheme topk uses no such weights: leave them out"),
    ({"method": "uniform", "within_temperature": 0.3}, "--method uniform uses no such weights"),
    ({"within": "uniform", "within_temperature": 0.3}, "--within uniform uses no such weights"),
    ({"method": "ngram", "scheme": "crisp"}, "--method ngram ranks documents and draws each at most once"),
])
def test_within_flags_are_checked(kw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ResampleConfig(docs=10, **kw)


def _two_clusters(n_a, size_a, n_b, size_b):
    leaves = np.array([0] * n_a + [1] * n_b, dtype=np.int64)
    sizes = np.array([size_a] * n_a + [size_b] * n_b, dtype=np.int64)
    return [leaves], [sizes], _hist([n_a, n_b])


def test_repeat_cap_holds_under_a_token_budget_and_token_capacity_is_checked():
    shards, sizes, generic = _two_clusters(10, 1, 1000, 100)
    cfg = ResampleConfig(tokens=5050, scheme="match", max_repeat=1)
    plan = make_plan(cfg, np.array([0.5, 0.5]) / generic.probs(), generic, shards, sizes)
    reps = unit_repeats(cfg, plan, 0, shards[0])
    assert reps.max() <= 1 and abs(float((reps * sizes[0]).sum()) - 5050) / 5050 < 0.03
    shards, sizes, generic = _two_clusters(1000, 1, 1, 100)  # 1,100 tokens at most once each
    with pytest.raises(ConfigError, match="at most 1,100 tokens"):
        make_plan(ResampleConfig(tokens=9901, scheme="match", max_repeat=1),
                  np.array([0.01, 0.99]) / generic.probs(), generic, shards, sizes)


def test_a_cluster_weighted_zero_takes_no_spill():
    shards, sizes, generic = _two_clusters(10, 1, 1000, 1)
    with pytest.raises(ConfigError, match="at most 10 documents"):
        make_plan(ResampleConfig(docs=50, scheme="match", max_repeat=1), np.array([1.0, 0.0]), generic,
                  shards, sizes)


@pytest.mark.parametrize("repeats,most", [("weighted", 4), ("even", 1)])
def test_within_knn_meets_a_token_budget_when_close_documents_are_short(repeats, most):
    n = 500
    leaves = [np.zeros(2 * n, dtype=np.int64)]
    sizes = [np.array([10] * n + [1000] * n)]
    log_w = [np.concatenate([np.zeros(n), np.full(n, -10.0)])]  # the short documents are the close ones
    cfg = ResampleConfig(tokens=101_000, scheme="match", within="knn", within_repeats=repeats)
    plan = make_plan(cfg, np.ones(1), _hist([2 * n]), leaves, sizes, within_log_w=log_w)
    reps = unit_repeats(cfg, plan, 0, leaves[0])
    got = float((reps * sizes[0]).sum())
    assert abs(got - 101_000) / 101_000 < 0.02 and reps.max() == most and plan.draws.sum() == reps.sum()
    # the close documents are used up to the cap first: 4 each (weighted), or once each (even: 101,000
    # tokens of a 505,000-token cluster need no repeat)
    assert reps[:n].sum() == most * n


def test_within_knn_ngram_sums_standardised_scores_whatever_the_shard_cut():
    from impsamp.resampling.within import HYBRID_SCALE, knn_ngram_log_weights

    rng = np.random.default_rng(0)
    sim, gram = rng.uniform(0.3, 0.9, 50), rng.normal(0.0, 40.0, 50)
    whole = knn_ngram_log_weights([sim], [gram], 0.05)[0]
    cut = np.concatenate(knn_ngram_log_weights([sim[:17], sim[17:]], [gram[:17], gram[17:]], 0.05))
    np.testing.assert_allclose(cut, whole)  # standardised over the pool, not per shard
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    np.testing.assert_allclose(whole, (z(sim) + z(gram)) / (HYBRID_SCALE * 0.05))
    # either score raises a unit's weight; a higher temperature flattens the spread
    up = knn_ngram_log_weights([sim], [np.where(np.arange(50) == 3, gram + 100, gram)], 0.05)[0]
    assert up[3] - np.delete(up, 3).mean() > whole[3] - np.delete(whole, 3).mean()
    assert np.ptp(knn_ngram_log_weights([sim], [gram], 0.5)[0]) == pytest.approx(np.ptp(whole) / 10)


def _top_mask(log_w, amount, sizes=None):
    """The units --within-top may draw, found the plain way: sort by weight, take them until `amount`."""
    lw = np.concatenate(log_w)
    t = np.ones(len(lw)) if sizes is None else np.concatenate(sizes).astype(float)
    order = np.argsort(-lw, kind="stable")
    n = int(np.argmax(np.cumsum(t[order]) >= amount)) + 1
    mask = np.zeros(len(lw), bool)
    mask[order[:n]] = True
    return mask


def test_within_top_draws_only_the_top_units_once_and_bends_the_quotas(generic_shards):
    shards, tokens, generic = generic_shards
    w = density_ratio(_hist([50, 1, 1, 1, 1, 1, 1, 1]), generic, smoothing=0.0)
    log_w = _knn(shards)
    cfg = ResampleConfig(docs=200, scheme="match", within="knn", within_top=1.5)
    plan, reps = _run(cfg, w, generic, shards, tokens, within_log_w=log_w)
    base, _ = _run(ResampleConfig(docs=200, scheme="match", within="knn"), w, generic, shards, tokens,
                   within_log_w=log_w)
    leaves, r = np.concatenate(shards), np.concatenate(reps)
    top = _top_mask(log_w, 300)
    assert r.sum() == 200 and r.max() == 1 and not r[~top].any()  # only the top 300 units, each once
    assert plan.eligible == 300 and plan.max_repeat == 1
    # cluster 0 (~175 draws without it) holds only its eligible units; the rest went to its neighbours
    held0 = int((top & (leaves == 0)).sum())
    assert base.draws[0] > held0 and plan.draws[0] == held0 and plan.spilled[0] > 0
    assert plan.draws.sum() == 200 and (plan.draws[1:] > base.draws[1:]).any()
    again = _run(cfg, w, generic, shards, tokens, within_log_w=log_w)[1]
    assert all(np.array_equal(a, b) for a, b in zip(reps, again))
    # with --max-repeat R the room is the same F x the budget: the top F / R of it, each up to R times
    twice, twice_reps = _run(ResampleConfig(docs=200, scheme="match", within="knn", within_top=1.5, max_repeat=2), w,
                             generic, shards, tokens, within_log_w=log_w)
    r2 = np.concatenate(twice_reps)
    assert twice.eligible == 150 and r2.sum() == 200 and r2.max() == 2 and not r2[~_top_mask(log_w, 150)].any()
    # F past the pool makes every unit eligible: the quotas of --max-repeat 1 (cluster 7's 2 units spill one)
    loose, _ = _run(ResampleConfig(docs=200, scheme="match", within="knn", within_top=5), w, generic, shards,
                    tokens, within_log_w=log_w)
    once, _ = _run(ResampleConfig(docs=200, scheme="match", within="knn", max_repeat=1), w, generic, shards,
                   tokens, within_log_w=log_w)
    assert loose.eligible == 1000 and np.array_equal(loose.draws, once.draws)
    assert np.array_equal(loose.spilled, once.spilled) and loose.spilled[7] > 0


def test_within_top_holds_a_token_budget_and_skips_clusters_the_target_does_not_weigh(generic_shards):
    shards, tokens, generic = generic_shards
    target = _hist([30, 10, 10, 0, 0, 1, 1, 1])
    w = density_ratio(target, generic, smoothing=0.0)
    log_w = _knn(shards, seed=1)
    leaves = np.concatenate(shards)
    log_w[0] = np.where(shards[0] == 3, 50.0, log_w[0])  # the best-scored units lie in a cluster weighted 0
    cfg = ResampleConfig(tokens=20_000, scheme="match", within="knn", within_top=1.25)
    plan, reps = _run(cfg, w, generic, shards, tokens, within_log_w=log_w)
    r, t = np.concatenate(reps), np.concatenate(tokens)
    assert abs(float((r * t).sum()) - 20_000) / 20_000 < 0.02 and r.max() == 1
    weighed = [np.where(np.isin(s, [3, 4]), -np.inf, lw) for s, lw in zip(shards, log_w)]
    top = _top_mask(weighed, 25_000, tokens)
    assert not r[~top].any() and not r[np.isin(leaves, [3, 4])].any()
    assert plan.eligible == int(top.sum())


def test_within_top_is_checked():
    for kw, message in (({"within_top": 0.5, "within": "knn"}, "--within-top must be >= 1"),
                        ({"within_top": 2, "within": "uniform"}, "--within-top ranks units by their --within"),
                        ({"within_top": 2, "method": "ngram"}, "--within-top ranks units by their --within"),
                        ({"within_top": 2, "within": "knn", "scheme": "crisp"}, "use it with the importance method, "
                                                                               "--scheme match")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            ResampleConfig(docs=10, **kw)
    shards, sizes, generic = _two_clusters(10, 1, 10, 1)  # auto with a saved histogram: no weights to rank by
    with pytest.raises(ConfigError, match="a target given as a saved histogram has none"):
        make_plan(ResampleConfig(docs=5, within_top=1.5), np.ones(2), generic, shards, sizes)


def test_within_top_repeats_only_when_the_weighed_clusters_hold_less_than_the_budget():
    shards, sizes, generic = _two_clusters(40, 1, 1000, 1)
    log_w = [np.random.default_rng(0).normal(size=1040)]
    cfg = ResampleConfig(docs=100, within="knn", within_top=1.5)
    plan = make_plan(cfg, np.array([1.0, 0.0]), generic, shards, sizes, within_log_w=log_w)
    reps = unit_repeats(cfg, plan, 0, shards[0])
    assert plan.eligible == 40 and plan.max_repeat == 3 and reps.sum() == 100 and reps[:40].max() == 3
    assert not reps[40:].any()  # never a unit of a cluster the target does not weigh
    with pytest.raises(ConfigError, match="budget impossible with --max-repeat 2"):
        make_plan(ResampleConfig(docs=100, within="knn", within_top=1.5, max_repeat=2), np.array([1.0, 0.0]),
                  generic, shards, sizes, within_log_w=log_w)


@pytest.mark.parametrize("repeats", ["even", "weighted"])
def test_within_top_holds_a_bytes_budget_under_either_repeat_mode(generic_shards, repeats):
    shards, sizes, generic = generic_shards  # sizes read as bytes here
    w = density_ratio(_hist([50, 5, 5, 1, 1, 1, 1, 1]), generic, smoothing=0.0)
    log_w = _knn(shards, seed=2)
    cfg = ResampleConfig(bytes=30_000, scheme="match", within="knn", within_top=1.5, max_repeat=2,
                         within_repeats=repeats)
    plan, reps = _run(cfg, w, generic, shards, sizes, within_log_w=log_w)
    r, t = np.concatenate(reps), np.concatenate(sizes)
    assert abs(float((r * t).sum()) - 30_000) / 30_000 < 0.02 and r.max() <= 2
    assert not r[~_top_mask(log_w, 22_500, sizes)].any()  # the top F / R = 0.75 of the budget


def test_spread_rounds_a_token_quota_by_sizes_and_meets_it_on_average():
    from impsamp.resampling.within import spread

    from impsamp.resampling.planning import _drawable_units

    rng = np.random.default_rng(0)
    size = np.exp(rng.normal(5.5, 0.8, 60))
    size[0] = 50 * size.mean()  # one very long document
    quota = 3 * float(np.median(size))
    # it is not drawn into a share it would swamp (the plan decides, for the spread and the shares alike);
    # counting members instead (the rounding before 0.7.8) drew it about one time in 20, at 17 times the quota
    drawable, n, mean = _drawable_units(np.ones(1), quota, [np.zeros(60, np.int64)], [size])
    assert not drawable[0][0] and drawable[0][1:].all() and n[0] == 59 and mean[0] == pytest.approx(size[1:].mean())
    draws = [spread(quota, np.zeros(59), 1, np.random.default_rng(s), size[1:]) for s in range(400)]
    totals = [float((r * size[1:]).sum()) for r in draws]
    assert abs(np.mean(totals) - quota) / quota < 0.03  # the quota is met on average
    # a cluster holding only long documents still gets its share, on average: one now and then
    long = np.array([5000.0, 6000.0, 7000.0])
    totals = [float((spread(500.0, np.zeros(3), 1, np.random.default_rng(s), long) * long).sum())
              for s in range(2000)]
    assert 0 < np.mean(np.array(totals) > 0) < 0.2 and abs(np.mean(totals) - 500) / 500 < 0.2


def test_a_few_long_documents_do_not_double_a_small_token_budget():
    """A pool whose mean document length is set by a few long ones: the default's token quotas are filled
    by the documents' sizes, not by counts of the cluster's mean size; and each cluster makes up for what the
    ones before it took past their quotas, so the budget is missed by about one document, not one per cluster
    (the rounding of 16 clusters alone put 1 seed in 60 12.7% over)."""
    rng = np.random.default_rng(1)
    n = 900
    leaves = [rng.integers(0, 16, size=n).astype(np.int64)]
    sizes = [np.where(rng.random(n) < 0.01, 16_000, rng.integers(100, 600, size=n)).astype(np.int64)]
    log_w = [rng.normal(size=n)]
    generic = _hist(np.bincount(leaves[0], minlength=16))
    for seed in range(12):
        cfg = ResampleConfig(tokens=20_000, scheme="match", within="knn", seed=seed)
        plan = make_plan(cfg, np.ones(16), generic, leaves, sizes, within_log_w=log_w)
        reps = unit_repeats(cfg, plan, 0, leaves[0])
        got = float((reps * sizes[0]).sum())
        assert abs(got - 20_000) < 1_200, (seed, got)  # two of the short documents at most
        per_cluster = np.bincount(leaves[0], weights=reps * sizes[0], minlength=16)
        assert (np.abs(per_cluster - 1_250) < 1_250).all(), per_cluster  # the quotas still hold, to a document


def test_a_uniform_sample_is_measured_against_a_target_given_and_drawn_the_same(tmp_path):
    import json

    from ._helpers import RESAMPLE_ARGS, build_pipeline, invoke, ok

    p = build_pipeline(tmp_path)
    runs = {}
    for name, target in (("with", ("--target", p["target"])), ("without", ())):
        args = [a for a in RESAMPLE_ARGS(p["emb"], p["clu"], p["target"], tmp_path / name, "--method", "uniform")
                if a not in ("--target", p["target"])] + list(target)
        runs[name] = (ok(invoke(*args)).output, json.loads((tmp_path / name / "manifest.json").read_text())["stats"])
    (said, stats), (said0, stats0) = runs["with"], runs["without"]
    assert stats["targets"][0]["documents"] == 40 and not stats0["targets"]
    assert stats["kl_target_generic"] > 0.5 and stats0["kl_target_generic"] == pytest.approx(0, abs=1e-9)
    assert "KL(target||generic)" in said and "KL(generic||generic)" in said0
    data = sorted(p.name for p in (tmp_path / "with").glob("data-*"))
    assert data and all((tmp_path / "with" / n).read_bytes() == (tmp_path / "without" / n).read_bytes()
                        for n in data)  # the target is only measured against


def test_backoff_on_a_flat_clustering_is_said_to_do_nothing(tmp_path, caplog):
    import logging

    from impsamp.resampling import resample

    from ._helpers import build_pipeline

    p = build_pipeline(tmp_path)
    with caplog.at_level(logging.WARNING, logger="impsamp.resampling.stage"):
        resample(p["emb"], p["clu"], tmp_path / "b", targets=[str(p["target"])],
                 config=ResampleConfig(docs=50, backoff=2.0))
    assert any("--backoff 2 does nothing on a flat clustering" in r.getMessage() for r in caplog.records)


def test_the_recorded_command_leaves_out_where_and_how_the_run_went():
    from impsamp.resampling.stage import command_line

    base = ["resample", "E", "C", "--target", "law.jsonl", "--tokens", "5000", "--out", "sel"]
    noisy = [*base[:3], "--engine", "ray", "--ray-address=auto", *base[3:], "--no-progress", "--overwrite",
             "--no-ngram-cache"]
    assert command_line(noisy) == command_line(base) == "impsamp " + " ".join(base)


def test_a_documents_text_in_the_data_card_is_shown_not_rendered():
    """The card's examples went in raw: a document's <script> became an element, its `**` bold, once rendered."""
    markdown_it = pytest.importorskip("markdown_it")
    from impsamp.resampling.report import card_text

    text = '<script>alert(1)</script> **bold** a|b `code` [link](x) back\\slash "quoted"\nnext line'
    cell = card_text(text)
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(f"| a | b |\n|---|---|\n| 1 | {cell} |\n")
    assert "<script>" not in html and "<strong>" not in html and "<code>" not in html and "<a " not in html
    assert html.count("<td>") == 2 and "&lt;script&gt;alert(1)&lt;/script&gt; **bold** a|b `code`" in html

"""Inside the cluster quotas: how pure a selection could be, and how pure the document weights make it.

    .venv/bin/python benchmarks/within_purity.py                          # seeds 0,1,2 at 40,000 tokens
    .venv/bin/python benchmarks/within_purity.py --seeds 2 --work /tmp/p  # reuse paper_table.py's --work

`--within` leaves each cluster's token quota (the target's histogram matched) as it is and only decides
which of the cluster's documents fill it. For every bundled domain as the target this script takes the
selection 0.6 made by default (`importance`, `match`, `--within knn`) at the budget and, from its per-cluster token
quotas and the pool's `domain` labels (which no selector sees), works out the most of the budget that any
within-cluster weighting could put on the target domain: each cluster's quota against the target-domain
tokens the cluster holds, with the repeats `--within-repeats even` (the default) allows in that cluster
(once while the quota is under the cluster's size) and with the repeat cap (4). Then it draws the quotas
with other document weights and reports the share of the selected tokens that are in the target domain,
so the gap between the weights and the quota-bound maximum shows.

Weights compared (the quotas are the same for all but `uniform`, which has no repeat cap to spill by, up to
whole-document rounding): `uniform`, `knn`, `knn` at tau 0.02, `knn+ngram` (the library's), and through
the `--within module:function` hook: the n-gram log-ratio averaged per n-gram instead of summed (DSIR
sums, which favours long documents) and its sum with the cosine, a kNN density ratio (target documents
among a unit's 20 nearest of pool + target), and a logistic regression on the hashed n-grams (target
sample against the pool, cross-fitted in 5 folds so that no unit is scored by a model trained on it) alone
and summed with the cosine, DSIR's own summed log-ratio alone and beside the classifier's odds (z-scores
averaged), the classifier on cased n-grams (`FEATURISERS[CASED]`), and either classifier's odds capped at even
odds (min(o, 0) on the same slope: every unit the classifier calls the target's weighs the same, so the
draw among them is not tilted to the domain's most distinctive documents). `--train COLUMN [--within-top
F]` trains paper_table.py's LM on a hooked column's selections; `--membership` tables how well the
classifier finds each domain's pool units under each featuriser (benchmarks/results/membership.md).

Embeddings and clusters are made as `paper_table.py` makes them (the demo's model, 128 tokens, k=64, the
seed's k-means), in the same folder names, so a paper-table `--work` folder is reused. Selection only: no
LM is trained without --train (about 2 minutes a seed after the pool's embedding). Writes
benchmarks/results/within_purity.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "within_purity.md"
MEMBERSHIP = ROOT / "benchmarks" / "results" / "membership.md"
HOOKED: dict[str, np.ndarray] = {}  # the per-unit log-weights the hook hands back, set before each draw
COLUMNS = ["uniform", "knn", "knn tau 0.02", "knn+ngram", "ngram per n-gram", "knn+ngram per n-gram",
           "kNN density ratio", "n-gram classifier", "knn+n-gram classifier", "DSIR log-ratio sum",
           "n-gram classifier+DSIR", "cased n-gram classifier", "cased classifier, capped at even odds",
           "n-gram classifier, capped at even odds"]


def hook(target_vectors: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """`--within __main__:hook`: the precomputed weights of the pool's one embedding shard."""
    lw = HOOKED["log_w"]
    if len(lw) != len(vectors):
        raise ValueError(f"{len(lw)} weights for {len(vectors)} units")
    return np.exp(np.maximum(lw - lw.max(), -700.0))


def prepare(work: Path, seed: int):
    """The pool's embeddings and the seed's k-means clusters, named as paper_table.py names them."""
    from impsamp.clustering import ClusterConfig, cluster
    from impsamp.comparison import CompareConfig
    from impsamp.datasets import demo_corpus
    from impsamp.embedding import EmbedConfig, embed
    from impsamp.embedding.loading import backend_label, embed_backend

    cfg = CompareConfig()  # the demo's model, max_tokens and k
    backend, quantize = embed_backend(cfg.backend)
    emb = work / f"embeddings-{backend_label((backend, quantize))}-{cfg.max_tokens}"
    clu = emb.with_name(f"clusters-k{cfg.k}-s{seed}-{emb.name}")
    if not (emb / "manifest.json").exists():
        embed(demo_corpus().pool, emb, EmbedConfig(model=cfg.model, max_tokens=cfg.max_tokens, backend=backend,
                                                  quantize=quantize), overwrite=True, progress=True)
    if not (clu / "manifest.json").exists():
        cluster(emb, clu, ClusterConfig(k=cfg.k, seed=seed), overwrite=True)
    return emb, clu


class Pool(NamedTuple):
    """The pool's units (one embedding shard, whole documents: unit i is document i), in unit order."""

    domain: np.ndarray
    tokens: np.ndarray
    texts: list[str]
    vectors: np.ndarray


def pool_units(emb: Path) -> Pool:
    import pyarrow.parquet as pq

    from impsamp.datasets import demo_corpus

    shards = sorted(emb.glob("docs-*.parquet"))
    units = pq.read_table(shards[0]).to_pandas()
    if len(shards) != 1 or (units["window"] != 0).any() or (units["doc_index"] != np.arange(len(units))).any():
        raise SystemExit(f"{emb}: expected one shard of whole documents in order (the demo's embedding)")
    pool = pq.read_table(demo_corpus().pool, columns=["text", "domain"])
    rows = units["row"].to_numpy()
    return Pool(np.asarray(pool.column("domain").to_pylist())[rows], units["text_tokens"].to_numpy(np.float64),
                [pool.column("text")[int(r)].as_py() for r in rows],
                np.load(sorted(emb.glob("vectors-*.npy"))[0]).astype(np.float32))


def target_share(pool: Pool, idx: np.ndarray, domain: str) -> float:
    """The share of a selection's tokens (units `idx`, repeats included) that are in `domain`."""
    on = pool.domain[idx] == domain
    return float(pool.tokens[idx][on].sum() / pool.tokens[idx].sum())


LIBRARY, CASED = "lower-cased words (the library's)", "cased: case and punctuation kept"
FEATURISERS = {LIBRARY: None,
               "case kept": {"lowercase": False},
               CASED: {"lowercase": False, "token_pattern": r"\w+|[^\w\s]"},
               "characters 3-5": {"lowercase": False, "analyzer": "char_wb", "ngram_range": (3, 5)}}
"""Hashed n-gram featurisers for the classifier: the library's (`selectors.ngram_matrix`, DSIR's), and sklearn
HashingVectorizer settings over its word unigrams and bigrams, 2**16 buckets, raw counts. CASED keeps case
and gives every non-space character that is not a word character a token of its own."""


def featurise(name: str, texts: list[str]):
    """Hashed n-gram counts of `texts` (CSR) under FEATURISERS[name]."""
    from sklearn.feature_extraction.text import HashingVectorizer

    from impsamp.selectors import N_FEATURES, ngram_matrix

    if FEATURISERS[name] is None:
        return ngram_matrix(texts)
    vec = HashingVectorizer(**{"n_features": N_FEATURES, "ngram_range": (1, 2), "alternate_sign": False,
                               "norm": None, "dtype": np.float64, **FEATURISERS[name]})
    return vec.transform(texts)


def recall_at_precision(score: np.ndarray, on: np.ndarray, tokens: np.ndarray, precision: float) -> float:
    """The share of the target domain's tokens among the units ranked highest by `score`, taken as far down
    as the ranking stays at `precision` (token-weighted) or better."""
    order = np.argsort(-score, kind="stable")
    good = np.cumsum(tokens[order] * on[order])
    ok = np.flatnonzero(good / np.cumsum(tokens[order]) >= precision)
    return float(good[ok[-1]] / good[-1]) if len(ok) else 0.0


def membership(pool: Pool, domains: list[str]) -> list[str]:
    """`--membership`: how well the cross-fitted n-gram classifier, under each featuriser, tells each
    domain's pool units from the rest (pool labels, which no selector sees): ROC AUC, and the share of
    the domain's tokens it finds at 98% and 95% precision."""
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    from impsamp.datasets import demo_corpus
    from impsamp.selectors import ngram_classifier_odds

    pool_x = {f: featurise(f, pool.texts) for f in FEATURISERS}
    lines = ["| domain | " + " | ".join(FEATURISERS) + " |", "|---|" + "---|" * len(FEATURISERS)]
    for d in domains:
        on, sample = pool.domain == d, pq.read_table(demo_corpus().sample(d)).column("text").to_pylist()
        cells = []
        for f in FEATURISERS:
            odds = ngram_classifier_odds(pool_x[f], featurise(f, sample))[0]
            cells.append(f"{roc_auc_score(on, odds):.4f} / {recall_at_precision(odds, on, pool.tokens, 0.98):.2f} / "
                         f"{recall_at_precision(odds, on, pool.tokens, 0.95):.2f}")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines


def hooked_log_weights(target_vectors, target_texts, pool: Pool, pool_ngrams) -> dict[str, np.ndarray]:
    """The columns that go through the `--within` hook: per-unit log-weights (each standardised over the
    pool, then divided by a temperature: the scale `knn+ngram` uses)."""
    import faiss

    from impsamp.selectors import ngram_classifier_odds, ngram_counts, ngram_log_ratio, ngram_matrix

    def z(x: np.ndarray) -> np.ndarray:
        return (x - x.mean()) / max(float(x.std()), 1e-12)

    def capped(o: np.ndarray) -> np.ndarray:  # z(o) / 0.1's slope below even odds, flat above
        return np.minimum(o, 0.0) / (0.1 * max(float(o.std()), 1e-12))

    matrix, counts, cased = pool_ngrams
    ratio = ngram_log_ratio(ngram_counts(target_texts), counts)
    per_ngram = np.asarray(matrix @ ratio).ravel() / np.maximum(np.asarray(matrix.sum(axis=1)).ravel(), 1.0)
    vectors = pool.vectors
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(target_vectors)
    cosine = index.search(vectors, 1)[0][:, 0].astype(np.float64)
    both = faiss.IndexFlatIP(vectors.shape[1])
    both.add(np.vstack([vectors, target_vectors]))
    near = both.search(vectors, 21)[1][:, 1:]  # the unit itself first
    in_target = (near >= len(vectors)).sum(axis=1)
    odds = ngram_classifier_odds(matrix, ngram_matrix(target_texts))[0]  # what --within ngram-classifier fits
    summed = np.asarray(matrix @ ratio).ravel()  # DSIR's own weight: the log-ratio summed over the unit's n-grams
    cased_odds = ngram_classifier_odds(cased, featurise(CASED, target_texts))[0]
    return {"ngram per n-gram": z(per_ngram) / 0.1, "knn+ngram per n-gram": (z(cosine) + z(per_ngram)) / 0.1,
            "kNN density ratio": 4.0 * np.log((in_target + 0.5) / (20 - in_target + 0.5)),
            "n-gram classifier": z(odds) / 0.1, "knn+n-gram classifier": (z(cosine) + z(odds)) / 0.1,
            "DSIR log-ratio sum": z(summed) / 0.1, "n-gram classifier+DSIR": (z(odds) + z(summed)) / 0.2,
            "cased n-gram classifier": z(cased_odds) / 0.1,
            "cased classifier, capped at even odds": capped(cased_odds),
            "n-gram classifier, capped at even odds": capped(odds)}


def embedded(path: Path, emb: Path, out: Path) -> np.ndarray:
    """`path`'s vectors, embedded with the pool's settings (`emb`'s) and kept in `out` for the next run."""
    from impsamp.embedding import Embeddings, embed

    if not (out / "manifest.json").exists():
        embed(path, out, Embeddings.load(emb).config, overwrite=True)
    return np.concatenate([np.load(f) for f in sorted(out.glob("vectors-*.npy"))]).astype(np.float32)


def domain_weights(domain: str, emb: Path, work: Path, pool: Pool, pool_ngrams, cache: dict) -> dict[str, np.ndarray]:
    """The hooked columns' per-unit log-weights toward `domain` (they do not depend on the seed: kept in
    `cache`); its sample embedded like the pool, in WORK/target-DOMAIN-EMBEDDING."""
    import pyarrow.parquet as pq

    from impsamp.datasets import demo_corpus

    if domain not in cache:
        sample = demo_corpus().sample(domain)
        target_vectors = embedded(sample, emb, work / f"target-{domain}-{emb.name}")
        cache[domain] = hooked_log_weights(target_vectors, pq.read_table(sample).column("text").to_pylist(), pool,
                                           pool_ngrams)
    return cache[domain]


def purity(domain: str, emb: Path, clu: Path, work: Path, seed: int, tokens: int, pool: Pool, weights: dict
           ) -> dict:
    """Each column's target-domain share of the selected tokens, and the most its own quotas allow."""
    from impsamp.datasets import demo_corpus
    from impsamp.resampling import ResampleConfig, resample

    on = pool.domain == domain
    leaves = np.load(sorted(clu.glob("assign-*.npy"))[0])[:, -1]
    settings = {"uniform": {"within": "uniform"}, "knn": {"within": "knn"},
                "knn tau 0.02": {"within": "knn", "within_temperature": 0.02}, "knn+ngram": {"within": "knn+ngram"},
                **{name: {"within": "__main__:hook"} for name in weights}}
    out, shares, bounds = work / "purity-selection", {}, {}
    for name, extra in settings.items():
        HOOKED["log_w"] = weights.get(name)
        target = work / f"target-{domain}-{emb.name}" if name != "knn+ngram" else demo_corpus().sample(domain)
        sel = resample(emb, clu, out, targets=[str(target)], config=ResampleConfig(tokens=tokens, seed=seed, **extra),
                       overwrite=True)
        t = sel.to_table()
        idx, cl = t.column("doc_index").to_numpy(), t.column("cluster").to_numpy()
        shares[name] = target_share(pool, idx, domain)
        if name != "uniform":  # the most this selection's own per-cluster quotas allow (tokens drawn per cluster)
            k = len(np.bincount(leaves)) if len(leaves) else 0
            quota = np.bincount(cl, weights=pool.tokens[idx], minlength=k)
            size = np.bincount(leaves, weights=pool.tokens, minlength=len(quota))
            held = np.bincount(leaves[on], weights=pool.tokens[on], minlength=len(quota))
            even = np.minimum(sel.stats["max_repeat"], np.maximum(1, np.ceil(quota / np.maximum(size, 1e-12) - 1e-9)))
            bounds[name] = (float(np.minimum(quota, even * held).sum() / quota.sum()),
                            float(np.minimum(quota, sel.stats["max_repeat"] * held).sum() / quota.sum()))
    shutil.rmtree(out, ignore_errors=True)
    return {"shares": shares, "bound_once": bounds["knn"][0], "bound_cap": bounds["knn"][1],
            "bounds": bounds}


def train(column: str, emb: Path, clu: Path, work: Path, seed: int, tokens: int, domains: list[str], pool: Pool,
          pool_ngrams, cache: dict, within_top: float | None = None, max_repeat: int | None = None) -> None:
    """`--train COLUMN`: paper_table.py's LM run (the demo's settings, float32) of `importance` with the
    column's weights through the `--within` hook (with `--within-top`, `--max-repeat` when given), per domain,
    in WORK/lm-COLUMN[-topF[rR]]-TOKENS-sSEED. paper_table reuses a finished run whose settings match, and the
    hook's name does not change with its weights: delete that folder after changing them."""
    from argparse import Namespace

    import paper_table

    top = f"-top{within_top}{f'r{max_repeat}' if max_repeat else ''}" if within_top else ""
    out = work / f"lm-{column.replace(' ', '_').replace('+', 'and')}{top}-{tokens}-s{seed}"
    for stage in (emb, clu):  # paper_table finds them by name: a copy, so its folders stay its own
        if not (out / stage.name / "manifest.json").exists():
            shutil.copytree(stage, out / stage.name, dirs_exist_ok=True)
    for d in domains:
        HOOKED["log_w"] = domain_weights(d, emb, work, pool, pool_ngrams, cache)[column]
        args = Namespace(domains=d, methods="importance", tokens=tokens, k=None, scheme=None, max_tokens=None,
                         dtype="float32", within="__main__:hook", within_temperature=None, within_repeats=None,
                         max_repeat=max_repeat, within_top=within_top, preset=None, steps=None, finetune_steps=None,
                         seed=seed, windows=False, work=str(out), progress=False)
        res = paper_table.run(args)["domains"][d]["methods"]["importance"]
        print(f"[lm] {column} seed {seed} {d}: {res['metrics']['finetuned']['macro_ppl']:.2f} after fine-tuning, "
              f"share {res.get('target_domain_share')}", flush=True)


def table(res: dict[int, dict[str, dict]]) -> list[str]:
    domains = sorted(next(iter(res.values())))
    head = ["domain", "most (even repeats)", "most (up to the cap)", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def mean(d: str, get) -> float:
        return float(np.mean([get(res[s][d]) for s in res]))

    for d in [*domains, "**macro**"]:
        ds = domains if d == "**macro**" else [d]
        cells = [np.mean([mean(x, lambda r: r["bound_once"]) for x in ds]),
                 np.mean([mean(x, lambda r: r["bound_cap"]) for x in ds]),
                 *[np.mean([mean(x, lambda r, c=c: r["shares"][c]) for x in ds]) for c in COLUMNS]]
        lines.append(f"| {d} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="k-means and draw seeds (each: its own clustering)")
    p.add_argument("--tokens", type=int, default=40_000)
    p.add_argument("--domains", help="comma-separated bundled domains (default: all 8)")
    p.add_argument("--work", default=str(ROOT / "benchmarks" / ".cache" / "paper"))
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    p.add_argument("--train", metavar="COLUMN", choices=COLUMNS[4:],
                   help="instead: train paper_table.py's LM on this hooked column's selections (results.json in "
                        "WORK/lm-COLUMN[-topF[rR]]-TOKENS-sSEED/compare-DOMAIN)")
    p.add_argument("--membership", action="store_true",
                   help=f"instead: the classifier's membership table per featuriser ({MEMBERSHIP.relative_to(ROOT)})")
    p.add_argument("--within-top", dest="within_top", type=float, help="--train: importance's --within-top F")
    p.add_argument("--max-repeat", dest="max_repeat", type=int, help="--train: importance's --max-repeat")
    a = p.parse_args()
    from impsamp.datasets import demo_corpus
    from impsamp.selectors import ngram_counts, ngram_matrix

    work, started = Path(a.work), dt.datetime.now(dt.timezone.utc)
    domains = a.domains.split(",") if a.domains else list(demo_corpus().domains)
    res: dict[int, dict[str, dict]] = {}
    pool_ngrams, cache = None, {}
    if a.membership:
        lines = [f"# The n-gram classifier's membership signal per featuriser ({started:%Y-%m-%d %H:%M} UTC)", "",
                 f"Machine: {machine()}. Command: `{' '.join(['within_purity.py', *sys.argv[1:]])}`. For each bundled "
                 "domain as the target: the cross-fitted n-gram classifier of `--within ngram-classifier` (its "
                 "sample against the pool's units) with the hashed n-grams of each featuriser, scored against the "
                 "pool's `domain` labels (which no selector sees). Each cell: ROC AUC / the share of the domain's "
                 "pool tokens found at 98% precision / at 95% (token-weighted, down the ranking by log-odds).", "",
                 *membership(pool_units(prepare(work, int(a.seeds.split(",")[0]))[0]), domains)]
        if not a.no_write:
            MEMBERSHIP.write_text("\n".join(lines) + "\n")
        return
    for seed in [int(s) for s in a.seeds.split(",")]:
        emb, clu = prepare(work, seed)
        pool = pool_units(emb)
        pool_ngrams = pool_ngrams or (ngram_matrix(pool.texts), ngram_counts(pool.texts),
                                      featurise(CASED, pool.texts))
        if a.train:
            train(a.train, emb, clu, work, seed, a.tokens, domains, pool, pool_ngrams, cache, a.within_top,
                  a.max_repeat)
            continue
        res[seed] = {d: purity(d, emb, clu, work, seed, a.tokens, pool,
                               domain_weights(d, emb, work, pool, pool_ngrams, cache)) for d in domains}
        for d, r in res[seed].items():
            print(f"seed {seed} {d}: most {r['bound_once']:.3f}/{r['bound_cap']:.3f}, "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["shares"].items()), flush=True)
    if a.train:
        return
    lines = [f"# Purity inside the cluster quotas ({started:%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {machine()}. Command: `{' '.join(['within_purity.py', *sys.argv[1:]])}`. "
             f"Budget {a.tokens:,} tokens; seeds {a.seeds} (means over them). Share of the selected tokens "
             "that are in the target domain. The first two columns: the most any within-cluster weighting could "
             "put on the target domain under `knn`'s (0.6's default's) per-cluster token quotas, each cluster's "
             "quota against the target-domain tokens it holds, with the repeats `even` allows there (once while "
             "the quota is under the cluster's size) and up to the cap. Each selection's quotas differ a "
             "little (whole documents), so a column can pass them by a point.", "", *table(res)]
    print("\n".join(lines))
    if not a.no_write:
        RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

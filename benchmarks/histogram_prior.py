"""The target histogram from the pool: is a 200-document sample's cluster histogram the quota to match?

    .venv/bin/python benchmarks/histogram_prior.py --work /tmp/p                  # the distance table
    .venv/bin/python benchmarks/histogram_prior.py --work /tmp/p --train 0.5 --seeds 0 --tokens 40000

`importance` matches the cluster histogram of the in-domain sample. A few hundred documents, several of
them pieces of one page, place that histogram's mass noisily, while the pool usually holds many more units
like the target. This script measures, for every bundled domain and k-means seed, how far each estimate of
the target's histogram lies from the histogram of the domain's held-out evaluation text (total variation,
the evaluation documents assigned to their nearest centroid):

- `sample`: the sample's histogram (what `importance` matches);
- `pool, labelled`: the pool units of the target domain by the `domain` labels no selector sees;
- `pool, classifier`: the pool units the cross-fitted n-gram classifier of `--within ngram-classifier` calls
  the target's (log-odds > 0: an estimated density ratio of target to pool above 1);
- `half and half`: 0.5 x `sample` + 0.5 x `pool, classifier`;

and, for scale, the distance between two disjoint random draws of 200 of the domain's pool units (`two draws`:
what sampling alone puts between two histograms of the same text).

`--train F` trains paper_table.py's LM (the demo's settings, float32) on `importance` whose quotas match
(1 - F) x `sample` + F x `pool, classifier` instead (through a weighting function: the cluster weight is that
histogram over the generic one), with the library's default `--within` (ngram-classifier) inside them, per
domain, in WORK/lm-smoothedF-TOKENS-sSEED/compare-DOMAIN. Embeddings and clusters are made and named as
paper_table.py makes them, so a paper-table `--work` folder is reused. Writes
benchmarks/results/histogram_prior.md (the distance table).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from within_purity import Pool, embedded, pool_units, prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "histogram_prior.md"
ESTIMATES = ("sample", "pool, labelled", "pool, classifier", "half and half")
DRAW = 200
MIXED: dict[str, object] = {}  # the share F and the classifier's per-cluster unit counts, set before each run


def pool_mixed(target, generic) -> np.ndarray:
    """`weighting`: (1 - F) x the sample's histogram + F x the classifier's pool units', over the generic one."""
    share, counts = MIXED["share"], MIXED["counts"]
    p = (1 - share) * target.counts / target.total + share * counts / counts.sum()
    g = generic.counts / generic.total
    return np.where(g > 0, p / np.maximum(g, 1e-300), 0.0)


def classifier_positive(pool: Pool, pool_matrix, domain: str) -> np.ndarray:
    """Whether the cross-fitted n-gram classifier (what `--within ngram-classifier` fits) calls each unit the
    target's."""
    import pyarrow.parquet as pq

    from impsamp.datasets import demo_corpus
    from impsamp.selectors import ngram_classifier_odds, ngram_matrix

    texts = pq.read_table(demo_corpus().sample(domain)).column("text").to_pylist()
    return ngram_classifier_odds(pool_matrix, ngram_matrix(texts))[0] > 0


def classified_pool(work: Path, seed: int) -> tuple[Path, Pool, object]:
    """The pool's embedding (as paper_table.py makes it), its units, and their hashed n-grams."""
    from impsamp.selectors import ngram_matrix

    emb = prepare(work, seed)[0]
    pool = pool_units(emb)
    return emb, pool, ngram_matrix(pool.texts)


def distances(work: Path, seeds: list[int], domains: list[str]) -> list[str]:
    """The table: mean total variation over the seeds from each estimate to the evaluation text's histogram."""
    from impsamp.clustering import Clusters
    from impsamp.datasets import demo_corpus

    emb, pool, matrix = classified_pool(work, seeds[0])
    clusterings = []  # each seed's clusters and the pool units' leaves, loaded once
    for seed in seeds:
        clu = Clusters.load(prepare(work, seed)[1])
        clusterings.append((clu, np.load(sorted(clu.path.glob("assign-*.npy"))[0])[:, -1]))

    def hist(leaves: np.ndarray, k: int) -> np.ndarray:
        return np.bincount(leaves, minlength=k) / max(len(leaves), 1)

    lines = ["| domain | " + " | ".join(ESTIMATES) + " | two draws | classifier's units (precision) |",
             "|---|" + "---|" * 6]
    sums, rng, corpus = np.zeros(len(ESTIMATES) + 1), np.random.default_rng(0), demo_corpus()
    for d in domains:
        positive = classifier_positive(pool, matrix, d)
        vectors = {"sample": embedded(corpus.sample(d), emb, work / f"target-{d}-{emb.name}"),  # within_purity's
                   "eval": embedded(corpus.eval(d), emb, work / f"eval-{d}-{emb.name}")}
        tv = np.zeros(len(ESTIMATES) + 1)
        for clu, leaves in clusterings:
            k = clu.n_leaves
            near = {s: hist(clu.assign(v)[:, -1], k) for s, v in vectors.items()}
            found = hist(leaves[positive], k)
            est = (near["sample"], hist(leaves[pool.domain == d], k), found, 0.5 * near["sample"] + 0.5 * found)
            tv[:-1] += [0.5 * np.abs(e - near["eval"]).sum() / len(seeds) for e in est]
            units = rng.permutation(np.flatnonzero(pool.domain == d))
            draws = (hist(leaves[units[:DRAW]], k), hist(leaves[units[DRAW:2 * DRAW]], k))
            tv[-1] += 0.5 * np.abs(draws[0] - draws[1]).sum() / len(seeds)
        sums += tv / len(domains)
        precision = float(np.mean(pool.domain[positive] == d)) if positive.any() else float("nan")
        lines.append(f"| {d} | " + " | ".join(f"{x:.3f}" for x in tv) + f" | {int(positive.sum())} ({precision:.2f}) |")
        print(lines[-1], flush=True)
    lines.append("| **mean** | " + " | ".join(f"{x:.3f}" for x in sums) + " | |")
    return lines


def train(share: float, work: Path, seeds: list[int], tokens: int, domains: list[str]) -> None:
    """`--train F`: paper_table.py's LM run of `importance` on the mixed histogram's quotas, per domain."""
    from argparse import Namespace
    from dataclasses import replace

    import paper_table

    import impsamp.comparison as comparison
    from impsamp.clustering import Clusters

    plain = comparison.CompareConfig.selection_config

    def mixed(self, method: str):  # the importance selection gets the weighting; the others stay as they are
        cfg = plain(self, method)
        return replace(cfg, weighting="__main__:pool_mixed") if method == "importance" else cfg

    comparison.CompareConfig.selection_config = mixed
    emb, pool, matrix = classified_pool(work, seeds[0])
    positive = {d: classifier_positive(pool, matrix, d) for d in domains}
    for seed in seeds:
        clu = prepare(work, seed)[1]
        leaves, k = np.load(sorted(clu.glob("assign-*.npy"))[0])[:, -1], Clusters.load(clu).n_leaves
        out = work / f"lm-smoothed{share:g}-{tokens}-s{seed}"
        for stage in (emb, clu):  # paper_table finds them by name: a copy, so its folders stay its own
            if not (out / stage.name / "manifest.json").exists():
                shutil.copytree(stage, out / stage.name, dirs_exist_ok=True)
        for d in domains:
            MIXED.update(share=share, counts=np.bincount(leaves[positive[d]], minlength=k).astype(np.float64))
            args = Namespace(domains=d, methods="importance", tokens=tokens, k=None, scheme=None, max_tokens=None,
                             dtype="float32", within=None, within_temperature=None, within_repeats=None,
                             max_repeat=None, within_top=None, preset=None, steps=None, finetune_steps=None,
                             seed=seed, windows=False, work=str(out), progress=False)
            res = paper_table.run(args)["domains"][d]["methods"]["importance"]
            manifest = out / f"compare-{d}" / "selections" / "importance" / "manifest.json"
            if "pool_mixed" not in manifest.read_text():  # a reused run made with other weights
                raise SystemExit(f"{manifest}: not drawn with the mixed histogram; delete {out} and rerun")
            print(f"[lm] F {share:g} seed {seed} {d}: {res['metrics']['finetuned']['macro_ppl']:.2f} after "
                  f"fine-tuning, share {res.get('target_domain_share')}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4", help="k-means and draw seeds (each: its own clustering)")
    p.add_argument("--tokens", type=int, default=40_000, help="--train: the budget")
    p.add_argument("--domains", help="comma-separated bundled domains (default: all 8)")
    p.add_argument("--work", default=str(ROOT / "benchmarks" / ".cache" / "paper"))
    p.add_argument("--train", type=float, metavar="F", help="instead: the LM runs with F of the histogram from the pool")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    a = p.parse_args()
    from impsamp.comparison import CompareConfig
    from impsamp.datasets import demo_corpus

    work, seeds = Path(a.work), [int(s) for s in a.seeds.split(",")]
    domains = a.domains.split(",") if a.domains else list(demo_corpus().domains)
    if a.train is not None:
        if not 0 <= a.train <= 1:
            raise SystemExit(f"--train must be between 0 and 1, got {a.train}")
        train(a.train, work, seeds, a.tokens, domains)
        return
    started = dt.datetime.now(dt.timezone.utc)
    lines = [f"# The target histogram from the pool ({started:%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {machine()}. Command: `{' '.join(['histogram_prior.py', *sys.argv[1:]])}`. k = {CompareConfig().k} (paper_table.py's); seeds "
             f"{a.seeds} (means over them). Each cell: the total variation between an estimate of the target's "
             "cluster histogram and that of the domain's held-out evaluation text (lower is closer); `two draws`: "
             f"between two disjoint random draws of {DRAW} of the domain's pool units.", "",
             *distances(work, seeds, domains)]
    print("\n".join(lines))
    if not a.no_write:
        RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

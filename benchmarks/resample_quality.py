"""Selection quality of `impsamp resample` on the bundled demo corpus (8 domains, 600 pool documents each).

    .venv/bin/python benchmarks/resample_quality.py                # writes its section of benchmarks/results/resample.md
    .venv/bin/python benchmarks/resample_quality.py --docs 1230 --no-sweep

For each of the 8 domains as the target (in-domain sample = `demo_corpus().sample(domain)`, generic =
the pool of all 8 domains), every method selects the same number of documents (--docs) from the
pool, embedded with all-MiniLM-L6-v2 (max_tokens 128) and clustered with flat k-means (k=64, seed 0).
Reported: the share of the selected rows (repeats counted) that come from the target domain, per
domain and method, with the macro average; for `match`, the repetition rate; and a sensitivity sweep
of `match` over k in {16, 64, 256} and smoothing in {0, 0.1, 1.0}.

Methods: impsamp `importance` with `--scheme match|crisp|topk`, `uniform`, `ngram`, `classifier`
(all seed 0), and DSIR (`data_selection.HashedNgramDSIR`, hashed uni+bigrams, 10,000 buckets) when
the `data-selection` package is installed — with its default `min_example_length=100` (documents
under 100 words are never selected) and with 0.

The importance runs pass the target as its own embed output (the sample embedded once with the same
model, cached), so the real model runs once per domain; ngram and classifier need the text and get
the sample's Parquet file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_resample import (  # noqa: E402
    cache_dir,
    have_dsir,
    load_avg,
    machine,
    pool_jsonl,
    real_clusters,
    real_embeddings,
    target_jsonl,
    update_section,
    uptime,
    versions,
)

POOL_PER_DOMAIN = 600


def target_embeddings(domain: str) -> Path:
    """The domain's in-domain sample embedded like the pool (same model and settings), cached."""
    import impsamp
    from impsamp.embedding import EmbedConfig

    out = cache_dir() / "targets-emb" / domain
    if not (out / "manifest.json").exists():
        cfg = impsamp.Embeddings.load(real_embeddings()).config
        impsamp.embed(impsamp.demo_corpus().sample(domain), out, EmbedConfig(model=cfg.model, max_tokens=cfg.max_tokens,
                      backend=cfg.backend), overwrite=True)
    return out


def pool_domains() -> np.ndarray:
    import pyarrow.parquet as pq

    import impsamp

    return np.asarray(pq.read_table(impsamp.demo_corpus().pool, columns=["domain"]).column("domain").to_pylist())


def run_impsamp(domain: str, method: str, scheme: str, k: int, smoothing: float, docs: int, seed: int,
                domains: np.ndarray) -> dict:
    import impsamp
    from impsamp.errors import ConfigError
    from impsamp.resampling import ResampleConfig

    demo = impsamp.demo_corpus()
    if method == "importance":
        targets = [str(target_embeddings(domain))]
    elif method == "uniform":
        targets = []
    else:
        targets = [str(demo.sample(domain))]
    out = cache_dir() / "q-out"
    cfg = ResampleConfig(docs=docs, method=method, scheme=scheme, smoothing=smoothing, seed=seed)
    try:
        sel = impsamp.resample(real_embeddings(), real_clusters(k, seed), out, targets=targets, config=cfg,
                               overwrite=True)
    except ConfigError as e:
        return {"error": str(e).split(";")[0]}
    t = sel.to_table()
    rows = t.column("source_row").to_numpy()
    dom = domains[rows]
    hit = dom == domain
    uniq = np.unique(rows[hit])
    res = {"rows": int(len(rows)), "share": float(hit.mean()), "recall": len(uniq) / POOL_PER_DOMAIN,
           "purity": len(uniq) / max(len(np.unique(rows)), 1),
           "repetition": float(sel.stats["repetition_rate"]), "unique": int(sel.stats["unique_documents"])}
    shutil.rmtree(out, ignore_errors=True)
    return res


def run_dsir(domain: str, docs: int, min_lens: tuple[int, ...]) -> dict[int, dict]:
    """DSIR's weights once per target, then one resample per min_example_length (seed 0)."""
    from data_selection import HashedNgramDSIR

    work = cache_dir() / "q-dsir"
    shutil.rmtree(work, ignore_errors=True)
    d = HashedNgramDSIR([str(pool_jsonl())], [str(target_jsonl(domain))], cache_dir=str(work / "cache"), num_proc=2)
    d.fit_importance_estimator(num_tokens_to_fit="all")
    d.compute_importance_weights()
    out = {}
    for m in min_lens:
        d.min_example_length = m
        np.random.seed(0)
        d.resample(out_dir=str(work / f"sel{m}"), num_to_sample=docs, cache_dir=str(work / f"rc{m}"))
        recs = [json.loads(line) for f in sorted((work / f"sel{m}").glob("*.jsonl")) for line in open(f)]
        hit = [r["domain"] == domain for r in recs]
        ids = {r["id"] for r in recs if r["domain"] == domain}
        out[m] = {"rows": len(recs), "share": float(np.mean(hit)) if recs else 0.0, "recall": len(ids) / POOL_PER_DOMAIN,
                  "purity": len(ids) / max(len({r["id"] for r in recs}), 1), "repetition": 0.0}
    shutil.rmtree(work, ignore_errors=True)
    return out


def quality_tables(res: dict, cols: list[str], docs: int, a: argparse.Namespace, tok_docs: int,
                   first: bool) -> list[str]:
    from impsamp.datasets import DEMO_DOMAINS

    def cell(v: dict, key: str = "share") -> str:
        return f"{v[key]:.3f}" if key in v else "n/a"

    def macro(col: str, key: str = "share") -> str:
        vals = [res[d][col][key] for d in DEMO_DOMAINS if key in res[d][col]]
        return (f"**{np.mean(vals):.3f}**" + ("" if len(vals) == len(DEMO_DOMAINS) else f" ({len(vals)} of 8)")
                if vals else "n/a")

    head = ("### 4. Quality: share of the selection from the target domain" if first else
            f"#### The same at a budget of {docs:,} documents (half of a domain's 600 pool documents)")
    lines = [
        "", head, "",
        f"Bundled demo corpus: pool of 4,800 documents (8 domains x {POOL_PER_DOMAIN}), embedded with all-MiniLM-L6-v2 "
        f"(max_tokens 128), flat k-means k={a.k}, seed {a.seed}. Budget: **{docs:,} documents** for every method "
        f"(a uniform draw of 150,000 embedding tokens is {tok_docs:,} documents; DSIR only takes a document count, "
        "so every method gets the same document count). Share = selected rows (repeats counted) whose pool "
        "document belongs to the target domain; the pool has 600 documents of each domain, so a method drawing "
        f"without replacement can reach at most {min(1.0, POOL_PER_DOMAIN / docs):.3f} (600/{docs}); only `match` and "
        "`crisp` draw with replacement. DSIR: `HashedNgramDSIR` (uni+bigrams, 10,000 buckets, wordpunct) with "
        "`num_tokens_to_fit='all'`, `np.random.seed(0)`.", "",
    ]
    rows = [[d] + [cell(res[d][c]) for c in cols] for d in DEMO_DOMAINS]
    rows.append(["**macro average**"] + [macro(c) for c in cols])
    lines += md_table(["target domain"] + cols, rows)
    lines += ["", "Recall: unique target-domain pool documents selected / 600:", ""]
    rows = [[d] + [cell(res[d][c], "recall") for c in cols] for d in DEMO_DOMAINS]
    rows.append(["**macro average**"] + [macro(c, "recall") for c in cols])
    lines += md_table(["target domain"] + cols, rows)
    lines += ["", "Purity of the distinct documents: target-domain distinct documents / all distinct documents selected "
              "(equals the share for the methods without replacement):", ""]
    rows = [[d] + [cell(res[d][c], "purity") for c in cols] for d in DEMO_DOMAINS]
    rows.append(["**macro average**"] + [macro(c, "purity") for c in cols])
    lines += md_table(["target domain"] + cols, rows)
    lines += ["", "`match` (and `crisp`) repetition rate = 1 - unique documents / rows:", ""]
    rows = [[d, cell(res[d]["match"], "repetition"), f"{res[d]['match'].get('unique', 0):,}",
             cell(res[d]["crisp"], "repetition")] for d in DEMO_DOMAINS]
    rows.append(["**macro average**", macro("match", "repetition"), "", macro("crisp", "repetition")])
    lines += md_table(["target domain", "match repetition", "match unique docs", "crisp repetition"], rows)
    errors = [(d, c, res[d][c]["error"]) for d in DEMO_DOMAINS for c in cols if "error" in res[d][c]]
    if errors:
        lines += ["", "Runs that could not select (n/a above):", ""]
        lines += [f"- {d} / {c}: {e}" for d, c, e in errors]

    return lines


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=1230, help="documents selected per target and method")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra-docs", type=int, default=300,
                   help="also run the main table at this budget (below a domain's 600 documents; 0: skip)")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--no-dsir", action="store_true")
    p.add_argument("--no-write", action="store_true", help="do not update benchmarks/results/resample.md")
    a = p.parse_args()

    import impsamp
    from impsamp.datasets import DEMO_DOMAINS

    t_start = time.perf_counter()
    started = dt.datetime.now().astimezone()
    log = [f"- machine: {machine()}", f"- versions: {versions()}",
           f"- started {started:%Y-%m-%d %H:%M %Z}; `uptime` at start: {uptime()}"]
    print("\n".join(log), flush=True)
    domains = pool_domains()
    emb = impsamp.Embeddings.load(real_embeddings())
    for d in DEMO_DOMAINS:
        target_embeddings(d)
    # what the brief's token budget means in documents: a uniform draw of 150,000 tokens
    from impsamp.resampling import ResampleConfig
    tok_sel = impsamp.resample(emb, real_clusters(a.k, a.seed), cache_dir() / "q-out",
                               config=ResampleConfig(tokens=150_000, method="uniform", seed=a.seed), overwrite=True)
    tok_docs = tok_sel.stats["rows"]
    shutil.rmtree(cache_dir() / "q-out", ignore_errors=True)

    methods = [("match", "importance", "match"), ("crisp", "importance", "crisp"), ("topk", "importance", "topk"),
               ("uniform", "uniform", "topk"), ("ngram", "ngram", "topk"), ("classifier", "classifier", "topk")]
    dsir = have_dsir() and not a.no_dsir
    cols = [m[0] for m in methods] + (["DSIR (min len 0)", "DSIR (default, min len 100)"] if dsir else [])
    lines: list[str] = []
    all_res = {}
    for n_docs in [a.docs] + ([a.extra_docs] if a.extra_docs else []):
        res: dict[str, dict[str, dict]] = {d: {} for d in DEMO_DOMAINS}
        all_res[n_docs] = res
        log.append(f"- main table, {n_docs:,} docs: load average at start {load_avg()}")
        for d in DEMO_DOMAINS:
            for name, method, scheme in methods:
                res[d][name] = run_impsamp(d, method, scheme, a.k, 0.0, n_docs, a.seed, domains)
            if dsir:
                r = run_dsir(d, n_docs, (0, 100))
                res[d]["DSIR (min len 0)"], res[d]["DSIR (default, min len 100)"] = r[0], r[100]
            print(n_docs, d, {m: (round(v["share"], 3) if "share" in v else v["error"][:60]) for m, v in res[d].items()},
                  flush=True)
        log.append(f"- main table, {n_docs:,} docs: load average at end {load_avg()}")
        lines += quality_tables(res, cols, n_docs, a, tok_docs, first=n_docs == a.docs)
    if not a.no_sweep:
        log.append(f"- sweep: load average at start {load_avg()}")
        lines += ["", "### 5. Sensitivity of `match`: k and smoothing", "",
                  f"Same budget ({a.docs:,} documents), targets and seed; macro average over the 8 domains of the "
                  "target share, repetition rate, recall (distinct target documents / 600) and purity of the distinct "
                  "documents; 'min share' is the worst domain.", "",
                  "| k | smoothing | macro share | min share (domain) | macro repetition | macro recall | macro purity (distinct) |",
                  "|---:|---:|---:|---|---:|---:|---:|"]
        for k in (16, 64, 256):
            for sm in (0.0, 0.1, 1.0):
                rs = {d: run_impsamp(d, "importance", "match", k, sm, a.docs, a.seed, domains) for d in DEMO_DOMAINS}
                share = np.mean([r["share"] for r in rs.values()])
                rep = np.mean([r["repetition"] for r in rs.values()])
                rec = np.mean([r["recall"] for r in rs.values()])
                pur = np.mean([r["purity"] for r in rs.values()])
                worst = min(rs, key=lambda d: rs[d]["share"])
                lines.append(f"| {k} | {sm} | {share:.3f} | {rs[worst]['share']:.3f} ({worst}) | {rep:.3f} | {rec:.3f} | {pur:.3f} |")
                print(f"sweep k={k} smoothing={sm}: share {share:.3f} repetition {rep:.3f}", flush=True)
        log.append(f"- sweep: load average at end {load_avg()}")

    log.append(f"- finished {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} after "
               f"{time.perf_counter() - t_start:.0f} s; `uptime` at end: {uptime()}")
    cmd = "python benchmarks/resample_quality.py " + " ".join(sys.argv[1:])
    body = "\n".join([f"## resample_quality.py\n\nCommand: `{cmd.strip()}`\n", *log, *lines])
    (cache_dir() / "quality.json").write_text(json.dumps({str(k): v for k, v in all_res.items()}, indent=1))
    print("\n" + body)
    if not a.no_write:
        update_section("resample_quality", body)


if __name__ == "__main__":
    main()

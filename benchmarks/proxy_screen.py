"""A cheap screen before the paper table's LM runs: a bigram model fitted on each selection.

    .venv/bin/python benchmarks/proxy_screen.py --work W                        # 8 domains x seeds 0,1,2
    .venv/bin/python benchmarks/proxy_screen.py --domains factbook --column top=within_top:1.25 --column ngram=method:ngram

An LM run of `paper_table.py` takes about 2.5 minutes a domain on 2 cores; this takes a few seconds. For each
bundled domain as the target and each column (a set of `ResampleConfig` settings), it makes the selection at the
budget from paper_table's embedding and clustering of the seed (reused from --work, made there if missing), and
fits an interpolated bigram model (absolute discounting, d = 0.75, backed off to an add-one unigram) on the
selection's tokens plus the in-domain sample's (as the LM is fine-tuned on the sample), in the tokenizer
`compare` trains on the pool. It prints the cross-entropy of the held-out evaluation text under it (nats per
token; lower is better) per domain and column, the seeds' mean, and the target-domain share of the selection.

What it is good for (BENCHMARKS.md `paper`, fourteenth session): against three seeds of LM runs at 40,000
tokens, the sign of its difference between `--within-top 1.25` and `--method ngram` matched the LM's on all 8
domains (including database_docs, where `ngram` wins, and factbook, where its perplexity is 66% higher). Between
selections closer than that (the default against `--within-top`, 1-3% of perplexity) it was no better than a
coin, and it ranks `--within uniform` first on database_docs where the LM ranks it last: a bigram model
rewards coverage of the text more than an LM at this size, and purity less. A screen for large differences
between document rankings, not a replacement for the LM runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from within_purity import Pool, pool_units, prepare, target_share  # noqa: E402  (paper_table's stages, the labels)

ROOT = Path(__file__).resolve().parents[1]
DISCOUNT = 0.75
COLUMNS = {"default": {}, "--within-top 1.25": {"within_top": 1.25}, "ngram": {"method": "ngram"},
           "--within uniform": {"within": "uniform"}}


def parse_column(spec: str) -> tuple[str, dict]:
    """`NAME=field:value,field:value` -> (NAME, ResampleConfig settings); a value that reads as a number is one."""
    from impsamp.resampling import ResampleConfig

    def value(text: str):
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
        return text

    name, _, body = spec.partition("=")
    known = {f.name for f in dataclasses.fields(ResampleConfig)}
    out = {}
    for item in filter(None, body.split(",")):
        key, _, text = item.partition(":")
        if key not in known:
            raise SystemExit(f"--column {spec}: {key!r} is not a ResampleConfig field")
        out[key] = value(text)
    return name, out


def bigram_cross_entropy(train: list[np.ndarray], held_out: list[np.ndarray], vocab: int) -> float:
    """Nats per token of `held_out` under an interpolated absolute-discount bigram fitted on `train`."""
    unigram = np.bincount(np.concatenate(train), minlength=vocab).astype(np.float64) + 1.0
    unigram /= unigram.sum()
    pairs: Counter = Counter()
    for seq in train:
        pairs.update(zip(seq[:-1].tolist(), seq[1:].tolist()))
    context: Counter = Counter()
    followers: Counter = Counter()
    for (a, _), n in pairs.items():
        context[a] += n
        followers[a] += 1
    total, count = 0.0, 0
    for seq in held_out:
        for a, b in zip(seq[:-1].tolist(), seq[1:].tolist()):
            c = context.get(a, 0)
            p = (max(pairs.get((a, b), 0) - DISCOUNT, 0.0) + DISCOUNT * followers[a] * unigram[b]) / c if c else unigram[b]
            total -= float(np.log(p))
            count += 1
    return total / max(count, 1)


def screen(domain: str, seed: int, tokens: int, columns: dict[str, dict], stages: tuple[Path, Path, Pool],
           texts: tuple[list[np.ndarray], list[np.ndarray]], encode, vocab: int, out: Path) -> dict[str, dict]:
    """Each column's selection for `domain` at `seed` (`stages`: the seed's embedding, clustering and pool
    units; `texts`: the domain's evaluation text and sample, encoded): its bigram cross-entropy on the
    evaluation text and its target-domain share."""
    from impsamp.datasets import demo_corpus
    from impsamp.resampling import ResampleConfig, resample

    emb, clu, pool = stages
    held_out, sample = texts
    result = {}
    for name, settings in columns.items():
        sel = resample(emb, clu, out, targets=[str(demo_corpus().sample(domain))],
                       config=ResampleConfig(tokens=tokens, seed=seed, **settings), overwrite=True)
        idx = sel.to_table().column("doc_index").to_numpy()
        result[name] = {"xent": bigram_cross_entropy(encode([pool.texts[i] for i in idx]) + sample, held_out, vocab),
                        "share": target_share(pool, idx, domain)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tokens", type=int, default=40_000)
    p.add_argument("--domains", help="comma-separated bundled domains (default: all 8)")
    p.add_argument("--column", action="append", metavar="NAME=FIELD:VALUE,...",
                   help="a selection to screen (repeatable; default: " + ", ".join(COLUMNS) + ")")
    p.add_argument("--work", default=str(ROOT / "benchmarks" / ".cache" / "paper"))
    a = p.parse_args()
    import pyarrow.parquet as pq

    from impsamp.comparison import CompareConfig
    from impsamp.datasets import demo_corpus
    from impsamp.training import train_tokenizer
    from impsamp.training.tokenizer import load_tokenizer

    work = Path(a.work)
    columns = dict(parse_column(c) for c in a.column) if a.column else COLUMNS
    domains = a.domains.split(",") if a.domains else list(demo_corpus().domains)
    tok_path = work / "proxy-tokenizer.json"  # compare's: trained on the pool with its vocabulary
    if not tok_path.exists():
        train_tokenizer([str(demo_corpus().pool)], CompareConfig().vocab_size, tok_path)
    tokenizer = load_tokenizer(tok_path)
    seeds = [int(s) for s in a.seeds.split(",")]

    def encode(texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch(texts)]

    def read(path: Path) -> list[np.ndarray]:
        return encode(pq.read_table(path).column("text").to_pylist())

    stages = {}
    for s in seeds:  # each seed's embedding, clustering and pool units, read once for every domain
        emb, clu = prepare(work, s)
        stages[s] = (emb, clu, pool_units(emb))
    corpus, out = demo_corpus(), work / "proxy-selection"
    print(f"Machine: {machine()}. Budget {a.tokens:,} tokens, seeds {a.seeds}: bigram cross-entropy of the "
          "evaluation text (nats/token, lower is better), per seed and their mean; target-domain share.")
    print("| domain | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for d in domains:
        texts = (read(corpus.eval(d)), read(corpus.sample(d)))
        runs = [screen(d, s, a.tokens, columns, stages[s], texts, encode, tokenizer.vocab_size, out) for s in seeds]
        cells = [" ".join(f"{r[c]['xent']:.3f}" for r in runs) + f" (mean {np.mean([r[c]['xent'] for r in runs]):.3f}; "
                 f"{np.mean([r[c]['share'] for r in runs]):.1%})" for c in columns]
        print(f"| {d} | " + " | ".join(cells) + " |", flush=True)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

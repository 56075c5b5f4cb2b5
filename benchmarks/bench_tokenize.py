"""How tokenizing scales with threads and with processes on this machine: what bounds `embed` on a GPU.

    python benchmarks/bench_tokenize.py                       # 1, 2, 4, 8, cores - 1 workers
    python benchmarks/bench_tokenize.py --workers 1 2 --copies 1

A GPU embeds all-MiniLM-L6-v2 far faster than one core tokenizes for it (on an H200: the model alone
~64,000 docs/s at 128 tokens, one core ~2,600), so `embed` tokenizes on the other cores. For N = each
`--workers` value this prints, in docs/s over the bundled demo pool (`--copies` times):

- python spin: a pure-Python loop in N processes (M iterations/s), how the cores scale with no
  tokenizer at all;
- threads prepare: `TransformerEmbedder.prepare` (what `embed` runs per chunk: cut, tokenize, read
  the tokens, pad into batches) on N threads, each calling the tokenizer serially;
- threads raw: the Rust tokenizer alone (`Tokenizer.encode_batch` on texts already cut), N threads;
- processes prepare / raw: the same in N spawned processes (`--tokenize-processes`), started before
  timing.

Measured on the H200 host lent on 2026-11-27 (16 cores): raw encoding reached 15,119 docs/s on 15
threads and 11,130 on 15 processes, 5.5x and 4.4x one worker (see BENCHMARKS.md, `embed_gpu`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are the parallelism
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _spin(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - t0


def _raw(texts: list[str]) -> int:
    from impsamp.embedding import engine

    assert engine._TOKENIZING is not None, "not a tokenizing process"
    return len(engine._TOKENIZING.tokenizer.encode_batch(texts))


def main() -> None:
    import pyarrow.parquet as pq

    from impsamp.datasets import demo_corpus
    from impsamp.embedding import CHARS_PER_TOKEN, SORT_BUFFER, EmbedConfig, load_embedder
    from impsamp.embedding.engine import _tokenize_in_process, _tokenizing_init

    cores = os.cpu_count() or 2
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="model name or folder")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--copies", type=int, default=4, help="times the demo pool is repeated (default 4)")
    p.add_argument("--workers", type=int, nargs="+", default=sorted({1, 2, 4, 8, max(1, cores - 1)}),
                   help="worker counts to time (default 1 2 4 8 and cores - 1)")
    args = p.parse_args()

    texts = pq.read_table(demo_corpus().pool, columns=["text"]).column("text").to_pylist() * args.copies
    chunks = [texts[i:i + SORT_BUFFER] for i in range(0, len(texts), SORT_BUFFER)]
    emb = load_embedder(EmbedConfig(model=args.model, max_tokens=args.max_tokens, device="cpu"))
    cut = [emb._model_texts(c, args.max_tokens * CHARS_PER_TOKEN)[0] for c in chunks]
    print(f"{cores} cores; {len(texts):,} documents in {len(chunks)} chunks; {args.max_tokens} tokens")

    def rate(pool: ThreadPoolExecutor | ProcessPoolExecutor, fn, items) -> float:
        t0 = time.perf_counter()
        list(pool.map(fn, items))
        return len(texts) / (time.perf_counter() - t0)

    spawn = multiprocessing.get_context("spawn")
    for n in args.workers:
        with ProcessPoolExecutor(n, mp_context=spawn) as pool:
            list(pool.map(_spin, [10] * n))
            t0 = time.perf_counter()
            list(pool.map(_spin, [3_000_000] * (2 * n)))
            spin = 2 * n * 3.0 / (time.perf_counter() - t0)
        with ThreadPoolExecutor(n) as pool:
            thr, thr_raw = rate(pool, emb.prepare, chunks), rate(pool, emb.tokenizer.encode_batch, cut)
        with ProcessPoolExecutor(n, mp_context=spawn, initializer=_tokenizing_init,
                                 initargs=(emb.tokenizing_only(),)) as pool:
            list(pool.map(_tokenize_in_process, [c[:64] for c in chunks[:n]]))  # started before timing
            pr, pr_raw = rate(pool, _tokenize_in_process, chunks), rate(pool, _raw, cut)
        print(f"{n:2d} workers: python spin {spin:6.1f} M it/s | threads prepare {thr:7,.0f} raw {thr_raw:7,.0f} "
              f"| processes prepare {pr:7,.0f} raw {pr_raw:7,.0f} docs/s", flush=True)


if __name__ == "__main__":
    main()

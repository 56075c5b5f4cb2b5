"""How impsamp reads JSON Lines corpora, shard by shard, against one plain pass over the same file.

    .venv/bin/python benchmarks/bench_jsonl_read.py                  # 100 copies of the bundled pool (~630 MB)
    .venv/bin/python benchmarks/bench_jsonl_read.py --copies 20 --formats .gz

embed and resample read a corpus in shards of rows (10,000 by default), possibly out of order and from several
threads or processes. The floor is one pass with the standard readers (`open`, `gzip.open`, zstandard's stream
reader) that decompresses the file and parses every line with `json.loads`. Measured, per format (plain, gzip, zstd), from the page cache:

1. every shard read in order with `Corpus.read(shard)` (what embed does), against the floor;
2. a share of each shard's rows taken with `Corpus.take_rows` (what resample does with the selected rows),
   against the floor, which has to parse every line to find them.

Prints seconds (median of --rounds, interleaved) and the ratio floor / impsamp: above 1, impsamp is faster.
The corpus is the bundled demo pool (real text, 4,800 documents) written --copies times with distinct ids.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

POOL = Path(__file__).resolve().parents[1] / "impsamp" / "data" / "demo" / "pool.parquet"


def make_files(folder: Path, copies: int, formats: list[str]) -> dict[str, Path]:
    import pyarrow.parquet as pq
    import zstandard

    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / f"pool-x{copies}.jsonl"
    if not plain.exists():
        rows = pq.read_table(POOL, columns=["id", "text"]).to_pylist()
        tmp = plain.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for c in range(copies):
                for r in rows:
                    f.write(json.dumps({"id": f"c{c:05d}/{r['id']}", "text": r["text"]}) + "\n")
        tmp.replace(plain)
    out = {}
    for fmt in formats:
        path = plain.with_name(plain.name + fmt)
        if fmt and not path.exists():
            data = plain.read_bytes()
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(gzip.compress(data, 6) if fmt == ".gz" else zstandard.ZstdCompressor(level=3).compress(data))
            tmp.replace(path)
        out[fmt or "plain"] = path
    return out


def plain_open(path: Path):
    """The standard libraries' readers: `open`, `gzip.open`, zstandard's stream reader."""
    import io

    import zstandard

    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def floor_pass(path: Path, wanted: set[int] | None = None) -> int:
    """One pass with the standard readers: decompress, parse every line, keep the text (of the wanted lines)."""
    n = 0
    with plain_open(path) as f:
        for i, raw in enumerate(f):
            text = json.loads(raw)["text"]
            if wanted is None or i in wanted:
                n += len(text) > 0
    return n


def read_shards(corpus, shards) -> int:
    return sum(b.num_rows for s in shards for b in corpus.read(s))


def take_shards(corpus, shards, picks) -> int:
    return sum(len(corpus.take_rows(s, rows)) for s, rows in zip(shards, picks))


def timed(fn, *args) -> tuple[float, int]:
    t = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - t, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--copies", type=int, default=100, help="pool copies (4,800 documents, ~6.3 MB each)")
    p.add_argument("--formats", default=",.gz,.zst", help="comma-separated: '' (plain), .gz, .zst")
    p.add_argument("--rows-per-shard", type=int, default=10_000)
    p.add_argument("--share", type=float, default=0.25, help="share of each shard's rows taken")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--folder", default="/tmp/impsamp-bench-jsonl")
    args = p.parse_args()
    from impsamp import __version__
    from impsamp.io import open_corpus

    files = make_files(Path(args.folder), args.copies, args.formats.split(","))
    print(f"{machine()}; impsamp {__version__}; {args.copies} pool copies, shards of {args.rows_per_shard:,} rows, "
          f"{args.share:.0%} of each shard's rows taken")
    print("| file | MB on disk | rows | floor s | read shards s | floor / read | floor keeping the rows s | take s "
          "| floor / take |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, path in files.items():
        corpus = open_corpus(path)
        shards = corpus.shards(args.rows_per_shard)
        rng = np.random.default_rng(0)
        picks = [np.sort(rng.choice(np.arange(s.start, s.stop), max(1, int(s.rows * args.share)), replace=False))
                 for s in shards]
        wanted = {int(r) for rows in picks for r in rows}
        t: dict[str, list[float]] = {"floor": [], "read": [], "floor_take": [], "take": []}
        for _ in range(args.rounds):  # interleaved, so a slow minute of the machine hits every column
            s_floor, n_floor = timed(floor_pass, path)
            s_read, n_read = timed(read_shards, corpus, shards)
            s_ftake, n_ftake = timed(floor_pass, path, wanted)
            s_take, n_take = timed(take_shards, corpus, shards, picks)
            assert n_read == n_floor and n_take == n_ftake == len(wanted), (n_read, n_floor, n_take, n_ftake)
            for k, v in zip(t, (s_floor, s_read, s_ftake, s_take)):
                t[k].append(v)
        med = {k: statistics.median(v) for k, v in t.items()}
        print(f"| {path.name} | {path.stat().st_size / 1e6:,.0f} | {corpus.n_rows:,} | {med['floor']:.2f} | "
              f"{med['read']:.2f} | {med['floor'] / med['read']:.2f}x | {med['floor_take']:.2f} | {med['take']:.2f} | "
              f"{med['floor_take'] / med['take']:.2f}x |")


if __name__ == "__main__":
    main()

"""What opening a JSONL corpus costs: impsamp's pass (rows, seek checkpoints, sha256 of the whole file) against
the floor, a plain read that counts newlines.

    .venv/bin/python benchmarks/bench_open_corpus.py                 # a 200 MB file in /tmp, 5 rounds
    .venv/bin/python benchmarks/bench_open_corpus.py --mb 1000 --file /data/big.jsonl
    taskset -c 0 .venv/bin/python benchmarks/bench_open_corpus.py    # one core: the hash cannot overlap

Every stage opens its corpus this way (`open_corpus`), and the check that a corpus has not changed since it was
embedded compares the digest. The file is written once (deterministic text) and read from the page cache, so the
figure is CPU, not disk. Prints the medians and the ratio impsamp / floor.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402


def make_file(path: Path, mb: int) -> None:
    if path.exists() and path.stat().st_size >= mb * 10**6:
        return
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        while f.tell() < mb * 10**6:
            f.write(json.dumps({"text": " ".join(rng.choices(words, k=rng.randint(10, 400)))}) + "\n")
    tmp.replace(path)


def floor(path: Path) -> int:
    """Read the bytes and count newlines: what any row count costs."""
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            n += block.count(b"\n")
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--file", default="/tmp/impsamp-bench-open.jsonl")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    from impsamp.io import open_corpus

    path = Path(args.file)
    make_file(path, args.mb)
    floor(path)  # into the page cache
    times: dict[str, list[float]] = {"floor (read + count newlines)": [], "impsamp open_corpus": []}
    for _ in range(args.rounds):  # interleaved
        for name, fn in zip(times, (floor, open_corpus)):
            t = time.perf_counter()
            fn(path)
            times[name].append(time.perf_counter() - t)
    mb = path.stat().st_size / 1e6
    print(f"Machine: {machine()}; {path} ({mb:.0f} MB), {args.rounds} rounds, medians:")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k}: {v:.3f} s ({mb / v:,.0f} MB/s)")
    print(f"impsamp / floor: {med['impsamp open_corpus'] / med['floor (read + count newlines)']:.2f}")


if __name__ == "__main__":
    main()

"""Build the demo corpus bundled with impsamp from the 8-domain development corpus.

The output is a small, documented subset of the development corpus (see
``data_cards/impsamp-demo.md``):

* ``pool.parquet``: 600 pool documents of each domain, rows shuffled across domains. This is
  the "generic corpus" of the demo.
* ``sample/<domain>.parquet`` and ``eval/<domain>.parquet``: the held-out documents of each
  domain split by group (page, chapter, act, speech, entry: the part of the id before ``#``)
  into an in-domain sample and evaluation text. A group never lands on both sides. Each side
  holds at most 200 documents.

Every random choice comes from a seeded numpy generator, and the Parquet files are written
without any timestamp or pandas metadata, so a rerun with the same pyarrow version writes the
same bytes. The script prints a Markdown table of document and character counts for the card.

Usage::

    python data_cards/build_demo_corpus.py --src ../shared/corpus --out impsamp/data/demo
"""

from __future__ import annotations

import argparse
import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
DOMAINS = (
    "austen_novels",
    "database_docs",
    "factbook",
    "fortunes",
    "kjv_bible",
    "python_docs",
    "shakespeare",
    "sotu_speeches",
)
POOL_PER_DOMAIN = 600
SIDE_CAP = 200
SEED = 0
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("domain", pa.string())])


def _rng(*keys: str) -> np.random.Generator:
    """A generator seeded by ``SEED`` and a stable hash of ``keys``, independent of call order."""
    return np.random.default_rng([SEED] + [zlib.crc32(k.encode("utf-8")) for k in keys])


def _read_jsonl_gz(path: Path) -> list[dict]:
    """Read a gzip JSON-lines file into a list of ``{"id", "text", "domain"}`` dicts."""
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            missing = {"id", "text", "domain"} - obj.keys()
            if missing:
                raise SystemExit(f"{path}:{lineno}: missing field(s) {sorted(missing)}")
            docs.append({"id": obj["id"], "text": obj["text"], "domain": obj["domain"]})
    return docs


def _group(doc_id: str) -> str:
    """The group of a document: its id without the ``#k`` suffix."""
    return doc_id.rsplit("#", 1)[0]


def _write(docs: list[dict], path: Path) -> None:
    """Write ``docs`` as a zstd Parquet file with columns id, text, domain, deterministically."""
    table = pa.table(
        {k: pa.array([d[k] for d in docs], type=pa.string()) for k in ("id", "text", "domain")},
        schema=SCHEMA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(
        table,
        tmp,
        compression="zstd",
        compression_level=9,
        row_group_size=len(docs) or None,
        store_schema=False,
    )
    tmp.replace(path)


def sample_pool(docs: list[dict], domain: str, n: int) -> list[dict]:
    """Pick ``n`` pool documents of one domain at random, kept in their file order."""
    if len(docs) < n:
        raise SystemExit(f"{domain}: only {len(docs)} pool documents, need {n}")
    idx = np.sort(_rng("pool", domain).choice(len(docs), size=n, replace=False))
    return [docs[i] for i in idx]


def split_heldout(docs: list[dict], domain: str, cap: int) -> tuple[list[dict], list[dict]]:
    """Split held-out documents by group into (sample, eval), then cap each side at ``cap``.

    Groups are visited in a seeded random order; each goes whole to the side that holds fewer
    documents so far (the sample on a tie), which gives about half the documents to each side.
    A side over ``cap`` documents keeps a seeded random ``cap`` of them, in file order; dropping
    documents never moves a group across sides.
    """
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(docs):
        groups.setdefault(_group(d["id"]), []).append(i)
    names = sorted(groups)
    order = _rng("groups", domain).permutation(len(names))
    sides: tuple[list[int], list[int]] = ([], [])
    for j in order:
        side = 0 if len(sides[0]) <= len(sides[1]) else 1
        sides[side].extend(groups[names[j]])
    out = []
    for name, idx in zip(("sample", "eval"), sides):
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        if len(idx) > cap:
            idx = np.sort(_rng(name, domain).choice(idx, size=cap, replace=False))
        out.append([docs[i] for i in idx])
    return out[0], out[1]


def _stats(docs: list[dict]) -> tuple[int, int]:
    return len(docs), sum(len(d["text"]) for d in docs)


def build(src: Path, out: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Build the demo corpus from ``src`` into ``out``; return per-domain (docs, chars) counts."""
    pool: list[dict] = []
    rows = []
    for domain in DOMAINS:
        pool_docs = _read_jsonl_gz(src / f"{domain}.pool.jsonl.gz")
        held = _read_jsonl_gz(src / f"{domain}.heldout.jsonl.gz")
        for d in pool_docs + held:
            if d["domain"] != domain:
                raise SystemExit(f"{d['id']}: domain {d['domain']!r} in the file of {domain!r}")
        picked = sample_pool(pool_docs, domain, POOL_PER_DOMAIN)
        sample, evaluation = split_heldout(held, domain, SIDE_CAP)
        # The development corpus promises held-out groups never occur in the pool: check it.
        pool_groups = {_group(d["id"]) for d in pool_docs}
        sample_groups = {_group(d["id"]) for d in sample}
        eval_groups = {_group(d["id"]) for d in evaluation}
        assert not (sample_groups & eval_groups), domain
        assert not ((sample_groups | eval_groups) & pool_groups), domain
        _write(sample, out / "sample" / f"{domain}.parquet")
        _write(evaluation, out / "eval" / f"{domain}.parquet")
        pool.extend(picked)
        rows.append(
            (
                domain,
                {
                    "pool": _stats(picked),
                    "sample": _stats(sample),
                    "eval": _stats(evaluation),
                    "sample_groups": (len(sample_groups), 0),
                    "eval_groups": (len(eval_groups), 0),
                },
            )
        )
    perm = _rng("shuffle").permutation(len(pool))
    _write([pool[i] for i in perm], out / "pool.parquet")
    return rows


def markdown_table(rows: list[tuple[str, dict[str, tuple[int, int]]]]) -> str:
    """The counts as a Markdown table (documents, characters, groups per split)."""
    lines = [
        "| domain | pool docs | pool chars | sample docs (groups) | sample chars "
        "| eval docs (groups) | eval chars |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    tot = {"pool": [0, 0], "sample": [0, 0], "eval": [0, 0], "sg": 0, "eg": 0}
    for domain, s in rows:
        lines.append(
            f"| {domain} | {s['pool'][0]:,} | {s['pool'][1]:,} "
            f"| {s['sample'][0]:,} ({s['sample_groups'][0]}) | {s['sample'][1]:,} "
            f"| {s['eval'][0]:,} ({s['eval_groups'][0]}) | {s['eval'][1]:,} |"
        )
        for k in ("pool", "sample", "eval"):
            tot[k][0] += s[k][0]
            tot[k][1] += s[k][1]
        tot["sg"] += s["sample_groups"][0]
        tot["eg"] += s["eval_groups"][0]
    lines.append(
        f"| **total** | {tot['pool'][0]:,} | {tot['pool'][1]:,} "
        f"| {tot['sample'][0]:,} ({tot['sg']}) | {tot['sample'][1]:,} "
        f"| {tot['eval'][0]:,} ({tot['eg']}) | {tot['eval'][1]:,} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the options, build the demo corpus and print the counts table and total size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--src",
        type=Path,
        default=REPO.parent / "shared" / "corpus",
        help="folder with <domain>.pool.jsonl.gz and <domain>.heldout.jsonl.gz "
        "(default: ../shared/corpus relative to the repository root)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "impsamp" / "data" / "demo",
        help="output folder (default: impsamp/data/demo in the repository)",
    )
    args = parser.parse_args(argv)
    rows = build(args.src, args.out)
    print(markdown_table(rows))
    files = sorted(p for p in args.out.rglob("*.parquet"))
    total = sum(p.stat().st_size for p in files)
    print(f"\n{len(files)} files, {total:,} bytes ({total / 2**20:.2f} MiB) in {args.out}")


if __name__ == "__main__":
    main()

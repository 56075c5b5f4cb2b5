"""Corpus readers: every input format round-trips, shards cover every row once, ids and indices are stable."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import zstandard

from impsamp.errors import CorpusError
from impsamp.io import DOC_SCHEMA, Corpus, corpus_summary, file_changed, open_corpus, reopen_corpus

# Non-ASCII on purpose: emoji (astral plane), CJK, combining marks, RTL, a ZWJ sequence, U+2028 and
# an escaped newline inside the text (a raw newline would end a JSONL line).
SAMPLES = [
    "plain ascii document",
    "emoji 😀🎉 and a family 👩‍👩‍👧",
    "中文文本，日本語のテキスト、한국어",
    "combining: e\u0301 a\u0308 n\u0303 (decomposed), é (precomposed)",
    "right to left: שלום עולם، مرحبا",
    "line\u2028separator and\nnewline and\ttab",
    "quotes \" and backslash \\ and braces {}",
]


def make_docs(n: int = 120) -> list[dict[str, str]]:
    return [{"id": f"doc-{i}", "text": f"{SAMPLES[i % len(SAMPLES)]} #{i}", "url": f"https://x/{i}"}
            for i in range(n)]


def jsonl_bytes(docs: list[dict], *, ensure_ascii: bool = False) -> bytes:
    return "".join(json.dumps(d, ensure_ascii=ensure_ascii) + "\n" for d in docs).encode("utf-8")


def table(docs: list[dict]) -> pa.Table:
    return pa.table({k: [d[k] for d in docs] for k in docs[0]})


def write_arrow_file(path: Path, t: pa.Table, chunk: int = 17) -> None:
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t, max_chunksize=chunk)


def write_arrow_stream(path: Path, t: pa.Table, chunk: int = 17) -> None:
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
        w.write_table(t, max_chunksize=chunk)


def write_format(fmt: str, root: Path, docs: list[dict]) -> str:
    """Write `docs` in format `fmt` under `root`; return the corpus spec to open (file, folder or glob)."""
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        (root / "c.jsonl").write_bytes(jsonl_bytes(docs))
        return str(root / "c.jsonl")
    if fmt == "jsonl-ascii":  # json.dumps default: every non-ASCII char as a \\u escape (surrogate pairs)
        (root / "c.jsonl").write_bytes(jsonl_bytes(docs, ensure_ascii=True))
        return str(root / "c.jsonl")
    if fmt == "jsonl.gz":
        (root / "c.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(docs)))
        return str(root / "c.jsonl.gz")
    if fmt == "jsonl.zst":
        (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(docs)))
        return str(root / "c.jsonl.zst")
    if fmt == "parquet":
        pq.write_table(table(docs), root / "c.parquet", row_group_size=25)
        return str(root / "c.parquet")
    if fmt == "arrow-file":
        write_arrow_file(root / "c.arrow", table(docs))
        return str(root / "c.arrow")
    if fmt == "arrow-stream":
        write_arrow_stream(root / "c.arrow", table(docs))
        return str(root / "c.arrow")
    if fmt == "feather":
        feather.write_feather(table(docs), root / "c.feather", chunksize=19)
        return str(root / "c.feather")
    if fmt == "hf":
        datasets = pytest.importorskip("datasets")
        datasets.Dataset.from_list(docs).save_to_disk(str(root / "hf"), num_shards=3)
        return str(root / "hf")
    if fmt == "glob":
        for i, k in enumerate(range(0, len(docs), 50)):
            (root / f"part-{i:02d}.jsonl").write_bytes(jsonl_bytes(docs[k:k + 50]))
        (root / "notes.txt").write_text("not part of the glob")
        return str(root / "part-*.jsonl")
    if fmt == "mixed-folder":
        # sorted path order: a.jsonl, b.parquet, c/d.arrow, c/e.jsonl.gz, f.jsonl.zst, g.feather
        parts = [docs[0:20], docs[20:45], docs[45:60], docs[60:85], docs[85:100], docs[100:]]
        folder = root / "mixed"
        (folder / "c").mkdir(parents=True)
        (folder / "a.jsonl").write_bytes(jsonl_bytes(parts[0]))
        pq.write_table(table(parts[1]), folder / "b.parquet", row_group_size=10)
        write_arrow_stream(folder / "c" / "d.arrow", table(parts[2]), chunk=4)
        (folder / "c" / "e.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(parts[3])))
        (folder / "f.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(parts[4])))
        feather.write_feather(table(parts[5]), folder / "g.feather")
        (folder / ".hidden.jsonl").write_bytes(jsonl_bytes(docs[:3]))  # hidden: not read
        (folder / "_scratch").mkdir()
        (folder / "_scratch" / "x.jsonl").write_bytes(jsonl_bytes(docs[:3]))  # "_" prefix: not read
        (folder / "README.md").write_text("# not a corpus file\n")  # unsupported: skipped in a folder
        return str(folder)
    raise AssertionError(fmt)


FORMATS = ["jsonl", "jsonl-ascii", "jsonl.gz", "jsonl.zst", "parquet", "arrow-file", "arrow-stream",
           "feather", "hf", "glob", "mixed-folder"]


def read_all(corpus: Corpus, **kw) -> pa.Table:
    return pa.Table.from_batches(list(corpus.read(**kw)), schema=DOC_SCHEMA)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_texts_ids_and_order(tmp_path, fmt):
    docs = make_docs()
    corpus = open_corpus(write_format(fmt, tmp_path, docs))
    assert corpus.n_rows == len(docs)
    t = read_all(corpus)
    assert t.column("text").to_pylist() == [d["text"] for d in docs]
    assert t.column("id").to_pylist() == [d["id"] for d in docs]
    assert t.column("doc_index").to_pylist() == list(range(len(docs)))
    # `file` and `row` point back to the source row
    for fi, row, idx in zip(t.column("file").to_pylist(), t.column("row").to_pylist(),
                            t.column("doc_index").to_pylist()):
        assert corpus.files[fi].offset + row == idx
    assert corpus.stats.skipped_empty == 0 and corpus.stats.replaced_utf8 == 0
    # Reopening the same files gives the same fingerprint and the same indices.
    again = open_corpus([f.path for f in corpus.files])
    assert again.fingerprint() == corpus.fingerprint()
    assert read_all(again).column("doc_index").to_pylist() == list(range(len(docs)))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows_per_shard", [1, 7, 25, 64, 10_000])
def test_shards_cover_every_row_exactly_once(tmp_path, fmt, rows_per_shard):
    docs = make_docs()
    corpus = open_corpus(write_format(fmt, tmp_path, docs))
    shards = corpus.shards(rows_per_shard=rows_per_shard)
    assert [s.index for s in shards] == list(range(len(shards)))
    assert all(0 < s.rows <= rows_per_shard for s in shards)
    seen: list[int] = []
    texts: list[str] = []
    for s in shards:
        t = pa.Table.from_batches(list(corpus.read(s)), schema=DOC_SCHEMA)
        idx = t.column("doc_index").to_pylist()
        lo = corpus.files[s.file].offset + s.start
        assert idx == list(range(lo, lo + s.rows)), s
        seen += idx
        texts += t.column("text").to_pylist()
    assert seen == list(range(len(docs)))
    assert texts == [d["text"] for d in docs]


def test_shards_are_fixed_by_the_data(tmp_path):
    """The same corpus and rows_per_shard give the same shards, whatever else happens."""
    spec = write_format("mixed-folder", tmp_path, make_docs())
    a, b = open_corpus(spec).shards(30), open_corpus(spec).shards(30)
    assert a == b
    # shards never span files
    files = open_corpus(spec).files
    assert all(s.stop <= files[s.file].rows for s in a)


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
@pytest.mark.parametrize("rows_per_shard", [1000, 4095, 4096, 4097, 5000, 9999])
def test_long_jsonl_shards_past_the_seek_checkpoints(tmp_path, compression, rows_per_shard):
    n = 10_007
    data = "".join(json.dumps({"text": f"row {i} é😀"}, ensure_ascii=False) + "\n"
                   for i in range(n)).encode()
    path = tmp_path / f"long.jsonl{compression}"
    path.write_bytes({"": lambda b: b, ".gz": gzip.compress,
                      ".zst": zstandard.ZstdCompressor().compress}[compression](data))
    corpus = open_corpus(path)
    assert corpus.n_rows == n
    if not compression:
        assert [r for r, _ in corpus.files[0].line_offsets] == [0, 4096, 8192]
    seen = []
    for s in corpus.shards(rows_per_shard):
        for b in corpus.read(s):
            texts = b.column("text").to_pylist()
            rows = b.column("row").to_pylist()
            assert texts == [f"row {r} é😀" for r in rows]
            seen += rows
    assert seen == list(range(n))


def compress_as(compression: str, data: bytes) -> bytes:
    return {"": lambda b: b, ".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress}[compression](data)


@pytest.mark.parametrize("compression", [".gz", ".zst"])
def test_a_compressed_file_read_shard_by_shard_is_decompressed_once(tmp_path, compression, monkeypatch):
    """gzip and zstd cannot seek: each shard goes on from where the previous read of the file stopped
    (0.7.11 decompressed the file from its start for every shard). Out of order, from threads, or after a
    read that stopped early, every shard still gets its own rows."""
    from concurrent.futures import ThreadPoolExecutor

    from impsamp.io import jsonl

    n = 5_000
    path = tmp_path / f"long.jsonl{compression}"
    path.write_bytes(compress_as(compression, "".join(json.dumps({"text": f"row {i}"}) + "\n"
                                                       for i in range(n)).encode()))
    corpus = open_corpus(path)
    opened = []
    real_open = jsonl.open_binary
    monkeypatch.setattr(jsonl, "open_binary", lambda p: opened.append(p) or real_open(p))

    def rows_of(shard):
        return [r for b in corpus.read(shard) for r in b.column("row").to_pylist()]

    shards = corpus.shards(500)
    assert [rows_of(s) for s in shards] == [list(range(s.start, s.stop)) for s in shards]
    assert len(opened) == 1  # in order: one reader went through the file
    assert [rows_of(s) for s in reversed(shards[:4])] == [list(range(s.start, s.stop)) for s in reversed(shards[:4])]
    next(corpus.read(shards[5], batch_rows=10))  # a read given up after its first batch: its reader is closed
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(rows_of, shards))
    assert got == [list(range(s.start, s.stop)) for s in shards]
    assert sum(1 for k, _, _ in jsonl._idle if k[0] == str(path)) <= jsonl.IDLE_READERS
    texts = corpus.take_rows(shards[3], np.array([1999, 1500, 1999, 1700]))  # any order, repeats
    assert texts.to_pylist() == ["row 1999", "row 1500", "row 1999", "row 1700"]


def test_taking_rows_of_a_jsonl_file_parses_only_those_lines(tmp_path, monkeypatch):
    """`take_rows` (resample's read of the selected rows) parses the lines asked for and only counts the
    others; the texts are those a full read gives, a BOM, an escaped surrogate pair and empty lines included."""
    from impsamp.io import jsonl

    lines = [json.dumps({"text": f"{SAMPLES[i % len(SAMPLES)]} {i}"}, ensure_ascii=i % 2 == 0) for i in range(300)]
    lines[7] = ""  # an empty line is a row without a document
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    corpus = open_corpus(path)
    by_row = dict(zip(read_all(corpus).column("row").to_pylist(), read_all(corpus).column("text").to_pylist()))
    parsed = []
    real = jsonl.parse_json_line
    monkeypatch.setattr(jsonl, "parse_json_line", lambda c, p, row, *a: parsed.append(row) or real(c, p, row, *a))
    shard = corpus.shards(1000)[0]
    wanted = np.array([0, 299, 2, 150, 2, 8])
    assert corpus.take_rows(shard, wanted).to_pylist() == [by_row[r] for r in wanted]
    assert sorted(parsed) == [0, 2, 8, 150, 299]
    with pytest.raises(CorpusError, match="row 7 holds no text any more"):
        corpus.take_rows(shard, np.array([5, 7]))


@pytest.mark.parametrize("rows_per_shard", [1000, 2048, 3000, 10_000])
def test_parquet_shards_inside_a_large_row_group(tmp_path, rows_per_shard):
    """A row group larger than one read batch (2048 rows): shards start and stop mid-group."""
    n = 10_000
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(n)]}), tmp_path / "big.parquet",
                   row_group_size=6000)
    corpus = open_corpus(tmp_path / "big.parquet")
    seen = []
    for s in corpus.shards(rows_per_shard):
        for b in corpus.read(s):
            assert b.column("text").to_pylist() == [f"t{r}" for r in b.column("row").to_pylist()]
            seen += b.column("row").to_pylist()
    assert seen == list(range(n))


def test_jsonl_without_final_newline_and_with_crlf(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"text": "a"}\r\n{"text": "b"}\r\n{"text": "c"}')
    corpus = open_corpus(p)
    assert corpus.n_rows == 3
    assert list(corpus.iter_texts()) == ["a", "b", "c"]
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(p.read_bytes()))
    assert list(open_corpus(tmp_path / "d.jsonl.gz").iter_texts()) == ["a", "b", "c"]


def test_utf8_bom_on_the_first_line_is_ignored(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes([{"text": "first"}, {"text": "second"}]))
    assert list(open_corpus(p).iter_texts()) == ["first", "second"]


def test_multi_frame_zstd_is_read_to_the_end(tmp_path):
    """`zstd` / `pzstd` output and concatenated files hold several frames: every one is read."""
    docs = make_docs(60)
    c = zstandard.ZstdCompressor()
    p = tmp_path / "multi.jsonl.zst"
    p.write_bytes(c.compress(jsonl_bytes(docs[:20])) + c.compress(jsonl_bytes(docs[20:45]))
                  + c.compress(jsonl_bytes(docs[45:])))
    corpus = open_corpus(p)
    assert corpus.n_rows == 60
    assert list(corpus.iter_texts()) == [d["text"] for d in docs]


def test_truncated_compressed_jsonl_is_an_error_not_fewer_rows(tmp_path):
    data = jsonl_bytes(make_docs(3000))
    for name, blob in [("t.jsonl.gz", gzip.compress(data)),
                       ("t.jsonl.zst", zstandard.ZstdCompressor().compress(data))]:
        (tmp_path / name).write_bytes(blob[: len(blob) // 2])
        with pytest.raises(CorpusError, match=rf"{name}: cannot read it as jsonl .*is the file complete"):
            open_corpus(tmp_path / name)


def test_a_compressed_file_named_as_plain_jsonl_says_which_suffix_it_needs(tmp_path):
    """It read as invalid UTF-8, and with --encoding-errors replace as malformed JSON: neither the fix."""
    data = jsonl_bytes(make_docs(20))
    for kind, suffix, blob in [("gzip", ".gz", gzip.compress(data)),
                               ("zstd", ".zst", zstandard.ZstdCompressor().compress(data))]:
        (tmp_path / f"{kind}.jsonl").write_bytes(blob)
        for errors in ("strict", "replace"):
            with pytest.raises(CorpusError, match=rf"{kind}.jsonl is {kind}-compressed but its name does not end in "
                                                  rf"\{suffix}; rename it to {kind}.jsonl\{suffix}"):
                read_all(open_corpus(tmp_path / f"{kind}.jsonl", encoding_errors=errors))


def test_text_field_and_id_field_options(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(jsonl_bytes([{"content": "hello", "key": 7, "id": "ignored"},
                               {"content": "world", "key": 8, "id": "ignored"}]))
    corpus = open_corpus(p, text_field="content", id_field="key")
    t = read_all(corpus)
    assert t.column("text").to_pylist() == ["hello", "world"]
    assert t.column("id").to_pylist() == ["7", "8"]
    pq.write_table(pa.table({"body": ["x", "y"], "uid": [10, 11]}), tmp_path / "c.parquet")
    t = read_all(open_corpus(tmp_path / "c.parquet", text_field="body", id_field="uid"))
    assert t.column("id").to_pylist() == ["10", "11"]
    with pytest.raises(CorpusError, match=r"no 'nope' field; available fields: \['body', 'uid'\]\. "
                                          r"Pass --id-field"):
        open_corpus(tmp_path / "c.parquet", text_field="body", id_field="nope")


def test_ids_of_other_types_are_written_as_json_writes_them(tmp_path):
    """A JSON id `true`, `1e3` or `{"a": 1}` became Python's "True", "1000.0", "{'a': 1}" (and `true` then
    collided with a string id "True"); the JSON text joins back to the source."""
    vals = [True, 1e3, {"a": 1}, [1, 2], "True", 7, None]
    p = tmp_path / "c.jsonl"
    p.write_bytes(jsonl_bytes([{"text": f"doc {i}", "id": v} for i, v in enumerate(vals)]))
    got = read_all(open_corpus(p)).column("id").to_pylist()
    assert got == ["true", "1000.0", '{"a": 1}', "[1, 2]", "True", "7", "c.jsonl:6"]
    pq.write_table(pa.table({"text": ["x", "y"], "id": [True, False]}), tmp_path / "b.parquet")
    assert read_all(open_corpus(tmp_path / "b.parquet")).column("id").to_pylist() == ["true", "false"]


def test_ids_are_derived_from_file_and_row_when_there_is_none(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(jsonl_bytes([{"text": "x"}, {"text": "y"}]))
    pq.write_table(pa.table({"text": ["z"]}), tmp_path / "b.parquet")
    t = read_all(open_corpus(tmp_path))
    assert t.column("id").to_pylist() == ["a.jsonl:0", "a.jsonl:1", "b.parquet:0"]


@pytest.mark.parametrize("suffix", [".json.zstd", ".ndjson.zstd", ".jsonl.zstd", ".ndjson.zst"])
def test_every_jsonl_name_reads_with_either_zstd_suffix(tmp_path, suffix):
    docs = make_docs(5)
    p = tmp_path / f"part{suffix}"
    p.write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(docs)))
    assert list(open_corpus(p).iter_texts()) == [d["text"] for d in docs]


def test_derived_ids_stay_unique_when_two_files_share_a_name(tmp_path):
    """Two `datasets` folders both hold `data-00000-of-00001.arrow`: the ids must not collide."""
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "part.jsonl").write_bytes(jsonl_bytes([{"text": f"{sub} a"}, {"text": f"{sub} b"}]))
    ids = read_all(open_corpus(tmp_path)).column("id").to_pylist()
    assert ids == ["one/part.jsonl:0", "one/part.jsonl:1", "two/part.jsonl:0", "two/part.jsonl:1"]
    from impsamp.resampling.report import _source_datasets  # a selection's card names them the same way

    assert json.loads(_source_datasets(open_corpus(tmp_path).files)) == ["one/part.jsonl", "two/part.jsonl"]


def test_empty_and_whitespace_documents_are_skipped_and_counted(tmp_path):
    rows = [{"text": "a"}, {"text": ""}, {"text": "   \n\t"}, {"text": None}, {"text": "b"}]
    (tmp_path / "c.jsonl").write_bytes(jsonl_bytes(rows) + b"\n   \n")  # plus two blank lines
    corpus = open_corpus(tmp_path / "c.jsonl")
    assert corpus.n_rows == 7
    t = read_all(corpus)
    assert t.column("text").to_pylist() == ["a", "b"]
    assert t.column("doc_index").to_pylist() == [0, 4]  # indices of the kept rows do not shift
    s = corpus_summary(open_corpus(tmp_path / "c.jsonl"))
    assert (s["rows"], s["documents"], s["skipped_empty"]) == (7, 2, 5)
    pq.write_table(pa.table({"text": ["a", "", None, " ", "b"]}), tmp_path / "c.parquet")
    s = corpus_summary(open_corpus(tmp_path / "c.parquet"))
    assert (s["rows"], s["documents"], s["skipped_empty"]) == (5, 2, 3)


def test_invalid_utf8_names_the_line_or_is_replaced_and_counted(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"text": "good"}\n{"text": "bad \xff\xfe here"}\n{"text": "ok"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl line 2: invalid UTF-8 .*--encoding-errors replace"):
        list(open_corpus(p).iter_texts())
    corpus = open_corpus(p, encoding_errors="replace")
    assert list(corpus.iter_texts()) == ["good", "bad \ufffd\ufffd here", "ok"]
    assert corpus.stats.replaced_utf8 == 1


def test_invalid_utf8_in_a_parquet_string_column(tmp_path):
    raw = pa.array([b"fine", b"bad \xff"], pa.binary())
    bad = pa.Array.from_buffers(pa.string(), 2, raw.buffers()[:3])  # a string column that lies
    pq.write_table(pa.table({"text": bad}), tmp_path / "s.parquet")
    pq.write_table(pa.table({"text": raw}), tmp_path / "b.parquet")
    for name in ("s.parquet", "b.parquet"):
        with pytest.raises(CorpusError, match=rf"{name} row 1 \(counted from 0\): invalid UTF-8"):
            list(open_corpus(tmp_path / name).iter_texts())
        texts = list(open_corpus(tmp_path / name, encoding_errors="replace").iter_texts())
        assert texts == ["fine", "bad \ufffd"]


def test_lone_surrogate_escape_is_invalid_text(tmp_path):
    """`{"text": "cut \\ud83d"}` is valid JSON but not valid Unicode (a cut emoji)."""
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"text": "pair \\ud83d\\ude00 ok"}\n{"text": "cut \\ud83d"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl line 2: .*lone surrogate"):
        list(open_corpus(p).iter_texts())
    corpus = open_corpus(p, encoding_errors="replace")
    assert list(corpus.iter_texts()) == ["pair 😀 ok", "cut \ufffd"]
    assert corpus.stats.replaced_utf8 == 1


def test_a_folder_holding_a_datasets_folder_reads_its_data_files_only(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = make_docs(30)
    datasets.Dataset.from_list(docs[:20]).save_to_disk(str(tmp_path / "a_hf"), num_shards=2)
    (tmp_path / "b.jsonl").write_bytes(jsonl_bytes(docs[20:]))
    corpus = open_corpus(tmp_path)  # state.json / dataset_info.json are not read as JSONL
    assert [Path(f.path).name for f in corpus.files] == ["data-00000-of-00002.arrow",
                                                         "data-00001-of-00002.arrow", "b.jsonl"]
    assert list(corpus.iter_texts()) == [d["text"] for d in docs]


def test_a_stage_directory_is_not_a_corpus(tmp_path):
    from impsamp.manifest import StageRun

    run = StageRun(tmp_path / "emb", "embed", config={}, inputs={}).begin()
    (tmp_path / "emb" / "vectors.jsonl").write_bytes(jsonl_bytes([{"text": "payload"}]))
    with pytest.raises(CorpusError, match="incomplete 'embed' output.*not a corpus"):
        open_corpus(tmp_path / "emb")
    run.finish(stats={})
    with pytest.raises(CorpusError, match="complete 'embed' output, not a corpus"):
        open_corpus(tmp_path / "emb")


def test_a_complete_resample_output_reads_as_a_corpus_an_incomplete_one_does_not(tmp_path):
    datasets = pytest.importorskip("datasets")
    from impsamp.manifest import StageRun

    docs = make_docs(10)
    datasets.Dataset.from_list(docs).save_to_disk(str(tmp_path / "hf"))
    run = StageRun(tmp_path / "sel", "resample", config={}, inputs={}).begin()
    files = {}
    for src in sorted((tmp_path / "hf").iterdir()):
        tmp = run.tmp_path(src.name)
        shutil.copyfile(src, tmp)
        files[src.name] = tmp
    run.commit_shard("00000", files)  # every file is there, state.json included, but no manifest
    with pytest.raises(CorpusError, match="incomplete 'resample' output.*not a corpus"):
        open_corpus(tmp_path / "sel")
    run.finish(stats={})
    assert list(open_corpus(tmp_path / "sel").iter_texts()) == [d["text"] for d in docs]


def test_glob_over_folders_and_duplicates(tmp_path):
    docs = make_docs(40)
    for i in range(4):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "x.jsonl").write_bytes(jsonl_bytes(docs[i * 10:(i + 1) * 10]))
    corpus = open_corpus([str(tmp_path / "d*"), str(tmp_path / "d0" / "x.jsonl")])  # d0 named twice
    assert len(corpus.files) == 4
    assert list(corpus.iter_texts()) == [d["text"] for d in docs]
    with pytest.raises(CorpusError, match="matches no file"):
        open_corpus(str(tmp_path / "nothing-*.jsonl"))


def test_reopen_corpus_refuses_a_changed_corpus(tmp_path):
    spec_path = write_format("glob", tmp_path, make_docs())
    corpus = open_corpus(spec_path)
    spec = json.loads(json.dumps(corpus.spec()))  # as stored in a manifest
    assert reopen_corpus(spec).fingerprint() == corpus.fingerprint()
    with (tmp_path / "part-01.jsonl").open("ab") as f:
        f.write(jsonl_bytes([{"text": "appended", "id": "new"}]))
    with pytest.raises(CorpusError, match="part-01.jsonl changed since"):
        reopen_corpus(spec)
    (tmp_path / "part-02.jsonl").unlink()
    with pytest.raises(CorpusError, match="cannot reopen the corpus recorded in the manifest: .*put it back, or "
                                          "embed the corpus again where it is now"):
        reopen_corpus(spec)


def test_reopen_corpus_refuses_a_same_size_edit_in_the_middle_of_a_jsonl_file(tmp_path):
    """A JSONL file's digest covers its whole content (it is read through to count rows anyway): an edit
    that keeps the size and the first and last MiB is still seen."""
    texts = [f"document {i} " + "x" * 300 for i in range(12_000)]  # ~4 MiB: the edit is past the first MiB
    data = jsonl_bytes([{"text": t} for t in texts])
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    spec = json.loads(json.dumps(open_corpus(path).spec()))
    middle = data.index(b"document 6000 ")
    path.write_bytes(data[:middle] + b"Document" + data[middle + 8:])  # same size, same rows, other text
    with pytest.raises(CorpusError, match="same size and rows, other content"):
        reopen_corpus(spec)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_same_size_edit_in_the_middle_of_an_uncompressed_columnar_file_is_seen(tmp_path, fmt):
    """A Parquet or Arrow file's rows come from its footer; since 0.7.14 it is hashed whole as well (once per
    version of the file: the read is kept in the user cache), so an edit that keeps the size and the first and
    last MiB is seen. A digest an earlier version recorded (size, first and last MiB) is still accepted."""
    from impsamp.io.discovery import file_digest

    t = pa.table({"text": [f"document {i} " + "x" * 300 for i in range(12_000)]})  # ~4 MiB, stored plain
    path = tmp_path / f"big.{fmt}"
    if fmt == "parquet":
        pq.write_table(t, path, compression="none", use_dictionary=False)
    else:
        write_arrow_file(path, t, chunk=1000)
    data = path.read_bytes()
    spec = json.loads(json.dumps(open_corpus(path).spec()))
    assert spec["files"][0]["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    middle = data.index(b"document 6000 ")
    assert 1 << 20 < middle < len(data) - (1 << 20)
    path.write_bytes(data[:middle] + b"Document" + data[middle + 8:])  # same size, same rows, other text
    with pytest.raises(CorpusError, match="same size and rows, other content"):
        reopen_corpus(spec)
    path.write_bytes(data)
    spec["files"][0]["digest"] = file_digest(path, len(data))  # as 0.7.13 recorded it
    assert reopen_corpus(spec).n_rows == 12_000


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
def test_a_jsonl_digest_is_the_sha256_of_the_whole_decompressed_content(tmp_path, compression):
    data = jsonl_bytes(make_docs())
    path = tmp_path / f"a.jsonl{compression}"
    path.write_bytes({"": lambda b: b, ".gz": gzip.compress,
                      ".zst": zstandard.ZstdCompressor().compress}[compression](data))
    assert open_corpus(path).files[0].digest == "sha256:" + hashlib.sha256(data).hexdigest()


def test_reopen_corpus_accepts_the_first_and_last_mib_digest_of_earlier_manifests(tmp_path):
    """Manifests written before 0.7.11 hold a JSONL file's sampled digest: the file is compared that way."""
    from impsamp.io.discovery import file_digest

    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl_bytes(make_docs()))
    spec = json.loads(json.dumps(open_corpus(path).spec()))
    spec["files"][0]["digest"] = file_digest(path, path.stat().st_size)  # as 0.7.10 recorded it
    assert reopen_corpus(spec).n_rows == len(make_docs())
    data = path.read_bytes()
    path.write_bytes(b"{" + b" " + data[2:])  # same size and rows, first bytes edited: the old digest sees it
    with pytest.raises(CorpusError, match="same size and rows, other content"):
        reopen_corpus(spec)
    spec["files"][0]["digest"] = None  # a damaged manifest
    with pytest.raises(CorpusError, match="records no usable digest"):
        reopen_corpus(spec)
    assert "damaged" in file_changed(["not", "a", "record"], open_corpus(path).files[0])


@pytest.mark.parametrize("damage", ["a path, not a record", "no path", "no files", "files not a list",
                                    "no text field", "not a dict"])
def test_a_damaged_corpus_record_is_one_corpus_error_naming_its_file(tmp_path, damage):
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl_bytes(make_docs()))
    spec = json.loads(json.dumps(open_corpus(path).spec()))
    if damage == "a path, not a record":
        spec["files"] = [str(path)]
    elif damage == "no path":
        del spec["files"][0]["path"]
    elif damage == "no files":
        del spec["files"]
    elif damage == "files not a list":
        spec["files"] = None
    elif damage == "no text field":
        del spec["text_field"]
    else:
        spec = [spec]
    with pytest.raises(CorpusError, match=r"the corpus record in /x/manifest.json is damaged.*embed the corpus again"):
        reopen_corpus(spec, source="/x/manifest.json")


def test_take_returns_texts_and_ids_by_doc_index(tmp_path):
    docs = make_docs()
    corpus = open_corpus(write_format("mixed-folder", tmp_path, docs))
    got = corpus.take([0, 21, 119, 50, 70, 90])  # JSONL, Parquet, feather, .gz, .zst
    assert got == {i: (docs[i]["id"], docs[i]["text"]) for i in (0, 21, 50, 70, 90, 119)}
    no_ids = tmp_path / "no-ids.jsonl.gz"
    no_ids.write_bytes(gzip.compress(jsonl_bytes([{"text": d["text"]} for d in docs])))
    assert open_corpus(no_ids).take([3, 1]) == {1: ("no-ids.jsonl.gz:1", docs[1]["text"]),
                                                 3: ("no-ids.jsonl.gz:3", docs[3]["text"])}


@pytest.mark.parametrize("fmt", FORMATS)
def test_take_rows_gives_the_texts_of_those_rows_in_the_order_asked(tmp_path, fmt):
    docs = make_docs()
    corpus = open_corpus(write_format(fmt, tmp_path, docs))
    rng = np.random.default_rng(0)
    for shard in corpus.shards(rows_per_shard=50):
        f = corpus.files[shard.file]
        rows = np.concatenate([rng.integers(shard.start, shard.stop, size=7), [shard.start, shard.start]])
        got = corpus.take_rows(shard, rows).to_pylist()
        assert got == [docs[f.offset + r]["text"] for r in rows], (fmt, shard)
        in_order = np.arange(shard.start, shard.stop)
        assert corpus.take_rows(shard, in_order).to_pylist() == [docs[f.offset + r]["text"] for r in in_order]
    first = corpus.shards(rows_per_shard=50)[0]
    assert corpus.take_rows(first, np.array([], dtype=np.int64)).to_pylist() == []
    with pytest.raises(CorpusError, match="outside shard"):
        corpus.take_rows(first, np.array([first.stop]))


def test_fingerprint_changes_with_the_data_not_the_location(tmp_path):
    docs = make_docs()
    a = open_corpus(write_format("jsonl", tmp_path / "a", docs))
    b = open_corpus(write_format("jsonl", tmp_path / "b", docs))
    c = open_corpus(write_format("jsonl", tmp_path / "c", docs[:-1]))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.fingerprint() != open_corpus(a.files[0].path, id_field="url").fingerprint()


def test_reading_streams_in_bounded_batches(tmp_path):
    docs = make_docs(5000)
    corpus = open_corpus(write_format("jsonl", tmp_path, docs))
    sizes = [b.num_rows for b in corpus.read(batch_rows=512)]
    assert max(sizes) <= 512 and sum(sizes) == 5000


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
def test_reading_is_lazy_the_first_batch_comes_before_the_end_of_the_file(tmp_path, suffix):
    """Streaming, shown without measuring memory: a bad last line does not stop the first batch."""
    data = jsonl_bytes(make_docs(5000)) + b'{"text": "broken\n'
    compress = {"": bytes, ".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress}[suffix]
    (tmp_path / f"c.jsonl{suffix}").write_bytes(compress(data))
    batches = open_corpus(tmp_path / f"c.jsonl{suffix}").read(batch_rows=100)
    assert next(batches).num_rows == 100
    with pytest.raises(CorpusError, match="line 5001: malformed JSON"):
        list(batches)


def test_rows_per_shard_must_be_positive(tmp_path):
    corpus = open_corpus(write_format("jsonl", tmp_path, make_docs(3)))
    with pytest.raises(ValueError, match="rows_per_shard"):
        corpus.shards(0)


def test_copying_a_corpus_keeps_its_fingerprint(tmp_path):
    src = write_format("hf", tmp_path / "src", make_docs())
    shutil.copytree(src, tmp_path / "copy")
    assert open_corpus(src).fingerprint() == open_corpus(tmp_path / "copy").fingerprint()


def test_a_dictionary_encoded_text_column_reads_as_its_strings(tmp_path):
    """What pandas writes for a categorical column (dictionary<string>): read, not refused."""
    texts = ["alpha beta", "gamma delta", "alpha beta", "é ünï"]
    col = pa.array(texts).dictionary_encode()
    pq.write_table(pa.table({"text": col, "id": [f"d{i}" for i in range(4)]}), tmp_path / "cat.parquet")
    corpus = open_corpus(tmp_path / "cat.parquet")
    assert list(corpus.iter_texts()) == texts
    feather.write_feather(pa.table({"body": col}), tmp_path / "cat.arrow")
    assert list(open_corpus(tmp_path / "cat.arrow", text_field="body").iter_texts()) == texts


def test_files_a_folder_holds_that_impsamp_does_not_read_are_named_once(tmp_path, caplog):
    import logging

    from impsamp.io import discovery

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jsonl").write_text('{"text": "one"}\n')
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="impsamp.io.discovery"):
        for _ in range(2):
            assert list(open_corpus(tmp_path / "c").iter_texts()) == ["one"]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "skipped 1 file(s)" in said[0] and "notes.txt" in said[0]
    assert str(tmp_path / "c") in discovery._WARNED


@pytest.fixture
def settled_now(monkeypatch):
    """Files count as settled (`known.SETTLED_SECONDS`) 0.05 s after their last write instead of 2 s."""
    from impsamp.io import known

    monkeypatch.setattr(known, "SETTLED_SECONDS", 0.05)
    return known


def counting_reads(monkeypatch) -> list[Path]:
    from impsamp.io import corpus as corpus_mod

    reads = []
    real = corpus_mod.count_lines
    monkeypatch.setattr(corpus_mod, "count_lines", lambda p: reads.append(p) or real(p))
    return reads


def test_an_unchanged_jsonl_file_is_not_read_through_again(tmp_path, monkeypatch, settled_now):
    """What the full read of a JSONL file found is kept by the file's identity on disk: opening it again
    (each resample, slice, compare) only stats it. Any write makes it read again, a same-size edit with its
    modification time put back included (the change time moves)."""
    import os
    import time

    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl_bytes(make_docs(10_000)))  # past the first seek checkpoint
    time.sleep(0.1)
    reads = counting_reads(monkeypatch)
    first = open_corpus(path)
    again = open_corpus(path)
    assert len(reads) == 1 and again.files == first.files and again.fingerprint() == first.fingerprint()
    assert len(again.files[0].line_offsets) == 3
    spec = first.spec()
    st = path.stat()
    path.write_bytes(path.read_bytes().replace(b"doc-1\"", b"doc-X\"", 1))  # same size and rows, other content
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # its old modification time put back
    time.sleep(0.1)
    with pytest.raises(CorpusError, match="changed since it was embedded"):
        reopen_corpus(spec)
    assert len(reads) == 2
    monkeypatch.setenv("IMPSAMP_NO_FILE_CACHE", "1")
    open_corpus(path)
    assert len(reads) == 3


def test_a_file_written_just_before_or_during_its_read_is_not_kept(tmp_path, monkeypatch, settled_now):
    from impsamp.io import corpus as corpus_mod

    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl_bytes(make_docs()))
    reads = counting_reads(monkeypatch)
    monkeypatch.setattr(settled_now, "SETTLED_SECONDS", 3600.0)  # just written: not settled
    open_corpus(path)
    open_corpus(path)
    assert len(reads) == 2 and not settled_now.entry_path(path.resolve()).exists()
    monkeypatch.setattr(settled_now, "SETTLED_SECONDS", 0.0)
    real = corpus_mod.count_lines

    def appended_during_the_read(p):
        got = real(p)
        with open(p, "ab") as f:
            f.write(jsonl_bytes(make_docs(1)))
        return got

    monkeypatch.setattr(corpus_mod, "count_lines", appended_during_the_read)
    open_corpus(path)
    assert not settled_now.entry_path(path.resolve()).exists()


def test_a_damaged_or_foreign_cache_entry_is_read_past(tmp_path, monkeypatch, settled_now):
    import time

    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl_bytes(make_docs()))
    time.sleep(0.1)
    reads = counting_reads(monkeypatch)
    rows = open_corpus(path).n_rows
    entry = settled_now.entry_path(path.resolve())
    kept = json.loads(entry.read_text())
    for damage in ("{not json", json.dumps({**kept, "rows": "many"}), json.dumps({**kept, "path": "/elsewhere"}),
                   json.dumps({**kept, "digest": None}), json.dumps([kept])):
        entry.write_text(damage)
        assert open_corpus(path).n_rows == rows
    assert len(reads) == 1 + 5
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("IMPSAMP_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # a cache that cannot be written
    assert open_corpus(path).n_rows == rows and len(reads) == 7


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz"])
def test_a_jsonl_file_gone_or_cut_after_opening_is_a_corpus_error(tmp_path, name):
    path = tmp_path / name
    data = jsonl_bytes(make_docs(100))
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    corpus = open_corpus(path)
    shard = corpus.shards(1000)[0]
    half = jsonl_bytes(make_docs(50))
    path.write_bytes(gzip.compress(half) if name.endswith(".gz") else half)
    for call in (lambda: corpus.take([10, 90]), lambda: list(corpus.read(shard))):
        with pytest.raises(CorpusError, match="has 50 lines, 100 when the corpus was opened"):
            call()
    path.unlink()
    for call in (lambda: list(corpus.read(shard)), lambda: corpus.take_rows(shard, np.array([3])),
                 lambda: corpus.take([3])):
        with pytest.raises(CorpusError, match=f"{name} line 1: cannot read it as jsonl .*No such file"):
            call()


def test_idle_readers_end_at_the_end_of_a_file_and_are_not_shared_with_a_fork(tmp_path):
    import os

    from impsamp.io import jsonl

    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(make_docs(100))))
    corpus = open_corpus(path)
    shards = corpus.shards(30)
    jsonl.close_idle_readers()
    list(corpus.read(shards[0]))
    assert [row for k, row, _ in jsonl._idle if k[0] == str(path)] == [30]  # waits for the next shard
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: an empty pool, its own readers, the same rows
        ok = not jsonl._idle and [b.column("row").to_pylist() for b in corpus.read(shards[1])] == [list(range(30, 60))]
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    for s in shards[1:]:
        list(corpus.read(s))
    assert not [k for k, _, _ in jsonl._idle if k[0] == str(path)]  # read to its end: closed, not kept


def test_the_file_cache_is_read_past_when_it_cannot_help(tmp_path, monkeypatch, settled_now):
    """No cache folder to be found (no home), a file name that is not UTF-8, a file that settles only while it
    is being read: the corpus opens as without a cache, and nothing wrong is kept."""
    import os
    import time

    from impsamp import config
    from impsamp.io import corpus as corpus_mod

    path = tmp_path / os.fsdecode(b"caf\xe9.jsonl")
    path.write_bytes(jsonl_bytes(make_docs()))
    time.sleep(0.1)
    reads = counting_reads(monkeypatch)
    assert open_corpus(path).n_rows == open_corpus(path).n_rows == 120 and len(reads) == 1  # kept, then used
    monkeypatch.setattr(config, "cache_dir", lambda: (_ for _ in ()).throw(RuntimeError("no home directory")))
    assert open_corpus(path).n_rows == 120 and len(reads) == 2
    monkeypatch.undo()
    monkeypatch.setattr(settled_now, "SETTLED_SECONDS", 0.5)
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_bytes(jsonl_bytes(make_docs()))
    real = corpus_mod.count_lines

    def slow(p):  # the file is only 0.6 s old when this read ends, but was 0.0 s old when it began
        time.sleep(0.6)
        return real(p)

    monkeypatch.setattr(corpus_mod, "count_lines", slow)
    open_corpus(fresh)
    assert not settled_now.entry_path(fresh.resolve()).exists()


def corrupt_deflate(data: bytes) -> bytes:
    """A gzip file whose deflate stream is damaged (a decompression error, not a CRC mismatch)."""
    import zlib

    full = gzip.compress(data)
    for pos in range(20, len(full)):
        bad = bytearray(full)
        bad[pos] ^= 0x5A
        try:
            gzip.decompress(bytes(bad))
        except zlib.error:
            return bytes(bad)
        except (OSError, EOFError):
            continue
    raise AssertionError("no position gave a deflate error")


@pytest.mark.parametrize("reader", ["isal", "gzip module"])
def test_gzip_is_read_with_isal_or_the_gzip_module_to_the_same_rows_and_damage_is_one_error(tmp_path, monkeypatch,
                                                                                         reader):
    import sys

    if reader == "gzip module":
        monkeypatch.setitem(sys.modules, "isal", None)  # `from isal import igzip` raises ImportError
    else:
        pytest.importorskip("isal")
    docs = make_docs(3000)
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl_bytes(docs[:1000])) + gzip.compress(jsonl_bytes(docs[1000:])))  # 2 members
    corpus = open_corpus(path)
    assert corpus.files[0].digest == "sha256:" + hashlib.sha256(jsonl_bytes(docs)).hexdigest()
    assert read_all(corpus).column("text").to_pylist() == [d["text"] for d in docs]
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(corrupt_deflate(jsonl_bytes(docs)))
    with pytest.raises(CorpusError, match="bad.jsonl.gz: cannot read it as jsonl .*is the file complete"):
        open_corpus(bad)
    path.write_bytes(corrupt_deflate(jsonl_bytes(docs)))  # damaged after opening: the read says so
    with pytest.raises(CorpusError, match="a.jsonl.gz line 1: cannot read it as jsonl"):
        read_all(corpus)


def test_processes_opening_one_corpus_at_once_read_each_file_once_between_them(tmp_path, monkeypatch, settled_now):
    """The slices of a Slurm array open the corpus together: a file one of them is reading through is left for
    last by the others, who then find its entry, so each file is read once and the reading is shared."""
    import threading
    import time

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"part-{i}.jsonl")
        paths[-1].write_bytes(jsonl_bytes(make_docs(50 + i)))
    time.sleep(0.1)
    from impsamp.io import corpus as corpus_mod

    real, reads, lock, at_once = corpus_mod.count_lines, [], threading.Lock(), [0, 0]  # now, most

    def slow(p):
        with lock:
            reads.append(p.name)
            at_once[0] += 1
            at_once[1] = max(at_once)
        time.sleep(0.3)
        with lock:
            at_once[0] -= 1
        return real(p)

    monkeypatch.setattr(corpus_mod, "count_lines", slow)
    opened = [None] * 3
    slices = [threading.Thread(target=lambda k=k: opened.__setitem__(k, open_corpus(str(tmp_path / "part-*.jsonl"))))
              for k in range(3)]  # flock locks belong to open files: threads contend as processes do
    for t in slices:
        t.start()
    for t in slices:
        t.join()
    assert sorted(reads) == [p.name for p in paths]  # each file read once, by one of the three
    assert opened[0].files == opened[1].files == opened[2].files and opened[0].n_rows == 50 + 51 + 52 + 53
    assert [f.offset for f in opened[0].files] == [0, 50, 101, 153]
    assert at_once[1] >= 2  # shared: files read side by side, not one after another in a queue


def test_a_file_another_process_is_reading_is_left_for_last(tmp_path, monkeypatch, settled_now):
    import fcntl
    import os
    import threading
    import time

    paths = [tmp_path / f"part-{i}.jsonl" for i in range(3)]
    for p in paths:
        p.write_bytes(jsonl_bytes(make_docs()))
    time.sleep(0.1)
    reads = counting_reads(monkeypatch)
    lock = settled_now.entry_path(paths[0].resolve()).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "another process" reads part-0 through
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("c", open_corpus([str(p) for p in paths])))
    t.start()
    deadline = time.time() + 10
    while len(reads) < 2 and time.time() < deadline:
        time.sleep(0.02)
    assert [p.name for p in reads] == ["part-1.jsonl", "part-2.jsonl"] and t.is_alive()  # waits for part-0 last
    os.close(fd)
    t.join(10)
    assert [p.name for p in reads] == ["part-1.jsonl", "part-2.jsonl", "part-0.jsonl"]  # no entry was left: read
    assert [Path(f.path).name for f in result["c"].files] == ["part-0.jsonl", "part-1.jsonl", "part-2.jsonl"]

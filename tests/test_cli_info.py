"""`impsamp info`: describes corpora and stage directories; bad input is one `Error:` line, no traceback."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import zstandard
from click.testing import CliRunner
from impsamp_cli.main import cli

from impsamp.manifest import StageRun


def info(*args: str):
    return CliRunner().invoke(cli, ["info", *map(str, args)])


def lines(data: list[dict]) -> bytes:
    return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in data).encode()


def assert_one_line_error(result, *needles: str) -> str:
    """Non-zero exit, exactly one line of output starting with 'Error:', no traceback, mentions needles."""
    out = result.output
    assert result.exit_code != 0, out
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # handled, not a crash
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) == 1, out
    assert out.startswith("Error: "), out
    for needle in needles:
        assert needle in out, (needle, out)
    return out


# ----------------------------------------------------------------------------- good input


def test_info_on_a_jsonl_corpus_prints_counts(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(lines([{"text": "héllo 😀", "url": "u"}, {"text": ""}, {"text": "世界"}]))
    r = info(p)
    assert r.exit_code == 0, r.output
    assert "corpus: 1 file(s) (jsonl)" in r.output
    assert "documents: 2 (of 3 rows; 1 empty skipped)" in r.output
    assert "characters: 9 " in r.output
    assert "fields of c.jsonl: text, url" in r.output


def test_info_json_on_a_mixed_folder(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines([{"text": "a"}, {"text": "b"}])))
    pq.write_table(pa.table({"text": ["c", "d", "e"], "id": ["1", "2", "3"]}), tmp_path / "b.parquet")
    r = info(tmp_path, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert (s["files"], s["rows"], s["documents"], s["formats"]) == (2, 5, 5, ["jsonl", "parquet"])


def test_info_warns_of_ids_that_repeat_across_files(tmp_path):
    for name in ("a", "b"):  # two exports that each number their documents from 0
        (tmp_path / f"{name}.jsonl").write_bytes(lines([{"id": str(i), "text": f"{name} {i}"} for i in range(3)]))
    r = info(tmp_path)
    assert r.exit_code == 0 and "warning: 3 documents repeat an earlier document's id (3 distinct)" in r.output
    assert json.loads(info(tmp_path, "--json").output)["distinct_ids"] == 3
    r = info(tmp_path / "a.jsonl")
    assert r.exit_code == 0 and "repeat" not in r.output


def test_info_on_the_bundled_demo_corpus():
    demo = Path(__file__).resolve().parents[1] / "impsamp" / "data" / "demo" / "pool.parquet"
    if not demo.exists():
        pytest.skip("no bundled demo corpus")
    r = info(demo)
    assert r.exit_code == 0 and "documents:" in r.output, r.output


def _demo_stage(out: Path, *, finish: bool = True) -> None:
    run = StageRun(out, "embed", config={"model": "hashing:8"},
                   inputs={"corpus": {"fingerprint": "x"}}).begin()
    tmp = run.tmp_path("part-00000.bin")
    tmp.write_bytes(b"\x00" * 100)
    run.commit_shard("00000", {"part-00000.bin": tmp}, rows={"part-00000.bin": 10})
    if finish:
        run.finish(stats={"documents": 10})


def test_info_on_a_complete_stage_directory(tmp_path):
    _demo_stage(tmp_path / "emb")
    r = info(tmp_path / "emb")
    assert r.exit_code == 0, r.output
    assert "complete 'embed' output (1 files, 100 bytes)" in r.output
    assert "documents: 10" in r.output and "model: hashing:8" in r.output
    r = info(tmp_path / "emb", "--json")
    assert json.loads(r.output)["stage"] == "embed" and json.loads(r.output)["complete"] is True


def test_info_on_an_interrupted_stage_directory(tmp_path):
    """Where an interrupted run stands is what info is asked: said on one line, exit 0 (a script tells it from a
    missing folder, exit 1); --verify has nothing to check in it."""
    _demo_stage(tmp_path / "emb", finish=False)
    r = info(tmp_path / "emb")
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 1, r.output
    assert "incomplete 'embed' output (1 shard committed" in r.output and "resume" in r.output
    facts = json.loads(info(tmp_path / "emb", "--json").output)
    assert facts["complete"] is False and facts["stage"] == "embed" and "incomplete 'embed' output" in facts["status"]
    assert_one_line_error(info(tmp_path / "emb", "--verify"), "incomplete 'embed' output", "complete output's files")
    assert_one_line_error(info(tmp_path / "nothing"), "no such file or folder")
    # a manifest whose atomic write was cut (temp file only) does not make it complete
    (tmp_path / "emb" / ".manifest.json.tmp-123").write_text('{"stage": "embed"')
    assert "incomplete 'embed' output" in info(tmp_path / "emb").output


def test_info_verify_checks_every_file_against_its_sha256(tmp_path):
    _demo_stage(tmp_path / "emb")
    r = CliRunner().invoke(cli, ["info", "--verify", str(tmp_path / "emb")])
    assert r.exit_code == 0 and "verified: all 1 files match their sha256" in r.output, r.output
    (tmp_path / "emb" / "part-00000.bin").write_bytes(b"\x01" * 100)  # the same size: only the sha256 tells
    assert info(tmp_path / "emb").exit_code == 0
    assert_one_line_error(CliRunner().invoke(cli, ["info", "--verify", str(tmp_path / "emb")]),
                          "part-00000.bin does not match its sha256")
    _demo_stage(tmp_path / "outer")  # a stage output holding others (as a compare holds its runs)
    _demo_stage(tmp_path / "inner")
    shutil.copytree(tmp_path / "inner", tmp_path / "outer" / "runs" / "inner")
    r = CliRunner().invoke(cli, ["info", "--verify", str(tmp_path / "outer")])
    assert "and those of the 1 stage outputs inside it" in r.output, r.output
    (tmp_path / "outer" / "runs" / "inner" / "part-00000.bin").write_bytes(b"\x02" * 100)
    assert_one_line_error(CliRunner().invoke(cli, ["info", "--verify", str(tmp_path / "outer")]),
                          "inner/part-00000.bin does not match its sha256")
    r = CliRunner().invoke(cli, ["info", "--verify", str(tmp_path)])  # not a stage directory
    assert r.exit_code == 2 and "--verify checks a stage directory" in r.output


def test_info_on_a_damaged_stage_directory(tmp_path):
    _demo_stage(tmp_path / "emb")
    (tmp_path / "emb" / "part-00000.bin").write_bytes(b"short")
    assert_one_line_error(info(tmp_path / "emb"), "part-00000.bin has 5 bytes, the manifest says 100")
    (tmp_path / "emb" / "manifest.json").write_text("{not json")
    assert_one_line_error(info(tmp_path / "emb"), "manifest.json is corrupt")
    (tmp_path / "emb" / "manifest.json").write_text('{"stage": "build", "steps": 3}')  # another tool's:
    assert_one_line_error(info(tmp_path / "emb"), "manifest.json: its first line is not a JSON object with a 'text' "
                          "field", "name the data files instead")  # the folder is read as a corpus


# ----------------------------------------------------------------------------- bad input


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _truncated(blob: bytes) -> bytes:
    return blob[: len(blob) // 2]


def _parquet_bytes(tmp: Path, n: int = 2000) -> bytes:
    pq.write_table(pa.table({"text": [f"document number {i}" for i in range(n)]}), tmp / "_full.parquet")
    return (tmp / "_full.parquet").read_bytes()


def _arrow_file_bytes(tmp: Path, n: int = 2000) -> bytes:
    feather.write_feather(pa.table({"text": [f"document number {i}" for i in range(n)]}), tmp / "_full.arrow",
                          compression="uncompressed")
    return (tmp / "_full.arrow").read_bytes()


def _arrow_stream_bytes(n: int = 2000) -> bytes:
    t = pa.table({"text": [f"document number {i}" for i in range(n)]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t, max_chunksize=100)
    return sink.getvalue().to_pybytes()


GOOD = lines([{"text": "one"}, {"text": "two"}])


def case_malformed_json(tmp):
    p = _write(tmp / "bad.jsonl", GOOD + b'{"text": "three",, }\n' + GOOD)
    return [p], ["bad.jsonl line 3: malformed JSON"]


def case_truncated_jsonl(tmp):
    p = _write(tmp / "cut.jsonl", GOOD + b'{"text": "the last line is cu')
    return [p], ["cut.jsonl line 3: malformed JSON", "no newline: is the file complete?"]


def case_json_document_given_as_a_corpus(tmp):  # e.g. a stage's manifest.json as --target
    p = _write(tmp / "manifest.json", b'{\n  "stage": "embed"\n}\n')
    return [p], ["manifest.json line 1: malformed JSON", "read as JSON Lines", "is it a corpus?"]


def case_missing_text_field(tmp):
    p = _write(tmp / "f.jsonl", lines([{"content": "x", "url": "u"}]))
    return [p], ["f.jsonl line 1: no 'text' field", "available fields: ['content', 'url']", "--text-field"]


def case_missing_text_column(tmp):
    pq.write_table(pa.table({"body": ["x"], "meta": [1]}), tmp / "f.parquet")
    return [tmp / "f.parquet"], ["f.parquet: no 'text' field", "['body', 'meta']", "--text-field"]


def case_missing_id_field(tmp):
    p = _write(tmp / "f.jsonl", lines([{"text": "x", "url": "u"}]))
    return [p, "--id-field", "doc_id"], ["f.jsonl line 1: no 'doc_id' field", "--id-field"]


def case_non_string_text(tmp):
    p = _write(tmp / "n.jsonl", GOOD + lines([{"text": 42}]))
    return [p], ["n.jsonl line 3: field 'text' is an int, not a string"]


def case_non_string_text_dict(tmp):
    p = _write(tmp / "n.jsonl", lines([{"text": {"en": "x"}}]))
    return [p], ["n.jsonl line 1: field 'text' is an object"]


def case_non_string_text_column(tmp):
    pq.write_table(pa.table({"text": [1, 2]}), tmp / "n.parquet")
    return [tmp / "n.parquet"], ["n.parquet: field 'text' has type int64, not a string"]


def case_line_not_an_object(tmp):
    p = _write(tmp / "l.jsonl", GOOD + b'["text", "in a list"]\n')
    return [p], ["l.jsonl line 3: expected a JSON object, got list"]


def case_invalid_utf8(tmp):
    p = _write(tmp / "u.jsonl", GOOD + b'{"text": "caf\xe9"}\n')
    return [p], ["u.jsonl line 3: invalid UTF-8", "--encoding-errors replace"]


def case_lone_surrogate(tmp):
    p = _write(tmp / "s.jsonl", b'{"text": "cut emoji \\ud83d"}\n')
    return [p], ["s.jsonl line 1:", "surrogate", "--encoding-errors replace"]


def case_empty_file(tmp):
    p = _write(tmp / "empty.jsonl", b"")
    return [p], ["empty.jsonl", "empty (0 rows)"]


def case_empty_parquet(tmp):
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp / "empty.parquet")
    return [tmp / "empty.parquet"], ["empty.parquet", "empty (0 rows)"]


def case_unsupported_type(tmp):
    p = _write(tmp / "notes.txt", b"hello\n")
    return [p], ["notes.txt: unsupported file type", "JSONL", "Parquet", "Arrow", "save_to_disk"]


def case_truncated_parquet(tmp):
    p = _write(tmp / "cut.parquet", _truncated(_parquet_bytes(tmp)))
    return [p], ["cut.parquet: cannot read it as parquet", "is the file complete?"]


def case_truncated_arrow_file(tmp):
    p = _write(tmp / "cut.arrow", _truncated(_arrow_file_bytes(tmp)))
    return [p], ["cut.arrow: cannot read it as arrow", "is the file complete?"]


def case_truncated_arrow_stream(tmp):
    p = _write(tmp / "cut.arrow", _truncated(_arrow_stream_bytes()))
    return [p], ["cut.arrow: cannot read it as arrow", "is the file complete?"]


def case_truncated_gzip(tmp):
    p = _write(tmp / "cut.jsonl.gz", _truncated(gzip.compress(GOOD * 2000)))
    return [p], ["cut.jsonl.gz: cannot read it as jsonl", "is the file complete?"]


def case_truncated_zstd(tmp):
    p = _write(tmp / "cut.jsonl.zst", _truncated(zstandard.ZstdCompressor().compress(GOOD * 2000)))
    return [p], ["cut.jsonl.zst: cannot read it as jsonl", "is the file complete?"]


def case_not_gzip(tmp):
    p = _write(tmp / "fake.jsonl.gz", GOOD)
    return [p], ["fake.jsonl.gz: cannot read it as jsonl"]


def case_feather_v1(tmp):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feather.write_feather(pa.table({"text": ["x"]}), tmp / "old.feather", version=1)
    return [tmp / "old.feather"], ["old.feather: a Feather V1 file"]


def case_folder_without_corpus_files(tmp):
    _write(tmp / "d" / "README.md", b"# hi\n")
    _write(tmp / "d" / ".hidden.jsonl", GOOD)
    return [tmp / "d"], [f"{tmp / 'd'}: the folder holds no corpus file", "JSONL"]


def case_empty_folder(tmp):
    (tmp / "d").mkdir()
    return [tmp / "d"], ["the folder holds no corpus file"]


def case_dataset_dict(tmp):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a", "b"]})
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp / "dd"))
    return [tmp / "dd"], ["dd is a `datasets` DatasetDict", "'train', 'validation'",
                          str(tmp / "dd" / "train")]


def case_nonexistent_path(tmp):
    return [tmp / "nope.jsonl"], ["nope.jsonl: no such file or folder"]


def case_glob_matching_nothing(tmp):
    return [str(tmp / "*.jsonl")], ["the pattern matches no file"]


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line_naming_the_file(tmp_path, case):
    args, needles = CASES[case](tmp_path)
    assert_one_line_error(info(*args), *needles)


def test_invalid_utf8_is_replaced_and_counted_on_request(tmp_path):
    args, _ = case_invalid_utf8(tmp_path)
    r = info(*args, "--encoding-errors", "replace")
    assert r.exit_code == 0, r.output
    assert "documents: 3 (of 3 rows" in r.output
    assert "rows with invalid UTF-8 replaced: 1" in r.output
    r = info(*args, "--encoding-errors", "replace", "--json")
    assert json.loads(r.output)["replaced_utf8"] == 1


def test_whitespace_documents_are_skipped_and_counted(tmp_path):
    p = _write(tmp_path / "w.jsonl", lines([{"text": "  "}, {"text": "real"}, {"text": "\n\t"}]) + b"\n")
    r = info(p)
    assert r.exit_code == 0, r.output
    assert "documents: 1 (of 4 rows; 3 empty skipped)" in r.output


def test_a_corpus_of_only_empty_documents_is_described_with_a_warning(tmp_path):
    """0 documents is not a crash: `info` describes what is there (exit 0) and warns."""
    p = _write(tmp_path / "w.jsonl", lines([{"text": "  "}, {"text": ""}, {"text": None}]))
    r = info(p)
    assert r.exit_code == 0, r.output
    assert "documents: 0 (of 3 rows; 3 empty skipped)" in r.output
    assert "warning: no documents" in r.output and "--text-field" in r.output


def test_the_real_console_entry_point_prints_no_traceback(tmp_path):
    args, _ = case_malformed_json(tmp_path)
    r = subprocess.run([sys.executable, "-m", "impsamp", "info", *map(str, args)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "bad.jsonl line 3" in r.stderr


def test_library_error_with_newlines_still_prints_one_line(tmp_path, monkeypatch):
    import impsamp_cli.info as info_mod

    from impsamp.errors import CorpusError

    def boom(*a, **k):
        raise CorpusError("first line\nsecond line\n")

    monkeypatch.setattr(info_mod, "open_corpus", boom)
    assert_one_line_error(info(tmp_path), "first line; second line")


def test_a_closed_pipe_stops_quietly(tmp_path):
    """`impsamp info X | head` with the reader gone before anything is written: no error message."""
    import os

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(3)))
    r, w = os.pipe()
    os.close(r)  # the reader has gone: the first write raises EPIPE
    p = subprocess.run([sys.executable, "-m", "impsamp", "info", str(corpus)], stdout=w, stderr=subprocess.PIPE,
                       text=True, timeout=120)
    os.close(w)
    assert p.returncode != 0
    assert p.stderr == "", p.stderr


def test_a_saved_histogram_stands_for_its_sample_and_info_describes_it(tmp_path):
    from ._helpers import RESAMPLE_ARGS, build_pipeline, invoke, ok, one_line_error

    p = build_pipeline(tmp_path)
    hist = tmp_path / "bio.hist.json"
    said = ok(invoke("histogram", p["clu"], "--target", p["target"], "--out", hist)).output
    assert said.startswith(f"{hist}: 40 documents over 4 clusters")
    facts = json.loads(info(hist, "--json").output)
    assert facts["documents"] == 40 and facts["clusters"] == 4 and facts["histogram_of"].endswith("bio.jsonl")
    one_line_error(invoke("histogram", p["clu"], "--target", p["target"], "--out", hist), "--overwrite")
    one_line_error(invoke("histogram", p["clu"], "--target", p["target"], "--out", tmp_path / "h.txt"), ".json")
    # counts only, no text: with documents drawn uniformly inside the clusters it selects what the sample does
    for name, target in (("from-sample", p["target"]), ("from-hist", hist)):
        ok(invoke(*RESAMPLE_ARGS(p["emb"], p["clu"], target, tmp_path / name, "--within", "uniform")))
    data = sorted(f.name for f in (tmp_path / "from-sample").glob("data-*"))
    assert data and all((tmp_path / "from-sample" / n).read_bytes() == (tmp_path / "from-hist" / n).read_bytes()
                        for n in data)
    # a colleague's clustering made by the same commands in other folders: the same centroids' bytes, so the
    # histogram reads over it (it was refused, its run key holding the folders); another seed's is refused
    from ._helpers import CLUSTER_ARGS, EMBED_ARGS

    ok(invoke(*EMBED_ARGS(p["generic"], tmp_path / "theirs" / "emb")))
    ok(invoke(*CLUSTER_ARGS(tmp_path / "theirs" / "emb", tmp_path / "theirs" / "clu")))
    ok(invoke(*RESAMPLE_ARGS(tmp_path / "theirs" / "emb", tmp_path / "theirs" / "clu", hist, tmp_path / "theirs" / "sel",
                             "--within", "uniform")))
    assert all((tmp_path / "theirs" / "sel" / n).read_bytes() == (tmp_path / "from-hist" / n).read_bytes() for n in data)
    ok(invoke("cluster", tmp_path / "theirs" / "emb", "--out", tmp_path / "theirs" / "clu7", "--k", "4", "--seed", "7",
              "--no-progress"))
    one_line_error(invoke(*RESAMPLE_ARGS(tmp_path / "theirs" / "emb", tmp_path / "theirs" / "clu7", hist,
                                         tmp_path / "theirs" / "sel7")), "histogram over another clustering")

"""`impsamp cache`: the user cache by kind, clearing it (by age, never what a run is writing), and the
file entries' cap."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from impsamp import usercache
from impsamp.io import known, open_corpus

from ._helpers import CLUSTER_ARGS, EMBED_ARGS, RESAMPLE_ARGS, invoke, ok, payload, write_corpus

DAY = 86_400


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("IMPSAMP_CACHE_DIR", str(folder))
    monkeypatch.setattr(known, "SETTLED_SECONDS", 0.05)  # the corpus files just written count as settled
    return folder


def age(folder: Path, days: float) -> None:
    """Set every modification time under `folder` `days` back, as if no run had used it since."""
    then = time.time() - days * DAY
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.utime(Path(top) / name, (then, then))
    os.utime(folder, (then, then))


def selection(root: Path, name: str) -> dict[str, bytes]:
    ok(invoke(*RESAMPLE_ARGS(root / "emb", root / "clu", root / "bio.jsonl", root / name)))
    return {k: v for k, v in payload(root / name).items() if k.startswith("data-")}


@pytest.fixture
def stages(tmp_path, cache):
    write_corpus(tmp_path / "generic.jsonl", 200)
    write_corpus(tmp_path / "bio.jsonl", 30, seed=1, topics=("bio",), ids=False)
    time.sleep(0.1)
    ok(invoke(*EMBED_ARGS(tmp_path / "generic.jsonl", tmp_path / "emb")))
    ok(invoke(*CLUSTER_ARGS(tmp_path / "emb", tmp_path / "clu")))
    return tmp_path


def test_a_run_leaves_entries_of_known_kinds_and_clearing_them_changes_no_selection(stages, cache):
    first = selection(stages, "sel")  # the default for a corpus target keeps the pool's n-gram features
    facts = usercache.summary()
    assert facts["ngram"]["entries"] == 1 and facts["ngram"]["bytes"] > 0
    assert facts["files"]["entries"] == 2  # the generic corpus and the target, each read through once
    assert facts["other"] == {"entries": 0, "bytes": 0, "used": None}  # all a run wrote is of a known kind
    assert facts["temporary"]["entries"] == 0  # the file entries' locks go with them: no leftovers of a killed run
    shown = ok(invoke("cache")).output
    assert str(cache) in shown and any(line.split()[:2] == ["ngram", "1"] for line in shown.splitlines())

    assert usercache.clear(["ngram"]) == usercache.Cleared(0, 0, 1)  # just written: a run may be writing it
    age(cache, 2)
    out = ok(invoke("cache", "--clear", "ngram", "--older-than", "3")).output
    assert "removed 0 ngram entries unused for 3 days" in out and len(list((cache / "ngram").iterdir())) == 1
    out = ok(invoke("cache", "--clear", "ngram", "--older-than", "1")).output
    assert "removed 1 ngram entries unused for 1 days" in out
    assert list((cache / "ngram").iterdir()) == []  # nothing half-removed left behind
    assert selection(stages, "again") == first  # made again, the same bytes
    assert usercache.summary()["ngram"]["entries"] == 1

    age(cache, 2)
    facts = json.loads(ok(invoke("cache", "--clear", "all", "--json")).output)
    assert facts["entries"] == 3 and facts["bytes"] > 0 and facts["busy"] == 0
    assert all(f["entries"] == 0 for f in usercache.summary().values())
    assert list((cache / "files").iterdir()) == []  # the entries' locks went with them


def test_reading_an_entry_marks_it_used_so_age_spares_it(stages, cache):
    selection(stages, "sel")
    age(cache, 5)
    open_corpus([str(stages / "generic.jsonl")])  # found in the file cache: marked used
    ok(invoke("cache", "--clear", "files", "--older-than", "1"))
    left = [json.loads(p.read_text())["path"] for p in (cache / "files").glob("*.json")]
    assert left == [os.fsencode(stages / "generic.jsonl").hex()]
    assert sorted(p.suffix for p in (cache / "files").iterdir()) == [".json", ".lock"]


def test_file_entries_past_the_cap_lose_the_least_recently_used(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(known, "MAX_ENTRIES", 4)
    monkeypatch.setattr(known, "PRUNE_EVERY", 1)
    paths = [write_corpus(tmp_path / f"part-{i}.jsonl", 5, seed=i) for i in range(8)]
    time.sleep(0.1)
    for i, p in enumerate(paths):
        open_corpus([str(p)])
        entry = known.entry_path(p.resolve())
        os.utime(entry, (time.time() - (8 - i), time.time() - (8 - i)))  # part-0 the least recently used
    kept = sorted(json.loads(p.read_text())["path"] for p in (cache / "files").glob("*.json"))
    assert len(kept) <= 4 and os.fsencode(paths[-1].resolve()).hex() in kept
    assert os.fsencode(paths[0].resolve()).hex() not in kept


def test_the_demo_writes_its_embeddings_where_the_cache_looks(tmp_path, cache):
    from impsamp.demonstration import embeddings_dir as demo_embeddings_dir

    demo = demo_embeddings_dir(tmp_path / "pool.parquet", "torch", 128, "9.9.9")
    demo.mkdir(parents=True)
    (demo / "manifest.json").write_text("{}")
    assert [e.path for e in usercache.entries("demo")] == [demo]
    assert usercache.clear(["demo"], older_than_s=0).busy == 1
    age(cache, 1)
    assert usercache.clear(["demo"]).entries == 1 and list(cache.iterdir()) == []  # its version folder too


def test_bad_cache_flags_are_one_line(cache):
    r = invoke("cache", "--older-than", "3")
    assert r.exit_code != 0 and "--older-than needs --clear" in r.output and "Traceback" not in r.output
    r = invoke("cache", "--clear", "everything")
    assert r.exit_code == 2 and "'everything' is not one of" in r.output


def fake_entry(cache: Path, rel: str, days: float = 2) -> Path:
    """An entry of the shape impsamp writes (a folder holding one file), `days` old."""
    entry = cache / rel
    entry.mkdir(parents=True)
    (entry / "0.npz").write_bytes(b"x" * 1000)
    age(entry, days)
    return entry


def test_an_entry_a_live_run_writes_or_reads_is_left_however_old(cache):
    import subprocess
    import sys

    from impsamp import guards

    entry = fake_entry(cache, "ngram/" + "a" * 32)
    key = guards.hold(entry)  # a stage writing it (in this process: its lock is not this process's use)
    assert usercache.clear(["ngram"]) == usercache.Cleared(0, 0, 1) and entry.is_dir()
    guards.release(key)
    code = ("import sys; from pathlib import Path; from impsamp import usercache; "
            "h = usercache.Hold(Path(sys.argv[1])); print('held' if h.held else 'not', flush=True); "
            "sys.stdin.read()")
    reader = subprocess.Popen([sys.executable, "-c", code, str(entry)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "held"
        age(entry, 2)  # `use` stamped it: age it again, so only the lock keeps it
        r = invoke("cache", "--clear", "ngram")
        assert "removed 0 ngram entries" in r.output and "left 1 entries in use" in r.output
        assert entry.is_dir()
    finally:
        reader.communicate("")
    assert usercache.clear(["ngram"]) == usercache.Cleared(1, 1000, 0)
    assert list((cache / "ngram").iterdir()) == []


def test_what_impsamp_did_not_make_is_other_and_never_removed(cache, tmp_path):
    outside = tmp_path / "elsewhere"
    (outside / "embeddings-a").mkdir(parents=True)
    (outside / "notes.txt").write_text("mine")
    for rel in ("onnx/resnet50.onnx", "tokenizers/my-bpe.json", "files/config.json", "demo-notes/slides.md",
                "data.jsonl"):
        (cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / rel).write_text("not impsamp's")
    (cache / "ngram").mkdir()
    (cache / "ngram" / ("b" * 32)).symlink_to(outside, target_is_directory=True)
    (cache / "demo-0.7.12").symlink_to(outside, target_is_directory=True)
    age(cache, 40)
    facts = usercache.summary()
    assert facts["other"]["entries"] == 5 and all(facts[k]["entries"] == 0 for k in usercache.KINDS)
    out = ok(invoke("cache", "--clear", "all", "--older-than", "30")).output
    assert "removed 0 " in out
    assert sorted(p.name for p in outside.iterdir()) == ["embeddings-a", "notes.txt"]
    assert (cache / "onnx/resnet50.onnx").read_text() == "not impsamp's"
    assert (cache / "demo-notes/slides.md").exists()


def test_an_entry_that_cannot_be_removed_is_one_line_and_not_counted(cache, monkeypatch):
    entry = fake_entry(cache, "ngram/" + "c" * 32)

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(os, "rename", refuse)
    r = invoke("cache", "--clear", "ngram")
    assert r.exit_code == 1 and "could not remove 1 entries" in r.output and "Traceback" not in r.output
    assert "removed 0 ngram entries (0 B)" in r.output and entry.is_dir()


def test_a_file_entrys_lock_a_reader_holds_is_kept(stages, cache):
    selection(stages, "sel")
    generic = (stages / "generic.jsonl").resolve()
    age(cache, 2)
    with known._counting(generic, True) as mine:  # "another process" reads the file through again
        assert mine
        usercache.clear(["files"])
        entry = known.entry_path(generic)
        assert not entry.exists() and entry.with_suffix(".lock").exists()
    usercache.clear(["files"])  # no one holds it now: the orphan lock goes
    assert list((cache / "files").iterdir()) == []


def test_only_the_temporary_files_impsamp_writes_go_with_their_kind(cache):
    theirs = ["ngram/.my-notes", "onnx/.git/config", "files/backup.lock", "tokenizers/.draft.json"]
    ours = [".tmp-export-abc123/model.onnx", ".deleting-" + "d" * 32 + "-v3-4242/model.onnx"]
    for rel in theirs + [f"onnx/{x}" for x in ours] + ["files/" + "e" * 32 + ".lock"]:
        (cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / rel).write_text("x" * 10)
    age(cache, 2)
    facts = usercache.summary()
    assert (facts["temporary"]["entries"], facts["other"]["entries"]) == (3, 4)
    usercache.clear(list(usercache.KINDS))
    assert all((cache / rel).read_text() == "x" * 10 for rel in theirs)  # not impsamp's: left alone
    assert sorted(p.name for p in (cache / "onnx").iterdir()) == [".git"]
    assert sorted(p.name for p in (cache / "files").iterdir()) == ["backup.lock"]


def test_the_demo_reads_its_cached_embeddings_only_while_it_holds_them(tmp_path, cache):
    import contextlib

    from impsamp.demonstration import complete_and_held as _complete_and_held, embeddings_dir as demo_embeddings_dir

    emb = demo_embeddings_dir(tmp_path / "pool.jsonl", "hashing", 64, "9.9.9")
    ok(invoke(*EMBED_ARGS(write_corpus(tmp_path / "pool.jsonl", 30), emb)))
    fd, state = usercache._lock(emb, shared=False, wait=False)  # a cache clear deciding on it
    assert state == "held"
    with contextlib.ExitStack() as stack:
        assert not _complete_and_held(emb, stack, wait=False)  # complete, but not to be read now
        os.close(fd)
        assert _complete_and_held(emb, stack, wait=False)
        assert usercache.clear(["demo"], older_than_s=0) == usercache.Cleared(0, 0, 1)  # held by this demo
    age(cache, 1)
    assert usercache.clear(["demo"]).entries == 1  # the demo's stack closed: let go


def test_a_failed_int8_quantize_lets_go_of_the_model_folder(cache, monkeypatch):
    from types import SimpleNamespace

    from impsamp.embedding import onnx_backend

    model = SimpleNamespace(weights_sha256="f" * 64)
    folder = cache / "onnx" / f"{'f' * 32}-v{onnx_backend.EXPORT_RECIPE}-{onnx_backend.toolchain()}"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"exported")

    def full_disk(fp32, int8):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_backend, "_quantize", full_disk)
    with pytest.raises(OSError):
        onnx_backend.onnx_model_path(model, "int8")
    path, hold = onnx_backend.onnx_model_path(model)
    assert path == folder / "model.onnx" and hold.held
    hold.release()
    age(cache, 1)
    assert usercache.clear(["onnx"]) == usercache.Cleared(1, 8, 0)  # no hold left behind


def test_odd_ages_and_entries_of_the_wrong_type(cache):
    r = invoke("cache", "--clear", "ngram", "--older-than", "1e308")
    assert r.exit_code == 1 and "--older-than must be a number of days" in r.output
    assert "Traceback" not in r.output
    (cache / "demo-1.0.0").mkdir(parents=True)
    (cache / "demo-1.0.0" / "embeddings-x-1-abcdefabcdef").write_text("a file, not an embedding folder")
    (cache / "files").mkdir()
    (cache / "files" / ("a" * 32 + ".json")).mkdir()  # a folder named like a file entry
    age(cache, 2)
    facts = usercache.summary()
    assert facts["demo"]["entries"] == facts["files"]["entries"] == 0 and facts["other"]["entries"] == 1
    assert usercache.clear(list(usercache.KINDS)).entries == 0


def test_on_nfs_guards_lock_file_decides_and_without_any_locks_the_age(cache, monkeypatch):
    import errno
    import fcntl

    from impsamp import guards

    from .test_guards import NO_FOLDER_FLOCK

    scope: dict = {}
    exec(NO_FOLDER_FLOCK, scope)  # as on NFS: flock on files only
    monkeypatch.setattr(fcntl, "flock", scope["flock"])
    entry = fake_entry(cache, "ngram/" + "a" * 32)
    key = guards.hold(entry)  # a stage writing it: on guards' lock file in the folder
    age(entry, 2)  # so that only the lock keeps it
    assert usercache.clear(["ngram"]) == usercache.Cleared(0, 0, 1)
    guards.release(key)
    with usercache.Hold(entry) as held:
        age(entry, 2)
        assert held and usercache.clear(["ngram"]) == usercache.Cleared(0, 0, 1)  # a reader, the same file
    age(entry, 2)
    assert usercache.clear(["ngram"]).entries == 1

    def no_locks(fd, op):  # no flock at all (Lustre mounted noflock): the one-minute window decides
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    entry = fake_entry(cache, "ngram/" + "b" * 32)
    with usercache.Hold(entry) as held:
        assert held and not (entry / guards.LOCK_FILE).exists()  # a run goes on, and leaves no lock file
    assert usercache.clear(["ngram"]).busy == 1  # just used
    age(entry, 2)
    assert usercache.clear(["ngram"]).entries == 1


@pytest.mark.parametrize("code", ["ENOLCK", "EIO", "ENOSYS", "EOPNOTSUPP", "EWOULDBLOCK", "EACCES"])
def test_guards_and_the_cache_read_a_flock_error_the_same_way(cache, monkeypatch, code):
    """A stage's writer and the cache's clear agree on what a failed `flock` means: another holder (busy), or a
    file system without locks. (They once listed opposite sets: EIO meant "no locks" to one, "busy" to the other.)"""
    import errno
    import fcntl

    from impsamp import guards

    number = getattr(errno, code)

    def failing(fd, op):
        raise OSError(number, code)

    monkeypatch.setattr(fcntl, "flock", failing)
    busy = number in guards.BUSY_ERRNOS
    entry = fake_entry(cache, "ngram/" + "c" * 32)
    if busy:
        with pytest.raises(guards.FolderBusy):
            guards.hold(entry)
    else:
        assert guards.hold(entry) is None  # no locks here: the writer goes on unlocked
    with usercache.Hold(entry) as held:
        assert bool(held) is not busy
    age(entry, 2)
    cleared = usercache.clear(["ngram"])
    assert (cleared.busy, cleared.entries) == ((1, 0) if busy else (0, 1))

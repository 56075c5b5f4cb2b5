"""Set-up every test module shares."""

from __future__ import annotations

import os
import shutil
import tempfile

_SAVED: dict[str, str | None] = {}
_MADE: str | None = None


def pytest_configure(config):
    """impsamp's user cache (the n-gram features of every embedding a test makes, exported ONNX models,
    trained tokenizers) goes to a folder of the session's, not the user's cache (`IMPSAMP_CACHE_DIR` or
    ~/.cache/impsamp), which tests used to fill with entries nothing would read again;
    `IMPSAMP_TEST_CACHE_DIR` names a folder to use instead (a CI cache, say). Set here, before the test
    modules are imported: tests/_helpers.py copies the environment for its subprocesses at import."""
    global _MADE
    _SAVED.update({name: os.environ.pop(name, None) for name in ("IMPSAMP_CACHE_DIR", "IMPSAMP_CACHE")})
    chosen = os.environ.get("IMPSAMP_TEST_CACHE_DIR")
    if not chosen:
        chosen = _MADE = tempfile.mkdtemp(prefix="impsamp-test-cache-")
    os.environ["IMPSAMP_CACHE_DIR"] = chosen


def pytest_unconfigure(config):
    if _MADE is not None:
        shutil.rmtree(_MADE, ignore_errors=True)
    for name, value in _SAVED.items():  # the caller's own settings back
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (README's test command, with pytest-xdist): one test process per core, at most 4. The tests
    run torch, Ray and subprocesses of their own, so more processes than cores only contend; `--dist
    loadfile` gives each process whole files, so a module's fixtures (the real model's embeddings) are built
    once. Plain `pytest tests/test_io.py` runs in one process."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))

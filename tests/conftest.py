"""Set-up every test module shares."""

from __future__ import annotations

import os
import shutil
import tempfile

_CACHE: str | None = None


def pytest_configure(config):
    """impsamp's user cache (the n-gram features of every embedding a test makes, exported ONNX models,
    trained tokenizers) goes to a folder of the session's, not the user's ~/.cache/impsamp, which tests
    used to fill with entries nothing would read again. Set here, before the test modules are imported:
    tests/_helpers.py copies the environment for its subprocesses at import."""
    global _CACHE
    if os.environ.get("IMPSAMP_CACHE_DIR"):  # the caller chose one (a CI cache, say): kept
        return
    _CACHE = tempfile.mkdtemp(prefix="impsamp-test-cache-")
    os.environ.pop("IMPSAMP_CACHE", None)
    os.environ["IMPSAMP_CACHE_DIR"] = _CACHE


def pytest_unconfigure(config):
    if _CACHE is not None:
        shutil.rmtree(_CACHE, ignore_errors=True)
        os.environ.pop("IMPSAMP_CACHE_DIR", None)

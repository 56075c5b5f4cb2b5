"""The generic corpus's hashed n-gram features, computed once per embedding and kept for every later target.

`--method ngram`, `--within knn+ngram` and `--within ngram-classifier` (the default for a corpus
target) need, per target, every generic unit's hashed n-grams: the corpus's total counts and each unit's
dot product with the target's log-ratio, or the classifier's features. Hashing the text is what costs
(~160 us a document on one core); the features themselves do not depend on the target. The first target that needs them
hashes each shard's units once and writes that shard's sparse count matrix to impsamp's user cache:

    <cache_dir>/ngram/<key>/<shard>.npz     indptr (int64), indices (uint16), data (uint16 counts),
                                          totals (uint64 per bucket: the shard's counts, read alone)

`<key>` is a hash of the embedding run's fingerprint and output files (the corpus, its units and the
embedding settings) and of the featuriser's recipe, so a cache made from other units or another
featuriser is never read. Each shard file is written under a temporary name and renamed, so a killed run
leaves whole files only and its rerun goes on from them; a damaged file is hashed again, and a cache that
cannot be written is skipped with a warning. Later targets read the matrices and skip the text: the
weights and counts are the same numbers, to the bit, as hashing again gives. Size: ~4 bytes per distinct
n-gram of a unit, so it grows with the documents' length (1.5x the float16 embeddings of the bundled pool,
several times that for long web pages); `IMPSAMP_CACHE_DIR` moves the cache, deleting `ngram/` clears it,
`impsamp cache --clear ngram` too (a run whose folder goes meanwhile hashes the shards it still needs again:
the same numbers), and `impsamp resample --no-ngram-cache` keeps nothing outside the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .._deps import require
from ..config import cache_dir
from ..manifest import fingerprint
from ..selectors import N_FEATURES
from ..usercache import touch

logger = logging.getLogger(__name__)
_WARNED: set[Path] = set()

_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
"""What reading a missing, truncated or foreign file raises: hashed again."""
RECIPE = 2
"""Bump when the stored layout or the featuriser changes."""
assert N_FEATURES <= 1 << 16, "hashed n-gram indices are stored as uint16"


def features_folder(manifest) -> Path:
    """Where one embedding run's n-gram features are kept in the user cache: keyed by its fingerprint and
    its output files' sha256 (the unit tables: a corpus edited where its fingerprint does not look, then
    embedded again, gets other features), and by the featuriser."""
    from ..selectors import featurizer_recipe

    key = fingerprint({"embeddings": manifest.fingerprint, "files": sorted((o.path, o.sha256) for o in manifest.outputs),
                       "featurizer": featurizer_recipe(), "n_features": N_FEATURES, "recipe": RECIPE})
    folder = cache_dir() / "ngram" / key.removeprefix("sha256:")[:32]
    _sweep(folder)
    touch(folder)
    return folder


def _sweep(folder: Path, age_s: float = 86_400) -> None:
    """Remove temporary files a killed run left over a day ago (a live run's are younger)."""
    now = time.time()
    for f in folder.glob(".*.npz") if folder.is_dir() else ():
        with contextlib.suppress(OSError):
            if now - f.stat().st_mtime > age_s:
                f.unlink()


def shard_features(folder: Path, name: str, n_units: int, texts: Callable[[], list[str]]):
    """One shard's units x hashed n-grams count matrix (scipy CSR, float64 counts): read from `folder`,
    or hashed from `texts()` and written there."""
    from ..selectors import ngram_matrix

    x = _read(folder / f"{name}.npz", n_units)
    if x is None:
        x = ngram_matrix(texts())
        keep(folder, name, x)
    return x


def keep(folder: Path, name: str, x) -> None:
    """Write one shard's matrix to the cache (whole files only); a cache that cannot be written is skipped
    with one warning."""
    try:
        _write(folder / f"{name}.npz", x)
        touch(folder)  # `impsamp cache --clear` leaves a folder changed in the last minute
    except OSError as e:  # a full or read-only cache: the selection does not need it
        if folder not in _WARNED:
            _WARNED.add(folder)
            logger.warning("could not keep the n-gram features in %s (%s): later targets will read the text "
                           "again; --no-ngram-cache skips keeping them", folder, e)


def missing(folder: Path, names: list[str]) -> list[str]:
    """The shards with no kept features yet (a damaged file is found, and redone, when it is read)."""
    return [n for n in names if not (folder / f"{n}.npz").exists()]


def shard_totals(folder: Path, name: str, n_units: int, texts: Callable[[], list[str]]) -> np.ndarray:
    """One shard's total count per hashed n-gram, float64 (N_FEATURES,): read alone from `folder` (a few
    hundred KB, not the matrix), or from `shard_features`."""
    try:
        with np.load(folder / f"{name}.npz", allow_pickle=False) as z:
            indptr, totals = z["indptr"], z["totals"]
        if indptr.shape == (n_units + 1,) and totals.shape == (N_FEATURES,) and totals.dtype == np.uint64:
            return totals.astype(np.float64)
    except _UNREADABLE:
        pass
    x = shard_features(folder, name, n_units, texts)
    return _totals(x)


def _totals(x) -> np.ndarray:
    """Each hashed n-gram's count over the matrix's units, float64 (whole numbers: exact)."""
    return np.bincount(x.indices, weights=x.data, minlength=N_FEATURES)


def _read(path: Path, n_units: int):
    """The stored matrix, or None when it is missing, unreadable or not what `_write` leaves."""
    sparse = require("scipy.sparse")
    try:
        with np.load(path, allow_pickle=False) as z:
            indptr, indices, data = z["indptr"], z["indices"], z["data"]
    except _UNREADABLE:
        return None
    ok = (indptr.shape == (n_units + 1,) and indptr[0] == 0 and indptr[-1] == len(indices) == len(data)
          and indices.dtype == np.uint16 and data.dtype.kind == "u" and bool((np.diff(indptr) >= 0).all())
          and bool((data > 0).all()))
    if not ok:
        return None
    return sparse.csr_matrix((data.astype(np.float64), indices.astype(np.int32), indptr), shape=(n_units, N_FEATURES))


def _write(path: Path, x) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz", dir=path.parent)
    try:
        counts = x.data.astype(np.uint16 if x.data.max(initial=0) < 2**16 else np.uint32)  # whole numbers: exact
        with os.fdopen(fd, "wb") as f:
            np.savez(f, indptr=x.indptr.astype(np.int64), indices=x.indices.astype(np.uint16), data=counts,
                     totals=_totals(x).astype(np.uint64))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)

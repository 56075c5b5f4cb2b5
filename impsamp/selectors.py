"""Document-level selectors that practitioners compare against: hashed n-grams and a classifier.

Both give every unit of the generic corpus a log-weight; `impsamp resample --method ngram|classifier`
then draws without replacement by Gumbel top-k on those log-weights, and writes the same shards,
diagnostics and data card as the clustered importance sampler.

- `ngram` (DSIR, Xie et al. 2023): bag-of-hashed-unigrams-and-bigrams models of the target and of
  the generic corpus; log w(x) = sum over x's n-grams of log p_target(b) - log p_generic(b).
  Needs the generic text's hashed n-grams per target: the first target on an embedding hashes them once
  and keeps them (`resampling.ngram_features`); later targets read them instead of the text.
- `classifier`: logistic regression on the sentence embeddings, in-domain sample against a generic
  sample; log w(x) is its log-odds (the common "quality classifier" practice).
- the n-gram classifier of `--within ngram-classifier`: logistic regression on the hashed n-grams, target
  sample against the pool's units, cross-fitted; its log-odds weigh documents inside the cluster quotas.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import numpy as np

from ._deps import require

logger = logging.getLogger(__name__)

N_FEATURES = 1 << 16


def _vectorizer(n_features: int = N_FEATURES):
    text = require("sklearn.feature_extraction.text")
    # DSIR's featuriser: lower-cased word unigrams and bigrams, hashed, raw counts.
    return text.HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False,
                                  norm=None, lowercase=True, dtype=np.float64)


def featurizer_recipe() -> dict[str, object]:
    """What makes two runs' hashed features the same: the vectorizer's settings and sklearn's hashing."""
    import unicodedata

    sklearn = require("sklearn")
    params = _vectorizer().get_params()
    return {"params": {k: repr(v) for k, v in sorted(params.items())},
            "sklearn": ".".join(sklearn.__version__.split(".")[:2]),
            "unicode": unicodedata.unidata_version}  # lower-casing and \w follow Python's Unicode tables


def ngram_matrix(texts: list[str], n_features: int = N_FEATURES, batch: int = 512):
    """Hashed n-gram counts per text, a scipy CSR matrix (len(texts), n_features), made in batches."""
    sparse = require("scipy.sparse")
    vec = _vectorizer(n_features)
    parts = [vec.transform(texts[i:i + batch]) for i in range(0, len(texts), batch)]
    return sparse.vstack(parts, format="csr") if parts else sparse.csr_matrix((0, n_features))


def ngram_counts(texts: Iterable[str], n_features: int = N_FEATURES, batch: int = 512) -> np.ndarray:
    """Total hashed n-gram counts of `texts`, shape (n_features,), streamed in batches."""
    vec = _vectorizer(n_features)
    total = np.zeros(n_features)
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            total += np.asarray(vec.transform(buf).sum(axis=0)).ravel()
            buf = []
    if buf:
        total += np.asarray(vec.transform(buf).sum(axis=0)).ravel()
    return total


def ngram_log_ratio(target_counts: np.ndarray, generic_counts: np.ndarray, smoothing: float = 1.0) -> np.ndarray:
    """log p_target(b) - log p_generic(b) per hashed n-gram bucket, Laplace-smoothed."""
    p_t = (target_counts + smoothing) / (target_counts.sum() + smoothing * len(target_counts))
    p_g = (generic_counts + smoothing) / (generic_counts.sum() + smoothing * len(generic_counts))
    return np.log(p_t) - np.log(p_g)


CLASSIFIER_FOLDS = 5


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Fit and score the logistic regressions on one BLAS thread: OpenBLAS splits a long dot product's sum by
    thread, so the fitted weights (and the documents drawn by them) changed with the machine's core count
    (the demo's n-gram classifier: other log-odds at 1 and 2 threads). One thread was also the faster on 2
    cores (1.0 s against 1.8 s for the demo's folds): the vectors are too short to pay for a second."""
    with require("threadpoolctl").threadpool_limits(limits=1, user_api="blas"):
        yield


def ngram_classifier_features(counts):
    """The n-gram classifier's inputs: log(1 + count) of each hashed n-gram, rows L2-normalised (CSR)."""
    preprocessing = require("sklearn.preprocessing")
    return preprocessing.normalize(counts.astype(np.float64).log1p())


def ngram_classifier_odds(generic_counts, target_counts, folds: int = CLASSIFIER_FOLDS,
                          target_weights: np.ndarray | None = None, seed: int = 0):
    """Logistic regression on hashed n-grams (`ngram_classifier_features`), target documents (1, each
    weighed by `target_weights` if given) against generic units (0), class-balanced, cross-fitted: the
    generic rows fall in `folds` folds drawn with `seed` and each is scored by the model fitted without its fold (so a
    unit's own n-grams never count as "generic" in its score). -> (log-odds per generic row, the fold models)."""
    linear, sparse = require("sklearn.linear_model"), require("scipy.sparse")
    xg, xt = ngram_classifier_features(generic_counts), ngram_classifier_features(target_counts)
    fold = np.random.default_rng(seed).permutation(xg.shape[0]) % folds
    odds, models = np.zeros(xg.shape[0]), []
    if xg.shape[0] < 2:  # nothing to hold out against: every unit alike
        return odds, models
    for f in range(min(folds, xg.shape[0])):  # a pool smaller than `folds`: one unit per fold
        train = np.flatnonzero(fold != f)
        y = np.concatenate([np.zeros(len(train)), np.ones(xt.shape[0])])
        clf = linear.LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")
        with one_blas_thread():
            clf.fit(sparse.vstack([xg[train], xt], format="csr"), y, sample_weight=None if target_weights is None
                    else np.concatenate([np.ones(len(train)), target_weights]))
            odds[fold == f] = clf.decision_function(xg[fold == f])
        models.append(clf)
    return odds, models


def fit_classifier(target_vectors: np.ndarray, generic_vectors: np.ndarray, seed: int = 0,
                   target_weights: np.ndarray | None = None):
    """Logistic regression, target (1, each weighed by `target_weights` if given) against generic (0),
    class-balanced."""
    linear = require("sklearn.linear_model")
    x = np.concatenate([target_vectors, generic_vectors]).astype(np.float32)
    y = np.concatenate([np.ones(len(target_vectors)), np.zeros(len(generic_vectors))])
    clf = linear.LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced", random_state=seed)
    with one_blas_thread():
        clf.fit(x, y, sample_weight=None if target_weights is None
                else np.concatenate([target_weights, np.ones(len(generic_vectors))]))
    return clf


def classifier_log_weights(clf, vectors: np.ndarray) -> np.ndarray:
    """Log-odds of "in-domain" for each vector (one BLAS thread: the same bytes on any machine)."""
    with one_blas_thread():
        return clf.decision_function(np.asarray(vectors, dtype=np.float32)).astype(np.float64)


def sample_rows(n_total: int, n: int, seed: int) -> np.ndarray:
    """`n` sorted row indices out of `n_total`, seeded (the generic sample for the classifier)."""
    rng = np.random.default_rng([seed, 17])
    return np.sort(rng.choice(n_total, size=min(n, n_total), replace=False))

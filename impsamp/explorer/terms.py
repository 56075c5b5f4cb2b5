"""Top terms of each cluster: TF-IDF (scikit-learn) with each cluster's sampled documents as one document.

A term's frequency in a cluster is the number of its sampled documents that contain it (so one
document repeating a word cannot make it the cluster's topic), its inverse document frequency is
over the clusters of the same level (a word every cluster uses ranks low), English stop words,
digits and one-letter tokens are left out.
"""

from __future__ import annotations

import numpy as np

from .._deps import require

TERMS = 6
"""Top terms kept per cluster."""
TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,40}\b"
"""Words of 2 to 40 letters (no digits, no underscores): a longer run of letters (a hash, base64) names no topic,
and it stretched the page's term chips and tooltips thousands of pixels wide."""


def top_terms(texts: list[str], groups: list[np.ndarray], n_nodes: list[int], n_terms: int = TERMS
              ) -> list[list[list[str]]]:
    """Per level, per node: its `n_terms` most distinctive terms.

    Args:
        texts: the sampled documents.
        groups: per level, (len(texts),) node of each document at that level.
        n_nodes: per level, how many nodes it has.

    Returns:
        out[level][node] = terms, best first (fewer when the node's documents hold fewer words).
    """
    if not texts:
        return [[[] for _ in range(n)] for n in n_nodes]
    feature = require("sklearn.feature_extraction.text")
    sparse = require("scipy.sparse")
    vec = feature.CountVectorizer(binary=True, stop_words="english", token_pattern=TOKEN_PATTERN,
                                  dtype=np.float32)
    try:
        docs = vec.fit_transform(texts)  # (n_docs, V): 1 where the document holds the term
    except ValueError:  # no word at all (empty texts, only stop words or digits)
        return [[[] for _ in range(n)] for n in n_nodes]
    vocab = vec.get_feature_names_out()
    out = []
    for group, n in zip(groups, n_nodes, strict=True):
        member = sparse.csr_matrix((np.ones(len(group), dtype=np.float32), (group, np.arange(len(group)))),
                                   shape=(n, len(texts)))
        out.append(_best(member @ docs, vocab, n_terms))
    return out


def _best(counts, vocab: np.ndarray, n_terms: int) -> list[list[str]]:
    """The highest TF-IDF terms of each row of a (nodes, V) count matrix; ties go to the earlier term."""
    text = require("sklearn.feature_extraction.text")
    tfidf = text.TfidfTransformer(norm=None, smooth_idf=True, sublinear_tf=False)
    scores = tfidf.fit_transform(counts).tocsr()
    counts = counts.tocsr()
    out = []
    for r in range(scores.shape[0]):
        lo, hi = scores.indptr[r], scores.indptr[r + 1]
        cols, vals = scores.indices[lo:hi], scores.data[lo:hi]
        tf = np.asarray(counts[r, cols].todense()).ravel()
        if (tf >= 2).sum() >= n_terms:  # prefer terms that more than one sampled document uses
            cols, vals = cols[tf >= 2], vals[tf >= 2]
        order = np.lexsort((cols, -np.round(vals, 6)))[:n_terms]
        out.append([str(vocab[c]) for c in cols[order]])
    return out

"""Custom weightings used by the tests, loaded by import string like a user's own module."""

import numpy as np


def capped_ratio(target, generic):
    """The density ratio, no cluster more than 3x its generic share."""
    w = target.probs(1.0) / generic.probs(1.0)
    return np.minimum(w, 3.0)


def wrong_shape(target, generic):
    return np.ones(generic.k - 1)


def negative(target, generic):
    return -np.ones(generic.k)


def raises(target, generic):
    raise RuntimeError("boom in the user's code")


def all_zero(target, generic):
    return np.zeros(generic.k)


def closeness(target_vectors, vectors):
    """A document-weight hook (`--within tests.weighting_plugins:closeness`): exp of 20 x the best cosine."""
    return np.exp(20 * (vectors @ target_vectors.T).max(axis=1))


def negative_document_weights(target_vectors, vectors):
    return -np.ones(len(vectors))


def complex_document_weights(target_vectors, vectors):
    return np.ones(len(vectors)) + 1j


def wrong_length_document_weights(target_vectors, vectors):
    return np.ones(len(vectors) + 1)


def writes_its_inputs(target, generic):
    """Tries to change the histograms it was given (the diagnostics would then describe other data)."""
    w = target.probs(1.0) / generic.probs(1.0)
    target.counts[:] = 1.0
    return w


def huge(target, generic):
    """Valid weights of a scale float32 cannot hold (1e50 where the target has documents)."""
    return np.where(target.counts > 0, 1e50, 0.0)


def tiny(target, generic):
    return np.where(target.counts > 0, 1e-50, 0.0)


def writes_the_target_vectors(target_vectors, vectors):
    """A document-weight hook that writes into the target's vectors (which the next shard's call would see)."""
    w = np.exp(20 * (vectors @ target_vectors.T).max(axis=1))
    target_vectors[:] = 0.0
    return w


def exits(target, generic):
    import sys

    sys.exit(3)  # the user's code ending the process: reported as its error, not a silent exit 3

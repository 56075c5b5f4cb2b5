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


def wrong_length_document_weights(target_vectors, vectors):
    return np.ones(len(vectors) + 1)

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

"""Importance weights per cluster: the built-in density ratio, or the user's own function.

A weighting is any callable `(target: Histogram, generic: Histogram) -> weights` giving one
non-negative weight per leaf cluster. A document x of the generic corpus is then drawn with
probability proportional to w(c(x)), so the selection's histogram is p_generic(c) * w(c),
normalised. The built-in `density_ratio` gives w = p_target / p_generic, i.e. the selection
imitates the target histogram.

    impsamp resample ... --weighting mypkg.weights:capped_ratio
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from .config import check_cap, positive
from .errors import ConfigError, WeightingError
from .histograms import Histogram

logger = logging.getLogger(__name__)


def backoff_probs(target: Histogram, generic: Histogram, *, smoothing: float = 0.0,
                  backoff: float = 0.0) -> np.ndarray:
    """p_target per leaf; with a hierarchy, sparse leaves borrow from their parent (CRISP).

    Top-down: a node's share of its parent is (n_target(node) + backoff * g) / (n_target(parent) +
    backoff), where g is the node's generic share of the parent. With backoff = 0 this is the plain
    target histogram; with backoff > 0 a leaf the small sample missed gets part of its parent's
    mass, in proportion to its generic size, while the parent keeps exactly its target mass. Then
    `smoothing` pseudo-documents are added to every leaf (Laplace).
    """
    counts = target.counts.astype(np.float64)
    if backoff > 0 and len(target.ancestors) > 1:
        g = generic.counts.astype(np.float64)
        top = target.ancestors[0]
        p = np.bincount(top, weights=counts, minlength=int(top.max()) + 1)[top]  # mass of the leaf's top node
        p = p / max(counts.sum(), 1e-300)
        for level in range(1, len(target.ancestors)):
            node, parent = target.ancestors[level], target.ancestors[level - 1]
            t_node = np.bincount(node, weights=counts)[node]
            t_par = np.bincount(parent, weights=counts)[parent]
            g_node = np.bincount(node, weights=g)[node]
            g_par = np.bincount(parent, weights=g)[parent]
            g_share = np.where(g_par > 0, g_node / np.maximum(g_par, 1e-300), 0.0)
            denom = t_par + backoff
            p = p * np.where(denom > 0, (t_node + backoff * g_share) / np.maximum(denom, 1e-300), g_share)
        counts = p * counts.sum()
    counts = counts + smoothing
    return counts / counts.sum()


def density_ratio(target: Histogram, generic: Histogram, *, smoothing: float = 0.0,
                  temperature: float = 1.0, cap: float | None = None, backoff: float = 0.0) -> np.ndarray:
    """w(c) = (p_target(c) / p_generic(c)) ** temperature, smoothed, optionally capped. The defaults are
    `ResampleConfig`'s: these are the weights `impsamp resample` draws with.

    Args:
        smoothing: pseudo-documents added to every target leaf (Laplace). A cluster with no generic
            document gets weight 0 (there is nothing to draw).
        temperature: < 1 flattens the weights toward uniform sampling, > 1 sharpens them.
        cap: largest weight relative to the mean weight of a generic document, the mean of the capped
            weights (>= 1; None: no cap). Where the cap cannot hold (it is below the share of the
            generic corpus in clusters of positive weight, inverted), those clusters are weighted alike.
        backoff: hierarchy only: pseudo-documents that pull a sparse leaf toward its parent.

    Raises:
        ConfigError: a setting out of its range (as `ResampleConfig` would refuse it).
    """
    for name, value in (("smoothing", smoothing), ("backoff", backoff)):
        positive(name, value, allow_zero=True)
    for name, value in (("temperature", temperature), ("cap", cap)):
        positive(name, value)
    check_cap(cap)
    p_t = backoff_probs(target, generic, smoothing=smoothing, backoff=backoff)
    p_g = generic.probs()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        w = np.where(generic.counts > 0, (p_t / p_g) ** temperature, 0.0)
    if not np.isfinite(w).all():
        raise ConfigError(f"--temperature {temperature:g} overflows the cluster weights (the density ratio to that "
                          "power is past float64's range); lower it")
    return w if cap is None else capped(w, generic.counts.astype(np.float64), cap)


def capped(w: np.ndarray, n: np.ndarray, cap: float) -> np.ndarray:
    """`w` with no weight above `cap` times the mean weight of a document (`n` documents per cluster) after
    capping: the level t with t = cap * mean(min(w, t)), solved over the sorted weights (capping the top j
    clusters, t = cap * (the rest's weight) / (documents - cap * the top j's documents))."""
    total = float(n.sum())
    if total <= 0 or w.max() <= cap * float((w * n).sum()) / total:
        return w
    order = np.argsort(-w, kind="stable")
    ws, ns = w[order], n[order]
    top_docs = np.cumsum(ns)
    rest = np.append(np.cumsum((ws * ns)[::-1])[::-1][1:], 0.0)  # below the top j: summed, not subtracted
    nxt = np.append(ws[1:], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = cap * rest / (total - cap * top_docs)
    tol = 1e-9 * float(ws[0])  # a level on a weight itself: rounding must not make both sides of it miss
    fits = (total - cap * top_docs > 0) & (level > 0) & (level >= nxt - tol) & (level <= ws + tol)  # not t = 0
    if not fits.any():  # the cap is out of reach: every cluster of positive weight weighs the same
        return (w > 0).astype(np.float64)
    return np.minimum(w, level[int(np.argmax(fits))])


def uniform(target: Histogram, generic: Histogram) -> np.ndarray:
    """Every cluster weighted 1: a uniform random sample of the generic corpus (the paper's baseline)."""
    return (generic.counts > 0).astype(np.float64)


WEIGHTINGS: dict[str, Callable[..., np.ndarray]] = {"ratio": density_ratio, "uniform": uniform}


def resolve_weighting(spec: str | Callable[..., Any]) -> tuple[Callable[..., Any], str]:
    """A weighting function and its name, from a built-in name, `package.module:function` or a callable.

    The module of an import string is imported only here, when the user names it.
    """
    if callable(spec):
        return spec, f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}"
    if spec in WEIGHTINGS:
        return WEIGHTINGS[spec], spec
    module, sep, attr = str(spec).partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"unknown weighting {spec!r}; use one of {sorted(WEIGHTINGS)} or "
                          "'package.module:function'")
    return load_function(spec, "--weighting"), spec


def load_function(spec: str, flag: str) -> Callable[..., Any]:
    """The function an import string `package.module:function` names, imported only now; a one-line
    ConfigError naming `flag` if it cannot be loaded or is not callable."""
    module, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (Exception, SystemExit) as e:  # an import can fail in any way; report it as the user's module
        raise ConfigError(f"{flag} {spec}: cannot load it ({type(e).__name__}: {e})") from None
    if not callable(fn):
        raise ConfigError(f"{flag} {spec}: {attr} is a {type(fn).__name__}, not a function")
    return fn


def check_weights(w: Any, k: int, name: str) -> np.ndarray:
    """Validate a weighting's output; messages name the function."""
    try:
        if np.iscomplexobj(w):
            raise TypeError("complex numbers")
        w = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise WeightingError(f"weighting {name} returned {type(w).__name__}, not numbers ({e})") from None
    if w.shape != (k,):
        raise WeightingError(f"weighting {name} returned shape {w.shape}, expected ({k},): one weight per cluster")
    if not np.all(np.isfinite(w)):
        raise WeightingError(f"weighting {name} returned {int((~np.isfinite(w)).sum())} non-finite weight(s)")
    if np.any(w < 0):
        raise WeightingError(f"weighting {name} returned {int((w < 0).sum())} negative weight(s)")
    if not w.any():
        raise WeightingError(f"weighting {name} returned all-zero weights; nothing can be sampled")
    return w


def compute_weights(spec: str | Callable[..., Any], target: Histogram, generic: Histogram,
                    **builtin_kwargs: Any) -> tuple[np.ndarray, str]:
    """Run a weighting and check its output. Built-ins get `builtin_kwargs` (smoothing, ...)."""
    fn, name = resolve_weighting(spec)
    try:  # on read-only copies: a function that wrote into them would change the diagnostics, not the draw
        w = fn(target, generic, **builtin_kwargs) if fn is density_ratio else fn(_frozen(target), _frozen(generic))
    except ConfigError:  # a built-in's setting out of range: already one line naming it
        raise
    except (Exception, SystemExit) as e:  # the user's code: sys.exit() in it is an error too
        raise WeightingError(f"weighting {name} raised {type(e).__name__}: {e}") from None
    w = check_weights(w, generic.k, name)
    with np.errstate(over="ignore"):  # weights near float64's top: their product only has to be nonzero
        reaches = bool((w * generic.counts).any())
    if not reaches:
        raise WeightingError(f"weighting {name} puts weight only on clusters with no generic documents; "
                             "nothing can be sampled")
    top = float(w.max())
    if not 1e-30 <= top <= 1e30:  # weights are relative: outside float32's reach (the selection's weight column)
        w = w / top  # and the planner's products, the largest becomes 1; ordinary weights are kept as they are
    return w, name


def _frozen(h: Histogram) -> Histogram:
    """A copy of `h` whose arrays cannot be written."""
    def ro(a):
        if a is None:
            return None
        a = np.array(a, copy=True)
        a.flags.writeable = False
        return a

    return replace(h, counts=ro(h.counts), ancestors=tuple(ro(a) for a in h.ancestors), tokens=ro(h.tokens))

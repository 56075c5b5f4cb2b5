"""The resample stage's settings (`ResampleConfig`), schemes, methods, formats and the output schema."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pyarrow as pa

from .._deps import installed
from ..config import check_cap, check_fields, check_seed, documented, flags_set, positive
from ..errors import ConfigError

SCHEMES = ("match", "crisp", "topk")
WITHIN = ("auto", "uniform", "knn", "knn+ngram", "ngram-classifier")
WITHIN_REPEATS = ("even", "weighted")
WITHIN_MAX_REPEAT = 4
"""The repeat cap of a weighted `--within` (knn, knn+ngram, ngram-classifier, a function) when
`--max-repeat` is not given: about 4 epochs of a document train
nearly as well as fresh text (data-constrained scaling), and the cap keeps the closest documents from
taking a whole cluster's quota."""
DOCUMENT_RANKERS = ("ngram", "classifier")
"""The methods that score each document on its own (their scorers: `stage.DOCUMENT_SCORERS`) and draw the
best by Gumbel top-k, without replacement; `importance` weighs clusters, `uniform` nothing."""
METHODS = ("importance", "uniform", *DOCUMENT_RANKERS)
RATIO_SHAPING = ("smoothing", "temperature", "cap", "backoff")
"""The settings of the built-in `--weighting ratio` (`weighting.density_ratio`): nothing else reads them."""
FORMATS = ("arrow", "parquet", "jsonl")
SELECTION_SCHEMA = pa.schema([
    ("text", pa.string()), ("id", pa.string()), ("source_file", pa.string()), ("source_row", pa.int64()),
    ("doc_index", pa.int64()), ("window", pa.int32()), ("cluster", pa.int32()), ("weight", pa.float32()),
    ("repeat", pa.int32()),
])
FEATURES = {f.name: {"dtype": {"string": "string", "int64": "int64", "int32": "int32", "float": "float32"}[
    str(f.type)], "_type": "Value"} for f in SELECTION_SCHEMA}


@documented
@dataclass(frozen=True)
class ResampleConfig:
    """How to draw a selection from the clustered generic corpus."""

    ALTERNATIVES = (("tokens", "docs", "bytes"),)  # not a field: a budget flag replaces a config file's budget

    tokens: int | None = None
    """Budget in tokens of the text written: the embedding model's tokenizer on whole documents (past the
    embedded window estimated at the window's tokens per character), or `budget_tokenizer`'s, exact."""
    docs: int | None = None
    """Budget in documents (embedding units: windows with `embed --windows`)."""
    bytes: int | None = None
    """Budget in UTF-8 bytes of the text written."""
    budget_tokenizer: str | None = None
    """A tokenizer.json to count `tokens` in (e.g. the trainer's); reads the generic corpus's text once."""
    method: str = "importance"
    """`importance` (clustered importance sampling), `uniform` (random sample: the paper's baseline),
    `ngram` (DSIR-style hashed n-grams) or `classifier` (logistic regression on the embeddings);
    the last three draw without replacement (Gumbel top-k)."""
    scheme: str = "match"
    """`match`, `crisp` or `topk` (see the module docstring)."""
    weighting: str = "ratio"
    """`ratio` (p_target / p_generic), `uniform`, or `package.module:function`."""
    smoothing: float = 0.0
    """Laplace pseudo-documents added to every target cluster. 0 by default: on the bundled corpus
    any smoothing spread selection over off-target clusters (BENCHMARKS.md, smoothing sweep)."""
    temperature: float = 1.0
    """Exponent on the density ratio: < 1 flattens toward uniform."""
    cap: float | None = None
    """Largest cluster weight, as a multiple (>= 1) of the mean weight of a generic document, the mean of
    the capped weights (`weighting.capped`)."""
    backoff: float = 0.0
    """Hierarchy: pseudo-documents pulling a sparse leaf's target share toward its parent's."""
    max_repeat: int | None = None
    """`match`: most times one document may be drawn; what a cluster cannot hold spills to the clusters
    nearest to it by centroid that the weighting does not exclude (`impsamp.resampling.within`). A
    `within` other than `uniform` caps at `WITHIN_MAX_REPEAT` (4) when this is not given, raised to the
    fewest repeats that hold the budget where 4 cannot (with a warning; the cap used is in the stats)."""
    within: str = "auto"
    """`match`: how documents are drawn inside a cluster's quota: `uniform` (the seed paper), `knn`
    (weighted by closeness to the nearest target document), `knn+ngram` (that closeness and the hashed
    n-gram log-ratio of the document, standardised and summed), `ngram-classifier` (the cross-fitted
    log-odds of a logistic regression on hashed n-grams, target against pool), `package.module:function`
    (your document weights; `impsamp.resampling.within`), or `auto` (`resolved`): for `importance` with
    `match`, ngram-classifier when every target is an in-domain corpus, knn when one is given as its
    `embed` output (vectors, no text), uniform when one is a saved histogram; uniform for the other
    methods and schemes. On the paper table ngram-classifier measured lower macro perplexity than knn at
    40,000 and 200,000 tokens, and knn lower than uniform (BENCHMARKS.md `paper`)."""
    within_temperature: float = 0.05
    """tau of the weights inside the clusters: `ngram-classifier` w = exp(z(log-odds) / (2 tau)); `knn`
    w = exp((cosine to the nearest target document - 1) / tau); `knn+ngram` w = exp((z(cosine) + z(n-gram
    log-ratio)) / (5 tau))."""
    within_repeats: str = "even"
    """`--within` other than uniform: `even` (no document repeated past the fewest repeats that hold its
    cluster's quota: the weights choose which documents) or `weighted` (the weights alone decide how
    often, up to the cap)."""
    within_top: float | None = None
    """`match` with a weighted `--within`: only the pool's units of highest `--within` weight, over the clusters
    the target weighs, holding F / R x the budget may be drawn, each up to R = `max_repeat` times (default 1,
    raised with a warning where the clusters the target weighs hold less than the budget);
    a cluster's quota past what its eligible units hold spills to the nearest clusters by centroid, so the
    quotas bend toward where the target-like units are. None: any unit of a cluster may be drawn, up to the
    repeat cap. Measured (BENCHMARKS.md `paper`, 0.7.2): F = 1.25 at 40,000 tokens, and with `max_repeat` 2 at
    200,000, where the target domain holds less text than the budget: -0.9% and -1.1% macro perplexity."""
    seed: int = 0
    """Seed of every random draw: the same inputs and seed give the same selection, byte for byte."""
    format: str = "arrow"
    """`arrow` (datasets.save_to_disk layout), `parquet` or `jsonl`."""
    rows_per_shard: int = 100_000
    """Rows per output shard."""
    text_field: str = "text"
    """Text field of target corpora."""
    id_field: str | None = None
    """Id field of target corpora (None: `id` if present, else FILE:ROW)."""

    def refuse_ratio_shaping(self, why: str) -> None:
        """One line naming the `RATIO_SHAPING` settings given where the built-in ratio does not run (`why`)."""
        if shaping := flags_set(self, RATIO_SHAPING):
            raise ConfigError(f"{', '.join(shaping)} shape(s) the built-in --weighting ratio; {why}: leave them out")

    def __post_init__(self) -> None:
        check_fields(self)
        if sum(v is not None for v in (self.tokens, self.docs, self.bytes)) != 1:
            raise ConfigError("give exactly one budget: --tokens N, --bytes N or --docs N")
        if self.budget_tokenizer is not None and self.tokens is None:
            raise ConfigError("--budget-tokenizer counts a --tokens budget; give --tokens N with it")
        for name in ("tokens", "docs", "bytes", "rows_per_shard", "max_repeat"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        for name in ("smoothing", "backoff"):
            positive(name, getattr(self, name), flag="--" + name, allow_zero=True)
        for name in ("temperature", "cap", "within_temperature"):
            positive(name, getattr(self, name), flag="--" + name.replace("_", "-"))
        if not self.within_temperature >= 1e-6:  # sharper only overflows: at 1e-6 the top unit already takes all
            raise ConfigError(f"--within-temperature must be at least 1e-6, got {self.within_temperature:g}")
        check_cap(self.cap, "--cap")
        check_seed(self.seed, maximum=None)
        if self.within_top is not None and not self.within_top >= 1:
            raise ConfigError(f"--within-top must be >= 1 (a multiple of the budget), got {self.within_top}")
        if self.within_top is not None and (self.within == "uniform" or self.method != "importance"
                                            or self.scheme != "match"):
            raise ConfigError("--within-top ranks units by their --within weight inside `match`'s quotas; use it with "
                              "the importance method, --scheme match and a --within other than uniform")
        if self.max_repeat is not None and (self.method != "importance" or self.scheme != "match"):
            which = f"--scheme {self.scheme}" if self.method == "importance" else f"--method {self.method}"
            how = "clusters i.i.d., with no cap" if which == "--scheme crisp" else "each unit at most once"
            raise ConfigError(f"--max-repeat caps the repeats of --method importance --scheme match; {which} "
                              f"draws {how}: leave it out")
        if self.method != "importance":  # the other methods rank documents: no cluster weights to shape
            shaping = flags_set(self, ("weighting", *RATIO_SHAPING))
            if shaping:
                raise ConfigError(f"{', '.join(shaping)} shape(s) the cluster weights of --method importance; "
                                  f"--method {self.method} has none: leave them out")
        elif self.weighting != "ratio":  # (uniform, a plug-in)
            self.refuse_ratio_shaping(f"--weighting {self.weighting} does not use them")
        if self.method != "importance" or self.scheme != "match" or self.within == "uniform":
            ignored = flags_set(self, ("within_temperature", "within_repeats"))
            which = (f"--method {self.method}" if self.method != "importance" else
                     f"--scheme {self.scheme}" if self.scheme != "match" else "--within uniform")
            if ignored:
                raise ConfigError(f"{', '.join(ignored)} shape(s) how --within's document weights draw inside "
                                  f"`match`'s cluster quotas; {which} uses no such weights: leave them out")
        if self.method != "importance" and self.scheme == "crisp":
            raise ConfigError(f"--scheme crisp shapes the cluster quotas of --method importance; --method "
                              f"{self.method} ranks documents and draws each at most once: leave --scheme out")
        from ..weighting import WEIGHTINGS

        _check_function_or_name(self.within, WITHIN, "--within")
        _check_function_or_name(self.weighting, tuple(WEIGHTINGS), "--weighting")  # now, not after the target's work
        if self.within not in ("auto", "uniform") and (self.method != "importance" or self.scheme != "match"):
            raise ConfigError(f"--within {self.within} weighs documents inside `match`'s cluster quotas; use it "
                              "with --method importance --scheme match")
        for name, allowed in (("scheme", SCHEMES), ("method", METHODS), ("format", FORMATS),
                              ("within_repeats", WITHIN_REPEATS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")

    def effective(self) -> ResampleConfig:
        """This config as it runs: `uniform`, `ngram` and `classifier` draw without replacement (`topk`)."""
        return self if self.method == "importance" else replace(self, scheme="topk")

    def resolved(self, target_has_vectors: bool, target_has_text: bool = False) -> ResampleConfig:
        """`within = "auto"` made concrete for `importance` with `match`: `ngram-classifier` when every
        target is an in-domain corpus (its text and vectors at hand), `knn` when a target is given as its
        `embed` output (vectors, no text), `uniform` when one is a saved histogram; `uniform` otherwise."""
        if self.within != "auto":
            return self
        if self.method != "importance" or self.scheme != "match" or not target_has_vectors:
            if self.within_top is not None:
                raise ConfigError("--within-top ranks units by their --within weight, and a target given as a saved "
                                  "histogram has none: drop --within-top or give the target's corpus")
            if self.method == "importance" and self.scheme == "match" and flags_set(
                    self, ("within_temperature", "within_repeats")):
                raise ConfigError(f"{', '.join(flags_set(self, ('within_temperature', 'within_repeats')))} shape(s) "
                                  "document weights, and a target given as a saved histogram has none: leave them "
                                  "out or give the target's corpus")
            return replace(self, within="uniform")
        return replace(self, within="ngram-classifier" if target_has_text and installed("sklearn") else "knn")

    @property
    def budget(self) -> tuple[str, int]:
        """(unit, amount): unit is `tokens`, `bytes` or `docs`."""
        return next((u, v) for u, v in (("tokens", self.tokens), ("bytes", self.bytes), ("docs", self.docs))
                    if v is not None)


def _check_function_or_name(value: str, names: tuple[str, ...], flag: str) -> None:
    """A built-in's name or the shape of `package.module:function` (imported later, when the stage runs)."""
    module, sep, attr = value.partition(":")
    if value not in names and not (sep and module and attr):
        raise ConfigError(f"{flag} must be one of {', '.join(names)} or package.module:function, got {value!r}")

"""`compare`'s settings (`CompareConfig`): the methods and models it runs, the LM every dense run trains, and the
planning budgets that choose among them."""

from __future__ import annotations

from dataclasses import dataclass

from .config import check_fields, check_seed, documented, flags_set, positive
from .errors import ConfigError

METHODS = ("uniform", "importance", "importance-uniform", "ngram", "classifier")
"""Selectors; `importance` is `resample`'s default (the cluster histogram matched, documents inside each
cluster's quota weighted by a cross-fitted n-gram classifier's odds: `--within ngram-classifier`),
`importance-uniform` the seed paper's (documents drawn uniformly inside the quotas: `--within uniform`)."""
MODELS = ("dense", "experts", "projected", "soup", "large", "distill")
LM_SETTINGS = ("preset", "steps", "finetune_steps", "dtype", "n_layer", "n_embd", "n_head", "block_size", "batch_size",
               "text_field")
"""`CompareConfig`'s fields that every dense run's `TrainConfig` takes as they are, under the same name."""


K_DEFAULT = 64
"""`compare`'s k-means clusters when neither --k nor --clusters says."""


PLANNING_BUDGETS = ("targets_expected", "inference_budget", "per_target_budget", "pretraining_budget", "total_budget")
"""CompareConfig's fields that choose among the runs and train nothing (`impsamp plan` changes them after)."""


@documented
@dataclass(frozen=True)
class CompareConfig:
    """What `compare` runs; the defaults are sized for a 2-core CPU and the bundled corpus."""

    FLAGS = {"alpha": "distill_alpha", "select": "expert_select"}  # not a field: flags named otherwise than theirs

    methods: tuple[str, ...] = ("uniform", "importance")
    models: tuple[str, ...] = ("dense",)
    """dense: the preset trained on each method's selection; experts: G experts trained on the generic
    corpus at the same generic FLOPs as one dense run, the target's expert picked and fine-tuned;
    projected / soup: one shared network conditioned on a cluster / a histogram, trained on the generic
    corpus for the dense steps, its small model for the target projected and fine-tuned; large: the
    large preset at the same generic FLOPs; distill: the dense model fine-tuned with the large one as
    its teacher (`impsamp.strategies`)."""
    groups: int = 4
    """Experts (with `experts` in models)."""
    basis: int | None = None
    """Basis matrices per layer, h, of the projected network and the soup [default: 16] (the paper's grew with its
    clusters: its main runs used 16, 32 and 64)."""
    large_steps: int | None = None
    """Pretraining steps of the large model [default: the dense model's generic FLOPs]."""
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    targets_expected: int | None = None
    """Planning: targets expected (C(N) is reported at this N)."""
    inference_budget: str | float | None = None
    """Planning: the largest deployed model, in active parameters (5e6, "4.5M params") or FLOPs per token
    ("1e7flops")."""
    per_target_budget: float | None = None
    """Planning: the largest per-target FLOPs."""
    pretraining_budget: float | None = None
    """Planning: the largest generic FLOPs, spent before any target is known."""
    total_budget: float | None = None
    """Planning: the largest C(N) = generic + N x per-target FLOPs for the targets expected (needs them)."""
    expert_select: str = "top"
    """How the target's expert is picked: top, lowest-loss or all."""
    tokens: int = 200_000
    """Selection budget per method, in embedding-model tokens (about the size of one bundled domain)."""
    k: int | None = None
    """Flat k-means clusters: K_DEFAULT (64), or the k of the clusters given (another k is refused)."""
    scheme: str = "match"
    within: str = "auto"
    """`importance`'s `--within`: auto (ngram-classifier for a corpus target), knn, knn+ngram, ngram-classifier,
    uniform, or a function."""
    within_temperature: float = 0.05
    within_repeats: str = "even"
    within_top: float | None = None
    """`importance`'s `--within-temperature`, `--within-repeats` and `--within-top` (`impsamp.resampling.within`)."""
    max_repeat: int | None = None
    """`importance` and `importance-uniform`: most draws of one document (`resample --max-repeat`;
    `importance`'s default 4, 1 with `within_top`)."""
    max_tokens: int = 128
    """Tokens the embedding model reads per document."""
    backend: str = "auto"
    """Embedding backend: torch, onnx (float32), or auto: torch on a GPU or on a CPU with AMX (bfloat16,
    2.6x float32), else ONNX Runtime int8 (~2.4x float32 on CPUs without AMX; 98.8% of the bundled
    pool's documents in the same k=64 cluster as float32, 99.7% at k=1024). A later target is embedded
    the same way, without torch once the ONNX model and tokenizer are cached."""
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    preset: str = "tiny"
    steps: int = 100
    """Pretraining steps (tiny: 4,096 tokens a step, about 0.7 s on 2 CPU cores)."""
    finetune_steps: int = 30
    vocab_size: int = 4096
    n_layer: int | None = None
    """Model shape overrides of the preset (None: the preset's)."""
    n_embd: int | None = None
    n_head: int | None = None
    block_size: int | None = None
    batch_size: int | None = None
    dtype: str = "auto"
    """Every model's autocast dtype (`train --dtype`; auto: bfloat16 on a GPU or a CPU that multiplies
    it in hardware, else float32): fix it to compare figures across machines."""
    seed: int = 0
    train_seed: int | None = None
    """Seed of every LM's initialisation and batches; None: `seed`. Another value trains on the same selections
    again: how far a method's perplexity moves with it is the training's own noise, the yardstick for a
    difference between methods."""
    lm_seeds: int = 1
    """LMs trained on each selection (dense rows), seeds `train_seed` (else `seed`) and the ones after it: the
    report gives the means, their standard errors and each method paired with the first (`impsamp.training_noise`)."""
    text_field: str = "text"

    def __post_init__(self) -> None:
        self._name_lists()
        check_fields(self)
        from .training.config import DTYPES, PRESETS

        check_seed(self.seed)  # it seeds faiss's k-means too: 31 bits
        check_seed(self.train_seed, "--train-seed")
        first = self.seed if self.train_seed is None else self.train_seed
        if self.lm_seeds >= 1:
            check_seed(first + self.lm_seeds - 1, "the last LM seed, --train-seed (else --seed) + --lm-seeds - 1,")
        if self.backend not in ("auto", "torch", "onnx"):
            raise ConfigError(f"backend must be auto, torch or onnx, got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.methods:
            raise ConfigError("--methods: give at least one method")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"--methods: unknown {unknown}; valid: {', '.join(METHODS)}")
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ConfigError(f"--models: unknown {unknown}; valid: {', '.join(MODELS)}")
        within_set = flags_set(self, ("within", "within_temperature", "within_repeats", "within_top"))
        if within_set and "importance" not in self.methods:
            raise ConfigError(f"{', '.join(within_set)} set(s) how `importance` draws inside the clusters; add "
                              "importance to --methods, or leave them out")
        drawn = [f.replace("--scheme", "scheme (the [compare] table of --config)")  # no such flag
                 for f in flags_set(self, ("scheme", "max_repeat"))]
        if drawn and not {"importance", "importance-uniform"} & set(self.methods):
            raise ConfigError(f"{', '.join(drawn)} set(s) how importance sampling draws; add importance (or "
                              "importance-uniform) to --methods, or leave them out")
        self._check_model_flags()
        for m in (*self.methods, "importance"):  # importance's settings are checked even when it does not run
            self.selection_config(m)  # resample's checks of --within, --within-temperature, --max-repeat, ...
        if self.expert_select not in ("top", "lowest-loss", "all"):
            raise ConfigError(f"--select must be top, lowest-loss or all, got {self.expert_select!r}")
        from .planning import LARGE_PRESET

        self._check_budgets()
        if {"large", "distill"} & set(self.models) and self.preset not in LARGE_PRESET:
            raise ConfigError(f"--models large/distill: no large preset for --preset {self.preset} (they run "
                              f"with {' or '.join(LARGE_PRESET)}); drop them or choose one of those presets")
        for name in ("groups", "k"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ConfigError(f"--{name} must be >= 2, got {getattr(self, name)}")
        k = K_DEFAULT if self.k is None else self.k  # (given clusters' k is checked again once it is known)
        if "experts" in self.models and self.groups > k:  # here, not after the other models have trained
            raise ConfigError(f"--groups {self.groups} is more than the {k} clusters the experts split (--k, "
                              f"or those of --clusters); give --groups <= {k}")
        for name in ("tokens", "steps", "finetune_steps", "max_tokens", "lm_seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        positive("large_steps", self.large_steps, flag="--large-steps")  # before the dense runs train
        positive("basis", self.basis, flag="--basis")
        if not 0 <= self.distill_alpha <= 1:  # checked here, not minutes later when `distill` trains
            raise ConfigError(f"--alpha must be in [0, 1], got {self.distill_alpha}")
        positive("distill_temperature", self.distill_temperature)
        if self.preset not in PRESETS:
            raise ConfigError(f"--preset {self.preset!r} is unknown; valid presets: {', '.join(PRESETS)}")
        self._check_lm_shape()

    def _name_lists(self) -> None:
        """`methods` and `models` as tuples of names, each once: a config file's "uniform,importance" reads as the
        flag does, a list stays hashable."""
        for name in ("methods", "models"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(m.strip() for m in value.split(",") if m.strip())
            if isinstance(value, list):
                value = tuple(value)
            object.__setattr__(self, name, value)
            if isinstance(value, tuple) and (twice := sorted({m for m in value if value.count(m) > 1})):
                raise ConfigError(f"--{name}: {', '.join(twice)} given twice; name each once")

    def _check_budgets(self) -> None:
        """The planning budgets, checked before anything runs (they only choose among the runs)."""
        from .planning import Budgets, parse_inference_budget

        Budgets(self.targets_expected, *parse_inference_budget(self.inference_budget), self.per_target_budget,
                self.pretraining_budget, self.total_budget)  # each a one-line error; C(N) needs its N

    def _check_lm_shape(self) -> None:
        """The LM's settings checked now, not after the selections and the tokenizer; compare takes the shape
        from its config file only, so the error names the keys there."""
        from .training import TrainConfig

        try:
            self.train_config()
            TrainConfig(vocab_size=self.vocab_size)  # (the tokenizer compare trains: not a dense run's setting)
        except ConfigError as e:
            msg, shape = str(e), ("n_layer", "n_embd", "n_head", "block_size", "batch_size", "vocab_size")
            for name in shape:
                msg = msg.replace(f"--{name.replace('_', '-')}", name)
            raise ConfigError(f"{msg} (the [compare] table of --config)" if any(n in msg for n in shape) else msg
                              ) from None

    def train_config(self, tokenizer: str | None = None):
        """The one training config every dense run of the compare gets (`TrainConfig`)."""
        from .training import TrainConfig

        return TrainConfig(**{name: getattr(self, name) for name in LM_SETTINGS}, tokenizer=tokenizer,
                           seed=self.seed if self.train_seed is None else self.train_seed)

    def _check_model_flags(self) -> None:
        """A model's settings given without the model did nothing: refused, as `--within` without importance is."""
        for fields, models in ((("groups", "expert_select"), ("experts",)), (("large_steps",), ("large", "distill")),
                               (("basis",), ("projected", "soup")),
                               (("distill_alpha", "distill_temperature"), ("distill",))):
            given = flags_set(self, fields)
            if given and not set(models) & set(self.models):
                flags = [{f"--{v.replace('_', '-')}": f"--{k}" for k, v in self.FLAGS.items()}.get(g, g) for g in given]
                raise ConfigError(f"{', '.join(flags)} set(s) the {' or '.join(models)} model; add it to --models, or "
                                  "leave them out")

    def selection_config(self, method: str):
        """`resample`'s settings for one method's selection (`importance-uniform`: importance with
        `--within uniform`; the other selections stay reusable whatever `importance`'s --within settings)."""
        from .resampling import ResampleConfig

        within = {"importance": {"within": self.within, "within_temperature": self.within_temperature,
                                 "within_repeats": self.within_repeats, "within_top": self.within_top},
                  "importance-uniform": {"within": "uniform"}}.get(method, {})
        importance = method in ("importance", "importance-uniform")
        return ResampleConfig(tokens=self.tokens, method="importance" if importance else method,
                              scheme=self.scheme if importance else "match", seed=self.seed, text_field=self.text_field,
                              max_repeat=self.max_repeat if importance else None, **within)

"""ExpertsConfig: how the generic corpus is split into groups and what each expert trains (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import MAX_SEED_32, check_fields, check_seed, documented, from_dict, positive
from ..errors import ConfigError

SELECT_RULES = ("top", "lowest-loss", "all")


MAX_TOKENS = 10 ** 15
"""The largest experts' budget taken: past it a count is a typo (and overflows the step arithmetic)."""


@documented
@dataclass(frozen=True)
class ExpertsConfig:
    """What `experts()` builds (saved in the manifest; the execution engine is not part of it)."""

    ALTERNATIVES = (("tokens_per_expert", "total_tokens"),)  # not a field: a budget flag replaces the file's

    groups: int | None = None
    """Experts G: the clusters are merged into G groups (k-means on the leaf centroids, weighted by
    their documents) unless the clustering has exactly G leaves [default: 4, or the nodes of `level`]."""
    level: int | None = None
    """Group by the nodes of this level of a hierarchical clustering (0: the top level)."""
    tokens_per_expert: int | None = None
    """Training tokens of every expert."""
    total_tokens: int | None = None
    """Training tokens of all experts together, split in proportion to the groups' tokens (the same
    generic pretraining FLOPs as one dense model trained on that many tokens)."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields of every expert (preset, lr, batch_size, ...); tokens, tokenizer and init are
    set per expert."""
    tokenizer: str | None = None
    """A tokenizer.json every expert shares [default: a BPE trained on the generic corpus]."""
    seed: int = 0
    """Seed of the grouping and of every expert's training."""

    def __post_init__(self) -> None:
        check_fields(self)
        from ..training import TrainConfig

        if not isinstance(self.train, dict):
            raise ConfigError(f"the experts' train settings must be a table of TrainConfig fields, got {self.train!r}")
        positive("groups", self.groups, flag="--groups")
        positive("tokens_per_expert", self.tokens_per_expert, flag="--tokens-per-expert")
        positive("total_tokens", self.total_tokens, flag="--total-tokens")
        for name in ("tokens_per_expert", "total_tokens"):  # 10^15: ~100x the largest LM's pretraining
            if (getattr(self, name) or 0) > MAX_TOKENS:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name):.3g} is over {MAX_TOKENS:.0e} "
                                  "tokens; give a budget in tokens (2e9 is two billion)")
        check_seed(self.seed, maximum=MAX_SEED_32)
        if self.level is not None and self.level < 0:
            raise ConfigError(f"--level must be >= 0, got {self.level}")
        if self.groups is not None and self.groups < 2:
            raise ConfigError(f"--groups must be >= 2 (one group is the dense model), got {self.groups}")
        if self.tokens_per_expert is not None and self.total_tokens is not None:
            raise ConfigError("give --tokens-per-expert or --total-tokens, not both")
        # text_field: each expert reads its group's Parquet parts (text under `text`); the shared tokenizer
        # reads the embedded corpus with the field it was embedded with
        fixed = sorted({"tokens", "steps", "tokenizer", "init", "seed", "text_field"} & set(self.train))
        if fixed:
            raise ConfigError(f"the experts set {', '.join(fixed)} themselves; drop them from the train settings")
        if self.tokenizer and self.train.get("vocab_size") is not None:  # it would size nothing
            raise ConfigError(f"vocab_size sizes the tokenizer the experts train; --tokenizer {self.tokenizer} is "
                              "given instead: drop vocab_size from the train settings")
        if self.train.get("teacher"):  # refused here, before the group data is written
            raise ConfigError("the experts only pretrain, and a teacher guides fine-tuning: drop teacher from the "
                              "train settings (distill a specialized expert with `impsamp distill`)")
        from_dict(TrainConfig, self.train, source="[experts.train]")  # unknown keys and bad values: one line

    def train_config(self, tokens: int | None, tokenizer: str):
        from ..training import TrainConfig

        own = {k: v for k, v in self.train.items() if k != "vocab_size"}  # it sized the shared tokenizer, no more
        return TrainConfig(**own, tokens=tokens, tokenizer=tokenizer, seed=self.seed, pretrain_costs="generic")

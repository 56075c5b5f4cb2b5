"""What a strategy costs, in FLOPs: paid once (generic pretraining) or per target, and at inference.

    c = Costs.of_training(model_config, tokens=409_600, part="generic")
    c.per_target, c.total(n_targets=100)
    (c + other).to_dict()

The seed paper's C(N) = C_generic + N x C_spec: `generic` is spent before any target is known and
shared by all of them (pretraining a dense model or a set of experts on the generic corpus);
`selection`, `pretraining` and `finetuning` are spent for each new target (embedding its sample,
pretraining on its importance-sampled selection, fine-tuning; the FLOPs of a teacher's forward
passes go to `teacher`). Training a model of N parameters on T tokens costs 6 N T plus attention
(`ModelConfig.flops_per_token`); a forward pass costs a third of that. `params_total` is what has to
be stored, `params_active` what runs per token (one expert of a mixture).
"""

from __future__ import annotations

import math

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

PARTS = ("generic", "selection", "pretraining", "finetuning", "teacher")
PER_TARGET = PARTS[1:]


@dataclass(frozen=True)
class Costs:
    generic: float = 0.0
    """FLOPs paid once, before any target (shared by every target)."""
    selection: float = 0.0
    """FLOPs per target to choose its data or its model (embedding the sample, scoring experts)."""
    pretraining: float = 0.0
    """FLOPs per target of pretraining on a selection made for it (importance sampling)."""
    finetuning: float = 0.0
    """FLOPs per target of fine-tuning on its in-domain sample (every candidate counted)."""
    teacher: float = 0.0
    """FLOPs per target of a teacher's forward passes (distillation)."""
    inference_flops_per_token: float = 0.0
    """Forward FLOPs of the deployed model per token at full context."""
    params_total: int = 0
    """Parameters stored (all experts of a mixture)."""
    params_active: int = 0
    """Parameters that run per token (one expert)."""
    paid: dict[str, tuple[str, float]] = field(default_factory=dict)
    """One-time work inside the parts above, by what it made ("embed:<fingerprint>" of an embedding, "select:..."
    of a selection): (part, FLOPs). What runs inherit from each other (an `init` run's costs, a teacher's) holds
    such work once, however many of them paid for it."""

    @property
    def per_target(self) -> float:
        return sum(getattr(self, p) for p in PER_TARGET)

    def total(self, n_targets: int = 1) -> float:
        """C(N) = generic + N x per-target."""
        return self.generic + n_targets * self.per_target

    def __add__(self, other: Costs) -> Costs:
        """Training costs add up (work both paid for, once); the model (inference, parameters) is the right-hand
        side's."""
        twice = self._already_paid(other.paid)
        sums = {p: getattr(self, p) + getattr(other, p) - twice[p] for p in PARTS}
        return replace(other, **sums, paid={**self.paid, **other.paid})

    def _already_paid(self, work: Mapping[str, tuple[str, float]]) -> dict[str, float]:
        """FLOPs per part of the one-time `work` these costs hold already."""
        twice = dict.fromkeys(PARTS, 0.0)
        for key, (part, flops) in work.items():
            if key in self.paid:
                twice[part] += flops
        return twice

    def paying(self, work: Mapping[str, tuple[str, float]]) -> Costs:
        """These costs plus the one-time `work` ({key: (part, FLOPs)}) not already paid for."""
        new = {k: (part, float(flops)) for k, (part, flops) in work.items() if k not in self.paid and flops}
        c = self
        for part, flops in new.values():
            c = c.with_part(part, flops)
        return replace(c, paid={**self.paid, **new})

    def with_teacher(self, teacher: Costs, forward: float) -> Costs:
        """These costs plus a teacher's: its generic FLOPs to `generic`, its per-target FLOPs and its `forward`
        passes over the student's fine-tuning tokens to `teacher`. One-time work both paid for (the teacher
        pretrained on the student's selection, say) is counted once."""
        twice = self._already_paid(teacher.paid)
        per_target = teacher.per_target - sum(twice[p] for p in PER_TARGET)
        return replace(self, generic=self.generic + teacher.generic - twice["generic"],
                       teacher=self.teacher + per_target + forward, paid={**teacher.paid, **self.paid})

    def with_part(self, part: str, flops: float) -> Costs:
        """These costs plus `flops` in `part`."""
        if part not in PARTS:
            raise ValueError(f"unknown cost part {part!r}; valid: {', '.join(PARTS)}")
        return replace(self, **{part: getattr(self, part) + flops})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_target"] = self.per_target
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Costs:
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in (d or {}).items() if k in names}
        if isinstance(kept.get("paid"), dict):
            kept["paid"] = {k: (str(v[0]), float(v[1])) for k, v in kept["paid"].items()}
        return cls(**kept)


def training_flops(model_config: Any, tokens: int) -> float:
    """6 x parameters x tokens plus attention (`ModelConfig.flops_per_token`)."""
    return float(model_config.flops_per_token()) * tokens


def forward_flops(model_config: Any, tokens: int) -> float:
    """A forward pass over `tokens`: a third of training (2N per token plus attention)."""
    return training_flops(model_config, tokens) / 3


def model_costs(model_config: Any, *, experts: int = 1) -> Costs:
    """Inference cost and parameters of one deployed model (of `experts` stored alongside it)."""
    n = model_config.n_params()
    active = model_config.n_active_params() if hasattr(model_config, "n_active_params") else n
    return Costs(inference_flops_per_token=float(model_config.flops_per_token()) / 3,
                 params_total=n * experts, params_active=active)


ENCODERS = {"all-MiniLM-L6-v2": 22_713_216, "all-MiniLM-L12-v2": 33_360_000, "all-mpnet-base-v2": 109_486_464}
"""Parameters of known sentence encoders (by the end of the model's name), for their FLOPs."""


def encoder_params(name: str) -> int:
    """Parameters of a known encoder, 0 for an unknown one (its FLOPs are then not counted)."""
    base = str(name).rstrip("/").split("/")[-1]
    return next((n for key, n in ENCODERS.items() if base.endswith(key) or key in str(name)), 0)


def encoder_flops(params: int, tokens: int) -> float:
    """Embedding `tokens` with a sentence encoder of `params` parameters (2N per token, forward)."""
    return 2.0 * params * tokens


def format_flops(x: float) -> str:
    """1.23e15 -> '1.23 PFLOP'."""
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6),
                        ("kFLOP", 1e3)):
        if abs(x) >= scale * 0.9995:  # (999.7 TFLOP rounds to 1.00 PFLOP, not to 1000 TFLOP)
            return f"{_three_digits(x / scale)} {unit}"
    return f"{x:.3g} FLOP"


def _three_digits(v: float) -> str:
    """Three significant digits, trailing zeros kept: 19.0 beside 9.66 in a column (not 19), 123, 1.20."""
    if not math.isfinite(v) or abs(v) >= 1000 or v == 0:
        return f"{v:.3g}"
    v = float(f"{v:.3g}")  # rounded first: 0.9997 is 1.00, not 1.000
    return f"{v:.{max(0, 2 - math.floor(math.log10(abs(v))))}f}"


def describe(c: Costs) -> list[str]:
    """Lines for `impsamp info`."""
    lines = [f"generic (paid once): {format_flops(c.generic)}",
             f"per target: {format_flops(c.per_target)} (" + ", ".join(
                 f"{p} {format_flops(getattr(c, p))}" for p in PER_TARGET if getattr(c, p)) + ")",
             f"inference: {format_flops(c.inference_flops_per_token)} per token",
             f"parameters: {c.params_total:,} total, {c.params_active:,} active"]
    if not any(getattr(c, p) for p in PER_TARGET):
        lines[1] = "per target: 0"
    return lines

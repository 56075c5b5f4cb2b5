"""`ModelConfig`: the shape of a decoder (what a run's `config.json` records under "model"); no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

CONDITIONS = ("cluster", "histogram")
CODES = ("learned", "onehot")


@dataclass(frozen=True)
class Projection:
    """How a projected network (`--arch projected`) makes each layer's MLP weights from a condition:
    W[l] = sum over r of alpha[l, r] T[l, r] (h basis matrices T), alpha[l] = code @ M[l] (M[l]: m x h)."""

    n_codes: int
    """Clusters (groups of clusters) the network is conditioned on."""
    n_basis: int
    """h: basis matrices per layer and MLP weight."""
    code_dim: int
    """m: size of a cluster's code."""
    condition: str = "cluster"
    """cluster: one cluster's learned code (the seed paper's projected network); histogram: a small
    network of a whole histogram over the clusters (a soup of experts)."""
    codes: str = "learned"
    """learned, or onehot: the code is the one-hot cluster (or the histogram itself) and M the identity
    (h = m = n_codes): each cluster owns one basis, the paper's mixture of experts as a special case."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder (what `config.json` of a run records under "model")."""

    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    mlp_hidden: int
    """Hidden size of the gated (SwiGLU) MLP: down(silu(gate(x)) * up(x))."""
    block_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    projection: Projection | None = None
    """Set for the projected family only (see `Projection`); the projected small model has no projection."""

    def __post_init__(self) -> None:
        if isinstance(self.projection, dict):  # read back from config.json
            object.__setattr__(self, "projection", Projection(**self.projection))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def dense(self) -> ModelConfig:
        """The plain decoder of this shape (what a projected network yields for one condition)."""
        return replace(self, projection=None)

    def n_params(self) -> int:
        """Parameters stored, counting the tied embedding once (a projected network's bank included)."""
        d, h = self.n_embd, self.mlp_hidden
        dense = self.vocab_size * d + self.n_layer * (4 * d * d + 3 * d * h + 2 * d) + d
        p = self.projection
        if p is None:
            return dense
        bank = self.n_layer * (p.n_basis - 1) * 3 * d * h
        if p.codes == "onehot":
            return dense + bank
        coder = p.n_codes * p.code_dim if p.condition == "cluster" else p.n_codes * p.code_dim + p.code_dim ** 2
        coder += p.code_dim  # the code every condition starts from
        return dense + bank + self.n_layer * p.code_dim * p.n_basis + coder

    def n_active_params(self) -> int:
        """Parameters of the model that serves one target (the dense model of this shape)."""
        return self.dense().n_params()

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 * params + 12 * n_layer * n_embd * block_size.

        6N counts forward (2N) and backward (4N) of every matmul, the tied lm head included (the
        embedding lookup is counted too, a ~1/(1+L*12d/V) overstatement kept for comparability with
        nanoGPT/PaLM); 12 * L * d * T is attention's QK^T and AV over the full T x T matrix
        (PaLM appendix B), as fused causal kernels are reported.
        A projected network is counted at its active size: each micro-batch makes its MLP weights once
        (h x the MLP's parameters, under 0.5% of a `tiny` micro-batch's FLOPs at h = 16) and then runs
        as the dense model does.
        """
        return 6 * self.n_active_params() + 12 * self.n_layer * self.n_embd * self.block_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["projection"] is None:  # a dense config.json stays as it was
            del d["projection"]
        return d

"""`ModelConfig`: the shape of a decoder (what a run's `config.json` records under "model"); no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def n_params(self) -> int:
        """Parameters, counting the tied embedding once."""
        d, h = self.n_embd, self.mlp_hidden
        return self.vocab_size * d + self.n_layer * (4 * d * d + 3 * d * h + 2 * d) + d

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 * params + 12 * n_layer * n_embd * block_size.

        6N counts forward (2N) and backward (4N) of every matmul, the tied lm head included (the
        embedding lookup is counted too, a ~1/(1+L*12d/V) overstatement kept for comparability with
        nanoGPT/PaLM); 12 * L * d * T is attention's QK^T and AV over the full T x T matrix
        (PaLM appendix B), as fused causal kernels are reported.
        """
        return 6 * self.n_params() + 12 * self.n_layer * self.n_embd * self.block_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

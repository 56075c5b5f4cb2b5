"""The projected network (the seed paper's SLM-pn) and its histogram-conditioned successor, a soup of experts.

One shared network; for a condition c (a cluster, or a histogram over the clusters) each layer's MLP is

    W[l](c) = sum over r of alpha[l, r](c) * T[l, r] / sqrt(h)       alpha[l](c) = code(c) @ M[l]

with T[l] a bank of h basis matrices (most of the parameters), M[l] an m x h matrix and code(c) an
m-dim vector: a shared base plus a learned part per cluster (condition "cluster") or a small network
of the histogram (condition "histogram"). Attention, embeddings and norms are shared. The 1/sqrt(h)
and the shared base are training choices (the paper's form is the same function): they keep AdamW's
step on W at a dense model's, and start the network as one dense model whose clusters move apart
(on the bundled corpus both matter: without them it trained well below the dense model). `project(c)` computes the W once
and returns a plain `GPT` of the same shape: the small model that serves the target.

    model = ProjectedGPT(cfg)                 # cfg.projection = Projection(n_codes=16, n_basis=8, code_dim=8)
    loss = model(x, y, cond=3)                # a micro-batch of cluster 3
    loss = model(x, y, cond=hist)             # condition "histogram": hist a (n_codes,) array
    small = model.project(3)                  # GPT with the same logits as model(x, cond=3)

Lazy updates. Codes and basis matrices are one parameter each (a `ParameterList`), and a forward
touches only those it needs: cluster i's code, and with one-hot codes only the bases with a
non-zero coefficient. The others get no gradient (`grad is None`), so AdamW leaves them, their
moments and their weight decay alone: a step changes only its batch's code, and with one-hot
codes each cluster's MLP trains as an independent expert's would.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import GPT, Attention, RMSNorm, rope_cache
from .shape import ModelConfig, Projection

Condition = int | np.ndarray | list[float]
CODE_SPREAD = 0.02
"""Init std of each condition's own part of its code (code_base is N(0, 1)): measured on the bundled
corpus, 0 to 0.1 train alike, 0.5 worse."""
"""A cluster (int), or a histogram over the clusters (weights >= 0, normalised here)."""


class ProjectedMLP(nn.Module):
    """A SwiGLU MLP whose weights are combinations of a bank of basis matrices."""

    def __init__(self, cfg: ModelConfig, p: Projection):
        super().__init__()
        d, hid = cfg.n_embd, cfg.mlp_hidden
        self.hidden = hid
        self.gate_up_basis = nn.ParameterList(nn.Parameter(torch.empty(2 * hid, d)) for _ in range(p.n_basis))
        self.down_basis = nn.ParameterList(nn.Parameter(torch.empty(d, hid)) for _ in range(p.n_basis))
        self.mix = nn.Parameter(torch.empty(p.code_dim, p.n_basis)) if p.codes == "learned" else None
        # W = sum_r alpha_r T_r / sqrt(h): AdamW moves every T_r by about lr, so W moves by about
        # lr x sum|alpha_r| / sqrt(h) ~ 0.8 lr, as a dense MLP's weight does (without the 1/sqrt(h), h = 16
        # makes it ~3.2 lr and training unstable); the bank is initialised sqrt(h) wider to match.
        self.scale = 1 / math.sqrt(p.n_basis) if p.codes == "learned" else 1.0

    def weights(self, code: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate_up, down) for a learned code (m,) tensor, or one-hot coefficients (h,) on the host."""
        if isinstance(code, torch.Tensor):
            alpha = (code @ self.mix) * self.scale
            gu = torch.einsum("r,roi->oi", alpha.to(self.gate_up_basis[0].dtype), torch.stack(tuple(self.gate_up_basis)))
            dn = torch.einsum("r,roi->oi", alpha.to(self.down_basis[0].dtype), torch.stack(tuple(self.down_basis)))
            return gu, dn
        support = [(int(r), float(code[r])) for r in np.flatnonzero(code)]
        if len(support) == 1 and support[0][1] == 1.0:  # one cluster: its own basis, as is
            r = support[0][0]
            return self.gate_up_basis[r], self.down_basis[r]
        gu = sum(w * self.gate_up_basis[r] for r, w in support)
        dn = sum(w * self.down_basis[r] for r, w in support)
        return gu, dn

    def forward(self, x: torch.Tensor, gu: torch.Tensor, dn: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, gu).split(self.hidden, dim=-1)
        return F.linear(F.silu(gate) * up, dn)


class ProjectedBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, p: Projection):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = ProjectedMLP(cfg, p)

    def forward(self, x, cos, sin, gu, dn):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x), gu, dn)


class HistogramCoder(nn.Module):
    """A histogram over the clusters -> an m-dim code: W2 silu(W1 hist) (the soup's small network)."""

    def __init__(self, p: Projection):
        super().__init__()
        self.inp = nn.Linear(p.n_codes, p.code_dim, bias=False)
        self.out = nn.Linear(p.code_dim, p.code_dim, bias=False)

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.inp(hist)))


class ProjectedGPT(nn.Module):
    """The shared network; `forward(idx, targets, cond=...)` as `GPT.forward` for the condition's weights."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        p = cfg.projection
        if p is None:
            raise ValueError("ProjectedGPT needs a ModelConfig with a projection")
        if p.codes == "onehot" and not p.n_basis == p.code_dim == p.n_codes:
            raise ValueError(f"one-hot codes need n_basis = code_dim = n_codes, got {p}")
        self.config, self.projection = cfg, p
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.h = nn.ModuleList(ProjectedBlock(cfg, p) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.codes = (nn.ParameterList(nn.Parameter(torch.empty(p.code_dim)) for _ in range(p.n_codes))
                      if p.codes == "learned" and p.condition == "cluster" else None)
        self.coder = HistogramCoder(p) if p.codes == "learned" and p.condition == "histogram" else None
        # every condition's code is code_base + its own part, which starts small: the network starts as
        # one dense model and its clusters move apart as they train (random codes would start it as
        # n_codes unrelated models, each trained on 1/n_codes of the steps)
        self.code_base = nn.Parameter(torch.empty(p.code_dim)) if p.codes == "learned" else None
        cos, sin = rope_cache(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The dense init for shared weights (N(0, 0.02), residual outputs scaled); codes N(0, 1) and M
        N(0, 1/(m h)), so that at init sum(alpha^2) ~ 1, and the bank sqrt(h) x the dense std (one-hot
        codes: the dense std), so that W starts at the dense scale."""
        p, std = self.projection, 0.02
        bank = math.sqrt(p.n_basis) if p.codes == "learned" else 1.0
        for name, w in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                nn.init.ones_(w)
            elif ".mlp.mix" in name:
                nn.init.normal_(w, std=1 / math.sqrt(p.code_dim * p.n_basis))
            elif name == "code_base":
                nn.init.normal_(w, std=1.0)
            elif name.startswith("codes."):
                nn.init.normal_(w, std=CODE_SPREAD)
            elif name.startswith("coder."):
                nn.init.normal_(w, std=1.0 if name.startswith("coder.inp") else CODE_SPREAD / math.sqrt(p.code_dim))
            elif ".down_basis." in name:
                nn.init.normal_(w, std=bank * std / math.sqrt(2 * self.config.n_layer))
            elif ".gate_up_basis." in name:
                nn.init.normal_(w, std=bank * std)
            elif name.endswith("attn.proj.weight"):
                nn.init.normal_(w, std=std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(w, std=std)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW: decay on the shared matrices and the basis bank, none on norms and the conditioning
        (codes, M, the histogram network: few parameters that say which combination to use)."""
        cond = [w for n, w in self.named_parameters() if n.startswith(("codes.", "coder.", "code_base"))
                or ".mlp.mix" in n]
        ids = {id(w) for w in cond}
        rest = [w for w in self.parameters() if id(w) not in ids]
        return [{"params": [w for w in rest if w.dim() >= 2], "weight_decay": weight_decay},
                {"params": [w for w in rest if w.dim() < 2] + cond, "weight_decay": 0.0}]

    # ---- the condition -> per-layer MLP weights

    def histogram(self, cond: Condition) -> np.ndarray:
        """A condition as a normalised (n_codes,) float64 histogram (a cluster is one-hot)."""
        k = self.projection.n_codes
        if isinstance(cond, (int, np.integer)):
            if not 0 <= int(cond) < k:
                raise ValueError(f"cluster {int(cond)} is out of range: the network has {k} clusters")
            h = np.zeros(k)
            h[int(cond)] = 1.0
            return h
        h = np.asarray(cond, dtype=np.float64).reshape(-1)
        if h.shape != (k,) or not np.isfinite(h).all() or (h < 0).any() or h.sum() <= 0:
            raise ValueError(f"a histogram over the network's {k} clusters must be {k} weights >= 0, not all 0")
        return h / h.sum()

    def code(self, cond: Condition) -> torch.Tensor | np.ndarray:
        """What `ProjectedMLP.weights` takes: a learned (m,) code, or one-hot coefficients on the host."""
        p = self.projection
        if p.condition == "cluster" and not isinstance(cond, (int, np.integer)):
            raise ValueError("this network is conditioned on one cluster: pass its number")
        hist = self.histogram(cond)
        if p.codes == "onehot":
            return hist
        if p.condition == "cluster":
            return self.code_base + self.codes[int(cond)]
        device = self.wte.weight.device
        return self.code_base + self.coder(torch.as_tensor(hist, dtype=torch.float32, device=device))

    # Host-side control flow on the condition stays out of torch.compile: the rest of the model is one
    # graph for every condition (no recompilation per cluster).
    @torch.compiler.disable
    def layer_weights(self, cond: Condition) -> list[tuple[torch.Tensor, torch.Tensor]]:
        code = self.code(cond)
        return [block.mlp.weights(code) for block in self.h]

    # ---- the model

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean",
                cond: Condition | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError("a projected network needs a condition (cond=cluster or histogram); "
                             "`impsamp project` makes the small model of one")
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.config.block_size}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.wte(idx)
        for block, (gu, dn) in zip(self.h, self.layer_weights(cond), strict=True):
            x = block(x, cos, sin, gu, dn)
        logits = F.linear(self.norm_f(x), self.wte.weight)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss if reduction != "none" else loss.view(targets.shape)

    @torch.no_grad()
    def project(self, cond: Condition) -> GPT:
        """The plain small model for `cond`: shared weights copied, each MLP computed once."""
        small = GPT(self.config.dense()).to(self.wte.weight.device)
        state = {k: v for k, v in self.state_dict().items() if k in small.state_dict()}
        for i, (gu, dn) in enumerate(self.layer_weights(cond)):
            state[f"h.{i}.mlp.gate_up.weight"] = gu.detach().clone()
            state[f"h.{i}.mlp.down.weight"] = dn.detach().clone()
        small.load_state_dict(state, strict=True)
        return small


class Bound(nn.Module):
    """A projected network fixed to one condition, callable like a dense model (for the loss helpers)."""

    def __init__(self, model: ProjectedGPT, cond: Condition):
        super().__init__()
        self.model, self.cond = model, cond
        self.config = model.config

    def forward(self, idx, targets=None, reduction="mean"):
        return self.model(idx, targets, reduction, cond=self.cond)

"""TrainConfig, the model presets and ModelConfig (no torch import: the CLI and `compare` use these).

    cfg = TrainConfig(preset="tiny", steps=300, seed=0)
    cfg.model_config(vocab_size=4096)   # -> ModelConfig(n_layer=4, n_embd=256, ...)

Presets (Llama architecture: RMSNorm, RoPE, SwiGLU, no biases, tied embeddings). The paper's
models use a GELU MLP of 4x the width; here its MLP size is the hidden size of the gated MLP, so
`slm-126m` has ~150M and `llm-771m` ~980M parameters with a 32k vocabulary (3 matrices per MLP
instead of 2). Every field can be overridden (`n_layer`, `n_embd`, `n_head`, `mlp_hidden`,
`block_size`, `vocab_size`, `batch_size`, `lr`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config import MAX_SEED_32, check_fields, check_seed, documented, flags_set, positive
from ..errors import ConfigError, ImpsampError
from .shape import ModelConfig

PRESETS: dict[str, dict[str, Any]] = {
    # ~4.5M parameters; a few hundred steps of 16 x 256 tokens in minutes on 2 CPU cores.
    "tiny": dict(n_layer=4, n_embd=256, n_head=4, mlp_hidden=768, block_size=256, vocab_size=4096,
                 batch_size=16, lr=1e-3),
    # ~2.2M parameters, ~2.2x `tiny`'s tokens/s on 2 CPU cores: `impsamp demo`'s model, sized to finish
    # the demo in minutes on CPUs without AMX while the selections' difference stays plain.
    "mini": dict(n_layer=3, n_embd=192, n_head=4, mlp_hidden=576, block_size=256, vocab_size=4096,
                 batch_size=16, lr=1e-3),
    # The paper's SLM (7 layers, width 1024, 8 heads, MLP 4096, context 1024, 32k vocabulary).
    "slm-126m": dict(n_layer=7, n_embd=1024, n_head=8, mlp_hidden=4096, block_size=1024, vocab_size=32000,
                     batch_size=32, lr=6e-4),
    # The paper's LLM (7 layers, width 2816, 22 heads, MLP 11264).
    # A CPU-sized large model: about 5x `tiny`'s parameters and inference FLOPs (the paper's LLM is
    # about 6x its SLM), the teacher and the large-model baseline of `compare` on 2 cores.
    "tiny-large": dict(n_layer=6, n_embd=512, n_head=8, mlp_hidden=1536, block_size=256, vocab_size=4096,
                       batch_size=16, lr=6e-4),
    "llm-771m": dict(n_layer=7, n_embd=2816, n_head=22, mlp_hidden=11264, block_size=1024, vocab_size=32000,
                     batch_size=8, lr=2.5e-4),
}
DTYPES = ("auto", "float32", "bfloat16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(name: object) -> None:
    """One line for a device name impsamp does not run on (`--device`)."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ConfigError(f"--device {name!r} is unknown; valid: auto, cpu, cuda, cuda:N, mps")


class TrainError(ImpsampError):
    """Training cannot start or continue: no such device, the model does not fit, a damaged run."""


class TokenizerError(TrainError):
    """A tokenizer file cannot be used, or does not match the run it should resume."""


@documented
@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what `train()` computes (saved in the run's manifest and config.json)."""

    ALTERNATIVES = (("steps", "tokens"),)  # not a field: a budget flag replaces a config file's budget

    preset: str = "tiny"
    """Model size and defaults: one of PRESETS."""
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    mlp_hidden: int | None = None
    block_size: int | None = None
    vocab_size: int | None = None
    """BPE vocabulary to train (the model's is padded to a multiple of 64); ignored with `tokenizer`."""
    arch: str = "dense"
    """Model family (`families.FAMILIES`): `dense` is the Llama-style decoder, `projected` the shared
    network of the seed paper's projected networks and of a soup of experts (`impsamp project`)."""
    clusters: str | None = None
    """`--arch projected`: a `cluster` output; its corpus is the training data, one group per code."""
    level: int | None = None
    """`--arch projected`: condition on the nodes of this level of the tree [default: every leaf]."""
    condition: str = "cluster"
    """`--arch projected`: cluster (one cluster's code per micro-batch: the projected network) or
    histogram (random mixtures of clusters through a small network: a soup of experts)."""
    basis: int | None = None
    """`--arch projected`: h, basis matrices per MLP weight [default 16; the clusters with onehot codes]."""
    code_dim: int | None = None
    """`--arch projected`: m, the size of a code [default 16; the clusters with onehot codes]."""
    codes: str = "learned"
    """`--arch projected`: learned, or onehot (each cluster owns one basis: a mixture of experts)."""
    init: str | None = None
    """A finished run to start from: its weights, tokenizer and model shape (e.g. fine-tune an expert).
    With `init`, pretraining data is optional (fine-tuning only)."""
    teacher: str | None = None
    """A finished run (a larger model, fine-tuned on the target) whose next-token distributions guide
    fine-tuning: the loss is (1 - alpha) x cross-entropy + alpha x T^2 x KL(teacher || student) at
    temperature T. It must share this run's tokenizer."""
    alpha: float = 0.5
    """With `teacher`: the weight of the distillation term (0: plain fine-tuning)."""
    temperature: float = 2.0
    """With `teacher`: the softmax temperature of both distributions in the distillation term."""
    tokenizer: str | None = None
    """A `tokenizer.json` (HF tokenizers) to use instead of training one."""
    tokenizer_sample_docs: int = 50_000
    """Documents (spread evenly over the corpus) the BPE is trained on."""
    text_field: str = "text"
    val_fraction: float = 0.01
    """Share of documents held out for the validation loss (chosen by a hash of their text)."""
    steps: int | None = None
    """Optimizer steps; default: one pass over the training tokens. Exclusive with `tokens`."""
    tokens: int | None = None
    """Token budget, turned into steps of batch_size * block_size * grad_accum * world size."""
    batch_size: int | None = None
    """Sequences per micro-batch per process; a step is batch_size x grad_accum x world size sequences."""
    grad_accum: int = 1
    lr: float | None = None
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_steps: int | None = None
    """Pretraining's linear warm-up; default min(1000, steps // 20)."""
    finetune_warmup_steps: int | None = None
    """Fine-tuning's linear warm-up; default min(1000, finetune steps // 20)."""
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: off). The paper uses 5.0."""
    finetune_steps: int | None = None
    """Fine-tuning steps; default: one pass over the fine-tuning tokens."""
    finetune_lr: float | None = None
    """Fine-tuning peak lr; default lr / 10."""
    early_stopping: int | None = None
    """Fine-tuning stops after this many validations in a row without a lower validation loss on
    the held-out split of the in-domain sample, and keeps the best weights (None: off)."""
    eval_every: int | None = None
    """Fine-tuning steps between those validations [default: finetune steps / 10, at least 1]."""
    finetune_val_fraction: float | None = None
    """Share of the in-domain sample held out for validation [default: 0.1 with early stopping,
    else val_fraction]."""
    pretrain_costs: str = "auto"
    """Whom pretraining FLOPs are charged to: generic (paid once), per-target (a selection made for
    one target), or auto (per-target when every --data is a `resample` selection)."""
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu, cuda, cuda:N, mps."""
    dtype: str = "auto"
    """Autocast dtype: auto = bfloat16 on CUDA and on CPUs that multiply bfloat16 in hardware (AMX:
    Intel Sapphire Rapids and later; AVX512-BF16: AMD Zen 4 and later, Intel Cooper Lake), else float32."""
    compile: bool | None = None
    """torch.compile the model; default on CUDA only."""
    seed: int = 0
    checkpoint_every: int = 250
    """Write a resumable checkpoint every N optimizer steps (and at the end of each phase)."""
    keep_checkpoints: bool = False
    """Keep the last checkpoint (model + optimizer) in the finished run."""
    log_every: int = 10
    eval_batches: int = 8
    """Batches of the held-out split scored for the validation loss at each checkpoint."""

    def __post_init__(self) -> None:
        check_fields(self)
        from .families import get_family

        get_family(self.arch)  # an unknown family is a one-line error
        if self.preset not in PRESETS:
            raise ConfigError(f"--preset {self.preset!r} is unknown; valid presets: {', '.join(PRESETS)}")
        most = {"grad_accum": 2**20, "lr": 1e6, "finetune_lr": 1e6}  # past them torch overflows, or a loop never ends
        for name in ("n_layer", "n_embd", "n_head", "mlp_hidden", "block_size", "steps", "tokens",
                     "batch_size", "grad_accum", "finetune_steps", "checkpoint_every", "log_every",
                     "tokenizer_sample_docs", "eval_batches", "lr", "finetune_lr"):
            positive(name, getattr(self, name), flag="--" + name.replace("_", "-"), most=most.get(name))
        for name in ("weight_decay", "grad_clip", "warmup_steps", "finetune_warmup_steps", "min_lr_ratio"):
            positive(name, getattr(self, name), flag="--" + name.replace("_", "-"), allow_zero=True)
        if self.steps is not None and self.tokens is not None:
            raise ConfigError("give --steps or --tokens, not both")
        if self.vocab_size is not None and self.vocab_size < 260:
            raise ConfigError(f"--vocab-size must be >= 260 (256 bytes + special tokens), "
                              f"got {self.vocab_size}")
        for name in ("val_fraction", "finetune_val_fraction"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 0.5:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 0.5), got {value}")
        positive("early_stopping", self.early_stopping, flag="--early-stopping")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"--alpha must be in [0, 1], got {self.alpha}")
        positive("temperature", self.temperature, flag="--temperature", most=1e6)
        check_seed(self.seed, maximum=MAX_SEED_32)
        self._check_projection()
        positive("eval_every", self.eval_every, flag="--eval-every")
        if self.pretrain_costs not in ("auto", "generic", "per-target"):
            raise ConfigError(f"--pretrain-costs must be auto, generic or per-target, got {self.pretrain_costs!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r} is unknown; valid: {', '.join(DTYPES)}")
        check_device(self.device)
        n_embd, n_head = self.resolved("n_embd"), self.resolved("n_head")
        if n_embd % n_head or (n_embd // n_head) % 2:
            raise ConfigError(f"--n-embd {n_embd} must be a multiple of --n-head {n_head} with an even "
                              "head size (rotary embeddings rotate pairs)")

    def _check_projection(self) -> None:
        from .shape import CODES, CONDITIONS

        if self.arch == "projected" and not (self.clusters or self.init):
            raise ConfigError("--arch projected needs --clusters CLU (a `cluster` output: its corpus is the "
                              "training data and its clusters the conditions)")
        if self.clusters and self.arch != "projected":
            raise ConfigError(f"--clusters conditions a projected network: add --arch projected (--arch is {self.arch!r})")
        if self.condition not in CONDITIONS:
            raise ConfigError(f"--condition must be one of {', '.join(CONDITIONS)}, got {self.condition!r}")
        shaping = flags_set(self, ("condition", "codes", "basis", "code_dim", "level"))
        if shaping and self.arch != "projected":
            raise ConfigError(f"{', '.join(shaping)} shape(s) a projected network: add --arch projected, or leave "
                              "them out")
        if self.codes not in CODES:
            raise ConfigError(f"--codes must be one of {', '.join(CODES)}, got {self.codes!r}")
        positive("basis", self.basis, flag="--basis")
        positive("code_dim", self.code_dim, flag="--code-dim")
        positive("level", self.level, flag="--level", allow_zero=True)

    def projection(self, n_codes: int):
        """The `Projection` of a projected network over `n_codes` groups (None for other families)."""
        from .shape import Projection

        if self.arch != "projected":
            return None
        if self.codes == "onehot":
            for name in ("basis", "code_dim"):
                if getattr(self, name) not in (None, n_codes):
                    raise ConfigError(f"--codes onehot gives each of the {n_codes} clusters one basis: drop "
                                      f"--{name.replace('_', '-')} {getattr(self, name)}")
            return Projection(n_codes, n_codes, n_codes, self.condition, "onehot")
        return Projection(n_codes, self.basis or 16, self.code_dim or 16, self.condition, "learned")

    def resolved(self, name: str) -> Any:
        """A field, or the preset's value when the field is None."""
        value = getattr(self, name)
        return PRESETS[self.preset][name] if value is None else value

    def finetune_val(self) -> float:
        """Share of the in-domain sample held out (see `finetune_val_fraction`)."""
        if self.finetune_val_fraction is not None:
            return self.finetune_val_fraction
        return 0.1 if self.early_stopping else self.val_fraction

    def model_config(self, vocab_size: int, n_codes: int | None = None) -> ModelConfig:
        """The model's shape; a projected network's needs its number of groups (`n_codes`)."""
        return ModelConfig(vocab_size=vocab_size, **{k: self.resolved(k) for k in
                           ("n_layer", "n_embd", "n_head", "mlp_hidden", "block_size")},
                           projection=self.projection(n_codes) if n_codes else None)


def padded_vocab(n: int, multiple: int = 64) -> int:
    """Model vocabulary: the tokenizer's rounded up (a multiple of 64 keeps GPU matmuls fast)."""
    return -(-n // multiple) * multiple

"""Export a run to a Hugging Face `transformers` Llama checkpoint.

    export("runs/lm", "hf/lm")
    AutoModelForCausalLM.from_pretrained("hf/lm")      # same logits as the run's model
    AutoTokenizer.from_pretrained("hf/lm")

Weights map 1:1 (the fused qkv and gate_up matrices are split by rows; the tied lm head is the
embedding, `tie_word_embeddings=True`); the rotary embedding already uses HF's rotate_half layout.
"""

from __future__ import annotations

import inspect
import os
import shutil
from pathlib import Path

import torch

from .._deps import require
from ..errors import StageError
from .config import ModelConfig


def hf_state_dict(state: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename (and split) the trainer's weights into `LlamaForCausalLM` names."""
    d, h = m.n_embd, m.mlp_hidden
    out = {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["norm_f.weight"]}
    for i in range(m.n_layer):
        src, dst = f"h.{i}.", f"model.layers.{i}."
        q, k, v = state[src + "attn.qkv.weight"].split(d, dim=0)
        gate, up = state[src + "mlp.gate_up.weight"].split(h, dim=0)
        out.update({
            dst + "input_layernorm.weight": state[src + "attn_norm.weight"],
            dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.o_proj.weight": state[src + "attn.proj.weight"],
            dst + "post_attention_layernorm.weight": state[src + "mlp_norm.weight"],
            dst + "mlp.gate_proj.weight": gate, dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": state[src + "mlp.down.weight"],
        })
    return {k: v.contiguous() for k, v in out.items()}


def llama_config(m: ModelConfig, eos_id: int):
    transformers = require("transformers")
    kw = dict(vocab_size=m.vocab_size, hidden_size=m.n_embd, intermediate_size=m.mlp_hidden,
              num_hidden_layers=m.n_layer, num_attention_heads=m.n_head, num_key_value_heads=m.n_head,
              max_position_embeddings=m.block_size, rms_norm_eps=m.norm_eps, hidden_act="silu",
              tie_word_embeddings=True, attention_bias=False, mlp_bias=False, bos_token_id=eos_id,
              eos_token_id=eos_id, architectures=["LlamaForCausalLM"])
    if "rope_parameters" in inspect.signature(transformers.LlamaConfig.__init__).parameters:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": m.rope_theta}
    else:  # transformers 4.x
        kw["rope_theta"] = m.rope_theta
    return transformers.LlamaConfig(**kw)


def export(run_dir: str | Path, out_dir: str | Path, *, weights: str = "model.safetensors",
           overwrite: bool = False) -> Path:
    """Write `out_dir` as a `transformers` folder: config.json, model.safetensors, tokenizer files.

    Args:
        run_dir: a complete `impsamp train` output.
        weights: "model.safetensors" (final) or "pretrained.safetensors" (before fine-tuning).
        overwrite: replace an existing `out_dir`.
    """
    from safetensors.torch import load_file, save_file

    from .loop import TrainRun

    transformers = require("transformers")
    run = TrainRun.load(run_dir)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise StageError(f"{out} already exists; pass --overwrite to replace it or choose another folder")
    src = run.path / weights
    if not src.is_file():
        raise StageError(f"{src} does not exist; weights must be model.safetensors or pretrained.safetensors "
                         "(kept only when the run fine-tuned)")
    tok = run.load_tokenizer()
    eos = tok.tokenizer.id_to_token(tok.eos_id)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        llama_config(run.model_config, tok.eos_id).save_pretrained(tmp)
        save_file(hf_state_dict(load_file(str(src)), run.model_config), str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(run.tokenizer_path), eos_token=eos,
                                                    bos_token=eos, unk_token=None, pad_token=eos,
                                                    model_max_length=run.model_config.block_size)
        fast.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

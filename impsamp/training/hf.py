"""The dense family as a Hugging Face `transformers` Llama checkpoint (`export` writes the folder).

    export("runs/lm", "hf/lm")
    AutoModelForCausalLM.from_pretrained("hf/lm")      # same logits as the run's model
    AutoTokenizer.from_pretrained("hf/lm")

Weights map 1:1 (the fused qkv and gate_up matrices are split by rows; the tied lm head is the
embedding, `tie_word_embeddings=True`); the rotary embedding already uses HF's rotate_half layout.
"""

from __future__ import annotations

import inspect

import torch

from .._deps import require
from .shape import ModelConfig


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

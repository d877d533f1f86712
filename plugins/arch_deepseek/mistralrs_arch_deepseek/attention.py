"""DeepSeek's multi-head latent attention (MLA), run in the latent space over a compressed cache.

Each token's keys and values for all H heads come from one latent c (kv_lora_rank features,
after `kv_a_layernorm`) through per-head up-projections W_UK [dn, r] and W_UV [dv, r] (the two
halves of `kv_b_proj`), plus one rotary key k_rope (dr features) that all heads share:

    score_h(t, s) = scale * (q_nope_h(t) . W_UK_h c(s)  +  q_rope_h(t) . k_rope(s))
                  = scale * ((W_UK_h^T q_nope_h(t)) . c(s)  +  q_rope_h(t) . k_rope(s))
    out_h(t)      = sum_s p_h(t, s) W_UV_h c(s)  =  W_UV_h (sum_s p_h(t, s) c(s))

So W_UK is absorbed into the query and W_UV applied after attending: attention itself is
multi-query attention with one kv head whose key is [c, k_rope] (r + dr features) and whose
value is c, the key's first r features. The cache keeps exactly that key per token (the value
cache is a view into it, `Attention(values_in_keys=True)`), instead of H expanded keys and
values; prefill and decode take this same path.
"""
from __future__ import annotations

import torch
from torch import nn

from mistralrs.layers import Attention, Batch, QuantLinear, RMSNorm, RotaryEmbedding
from mistralrs.layers.rotary import yarn_mscale
from mistralrs_arch_deepseek.config import DeepseekConfig

LATENT_NORM_EPS = 1e-6
"""DeepSeek's q_a_layernorm and kv_a_layernorm use the RMSNorm default, not rms_norm_eps."""


def softmax_scale(config: DeepseekConfig) -> float:
    """1/sqrt(qk_head_dim), times YaRN's temperature squared when the rope is scaled and states
    `mscale_all_dim` (DeepSeek's rule)."""
    scale = config.qk_head_dim ** -0.5
    rope = config.rope
    if rope.get("rope_type", "default") != "default" and rope.get("mscale_all_dim"):
        scale *= yarn_mscale(rope["factor"], rope["mscale_all_dim"]) ** 2
    return scale


class MultiHeadLatentAttention(nn.Module):
    """The attention block, with the checkpoint's module names but for `kv_b_proj`, held as its
    two halves in the layouts the absorbed computation uses: `key_up` [H, r, dn] (W_UK
    transposed, as llama.cpp's `attn_k_b`) and `value_up` [H, dv, r] (llama.cpp's `attn_v_b`).
    Rotary features are in rotate-half order (the loader reorders DeepSeek's pairs)."""

    def __init__(self, config: DeepseekConfig, layer_index: int, rotary: RotaryEmbedding):
        super().__init__()
        heads, hidden = config.num_attention_heads, config.hidden_size
        self.num_heads = heads
        self.nope_dim, self.rope_dim = config.qk_nope_head_dim, config.qk_rope_head_dim
        self.latent_dim, self.v_head_dim = config.kv_lora_rank, config.v_head_dim
        q_size = heads * config.qk_head_dim
        self.low_rank_queries = config.q_lora_rank is not None
        if self.low_rank_queries:
            self.q_a_proj = QuantLinear(hidden, config.q_lora_rank, config.attention_bias)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = QuantLinear(config.q_lora_rank, q_size)
        else:
            self.q_proj = QuantLinear(hidden, q_size)
        self.kv_a_proj_with_mqa = QuantLinear(hidden, self.latent_dim + self.rope_dim,
                                              config.attention_bias)
        self.kv_a_layernorm = RMSNorm(self.latent_dim, LATENT_NORM_EPS)
        self.key_up = nn.Parameter(torch.empty(heads, self.latent_dim, self.nope_dim),
                                   requires_grad=False)
        self.value_up = nn.Parameter(torch.empty(heads, self.v_head_dim, self.latent_dim),
                                     requires_grad=False)
        self.o_proj = QuantLinear(heads * self.v_head_dim, hidden, config.attention_bias)
        self.rotary = rotary
        self.attn = Attention(layer_index, heads, 1, self.latent_dim + self.rope_dim,
                              scale=softmax_scale(config), v_head_dim=self.latent_dim,
                              values_in_keys=True)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if self.low_rank_queries:
            return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        return self.q_proj(x)

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        t, heads = x.shape[0], self.num_heads
        q_nope, q_rope = self._queries(x).view(t, heads, -1).split(
            [self.nope_dim, self.rope_dim], dim=-1)
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.latent_dim, self.rope_dim], dim=-1)
        q_rope, k_rope = self.rotary(q_rope, k_rope.unsqueeze(1), batch)
        query = torch.cat([torch.einsum("thn,hrn->thr", q_nope, self.key_up), q_rope], dim=-1)
        key = torch.cat([self.kv_a_layernorm(latent).unsqueeze(1), k_rope], dim=-1)
        latent_out = self.attn(query, key, key[..., :self.latent_dim], batch).view(t, heads, -1)
        out = torch.einsum("thr,hvr->thv", latent_out, self.value_up)
        return self.o_proj(out.reshape(t, heads * self.v_head_dim))

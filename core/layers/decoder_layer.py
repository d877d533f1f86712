"""`PreNormDecoderLayer`: the decoder layer of Llama, Mistral, Qwen, Starcoder2 and Gemma 1."""
from __future__ import annotations

import torch
from torch import nn

from mistralrs.layers.batch import Batch


class PreNormDecoderLayer(nn.Module):
    """x + self_attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x)).

    The families differ only in the blocks they pass in (RMSNorm or LayerNorm, gated or plain
    MLP, attention options); the Hugging Face module names are the same in all of them."""

    def __init__(self, input_layernorm: nn.Module, self_attn: nn.Module,
                 post_attention_layernorm: nn.Module, mlp: nn.Module):
        super().__init__()
        self.input_layernorm = input_layernorm
        self.self_attn = self_attn
        self.post_attention_layernorm = post_attention_layernorm
        self.mlp = mlp

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), batch)
        return x + self.mlp(self.post_attention_layernorm(x))

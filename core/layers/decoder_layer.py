"""`PreNormDecoderLayer`: the decoder layer of Llama, Mistral, Qwen, Starcoder2 and Gemma 1."""
from __future__ import annotations

import inspect

import torch
from torch import nn

from mistralrs.layers.batch import Batch


class PreNormDecoderLayer(nn.Module):
    """x + self_attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x)).

    The families differ only in the blocks they pass in (RMSNorm or LayerNorm, gated or plain
    MLP, attention options); the Hugging Face module names are the same in all of them. A block
    whose forward takes `residual=` (the core's SelfAttention, GatedMLP, MLP) gets the residual
    to add its output to, so that the CPU kernels fold the add into the block's last matmul."""

    def __init__(self, input_layernorm: nn.Module, self_attn: nn.Module,
                 post_attention_layernorm: nn.Module, mlp: nn.Module):
        super().__init__()
        self.input_layernorm = input_layernorm
        self.self_attn = self_attn
        self.post_attention_layernorm = post_attention_layernorm
        self.mlp = mlp
        self._attn_adds = _takes_residual(self_attn)
        self._mlp_adds = _takes_residual(mlp)

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        """May overwrite x (the residual stream, which the decoder hands from layer to layer):
        the sub-blocks that take `residual=` add their outputs into it."""
        if self._attn_adds:
            x = self.self_attn(self.input_layernorm(x), batch, residual=x)
        else:
            x = x + self.self_attn(self.input_layernorm(x), batch)
        if self._mlp_adds:
            return self.mlp(self.post_attention_layernorm(x), residual=x)
        return x + self.mlp(self.post_attention_layernorm(x))


def _takes_residual(block: nn.Module) -> bool:
    return "residual" in inspect.signature(block.forward).parameters

"""ToyLM: token embedding, one attention block (no rotary, no MLP), untied output head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mistralrs.layers import Attention, CausalLM, Decoder, Embedding, QuantLinear
from mistralrs.plugins import Architecture, MappedTensor, hookimpl


@dataclass
class ToyConfig:
    vocab_size: int
    hidden_size: int
    num_heads: int
    max_position_embeddings: int = 64
    eos_token_ids: tuple[int, ...] = ()


class ToyBlock(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        h = config.hidden_size
        self.qkv = QuantLinear(h, 3 * h)
        self.out = QuantLinear(h, h)
        head_dim = h // config.num_heads
        self.attn = Attention(0, config.num_heads, config.num_heads, head_dim, head_dim ** -0.5)

    def forward(self, x, batch):
        q, k, v = self.qkv(x).view(x.shape[0], 3, self.attn.num_heads, -1).unbind(1)
        return x + self.out(self.attn(q, k, v, batch))


def parse_config(raw, fmt):
    return ToyConfig(raw["vocab_size"], raw["hidden_size"], raw["num_heads"])


def weight_mapper(config, fmt):
    return lambda name: [MappedTensor(name)]


def build_model(config):
    decoder = Decoder(Embedding(config.vocab_size, config.hidden_size), [ToyBlock(config)],
                      nn.Identity())
    return CausalLM(decoder, config.vocab_size, tie_word_embeddings=False)


@hookimpl
def register_architectures(register):
    register(Architecture(name="ToyLM", parse_config=parse_config, weight_mapper=weight_mapper,
                          build_model=build_model, hf_architectures=("ToyForCausalLM",),
                          description="test fixture"))

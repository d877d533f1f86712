"""Building blocks that architecture plugins compose; each runs on the core's kernels."""
from mistralrs.layers.attention import Attention
from mistralrs.layers.batch import Batch
from mistralrs.layers.causal_lm import CausalLM, Decoder
from mistralrs.layers.decoder_layer import PreNormDecoderLayer
from mistralrs.layers.embedding import Embedding
from mistralrs.layers.linear import QuantLinear
from mistralrs.layers.mlp import MLP, GatedMLP, activation
from mistralrs.layers.moe import SparseMoE, expert_slice, softmax_topk, sparsemixer
from mistralrs.layers.norm import LayerNorm, RMSNorm
from mistralrs.layers.rotary import RotaryEmbedding, rope_parameters_from_hf
from mistralrs.layers.self_attention import SelfAttention

__all__ = [
    "Attention",
    "Batch",
    "CausalLM",
    "Decoder",
    "Embedding",
    "GatedMLP",
    "LayerNorm",
    "MLP",
    "PreNormDecoderLayer",
    "QuantLinear",
    "RMSNorm",
    "RotaryEmbedding",
    "SelfAttention",
    "SparseMoE",
    "activation",
    "expert_slice",
    "rope_parameters_from_hf",
    "softmax_topk",
    "sparsemixer",
]

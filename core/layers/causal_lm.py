"""`CausalLM`: the decoder-only skeleton most text architectures share."""
from __future__ import annotations

import torch
from torch import nn

from mistralrs.layers.batch import Batch
from mistralrs.layers.embedding import Embedding
from mistralrs.layers.linear import QuantLinear


class Decoder(nn.Module):
    """Token embedding, a stack of decoder layers and the final norm; module names follow the
    Hugging Face checkpoints (`model.embed_tokens`, `model.layers.N`, `model.norm`)."""

    def __init__(self, embed_tokens: Embedding, layers: list[nn.Module], norm: nn.Module,
                 embed_scale: float | None = None):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.embed_scale = embed_scale

    def forward(self, batch: Batch) -> torch.Tensor:
        hidden = self.embed_tokens(batch.input_ids, self.embed_scale)
        for layer in self.layers:
            hidden = layer(hidden, batch)
        return hidden


class CausalLM(nn.Module):
    """Runs the decoder over a batch and returns logits for `batch.logits_indices` only.

    Each decoder layer is called as `layer(hidden [T, H], batch) -> hidden` with the residual
    added inside. `tie_word_embeddings` makes the output head share the embedding table when a
    checkpoint has no separate output weight. `final_logit_softcap` is Gemma2's soft-capping;
    `lm_head_bias` gives the output head a bias (Phi-2, Phi-3.5-MoE).
    """

    def __init__(self, decoder: Decoder, vocab_size: int, tie_word_embeddings: bool,
                 final_logit_softcap: float | None = None, lm_head_bias: bool = False):
        super().__init__()
        self.model = decoder
        hidden_size = decoder.embed_tokens.embedding_dim
        self.lm_head = QuantLinear(hidden_size, vocab_size, lm_head_bias)
        self.tie_word_embeddings = tie_word_embeddings
        self.final_logit_softcap = final_logit_softcap

    def finish_loading(self) -> None:
        """Called by the loader once every checkpoint tensor is in place."""
        if not self.lm_head.is_loaded and self.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)
            self.model.embed_tokens.repacked = self.lm_head.repacked  # one copy for both

    def forward(self, batch: Batch) -> torch.Tensor:
        hidden = self.model(batch)
        if batch.logits_indices.shape[0] != hidden.shape[0]:  # else every row, in order
            hidden = hidden[batch.logits_indices]
        logits = self.lm_head(self.model.norm(hidden))
        if self.final_logit_softcap is not None:
            logits = torch.tanh(logits / self.final_logit_softcap) * self.final_logit_softcap
        return logits.float()

"""Rotary position embeddings (rotate-half layout) with the Hugging Face scaling variants."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mistralrs.layers.batch import Batch


def rope_parameters_from_hf(config: dict[str, Any], layer_type: str | None = None) -> dict[str, Any]:
    """The rope settings of an HF config, from either generation of keys: transformers 4's
    `rope_theta` + `rope_scaling`, or transformers 5's `rope_parameters` (possibly one dict per
    layer type, e.g. Gemma3's `sliding_attention` / `full_attention`). Returns a dict with
    `rope_theta`, `rope_type` and the scaling fields."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and layer_type is not None and layer_type in params:
        params = params[layer_type]
    if isinstance(params, dict) and "rope_theta" in params:
        merged = dict(params)
    else:
        merged = dict(config.get("rope_scaling") or {})
        merged["rope_theta"] = config.get("rope_theta", 10000.0)
    merged["rope_type"] = merged.get("rope_type", merged.get("type", "default"))
    return merged


class RotaryEmbedding(nn.Module):
    """Rotates the first `rotary_dim` features of each head by position-dependent angles.

    Scaling (`rope_type`): `default`, `linear`, `dynamic` (NTK-aware, grows the base once a
    sequence passes `max_position_embeddings`), `llama3`. One instance is shared by all layers
    that use the same settings; it computes cos/sin once per batch.
    """

    def __init__(self, head_dim: int, rope: dict[str, Any], max_position_embeddings: int,
                 rotary_dim: int | None = None):
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim or head_dim
        self.base = float(rope.get("rope_theta", 10000.0))
        self.rope_type = rope.get("rope_type", "default")
        self.factor = float(rope.get("factor", 1.0))
        self.max_position_embeddings = max_position_embeddings
        if self.rope_type not in ("default", "linear", "dynamic", "llama3"):
            raise NotImplementedError(f"rope scaling {self.rope_type!r} is not supported yet")
        inv_freq = self._inv_freq(self.base)
        if self.rope_type == "linear":
            inv_freq = inv_freq / self.factor
        elif self.rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, rope)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._batch: Batch | None = None
        self._cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None

    def _inv_freq(self, base: float | torch.Tensor) -> torch.Tensor:
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64, device="cpu").float()
        return 1.0 / (base ** (exponents / self.rotary_dim))

    def _token_inv_freq(self, batch: Batch) -> torch.Tensor:
        """[T, rotary_dim/2] for dynamic scaling: each token uses the base for its own
        sequence's length in this step, as Hugging Face does for a single sequence."""
        cu = batch.cu_seqlens_q.long()
        seq_len = batch.positions[cu[1:] - 1] + 1
        seq_len = torch.repeat_interleave(seq_len, cu[1:] - cu[:-1]).float()
        seq_len = seq_len.clamp(min=self.max_position_embeddings)
        dim = self.rotary_dim
        base = self.base * ((self.factor * seq_len / self.max_position_embeddings)
                            - (self.factor - 1)) ** (dim / (dim - 2))
        exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=base.device).float() / dim
        return 1.0 / (base[:, None] ** exponents[None, :])

    def cos_sin(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batch is not batch:
            positions = batch.positions.float()
            if self.rope_type == "dynamic":
                freqs = positions[:, None] * self._token_inv_freq(batch).to(positions.device)
            else:
                freqs = positions[:, None] * self.inv_freq[None, :]
            self._batch, self._cos_sin = batch, (freqs.cos(), freqs.sin())
        return self._cos_sin

    def forward(self, q: torch.Tensor, k: torch.Tensor, batch: Batch):
        """q [T, Hq, D], k [T, Hk, D] -> rotated q, k."""
        cos, sin = self.cos_sin(batch)
        return _rotate(q, cos, sin, self.rotary_dim), _rotate(k, cos, sin, self.rotary_dim)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    x1, x2 = rot.float().chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    rotated = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
    return rotated if rest.shape[-1] == 0 else torch.cat((rotated, rest), dim=-1)


def _llama3_inv_freq(inv_freq: torch.Tensor, rope: dict[str, Any]) -> torch.Tensor:
    factor = rope["factor"]
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_context / high) * ~(wavelen > old_context / low)
    return torch.where(medium, smoothed, scaled)

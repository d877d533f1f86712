"""Rotary position embeddings (rotate-half layout) with the Hugging Face scaling variants."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mistralrs.errors import ModelFormatError
from mistralrs.kernels.cpu import ops as cpu_ops
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
    if "partial_rotary_factor" in config:  # transformers 4 keeps it beside the rope settings
        merged.setdefault("partial_rotary_factor", config["partial_rotary_factor"])
    if merged["rope_type"] in ("longrope", "su"):  # "su": LongRoPE's first name (Phi-3)
        merged["rope_type"] = "longrope"
        # Phi-3 states its pretraining length beside the rope settings; it wins, as in transformers.
        merged["original_max_position_embeddings"] = (
            config.get("original_max_position_embeddings")
            or merged.get("original_max_position_embeddings")
            or config.get("max_position_embeddings"))
    return merged


class RotaryEmbedding(nn.Module):
    """Rotates the first `rotary_dim` features of each head by position-dependent angles.

    Scaling (`rope_type`): `default`, `linear`, `dynamic` (NTK-aware, grows the base once a
    sequence passes `max_position_embeddings`), `llama3`, `yarn` (which also scales cos/sin by its
    `attention_factor`, so q.k by its square), `longrope` (Phi-3: per-frequency `short_factor`s,
    or `long_factor`s once a sequence passes `original_max_position_embeddings`, and cos/sin
    scaled likewise). One instance is shared by all layers that use the same settings; it
    computes cos/sin once per batch.
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
        if self.rope_type not in ("default", "linear", "dynamic", "llama3", "yarn", "longrope"):
            raise NotImplementedError(f"rope scaling {self.rope_type!r} is not supported yet")
        inv_freq = self._inv_freq(self.base)
        self.attention_factor = 1.0
        if self.rope_type == "linear":
            inv_freq = inv_freq / self.factor
        elif self.rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, rope)
        elif self.rope_type == "yarn":
            inv_freq, self.attention_factor = _yarn_inv_freq(inv_freq, rope, self.base,
                                                             max_position_embeddings)
        elif self.rope_type == "longrope":
            self._init_longrope(rope)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._batch: Batch | None = None
        self._cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None

    def _init_longrope(self, rope: dict[str, Any]) -> None:
        """Factors absent from `rope` are parameters for the checkpoint to fill (GGUF files
        carry them as the tensors `rope_factors_short` / `rope_factors_long`)."""
        self.original_max_position_embeddings = rope["original_max_position_embeddings"]
        self.short_factor = _longrope_factors(rope.get("short_factor"), self.rotary_dim // 2)
        self.long_factor = _longrope_factors(rope.get("long_factor"), self.rotary_dim // 2)
        attention_factor = _longrope_attention_factor(rope, self.max_position_embeddings)
        # Phi-3.5-MoE states the cos/sin scale of each set itself.
        self.short_scale = rope.get("short_mscale", attention_factor)
        self.long_scale = rope.get("long_mscale", attention_factor)

    def load_checkpoint_tensor(self, leaf: str, value: torch.Tensor, dtype: torch.dtype) -> None:
        """Checkpoint longrope factors stay float32, whatever the model's dtype."""
        setattr(self, leaf, nn.Parameter(value.float(), requires_grad=False))

    def _inv_freq(self, base: float | torch.Tensor) -> torch.Tensor:
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64, device="cpu").float()
        return 1.0 / (base ** (exponents / self.rotary_dim))

    def _token_inv_freq(self, batch: Batch) -> torch.Tensor:
        """[T, rotary_dim/2] for dynamic scaling: each token uses the base for its own
        sequence's length in this step, as Hugging Face does for a single sequence."""
        seq_len = _token_sequence_lengths(batch).float().clamp(min=self.max_position_embeddings)
        dim = self.rotary_dim
        base = self.base * ((self.factor * seq_len / self.max_position_embeddings)
                            - (self.factor - 1)) ** (dim / (dim - 2))
        exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=base.device).float() / dim
        return 1.0 / (base[:, None] ** exponents[None, :])

    def _longrope_freqs(self, positions: torch.Tensor, batch: Batch):
        """Angles [T, rotary_dim/2] and cos/sin scales [T, 1]. Hugging Face picks the short or
        long set from the sequence's length in the forward call; each token here follows its
        own sequence's length in this step, so cached decode steps switch to the long set at
        the token that crosses the pretraining length."""
        long = (_token_sequence_lengths(batch) > self.original_max_position_embeddings)[:, None]
        exponents = torch.arange(0, self.rotary_dim, 2, device=positions.device).float()
        base_freq = self.base ** (exponents / self.rotary_dim)
        inv_freq = torch.where(long, 1.0 / (self.long_factor * base_freq),
                               1.0 / (self.short_factor * base_freq))
        return positions[:, None] * inv_freq, torch.where(long, self.long_scale, self.short_scale)

    def cos_sin(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, rotary_dim/2] for the batch's positions, computed once per batch."""
        if self._batch is not batch:
            self._batch, self._cos_sin = batch, self._compute_cos_sin(batch)
        return self._cos_sin

    def _compute_cos_sin(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rope_type not in ("dynamic", "longrope") and cpu_ops.usable(self.inv_freq) \
                and batch.positions.is_cpu:
            return cpu_ops.rope_cos_sin(batch.positions, self.inv_freq, self.attention_factor)
        positions = batch.positions.float()
        scale = self.attention_factor
        if self.rope_type == "dynamic":
            freqs = positions[:, None] * self._token_inv_freq(batch).to(positions.device)
        elif self.rope_type == "longrope":
            freqs, scale = self._longrope_freqs(positions, batch)
        else:
            freqs = positions[:, None] * self.inv_freq[None, :]
        cos, sin = freqs.cos(), freqs.sin()
        if self.rope_type == "longrope" or self.attention_factor != 1.0:
            cos, sin = cos * scale, sin * scale
        return cos, sin

    def forward(self, q: torch.Tensor, k: torch.Tensor, batch: Batch,
                may_overwrite: bool = False):
        """q [T, Hq, D], k [T, Hk, D] -> rotated q, k. With `may_overwrite`, a caller that owns
        q and k lets the native CPU kernel rotate them where they are (no new tensors)."""
        cos, sin = self.cos_sin(batch)
        if may_overwrite and cpu_ops.usable(q, k, cos, sin) and cos.is_contiguous() \
                and sin.is_contiguous():
            cpu_ops.rotary_(q, k, cos, sin, self.rotary_dim)
            return q, k
        return _rotate(q, cos, sin, self.rotary_dim), _rotate(k, cos, sin, self.rotary_dim)


def _token_sequence_lengths(batch: Batch) -> torch.Tensor:
    """int64 [T]: for each token, its sequence's length once this step is done."""
    cu = batch.cu_seqlens_q.long()
    seq_len = batch.positions[cu[1:] - 1] + 1
    return torch.repeat_interleave(seq_len, cu[1:] - cu[:-1])


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


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature for a context extended `factor` times: 0.1 * mscale *
    ln(factor) + 1 (1 when not extended)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_inv_freq(inv_freq: torch.Tensor, rope: dict[str, Any], base: float,
                   max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """YaRN (as transformers' `_compute_yarn_parameters`): frequencies that turn fewer than
    `beta_slow` times over the original context are interpolated (divided by `factor`), those
    turning more than `beta_fast` times kept, a linear ramp between. Returns the frequencies and
    the cos/sin scale: `attention_factor`, else mscale / mscale_all_dim's ratio (DeepSeek), else
    the YaRN temperature of `factor`."""
    original = rope.get("original_max_position_embeddings") or max_position_embeddings
    factor = rope.get("factor") or max_position_embeddings / original
    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
        attention_factor = (yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
                            if mscale and mscale_all_dim else yarn_mscale(factor))
    dim = 2 * inv_freq.shape[0]

    def correction_dim(rotations: float) -> float:
        """The feature index whose frequency turns `rotations` times over the original context."""
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(rope.get("beta_fast") or 32), correction_dim(rope.get("beta_slow") or 1)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    features = torch.arange(dim // 2, dtype=torch.float32, device=inv_freq.device)
    interpolated = ((features - low) / (high - low)).clamp(0, 1)
    inv_freq = inv_freq / factor * interpolated + inv_freq * (1 - interpolated)
    return inv_freq, float(attention_factor)


def _longrope_factors(values: list[float] | None, count: int) -> nn.Parameter:
    if values is None:
        return nn.Parameter(torch.empty(count), requires_grad=False)
    if len(values) != count:
        raise ModelFormatError(f"longrope factors must be one per rotated frequency ({count}); "
                               f"the config gives {len(values)}")
    return nn.Parameter(torch.tensor(values, dtype=torch.float32, device="cpu"),
                        requires_grad=False)


def _longrope_attention_factor(rope: dict[str, Any], max_position_embeddings: int) -> float:
    """transformers' default: sqrt(1 + ln(s) / ln(original length)) for a context extended s
    times (`factor`, else max_position_embeddings / original_max_position_embeddings)."""
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    original = rope["original_max_position_embeddings"]
    factor = rope.get("factor") or max_position_embeddings / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))

"""What each row of a batch samples with: its own parameters and its own random number.

Every request in a continuous batch keeps its sampling parameters, so they travel as one tensor
entry per row. The random number a row draws is a hash of the request's seed and of the row's
step in its own stream (for example the number of tokens it has generated), never of the batch:
a request gives the same tokens whichever other requests share its batches, on CPU and on GPU.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9  # 2**32 / golden ratio: the increment that separates consecutive words


@dataclass(frozen=True)
class SamplingTensors:
    """Per-row sampling parameters of a batch of B rows; every field's first dimension is B.

    Disabled values: `temperature` 0 (greedy argmax), `top_k` <= 0 or >= vocab, `top_p` 1,
    `min_p` 0, `presence_penalty` / `frequency_penalty` 0, `repetition_penalty` 1, and
    `bias_ids` -1 (padding of the [B, NB] logit-bias table).
    """

    temperature: torch.Tensor  # float32 [B]
    top_k: torch.Tensor  # int32 [B]
    top_p: torch.Tensor  # float32 [B]
    min_p: torch.Tensor  # float32 [B]
    presence_penalty: torch.Tensor  # float32 [B]
    frequency_penalty: torch.Tensor  # float32 [B]
    repetition_penalty: torch.Tensor  # float32 [B]
    seed: torch.Tensor  # int64 [B]
    step: torch.Tensor  # int64 [B]: the row's position in its own random stream
    bias_ids: torch.Tensor  # int64 [B, NB], -1 padded
    bias_values: torch.Tensor  # float32 [B, NB]

    @classmethod
    def from_rows(
        cls,
        temperature: Sequence[float],
        *,
        top_k: Sequence[int] | None = None,
        top_p: Sequence[float] | None = None,
        min_p: Sequence[float] | None = None,
        presence_penalty: Sequence[float] | None = None,
        frequency_penalty: Sequence[float] | None = None,
        repetition_penalty: Sequence[float] | None = None,
        seed: Sequence[int] | None = None,
        step: Sequence[int] | None = None,
        logit_bias: Sequence[Mapping[int, float] | None] | None = None,
        device: torch.device | str | None = None,
    ) -> SamplingTensors:
        """Build the tensors from one Python value per row; a parameter left out is disabled.

        `seed` and `step` default to 0; seeds are taken modulo 2**64, so any Python int works.
        """
        rows = len(temperature)

        def column(values, default, dtype):
            values = [default] * rows if values is None else list(values)
            if len(values) != rows:
                raise ValueError(f"expected {rows} sampling values per parameter, got {len(values)}")
            return torch.tensor(values, dtype=dtype, device=device)

        tensors = dict(
            temperature=column(temperature, 0.0, torch.float32),
            top_k=column(top_k, 0, torch.int32),
            top_p=column(top_p, 1.0, torch.float32),
            min_p=column(min_p, 0.0, torch.float32),
            presence_penalty=column(presence_penalty, 0.0, torch.float32),
            frequency_penalty=column(frequency_penalty, 0.0, torch.float32),
            repetition_penalty=column(repetition_penalty, 1.0, torch.float32),
            seed=column(None if seed is None else [_wrap_int64(s) for s in seed], 0, torch.int64),
            step=column(step, 0, torch.int64),
        )
        _check_ranges(tensors)
        biases = [None] * rows if logit_bias is None else list(logit_bias)
        if len(biases) != rows:
            raise ValueError(f"expected {rows} logit-bias rows, got {len(biases)}")
        biases = [dict(row or {}) for row in biases]
        width = max((len(row) for row in biases), default=0)
        ids = [list(row) + [-1] * (width - len(row)) for row in biases]
        values = [list(row.values()) + [0.0] * (width - len(row)) for row in biases]
        return cls(
            **tensors,
            bias_ids=torch.tensor(ids, dtype=torch.int64, device=device).reshape(rows, width),
            bias_values=torch.tensor(values, dtype=torch.float32, device=device).reshape(rows, width),
        )

    def to(self, device: torch.device | str) -> SamplingTensors:
        moved = {field.name: getattr(self, field.name).to(device) for field in fields(self)}
        return SamplingTensors(**moved)


def _wrap_int64(value: int) -> int:
    """The int64 with the same low 64 bits as `value` (seeds are bit patterns, not numbers)."""
    return (value + 2**63) % 2**64 - 2**63


def _check_ranges(tensors: dict[str, torch.Tensor]) -> None:
    bounds = {
        "temperature": (0.0, float("inf")),
        "top_p": (0.0, 1.0),
        "min_p": (0.0, 1.0),
        "repetition_penalty": (torch.finfo(torch.float32).tiny, float("inf")),
    }
    for name, (low, high) in bounds.items():
        values = tensors[name]
        if not bool(((values >= low) & (values <= high)).all()):
            raise ValueError(f"{name} must lie in [{low}, {high}], got {values.tolist()}")


def _multiply_mod_2_32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for x in [0, 2**32), in int64 without ever overflowing it.

    The constant is split into 16-bit halves so that each partial product stays below 2**48.
    """
    low = x * (constant & 0xFFFF)
    high = (x * (constant >> 16)) & 0xFFFF
    return (low + (high << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer: a bijection of [0, 2**32) in which every bit avalanches."""
    x = x ^ (x >> 16)
    x = _multiply_mod_2_32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _multiply_mod_2_32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def uniform_for_rows(seed: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """int64 [B] seeds and steps -> float32 [B] in [0, 1), a pure function of each (seed, step).

    A counter-based hash: the four 32-bit words of (seed, step) are absorbed one after the other,
    each through `_mix32`. Integer torch ops only, so CPU and GPU give the same bits; the top 24
    bits of the hash become the float, so every value is exact and below 1.
    """
    words = (seed & _MASK32, (seed >> 32) & _MASK32, step & _MASK32, (step >> 32) & _MASK32)
    state = torch.zeros_like(seed)
    for word in words:
        state = _mix32(((state ^ word) + _GOLDEN32) & _MASK32)
    return (state >> 8).to(torch.float32) * 2.0**-24

"""Putting checkpoint tensors into a model built on the meta device."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from mistralrs.errors import ModelFormatError
from mistralrs.kernels.gguf import dequantize
from mistralrs.kernels.gguf.packed import QuantizedTensor
from mistralrs.plugins import WeightMapper


def load_weights(model: nn.Module, tensors: Iterable[tuple[str, torch.Tensor | QuantizedTensor]],
                 mapper: WeightMapper, dtype: torch.dtype, progress=None) -> None:
    """Map each checkpoint tensor to its parameter and load it; then check nothing is missing.

    Modules with a `load_checkpoint_tensor(leaf, value, dtype)` method (`QuantLinear`,
    `Embedding`) decide themselves how to keep a tensor (packed GGUF blocks stay packed); every
    other parameter becomes a `dtype` tensor."""
    for name, tensor in tensors:
        for mapped in mapper(name):
            value = mapped.transform(tensor) if mapped.transform else tensor
            _set_tensor(model, mapped.param, value, dtype, source=name)
        if progress is not None:
            progress.update(1)
    if hasattr(model, "finish_loading"):
        model.finish_loading()
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ModelFormatError(f"the checkpoint lacks {len(missing)} weights the model needs: {shown}")


def _set_tensor(model: nn.Module, param: str, value, dtype: torch.dtype, source: str) -> None:
    module_path, _, leaf = param.rpartition(".")
    try:
        module = model.get_submodule(module_path)
    except AttributeError:
        raise ModelFormatError(f"checkpoint tensor {source!r} maps to {param!r}, which the model "
                               "does not have; is the architecture right for this checkpoint?") from None
    current = getattr(module, leaf, None)
    if current is not None and tuple(current.shape) != tuple(value.shape):
        raise ModelFormatError(f"checkpoint tensor {source!r} has shape {tuple(value.shape)}, "
                               f"but {param} expects {tuple(current.shape)}")
    if hasattr(module, "load_checkpoint_tensor"):
        module.load_checkpoint_tensor(leaf, value, dtype)
        return
    if isinstance(value, QuantizedTensor):
        value = dequantize(value.packed, value.qtype)
    setattr(module, leaf, nn.Parameter(value.to(dtype), requires_grad=False))

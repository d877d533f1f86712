"""Reading GGUF files with gguf-py, memory-mapped: metadata as plain Python values, tensors as
torch views of the file (float types) or `QuantizedTensor`s that stay packed."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader

from mistralrs.errors import ModelFormatError
from mistralrs.kernels.gguf.packed import QuantizedTensor

_FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16)


@dataclass
class GGUFFile:
    """One or more GGUF files (a split model) read as one: merged metadata and tensors."""

    paths: list[Path]
    readers: list[GGUFReader]
    metadata: dict[str, Any]

    @classmethod
    def open(cls, paths: list[Path]) -> "GGUFFile":
        readers = [_open_reader(p) for p in paths]
        metadata: dict[str, Any] = {}
        for path, reader in zip(paths, readers):
            for key, field in reader.fields.items():
                if key.startswith("GGUF."):
                    continue
                try:
                    metadata.setdefault(key, field.contents())
                except Exception as e:  # gguf-py reports bad values with assorted types
                    raise ModelFormatError(f"{path}: metadata {key!r} cannot be read: {e}") from None
        return cls(list(paths), readers, metadata)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelFormatError(f"{self.paths[0]} has no general.architecture")
        return arch

    def tensor_names(self) -> list[str]:
        return [t.name for reader in self.readers for t in reader.tensors]

    def tensors(self) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
        for reader in self.readers:
            for tensor in reader.tensors:
                yield tensor.name, _to_torch(tensor)


def _open_reader(path: Path) -> GGUFReader:
    if not path.is_file():
        raise ModelFormatError(f"GGUF file {path} does not exist")
    try:
        return GGUFReader(path)
    except Exception as e:  # gguf-py raises ValueError, IndexError, struct errors, ...
        raise ModelFormatError(
            f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); it may be truncated "
            "or corrupt: download it again") from None


def _to_torch(tensor) -> torch.Tensor | QuantizedTensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the memory map is read-only; we never write
        data = torch.from_numpy(tensor.data)
    qtype = GGMLQuantizationType(tensor.tensor_type)
    if qtype in _FLOAT_TYPES:
        return data
    cols = int(tensor.shape[0])  # GGUF lists dimensions innermost first
    return QuantizedTensor(data.view(torch.uint8).reshape(int(np.prod(tensor.shape[1:])), -1),
                           int(qtype), cols)

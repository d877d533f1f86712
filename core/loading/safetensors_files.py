"""Reading Hugging Face safetensors checkpoints, single-file or sharded, memory-mapped."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from mistralrs.errors import ModelFormatError
from mistralrs.loading.config import read_json


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory: the shards an index names, or the single
    `model.safetensors` (or any `*.safetensors`)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelFormatError(f"{index} has no weight_map")
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelFormatError(f"{index} names shards that are missing: {', '.join(missing)}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(f"{model_dir} has no *.safetensors weights (pickled .bin "
                               "checkpoints are not loaded, for safety)")
    return files


def open_checkpoint(files: list[Path]) -> list:
    """Open every file up front, so a truncated or corrupt one fails before any loading."""
    handles = []
    for path in files:
        try:
            handles.append(safe_open(str(path), framework="pt"))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelFormatError(f"{path} is not a readable safetensors file ({e}); it may be "
                                   "truncated or corrupt: download it again") from None
    return handles


def count_tensors(handles: list) -> int:
    return sum(len(h.keys()) for h in handles)


def iter_tensors(handles: list) -> Iterator[tuple[str, torch.Tensor]]:
    for handle in handles:
        for name in handle.keys():
            try:
                yield name, handle.get_tensor(name)
            except (SafetensorError, OSError, ValueError) as e:
                raise ModelFormatError(f"tensor {name!r} cannot be read: {e}") from None

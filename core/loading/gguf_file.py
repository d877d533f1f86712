"""Reading GGUF files, memory-mapped: metadata as plain Python values, tensors as torch views of
the file (plain float and integer types) or `QuantizedTensor`s that stay packed.

A model may come as one file or split in parts (llama.cpp's `gguf-split`, or gguf-py's writer
with `split_max_tensors`/`split_max_size`): each part carries `split.no` (0-based),
`split.count` and `split.tensors.count`, and the first part holds the model's metadata. The
parts, listed in any order, are read as one file; parts that do not make up one whole split
model are an error naming what is missing or mismatched."""
from __future__ import annotations

import mmap
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.constants import Keys

from mistralrs.errors import ModelFormatError
from mistralrs.kernels.gguf import DEQUANTIZERS
from mistralrs.kernels.gguf.packed import QuantizedTensor
from mistralrs.loading.gguf_header import GGUFHeader, TensorInfo, parse_header

# Types that are plain arrays, not blocks: read as torch tensors of their own dtype. (BF16 has
# no numpy dtype; it stays packed and is widened by the dequantizers.)
_PLAIN_DTYPES = {
    GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}
# llama.cpp's names for the parts of a split model: <prefix>-00001-of-00003.gguf
_SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-\d{5}-of-\d{5}\.gguf$")


@dataclass
class GGUFPart:
    """One GGUF file: its header and the memory map its packed tensors are views of (float
    tensors are copied out of it)."""

    path: Path
    buffer: mmap.mmap
    header: GGUFHeader


@dataclass
class GGUFFile:
    """One or more GGUF files (a split model) read as one: merged metadata and tensors."""

    paths: list[Path]
    parts: list[GGUFPart]
    metadata: dict[str, Any]

    @classmethod
    def open(cls, paths: list[Path]) -> "GGUFFile":
        parts = _in_split_order([_open_part(Path(p)) for p in paths])
        _check_tensors(parts)
        metadata: dict[str, Any] = {}
        for part in parts:
            for key, value in part.header.metadata.items():
                metadata.setdefault(key, value)
        return cls([part.path for part in parts], parts, metadata)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelFormatError(f"{self.paths[0]} has no general.architecture")
        return arch

    def release_pages(self) -> None:
        """Drop every page of the files from resident memory (see `release_pages`): once the
        model has its own copies of the weights, the rest is read back only where used."""
        for part in self.parts:
            release_pages(part.buffer, 0, len(part.buffer))

    def tensor_names(self) -> list[str]:
        return [t.name for part in self.parts for t in part.header.tensors]

    def tensors(self) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
        for part in self.parts:
            for info in part.header.tensors:
                yield info.name, _to_torch(part.buffer, info)


def _open_part(path: Path) -> GGUFPart:
    if not path.is_file():
        raise ModelFormatError(f"GGUF file {path} does not exist")
    try:
        with open(path, "rb") as f:
            if not f.seek(0, 2):
                raise ModelFormatError(f"{path} is empty, not a GGUF file")
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ModelFormatError(f"GGUF file {path} cannot be read: {e}") from None
    return GGUFPart(path, buffer, parse_header(buffer, str(path)))


def _check_tensors(parts: list[GGUFPart]) -> None:
    """Tensor types the kernels can load, and no tensor in two parts."""
    owner: dict[str, Path] = {}
    for part in parts:
        for info in part.header.tensors:
            if info.qtype not in _PLAIN_DTYPES and info.qtype not in DEQUANTIZERS:
                raise ModelFormatError(f"{part.path}: tensor {info.name!r} has type "
                                       f"{info.qtype.name}, which mistralrs cannot load")
            if info.name in owner:
                raise ModelFormatError(f"tensor {info.name!r} is in both {owner[info.name]} "
                                       f"and {part.path}; are these parts of one model?")
            owner[info.name] = part.path


def _in_split_order(parts: list[GGUFPart]) -> list[GGUFPart]:
    """The parts ordered by `split.no`, after checking they make up one whole split model.
    Files without split metadata are read as one, in the order given."""
    splits = [part for part in parts if Keys.Split.LLM_KV_SPLIT_COUNT in part.header.metadata]
    if not splits:
        return parts
    if len(splits) < len(parts):
        plain = next(part for part in parts
                     if Keys.Split.LLM_KV_SPLIT_COUNT not in part.header.metadata)
        raise ModelFormatError(f"{plain.path} is a whole GGUF model, but {splits[0].path} is "
                               "one part of a split model; list the parts of one model only")
    count = _split_int(splits[0], Keys.Split.LLM_KV_SPLIT_COUNT)
    by_number: dict[int, GGUFPart] = {}
    for part in parts:
        part_count = _split_int(part, Keys.Split.LLM_KV_SPLIT_COUNT)
        if part_count != count:
            raise ModelFormatError(f"{parts[0].path} is one of {count} parts, but {part.path} "
                                   f"is one of {part_count}: they are not parts of one model")
        number = _split_int(part, Keys.Split.LLM_KV_SPLIT_NO)
        if not 0 <= number < count:
            raise ModelFormatError(f"{part.path} says it is part {number + 1} of {count}")
        if number in by_number:
            raise ModelFormatError(f"{by_number[number].path} and {part.path} are both part "
                                   f"{number + 1} of {count}")
        by_number[number] = part
    missing = [n for n in range(count) if n not in by_number]
    if missing:
        raise ModelFormatError(f"{parts[0].path} is one of {count} parts of a split model, "
                               f"but {_describe_parts(parts[0].path, missing, count)} "
                               "not given; list every part in quantized_filename")
    ordered = [by_number[n] for n in range(count)]
    _check_split_tensor_count(ordered)
    return ordered


def _split_int(part: GGUFPart, key: str) -> int:
    value = part.header.metadata.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelFormatError(f"{part.path} has split metadata, but {key} is "
                               f"{'missing' if value is None else repr(value)}")
    return value


def _check_split_tensor_count(parts: list[GGUFPart]) -> None:
    total = sum(len(part.header.tensors) for part in parts)
    for part in parts:
        claimed = part.header.metadata.get(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
        if claimed is not None and claimed != total:
            raise ModelFormatError(f"{part.path} says the split model has {claimed} tensors, "
                                   f"but its {len(parts)} parts hold {total}; they are not "
                                   "parts of one model")


def _describe_parts(example: Path, numbers: list[int], count: int) -> str:
    """'part 2 (model-00002-of-00003.gguf) is' / 'parts 2, 3 are', for an error message."""
    shown = [str(n + 1) for n in numbers]
    match = _SPLIT_NAME.match(example.name)
    if match:
        shown = [f"{n + 1} ({match['prefix']}-{n + 1:05d}-of-{count:05d}.gguf)" for n in numbers]
    return f"part {shown[0]} is" if len(shown) == 1 else f"parts {', '.join(shown)} are"


def _to_torch(buffer: mmap.mmap, info: TensorInfo) -> torch.Tensor | QuantizedTensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the memory map is read-only; we never write
        if info.qtype in _PLAIN_DTYPES:
            # Copied out of the mapping, whose pages are released after loading: a model
            # keeping a view (a float32 norm) would fault them back in 64 KiB at a time (the
            # kernel's fault-around), 3 MiB of file pages for SmolLM2's 138 KiB of norms.
            values = np.frombuffer(buffer, _PLAIN_DTYPES[info.qtype], info.n_elements, info.offset)
            tensor = torch.from_numpy(values.reshape(info.shape[::-1]).copy())
            release_pages(buffer, info.offset, info.offset + info.nbytes)
            return tensor
        rows = info.n_elements // info.shape[0]  # GGUF lists dimensions innermost first
        packed = np.frombuffer(buffer, np.uint8, info.nbytes, info.offset)
        row_bytes = info.nbytes // rows

        def release_rows(first: int, last: int) -> None:
            release_pages(buffer, info.offset + first * row_bytes, info.offset + last * row_bytes)

        return QuantizedTensor(torch.from_numpy(packed.reshape(rows, -1)), int(info.qtype),
                               info.shape[0], release_rows)


def release_pages(buffer: mmap.mmap, start: int, end: int) -> None:
    """Drop the whole pages of bytes [start, end) of a read-only file mapping from the process's
    resident memory; reading them again faults them back in from the file."""
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = end // mmap.PAGESIZE * mmap.PAGESIZE if end < len(buffer) else len(buffer)
    if last > first:
        buffer.madvise(mmap.MADV_DONTNEED, first, last - first)

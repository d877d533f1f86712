"""Parsing the header of a GGUF file (metadata and tensor table) strictly, from its bytes.

Every count, length, type, shape and offset is checked against the file before it is used, so a
truncated, bit-flipped or hostile file fails with `ModelFormatError` (saying what is wrong and
where) instead of hanging, allocating gigabytes or raising something obscure. The rules are
those of llama.cpp's `gguf_init_from_file`: versions 2 and 3, no empty or repeated keys, no
arrays of arrays, a power-of-two `general.alignment` of type uint32, at most 4 dimensions, rows
made of whole blocks, and tensor data laid out back to back in table order, each tensor
aligned. Stricter than llama.cpp, a tensor needs at least one dimension and no empty one: a
tensor without elements holds nothing a model could use.

gguf-py's `GGUFReader` (the test oracle) trusts the counts it reads, looping over a claimed
array length even past the end of the file, and builds one numpy view per array element, which
also makes it take seconds on a real vocabulary (4 s for SmolLM2's 49k tokens, where this
parser takes 0.1 s).
"""
from __future__ import annotations

import ctypes
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.constants import GGUF_DEFAULT_ALIGNMENT, Keys

from mistralrs.errors import ModelFormatError
from mistralrs.kernels.cpu import native
from mistralrs.loading.string_array import StringArray

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_MAX_DIMS = 4  # GGML_MAX_DIMS

_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, metadata entry count
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ARRAY_HEAD = struct.Struct("<IQ")  # element type, length
_TYPE_AND_OFFSET = struct.Struct("<IQ")
_DIMS = [struct.Struct(f"<{n}Q") for n in range(_MAX_DIMS + 1)]

_SCALARS: dict[int, tuple[struct.Struct, np.dtype]] = {
    vtype: (struct.Struct("<" + code), np.dtype("<" + code))
    for vtype, code in [
        (GGUFValueType.UINT8, "B"), (GGUFValueType.INT8, "b"),
        (GGUFValueType.UINT16, "H"), (GGUFValueType.INT16, "h"),
        (GGUFValueType.UINT32, "I"), (GGUFValueType.INT32, "i"),
        (GGUFValueType.UINT64, "Q"), (GGUFValueType.INT64, "q"),
        (GGUFValueType.FLOAT32, "f"), (GGUFValueType.FLOAT64, "d"),
        (GGUFValueType.BOOL, "?"),
    ]
}
# The fewest bytes a metadata entry can take (key length, a one-byte key, value type, a one-byte
# value) and a tensor table entry (name length, empty name, dimension count, one dimension,
# type, offset): a count that cannot fit in the rest of the file is rejected before anything is
# read.
_MIN_ENTRY_BYTES = 8 + 1 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8
_MIN_STRING_BYTES = 8


@dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # innermost dimension first, as GGUF lists them
    offset: int  # of the first data byte, from the start of the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class _TableEntry(NamedTuple):
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int  # from the start of the data section, as the table states it
    nbytes: int


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # plain Python values: int, float, bool, str, or lists of them
    tensors: list[TensorInfo]


def parse_header(buffer, name: str) -> GGUFHeader:
    """The header of the GGUF file whose bytes are `buffer` (e.g. an mmap); `name` (the path)
    starts every error message."""
    cursor = _Cursor(buffer, name)
    if len(buffer) >= 4 and buffer[:4] != _MAGIC:
        raise cursor.error(f"is not a GGUF file: it starts with {bytes(buffer[:4])!r}, not "
                           f"{_MAGIC!r}")
    _magic, version, n_tensors, n_entries = cursor.unpack(_HEADER, "the GGUF header")
    _check_version(cursor, version)
    cursor.check_count(n_entries, _MIN_ENTRY_BYTES, "metadata entries")
    metadata = _read_metadata(cursor, n_entries)
    alignment = _alignment(cursor, metadata)
    table = _read_tensor_table(cursor, n_tensors)
    data_start = -(-cursor.pos // alignment) * alignment
    tensors = _place_tensors(cursor, table, data_start, alignment)
    # Arrays of numbers were kept as views of the file until everything was checked, so that a
    # corrupt array length is caught before it turns into a huge Python list.
    metadata = {key: value.tolist() if isinstance(value, np.ndarray) else value
                for key, value in metadata.items()}
    return GGUFHeader(version, metadata, tensors)


class _Cursor:
    """Reads little-endian values from `buffer`, never past its end."""

    def __init__(self, buffer, name: str):
        self.buffer = buffer
        self.size = len(buffer)
        self.name = name
        self.pos = 0

    def error(self, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.name} {message}")

    def need(self, nbytes: int, what: str) -> None:
        if nbytes > self.size - self.pos:
            raise self.error(f"is truncated or corrupt: {what} at byte {self.pos} needs "
                             f"{nbytes} bytes, but the file ends at byte {self.size}")

    def check_count(self, count: int, min_bytes: int, what: str) -> None:
        if count * min_bytes > self.size - self.pos:
            raise self.error(f"is truncated or corrupt: it claims {count} {what}, more than the "
                             f"{self.size - self.pos} bytes after byte {self.pos} can hold")

    def unpack(self, layout: struct.Struct, what: str) -> tuple:
        self.need(layout.size, what)
        values = layout.unpack_from(self.buffer, self.pos)
        self.pos += layout.size
        return values

    def string(self, what: str) -> str:
        (length,) = self.unpack(_U64, what)
        self.need(length, what)
        raw = self.buffer[self.pos:self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"is corrupt: {what} is not valid UTF-8") from None


def _check_version(cursor: _Cursor, version: int) -> None:
    if version in _VERSIONS:
        return
    if version and not version & 0xFFFF:
        raise cursor.error(f"is a big-endian GGUF file (version field {version:#x}), which "
                           "this machine cannot use")
    raise cursor.error(f"has GGUF version {version}; only versions "
                       f"{', '.join(map(str, _VERSIONS))} are supported")


def _read_metadata(cursor: _Cursor, count: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for index in range(count):
        key = cursor.string(f"metadata key #{index}")
        if not key:
            raise cursor.error(f"is corrupt: metadata key #{index} is empty")
        if key in metadata:
            raise cursor.error(f"is corrupt: metadata key {key!r} appears twice")
        (vtype,) = cursor.unpack(_U32, f"the type of metadata {key!r}")
        if vtype == GGUFValueType.ARRAY:
            metadata[key] = _read_array(cursor, key)
        else:
            metadata[key] = _read_value(cursor, key, vtype)
        if key == Keys.General.ALIGNMENT and vtype != GGUFValueType.UINT32:
            raise cursor.error(f"is corrupt: {key} must be a uint32, not value type {vtype}")
    return metadata


def _read_value(cursor: _Cursor, key: str, vtype: int) -> Any:
    if vtype == GGUFValueType.STRING:
        return cursor.string(f"metadata {key!r}")
    if vtype not in _SCALARS:
        raise cursor.error(f"is corrupt: metadata {key!r} has unknown value type {vtype}")
    (value,) = cursor.unpack(_SCALARS[vtype][0], f"metadata {key!r}")
    return value


def _read_array(cursor: _Cursor, key: str) -> list | np.ndarray:
    itype, length = cursor.unpack(_ARRAY_HEAD, f"the array header of metadata {key!r}")
    what = f"metadata {key!r} ({length} elements)"
    if itype == GGUFValueType.STRING:
        cursor.check_count(length, _MIN_STRING_BYTES, f"strings in metadata {key!r}")
        return _read_strings(cursor, length, what)
    if itype == GGUFValueType.ARRAY:
        raise cursor.error(f"has an array of arrays in metadata {key!r}, which GGUF readers "
                           "do not support")
    if itype not in _SCALARS:
        raise cursor.error(f"is corrupt: metadata {key!r} is an array of unknown value type "
                           f"{itype}")
    dtype = _SCALARS[itype][1]
    cursor.check_count(length, dtype.itemsize, f"elements in metadata {key!r}")
    values = np.frombuffer(cursor.buffer, dtype, length, cursor.pos)
    cursor.pos += length * dtype.itemsize
    return values


def _read_strings(cursor: _Cursor, count: int, what: str) -> Sequence[str]:
    """`count` strings back to back (a vocabulary: hundreds of thousands of them) in one tight
    pass, by the native kernels where they are built; where anything is wrong, read again with
    `_Cursor.string`'s checks, which raise an error saying what and where."""
    strings = _native_strings(cursor, count)
    if strings is not None:
        return strings
    start, buffer, pos, size = cursor.pos, cursor.buffer, cursor.pos, cursor.size
    length_at = _U64.unpack_from
    pieces = []
    try:
        for _ in range(count):
            (length,) = length_at(buffer, pos)
            end = pos + 8 + length
            if end > size:
                raise ValueError(what)
            pieces.append(buffer[pos + 8:end])
            pos = end
        strings = [piece.decode("utf-8") for piece in pieces]  # UnicodeDecodeError: a ValueError
    except (struct.error, ValueError):
        cursor.pos = start
        return [cursor.string(what) for _ in range(count)]
    cursor.pos = pos
    return strings


def _native_strings(cursor: _Cursor, count: int) -> StringArray | None:
    """The strings copied by `mrs_gguf_strings` into one buffer (~5 ms for SmolLM2's 98k
    strings instead of ~70 ms in the loop above), kept as one `StringArray`; None where the
    kernels are not built here or the strings need the careful path (bad UTF-8, a length past
    the end)."""
    lib = native.library()
    if lib is None or count == 0:
        return None
    address = np.frombuffer(cursor.buffer, np.uint8).ctypes.data
    end = ctypes.c_longlong()
    size = lib.mrs_gguf_strings(address, cursor.pos, cursor.size, count, None, None,
                                ctypes.byref(end))
    if size < 0:
        return None
    data = ctypes.create_string_buffer(size)
    starts = np.empty(count + 1, np.int64)
    lib.mrs_gguf_strings(address, cursor.pos, cursor.size, count, data, starts.ctypes.data,
                         ctypes.byref(end))
    data = data.raw
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    cursor.pos = end.value
    return StringArray(data, starts)


def _alignment(cursor: _Cursor, metadata: dict[str, Any]) -> int:
    alignment = metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    if alignment == 0 or alignment & (alignment - 1):
        raise cursor.error(f"is corrupt: {Keys.General.ALIGNMENT} = {alignment} is not a "
                           "power of two")
    return alignment


def _read_tensor_table(cursor: _Cursor, count: int) -> list[_TableEntry]:
    cursor.check_count(count, _MIN_TENSOR_INFO_BYTES, "tensors")
    table: list[_TableEntry] = []
    names: set[str] = set()
    for index in range(count):
        entry = _read_tensor_info(cursor, index)
        if entry.name in names:
            raise cursor.error(f"is corrupt: tensor {entry.name!r} appears twice")
        names.add(entry.name)
        table.append(entry)
    return table


def _read_tensor_info(cursor: _Cursor, index: int) -> _TableEntry:
    name = cursor.string(f"the name of tensor #{index}")
    what = f"tensor {name!r}"
    (n_dims,) = cursor.unpack(_U32, f"the dimension count of {what}")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise cursor.error(f"is corrupt: {what} has {n_dims} dimensions (1 to {_MAX_DIMS} "
                           "allowed)")
    shape = cursor.unpack(_DIMS[n_dims], f"the shape of {what}")
    raw_type, offset = cursor.unpack(_TYPE_AND_OFFSET, f"the type and offset of {what}")
    try:
        qtype = GGMLQuantizationType(raw_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise cursor.error(f"is corrupt or too new: {what} has unknown tensor type "
                           f"{raw_type}") from None
    if 0 in shape:
        raise cursor.error(f"is corrupt: {what} has shape {list(shape)}, with an empty "
                           "dimension")
    if shape[0] % block:
        raise cursor.error(f"is corrupt: {what} has rows of {shape[0]} elements, not a whole "
                           f"number of {qtype.name} blocks of {block}")
    return _TableEntry(name, qtype, shape, offset, math.prod(shape) // block * type_size)


def _place_tensors(cursor: _Cursor, table: list[_TableEntry], data_start: int,
                   alignment: int) -> list[TensorInfo]:
    """Check each tensor's data lies in the file, right after the previous one (aligned)."""
    tensors = []
    expected = 0
    for name, qtype, shape, offset, nbytes in table:
        start = data_start + offset
        if start + nbytes > cursor.size:
            raise cursor.error(
                f"is truncated or corrupt: tensor {name!r} ({qtype.name}, shape {list(shape)}) "
                f"needs bytes {start} to {start + nbytes}, past the end of the file at byte "
                f"{cursor.size}")
        if offset != expected:
            raise cursor.error(
                f"is corrupt: tensor {name!r} starts at data offset {offset}, but the tensors "
                f"before it end at {expected} (tensors follow each other, aligned to "
                f"{alignment} bytes); its offset, or the type or shape of a tensor before it, "
                "is wrong")
        tensors.append(TensorInfo(name, qtype, shape, start, nbytes))
        expected += -(-nbytes // alignment) * alignment
    return tensors

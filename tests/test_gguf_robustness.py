"""GGUF reading on broken, hostile and split files.

A tiny Llama written by gguf-py (Q8_0 matrices, F32 norms) is mutated a few hundred ways, by a
seeded mutator: truncations, bit flips and byte overwrites of the header, and targeted edits of
the fields gguf-py's own reader locates (counts, lengths, value and tensor types, dimensions,
offsets). Each mutant must either load, and then read exactly as gguf-py reads it, or fail with
`ModelFormatError`: no other exception, no hang, no large allocation.
"""
from __future__ import annotations

import random
import resource
import signal
import struct
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from gguf_writer import write_llama_gguf
from mistralrs import Runner, Which
from mistralrs.default_model import default_model_path
from mistralrs.engine.scoring import score
from mistralrs.errors import ModelFormatError
from mistralrs.kernels import cpu
from mistralrs.kernels.gguf.packed import QuantizedTensor
from mistralrs.loading.gguf_file import GGUFFile
from mistralrs.loading.model_loader import load_gguf
from tiny_models import tiny_llama

U32, U64 = "<I", "<Q"
SECONDS_PER_CASE = 5
ALIGNMENT = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    model = tiny_llama(vocab_size=288, max_position_embeddings=64, tie_word_embeddings=False)
    write_llama_gguf(model, path, GGMLQuantizationType.Q8_0)
    return path


# --- where things are in the valid file, found by gguf-py's reader -----------------------------

@dataclass
class Entry:
    key: str
    type_at: int  # the value type (u32)
    value_at: int  # the value: a string's length (u64), an array's element type (u32)
    types: list[GGUFValueType]


@dataclass
class TensorEntry:
    name: str
    n_dims_at: int
    dims_at: int
    type_at: int
    offset_at: int
    offset: int  # within the data section


@dataclass
class Layout:
    entries: list[Entry]
    tensors: list[TensorEntry]
    data_offset: int

    def entry(self, key: str) -> Entry:
        return next(e for e in self.entries if e.key == key)

    def tensor(self, name: str) -> TensorEntry:
        return next(t for t in self.tensors if t.name == name)


def layout_of(path: Path) -> Layout:
    reader = GGUFReader(path)
    entries = []
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            type_at = field.offset + 8 + len(key.encode())
            entries.append(Entry(key, type_at, type_at + 4, field.types))
    tensors = []
    for tensor in reader.tensors:
        n_dims_at = tensor.field.offset + 8 + len(tensor.name.encode())
        type_at = n_dims_at + 4 + 8 * len(tensor.shape)
        tensors.append(TensorEntry(tensor.name, n_dims_at, n_dims_at + 4, type_at, type_at + 4,
                                   tensor.data_offset - reader.data_offset))
    return Layout(entries, tensors, reader.data_offset)


def put(data: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


# --- the mutants ----------------------------------------------------------------------------------

@dataclass
class Mutant:
    kind: str  # truncation, bit flip, overwrite, count, metadata, tensor table
    label: str
    data: bytes


def mutants(data: bytes, layout: Layout, seed: int = 0) -> list[Mutant]:
    rng = random.Random(seed)
    header = layout.data_offset
    cases: list[Mutant] = []

    def edit(kind: str, label: str, at: int, fmt: str, value: int) -> None:
        cases.append(Mutant(kind, label, put(data, at, fmt, value)))

    cuts = [*range(33), *rng.sample(range(33, header), 60),
            *rng.sample(range(header, len(data)), 15), len(data) - 1]
    cases += [Mutant("truncation", f"truncated at {n}", data[:n]) for n in cuts]
    for at in rng.sample(range(header), 120):
        bit = rng.randrange(8)
        cases.append(Mutant("bit flip", f"bit {bit} of byte {at} flipped",
                            data[:at] + bytes([data[at] ^ 1 << bit]) + data[at + 1:]))
    for at in rng.sample(range(header), 60):
        value = rng.choice([0, 0xFF, rng.randrange(256)])
        cases.append(Mutant("overwrite", f"byte {at} set to {value}",
                            data[:at] + bytes([value]) + data[at + 1:]))
    for at in rng.sample(range(header - 8), 20):
        cases.append(Mutant("overwrite", f"8 random bytes at {at}",
                            data[:at] + rng.randbytes(8) + data[at + 8:]))

    for at, what in [(8, "tensor count"), (16, "metadata count")]:
        for value in [2**64 - 1, 2**63, 2**32, len(data), struct.unpack_from(U64, data, at)[0] + 1]:
            edit("count", f"{what} set to {value}", at, U64, value)
    for entry in layout.entries:
        for vtype in [13, 255, GGUFValueType.ARRAY]:
            edit("metadata", f"{entry.key}: value type {vtype}", entry.type_at, U32, vtype)
        if entry.types[0] == GGUFValueType.ARRAY:
            length_at = entry.value_at + 4
            for itype in [13, GGUFValueType.ARRAY]:
                edit("metadata", f"{entry.key}: element type {itype}", entry.value_at, U32, itype)
        elif entry.types[0] == GGUFValueType.STRING:
            length_at = entry.value_at
        else:
            continue
        length = struct.unpack_from(U64, data, length_at)[0]
        for value in [2**64 - 1, 2**40, len(data), length + 1]:
            edit("metadata", f"{entry.key}: length {value}", length_at, U64, value)
    for i, tensor in enumerate(layout.tensors):
        for n_dims in [0, 5, 2**32 - 1]:
            edit("tensor table", f"{tensor.name}: {n_dims} dims", tensor.n_dims_at, U32, n_dims)
        dim0 = struct.unpack_from(U64, data, tensor.dims_at)[0]
        for value in [0, 2**63, 2**64 - 1, dim0 + 32, dim0 + 1]:
            edit("tensor table", f"{tensor.name}: dim 0 = {value}", tensor.dims_at, U64, value)
        for qtype in [4, 99, 2**32 - 1, GGMLQuantizationType.Q8_1, GGMLQuantizationType.F32,
                      GGMLQuantizationType.I32, GGMLQuantizationType.Q4_0]:
            edit("tensor table", f"{tensor.name}: type {qtype}", tensor.type_at, U32, qtype)
        previous = layout.tensors[i - 1].offset if i else ALIGNMENT
        for value in [2**64 - 1, len(data), tensor.offset + 1, tensor.offset + ALIGNMENT, previous]:
            edit("tensor table", f"{tensor.name}: offset {value}", tensor.offset_at, U64, value)
    return cases


class Timeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float, what: str):
    def expire(*_):
        raise Timeout(f"{what} took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_all(path: Path) -> GGUFFile:
    gguf = GGUFFile.open([path])
    list(gguf.tensors())
    return gguf


def assert_reads_as_gguf_py(gguf: GGUFFile, path: Path) -> None:
    """The oracle for every file we accept: gguf-py reads the same metadata and tensor bytes."""
    reader = GGUFReader(path)
    expected = {key: field.contents() for key, field in reader.fields.items()
                if not key.startswith("GGUF.")}
    assert gguf.metadata == expected
    ours = dict(gguf.tensors())
    assert list(ours) == [t.name for t in reader.tensors]
    for tensor in reader.tensors:
        value = ours[tensor.name]
        array = value.packed.numpy() if isinstance(value, QuantizedTensor) else value.numpy()
        assert array.tobytes() == np.asarray(tensor.data).tobytes(), tensor.name


def test_mutated_files_load_or_raise_model_format_error(tiny, tmp_path):
    data = tiny.read_bytes()
    cases = mutants(data, layout_of(tiny))
    path = tmp_path / "mutant.gguf"
    escaped, accepted = [], 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for case in cases:
        path.write_bytes(case.data)
        try:
            with time_limit(SECONDS_PER_CASE, case.label):
                gguf = read_all(path)
        except ModelFormatError:
            continue
        except Exception as e:  # anything else escaping is the bug this test looks for
            escaped.append(f"{case.label}: {type(e).__name__}: {e}")
            continue
        accepted += 1
        assert_reads_as_gguf_py(gguf, path)
    elapsed = time.perf_counter() - start
    assert not escaped, "\n".join(escaped)
    assert len(cases) > 600 and accepted > 10  # some edits keep the file valid (a data byte, ...)
    assert elapsed < 60
    # ru_maxrss is in KiB on Linux: no mutant made us allocate a large block of memory.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 256 * 1024


def test_mutated_files_fail_cleanly_through_load_gguf(tiny, tmp_path):
    """The whole loading path, for the mutants that keep the metadata intact (the config's
    values are the architecture's config parser's to check): truncations, tensor table edits
    and bit flips in the tensor table."""
    data = tiny.read_bytes()
    layout = layout_of(tiny)
    table_start = layout.tensors[0].n_dims_at - 8 - len(layout.tensors[0].name)
    rng = random.Random(2)
    cases = [case for case in mutants(data, layout, seed=1)
             if case.kind in ("truncation", "tensor table")]
    for at in rng.sample(range(table_start, layout.data_offset), 100):
        cases.append(Mutant("bit flip", f"byte {at} ^ 0x10",
                            data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]))
    escaped, loaded = [], 0
    for i, case in enumerate(cases):
        name = f"mutant{i}.gguf"
        (tmp_path / name).write_bytes(case.data)
        try:
            with time_limit(SECONDS_PER_CASE, case.label):
                load_gguf(str(tmp_path), name, progress=False)
            loaded += 1
        except ModelFormatError:
            pass
        except Exception as e:
            escaped.append(f"{case.label}: {type(e).__name__}: {e}")
        (tmp_path / name).unlink()
    assert not escaped, "\n".join(escaped)
    assert loaded > 0


# --- specific failures, specific messages --------------------------------------------------------

def written_by_gguf_py(build) -> bytes:
    """A file gguf-py's writer makes after `build(writer)` adds something wrong to it."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "written.gguf"
        writer = GGUFWriter(str(path), "llama")
        build(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def q8_1_tensor(writer: GGUFWriter) -> None:
    writer.add_tensor("x", np.zeros((2, 40), np.uint8), raw_dtype=GGMLQuantizationType.Q8_1)


# case: (mutate(data, layout) -> bytes, the error message it must give)
CASES = {
    "empty file": (lambda data, at: b"", r"is empty"),
    "bad magic": (lambda data, at: b"GGML" + data[4:],
                  r"is not a GGUF file: it starts with b'GGML'"),
    "version 1": (lambda data, at: put(data, 4, U32, 1), r"GGUF version 1; only versions 2, 3"),
    "big-endian": (lambda data, at: put(data, 4, U32, 3 << 24), r"big-endian"),
    "truncated header": (lambda data, at: data[:20],
                         r"truncated .* the GGUF header at byte 0 needs 24 bytes"),
    "truncated metadata": (lambda data, at: data[:1000],
                           r"truncated or corrupt: it claims 259 strings in metadata "
                           r"'tokenizer.ggml.tokens', more than the 440 bytes after byte 560"),
    "huge tensor count": (lambda data, at: put(data, 8, U64, 2**62),
                          r"claims 4611686018427387904 tensors, more than the \d+ bytes"),
    "huge metadata count": (lambda data, at: put(data, 16, U64, 10**9),
                            r"claims 1000000000 metadata entries"),
    "huge array": (lambda data, at: put(data, at.entry("tokenizer.ggml.token_type").value_at + 4,
                                        U64, 2**40),
                   r"claims 1099511627776 elements in metadata 'tokenizer.ggml.token_type'"),
    "array of arrays": (lambda data, at: put(data, at.entry("tokenizer.ggml.merges").value_at,
                                             U32, GGUFValueType.ARRAY),
                        r"array of arrays in metadata 'tokenizer.ggml.merges'"),
    "unknown value type": (lambda data, at: put(data, at.entry("llama.block_count").type_at,
                                                U32, 13),
                           r"metadata 'llama.block_count' has unknown value type 13"),
    "unknown tensor type": (lambda data, at: put(data, at.tensor("output.weight").type_at, U32, 99),
                            r"tensor 'output.weight' has unknown tensor type 99"),
    "unsupported tensor type": (lambda data, at: written_by_gguf_py(q8_1_tensor),
                                r"tensor 'x' has type Q8_1, which mistralrs cannot load"),
    "too many dimensions": (lambda data, at: put(data, at.tensors[3].n_dims_at, U32, 7),
                            r"tensor 'blk.0.attn_v.weight' has 7 dimensions"),
    "empty dimension": (lambda data, at: put(data, at.tensors[0].dims_at + 8, U64, 0),
                        r"tensor 'token_embd.weight' has shape \[64, 0\]"),
    "partial block": (lambda data, at: put(data, at.tensors[0].dims_at, U64, 48),
                      r"rows of 48 elements, not a whole number of Q8_0 blocks of 32"),
    "tensor data past the end": (lambda data, at: data[:-100],
                                 r"tensor 'output.weight' \(Q8_0, shape \[64, 288\]\) needs "
                                 r"bytes .* past the end of the file"),
    "offset past the end": (lambda data, at: put(data, at.tensors[2].offset_at, U64, 2**64 - 1),
                            r"tensor 'blk.0.attn_k.weight' .* past the end of the file"),
    "misaligned offset": (lambda data, at: put(data, at.tensors[2].offset_at, U64,
                                               at.tensors[2].offset + 1),
                          r"tensor 'blk.0.attn_k.weight' starts at data offset \d+, but the "
                          r"tensors before it end at"),
    "overlapping tensors": (lambda data, at: put(data, at.tensors[2].offset_at, U64,
                                                 at.tensors[1].offset),
                            r"tensor 'blk.0.attn_k.weight' starts at data offset"),
    "size does not match type": (lambda data, at: put(data, at.tensors[1].type_at, U32,
                                                      GGMLQuantizationType.Q4_0),
                                 r"tensor 'blk.0.attn_k.weight' starts at data offset .* the "
                                 r"type or shape of a tensor before it"),
    "duplicate tensor": (lambda data, at: data.replace(b"blk.1.attn_q.weight",
                                                       b"blk.0.attn_q.weight"),
                         r"tensor 'blk.0.attn_q.weight' appears twice"),
    "duplicate key": (lambda data, at: data.replace(b"llama.context_length",
                                                    b"tokenizer.ggml.model"),
                      r"metadata key 'tokenizer.ggml.model' appears twice"),
    "bad alignment": (lambda data, at: written_by_gguf_py(
                          lambda writer: writer.add_uint32("general.alignment", 48)),
                      r"general.alignment = 48 is not a power of two"),
}


@pytest.mark.parametrize("case", CASES)
def test_broken_file_message(tiny, tmp_path, case):
    mutate, message = CASES[case]
    path = tmp_path / "broken.gguf"
    path.write_bytes(mutate(tiny.read_bytes(), layout_of(tiny)))
    with pytest.raises(ModelFormatError, match=message) as error:
        read_all(path)
    assert str(path) in str(error.value)


def test_real_model_reads_as_gguf_py_reads_it():
    """The shipped SmolLM2 file (every metadata kind a converter writes, 272 tensors)."""
    path = default_model_path()
    start = time.perf_counter()
    gguf = GGUFFile.open([path])
    assert time.perf_counter() - start < 3  # about 0.1 s; gguf-py's reader takes 4 s
    assert_reads_as_gguf_py(gguf, path)


def test_float_tensors_are_copied_out_of_the_file_mapping():
    """A float tensor that stayed a view would fault the released file pages back in (64 KiB
    around each), packed weights are views that the repacking reads once."""
    gguf = GGUFFile.open([default_model_path()])
    start = np.frombuffer(gguf.parts[0].buffer, np.uint8).ctypes.data
    end = start + len(gguf.parts[0].buffer)
    kinds = {"float": 0, "packed": 0}
    for _, tensor in gguf.tensors():
        if isinstance(tensor, QuantizedTensor):
            assert start <= tensor.packed.data_ptr() < end
            kinds["packed"] += 1
        else:
            assert not start <= tensor.data_ptr() < end
            kinds["float"] += 1
    assert kinds["float"] == 61 and kinds["packed"] == 211  # SmolLM2: 2 norms a layer + 1


@pytest.mark.parametrize("texts", [
    ["", "a", "Ġthe", "é", "日本語", "<|im_end|>", "x" * 300],
    ["plain", "with\0nul", "after"],  # a NUL inside a string, beside the separators
], ids=["utf8", "nul"])
def test_string_arrays_read_as_gguf_py_reads_them_with_and_without_the_kernels(tmp_path, texts):
    path = tmp_path / "strings.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_array("test.strings", texts)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    expected = GGUFReader(path).fields["test.strings"].contents()
    assert GGUFFile.open([path]).metadata["test.strings"] == expected == texts
    with cpu.reference_mode():
        assert GGUFFile.open([path]).metadata["test.strings"] == expected


# --- split models -------------------------------------------------------------------------------

def write_split(source: Path, stem: Path, max_tensors: int) -> list[str]:
    """Re-write `source` split in parts of at most `max_tensors` tensors with gguf-py's writer
    (as llama.cpp's gguf-split does: metadata in the first part, split.* keys in every part)."""
    reader = GGUFReader(source)
    writer = GGUFWriter(str(stem), reader.fields["general.architecture"].contents(),
                        split_max_tensors=max_tensors)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [path.name for path in writer.format_shard_names(stem)]


def test_split_model_gives_the_same_logits_as_one_file(tiny, tmp_path):
    parts = write_split(tiny, tmp_path / "tiny.gguf", max_tensors=12)
    assert parts == ["tiny-00001-of-00002.gguf", "tiny-00002-of-00002.gguf"]
    ids = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(0)).tolist()
    expected = score(load_gguf(str(tiny.parent), tiny.name, progress=False), ids)
    runner = Runner(Which.GGUF(quantized_model_id=str(tmp_path), quantized_filename=parts,
                               dtype="F32"), progress=False)
    try:
        assert torch.equal(score(runner.loaded, ids), expected)
    finally:
        runner.shutdown()
    reversed_parts = load_gguf(str(tmp_path), parts[::-1], progress=False)
    assert torch.equal(score(reversed_parts, ids), expected)
    assert GGUFFile.open([tmp_path / p for p in parts]).metadata["split.count"] == 2


def test_split_parts_that_do_not_make_one_model(tiny, tmp_path):
    two = write_split(tiny, tmp_path / "two.gguf", max_tensors=12)  # 12 + 9 tensors
    two_other = write_split(tiny, tmp_path / "other.gguf", max_tensors=11)  # 11 + 10
    three = write_split(tiny, tmp_path / "three.gguf", max_tensors=8)
    cases = {
        "missing part": ([two[0]], r"one of 2 parts .* but part 2 \(two-00002-of-00002.gguf\) "
                                   r"is not given"),
        "parts of two splits": ([two[0], three[1]], r"is one of 2 parts, but "
                                                    r".*three-00002-of-00003.gguf is one of 3"),
        "parts of two splits in as many parts": ([two[0], two_other[1]], r"says the split model "
                                                 r"has 21 tensors, but its 2 parts hold 22"),
        "part given twice": ([three[0], three[0], three[2]], r"are both part 1 of 3"),
        "a whole model among parts": ([two[0], "whole.gguf"], r"whole.gguf is a whole GGUF "
                                                              r"model, but .* is one part"),
    }
    (tmp_path / "whole.gguf").write_bytes(tiny.read_bytes())
    for case, (names, message) in cases.items():
        with pytest.raises(ModelFormatError, match=message):
            load_gguf(str(tmp_path), names, progress=False)

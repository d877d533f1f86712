"""The native CPU kernels (`mistralrs.kernels.cpu`) against independent oracles.

Each check runs on the library this machine builds and on narrower builds of the same sources:
the AVX2 kernels (on an AVX-512 CPU, where they are not the native build) and the portable C,
so that every path is checked on an AVX-512 machine and the portable one everywhere. Oracles: gguf-py's dequantization
(through `dequantize_reference`, bit-exact with it) for what the repacked records hold; float64
matmuls of the quantized activations for the matmuls (the kernels' products are exact in int32,
so only the float scaling and summation order differ: 1e-5 relative); gguf-py's Q8_0 quantizer
and a transcription of llama.cpp's `quantize_row_q8_K_ref` for the activations; the torch
reference paths (`attention_reference`, the layers' torch code) for the small ops.
"""
from __future__ import annotations

import logging
import mmap
import platform
import re
import threading
import warnings

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q

from mistralrs.kernels import attention_reference, cpu, kv_u8
from mistralrs.kernels.cpu import native, ops
from mistralrs.kernels.gguf import block_layout, dequantize_reference
from mistralrs.layers.rotary import _rotate
from test_gguf_matmul import packed_weight

TYPES = sorted(cpu.SUPPORTED_TYPES, key=int)


X86 = platform.machine() in ("x86_64", "AMD64")


def _cpu_has(flag: str) -> bool:
    return flag in native._cpu_flags().split()


# Builds besides the native one, by the flags that narrow -march=native: the AVX2 kernels (on
# an AVX-512 CPU; without AVX-512 they are the native build) and the portable C (every CPU).
BUILDS = {
    "avx2": ("-mno-avx512f",) if X86 and _cpu_has("avx512f") else None,
    "portable": ("-mno-avx512f", "-mno-avx2") if X86 else (),
}


@pytest.fixture(scope="module")
def narrower_library(tmp_path_factory):
    libraries = {}

    def build(name: str):
        if name not in libraries:
            target = tmp_path_factory.mktemp("native") / f"libmistralrs_cpu_{name}.so"
            native.build(target, (*native.FLAGS, *BUILDS[name]))
            libraries[name] = native.load(target)
            assert libraries[name].mrs_matmul_isa() == name.encode()  # the kernels it got
        return libraries[name]

    return build


@pytest.fixture(params=["native", *(name for name, flags in BUILDS.items() if flags is not None)])
def kernels(request, monkeypatch):
    """Which build the test runs on (the module functions call `native.library()`)."""
    if request.param != "native":
        lib = request.getfixturevalue("narrower_library")(request.param)
        monkeypatch.setattr(native, "library", lambda: lib)
    assert native.library() is not None
    return request.param


def finite_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    same_nonfinite = torch.equal(torch.isfinite(a), torch.isfinite(b))
    finite = torch.isfinite(b)
    return same_nonfinite and torch.equal(a[finite], b[finite])


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_repacked_records_hold_the_files_weights_bit_for_bit(kernels, qtype):
    elements, _ = block_layout(qtype)
    packed = packed_weight(qtype, 37, 2 * max(elements, 32))  # 37 rows: a padded last group
    weight = cpu.repack(packed, qtype)
    assert weight.out_features == 37
    assert finite_equal(cpu.dequantize_repacked(weight), dequantize_reference(packed, qtype))


def _resident_kib(path) -> int:
    """Resident memory of this process's mappings of `path` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/smaps")
def test_background_repacks_are_complete_when_their_context_exits(kernels, monkeypatch, tmp_path):
    """Inside `background_repacks` the kernels' background thread writes the records, in
    chunks, and drops the pages of a memory-mapped source as it goes; after the context the
    records are the file's weights."""
    monkeypatch.setattr(cpu.quant_matmul, "REPACK_CHUNK_BYTES", 256 << 10)  # several chunks
    sources = [(packed_weight(qtype, 2048, 1024), qtype) for qtype in (Q.Q4_1, Q.Q6_K, Q.Q8_0)]
    path = tmp_path / "weights.bin"
    path.write_bytes(b"".join(packed.numpy().tobytes() for packed, _ in sources))
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    views, offset = [], 0
    for packed, _ in sources:
        nbytes = packed.numel()
        view = np.frombuffer(mapping, np.uint8, nbytes, offset).reshape(packed.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only: nothing writes to it
            views.append(torch.from_numpy(view))
        offset += nbytes
    with cpu.background_repacks():
        weights = [cpu.repack(view, qtype, release_rows=lambda first, last: None)
                   for view, (_, qtype) in zip(views, sources)]
    for weight, (packed, qtype) in zip(weights, sources):
        assert finite_equal(cpu.dequantize_repacked(weight), dequantize_reference(packed, qtype))
    # What stays: the kernel maps up to 64 KiB around a page fault ("fault-around"), so
    # reading a chunk maps again some pages of the one released before it.
    assert _resident_kib(path) * 1024 < offset / 3


def q8_1_min_term_correction(x: torch.Tensor, x_q: torch.Tensor, packed: torch.Tensor,
                             block_bytes: int) -> torch.Tensor:
    """What llama.cpp's Q8_1 changes in x_q @ W.T for Q4_1/Q5_1 weights (w = d q + m): the min
    term multiplies m by fp16(d * sum of the block's codes), d the block's unrounded scale,
    instead of by the sum of the block's values (the fp16-rounded d times the code sum)."""
    m, k = x.shape
    d = x.view(m, -1, 32).abs().amax(-1) / 127
    block_sums = x_q.double().view(m, -1, 32).sum(-1)
    code_sums = block_sums / d.half().double()
    stored = (d * code_sums.float()).half().double()
    mins = packed.view(packed.shape[0], -1, block_bytes)[:, :, 2:4].contiguous()
    mins = mins.view(torch.float16).double().view(packed.shape[0], -1)
    return (stored - block_sums) @ mins.T


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_matmul_is_float_math_on_the_quantized_activations(kernels, qtype):
    elements, block_bytes = block_layout(qtype)
    k = 2 * elements if elements == 256 else 11 * 32  # 11 blocks: past 8 of a batch of 16
    packed = packed_weight(qtype, 37, k)
    weights = dequantize_reference(packed, qtype).double()
    linears = cpu.PackedLinears([cpu.repack(packed, qtype)])
    for m in (1, 3, 4, 5, 9):  # partial and whole tiles of 4 rows
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
        x_q = cpu.quantize_dequantize_rows(x, cpu.activation_group(qtype))
        expected = x_q.double() @ weights.T
        if qtype in (Q.Q4_1, Q.Q5_1):
            expected += q8_1_min_term_correction(x, x_q, packed, block_bytes)
        error = (linears(x).double() - expected).abs().max() / expected.abs().max()
        assert error < 1e-5, (m, error.item())


def test_activations_are_quantized_as_llama_cpp_quantizes_them(kernels):
    x = torch.randn(5, 512, generator=torch.Generator().manual_seed(0)) * 3
    # Q8_0 (legacy weight types): gguf-py's quantizer, scales stored as fp16; rows of 16 blocks
    # (the AVX-512 path's batch), 18 and 11 (partial batches), and a block of zeros
    for width in (512, 576, 352):
        rows = torch.randn(5, width, generator=torch.Generator().manual_seed(width)) * 3
        rows[1, 64:96] = 0
        q8_0 = gguf.quants.quantize(rows.numpy(), Q.Q8_0)
        expected = torch.from_numpy(gguf.quants.dequantize(q8_0, Q.Q8_0))
        assert torch.equal(cpu.quantize_dequantize_rows(rows, 32), expected), width
    # Q8_K (K-quant weights): llama.cpp's quantize_row_q8_K_ref, groups of 256, float32 scale
    groups = x.numpy().reshape(-1, 256)
    signed_max = groups[np.arange(len(groups)), np.abs(groups).argmax(1)][:, None]
    iscale = np.float32(-127.0) / signed_max
    codes = np.minimum(np.rint(iscale * groups), 127)
    expected_k = torch.from_numpy((codes * (np.float32(1.0) / iscale)).astype(np.float32))
    assert torch.equal(cpu.quantize_dequantize_rows(x, 256), expected_k.reshape(5, 512))
    assert cpu.activation_group(Q.Q4_1) == 32 and cpu.activation_group(Q.Q6_K) == 256


def test_one_call_computes_several_weights_and_can_add_into_a_residual(kernels):
    k = 256
    types = [Q.Q4_1, Q.Q8_0, Q.Q5_0, Q.Q4_K, Q.Q6_K]  # two activation groups: two native calls
    packed = [packed_weight(t, n, k) for t, n in zip(types, [48, 20, 33, 16, 7])]
    weights = [cpu.repack(p, t) for p, t in zip(packed, types)]
    x = torch.randn(6, k, generator=torch.Generator().manual_seed(1))
    together = cpu.PackedLinears(weights)(x)
    alone = torch.cat([cpu.PackedLinears([w])(x) for w in weights], dim=1)
    assert torch.equal(together, alone)
    residual = torch.randn(6, 7)
    added = cpu.PackedLinears([weights[-1]])(x, add_to=residual.clone())
    torch.testing.assert_close(added, residual + alone[:, -7:], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_embedding_rows_are_the_reference_rows(kernels, qtype):
    """From the file's blocks, and from the records of a tied output layer (the ids split
    between the threads)."""
    packed = packed_weight(qtype, 40, 512)
    ids = torch.tensor([3, 0, 39, 3, 17])
    expected = dequantize_reference(packed[ids], qtype) * 2.0
    assert torch.equal(cpu.dequantize_rows(packed, qtype, ids, scale=2.0), expected)
    assert torch.equal(cpu.dequantize_repacked(cpu.repack(packed, qtype), ids, 2.0), expected)
    with pytest.raises(IndexError, match="token ids must be in 0..39"):
        cpu.dequantize_rows(packed, qtype, torch.tensor([40]))
    with pytest.raises(IndexError, match="token ids must be in 0..39"):
        cpu.dequantize_repacked(cpu.repack(packed, qtype), torch.tensor([-1]))


def zeros(shape, dtype):
    return torch.zeros(shape, dtype=dtype)


def int8_caches(blocks, block_size, kv_heads, head_dim, keys, values):
    """Two 8-bit caches (`kv_u8`) holding keys and values [blocks * block_size, H, D] slot by
    slot, stored by the reference."""
    caches = [kv_u8.allocate(blocks, block_size, kv_heads, head_dim, zeros) for _ in range(2)]
    attention_reference.store_kv(keys, values, *caches, torch.arange(blocks * block_size))
    return caches


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16, kv_u8.DTYPE], ids=str)
@pytest.mark.parametrize("q_heads, kv_heads, head_dim, block_size, window, softcap", [
    (4, 4, 64, 16, None, None),   # MHA
    (9, 3, 64, 32, None, None),   # GQA 3 (SmolLM2)
    (4, 1, 256, 16, 40, None),    # MQA, wide heads, a sliding window (Gemma 3)
    (8, 2, 80, 4, None, 30.0),    # soft-capping, a head size that is not a multiple of 16
    (16, 2, 128, 16, None, None),  # GQA 8 (Llama 3): more query heads than one pass takes
    (6, 3, 36, 8, None, None),    # a head size that is not a multiple of 8 (vector tails)
])
def test_decode_attention_matches_the_reference(kernels, cache_dtype, q_heads, kv_heads,
                                                head_dim, block_size, window, softcap):
    """Against the reference attention to the cache's float32 values. The 8-bit cache's kernel
    attends with the query quantized as a cache row is (int8, a scale per row) and the softmax
    weights as 15-bit integers: close to the reference with the query quantized the same way,
    near without."""
    g = torch.Generator().manual_seed(0)
    blocks = 400
    keys, values = (torch.randn(blocks * block_size, kv_heads, head_dim, generator=g)
                    for _ in range(2))
    if cache_dtype == kv_u8.DTYPE:
        k_cache, v_cache = int8_caches(blocks, block_size, kv_heads, head_dim, keys, values)
    else:
        k_cache, v_cache = (x.view(blocks, block_size, kv_heads, head_dim).to(cache_dtype)
                            for x in (keys, values))
    context = torch.tensor([1, 17, 300, 1200], dtype=torch.int32)  # ragged; 1200 splits
    tables = torch.randint(0, blocks, (4, 1200 // block_size + 1), generator=g,
                           dtype=torch.int32)
    q = torch.randn(4, q_heads, head_dim, generator=g)
    options = dict(scale=head_dim ** -0.5, sliding_window=window, softcap=softcap)
    out = ops.paged_decode_attention(q, k_cache, v_cache, context, tables, **options)
    if cache_dtype != kv_u8.DTYPE:
        expected = attention_reference.paged_decode_attention(
            q, k_cache.float(), v_cache.float(), context, tables, **options)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        return
    quantized_q = kv_u8.dequantize(*kv_u8.quantize(q))
    expected = attention_reference.paged_decode_attention(quantized_q, k_cache, v_cache,
                                                          context, tables, **options)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-4)
    exact_q = attention_reference.paged_decode_attention(q, k_cache, v_cache, context, tables,
                                                         **options)
    torch.testing.assert_close(out, exact_q, rtol=0, atol=3e-2)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16], ids=str)
def test_store_kv_writes_the_slots_in_the_cache_dtype(kernels, cache_dtype):
    k_cache = torch.zeros(5, 4, 2, 24, dtype=cache_dtype)
    v_cache = torch.zeros(5, 4, 2, 16, dtype=cache_dtype)
    k, v = torch.randn(3, 2, 24), torch.randn(3, 2, 16)
    slots = torch.tensor([9, -1, 0])
    ops.store_kv(k, v, k_cache, v_cache, slots)
    expected_k, expected_v = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    attention_reference.store_kv(k, v, expected_k, expected_v, slots)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


def test_int8_store_writes_what_the_torch_quantizer_writes(kernels):
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(5, 2, 24, generator=g) * 3, torch.randn(5, 2, 16, generator=g)
    k[1, 0] = 0.0  # a zero row: scale 0, every code 128
    slots = torch.tensor([9, -1, 0, 31, 17])
    ours = [kv_u8.allocate(8, 4, 2, d, zeros) for d in (24, 16)]
    expected = [kv_u8.allocate(8, 4, 2, d, zeros) for d in (24, 16)]
    ops.store_kv(k, v, *ours, slots)
    attention_reference.store_kv(k, v, *expected, slots)
    for cache, reference in zip(ours, expected):
        assert torch.equal(kv_u8.block_storage(cache), kv_u8.block_storage(reference))
    # what a slot holds is its row to within half a quantization step
    block, offset = 9 // 4, 9 % 4
    held = kv_u8.dequantize(ours[0][block, offset], kv_u8.scales(ours[0])[block, offset])
    step = k[0].abs().amax(-1, keepdim=True) / 127
    assert ((held - k[0]).abs() <= step / 2 + 1e-6).all()


def rms_norm_reference(x, weight, eps, unit_offset):
    scale = weight + 1.0 if unit_offset else weight
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale


@pytest.mark.parametrize("unit_offset", [False, True])
def test_rms_norm_of_rows_and_of_head_views_with_an_added_residual(kernels, unit_offset):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, generator=g)
    x = torch.randn(5, 64, generator=g)
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-6, unit_offset),
                               rms_norm_reference(x, weight, 1e-6, unit_offset))
    fused = torch.randn(5, 3 * 64 + 10, generator=g)  # q of a [T, q | k | v] buffer, as heads
    heads = fused[:, :3 * 64].view(5, 3, 64)
    torch.testing.assert_close(ops.rms_norm(heads, weight, 1e-6, unit_offset),
                               rms_norm_reference(heads, weight, 1e-6, unit_offset))
    residual = torch.randn(5, 64, generator=g)
    expected = residual + rms_norm_reference(x, weight, 1e-6, unit_offset)
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-6, unit_offset, add_to=residual),
                               expected)
    torch.testing.assert_close(residual, expected)  # written in place


def test_rotary_and_its_cos_sin_match_the_torch_path(kernels):
    g = torch.Generator().manual_seed(0)
    positions = torch.tensor([0, 5, 1023, 7])
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 48, 2).float() / 48))
    cos, sin = ops.rope_cos_sin(positions, inv_freq, 1.5)
    freqs = positions.float()[:, None] * inv_freq
    torch.testing.assert_close(cos, freqs.cos() * 1.5)
    torch.testing.assert_close(sin, freqs.sin() * 1.5)
    fused = torch.randn(4, 6 * 64 + 2 * 64, generator=g)  # q (6 heads), k (2 heads), rotary 48 of 64
    q, k = fused[:, :384].view(4, 6, 64), fused[:, 384:].view(4, 2, 64)
    expected_q, expected_k = _rotate(q, cos, sin, 48), _rotate(k, cos, sin, 48)
    ops.rotary_(q, k, cos, sin, 48)
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(k, expected_k)


@pytest.mark.parametrize("act, reference", [
    ("silu", F.silu),
    ("gelu_pytorch_tanh", lambda x: F.gelu(x, approximate="tanh")),
    ("gelu", F.gelu),
])
def test_gated_activation_matches_torch(kernels, act, reference):
    gate_up = torch.randn(5, 2 * 100, generator=torch.Generator().manual_seed(0)) * 4
    gate_up[0, :4] = torch.tensor([-200.0, -88.0, 88.0, 200.0])
    gate, up = gate_up[:, :100], gate_up[:, 100:]
    torch.testing.assert_close(ops.gated_activation(gate, up, act), reference(gate) * up,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [40, 1000, 4099])
def test_argmax_takes_the_first_of_tied_maxima_and_flags_nan_rows(kernels, width):
    logits = torch.randn(7, width, generator=torch.Generator().manual_seed(width))
    logits[1, [17, 33]] = 50.0  # ties in two different lanes' chains
    logits[2] = 0.0
    logits[3, 5] = float("nan")
    logits[4, [width - 1, width - 2]] = 60.0  # in the columns after the vector loop
    logits[5, [width - 3, 30]] = 70.0
    logits[6, width - 1] = float("nan")
    argmax, nan = ops.argmax_rows(logits)
    assert argmax[:3] == [int(logits[0].argmax()), 17, 0]
    assert argmax[4:6] == [width - 2, 30]
    assert argmax[4:6] == logits[4:6].argmax(-1).tolist()  # torch: the first maximal index
    assert nan == [False, False, False, True, False, False, True]


def test_calls_from_two_threads_at_once_give_the_same_results():
    """Two threads (two engines) use the kernels at once: one of them gets the thread pool, the
    other runs its parts itself; both get the right results."""
    weight = cpu.repack(packed_weight(Q.Q4_1, 512, 512), Q.Q4_1)
    inputs = [torch.randn(m, 512, generator=torch.Generator().manual_seed(m)) for m in (1, 4, 7)]
    expected = [cpu.PackedLinears([weight])(x) for x in inputs]
    failures = []

    def hammer():
        linears = cpu.PackedLinears([weight])
        for _ in range(200):
            for x, want in zip(inputs, expected):
                if not torch.equal(linears(x), want):
                    failures.append(x.shape)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_reference_mode_turns_the_kernels_off():
    packed = packed_weight(Q.Q4_0, 32, 64)
    with cpu.reference_mode():
        assert cpu.library() is None and cpu.repack(packed, Q.Q4_0) is None
        assert not ops.usable(torch.zeros(2))
    assert cpu.library() is not None


def test_without_a_compiler_the_torch_references_run(tmp_path, monkeypatch, caplog):
    """A machine without a C compiler: a warning that says what to install, then the slow but
    correct torch paths (a tiny model still generates)."""
    try:
        with monkeypatch.context() as patch:
            patch.setenv("CC", str(tmp_path / "no-such-compiler"))
            patch.setenv("MISTRALRS_CACHE_DIR", str(tmp_path / "cache"))
            native._configured_library.cache_clear()
            with caplog.at_level(logging.WARNING, logger=native.__name__):
                assert native.library() is None
            assert "Install a C compiler" in caplog.text
            assert cpu.repack(packed_weight(Q.Q8_0, 16, 64), Q.Q8_0) is None
    finally:
        native._configured_library.cache_clear()
    assert native.library() is not None

"""The CPU fast path of packed matmuls (`QuantLinear` on CPU) against the reference:
dequantize with the torch reference (itself bit-exact with gguf-py), then matmul."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

from mistralrs.kernels.gguf import cpu_matmul, quant_matmul_reference
from mistralrs.kernels.gguf.packed import QuantizedTensor
from mistralrs.layers import QuantLinear


@pytest.mark.parametrize("qtype", sorted(cpu_matmul.SUPPORTED_TYPES, key=int))
@pytest.mark.parametrize("rows", [1, 2, 5, 33])
def test_quant_linear_cpu_path_matches_reference(qtype, rows):
    n, k = 40, 512
    rng = np.random.default_rng(int(qtype))
    weight = rng.standard_normal((n, k)).astype(np.float32)
    try:
        packed = torch.from_numpy(quants.quantize(weight, qtype))
    except NotImplementedError:
        # gguf-py has no quantizer for this type: random blocks, every byte below 0x7C so that
        # any fp16 scale they hold is finite.
        elements, size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 0x7C, (n, k // elements, size), dtype=np.uint8)
        if qtype == Q.Q8_K:  # its scale is a float32 at the start of each block
            raw[:, :, :4] = np.frombuffer(np.float32(0.01).tobytes(), dtype=np.uint8)
        packed = torch.from_numpy(raw.reshape(n, -1))
    layer = QuantLinear(k, n)
    layer.load_checkpoint_tensor("weight", QuantizedTensor(packed, int(qtype), k), torch.float32)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
    expected = quant_matmul_reference(x, packed, qtype)
    assert torch.isfinite(expected).all()
    got = layer(x)
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item() + 1e-5

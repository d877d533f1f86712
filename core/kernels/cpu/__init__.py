"""Native CPU kernels: C compiled on first use (`native`), called through ctypes.

A decode step on a small model is bound by the cost of each call, not by arithmetic, so the CPU
path runs few, fused calls: the quantized matmuls of one input together (`quant_matmul`), and
RMSNorm, rotary, the gated activation and paged decode attention as one call each (`ops`). The
matmuls quantize activations to int8 per 32 columns and use int8 dot products (AVX-512 VNNI or
AVX2), as llama.cpp.
`MISTRALRS_CPU_KERNELS=reference` or `reference_mode()` turns them off (torch references,
float32 activations).
"""
from mistralrs.kernels.cpu.native import library, mode, reference_mode
from mistralrs.kernels.cpu.quant_matmul import (
    SUPPORTED_TYPES,
    PackedLinears,
    RepackedWeight,
    activation_group,
    background_repacks,
    dequantize_repacked,
    dequantize_rows,
    quantize_dequantize_rows,
    repack,
)

__all__ = [
    "SUPPORTED_TYPES", "PackedLinears", "RepackedWeight", "activation_group", "background_repacks",
    "dequantize_repacked",
    "dequantize_rows", "library", "mode", "quantize_dequantize_rows", "reference_mode", "repack",
]

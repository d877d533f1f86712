"""GGUF's IQ and TQ block types: each type's torch reference and Triton kernel."""
from __future__ import annotations

from gguf import GGMLQuantizationType as Q

from . import iquants_reference as reference
from . import iquants_triton as kernels
from .common import Dequantizer

DEQUANTIZERS: dict[Q, Dequantizer] = {
    Q.IQ1_S: Dequantizer(reference.dequantize_iq1_s, kernels.dequantize_iq1_s),
    Q.IQ1_M: Dequantizer(reference.dequantize_iq1_m, kernels.dequantize_iq1_m),
    Q.IQ2_XXS: Dequantizer(reference.dequantize_iq2_xxs, kernels.dequantize_iq2_xxs),
    Q.IQ2_XS: Dequantizer(reference.dequantize_iq2_xs, kernels.dequantize_iq2_xs),
    Q.IQ2_S: Dequantizer(reference.dequantize_iq2_s, kernels.dequantize_iq2_s),
    Q.IQ3_XXS: Dequantizer(reference.dequantize_iq3_xxs, kernels.dequantize_iq3_xxs),
    Q.IQ3_S: Dequantizer(reference.dequantize_iq3_s, kernels.dequantize_iq3_s),
    Q.IQ4_NL: Dequantizer(reference.dequantize_iq4_nl, kernels.dequantize_iq4_nl),
    Q.IQ4_XS: Dequantizer(reference.dequantize_iq4_xs, kernels.dequantize_iq4_xs),
    Q.TQ1_0: Dequantizer(reference.dequantize_tq1_0, kernels.dequantize_tq1_0),
    Q.TQ2_0: Dequantizer(reference.dequantize_tq2_0, kernels.dequantize_tq2_0),
}

"""Test-wide settings.

Triton kernels only run on this project's CPU machines through Triton's interpreter, and
`triton.jit` decides between compiled and interpreted at decoration time, so the variable must
be set before any `mistralrs.kernels` module is imported.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture
def reference_cpu_kernels():
    """Models loaded in the test run the exact float32 torch references on the CPU instead of
    the native kernels, whose int8 activations would blur checks of a GGUF reader at 1e-4 (the
    native path is checked against these references in tests/kernels/test_cpu_native.py)."""
    from mistralrs.kernels.cpu import reference_mode

    with reference_mode():
        yield

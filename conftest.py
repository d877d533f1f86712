"""Test-wide settings.

Triton kernels only run on this project's CPU machines through Triton's interpreter, and
`triton.jit` decides between compiled and interpreted at decoration time, so the variable must
be set before any `mistralrs.kernels` module is imported.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

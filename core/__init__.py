"""mistralrs-triton: the mistral.rs inference engine in Python on Triton kernels."""

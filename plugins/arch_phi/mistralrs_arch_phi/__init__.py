"""The Phi family for mistralrs-triton: Phi-2 (and Phi-1/1.5), Phi-3 / Phi-3.5 / Phi-4 dense
models, and Phi-3.5-MoE."""

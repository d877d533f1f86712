"""The DeepSeek family for mistralrs-triton: DeepSeek-V2 (and V2-Lite, V2.5, Coder-V2) and
DeepSeek-V3 (and R1): multi-head latent attention over a compressed KV cache, and DeepSeekMoE
(routed experts with group-limited routing, shared experts, leading dense layers)."""

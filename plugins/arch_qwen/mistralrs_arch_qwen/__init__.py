"""The Qwen family for mistralrs-triton: Qwen2 (and Qwen2.5) and Qwen3 dense models."""

"""The Llama architecture for mistralrs-triton (Llama 1/2/3, SmolLM, TinyLlama, ...)."""

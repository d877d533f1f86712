"""The Mistral (dense, sliding-window attention) and Mixtral (sparse mixture-of-experts)
architectures for mistralrs-triton."""

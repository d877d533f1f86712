"""The Starcoder2 architecture for mistralrs-triton (StarCoder2 3B/7B/15B)."""

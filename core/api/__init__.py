"""The seed-compatible Python API."""

"""Tensor operations and their kernels (torch only; nothing here imports models)."""

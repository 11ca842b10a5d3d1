"""Operators: attention kernels and the math they share with the models."""

"""SaPE² math and attention kernels."""

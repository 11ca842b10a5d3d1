"""The position-encoding study (see README.md)."""

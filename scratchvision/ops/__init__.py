"""The heavy operators, each a package with four tiers (loop, numpy, numba, cuda)."""

from . import bilinear

__all__ = ["bilinear"]

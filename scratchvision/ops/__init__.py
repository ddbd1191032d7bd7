"""The heavy operators, each a package with four tiers (loop, numpy, numba, cuda).

``OPERATORS`` lists them for ``scratchvision check`` and ``scratchvision bench``: each package
has ``check_cases.CHECK_CASES`` and ``bench_cases.BENCH_CASES``.
"""

from . import bilinear, conv2d, deform_conv2d, ms_deform_attn

OPERATORS = ("bilinear", "conv2d", "deform_conv2d", "ms_deform_attn")

__all__ = ["bilinear", "conv2d", "deform_conv2d", "ms_deform_attn", "OPERATORS"]

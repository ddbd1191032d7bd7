"""The operators, each a package that holds only the op: ``__init__.py`` (validate, normalise,
dispatch) and one module per tier.

The four heavy operators have all four tiers (loop, numpy, numba, cuda); max pooling has the
three CPU tiers. Their check and bench cases live a layer above, in
:mod:`scratchvision.verify`.
"""

from . import bilinear, conv2d, deform_conv2d, max_pool2d, ms_deform_attn

#: the operators, in the order the docs and the commands list them
OPERATORS = ("bilinear", "conv2d", "deform_conv2d", "ms_deform_attn", "max_pool2d")

__all__ = ["bilinear", "conv2d", "deform_conv2d", "ms_deform_attn", "max_pool2d", "OPERATORS"]

"""NumPy tier of deformable convolution: bilinear columns from the numpy bilinear tier, then a
GEMM.

This module is thin on purpose. The computation -- sampling points (eq. 1), columns sampled by
:func:`scratchvision.ops.bilinear.vectorized.sample` (eq. 3), the mask (eq. 2), ``np.matmul``
with the weight (eq. 4), and the backward through the same steps (eqs. 5-10) -- lives in
:mod:`scratchvision.ops.deform_conv2d.columns`, shared with the numba tier, which differs only
in the bilinear tier it calls and in a few elementwise kernels. The input gradient is the
bilinear numpy tier's sparse transposed product ``S^T @ gy``: a scatter without races.

Arithmetic runs in the input dtype (float32 stays float32; BLAS and SciPy accumulate in it).

Contract (arrays validated, C-contiguous, one float dtype, N >= 1): ``forward(x (N, C, H, W),
offset (N, 2 * G * K, Ho, Wo), weight (O, C / groups, kh, kw), bias (O,) or None, mask
(N, G * K, Ho, Wo) or None, geom, offset_groups, weight_groups) -> (N, O, Ho, Wo)`` and
``backward(gy, x, offset, weight, has_bias, mask, geom, offset_groups, weight_groups) ->
(grad_input, grad_offset, grad_weight, grad_bias or None, grad_mask or None)``.
"""

from __future__ import annotations

from ..bilinear import vectorized as _bilinear
from .columns import ColumnTier

_tier = ColumnTier(_bilinear)

forward = _tier.forward
backward = _tier.backward

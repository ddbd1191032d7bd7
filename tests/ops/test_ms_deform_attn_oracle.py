"""Oracle tests: ``ms_deform_attn`` against Deformable-DETR's pure-PyTorch formulation
(``F.grid_sample`` per level, ``scratchvision.verify.ms_deform_attn``), forward and the
gradients of value, sampling_locations and attention_weights by torch autograd.

They need torch (the ``oracle`` extra) and skip cleanly without it. They show that the function
whose gradients the finite-difference tests prove is the one Deformable DETR computes; they
never replace those proofs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvision.ops import ms_deform_attn
from scratchvision.verify.ms_deform_attn import grid_sample_formulation

from strategies import MSDA_DEFAULT, MSDA_GRID, MSDA_TINY, MSDACase, ms_deform_attn_cases
from tiers import DTYPES, assert_close, run_on_every_tier

torch = pytest.importorskip("torch")

#: torch's float32 kernels round in float32 too, in another order (grid_sample maps the
#: location to pixels as ((2u - 1 + 1) W - 1) / 2, and sums the levels and points differently),
#: so float32 is held to 1e-4; float64 agrees to rounding.
RTOL = {np.float64: 1e-10, np.float32: 1e-4}


def _torch(case: MSDACase):
    """(out, grad_value, grad_sampling_locations, grad_attention_weights) from torch
    autograd through the grid_sample formulation."""
    tensors = {name: torch.tensor(array, requires_grad=True)
               for name, array in case.arrays.items()}
    out = grid_sample_formulation(tensors["value"], case.spatial_shapes.tolist(),
                                  tensors["sampling_locations"], tensors["attention_weights"])
    out.backward(torch.tensor(case.gy))
    return (out.detach().numpy(),
            *(tensors[name].grad.numpy() for name in case.arrays))


def _ours(case: MSDACase, backend):
    return (ms_deform_attn.forward(*case.args, backend=backend),
            *ms_deform_attn.backward(case.gy, *case.args, backend=backend))


def _compare(case: MSDACase, dtype, simulated_cuda: bool):
    case = case.astype(dtype)
    expected = _torch(case)
    for tier, result in run_on_every_tier(_ours, case, simulated_cuda=simulated_cuda).items():
        assert_close(result, expected, label=f"tier {tier!r} vs grid_sample:",
                     rtol=RTOL[dtype])


@given(case=ms_deform_attn_cases(MSDA_DEFAULT), dtype=st.sampled_from(DTYPES))
def test_matches_the_grid_sample_formulation(case, dtype):
    """Up to 3 levels (one pixel high or wide included), 3 heads, 3 points and 7 queries;
    locations off the kinks, some of them outside [0, 1]."""
    _compare(case, dtype, simulated_cuda=False)


@given(case=ms_deform_attn_cases(MSDA_TINY))
def test_matches_the_grid_sample_formulation_on_tiny_cases_every_tier(case):
    """The same on tiny shapes, with the cuda tier included (in the simulator without a GPU)."""
    _compare(case, np.float64, simulated_cuda=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_at_integer_pixel_coordinates(dtype):
    """Locations on a 1/32 grid put many pixel coordinates exactly on integers (kinks), on the
    borders -1 and W - 1 and outside the levels: grid_sample's gradients are the same
    one-sided (right-hand) ones."""
    rng = np.random.default_rng(9)
    shapes = np.array([[4, 4], [2, 8], [1, 2]], dtype=np.int64)
    shape = (2, 6, 2, 3, 4)  # (N, Lq, M, L, P)
    case = MSDACase(rng.standard_normal((2, 34, 2, 3)), shapes,
                    ms_deform_attn.level_start_index_of(shapes),
                    rng.integers(-12, 44, size=shape + (2,)) * MSDA_GRID,
                    rng.standard_normal(shape), rng.standard_normal((2, 6, 6)))
    pixels = case.sampling_locations * shapes[:, ::-1][:, None] - 0.5  # eq. (2), (x, y)
    assert (pixels == np.floor(pixels)).sum() >= 20, "the case should sit on many kinks"
    _compare(case, dtype, simulated_cuda=False)

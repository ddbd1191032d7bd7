"""``MSDeformAttn`` and ``DeformableEncoderLayer``: finite-difference proofs of the gradients of
every input and every parameter on the CPU tiers (and a real GPU), with 2-d points and 4-d
boxes as reference points and with a padding mask; agreement with a torch reimplementation
of Deformable DETR's modules after loading their state dicts; the paper's initialisation; what
the padding mask and the level embedding do; the encoder's inputs (reference points, sine
positional encoding); and the bad-input rules.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scratchvision.nn.deformable_attention import MSDeformAttn, grid_offsets_bias
from scratchvision.nn.deformable_encoder import (
    DeformableEncoderLayer, encoder_reference_points, sine_position_encoding,
)
from scratchvision.ops import ms_deform_attn
from scratchvision.verify.ms_deform_attn import grid_sample_formulation

from layer_checks import check_layer
from tiers import available_tiers, awkward_layouts

#: the CUDA simulator is far too slow for finite differences of whole layers; a real GPU runs
GRADIENT_TIERS = available_tiers(simulated_cuda=False)

# small sizes: d_model 8 = 2 heads of 4 channels, 2 levels, 2 points; the second level is one
# pixel high, so the per-tap zero padding above and below it is exercised
D_MODEL, N_HEADS, N_LEVELS, N_POINTS, D_FFN = 8, 2, 2, 2, 12
SHAPES = np.array([[2, 3], [1, 2]])  # (H_l, W_l)
STARTS = ms_deform_attn.level_start_index_of(SHAPES)
N_POSITIONS = 8  # S = 2*3 + 1*2
N_BATCH, N_QUERIES = 2, 3


def perturb_parameters(layer, rng: np.random.Generator) -> None:
    """Add ``U(-0.5, 0.5)`` noise to every parameter.

    At initialisation ``sampling_offsets.weight`` is zero and its bias holds small integers (the
    grid-like pattern), so a query whose reference point is a pixel centre samples exactly on
    pixel centres: the kinks of bilinear interpolation, where a central difference straddles
    two linear pieces and disagrees with the one-sided derivative the op returns. Every
    attention weight is also equal there (a zero attention_weights layer), which would hide a
    softmax backward that mixes up its entries. Random noise on every parameter puts each
    sampled coordinate at a random real number, typically ~1e-2 from the nearest kink,
    four orders of magnitude more than gradcheck's 1e-6 step (the seeds are fixed, so the
    draw is the same on every run), and makes every weight different.
    """
    for param in layer.parameters():
        param.data += rng.uniform(-0.5, 0.5, param.shape)


def padding_mask() -> np.ndarray:
    """(N, S) bool: image 0 unpadded; image 1 padded in its right column on level 0 and in
    its right pixel on level 1 (the layout of a narrower image padded to the batch's size)."""
    mask = np.zeros((N_BATCH, N_POSITIONS), dtype=bool)
    mask[1, [2, 5, 7]] = True
    return mask


def reference_points(rng, n_queries: int, kind: int) -> np.ndarray:
    """(N, Lq, L, 2) points or (N, Lq, L, 4) boxes, random, mostly inside [0, 1]^2."""
    if kind == 2:
        return rng.uniform(0.05, 0.95, (N_BATCH, n_queries, N_LEVELS, 2))
    centres = rng.uniform(0.2, 0.8, (N_BATCH, n_queries, N_LEVELS, 2))
    sizes = rng.uniform(0.1, 0.6, (N_BATCH, n_queries, N_LEVELS, 2))
    return np.concatenate([centres, sizes], axis=-1)


def attn_inputs(seed: int, kind: int = 2, masked: bool = False):
    """``(query, reference_points, input_flatten, fixed keyword arguments)`` of MSDeformAttn."""
    rng = np.random.default_rng(seed)
    query = rng.uniform(-1, 1, (N_BATCH, N_QUERIES, D_MODEL))
    flat = rng.uniform(-1, 1, (N_BATCH, N_POSITIONS, D_MODEL))
    fixed = {"input_spatial_shapes": SHAPES, "input_level_start_index": STARTS,
             "input_padding_mask": padding_mask() if masked else None}
    return query, reference_points(rng, N_QUERIES, kind), flat, fixed


def encoder_inputs(seed: int, masked: bool = False):
    """``(src, pos, reference_points, fixed keyword arguments)`` of DeformableEncoderLayer."""
    rng = np.random.default_rng(seed)
    src = rng.uniform(-1, 1, (N_BATCH, N_POSITIONS, D_MODEL))
    pos = rng.uniform(-1, 1, (N_BATCH, N_POSITIONS, D_MODEL))
    ref = np.broadcast_to(encoder_reference_points(SHAPES),
                          (N_BATCH, N_POSITIONS, N_LEVELS, 2)).copy()
    fixed = {"spatial_shapes": SHAPES, "level_start_index": STARTS,
             "padding_mask": padding_mask() if masked else None}
    return src, pos, ref, fixed


def make_attn(tier="numpy", seed=0) -> MSDeformAttn:
    rng = np.random.default_rng(seed)
    layer = MSDeformAttn(D_MODEL, N_LEVELS, N_HEADS, N_POINTS, rng=rng, backend=tier)
    perturb_parameters(layer, rng)
    return layer


def make_encoder(tier="numpy", seed=0) -> DeformableEncoderLayer:
    rng = np.random.default_rng(seed)
    layer = DeformableEncoderLayer(D_MODEL, D_FFN, N_LEVELS, N_HEADS, N_POINTS, rng=rng,
                                   backend=tier)
    perturb_parameters(layer, rng)
    return layer


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("tier", GRADIENT_TIERS)
@pytest.mark.parametrize("kind, masked", [(2, False), (4, False), (2, True), (4, True)],
                         ids=["points", "boxes", "points-masked", "boxes-masked"])
def test_msdeformattn_gradients_match_finite_differences(tier, kind, masked):
    """query (through the offsets and the attention weights), reference_points (points or
    boxes), input_flatten (through value_proj and the mask) and all eight parameters."""
    layer = make_attn(tier, seed=kind + 10 * masked)
    query, ref, flat, fixed = attn_inputs(seed=kind + 10 * masked, kind=kind, masked=masked)
    check_layer(layer, query, ref, flat, input_names=("query", "reference_points",
                                                      "input_flatten"),
                fixed=fixed).raise_if_failed()


@pytest.mark.parametrize("tier", GRADIENT_TIERS)
@pytest.mark.parametrize("masked", [False, True], ids=["unpadded", "masked"])
def test_encoder_layer_gradients_match_finite_differences(tier, masked):
    """src (residual, features and queries), pos, reference_points, level_embed and every
    parameter of the attention, the norms and the FFN."""
    layer = make_encoder(tier, seed=3 + masked)
    src, pos, ref, fixed = encoder_inputs(seed=3 + masked, masked=masked)
    check_layer(layer, src, pos, ref, input_names=("src", "pos", "reference_points"),
                fixed=fixed).raise_if_failed()


# ----------------------------------------------------------------------------- torch oracle

def _torch_reference(torch):
    """Deformable DETR's MSDeformAttn and encoder layer (ReLU, no dropout) written with torch
    autograd, the core by the grid_sample formulation; built inside a function so that the
    module imports without torch."""
    F = torch.nn.functional

    class TorchMSDeformAttn(torch.nn.Module):
        def __init__(self, d_model, n_levels, n_heads, n_points):
            super().__init__()
            self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
            samples = n_heads * n_levels * n_points
            self.sampling_offsets = torch.nn.Linear(d_model, 2 * samples)
            self.attention_weights = torch.nn.Linear(d_model, samples)
            self.value_proj = torch.nn.Linear(d_model, d_model)
            self.output_proj = torch.nn.Linear(d_model, d_model)

        def forward(self, query, ref, flat, shapes, mask=None):
            n, lq, c = query.shape
            m, lvl, p = self.n_heads, self.n_levels, self.n_points
            value = self.value_proj(flat)
            if mask is not None:
                value = value.masked_fill(mask[..., None], 0.0)
            value = value.view(n, flat.shape[1], m, c // m)
            offsets = self.sampling_offsets(query).view(n, lq, m, lvl, p, 2)
            attn = F.softmax(self.attention_weights(query).view(n, lq, m, lvl * p), -1)
            attn = attn.view(n, lq, m, lvl, p)
            if ref.shape[-1] == 2:
                size = torch.stack([shapes[:, 1], shapes[:, 0]], -1).to(query.dtype)
                loc = ref[:, :, None, :, None, :] + offsets / size[:, None, :]
            else:
                loc = (ref[:, :, None, :, None, :2]
                       + offsets / p * ref[:, :, None, :, None, 2:] * 0.5)
            return self.output_proj(grid_sample_formulation(value, shapes, loc, attn))

    class TorchEncoderLayer(torch.nn.Module):
        def __init__(self, d_model, d_ffn, n_levels, n_heads, n_points):
            super().__init__()
            self.level_embed = torch.nn.Parameter(torch.randn(n_levels, d_model))
            self.self_attn = TorchMSDeformAttn(d_model, n_levels, n_heads, n_points)
            self.norm1 = torch.nn.LayerNorm(d_model)
            self.linear1 = torch.nn.Linear(d_model, d_ffn)
            self.linear2 = torch.nn.Linear(d_ffn, d_model)
            self.norm2 = torch.nn.LayerNorm(d_model)

        def forward(self, src, pos, ref, shapes, mask=None):
            sizes = (shapes[:, 0] * shapes[:, 1]).tolist()
            levels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
            query = src + pos + self.level_embed[levels]
            src = self.norm1(src + self.self_attn(query, ref, src, shapes, mask))
            return self.norm2(src + self.linear2(F.relu(self.linear1(src))))

    return TorchMSDeformAttn, TorchEncoderLayer


def _randomised(torch, module):
    """The module in float64 with every parameter moved by U(-0.5, 0.5): off the kinks, as
    :func:`perturb_parameters` explains."""
    module = module.double()
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.rand_like(param) - 0.5)
    return module


def _compare_with_torch(torch, ours, reference, inputs, fixed_torch, fixed_ours):
    """Load reference's state_dict into ours; compare outputs, input gradients (in order) and
    every parameter's gradient."""
    ours.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    tensors = [torch.tensor(x, requires_grad=True) for x in inputs]
    y_torch = reference(*tensors, *fixed_torch)
    gy = np.random.default_rng(7).standard_normal(tuple(y_torch.shape))
    y_torch.backward(torch.tensor(gy))
    np.testing.assert_allclose(ours(*inputs, *fixed_ours), y_torch.detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    ours.zero_grad()
    for grad, tensor in zip(ours.backward(gy), tensors):
        np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-9, atol=1e-11)
    torch_params = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        np.testing.assert_allclose(param.grad, torch_params[name].grad.numpy(), rtol=1e-9,
                                   atol=1e-11, err_msg=name)


@pytest.mark.parametrize("kind, masked", [(2, False), (4, True)], ids=["points", "boxes-masked"])
def test_msdeformattn_loads_torch_and_matches_it(kind, masked):
    torch = pytest.importorskip("torch")
    torch_attn, _ = _torch_reference(torch)
    torch.manual_seed(0)
    reference = _randomised(torch, torch_attn(D_MODEL, N_LEVELS, N_HEADS, N_POINTS))
    query, ref, flat, fixed = attn_inputs(seed=5, kind=kind, masked=masked)
    mask = fixed["input_padding_mask"]
    _compare_with_torch(torch, MSDeformAttn(D_MODEL, N_LEVELS, N_HEADS, N_POINTS,
                                            backend="loop"), reference, (query, ref, flat),
                        (torch.tensor(SHAPES), None if mask is None else torch.tensor(mask)),
                        (SHAPES, STARTS, mask))


def test_encoder_layer_loads_torch_and_matches_it():
    torch = pytest.importorskip("torch")
    _, torch_encoder = _torch_reference(torch)
    torch.manual_seed(1)
    reference = _randomised(torch, torch_encoder(D_MODEL, D_FFN, N_LEVELS, N_HEADS, N_POINTS))
    src, pos, ref, fixed = encoder_inputs(seed=6, masked=True)
    ours = DeformableEncoderLayer(D_MODEL, D_FFN, N_LEVELS, N_HEADS, N_POINTS, backend="loop")
    _compare_with_torch(torch, ours, reference, (src, pos, ref),
                        (torch.tensor(SHAPES), torch.tensor(fixed["padding_mask"])),
                        (SHAPES, STARTS, fixed["padding_mask"]))


# ----------------------------------------------------------------------------- initialisation

def test_grid_offsets_bias_points_every_head_its_own_way():
    """8 heads: the 8 directions of the compass, scaled so the larger component is 1; the same
    on every level; point k goes k + 1 steps."""
    compass = np.array([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]])
    bias = grid_offsets_bias(8, 3, 4).reshape(8, 3, 4, 2)
    expected = compass[:, None, None, :] * np.arange(1, 5)[None, None, :, None]
    np.testing.assert_allclose(bias, np.broadcast_to(expected, bias.shape), atol=1e-12)


def test_msdeformattn_init_follows_the_paper():
    layer = MSDeformAttn(256, 4, 8, 4, rng=0)
    assert [name for name, _ in layer.named_parameters()] == [
        "sampling_offsets.weight", "sampling_offsets.bias", "attention_weights.weight",
        "attention_weights.bias", "value_proj.weight", "value_proj.bias",
        "output_proj.weight", "output_proj.bias"]
    assert layer.sampling_offsets.weight.shape == (8 * 4 * 4 * 2, 256)
    assert layer.attention_weights.weight.shape == (8 * 4 * 4, 256)
    assert not layer.sampling_offsets.weight.data.any()
    np.testing.assert_array_equal(layer.sampling_offsets.bias.data, grid_offsets_bias(8, 4, 4))
    for param in (layer.attention_weights.weight, layer.attention_weights.bias,
                  layer.value_proj.bias, layer.output_proj.bias):
        assert not param.data.any()
    bound = math.sqrt(6 / (256 + 256))  # Xavier-uniform
    for proj in (layer.value_proj, layer.output_proj):
        assert np.abs(proj.weight.data).max() <= bound
        np.testing.assert_allclose(proj.weight.data.var(), bound**2 / 3, rtol=0.05)


def test_msdeformattn_starts_with_uniform_attention_on_the_grid():
    """At initialisation every query samples ``ref + grid / (W_l, H_l)`` with attention
    1 / (L * P) on every point, whatever the query's content."""
    layer = MSDeformAttn(D_MODEL, N_LEVELS, N_HEADS, N_POINTS, rng=0, backend="loop")
    query, ref, flat, fixed = attn_inputs(seed=8)
    grid = grid_offsets_bias(N_HEADS, N_LEVELS, N_POINTS).reshape(N_HEADS, N_LEVELS, N_POINTS,
                                                                   2)
    size = SHAPES[:, ::-1]  # (W_l, H_l)
    locations = ref[:, :, None, :, None, :] + grid / size[:, None, :]  # (N, Lq, M, L, P, 2)
    uniform = np.full(locations.shape[:-1], 1.0 / (N_LEVELS * N_POINTS))
    value = (flat @ layer.value_proj.weight.data.T).reshape(N_BATCH, N_POSITIONS, N_HEADS, -1)
    core = ms_deform_attn.forward(value, SHAPES, STARTS, locations, uniform, backend="loop")
    expected = core @ layer.output_proj.weight.data.T
    np.testing.assert_allclose(layer(query, ref, flat, SHAPES, STARTS), expected, rtol=1e-12,
                               atol=1e-14)
    got_locations, got_weights = layer.sampling_locations_and_weights(query, ref, SHAPES)
    np.testing.assert_allclose(got_locations, locations, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(got_weights, uniform, rtol=1e-15)


def test_sampling_locations_and_weights_are_what_forward_samples():
    """forward = output_proj(op(value, locations, weights)) with the reported locations and
    weights; asking for them between forward and backward leaves the backward unchanged."""
    layer = make_attn("loop")
    query, ref, flat, fixed = attn_inputs(seed=15, kind=4)
    out = layer(query, ref, flat, **fixed)
    gy = np.random.default_rng(1).standard_normal(out.shape)
    expected_grads = layer.backward(gy)
    layer(query, ref, flat, **fixed)
    locations, weights = layer.sampling_locations_and_weights(query[:1], ref[:1], SHAPES)
    np.testing.assert_allclose(weights.sum(axis=(-2, -1)), 1.0, rtol=1e-14)
    for got, expected in zip(layer.backward(gy), expected_grads):
        np.testing.assert_array_equal(got, expected)
    proj = layer.value_proj
    value = (flat[:1] @ proj.weight.data.T + proj.bias.data).reshape(1, N_POSITIONS, N_HEADS, -1)
    core = ms_deform_attn.forward(value, SHAPES, STARTS, locations, weights, backend="loop")
    proj = layer.output_proj
    np.testing.assert_allclose(core @ proj.weight.data.T + proj.bias.data, out[:1], rtol=1e-12,
                               atol=1e-14)


def test_encoder_layer_init_and_names():
    layer = DeformableEncoderLayer(16, 32, 3, 4, 2, rng=0)
    names = [name for name, _ in layer.named_parameters()]
    assert names[0] == "level_embed" and layer.level_embed.shape == (3, 16)
    assert names[1:9] == ["self_attn." + name for name, _ in layer.self_attn.named_parameters()]
    assert names[9:] == ["norm1.weight", "norm1.bias", "linear1.weight", "linear1.bias",
                         "linear2.weight", "linear2.bias", "norm2.weight", "norm2.bias"]
    assert not layer.self_attn.sampling_offsets.weight.data.any()
    bound = math.sqrt(6 / (16 + 32))
    assert np.abs(layer.linear1.weight.data).max() <= bound
    assert np.abs(layer.linear2.weight.data).max() <= bound
    assert (layer.norm1.weight.data == 1).all() and not layer.norm2.bias.data.any()


# ----------------------------------------------------------------------------- behaviour

def test_padding_mask_hides_padded_positions():
    """MSDeformAttn: what input_flatten holds at padded positions changes nothing, and they
    get zero gradient. Encoder: a padded position's features reach only its own output (as a
    query and through the residual), never another position's."""
    mask = padding_mask()
    query, ref, flat, fixed = attn_inputs(seed=9, masked=True)
    attn = make_attn()
    out = attn(query, ref, flat, **fixed)
    changed = flat.copy()
    changed[mask] += 10.0
    np.testing.assert_allclose(attn(query, ref, changed, **fixed), out, rtol=1e-13, atol=1e-13)
    grad_flat = attn.backward(np.ones_like(out))[2]
    assert not grad_flat[mask].any() and grad_flat[~mask].any()

    encoder = make_encoder()
    src, pos, ref, fixed = encoder_inputs(seed=9, masked=True)
    out = encoder(src, pos, ref, **fixed)
    changed = src.copy()
    changed[mask] += 10.0
    out_changed = encoder(changed, pos, ref, **fixed)
    np.testing.assert_allclose(out_changed[~mask], out[~mask], rtol=1e-12, atol=1e-12)
    assert not np.allclose(out_changed[mask], out[mask])


def test_level_embedding_reaches_every_level():
    """The forward adds level_embed[l] to the queries of level l's positions (compared with the
    submodules composed by hand), and every row of level_embed gets a gradient."""
    layer = make_encoder()
    src, pos, ref, fixed = encoder_inputs(seed=11)
    out = layer(src, pos, ref, **fixed)
    levels = np.repeat(np.arange(N_LEVELS), SHAPES[:, 0] * SHAPES[:, 1])  # (S,)
    query = src + pos + layer.level_embed.data[levels]
    x = layer.norm1(src + layer.self_attn(query, ref, src, SHAPES, STARTS))
    expected = layer.norm2(x + layer.linear2(np.maximum(layer.linear1(x), 0)))
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)
    layer(src, pos, ref, **fixed)  # the submodules now remember this forward again
    layer.zero_grad()
    layer.backward(np.random.default_rng(0).standard_normal(out.shape))
    assert (np.abs(layer.level_embed.grad).sum(axis=1) > 1e-6).all()


def test_backend_is_passed_through():
    layer = DeformableEncoderLayer(D_MODEL, D_FFN, N_LEVELS, N_HEADS, N_POINTS, rng=0,
                                   backend="loop")
    assert layer.self_attn.backend == "loop"
    layer.set_backend("numpy")
    assert layer.backend == layer.self_attn.backend == "numpy"


def test_float32_layers_give_float32():
    layer = MSDeformAttn(D_MODEL, N_LEVELS, N_HEADS, N_POINTS, rng=0, dtype=np.float32,
                         backend="loop")
    query, ref, flat, fixed = attn_inputs(seed=12, kind=4, masked=True)
    out = layer(*(a.astype(np.float32) for a in (query, ref, flat)), **fixed)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.backward(np.ones_like(out)))
    encoder = DeformableEncoderLayer(D_MODEL, D_FFN, N_LEVELS, N_HEADS, N_POINTS, rng=0,
                                     dtype=np.float32, backend="loop")
    src, pos, ref, fixed = encoder_inputs(seed=12)
    out = encoder(*(a.astype(np.float32) for a in (src, pos, ref)), **fixed)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in encoder.backward(np.ones_like(out)))


def test_awkward_layouts_just_work():
    """Fortran-ordered, negative-stride, strided, transposed and read-only inputs give the
    results of plain arrays and are never written to."""
    layer = make_attn("loop")
    query, ref, flat, fixed = attn_inputs(seed=13)
    out = layer(query, ref, flat, **fixed)
    for kind, (q, r, f) in zip(awkward_layouts(query), zip(*(awkward_layouts(a).values()
                                                             for a in (query, ref, flat)))):
        before = [a.copy() for a in (q, r, f)]
        np.testing.assert_allclose(layer(q, r, f, **fixed), out, rtol=1e-13, err_msg=kind)
        for a, b in zip((q, r, f), before):
            np.testing.assert_array_equal(a, b, err_msg=kind)


def test_zero_queries():
    layer = make_attn("loop")
    query, ref, flat, fixed = attn_inputs(seed=14)
    out = layer(query[:, :0], ref[:, :0], flat, **fixed)
    assert out.shape == (N_BATCH, 0, D_MODEL)
    grad_query, grad_ref, grad_flat = layer.backward(out)
    assert grad_query.shape == (N_BATCH, 0, D_MODEL) and grad_ref.shape == (N_BATCH, 0, 2, 2)
    assert grad_flat.shape == flat.shape and not grad_flat.any()


# ----------------------------------------------------------------------------- encoder inputs

def test_encoder_reference_points_are_pixel_centres():
    ref = encoder_reference_points(SHAPES)
    assert ref.shape == (1, N_POSITIONS, N_LEVELS, 2)
    # level 0 (2 x 3): position 4 is row 1, column 1; level 1 (1 x 2): position 7 is (0, 1)
    np.testing.assert_allclose(ref[0, 4], [[1.5 / 3, 1.5 / 2]] * N_LEVELS)
    np.testing.assert_allclose(ref[0, 7], [[1.5 / 2, 0.5 / 1]] * N_LEVELS)


def test_encoder_reference_points_follow_the_valid_area():
    """With valid ratios (r_w, r_h), a centre is measured in units of the valid area of its
    own level, then mapped to every level by that level's ratios."""
    ratios = np.array([[[1.0, 1.0], [1.0, 1.0]], [[2 / 3, 1.0], [0.5, 1.0]]])  # (N, L, 2)
    ref = encoder_reference_points(SHAPES, ratios)
    assert ref.shape == (2, N_POSITIONS, N_LEVELS, 2)
    # image 1, level 0 position 1 (row 0, column 1): x = 1.5 / (2/3 * 3) = 0.75 in valid units
    np.testing.assert_allclose(ref[1, 1], [[0.75 * 2 / 3, 0.25], [0.75 * 0.5, 0.25]])
    np.testing.assert_allclose(ref[0], encoder_reference_points(SHAPES)[0])


def test_sine_position_encoding_formula():
    """Every channel of a padded map against the formula written out per pixel."""
    mask = np.zeros((2, 3, 4), dtype=bool)
    mask[1, :, 3] = True  # image 1 is 3 wide
    mask[1, 2, :] = True  # and 2 high
    channels, eps, temperature = 8, 1e-6, 10000.0
    pos = sine_position_encoding(mask, channels)
    assert pos.shape == (2, 12, channels)
    for n in range(2):
        for i in range(3):
            for j in range(4):
                if mask[n, i, j]:
                    continue  # the encoding of a padded pixel is never used
                # 1-based row (column) number among the unpadded pixels of the column (row),
                # moved to the pixel centre and divided by the valid height (width)
                y = (np.sum(~mask[n, :i + 1, j]) - 0.5) / (np.sum(~mask[n, :, j]) + eps)
                x = (np.sum(~mask[n, i, :j + 1]) - 0.5) / (np.sum(~mask[n, i, :]) + eps)
                expected = []
                for coordinate in (y * 2 * math.pi, x * 2 * math.pi):
                    for k in range(channels // 4):
                        phase = coordinate / temperature ** (2 * k / (channels // 2))
                        expected += [math.sin(phase), math.cos(phase)]
                np.testing.assert_allclose(pos[n, i * 4 + j], expected, rtol=1e-12,
                                           atol=1e-15)


# ----------------------------------------------------------------------------- bad input

def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="n_heads must divide d_model"):
        MSDeformAttn(10, 2, 3, 2)
    with pytest.raises(ValueError, match="n_heads must divide d_model"):
        DeformableEncoderLayer(10, 16, 2, 4, 2)
    with pytest.raises(ValueError, match="n_points must be a positive integer"):
        MSDeformAttn(8, 2, 2, 0)
    with pytest.raises(ValueError, match="backend must be one of"):
        MSDeformAttn(8, 2, 2, 2, backend="torch")
    with pytest.raises(ValueError, match="d_ffn must be a positive integer"):
        DeformableEncoderLayer(8, 0)


@pytest.mark.parametrize("change, error, message", [
    (dict(ref_last=3), ValueError, r"reference_points must have a last dimension of size 2"),
    (dict(ref_levels=3), ValueError, r"reference_points must have shape \(2, 3, 2, 2\)"),
    (dict(shapes=np.array([[2, 3], [1, 2], [1, 1]])), ValueError,
     "input_spatial_shapes must have n_levels = 2 rows"),
    (dict(shapes=np.array([[2, 3], [1, 3]])), ValueError, "spatial_shapes must cover"),
    (dict(shapes=SHAPES.astype(float)), TypeError, "input_spatial_shapes must be an integer"),
    (dict(starts=np.array([0, 5])), ValueError, "level_start_index must be"),
    (dict(query_channels=6), ValueError, "query must have a last dimension of size 8"),
    (dict(flat_batch=1), ValueError, "query and input_flatten must have the same batch size"),
    (dict(mask=np.zeros((N_BATCH, N_POSITIONS))), TypeError, "input_padding_mask must be a bool"),
    (dict(mask=np.zeros((N_BATCH, 5), bool)), ValueError, "input_padding_mask must have shape"),
])
def test_msdeformattn_input_errors_name_the_argument(change, error, message):
    layer = MSDeformAttn(D_MODEL, N_LEVELS, N_HEADS, N_POINTS, rng=0, backend="loop")
    rng = np.random.default_rng(0)
    query = rng.uniform(-1, 1, (N_BATCH, N_QUERIES, change.get("query_channels", D_MODEL)))
    ref = rng.uniform(0, 1, (N_BATCH, N_QUERIES, change.get("ref_levels", N_LEVELS),
                             change.get("ref_last", 2)))
    flat = rng.uniform(-1, 1, (change.get("flat_batch", N_BATCH), N_POSITIONS, D_MODEL))
    with pytest.raises(error, match=message):
        layer(query, ref, flat, change.get("shapes", SHAPES), change.get("starts", STARTS),
              change.get("mask"))


def test_encoder_input_errors_name_the_argument():
    layer = DeformableEncoderLayer(D_MODEL, D_FFN, N_LEVELS, N_HEADS, N_POINTS, rng=0,
                                   backend="loop")
    src, pos, ref, fixed = encoder_inputs(seed=0)
    with pytest.raises(ValueError, match=r"pos must have shape \(2, 8, 8\)"):
        layer(src, pos[:, :4], ref, **fixed)
    with pytest.raises(ValueError, match="spatial_shapes must have n_levels = 2 rows"):
        layer(src, pos, ref, np.array([[2, 4]]), np.array([0]))
    with pytest.raises(ValueError, match="reference_points must have a last dimension"):
        layer(src, pos, np.concatenate([ref, ref[..., :1]], axis=-1), **fixed)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        DeformableEncoderLayer(D_MODEL, D_FFN, N_LEVELS, N_HEADS, N_POINTS).backward(src)
    with pytest.raises(ValueError, match="d_model must be a multiple of 4"):
        sine_position_encoding(np.zeros((1, 2, 2), bool), 6)
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        sine_position_encoding(np.zeros((1, 2, 2)), 8)
    with pytest.raises(ValueError, match="mask must have 3 dimensions"):
        sine_position_encoding(np.zeros((2, 2), bool), 8)
    with pytest.raises(ValueError, match="valid_ratios must have shape"):
        encoder_reference_points(SHAPES, np.ones((2, 3, 2)))

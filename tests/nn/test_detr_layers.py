"""DETR's remaining layers: ``GroupNorm``, ``MLP``, ``PositionEmbeddingSine``, ``Dropout`` and
``DeformableDecoderLayer``.

Finite-difference proofs (float64) of the gradient of every input and every parameter;
torch as the oracle for outputs and gradients with the same weights (torch.nn.GroupNorm, a torch
MLP, Deformable DETR's position-encoding formula and decoder layer rebuilt from torch.nn parts
with the grid_sample formulation of MSDeformAttn); parameter names, order and initialisation;
the dropout modes; dtypes and bad input. The encoder layer's torch oracle lives in
``test_deformable_attention.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from scratchvision import gradcheck
from scratchvision.nn import (MLP, DeformableDecoderLayer, Dropout, GroupNorm, LayerNorm,
                              PositionEmbeddingSine, sine_position_encoding)
from scratchvision.ops import ms_deform_attn
from scratchvision.verify.ms_deform_attn import grid_sample_formulation

from layer_checks import check_layer

#: float64 agreement with torch: the same arithmetic in a different order
RTOL, ATOL = 1e-10, 1e-12


def perturb(layer, rng: np.random.Generator, scale: float = 0.5) -> None:
    """Add ``U(-scale, scale)`` noise to every parameter: norms leave ones / zeros (where a
    wrong weight gradient could hide), and MSDeformAttn's sampled coordinates leave the pixel
    centres, the kinks of bilinear interpolation (see test_deformable_attention.py)."""
    for param in layer.parameters():
        param.data += rng.uniform(-scale, scale, param.shape)


def torch_randomised(torch, module):
    """The torch module in float64, every parameter moved by U(-0.5, 0.5), in eval mode."""
    module = module.double().eval()
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.rand_like(param) - 0.5)
    return module


def load_from_torch(ours, reference) -> None:
    ours.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})


def compare_with_torch(torch, ours, reference, inputs, fixed_torch=(), fixed_ours=(),
                       seed: int = 7) -> None:
    """Same output, same input gradients (in order) and same parameter gradients for a random
    upstream gradient; ours has reference's weights (``load_from_torch``) already."""
    tensors = [torch.tensor(x, requires_grad=True) for x in inputs]
    y_torch = reference(*tensors, *fixed_torch)
    gy = np.random.default_rng(seed).standard_normal(tuple(y_torch.shape))
    y_torch.backward(torch.tensor(gy))
    np.testing.assert_allclose(ours(*inputs, *fixed_ours), y_torch.detach().numpy(),
                               rtol=RTOL, atol=ATOL)
    ours.zero_grad()
    grads = ours.backward(gy)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert len(grads) == len(tensors)
    for i, (grad, tensor) in enumerate(zip(grads, tensors)):
        np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-9, atol=1e-11,
                                   err_msg=f"input {i}")
    torch_params = dict(reference.named_parameters())
    assert [name for name, _ in ours.named_parameters()] == list(torch_params)
    for name, param in ours.named_parameters():
        np.testing.assert_allclose(param.grad, torch_params[name].grad.numpy(), rtol=1e-9,
                                   atol=1e-11, err_msg=name)


# ============================================================================ GroupNorm


@given(n=st.integers(1, 2), groups=st.integers(1, 3), per_group=st.integers(1, 2),
       spatial=st.lists(st.integers(1, 3), min_size=0, max_size=2), affine=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_group_norm_gradients_match_finite_differences(n, groups, per_group, spatial, affine,
                                                       seed):
    """x (N, C, *) with 0-2 spatial dimensions and, with affine, weight and bias. One channel
    per group and no spatial axis is the degenerate row (xhat = 0)."""
    event(f"{len(spatial)} spatial dimension(s), affine={affine}")
    rng = np.random.default_rng(seed)
    layer = GroupNorm(groups, groups * per_group, affine=affine)
    perturb(layer, rng)
    x = 2 * rng.standard_normal((n, groups * per_group, *spatial)) + 1
    check_layer(layer, x).raise_if_failed()


@pytest.mark.parametrize("shape, groups", [((2, 6, 3, 4), 3), ((3, 4), 2), ((2, 6, 5), 6),
                                           ((1, 4, 2, 2, 3), 1)],
                         ids=["maps", "no-spatial", "instance-norm", "3-d, layer-norm"])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_torch(shape, groups, affine):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    reference = torch.nn.GroupNorm(groups, shape[1], eps=1e-3, affine=affine).double()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.tensor(rng.uniform(-0.5, 0.5, tuple(param.shape))))
    ours = GroupNorm(groups, shape[1], eps=1e-3, affine=affine)
    load_from_torch(ours, reference)
    compare_with_torch(torch, ours, reference, [3 * rng.standard_normal(shape) - 1])


def test_group_norm_parameters_and_special_cases():
    """torch's names and initial values; G = 1 is LayerNorm over (C, *), G = C normalises each
    channel alone; statistics never mix the samples of a batch."""
    layer = GroupNorm(2, 4, dtype=np.float32)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    np.testing.assert_array_equal(layer.weight.data, np.ones(4, np.float32))
    np.testing.assert_array_equal(layer.bias.data, np.zeros(4, np.float32))
    assert GroupNorm(2, 4, affine=False).state_dict() == {}

    x = np.random.default_rng(2).standard_normal((2, 4, 3, 3))
    as_layer_norm = LayerNorm(36, elementwise_affine=False)(x.reshape(2, 36)).reshape(x.shape)
    np.testing.assert_allclose(GroupNorm(1, 4)(x), as_layer_norm, rtol=1e-12, atol=1e-14)
    per_channel = (x - x.mean(axis=(2, 3), keepdims=True)) / np.sqrt(
        x.var(axis=(2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(GroupNorm(4, 4)(x), per_channel, rtol=1e-12, atol=1e-14)
    changed = x.copy()
    changed[1] *= 10
    np.testing.assert_array_equal(GroupNorm(2, 4)(changed)[0], GroupNorm(2, 4)(x)[0])


def test_group_norm_dtypes_and_empty_batch():
    layer = GroupNorm(2, 4, dtype=np.float32)
    x = np.random.default_rng(3).standard_normal((2, 4, 3)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and layer.backward(np.ones_like(y)).dtype == np.float32
    empty = GroupNorm(2, 4)(np.zeros((0, 4, 3)))
    assert empty.shape == (0, 4, 3)


def test_group_norm_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="num_groups must divide num_channels"):
        GroupNorm(3, 4)
    with pytest.raises(ValueError, match="eps must be positive"):
        GroupNorm(2, 4, eps=0)
    with pytest.raises(TypeError, match="affine must be True or False"):
        GroupNorm(2, 4, affine=1)
    layer = GroupNorm(2, 4)
    with pytest.raises(ValueError, match=r"x must have num_channels = 4 channels"):
        layer(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="x must have at least 2 dimensions"):
        layer(np.zeros(4))
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        layer(np.zeros((2, 4), dtype=int))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        GroupNorm(2, 4).backward(np.zeros((2, 4)))


# ============================================================================ MLP


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_mlp_gradients_match_finite_differences(num_layers):
    rng = np.random.default_rng(num_layers)
    layer = MLP(3, 5, 2, num_layers, rng=rng)
    perturb(layer, rng, scale=0.2)
    check_layer(layer, rng.standard_normal((2, 3, 3))).raise_if_failed()


def test_mlp_matches_deformable_detrs():
    """Deformable DETR's MLP (the box head is MLP(C, C, 4, 3)), written here in torch."""
    torch = pytest.importorskip("torch")

    class TorchMLP(torch.nn.Module):
        def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
            super().__init__()
            widths = [hidden_dim] * (num_layers - 1)
            self.layers = torch.nn.ModuleList(
                torch.nn.Linear(a, b) for a, b in zip([input_dim] + widths,
                                                      widths + [output_dim]))

        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                x = torch.relu(x) if i < len(self.layers) - 1 else x
            return x

    torch.manual_seed(0)
    reference = torch_randomised(torch, TorchMLP(6, 8, 4, 3))
    ours = MLP(6, 8, 4, 3, rng=0)
    load_from_torch(ours, reference)
    compare_with_torch(torch, ours, reference,
                       [np.random.default_rng(4).standard_normal((2, 5, 6))])


def test_mlp_names_shapes_and_errors():
    layer = MLP(6, 8, 4, 3, rng=0, dtype=np.float32)
    assert {name: p.shape for name, p in layer.named_parameters()} == {
        "layers.0.weight": (8, 6), "layers.0.bias": (8,), "layers.1.weight": (8, 8),
        "layers.1.bias": (8,), "layers.2.weight": (4, 8), "layers.2.bias": (4,)}
    assert all(p.dtype == np.float32 for p in layer.parameters())
    single = MLP(6, 99, 4, 1, rng=0)
    assert [name for name, _ in single.named_parameters()] == ["layers.0.weight",
                                                               "layers.0.bias"]
    x = np.random.default_rng(5).standard_normal((3, 6))
    np.testing.assert_allclose(single(x), x @ single.layers[0].weight.data.T
                               + single.layers[0].bias.data, rtol=1e-14)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        MLP(6, 8, 4, 0)
    with pytest.raises(ValueError, match="x must have a last dimension of size 6"):
        layer(np.zeros((2, 5), np.float32))


# ============================================================================ position encoding


def torch_position_embedding_sine(torch, mask, num_pos_feats, temperature, normalize, scale):
    """Deformable DETR's PositionEmbeddingSine.forward, in float64: (N, H, W) bool tensor ->
    (N, 2F, H, W)."""
    valid = (~mask).to(torch.float64)
    rows, cols = valid.cumsum(1), valid.cumsum(2)  # 1-based counts of unpadded pixels
    if normalize:
        rows = (rows - 0.5) / (rows[:, -1:, :] + 1e-6) * scale
        cols = (cols - 0.5) / (cols[:, :, -1:] + 1e-6) * scale
    index = torch.arange(num_pos_feats, dtype=torch.float64)
    dim_t = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_pos_feats)

    def channels(embed):  # (N, H, W) -> (N, H, W, F): sin, cos, sin, cos, ...
        phase = embed[..., None] / dim_t
        return torch.stack([phase[..., 0::2].sin(), phase[..., 1::2].cos()], dim=4).flatten(3)

    return torch.cat([channels(rows), channels(cols)], dim=3).permute(0, 3, 1, 2)


def padded_mask() -> np.ndarray:
    """(3, 4, 5) bool: an unpadded image, one 3 high and 4 wide, one 1 high and 2 wide."""
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[1, 3:, :] = mask[1, :, 4:] = True
    mask[2, 1:, :] = mask[2, :, 2:] = True
    return mask


@pytest.mark.parametrize("num_pos_feats, temperature, normalize, scale", [
    (8, 10000, True, 2 * math.pi), (6, 20, True, 1.0), (4, 10000, False, 2 * math.pi)])
def test_position_embedding_sine_matches_deformable_detrs(num_pos_feats, temperature,
                                                          normalize, scale):
    torch = pytest.importorskip("torch")
    mask = padded_mask()
    ours = PositionEmbeddingSine(num_pos_feats, temperature, normalize, scale)(mask)
    expected = torch_position_embedding_sine(torch, torch.tensor(mask), num_pos_feats,
                                             temperature, normalize, scale).numpy()
    assert ours.shape == (3, 2 * num_pos_feats, 4, 5) and ours.flags.c_contiguous
    np.testing.assert_allclose(ours, expected, rtol=1e-13, atol=1e-14)


def test_position_embedding_sine_is_what_the_encoder_flattens():
    """sine_position_encoding(mask, C) is PositionEmbeddingSine(C / 2) with pixel (i, j) at
    flattened position i * W + j; the first channel pair of an unpadded pixel is
    (sin, cos) of its centre's normalised row."""
    mask = padded_mask()
    pos = PositionEmbeddingSine(4)(mask)  # (N, 8, H, W)
    flat = sine_position_encoding(mask, 8)  # (N, H*W, 8)
    np.testing.assert_array_equal(flat, pos.reshape(3, 8, 20).transpose(0, 2, 1))
    y = (2 - 0.5) / (3 + 1e-6) * 2 * math.pi  # image 1, row 1 of its 3 valid rows
    np.testing.assert_allclose(pos[1, :2, 1, 0], [math.sin(y), math.cos(y)], rtol=1e-14)


def test_position_embedding_sine_has_no_parameters_or_backward():
    layer = PositionEmbeddingSine(4, dtype=np.float32)
    assert layer.state_dict() == {}
    assert layer(np.zeros((1, 2, 3), bool)).dtype == np.float32
    with pytest.raises(RuntimeError, match="depends only on the boolean padding mask"):
        layer.backward(np.zeros((1, 8, 2, 3)))
    with pytest.raises(ValueError, match="num_pos_feats must be even"):
        PositionEmbeddingSine(5)
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        layer(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="mask must have 3 dimensions"):
        layer(np.zeros((2, 3), bool))


# ============================================================================ Dropout


def test_dropout_is_the_identity_in_eval_mode_and_with_p_zero():
    x = np.random.default_rng(6).standard_normal((3, 4))
    for layer in (Dropout(0.5, rng=0).eval(), Dropout(0.0, rng=0)):
        np.testing.assert_array_equal(layer(x), x)
        np.testing.assert_array_equal(layer.backward(2 * x), 2 * x)


def test_dropout_drops_scales_and_sends_the_gradient_through_the_same_mask():
    x = np.random.default_rng(7).uniform(1, 2, (200, 50))  # never 0: dropped = exactly 0
    layer = Dropout(0.3, rng=1)
    y = layer(x)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02  # 10,000 draws: the standard error is 0.005
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-15)
    grad = layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(grad != 0, kept)
    np.testing.assert_allclose(grad[kept], 1 / 0.7, rtol=1e-15)
    np.testing.assert_array_equal(Dropout(0.3, rng=1)(x), y)  # the seed fixes the masks
    assert not np.array_equal(layer(x), y)  # and each forward draws a new one
    assert not Dropout(1.0, rng=0)(x).any()
    with pytest.raises(ValueError, match=r"p must be in \[0.0, 1.0\]"):
        Dropout(1.5)


def test_dropout_backward_matches_finite_differences_with_the_mask_fixed():
    def forward(x):
        layer.generator = np.random.default_rng(3)  # the same mask on every call
        return layer(x)

    def backward(gy, x):
        forward(x)
        return (layer.backward(gy),)

    layer = Dropout(0.4)
    x = np.random.default_rng(8).standard_normal((4, 5))
    gradcheck(forward, backward, {"x": x}).raise_if_failed()


# ============================================================================ decoder layer

# d_model 8 = 2 heads of 4 channels, 2 levels (one of them a single row), 2 points
D_MODEL, N_HEADS, N_LEVELS, N_POINTS, D_FFN = 8, 2, 2, 2, 12
SHAPES = np.array([[2, 3], [1, 2]])  # (H_l, W_l)
STARTS = ms_deform_attn.level_start_index_of(SHAPES)
N_POSITIONS = 8  # S = 2*3 + 1*2
N_BATCH, N_QUERIES = 2, 3
INPUT_NAMES = ("tgt", "query_pos", "reference_points", "src")


def decoder_padding_mask() -> np.ndarray:
    """(N, S): image 1 padded in its right column on level 0 and right pixel on level 1."""
    mask = np.zeros((N_BATCH, N_POSITIONS), dtype=bool)
    mask[1, [2, 5, 7]] = True
    return mask


def decoder_inputs(seed: int, kind: int = 2, masked: bool = False):
    """``(tgt, query_pos, reference_points, src, fixed keyword arguments)``; reference points
    (x, y) or boxes (cx, cy, w, h), mostly inside the image."""
    rng = np.random.default_rng(seed)
    tgt = rng.uniform(-1, 1, (N_BATCH, N_QUERIES, D_MODEL))
    query_pos = rng.uniform(-1, 1, (N_BATCH, N_QUERIES, D_MODEL))
    if kind == 2:
        ref = rng.uniform(0.05, 0.95, (N_BATCH, N_QUERIES, N_LEVELS, 2))
    else:
        ref = np.concatenate([rng.uniform(0.2, 0.8, (N_BATCH, N_QUERIES, N_LEVELS, 2)),
                              rng.uniform(0.1, 0.6, (N_BATCH, N_QUERIES, N_LEVELS, 2))], -1)
    src = rng.uniform(-1, 1, (N_BATCH, N_POSITIONS, D_MODEL))
    fixed = {"src_spatial_shapes": SHAPES, "level_start_index": STARTS,
             "src_padding_mask": decoder_padding_mask() if masked else None}
    return tgt, query_pos, ref, src, fixed


def make_decoder(seed: int, tier: str = "numpy", dropout: float = 0.1) -> DeformableDecoderLayer:
    """A perturbed decoder layer in eval mode (its dropouts the identity)."""
    rng = np.random.default_rng(seed)
    layer = DeformableDecoderLayer(D_MODEL, D_FFN, dropout, N_LEVELS, N_HEADS, N_POINTS,
                                   rng=rng, backend=tier)
    perturb(layer, rng)
    return layer.eval()


@pytest.mark.parametrize("kind, masked", [(2, False), (4, True)], ids=["points", "boxes-masked"])
def test_decoder_layer_gradients_match_finite_differences(kind, masked):
    """tgt (residual, self-attention queries, keys and values), query_pos (queries, keys and
    cross-attention queries), reference points or boxes, src (through value_proj and the
    mask) and all 22 parameters."""
    layer = make_decoder(seed=kind + masked)
    tgt, query_pos, ref, src, fixed = decoder_inputs(seed=kind + masked, kind=kind,
                                                     masked=masked)
    check_layer(layer, tgt, query_pos, ref, src, input_names=INPUT_NAMES,
                fixed=fixed).raise_if_failed()


def test_decoder_layer_training_mode_backward_uses_the_forward_masks():
    """With dropout active, the backward is the gradient of the function with the four masks
    fixed (the mask generator is reset before every forward), and the masks change the output
    (compared with eval mode)."""
    layer = make_decoder(seed=5, dropout=0.3).train()
    tgt, query_pos, ref, src, fixed = decoder_inputs(seed=5)
    dropouts = [layer.dropout1, layer.dropout2, layer.dropout3, layer.dropout4]

    def forward(*inputs):
        generator = np.random.default_rng(11)
        for dropout in dropouts:
            dropout.generator = generator
        return layer(*inputs, **fixed)

    def backward(gy, *inputs):
        forward(*inputs)
        return layer.backward(gy)

    arrays = dict(zip(INPUT_NAMES, (tgt, query_pos, ref, src)))
    gradcheck(forward, backward, arrays, atol=1e-8).raise_if_failed()
    trained = forward(tgt, query_pos, ref, src)
    assert not np.allclose(trained, layer.eval()(tgt, query_pos, ref, src, **fixed))


def _torch_decoder(torch):
    """Deformable DETR's decoder layer (ReLU) from torch.nn parts: nn.MultiheadAttention
    (batch first), nn.LayerNorm, nn.Linear, nn.Dropout, and MSDeformAttn with the grid_sample
    formulation of its core; built inside a function so that the module imports without torch."""
    nn, F = torch.nn, torch.nn.functional

    class TorchMSDeformAttn(nn.Module):
        def __init__(self, d_model, n_levels, n_heads, n_points):
            super().__init__()
            self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
            samples = n_heads * n_levels * n_points
            self.sampling_offsets = nn.Linear(d_model, 2 * samples)
            self.attention_weights = nn.Linear(d_model, samples)
            self.value_proj = nn.Linear(d_model, d_model)
            self.output_proj = nn.Linear(d_model, d_model)

        def forward(self, query, ref, flat, shapes, mask=None):
            n, lq, c = query.shape
            m, lvl, p = self.n_heads, self.n_levels, self.n_points
            value = self.value_proj(flat)
            if mask is not None:
                value = value.masked_fill(mask[..., None], 0.0)
            value = value.view(n, flat.shape[1], m, c // m)
            offsets = self.sampling_offsets(query).view(n, lq, m, lvl, p, 2)
            weights = F.softmax(self.attention_weights(query).view(n, lq, m, lvl * p), -1)
            weights = weights.view(n, lq, m, lvl, p)
            if ref.shape[-1] == 2:
                normaliser = torch.stack([shapes[:, 1], shapes[:, 0]], -1).to(query.dtype)
                loc = ref[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :,
                                                                         None, :]
            else:
                loc = (ref[:, :, None, :, None, :2]
                       + offsets / p * ref[:, :, None, :, None, 2:] * 0.5)
            return self.output_proj(grid_sample_formulation(value, shapes, loc, weights))

    class TorchDecoderLayer(nn.Module):
        def __init__(self, d_model, d_ffn, dropout, n_levels, n_heads, n_points):
            super().__init__()
            self.cross_attn = TorchMSDeformAttn(d_model, n_levels, n_heads, n_points)
            self.dropout1 = nn.Dropout(dropout)
            self.norm1 = nn.LayerNorm(d_model)
            self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout,
                                                   batch_first=True)
            self.dropout2 = nn.Dropout(dropout)
            self.norm2 = nn.LayerNorm(d_model)
            self.linear1 = nn.Linear(d_model, d_ffn)
            self.dropout3 = nn.Dropout(dropout)
            self.linear2 = nn.Linear(d_ffn, d_model)
            self.dropout4 = nn.Dropout(dropout)
            self.norm3 = nn.LayerNorm(d_model)

        def forward(self, tgt, query_pos, ref, src, shapes, mask=None):
            q = k = tgt + query_pos
            tgt = self.norm2(tgt + self.dropout2(self.self_attn(q, k, tgt)[0]))
            attended = self.cross_attn(tgt + query_pos, ref, src, shapes, mask)
            tgt = self.norm1(tgt + self.dropout1(attended))
            hidden = self.dropout3(F.relu(self.linear1(tgt)))
            return self.norm3(tgt + self.dropout4(self.linear2(hidden)))

    return TorchDecoderLayer


@pytest.mark.parametrize("kind, masked", [(2, False), (4, True)], ids=["points", "boxes-masked"])
def test_decoder_layer_loads_torch_and_matches_it(kind, masked):
    """Both in eval mode with dropout 0.1 (every dropout the identity): the same output and
    the same gradients of tgt, query_pos, reference_points, src and every parameter, named
    and ordered like the torch layer's state_dict."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(2 + kind)
    reference = torch_randomised(torch, _torch_decoder(torch)(D_MODEL, D_FFN, 0.1, N_LEVELS,
                                                              N_HEADS, N_POINTS))
    ours = DeformableDecoderLayer(D_MODEL, D_FFN, 0.1, N_LEVELS, N_HEADS, N_POINTS,
                                  backend="loop").eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    load_from_torch(ours, reference)
    tgt, query_pos, ref, src, fixed = decoder_inputs(seed=20 + kind, kind=kind, masked=masked)
    mask = fixed["src_padding_mask"]
    compare_with_torch(torch, ours, reference, [tgt, query_pos, ref, src],
                       (torch.tensor(SHAPES), None if mask is None else torch.tensor(mask)),
                       (SHAPES, STARTS, mask))


def test_decoder_layer_names_and_init():
    layer = DeformableDecoderLayer(16, 32, 0.1, 3, 4, 2, rng=0)
    shapes = {name: p.shape for name, p in layer.named_parameters()}
    attn = [f"cross_attn.{m}.{p}" for m in ("sampling_offsets", "attention_weights",
                                            "value_proj", "output_proj")
            for p in ("weight", "bias")]
    assert list(shapes) == attn + [
        "norm1.weight", "norm1.bias", "self_attn.in_proj_weight", "self_attn.in_proj_bias",
        "self_attn.out_proj.weight", "self_attn.out_proj.bias", "norm2.weight", "norm2.bias",
        "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias", "norm3.weight",
        "norm3.bias"]
    assert shapes["cross_attn.sampling_offsets.weight"] == (4 * 3 * 2 * 2, 16)
    assert shapes["self_attn.in_proj_weight"] == (48, 16)
    assert shapes["linear1.weight"] == (32, 16) and shapes["linear2.weight"] == (16, 32)
    assert not layer.cross_attn.sampling_offsets.weight.data.any()  # the paper's init
    assert not layer.self_attn.in_proj_bias.data.any()
    assert not layer.self_attn.out_proj.bias.data.any()
    for weight, bound in [(layer.self_attn.out_proj.weight, math.sqrt(6 / 32)),
                          (layer.linear1.weight, math.sqrt(6 / 48)),
                          (layer.linear2.weight, math.sqrt(6 / 48))]:
        assert np.abs(weight.data).max() <= bound  # Xavier-uniform
        assert np.abs(weight.data).max() > 0.5 * bound
    for norm in (layer.norm1, layer.norm2, layer.norm3):
        assert (norm.weight.data == 1).all() and not norm.bias.data.any()
    assert all(d.p == 0.1 for d in (layer.dropout1, layer.dropout2, layer.dropout3,
                                    layer.dropout4))


def test_decoder_layer_without_query_pos_and_with_padding():
    """query_pos=None is a zero position whose gradient is None; padded memory positions
    change nothing and get zero gradient."""
    layer = make_decoder(seed=6)
    tgt, query_pos, ref, src, fixed = decoder_inputs(seed=6, masked=True)
    out = layer(tgt, None, ref, src, **fixed)
    grads = layer.backward(np.ones_like(out))
    np.testing.assert_array_equal(out, layer(tgt, np.zeros_like(tgt), ref, src, **fixed))
    zero_pos_grads = layer.backward(np.ones_like(out))
    assert grads[1] is None
    for grad, expected in zip(grads[::2] + grads[3:], zero_pos_grads[::2] + zero_pos_grads[3:]):
        np.testing.assert_allclose(grad, expected, rtol=1e-13, atol=1e-13)

    mask = fixed["src_padding_mask"]
    changed = src.copy()
    changed[mask] += 10.0
    out = layer(tgt, query_pos, ref, src, **fixed)
    np.testing.assert_allclose(layer(tgt, query_pos, ref, changed, **fixed), out, rtol=1e-13,
                               atol=1e-13)
    grad_src = layer.backward(np.ones_like(out))[3]
    assert not grad_src[mask].any() and grad_src[~mask].any()


def test_decoder_layer_float32_backend_and_bad_input():
    layer = DeformableDecoderLayer(D_MODEL, D_FFN, 0.0, N_LEVELS, N_HEADS, N_POINTS, rng=0,
                                   dtype=np.float32, backend="loop")
    tgt, query_pos, ref, src, fixed = decoder_inputs(seed=7)
    out = layer(*(a.astype(np.float32) for a in (tgt, query_pos, ref, src)), **fixed)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.backward(np.ones_like(out)))
    assert layer.cross_attn.backend == "loop"
    layer.set_backend("numpy")
    assert layer.backend == layer.cross_attn.backend == "numpy"

    with pytest.raises(ValueError, match="n_heads must divide d_model"):
        DeformableDecoderLayer(10, 16, 0.1, 2, 4, 2)
    with pytest.raises(ValueError, match=r"dropout must be in \[0.0, 1.0\]"):
        DeformableDecoderLayer(8, 16, -0.1)
    with pytest.raises(ValueError, match="backend must be one of"):
        DeformableDecoderLayer(8, 16, backend="torch")
    with pytest.raises(ValueError, match="tgt must have a last dimension of size 8"):
        layer(tgt[..., :4], query_pos, ref, src, **fixed)
    with pytest.raises(ValueError, match=r"query_pos must have shape \(2, 3, 8\)"):
        layer(tgt, query_pos[:, :2], ref, src, **fixed)
    with pytest.raises(ValueError, match="input_flatten must have a last dimension of size 8"):
        layer(tgt, query_pos, ref, src[..., :4], **fixed)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        DeformableDecoderLayer(D_MODEL, D_FFN, 0.1, N_LEVELS, N_HEADS, N_POINTS).backward(tgt)

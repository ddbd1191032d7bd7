"""``LayerNorm``, ``softmax`` / ``softmax_backward`` and ``MultiheadAttention``: finite-difference
proofs of every gradient (inputs and parameters), torch as an oracle for outputs and gradients
with the same weights, torch's parameter names and initialisation, dtypes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from scratchvision import gradcheck
from scratchvision.nn.attention import MultiheadAttention, softmax, softmax_backward
from scratchvision.nn.norm import LayerNorm

from layer_checks import check_layer

QKV = ("query", "key", "value")


def _randomise_parameters(layer, rng, scale=0.5):
    """Move every parameter off its initial value (LayerNorm starts at ones / zeros, where a
    wrong weight gradient could hide)."""
    for param in layer.parameters():
        param.data += scale * rng.standard_normal(param.shape)


def _padding_mask(rng, n, lk):
    """(N, Lk) bool, True = ignore that key; every batch element keeps at least one key."""
    mask = rng.random((n, lk)) < 0.4
    mask[np.arange(n), rng.integers(0, lk, size=n)] = False
    return mask


def _attention_inputs(rng, n, lq, lk, embed_dim):
    return (rng.standard_normal((n, lq, embed_dim)), rng.standard_normal((n, lk, embed_dim)),
            rng.standard_normal((n, lk, embed_dim)))


# ---------------------------------------------------------------------------- LayerNorm


@given(channels=st.integers(1, 6), lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       affine=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_layer_norm_gradients_match_finite_differences(channels, lead, affine, seed):
    """The input and, with elementwise_affine, weight and bias; (..., C) with 0-2 leading dims.
    C = 1 is the degenerate row (xhat = 0, the gradient of x is 0)."""
    event(f"{len(lead)} leading dimension(s), affine={affine}")
    rng = np.random.default_rng(seed)
    layer = LayerNorm(channels, elementwise_affine=affine)
    _randomise_parameters(layer, rng)
    x = rng.standard_normal(tuple(lead) + (channels,))
    check_layer(layer, x).raise_if_failed()


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch(affine):
    """Output, input gradient and parameter gradients equal torch's for the same weights."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    layer = LayerNorm(5, eps=1e-3, elementwise_affine=affine)
    _randomise_parameters(layer, rng)
    reference = torch.nn.LayerNorm(5, eps=1e-3, elementwise_affine=affine).double()
    reference.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    x, gy = 3 * rng.standard_normal((2, 3, 5)) + 1, rng.standard_normal((2, 3, 5))
    x_torch = torch.tensor(x, requires_grad=True)
    y_torch = reference(x_torch)
    y_torch.backward(torch.tensor(gy))
    np.testing.assert_allclose(layer(x), y_torch.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.backward(gy), x_torch.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, param in reference.named_parameters():
        np.testing.assert_allclose(dict(layer.named_parameters())[name].grad,
                                   param.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_layer_norm_parameters_follow_torch():
    layer = LayerNorm(4, dtype=np.float32)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    np.testing.assert_array_equal(layer.weight.data, np.ones(4, np.float32))
    np.testing.assert_array_equal(layer.bias.data, np.zeros(4, np.float32))
    assert layer.weight.dtype == np.float32
    bare = LayerNorm(4, elementwise_affine=False)
    assert bare.weight is None and bare.bias is None and bare.state_dict() == {}


def test_layer_norm_normalises_with_the_biased_variance():
    """Each row of the output has mean 0 and (biased) variance var / (var + eps)."""
    x = np.array([[1.0, 2.0, 3.0, 6.0], [-5.0, -5.0, -5.0, -5.0]])
    y = LayerNorm(4, eps=1e-5)(x)
    var = x[0].var()  # numpy's default is the biased variance, ddof=0
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-15)
    np.testing.assert_allclose(y[0].var(), var / (var + 1e-5), rtol=1e-12)
    np.testing.assert_array_equal(y[1], 0)  # a constant row: eps keeps it finite


# ---------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_backward_matches_finite_differences(axis):
    rng = np.random.default_rng(axis + 5)
    x = 2 * rng.standard_normal((3, 4, 5))
    report = gradcheck(lambda x: softmax(x, axis=axis),
                       lambda gy, x: softmax_backward(gy, softmax(x, axis=axis), axis=axis),
                       {"x": x})
    report.raise_if_failed()


def test_softmax_is_stable_and_masks_minus_infinity():
    x = np.array([[1000.0, 1001.0, -np.inf], [-1000.0, -1000.0, -1000.0]])
    y = softmax(x)
    e = np.exp(-1.0)
    np.testing.assert_allclose(y[0], [e / (1 + e), 1 / (1 + e), 0.0], rtol=1e-15)
    np.testing.assert_allclose(y[1], 1 / 3, rtol=1e-15)
    # a masked entry (probability exactly 0) receives no gradient
    assert softmax_backward(np.ones((2, 3)) + np.eye(2, 3), y)[0, 2] == 0
    # nothing left to normalise: NaN, like torch.softmax
    assert np.isnan(softmax(np.full(3, -np.inf))).all()


def test_softmax_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, gy = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    x_torch = torch.tensor(x, requires_grad=True)
    y_torch = torch.softmax(x_torch, dim=0)
    y_torch.backward(torch.tensor(gy))
    y = softmax(x, axis=0)
    np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(softmax_backward(gy, y, axis=0), x_torch.grad.numpy(),
                               rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------- attention


@given(n=st.integers(1, 2), lq=st.integers(1, 3), lk=st.integers(1, 4),
       num_heads=st.integers(1, 3), head_dim=st.integers(1, 2), bias=st.booleans(),
       masked=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_attention_gradients_match_finite_differences(n, lq, lk, num_heads, head_dim, bias,
                                                      masked, seed):
    """query, key, value, in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias."""
    event(f"heads={num_heads}, bias={bias}, key_padding_mask={'yes' if masked else 'no'}")
    rng = np.random.default_rng(seed)
    embed_dim = num_heads * head_dim
    layer = MultiheadAttention(embed_dim, num_heads, bias=bias, rng=rng)
    _randomise_parameters(layer, rng)  # nonzero biases
    mask = _padding_mask(rng, n, lk) if masked else None
    check_layer(layer, *_attention_inputs(rng, n, lq, lk, embed_dim), input_names=QKV,
                fixed={"key_padding_mask": mask}).raise_if_failed()


def test_self_attention_gradient_is_the_sum_of_the_three():
    """mha(x, x, x): x feeds query, key and value, so its gradient is the sum of the three."""
    rng = np.random.default_rng(3)
    layer = MultiheadAttention(4, 2, rng=rng)
    x = rng.standard_normal((2, 3, 4))
    report = gradcheck(lambda x: layer(x, x, x),
                       lambda gy, x: (layer(x, x, x), sum(layer.backward(gy)))[1], {"x": x})
    report.raise_if_failed()


@pytest.mark.parametrize("bias, masked", [(True, False), (True, True), (False, True)])
def test_attention_matches_torch(bias, masked):
    """Outputs, the three input gradients and every parameter gradient equal those of
    torch.nn.MultiheadAttention(batch_first=True) with the same (loaded) weights."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rng = np.random.default_rng(4)
    n, lq, lk, embed_dim, num_heads = 2, 3, 5, 6, 3
    reference = torch.nn.MultiheadAttention(embed_dim, num_heads, bias=bias,
                                            batch_first=True).double()
    with torch.no_grad():  # nonzero biases
        for param in reference.parameters():
            param.add_(0.3 * torch.randn_like(param))
    layer = MultiheadAttention(embed_dim, num_heads, bias=bias)
    layer.load_state_dict({k: v.numpy() for k, v in reference.state_dict().items()})
    arrays = _attention_inputs(rng, n, lq, lk, embed_dim)
    mask = _padding_mask(rng, n, lk) if masked else None
    gy = rng.standard_normal((n, lq, embed_dim))

    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    y_torch, _ = reference(*tensors, key_padding_mask=None if mask is None
                           else torch.tensor(mask))
    y_torch.backward(torch.tensor(gy))

    np.testing.assert_allclose(layer(*arrays, key_padding_mask=mask), y_torch.detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    for grad, tensor in zip(layer.backward(gy), tensors, strict=True):
        np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-10, atol=1e-12)
    params = dict(layer.named_parameters())
    assert list(params) == [name for name, _ in reference.named_parameters()]
    for name, param in reference.named_parameters():
        np.testing.assert_allclose(params[name].grad, param.grad.numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=name)


def test_attention_init_follows_torch():
    """in_proj_weight xavier-uniform, out_proj.weight a Linear's U(-1/sqrt(E), 1/sqrt(E)),
    both biases zero; the same seed gives the same layer."""
    embed_dim = 64
    layer = MultiheadAttention(embed_dim, 4, rng=0)
    assert layer.state_dict().keys() == {"in_proj_weight", "in_proj_bias", "out_proj.weight",
                                         "out_proj.bias"}
    xavier = np.sqrt(6 / (embed_dim + 3 * embed_dim))  # fan_in = E, fan_out = 3E
    linear = 1 / np.sqrt(embed_dim)
    for param, bound in ((layer.in_proj_weight, xavier), (layer.out_proj.weight, linear)):
        assert 0.95 * bound < np.abs(param.data).max() <= bound
        # the variance of U(-b, b) is b**2 / 3; thousands of draws pin it to a few %
        np.testing.assert_allclose(param.data.var(), bound**2 / 3, rtol=0.1)
    np.testing.assert_array_equal(layer.in_proj_bias.data, 0)
    np.testing.assert_array_equal(layer.out_proj.bias.data, 0)
    np.testing.assert_array_equal(MultiheadAttention(embed_dim, 4, rng=0).in_proj_weight.data,
                                  layer.in_proj_weight.data)
    bare = MultiheadAttention(4, 2, bias=False, rng=0)
    assert list(bare.state_dict()) == ["in_proj_weight", "out_proj.weight"]


def test_last_attention_is_per_head_and_respects_the_mask():
    rng = np.random.default_rng(5)
    layer = MultiheadAttention(6, 3, rng=rng)
    mask = np.array([[False, True, False, True], [True, True, True, False]])
    layer(*_attention_inputs(rng, 2, 3, 4, 6), key_padding_mask=mask)
    a = layer.last_attention
    assert a.shape == (2, 3, 3, 4)  # (N, M, Lq, Lk)
    np.testing.assert_allclose(a.sum(axis=-1), 1, rtol=1e-14)
    assert np.all(a[np.broadcast_to(mask[:, None, None, :], a.shape)] == 0)


def test_fully_masked_batch_element_gives_nan_as_torch():
    layer = MultiheadAttention(4, 2, rng=0)
    mask = np.array([[True, True], [False, True]])
    y = layer(*_attention_inputs(np.random.default_rng(6), 2, 3, 2, 4), key_padding_mask=mask)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


# ---------------------------------------------------------------------------- shared rules


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_are_kept(dtype):
    """float32 in, float32 layer -> float32 out and gradients (and float64 likewise)."""
    rng = np.random.default_rng(7)
    norm = LayerNorm(4, dtype=dtype)
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    y = norm(x)
    assert y.dtype == dtype and norm.backward(np.ones_like(y)).dtype == dtype
    assert norm.weight.grad.dtype == dtype
    assert softmax(x).dtype == dtype and softmax_backward(x, softmax(x)).dtype == dtype
    mha = MultiheadAttention(4, 2, rng=0, dtype=dtype)
    q, k, v = (a.astype(dtype) for a in _attention_inputs(rng, 2, 3, 5, 4))
    y = mha(q, k, v, key_padding_mask=_padding_mask(rng, 2, 5))
    assert y.dtype == dtype and mha.last_attention.dtype == dtype
    assert all(g.dtype == dtype for g in mha.backward(np.ones_like(y)))
    assert all(p.grad.dtype == dtype for p in mha.parameters())


def test_inputs_are_not_mutated_and_views_work():
    """Read-only, non-contiguous inputs and grads: nothing is written into them."""
    rng = np.random.default_rng(8)

    def frozen(a):
        view = np.asfortranarray(a)[..., ::-1]  # Fortran order, negative stride
        view.flags.writeable = False
        return view

    x = frozen(rng.standard_normal((2, 3, 4)))
    q, k, v = (frozen(a) for a in _attention_inputs(rng, 2, 3, 5, 4))
    mask = _padding_mask(rng, 2, 5)
    mask.flags.writeable = False
    gy = frozen(rng.standard_normal((2, 3, 4)))
    copies = [a.copy() for a in (x, q, k, v, mask, gy)]

    norm = LayerNorm(4)
    norm(x)
    norm.backward(gy)
    mha = MultiheadAttention(4, 2, rng=0)
    y = mha(q, k, v, key_padding_mask=mask)
    mha.backward(gy)
    softmax_backward(gy, softmax(x))
    for original, copy in zip((x, q, k, v, mask, gy), copies):
        np.testing.assert_array_equal(original, copy)
    # the views give what their contiguous copies give
    np.testing.assert_array_equal(
        y, MultiheadAttention(4, 2, rng=0)(*(a.copy() for a in (q, k, v)),
                                           key_padding_mask=mask.copy()))


@pytest.mark.parametrize("n, lq", [(0, 3), (2, 0)])
def test_empty_batch_and_zero_queries_just_work(n, lq):
    mha = MultiheadAttention(4, 2, rng=0)
    q, k, v = _attention_inputs(np.random.default_rng(10), n, lq, 5, 4)
    y = mha(q, k, v, key_padding_mask=np.zeros((n, 5), dtype=bool))
    assert y.shape == (n, lq, 4)
    grads = mha.backward(np.ones_like(y))
    assert [g.shape for g in grads] == [(n, lq, 4), (n, 5, 4), (n, 5, 4)]
    assert not mha.in_proj_weight.grad.any()  # nothing to learn from no queries
    norm = LayerNorm(4)
    assert norm.backward(norm(q)).shape == q.shape


def test_bad_arguments_are_clear_errors():
    rng = np.random.default_rng(9)
    with pytest.raises(ValueError, match="normalized_shape"):
        LayerNorm(0)
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(3, eps=0.0)
    with pytest.raises(ValueError, match="x must have a last dimension of size 3"):
        LayerNorm(3)(np.ones((2, 4)))
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        LayerNorm(3)(np.ones((2, 3), dtype=int))
    norm = LayerNorm(3)
    norm(np.ones((2, 3)))
    with pytest.raises(ValueError, match="grad must have shape"):
        norm.backward(np.ones((3, 3)))
    with pytest.raises(ValueError, match="grad_y must have shape"):
        softmax_backward(np.ones(3), np.ones(4) / 4)

    with pytest.raises(ValueError, match="num_heads must divide embed_dim"):
        MultiheadAttention(6, 4)
    mha = MultiheadAttention(4, 2, rng=0)
    q, k, v = _attention_inputs(rng, 2, 3, 5, 4)
    with pytest.raises(ValueError, match="query must have a last dimension of size 4"):
        mha(q[..., :3], k, v)
    with pytest.raises(ValueError, match="key must have a last dimension of size 4"):
        mha(q, k[..., :3], v)
    with pytest.raises(ValueError, match="value must have 3 dimensions"):
        mha(q, k, v[0])
    with pytest.raises(ValueError, match="query and key must have the same batch size"):
        mha(q[:1], k, v)
    with pytest.raises(ValueError, match="key and value must have the same batch size"):
        mha(q, k, v[:1])
    with pytest.raises(ValueError, match="key and value must have the same number of positions"):
        mha(q, k, v[:, :4])
    with pytest.raises(ValueError, match="key must have at least one position"):
        mha(q, k[:, :0], v[:, :0])
    with pytest.raises(TypeError, match="key_padding_mask must be a boolean array"):
        mha(q, k, v, key_padding_mask=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        mha(q, k, v, key_padding_mask=np.zeros((2, 4), dtype=bool))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        MultiheadAttention(4, 2).backward(np.ones((2, 3, 4)))
    mha(q, k, v)
    with pytest.raises(ValueError, match="grad must have shape"):
        mha.backward(np.ones((2, 4, 4)))

"""Dense attention: the ``softmax`` helper (with its backward) that every attention layer uses,
and ``MultiheadAttention`` (torch.nn.MultiheadAttention, batch first).

Softmax along one axis, for one slice ``x`` of that axis::

    y_j = exp(x_j - max_k x_k) / sum_i exp(x_i - max_k x_k)             (1)

Subtracting the maximum changes nothing mathematically (it cancels between numerator and
denominator) but keeps every exponent <= 0, so nothing overflows. Its backward, from
``d y_j / d x_i = y_j (delta_ij - y_i)``::

    grad_x_i = sum_j grad_y_j y_j (delta_ij - y_i) = y_i (grad_y_i - sum_j grad_y_j y_j)    (2)

It needs only the output y, not x.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks
from .init import as_generator, float_dtype, xavier_uniform
from .linear import Linear, affine, affine_backward, batched_matmul
from .module import Module, Parameter

__all__ = ["softmax", "softmax_backward", "MultiheadAttention"]


def softmax(x, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of ``x`` along ``axis``, equation (1) of the module docstring.

    Args:
        x: a float32 or float64 array of any shape; ``-inf`` entries get probability 0
            (this is how attention masks keys out).
        axis: the axis that sums to 1.

    Returns:
        y, the same shape and dtype as x. A slice that is entirely ``-inf`` has no softmax and
        gives NaN, as ``torch.softmax`` does.
    """
    x = _checks.float_array(x, "x")
    # NOTE: max is not differentiable where two entries tie, but the shift cancels in (1), so
    # the result (and its gradient) does not depend on which maximum is chosen.
    # --8<-- [start:softmax]
    with np.errstate(invalid="ignore"):  # -inf - (-inf) in an all -inf slice: NaN, on purpose
        shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)
    # --8<-- [end:softmax]


def softmax_backward(grad_y, y, axis: int = -1) -> np.ndarray:
    """The gradient with respect to softmax's input, equation (2) of the module docstring.

    Args:
        grad_y: the gradient with respect to softmax's output, the shape of y.
        y: the output of :func:`softmax` (not its input), any shape.
        axis: the axis softmax normalised.

    Returns:
        grad_x = y * (grad_y - sum(grad_y * y, axis, keepdims=True)), the shape of y.
    """
    grad_y = _checks.float_array(grad_y, "grad_y")
    y = _checks.float_array(y, "y")
    _checks.shape_equals(grad_y, "grad_y", y.shape, "the shape of y, softmax's output")
    # --8<-- [start:softmax_backward]
    return y * (grad_y - np.sum(grad_y * y, axis=axis, keepdims=True))
    # --8<-- [end:softmax_backward]


def _split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """(N, L, E) -> (N, M, L, hd), hd = E / M: head m sees channels [m*hd, (m+1)*hd)."""
    n, length, embed = x.shape
    # (N, L, E) -> (N, L, M, hd) -> (N, M, L, hd)
    return x.reshape(n, length, num_heads, embed // num_heads).transpose(0, 2, 1, 3)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    """(N, M, L, hd) -> (N, L, M*hd), the inverse of :func:`_split_heads`."""
    n, heads, length, head_dim = x.shape
    # (N, M, L, hd) -> (N, L, M, hd) -> (N, L, M*hd)
    return x.transpose(0, 2, 1, 3).reshape(n, length, heads * head_dim)


class MultiheadAttention(Module):
    """Dense multi-head scaled dot-product attention, **batch first**: query (N, Lq, E), key
    (N, Lk, E), value (N, Lk, E) -> (N, Lq, E).

    This is ``torch.nn.MultiheadAttention(embed_dim, num_heads, bias=bias, batch_first=True)``.
    Note that torch's *default* is sequence first, (L, N, E); here the batch axis always comes
    first, as in the rest of scratchvision. Not supported: dropout (there is none, so training
    and evaluation give the same result), ``attn_mask``, ``add_bias_kv``, ``add_zero_attn`` and
    separate ``kdim`` / ``vdim`` (key and value have E channels, like the query).

    With ``hd = E / M`` channels per head, for each batch element and head m::

        q = query Wq^T + bq,  k = key Wk^T + bk,  v = value Wv^T + bv     (3)  (N, L, E)
        split into heads: channels [m*hd, (m+1)*hd) -> head m             (4)  (N, M, L, hd)
        s = (q / sqrt(hd)) k^T;  s[.., j] = -inf where key j is padding    (5)  (N, M, Lq, Lk)
        a = softmax(s) over the keys (equation (1))                       (6)  (N, M, Lq, Lk)
        c = a v, heads merged back                                        (7)  (N, Lq, E)
        out = c Wo^T + bo                   (out_proj, a Linear)          (8)  (N, Lq, E)

    where ``Wq, Wk, Wv`` are the three row blocks of ``in_proj_weight`` and ``bq, bk, bv`` those
    of ``in_proj_bias``. The backward runs them in reverse (see :meth:`backward`).

    Args:
        embed_dim: E, the channels of query, key, value and output.
        num_heads: M, which must divide E.
        bias: whether ``in_proj_bias`` and ``out_proj.bias`` exist.
        rng: None, an int seed or a ``numpy.random.Generator`` for the initial values.
        dtype: float64 (default) or float32, the dtype of the parameters.

    Parameters (torch's names, shapes and initialisation, so a torch state_dict loads 1:1):
        in_proj_weight: (3E, E), rows [0, E) for the query, [E, 2E) for the key, [2E, 3E)
            for the value; xavier-uniform.
        in_proj_bias: (3E,), zeros (absent when ``bias=False``).
        out_proj.weight: (E, E), a Linear's default ``U(-1/sqrt(E), 1/sqrt(E))``.
        out_proj.bias: (E,), zeros (absent when ``bias=False``).

    Attributes:
        last_attention: the attention weights a of the most recent forward, (N, M, Lq, Lk),
            per head (torch returns them averaged over the heads). For inspection only.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, *, rng=None,
                 dtype=np.float64):
        super().__init__()
        self.embed_dim = _checks.positive_int(embed_dim, "embed_dim")
        self.num_heads = _checks.positive_int(num_heads, "num_heads")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"num_heads must divide embed_dim: embed_dim is {self.embed_dim}, "
                             f"num_heads is {self.num_heads}")
        self.head_dim = self.embed_dim // self.num_heads
        bias = _checks.boolean(bias, "bias")
        rng, dtype = as_generator(rng), float_dtype(dtype)
        e = self.embed_dim
        self.in_proj_weight = Parameter(xavier_uniform((3 * e, e), rng, dtype))
        self.in_proj_bias = Parameter(np.zeros(3 * e, dtype=dtype)) if bias else None
        self.out_proj = Linear(e, e, bias=bias, rng=rng, dtype=dtype)
        if bias:
            self.out_proj.bias.data.fill(0)  # torch zeroes it after the Linear's own init
        self.last_attention = None

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"bias={self.in_proj_bias is not None}, batch_first=True")

    def _check_inputs(self, query, key, value, key_padding_mask):
        query = _checks.float_array(query, "query", ndim=3)
        key = _checks.float_array(key, "key", ndim=3)
        value = _checks.float_array(value, "value", ndim=3)
        for name, arr in (("query", query), ("key", key), ("value", value)):
            _checks.last_dim(arr, name, self.embed_dim, "(embed_dim)")
        _checks.same_size("query", query.shape[0], "key", key.shape[0], "batch size (dim 0)")
        _checks.same_size("key", key.shape[0], "value", value.shape[0], "batch size (dim 0)")
        _checks.same_size("key", key.shape[1], "value", value.shape[1],
                          "number of positions (dim 1)")
        if key.shape[1] == 0:
            raise ValueError(f"key must have at least one position to attend to, got shape "
                             f"{key.shape}")
        if key_padding_mask is not None:
            key_padding_mask = np.asarray(key_padding_mask)
            if key_padding_mask.dtype != np.bool_:
                raise TypeError(f"key_padding_mask must be a boolean array (True = ignore that "
                                f"key), got dtype {key_padding_mask.dtype}")
            _checks.shape_equals(key_padding_mask, "key_padding_mask", key.shape[:2],
                                 "(N, Lk) of key")
        return query, key, value, key_padding_mask

    def _in_proj_blocks(self):
        """``[(W, b) for the query, the key, the value]``: views of rows [0, E), [E, 2E),
        [2E, 3E) of in_proj_weight (E, E) and in_proj_bias (E,) (b is None without bias)."""
        e = self.embed_dim
        blocks = []
        for i in range(3):
            rows = slice(i * e, (i + 1) * e)
            b = None if self.in_proj_bias is None else self.in_proj_bias.data[rows]
            blocks.append((self.in_proj_weight.data[rows], b))
        return blocks

    def forward(self, query, key, value, key_padding_mask=None) -> np.ndarray:
        """Equations (3)-(8) of the class docstring.

        Args:
            query: (N, Lq, E), the positions that ask.
            key: (N, Lk, E), the positions that are compared with the queries.
            value: (N, Lk, E), what each key position contributes.
            key_padding_mask: None or a bool array (N, Lk); True means *ignore* that key
                (torch's convention). A batch element whose keys are all masked has no
                attention and gives NaN, as in torch.

        Returns:
            out (N, Lq, E). Remembers the inputs, the projected heads and the attention
            weights for :meth:`backward`; the weights are also kept in ``last_attention``.
        """
        query, key, value, key_padding_mask = self._check_inputs(query, key, value,
                                                                 key_padding_mask)
        scale = 1.0 / math.sqrt(self.head_dim)
        (wq, bq), (wk, bk), (wv, bv) = self._in_proj_blocks()
        q = _split_heads(affine(query, wq, bq), self.num_heads)  # (3), (4): (N, M, Lq, hd)
        k = _split_heads(affine(key, wk, bk), self.num_heads)  # (N, M, Lk, hd)
        v = _split_heads(affine(value, wv, bv), self.num_heads)  # (N, M, Lk, hd)
        q_scaled = q * scale
        # (5): (N, M, Lq, hd) @ (N, M, hd, Lk) -> (N, M, Lq, Lk)
        s = batched_matmul(q_scaled, k.swapaxes(-1, -2))
        if key_padding_mask is not None:
            # (N, Lk) -> (N, 1, 1, Lk), broadcast over heads and queries
            s = np.where(key_padding_mask[:, None, None, :], -np.inf, s)
        a = softmax(s, axis=-1)  # (6)
        # (7): (N, M, Lq, Lk) @ (N, M, Lk, hd) -> (N, M, Lq, hd) -> (N, Lq, E)
        c = _merge_heads(batched_matmul(a, v))
        self._save_for_backward(query=query, key=key, value=value, q_scaled=q_scaled, k=k, v=v,
                                a=a)
        self.last_attention = a
        return self.out_proj(c)  # (8)

    def backward(self, grad):
        """grad (N, Lq, E), the gradient with respect to the most recent forward's output ->
        ``(grad_query, grad_key, grad_value)``, shapes (N, Lq, E), (N, Lk, E), (N, Lk, E).

        Always three arrays, even for self-attention called as ``mha(x, x, x)``: then x fed
        all three projections and its gradient is the **sum** ``grad_query + grad_key +
        grad_value`` (the caller adds them). Masked keys get zero gradient. Adds the gradients
        of in_proj_weight, in_proj_bias, out_proj.weight and out_proj.bias into their ``.grad``.

        Equations (8)-(3) in reverse::

            grad_c = grad Wo                                   (out_proj.backward)   (9)
            grad_a = grad_c v^T,        grad_v = a^T grad_c                          (10)
            grad_s = a * (grad_a - sum_j grad_a a)    (softmax_backward, (2))        (11)
            grad_q = grad_s k / sqrt(hd),  grad_k = grad_s^T q / sqrt(hd)            (12)
            grad_x = grad_p W,  grad_W += grad_p^T x,  grad_b += sum grad_p
                for each projection p = x W^T + b of (3)                             (13)
        """
        saved = self._saved_for_backward()
        a, q_scaled, k, v = saved["a"], saved["q_scaled"], saved["k"], saved["v"]
        n, _, lq, _ = a.shape
        grad = _checks.float_array(grad, "grad")
        _checks.shape_equals(grad, "grad", (n, lq, self.embed_dim),
                             "the shape of forward's output")
        scale = 1.0 / math.sqrt(self.head_dim)
        grad_c = _split_heads(self.out_proj.backward(grad), self.num_heads)  # (9): (N, M, Lq, hd)
        # (10): (N, M, Lq, hd) @ (N, M, hd, Lk) and (N, M, Lk, Lq) @ (N, M, Lq, hd)
        grad_a = batched_matmul(grad_c, v.swapaxes(-1, -2))
        grad_v = batched_matmul(a.swapaxes(-1, -2), grad_c)
        # NOTE: a masked key has a = 0 exactly, so (11) gives it grad_s = 0: no gradient flows
        # to its key or value, as with torch's -inf fill.
        grad_s = softmax_backward(grad_a, a, axis=-1)  # (11): (N, M, Lq, Lk)
        # (12): (N, M, Lq, Lk) @ (N, M, Lk, hd) and (N, M, Lk, Lq) @ (N, M, Lq, hd)
        grad_q = batched_matmul(grad_s, k) * scale
        grad_k = batched_matmul(grad_s.swapaxes(-1, -2), q_scaled)
        grad_inputs, grad_weights, grad_biases = [], [], []
        for x, grad_p, (w, _) in zip((saved["query"], saved["key"], saved["value"]),
                                     (grad_q, grad_k, grad_v), self._in_proj_blocks()):
            grad_p = _merge_heads(grad_p)  # (N, M, L, hd) -> (N, L, E)
            grad_x, grad_w, grad_b = affine_backward(grad_p, x, w)  # (13)
            grad_inputs.append(grad_x)
            grad_weights.append(grad_w)
            grad_biases.append(grad_b)
        # three (E, E) blocks -> (3E, E) and three (E,) -> (3E,), in_proj's row order
        self.in_proj_weight.accumulate(np.concatenate(grad_weights, axis=0))
        if self.in_proj_bias is not None:
            self.in_proj_bias.accumulate(np.concatenate(grad_biases, axis=0))
        return tuple(grad_inputs)


"""Argument validation shared by every operator and layer: one place for the messages.

Every message names the argument, says what was given and what was expected, so that a user
who passes ``points`` of shape (2, 5, 3) reads "points must have a last dimension of size 2
(x, y), got shape (2, 5, 3)" rather than an IndexError from deep inside a kernel.

Dtype policy (the design page, docs/design.md): float32 and float64 are the supported dtypes. Arrays that
meet in one operator are brought to their common float type (float32 only if all are float32),
so float32 in gives float32 out. Integer, boolean and complex arrays raise ``TypeError``:
silently turning pixel indices into floats hides bugs. Inputs are never modified; a
non-contiguous, Fortran-ordered, negative-stride or read-only view is copied into a fresh
C-contiguous array only when the kernels need one.

Device arrays (docs/gpu.md, "The GPU tier"): the operators' cuda tier also takes arrays
that already live on the GPU -- numba device arrays, and anything exposing
``__cuda_array_interface__`` (CuPy arrays, torch CUDA tensors) -- and then returns numba device
arrays. :func:`is_device_array` recognises them from their attributes; ``float_array(...,
device=True)`` validates them from their shape and dtype alone and wraps a foreign one as a
numba device array over the same memory (no copy); :func:`common_float` casts and makes them
contiguous *on the device*; :func:`same_device` is the rule that every array of one call lives
on the same side and that GPU arrays go to the cuda tier. This is the only place on the ground
floor that touches numba, and only once a caller has passed a device array (as
``_dispatch`` probes numba only when asked about the cuda tier).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(value, name: str, *, ndim: int | None = None, min_ndim: int | None = None,
                device: bool = False):
    """Validate ``value`` as a float32/float64 array and return it (not yet contiguous).

    Raises ``TypeError`` for non-float dtypes and ``ValueError`` for the wrong number of
    dimensions. A GPU array (:func:`is_device_array`) is accepted only with ``device=True`` (the
    operators, whose cuda tier runs on it) and is validated from its shape and dtype alone,
    never copied to the host; it is returned as a numba device array over the same memory.
    Without ``device=True`` a GPU array raises ``TypeError`` saying to copy it to the host.
    """
    on_device = is_device_array(value)
    if on_device:
        if not device:
            raise TypeError(f"{name} is a GPU array, but this function takes host (NumPy) "
                            f"arrays only: {_COPY_TO_HOST}")
        shape, dtype = _device_shape_dtype(value)
    else:
        value = np.asarray(value)
        shape, dtype = value.shape, value.dtype
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a float32 or float64 array, got dtype {dtype}"
            + (" (cast integer data explicitly, e.g. .astype(np.float64))"
               if dtype.kind in "iub" else "")
        )
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {shape}")
    if min_ndim is not None and len(shape) < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions, got shape {shape}")
    return _numba_device_array(value, name) if on_device else value


def common_float(*named_arrays: tuple[str, np.ndarray], with_dtypes=()) -> tuple:
    """Cast already-validated float arrays to their common dtype, C-contiguous.

    ``common_float(("image", image), ("points", points))`` returns the arrays in order. An
    array that already has the dtype and layout is returned as is (no copy); kernels only read
    their inputs, so sharing memory is safe. An absent optional input (``None``, e.g.
    ``bias=None``) stays ``None`` and does not take part in the dtype; ``with_dtypes`` are
    further dtypes that do (an input whose values are not needed, only its dtype).

    Device arrays (from ``float_array(..., device=True)``; :func:`same_device` has checked
    that they are not mixed with host arrays) are cast and made contiguous on the device, by
    a device-to-device copy: nothing goes through the host.
    """
    arrays = [arr for _, arr in named_arrays if arr is not None]
    dtype = np.result_type(*(arr.dtype for arr in arrays), *with_dtypes)
    return tuple(None if arr is None else _contiguous(arr, dtype) for _, arr in named_arrays)


def _contiguous(arr, dtype):
    """``arr`` as a C-contiguous array of ``dtype``: itself when it already is one."""
    if not is_device_array(arr):
        return np.ascontiguousarray(arr, dtype=dtype)
    if arr.dtype == dtype and arr.is_c_contiguous():
        return arr
    cuda = _numba_cuda("a device array")
    copy = cuda.device_array(arr.shape, dtype=dtype)
    if arr.size:
        # numba's own assignment kernel: elementwise, device to device, casting on the way
        copy[:] = arr
    return copy


# ----------------------------------------------------------------------------- device arrays

_COPY_TO_HOST = ("copy it to the host first (numba: x.copy_to_host(); CuPy: x.get(); torch: "
                 "x.cpu().numpy())")


def is_device_array(value) -> bool:
    """True for an array that lives in GPU memory: a numba device array (numba's own mark,
    ``__cuda_ndarray__``, which the CUDA simulator's arrays carry too) or any object exposing
    ``__cuda_array_interface__`` (CuPy arrays, torch CUDA tensors). Reads attributes only: it
    never touches the data (a CPU torch tensor has no interface and is not a device array)."""
    if getattr(type(value), "__cuda_ndarray__", False) is True:
        return True
    try:
        return hasattr(value, "__cuda_array_interface__")
    except Exception:  # a GPU array refusing its interface (torch: a tensor requiring grad)
        return True  # reading the interface again then raises the library's own message


def _device_shape_dtype(value) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of a device array, from its metadata alone: numba's attributes, or
    the ``shape`` and ``typestr`` of ``__cuda_array_interface__``."""
    if getattr(type(value), "__cuda_ndarray__", False) is True:
        return tuple(value.shape), np.dtype(value.dtype)
    interface = value.__cuda_array_interface__
    return tuple(interface["shape"]), np.dtype(interface["typestr"])


def _numba_cuda(name: str):
    """``numba.cuda``, imported on first need; a ``TypeError`` naming ``name`` if it cannot be."""
    try:
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise TypeError(f"{name} is a GPU array, but numba.cuda cannot be imported ({exc}): "
                        f"install the cuda extra (pip install 'scratchvision[cuda]') or "
                        f"{_COPY_TO_HOST}") from None
    return cuda


def _numba_device_array(value, name: str):
    """A GPU array as a numba device array over the same memory (no copy): numba's own arrays
    as they are, anything else through ``__cuda_array_interface__``."""
    if getattr(type(value), "__cuda_ndarray__", False) is True:
        return value
    cuda = _numba_cuda(name)
    if not hasattr(cuda, "as_cuda_array"):  # numba's CUDA simulator
        raise TypeError(
            f"{name} exposes __cuda_array_interface__, but numba runs its CUDA simulator here "
            f"(NUMBA_ENABLE_CUDASIM=1), which takes only numba's own (simulated) device "
            f"arrays (numba.cuda.to_device); {_COPY_TO_HOST}")
    return cuda.as_cuda_array(value)


def same_device(tier: str, backend: str, **arrays) -> bool:
    """The placement rule of one call: every array argument lives on the host, or every one on
    the GPU, and GPU arrays go to the cuda tier. Returns True when they are on the GPU.

    ``tier`` is the tier ``backend`` resolved to; ``arrays`` maps argument names to the
    validated arrays (``None`` for an absent optional one, which is left out). Raises
    ``TypeError`` naming the argument for a GPU array next to a host array, and for GPU arrays
    sent to a tier that runs on the CPU (including ``"auto"`` where there is no GPU).
    """
    present = {name: arr for name, arr in arrays.items() if arr is not None}
    on_gpu = [name for name, arr in present.items() if is_device_array(arr)]
    if not on_gpu:
        return False
    on_host = [name for name in present if name not in on_gpu]
    if on_host:
        raise TypeError(
            f"{on_gpu[0]} is a GPU array but {on_host[0]} is a host array: pass every array "
            f"of one call on the same side (numba.cuda.to_device({on_host[0]}) moves it to the "
            f"GPU), or copy {on_gpu[0]} to the host (numba: .copy_to_host(); CuPy: .get(); "
            f"torch: .cpu().numpy())")
    if tier != "cuda":
        why = ' ("auto" picks the cuda tier only on a real GPU)' if backend == "auto" else ""
        raise TypeError(
            f"{on_gpu[0]} is a GPU array, but backend={backend!r} runs the {tier} tier on the "
            f"CPU{why}: {_COPY_TO_HOST}, or pass backend='cuda'")
    return True


def index_array(value, name: str, *, ndim: int) -> np.ndarray:
    """Validate ``value`` as an integer array (sizes, start indices) and return it as int64.

    Raises ``TypeError`` for float, bool or complex data: a size of 12.5 pixels is a bug, and a
    float that happens to be whole hides where it came from. Raises ``ValueError`` for the wrong
    number of dimensions. A GPU array raises ``TypeError``: index arrays are small, and their
    values are checked and size the work on the host.
    """
    if is_device_array(value):
        raise TypeError(f"{name} must be a host (NumPy) integer array, got a GPU array: its "
                        f"values are checked and size the kernels on the host; "
                        f"{_COPY_TO_HOST}")
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def last_dim(arr: np.ndarray, name: str, size: int, meaning: str) -> None:
    """Require ``arr.shape[-1] == size``; ``meaning`` says what the entries are, e.g. "(x, y)"."""
    shape = tuple(arr.shape)  # a plain tuple: numba's simulated device shapes refuse [-1]
    if shape[-1] != size:
        raise ValueError(
            f"{name} must have a last dimension of size {size} {meaning}, got shape {shape}")


def same_size(name_a: str, size_a: int, name_b: str, size_b: int, what: str) -> None:
    """Require two sizes to agree, e.g. the batch sizes of ``image`` and ``points``."""
    if size_a != size_b:
        raise ValueError(f"{name_a} and {name_b} must have the same {what}, "
                         f"got {size_a} and {size_b}")


def shape_equals(arr: np.ndarray, name: str, expected: tuple[int, ...], why: str) -> None:
    """Require ``arr.shape == expected``; ``why`` says where the expectation comes from."""
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {tuple(expected)} ({why}), got shape {tuple(arr.shape)}")


def nonempty_spatial(arr: np.ndarray, name: str) -> None:
    """Require a (..., H, W) array with H >= 1 and W >= 1 (a batch or channel axis may be 0)."""
    shape = tuple(arr.shape)
    if shape[-2] == 0 or shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty height and width, got shape {shape}")


def real_number(value, name: str, *, finite: bool = False, positive: bool = False,
                allow_nan: bool = True) -> float:
    """Require a real number and return it as a Python float.

    A bool, a string, a complex number or an array raise ``TypeError`` (``True`` is a number
    to Python but a bug as a threshold). ``finite``, ``positive`` and ``allow_nan=False`` add
    value rules, each a ``ValueError``: torchvision accepts any real IoU threshold, while an
    ``eps`` must be finite and positive.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not allow_nan and math.isnan(value):
        raise ValueError(f"{name} must not be nan")
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


def positive_numbers(value, name: str) -> tuple[float, ...]:
    """Require a non-empty sequence of finite positive reals (scales, sizes, aspect ratios)
    and return it as a tuple of floats."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not value:
        raise ValueError(f"{name} must be a non-empty tuple of positive numbers, got {value!r}")
    try:
        return tuple(real_number(v, name, finite=True, positive=True) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold finite positive numbers, got {value!r}") from None


def _as_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def positive_int(value, name: str) -> int:
    """Require an integer >= 1 (e.g. ``groups``)."""
    v = _as_int(value, name)
    if v < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return v


def int_pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """Accept an int or a pair of ints (as torch does for size, stride, padding, dilation).

    Each entry must be ``>= minimum``; e.g. ``minimum=1`` for a size or a stride,
    ``minimum=0`` for padding.
    """
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        pair = (_as_int(value[0], name), _as_int(value[1], name))
    elif isinstance(value, np.ndarray) and value.shape == (2,):
        pair = (_as_int(value[0].item(), name), _as_int(value[1].item(), name))
    else:
        v = _as_int(value, name)
        pair = (v, v)
    if min(pair) < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return pair


def choice(value, name: str, options: Sequence) -> None:
    """Require ``value`` to be one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")


def boolean(value, name: str) -> bool:
    """Require a real bool (``align_corners=1`` is allowed by torch but reads like a bug)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def nonnegative_int(value, name: str) -> int:
    """Require an integer >= 0 (a count that may be zero, a seed)."""
    v = _as_int(value, name)
    if v < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return v


def number_in_range(value, name: str, low: float, high: float) -> float:
    """Require a real number in the closed interval ``[low, high]`` (``high`` may be ``inf``)
    and return it as a Python float: a fraction, a noise level, an expected count."""
    v = real_number(value, name, allow_nan=False)
    if not low <= v <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return v


def integer(value, name: str) -> int:
    """Require an integer of any sign (e.g. ``ignore_index=-100``) and return it as an int;
    a bool or a float, even a whole one, is a ``TypeError``."""
    return _as_int(value, name)


def dataset_index(index, length: int) -> int:
    """Require an index into a dataset of ``length`` items: an integer in ``[0, length)``.
    Negative indices raise ``IndexError`` (not counted from the end: ``dataset[-1]`` is
    usually an off-by-one), and so do indices past the end; a float, bool or slice is a
    ``TypeError``."""
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, numbers.Integral):
        raise TypeError(f"index must be an integer, got {index!r} ({type(index).__name__})")
    if not 0 <= index < length:
        raise IndexError(f"index {index} is out of range for a dataset of {length} items "
                         f"(valid: 0 to {length - 1}; negative indices are not supported)")
    return int(index)

"""The cuda tier on GPU arrays: device arrays in, device arrays out, nothing through the host.

Every op's cuda tier (bilinear sampling and resizing, conv2d, deform_conv2d, ms_deform_attn,
forward and backward) also takes arrays that already live on the GPU and returns numba device
arrays (docs/gpu.md; ``scratchvision.ops.cuda_common.host_or_device``). These tests prove, in
numba's CUDA simulator when there is no GPU (on tiny shapes) and on the hardware when there is
one:

* device-array inputs give the same results as NumPy inputs, as device arrays;
* no data crosses between host and device inside the op: every way numba has of copying
  (``cuda.to_device``, a host array handed to a kernel, ``copy_to_host``, ``copy_to_device``,
  and in the simulator NumPy reading a device array's memory) is counted while the op runs;
* strided and mixed-dtype device inputs work (cast and made contiguous on the device), empty
  ones give device results;
* device arrays meeting a CPU tier, host arrays, index arrays or a host-only function raise a
  ``TypeError`` naming the argument and saying how to copy it; validation reads only the
  shape and dtype;
* the device counting sort is the stable host sort;
* ``scratchvision bench --device-resident`` without a GPU says it needs one, and times
  nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from numba import config as numba_config
from numba import cuda

from scratchvision import _checks, benchmark, tier_status
from scratchvision.ops import bilinear, conv2d, cuda_common, deform_conv2d, ms_deform_attn
from scratchvision.verify import conv2d as conv2d_cases
from scratchvision.verify import deform_conv2d as deform_cases
from scratchvision.verify import ms_deform_attn as ms_cases

pytestmark = pytest.mark.skipif(not tier_status("cuda").available,
                                reason="the cuda tier cannot run here")

SIMULATOR = bool(numba_config.ENABLE_CUDASIM)
ON_GPU = tier_status("cuda").kind == "GPU"


# ----------------------------------------------------------------------------- counting copies

class HostTransfers:
    """Records every host<->device copy numba can make while installed (via ``monkeypatch``).

    * ``numba.cuda.to_device``, and the ``to_device`` of numba's device-array module, through
      which a NumPy array passed straight to a kernel is copied (``auto_device``);
    * ``copy_to_host`` and ``copy_to_device`` of the device-array class (a real
      ``DeviceNDArray``'s ``__array__`` copies through ``copy_to_host`` too);
    * in the simulator, where a device array wraps a NumPy array, any NumPy read of that memory
      from outside a kernel (``__array__``, ``__array_interface__``, ``__array_struct__``).
    """

    NUMPY_VIEWS = ("__array__", "__array_interface__", "__array_struct__")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        device_class = type(cuda.device_array(1))
        module = sys.modules[device_class.__module__]
        monkeypatch.setattr(cuda, "to_device", self._counting("cuda.to_device", cuda.to_device))
        if hasattr(module, "to_device"):
            monkeypatch.setattr(module, "to_device",
                                self._counting("devicearray.to_device", module.to_device))
        for method in ("copy_to_host", "copy_to_device"):
            monkeypatch.setattr(device_class, method,
                                self._counting(method, getattr(device_class, method)))
        if SIMULATOR:
            original = device_class.__getattr__

            def getattr_counting(array, name):
                if name in self.NUMPY_VIEWS:
                    self.calls.append(f"numpy view ({name})")
                return original(array, name)

            monkeypatch.setattr(device_class, "__getattr__", getattr_counting)

    def _counting(self, name: str, function):
        def counted(*args, **kwargs):
            self.calls.append(name)
            return function(*args, **kwargs)
        return counted


def test_the_counter_sees_every_kind_of_copy(monkeypatch):
    """The instrument works: the NumPy path's copies, a host array handed to a kernel, and
    NumPy reading device memory are all recorded."""
    rng = np.random.default_rng(4)
    image, points = rng.standard_normal((1, 1, 3, 3)), rng.uniform(0, 2, (1, 2, 2))
    device_array = cuda.to_device(np.zeros(4))
    transfers = HostTransfers(monkeypatch)
    bilinear.sample(image, points, backend="cuda")  # NumPy in, NumPy out
    assert transfers.calls.count("cuda.to_device") == 2 and "copy_to_host" in transfers.calls
    transfers.calls.clear()
    cuda_common.launch(cuda_common._fill_kernel, 4, np.zeros(4), 1.0)  # a host kernel argument
    assert transfers.calls
    transfers.calls.clear()
    np.asarray(device_array)
    assert transfers.calls


def _to_device(inputs: dict) -> dict:
    """The float arrays of ``inputs`` copied to the device; index arrays stay on the host."""
    return {name: cuda.to_device(a) if a.dtype.kind == "f" else a
            for name, a in inputs.items()}


def _entries(result) -> tuple:
    return tuple(result) if isinstance(result, tuple) else (result,)


# ----------------------------------------------------------------------------- the calls

@dataclass(frozen=True)
class Call:
    """One public function on tiny inputs: ``make_inputs(rng)`` -> dict of arrays (``gy`` the
    shape of the forward's output), ``run(backend, **inputs)`` -> result. ``atomic`` lists the
    result entries summed with float atomics (ms_deform_attn's grad_value), compared to
    rounding instead of bit for bit."""

    name: str
    make_inputs: Callable[[np.random.Generator], dict]
    run: Callable
    atomic: tuple[int, ...] = ()


def _bilinear_inputs(dtype):
    def make(rng):
        points = rng.uniform(-2.0, 6.0, (1, 3, 2, 2))  # (N, *, 2) with * = (3, 2)
        points[0, 0, 0] = [np.nan, 1.0]  # a non-finite point
        points[0, 1, 1] = [2.0, 1.0]  # a point on the kinks
        return {"image": rng.standard_normal((1, 2, 4, 5)).astype(dtype),
                "points": points.astype(dtype),
                "gy": rng.standard_normal((1, 2, 3, 2)).astype(dtype)}
    return make


def _resize_inputs(rng):
    return {"x": rng.standard_normal((1, 2, 3, 4)), "gy": rng.standard_normal((1, 2, 5, 3))}


def _case_inputs(case, forward):
    """A verify CheckCase's tiny inputs plus ``gy`` the shape of its forward's output."""
    def make(rng):
        inputs = case.make_inputs(rng, True)
        shape = forward(**inputs, backend="numpy").shape
        return dict(inputs, gy=rng.standard_normal(shape))
    return make


def _without_gy(fn):
    return lambda backend, gy, **inputs: fn(**inputs, backend=backend)


def _with_gy(fn):
    return lambda backend, gy, **inputs: fn(gy, **inputs, backend=backend)


CONV = conv2d_cases.CHECK_CASES[0]  # 3x3, padding 1, with bias
DEFORM = deform_cases.CHECK_CASES[1]  # DCNv2 (mask), bias
MS = ms_cases.CHECK_CASES[2]  # 4 heads, 4 points, 2 levels

CALLS = [
    Call("bilinear.sample float64", _bilinear_inputs(np.float64),
         lambda backend, image, points, gy: bilinear.sample(image, points, backend=backend)),
    Call("bilinear.sample float32", _bilinear_inputs(np.float32),
         lambda backend, image, points, gy: bilinear.sample(image, points, backend=backend)),
    Call("bilinear.sample_backward", _bilinear_inputs(np.float64),
         lambda backend, image, points, gy: bilinear.sample_backward(gy, image, points,
                                                                     backend=backend)),
    Call("bilinear.resize bilinear", _resize_inputs,
         lambda backend, x, gy: bilinear.resize(x, (5, 3), backend=backend)),
    Call("bilinear.resize nearest", _resize_inputs,
         lambda backend, x, gy: bilinear.resize(x, (5, 3), mode="nearest", backend=backend)),
    Call("bilinear.resize_backward", _resize_inputs,
         lambda backend, x, gy: bilinear.resize_backward(gy, x, (5, 3), align_corners=True,
                                                         backend=backend)),
    Call("conv2d.forward", _case_inputs(CONV, CONV.forward), _without_gy(CONV.forward)),
    Call("conv2d.backward", _case_inputs(CONV, CONV.forward), _with_gy(CONV.backward)),
    Call("deform_conv2d.forward", _case_inputs(DEFORM, DEFORM.forward),
         _without_gy(DEFORM.forward)),
    Call("deform_conv2d.backward", _case_inputs(DEFORM, DEFORM.forward),
         _with_gy(DEFORM.backward)),
    Call("ms_deform_attn.forward", _case_inputs(MS, MS.forward), _without_gy(MS.forward)),
    Call("ms_deform_attn.backward", _case_inputs(MS, MS.forward), _with_gy(MS.backward),
         atomic=(0,)),
]


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.name)
def test_device_arrays_in_give_device_arrays_out_and_no_host_copy(call, monkeypatch):
    inputs = call.make_inputs(np.random.default_rng(0))
    expected = call.run("cuda", **inputs)  # NumPy in, NumPy out
    assert all(e is None or isinstance(e, np.ndarray) for e in _entries(expected))
    device_inputs = _to_device(inputs)

    transfers = HostTransfers(monkeypatch)
    result = call.run("cuda", **device_inputs)
    copies = list(transfers.calls)
    monkeypatch.undo()

    assert copies == [], f"{call.name} copied between host and device inside the op: {copies}"
    assert len(_entries(result)) == len(_entries(expected))
    for index, (r, e) in enumerate(zip(_entries(result), _entries(expected))):
        if e is None:
            assert r is None
            continue
        assert _checks.is_device_array(r), f"{call.name} [{index}] is {type(r).__name__}"
        host = r.copy_to_host()
        assert host.shape == e.shape and host.dtype == e.dtype
        if index in call.atomic:  # float atomics: the order of the additions may differ
            np.testing.assert_allclose(host, e, rtol=1e-12, atol=1e-12)
        else:  # the same kernels on the same data: the same bits
            np.testing.assert_array_equal(host, e)


def test_strided_and_mixed_dtype_device_inputs_are_normalised_on_the_device(monkeypatch):
    """A strided float32 image and float64 points: cast and made C-contiguous on the device
    (no host copy -- the simulator implements the device-to-device copy with NumPy, so only the
    transfer functions are counted here), and the result is the NumPy path's."""
    rng = np.random.default_rng(1)
    wide = rng.standard_normal((1, 2, 4, 10)).astype(np.float32)
    points = rng.uniform(-1.0, 5.0, (1, 6, 2))
    expected = bilinear.sample(wide[..., ::2], points, backend="cuda")  # float64
    d_wide, d_points = cuda.to_device(wide), cuda.to_device(points)
    d_image = d_wide[:, :, :, ::2]  # every other column: a strided device view
    assert not d_image.is_c_contiguous()

    transfers = HostTransfers(monkeypatch)
    image, pts = _checks.common_float(
        ("image", _checks.float_array(d_image, "image", ndim=4, device=True)),
        ("points", _checks.float_array(d_points, "points", ndim=3, device=True)))
    result = bilinear.sample(d_image, d_points, backend="cuda")
    copies = [c for c in transfers.calls if not c.startswith("numpy view")]
    monkeypatch.undo()

    assert copies == []
    assert image.is_c_contiguous() and image.dtype == np.float64 and pts is d_points
    np.testing.assert_array_equal(image.copy_to_host(), wide[..., ::2])
    assert _checks.is_device_array(result)
    np.testing.assert_array_equal(result.copy_to_host(), expected)


def test_empty_device_inputs_give_device_results(monkeypatch):
    """Empty batches, points and channels on the device: the tier makes the device result
    (zeros where the output is not empty), still without a host copy."""
    rng = np.random.default_rng(2)
    image = cuda.to_device(rng.standard_normal((1, 2, 3, 4)))
    no_points = cuda.to_device(np.zeros((1, 0, 2)))
    x_no_channels = cuda.to_device(np.zeros((2, 0, 4, 4)))
    weight_no_channels = cuda.to_device(np.zeros((3, 0, 3, 3)))
    bias = cuda.to_device(np.array([1.0, -2.0, 0.5]))
    no_batch = cuda.to_device(np.zeros((0, 2, 3, 4)))
    no_batch_points = cuda.to_device(np.zeros((0, 5, 2)))

    transfers = HostTransfers(monkeypatch)
    out = bilinear.sample(no_batch, no_batch_points, backend="cuda")
    grads = bilinear.sample_backward(cuda.device_array((1, 2, 0)), image, no_points,
                                     backend="cuda")
    y = conv2d.forward(x_no_channels, weight_no_channels, bias, padding=1, backend="cuda")
    copies = list(transfers.calls)
    monkeypatch.undo()

    assert copies == []
    assert all(_checks.is_device_array(a) for a in (out, *grads, y))
    assert out.shape == (0, 2, 5)
    np.testing.assert_array_equal(grads.grad_image.copy_to_host(), np.zeros((1, 2, 3, 4)))
    assert grads.grad_points.shape == (1, 0, 2)
    # no input channels: the output is the bias alone
    np.testing.assert_array_equal(
        y.copy_to_host(), np.broadcast_to(np.array([1.0, -2.0, 0.5])[:, None, None],
                                          (2, 3, 4, 4)))


# ----------------------------------------------------------------------------- clear errors

CPU_BACKENDS = ["loop", "numpy", "numba"] + ([] if ON_GPU else ["auto"])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_device_array_for_a_cpu_tier_says_to_copy_it(backend):
    image = cuda.to_device(np.zeros((1, 1, 3, 3)))
    points = cuda.to_device(np.zeros((1, 2, 2)))
    with pytest.raises(TypeError, match=r"image is a GPU array.*copy_to_host") as excinfo:
        bilinear.sample(image, points, backend=backend)
    assert "backend='cuda'" in str(excinfo.value)
    if backend == "auto":
        assert "only on a real GPU" in str(excinfo.value)


def test_every_op_applies_the_placement_rule():
    """One device array per op sent to the numba tier: the error names it."""
    x = cuda.to_device(np.zeros((1, 2, 4, 4)))
    weight = np.zeros((2, 2, 3, 3))
    with pytest.raises(TypeError, match="x is a GPU array"):
        conv2d.forward(x, cuda.to_device(weight), backend="numba")
    with pytest.raises(TypeError, match="x is a GPU array"):
        deform_conv2d.forward(x, cuda.to_device(np.zeros((1, 18, 4, 4))),
                              cuda.to_device(weight), padding=1, backend="numba")
    with pytest.raises(TypeError, match="x is a GPU array"):
        bilinear.resize(x, (2, 2), backend="numba")
    shapes = np.array([[2, 2]])
    with pytest.raises(TypeError, match="value is a GPU array"):
        ms_deform_attn.forward(cuda.to_device(np.zeros((1, 4, 1, 2))), shapes,
                               ms_deform_attn.level_start_index_of(shapes),
                               cuda.to_device(np.zeros((1, 3, 1, 1, 2, 2))),
                               cuda.to_device(np.zeros((1, 3, 1, 1, 2))), backend="numba")


def test_host_and_device_arrays_in_one_call_raise():
    image = cuda.to_device(np.zeros((1, 1, 3, 3)))
    points = np.zeros((1, 2, 2))
    with pytest.raises(TypeError, match=r"image is a GPU array but points is a host array"):
        bilinear.sample(image, points, backend="cuda")
    with pytest.raises(TypeError, match=r"weight is a GPU array but x is a host array"):
        conv2d.forward(np.zeros((1, 1, 3, 3)), cuda.to_device(np.zeros((1, 1, 1, 1))),
                       backend="cuda")


def test_index_arrays_stay_on_the_host():
    shapes = np.array([[2, 2]])
    with pytest.raises(TypeError, match="spatial_shapes must be a host"):
        ms_deform_attn.forward(cuda.to_device(np.zeros((1, 4, 1, 2))), cuda.to_device(shapes),
                               np.array([0]), cuda.to_device(np.zeros((1, 3, 1, 1, 2, 2))),
                               cuda.to_device(np.zeros((1, 3, 1, 1, 2))), backend="cuda")


def test_host_only_functions_reject_device_arrays():
    with pytest.raises(TypeError, match="inputs is a GPU array, but this function takes host"):
        _checks.float_array(cuda.to_device(np.zeros(3)), "inputs")


class _InterfaceOnly:
    """An object that is nothing but a ``__cuda_array_interface__`` with no memory behind it
    (data pointer 0): validation must reject it from the shape and dtype alone."""

    def __init__(self, shape, typestr):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0, False),
                                         "strides": None, "version": 3}


def test_device_arrays_are_validated_from_shape_and_dtype_alone(monkeypatch):
    """The dtype and the number of dimensions are read from ``__cuda_array_interface__`` before
    anything else (an object with no memory behind it fails them cleanly); the op's shape
    rules then run on the device array's shape, with no copy to the host."""
    assert _checks.is_device_array(_InterfaceOnly((2,), "<f4"))
    assert not _checks.is_device_array(np.zeros(2))
    with pytest.raises(TypeError, match=r"image must be a float32 or float64 array, got dtype "
                                        r"int64"):
        bilinear.sample(_InterfaceOnly((1, 1, 3, 3), "<i8"), _InterfaceOnly((1, 2, 2), "<f4"),
                        backend="cuda")
    with pytest.raises(ValueError, match=r"image must have 4 dimensions, got shape \(3, 3\)"):
        bilinear.sample(_InterfaceOnly((3, 3), "<f4"), _InterfaceOnly((1, 2, 2), "<f4"),
                        backend="cuda")
    image, points = cuda.to_device(np.zeros((1, 1, 3, 3))), cuda.to_device(np.zeros((1, 2, 3)))
    transfers = HostTransfers(monkeypatch)
    with pytest.raises(ValueError, match=r"points must have a last dimension of size 2"):
        bilinear.sample(image, points, backend="cuda")
    copies = list(transfers.calls)
    monkeypatch.undo()
    assert copies == []


@pytest.mark.skipif(not SIMULATOR, reason="the simulator's limitation")
def test_the_simulator_names_foreign_gpu_arrays_it_cannot_take():
    with pytest.raises(TypeError, match=r"image exposes __cuda_array_interface__, but numba "
                                        r"runs its CUDA simulator"):
        bilinear.sample(_InterfaceOnly((1, 1, 3, 3), "<f4"), _InterfaceOnly((1, 2, 2), "<f4"),
                        backend="cuda")


# ----------------------------------------------------------------------------- binning

def test_the_device_counting_sort_is_the_stable_host_sort():
    rng = np.random.default_rng(3)
    n_keys = 7
    keys = rng.integers(-1, n_keys, 60)
    keys[:9] = 3  # one crowded bin
    order_host = np.argsort(np.where(keys < 0, n_keys, keys), kind="stable")
    start_host = np.zeros(n_keys + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys[keys >= 0], minlength=n_keys), out=start_host[1:])
    for _ in range(2):  # the same on every run
        start, order = cuda_common.bin_by_key(cuda.to_device(keys), n_keys)
        start, order = start.copy_to_host(), order.copy_to_host()
        np.testing.assert_array_equal(start, start_host)
        np.testing.assert_array_equal(order[:start[-1]], order_host[:start_host[-1]])
    start, order = cuda_common.bin_by_key(cuda.to_device(np.zeros(0, dtype=np.int64)), 0)
    assert start.copy_to_host().tolist() == [0] and order.shape == (0,)


# ----------------------------------------------------------------------------- the benchmark

@pytest.mark.skipif(ON_GPU, reason="on a GPU the device-resident benchmark runs")
def test_device_resident_bench_without_a_gpu_says_so_and_times_nothing(capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "_one_run", lambda *a, **k: pytest.fail("timed something"))
    assert benchmark.main("bilinear", False, True, device_resident=True) == 0
    out = capsys.readouterr().out
    assert "needs a real GPU" in out and "nothing was timed" in out

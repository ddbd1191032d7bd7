"""``ImagePyramid`` and prediction fusion: what is exactly true of an identity model on dense
maps, the gradient of dense fusion (finite differences, through a trainable Conv2d too), and
box fusion: one object seen at every scale becomes one box; clusters are NMS's.

Tolerances. ``u = 2**-53`` is float64's unit roundoff. One bilinear resize output is a convex
combination of 2 x 2 taps: the source coordinate (<= 2 roundings), the weights ``l1`` and
``1 - l1`` (1 each), the products ``w_y * w_x * v`` (2) and the sum of four (3): at most 8
roundings, each of size <= u * max|f| (a convex combination never exceeds max|f|); an error of
``2 u`` in the source coordinate moves a linear ramp by ``2 u * |slope| * size <= 2 u * max|f|``
for the ramps below (their range is below their maximum). Down and back up is two resizes, and
the mean over S <= 3 scales adds S roundings: ``2 * (8 + 2) + 3 = 23`` units of ``u * max|f|``;
:data:`ROUNDING` allows 64. A wrong weight or tap is off by the order of the slope, 1e15 times
more.
"""

from __future__ import annotations

import numpy as np
import pytest

from scratchvision import BackendUnavailableError, gradcheck
from scratchvision.detection.nms import batched_nms
from scratchvision.detection.pyramid import (Detections, ImagePyramid, box_clusters,
                                             fuse_boxes, fuse_dense, fuse_dense_backward,
                                             rescale_boxes, scaled_size, weighted_box_fusion)
from scratchvision.nn import Conv2d

from tiers import assert_tiers_agree, awkward_layouts, run_on_every_tier

U = np.finfo(np.float64).eps / 2
ROUNDING = 64 * U  # times max|f|; derived in the module docstring


def _identity(x):
    return x


def _ramp(n: int, c: int, height: int, width: int) -> np.ndarray:
    """(N, C, H, W) linear ramps ``a x + b y + d`` with a different plane per (n, c)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [(0.7 + k) * x - (1.3 - 0.2 * k) * y + (2.0 + k) for k in range(n * c)]
    return np.stack(planes).reshape(n, c, height, width)


# ----------------------------------------------------------------------------- sizes and cost

def test_scaled_sizes_round_and_keep_at_least_one_pixel():
    assert scaled_size((10, 7), 0.5) == (5, 4)  # 3.5 -> 4 (Python rounds halves to even)
    assert scaled_size((10, 5), 0.5) == (5, 2)  # 2.5 -> 2
    assert scaled_size((10, 7), 0.01) == (1, 1)
    assert ImagePyramid((0.5, 1.0, 1.5)).sizes((12, 16)) == [(6, 8), (12, 16), (18, 24)]


def test_relative_cost_is_the_sum_of_squared_scales():
    pyramid = ImagePyramid((0.5, 1.0, 1.5))
    assert pyramid.relative_cost() == 3.5  # 0.25 + 1 + 2.25
    assert pyramid.relative_cost((10, 10)) == (25 + 100 + 225) / 100
    assert ImagePyramid((0.33,)).relative_cost((10, 10)) == 9 / 100  # 3.3 -> 3 pixels a side


# ----------------------------------------------------------------------------- dense fusion

@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_one_scale_of_one_is_exactly_the_identity(fusion, align_corners):
    images = np.random.default_rng(0).standard_normal((2, 3, 5, 7))
    pyramid = ImagePyramid((1.0,), align_corners=align_corners)
    np.testing.assert_array_equal(pyramid.predict_dense(_identity, images, fusion), images)


@pytest.mark.parametrize("scales", [(0.5, 1.0, 2.0), (0.3, 0.75, 1.7)])
@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_align_corners_true_reproduces_a_linear_ramp(scales, fusion):
    """With align_corners=True every source coordinate lies inside the grid (corners map to
    corners) and bilinear interpolation reproduces a linear function exactly: down and back up
    is the identity on a ramp, for any scales whose copies are at least 2 x 2."""
    images = _ramp(1, 2, 12, 16)
    assert min(min(size) for size in ImagePyramid(scales).sizes((12, 16))) >= 2
    fused = ImagePyramid(scales, align_corners=True).predict_dense(_identity, images, fusion)
    np.testing.assert_allclose(fused, images, rtol=0, atol=ROUNDING * np.abs(images).max())


@pytest.mark.parametrize("scales", [(0.5, 1.0, 2.0), (0.5, 1.0, 1.5)])
@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_align_corners_false_reproduces_a_ramp_away_from_the_border(scales, fusion):
    """align_corners=False maps pixel areas: upsampling by f reads source coordinates below 0
    (or above the last pixel) within (f - 1) / 2 output pixels of the border, and torch clamps
    them, which flattens the ramp there. Downsampling never clamps. For these scales (exact
    size ratios: 12 x 16 -> 6 x 8, 18 x 24, 24 x 32) only the outermost ring of the fused map
    is affected (up by 2 clamps half a pixel; going down reads the clamped pixel only for the
    first and last output), so the interior is the ramp to rounding."""
    images = _ramp(2, 1, 12, 16)
    fused = ImagePyramid(scales, align_corners=False).predict_dense(_identity, images, fusion)
    np.testing.assert_allclose(fused[..., 1:-1, 1:-1], images[..., 1:-1, 1:-1], rtol=0,
                               atol=ROUNDING * np.abs(images).max())
    assert np.abs(fused - images).max() > 1e-3  # and the border really is clamped


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_a_constant_image_stays_constant(fusion, align_corners):
    """Every resize output is a convex combination: a constant comes back as itself to
    rounding (no coordinate error matters here: 2 * 8 + 5 = 21 units for 5 scales) at any
    scales, borders included."""
    images = np.full((1, 2, 7, 9), 0.1)
    pyramid = ImagePyramid((0.3, 0.5, 1.0, 1.5, 2.2), align_corners=align_corners)
    fused = pyramid.predict_dense(_identity, images, fusion)
    np.testing.assert_allclose(fused, images, rtol=0, atol=ROUNDING * 0.1)


def test_max_fusion_takes_the_elementwise_maximum():
    """Maps already at the target size are not resized: the result is the plain max / mean."""
    a = np.array([[[[1.0, 5.0], [-2.0, 0.0]]]])
    b = np.array([[[[3.0, 4.0], [-1.0, 0.0]]]])
    np.testing.assert_array_equal(fuse_dense([a, b], (2, 2), "max"), [[[[3, 5], [-1, 0]]]])
    np.testing.assert_array_equal(fuse_dense([a, b], (2, 2), "mean"),
                                  [[[[2, 4.5], [-1.5, 0]]]])


def test_model_outputs_of_another_resolution_are_resized_to_the_image():
    """A model with stride 2 (here: a 2 x 2 mean) still fuses to the image's (H, W)."""
    def stride_two(x):
        n, c, h, w = x.shape
        return x[..., :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).mean((3, 5))

    images = np.full((1, 1, 8, 12), 2.0)
    fused = ImagePyramid((1.0, 2.0)).predict_dense(stride_two, images)
    assert fused.shape == (1, 1, 8, 12)
    np.testing.assert_allclose(fused, 2.0, rtol=0, atol=ROUNDING * 2.0)


def _maps(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, 2) + size) for size in ((3, 4), (5, 7), (8, 9))]


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_resize_tiers_agree_on_fusion_and_its_gradient(fusion):
    maps, grad = _maps(), np.random.default_rng(1).standard_normal((2, 2, 5, 7))
    results = run_on_every_tier(
        lambda backend: (fuse_dense(maps, (5, 7), fusion, backend=backend),
                         *fuse_dense_backward(grad, maps, (5, 7), fusion, backend=backend)),
        simulated_cuda=False)
    assert {"loop", "numpy"} <= set(results)
    assert_tiers_agree(results)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_dense_fusion_gradient_matches_finite_differences(fusion, align_corners):
    maps = _maps()
    if fusion == "max":
        # precondition: no near-ties between the best two scales, which a finite difference
        # step of 1e-6 could swap (the max is not differentiable there)
        resized = np.sort(np.stack([fuse_dense([m], (5, 7), align_corners=align_corners)
                                    for m in maps]), axis=0)
        assert (resized[-1] - resized[-2]).min() > 1e-4

    def forward(*arrays):
        return fuse_dense(list(arrays), (5, 7), fusion, align_corners, backend="numpy")

    def backward(gy, *arrays):
        return tuple(fuse_dense_backward(gy, list(arrays), (5, 7), fusion, align_corners,
                                         backend="numpy"))

    gradcheck(forward, backward, maps).raise_if_failed()


def test_max_gradient_goes_to_the_first_of_tied_scales():
    a = np.array([[[[1.0, 2.0]]]])
    b = np.array([[[[1.0, 3.0]]]])
    grad_a, grad_b = fuse_dense_backward(np.array([[[[10.0, 20.0]]]]), [a, b], (1, 2), "max")
    np.testing.assert_array_equal(grad_a, [[[[10.0, 0.0]]]])
    np.testing.assert_array_equal(grad_b, [[[[0.0, 20.0]]]])


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_a_pyramid_over_a_conv_layer_can_be_trained(fusion):
    """backward_dense through Conv2d at three scales: the image gradient and the conv's weight
    and bias gradients (summed over the scales) against central differences."""
    conv = Conv2d(2, 3, 3, padding=1, rng=0, backend="numpy")
    pyramid = ImagePyramid((0.5, 1.0, 1.5), backend="numpy")
    images = np.random.default_rng(2).standard_normal((1, 2, 6, 8))

    def load(weight, bias):
        conv.weight.data[...] = weight
        conv.bias.data[...] = bias

    def forward(images, weight, bias):
        load(weight, bias)
        return pyramid.predict_dense(conv, images, fusion)

    def backward(gy, images, weight, bias):
        load(weight, bias)
        conv.zero_grad()
        grad_images = pyramid.backward_dense(conv, gy, images, fusion)
        return grad_images, conv.weight.grad.copy(), conv.bias.grad.copy()

    inputs = dict(images=images, weight=conv.weight.data.copy(), bias=conv.bias.data.copy())
    gradcheck(forward, backward, inputs).raise_if_failed()


def test_awkward_layouts_and_float32_just_work_and_inputs_are_not_modified():
    images = np.random.default_rng(3).standard_normal((2, 2, 6, 5))
    pyramid = ImagePyramid((0.5, 1.5))
    expected = pyramid.predict_dense(_identity, images)
    for name, view in awkward_layouts(images).items():
        before = view.copy()
        np.testing.assert_array_equal(pyramid.predict_dense(_identity, view), expected,
                                      err_msg=name)
        np.testing.assert_array_equal(view, before, err_msg=name)
    fused32 = pyramid.predict_dense(_identity, images.astype(np.float32))
    assert fused32.dtype == np.float32
    assert pyramid.predict_dense(_identity, np.zeros((0, 2, 6, 5))).shape == (0, 2, 6, 5)


# ----------------------------------------------------------------------------- boxes

def _rectangle_detector(images):
    """A toy detector tuned to 8-pixel objects: the bounding box ``(x1, y1, x2, y2)`` of the
    pixels brighter than 0.5 (continuous coordinates: pixel j spans [j, j + 1]), scored
    ``1 / (1 + |log2(side / 8)|)`` with ``side`` the box's square-root area, label 3."""
    detections = []
    for image in images[:, 0]:
        rows, cols = np.nonzero(image > 0.5)
        if rows.size == 0:
            detections.append((np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)))
            continue
        box = np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], float)
        side = np.sqrt((box[0, 2] - box[0, 0]) * (box[0, 3] - box[0, 1]))
        detections.append((box, np.array([1 / (1 + abs(np.log2(side / 8)))]), np.array([3])))
    return detections


def _rectangle_images() -> np.ndarray:
    """Image 0: an 8 x 8 square at rows 4..11, cols 6..13, box (6, 4, 14, 12); image 1: dark."""
    images = np.zeros((2, 1, 16, 24))
    images[0, 0, 4:12, 6:14] = 1.0
    return images


def test_rectangle_detector_sees_the_same_object_at_every_scale():
    """Edges on even pixels: halving averages pixel pairs that are both in or both out, and
    doubling puts the 0.5 crossing exactly between two output pixels (weights 0.25 / 0.75),
    so the box at scale s is exactly s times (6, 4, 14, 12)."""
    pyramid = ImagePyramid((0.5, 1.0, 2.0))
    for scale, copy in zip(pyramid.scales, pyramid.resize_inputs(_rectangle_images())):
        boxes, scores, _ = _rectangle_detector(copy)[0]
        np.testing.assert_array_equal(boxes, [[6 * scale, 4 * scale, 14 * scale, 12 * scale]])
        assert scores[0] == (1.0 if scale == 1.0 else 0.5)


def test_one_object_seen_at_every_scale_is_fused_to_one_box():
    pyramid = ImagePyramid((0.5, 1.0, 2.0))
    by_nms = pyramid.predict_boxes(_rectangle_detector, _rectangle_images(), fusion="nms")
    by_weights = pyramid.predict_boxes(_rectangle_detector, _rectangle_images(),
                                       fusion="weighted")
    # nms keeps the best scale's box (exact); the weighted mean of three equal boxes is
    # exact up to normalising the weights (3 roundings) and their weighted sum (5): 8 u * 14
    for fused, score in ((by_nms[0], 1.0), (by_weights[0], 2 / 3)):
        np.testing.assert_allclose(fused.boxes, [[6, 4, 14, 12]], rtol=0, atol=8 * U * 14)
        np.testing.assert_allclose(fused.scores, [score], rtol=4 * U)
        np.testing.assert_array_equal(fused.labels, [3])
    for empty in (by_nms[1], by_weights[1]):  # the dark image: nothing at any scale
        assert empty.boxes.shape == (0, 4) and empty.scores.shape == (0,)
        assert empty.labels.shape == (0,) and empty.labels.dtype == np.int64


def test_rescale_boxes_scales_each_axis():
    np.testing.assert_array_equal(rescale_boxes([[1, 2, 3, 4]], (10, 20), (15, 10)),
                                  [[0.5, 3.0, 1.5, 6.0]])  # x * 10 / 20, y * 15 / 10
    assert rescale_boxes(np.array([[1, 2, 3, 4]]), (1, 1), (2, 2)).dtype == np.float64
    assert rescale_boxes(np.zeros((2, 4), np.float32), (4, 4), (3, 3)).dtype == np.float32


def test_fuse_boxes_maps_each_scale_back_before_fusing():
    """Scale 0.5 saw the object at (3, 2, 7, 6) in a 8 x 12 copy, scale 2 at (12, 8, 28, 24)
    in 32 x 48; both are (6, 4, 14, 12) in the 16 x 24 image."""
    detections = [(np.array([[3.0, 2, 7, 6]]), np.array([0.3]), np.array([1])),
                  {"boxes": np.array([[12.0, 8, 28, 24]]), "scores": np.array([0.9]),
                   "labels": np.array([1])}]
    fused = fuse_boxes(detections, [(8, 12), (32, 48)], (16, 24), "nms")
    np.testing.assert_array_equal(fused.boxes, [[6, 4, 14, 12]])
    np.testing.assert_array_equal(fused.scores, [0.9])


def test_weighted_box_fusion_by_hand():
    """Boxes 0 and 1 overlap with IoU 81 / 119 = 0.68 > 0.5; weights 0.75 : 0.25 put the fused
    box a quarter of the way from box 0 to box 1; its score is the mean 0.5. Box 2 is alone
    (score 0.6, so it comes first), box 3 overlaps box 0 but has another label."""
    boxes = np.array([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]])
    fused = weighted_box_fusion(boxes, np.array([0.75, 0.25, 0.6, 0.1]),
                                np.array([7, 7, 7, 8]), iou_threshold=0.5)
    np.testing.assert_allclose(fused.boxes, [[50, 50, 60, 60], [0.25, 0.25, 10.25, 10.25],
                                             [0, 0, 10, 10]], rtol=0, atol=4 * U * 60)
    np.testing.assert_allclose(fused.scores, [0.6, 0.5, 0.1], rtol=2 * U)
    np.testing.assert_array_equal(fused.labels, [7, 7, 8])


def test_weighted_fusion_of_separate_boxes_returns_them_exactly():
    """One-box clusters get weight p / p = 1 exactly: a single-scale pyramid whose boxes do
    not overlap is returned unchanged (sorted by score), bit for bit."""
    boxes = np.array([[0.1, 0.2, 3.3, 4.4], [10.7, 0.3, 12.9, 5.1], [0.1, 0.2, 3.3, 4.4]])
    scores, labels = np.array([0.3, 0.7, 0.45]), np.array([0, 0, 1])
    fused = fuse_boxes([(boxes, scores, labels)], [(20, 20)], (20, 20), "weighted")
    np.testing.assert_array_equal(fused.boxes, boxes[[1, 2, 0]])
    np.testing.assert_array_equal(fused.scores, scores[[1, 2, 0]])
    np.testing.assert_array_equal(fused.labels, labels[[1, 2, 0]])


@pytest.mark.parametrize("fusion", ["nms", "weighted"])
def test_box_layouts_just_work_and_are_not_modified(fusion):
    rng = np.random.default_rng(5)
    corners = rng.uniform(0, 20, (12, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(1, 8, (12, 2))], axis=1)
    scores, labels = rng.uniform(0, 1, 12), rng.integers(0, 2, 12)
    expected = fuse_boxes([(boxes, scores, labels)], [(10, 10)], (20, 30), fusion)
    for name, view in awkward_layouts(boxes).items():
        before = view.copy()
        fused = fuse_boxes([(view, scores[::-1][::-1], labels)], [(10, 10)], (20, 30), fusion)
        for got, want in zip(fused, expected):
            np.testing.assert_array_equal(got, want, err_msg=name)
        np.testing.assert_array_equal(view, before, err_msg=name)


def test_a_cluster_of_zero_scores_gets_the_plain_mean():
    fused = weighted_box_fusion([[0, 0, 4, 4], [0, 0, 4, 6]], np.zeros(2), np.zeros(2, int))
    np.testing.assert_array_equal(fused.boxes, [[0, 0, 4, 5]])
    np.testing.assert_array_equal(fused.scores, [0.0])


@pytest.mark.parametrize("iou_threshold", [-0.1, 0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_cluster_seeds_are_exactly_the_boxes_nms_keeps(seed, iou_threshold):
    """Random overlapping boxes of 3 classes with tied scores (rounded to 0.1) and a few
    degenerate boxes; the clusters partition the boxes, and each member overlaps its seed."""
    rng = np.random.default_rng(seed)
    k = 40
    corners = rng.uniform(0, 30, (k, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(0, 12, (k, 2))], axis=1)
    boxes[:3, 2] = boxes[:3, 0]  # zero width
    scores = np.round(rng.uniform(0, 1, k), 1)
    labels = rng.integers(0, 3, k)
    clusters = box_clusters(boxes, scores, labels, iou_threshold)
    seeds = np.array([c[0] for c in clusters])
    np.testing.assert_array_equal(seeds, batched_nms(boxes, scores, labels, iou_threshold,
                                                     backend="loop"))
    np.testing.assert_array_equal(np.sort(np.concatenate(clusters)), np.arange(k))
    for members in clusters:
        seed_box = boxes[members[0]]
        for i in members[1:]:
            assert labels[i] == labels[members[0]]
            assert scores[i] <= scores[members[0]]
            # IoU by hand for the pair
            w = min(seed_box[2], boxes[i, 2]) - max(seed_box[0], boxes[i, 0])
            h = min(seed_box[3], boxes[i, 3]) - max(seed_box[1], boxes[i, 1])
            inter = max(w, 0) * max(h, 0)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            assert inter / (area(seed_box) + area(boxes[i]) - inter) > iou_threshold


@pytest.mark.parametrize("fusion", ["nms", "weighted"])
def test_empty_predictions(fusion):
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    fused = fuse_boxes([empty, empty], [(4, 4), (8, 8)], (8, 8), fusion)
    assert isinstance(fused, Detections)
    assert fused.boxes.shape == (0, 4) and fused.boxes.dtype == np.float32
    assert fused.scores.shape == (0,) and fused.labels.shape == (0,)
    one = (np.array([[0.0, 0, 2, 2]]), np.array([0.5]), np.array([0]))
    fused = fuse_boxes([empty, one], [(4, 4), (8, 8)], (16, 16), fusion)
    np.testing.assert_array_equal(fused.boxes, [[0, 0, 4, 4]])


def test_nms_backend_is_passed_through():
    one = (np.array([[0.0, 0, 2, 2]]), np.array([0.5]), np.array([0]))
    for backend in ("loop", "numpy"):
        fused = fuse_boxes([one], [(4, 4)], (4, 4), "nms", backend=backend)
        np.testing.assert_array_equal(fused.boxes, one[0])
    with pytest.raises(BackendUnavailableError, match="cuda"):
        fuse_boxes([one], [(4, 4)], (4, 4), "nms", backend="cuda")


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("scales", [(0.5, 0.0), (-1.0,), (), (1.0, float("nan")),
                                    (float("inf"),), "1.0", 1.0, (True,)])
def test_scales_must_be_positive_finite_numbers(scales):
    with pytest.raises(ValueError, match=r"\bscales\b"):
        ImagePyramid(scales)


def test_unknown_fusions_are_rejected_by_name():
    pyramid, images = ImagePyramid((1.0,)), np.zeros((1, 1, 4, 4))
    for call in (lambda: pyramid.predict_dense(_identity, images, "median"),
                 lambda: fuse_dense([images], (4, 4), "nms"),
                 lambda: fuse_dense_backward(images, [images], (4, 4), "sum"),
                 lambda: pyramid.predict_boxes(_rectangle_detector, images, "mean"),
                 lambda: fuse_boxes([], [], (4, 4), "soft-nms")):
        with pytest.raises(ValueError, match=r"\bfusion\b"):
            call()


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match=r"\balign_corners\b"):
        ImagePyramid(align_corners=1)
    with pytest.raises(ValueError, match=r"\bbackend\b"):
        ImagePyramid(backend="gpu")


def test_bad_images_and_maps():
    pyramid = ImagePyramid((1.0,))
    with pytest.raises(ValueError, match=r"\bimages\b"):
        pyramid.predict_dense(_identity, np.zeros((4, 4)))
    with pytest.raises(TypeError, match=r"\bimages\b"):
        pyramid.predict_dense(_identity, np.zeros((1, 1, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\bimages\b"):
        pyramid.predict_dense(_identity, np.zeros((1, 1, 0, 4)))
    with pytest.raises(ValueError, match=r"maps\[1\]"):
        fuse_dense([np.zeros((1, 2, 3, 3)), np.zeros((1, 3, 3, 3))], (3, 3))
    with pytest.raises(ValueError, match=r"\bmaps\b"):
        fuse_dense([], (3, 3))
    with pytest.raises(ValueError, match=r"\bsize\b"):
        fuse_dense([np.zeros((1, 2, 3, 3))], (0, 3))
    with pytest.raises(ValueError, match=r"\bbackend\b"):  # checked even with nothing to resize
        fuse_dense([np.zeros((1, 2, 3, 3))], (3, 3), backend="gpu")
    with pytest.raises(TypeError, match=r"\balign_corners\b"):
        fuse_dense_backward(np.zeros((1, 2, 3, 3)), [np.zeros((1, 2, 3, 3))], (3, 3),
                            align_corners=None)
    with pytest.raises(ValueError, match=r"\bgrad\b"):
        fuse_dense_backward(np.zeros((1, 2, 3, 4)), [np.zeros((1, 2, 3, 3))], (3, 3))
    with pytest.raises(ValueError, match=r"grads\[0\]"):
        ImagePyramid((0.5,)).resize_inputs_backward([np.zeros((1, 1, 4, 4))],
                                                    np.zeros((1, 1, 4, 4)))


def test_bad_detections():
    boxes, scores, labels = np.zeros((2, 4)), np.array([0.5, 0.4]), np.array([0, 1])
    with pytest.raises(ValueError, match=r"scores \(scale 0\)"):
        fuse_boxes([(boxes, np.array([0.5, np.nan]), labels)], [(4, 4)], (4, 4))
    with pytest.raises(ValueError, match=r"labels \(scale 1\)"):
        fuse_boxes([(boxes, scores, labels), (boxes, scores, labels[:1])], [(4, 4)] * 2, (4, 4))
    with pytest.raises(TypeError, match=r"labels \(scale 0\)"):
        fuse_boxes([(boxes, scores, labels.astype(float))], [(4, 4)], (4, 4))
    with pytest.raises(ValueError, match=r"boxes \(scale 0\)"):
        fuse_boxes([(np.zeros((2, 3)), scores, labels)], [(4, 4)], (4, 4))
    with pytest.raises(ValueError, match=r"\bfrom_sizes\b"):
        fuse_boxes([(boxes, scores, labels)], [(4, 4), (8, 8)], (4, 4))
    with pytest.raises(ValueError, match=r"\bscores\b"):
        weighted_box_fusion(boxes, np.array([0.5, -0.1]), labels)
    with pytest.raises(TypeError, match=r"\biou_threshold\b"):
        box_clusters(boxes, scores, labels, "0.5")
    with pytest.raises(ValueError, match="one detections entry per image"):
        ImagePyramid((1.0,)).predict_boxes(lambda x: [], np.zeros((2, 1, 4, 4)))

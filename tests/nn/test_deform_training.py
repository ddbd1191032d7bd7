"""Training: a DeformConv2d learns to undo a known shift that no plain 3x3 convolution can.

The task: the target is the input moved by SHIFT = (2, 4) pixels, ``target[p] = x[p + SHIFT]``,
four columns further than a 3x3 kernel (reach 1) can see. A deformable convolution only has to
move its taps there; a plain convolution can at best blend the pixels it sees.

How well *can* a plain 3x3 convolution do? Its output is linear in its 10 numbers (9 weights,
1 bias), so the smallest loss any 3x3 Conv2d reaches on this data is a linear least-squares
problem, solved exactly by :func:`best_conv2d_loss`, independently of the layers under test.
That bound, not a number tuned to make the test pass, sets the thresholds:

* the trained Conv2d cannot go below the bound (it is the global minimum of a convex
  problem); it must come within a factor 2 of it, to show that it was trained properly;
* the trained DeformConv2d must reach a loss 10 times smaller than the bound: better than
  *any* 3x3 convolution by a clear factor. It can represent the target exactly (the taps moved
  by SHIFT minus their grid position), so its best loss is 0.

With seed 0 the bound is 0.362 (39 % of the target's variance), the trained Conv2d ends at
0.383 and the DeformConv2d at 1.7e-5; over seeds 0-7 the DeformConv2d ended 600 to 290000
times below the bound, so the factor 10 leaves a wide margin for changes in initialisation or
rounding.

The images are smooth (Gaussian-filtered noise, sigma 2 pixels, auto-correlation still
exp(-9/16) ~ 0.57 at 3 pixels), so the bilinear gradient with respect to an offset points
towards the shifted content from the start; they are broadband enough that no 3x3 filter
approximates a 4-pixel shift (the bound is about 40 % of the target's variance).
"""

from __future__ import annotations

import numpy as np

from scratchvision import nn, optim

SHIFT = (2, 4)  # (dy, dx): target[p] = x[p + SHIFT]
SIZE = 20  # images are SIZE x SIZE
BATCH = 8
SIGMA = 2.0  # the smoothing, in pixels
STEPS = 200
LEARNING_RATE = 0.05
BACKEND = "numba"


def smooth_images(rng: np.random.Generator, n: int, size: int, sigma: float) -> np.ndarray:
    """(n, size, size) white noise low-pass filtered by a Gaussian of ``sigma`` pixels (in the
    Fourier domain, so periodically), scaled to unit standard deviation."""
    frequencies = np.fft.fftfreq(size)  # cycles per pixel
    fy, fx = np.meshgrid(frequencies, frequencies, indexing="ij")
    transfer = np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))  # Gaussian's transform
    noise = rng.standard_normal((n, size, size))
    images = np.real(np.fft.ifft2(np.fft.fft2(noise) * transfer))
    return images / images.std()


def shifted_pairs(rng: np.random.Generator):
    """x (BATCH, 1, SIZE, SIZE) and target of the same shape, cut from larger images so that the
    target really is x's surroundings moved by SHIFT."""
    margin = 8
    canvas = smooth_images(rng, BATCH, SIZE + 2 * margin, SIGMA)
    dy, dx = SHIFT
    x = canvas[:, None, margin:margin + SIZE, margin:margin + SIZE]
    target = canvas[:, None, margin + dy:margin + dy + SIZE, margin + dx:margin + dx + SIZE]
    return np.ascontiguousarray(x), np.ascontiguousarray(target)


def loss_window() -> np.ndarray:
    """(SIZE, SIZE) bool: the output pixels p whose source p + SHIFT lies inside x. Elsewhere
    the target shows content that no layer can see; both layers are scored on this window."""
    window = np.zeros((SIZE, SIZE), dtype=bool)
    window[:SIZE - SHIFT[0], :SIZE - SHIFT[1]] = True
    return window


def masked_mse(y: np.ndarray, target: np.ndarray, window: np.ndarray):
    """The mean squared error over the window, and its gradient with respect to y."""
    difference = np.where(window, y - target, 0.0)  # (N, 1, SIZE, SIZE)
    count = y.shape[0] * window.sum()
    return float(np.sum(difference**2) / count), 2.0 * difference / count


def best_conv2d_loss(x: np.ndarray, target: np.ndarray, window: np.ndarray) -> float:
    """The smallest masked MSE of *any* 3x3 convolution with padding 1 and a bias, by least
    squares: one row per output pixel in the window, one column per kernel tap (the input
    pixel that tap reads, zero in the padding) plus a column of ones for the bias."""
    padded = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))  # (N, SIZE + 2, SIZE + 2)
    columns = [padded[:, i:i + SIZE, j:j + SIZE][:, window] for i in range(3) for j in range(3)]
    design = np.stack([c.ravel() for c in columns] + [np.ones(columns[0].size)], axis=1)
    values = target[:, 0][:, window].ravel()
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    return float(np.mean((design @ coefficients - values) ** 2))


def train(layer: nn.Module, x, target, window) -> list[float]:
    """Adam on the masked MSE for STEPS steps; the loss before each step, then the final one."""
    optimizer = optim.Adam(layer.parameters(), lr=LEARNING_RATE)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss, grad = masked_mse(layer(x), target, window)
        layer.backward(grad)
        optimizer.step()
        losses.append(loss)
    losses.append(masked_mse(layer(x), target, window)[0])
    return losses


def test_deform_conv2d_learns_a_shift_that_no_conv2d_can():
    rng = np.random.default_rng(0)
    x, target = shifted_pairs(rng)
    window = loss_window()
    bound = best_conv2d_loss(x, target, window)
    variance = float(np.mean(target[:, 0][:, window] ** 2))
    assert bound > 0.2 * variance, "the task must be hard for a 3x3 convolution"

    conv = nn.Conv2d(1, 1, 3, padding=1, rng=rng, backend=BACKEND)
    conv_losses = train(conv, x, target, window)
    deform = nn.DeformConv2d(1, 1, 3, padding=1, rng=rng, backend=BACKEND)
    deform_losses = train(deform, x, target, window)

    summary = (f"best 3x3 conv {bound:.4f} (target variance {variance:.4f}); trained Conv2d "
               f"{conv_losses[-1]:.4f}; trained DeformConv2d {deform_losses[-1]:.2e}")
    assert conv_losses[-1] >= bound * (1 - 1e-9), summary
    assert conv_losses[-1] < 2 * bound, summary
    assert deform_losses[-1] < bound / 10, summary

    # where the taps went: averaged over the window, weighted by how much each tap counts
    # (|weight * mask|), the taps sample at p + SHIFT
    offset, mask = deform.offset_and_mask(x)  # (N, 18, SIZE, SIZE), (N, 9, SIZE, SIZE)
    grid = np.array([(i - 1, j - 1) for i in range(3) for j in range(3)], dtype=float)
    # (N, 18, H, W) -> (N, 9, 2, H, W): (dy, dx) per tap; + the tap's place on the grid
    moved = offset.reshape(BATCH, 9, 2, SIZE, SIZE) + grid[None, :, :, None, None]
    importance = np.abs(deform.weight.data.reshape(9))[None, :, None, None] * mask
    importance = importance * window  # (N, 9, SIZE, SIZE)
    mean_move = np.einsum("nkhw,nkchw->c", importance, moved) / importance.sum()
    np.testing.assert_allclose(mean_move, SHIFT, atol=0.5, err_msg=summary)

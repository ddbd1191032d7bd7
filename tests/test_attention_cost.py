"""The dense-against-deformable attention measurement: its rows, its memory accounting and the
point where a dense layer is predicted not to fit (no timing is asserted)."""

import numpy as np

from scratchvision.verify.attention_cost import attention_cost, pyramid_shapes


def test_pyramid_shapes_halve_and_round_up():
    np.testing.assert_array_equal(pyramid_shapes(25, 4), [[25, 25], [13, 13], [7, 7], [4, 4]])


def test_rows_count_the_weights_and_the_peak_holds_them():
    rows = attention_cost((6, 9), d_model=16, n_heads=2, n_levels=3, n_points=2, repeats=1)
    assert [(r.kind, r.side) for r in rows] == [("dense", 6), ("deformable", 6),
                                                ("dense", 9), ("deformable", 9)]
    for row in rows:
        assert row.queries == row.side ** 2 and row.fits and row.forward_ms > 0
        per_query = row.queries if row.kind == "dense" else 3 * 2  # keys, or L·K points
        assert row.weights_bytes == 4 * 2 * row.queries * per_query
        # the forward holds its attention weights (float32) at least once
        assert row.peak_bytes >= row.weights_bytes


def test_a_dense_layer_predicted_not_to_fit_is_not_run():
    rows = attention_cost((6, 12), d_model=16, n_heads=2, n_levels=2, n_points=2, repeats=1,
                          memory_limit=200_000)
    dense_12 = rows[2]
    assert dense_12.kind == "dense" and not dense_12.fits and dense_12.forward_ms is None
    # predicted from the 6x6 run's peak per weight byte: (12²/6²)² = 16 times its peak
    assert dense_12.peak_bytes > 200_000
    np.testing.assert_allclose(dense_12.peak_bytes / dense_12.weights_bytes,
                               rows[0].peak_bytes / rows[0].weights_bytes, rtol=1e-6)
    assert rows[3].fits and rows[3].forward_ms > 0  # the deformable layer still runs

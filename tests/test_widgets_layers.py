"""Pure (no Qt) tests of the widget layer geometry: mosaics, coordinates, bins."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lnm._widgets._layers import (
    bin_of, build_mosaic, image_placement, mosaic_geometry, segments_to_vectors, square_corners, tile_at,
    tile_to_level0, world_to_level0,
)


def _labels(seed, n=5, shape=(64, 64)):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        r, c = rng.integers(4, shape[0] - 8, 2)
        lab[r:r + 4, c:c + 4] = i
    return lab


def test_mosaic_places_tiles_and_keeps_ids_unique():
    mpp0, work = 0.25, 0.5  # 40x slide analysed at 20x: a 64-px tile covers 128 level-0 px
    xs, ys, sizes = [1000, 1128, 1000], [2000, 2000, 2128], [128, 128, 128]
    h = [np.full((64, 64), v, np.float32) for v in (1.0, 2.0, 3.0)]
    labs = [_labels(s) for s in range(3)]
    m = build_mosaic(xs, ys, sizes, h, h, labs, mpp0, work)
    assert m.downsample == 1 and m.h.shape == (128, 128)
    assert m.h[0, 0] == 1.0 and m.h[0, 64] == 2.0 and m.h[64, 0] == 3.0 and m.h[127, 127] == 0.0
    ids = np.unique(m.labels[m.labels > 0])
    assert len(ids) == 15  # 3 tiles x 5 nuclei, no id shared across tiles
    # pixel (0, 0) of the mosaic covers level-0 [1000, 1002) x [2000, 2002): its centre is at 1000.5 px
    assert m.scale == (0.5, 0.5)
    assert m.translate[1] == pytest.approx(1000.5 * mpp0)
    assert m.translate[0] == pytest.approx(2000.5 * mpp0)


def test_mosaic_downsamples_to_stay_within_budget():
    xs, ys, sizes = [0, 20000], [0, 20000], [512, 512]
    t = [np.ones((512, 512), np.float32)] * 2
    labs = [np.ones((512, 512), np.int32)] * 2
    m = build_mosaic(xs, ys, sizes, t, t, labs, 0.5, 0.5, max_pixels=1_000_000)
    assert m.h.size <= 1_000_000 and m.downsample > 1
    assert m.scale[0] == pytest.approx(0.5 * m.downsample)
    assert m.labels.max() == 2 and m.h[0, 0] == 1.0
    rows, cols, f, x0, y0 = mosaic_geometry(np.array(xs, float), np.array(ys, float), np.array(sizes, float),
                                            0.5, 0.5, 1_000_000)
    assert (rows, cols, f) == m.h.shape + (m.downsample,)


def test_tile_to_level0_and_vectors():
    # working px (0, 0) of a tile at x=100, y=200, 2 level-0 px per working px, has its centre at 100.5, 200.5
    p = tile_to_level0(np.array([[0.0, 0.0], [10.0, 3.0]]), 100, 200, 0.25, 0.5)
    np.testing.assert_allclose(p, [[200.5, 100.5], [220.5, 106.5]])
    seg = np.array([[[0, 0], [1, 2]], [[5, 5], [5, 7]]], float)
    v = segments_to_vectors(seg)
    np.testing.assert_allclose(v[:, 0] + v[:, 1], seg[:, 1])


def test_squares_tile_at_and_world_conversion():
    sq = square_corners([10], [20], [5])[0]
    np.testing.assert_allclose(sq.min(0), [19.5, 9.5])
    np.testing.assert_allclose(sq.max(0), [24.5, 14.5])
    xs, ys, s = np.array([0, 512]), np.array([0, 0]), np.array([512, 512])
    assert tile_at(xs, ys, s, 10, 600) == 1
    assert tile_at(xs, ys, s, 600, 10) == -1
    rc = world_to_level0(np.array([50.0, 100.0]), (0.5, 0.5), (10.0, 0.0))
    np.testing.assert_allclose(rc, [80.0, 200.0])
    (sc, tr) = image_placement(0, 0, 0.25, 0.5)
    assert sc == (0.5, 0.5) and tr == (0.125, 0.125)


def test_bin_of_matches_histogram_fusion():
    import pandas as pd

    from napari_lnm.fusion import HistogramFusion

    rng = np.random.default_rng(0)
    tables = [pd.DataFrame({"x": 0, "y": 0, "size": 1, "f": rng.normal(size=50)}) for _ in range(4)]
    fus = HistogramFusion(bins=5).fit(tables, ["f"])
    vals = np.r_[rng.normal(size=200), -10.0, 10.0, fus.edges_[0]]
    ref = fus._bin_index(vals[:, None])[:, 0] + 1
    got = np.array([bin_of(v, fus.edges_[0]) for v in vals])
    np.testing.assert_array_equal(got, ref)
    assert bin_of(float("nan"), fus.edges_[0]) == 0


def test_display_pyramid_is_views_halving_to_min_side():
    from napari_lnm._widgets._layers import display_pyramid

    img = np.arange(5000 * 3000, dtype=np.int32).reshape(5000, 3000)
    levels = display_pyramid(img, min_side=1024)
    assert [lv.shape for lv in levels] == [(5000, 3000), (2500, 1500), (1250, 750)]
    assert all(np.shares_memory(lv, img) for lv in levels)
    assert levels[2][1, 1] == img[4, 4]
    small = np.zeros((100, 100))
    assert display_pyramid(small) is small

"""The fast paths of the feature groups against straightforward references (same numbers, less work).

Run-length moments and bounding boxes, integer hull chains, selective Voronoi mirrors, bitset
clustering, vectorised graph summaries and the one-pass H/E region labelling must reproduce the
plain per-pixel / per-mask / all-mirror computations.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import regionprops_table

from napari_lnm.features import graph as G
from napari_lnm.features import nucleus as N
from napari_lnm.features import tile as T
from napari_lnm.features.catalog import graph_summarise


def random_labels(seed: int, shape=(160, 190)) -> np.ndarray:
    """Touching blobs, a few labels split into disconnected pieces, single pixels and border contact."""
    rng = np.random.default_rng(seed)
    lab, _ = ndi.label(ndi.gaussian_filter(rng.random(shape), 2.5) > 0.5)
    lab[rng.random(shape) < 0.002] = 7  # scattered pixels join label 7 (disconnected pieces)
    lab[0, :5] = lab.max() + 1  # a label on the image border
    return lab.astype(np.int32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_run_length_moments_equal_pixel_sums(seed):
    lab = random_labels(seed)
    tab = N.nucleus_table(lab, 1.0)
    ids = tab.ids
    rr, cc = np.nonzero(lab)
    li = np.searchsorted(ids, lab[rr, cc])
    area = np.bincount(li, minlength=ids.size).astype(np.float64)
    r0, c0 = 0.5 * (lab.shape[0] - 1), 0.5 * (lab.shape[1] - 1)
    cr = np.bincount(li, rr - r0, ids.size) / area + r0
    ccol = np.bincount(li, cc - c0, ids.size) / area + c0
    np.testing.assert_array_equal(tab.column("area"), area)  # exact: integer sums
    np.testing.assert_allclose(tab.centroids, np.c_[cr, ccol], rtol=0, atol=1e-12)
    rp = regionprops_table(lab, properties=["label", "bbox", "axis_major_length", "axis_minor_length", "area_convex"])
    np.testing.assert_array_equal(rp["label"], ids)
    bbox_area = (rp["bbox-2"] - rp["bbox-0"]) * (rp["bbox-3"] - rp["bbox-1"])
    np.testing.assert_allclose(tab.column("extent"), area / bbox_area, rtol=1e-12)
    np.testing.assert_allclose(tab.column("major_axis"), rp["axis_major_length"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(tab.column("minor_axis"), rp["axis_minor_length"], rtol=1e-9, atol=1e-9)
    # the integer hull chains count the same convex pixels as skimage's convex_hull_image
    np.testing.assert_allclose(tab.column("solidity"), area / rp["area_convex"], rtol=1e-12)


def test_majorant_rows_is_the_concave_majorant():
    rng = np.random.default_rng(5)
    nrows = np.array([1, 2, 7, 30])
    row_lab = np.repeat(np.arange(nrows.size), nrows)
    row_start = np.cumsum(nrows) - nrows
    ext = rng.integers(0, 40, row_lab.size)
    got = N._majorant_rows(ext, row_lab, row_start, nrows)
    for k in range(nrows.size):  # reference: for every row, the max over chords of the chain points
        e = ext[row_lab == k].astype(float)
        y = np.r_[np.arange(e.size) - 0.5, np.arange(e.size), e.size - 0.5]
        v = np.r_[np.maximum(np.r_[e[:1], e[:-1]], e), e + 0.5, e[-1:]]
        ref = []
        for yy in np.arange(e.size):
            best = v[y == yy].max()
            lo, hi = y <= yy, y >= yy
            for a in np.flatnonzero(lo):
                for b in np.flatnonzero(hi):
                    if y[b] > y[a]:
                        best = max(best, v[a] + (v[b] - v[a]) * (yy - y[a]) / (y[b] - y[a]))
            ref.append(best)
        np.testing.assert_allclose(got[row_lab == k], ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed,n,band", [(0, 40, False), (1, 300, False), (2, 150, True), (3, 5, False)])
def test_selected_mirrors_give_the_all_mirror_cells(seed, n, band):
    shape = (300, 420)
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (n, 2)) * (np.array(shape) - 1)
    if band:
        pts[:, 0] = rng.uniform(0, 40, n)  # a large empty region: the old band rule mirrored everything
    pts = G._unique_points(pts)
    aug, _owner = G._mirror(pts, shape)
    lo, hr, hc = -0.5, shape[0] - 0.5, shape[1] - 0.5
    r, c = pts[:, 0], pts[:, 1]
    full = np.concatenate([pts, np.c_[2 * lo - r, c], np.c_[2 * hr - r, c], np.c_[r, 2 * lo - c], np.c_[r, 2 * hc - c]])
    assert aug.shape[0] < full.shape[0]
    cells = G.voronoi_cells(pts, shape)
    rp, ia, ib, vv = G._ridges(full)
    m0, m1 = rp[:, 0] < n, rp[:, 1] < n
    cell = np.concatenate([rp[m0, 0], rp[m1, 1]])
    a, b = np.concatenate([vv[ia][m0], vv[ia][m1]]), np.concatenate([vv[ib][m0], vv[ib][m1]])
    p = pts[cell]
    area = np.bincount(cell, 0.5 * np.abs((a[:, 0] - p[:, 0]) * (b[:, 1] - p[:, 1]) - (a[:, 1] - p[:, 1]) * (b[:, 0] - p[:, 0])), n)
    np.testing.assert_allclose(cells["area"], area, rtol=1e-9)
    assert cells["area"].sum() == pytest.approx(shape[0] * shape[1], rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_bitset_clustering_matches_dense_and_sparse(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n = 150
    pts = rng.uniform(0, 200, (n, 2))
    d = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
    i, j = np.nonzero(np.triu(d < 25, 1))
    pairs = np.c_[i, j]
    adj = np.zeros((n, n))
    adj[i, j] = adj[j, i] = 1
    deg = adj.sum(1)
    tri2 = ((adj @ adj) * adj).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.where(deg >= 2, tri2 / (deg * (deg - 1)), np.nan)
    local, trans = G._clustering(pairs, n)
    np.testing.assert_array_equal(local, ref)
    assert trans == pytest.approx(tri2.sum() / (deg * (deg - 1)).sum(), rel=1e-15)
    monkeypatch.setattr(G, "_BITSET_MAX_NODES", 0)  # the sparse A @ A path for huge graphs
    local2, trans2 = G._clustering(pairs, n)
    np.testing.assert_array_equal(local2, local)
    assert trans2 == trans


def test_summarise_columns_equals_graph_summarise():
    rng = np.random.default_rng(3)
    m = rng.random((50, 6))
    m[:, 1] = 0.0  # max 0: min/max undefined
    m[::3, 2] = np.nan  # some undefined values
    m[:, 3] = np.nan  # none defined
    m[:, 4] = 2.5  # constant
    out = G._summarise_columns(m)
    for k in range(m.shape[1]):
        np.testing.assert_allclose(out[k], graph_summarise(m[:, k]), rtol=1e-12, atol=1e-15)
    assert G._summarise_columns(np.zeros((0, 3))).shape == (3, 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_pair_labelling_equals_single_masks(seed):
    rng = np.random.default_rng(seed)
    h = np.clip((ndi.gaussian_filter(rng.random((200, 230)), 1.5) - 0.5) * 12 + 0.5, 0, 2).astype(np.float32)
    e = rng.random((200, 230)).astype(np.float32) * 0.5
    hpos = h >= T.H_POSITIVE_OD
    epos = (e >= T.E_POSITIVE_OD) & ~hpos & ((h + e) >= T.BACKGROUND_OD)
    assert hpos.any() and epos.any()
    mpp, tile_mm2 = 0.5, h.size * 0.25e-6
    got = T._region_pair_features(hpos, epos, mpp, tile_mm2)
    ref = list(T._region_features(hpos, mpp, tile_mm2)) + list(T._region_features(epos, mpp, tile_mm2))
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    empty = np.zeros_like(hpos)
    got = T._region_pair_features(empty, epos, mpp, tile_mm2)
    assert got[0] == 0.0 and np.isnan(got[1]) and np.isnan(got[2])


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (3, 3), (64, 80)])
def test_gradient_magnitude_is_the_plain_central_difference(shape):
    rng = np.random.default_rng(4)
    a = (rng.random(shape) * 3).astype(np.float32)
    gr = np.zeros_like(a)
    gc = np.zeros_like(a)
    if shape[0] > 2:
        gr[1:-1] = (a[2:] - a[:-2]) * np.float32(0.5)
    if shape[1] > 2:
        gc[:, 1:-1] = (a[:, 2:] - a[:, :-2]) * np.float32(0.5)
    ref = np.sqrt(gr * gr + gc * gc) * np.float32(1 / 0.499)
    np.testing.assert_array_equal(T.gradient_magnitude(a, 0.499), ref)  # bit-identical


def test_work_arrays_are_per_thread():
    """Reused work arrays (tile.scratch) must not leak between threads or between tile sizes."""
    from concurrent.futures import ThreadPoolExecutor

    from napari_lnm.features import features_from_images

    rng = np.random.default_rng(6)
    cases = []
    for shape in [(96, 120), (150, 90), (96, 120), (64, 64)]:
        h = np.clip((ndi.gaussian_filter(rng.random(shape), 2) - 0.5) * 12 + 0.5, 0, 2).astype(np.float32)
        e = (rng.random(shape) * 0.5).astype(np.float32)
        lab, _ = ndi.label(h > 0.8)
        cases.append((h, e, lab.astype(np.int32)))
    sequential = [features_from_images(h, e, lab, 0.5)[0] for h, e, lab in cases]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda c: features_from_images(c[0], c[1], c[2], 0.5)[0], cases * 3))
    for k, got in enumerate(threaded):
        ref = sequential[k % len(cases)]
        np.testing.assert_array_equal(np.array(list(got.values())), np.array(list(ref.values())))

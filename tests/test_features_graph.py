"""Graph features: hexagonal-lattice known answers, exact clipping, degenerate inputs, display segments."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import ConvexHull, Voronoi

from napari_lnm.features import graph as G

SHAPE = (400, 400)


def hex_lattice(d: float, shape=SHAPE, offset=(7.3, 5.1)) -> np.ndarray:
    """Points of a hexagonal lattice with spacing d (px) inside the tile."""
    pts = []
    rows = int(shape[0] / (d * np.sqrt(3) / 2)) + 2
    cols = int(shape[1] / d) + 2
    for i in range(rows):
        for j in range(cols):
            r = offset[0] + i * d * np.sqrt(3) / 2
            c = offset[1] + j * d + (i % 2) * d / 2
            if r < shape[0] - 1 and c < shape[1] - 1:
                pts.append((r, c))
    return np.array(pts)


def reference_cells(pts: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Clipped cell areas/perimeters by a per-cell loop (all four mirrors, ConvexHull per cell)."""
    lo, hr, hc = -0.5, shape[0] - 0.5, shape[1] - 0.5
    r, c = pts[:, 0], pts[:, 1]
    aug = np.concatenate([pts, np.c_[2 * lo - r, c], np.c_[2 * hr - r, c], np.c_[r, 2 * lo - c], np.c_[r, 2 * hc - c]])
    vor = Voronoi(aug)
    areas, perims = [], []
    for i in range(len(pts)):
        hull = ConvexHull(vor.vertices[vor.regions[vor.point_region[i]]])
        areas.append(hull.volume)
        perims.append(hull.area)
    return np.array(areas), np.array(perims)


def interior(pts, margin, shape=SHAPE):
    return (pts[:, 0] > margin) & (pts[:, 0] < shape[0] - margin) & (pts[:, 1] > margin) & (pts[:, 1] < shape[1] - margin)


def test_hex_lattice_voronoi_delaunay_knn():
    d, mpp = 20.0, 0.5
    pts = hex_lattice(d)
    cells = G.voronoi_cells(pts, SHAPE)
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    pts_sorted = pts[order]
    np.testing.assert_allclose(cells["points"], pts_sorted)
    inner = interior(pts_sorted, 2 * d)
    np.testing.assert_allclose(cells["area"][inner], np.sqrt(3) / 2 * d * d, rtol=1e-9)
    np.testing.assert_allclose(cells["perimeter"][inner], 6 * d / np.sqrt(3), rtol=1e-9)
    np.testing.assert_allclose(cells["max_chord"][inner], 2 * d / np.sqrt(3), rtol=1e-9)
    assert cells["area"].sum() == pytest.approx(SHAPE[0] * SHAPE[1], rel=1e-12)  # clipped cells tile the tile
    f = G.graph_features(pts, SHAPE, mpp)
    d_um = d * mpp
    assert f["graph.knn1_dist_mean"] == pytest.approx(d_um)
    assert f["graph.knn1_dist_std"] == pytest.approx(0.0, abs=1e-9)
    dist = np.sort(np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1)), axis=1)[:, 1:] * mpp
    assert f["graph.knn3_dist_mean"] == pytest.approx(dist[:, 2].mean())
    assert f["graph.knn5_mean_mean"] == pytest.approx(dist[:, :5].mean())
    assert f["graph.knn7_dist_std"] == pytest.approx(dist[:, 6].std())
    assert np.all(dist[interior(pts, 2 * d), 5] == pytest.approx(d_um))  # six neighbours at distance d inside
    assert f["graph.mst_edge_mean"] == pytest.approx(d_um)
    assert f["graph.mst_edge_min_max"] == pytest.approx(1.0)
    # interior Delaunay edges all have length d, interior triangles area sqrt(3)/4 d²
    tri, edges = G.delaunay_edges(pts)
    mid = (pts[edges[:, 0]] + pts[edges[:, 1]]) / 2
    el = np.hypot(*(pts[edges[:, 0]] - pts[edges[:, 1]]).T)
    np.testing.assert_allclose(el[interior(mid, 2 * d)], d, rtol=1e-9)
    assert f["graph.delaunay_edge_min_max"] > 0
    # 6 neighbours within 1.2 d (12 µm), clustering of the hex lattice at 20 µm ~ 1.2 d..: defined
    assert np.isfinite(f["graph.clustering_mean"]) and 0 <= f["graph.clustering_mean"] <= 1


def test_neighbour_counts_and_clustering_triangle_lattice():
    # spacing 15 µm: within 20 µm every interior nucleus has its 6 hex neighbours, and the
    # 20 µm proximity graph is the triangular lattice: local clustering 6/15 = 0.4 inside
    d_px, mpp = 30.0, 0.5
    pts = hex_lattice(d_px)
    f = G.graph_features(pts, SHAPE, mpp)
    assert f["graph.neighbours_10um_mean"] == 0.0
    local_ok = 0.3 < f["graph.clustering_mean"] <= 1.0
    assert local_ok
    assert f["graph.transitivity"] == pytest.approx(f["graph.transitivity"])  # finite
    tree_counts = np.array([np.sum(np.hypot(*(pts - p).T) * mpp <= 20) - 1 for p in pts])
    assert f["graph.neighbours_20um_mean"] == pytest.approx(tree_counts.mean())
    inner = interior(pts, 3 * d_px)
    assert np.all(tree_counts[inner] == 6)


@pytest.mark.parametrize("seed,n", [(0, 3), (1, 10), (2, 120), (3, 400)])
def test_clipped_cells_match_reference(seed, n):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, SHAPE[0] - 1, (n, 2))
    if seed == 2:
        pts[:, 0] = rng.uniform(0, 60, n)  # clustered in a band: large empty region
    cells = G.voronoi_cells(pts, SHAPE)
    ref_a, ref_p = reference_cells(cells["points"], SHAPE)
    np.testing.assert_allclose(cells["area"], ref_a, rtol=1e-7)
    np.testing.assert_allclose(cells["perimeter"], ref_p, rtol=1e-7)
    assert cells["area"].sum() == pytest.approx(SHAPE[0] * SHAPE[1], rel=1e-9)


def test_square_lattice_cocircular():
    pts = np.array([(i * 10 + 5.0, j * 10 + 5.0) for i in range(40) for j in range(40)])
    cells = G.voronoi_cells(pts, SHAPE)
    inner = interior(cells["points"], 8)
    np.testing.assert_allclose(cells["area"][inner], 100.0, rtol=1e-9)
    np.testing.assert_allclose(cells["perimeter"][inner], 40.0, rtol=1e-9)
    # border cells reach the tile edge at -0.5 / 399.5: 10.5 or 9.5 px wide
    assert sorted(set(np.round(cells["area"][~inner], 6))) == [90.25, 95.0, 99.75, 105.0, 110.25]
    f = G.graph_features(pts, SHAPE, 1.0)
    assert f["graph.voronoi_area_mean"] == pytest.approx(100.0)
    assert f["graph.knn1_dist_mean"] == pytest.approx(10.0)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_few_nuclei_defined(n):
    pts = np.array([[50.0, 60.0], [120.0, 200.0], [300.0, 90.0]])[:n]
    f = G.graph_features(pts, SHAPE, 0.5)
    assert list(f) == [i.name for i in G.CATALOG]
    assert all(isinstance(v, float) for v in f.values())
    if n == 0:
        assert all(np.isnan(v) for v in f.values())
    if n >= 1:
        total = SHAPE[0] * SHAPE[1] * 0.25
        assert f["graph.voronoi_area_mean"] * n == pytest.approx(total)
    if n == 1:
        assert f["graph.voronoi_area_mean"] == pytest.approx(SHAPE[0] * SHAPE[1] * 0.25)
        assert np.isnan(f["graph.knn1_dist_mean"]) and np.isnan(f["graph.mst_edge_mean"])
    if n == 2:
        d = np.hypot(70, 140) * 0.5
        assert f["graph.knn1_dist_mean"] == pytest.approx(d)
        assert f["graph.mst_edge_mean"] == pytest.approx(d)
        assert np.isnan(f["graph.delaunay_area_mean"]) and np.isnan(f["graph.knn3_dist_mean"])
    if n == 3:
        assert f["graph.delaunay_area_mean"] == pytest.approx(0.5 * abs(70 * 30 - 140 * 250) * 0.25)
        assert np.isnan(f["graph.knn5_dist_mean"])


def test_collinear_and_duplicates():
    pts = np.c_[np.full(6, 100.0), np.arange(6) * 25.0 + 10]
    pts = np.concatenate([pts, pts[:2]])  # duplicated centroids are merged
    f = G.graph_features(pts, SHAPE, 1.0)
    assert np.isnan(f["graph.delaunay_edge_mean"])  # no triangulation of collinear points
    assert f["graph.mst_edge_mean"] == pytest.approx(25.0)
    assert f["graph.knn1_dist_mean"] == pytest.approx(25.0)
    assert f["graph.voronoi_area_mean"] * 6 == pytest.approx(SHAPE[0] * SHAPE[1])
    vseg, dseg = G.graph_segments(pts, SHAPE)
    assert dseg.shape == (0, 2, 2) and vseg.shape[1:] == (2, 2) and len(vseg) == 5


def test_graph_segments_inside_tile():
    rng = np.random.default_rng(5)
    pts = rng.uniform(0, 399, (60, 2))
    vseg, dseg = G.graph_segments(pts, SHAPE)
    assert vseg.ndim == 3 and vseg.shape[1:] == (2, 2)
    assert np.all(vseg >= -0.5 - 1e-9) and np.all(vseg <= 399.5 + 1e-9)
    # the tile border itself is not drawn: no segment runs along a tile side
    for axis, edge in ((0, -0.5), (0, 399.5), (1, -0.5), (1, 399.5)):
        assert not np.any(np.all(np.abs(vseg[:, :, axis] - edge) < 1e-9, axis=1))
    tri, edges = G.delaunay_edges(np.unique(pts, axis=0))
    assert len(dseg) == len(edges) == len(pts) * 3 - 3 - len(np.unique(ConvexHull(pts).vertices))
    assert len(G.graph_segments(np.zeros((0, 2)), SHAPE)[0]) == 0


def test_deterministic():
    rng = np.random.default_rng(9)
    pts = rng.uniform(0, 399, (200, 2))
    a = G.graph_features(pts, SHAPE, 0.5)
    b = G.graph_features(pts[::-1].copy(), SHAPE, 0.5)
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("sep", [1e-9, 1e-4, 5e-3])
def test_near_duplicate_centroids_tile_the_tile(sep):
    """Nested or split nuclei can give almost coincident centroids: cells still tile the tile exactly."""
    rng = np.random.default_rng(int(sep * 1e9) % 97)
    pts = rng.uniform(0, 399, (150, 2))
    pts = np.clip(np.concatenate([pts, pts[:60] + rng.normal(0, sep, (60, 2))]), 0, 399)
    cells = G.voronoi_cells(pts, SHAPE)
    assert not np.isnan(cells["area"]).any()
    assert cells["area"].sum() == pytest.approx(SHAPE[0] * SHAPE[1], rel=1e-9)
    f = G.graph_features(pts, SHAPE, 0.5)
    assert np.isfinite(f["graph.voronoi_area_mean"]) and np.isfinite(f["graph.delaunay_area_mean"])

"""Known answers of the cells.* features: a ring of lymphocytes around an epithelial cluster, typed graphs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lnm.features import cells as C

MPP = 0.5


def _ring_scene():
    """7 epithelial nuclei on a hexagon of 10 µm spacing, 12 inflammatory on a circle of 32 µm (row, col px)."""
    ang6 = np.deg2rad(np.arange(0, 360, 60))
    ang12 = np.deg2rad(np.arange(0, 360, 30))
    epi = np.vstack([[0.0, 0.0], np.c_[np.sin(ang6), np.cos(ang6)] * 10.0])
    inf = np.c_[np.sin(ang12), np.cos(ang12)] * 32.0
    pts = (np.vstack([epi, inf]) + 100.0) / MPP  # µm -> px, away from the origin
    types = np.r_[np.zeros(7, int), np.ones(12, int)]
    area = np.r_[np.full(7, 40.0), np.full(12, 20.0)]
    area[0] = 80.0
    measures = {key: np.ones(len(types)) for key, _u, _w in C.MORPHOLOGY}
    measures["area"] = area
    return pts, types, measures


def test_ring_of_lymphocytes_around_epithelium():
    pts, types, measures = _ring_scene()
    f = C.cell_features(pts, types, measures, MPP, tissue_mm2=0.01)
    assert list(f) == list(C.NAMES)
    assert f["cells.epithelial_fraction"] == pytest.approx(7 / 19)
    assert f["cells.inflammatory_fraction"] == pytest.approx(12 / 19)
    assert f["cells.epithelial_density"] == pytest.approx(700.0) and f["cells.inflammatory_density"] == pytest.approx(1200.0)
    assert f["cells.stromal_density"] == 0.0 and f["cells.stromal_fraction"] == 0.0  # counted: none
    # nearest lymphocyte: 32 µm from the centre nucleus, 22 µm from each of the six around it
    assert f["cells.epi_inf_nn_dist_mean"] == pytest.approx((32.0 + 6 * 22.0) / 7)
    assert f["cells.epi_inf_nn_dist_median"] == pytest.approx(22.0)
    assert f["cells.epi_with_inf_20um"] == 0.0 and f["cells.epi_with_inf_50um"] == 1.0
    # epithelial graph alone: the hexagon's 12 edges all 10 µm; nearest epithelial neighbour 10 µm
    assert f["cells.epithelial_delaunay_edge_mean"] == pytest.approx(10.0)
    assert f["cells.epithelial_delaunay_edge_std"] == pytest.approx(0.0, abs=1e-9)
    assert f["cells.epithelial_nn_dist_mean"] == pytest.approx(10.0)
    # pleomorphism: areas 80 and six 40
    a = np.r_[80.0, np.full(6, 40.0)]
    assert f["cells.epithelial_area_cv"] == pytest.approx(a.std() / a.mean())
    assert f["cells.epithelial_area_mean"] == pytest.approx(a.mean())
    assert f["cells.inflammatory_area_p90"] == pytest.approx(20.0)
    # every epithelial-inflammatory Delaunay edge joins the hexagon's rim to the ring
    assert 0.0 < f["cells.delaunay_epi_inf_fraction"] < 1.0 and f["cells.delaunay_epi_str_fraction"] == 0.0
    assert f["cells.epithelial_stromal_ratio"] == 1.0
    assert np.isnan(f["cells.stromal_orientation_coherence"])


def test_heterotypic_edges_of_a_known_triangulation():
    # A, B epithelial; C inflammatory; D stromal: the circle through A, B, C (centre (0, 5), r 5) leaves D out,
    # so the Delaunay edges are AB, AC, BC, AD, BD
    pts = np.array([[0.0, 0.0], [0.0, 10.0], [5.0, 5.0], [-6.0, 5.0]]) / MPP
    types = np.array([0, 0, 1, 2])
    measures = {key: np.ones(4) for key, _u, _w in C.MORPHOLOGY}
    f = C.cell_features(pts, types, measures, MPP, tissue_mm2=0.01)
    assert f["cells.delaunay_epi_inf_fraction"] == pytest.approx(2 / 5)
    assert f["cells.delaunay_epi_str_fraction"] == pytest.approx(2 / 5)
    assert f["cells.epithelial_stromal_ratio"] == pytest.approx(2 / 3)


def test_missing_types_give_nan_not_zero():
    pts = np.array([[10.0, 10.0], [30.0, 40.0], [60.0, 20.0]])
    measures = {key: np.full(3, 2.0) for key, _u, _w in C.MORPHOLOGY}
    f = C.cell_features(pts, np.array([2, 2, 2]), measures, MPP, tissue_mm2=0.01)  # stroma only
    for name in ("cells.epithelial_area_mean", "cells.inflammatory_h_mean_mean",
                 "cells.epi_inf_nn_dist_mean", "cells.epi_with_inf_20um", "cells.epithelial_area_cv",
                 "cells.epithelial_delaunay_edge_mean"):
        assert np.isnan(f[name]), name
    assert f["cells.stromal_fraction"] == 1.0 and f["cells.epithelial_fraction"] == 0.0
    assert f["cells.epithelial_density"] == 0.0
    assert f["cells.epithelial_stromal_ratio"] == 0.0
    empty = C.cell_features(np.zeros((0, 2)), np.zeros(0, int), {k: np.zeros(0) for k, _u, _w in C.MORPHOLOGY},
                            MPP, tissue_mm2=0.01)
    assert all(v == 0.0 if k.endswith("_density") else np.isnan(v) for k, v in empty.items())
    # epithelium without any lymphocyte: none within reach is a measurement (0), the distance is undefined
    f = C.cell_features(pts, np.array([0, 0, 2]), measures, MPP, tissue_mm2=0.01)
    assert f["cells.epi_with_inf_50um"] == 0.0 and np.isnan(f["cells.epi_inf_nn_dist_mean"])


def test_stromal_orientation_from_labels():
    lab = np.zeros((60, 60), np.int32)
    lab[10:13, 5:30] = 1  # horizontal spindle: major axis along the columns
    lab[20:23, 5:30] = 2
    lab[30:55, 40:43] = 3  # vertical
    ang = C.stromal_orientations(lab, np.array([1, 2, 3]))
    assert ang[:2] == pytest.approx([0.0, 0.0], abs=1e-9) and abs(abs(ang[2]) - np.pi / 2) < 1e-9
    f = C.cell_features(np.array([[11.0, 17.0], [21.0, 17.0]]), np.array([2, 2]),
                        {k: np.ones(2) for k, _u, _w in C.MORPHOLOGY}, MPP, 0.01, stromal_angles=ang[:2])
    assert f["cells.stromal_orientation_coherence"] == pytest.approx(1.0)
    f = C.cell_features(np.array([[11.0, 17.0], [40.0, 41.0]]), np.array([2, 2]),
                        {k: np.ones(2) for k, _u, _w in C.MORPHOLOGY}, MPP, 0.01, stromal_angles=ang[[0, 2]])
    assert f["cells.stromal_orientation_coherence"] == pytest.approx(0.0, abs=1e-9)


def test_typed_nuclei_flow_into_the_tile_analysis():
    """analyse_tile types its nuclei (nucleus_types) and its cells.* features are cell_features of them."""
    from napari_lnm.features import analyse_tile
    from napari_lnm.features.nucleus import nucleus_table
    from napari_lnm.nucleus_types import CELL_TYPES, nucleus_types
    from napari_lnm.synth import make_synthetic_tile

    rgb = make_synthetic_tile(1, seed=3, size=256)
    ta = analyse_tile(rgb, MPP)
    n = len(ta.centroids)
    assert n > 10 and ta.types.shape == (n,) and ta.ids.shape == (n,) and ta.type_probs.shape == (n, len(CELL_TYPES))
    np.testing.assert_allclose(ta.type_probs.sum(axis=1), 1.0)
    table = nucleus_table(ta.labels, MPP, ta.h)
    types, _ = nucleus_types(table, MPP)
    np.testing.assert_array_equal(ta.types, types)
    tissue = ta.labels.size * MPP * MPP * 1e-6 * (1 - ta.features["tile.background_fraction"])
    want = C.cell_features(table.centroids, types, {k: table.column(k) for k, _u, _w in C.MORPHOLOGY}, MPP,
                           tissue, C.stromal_orientations(ta.labels, table.ids[types == C.STR]))
    for k, v in want.items():
        np.testing.assert_equal(ta.features[k], v)


def test_typed_segmentation_types_come_from_the_network():
    """segmentation='typed': labels and types from one pass of the typed network (classify_nuclei)."""
    pytest.importorskip("torch")
    from napari_lnm.features import analyse_tile
    from napari_lnm.nuclei import NUCLEUS_TYPES, classify_nuclei
    from napari_lnm.synth import make_synthetic_tile

    rgb = make_synthetic_tile(1, seed=3, size=256)
    ta = analyse_tile(rgb, MPP, segmentation="typed")
    lab, named = classify_nuclei(rgb, MPP)
    np.testing.assert_array_equal(ta.labels, lab)
    assert [NUCLEUS_TYPES[t] for t in ta.types] == [named[int(i)] for i in ta.ids]

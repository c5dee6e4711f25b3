"""Public feature API: names/catalogue, analyse_tile on a real tile, batch frame, units across magnifications, docs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_lnm import features as F
from napari_lnm.errors import UserError
from napari_lnm.explain import KIND_COLOURS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_tile(sample_svs):
    """A 256x256 RGB crop of the bundled 20x SVS (0.499 µm/px) with tissue and nuclei."""
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(sample_svs)) as s:
        rgb = np.asarray(s.read_region((1200, 1600), 0, (256, 256)).convert("RGB"))
    return rgb


def simple_labels(h: np.ndarray, thr: float = 0.5) -> np.ndarray:
    """Independent of napari_lnm.nuclei: threshold H and label 4-connected components."""
    from scipy import ndimage as ndi

    lab, _ = ndi.label(h > thr)
    return lab.astype(np.int32)


def test_names_and_catalog():
    names = F.feature_names()
    cat = F.feature_catalog()
    assert names == [i.name for i in cat]
    assert len(set(names)) == len(names) > 200
    for info in cat:
        assert info.name.startswith(info.group + ".")
        assert info.group in ("tile", "nucleus", "graph", "cells")
        assert info.kind in KIND_COLOURS and info.kind != "other"
        assert info.unit and info.definition
    assert F.feature_names() == names  # stable between calls
    for must in ["tile.h_glcm_contrast_d1um", "nucleus.area_mean", "nucleus.solidity_p90", "nucleus.density",
                 "graph.voronoi_area_disorder", "graph.knn7_dist_mean", "graph.neighbours_30um_mean",
                 "graph.mst_edge_std", "graph.delaunay_area_min_max", "graph.clustering_mean"]:
        assert must in names


def test_analyse_tile_with_labels(real_tile):
    from napari_lnm.stain import separate

    h, _ = separate(real_tile)
    lab = simple_labels(h)
    a = F.analyse_tile(real_tile, 0.499, labels=lab)
    assert list(a.features) == F.feature_names()
    assert a.h.dtype == np.float32 and a.e.dtype == np.float32 and a.labels.dtype == np.int32
    assert a.centroids.shape == (len(np.unique(lab)) - 1, 2)
    assert a.features["nucleus.count"] == a.centroids.shape[0] > 5
    finite = np.isfinite(list(a.features.values())).mean()
    assert finite > 0.95
    b = F.analyse_tile(real_tile.copy(), 0.499, labels=lab.copy())
    np.testing.assert_array_equal(list(a.features.values()), list(b.features.values()))


def test_tile_features_use_segmentation(real_tile):
    f = F.tile_features(real_tile, 0.499)
    assert list(f) == F.feature_names()
    assert f["nucleus.count"] > 0
    np.testing.assert_array_equal(list(f.values()), list(F.analyse_tile(real_tile, 0.499).features.values()))
    blank = F.tile_features(np.full((64, 64, 3), 255, np.uint8), 0.499)
    assert blank["nucleus.count"] == 0 and blank["tile.background_fraction"] == 1.0


def test_blank_and_tiny_tiles_are_defined():
    white = np.full((32, 32, 3), 255, np.uint8)
    a = F.analyse_tile(white, 0.5, labels=np.zeros((32, 32), np.int32))
    assert list(a.features) == F.feature_names()
    assert a.features["nucleus.count"] == 0
    one = np.zeros((32, 32), np.int32)
    one[10:14, 10:14] = 1
    b = F.analyse_tile(white, 0.5, labels=one)
    assert b.features["nucleus.count"] == 1 and b.features["graph.voronoi_area_mean"] == pytest.approx(32 * 32 * 0.25)


def test_units_are_magnification_independent(real_tile):
    """The same tissue at 0.5 and 0.25 µm/px (2x nearest upsampling) gives the same µm features."""
    from napari_lnm.stain import separate

    h, _ = separate(real_tile)
    lab = simple_labels(h)
    big = np.repeat(np.repeat(real_tile, 2, 0), 2, 1)
    lab2 = np.repeat(np.repeat(lab, 2, 0), 2, 1)
    f1 = F.analyse_tile(real_tile, 0.5, labels=lab).features
    f2 = F.analyse_tile(big, 0.25, labels=lab2).features
    for k, tol in [("nucleus.area_mean", 1e-9), ("nucleus.density", 1e-9), ("nucleus.equivalent_diameter_mean", 1e-9),
                   ("nucleus.major_axis_mean", 0.1), ("graph.voronoi_area_mean", 0.02), ("graph.knn1_dist_mean", 0.01),
                   ("graph.mst_edge_mean", 0.01), ("tile.h_mean", 1e-6), ("tile.h_positive_fraction", 1e-9),
                   ("tile.h_region_mean_area", 1e-9)]:
        assert f2[k] == pytest.approx(f1[k], rel=tol), k


def test_bad_input():
    rgb = np.full((16, 16, 3), 200, np.uint8)
    with pytest.raises(UserError):
        F.analyse_tile(rgb[..., 0], 0.5)
    with pytest.raises(UserError):
        F.analyse_tile(rgb, 0.0, labels=np.zeros((16, 16), np.int32))
    with pytest.raises(UserError):
        F.analyse_tile(rgb, "x", labels=np.zeros((16, 16), np.int32))
    with pytest.raises(UserError):
        F.analyse_tile(rgb, 0.5, labels=np.zeros((8, 16), np.int32))


def test_features_doc_is_generated_and_current(tmp_path):
    from napari_lnm.cli import main
    from napari_lnm.features.catalog import catalog_markdown

    out = tmp_path / "features.md"
    assert main(["features-doc", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text == catalog_markdown(F.feature_catalog())
    for name in F.feature_names():
        assert f"| `{name}` |" in text
    doc = ROOT / "docs" / "features.md"
    assert doc.read_text(encoding="utf-8") == text, "docs/features.md is stale: run `napari-lnm features-doc`"

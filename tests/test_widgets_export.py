"""Export widget's work without a viewer: QuPath GeoJSON (ROI with holes, typed nucleus detections, key tiles)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_pipeline import make_tiny_bundle, make_tiny_slide

pytest.importorskip("qtpy")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """An AnalysisResult of a real prediction (4 tiles, images kept) on a tiny synthetic slide."""
    from napari_lnm._widgets._common import AnalysisResult
    from napari_lnm.pipeline import predict_slide

    slide = make_tiny_slide(tmp_path_factory.mktemp("slide") / "tiny.tif")
    bundle = make_tiny_bundle()
    roi = [np.array([[0, 0], [1024, 0], [1024, 1024], [0, 1024]], float),
           np.array([[700, 700], [900, 700], [900, 900], [700, 900]], float)]
    from shapely.geometry import Polygon

    geom = Polygon(roi[0], [roi[1]])  # one region with a hole
    pred = predict_slide(slide, bundle, rois=geom, keep_images=True)
    return AnalysisResult(prediction=pred, bundle=bundle, slide_path=str(slide), mpp0=pred.mpp,
                          work_mpp=pred.tiling["mpp"], rois=geom, model_path="tiny")


def test_export_writes_qupath_geojson(result, tmp_path):
    from napari_lnm._widgets.export import export_all

    paths = export_all(result, tmp_path, stem="s")
    roi = json.loads(paths["roi"].read_text())["features"]
    assert len(roi) == 1 and len(roi[0]["geometry"]["coordinates"]) == 2  # exterior + the hole
    nuclei = json.loads(paths["nuclei"].read_text())["features"]
    n = sum(len(a.ids) for a in result.prediction.analyses)
    assert 0.9 * n <= len(nuclei) <= n
    types = {"epithelial": (200, 0, 0), "inflammatory": (160, 90, 160), "stromal": (150, 200, 150),
             "other": (255, 200, 0)}
    for f in nuclei:
        p = f["properties"]
        assert p["objectType"] == "detection"
        assert tuple(p["classification"]["color"]) == types[p["classification"]["name"]]
        m = p["measurements"]
        assert m["Nucleus: area"] > 0 and 0.25 <= m["Nucleus: type probability"] <= 1.0
    keys = json.loads(paths["key_tiles"].read_text())["features"]
    assert len(keys) == len(result.prediction.key_tiles)
    summary = json.loads(paths["json"].read_text())
    assert summary["probability"] == pytest.approx(result.prediction.probability)


def test_nucleus_records_match_the_tile_analysis(result):
    from napari_lnm._widgets.export import nucleus_records
    from napari_lnm.nucleus_types import CELL_TYPES

    ta = result.prediction.analyses[0]
    recs = nucleus_records(ta, ta.ids[:5], result.work_mpp)
    assert [r["type"] for r in recs] == [CELL_TYPES[t] for t in ta.types[:5]]
    np.testing.assert_allclose([r["Nucleus: type probability"] for r in recs], ta.type_probs[:5].max(axis=1))

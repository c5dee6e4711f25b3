"""napari_lnm.tissue: tissue mask robust to background, pen and borders; ROI polygons and GeoJSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_lnm.errors import UserError
from napari_lnm.io import open_slide
from napari_lnm.tissue import (
    TissueMask, mask_to_polygons, polygons_from_napari, polygons_mask, polygons_to_napari, read_geojson,
    tissue_mask, tissue_mask_rgb, write_geojson,
)

H_OD = np.array([0.65, 0.70, 0.29])
E_OD = np.array([0.07, 0.99, 0.11])


def he_rgb(h: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Beer-Lambert RGB uint8 from H and E concentration maps."""
    od = h[..., None] * H_OD + e[..., None] * E_OD
    return np.clip(255 * 10 ** (-od), 0, 255).astype(np.uint8)


def synthetic_slide(seed: int = 0, background: int = 235) -> tuple[np.ndarray, np.ndarray]:
    """400x600 low-res 'slide' (8 µm/px): H&E tissue blobs on grey, blue/green/red pen, black border; truth mask."""
    rng = np.random.default_rng(seed)
    h, w = 400, 600
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = ((yy - 200) ** 2 / 120 ** 2 + (xx - 200) ** 2 / 90 ** 2 < 1) | \
             ((yy - 180) ** 2 / 80 ** 2 + (xx - 420) ** 2 / 70 ** 2 < 1)
    hc = np.where(tissue, 0.3 + 0.4 * rng.random((h, w)), 0.0)
    ec = np.where(tissue, 0.3 + 0.3 * rng.random((h, w)), 0.0)
    rgb = he_rgb(hc, ec)
    bg = ~tissue
    rgb[bg] = np.clip(background + rng.normal(0, 3, (bg.sum(), 1)), 0, 255).astype(np.uint8)
    # pen strokes on background and over tissue
    blue = (np.abs(yy - 40 - xx * 0.1) < 4) & (xx > 50) & (xx < 560)
    green = (np.abs(xx - 200) < 4) & (yy > 60) & (yy < 380)  # crosses the first blob
    red = (np.abs(yy - 180) < 3) & (xx > 350) & (xx < 580)  # crosses the second blob
    rgb[blue] = (30, 60, 170)
    rgb[green] = (40, 150, 60)
    rgb[red] = (210, 25, 30)
    truth = tissue & ~blue & ~green & ~red
    # black scanner border along the right and bottom edges
    rgb[:, -15:] = 10
    rgb[-10:, :] = 5
    truth[:, -15:] = False
    truth[-10:, :] = False
    return rgb, truth


@pytest.mark.parametrize("background", [240, 205])  # white and grey glass
def test_mask_ignores_background_pen_and_border(background):
    rgb, truth = synthetic_slide(background=background)
    mask, thr, pen = tissue_mask_rgb(rgb, mpp=8.0)
    inter = (mask & truth).sum()
    dice = 2 * inter / (mask.sum() + truth.sum())
    assert dice > 0.95, dice
    assert not mask[:, -15:].any() and not mask[-10:, :].any()  # no black border
    for colour in [(30, 60, 170), (40, 150, 60), (210, 25, 30)]:  # blue, green, red pen: never tissue
        stroke = (rgb == colour).all(axis=2)
        assert stroke.sum() > 300 and not (mask & stroke).any()
        assert pen[stroke].mean() > 0.99
    assert 0.07 <= thr <= 0.25


def test_blank_image_has_no_tissue():
    rng = np.random.default_rng(1)
    rgb = np.clip(238 + rng.normal(0, 4, (200, 300, 3)), 0, 255).astype(np.uint8)
    mask, _, _ = tissue_mask_rgb(rgb, mpp=8.0)
    assert not mask.any()


def test_tissue_mask_on_real_svs(sample_svs):
    with open_slide(sample_svs) as s:
        tm = tissue_mask(s)
    assert isinstance(tm, TissueMask)
    assert tm.mpp == pytest.approx(8.0, rel=0.02)
    assert tm.mask.shape == (185, 138)
    assert tm.downsample == pytest.approx(2220 / 138)
    # CMU-1 crop: a long band of tissue on white glass, about a third of the area
    assert 0.2 < tm.fraction < 0.5
    assert not tm.mask[100:, :20].any()  # lower-left glass (a thin strand crosses the upper left)
    assert tm.mask[150, 50:105].all()  # lower part of the band is solid tissue


def test_real_tissue_png():
    p = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "tissue_1000px.png"
    if not p.exists():
        pytest.skip("../shared/data/real not present")
    with open_slide(p, mpp=2.0) as s:
        tm = tissue_mask(s)
    assert 0.05 < tm.fraction < 0.98


def test_polygons_mask_and_conversions():
    square = np.array([[100, 200], [300, 200], [300, 400], [100, 400]], float)  # (x, y) level-0
    mask = polygons_mask([square], (60, 50), downsample=10)
    rows, cols = np.nonzero(mask)
    assert rows.min() == 20 and rows.max() == 39 and cols.min() == 10 and cols.max() == 29
    napari = polygons_to_napari([square])
    assert np.array_equal(napari[0][0], [200, 100])  # (row, col)
    assert np.array_equal(polygons_from_napari(napari)[0], square)
    three_d = np.column_stack([np.zeros(4), napari[0]])  # napari data with a leading dim
    assert np.array_equal(polygons_from_napari([three_d])[0], square)
    with pytest.raises(UserError):
        polygons_mask([np.zeros((2, 2))], (10, 10), 1.0)


def test_mask_to_polygons_round_trip():
    mask = np.zeros((50, 50), bool)
    mask[10:30, 5:25] = True
    polys = mask_to_polygons(mask, downsample=4.0)
    assert len(polys) == 1
    back = polygons_mask(polys, mask.shape, 4.0)
    assert (back ^ mask).sum() <= 4


def test_geojson_round_trip_qupath(tmp_path):
    a = np.array([[0, 0], [100, 0], [100, 50]], float)
    b = np.array([[10, 10], [20, 10], [20, 20], [10, 20]], float)
    p = tmp_path / "roi.geojson"
    write_geojson(p, [a, b], names=["Tumor", "Stroma"], properties=[{"score": 1}, {"score": 2}])
    doc = json.loads(p.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 2
    f0 = doc["features"][0]
    assert f0["properties"]["objectType"] == "annotation"
    assert f0["properties"]["classification"]["name"] == "Tumor" and f0["properties"]["score"] == 1
    ring = f0["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]  # closed ring
    polys, names = read_geojson(p, return_names=True)
    assert names == ["Tumor", "Stroma"]
    assert np.allclose(polys[0], a) and np.allclose(polys[1], b)


def test_read_qupath_multipolygon_and_list(tmp_path):
    feats = [
        {"type": "Feature", "id": "x", "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[0, 0], [10, 0], [10, 10], [0, 0]]],
            [[[20, 20], [30, 20], [30, 30], [20, 20]], [[22, 22], [23, 22], [23, 23], [22, 22]]],
        ]}, "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [1, 2, 3]}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
    ]
    p = tmp_path / "qupath.json"
    p.write_text(json.dumps(feats))  # QuPath 0.2 exports a bare list of features
    polys, names = read_geojson(p, return_names=True)
    assert len(polys) == 2 and names == ["Tumor", "Tumor"]
    assert polys[1].shape == (3, 2)  # exterior ring only, closing vertex dropped


@pytest.mark.parametrize("content", ["not json", json.dumps({"type": "Nope"}),
                                     json.dumps({"type": "Polygon", "coordinates": 5})])
def test_bad_geojson(tmp_path, content):
    p = tmp_path / "bad.geojson"
    p.write_text(content)
    with pytest.raises(UserError, match="bad.geojson"):
        read_geojson(p)
    with pytest.raises(UserError, match="not found"):
        read_geojson(tmp_path / "missing.geojson")


def test_blank_photo_through_slide(tmp_path):
    Image.fromarray(np.full((300, 300, 3), 245, np.uint8)).save(tmp_path / "blank.png")
    with open_slide(tmp_path / "blank.png", mpp=4.0) as s:
        assert not tissue_mask(s).mask.any()

"""ROI semantics (issue 16): holes are excluded, a file without a polygon or with text coordinates is an error,
an ROI outside the slide says so with the slide's extent, and holes survive GeoJSON and napari round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Polygon, box

from napari_lnm.cli import main
from napari_lnm.errors import SlideError, UserError
from napari_lnm.tiling import TilingConfig, tile_slide
from napari_lnm.tissue import (ROI_EXCLUDE, ROI_INCLUDE, check_rois_inside, load_rois, polygons_mask, read_geojson,
                               rois_from_napari, rois_to_napari, write_geojson)


class FakeSlide:
    """4096 x 4096 level-0 px at 0.5 µm/px: a 256-px tile at 20x is 256 level-0 px."""

    path = Path("fake.svs")
    dimensions = (4096, 4096)
    mpp = 0.5
    mpp_source = "metadata"


CFG = TilingConfig(magnification=20, tile_size=256, min_tissue=0.5)


def _square(x0, y0, x1, y1) -> list:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _tiles_inside(df, x0, y0, x1, y1) -> int:
    """Number of tiles whose box lies inside the level-0 box [x0, x1) x [y0, y1)."""
    return int(((df.x >= x0) & (df.y >= y0) & (df.x + df["size"] <= x1) & (df.y + df["size"] <= y1)).sum())


def _write(tmp_path: Path, doc, name: str = "roi.geojson") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_polygon_with_hole_gives_no_tile_inside_the_hole(tmp_path):
    p = _write(tmp_path, {"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [_square(0, 0, 4096, 4096), _square(1024, 1024, 3072, 3072)]}})
    df = tile_slide(FakeSlide(), rois=load_rois(p), config=CFG, tissue=False)
    assert _tiles_inside(df, 1024, 1024, 3072, 3072) == 0
    assert len(df) == 16 * 16 - 8 * 8  # everything else is kept
    # the path itself is accepted too
    assert tile_slide(FakeSlide(), rois=p, config=CFG, tissue=False).equals(df)


def test_multipolygon_holes_and_island_in_a_hole(tmp_path):
    left = [_square(0, 0, 2048, 4096), _square(512, 512, 1536, 1536)]
    right = [_square(2048, 0, 4096, 4096), _square(2560, 1024, 3584, 3072)]
    island = [_square(2816, 1792, 3328, 2304)]  # inside the right part's hole: analysed again
    p = _write(tmp_path, {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": {
        "type": "MultiPolygon", "coordinates": [left, right, island]}}]})
    rois = load_rois(p)
    assert isinstance(rois, MultiPolygon)
    assert rois.area == pytest.approx(4096 * 4096 - 1024 * 1024 - 1024 * 2048 + 512 * 512)
    df = tile_slide(FakeSlide(), rois=rois, config=CFG, tissue=False)
    assert _tiles_inside(df, 512, 512, 1536, 1536) == 0
    assert _tiles_inside(df, 2560, 1024, 3584, 3072) == _tiles_inside(df, 2816, 1792, 3328, 2304) == 4
    mask = polygons_mask(rois, (256, 256), 16.0)
    assert not mask[40:90, 40:90].any() and mask[115:140, 180:200].all() and mask[5:30, 5:30].all()


def test_list_of_arrays_is_still_accepted():
    square = np.array([[0, 0], [1024, 0], [1024, 1024], [0, 1024]], float)
    df = tile_slide(FakeSlide(), rois=[square], config=CFG, tissue=False)
    assert len(df) == 16 and _tiles_inside(df, 0, 0, 1024, 1024) == 16
    assert len(tile_slide(FakeSlide(), rois=[], config=CFG, tissue=False)) == 0  # an empty list selects nothing
    assert load_rois(None) is None


def test_invalid_geometry_is_repaired():
    bow_tie = [(0, 0), (2048, 2048), (2048, 0), (0, 2048)]  # self-crossing
    rois = load_rois(Polygon(bow_tie))
    assert rois.is_valid and rois.area == pytest.approx(2 * 0.25 * 2048 * 2048)


def test_geojson_with_only_a_point_is_an_error(tmp_path):
    p = _write(tmp_path, {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [5, 5]}}]}, "points.geojson")
    with pytest.raises(UserError, match=r"points\.geojson: no Polygon or MultiPolygon.*Point") as err:
        load_rois(p)
    assert "\n" not in str(err.value)


def test_string_coordinates_give_a_one_line_error(tmp_path, capsys, sample_svs):
    ring = [["0", "0"], ["100", "0"], ["100", "100"], ["0", "0"]]
    p = _write(tmp_path, {"type": "Polygon", "coordinates": [ring]}, "text.geojson")
    with pytest.raises(UserError, match=r"text\.geojson: non-numeric coordinate '0'") as err:
        load_rois(p)
    assert "\n" not in str(err.value)
    assert main(["tile", str(sample_svs), "--roi", str(p), "--out", str(tmp_path / "o")]) == 1
    msg = capsys.readouterr().err.strip()
    assert msg.count("\n") == 0 and "text.geojson" in msg and "non-numeric" in msg


def test_roi_outside_the_slide_names_the_extent(tmp_path):
    far = np.array([[10000, 10000], [12000, 10000], [12000, 12000]], float)
    with pytest.raises(SlideError, match=r"fake\.svs: the ROI lies entirely outside the slide.*x 0\.\.4096, "
                                         r"y 0\.\.4096 level-0 px.*level-0 pixels") as err:
        tile_slide(FakeSlide(), rois=[far], config=CFG, tissue=False)
    assert "x 10000..12000" in str(err.value) and "\n" not in str(err.value)
    check_rois_inside(load_rois([far + [-9000, -9000]]), FakeSlide())  # overlapping the slide is fine
    check_rois_inside(None, FakeSlide())


def test_cli_tile_roi_outside_and_point_only(tmp_path, capsys, sample_svs):
    p = _write(tmp_path, {"type": "Polygon", "coordinates": [_square(1e6, 1e6, 1.1e6, 1.1e6)]}, "far.geojson")
    assert main(["tile", str(sample_svs), "--roi", str(p), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "far.geojson" in err and "outside the slide" in err and "x 0..2220" in err
    q = _write(tmp_path, {"type": "Point", "coordinates": [1, 2]}, "point.geojson")
    assert main(["tile", str(sample_svs), "--roi", str(q), "--out", str(tmp_path / "o")]) == 1
    assert "point.geojson: no Polygon" in capsys.readouterr().err


def test_cli_tile_with_a_hole(tmp_path, capsys, sample_svs):
    p = _write(tmp_path, {"type": "Polygon", "coordinates": [_square(0, 0, 2220, 2967),
                                                             _square(500, 500, 1700, 2400)]})
    assert main(["tile", str(sample_svs), "--roi", str(p), "--no-tissue", "--tile-size", "256",
                 "--out", str(tmp_path / "o")]) == 0
    assert "with 1 hole(s)" in capsys.readouterr().out
    import pandas as pd

    df = pd.read_parquet(tmp_path / "o" / "tiles.parquet")
    assert len(df) > 0 and _tiles_inside(df, 500, 500, 1700, 2400) == 0


def test_write_geojson_keeps_holes(tmp_path):
    roi = MultiPolygon([Polygon(_square(0, 0, 100, 100), [_square(20, 20, 40, 40)]), box(200, 0, 300, 50)])
    write_geojson(tmp_path / "out.geojson", roi, names=["Tumor", "Node"])
    doc = json.loads((tmp_path / "out.geojson").read_text())
    rings = [f["geometry"]["coordinates"] for f in doc["features"]]
    assert [len(r) for r in rings] == [2, 1] and rings[0][1][0] == rings[0][1][-1]  # closed interior ring
    back = load_rois(tmp_path / "out.geojson")
    assert back.symmetric_difference(roi).area == pytest.approx(0.0)
    assert len(read_geojson(tmp_path / "out.geojson")) == 2  # outlines only, for compatibility
    write_geojson(tmp_path / "plain.geojson", [np.array([[0, 0], [10, 0], [10, 10]], float)])  # today's arrays
    assert load_rois(tmp_path / "plain.geojson").area == pytest.approx(50.0)


def test_napari_shapes_round_trip_keeps_holes():
    roi = MultiPolygon([Polygon(_square(0, 0, 1000, 1000), [_square(100, 100, 900, 900)]),
                        box(400, 400, 600, 600), box(2000, 0, 2100, 100)])  # the middle box: an island in the hole
    data, kinds = rois_to_napari(roi)
    assert kinds.count(ROI_EXCLUDE) == 1 and kinds[:2] == [ROI_INCLUDE, ROI_EXCLUDE]
    assert np.allclose(data[0].min(0), [0, 0]) and np.allclose(data[0].max(0), [1000, 1000])
    assert all(d.shape[1] == 2 for d in data)
    back = rois_from_napari(data, kinds)
    assert back.symmetric_difference(roi).area == pytest.approx(0.0)
    # (row, col): a shape at rows 0..10, cols 0..20 is x 0..20, y 0..10
    assert rois_from_napari([np.array([[0, 0], [0, 20], [10, 20], [10, 0]], float)]).bounds == (0, 0, 20, 10)
    # exclusions drawn first cut the whole slide when its extent is known
    only_hole = rois_from_napari([np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float)], [ROI_EXCLUDE],
                                 extent=(100, 50))
    assert only_hole.area == pytest.approx(100 * 50 - 100)
    with pytest.raises(UserError, match="roi_kind"):
        rois_from_napari(data, ["include", "maybe"] + kinds[2:])


@pytest.mark.gui
def test_napari_roi_layer_round_trip(make_napari_viewer, tmp_path):
    from napari_lnm._widgets._common import add_roi_layer, rois_from_shapes

    viewer = make_napari_viewer()
    slide = viewer.add_image(np.zeros((400, 600, 3), np.uint8), rgb=True, scale=(0.5, 0.5))
    roi = MultiPolygon([Polygon(_square(10, 10, 500, 300), [_square(100, 100, 200, 200)])])
    shapes = add_roi_layer(viewer, roi, slide)
    assert list(shapes.features["roi_kind"]) == [ROI_INCLUDE, ROI_EXCLUDE]
    assert not np.allclose(shapes.edge_color[0], shapes.edge_color[1])  # exclusions look different
    assert rois_from_shapes(shapes, slide).symmetric_difference(roi).area == pytest.approx(0.0, abs=1e-6)
    shapes.add(np.array([[250, 520], [250, 580], [300, 580], [300, 520]], float), shape_type="rectangle")
    assert shapes.features["roi_kind"].iloc[-1] == ROI_INCLUDE  # a newly drawn shape adds to the ROI
    assert rois_from_shapes(shapes, slide).area == pytest.approx(roi.area + 60 * 50)

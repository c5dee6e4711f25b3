"""GUI tests of the napari widgets (pytest-qt + make_napari_viewer); run with ``xvfb-run -a python -m pytest``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _synthetic_tables import feature_tables

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = [pytest.mark.gui, pytest.mark.timeout(300)]

MPP = 0.5
RESULT_LAYERS = ("H", "E", "nuclei", "nucleus types", "voronoi", "delaunay", "tiles", "key tiles")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    """A small XGBoost bundle trained here on synthetic feature tables (20x, 256-px tiles)."""
    from napari_lnm.model import TrainConfig, train_model

    tables, labels = feature_tables(12, 30, seed=1)
    cfg = TrainConfig(cv=3, n_bootstrap=50, tiling={"magnification": 20.0, "tile_size": 256})
    bundle = train_model(tables, labels, cfg)
    return bundle.save(tmp_path_factory.mktemp("model") / "bundle")


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory) -> Path:
    """A 1024x1024 synthetic H&E pyramidal TIFF at 0.5 µm/px (16 tiles of 256 px at 20x)."""
    from napari_lnm.synth import make_synthetic_tile, write_pyramid_tiff

    rgb = make_synthetic_tile(1, "CMS2", seed=3, size=1024, mpp=MPP)
    p = tmp_path_factory.mktemp("slide") / "synthetic.tif"
    write_pyramid_tiff(p, rgb, mpp=MPP)
    return p


def _open(viewer, path):
    layers = viewer.open(str(path), plugin="napari-lnm")
    assert layers, "the napari-lnm reader returned no layer"
    layer = layers[0]
    assert layer.metadata["napari_lnm_path"] and layer.metadata["mpp"] == pytest.approx(MPP, rel=1e-3)
    return layer


def _widget(viewer, bundle_dir, max_tiles=4):
    # through the plugin manifest, as a user opens it (the widget gets napari's viewer proxy)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lnm", "Analyse slide")
    w.model_edit.setText(str(bundle_dir))
    w.tile_combo.setCurrentText("256")
    w.mag_combo.setCurrentText("20x")
    w.max_tiles.setValue(max_tiles)
    w.roi_combo.setCurrentText("auto tissue")
    return w


def _wait_done(qtbot, w, timeout=120_000):
    qtbot.waitUntil(lambda: not w.runner.running and w.run_btn.isEnabled(), timeout=timeout)


def _result_layer_names(viewer):
    return [lyr.name for lyr in viewer.layers if lyr.metadata.get("napari_lnm_result")]


def test_analyse_shows_aligned_layers_inspect_and_export(make_napari_viewer, qtbot, slide_path, bundle_dir, tmp_path):
    viewer = make_napari_viewer()
    _open(viewer, slide_path)
    w = _widget(viewer, bundle_dir)
    seen = []
    w.runner.progressed.connect(lambda d, t, m: seen.append((d, t)))
    assert w.run()
    _wait_done(qtbot, w)
    assert w.last_status == "done", w.status.text()
    assert any(t == 4 and d == 4 for d, t in seen), "progress never counted the tiles"
    names = _result_layer_names(viewer)
    assert sorted(names) == sorted(RESULT_LAYERS)
    assert w.prob_label.text().endswith("%")

    from napari_lnm._widgets._common import get_result

    res = get_result(viewer)
    t = res.prediction.tiles
    assert len(t) == 4
    # key tiles / tiles: world position of the rectangles equals the tile's level-0 position x mpp
    tiles_layer = viewer.layers["tiles"]
    corner = tiles_layer.data_to_world(tiles_layer.data[0].min(0))
    np.testing.assert_allclose(corner, [(t["y"].iloc[0] - 0.5) * MPP, (t["x"].iloc[0] - 0.5) * MPP])
    # H mosaic: its pixel (0, 0) sits on the top-left analysed tile
    h = viewer.layers["H"]
    np.testing.assert_allclose(h.data_to_world((0, 0)), [t["y"].min() * MPP, t["x"].min() * MPP], atol=1e-6)
    assert np.asarray(h.data).shape[0] <= (t["y"].max() - t["y"].min() + 256)
    # nuclei ids unique across tiles: as many labels as nuclei found in all tiles
    lab = np.asarray(viewer.layers["nuclei"].data)
    n_nuc = sum(int(np.asarray(a.labels).max()) for a in res.prediction.analyses)
    assert len(np.unique(lab[lab > 0])) == n_nuc > 0
    assert np.asarray(viewer.layers["voronoi"].data).shape[1:] == (2, 2)
    # typed nuclei: one type colour per nucleus, a toggle between type and instance colours, hover text
    types_layer = viewer.layers["nucleus types"]
    tl = np.asarray(types_layer.data)
    assert tl.shape == lab.shape and set(np.unique(tl)) <= {0, 1, 2, 3, 4} and ((tl > 0) == (lab > 0)).all()
    assert not types_layer.visible and viewer.layers["nuclei"].visible
    w.type_box.setChecked(True)
    assert types_layer.visible and not viewer.layers["nuclei"].visible
    w.type_box.setChecked(False)
    from napari_lnm._widgets.analyse import nucleus_type_text

    r, c = np.argwhere(lab > 0)[0]
    text = nucleus_type_text(types_layer, types_layer.data_to_world((r, c)))
    assert text.startswith(f"nucleus {lab[r, c]}: ") and "(p = " in text
    assert any(name in text for name in ("epithelial", "inflammatory", "stromal", "other"))
    assert "nuclei: " in w.info_label.text() and "epithelial" in w.info_label.text()
    assert w.evidence_label.text()
    key = viewer.layers["key tiles"]
    assert list(key.features["rank"]) == list(range(1, len(key.data) + 1))
    assert all(isinstance(r, str) and r for r in key.features["reason"])
    # hovering a key tile puts its reason in the layer's help text (shown in the status bar)
    from types import SimpleNamespace

    from napari_lnm._widgets.analyse import HOVER_HELP, _key_tile_hover

    k0 = res.prediction.key_tiles.iloc[0]
    centre = ((k0["y"] + k0["size"] / 2) * MPP, (k0["x"] + k0["size"] / 2) * MPP)
    _key_tile_hover(key, SimpleNamespace(position=centre, view_direction=None, dims_displayed=[0, 1]))
    assert key.help.startswith("key tile 1 (") and k0["reason"] in key.help
    _key_tile_hover(key, SimpleNamespace(position=(-1e6, -1e6), view_direction=None, dims_displayed=[0, 1]))
    assert key.help == HOVER_HELP
    assert w.chart is not None and w.chart.figure.axes

    # inspect: click in the middle of the first tile
    from napari_lnm._widgets import ExportWidget, InspectTileWidget

    ins = InspectTileWidget(viewer)
    viewer.window.add_dock_widget(ins)
    x, y, s = (float(t[c].iloc[0]) for c in ("x", "y", "size"))
    assert ins.inspect_world(((y + s / 2) * MPP, (x + s / 2) * MPP)) == 0
    assert ins.table.rowCount() > 0
    df = ins.inspect(0)
    assert df["bin"].str.match(r"^\d+ of \d+$|^–$").all()
    assert (df["bin"] != "–").any()

    # export: GeoJSON re-imports onto the same level-0 geometry
    from napari_lnm.tissue import read_geojson

    ex = ExportWidget(viewer)
    viewer.window.add_dock_widget(ex)
    ex.dir_edit.setText(str(tmp_path))
    assert ex.export()  # runs in a worker
    qtbot.waitUntil(lambda: bool(ex.last_paths), timeout=60_000)
    paths = ex.last_paths
    assert set(paths) >= {"roi", "nuclei", "key_tiles", "json", "tiles_csv"}
    nuclei = read_geojson(paths["nuclei"])
    assert len(nuclei) >= 0.9 * n_nuc
    feats = json.loads(paths["nuclei"].read_text())["features"]  # QuPath detections, classified by type
    assert {f["properties"]["objectType"] for f in feats} == {"detection"}
    assert {f["properties"]["classification"]["name"] for f in feats} <= {"epithelial", "inflammatory", "stromal",
                                                                          "other"}
    m = feats[0]["properties"]["measurements"]
    assert m["Nucleus: area"] > 0 and 0 < m["Nucleus: type probability"] <= 1
    for poly in nuclei[:20]:  # every nucleus lies inside an analysed tile
        cx, cy = poly.mean(0)
        assert ((cx >= t["x"]) & (cx < t["x"] + t["size"]) & (cy >= t["y"]) & (cy < t["y"] + t["size"])).any()
    keys = read_geojson(paths["key_tiles"])
    k = res.prediction.key_tiles
    assert len(keys) == len(k)
    if len(k):
        np.testing.assert_allclose(keys[0].min(0), [k["x"].iloc[0], k["y"].iloc[0]])
        np.testing.assert_allclose(keys[0].max(0), [k["x"].iloc[0] + k["size"].iloc[0], k["y"].iloc[0] + k["size"].iloc[0]])
    summary = json.loads(paths["json"].read_text())
    assert summary["probability"] == pytest.approx(res.prediction.probability)
    png = ex.report()
    assert png is not None and png.stat().st_size > 10_000

    # re-import the exported ROI (the analysed tiles) as a Shapes layer and analyse it again: same tiles
    roi_layer = w.import_roi(str(paths["roi"]))
    assert roi_layer is not None and w.roi_combo.currentText() == roi_layer.name
    np.testing.assert_allclose(roi_layer.data_to_world(roi_layer.data[0].min(0)),
                               [t["y"].iloc[0] * MPP, t["x"].iloc[0] * MPP])
    w.max_tiles.setValue(0)  # all tiles inside the ROI
    assert w.run()
    _wait_done(qtbot, w)
    again = get_result(viewer).prediction.tiles
    assert sorted(zip(again["x"], again["y"])) == sorted(zip(t["x"], t["y"]))


def test_run_twice_replaces_layers_and_roi_from_shapes(make_napari_viewer, qtbot, slide_path, bundle_dir):
    viewer = make_napari_viewer()
    _open(viewer, slide_path)
    w = _widget(viewer, bundle_dir, max_tiles=2)
    assert w.run()
    _wait_done(qtbot, w)
    n_layers = len(viewer.layers)
    # second run on a drawn ROI: a rectangle over the top-left 512x512 level-0 px (µm in world coordinates)
    roi = viewer.add_shapes([np.array([[0, 0], [0, 256], [256, 256], [256, 0]], float)], shape_type="polygon",
                            name="my ROI")
    w.roi_combo.setCurrentText("my ROI")
    n_layers += 1
    assert w.run()
    _wait_done(qtbot, w)
    assert w.last_status == "done", w.status.text()
    assert len(viewer.layers) == n_layers
    assert sorted(_result_layer_names(viewer)) == sorted(RESULT_LAYERS)
    t = viewer.layers["tiles"].features
    from napari_lnm._widgets._common import get_result

    tiles = get_result(viewer).prediction.tiles
    assert (tiles["x"] + tiles["size"] <= 512 + 1).all() and (tiles["y"] + tiles["size"] <= 512 + 1).all()
    assert len(t) == len(tiles)
    assert roi in viewer.layers


def _start_and_wait_first_tile(qtbot, w) -> None:
    """Press Run and wait until the progress bar has counted at least one tile."""
    progressed = []
    w.runner.progressed.connect(lambda d, t, m: progressed.append(d))
    assert w.run()
    qtbot.waitUntil(lambda: any(d >= 1 for d in progressed), timeout=60_000)


def test_cancel_stops_within_a_second(make_napari_viewer, qtbot, slide_path, bundle_dir):
    viewer = make_napari_viewer()
    _open(viewer, slide_path)
    w = _widget(viewer, bundle_dir, max_tiles=16)
    _start_and_wait_first_tile(qtbot, w)
    t0 = time.perf_counter()
    w.cancel()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=5_000)
    assert time.perf_counter() - t0 < 1.5
    _wait_done(qtbot, w)
    assert w.last_status == "cancelled"
    assert _result_layer_names(viewer) == []


def test_removing_slide_layer_mid_run_stops_cleanly(make_napari_viewer, qtbot, slide_path, bundle_dir):
    viewer = make_napari_viewer()
    slide = _open(viewer, slide_path)
    w = _widget(viewer, bundle_dir, max_tiles=16)
    _start_and_wait_first_tile(qtbot, w)
    viewer.layers.remove(slide)
    _wait_done(qtbot, w, timeout=10_000)
    assert w.last_status in ("cancelled", "discarded")
    assert _result_layer_names(viewer) == []


def test_closing_viewer_mid_run_stops_worker(make_napari_viewer, qtbot, slide_path, bundle_dir):
    viewer = make_napari_viewer()
    _open(viewer, slide_path)
    w = _widget(viewer, bundle_dir, max_tiles=16)
    _start_and_wait_first_tile(qtbot, w)
    runner = w.runner
    viewer.close()
    assert not runner.running  # the close handler cancelled and joined the worker


def test_wrong_model_file_gives_notification(make_napari_viewer, qtbot, slide_path, tmp_path, monkeypatch):
    import napari.utils.notifications as notes

    shown = []
    monkeypatch.setattr(notes, "show_error", lambda msg: shown.append(msg))
    viewer = make_napari_viewer()
    _open(viewer, slide_path)
    bad = tmp_path / "not_a_model.txt"
    bad.write_text("hello")
    w = _widget(viewer, bad)
    assert not w.set_model_path(str(bad))
    assert shown and "not a model bundle" in shown[-1] and "\n" not in shown[-1]
    assert not w.run()  # Run refuses with a notification too, no worker, no traceback
    assert len(shown) == 2 and not w.runner.running


def test_train_widget_cross_validates_and_saves(make_napari_viewer, qtbot, tmp_path):
    from napari_lnm._widgets import TrainWidget
    from napari_lnm.model import ModelBundle

    tables, labels = feature_tables(10, 20, seed=5)
    feats = tmp_path / "features"
    feats.mkdir()
    for tbl in tables:
        tbl.to_parquet(feats / f"{tbl['slide_id'].iloc[0]}.parquet", index=False)
    cohort = pd.DataFrame({"slide_id": [t["slide_id"].iloc[0] for t in tables],
                           "path": [f"slides/{t['slide_id'].iloc[0]}.tif" for t in tables], "label": labels})
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.cohort_edit.setText(str(tmp_path / "cohort.csv"))
    w.features_edit.setText(str(feats))
    w.out_edit.setText(str(tmp_path / "trained"))
    w.cv_spin.setValue(3)
    assert w.run()
    qtbot.waitUntil(lambda: not w.runner.running and w.run_btn.isEnabled(), timeout=120_000)
    assert w.last_status == "done", w.status.text()
    assert w.auc_label.text().startswith("CV AUC")
    bundle = ModelBundle.load(tmp_path / "trained")
    assert bundle.cv_report is not None and 0.0 <= bundle.cv_report.auc <= 1.0
    assert w.chart.figure.axes[0].lines  # the ROC curve is drawn


def test_train_widget_extracts_features_first(make_napari_viewer, qtbot, tmp_path):
    from napari_lnm._widgets import TrainWidget
    from napari_lnm.model import ModelBundle
    from napari_lnm.synth import make_cohort

    csv = make_cohort(tmp_path / "cohort", 8, seed=0, size=(512, 512))
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.cohort_edit.setText(str(csv))
    w.features_edit.setText(str(tmp_path / "features"))
    w.out_edit.setText(str(tmp_path / "trained"))
    w.extract_box.setChecked(True)
    w.tile_combo.setCurrentText("256")
    w.tiles_spin.setValue(2)
    w.cv_spin.setValue(2)
    assert w.run()
    qtbot.waitUntil(lambda: not w.runner.running and w.run_btn.isEnabled(), timeout=120_000)
    assert w.last_status == "done", w.status.text()
    assert len(list((tmp_path / "features").glob("*.parquet"))) == 8
    bundle = ModelBundle.load(tmp_path / "trained")
    assert bundle.config["tiling"]["tile_size"] == 256
    assert all(len(pd.read_parquet(p)) <= 2 for p in (tmp_path / "features").glob("*.parquet"))


def test_analyse_in_memory_photo_layer_with_user_mpp(make_napari_viewer, qtbot, bundle_dir):
    from napari_lnm.synth import make_synthetic_tile

    viewer = make_napari_viewer()
    viewer.add_image(make_synthetic_tile(0, "CMS4", seed=2, size=512, mpp=MPP), name="photo", rgb=True)
    w = _widget(viewer, bundle_dir, max_tiles=1)
    assert w.slide_combo.currentText() == "photo"
    assert "no pixel size" in w.status.text()
    w.mpp_spin.setValue(MPP)
    assert w.run()
    _wait_done(qtbot, w)
    assert w.last_status == "done", w.status.text()
    assert len(viewer.layers["tiles"].data) == 1
    # the photo layer shows level-0 px at scale 1: the H mosaic (0.5 µm/px tiles of a 0.5 µm/px photo) too
    h = viewer.layers["H"]
    np.testing.assert_allclose(h.scale, viewer.layers["photo"].scale)
    from napari_lnm._widgets._common import get_result

    t = get_result(viewer).prediction.tiles
    np.testing.assert_allclose(h.data_to_world((0, 0)), (t["y"].iloc[0], t["x"].iloc[0]), atol=1e-6)


def test_widgets_load_through_the_plugin_manifest(make_napari_viewer):
    from napari_lnm._widgets._common import AnalysisResult, get_result, set_result, unwrap_viewer

    viewer = make_napari_viewer()
    widgets = {}
    for name in ("Analyse slide", "Inspect tile", "Train model", "Export results"):
        dock, widgets[name] = viewer.window.add_plugin_dock_widget("napari-lnm", name)
        assert unwrap_viewer(widgets[name].viewer) is viewer
    # widgets get different proxies of the viewer: a result published by one is seen by the others
    res = AnalysisResult(prediction=None, bundle=None, slide_path="x", mpp0=0.5, work_mpp=0.5)
    set_result(widgets["Analyse slide"].viewer, res)
    assert get_result(widgets["Export results"].viewer) is res and get_result(viewer) is res
    set_result(viewer, None)


def test_model_tiling_sets_magnification_and_tile_size(make_napari_viewer, bundle_dir):
    from napari_lnm._widgets.analyse import load_bundle

    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lnm", "Analyse slide")
    # the shipped demo model records its training tiling (20x, 256-px tiles): the form shows it, locked
    assert (w.mag_combo.currentText(), w.tile_combo.currentText()) == ("20x", "256")
    assert not w.tile_combo.isEnabled() and "set by the model" in w.tile_combo.toolTip()
    w.model_edit.setText("")  # no model: the form decides again
    w.model_edit.editingFinished.emit()
    assert w.tile_combo.isEnabled() and w.mag_combo.isEnabled()
    w.tile_combo.setCurrentText("512")
    assert w.set_model_path(str(bundle_dir))
    assert w.tile_combo.currentText() == "256" and not w.tile_combo.isEnabled()
    w.tile_combo.setCurrentText("512")  # even if changed programmatically, the run uses the model's tiling
    cfg = w.config(load_bundle(str(bundle_dir)))
    assert (cfg.magnification, cfg.tile_size, cfg.segmentation) == (20.0, 256, "threshold")
    assert w.tile_combo.currentText() == "256"


def test_clinical_values_reach_the_prediction(make_napari_viewer, qtbot, tmp_path):
    from test_pipeline import make_tiny_slide
    from test_predict_clinical import make_clinical_bundle

    from napari_lnm._widgets._common import get_result
    from napari_lnm._widgets.analyse import parse_clinical
    from napari_lnm.errors import UserError

    assert parse_clinical(" age = 71 ; stage=III, ") == {"age": "71", "stage": "III"}
    assert parse_clinical("  ") is None
    with pytest.raises(UserError, match="not column=value"):
        parse_clinical("age 71")

    model = make_clinical_bundle().save(tmp_path / "clinical_model")
    slide = make_tiny_slide(tmp_path / "slide.tif", px=512)
    viewer = make_napari_viewer()
    _open(viewer, slide)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lnm", "Analyse slide")
    assert w.set_model_path(str(model))
    assert w.clinical_edit.isEnabled() and w.clinical_edit.placeholderText() == "age=number; stage=I|II|III"
    w.roi_combo.setCurrentText("auto tissue")
    assert not w.run()  # the model needs its clinical values: a notification, nothing starts
    w.clinical_edit.setText("age=80; stage=III")
    assert w.run()
    _wait_done(qtbot, w)
    p_old = get_result(viewer).prediction
    assert p_old.model["clinical"] == {"age": 80.0, "stage": "III"}
    assert w.info_label.text().splitlines()[0].endswith("clinical: age 80, stage III")
    w.clinical_edit.setText("age=40; stage=I")
    assert w.run()
    _wait_done(qtbot, w)
    p_young = get_result(viewer).prediction
    assert p_young.model["clinical"]["age"] == 40.0
    assert p_old.probability != p_young.probability  # the values change the model's answer

"""Subtype side of the Analyse widget: subtype label, model used, counts chart and per-tile overlay layer.

Pure helpers are tested without a display; the widget tests need napari, pytest-qt and torch and run under Xvfb
(``xvfb-run -a python -m pytest tests/test_widgets_subtype.py``).  With ``NAPARI_LNM_DOCS_IMAGES=docs/images``
the screenshot test also writes ``widget_subtype.png`` there.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from _synthetic_tables import feature_tables

pytest.importorskip("napari")  # importing napari_lnm._widgets loads the Qt widgets (no display needed)

from napari_lnm._widgets._subtype import (  # noqa: E402
    SUBTYPE_COLOURS, subtype_colour, subtype_counts, subtype_summary, subtype_tiles, subtype_title, tile_reason,
)

MPP = 0.5
CLASSES = ("CMS1", "CMS2", "CMS3", "CMS4")


def _vote_dict(probs, used="CMS2", routing=""):
    """A Prediction.subtype dict as predict_slide writes it, from hand-made per-tile probabilities."""
    from napari_lnm.subtype import vote

    v = vote(np.asarray(probs, float), CLASSES)
    d = v.to_dict()
    n = len(probs)
    d["tiles"] = {"x": [256 * i for i in range(n)], "y": [0] * n, "size": [256] * n, "classes": list(CLASSES),
                  "probs": np.asarray(probs, float).tolist()}
    d["routing"] = routing
    d["model_used"] = used
    return d


# ----------------------------------------------------------------------------- headless helpers
def test_subtype_tiles_table_from_vote():
    probs = [[0.1, 0.7, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.05, 0.15, 0.2, 0.6]]
    df = subtype_tiles(_vote_dict(probs))
    assert list(df["subtype"]) == ["CMS2", "CMS1", "CMS4"]
    np.testing.assert_allclose(df["probability"], [0.7, 0.6, 0.6])
    np.testing.assert_allclose(df[[f"p_{c}" for c in CLASSES]].to_numpy(), probs)
    assert list(df["x"]) == [0, 256, 512] and (df["size"] == 256).all()
    assert "CMS4 mesenchymal" in tile_reason(df, 2) and "p=0.60" in tile_reason(df, 2)
    assert tile_reason(df, 3) == "" and tile_reason(df, None) == ""
    # no per-tile votes (e.g. a result.json from an older version): an empty table with the columns
    assert len(subtype_tiles({"subtype": "CMS2", "counts": {"CMS2": 3}})) == 0
    assert len(subtype_tiles(None)) == 0
    bad = _vote_dict(probs)
    bad["tiles"]["x"] = [0, 1]
    with pytest.raises(ValueError, match="2 positions but 3"):
        subtype_tiles(bad)


def test_subtype_summary_says_model_and_why():
    probs = [[0.1, 0.7, 0.1, 0.1]] * 3 + [[0.7, 0.1, 0.1, 0.1]]
    head, line = subtype_summary(_vote_dict(probs, "CMS2", "own model (8 slides)"))
    assert head == "CMS2 canonical  (3 of 4 tiles)"
    assert line == "LNM model: per-subtype CMS2 model (trained on 8 slides)"
    head, line = subtype_summary(_vote_dict(probs, "pooled", "pooled (only 3 slides, fewer than 6)"))
    assert line == "LNM model: pooled fallback (CMS2: only 3 slides, fewer than 6)"
    # the reason from the bundle's routing table when the prediction does not carry it
    d = _vote_dict(probs, "pooled")
    assert subtype_summary(d, {"CMS2": "pooled (2 negative, 1 positive)"})[1] == \
        "LNM model: pooled fallback (CMS2: 2 negative, 1 positive)"
    assert subtype_summary(d, {"CMS1": "own model (9 slides)"})[1] == \
        "LNM model: pooled fallback (no CMS2 slides in the training cohort)"
    assert subtype_summary(d, {})[1] == "LNM model: pooled fallback (the model bundle has no per-subtype models)"
    assert subtype_summary(None) == ("", "") and subtype_summary({"counts": {}}) == ("", "")


def test_counts_order_names_and_colours():
    d = _vote_dict([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.6, 0.1]])
    names, counts = subtype_counts(d)
    assert names == list(CLASSES) and counts.tolist() == [1, 0, 1, 1]
    assert subtype_counts(None)[0] == []
    assert subtype_title("CMS1") == "CMS1 MSI immune" and subtype_title("X") == "X"
    assert len(set(SUBTYPE_COLOURS.values())) == 4 and subtype_colour("other") not in SUBTYPE_COLOURS.values()


# ----------------------------------------------------------------------------- widget (napari + torch)
def _gui():
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    pytest.importorskip("torch")


@pytest.fixture(scope="module")
def routed_bundle(tmp_path_factory):
    """An XGBoost bundle with per-subtype models: CMS2 and CMS4 have their own, CMS1 and CMS3 fall back to pooled."""
    pytest.importorskip("xgboost")
    from napari_lnm.model import ModelBundle, TrainConfig, train_model

    subtypes = ["CMS2"] * 8 + ["CMS4"] * 8 + ["CMS1"] * 2 + ["CMS3"] * 2
    tables, labels = feature_tables(len(subtypes), 20, seed=1)
    cfg = TrainConfig(cv=3, n_bootstrap=20, per_subtype=True, min_subtype_slides=6,
                      tiling={"magnification": 20.0, "tile_size": 256})
    bundle = train_model(tables, labels, cfg, subtypes=subtypes)
    path = bundle.save(tmp_path_factory.mktemp("model") / "bundle")
    return path, ModelBundle.load(path)


@pytest.fixture(scope="module")
def subtype_model_dir(tmp_path_factory):
    """A tiny CNN (20x, 256-px tiles, 32-px input) trained for 6 short epochs on synthetic CMS tiles (128 µm wide).

    Two seconds of CPU; it then tells the four synthetic subtypes apart on fresh tiles.
    """
    torch = pytest.importorskip("torch")
    from napari_lnm.subtype import train_subtype
    from napari_lnm.synth import make_synthetic_tile
    from napari_lnm.tiling import TilingConfig

    torch.set_num_threads(1)
    tiles, rows = {}, []
    for i in range(16):
        sub = CLASSES[i % 4]
        sid = f"t{i:02d}"
        tiles[sid] = np.stack([make_synthetic_tile(i % 2, sub, seed=50 * i + j, size=128, mpp=1.0) for j in range(6)])
        rows.append((sid, i % 2, sub))
    cohort = pd.DataFrame(rows, columns=["slide_id", "label", "subtype"])
    out = tmp_path_factory.mktemp("cnn") / "subtype"
    res = train_subtype(tiles, cohort, out, arch="small", epochs=6, batch_size=8, lr=3e-3, input_size=32, seed=0,
                        val_fraction=0.0, tiling_config=TilingConfig(magnification=20.0, tile_size=256))
    assert res.epoch_losses[-1] < res.epoch_losses[0]
    return out


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory) -> Path:
    """A 1024x1024 synthetic CMS2 slide at 0.5 µm/px (16 tiles of 256 px at 20x)."""
    from napari_lnm.synth import make_synthetic_tile, write_pyramid_tiff

    p = tmp_path_factory.mktemp("slide") / "synthetic_cms2.tif"
    write_pyramid_tiff(p, make_synthetic_tile(1, "CMS2", seed=3, size=1024, mpp=MPP), mpp=MPP)
    return p


@pytest.fixture(scope="module")
def quadrant_slide(tmp_path_factory) -> Path:
    """A 1024x1024 synthetic slide at 0.5 µm/px whose quadrants are CMS1 | CMS2 over CMS3 | CMS4 (4 tiles each)."""
    from napari_lnm.synth import make_synthetic_tile, write_pyramid_tiff

    q = [make_synthetic_tile(1, c, seed=11 + k, size=512, mpp=MPP) for k, c in enumerate(CLASSES)]
    rgb = np.concatenate([np.concatenate(q[:2], axis=1), np.concatenate(q[2:], axis=1)], axis=0)
    p = tmp_path_factory.mktemp("slide") / "synthetic_cms_quadrants.tif"
    write_pyramid_tiff(p, rgb, mpp=MPP)
    return p


def _analyse(viewer, bundle_path, subtype_dir, max_tiles):
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lnm", "Analyse slide")
    w.model_edit.setText(str(bundle_path))
    w.subtype_edit.setText(str(subtype_dir) if subtype_dir else "")
    w.tile_combo.setCurrentText("256")
    w.mag_combo.setCurrentText("20x")
    w.max_tiles.setValue(max_tiles)
    w.roi_combo.setCurrentText("auto tissue")
    return w


def _run(qtbot, w):
    assert w.run()
    qtbot.waitUntil(lambda: not w.runner.running and w.run_btn.isEnabled(), timeout=120_000)
    assert w.last_status == "done", w.status.text()


def _rgba(hex_colour):
    from matplotlib.colors import to_rgba

    return np.array(to_rgba(hex_colour))


@pytest.mark.gui
@pytest.mark.timeout(300)
def test_analyse_shows_subtype_counts_and_overlay(make_napari_viewer, qtbot, slide_path, routed_bundle,
                                                 subtype_model_dir):
    _gui()
    from napari_lnm._widgets._common import get_result
    from napari_lnm._widgets.analyse import SUBTYPE_HELP, SUBTYPE_LAYER, _subtype_hover

    bundle_path, bundle = routed_bundle
    assert set(bundle.subtype_models) == {"CMS2", "CMS4"}
    viewer = make_napari_viewer()
    viewer.open(str(slide_path), plugin="napari-lnm")
    w = _analyse(viewer, bundle_path, subtype_model_dir, max_tiles=4)
    _run(qtbot, w)
    pred = get_result(viewer).prediction
    sub = pred.subtype
    name = sub["subtype"]
    assert name == "CMS2" and sum(sub["counts"].values()) == len(pred.tiles) == 4

    # headline and the model used, with the reason from the bundle's routing
    assert w.subtype_label.isVisibleTo(w) and w.subtype_label.text().startswith(f"subtype: {subtype_title(name)}")
    assert w.subtype_legend.isVisibleTo(w)  # the overlay checkbox and the CMS colour legend
    assert f"({sub['counts'][name]} of 4 tiles)" in w.subtype_label.text()
    assert sub["model_used"] == "CMS2" and sub["routing"] == bundle.subtype_routing["CMS2"] == "own model (8 slides)"
    assert w.subtype_model_label.text() == "LNM model: per-subtype CMS2 model (trained on 8 slides)"
    assert "[CMS2]" in w.info_label.text()
    # the routed model gave the probability: the CMS2 model's, not the pooled one's
    table = get_result(viewer).prediction.tiles
    assert pred.probability == pytest.approx(float(bundle.subtype_models["CMS2"].predict_proba(table)[0]))
    assert pred.probability != pytest.approx(float(bundle.predict_proba(table)[0]))

    # counts chart: one bar per class with the vote's counts, the winner outlined
    ax = w.subtype_chart.figure.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == [sub["counts"][c] for c in CLASSES]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)
    np.testing.assert_allclose([p.get_facecolor() for p in ax.patches], [_rgba(SUBTYPE_COLOURS[c]) for c in CLASSES])
    assert w.subtype_chart.isVisibleTo(w.subtype_chart.parentWidget())

    # overlay: one rectangle per tile, coloured by its class, aligned with the slide in level-0 geometry
    layer = viewer.layers[SUBTYPE_LAYER]
    assert layer.metadata.get("napari_lnm_result") and layer.visible and w.overlay_box.isChecked()
    assert len(layer.data) == len(pred.tiles) == 4
    f = layer.features
    probs = np.asarray(sub["tiles"]["probs"])
    assert list(f["subtype"]) == [CLASSES[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(f["probability"], probs.max(1), atol=1e-6)
    assert (f["subtype"].value_counts().reindex(list(CLASSES), fill_value=0).tolist()
            == [sub["counts"][c] for c in CLASSES])
    np.testing.assert_allclose(layer.face_color, [_rgba(SUBTYPE_COLOURS[c]) for c in f["subtype"]], atol=1e-6)
    t = pred.tiles
    assert sorted(zip(f["x"], f["y"])) == sorted(zip(t["x"], t["y"]))
    corner = layer.data_to_world(layer.data[0].min(0))
    np.testing.assert_allclose(corner, [(f["y"].iloc[0] - 0.5) * MPP, (f["x"].iloc[0] - 0.5) * MPP])
    # hover: the tile's subtype and probabilities in the layer's help text
    r0 = f.iloc[0]
    centre = ((r0["y"] + r0["size"] / 2) * MPP, (r0["x"] + r0["size"] / 2) * MPP)
    _subtype_hover(layer, SimpleNamespace(position=centre, view_direction=None, dims_displayed=[0, 1]))
    assert layer.help.startswith("tile 0: " + subtype_title(r0["subtype"])) and "CMS1 " in layer.help
    _subtype_hover(layer, SimpleNamespace(position=(-1e6, -1e6), view_direction=None, dims_displayed=[0, 1]))
    assert layer.help == SUBTYPE_HELP
    # drawn above the tile grid, below the key tiles (when this slide has any)
    names = [lyr.name for lyr in viewer.layers]
    assert names.index(SUBTYPE_LAYER) > names.index("tiles")
    assert "key tiles" not in names or names.index("key tiles") > names.index(SUBTYPE_LAYER)

    # the checkbox hides and shows the overlay; the layer's eye updates the checkbox
    w.overlay_box.setChecked(False)
    assert not layer.visible
    w.overlay_box.setChecked(True)
    assert layer.visible
    layer.visible = False
    assert not w.overlay_box.isChecked()

    # run again: the result layers are replaced, not piled up, and the unchecked box keeps the overlay hidden
    n_layers = len(viewer.layers)
    _run(qtbot, w)
    assert len(viewer.layers) == n_layers
    names = [lyr.name for lyr in viewer.layers]
    assert len(names) == len(set(names)) and names.count(SUBTYPE_LAYER) == 1
    assert not viewer.layers[SUBTYPE_LAYER].visible and len(viewer.layers[SUBTYPE_LAYER].data) == 4

    # without a subtype model: overlay removed, label and chart hidden
    w.subtype_edit.setText("")
    _run(qtbot, w)
    assert SUBTYPE_LAYER not in viewer.layers and get_result(viewer).prediction.subtype is None
    assert not w.subtype_label.isVisibleTo(w) and not w.subtype_model_label.isVisibleTo(w)
    assert not w.subtype_legend.isVisibleTo(w)
    assert not w.subtype_chart.isVisibleTo(w.subtype_chart.parentWidget())


@pytest.mark.gui
@pytest.mark.timeout(300)
def test_subtype_overlay_renders_on_the_slide(make_napari_viewer, qtbot, quadrant_slide, routed_bundle,
                                               subtype_model_dir, tmp_path):
    """On a slide with one subtype per quadrant the overlay colours each quadrant's tiles with its class colour.

    Checked on the rendered canvas at every tile centre; also writes the docs screenshot when asked.
    """
    _gui()
    from napari_lnm._widgets._common import get_result

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(str(quadrant_slide), plugin="napari-lnm")
    w = _analyse(viewer, routed_bundle[0], subtype_model_dir, max_tiles=0)
    _run(qtbot, w)
    f = viewer.layers["subtype"].features
    assert len(f) == len(get_result(viewer).prediction.tiles) == 16
    quadrant = [CLASSES[2 * int(y >= 512) + int(x >= 512)] for x, y in zip(f["x"], f["y"])]
    assert np.mean(np.asarray(quadrant) == f["subtype"].to_numpy()) >= 0.75, list(zip(quadrant, f["subtype"]))
    for name in ("H", "E", "nuclei", "voronoi", "delaunay", "tiles", "key tiles"):
        viewer.layers[name].visible = False
    viewer.reset_view()
    qtbot.wait(300)
    with_overlay = np.asarray(viewer.screenshot(canvas_only=True, flash=False), float)[..., :3]
    viewer.layers["subtype"].visible = False
    qtbot.wait(200)
    without = np.asarray(viewer.screenshot(canvas_only=True, flash=False), float)[..., :3]
    viewer.layers["subtype"].visible = True
    # at each tile centre the overlay pulls the slide colour towards the tile's class colour
    h, wd = with_overlay.shape[:2]
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    for r in f.itertuples():
        world = np.array([(r.y + r.size / 2) * MPP, (r.x + r.size / 2) * MPP])
        px = (world - np.asarray(cam.center[-2:])) * cam.zoom + np.array([h, wd]) / 2
        i, j = int(round(px[0])), int(round(px[1]))
        assert 0 <= i < h and 0 <= j < wd
        target = _rgba(SUBTYPE_COLOURS[r.subtype])[:3] * 255
        a, b = with_overlay[i - 2:i + 3, j - 2:j + 3].mean((0, 1)), without[i - 2:i + 3, j - 2:j + 3].mean((0, 1))
        assert np.linalg.norm(a - target) < np.linalg.norm(b - target) - 10, (r.subtype, a, b, target)
    out = Path(os.environ.get("NAPARI_LNM_DOCS_IMAGES") or tmp_path)
    viewer.layers["tiles"].visible = True
    viewer.layers.selection.active = viewer.layers["subtype"]
    qtbot.wait(300)
    png = out / "widget_subtype.png"
    viewer.screenshot(str(png), canvas_only=False, flash=False)
    assert png.stat().st_size > 50_000

"""Single-slide prediction: Prediction JSON round trip, end to end on a tiny synthetic slide with a real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_lnm.explain import KIND_COLOURS
from napari_lnm.pipeline import Prediction, prediction_tiling

# ----------------------------------------------------------------------------------- helpers


def make_tiny_slide(path: Path, label: int = 1, seed: int = 3, px: int = 1024) -> Path:
    """A px x px all-tissue synthetic H&E pyramidal TIFF at 0.5 µm/px (20x): (px/512)² tiles of 512."""
    from napari_lnm.synth import make_synthetic_tile, write_pyramid_tiff

    rgb = make_synthetic_tile(label, subtype="CMS2", seed=seed, size=px)
    write_pyramid_tiff(path, rgb, mpp=0.5, objective=20.0)
    return path


def make_tiny_bundle(seed: int = 0, n_slides: int = 16, fusion: str = "histogram"):
    """A real trained ModelBundle on synthetic per-slide tile tables (features: the package's feature names).

    The tables are drawn around the values real tiles give (no image work, so it is fast); label-1
    slides have larger nuclear areas, so the model has something to learn.
    """
    from napari_lnm.features import feature_names
    from napari_lnm.model import TrainConfig, train_model

    names = [n for n in feature_names() if not n.startswith("cells.")]  # the groups real tiles always define
    rng = np.random.default_rng(seed)
    base = rng.uniform(1.0, 10.0, len(names))
    area = [j for j, n in enumerate(names) if n.startswith("nucleus.") and "area" in n]
    tables, labels = [], []
    for i in range(n_slides):
        y = i % 2
        n_tiles = 12
        vals = base[None, :] * rng.lognormal(0.0, 0.2, (n_tiles, len(names)))
        vals[:, area] *= 1.6 if y else 1.0
        df = pd.DataFrame(vals, columns=names)
        meta = pd.DataFrame({"slide_id": f"s{i}", "x": np.arange(n_tiles) * 512, "y": 0, "size": 512,
                             "tissue_fraction": 1.0})
        tables.append(pd.concat([meta, df], axis=1))
        labels.append(y)
    cfg = TrainConfig(fusion=fusion, bins=5, cv=2, seed=seed, n_bootstrap=100,
                      tiling={"magnification": 20.0, "tile_size": 512, "min_tissue": 0.5})
    return train_model(tables, labels, cfg, feature_names=names)


def _hand_prediction() -> Prediction:
    tiles = pd.DataFrame({"slide_id": "a", "x": [0, 512], "y": [0, 0], "size": [512, 512],
                          "tissue_fraction": [0.9, 0.8], "nucleus.area_mean": [30.0, np.nan]})
    contribs = pd.DataFrame({"element": ["nucleus.area_mean|bin2"], "feature": ["nucleus.area_mean"], "bin": [2],
                             "bin_lo": [-np.inf], "bin_hi": [35.0], "value": [np.float32(0.5)],
                             "contribution": [np.float64(0.25)]})
    top = contribs.assign(rank=1, fscore=np.int64(3), gain=1.5, direction="higher in metastatic",
                          description="nucleus.area_mean, 2nd bin, higher in metastatic",
                          kind="nucleus size", colour=KIND_COLOURS["nucleus size"])
    kt = pd.DataFrame({"rank": [1], "x": [np.int64(0)], "y": [np.int64(0)], "size": [512], "kind": ["nucleus size"],
                       "colour": [KIND_COLOURS["nucleus size"]], "feature": ["nucleus.area_mean"],
                       "element": ["nucleus.area_mean|bin2"], "bin": [2], "value": [30.0], "score": [0.25],
                       "effect": ["raises risk"], "reason": ["nucleus.area_mean = 30.0 µm² in bin 2 (…), higher in metastatic"],
                       "tile_index": [0]})
    return Prediction(probability=np.float32(0.625).item(), slide_id="a", path="/x/a.svs", mpp=0.499,
                      tiling={"magnification": 20.0, "tile_size": 512, "max_tiles": None, "mpp": 0.5},
                      tiles=tiles, contributions=contribs, top_features=top, key_tiles=kt,
                      importance=top[["element", "feature", "fscore", "gain"]], bias=np.float64(-0.1),
                      subtype={"subtype": "CMS2", "counts": {"CMS1": np.int64(1), "CMS2": 3}, "model_used": "pooled"},
                      model={"classifier": "xgboost", "n_trees": np.int64(12)},
                      rois=[np.array([[0, 0], [10, 0], [10, 10]], float)], timings={"total_s": 1.5})


# ----------------------------------------------------------------------------------- pure tests


def test_prediction_json_round_trip(tmp_path):
    pred = _hand_prediction()
    text = pred.to_json()
    d = json.loads(text)  # strict JSON: no NaN/inf, only plain types
    assert d["probability"] == pytest.approx(0.625)
    assert d["contributions"][0]["bin_lo"] is None  # -inf -> null
    assert d["key_tiles"][0]["x"] == 0 and isinstance(d["key_tiles"][0]["x"], int)
    assert d["subtype"]["counts"]["CMS1"] == 1
    assert d["label"] == "metastasis likely"
    back = Prediction.from_json(text)
    assert back.to_json() == text
    assert back.probability == pred.probability
    assert list(back.key_tiles["rank"]) == [1]
    pd.testing.assert_series_equal(back.top_features["contribution"], pred.top_features["contribution"],
                                   check_dtype=False)
    from napari_lnm.prediction import rois_to_json

    assert rois_to_json(back.rois) == rois_to_json(pred.rois)


def test_prediction_save_and_load(tmp_path):
    pred = _hand_prediction()
    rgb = np.full((100, 200, 3), 230, np.uint8)
    paths = pred.save(tmp_path / "out", slide=(rgb, 10.0))
    for key in ("result", "tiles", "importance", "key_tiles", "contributions"):
        assert paths[key].is_file(), key
    assert paths["importance"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = Prediction.load(tmp_path / "out")
    assert back.to_json() == pred.to_json()
    assert len(back.tiles) == 2 and np.isnan(back.tiles["nucleus.area_mean"].iloc[1])
    assert not list((tmp_path / "out").glob(".*part"))  # atomic writes left no temporaries


def test_load_missing_result_is_user_error(tmp_path):
    from napari_lnm.errors import UserError

    with pytest.raises(UserError, match="no result"):
        Prediction.load(tmp_path)
    (tmp_path / "result.json").write_text("{oops")
    with pytest.raises(UserError, match="not a valid result"):
        Prediction.load(tmp_path)


def test_prediction_tiling_from_bundle_config():
    class B:
        config = {"tiling": {"magnification": 10.0, "tile_size": 256, "min_tissue": 0.3, "max_tiles": 8, "seed": 4}}

    c = prediction_tiling(B())
    assert (c.magnification, c.tile_size, c.min_tissue) == (10.0, 256, 0.3)
    assert c.max_tiles is None  # training caps do not carry over to prediction
    c = prediction_tiling(B(), max_tiles=5, seed=1, min_tissue=None)
    assert c.max_tiles == 5 and c.seed == 1 and c.min_tissue == 0.3
    c = prediction_tiling(None)
    assert c.magnification == 20.0 and c.tile_size == 512


# ----------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_slide(tmp_path_factory) -> Path:
    return make_tiny_slide(tmp_path_factory.mktemp("slide") / "tiny.tif")


@pytest.fixture(scope="module")
def tiny_bundle():
    return make_tiny_bundle()


def test_predict_slide_end_to_end(tiny_slide, tiny_bundle, tmp_path):
    from napari_lnm.pipeline import predict_slide

    calls = []
    pred = predict_slide(tiny_slide, tiny_bundle, keep_images=True, top_k=5, n_key_tiles=3,
                         progress=lambda d, t, m: calls.append((d, t)))
    assert 0.0 <= pred.probability <= 1.0
    assert pred.n_tiles == 4 and pred.slide_id == "tiny"
    assert pred.mpp == pytest.approx(0.5)
    assert pred.tiling["magnification"] == 20.0 and pred.tiling["mpp"] == pytest.approx(0.5)
    # every tile analysed, progress reported per tile
    assert [c for c in calls if c[1] == 4] == [(i, 4) for i in range(1, 5)] + [(4, 4)]
    assert set(tiny_bundle.feature_names) <= set(pred.tiles.columns)
    assert pred.tiles[tiny_bundle.feature_names].notna().any().any()
    # contributions cover the selected elements and add up to the logit
    assert set(pred.contributions["element"]) == set(tiny_bundle.selection.names)
    logit = np.log(pred.probability / (1 - pred.probability))
    assert pred.contributions["contribution"].sum() + pred.bias == pytest.approx(logit, abs=1e-3)
    top = pred.top_features
    n_nonzero = int((pred.contributions["contribution"] != 0).sum())
    assert len(top) == min(5, n_nonzero) and (top["contribution"] != 0).all()
    assert list(top["rank"]) == list(range(1, len(top) + 1))
    assert (top["contribution"].abs().diff().dropna() <= 1e-12).all()
    assert set(top["kind"]) <= set(KIND_COLOURS) and top["gain"].notna().all()
    assert all("% of this slide's tiles" in e and "log-odds" in e for e in top["explanation"])
    # key tiles are analysed tiles, ranked, with a kind, colour and reason
    kt = pred.key_tiles
    assert 1 <= len(kt) <= 3
    coords = set(zip(pred.tiles["x"], pred.tiles["y"]))
    assert all((x, y) in coords for x, y in zip(kt["x"], kt["y"]))
    assert list(kt["rank"]) == list(range(1, len(kt) + 1))
    assert all(KIND_COLOURS[k] == c for k, c in zip(kt["kind"], kt["colour"]))
    assert all(f in r for f, r in zip(kt["feature"], kt["reason"]))
    # images kept for the napari widget, one per tile
    assert len(pred.analyses) == 4
    a = pred.analyses[0]
    assert a.h.shape == (512, 512) and a.labels.shape == (512, 512) and a.labels.dtype == np.int32
    # deterministic
    again = predict_slide(tiny_slide, tiny_bundle, top_k=5, n_key_tiles=3)
    assert again.probability == pred.probability
    pd.testing.assert_frame_equal(again.key_tiles, pred.key_tiles)
    assert again.analyses is None
    # JSON of a real prediction is strict JSON and round-trips
    assert Prediction.from_json(pred.to_json()).to_json() == pred.to_json()
    paths = pred.save(tmp_path / "p")
    assert paths["key_tiles"].stat().st_size > 1000


def test_predict_slide_cancel(tiny_slide, tiny_bundle):
    from napari_lnm.pipeline import predict_slide
    from napari_lnm.progress import Cancelled

    seen = []

    def stop():
        return len(seen) >= 2

    with pytest.raises(Cancelled):
        predict_slide(tiny_slide, tiny_bundle, progress=lambda d, t, m: seen.append(d) if t == 4 else None,
                      should_stop=stop)
    assert len(seen) == 2  # stopped before the third tile


def test_predict_slide_max_tiles_and_roi(tiny_slide, tiny_bundle):
    from napari_lnm.pipeline import predict_slide

    pred = predict_slide(tiny_slide, tiny_bundle, config=prediction_tiling(tiny_bundle, max_tiles=2, seed=1))
    assert pred.n_tiles == 2
    roi = [np.array([[0, 0], [520, 0], [520, 520], [0, 520]], float)]
    pred = predict_slide(tiny_slide, tiny_bundle, rois=roi)
    assert pred.n_tiles == 1 and (pred.tiles["x"].iloc[0], pred.tiles["y"].iloc[0]) == (0, 0)
    assert pred.rois is not None


def test_predict_slide_errors(tiny_slide, tiny_bundle, tmp_path):
    from napari_lnm.errors import ModelError, SlideError, UserError
    from napari_lnm.pipeline import predict_slide

    # ROI outside the slide: a one-line error naming the file and the slide's extent
    roi = [np.array([[5000, 5000], [6000, 5000], [6000, 6000]], float)]
    with pytest.raises(UserError, match="tiny.tif.*outside the slide.*x 0..1024"):
        predict_slide(tiny_slide, tiny_bundle, rois=roi)
    # inside the slide but without tissue -> no tiles: a one-line SlideError naming the file
    roi = [np.array([[0, 0], [40, 0], [40, 40]], float)]
    with pytest.raises(SlideError, match="tiny.tif.*no tiles"):
        predict_slide(tiny_slide, tiny_bundle, rois=roi)
    # a model that needs a feature this version does not compute
    bundle = make_tiny_bundle()
    bundle.feature_names = bundle.feature_names + ["nucleus.not_a_feature"]
    with pytest.raises(ModelError, match="not_a_feature"):
        predict_slide(tiny_slide, bundle)
    # not a slide
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    with pytest.raises(UserError, match="bad.svs"):
        predict_slide(bad, tiny_bundle)


def test_predict_slide_mean_fusion_key_tiles(tiny_slide):
    from napari_lnm.pipeline import predict_slide

    bundle = make_tiny_bundle(fusion="mean")
    pred = predict_slide(tiny_slide, bundle, n_key_tiles=2)
    assert 0.0 <= pred.probability <= 1.0
    assert (pred.contributions["bin"] == 0).all()
    assert all("on this slide" in e for e in pred.top_features["explanation"])
    assert len(pred.key_tiles) <= 2
    if len(pred.key_tiles):
        assert all(("highest" in r or "lowest" in r) for r in pred.key_tiles["reason"])


def test_predict_slide_subtype_routing(tiny_slide, tiny_bundle):
    torch = pytest.importorskip("torch")  # noqa: F841
    from napari_lnm.pipeline import predict_slide
    from napari_lnm.subtype import SUBTYPES, SubtypeModel

    routed = make_tiny_bundle(seed=5)
    tiny_bundle.subtype_models = {s: routed for s in SUBTYPES}
    try:
        sm = SubtypeModel.new(arch="small", tile_size=512, seed=0, device="cpu")
        pred = predict_slide(tiny_slide, tiny_bundle, subtype_model=sm)
    finally:
        tiny_bundle.subtype_models = {}
    st = pred.subtype
    assert st["subtype"] in SUBTYPES and sum(st["counts"].values()) == 4
    assert st["model_used"] == st["subtype"]
    assert pred.model["subtype_model_used"] == st["subtype"]
    # the routed model made the prediction
    assert set(pred.contributions["element"]) == set(routed.selection.names)
    assert pred.probability == pytest.approx(predict_slide(tiny_slide, routed).probability)
    assert json.loads(pred.to_json())["subtype"]["subtype"] == st["subtype"]

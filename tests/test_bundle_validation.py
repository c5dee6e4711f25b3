"""Hand-damaged model bundles: every damage is a one-line ModelError naming the file and the field, at load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from napari_lnm.errors import ModelError
from napari_lnm.model import ModelBundle, TrainConfig, train_model


def _tables(n=12, n_feat=4, seed=0):
    """Tiny slides whose first feature is larger in metastatic ones."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    tabs = []
    for i in range(n):
        d = {"slide_id": f"s{i:02d}", "x": np.arange(20) * 512, "y": 0, "size": 512, "tissue_fraction": 1.0}
        for t in range(n_feat):
            d[f"nucleus.f{t}_mean"] = rng.lognormal(0.0, 0.5, 20) * (1.5 if t == 0 and y[i] else 1.0)
        tabs.append(pd.DataFrame(d))
    return tabs, y


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved logistic-regression bundle with a clinical column and one subtype model, and its tables."""
    tabs, y = _tables()
    clin = pd.DataFrame({"CEA": np.linspace(0, 1, len(y)), "T": ["T2", "T3"] * (len(y) // 2)})
    cfg = TrainConfig(classifier="logreg", clinical=("CEA", "T"), per_subtype=True, min_subtype_slides=6,
                      tiling={"magnification": 20.0, "tile_size": 512, "overlap": 0.0, "min_tissue": 0.5,
                              "segmentation": "threshold"})
    b = train_model(tabs, y, cfg, clinical=clin, subtypes=["A"] * 6 + ["B"] * 6)
    d = b.save(tmp_path_factory.mktemp("bundle") / "m")
    return d, b, tabs, clin


def _copy(saved, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(saved[0], d)
    return d, json.loads((d / "bundle.json").read_text())


def _set(*keys_and_value):
    """A damage that sets meta[k1][k2]... = value."""
    *keys, value = keys_and_value

    def damage(d, m):
        for k in keys[:-1]:
            m = m[k]
        m[keys[-1]] = value
    return damage


def _pop(*keys):
    """A damage that removes meta[k1][k2]... (the last item of a list when the last key is -1)."""
    def damage(d, m):
        for k in keys[:-1]:
            m = m[k]
        m.pop(keys[-1])
    return damage


def _reverse(*keys):
    """A damage that reverses the list meta[k1][k2]..."""
    def damage(d, m):
        for k in keys:
            m = m[k]
        m.reverse()
    return damage


def _outside(d, m):
    shutil.copy(d / "params.npz", d.parent / "params.npz")
    m["classifier"]["file"] = "../params.npz"


def _absolute(d, m):
    m["classifier"]["file"] = str((d / "params.npz").resolve())


def _as_list(d, m):
    return [m]


DAMAGES = {  # name: (damage(folder, meta) editing meta, or returning what to write instead; words of the message)
    "list": (_as_list, "JSON object"),
    "missing key": (_pop("selection"), "field 'selection' is missing"),
    "missing nested key": (_pop("fusion", "edges_"), "field 'fusion.edges_' is missing"),
    "out-of-range index": (_set("selection", "indices", -1, 10_000),
                           "field 'selection.indices' has index 10000, out of range"),
    "negative index": (_set("selection", "indices", 0, -1), "field 'selection.indices[0]' is -1"),
    "wrong shape": (_pop("fusion", "edges_", -1), "field 'fusion.edges_' has shape"),
    "ragged rows": (_pop("fusion", "edges_", 0, -1), "field 'fusion.edges_'"),
    "NaN edges": (_set("fusion", "edges_", 0, 2, float("nan")), "field 'fusion.edges_' has NaN"),
    "unsorted edges": (_reverse("fusion", "edges_", 0), "increasing order"),
    "bins inconsistent": (_set("fusion", "bins", 4), "field 'fusion.edges_' has shape"),
    "feature names a string": (_set("feature_names", "nucleus.f0_mean"), "field 'feature_names' must be a list"),
    "fusion of other features": (_reverse("fusion", "feature_names"), "fusion.feature_names"),
    "selection names": (_reverse("selection", "names"), "selection.names"),
    "pvalues length": (_pop("selection", "pvalues", -1), "selection.pvalues"),
    "clinical sd": (_set("clinical", "numeric", "CEA", 1, 0.0), "clinical.numeric.CEA[1]"),
    "clinical list": (_set("clinical", ["CEA"]), "field 'clinical' must be an object"),
    "importance rows": (_pop("importance", -1), "field 'importance' has"),
    "classifier kind": (_set("classifier", "kind", "forest"), "classifier.kind"),
    "path outside": (_outside, "outside the bundle folder"),
    "absolute path": (_absolute, "outside the bundle folder"),
    "subtype path outside": (_set("subtype_models", "A", "../../elsewhere"),
                             "field 'subtype_models.A' names '../../elsewhere', outside"),
    "bad tiling": (_set("config", "tiling", "segmentation", "magic"), "config.tiling"),
    "config a list": (_set("config", []), "field 'config' must be an object"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_bundle_json(saved, tmp_path, damage):
    d, meta = _copy(saved, tmp_path)
    fn, words = DAMAGES[damage]
    out = fn(d, meta)
    (d / "bundle.json").write_text(json.dumps(meta if out is None else out))
    with pytest.raises(ModelError) as exc:  # any other exception type fails the test
        ModelBundle.load(d)
    msg = str(exc.value)
    assert "\n" not in msg and str(d / "bundle.json") in msg, msg
    assert words in msg, msg


def _npz(d, **change):
    with np.load(d / "params.npz", allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    a.update(change)
    np.savez(d / "params.npz", **a)
    return a


@pytest.mark.parametrize("array,value,words", [
    ("coef", lambda a: a["coef"][:-1], "field 'coef' has shape"),
    ("impute", lambda a: np.append(a["impute"], 0.0), "field 'impute' is"),
    ("scale", lambda a: np.full_like(a["scale"], np.nan), "field 'scale' has NaN"),
    ("intercept", lambda a: np.array(["x"]), "field 'intercept' has dtype"),
])
def test_damaged_classifier_arrays(saved, tmp_path, array, value, words):
    d, _ = _copy(saved, tmp_path)
    with np.load(d / "params.npz", allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    _npz(d, **{array: value(a)})
    with pytest.raises(ModelError) as exc:
        ModelBundle.load(d)
    msg = str(exc.value)
    assert "\n" not in msg and str(d / "params.npz") in msg and words in msg, msg


def test_unreadable_npz(saved, tmp_path):
    d, _ = _copy(saved, tmp_path)
    (d / "params.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="params.npz: not a readable .npz"):
        ModelBundle.load(d)


def test_damaged_xgboost_bundle(tmp_path):
    tabs, y = _tables()
    d = train_model(tabs, y, TrainConfig(classifier="xgboost")).save(tmp_path / "x")
    meta = json.loads((d / "bundle.json").read_text())
    meta["classifier"]["n_columns"] += 1
    (d / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="field 'classifier.n_columns' is .* columns, but the selection"):
        ModelBundle.load(d)
    meta["classifier"]["n_columns"] -= 1
    (d / "bundle.json").write_text(json.dumps(meta))
    (d / "model.ubj").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError) as exc:
        ModelBundle.load(d)
    assert "\n" not in str(exc.value) and "model.ubj" in str(exc.value)


def test_damaged_subtype_bundle_names_its_file(saved, tmp_path):
    d, _ = _copy(saved, tmp_path)
    sub = d / "subtypes" / "A" / "bundle.json"
    meta = json.loads(sub.read_text())
    meta["selection"]["indices"][0] = -1
    sub.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="selection.indices") as exc:
        ModelBundle.load(d)
    assert str(sub) in str(exc.value)


@pytest.mark.parametrize("fusion,extra", [("histogram", {"edges": "uniform"}), ("mean", {}), ("max", {}),
                                          ("pnorm", {}), ("quantile", {}), ("kmeans", {})])
def test_valid_bundles_load_with_identical_predictions(tmp_path, fusion, extra):
    tabs, y = _tables()
    b = train_model(tabs, y, TrainConfig(classifier="logreg", fusion=fusion, **extra))
    b2 = ModelBundle.load(b.save(tmp_path / "m"))
    np.testing.assert_array_equal(b2.predict_proba(tabs), b.predict_proba(tabs))


def test_saved_bundle_round_trip_is_exact(saved):
    d, b, tabs, clin = saved
    b2 = ModelBundle.load(d)
    np.testing.assert_array_equal(b2.predict_proba(tabs, clin), b.predict_proba(tabs, clin))
    assert set(b2.subtype_models) == set(b.subtype_models)


# ---------------------------------------------------------------- the subtype CNN: config.json + weights.npz
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def subtype_dir(tmp_path_factory):
    from napari_lnm.subtype.model import SubtypeModel

    return SubtypeModel.new("small", seed=0, device="cpu").save(tmp_path_factory.mktemp("cnn") / "s")


@pytest.mark.parametrize("damage,words", [
    (lambda c: [c], "not a JSON object"),
    (lambda c: c.pop("classes") and None, "field 'classes' is missing"),
    (lambda c: c.__setitem__("input_size", "large"), "field 'input_size' must be an integer"),
    (lambda c: c.__setitem__("arch", "vit"), "field 'arch'"),
    (lambda c: c["normalisation"]["std"].__setitem__(0, 0.0), "normalisation.std[0]"),
    (lambda c: c.__setitem__("format_version", "one"), "field 'format_version'"),
    (lambda c: c.__setitem__("classes", []), "field 'classes' is empty"),
])
def test_damaged_subtype_config(subtype_dir, tmp_path, damage, words):
    from napari_lnm.subtype.model import SubtypeModel

    d = tmp_path / "s"
    shutil.copytree(subtype_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    out = damage(cfg)
    (d / "config.json").write_text(json.dumps(cfg if out is None else out))
    with pytest.raises(ModelError) as exc:
        SubtypeModel.load(d, device="cpu")
    msg = str(exc.value)
    assert "\n" not in msg and str(d / "config.json") in msg and words in msg, msg


def test_subtype_nan_weights(subtype_dir, tmp_path):
    from napari_lnm.subtype.model import SubtypeModel

    d = tmp_path / "s"
    shutil.copytree(subtype_dir, d)
    with np.load(d / "weights.npz", allow_pickle=False) as z:
        a = {k: np.array(z[k]) for k in z.files}
    k = next(k for k, v in a.items() if v.dtype.kind == "f")
    a[k].flat[0] = np.nan
    np.savez(d / "weights.npz", **a)
    with pytest.raises(ModelError, match=f"weights.npz: tensor {k} .*NaN"):
        SubtypeModel.load(d, device="cpu")
    assert SubtypeModel.load(subtype_dir, device="cpu").classes

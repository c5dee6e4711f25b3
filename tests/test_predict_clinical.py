"""Clinical values at prediction: ``predict_slide(clinical=...)`` and ``napari-lnm predict --clinical CSV``."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from test_pipeline import make_tiny_bundle, make_tiny_slide

from napari_lnm.cli import main
from napari_lnm.errors import UserError
from napari_lnm.model import ClinicalWarning, ModelBundle, TrainConfig, train_model
from napari_lnm.pipeline import predict_slide
from napari_lnm.tiling import TilingConfig

ONE_TILE = TilingConfig(magnification=20.0, tile_size=512, max_tiles=1, seed=0)


def make_clinical_bundle(classifier: str = "logreg"):
    """A real bundle trained on synthetic tile tables plus clinical columns age (numeric) and stage (I-III)."""
    from napari_lnm.features import feature_names

    names = feature_names()
    rng = np.random.default_rng(1)
    base = rng.uniform(1.0, 10.0, len(names))
    tables, labels, clin = [], [], []
    for i in range(20):
        y = i % 2
        vals = base[None, :] * rng.lognormal(0.0, 0.2, (8, len(names)))
        meta = pd.DataFrame({"slide_id": f"s{i}", "x": np.arange(8) * 512, "y": 0, "size": 512,
                             "tissue_fraction": 1.0})
        tables.append(pd.concat([meta, pd.DataFrame(vals, columns=names)], axis=1))
        labels.append(y)
        clin.append({"age": 50 + 15 * y + rng.normal(0, 4), "stage": ["I", "II", "III"][(i // 2) % 2 + y]})
    cfg = TrainConfig(classifier=classifier, cv=2, seed=0, n_bootstrap=50, clinical=("age", "stage"),
                      tiling={"magnification": 20.0, "tile_size": 512, "min_tissue": 0.5})
    return train_model(tables, labels, cfg, clinical=pd.DataFrame(clin), feature_names=names)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict_clinical")
    bundle = make_clinical_bundle()
    model = bundle.save(d / "model")
    a = make_tiny_slide(d / "slide_a.tif", label=1, seed=3)
    b = make_tiny_slide(d / "slide_b.tif", label=0, seed=4, px=512)
    return d, bundle, model, a, b


def test_encoder_check_rules(assets):
    _, bundle, *_ = assets
    enc = bundle.clinical
    assert enc.numeric.keys() == {"age"} and enc.categories == {"stage": ["I", "II", "III"]}
    assert enc.check(pd.DataFrame({"age": ["61"], "stage": ["II"], "extra": [1]}), "c.csv", ["x"]) == []
    with pytest.raises(UserError, match=r"^c\.csv: clinical column\(s\) stage missing"):
        enc.check(pd.DataFrame({"age": [61]}), "c.csv", ["x"])
    with pytest.raises(UserError, match=r"^c\.csv: slide 'x' has no value for clinical column 'age'"):
        enc.check(pd.DataFrame({"age": [np.nan], "stage": ["I"]}), "c.csv", ["x"])
    with pytest.raises(UserError, match="'age' needs a number, got 'old'"):
        enc.check(pd.DataFrame({"age": ["old"], "stage": ["I"]}), "c.csv", ["x"])
    w = enc.check(pd.DataFrame({"age": [61], "stage": ["IV"]}), "c.csv", ["x"])
    assert len(w) == 1 and "stage='IV' was not seen in training" in w[0]


def test_predict_slide_uses_clinical_values(assets):
    _, bundle, _, a, _ = assets
    old = {"age": 75.0, "stage": "III"}
    p_old = predict_slide(a, bundle, config=ONE_TILE, clinical=old)
    p_young = predict_slide(a, bundle, config=ONE_TILE, clinical=pd.DataFrame([{"age": 40, "stage": "I"}]))
    p_none = predict_slide(a, bundle, config=ONE_TILE)
    assert p_old.probability > p_none.probability > p_young.probability  # clinical values are used
    assert p_old.probability == pytest.approx(bundle.predict_proba(p_old.tiles, old)[0], abs=1e-12)
    assert p_old.model["clinical"] == old and "clinical" not in p_none.model
    json.dumps(p_old.to_json())  # the recorded values stay JSON-able
    c = p_old.contributions.set_index("element")
    assert c.loc["clinical.age", "contribution"] > 0 and c.loc["clinical.stage=III", "contribution"] > 0


def test_predict_slide_clinical_errors_and_unknown_category(assets, monkeypatch):
    _, bundle, _, a, _ = assets
    from napari_lnm import tiling

    def no_tiles(*args, **kwargs):  # bad clinical values are refused before any tile is analysed
        raise AssertionError("tiling started")

    with monkeypatch.context() as m:
        m.setattr(tiling, "tile_slide", no_tiles)
        with pytest.raises(UserError, match="clinical values of slide slide_a: clinical column\\(s\\) stage missing"):
            predict_slide(a, bundle, config=ONE_TILE, clinical={"age": 50})
        with pytest.raises(UserError, match="slide 'slide_a' has no value for clinical column 'age'"):
            predict_slide(a, bundle, config=ONE_TILE, clinical={"age": None, "stage": "I"})
        with pytest.raises(UserError, match="expected one row, got 2"):
            predict_slide(a, bundle, config=ONE_TILE, clinical=pd.DataFrame({"age": [1, 2], "stage": ["I", "I"]}))
    with pytest.warns(ClinicalWarning, match="stage='IV' was not seen in training"):
        p = predict_slide(a, bundle, config=ONE_TILE, clinical={"age": 60, "stage": "IV"})
    zero = bundle.predict_proba(p.tiles, pd.DataFrame({"age": [60.0], "stage": [np.nan]}))[0]  # all-zero one-hot
    assert p.probability == pytest.approx(zero, abs=1e-12)


def test_bundle_without_clinical_columns_ignores_values(tmp_path):
    bundle = make_tiny_bundle()
    a = make_tiny_slide(tmp_path / "a.tif", px=512)
    ref = predict_slide(a, bundle, config=ONE_TILE).probability
    with pytest.warns(ClinicalWarning, match="uses no clinical columns"):
        p = predict_slide(a, bundle, config=ONE_TILE, clinical={"age": 3})
    assert p.probability == ref


def test_cli_predict_clinical_single_and_batch(assets, tmp_path, capsys):
    _, bundle, model, a, b = assets
    csv = tmp_path / "clin.csv"
    csv.write_text("slide_id, age ,stage,comment\nslide_a,75,III,x\nslide_b, 40 , I ,y\nother,1,I,\n")
    out = tmp_path / "one"
    assert main(["predict", str(a), "--model", str(model), "--out", str(out), "--clinical", str(csv),
                 "--max-tiles", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "treats them as missing" not in err
    r = json.loads((out / "result.json").read_text())
    assert r["model"]["clinical"] == {"age": 75.0, "stage": "III"}
    p_py = predict_slide(a, bundle, config=ONE_TILE, clinical={"age": 75, "stage": "III"}).probability
    assert r["probability"] == pytest.approx(p_py, abs=1e-6)
    # batch with a cohort CSV; a changed clinical value makes resume redo that slide only
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(f"slide_id,path\nslide_a,{a}\nslide_b,{b}\n")
    args = ["predict", "--cohort", str(cohort), "--model", str(model), "--out", str(tmp_path / "batch"),
            "--clinical", str(csv), "--max-tiles", "1", "--quiet"]
    assert main(args) == 0
    s = pd.read_csv(tmp_path / "batch" / "summary.csv").set_index("slide_id")
    assert s.loc["slide_a", "probability"] == pytest.approx(r["probability"], abs=1e-6)
    capsys.readouterr()
    csv.write_text("slide_id,age,stage\nslide_a,75,III\nslide_b,41,I\n")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "slide_a: already done" in printed and "slide_b: earlier result used another model" in printed


def test_cli_predict_clinical_errors(assets, tmp_path, capsys):
    _, _, model, a, b = assets
    base = ["predict", str(a), str(b), "--model", str(model), "--out", str(tmp_path / "o"), "--max-tiles", "1",
            "--quiet"]
    cases = [("slide_id,age\nslide_a,70\nslide_b,60\n", "clinical column(s) stage missing"),
             ("slide_id,age,stage\nslide_a,70,I\n", "no row for slide 'slide_b'"),
             ("slide_id,age,stage\nslide_a,,I\nslide_b,60,I\n", "slide 'slide_a' has no value for clinical column 'age'"),
             ("age,stage\n70,I\n", "lacks a slide_id column")]
    for k, (text, msg) in enumerate(cases):
        csv = tmp_path / f"bad{k}.csv"
        csv.write_text(text)
        assert main(base + ["--clinical", str(csv)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"napari-lnm predict: error: {csv}: ") and msg in err[0], err
    assert not (tmp_path / "o").exists()  # nothing was predicted
    assert main(base + ["--clinical", str(tmp_path / "nope.csv")]) == 1
    assert "nope.csv: clinical CSV not found" in capsys.readouterr().err
    # unknown category: predicted, with a warning naming the file
    csv = tmp_path / "unknown.csv"
    csv.write_text("slide_id,age,stage\nslide_a,70,IV\n")
    assert main(["predict", str(a), "--model", str(model), "--out", str(tmp_path / "u"), "--clinical", str(csv),
                 "--max-tiles", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {csv}: slide 'slide_a': stage='IV' was not seen in training" in err


def test_cli_predict_without_clinical_keeps_warning(assets, tmp_path, capsys):
    _, _, model, a, _ = assets
    assert main(["predict", str(a), "--model", str(model), "--out", str(tmp_path / "o"), "--max-tiles", "1",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "was trained with clinical columns (age, stage) but no --clinical CSV was given" in err


def test_demo_model_prediction_unchanged():
    """The shipped demo bundle (no clinical columns) loads and predicts as the plain bundle call does."""
    from pathlib import Path

    import napari_lnm

    d = Path(napari_lnm.__file__).parent / "data" / "demo_model"
    b = ModelBundle.load(d)
    assert b.clinical is None
    rng = np.random.default_rng(0)
    t = pd.DataFrame(rng.uniform(1, 10, (6, len(b.feature_names))), columns=b.feature_names)
    t.insert(0, "slide_id", "t")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClinicalWarning)
        assert b.predict_proba(t)[0] == b.predict_proba(t, None)[0]

"""End to end through the command line: synth -> extract (+ resume) -> train -> evaluate -> predict.

One tiny synthetic cohort (8 slides of 512x512 px at 0.5 µm/px, 4 tiles of 256 px
each) keeps the whole chain to well under a minute on a 2-core machine, and every
step is checked against the files the next step really reads.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from napari_lnm.cli import main

TILE = ["--tile-size", "256", "--max-tiles", "4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The whole chain, run once; returns the work folder and the captured stdout of each step."""
    root = tmp_path_factory.mktemp("e2e")
    out: dict[str, str] = {}

    def cli(name, *argv):
        import contextlib
        import io

        buf, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in argv])
        out[name] = buf.getvalue()
        last_err = (err.getvalue().replace("\r", "\n").strip().splitlines() or [""])[-1]
        assert rc == 0, f"napari-lnm {argv[0]} exited {rc}:\n{out[name]}\n{last_err}"

    cohort = root / "cohort"
    cli("synth", "synth", cohort, "--n-slides", 8, "--size", "512x512", "--seed", 3)
    cli("extract", "extract", "--cohort", cohort / "cohort.csv", "--out", root / "features", *TILE)
    first = {p.name: p.stat().st_mtime_ns for p in (root / "features").glob("*.parquet")}
    cli("extract_again", "extract", "--cohort", cohort / "cohort.csv", "--out", root / "features", *TILE)
    out["mtimes"] = json.dumps([first, {p.name: p.stat().st_mtime_ns for p in (root / "features").glob("*.parquet")}])
    cli("train", "train", root / "features", "--cohort", cohort / "cohort.csv", "--out", root / "model",
        "--cv", 2, "--bootstrap", 50)
    cli("evaluate", "evaluate", root / "model", root / "features", "--cohort", cohort / "cohort.csv",
        "--out", root / "evaluation", "--bootstrap", 50)
    cli("predict", "predict", cohort / "slides" / "synth_0001.tif", "--model", root / "model",
        "--out", root / "prediction", "--quiet", "--key-tiles", 3)
    return root, out


def test_synth_writes_a_valid_cohort(run):
    root, _ = run
    df = pd.read_csv(root / "cohort" / "cohort.csv")
    assert list(df.columns[:3]) == ["slide_id", "path", "label"]
    assert len(df) == 8 and set(df["label"]) == {0, 1}
    assert all((root / "cohort" / p).is_file() for p in df["path"])


def test_extract_writes_one_parquet_per_slide_with_provenance_and_resumes(run):
    from napari_lnm.features import feature_names

    root, out = run
    files = sorted((root / "features").glob("*.parquet"))
    assert [f.stem for f in files] == [f"synth_{i:04d}" for i in range(8)]
    t = pq.read_table(files[0])
    assert t.column_names == ["slide_id", "x", "y", "size", "tissue_fraction"] + feature_names()
    df = t.to_pandas()
    assert 1 <= len(df) <= 4 and (df["size"] == 256).all()  # 256 px at 20x on a 0.5 µm/px slide
    assert np.isfinite(df["nucleus.area_mean"]).all() and (df["nucleus.area_mean"] > 0).all()
    prov = json.loads(t.schema.metadata[b"napari_lnm"])
    assert prov["tiling"]["tile_size"] == 256 and prov["tiling"]["max_tiles"] == 4
    assert prov["slide_mpp"] == pytest.approx(0.5) and prov["n_tiles"] == len(df)
    before, after = json.loads(out["mtimes"])
    assert before == after, "a second extract run must skip the finished slides"
    assert "8 slides in" in out["extract_again"]
    assert not [p for p in (root / "features").iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_train_writes_a_pickle_free_bundle_with_a_cv_report(run):
    from napari_lnm.model import ModelBundle

    root, out = run
    assert "CV ROC-AUC" in out["train"] and "95% CI" in out["train"]
    model = root / "model"
    names = {p.name for p in model.iterdir()}
    assert {"bundle.json", "cv_report.json", "oof.csv", "roc.png"} <= names
    assert names & {"model.ubj", "params.npz"}  # XGBoost trees or the numpy classifiers' arrays (chosen recipe)
    assert {p.suffix for p in model.rglob("*") if p.is_file()} <= {".json", ".ubj", ".csv", ".png", ".npz"}
    meta = json.loads((model / "bundle.json").read_text())
    assert meta["config"]["tiling"]["tile_size"] == 256 and meta["config"]["cv"] == 2
    cv = json.loads((model / "cv_report.json").read_text())
    assert len(cv["oof"]) == 8 and 0.0 <= cv["auc"] <= 1.0 and cv["ci"][0] <= cv["auc"] <= cv["ci"][1]
    oof = pd.read_csv(model / "oof.csv")
    assert set(oof["fold"]) == {0, 1} and oof["probability"].between(0, 1).all()
    bundle = ModelBundle.load(model)
    assert len(bundle.input_names) >= 1


def test_evaluate_matches_the_bundle_on_the_same_features(run):
    from napari_lnm.model import ModelBundle

    root, out = run
    res = pd.read_csv(root / "evaluation" / "probabilities.csv")
    assert list(res.columns) == ["slide_id", "label", "probability", "model"] and len(res) == 8
    bundle = ModelBundle.load(root / "model")
    tables = [pd.read_parquet(root / "features" / f"{s}.parquet") for s in res["slide_id"]]
    np.testing.assert_allclose(res["probability"], bundle.predict_proba(tables), rtol=1e-5)
    assert (root / "evaluation" / "roc.png").is_file()
    assert "ROC-AUC" in (root / "evaluation" / "summary.txt").read_text()


def test_predict_result_is_consistent_with_model_and_features(run):
    from napari_lnm.model import ModelBundle

    root, out = run
    pred = root / "prediction"
    for f in ("result.json", "tiles.parquet", "importance.png", "key_tiles.png"):
        assert (pred / f).is_file(), f
    res = json.loads((pred / "result.json").read_text())
    assert res["slide_id"] == "synth_0001" and 0.0 <= res["probability"] <= 1.0
    assert f"P(metastasis) = {res['probability']:.3f}" in out["predict"]
    tiles = pd.read_parquet(pred / "tiles.parquet")
    assert res["n_tiles"] == len(tiles) >= 1
    bundle = ModelBundle.load(root / "model")
    assert res["probability"] == pytest.approx(float(bundle.predict_proba([tiles])[0]), rel=1e-6)
    # --max-tiles 4 kept every tile of this 512x512 px slide, so predict saw the same tiles as training
    feats = pd.read_parquet(root / "features" / "synth_0001.parquet")
    assert feats[["x", "y"]].sort_values(["y", "x"]).to_numpy().tolist() == \
        tiles[["x", "y"]].sort_values(["y", "x"]).to_numpy().tolist()
    assert res["probability"] == pytest.approx(float(bundle.predict_proba([feats])[0]), abs=1e-6)
    assert 1 <= len(res["key_tiles"]) <= 3


def test_bad_inputs_are_one_line_errors(run, tmp_path, capsys):
    root, _ = run
    (tmp_path / "afile").write_text("x")
    cases = [
        (["predict", tmp_path / "nope.svs", "--model", root / "model", "--out", tmp_path / "p"], "file not found"),
        (["predict", root / "cohort" / "slides" / "synth_0000.tif", "--model", tmp_path, "--out", tmp_path / "p"],
         "bundle.json missing"),
        (["train", root / "features", "--cohort", tmp_path / "none.csv", "--out", tmp_path / "m"], "not found"),
        (["train", root / "features", "--cohort", root / "cohort" / "cohort.csv", "--out", tmp_path / "afile" / "m"],
         "is a file"),
        (["train", root / "features", "--cohort", root / "cohort" / "cohort.csv", "--out", tmp_path / "m",
          "--bins", "1"], "bins must be at least 2"),  # checked before the (too many) folds
        (["evaluate", root / "model", root / "features", "--cohort", root / "cohort" / "cohort.csv",
          "--out", tmp_path / "afile" / "e"], "is a file"),
    ]
    for argv, needle in cases:
        rc = main([str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1, argv
        assert err and needle in err[-1] and err[-1].startswith(f"napari-lnm {argv[0]}: error:"), (argv, err)
        assert not any("Traceback" in line for line in err)


def test_evaluate_refuses_features_of_another_magnification(run, tmp_path, capsys):
    root, _ = run
    feats = tmp_path / "features"
    feats.mkdir()
    for f in (root / "features").glob("*.parquet"):  # same tables, provenance says 10x
        t = pq.read_table(f)
        prov = json.loads(t.schema.metadata[b"napari_lnm"])
        prov["tiling"]["magnification"] = 10.0
        pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"napari_lnm": json.dumps(prov).encode()}),
                       feats / f.name)
    rc = main(["evaluate", str(root / "model"), str(feats), "--cohort", str(root / "cohort" / "cohort.csv"),
               "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 1 and "10x (the model: 20x)" in err
    assert not os.path.exists(tmp_path / "e")


def test_subtype_model_that_learns_nothing_falls_back_to_pooled():
    """XGBoost cannot split 6 slides (min_child_weight): that subtype must use the pooled model, not a constant 0.5."""
    from napari_lnm.model import TrainConfig, train_model

    rng = np.random.default_rng(0)
    y = np.array([1, 1, 1, 1, 0, 0] + [1, 0] * 10)
    tables = [pd.DataFrame({"slide_id": f"s{i}", "x": 0, "y": 0, "size": 256, "tissue_fraction": 1.0,
                            "nucleus.area_mean": rng.normal(40 + 25 * y[i], 4, 20),
                            "tile.h_mean": rng.normal(0.4, 0.05, 20)}) for i in range(len(y))]
    subtypes = ["CMS1"] * 6 + ["CMS2"] * 20
    b = train_model(tables, y, TrainConfig(per_subtype=True, min_subtype_slides=6, bins=3), subtypes=subtypes)
    assert "CMS1" not in b.subtype_models and b.subtype_routing["CMS1"].startswith("pooled (own model")
    assert "CMS2" in b.subtype_models and b.subtype_routing["CMS2"] == "own model (20 slides)"
    p = b.for_subtype("CMS1")[0].predict_proba(tables[:6])
    assert b.for_subtype("CMS1")[1] == "pooled" and p[:4].min() > p[4:].max()


def test_tile_notes_upsampling_and_explains_zero_tiles(run, tmp_path, capsys):
    root, _ = run
    slide = str(root / "cohort" / "slides" / "synth_0000.tif")  # 512x512 px at 0.5 µm/px
    assert main(["tile", slide, "--out", str(tmp_path / "a"), "--magnification", "40", "--tile-size", "1024"]) == 0
    assert "tiles are upsampled" in capsys.readouterr().out
    assert main(["tile", slide, "--out", str(tmp_path / "b"), "--tile-size", "1024"]) == 0
    out = capsys.readouterr().out
    assert "0 tiles" in out and "larger than the 512x512 px slide" in out
    assert len(pd.read_parquet(tmp_path / "b" / "tiles.parquet")) == 0
    assert main(["tile", slide, "--out", str(tmp_path / "c"), "--thumbnail-size", "0"]) == 1
    assert capsys.readouterr().err.strip() == "napari-lnm tile: error: --thumbnail-size must be at least 1 px, got 0"

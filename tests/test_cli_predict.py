"""``napari-lnm predict`` on a tiny synthetic slide with a tiny model trained in the test (real train_model)."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from napari_lnm.cli import main
from test_pipeline import make_tiny_bundle, make_tiny_slide


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_predict")
    model = make_tiny_bundle().save(d / "model")
    a = make_tiny_slide(d / "slide_a.tif", label=1, seed=3)
    b = make_tiny_slide(d / "slide_b.tif", label=0, seed=4, px=768)
    return d, model, a, b


def test_predict_one_slide(assets, tmp_path, capsys):
    _, model, a, _ = assets
    out = tmp_path / "out"
    rc = main(["predict", str(a), "--model", str(model), "--out", str(out), "--top-k", "4", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "slide_a: P(metastasis) = " in printed
    for f in ("result.json", "importance.png", "key_tiles.png", "tiles.parquet"):
        assert (out / f).is_file(), f
    d = json.loads((out / "result.json").read_text())
    assert 0.0 <= d["probability"] <= 1.0
    assert f"{d['probability']:.3f}" in printed
    assert d["n_tiles"] == 4 and d["tiling"]["magnification"] == 20.0 and d["tiling"]["tile_size"] == 512
    assert 1 <= len(d["top_features"]) <= 4
    assert {"element", "feature", "contribution", "gain", "fscore", "kind"} <= set(d["top_features"][0])
    for kt in d["key_tiles"]:
        assert {"rank", "x", "y", "size", "kind", "colour", "reason"} <= set(kt)
        assert kt["size"] == 512
    assert d["model"]["path"] == str(model) and d["model"]["classifier"] == "xgboost"
    tiles = pd.read_parquet(out / "tiles.parquet")
    assert len(tiles) == 4 and {"x", "y", "size", "tissue_fraction"} <= set(tiles.columns)


def test_predict_batch_summary_and_resume(assets, tmp_path, capsys):
    _, model, a, b = assets
    out = tmp_path / "batch"
    args = ["predict", str(a), str(b), "--model", str(model), "--out", str(out), "--max-tiles", "2", "--quiet"]
    assert main(args) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["slide_id"]) == ["slide_a", "slide_b"]
    assert list(summary["n_tiles"]) == [2, 1]  # slide_b (768 px) holds one whole 512-px tile
    assert ((summary["probability"] >= 0) & (summary["probability"] <= 1)).all()
    for sid in ("slide_a", "slide_b"):
        assert (out / sid / "result.json").is_file() and (out / sid / "key_tiles.png").is_file()
    stamp = os.stat(out / "slide_a" / "result.json").st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # resume: nothing recomputed
    assert "already done" in capsys.readouterr().out
    assert os.stat(out / "slide_a" / "result.json").st_mtime_ns == stamp
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), summary)
    # other settings (or another model): earlier results are not reused
    assert main(args[:-1] + ["--top-k", "3", "--quiet"]) == 0
    assert "redoing" in capsys.readouterr().out
    assert os.stat(out / "slide_a" / "result.json").st_mtime_ns != stamp


def test_predict_cohort_csv_reports_bad_slide(assets, tmp_path, capsys):
    d, model, a, _ = assets
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    csv = tmp_path / "cohort.csv"
    csv.write_text(f"slide_id,path,label\nA,{a},1\nBROKEN,broken.tif,0\n")
    out = tmp_path / "c"
    rc = main(["predict", "--cohort", str(csv), "--model", str(model), "--out", str(out), "--max-tiles", "1",
               "--quiet"])
    err = capsys.readouterr().err
    # the broken slide is reported on one line naming the file; the others are still predicted
    assert rc == 1
    assert "BROKEN" in err and "broken.tif" in err and "Traceback" not in err
    assert (out / "A" / "result.json").is_file() and not (out / "BROKEN" / "result.json").exists()
    assert list(pd.read_csv(out / "summary.csv")["slide_id"]) == ["A"]
    # a cohort without the path column is a one-line error
    (tmp_path / "nopath.csv").write_text("slide_id,label\nA,1\n")
    assert main(["predict", "--cohort", str(tmp_path / "nopath.csv"), "--model", str(model), "--out", str(out)]) == 1
    assert "path" in capsys.readouterr().err


def test_predict_user_errors(assets, tmp_path, capsys):
    _, model, a, _ = assets
    assert main(["predict", str(a), "--model", str(tmp_path / "nomodel"), "--out", str(tmp_path / "o")]) == 1
    assert "nomodel" in capsys.readouterr().err
    assert main(["predict", "--model", str(model), "--out", str(tmp_path / "o")]) == 1
    assert "SLIDE" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing.svs"), "--model", str(model), "--out", str(tmp_path / "o")]) == 1
    assert "missing.svs" in capsys.readouterr().err
    assert not (tmp_path / "o" / "result.json").exists()


def test_predict_option_errors(assets, tmp_path, capsys):
    _, model, a, _ = assets
    base = ["predict", str(a), "--model", str(model), "--out", str(tmp_path / "o")]
    assert main(base + ["--top-k", "0"]) == 1
    assert "--top-k" in capsys.readouterr().err
    assert main(base + ["--mpp", "-1"]) == 1
    assert "--mpp" in capsys.readouterr().err
    assert main(base + ["--max-tiles", "0"]) == 1
    assert "max tiles" in capsys.readouterr().err

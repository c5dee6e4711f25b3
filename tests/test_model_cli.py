"""`napari-lnm train` and `napari-lnm evaluate` on a generated features folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from napari_lnm.cli import main
from napari_lnm.model import ModelBundle


def write_cohort(root, n=24, seed=0, shift=1.0, subtypes=False, provenance=None, name="cohort.csv"):
    """Features folder of <slide_id>.parquet + cohort CSV; informative feature: nucleus.area_mean."""
    rng = np.random.default_rng(seed)
    feats = root / "features"
    feats.mkdir(exist_ok=True)
    y = rng.permutation(np.arange(n) % 2)
    rows = []
    for i in range(n):
        sid = f"{name[:3]}{i:02d}"
        nt = int(rng.integers(15, 40))
        df = pd.DataFrame({
            "slide_id": sid, "x": np.arange(nt) * 512, "y": 0, "size": 512, "tissue_fraction": 0.8,
            "tile.h_mean": rng.normal(0.4, 0.05, nt),
            "nucleus.area_mean": rng.lognormal(3.0, 0.4, nt) * (1 + shift * y[i]),
            "graph.voronoi_area_mean": rng.lognormal(5.0, 0.5, nt),
        })
        tbl = pa.Table.from_pandas(df, preserve_index=False)
        if provenance is not None:
            tbl = tbl.replace_schema_metadata({**(tbl.schema.metadata or {}),
                                               b"napari_lnm": json.dumps(provenance).encode()})
        pq.write_table(tbl, feats / f"{sid}.parquet")
        rows.append({"slide_id": sid, "path": f"slides/{sid}.tiff", "label": int(y[i]),
                     "subtype": ["CMS1", "CMS2"][i % 2] if i < n - 2 else "CMS3", "CEA": float(y[i] + rng.normal()),
                     "T_stage": rng.choice(["T2", "T3"])})
    cohort = pd.DataFrame(rows)
    if not subtypes:
        cohort = cohort.drop(columns=["subtype"])
    cohort.to_csv(root / name, index=False)
    return root / name, feats


def test_train_and_evaluate(tmp_path, capsys):
    prov = {"package_version": "0.1.0", "tiling": {"magnification": 20.0, "tile_size": 256, "overlap": 0,
                                                   "min_tissue": 0.5, "max_tiles": None, "seed": 0},
            "feature_schema_hash": "abc", "working_mpp": 0.5}
    csv, feats = write_cohort(tmp_path, provenance=prov)
    out = tmp_path / "model"
    rc = main(["train", str(feats), "--cohort", str(csv), "--out", str(out), "--cv", "3", "--bootstrap", "200",
               "--clinical", "CEA,T_stage"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "CV ROC-AUC" in text and "95% CI" in text and "image features only" in text
    for f in ("bundle.json", "cv_report.json", "roc.png", "oof.csv"):
        assert (out / f).is_file(), f
    # XGBoost trees or the numpy classifiers' arrays, whichever recipe the inner CV chose
    assert (out / "model.ubj").is_file() or (out / "params.npz").is_file()
    b = ModelBundle.load(out)
    assert b.config["tiling"]["tile_size"] == 256 and b.config["clinical"] == ["CEA", "T_stage"]
    assert b.cv_report.auc > 0.8
    oof = pd.read_csv(out / "oof.csv")
    assert len(oof) == 24 and {"probability", "probability_image_only", "fold"} <= set(oof.columns)

    test_csv, _ = write_cohort(tmp_path, n=12, seed=5, provenance=prov, name="ext.csv")
    ev = tmp_path / "eval"
    rc = main(["evaluate", str(out), str(feats), "--cohort", str(test_csv), "--out", str(ev), "--bootstrap", "200"])
    text = capsys.readouterr().out
    assert rc == 0 and "external ROC-AUC" in text
    probs = pd.read_csv(ev / "probabilities.csv")
    assert len(probs) == 12 and probs["probability"].between(0, 1).all()
    assert (ev / "roc.png").is_file()


def test_train_per_subtype(tmp_path, capsys):
    csv, feats = write_cohort(tmp_path, n=24, subtypes=True)
    out = tmp_path / "model"
    rc = main(["train", str(feats), "--cohort", str(csv), "--out", str(out), "--cv", "3", "--bootstrap", "100",
               "--classifier", "logreg", "--per-subtype", "--min-subtype-slides", "8"])
    text = capsys.readouterr().out
    assert rc == 0, text
    # a subtype gets its own model only where inner CV shows it beating the pooled one on its slides
    assert "subtype CMS3: pooled (only 2 slides, fewer than 8)" in text
    assert "subtype CMS1: " in text and "subtype CMS2: " in text and "inner-CV AUC" in text
    b = ModelBundle.load(out)
    assert set(b.subtype_models) <= {"CMS1", "CMS2"}
    assert b.for_subtype("CMS3")[1] == "pooled"
    rc = main(["evaluate", str(out), str(feats), "--cohort", str(csv), "--out", str(tmp_path / "ev"),
               "--bootstrap", "100"])
    text = capsys.readouterr().out
    assert rc == 0 and (("models used" in text) == bool(b.subtype_models))
    probs = pd.read_csv(tmp_path / "ev" / "probabilities.csv")
    cohort = pd.read_csv(csv)
    used = cohort["subtype"].map(lambda sub: b.for_subtype(sub)[1])
    assert (probs["model"] == used).all()


@pytest.mark.parametrize("problem", ["one_class", "too_few", "missing_parquet"])
def test_train_errors_leave_model_dir_untouched(tmp_path, capsys, problem):
    csv, feats = write_cohort(tmp_path, n=12)
    cohort = pd.read_csv(csv)
    if problem == "one_class":
        cohort["label"] = 1
    elif problem == "too_few":
        cohort = cohort[(cohort.label == 1) | (cohort.index < 9)].iloc[:8]
        cohort.loc[cohort.label == 1, "label"] = [1] + [0] * (int((cohort.label == 1).sum()) - 1)
    else:
        (feats / f"{cohort.slide_id[3]}.parquet").unlink()
    cohort.to_csv(csv, index=False)
    out = tmp_path / "model"
    out.mkdir()
    (out / "bundle.json").write_text("old model")  # an earlier model: the only folder train may replace
    rc = main(["train", str(feats), "--cohort", str(csv), "--out", str(out), "--cv", "3"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    expected = {"one_class": "one class", "too_few": "3-fold CV needs at least 3 slides per class",
                "missing_parquet": f"slide {cohort.slide_id[3]}: features file"}[problem]
    assert expected in err
    if problem == "missing_parquet":
        assert str(feats / f"{cohort.slide_id[3]}.parquet") in err
    assert [p.name for p in out.iterdir()] == ["bundle.json"]
    assert (out / "bundle.json").read_text() == "old model"


def test_evaluate_rejects_other_schema_bundle(tmp_path, capsys):
    csv, feats = write_cohort(tmp_path, n=12)
    out = tmp_path / "model"
    assert main(["train", str(feats), "--cohort", str(csv), "--out", str(out), "--cv", "2", "--bootstrap", "50",
                 "--classifier", "logreg"]) == 0
    meta = json.loads((out / "bundle.json").read_text())
    meta["schema_version"] = 99
    (out / "bundle.json").write_text(json.dumps(meta))
    capsys.readouterr()
    rc = main(["evaluate", str(out), str(feats), "--cohort", str(csv), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 1 and "schema version 99" in err and str(out) in err
    assert not (tmp_path / "ev").exists()

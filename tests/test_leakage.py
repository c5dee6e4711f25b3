"""One slide under two ids is refused; CV size advice is correct; evaluate refuses features of another tiling."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from napari_lnm.cli import main
from napari_lnm.errors import CohortError
from napari_lnm.model import TrainConfig, check_duplicate_slides, cross_validate, train_model

TILING = {"magnification": 20.0, "tile_size": 256, "overlap": 0.0, "min_tissue": 0.5, "max_tiles": None, "seed": 0,
          "segmentation": "threshold"}


def _table(sid: str, y: int, rng) -> pd.DataFrame:
    nt = 20
    return pd.DataFrame({"slide_id": sid, "x": np.arange(nt) * 256, "y": 0, "size": 256, "tissue_fraction": 0.9,
                         "nucleus.area_mean": rng.lognormal(3.0, 0.4, nt) * (1 + y),
                         "graph.voronoi_area_mean": rng.lognormal(5.0, 0.5, nt)})


def write_cohort(root, n=12, seed=0, tiling=TILING, name="cohort.csv"):
    """features/<slide_id>.parquet with ``tiling`` provenance, and the cohort CSV; returns (csv, features, cohort)."""
    rng = np.random.default_rng(seed)
    feats = root / "features"
    feats.mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        sid, y = f"{name[:2]}{i:02d}", i % 2
        tbl = pa.Table.from_pandas(_table(sid, y, rng), preserve_index=False)
        prov = {"package_version": "0.1.0", "tiling": tiling, "feature_schema_hash": "abc", "working_mpp": 0.5}
        tbl = tbl.replace_schema_metadata({**(tbl.schema.metadata or {}), b"napari_lnm": json.dumps(prov).encode()})
        pq.write_table(tbl, feats / f"{sid}.parquet")
        rows.append({"slide_id": sid, "path": f"slides/{sid}.tiff", "label": y})
    cohort = pd.DataFrame(rows)
    cohort.to_csv(root / name, index=False)
    return root / name, feats, cohort


# ---------------------------------------------------------------- duplicates
def test_same_path_under_two_ids(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "x.tiff").write_bytes(b"")
    (tmp_path / "link.tiff").symlink_to(tmp_path / "x.tiff")
    for alias in (f"{tmp_path}/sub/../x.tiff", str(tmp_path / "link.tiff")):
        cohort = pd.DataFrame({"slide_id": ["a", "b", "c"], "label": [0, 1, 1],
                               "path": [str(tmp_path / "x.tiff"), str(tmp_path / "y.tiff"), alias]})
        tables = [_table(s, 0, rng) for s in cohort["slide_id"]]
        with pytest.raises(CohortError, match=r"slides 'a' and 'c' are the same slide file .*x\.tiff") as exc:
            check_duplicate_slides(cohort, tables)
        assert "\n" not in str(exc.value) and "--allow-duplicates" in str(exc.value)


def test_identical_feature_tables_under_two_ids(tmp_path):
    rng = np.random.default_rng(1)
    tables = [_table(s, 0, rng) for s in ("a", "b", "c")]
    tables[2] = tables[0].assign(slide_id="c")  # one Parquet copied over another's name
    cohort = pd.DataFrame({"slide_id": ["a", "b", "c"], "path": ["1.tiff", "2.tiff", "3.tiff"], "label": [0, 1, 0]})
    with pytest.raises(CohortError, match="slides 'a' and 'c' have identical feature tables"):
        check_duplicate_slides(cohort, tables)
    assert check_duplicate_slides(cohort, tables, allow=True) == ["slides 'a' and 'c' have identical feature tables"]
    tables[2].loc[3, "nucleus.area_mean"] += 1e-9  # one value apart is another slide
    assert check_duplicate_slides(cohort, tables) == []


def test_train_refuses_duplicates_unless_allowed(tmp_path, capsys):
    csv, feats, cohort = write_cohort(tmp_path)
    a, b = cohort["slide_id"][0], cohort["slide_id"][2]
    (feats / f"{b}.parquet").write_bytes((feats / f"{a}.parquet").read_bytes())
    out = tmp_path / "model"
    args = ["train", str(feats), "--cohort", str(csv), "--out", str(out), "--cv", "3", "--bootstrap", "50",
            "--classifier", "logreg"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and f"slides '{a}' and '{b}'" in err, err
    assert not out.exists()
    assert main(args + ["--allow-duplicates"]) == 0
    text = capsys.readouterr().out
    assert f"warning: slides '{a}' and '{b}' have identical feature tables" in text
    assert (out / "bundle.json").is_file()


def test_train_widget_job_refuses_duplicates(tmp_path):
    pytest.importorskip("qtpy")
    from napari_lnm._widgets.train import train_job

    csv, feats, cohort = write_cohort(tmp_path)
    cohort.loc[5, "path"] = cohort.loc[1, "path"]
    cohort.to_csv(csv, index=False)
    with pytest.raises(CohortError, match=f"slides '{cohort.slide_id[1]}' and '{cohort.slide_id[5]}' are the same"):
        train_job(str(csv), str(feats), str(tmp_path / "m"), cv=3, classifier="logreg")


# ---------------------------------------------------------------- CV size advice
def _tabs(labels):
    rng = np.random.default_rng(0)
    return [_table(f"s{i}", y, rng) for i, y in enumerate(labels)], np.asarray(labels)


def test_cv_advice_is_never_the_folds_given():
    tabs, y = _tabs([0, 0, 1])
    with pytest.raises(CohortError) as exc:
        cross_validate(tabs, y, config=TrainConfig(cv=2, n_bootstrap=20, classifier="logreg"))
    assert "--cv 2" not in str(exc.value) and "2 negative and 1 positive" in str(exc.value)


def test_cv_with_two_slides_per_class_says_why():
    tabs, y = _tabs([0, 0, 1, 1])
    for cv in (5, 2):
        with pytest.raises(CohortError) as exc:
            cross_validate(tabs, y, config=TrainConfig(cv=cv, n_bootstrap=20, classifier="logreg"))
        msg = str(exc.value)
        assert "use --cv" not in msg and "the cohort has 2 negative and 2 positive" in msg, msg
        assert "too few for cross-validation, which needs at least 3 of each class" in msg, msg
    tabs, y = _tabs([0, 0, 0, 1, 1, 1])
    with pytest.raises(CohortError, match=r"2-fold CV trains fold \d on .*\(use --cv 3\)"):
        cross_validate(tabs, y, config=TrainConfig(cv=2, n_bootstrap=20, classifier="logreg"))
    with pytest.raises(CohortError, match=r"5-fold CV needs at least 5 slides per class.*\(use --cv 3\)"):
        cross_validate(tabs, y, config=TrainConfig(cv=5, n_bootstrap=20, classifier="logreg"))


def test_training_error_gives_the_counts():
    tabs, y = _tabs([0, 0, 1])
    with pytest.raises(CohortError, match="at least 2 slides of each class; the slides given have 2 negative and 1"):
        train_model(tabs, y, TrainConfig(classifier="logreg"))


# ---------------------------------------------------------------- evaluate: the features' tiling
@pytest.mark.parametrize("key,value,words", [("segmentation", "cnn", "segmentation 'cnn' (the model: 'threshold')"),
                                             ("min_tissue", 0.25, "minimum tissue fraction 0.25 (the model: 0.5)"),
                                             ("overlap", 0.5, "overlap 0.5 (the model: 0)")])
def test_evaluate_refuses_features_of_another_tiling(tmp_path, capsys, key, value, words):
    from napari_lnm.model import load_feature_tables, read_cohort_csv

    csv, feats, _ = write_cohort(tmp_path)
    cohort = read_cohort_csv(csv)
    tables, tiling = load_feature_tables(cohort, feats)
    model = tmp_path / "model"
    train_model(tables, cohort["label"], TrainConfig(classifier="logreg", tiling=tiling)).save(model)
    ext = tmp_path / "ext"
    ext.mkdir()
    ext_csv, ext_feats, _ = write_cohort(ext, n=6, seed=3, tiling={**TILING, key: value})
    capsys.readouterr()
    rc = main(["evaluate", str(model), str(ext_feats), "--cohort", str(ext_csv), "--out", str(tmp_path / "ev"),
               "--bootstrap", "20"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and words in err, err
    rc = main(["evaluate", str(model), str(feats), "--cohort", str(csv), "--out", str(tmp_path / "ev"),
               "--bootstrap", "20"])
    assert rc == 0, capsys.readouterr().err

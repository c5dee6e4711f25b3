"""Issue 16: no command deletes what it did not write, and no slide gets another slide's result."""

from __future__ import annotations

import io
import json
import os

import pandas as pd
import pytest

from napari_lnm.cli import main
from napari_lnm.errors import UserError
from napari_lnm.outdir import MARKER, MODEL, check_out_dir, safe_name, unique_names
from napari_lnm.progress import ProgressReporter
from test_model_cli import write_cohort
from test_pipeline import make_tiny_bundle, make_tiny_slide


def _tree(folder) -> dict:
    """{relative path: bytes} of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_safety")
    model = make_tiny_bundle().save(d / "model")
    a = make_tiny_slide(d / "slide_a.tif", label=1, seed=3)
    b = make_tiny_slide(d / "slide_b.tif", label=0, seed=4, px=768)
    return d, model, a, b


# ------------------------------------------------------------------ 1. output folders
@pytest.fixture()
def project(tmp_path):
    """A project folder: slides, a cohort CSV, a features folder and a model trained on them."""
    root = tmp_path / "project"
    root.mkdir()
    csv, feats = write_cohort(root, n=12, subtypes=True)
    (root / "slides").mkdir()
    (root / "slides" / "A.svs").write_bytes(b"precious slide")
    model = root / "model"
    assert main(["train", str(feats), "--cohort", str(csv), "--out", str(model), "--cv", "2", "--bootstrap", "20",
                 "--classifier", "logreg"]) == 0
    return root, csv, feats, model


@pytest.mark.parametrize("target", ["project", "features", "slides"])
def test_train_refuses_folders_it_did_not_write(project, capsys, target):
    root, csv, feats, _ = project
    out = {"project": root, "features": feats, "slides": root / "slides"}[target]
    before = _tree(root)
    rc = main(["train", str(feats), "--cohort", str(csv), "--out", str(out), "--cv", "2", "--bootstrap", "20",
               "--classifier", "logreg"])
    err = _one_line_error(capsys)
    assert rc == 1 and str(out) in err and "not written by napari-lnm train" in err
    assert _tree(root) == before


def test_train_out_dot_is_refused_before_training(project, capsys, monkeypatch):
    root, csv, feats, _ = project
    monkeypatch.chdir(root)
    before = _tree(root)
    assert main(["train", str(feats), "--cohort", str(csv), "--out", ".", "--cv", "2"]) == 1
    assert str(root) in _one_line_error(capsys)
    assert _tree(root) == before


def test_train_replaces_its_own_model(project, tmp_path, capsys):
    _, csv, feats, _ = project
    out = tmp_path / "new_model"
    args = ["train", str(feats), "--cohort", str(csv), "--out", str(out), "--cv", "2", "--bootstrap", "20",
            "--classifier", "logreg"]
    assert main(args) == 0
    assert main(args) == 0  # an earlier bundle (bundle.json) is the command's own: replaced atomically
    assert (out / "bundle.json").is_file()


@pytest.mark.parametrize("target", ["model", "features", "project"])
def test_evaluate_refuses_folders_it_did_not_write(project, capsys, target):
    root, csv, feats, model = project
    out = {"model": model, "features": feats, "project": root}[target]
    before = _tree(root)
    rc = main(["evaluate", str(model), str(feats), "--cohort", str(csv), "--out", str(out), "--bootstrap", "20"])
    err = _one_line_error(capsys)
    assert rc == 1 and str(out) in err
    assert _tree(root) == before


def test_evaluate_rewrites_its_own_report(project, tmp_path, capsys):
    _, csv, feats, model = project
    out = tmp_path / "ev"
    args = ["evaluate", str(model), str(feats), "--cohort", str(csv), "--out", str(out), "--bootstrap", "20"]
    assert main(args) == 0 and (out / MARKER).is_file()
    assert main(args) == 0 and (out / "probabilities.csv").is_file()


def test_train_subtype_refuses_its_tile_stacks_folder(project, capsys):
    import numpy as np

    root, csv, _, _ = project
    stacks = root / "tiles"
    stacks.mkdir()
    rng = np.random.default_rng(0)
    for sid in pd.read_csv(csv)["slide_id"]:
        np.save(stacks / f"{sid}.npy", rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    before = _tree(root)
    rc = main(["train-subtype", str(stacks), "--cohort", str(csv), "--out", str(stacks), "--epochs", "1",
               "--input-size", "32", "--max-tiles-per-slide", "4", "--batch-size", "8", "--quiet"])
    err = _one_line_error(capsys)
    assert rc == 1 and str(stacks) in err
    assert _tree(root) == before


def test_demo_refuses_a_foreign_folder_and_keeps_features(tmp_path, capsys):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "S01.parquet").write_bytes(b"features of a real cohort")
    (tmp_path / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    assert main(["demo", "--out", str(tmp_path), "--n-slides", "4", "--quiet"]) == 1
    assert str(tmp_path) in _one_line_error(capsys)
    assert _tree(tmp_path) == before


def test_predict_and_extract_refuse_a_model_folder(assets, project, capsys):
    _, model, a, _ = assets
    root, _, _, own_model = project
    before = _tree(root)
    assert main(["predict", str(a), "--model", str(model), "--out", str(own_model), "--quiet"]) == 1
    assert str(own_model) in _one_line_error(capsys)
    assert main(["extract", str(a), "--out", str(own_model), "--max-tiles", "1"]) == 1
    assert str(own_model) in _one_line_error(capsys)
    assert _tree(root) == before


def test_check_out_dir_rule(tmp_path):
    assert check_out_dir(tmp_path / "new", MODEL) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", MODEL)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "bundle.json").write_text("{}")
    check_out_dir(tmp_path / "m", MODEL)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(UserError, match="is a file"):
        check_out_dir(tmp_path / "f" / "sub", MODEL)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / MARKER).write_text(json.dumps({"command": "predict"}))
    with pytest.raises(UserError, match="napari-lnm predict"):
        check_out_dir(tmp_path / "p", MODEL)


# ------------------------------------------------------------------ 2. one folder per slide id
def test_safe_names_are_injective():
    ids = ["S 01", "S_01", "Fall ä", "Fall ö", "ok-1", "../x"]
    names = unique_names(ids, "c.csv")
    assert len(set(names.values())) == len(ids) and names["S_01"] == "S_01" and names["ok-1"] == "ok-1"
    assert all("/" not in n and not n.startswith(".") for n in names.values())
    assert safe_name("Fall ä") == safe_name("Fall ä")  # stable across runs: resume finds the folder
    with pytest.raises(UserError, match="'S01' and 's01'.*same file name"):
        unique_names(["S01", "s01"], "c.csv")


def test_predict_batch_ids_that_sanitise_alike_get_their_own_results(assets, tmp_path, capsys):
    _, model, a, b = assets
    csv = tmp_path / "cohort.csv"
    csv.write_text(f"slide_id,path\nS 01,{a}\nS_01,{b}\nFall ä,{b}\nFall ö,{a}\n", encoding="utf-8")
    out = tmp_path / "batch"
    assert main(["predict", "--cohort", str(csv), "--model", str(model), "--out", str(out), "--max-tiles", "1",
                 "--key-tiles", "1", "--quiet"]) == 0
    assert "already done" not in capsys.readouterr().out
    summary = pd.read_csv(out / "summary.csv")
    assert summary["out_dir"].nunique() == 4
    for r in summary.itertuples():
        res = json.loads((tmp_path / "batch" / os.path.basename(r.out_dir) / "result.json").read_text())
        assert res["slide_id"] == r.slide_id and res["probability"] == pytest.approx(r.probability, abs=1e-6)
    p = dict(zip(summary["slide_id"], summary["probability"]))
    assert p["S 01"] == pytest.approx(p["Fall ö"]) and p["S_01"] == pytest.approx(p["Fall ä"])


def test_predict_batch_refuses_ids_one_case_apart(assets, tmp_path, capsys):
    _, model, a, b = assets
    csv = tmp_path / "cohort.csv"
    csv.write_text(f"slide_id,path\nS01,{a}\ns01,{b}\n")
    assert main(["predict", "--cohort", str(csv), "--model", str(model), "--out", str(tmp_path / "o")]) == 1
    err = _one_line_error(capsys)
    assert "'S01'" in err and "'s01'" in err and str(csv) in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("ids, expected", [(("S01", "s01"), "'S01' and 's01'"), (("ok", "../x"), "'../x'")])
def test_train_subtype_refuses_ids_that_are_no_distinct_file_names(tmp_path, capsys, ids, expected):
    csv = tmp_path / "cohort.csv"
    csv.write_text("slide_id,path,subtype\n" + "".join(f"{i},{i}.svs,CMS1\n" for i in ids))
    rc = main(["train-subtype", str(tmp_path), "--cohort", str(csv), "--out", str(tmp_path / "m"), "--quiet"])
    err = _one_line_error(capsys)
    assert rc == 1 and expected in err and str(csv) in err
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------ 3. resume keys on the slide and its ROI
def test_predict_resume_redoes_a_changed_row(assets, tmp_path, capsys):
    _, model, a, b = assets
    csv = tmp_path / "cohort.csv"
    out = tmp_path / "batch"
    args = ["predict", "--cohort", str(csv), "--model", str(model), "--out", str(out), "--max-tiles", "1",
            "--key-tiles", "1", "--quiet"]
    csv.write_text(f"slide_id,path\nA,{a}\nB,{b}\n")
    assert main(args) == 0
    first = pd.read_csv(out / "summary.csv").set_index("slide_id")
    csv.write_text(f"slide_id,path\nA,{b}\nB,{b}\n")  # row A now names another slide file
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "B: already done" in printed and "A: already done" not in printed
    again = pd.read_csv(out / "summary.csv").set_index("slide_id")
    assert again.loc["A", "path"] == str(b)
    assert again.loc["A", "probability"] == pytest.approx(first.loc["B", "probability"])


def test_predict_resume_redoes_an_edited_roi(assets, tmp_path, capsys):
    from napari_lnm.tissue import write_geojson
    import numpy as np

    _, model, a, b = assets
    roi = tmp_path / "a.geojson"
    write_geojson(roi, [np.array([[0, 0], [1024, 0], [1024, 1024], [0, 1024]], float)])
    csv = tmp_path / "cohort.csv"
    csv.write_text(f"slide_id,path,roi\nA,{a},{roi}\nB,{b},\n")
    out = tmp_path / "batch"
    args = ["predict", "--cohort", str(csv), "--model", str(model), "--out", str(out), "--max-tiles", "1",
            "--key-tiles", "1", "--quiet"]
    assert main(args) == 0
    write_geojson(roi, [np.array([[0, 0], [600, 0], [600, 600], [0, 600]], float)])
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "B: already done" in printed and "A: already done" not in printed


# ------------------------------------------------------------------ 4. and 5. extract's single-slide input
def test_extract_refuses_a_slide_id_with_a_path(assets, tmp_path, capsys):
    _, _, a, _ = assets
    out = tmp_path / "feats"
    assert main(["extract", str(a), "--out", str(out), "--slide-id", "../x", "--max-tiles", "1"]) == 1
    assert "--slide-id '../x'" in _one_line_error(capsys)
    assert not (tmp_path / "x.parquet").exists() and not out.exists()


def test_extract_a_csv_as_slide_says_use_cohort(tmp_path, capsys):
    csv = tmp_path / "cohort.csv"
    csv.write_text("slide_id,path,label\nA,a.svs,1\n")
    assert main(["extract", str(csv), "--out", str(tmp_path / "feats")]) == 1
    err = _one_line_error(capsys)
    assert "this is a CSV" in err and "--cohort" in err and "failed" not in err


# ------------------------------------------------------------------ 6. logs get one line per finished unit
def test_reporter_writes_one_line_per_finished_unit_to_a_log():
    log = io.StringIO()
    rep = ProgressReporter("predict", unit="slide", stream=log)
    for k in range(1, 4):
        for _ in range(50):  # repeated calls inside one unit (tile counts) add no line
            rep(k - 1, 3, "working")
        rep(k, 3, f"S0{k} done, 120 tiles")
    rep.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 3
    assert lines[0].startswith("[1/3] predict S01 done, 120 tiles, 0:00:00 elapsed, ETA 0:00:0")
    assert lines[2].startswith("[3/3] predict S03 done") and "ETA" not in lines[2]
    tiles = io.StringIO()
    rep = ProgressReporter("S01", unit="tile", stream=tiles, log_units=False)
    for k in range(100):
        rep(k, 100, "analysing tile")
    assert tiles.getvalue() == ""


def test_reporter_draws_a_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Tty()
    with ProgressReporter("extract", unit="slide", stream=term) as rep:
        rep(1, 4, "S01")
    assert "\r" in term.getvalue()


def test_predict_batch_log_has_one_line_per_slide(assets, tmp_path, capsys):
    _, model, a, b = assets
    out = tmp_path / "batch"
    assert main(["predict", str(a), str(b), "--model", str(model), "--out", str(out), "--max-tiles", "2",
                 "--key-tiles", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("[")]
    assert len(lines) == 2, err
    assert lines[0].startswith("[1/2] predict slide_a done, 2 tiles, ") and "ETA" in lines[0]
    assert lines[1].startswith("[2/2] predict slide_b done, 1 tiles, ")


def test_train_log_has_one_line_per_fold(project, tmp_path, capsys):
    _, csv, feats, _ = project
    assert main(["train", str(feats), "--cohort", str(csv), "--out", str(tmp_path / "m2"), "--cv", "2",
                 "--bootstrap", "20", "--classifier", "logreg"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [ln.split(",")[0] for ln in err.splitlines() if ln.startswith("[")] == \
        ["[1/2] nested CV fold 1 done", "[2/2] nested CV fold 2 done"]


def test_tile_and_synth_refuse_foreign_folders(tmp_path, capsys):
    """`tile --out` and `synth OUT_DIR` follow the one output-folder rule too (and re-run into their own)."""
    from napari_lnm.cli import main

    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["synth", str(foreign), "--n-slides", "1", "--size", "256x256"]) == 1
    assert "refusing to write" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "synth"
    assert main(["synth", str(out), "--n-slides", "1", "--size", "256x256"]) == 0
    assert main(["synth", str(out), "--n-slides", "1", "--size", "256x256"]) == 0  # its own folder
    slide = next((out / "slides").glob("*.tif"))
    assert main(["tile", str(slide), "--out", str(foreign), "--tile-size", "256"]) == 1
    assert "refusing to write" in capsys.readouterr().err
    assert main(["tile", str(slide), "--out", str(tmp_path / "t"), "--tile-size", "256", "--min-tissue", "0"]) == 0
    assert main(["tile", str(slide), "--out", str(tmp_path / "t"), "--tile-size", "256", "--min-tissue", "0"]) == 0


def test_predict_reads_its_cohort_with_the_one_reader(tmp_path, capsys):
    """predict --cohort uses cohort.read_cohort: a bad label or an extra field is a one-line error naming the row."""
    from napari_lnm.cli import main

    model = tmp_path / "m"
    model.mkdir()
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,path,label\nA,a.svs,2\n")
    assert main(["predict", "--cohort", str(bad), "--model", str(model), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "row 2 (A): label must be 0 or 1" in err and "Traceback" not in err
    bad.write_text("slide_id,path\nA,a.svs,extra\n")
    assert main(["predict", "--cohort", str(bad), "--model", str(model), "--out", str(tmp_path / "o")]) == 1
    assert "row 2 has 3 fields, the header has 2" in capsys.readouterr().err

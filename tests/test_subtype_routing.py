"""Subtype routing among own / pooled / partially pooled (subtype as an input) models, chosen by inner CV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_lnm.errors import ModelError
from napari_lnm.model import PARTIAL, SUBTYPE_INPUT, ClinicalEncoder, CVReport, ModelBundle, \
    TrainConfig, cross_validate, routing_margin, train_model

SUBTYPES = ("A", "B", "C", "D")
FAST = dict(recipe="mean-none-logreg", calibration="platt", cv=3, n_bootstrap=100, min_subtype_slides=10)


def routed_cohort(n: int, seed: int, flip: str | None = None, risky: str | None = None, signal: float = 1.6,
                  n_tiles: int = 8) -> tuple[list[pd.DataFrame], np.ndarray, np.ndarray]:
    """Tile tables, labels and subtypes: ``nucleus.f0_mean`` rises with the label (falls in subtype ``flip``);
    subtype ``risky`` is metastatic three times as often as the others (its baseline risk is shifted)."""
    rng = np.random.default_rng(seed)
    st = np.array([SUBTYPES[i % len(SUBTYPES)] for i in range(n)], dtype=object)
    prevalence = np.where(st == risky, 0.75, 0.25 if risky else 0.5)
    y = (rng.random(n) < prevalence).astype(int)
    y[:4] = [0, 0, 1, 1] if n >= 4 else y[:4]
    for s in SUBTYPES:  # two slides of each class per subtype at least
        idx = np.flatnonzero(st == s)[:4]
        y[idx] = [0, 0, 1, 1][:len(idx)]
    tables = []
    for i in range(n):
        sign = -1.0 if st[i] == flip else 1.0
        latent = sign * (y[i] - 0.5) * signal + rng.normal(0, 0.5)
        d = {"slide_id": f"s{i:03d}", "x": np.arange(n_tiles) * 256, "y": 0, "size": 256, "tissue_fraction": 1.0,
             "nucleus.f0_mean": latent + rng.normal(0, 1.0, n_tiles)}
        for k in range(1, 4):
            d[f"nucleus.f{k}_mean"] = rng.normal(0, 1.0, n_tiles)
        tables.append(pd.DataFrame(d))
    return tables, y, st


def test_flipped_subtype_gets_its_own_model():
    """A subtype whose signal points the other way: the pooled model ranks it backwards, its own model does not."""
    tables, y, st = routed_cohort(160, 0, flip="D")
    b = train_model(tables, y, TrainConfig(per_subtype=True, **FAST), subtypes=st)
    assert b.config["subtype_choice"]["D"]["model"] == "own", b.subtype_routing["D"]
    assert "D" in b.subtype_models and b.subtype_routing["D"].startswith("own model (40 slides) (inner-CV AUC")
    aucs = b.config["subtype_choice"]["D"]["inner_cv_auc"]
    assert set(aucs) == {"own", "pooled", "partial"} and aucs["own"] > 0.8 > aucs["pooled"]
    assert "partially pooled" in b.subtype_routing["D"]
    rep = cross_validate(tables, y, config=TrainConfig(per_subtype=True, **FAST), subtypes=st)
    d = rep.subtype_aucs["D"]
    assert d["routed"] > d["pooled"] + 0.2 and d["partial"] is not None
    assert rep.auc > rep.auc_pooled and rep.auc_partial is not None
    assert "partially pooled" in rep.summary() and "routing in outer folds: own x3" in rep.summary()


def test_shifted_baseline_risk_routes_to_partial_and_never_loses_to_pooled():
    """Shared signal, one subtype at a higher baseline risk: the partially pooled model wins, routing never loses."""
    tables, y, st = routed_cohort(200, 1, risky="D", signal=0.8)
    cfg = TrainConfig(per_subtype=True, **FAST)
    b = train_model(tables, y, cfg, subtypes=st)
    assert b.config["subtype_choice"]["D"]["model"] == "partial", b.subtype_routing["D"]
    assert b.subtype_routing["D"].startswith(f"{PARTIAL} (inner-CV AUC on 50 slides: own ")
    assert "D" in b.partial_subtypes and "D" not in b.subtype_models
    for name in "AC":
        assert b.config["subtype_choice"][name]["model"] in ("pooled", "partial"), b.subtype_routing[name]
    choice = b.config["subtype_choice"]["D"]
    margin = b.config["routing_margin_se"]
    assert margin == pytest.approx(routing_margin(8), abs=1e-4) and 2.4 < margin < 2.6  # 4 subtypes x 2 candidates
    assert choice["gain_all_slides"]["partial"] > margin * choice["gain_se"]["partial"] > 0
    rep = cross_validate(tables, y, config=cfg, subtypes=st)
    assert rep.auc_partial > rep.auc_pooled + 0.03  # the subtype itself carries risk the image cannot see
    # the Bonferroni margin trades some power for no false routings: D leaves pooled in at least one outer fold
    assert rep.auc > rep.auc_pooled and rep.subtype_choices["D"].get("partial", 0) >= 1
    assert set(rep.subtype_choices["D"]) <= {"partial", "pooled"}
    assert set(rep.subtype_aucs["D"]) == {"n", "routed", "pooled", "partial"}
    assert "probability_partial" in rep.oof_frame()


def test_null_subtypes_keep_the_pooled_model():
    """Subtypes that change nothing: every subtype keeps the pooled model (a gain must exceed routing_margin standard errors)."""
    tables, y, st = routed_cohort(120, 5)
    b = train_model(tables, y, TrainConfig(per_subtype=True, **FAST), subtypes=st)
    assert all(b.config["subtype_choice"][n]["model"] == "pooled" for n in SUBTYPES), b.subtype_routing
    assert b.subtype_models == {} and b.partial_subtypes == [] and b.partial is not None
    assert b.for_subtype("A") == (b, "pooled")


def test_partial_bundle_round_trip_predicts_identically(tmp_path):
    """A bundle that routes a subtype to the partially pooled model saves it once, as data, and reloads it."""
    tables, y, st = routed_cohort(120, 2, risky="D")
    cfg = TrainConfig(per_subtype=True, **FAST)
    b = train_model(tables, y, cfg, subtypes=st)
    b.subtype_models.pop("D", None)
    b.partial_subtypes = ["D"]  # force the route (the choice itself is tested above)
    m, used = b.for_subtype("D")
    assert used == "D" and m.clinical.given == {SUBTYPE_INPUT: "D"} and m.clinical.columns == []
    assert m.input_names == b.partial.input_names and "clinical.subtype=D" in m.input_names
    np.testing.assert_allclose(m.predict_proba(tables[:6]), b.partial.predict_proba(
        tables[:6], pd.DataFrame({SUBTYPE_INPUT: ["D"] * 6})))
    assert b.for_subtype("A")[1] in ("A", "pooled") and b.for_subtype("E") == (b, "pooled")
    b.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "bundle.json").read_text())
    assert meta["partial_model"] == {"path": "partial", "column": SUBTYPE_INPUT, "subtypes": ["D"]}
    assert (tmp_path / "m" / "partial" / "bundle.json").is_file()
    assert not list((tmp_path / "m").rglob("*.pkl")) and not list((tmp_path / "m").rglob("*.pickle"))
    b2 = ModelBundle.load(tmp_path / "m")
    assert b2.partial_subtypes == ["D"] and "partially pooled=['D']" in repr(b2)
    m2, used2 = b2.for_subtype("D")
    assert used2 == "D"
    np.testing.assert_array_equal(m2.predict_proba(tables), m.predict_proba(tables))
    np.testing.assert_array_equal(b2.predict_proba(tables), b.predict_proba(tables))
    c1, c2 = m.contributions(tables[3]), m2.contributions(tables[3])
    assert c1["element"].tolist() == c2["element"].tolist() and c1.attrs == c2.attrs
    np.testing.assert_array_equal(c1["contribution"], c2["contribution"])
    assert "clinical.subtype=D" in set(c1["element"])


def test_bundles_without_partial_stay_as_before(tmp_path):
    """No per-subtype training: no partially pooled model, bundle.json without the new key; old files load."""
    tables, y, st = routed_cohort(40, 3)
    b = train_model(tables, y, TrainConfig(**FAST))
    assert b.partial is None and b.for_subtype("A") == (b, "pooled")
    b.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "bundle.json").read_text())
    assert "partial_model" not in meta and not (tmp_path / "m" / "partial").exists()
    assert ModelBundle.load(tmp_path / "m").partial is None
    # a per-subtype bundle whose subtypes are all too small: pooled everywhere, nothing partial saved
    b = train_model(tables, y, TrainConfig(per_subtype=True, **{**FAST, "min_subtype_slides": 50}), subtypes=st)
    assert b.partial is None and all(v.startswith("pooled (only 10 slides") for v in b.subtype_routing.values())
    # a bundle written before partial pooling (the first demo model) loads and routes as before
    old = ModelBundle.load(Path(__file__).parent / "data" / "demo_model_v1")
    assert old.partial is None and old.partial_subtypes == [] and old.for_subtype("CMS1") == (old, "pooled")


def test_old_cv_report_and_encoder_files_load():
    """cv_report.json and clinical encodings written before partial pooling read as before."""
    rep = CVReport.from_dict({"slide_ids": ["a", "b"], "labels": [0, 1], "oof": [0.2, 0.7], "fold": [0, 1],
                              "auc": 1.0, "ci": [1.0, 1.0], "fold_aucs": [], "n_selected": [], "messages": [],
                              "n_splits": 2, "grouped": False, "oof_pooled": [0.3, 0.6], "auc_pooled": 1.0,
                              "ci_pooled": [1.0, 1.0], "subtype_aucs": {"A": {"n": 2, "routed": 1.0, "pooled": 1.0}}})
    assert rep.auc_partial is None and rep.subtype_choices is None
    assert "subtype A (2 slides): routed ROC-AUC 1.000, pooled 1.000" in rep.summary()
    assert "partially" not in rep.summary() and "probability_partial" not in rep.oof_frame()
    enc = ClinicalEncoder.from_dict({"columns": ["T"], "numeric": {}, "categories": {"T": ["T1", "T2"]}})
    assert enc.given == {} and enc.to_dict() == {"columns": ["T"], "numeric": {}, "categories": {"T": ["T1", "T2"]}}


def test_given_encoder_round_trip_and_rules():
    """An encoder whose last column the model fills in: same encoded inputs, to_dict / from_dict round trip."""
    df = pd.DataFrame({"CEA": [1.0, 3.0, 5.0], SUBTYPE_INPUT: ["A", "B", "A"]})
    enc = ClinicalEncoder.fit(df, ["CEA", SUBTYPE_INPUT])
    view = enc.with_given({SUBTYPE_INPUT: "B"})
    assert view.names == enc.names and view.columns == ["CEA"]
    np.testing.assert_array_equal(view.transform(df[["CEA"]], 3),
                                  enc.transform(df.assign(**{SUBTYPE_INPUT: "B"}), 3))
    assert view.check(df[["CEA"]]) == []
    assert ClinicalEncoder.from_dict(view.to_dict()) == view
    with pytest.raises(ValueError):
        enc.with_given({"CEA": 1.0})  # only trailing columns
    with pytest.raises(ModelError, match="given.CEA"):  # a FieldError naming the field
        ClinicalEncoder.from_dict({**view.to_dict(), "given": {"CEA": "x"}})


def test_numeric_subtype_names_stay_categorical():
    """Subtypes called 1..4 are still one level each in the partially pooled model, not one number."""
    tables, y, st = routed_cohort(120, 4, risky="D")
    st = np.array([str(SUBTYPES.index(s) + 1) for s in st], dtype=object)
    b = train_model(tables, y, TrainConfig(per_subtype=True, **FAST), subtypes=st)
    assert b.partial is not None and SUBTYPE_INPUT in b.partial.clinical.categories
    assert [n for n in b.partial.input_names if n.startswith("clinical.")] == [
        f"clinical.subtype=subtype {k}" for k in "1234"]
    assert b.partial_for("4").predict_proba(tables[:2]).shape == (2,)
    assert PARTIAL == "partially pooled"


def test_partial_with_clinical_columns_takes_them_from_the_caller():
    """The caller gives the pooled model's clinical values; the routed subtype is the partially pooled model's own."""
    from napari_lnm.pipeline import check_clinical

    tables, y, st = routed_cohort(80, 7, risky="D")
    clin = pd.DataFrame({"CEA": np.random.default_rng(0).normal(3, 1, 80) + y})
    b = train_model(tables, y, TrainConfig(per_subtype=True, clinical=("CEA",), **FAST), clinical=clin,
                    subtypes=st)
    assert b.partial.clinical.columns == ["CEA", SUBTYPE_INPUT]
    view = b.partial_for("B")
    assert view.clinical.columns == ["CEA"] and view.input_names[-5:] == [
        "clinical.CEA", "clinical.subtype=A", "clinical.subtype=B", "clinical.subtype=C", "clinical.subtype=D"]
    one = check_clinical(view, {"CEA": 4.0}, "s1", warn=True)
    assert list(one.columns) == ["CEA"]
    p = view.predict_proba(tables[:1], one)
    q = b.partial.predict_proba(tables[:1], pd.DataFrame({"CEA": [4.0], SUBTYPE_INPUT: ["B"]}))
    np.testing.assert_allclose(p, q)


def test_predict_slide_feeds_the_voted_subtype_to_the_partial_model(tmp_path):
    """predict_slide with a subtype CNN: the vote picks the partially pooled model and is its subtype input."""
    pytest.importorskip("torch")
    from test_pipeline import make_tiny_slide

    from napari_lnm.features import feature_names
    from napari_lnm.pipeline import predict_slide
    from napari_lnm.subtype import SUBTYPES as CMS
    from napari_lnm.subtype import SubtypeModel

    names = [n for n in feature_names() if not n.startswith("cells.")]
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 10.0, len(names))
    area = [j for j, n in enumerate(names) if n.startswith("nucleus.") and "area" in n]
    tables, y, st = [], np.arange(48) % 2, [CMS[(i // 2) % 4] for i in range(48)]
    for i in range(48):
        vals = base[None, :] * rng.lognormal(0.0, 0.2, (12, len(names)))
        vals[:, area] *= 1.6 if y[i] else 1.0
        meta = pd.DataFrame({"slide_id": f"s{i}", "x": np.arange(12) * 512, "y": 0, "size": 512,
                             "tissue_fraction": 1.0})
        tables.append(pd.concat([meta, pd.DataFrame(vals, columns=names)], axis=1))
    cfg = TrainConfig(per_subtype=True, tiling={"magnification": 20.0, "tile_size": 512, "min_tissue": 0.5},
                      **{**FAST, "min_subtype_slides": 8})
    b = train_model(tables, y, cfg, subtypes=st, feature_names=names)
    b.subtype_models, b.partial_subtypes = {}, list(CMS)  # every subtype to the partially pooled model
    b.save(tmp_path / "m")
    slide = make_tiny_slide(tmp_path / "tiny.tif")
    sm = SubtypeModel.new(arch="small", tile_size=512, seed=0, device="cpu")
    pred = predict_slide(slide, tmp_path / "m", subtype_model=sm)
    voted = pred.subtype["subtype"]
    assert pred.subtype["model_used"] == voted and pred.subtype["routing"] == b.subtype_routing[voted]
    assert f"clinical.subtype={voted}" in set(pred.contributions["element"])
    expect = b.partial.predict_proba(pred.tiles, pd.DataFrame({SUBTYPE_INPUT: [voted]}))[0]
    assert pred.probability == pytest.approx(expect)


def test_widget_names_the_partially_pooled_model():
    """The Analyse widget's model line says the partially pooled model was used, and with which subtype."""
    pytest.importorskip("napari")  # importing napari_lnm._widgets loads the Qt widgets (no display needed)
    from napari_lnm._widgets._subtype import subtype_summary  # noqa: PLC2701 (the widget's own text)

    note = f"{PARTIAL} (inner-CV AUC on 40 slides: own 0.700, pooled 0.710, partially pooled 0.720)"
    sub = {"subtype": "CMS2", "counts": {"CMS2": 3, "CMS1": 1}, "model_used": "CMS2", "routing": note}
    assert subtype_summary(sub)[1] == ("LNM model: partially pooled (the pooled model with CMS2 as an input; "
                                       "inner-CV AUC on 40 slides: own 0.700, pooled 0.710, partially pooled 0.720)")

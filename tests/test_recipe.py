"""Recipe choice by inner CV, calibration, operating points, evidence, and bundles from before them (issue 15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_lnm import recipe as recipes
from napari_lnm.calibration import Calibrator, brier_score, confusion_at, expected_calibration_error, \
    operating_points, wilson_ci
from napari_lnm.model import ModelBundle, TrainConfig, cross_validate, evidence, evidence_text, train_model

from _synthetic_tables import feature_tables

OLD_DEMO = Path(__file__).parent / "data" / "demo_model_v1"
FAST_GRID = ("seed", "mean-none-logreg", "mean-ks-logreg")


def _noise_tables(n: int, seed: int) -> tuple[list[pd.DataFrame], np.ndarray]:
    """Slides with features unrelated to a random label."""
    tables, _ = feature_tables(n, 6, seed)
    rng = np.random.default_rng(seed)
    return tables, rng.permutation(np.arange(n) % 2)


def test_grid_always_holds_the_methods_own_recipe():
    cfg = TrainConfig(recipe="auto", grid=("mean-none-logreg",))
    names = [n for n, _ in cfg.candidates()]
    assert names == ["seed", "mean-none-logreg"]
    seed = dict(cfg.candidates())["seed"]
    assert (seed.fusion, seed.bins, seed.test, seed.classifier) == ("histogram", 5, "ks", "xgboost")
    assert TrainConfig().candidates()[0][0] == recipes.FIXED
    with pytest.raises(ValueError, match="unknown recipe"):
        TrainConfig(recipe="nope").candidates()


def test_random_labels_stay_at_chance_with_the_grid():
    """The choice among recipes happens inside each outer fold, so noise cannot look like signal."""
    aucs = []
    for seed in range(3):
        tables, y = _noise_tables(40, seed)
        rep = cross_validate(tables, y, config=TrainConfig(recipe="auto", grid=FAST_GRID, calibration="auto",
                                                            cv=4, seed=seed, n_bootstrap=200))
        assert len(rep.recipes) == 4 and all(r.split(": ")[1] in FAST_GRID for r in rep.recipes)
        aucs.append(rep.auc)
    assert abs(float(np.mean(aucs)) - 0.5) < 0.12, aucs


def test_recipe_choice_and_calibration_recorded_and_round_trip(tmp_path):
    tables, y = feature_tables(40, 6, 3)
    cfg = TrainConfig(recipe="auto", grid=FAST_GRID, calibration="platt", cv=4, repeats=2, n_bootstrap=200)
    rep = cross_validate(tables, y, config=cfg)
    assert rep.repeats == 2 and len(rep.repeat_aucs) == 2 and len(rep.oof) == 40 and len(rep.recipes) == 8
    assert rep.auc > 0.8 and rep.ece is not None and rep.brier is not None
    b = train_model(tables, y, cfg)
    assert b.config["recipe"] in FAST_GRID and set(b.config["recipe_scores"]) == set(FAST_GRID)
    assert b.calibrator is not None and b.calibrator.method == "platt"
    b.cv_report = rep
    b.save(tmp_path / "m")
    assert (tmp_path / "m" / "reliability.png").is_file() and (tmp_path / "m" / "roc.png").is_file()
    meta = json.loads((tmp_path / "m" / "bundle.json").read_text())
    assert meta["calibration"]["method"] == "platt" and "rule_out" in meta["operating_points"]
    cv = json.loads((tmp_path / "m" / "cv_report.json").read_text())
    assert len(cv["oof"]) == 40 and len(cv["labels"]) == 40 and cv["repeats"] == 2
    b2 = ModelBundle.load(tmp_path / "m")
    np.testing.assert_allclose(b2.predict_proba(tables[:5]), b.predict_proba(tables[:5]))
    assert not np.allclose(b2.predict_proba(tables[:5]), b2.predict_proba(tables[:5], calibrated=False))
    c = b2.contributions(tables[0])  # Platt keeps the explanation additive in the calibrated log-odds
    assert c["contribution"].sum() + c.attrs["bias"] == pytest.approx(c.attrs["logit"], abs=1e-5)
    assert c.attrs["probability"] == pytest.approx(float(b2.predict_proba(tables[:1])[0]))
    text = evidence_text(b2, 0.7)
    assert "cross-validated ROC-AUC" in text and "trained on 40 slides (20 metastatic / 20 not)" in text
    assert "calibration error" in text and "not for diagnosis" not in text


def test_calibration_on_a_known_signal():
    """Scores with a known true probability, distorted: Platt recovers calibration on held-out slides."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)
    raw = 1 / (1 + np.exp(-(3 * z + 2)))  # over-confident and shifted
    cal = Calibrator.fit(y[:2000], raw[:2000], "platt")
    assert cal.a == pytest.approx(1 / 3, abs=0.05) and cal.b == pytest.approx(-2 / 3, abs=0.15)
    p = cal.apply(raw[2000:])
    assert expected_calibration_error(y[2000:], raw[2000:]) > 0.15
    assert expected_calibration_error(y[2000:], p) < 0.04
    assert brier_score(y[2000:], p) < brier_score(y[2000:], raw[2000:])
    iso = Calibrator.fit(y[:2000], raw[:2000], "auto")  # 2000 slides: isotonic
    assert iso.method == "isotonic" and expected_calibration_error(y[2000:], iso.apply(raw[2000:])) < 0.05
    back = Calibrator.from_dict(json.loads(json.dumps(iso.to_dict())))
    np.testing.assert_array_equal(back.apply(raw), iso.apply(raw))


def test_platt_prior_shrinks_small_samples_toward_the_balanced_correction():
    """The prior's centre is (1, log(n_pos / n_neg)) for a balanced classifier; it steadies fits on 48 slides."""
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(16), np.zeros(32)].astype(int)
    huge = Calibrator.fit(y, rng.random(48), "platt", balanced=True, prior_slides=1e9)
    assert huge.a == pytest.approx(1.0, abs=1e-4) and huge.b == pytest.approx(np.log(16 / 32), abs=1e-4)
    assert Calibrator.fit(y, rng.random(48), "platt", prior_slides=1e9).b == pytest.approx(0.0, abs=1e-4)
    fits = {0.0: [], 30.0: []}
    for _ in range(100):
        # a balanced classifier's logit: the true log-odds minus log(n_pos / n_neg), plus noise
        z = rng.normal(0, 1.5, 48)
        yy = (rng.random(48) < 1 / (1 + np.exp(-z))).astype(int)
        raw = 1 / (1 + np.exp(-(z - np.log(max(yy.sum(), 1) / max(48 - yy.sum(), 1)))))
        for w in fits:
            c = Calibrator.fit(yy, raw, "platt", balanced=True, prior_slides=w)
            fits[w].append([c.a, c.b])
    plain, shrunk = np.array(fits[0.0]), np.array(fits[30.0])
    assert np.all(shrunk.std(axis=0) < 0.7 * plain.std(axis=0))
    cal = Calibrator.fit(yy, raw, "platt", balanced=True)
    assert cal.prior == (1.0, pytest.approx(np.log(yy.sum() / (48 - yy.sum()))), 30.0)
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back.prior == cal.prior
    np.testing.assert_array_equal(back.apply(raw), cal.apply(raw))
    old = {k: v for k, v in cal.to_dict().items() if k != "prior"}  # a bundle from before the prior
    assert Calibrator.from_dict(old).prior is None


def test_cross_validated_calibration_on_tables_with_signal():
    tables, y = feature_tables(60, 6, 5)
    rep = cross_validate(tables, y, config=TrainConfig(recipe="mean-ks-logreg", calibration="platt", cv=5,
                                                        n_bootstrap=200))
    assert rep.calibration == "platt" and rep.ece <= 0.15 and rep.ece_uncalibrated is not None


def test_operating_points_match_a_hand_computation():
    y = np.array([0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    p = np.array([.05, .1, .15, .2, .3, .35, .4, .45, .6, .7, .8, .9])
    pts = operating_points(y, p)
    # rule-out: the highest threshold keeping >= 90% of the 5 positives, i.e. all 5: t = 0.4
    ro = pts["rule_out"]
    assert ro["threshold"] == 0.4 and (ro["tp"], ro["fn"], ro["fp"], ro["tn"]) == (5, 0, 1, 6)
    assert ro["sensitivity"] == 1.0 and ro["specificity"] == pytest.approx(6 / 7)
    assert ro["ppv"] == pytest.approx(5 / 6) and ro["npv"] == 1.0
    # rule-in: the lowest threshold with >= 90% of the 7 negatives below it, i.e. all 7: t = 0.6
    ri = pts["rule_in"]
    assert ri["threshold"] == 0.6 and (ri["tp"], ri["fn"], ri["fp"], ri["tn"]) == (4, 1, 0, 7)
    assert ri["sensitivity"] == pytest.approx(0.8) and ri["npv"] == pytest.approx(7 / 8)
    # Wilson 95% interval of 4/5 by hand: centre (0.8 + z²/10) / (1 + z²/5), half z sqrt(.16/5 + z²/100) / (1 + z²/5)
    z = 1.959963984540054
    den = 1 + z * z / 5
    centre, half = (0.8 + z * z / 10) / den, z * np.sqrt(0.16 / 5 + z * z / 100) / den
    assert ri["sensitivity_ci"] == pytest.approx([centre - half, centre + half])
    assert wilson_ci(4, 5)[0] == pytest.approx(0.3755, abs=1e-4) and wilson_ci(0, 0) != wilson_ci(0, 0)
    assert confusion_at(y, p, 0.6)["ppv"] == 1.0


def test_bundles_from_before_still_load_and_predict_the_same(tmp_path):
    """The demo model as shipped before issue 15: no calibrator, no operating points, same probabilities."""
    b = ModelBundle.load(OLD_DEMO)
    assert b.calibrator is None and b.operating_points is None
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(1.0, 0.3, size=(12, len(b.feature_names))), columns=b.feature_names)
    df.insert(0, "slide_id", "x")
    p = b.predict_proba([df])
    np.testing.assert_array_equal(p, b.classifier.predict_proba(b.design([df])))
    assert np.array_equal(p, b.predict_proba([df], calibrated=False))
    assert "cross-validated ROC-AUC" in evidence_text(b, float(p[0]))
    e = evidence(b, float(p[0]))
    assert "rule_out" not in e and e["n_slides"] == 48
    shutil.copytree(OLD_DEMO, tmp_path / "old")  # re-saving keeps the prediction
    b.save(tmp_path / "resaved")
    np.testing.assert_array_equal(ModelBundle.load(tmp_path / "resaved").predict_proba([df]), p)


def test_shipped_demo_model_says_it_is_a_demo():
    from importlib import resources

    b = ModelBundle.load(Path(str(resources.files("napari_lnm") / "data" / "demo_model")))
    text = evidence_text(b, 0.5)
    assert text.splitlines()[0] == "demo model trained on synthetic slides — not for diagnosis"
    assert b.calibrator is not None and b.operating_points is not None and "threshold" in text


def test_train_cli_defaults_to_auto_and_flags_fix_the_recipe():
    import argparse

    from napari_lnm.cli.train import RECIPE_FLAGS, resolve_recipe

    blank = dict.fromkeys(RECIPE_FLAGS)
    assert resolve_recipe(argparse.Namespace(recipe=None, **blank)) == "auto"
    args = argparse.Namespace(recipe=None, **{**blank, "classifier": "logreg"})
    assert resolve_recipe(args) == "fixed" and args.fusion == "histogram" and args.bins == 5
    assert resolve_recipe(argparse.Namespace(recipe="seed", **blank)) == "seed"


def test_subtype_routing_chosen_by_inner_cv_and_reported():
    """Subtypes that change nothing: routing by inner CV, within-subtype AUCs next to the pooled ones."""
    tables, y = feature_tables(48, 6, 7)
    st = np.array(["A", "A", "B", "B"] * 12)  # 12 of each class in each subtype
    cfg = TrainConfig(recipe="auto", grid=("mean-ks-logreg",), calibration="platt", cv=3, per_subtype=True,
                      min_subtype_slides=10, n_bootstrap=200)
    b = train_model(tables, y, cfg, subtypes=st)
    for name in ("A", "B"):
        how = b.subtype_routing[name]
        assert how.startswith(("pooled (inner-CV AUC", "own model (24 slides) (inner-CV AUC")), how
        assert (name in b.subtype_models) == how.startswith("own")
    rep = cross_validate(tables, y, config=cfg, subtypes=st)
    assert set(rep.subtype_aucs) == {"A", "B"} and rep.subtype_aucs["A"]["n"] == 24
    assert "subtype A (24 slides): routed ROC-AUC" in rep.summary() and rep.auc_pooled is not None

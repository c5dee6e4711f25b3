"""The recipe choice's variance: repeated inner CV, the one-standard-error rule, and the ECE noise floor (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lnm import recipe as recipes
from napari_lnm.calibration import Calibrator, ece_noise_floor, expected_calibration_error
from napari_lnm.model import InnerCV, TrainConfig, choose_recipe, cross_validate, train_model

from _synthetic_tables import feature_tables

NAMES = ["seed", "mean-none-logreg", "mean-ks-logreg", "mean-none-enet"]


def _inner(aucs: dict[str, list[float]], folds: int = 3) -> InnerCV:
    return InnerCV({n: np.asarray(a, dtype=float) for n, a in aucs.items()},
                   {n: np.zeros((len(a) // folds, 4)) for n, a in aucs.items()}, folds)


def test_simplicity_order_covers_the_grid_and_puts_the_methods_own_recipe_last():
    assert sorted(recipes.SIMPLEST_FIRST) == sorted(recipes.NAMES)
    assert recipes.SIMPLEST_FIRST[-1] == "seed" and recipes.simplicity_rank("not-in-the-grid") == len(recipes.NAMES)
    assert TrainConfig().choice == recipes.ONE_SE and TrainConfig().inner_repeats == 3


def test_one_se_rule_takes_the_simpler_recipe_on_a_tie_within_one_se():
    inner = _inner({"seed": [0.90, 0.70, 0.80], "mean-none-logreg": [0.60, 0.60, 0.60],
                    "mean-ks-logreg": [0.80, 0.76, 0.78], "mean-none-enet": [0.60, 0.62, 0.61]})
    se = float(np.std([0.90, 0.70, 0.80], ddof=1) / np.sqrt(3))
    assert inner.se("seed") == pytest.approx(se)  # 0.058: mean-ks-logreg (0.78) is within it, the others are not
    assert choose_recipe(inner, NAMES, recipes.BEST) == ("seed", {"recipe_rule": "best"})
    name, how = choose_recipe(inner, NAMES, recipes.ONE_SE)
    assert name == "mean-ks-logreg" and how == {"recipe_rule": "1se", "recipe_best": "seed",
                                               "recipe_best_se": round(se, 4)}
    tie = _inner({n: [0.8, 0.7, 0.9] for n in NAMES})  # all equal: best keeps the grid's first, 1se the simplest
    assert choose_recipe(tie, NAMES, recipes.BEST)[0] == "seed"
    assert choose_recipe(tie, NAMES, recipes.ONE_SE)[0] == "mean-none-enet"


def test_one_se_rule_keeps_a_recipe_that_is_clearly_better():
    inner = _inner({"seed": [0.95, 0.94, 0.96, 0.95, 0.94, 0.96], "mean-none-logreg": [0.7] * 6,
                    "mean-ks-logreg": [0.8, 0.82, 0.81, 0.8, 0.82, 0.81], "mean-none-enet": [0.6] * 6})
    assert inner.se("seed") == pytest.approx(np.std([0.95, 0.94, 0.96] * 2, ddof=1) / np.sqrt(3))
    assert choose_recipe(inner, NAMES, recipes.ONE_SE)[0] == "seed"
    nan = _inner({"seed": [np.nan] * 3, "mean-none-logreg": [0.7, np.nan, 0.8], "mean-ks-logreg": [np.nan] * 3,
                  "mean-none-enet": [np.nan] * 3})
    assert choose_recipe(nan, NAMES, recipes.ONE_SE)[0] == "mean-none-logreg"  # NaN scores never win
    with pytest.raises(ValueError, match="unknown recipe choice rule"):
        choose_recipe(inner, NAMES, "worst")


def test_repeated_inner_cv_recorded_and_calibration_counts_slides_not_pairs():
    """3 inner repeats stack 3 inner out-of-fold probabilities per slide; 'auto' still means Platt below 300 slides."""
    tables, y = feature_tables(104, 4, 11)
    b = train_model(tables, y, TrainConfig(recipe="mean-ks-logreg", calibration="auto", n_bootstrap=50))
    assert b.calibrator.method == "platt" and b.calibrator.n == 104 and b.config["inner_repeats"] == 3
    grid = ("seed", "mean-none-logreg", "mean-ks-logreg")
    cfg = TrainConfig(recipe="auto", grid=grid, calibration="platt", inner_repeats=2, n_bootstrap=50)
    b = train_model(tables[:40], y[:40], cfg)
    assert b.config["recipe_rule"] == "1se" and b.config["recipe_best"] in grid and b.config["inner_repeats"] == 2
    assert b.config["recipe"] in grid and b.config["recipe_best_se"] >= 0
    again = train_model(tables[:40], y[:40], cfg)
    np.testing.assert_array_equal(again.predict_proba(tables[40:50]), b.predict_proba(tables[40:50]))
    one = train_model(tables[:40], y[:40], TrainConfig(recipe="auto", grid=grid, calibration="platt",
                                                       inner_repeats=1, choice="best", n_bootstrap=50))
    assert one.config["inner_repeats"] == 1 and one.config["recipe_rule"] == "best"
    assert one.config["recipe"] == max(one.config["recipe_scores"], key=lambda n: one.config["recipe_scores"][n])


def test_platt_on_stacked_repeats_counts_slides():
    """Three copies of the same pairs with slides=n fit what one copy fits; counted as pairs they fit sharper."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 48)
    y = (rng.random(48) < 1 / (1 + np.exp(-z))).astype(int)
    p = 1 / (1 + np.exp(-z))
    one = Calibrator.fit(y, p, "platt")
    three = Calibrator.fit(np.tile(y, 3), np.tile(p, 3), "platt", slides=48)
    assert three.a == pytest.approx(one.a, rel=1e-4) and three.b == pytest.approx(one.b, abs=1e-4)
    assert three.n == 48 and Calibrator.fit(np.tile(y, 3), np.tile(p, 3), "platt").a > one.a
    assert Calibrator.fit(np.tile(y, 7), np.tile(p, 7), "auto", slides=48).method == "platt"  # 336 pairs, 48 slides


def test_random_labels_stay_at_chance_with_the_full_grid_and_the_one_se_rule():
    aucs = []
    for seed in range(3):
        tables, _ = feature_tables(36, 4, 20 + seed)
        y = np.random.default_rng(seed).permutation(np.arange(36) % 2)
        rep = cross_validate(tables, y, config=TrainConfig(recipe="auto", calibration="auto", cv=3, seed=seed,
                                                            n_bootstrap=100))
        assert len(rep.recipes) == 3 and rep.ece_floor is not None
        aucs.append(rep.auc)
    assert abs(float(np.mean(aucs)) - 0.5) < 0.12, aucs


def test_ece_noise_floor_is_what_perfect_calibration_scores():
    rng = np.random.default_rng(1)
    p = rng.beta(1.2, 2.0, 60)
    floor = ece_noise_floor(p)
    assert floor == ece_noise_floor(p) and 0.07 < floor < 0.16  # seeded; about 0.1 on 60 slides in 10 bins
    observed = [expected_calibration_error((rng.random(60) < p).astype(int), p) for _ in range(300)]
    assert abs(float(np.mean(observed)) - floor) < 0.01  # an independent draw of labels from p averages to it
    assert ece_noise_floor(rng.beta(1.2, 2.0, 600)) < floor / 2  # it shrinks like 1/sqrt(slides)
    assert ece_noise_floor(np.r_[np.zeros(30), np.ones(30)]) == 0.0 and np.isnan(ece_noise_floor([]))


def test_recipe_lines_name_the_one_se_choice():
    from types import SimpleNamespace

    from napari_lnm.cli.train import recipe_lines

    rep = SimpleNamespace(recipe_counts=lambda: {"mean-none-enet": 5}, operating_points=None)
    b = SimpleNamespace(config={"recipe": "mean-none-enet", "recipe_best": "seed", "recipe_best_se": 0.041,
                                "recipe_scores": {"mean-none-enet": 0.81, "seed": 0.83}})
    line = recipe_lines(rep, b)[1]
    assert line.startswith("final model recipe: mean-none-enet (mean fusion, no selection, logreg")
    assert line.endswith("inner-CV AUC 0.810; the simplest within one SE (0.041) of the best, seed 0.830)")

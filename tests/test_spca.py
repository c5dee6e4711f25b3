"""Supervised PCA centred within subtype: the classifier, its recipe in the grid, and prediction with a subtype."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_lnm import recipe as recipes
from napari_lnm.classifiers import load_classifier, make_classifier
from napari_lnm.errors import CohortError
from napari_lnm.model import ModelBundle, TrainConfig, cross_validate, roc_auc, train_model

from _synthetic_tables import feature_tables


def _stratified(n: int = 90, q: int = 30, seed: int = 0):
    """(X with 3 one-hot strata columns last, y, stratum, latent): 10 columns follow a latent severity, every
    column also shifts by a large per-stratum offset that has nothing to do with the label."""
    rng = np.random.default_rng(seed)
    st = rng.integers(0, 3, n)
    sev = rng.normal(size=n)
    y = (sev + rng.normal(0, 0.5, n) > 0).astype(int)
    x = rng.normal(size=(n, q))
    x[:, :10] += 0.6 * sev[:, None]
    x += 3.0 * rng.normal(size=(3, q))[st]
    return np.c_[x, np.eye(3)[st]], y, st, sev


def _direct_logit(c, X, strata):
    """The fitted chain computed step by step: standardise, centre within stratum, rescale, project, logistic."""
    z = c._z(X)
    free = np.setdiff1d(np.arange(X.shape[1]), strata)
    st = np.argmax(X[:, strata], axis=1)
    mu = np.array([z[st == s][:, free].mean(0) for s in range(len(strata))])
    zc = z[:, free] - mu[st]
    zc /= zc.std(0)
    sub = zc[:, np.searchsorted(free, c.kept_)]
    v = np.linalg.svd(sub - sub.mean(0), full_matrices=False)[2][:c.components].T
    return c._sk.decision_function(sub @ v)


def test_spca_is_one_linear_model_equal_to_its_steps(tmp_path):
    X, y, _, _ = _stratified()
    strata = (30, 31, 32)
    c = make_classifier("spca", params={"columns": 10, "components": 1, "strata": strata}).fit(X, y)
    logit = c._z(X) @ c.coef_ + c.intercept_[0]
    np.testing.assert_allclose(logit, _direct_logit(c, X, list(strata)), atol=1e-10)
    np.testing.assert_allclose(c.contributions(X).sum(axis=1), logit, atol=1e-10)
    assert np.count_nonzero(c.coef_[:30]) == 10  # the chosen columns; the strata carry the centring
    assert np.all(c.importance()[0][30:] == 0) and np.count_nonzero(c.importance()[0]) == 10
    meta = c.save(tmp_path)
    assert meta["kind"] == "spca" and meta["strata"] == [30, 31, 32] and meta["columns"] == 10
    back = load_classifier(tmp_path, meta, n_inputs=33)
    np.testing.assert_array_equal(back.predict_proba(X), c.predict_proba(X))


def test_blend_is_the_sum_of_its_parts_in_sd_units(tmp_path):
    """blend = elastic net (non-stratum columns) / its SD + supervised PCA within strata / its SD, shifted."""
    from napari_lnm.classifiers import LogisticClassifier, SupervisedPCAClassifier

    X, y, _, _ = _stratified(seed=2)
    c = make_classifier("blend", params={"strata": (30, 31, 32)}).fit(X, y)
    net = LogisticClassifier(0, C=0.1, penalty="elasticnet", l1_ratio=0.5).fit(X[:, :30], y)
    pca = SupervisedPCAClassifier(0, columns=20, components=1, C=0.03, strata=(30, 31, 32)).fit(X, y)
    z = c._z(X)
    a = z[:, :30] @ net.coef_ + net.intercept_[0]
    b = z @ pca.coef_ + pca.intercept_[0]
    logit = z @ c.coef_ + c.intercept_[0]
    blended = a / a.std() + b / b.std()
    np.testing.assert_allclose(logit - blended, (logit - blended)[0], atol=1e-9)  # the same score, shifted
    assert np.all(c.importance()[0][30:] == 0)
    meta = c.save(tmp_path)
    assert meta["kind"] == "blend" and meta["spca_C"] == 0.03 and meta["l1_ratio"] == 0.5
    np.testing.assert_array_equal(load_classifier(tmp_path, meta, n_inputs=33).predict_proba(X), c.predict_proba(X))


def test_centring_within_strata_removes_a_shift_of_a_whole_stratum():
    """Adding a constant to every column of one stratum's rows changes nothing once centred within strata."""
    X, y, st, sev = _stratified(seed=1)
    shifted = X.copy()
    shifted[st == 1, :30] += 5.0
    fit = lambda A, strata: make_classifier(  # noqa: E731
        "spca", params={"columns": 10, "components": 1, "strata": strata}).fit(A, y)
    a, b = fit(X, (30, 31, 32)), fit(shifted, (30, 31, 32))
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(shifted), atol=1e-8)
    # the centring is what finds the signal under the strata's offsets
    plain = fit(X[:, :30], ())
    assert roc_auc(y, a.predict_proba(X)) > roc_auc(y, plain.predict_proba(X[:, :30])) + 0.05
    assert np.corrcoef(a._z(X) @ a.coef_, sev)[0, 1] > 0.7


def _subtyped_tables(n_slides: int = 40, seed: int = 3):
    tables, y = feature_tables(n_slides, 4, seed)
    st = np.array([f"CMS{(i // 2) % 4 + 1}" for i in range(n_slides)])  # both labels in every subtype
    return tables, y, st


def test_subtype_recipes_need_subtypes_and_supervised_pca_alone_is_opt_in():
    """The blend is in the default grid but a candidate only when the slides have subtypes; supervised PCA
    alone is opt-in (a grid must name it)."""
    tables, y, st = _subtyped_tables()
    assert "mean-blend-subtype" in recipes.AUTO_NAMES and "mean-spca-subtype" not in recipes.AUTO_NAMES
    assert recipes.SIMPLEST_FIRST[0] == "mean-blend-subtype"
    cfg = TrainConfig(recipe="auto", calibration="auto", inner_repeats=1, n_bootstrap=50)
    without = train_model(tables, y, cfg)
    assert "mean-blend-subtype" not in without.config["recipe_scores"] and not without.needs_subtype
    default = train_model(tables, y, cfg, subtypes=st)
    assert "mean-blend-subtype" in default.config["recipe_scores"]
    assert "mean-spca-subtype" not in default.config["recipe_scores"]
    named = TrainConfig(recipe="auto", grid=("mean-none-enet", "mean-spca-subtype"), calibration="auto",
                        inner_repeats=1, n_bootstrap=50)
    assert "mean-spca-subtype" in train_model(tables, y, named, subtypes=st).config["recipe_scores"]
    with pytest.raises(CohortError, match="subtype"):  # fixing the recipe by hand needs the column
        train_model(tables, y, TrainConfig(recipe="mean-spca-subtype"))


def test_subtype_recipe_bundle_round_trip_and_prediction_with_a_subtype(tmp_path):
    tables, y, st = _subtyped_tables()
    b = train_model(tables, y, TrainConfig(recipe="mean-spca-subtype", calibration="auto", n_bootstrap=50),
                    subtypes=st)
    assert b.needs_subtype and b.clinical.columns == ["subtype"] and b.config["strata"] == "subtype"
    b.save(tmp_path / "m")
    back = ModelBundle.load(tmp_path / "m")
    assert back.needs_subtype
    one = [tables[2]]
    by_column = back.predict_proba(one, pd.DataFrame({"subtype": ["CMS3"]}))[0]
    view, used = back.for_subtype("CMS3")  # e.g. the subtype model's vote
    assert used == "pooled" and view.predict_proba(one)[0] == pytest.approx(by_column, abs=1e-12)
    assert back.predict_proba(one, pd.DataFrame({"subtype": ["CMS3"]}))[0] == b.predict_proba(
        one, pd.DataFrame({"subtype": ["CMS3"]}))[0]
    # no subtype: centred on the training mean, a defined probability (no level)
    assert 0.0 < back.predict_proba(one)[0] < 1.0
    assert back.for_subtype(None)[0] is back


def test_cross_validation_gives_every_test_slide_its_own_subtype():
    """Out-of-fold probabilities of the subtype recipe use each test slide's subtype: shifting one subtype's
    features by a constant (a subtype effect with no label information) leaves them unchanged."""
    tables, y, st = _subtyped_tables(48, 5)
    shifted = [t.copy() for t in tables]
    cols = [c for c in tables[0].columns if c.startswith(("nucleus.", "graph.", "tile.", "cells."))]
    for i in np.flatnonzero(st == "CMS2"):
        shifted[i][cols] = shifted[i][cols] + 7.0
    cfg = TrainConfig(recipe="mean-spca-subtype", n_bootstrap=50)
    a = cross_validate(tables, y, config=cfg, subtypes=st)
    b = cross_validate(shifted, y, config=cfg, subtypes=st)
    np.testing.assert_allclose(a.oof, b.oof, atol=1e-6)
    assert a.auc > 0.75


def test_predict_slide_gives_the_voted_subtype_to_a_subtype_centred_model(tmp_path):
    """predict_slide with a subtype CNN: the vote is the subtype the model centres within; a clinical table
    without a subtype column is then enough (no error for the missing column)."""
    pytest.importorskip("torch")
    from test_pipeline import make_tiny_slide

    from napari_lnm.features import feature_names
    from napari_lnm.pipeline import predict_slide
    from napari_lnm.subtype import SubtypeModel

    names = [n for n in feature_names() if not n.startswith("cells.")]
    tables, y = feature_tables(32, 4, 7)
    tables = [t[["slide_id", "x", "y", "size", "tissue_fraction", *names]].assign(size=512) for t in tables]
    st = [f"CMS{(i // 2) % 4 + 1}" for i in range(32)]
    cfg = TrainConfig(recipe="mean-spca-subtype", n_bootstrap=50,
                      tiling={"magnification": 20.0, "tile_size": 512, "min_tissue": 0.5})
    b = train_model(tables, y, cfg, subtypes=st, feature_names=names)
    b.save(tmp_path / "m")
    slide = make_tiny_slide(tmp_path / "tiny.tif")
    sm = SubtypeModel.new(arch="small", tile_size=512, seed=0, device="cpu")
    pred = predict_slide(slide, tmp_path / "m", subtype_model=sm)
    voted = pred.subtype["subtype"]
    assert pred.subtype["model_used"] == "pooled" and f"clinical.subtype={voted}" in set(pred.contributions["element"])
    expect = b.predict_proba(pred.tiles[["slide_id", *names]], pd.DataFrame({"subtype": [voted]}))[0]
    assert pred.probability == pytest.approx(expect)

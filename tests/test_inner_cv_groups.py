"""Inner cross-validation (XGBoost tree count, SVM Platt scaling) never splits a patient's slides across a fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from napari_lnm import classifiers
from napari_lnm.classifiers import (
    SVMClassifier,
    XGBoostClassifier,
    inner_folds,
    make_classifier,
)
from napari_lnm.model import ModelBundle, TrainConfig, cross_validate, train_model


def patient_cohort(n_patients=12, slides_per_patient=3, n_cols=5, seed=0):
    """X (slides, cols), y, patient ids: each patient's slides are near-identical copies of one patient vector."""
    rng = np.random.default_rng(seed)
    y_pat = np.arange(n_patients) % 2
    base = rng.normal(size=(n_patients, n_cols)) + 0.3 * y_pat[:, None]
    rows = np.repeat(np.arange(n_patients), slides_per_patient)
    X = base[rows] + rng.normal(scale=1e-3, size=(len(rows), n_cols))
    groups = np.array([f"P{p:02d}" for p in rows])
    return X.astype(np.float32), y_pat[rows], groups


def _assert_patient_disjoint(splits, y, groups):
    seen = np.zeros(len(y), dtype=int)
    for tr, te in splits:
        assert not set(groups[tr]) & set(groups[te]), "a patient sits on both sides of an inner fold"
        assert set(y[tr]) == {0, 1} and set(y[te]) == {0, 1}
        seen[te] += 1
    np.testing.assert_array_equal(seen, 1)  # every slide is tested exactly once


def test_ungrouped_inner_folds_leak_patients():
    """The old behaviour (slide-stratified folds) does split patients: the problem this module fixes."""
    X, y, g = patient_cohort()
    old = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    assert any(set(g[tr]) & set(g[te]) for tr, te in old)
    folds, grouped = inner_folds(y, None, wanted=3, seed=0)
    assert not grouped
    for (a, b), (c, d) in zip(folds, old):  # without groups: exactly xgboost.cv(stratified=True)'s folds
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


@pytest.mark.parametrize("n_patients,wanted,k", [(12, 3, 3), (12, 5, 5), (4, 3, 2), (6, 5, 3)])
def test_grouped_inner_folds_keep_patients_together(n_patients, wanted, k):
    _, y, g = patient_cohort(n_patients=n_patients)
    for seed in range(5):
        folds, grouped = inner_folds(y, g, wanted=wanted, seed=seed)
        assert grouped and len(folds) == k  # k <= patients of the rarer class, so small cohorts stay valid
        _assert_patient_disjoint(folds, y, g)
        again, _ = inner_folds(y, g, wanted=wanted, seed=seed)
        for (a, b), (c, d) in zip(folds, again):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)


def test_inner_folds_fallbacks():
    _, y, _ = patient_cohort()
    unique = np.array([f"S{i}" for i in range(len(y))])  # every patient has one slide: same as no groups
    for groups in (unique, list(unique), pd.Series(unique)):
        folds, grouped = inner_folds(y, groups, seed=3)
        ref, _ = inner_folds(y, None, seed=3)
        assert not grouped
        assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, ref))
    # a single positive patient (3 slides): no grouped split can have positives on both sides
    y1 = np.array([0] * 9 + [1] * 3)
    g1 = np.array(["A", "A", "B", "B", "C", "C", "D", "D", "E", "P", "P", "P"])
    folds, grouped = inner_folds(y1, g1, seed=0)
    assert not grouped and len(folds) == 3
    with pytest.raises(ValueError, match="groups"):
        inner_folds(y1, g1[:5])


def test_xgboost_fit_with_groups_uses_grouped_folds_and_is_deterministic(monkeypatch):
    import xgboost

    X, y, g = patient_cohort(n_patients=14, seed=1)
    seen = []
    real_cv = xgboost.cv

    def spy(*args, **kwargs):
        seen.append(kwargs.get("folds"))
        return real_cv(*args, **kwargs)

    monkeypatch.setattr(xgboost, "cv", spy)
    a = XGBoostClassifier(seed=5).fit(X, y, groups=g)
    assert a.inner_grouped and seen[-1] is not None
    _assert_patient_disjoint(seen[-1], y, g)
    b = XGBoostClassifier(seed=5).fit(X, y, groups=g)
    assert a.n_rounds == b.n_rounds
    assert bytes(a.booster.save_raw("ubj")) == bytes(b.booster.save_raw("ubj"))
    c = XGBoostClassifier(seed=5).fit(X, y)
    assert not c.inner_grouped
    assert a.predict_proba(X).shape == c.predict_proba(X).shape == (len(y),)


def test_svm_platt_folds_grouped_and_every_classifier_accepts_groups():
    X, y, g = patient_cohort(n_patients=10, seed=2)
    s1 = SVMClassifier(seed=1).fit(X, y, groups=g)
    s2 = SVMClassifier(seed=1).fit(X, y, groups=g)
    assert s1.inner_grouped
    np.testing.assert_array_equal(s1.platt_, s2.platt_)
    # the Platt fit differs from the leaky one: held-out decision values no longer come from a patient's twin
    assert not np.allclose(s1.platt_, SVMClassifier(seed=1).fit(X, y).platt_)
    for kind in classifiers.CLASSIFIERS:
        p = make_classifier(kind, seed=0).fit(X, y, groups=g).predict_proba(X)
        assert p.shape == (len(y),) and np.all((p >= 0) & (p <= 1))


def _tables(X, ids):
    """One tile table per slide whose tiles scatter around that slide's row of X (features nucleus.f<k>_mean)."""
    rng = np.random.default_rng(0)
    out = []
    for i, (row, sid) in enumerate(zip(X, ids)):
        nt = 20
        d = {"slide_id": sid, "x": np.arange(nt) * 512, "y": 0, "size": 512, "tissue_fraction": 1.0}
        for k, v in enumerate(row):
            d[f"nucleus.f{k}_mean"] = np.exp(v + rng.normal(scale=0.2, size=nt))
        out.append(pd.DataFrame(d))
    return out


def test_train_and_nested_cv_pass_patient_ids_to_the_classifier(tmp_path, monkeypatch):
    X, y, g = patient_cohort(n_patients=16, seed=3)
    tabs = _tables(X, [f"s{i:02d}" for i in range(len(y))])
    cfg = TrainConfig(cv=3, seed=2, n_bootstrap=50, test="none")
    calls = []
    real_fit = XGBoostClassifier.fit

    def spy(self, X_, y_, groups=None):
        calls.append(None if groups is None else np.asarray(groups).copy())
        return real_fit(self, X_, y_, groups=groups)

    monkeypatch.setattr(XGBoostClassifier, "fit", spy)
    rep = cross_validate(tabs, y, groups=g, config=cfg)
    assert rep.grouped and len(calls) == 3
    for k, gr in enumerate(calls):
        assert gr is not None
        np.testing.assert_array_equal(gr, g[rep.fold != k])  # the training slides' patient ids, in order
    calls.clear()
    b1 = train_model(tabs, y, cfg, groups=g)
    np.testing.assert_array_equal(calls[0], g)
    assert b1.config["inner_cv"] == "grouped by patient"
    b2 = train_model(tabs, y, cfg, groups=list(g))
    b1.save(tmp_path / "a")
    b2.save(tmp_path / "b")
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    b3 = ModelBundle.load(tmp_path / "a")
    np.testing.assert_array_equal(b3.predict_proba(tabs), b1.predict_proba(tabs))
    assert "inner_cv" not in train_model(tabs, y, cfg).config  # no groups: config as before

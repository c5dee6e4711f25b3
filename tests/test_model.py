"""Patient-level model: nested CV honesty, planted signal, bundle round-trip, determinism, errors, routing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from napari_lnm import __version__
from napari_lnm.classifiers import make_classifier
from napari_lnm.errors import CohortError, ModelError
from napari_lnm.fusion import HistogramFusion
from napari_lnm.model import (SCHEMA_VERSION, ModelBundle, TrainConfig, bootstrap_auc_ci, cross_validate,
                              roc_auc, train_model)
from napari_lnm.selection import select_elements


def cohort(n=40, n_feat=6, informative=(0, 1), shift=0.5, seed=0, n_tiles=(20, 50), labels=None):
    """Random tile tables; in metastatic slides the informative features are scaled by (1 + shift)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2) if labels is None else np.asarray(labels)
    tabs = []
    for i in range(n):
        nt = int(rng.integers(*n_tiles))
        d = {"slide_id": f"s{i:03d}", "x": np.arange(nt) * 512, "y": np.zeros(nt, int), "size": 512,
             "tissue_fraction": 1.0}
        V = rng.lognormal(0.0, 0.5, (nt, n_feat))
        for t in range(n_feat):
            v = V[:, t]
            if t in informative and y[i] == 1:
                v = v * (1.0 + shift)
            d[f"nucleus.f{t}_mean"] = v
        tabs.append(pd.DataFrame(d))
    return tabs, y


FAST = dict(n_bootstrap=200)


# ---------------------------------------------------------------- nested CV
def _naive_auc(tabs, y, classifier, seed):
    """The leaky protocol: fit bins and select elements on ALL slides, then cross-validate only the classifier."""
    feats = [c for c in tabs[0].columns if c.startswith("nucleus.")]
    F = HistogramFusion().fit(tabs, feats).transform(tabs)
    X = select_elements(F, y).apply(F)
    oof = np.zeros(len(y))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
        oof[te] = make_classifier(classifier, seed=seed).fit(X[tr], y[tr]).predict_proba(X[te])
    return roc_auc(y, oof)


@pytest.mark.parametrize("classifier", ["logreg", "xgboost"])
def test_nested_cv_does_not_leak_selection(classifier):
    naive, nested = [], []
    for seed in range(5):
        tabs, y = cohort(n=40, n_feat=60, informative=(), seed=100 + seed, n_tiles=(30, 31))  # labels are noise
        naive.append(_naive_auc(tabs, y, classifier, seed))
        nested.append(cross_validate(tabs, y, config=TrainConfig(classifier=classifier, seed=seed, **FAST)).auc)
    naive, nested = np.mean(naive), np.mean(nested)
    assert naive > 0.7, naive  # selecting on all slides manufactures a signal from noise
    assert abs(nested - 0.5) < 0.15, nested  # the nested protocol does not
    assert naive - nested > 0.2


def test_cv_folds_only_see_training_slides(monkeypatch):
    """Every fit inside cross_validate (fusion, selection, classifier) sees only that fold's training slides."""
    import napari_lnm.model as M

    tabs, y = cohort(n=20)
    seen = []
    orig = M.make_fusion

    def spy(*a, **k):
        f = orig(*a, **k)
        fit = f.fit

        def fit_spy(tables, names):
            seen.append({t["slide_id"].iloc[0] for t in tables})
            return fit(tables, names)

        f.fit = fit_spy
        return f

    monkeypatch.setattr(M, "make_fusion", spy)
    rep = cross_validate(tabs, y, config=TrainConfig(classifier="logreg", cv=4, **FAST))
    assert len(seen) == 4
    for k, ids in enumerate(seen):
        test_ids = {rep.slide_ids[i] for i in np.flatnonzero(rep.fold == k)}
        assert ids.isdisjoint(test_ids) and len(ids) + len(test_ids) == 20


def test_planted_signal_is_found():
    tabs, y = cohort(n=40, shift=1.0, seed=1)
    rep = cross_validate(tabs, y, config=TrainConfig(seed=0, **FAST))
    assert rep.auc > 0.9
    assert rep.ci[0] <= rep.auc <= rep.ci[1]
    assert np.all(np.isfinite(rep.oof)) and set(rep.fold.tolist()) == set(range(5))
    b = train_model(tabs, y, TrainConfig(seed=0))
    top = b.importance.sort_values("gain", ascending=False).iloc[0]
    assert top["feature"] in ("nucleus.f0_mean", "nucleus.f1_mean")
    assert set(b.selection.names) and all(n.split("|")[0] in ("nucleus.f0_mean", "nucleus.f1_mean")
                                          for n in b.selection.names)
    # the last bin (largest values) of an informative feature is "higher in metastatic"
    imp = b.importance.set_index("element")
    assert imp.loc["nucleus.f0_mean|bin5", "description"] == "nucleus.f0_mean, 5th bin, higher in metastatic"
    assert imp.loc["nucleus.f0_mean|bin1", "direction"] == "lower in metastatic"


def test_patient_grouped_folds():
    tabs, y = cohort(n=40)
    y = np.repeat(y[:20], 2)  # two slides per patient, same label
    groups = np.repeat([f"p{i}" for i in range(20)], 2)
    rep = cross_validate(tabs, y, groups, TrainConfig(classifier="logreg", **FAST))
    assert rep.grouped
    for g in np.unique(groups):
        assert len(set(rep.fold[groups == g].tolist())) == 1


def test_bootstrap_ci():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.7, 0.5, 0.9])
    auc, lo, hi = bootstrap_auc_ci(y, p, 500, seed=1)
    from sklearn.metrics import roc_auc_score

    assert auc == pytest.approx(roc_auc_score(y, p))
    assert lo < auc <= hi <= 1.0
    assert bootstrap_auc_ci(y, p, 500, seed=1) == (auc, lo, hi)


# ---------------------------------------------------------------- bundle
@pytest.mark.parametrize("classifier", ["xgboost", "logreg", "svm", "mlp"])
def test_bundle_round_trip(tmp_path, classifier):
    tabs, y = cohort(n=30, shift=0.6, seed=2)
    b = train_model(tabs, y, TrainConfig(classifier=classifier, seed=3))
    p = b.predict_proba(tabs)
    assert p.shape == (30,) and np.all((p >= 0) & (p <= 1))
    clf = b.classifier
    if classifier != "xgboost":  # numpy inference == the fitted sklearn model
        Z = clf._z(b.design(tabs))
        if classifier == "svm":
            np.testing.assert_allclose(clf.decision_function(Z), clf._sk.decision_function(Z), atol=1e-9)
        else:
            np.testing.assert_allclose(p, clf._sk.predict_proba(Z)[:, 1], atol=1e-9)
    b.save(tmp_path / "m")
    files = {f.name for f in (tmp_path / "m").iterdir()}
    assert "bundle.json" in files and ("model.ubj" if classifier == "xgboost" else "params.npz") in files
    b2 = ModelBundle.load(tmp_path / "m")
    np.testing.assert_allclose(b2.predict_proba(tabs), p, rtol=0, atol=1e-12)
    assert b2.feature_names == b.feature_names and b2.selection.names == b.selection.names
    c = b2.contributions(tabs[0])
    assert list(c.columns[:5]) == ["element", "feature", "bin", "bin_lo", "bin_hi"]
    assert {"value", "contribution", "description"} <= set(c.columns)
    assert sorted(c["element"]) == sorted(b.selection.names)
    assert np.all(np.diff(np.abs(c["contribution"].to_numpy())) <= 1e-12)
    assert c.attrs["probability"] == pytest.approx(p[0])
    if classifier in ("xgboost", "logreg"):  # additive explanations
        assert c["contribution"].sum() + c.attrs["bias"] == pytest.approx(c.attrs["logit"], abs=1e-4)
    np.testing.assert_allclose(b2.fuse(tabs[0])[b.selection.indices], c.set_index("element").loc[
        b.selection.names, "value"].to_numpy())


def test_same_seed_identical_files(tmp_path):
    tabs, y = cohort(n=30, seed=4)
    cfg = TrainConfig(seed=7, cv=3, **FAST)
    out = []
    for k in range(2):
        b = train_model(tabs, y, cfg)
        b.cv_report = cross_validate(tabs, y, config=cfg)
        b.save(tmp_path / f"m{k}")
        out.append(b.predict_proba(tabs))
    np.testing.assert_array_equal(out[0], out[1])
    names = sorted(p.name for p in (tmp_path / "m0").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "m1").iterdir())
    assert {"bundle.json", "model.ubj", "cv_report.json", "roc.png", "oof.csv"} <= set(names)
    for n in names:
        assert (tmp_path / "m0" / n).read_bytes() == (tmp_path / "m1" / n).read_bytes(), n


def test_bundle_load_errors(tmp_path):
    tabs, y = cohort(n=20)
    b = train_model(tabs, y, TrainConfig(classifier="logreg"))
    d = b.save(tmp_path / "m")
    with pytest.raises(ModelError, match="not found"):
        ModelBundle.load(tmp_path / "nope")
    meta = json.loads((d / "bundle.json").read_text())
    for key, value, msg in [("schema_version", SCHEMA_VERSION + 1, "schema version"),
                            ("package_version", f"{int(__version__.split('.')[0]) + 1}.0.0", "napari-lnm")]:
        bad = tmp_path / f"bad_{key}"
        bad.mkdir()
        (bad / "params.npz").write_bytes((d / "params.npz").read_bytes())
        (bad / "bundle.json").write_text(json.dumps({**meta, key: value}))
        with pytest.raises(ModelError, match=msg) as exc:
            ModelBundle.load(bad)
        assert str(bad) in str(exc.value)
    (d / "params.npz").unlink()
    with pytest.raises(ModelError, match="params.npz"):
        ModelBundle.load(d)


def test_feature_schema_mismatch_at_predict():
    tabs, y = cohort(n=20)
    b = train_model(tabs, y, TrainConfig(classifier="logreg", test="none"))
    with pytest.raises(ModelError, match="nucleus.f3_mean"):
        b.predict_proba(tabs[0].drop(columns=["nucleus.f3_mean", "nucleus.f4_mean"]))
    b.check_features(tabs[0])


def test_training_errors():
    tabs, y = cohort(n=12)
    with pytest.raises(CohortError, match="one class"):
        train_model(tabs, np.ones(12))
    with pytest.raises(CohortError, match="5-fold CV needs at least 5 slides per class"):
        cross_validate(tabs[:6], [0, 0, 0, 1, 1, 1], config=TrainConfig())
    with pytest.raises(CohortError, match="0 or 1"):
        train_model(tabs, np.arange(12))


# ---------------------------------------------------------------- clinical, subtypes
def test_clinical_variables_are_encoded_and_reported():
    tabs, y = cohort(n=40, shift=0.15, seed=5)
    rng = np.random.default_rng(0)
    clin = pd.DataFrame({"CEA": y * 2.0 + rng.normal(0, 0.7, 40),
                         "T_stage": np.where(y == 1, rng.choice(["T3", "T4"], 40), rng.choice(["T1", "T2", "T3"], 40))})
    cfg = TrainConfig(classifier="logreg", clinical=("CEA", "T_stage"), **FAST)
    rep = cross_validate(tabs, y, config=cfg, clinical=clin)
    assert rep.auc_image_only is not None and rep.auc > rep.auc_image_only
    b = train_model(tabs, y, cfg, clinical=clin)
    assert b.input_names[-5:] == ["clinical.CEA", "clinical.T_stage=T1", "clinical.T_stage=T2",
                                  "clinical.T_stage=T3", "clinical.T_stage=T4"]
    p_with = b.predict_proba(tabs[:3], clin.iloc[:3])
    p_dict = b.predict_proba(tabs[0], {"CEA": clin.CEA[0], "T_stage": clin.T_stage[0]})
    assert p_dict[0] == pytest.approx(p_with[0])
    c = b.contributions(tabs[0], clin.iloc[[0]])
    assert "clinical.CEA" in set(c["element"])


def test_per_subtype_routing(tmp_path):
    tabs_a, ya = cohort(n=20, informative=(0,), shift=1.0, seed=6)
    tabs_b, yb = cohort(n=20, informative=(3,), shift=1.0, seed=7)
    tabs_c, yc = cohort(n=4, seed=8)
    tabs = tabs_a + tabs_b + tabs_c
    y = np.concatenate([ya, yb, yc])
    st = ["CMS1"] * 20 + ["CMS2"] * 20 + ["CMS4"] * 4
    cfg = TrainConfig(per_subtype=True, classifier="logreg", cv=4, **FAST)
    b = train_model(tabs, y, cfg, subtypes=st)
    assert set(b.subtype_models) == {"CMS1", "CMS2"}
    assert b.subtype_routing["CMS4"].startswith("pooled")
    assert b.for_subtype("CMS1") == (b.subtype_models["CMS1"], "CMS1")
    assert b.for_subtype("CMS4") == (b, "pooled") and b.for_subtype(None) == (b, "pooled")
    assert all(n.startswith("nucleus.f0_mean") for n in b.subtype_models["CMS1"].selection.names)
    b.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "bundle.json").read_text())["subtype_routing"]["CMS4"].startswith("pooled")
    b2 = ModelBundle.load(tmp_path / "m")
    m, used = b2.for_subtype("CMS2")
    assert used == "CMS2"
    np.testing.assert_allclose(m.predict_proba(tabs_b), b.subtype_models["CMS2"].predict_proba(tabs_b))
    rep = cross_validate(tabs, y, config=cfg, subtypes=st)
    assert rep.auc_pooled is not None and np.all(np.isfinite(rep.oof))


def test_atomic_save_keeps_old_bundle_on_failure(tmp_path, monkeypatch):
    tabs, y = cohort(n=20)
    b = train_model(tabs, y, TrainConfig(classifier="logreg"))
    d = b.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(type(b.classifier), "save", boom)
    with pytest.raises(OSError):
        b.save(d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_progress_and_cancel():
    from napari_lnm.progress import Cancelled

    tabs, y = cohort(n=20)
    calls = []
    cross_validate(tabs, y, config=TrainConfig(classifier="logreg", cv=4, **FAST),
                   progress=lambda d, t, m: calls.append((d, t)))
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)
    n = []

    def stop():
        n.append(1)
        return len(n) > 2  # stop in the 3rd fold

    with pytest.raises(Cancelled):
        cross_validate(tabs, y, config=TrainConfig(classifier="logreg", cv=4, **FAST), should_stop=stop)

"""Element selection by two-sample tests between metastatic and non-metastatic slides."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from napari_lnm.selection import Selection, element_pvalues, select_elements


def planted(n=40, p=60, informative=(3, 17, 42), shift=2.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, p))
    for j in informative:
        if j < p:
            X[:, j] += shift * y
    return X, y


@pytest.mark.parametrize("test", ["ks", "mannwhitney", "ttest", "anova"])
def test_finds_planted_elements(test):
    X, y = planted()
    s = select_elements(X, y, test=test, alpha=0.005, names=[f"f{j}|bin1" for j in range(60)])
    assert {3, 17, 42} <= set(s.indices.tolist())
    assert len(s.indices) <= 5
    assert s.names == [f"f{j}|bin1" for j in s.indices]
    assert not s.fallback


def test_ks_pvalues_match_scipy_per_column():
    X, y = planted(p=5)
    p = element_pvalues(X, y, "ks")
    for j in range(5):
        assert p[j] == pytest.approx(stats.ks_2samp(X[y == 1, j], X[y == 0, j]).pvalue)


def test_top_q_and_fallback():
    X, y = planted(shift=0.0, seed=3)  # no signal
    s = select_elements(X, y, alpha=1e-9)
    assert s.fallback and len(s.indices) == 10 and "fell back" in s.message
    t = select_elements(X, y, top_q=4)
    assert len(t.indices) == 4 and not t.fallback
    order = np.argsort(t.pvalues, kind="stable")[:4]
    assert set(t.indices.tolist()) == set(order.tolist())


def test_constant_and_nan_columns_are_not_selected():
    X, y = planted()
    X[:, 5] = 1.0
    X[:, 6] = np.nan
    p = element_pvalues(X, y, "ttest")
    assert p[5] == 1.0 and p[6] == 1.0


def test_none_keeps_all_and_round_trip():
    X, y = planted(p=7)
    s = select_elements(X, y, test="none")
    assert s.indices.tolist() == list(range(7))
    s2 = Selection.from_dict(s.to_dict())
    np.testing.assert_array_equal(s2.apply(X), X)


def test_errors():
    X, y = planted(p=3)
    with pytest.raises(ValueError):
        select_elements(X, y, test="chi2")
    with pytest.raises(ValueError):
        select_elements(X, np.zeros(len(y)))

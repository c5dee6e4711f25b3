"""Fusion of tile tables into per-slide vectors: histogram frequencies, training-only edges, alternatives."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_lnm.errors import CohortError
from napari_lnm.fusion import (HistogramFusion, KMeansFusion, MaxFusion, MeanFusion, PNormFusion,
                               QuantileFusion, feature_columns, fusion_from_dict, kmeans_1d, make_fusion)

FEATS = ["tile.h_mean", "nucleus.area_mean", "graph.voronoi_area_mean"]


def tables(n=6, seed=0, n_tiles=(20, 80), scale=1.0):
    """Random tile tables with skewed features; tile counts differ between slides."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        nt = int(rng.integers(*n_tiles))
        out.append(pd.DataFrame({
            "slide_id": f"s{i}", "x": np.arange(nt) * 512, "y": 0, "size": 512, "tissue_fraction": 0.9,
            FEATS[0]: rng.normal(0.5, 0.1, nt) * scale,
            FEATS[1]: rng.lognormal(3.0, 0.6, nt) * scale,
            FEATS[2]: rng.exponential(100.0, nt) * scale,
        }))
    return out


def test_feature_columns_skip_metadata():
    assert feature_columns(tables(1)[0]) == FEATS


def test_histogram_frequencies_sum_to_one_and_names():
    tr = tables()
    f = HistogramFusion(bins=5).fit(tr, FEATS)
    X = f.transform(tr)
    assert X.shape == (6, 15)
    assert f.element_names[:6] == [f"{FEATS[0]}|bin{k}" for k in range(1, 6)] + [f"{FEATS[1]}|bin1"]
    np.testing.assert_allclose(X.reshape(6, 3, 5).sum(axis=2), 1.0)
    # quantile edges: pooled training tiles are spread evenly over the bins
    pooled = f.transform([pd.concat(tr)])[0].reshape(3, 5)
    np.testing.assert_allclose(pooled, 0.2, atol=0.02)


def test_histogram_independent_of_tile_count():
    tr = tables()
    f = HistogramFusion(bins=4, edges="uniform").fit(tr, FEATS)
    slide = tr[2]
    doubled = pd.concat([slide, slide], ignore_index=True)
    np.testing.assert_allclose(f.transform([slide]), f.transform([doubled]))


def test_histogram_counts_match_manual_binning():
    tr = tables(3)
    f = HistogramFusion(bins=5).fit(tr, FEATS)
    v = tr[1][FEATS[2]].to_numpy()
    e = f.edges_[2]
    manual = np.histogram(np.clip(v, e[0], e[-1]), bins=e)[0] / len(v)
    np.testing.assert_allclose(f.transform([tr[1]])[0][10:15], manual)


def test_edges_fitted_on_training_only():
    tr = tables(4, seed=1)
    test = tables(4, seed=2, scale=5.0)  # very different test slides must not move the edges
    f1 = HistogramFusion().fit(tr, FEATS)
    f2 = HistogramFusion().fit(tr, FEATS)
    f2.transform(test)
    np.testing.assert_array_equal(f1.edges_, f2.edges_)
    f3 = HistogramFusion().fit(tr + test, FEATS)
    assert not np.allclose(f1.edges_, f3.edges_)
    # test slides far above the training range land in the last bin
    X = f1.transform(test).reshape(4, 3, 5)
    assert X[:, 2, 4].mean() > 0.5


def test_nan_handling():
    tr = tables(3)
    t = tr[0].copy()
    t.loc[:9, FEATS[0]] = np.nan
    t[FEATS[1]] = np.nan
    f = HistogramFusion().fit(tr, FEATS)
    x = f.transform([t])[0].reshape(3, 5)
    assert x[0].sum() == pytest.approx(1.0)  # NaN tiles ignored
    assert np.all(x[1] == 0.0)  # all-NaN feature -> zeros
    t.loc[10, FEATS[2]] = np.inf  # a degenerate tile value counts as undefined
    np.testing.assert_allclose(f.transform([t])[0].reshape(3, 5)[2].sum(), 1.0)
    m = MeanFusion().fit(tr, FEATS).transform([t])[0]
    assert np.all(np.isfinite(m))


def test_missing_column_is_a_clear_error():
    tr = tables(2)
    f = HistogramFusion().fit(tr, FEATS)
    with pytest.raises(CohortError, match="nucleus.area_mean"):
        f.transform([tr[0].drop(columns=[FEATS[1]])])


@pytest.mark.parametrize("fusion", [HistogramFusion(3, "uniform"), MeanFusion(), MaxFusion(), PNormFusion(2.0),
                                    QuantileFusion(), KMeansFusion(4)])
def test_round_trip_and_values(fusion):
    tr = tables(4)
    fusion.fit(tr, FEATS)
    X = fusion.transform(tr)
    assert X.shape == (4, len(fusion.element_names))
    g = fusion_from_dict(json.loads(json.dumps(fusion.to_dict())))
    np.testing.assert_allclose(g.transform(tr), X)
    assert g.element_names == fusion.element_names
    info = fusion.element_info()
    assert list(info["element"]) == fusion.element_names


def test_summary_values():
    tr = tables(2)
    v = tr[0][FEATS[1]].to_numpy()
    assert MeanFusion().fit(tr, FEATS).transform([tr[0]])[0][1] == pytest.approx(v.mean())
    assert MaxFusion().fit(tr, FEATS).transform([tr[0]])[0][1] == pytest.approx(v.max())
    assert PNormFusion(3).fit(tr, FEATS).transform([tr[0]])[0][1] == pytest.approx(np.mean(v ** 3) ** (1 / 3))
    q = QuantileFusion().fit(tr, FEATS).transform([tr[0]])[0][3:6]
    np.testing.assert_allclose(q, np.percentile(v, [10, 50, 90]))


def test_kmeans_1d_finds_clusters():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0, 0.1, 200), rng.normal(5, 0.1, 100), rng.normal(10, 0.1, 50)])
    np.testing.assert_allclose(kmeans_1d(v, 3), [0, 5, 10], atol=0.05)
    tr = tables(3)
    X = KMeansFusion(3).fit(tr, FEATS).transform(tr)
    np.testing.assert_allclose(X.reshape(3, 3, 3).sum(axis=2), 1.0)


def test_make_fusion_rejects_unknown():
    assert isinstance(make_fusion("kmeans", bins=4), KMeansFusion)
    with pytest.raises(ValueError):
        make_fusion("graphconv")

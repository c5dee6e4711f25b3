"""Tile-level features (H/E statistics, GLCM, gradients, area fractions, regions) with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.feature import graycomatrix, graycoprops

from napari_lnm.errors import UserError
from napari_lnm.features import tile as T


def names():
    return [i.name for i in T.CATALOG]


def test_constant_images():
    h = np.full((64, 64), 0.7, np.float32)
    e = np.full((64, 64), 0.2, np.float32)
    f = T.tile_group_features(h, e, 0.5)
    assert list(f) == names()
    assert f["tile.h_mean"] == pytest.approx(0.7, rel=1e-6)
    assert f["tile.h_std"] == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(f["tile.h_skewness"]) and np.isnan(f["tile.h_kurtosis"])
    assert f["tile.h_p10"] == pytest.approx(0.7, abs=2.0 / 512) and f["tile.h_p90"] == pytest.approx(0.7, abs=2.0 / 512)
    assert f["tile.h_entropy"] == 0.0
    assert f["tile.h_glcm_contrast_d1um"] == 0.0
    assert f["tile.h_glcm_homogeneity_d3um"] == pytest.approx(1.0)
    assert f["tile.h_glcm_energy_d1um"] == pytest.approx(1.0)
    assert f["tile.h_glcm_correlation_d1um"] == 1.0  # defined (constant image: perfectly predictable)
    assert f["tile.h_glcm_entropy_d1um"] == 0.0
    assert f["tile.h_gradient_mean"] == 0.0 and f["tile.e_gradient_p90"] == pytest.approx(0.0, abs=0.01)
    assert f["tile.h_positive_fraction"] == 1.0 and f["tile.background_fraction"] == 0.0
    assert f["tile.e_positive_fraction"] == 0.0  # H-positive pixels are not counted as E-positive
    assert f["tile.h_e_ratio"] == pytest.approx(3.5, rel=1e-6)
    assert f["tile.h_region_density"] == pytest.approx(1 / (64 * 64 * 0.25e-6))
    assert f["tile.h_region_mean_area"] == pytest.approx(64 * 64 * 0.25)
    assert f["tile.h_region_boundary_per_area"] == 0.0


def test_moments_and_quantiles_match_numpy():
    rng = np.random.default_rng(0)
    h = rng.gamma(2.0, 0.15, (128, 128)).astype(np.float32)
    e = rng.uniform(0.05, 0.5, (128, 128)).astype(np.float32)
    f = T.tile_group_features(h, e, 0.5)
    x = h.astype(np.float64)
    assert f["tile.h_mean"] == pytest.approx(x.mean(), rel=1e-6)
    assert f["tile.h_std"] == pytest.approx(x.std(), rel=1e-5)
    from scipy import stats

    assert f["tile.h_skewness"] == pytest.approx(stats.skew(x.ravel()), rel=1e-4)
    assert f["tile.h_kurtosis"] == pytest.approx(stats.kurtosis(x.ravel()), rel=1e-4)
    for q in (10, 50, 90):
        assert f[f"tile.h_p{q}"] == pytest.approx(np.percentile(x, q), abs=2.0 / 512)
        assert f[f"tile.e_p{q}"] == pytest.approx(np.percentile(e, q), abs=0.6 / 512)


def test_glcm_matches_skimage_graycoprops():
    rng = np.random.default_rng(1)
    h = rng.uniform(0, 2.0, (96, 96)).astype(np.float32)
    h[:48] *= 0.3  # some structure
    e = np.full_like(h, 0.2)
    mpp = 0.5
    q = np.clip((h * (32 / 2.0)).astype(int), 0, 31).astype(np.uint8)
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    for d_um in T.GLCM_DISTANCES_UM:
        d_px = max(1, round(d_um / mpp))
        P = graycomatrix(q, [d_px], angles, levels=32, symmetric=True, normed=True)
        raw = graycomatrix(q, [d_px], angles, levels=32, symmetric=True)
        np.testing.assert_array_equal(T.glcm_counts(q, d_px, 32, stride=1), raw[:, :, 0, :])
        mine = dict(zip(["contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM", "entropy"],
                        T._glcm_features(h, (0.0, 2.0), mpp, stride=1)[T.GLCM_DISTANCES_UM.index(d_um)]))
        for prop in ["contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM"]:
            assert mine[prop] == pytest.approx(graycoprops(P, prop).mean(), rel=1e-9), (prop, d_um)
        ent = np.mean([-(p[p > 0] * np.log2(p[p > 0])).sum() for p in np.moveaxis(P[:, :, 0, :], -1, 0)])
        assert mine["entropy"] == pytest.approx(ent, rel=1e-9)
    # the default (pairs from every 2nd row/column) estimates the same matrix closely
    f = T.tile_group_features(h, e, mpp)
    full = T._glcm_features(h, (0.0, 2.0), mpp, stride=1)
    for k, d_um in enumerate(T.GLCM_DISTANCES_UM):
        for j, prop in enumerate(["contrast", "dissimilarity", "homogeneity", "energy", "correlation", "asm", "entropy"]):
            assert f[f"tile.h_glcm_{prop}_d{d_um:g}um"] == pytest.approx(full[k, j], rel=0.05, abs=0.02), prop


def test_gradient_and_fractions_on_stripes():
    # vertical stripes: H = 1.0 in the left half (positive), background on the right
    h = np.zeros((40, 40), np.float32)
    h[:, :20] = 1.0
    e = np.zeros_like(h)
    mpp = 0.5
    f = T.tile_group_features(h, e, mpp)
    assert f["tile.h_positive_fraction"] == 0.5
    assert f["tile.background_fraction"] == 0.5
    # central differences: 2 columns of |dH/dx| = 0.5 OD/px = 1 OD/µm, the rest 0
    assert f["tile.h_gradient_mean"] == pytest.approx(2 * 40 / (40 * 40) * 1.0, rel=1e-6)
    g = T.gradient_magnitude(h, mpp)
    assert g[10, 19] == pytest.approx(1.0) and g[10, 5] == 0
    assert f["tile.h_region_mean_area"] == pytest.approx(20 * 40 * 0.25)
    assert f["tile.h_region_boundary_per_area"] == pytest.approx(40 / (20 * 40 * 0.5))


def test_small_regions_ignored_and_density():
    h = np.zeros((100, 100), np.float32)
    h[10:20, 10:20] = 1.0  # 100 px = 25 µm² at 0.5 µm/px
    h[50:60, 50:60] = 1.0
    h[80, 80] = 1.0  # 0.25 µm² speck: below MIN_REGION_UM2
    f = T.tile_group_features(h, np.full_like(h, 0.3), 0.5)
    assert f["tile.h_region_density"] == pytest.approx(2 / (100 * 100 * 0.25e-6))
    assert f["tile.h_region_mean_area"] == pytest.approx(25.0)


def test_bad_input():
    with pytest.raises(UserError):
        T.tile_group_features(np.zeros((4, 4)), np.zeros((4, 5)), 0.5)
    with pytest.raises(UserError):
        T.tile_group_features(np.zeros((0, 0)), np.zeros((0, 0)), 0.5)

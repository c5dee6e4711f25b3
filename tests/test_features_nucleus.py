"""Nucleus-level features: known answers on synthetic shapes and agreement with skimage.regionprops."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops_table

from napari_lnm.errors import UserError
from napari_lnm.features import nucleus as N


def disks(radius_px: float, spacing: int = 40, shape=(240, 240)) -> np.ndarray:
    """Label image of disks of one radius on a square grid (centres at half-integer offsets avoided)."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    k = 0
    for r0 in range(spacing // 2, shape[0] - spacing // 2 + 1, spacing):
        for c0 in range(spacing // 2, shape[1] - spacing // 2 + 1, spacing):
            k += 1
            lab[(rr - r0) ** 2 + (cc - c0) ** 2 <= radius_px**2] = k
    return lab


def random_blobs(seed: int, shape=(200, 220), n=40) -> np.ndarray:
    """Touching irregular labels: random ellipses, some cut by the border, some with holes/concavities."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        r0, c0 = rng.uniform(-5, shape[0] + 5), rng.uniform(-5, shape[1] + 5)
        a, b, t = rng.uniform(2, 14), rng.uniform(1, 9), rng.uniform(0, np.pi)
        x = (rr - r0) * np.cos(t) + (cc - c0) * np.sin(t)
        y = -(rr - r0) * np.sin(t) + (cc - c0) * np.cos(t)
        m = (x / a) ** 2 + (y / b) ** 2 <= 1
        if k % 3 == 0:  # a notch makes it non-convex
            m &= ~((np.abs(y) < 1.5) & (x > 0))
        lab[m] = k * 7  # non-consecutive labels
    return lab


@pytest.mark.parametrize("radius", [4.0, 8.0, 15.0])
def test_disks_known_answers(radius):
    mpp = 0.5
    lab = disks(radius)
    t = N.nucleus_table(lab, mpp)
    r_um = radius * mpp
    area = t.column("area")
    np.testing.assert_allclose(area, np.pi * r_um**2, rtol=0.08)
    np.testing.assert_allclose(t.column("equivalent_diameter"), 2 * r_um, rtol=0.04)
    np.testing.assert_allclose(t.column("perimeter"), 2 * np.pi * r_um, rtol=0.08)
    np.testing.assert_allclose(t.column("circularity"), 1.0, atol=0.12)
    np.testing.assert_allclose(t.column("major_axis"), 2 * r_um, rtol=0.06)
    np.testing.assert_allclose(t.column("minor_axis"), 2 * r_um, rtol=0.06)
    assert np.all(t.column("eccentricity") < 0.15)
    assert np.all(t.column("solidity") > 0.85)  # skimage convention: hull pixels include the border
    assert np.all(t.column("fourier2") < 0.05)
    np.testing.assert_allclose(t.centroids[0], (20, 20), atol=1e-9)


def test_ellipse_axes_and_fourier():
    rr, cc = np.mgrid[:120, :120]
    lab = (((rr - 60) / 30.0) ** 2 + ((cc - 60) / 10.0) ** 2 <= 1).astype(np.int32)
    t = N.nucleus_table(lab, 1.0)
    assert t.column("major_axis")[0] == pytest.approx(60, rel=0.03)
    assert t.column("minor_axis")[0] == pytest.approx(20, rel=0.05)
    assert t.column("eccentricity")[0] == pytest.approx(np.sqrt(1 - (10 / 30) ** 2), rel=0.02)
    assert t.column("aspect_ratio")[0] == pytest.approx(1 / 3, rel=0.05)
    assert t.column("fourier2")[0] > 0.2  # elongated: strong second harmonic
    circle = N.nucleus_table(disks(15.0, 40, (40, 40)), 1.0)
    assert t.column("fourier2")[0] > 10 * circle.column("fourier2")[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_regionprops_synthetic(seed):
    lab = random_blobs(seed)
    t = N.nucleus_table(lab, 1.0)
    rp = regionprops_table(
        lab, properties=["label", "area", "perimeter", "eccentricity", "solidity", "axis_major_length",
                         "axis_minor_length", "extent", "centroid"]
    )
    np.testing.assert_array_equal(t.ids, rp["label"])
    for mine, theirs in [("area", "area"), ("perimeter", "perimeter"), ("eccentricity", "eccentricity"),
                         ("solidity", "solidity"), ("major_axis", "axis_major_length"),
                         ("minor_axis", "axis_minor_length"), ("extent", "extent")]:
        np.testing.assert_allclose(t.column(mine), rp[theirs], rtol=1e-9, atol=1e-12, err_msg=mine)
    np.testing.assert_allclose(t.centroids, np.c_[rp["centroid-0"], rp["centroid-1"]], atol=1e-9)


def test_agrees_with_regionprops_nuclei_dev(nuclei_dev):
    from PIL import Image

    files = sorted(nuclei_dev.glob("*.labels.png"))[:6]
    assert files
    for f in files:
        lab = np.asarray(Image.open(f)).astype(np.int32)
        t = N.nucleus_table(lab, 0.25)
        rp = regionprops_table(lab, properties=["label", "area", "perimeter", "eccentricity", "solidity"])
        np.testing.assert_array_equal(t.ids, rp["label"])
        np.testing.assert_allclose(t.column("area"), rp["area"] * 0.25**2, rtol=1e-9)
        np.testing.assert_allclose(t.column("perimeter"), rp["perimeter"] * 0.25, rtol=1e-9)
        np.testing.assert_allclose(t.column("eccentricity"), rp["eccentricity"], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(t.column("solidity"), rp["solidity"], rtol=1e-9)


def test_h_intensity_and_texture():
    lab = disks(6.0, 30, (60, 60))
    h = np.where(lab > 0, 0.8, 0.1).astype(np.float32)
    t = N.nucleus_table(lab, 0.5, h)
    np.testing.assert_allclose(t.column("h_mean"), 0.8, rtol=1e-6)
    np.testing.assert_allclose(t.column("h_std"), 0.0, atol=1e-6)
    np.testing.assert_allclose(t.column("h_entropy"), 0.0, atol=1e-12)
    np.testing.assert_allclose(t.column("h_dissimilarity"), 0.0, atol=1e-6)
    np.testing.assert_allclose(t.column("h_integrated"), 0.8 * t.column("area"), rtol=1e-6)
    # a checkerboard inside the nuclei: every neighbour pair differs by 0.4 OD
    rr, cc = np.mgrid[:60, :60]
    h2 = np.where((rr + cc) % 2 == 0, 0.4, 0.8).astype(np.float32)
    t2 = N.nucleus_table(lab, 0.5, h2)
    np.testing.assert_allclose(t2.column("h_dissimilarity"), 0.4, rtol=1e-5)
    np.testing.assert_allclose(t2.column("h_contrast"), 0.16, rtol=1e-5)
    np.testing.assert_allclose(t2.column("h_entropy"), 1.0, atol=0.05)
    assert np.all(t2.column("grad_mean") == 0)  # central differences of a checkerboard vanish


def test_summary_features_and_empty():
    lab = disks(5.0, 30, (90, 90))
    f = N.nucleus_features(lab, 0.5)
    assert f["nucleus.count"] == 9
    assert f["nucleus.density"] == pytest.approx(9 / (90 * 90 * 0.25 * 1e-6))
    assert f["nucleus.area_std"] == pytest.approx(0.0, abs=1e-9)
    assert f["nucleus.area_p10"] == pytest.approx(f["nucleus.area_p90"])
    names = [i.name for i in N.CATALOG]
    assert list(f) == names
    empty = N.nucleus_features(np.zeros((50, 50), np.int32), 0.5)
    assert list(empty) == names
    assert empty["nucleus.count"] == 0 and empty["nucleus.density"] == 0
    assert all(np.isnan(v) for k, v in empty.items() if k not in ("nucleus.count", "nucleus.density"))


def test_single_pixel_and_line_nuclei():
    lab = np.zeros((20, 20), np.int32)
    lab[5, 5] = 1
    lab[10, 2:12] = 2  # a one-pixel-thick line
    t = N.nucleus_table(lab, 1.0, np.ones((20, 20), np.float32))
    assert t.column("area").tolist() == [1.0, 10.0]
    assert np.isfinite(t.column("solidity")).all()
    assert t.column("eccentricity")[1] == pytest.approx(1.0)
    rp = regionprops_table(lab, properties=["perimeter", "solidity"])
    np.testing.assert_allclose(t.column("perimeter"), rp["perimeter"])
    np.testing.assert_allclose(t.column("solidity"), rp["solidity"])


def test_bad_input():
    with pytest.raises(UserError):
        N.nucleus_table(np.zeros((4, 4, 3), np.int32), 0.5)
    with pytest.raises(UserError):
        N.nucleus_table(np.zeros((4, 4), np.float32), 0.5)
    with pytest.raises(UserError):
        N.nucleus_table(-np.ones((4, 4), np.int32), 0.5)
    with pytest.raises(UserError):
        N.nucleus_table(np.ones((4, 4), np.int32), 0.0)


def test_huge_label_values_and_dtypes():
    lab = random_blobs(4, shape=(80, 90), n=12)
    ref = N.nucleus_table(lab, 0.5)
    big = np.where(lab > 0, lab.astype(np.int64) * 10_000_019, 0)
    t = N.nucleus_table(big, 0.5)
    np.testing.assert_array_equal(t.ids, ref.ids * 10_000_019)
    np.testing.assert_allclose(t.values, ref.values, equal_nan=True)
    t16 = N.nucleus_table(lab.astype(np.uint16), 0.5)
    np.testing.assert_allclose(t16.values, ref.values, equal_nan=True)


def test_summaries_ignore_undefined_values():
    from napari_lnm.features.catalog import graph_summarise, summarise_matrix

    rng = np.random.default_rng(3)
    m = rng.normal(size=(50, 4))
    m[[3, 7], 1] = np.nan
    m[:, 3] = np.nan
    s = summarise_matrix(m)
    for j in range(3):
        v = m[np.isfinite(m[:, j]), j]
        np.testing.assert_allclose(s[j], [v.mean(), v.std(), np.median(v), np.percentile(v, 10), np.percentile(v, 90)])
    assert np.isnan(s[3]).all()
    mean, std, min_max, disorder = graph_summarise(np.array([1.0, 2.0, 3.0, np.nan]))
    assert (mean, min_max) == (2.0, pytest.approx(1 / 3)) and disorder == pytest.approx(std / (2.0 + std))
    assert np.isnan(graph_summarise(np.zeros(3))[2])  # min/max undefined when max is 0


def test_translation_and_rotation_invariance():
    lab = random_blobs(5, shape=(150, 150), n=15)
    lab[:6] = 0
    lab[-6:] = 0
    lab[:, :6] = 0
    lab[:, -6:] = 0  # nothing touches the border, so shifted and rotated copies hold the same shapes
    t = N.nucleus_table(lab, 0.5)
    shifted = N.nucleus_table(np.pad(lab, ((3, 0), (5, 0)))[:150, :150], 0.5)
    np.testing.assert_allclose(shifted.values, t.values, rtol=1e-9, atol=1e-12)
    rot = N.nucleus_table(np.rot90(lab), 0.5)
    order = np.argsort(rot.ids)
    np.testing.assert_array_equal(rot.ids[order], t.ids)
    for key in ["area", "perimeter", "major_axis", "minor_axis", "eccentricity", "solidity", "circularity"]:
        np.testing.assert_allclose(rot.column(key)[order], t.column(key), rtol=1e-9, err_msg=key)
    for k in range(1, 5):  # a 90-degree rotation maps the 16 angular bins onto themselves
        np.testing.assert_allclose(rot.column(f"fourier{k}")[order], t.column(f"fourier{k}"), rtol=1e-9, atol=1e-12)

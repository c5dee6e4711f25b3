"""Colour deconvolution and Macenko stain estimation, on synthetic images with known stains."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lnm.errors import SlideError, UserError
from napari_lnm.stain import (
    RUIFROK_HED,
    as_rgb,
    concentrations,
    estimate_stains,
    normalize_stains,
    od_image,
    rgb_from_od,
    separate,
)


def render(conc: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """RGB uint8 image of stain concentrations (H, W, k) with OD vectors (k, 3)."""
    return rgb_from_od(conc @ stains)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def test_pure_haematoxylin_gives_no_eosin():
    c = np.linspace(0.1, 1.5, 64 * 64, dtype=np.float64).reshape(64, 64, 1)
    rgb = render(c, RUIFROK_HED[:1])
    h, e = separate(rgb)
    assert h.dtype == np.float32 and e.dtype == np.float32 and h.shape == (64, 64)
    assert float(e.max()) < 0.02
    # 8-bit quantisation: OD error at most ~log10(256/255.5) per channel
    np.testing.assert_allclose(h, c[..., 0], atol=0.02)


def test_round_trip_recovers_concentrations():
    rng = np.random.default_rng(0)
    c = rng.uniform(0, 0.8, size=(32, 32, 3))
    rgb = render(c, RUIFROK_HED)
    got = concentrations(rgb)
    # 8-bit quantisation of dark pixels, amplified by the inverse stain matrix
    np.testing.assert_allclose(got, c, atol=0.05)
    h, e = separate(rgb)
    np.testing.assert_allclose(h, got[..., 0], atol=1e-5)
    np.testing.assert_allclose(e, got[..., 1], atol=1e-5)


def test_white_is_zero_and_outputs_non_negative():
    h, e = separate(np.full((8, 8, 3), 255, np.uint8))
    assert h.max() == 0 and e.max() == 0
    rng = np.random.default_rng(1)
    h, e = separate(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    assert h.min() >= 0 and e.min() >= 0


def test_custom_two_row_stains_completed_by_residual():
    w = normalize_stains([[0.6, 0.75, 0.28], [0.1, 0.95, 0.2]])
    assert w.shape == (3, 3)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0)
    assert abs(w[2] @ w[0]) < 1e-9 and abs(w[2] @ w[1]) < 1e-9
    c = np.zeros((16, 16, 2))
    c[..., 0] = 0.5
    c[..., 1] = 0.3
    h, e = separate(render(c, w[:2]), stains=w[:2])
    np.testing.assert_allclose(h, 0.5, atol=0.02)
    np.testing.assert_allclose(e, 0.3, atol=0.02)


@pytest.mark.parametrize(
    "bad", [np.zeros((3, 3)), [[1, 0, 0], [2, 0, 0]], np.ones((4, 3)), [[np.nan, 1, 1], [1, 1, 0]]]
)
def test_bad_stain_matrix_is_user_error(bad):
    with pytest.raises(UserError):
        separate(np.zeros((4, 4, 3), np.uint8), stains=bad)


def test_input_conversion_and_rejection():
    rgb = np.random.default_rng(2).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((10, 12, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(separate(rgba)[0], separate(rgb)[0])
    np.testing.assert_array_equal(as_rgb(rgb / 255.0), rgb)
    with pytest.raises(UserError, match="grayscale"):
        separate(rgb[..., 0])
    with pytest.raises(UserError):
        as_rgb(rgb.astype(np.float32))  # floats above 1
    with pytest.raises(UserError):
        as_rgb(rgb.astype(np.uint16) * 256)
    assert od_image(rgb).shape == (10, 12, 3)


def two_stain_image(h_vec, e_vec, seed=0, size=96):
    """Synthetic tissue with known vectors: white background, nuclei (mostly H), stroma (mostly E)
    and mixed pixels, with random concentrations."""
    rng = np.random.default_rng(seed)
    c = np.zeros((size, size, 2))
    c[..., 0] = rng.gamma(2.0, 0.25, (size, size))
    c[..., 1] = rng.gamma(2.0, 0.2, (size, size))
    region = rng.integers(0, 4, (size, size))
    c[region == 1, 1] *= 0.02  # nuclei: haematoxylin only
    c[region == 2, 0] *= 0.02  # stroma: eosin only
    c[: size // 8] = 0  # a white band of background
    return render(c, np.vstack([h_vec, e_vec]))


def test_estimate_stains_recovers_known_vectors():
    h_true = np.array([0.55, 0.76, 0.34])
    e_true = np.array([0.12, 0.93, 0.35])
    h_true /= np.linalg.norm(h_true)
    e_true /= np.linalg.norm(e_true)
    w = estimate_stains(two_stain_image(h_true, e_true))
    assert w.shape == (3, 3)
    assert angle_deg(w[0], h_true) < 4.0
    assert angle_deg(w[1], e_true) < 4.0
    # ordering: H first even when the stains are given the other way round in the image
    w2 = estimate_stains(two_stain_image(e_true, h_true, seed=3))
    assert angle_deg(w2[0], h_true) < 4.0


def test_estimated_stains_improve_separation():
    h_true = np.array([0.5, 0.8, 0.33]) / np.linalg.norm([0.5, 0.8, 0.33])
    e_true = np.array([0.2, 0.9, 0.4]) / np.linalg.norm([0.2, 0.9, 0.4])
    rgb = two_stain_image(h_true, e_true, seed=5)
    pure_h = render(np.full((8, 8, 1), 0.7), h_true[None])
    w = estimate_stains(rgb)
    _, e_est = separate(pure_h, stains=w)
    assert float(e_est.max()) < 0.05


def test_estimate_stains_needs_tissue():
    with pytest.raises(UserError, match="too few"):
        estimate_stains(np.full((64, 64, 3), 250, np.uint8))


class FakeSlide:
    """Duck-typed slide: only thumbnail/read_region are used."""

    path = "fake.svs"

    def __init__(self, rgb):
        self.rgb = rgb

    def read_region(self, x, y, w, h, mpp=None):  # pragma: no cover - not called
        raise AssertionError

    def thumbnail(self, max_size=1024):
        return self.rgb, 1.0


def test_estimate_stains_from_slide_thumbnail():
    h_true = RUIFROK_HED[0]
    e_true = RUIFROK_HED[1]
    w = estimate_stains(FakeSlide(two_stain_image(h_true, e_true, seed=7)))
    assert angle_deg(w[0], h_true) < 4.0 and angle_deg(w[1], e_true) < 4.0
    with pytest.raises(SlideError, match="fake.svs"):
        estimate_stains(FakeSlide(np.full((32, 32, 3), 255, np.uint8)))

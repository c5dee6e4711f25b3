"""The fast paths of the default segmentation give exactly what the straightforward formulations give.

Each optimised helper of ``napari_lnm.nuclei`` (max clustering, Gaussian, binned LoG, relabelling, hole
filling) is checked against a plain reference on inputs built to hit its corner cases (ties and plateaus,
odd and one-pixel shapes, empty masks), plus one loose absolute timing on the densest bundled tile.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_lnm.filters import gauss  # noqa: E402
from napari_lnm import nuclei as N


def reference_max_clustering(resp: np.ndarray, mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Local-maximum clustering written plainly: argmax over self + 8 neighbours, pointer jumping on the
    whole padded image, window test against ndi.label components (the formulation before stop 9)."""
    rows, cols = mask.shape
    if not mask.any():
        return np.zeros((rows, cols), np.int32)
    w = cols + 2
    padded = np.full((rows + 2, w), -np.inf, dtype=np.float32)
    padded[1:-1, 1:-1][mask] = resp[mask]
    flat = padded.ravel()
    inside = np.flatnonzero(mask.ravel())
    idx = inside + (inside // cols) * 2 + (w + 1)
    steps = np.array([0, -w - 1, -w, -w + 1, -1, 1, w - 1, w, w + 1])
    best = idx + steps[np.argmax(flat[idx[None, :] + steps[:, None]], axis=0)]
    parent = np.arange(flat.size)
    parent[idx] = best

    def climb() -> np.ndarray:
        cur = parent[idx]
        for _ in range(rows * cols + 1):
            nxt = parent[cur]
            if np.array_equal(nxt, cur):
                return cur
            cur = nxt
        raise AssertionError("cycle")

    parent[idx] = climb()
    roots = idx[best == idx]
    r = max(1, int(round(radius_px)))
    off = np.arange(-r, r + 1)
    ry, rx = np.divmod(roots, w)
    yy = np.clip(ry[:, None, None] + off[None, :, None], 1, rows)
    xx = np.clip(rx[:, None, None] + off[None, None, :], 1, cols)
    win = (yy * w + xx).reshape(roots.size, -1)
    comp = np.zeros((rows + 2, w), dtype=np.int64)
    comp[1:-1, 1:-1] = ndi.label(mask)[0]
    comp = comp.ravel()
    vals = np.where(comp[win] == comp[roots][:, None], flat[win], -np.inf)
    top = win[np.arange(roots.size), np.argmax(vals, axis=1)]
    is_seed = top == roots
    parent[roots[~is_seed]] = top[~is_seed]
    final = climb()
    lut = np.zeros(flat.size, dtype=np.int32)
    lut[roots[is_seed]] = np.arange(1, int(is_seed.sum()) + 1)
    out = np.zeros(rows * cols, dtype=np.int32)
    out[inside] = lut[final]
    return out.reshape(rows, cols)


def blobs(shape, n, seed, levels=None):
    """A response of Gaussian bumps (quantised to ``levels`` steps: plateaus and ties) and its mask."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    img[tuple(rng.integers(0, s, n) for s in shape)] = 1.0
    img = ndi.gaussian_filter(img, 2.0) + 0.02 * rng.random(shape).astype(np.float32)
    if levels:
        img = np.round(img / img.max() * levels).astype(np.float32)
    return img, img > np.quantile(img, 0.5)


CASES = [
    blobs((96, 128), 60, 0),
    blobs((96, 128), 60, 1, levels=6),  # big plateaus: ties everywhere
    blobs((64, 64), 200, 2, levels=3),
    blobs((1, 80), 5, 3, levels=4),
    blobs((80, 1), 5, 4, levels=4),
    blobs((33, 17), 10, 5),
    (np.ones((20, 30), np.float32), np.ones((20, 30), bool)),  # one flat plateau
    (np.random.default_rng(6).integers(0, 3, (40, 40)).astype(np.float32),
     np.random.default_rng(7).random((40, 40)) < 0.9),  # ties + many components
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dense", [True, False, None])
@pytest.mark.parametrize("radius", [1.0, 3.0])
def test_max_clustering_equals_reference(case, dense, radius):
    resp, mask = CASES[case]
    got = N._max_clustering(resp, mask, radius, dense=dense)
    want = reference_max_clustering(resp, mask, radius)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got[mask])) == set(range(1, got.max() + 1))  # every pixel of the mask labelled


def test_max_clustering_empty_mask():
    lab = N._max_clustering(np.ones((8, 9), np.float32), np.zeros((8, 9), bool), 2.0)
    assert lab.dtype == np.int32 and lab.shape == (8, 9) and not lab.any()


@pytest.mark.parametrize("shape", [(512, 512), (1, 7), (6, 1), (3, 300), (257, 131)])
@pytest.mark.parametrize("sigma", [0.65, 1.0, 1.59, 3.2, 7.5])
def test_gauss_is_ndimage_bit_for_bit(shape, sigma):
    img = (np.random.default_rng(1).random(shape) * 3).astype(np.float32)
    got = gauss(img, sigma)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ndi.gaussian_filter(img, sigma, truncate=2.5, mode="nearest"))


def test_gauss_other_dtypes_and_small_sigma():
    img = np.random.default_rng(2).random((20, 30))
    np.testing.assert_array_equal(gauss(img, 1.5), ndi.gaussian_filter(img, 1.5, truncate=2.5, mode="nearest"))
    x = img.astype(np.float32)
    assert gauss(x, 0.1) is x


@pytest.mark.parametrize("shape", [(64, 48), (1, 9), (9, 1), (1, 1)])
@pytest.mark.parametrize("sigma", [0.35, 0.6])
def test_gauss_three_taps(shape, sigma):
    """Below 0.65 px: the normalised 3-tap kernel per axis, edges replicated (same float32 order of sums)."""
    img = np.random.default_rng(3).random(shape)
    side = np.exp(-0.5 / sigma**2)
    c1, c0 = np.float32(side / (1 + 2 * side)), np.float32(1 / (1 + 2 * side))
    want = img.astype(np.float32)
    for axis in (0, 1):
        p = np.concatenate([want.take([0], axis), want, want.take([-1], axis)], axis)
        n = want.shape[axis]
        prev, nxt = p.take(np.arange(n), axis), p.take(np.arange(2, n + 2), axis)
        want = want * c0 + prev * c1 + nxt * c1
    got = gauss(img, sigma)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(128, 96), (127, 96), (128, 95), (31, 33)])
@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_blob_response_binned_laplacian(shape, mpp):
    """The binned LoG subtracted by broadcasting equals subtracting the full-size repeated image."""
    rng = np.random.default_rng(3)
    hs = ndi.gaussian_filter(rng.random(shape), 2).astype(np.float32)
    cfg = N.NucleiConfig()
    fg = hs > np.median(hs)
    s0 = cfg.smooth_sigma_um / mpp
    sig = cfg.nucleus_radius_um / np.sqrt(2.0) / mpp
    s2 = 0.5 * sig * cfg.response_smooth
    a = np.sqrt(max(sig * sig - s2 * s2 - s0 * s0, 0.0))
    want = N._distance(fg, mpp)
    want -= np.float32(cfg.log_weight * cfg.nucleus_radius_um * sig * sig) * N._smooth_laplace(hs, a)
    np.testing.assert_array_equal(N._blob_response(hs, fg, mpp, cfg, s0), gauss(want, s2))
    full, half = N._smooth_laplace(hs, a), N._smooth_laplace(hs, a, full=False)
    assert full.shape == shape
    np.testing.assert_array_equal(full, np.repeat(np.repeat(half, 2, 0), 2, 1)[:shape[0], :shape[1]]
                                  if half.shape != shape else half)


def test_relabel_consecutive_paths():
    lab = np.array([[0, 1, 1], [2, 2, 3]], np.int32)
    out = N.relabel_consecutive(lab)
    assert out is not lab and out.dtype == np.int32
    np.testing.assert_array_equal(out, lab)
    out[0, 1] = 7  # a copy: the input is untouched
    assert lab[0, 1] == 1
    np.testing.assert_array_equal(N.relabel_consecutive(np.array([[0, 5, 5], [9, 9, 9]]), 3), [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(N.relabel_consecutive(np.array([[4, 4, 0, 2]], np.int64), 1, 1), [[0, 0, 0, 1]])
    assert N.relabel_consecutive(np.zeros((3, 3), np.int64)).dtype == np.int32


def test_fill_holes_by_size():
    mask = np.zeros((20, 40), bool)
    mask[2:12, 2:12] = True
    mask[5:7, 5:7] = False  # 4-px hole: filled
    mask[2:18, 20:38] = True
    mask[6:14, 24:34] = False  # 80-px hole: kept
    out = N._fill_holes(mask, 10)
    assert out[5:7, 5:7].all() and not out[6:14, 24:34].any()
    assert (out & ~mask).sum() == 4
    solid = np.zeros((10, 10), bool)
    solid[2:8, 2:8] = True
    assert N._fill_holes(solid, 10) is solid  # nothing to fill: unchanged


def test_dense_tile_speed(sample_svs):
    """Loose absolute bound (2x the issue's 25 ms) on the densest bundled 20x tile: catches a return
    to per-object or per-pixel Python loops, not noise on a shared machine."""
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(sample_svs)) as s:
        rgb = np.asarray(s.read_region((1200, 1600), 0, (512, 512)).convert("RGB"))
    h = N.haematoxylin(rgb)
    N.segment_nuclei(rgb, 0.499, h=h)
    times = []
    for _ in range(5):
        t0 = time.process_time()
        lab = N.segment_nuclei(rgb, 0.499, h=h)
        times.append(time.process_time() - t0)
    assert lab.max() > 300
    assert min(times) < 0.050, times

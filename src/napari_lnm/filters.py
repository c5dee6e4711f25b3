"""Shared float32 image filters (Gaussian smoothing, 2x binning and linear upsampling), px units.

Used by nucleus segmentation (``nuclei``) and its U-Net (``nuclei_net``); kept here so that neither
imports the other's internals.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["gauss", "bin2", "up2", "upsample"]


def gauss(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable float32 Gaussian smoothing (sigma in px, edges replicated); identity for tiny sigma,
    a 3-tap kernel by array slicing below 0.65 px (the dropped outer weights are < 1 %)."""
    if sigma_px < 0.3:
        return img
    if sigma_px >= 0.65:
        if img.ndim != 2 or img.dtype != np.float32 or img.size == 0:
            return ndi.gaussian_filter(img, sigma_px, truncate=2.5, mode="nearest")
        # = ndi.gaussian_filter(img, sigma_px, truncate=2.5, mode="nearest"), bit for bit: the column
        # pass (ndimage's slowest, strided) as whole-row float64 slices in ndimage's order of operations
        # (centre tap, then symmetric pairs from the outside in), in cache-sized blocks of rows (no
        # full-size float64 copy: fresh memory costs page faults); the row pass by ndimage, in place
        r = int(2.5 * float(sigma_px) + 0.5)
        x = np.arange(-r, r + 1)
        wts = np.exp(-0.5 / (float(sigma_px) * float(sigma_px)) * x ** 2)
        wts = wts / wts.sum()
        n, m = img.shape
        out = np.empty((n, m), dtype=np.float32)
        block = max(8, 32768 // m)
        src = np.empty((min(block, n) + 2 * r, m))  # a block of rows with r rows either side
        acc = np.empty((min(block, n), m))
        tmp = np.empty_like(acc)
        for b0 in range(0, n, block):
            b = min(block, n - b0)
            p, a, t = src[:b + 2 * r], acc[:b], tmp[:b]
            lo, hi = max(b0 - r, 0), min(b0 + b + r, n)  # rows inside the image; the rest replicate edges
            p[lo - (b0 - r):hi - (b0 - r)] = img[lo:hi]
            p[:lo - (b0 - r)] = img[0]
            p[hi - (b0 - r):] = img[n - 1]
            np.multiply(p[r:r + b], wts[r], out=a)
            for j in range(r, 0, -1):
                np.add(p[r - j:r - j + b], p[r + j:r + j + b], out=t)
                t *= wts[r - j]
                a += t
            out[b0:b0 + b] = a
        return ndi.correlate1d(out, wts, axis=1, output=out, mode="nearest")
    side = np.exp(-0.5 / sigma_px**2)
    c1 = np.float32(side / (1.0 + 2.0 * side))
    c0 = np.float32(1.0 / (1.0 + 2.0 * side))
    src = np.asarray(img, dtype=np.float32)
    out = src * c0
    side_w = src * c1  # each neighbour's share, added in a fixed order: previous, next, edges
    for axis in (0, 1):
        if axis:  # the second pass in place (two full-size arrays in all: fresh memory costs page faults)
            np.multiply(out, c1, out=side_w)
            out *= c0
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        for lo, hi in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
            a[axis], b[axis] = lo, hi
            out[tuple(a)] += side_w[tuple(b)]
        edge_lo = [slice(None)] * 2
        edge_hi = [slice(None)] * 2
        edge_lo[axis], edge_hi[axis] = slice(0, 1), slice(-1, None)
        out[tuple(edge_lo)] += side_w[tuple(edge_lo)]
        out[tuple(edge_hi)] += side_w[tuple(edge_hi)]
    return out


def bin2(img: np.ndarray) -> np.ndarray:
    """2x2 mean binning (odd edges replicated)."""
    rows, cols = img.shape
    if rows % 2 or cols % 2:
        img = np.pad(img, ((0, rows % 2), (0, cols % 2)), mode="edge")
    out = img[0::2, 0::2] + img[1::2, 0::2]
    out += img[0::2, 1::2]
    out += img[1::2, 1::2]
    out *= np.float32(0.25)
    return out


def up2(a: np.ndarray) -> np.ndarray:
    """2x linear upsampling of a binned image (pixel centres at quarter offsets, edges replicated)."""
    p = np.pad(a, 1, mode="edge")
    r = np.empty((2 * a.shape[0], a.shape[1] + 2), np.float32)
    np.multiply(p[1:-1], np.float32(0.75), out=r[0::2])
    r[0::2] += np.float32(0.25) * p[:-2]
    np.multiply(p[1:-1], np.float32(0.75), out=r[1::2])
    r[1::2] += np.float32(0.25) * p[2:]
    out = np.empty((r.shape[0], 2 * a.shape[1]), np.float32)
    np.multiply(r[:, 1:-1], np.float32(0.75), out=out[:, 0::2])
    out[:, 0::2] += np.float32(0.25) * r[:, :-2]
    np.multiply(r[:, 1:-1], np.float32(0.75), out=out[:, 1::2])
    out[:, 1::2] += np.float32(0.25) * r[:, 2:]
    return out


def upsample(img: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Undo ``factor`` (a power of 2) of binning by repeated 2x linear upsampling, cropped to ``shape``."""
    while factor > 1:
        img = up2(img)
        factor //= 2
    return img[: shape[0], : shape[1]]

"""Colour deconvolution of H&E images into haematoxylin (H) and eosin (E) optical-density images.

Optical density (OD) per channel is ``-log10((I + 1) / 256)`` for 8-bit intensity ``I`` (so white
is 0 OD). A stain matrix has one unit-length OD vector per row (H, E, residual/DAB); the stain
concentrations ``c`` of a pixel solve ``od = c @ W``, i.e. ``c = od @ inv(W)``, computed as one
matrix multiply over the image. Concentrations are clipped at 0 and returned as float32 OD units.

``estimate_stains`` implements Macenko et al. (2009): pixels with OD magnitude above a threshold,
their plane of largest variance (SVD), and the robust extreme angles (percentiles 1 and 99)
in that plane give the H and E vectors of the slide.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import SlideError, UserError

__all__ = [
    "RUIFROK_HED",
    "as_rgb",
    "od_image",
    "rgb_from_od",
    "normalize_stains",
    "separate",
    "haematoxylin",
    "concentrations",
    "estimate_stains",
]

#: Ruifrok & Johnston (2001) stain OD vectors: rows H, E, DAB (the values skimage's ``hed`` uses).
RUIFROK_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
RUIFROK_HED = RUIFROK_HED / np.linalg.norm(RUIFROK_HED, axis=1, keepdims=True)

# OD of every 8-bit value: a 256-entry table makes the log a single gather.
_OD_LUT = (-np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
_OD_MAX = float(_OD_LUT[0])


def as_rgb(image: Any, name: str = "image") -> np.ndarray:
    """Return ``image`` as RGB uint8 (H, W, 3): RGBA loses alpha, float in [0, 1] is scaled; else UserError."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise UserError(
            f"{name}: expected an RGB image of shape (H, W, 3), got shape {arr.shape}"
            " (grayscale images cannot be colour-deconvolved)"
        )
    if arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1.0):
            raise UserError(f"{name}: float images must hold values in [0, 1], got "
                            f"[{np.nanmin(arr):.3g}, {np.nanmax(arr):.3g}]")
        return np.round(np.nan_to_num(arr) * 255.0).astype(np.uint8)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"{name}: unsupported pixel type {arr.dtype}; expected uint8 RGB")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise UserError(f"{name}: integer pixel values must be in 0..255, got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.uint8)


def od_image(rgb: np.ndarray) -> np.ndarray:
    """Optical density of an RGB uint8 image, float32 (H, W, 3), OD units (0 = white)."""
    return _OD_LUT[as_rgb(rgb)]


def rgb_from_od(od: np.ndarray) -> np.ndarray:
    """Inverse of :func:`od_image`: OD (…, 3) -> RGB uint8, for rendering synthetic stains."""
    rgb = 256.0 * np.power(10.0, -np.asarray(od, dtype=np.float64)) - 1.0
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def normalize_stains(stains: Any) -> np.ndarray:
    """Validate a (2, 3) or (3, 3) stain OD matrix and return it as unit rows (3, 3), the third completed."""
    w = np.asarray(stains, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != 3 or w.shape[0] not in (2, 3) or not np.all(np.isfinite(w)):
        raise UserError(f"stain matrix must be a finite (2, 3) or (3, 3) array of OD vectors, got shape {w.shape}")
    norms = np.linalg.norm(w, axis=1)
    if np.any(norms[:2] < 1e-8):
        raise UserError("stain matrix: the H and E vectors must be non-zero")
    w = w.copy()
    w[:2] /= norms[:2, None]
    if w.shape[0] == 2 or norms[2] < 1e-8:
        third = np.cross(w[0], w[1])
        if np.linalg.norm(third) < 1e-8:
            raise UserError("stain matrix: the H and E vectors are parallel")
        third = third if third[np.argmax(np.abs(third))] > 0 else -third  # orthogonal residual
        w = np.vstack([w[:2], third / np.linalg.norm(third)])
    else:
        w[2] /= norms[2]
    if abs(np.linalg.det(w)) < 1e-6:
        raise UserError("stain matrix: the stain vectors are linearly dependent")
    return w


def concentrations(rgb: np.ndarray, stains: Any = None) -> np.ndarray:
    """All stain concentrations of an RGB image: float32 (H, W, 3) OD units, clipped at 0."""
    w = RUIFROK_HED if stains is None else normalize_stains(stains)
    inv = np.linalg.inv(w).astype(np.float32)
    od = od_image(rgb)
    c = od.reshape(-1, 3) @ inv
    np.maximum(c, 0.0, out=c)
    return c.reshape(od.shape)


def _stain_tables(stains: Any) -> np.ndarray:
    """(256, 3 channels, 3 stains) float32 table: OD of each 8-bit value times the inverse stain matrix."""
    w = RUIFROK_HED if stains is None else normalize_stains(stains)
    return (_OD_LUT.astype(np.float64)[:, None, None] * np.linalg.inv(w)[None, :, :]).astype(np.float32)


_RUIFROK_TABLES = _stain_tables(None)


def _unmix(rgb: np.ndarray, tables: np.ndarray, k: int) -> np.ndarray:
    """Concentration of stain ``k``: sum over channels of the table looked up at each channel's value."""
    out = np.take(tables[:, 0, k], rgb[..., 0])
    out += np.take(tables[:, 1, k], rgb[..., 1])
    out += np.take(tables[:, 2, k], rgb[..., 2])
    np.maximum(out, 0.0, out=out)
    return out


def separate(rgb: np.ndarray, stains: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Colour-deconvolve RGB uint8 (H, W, 3) into H and E concentration images, float32, OD units, >= 0.

    Equal to ``od @ inv(W)`` (clipped at 0); as OD is a per-channel function of the 8-bit value, the
    product is evaluated as three table look-ups per stain (no (H, W, 3) float intermediate).
    """
    tables = _RUIFROK_TABLES if stains is None else _stain_tables(stains)
    rgb = as_rgb(rgb)
    return _unmix(rgb, tables, 0), _unmix(rgb, tables, 1)


def haematoxylin(rgb: np.ndarray, stains: Any = None) -> np.ndarray:
    """The H concentration image alone (float32, OD units, >= 0); as ``separate(rgb, stains)[0]``."""
    tables = _RUIFROK_TABLES if stains is None else _stain_tables(stains)
    return _unmix(as_rgb(rgb), tables, 0)


def _sample_rgb(rgb_or_slide: Any) -> tuple[np.ndarray, str]:
    """Pixels to estimate stains from: an RGB array, or a slide's low-resolution thumbnail."""
    if hasattr(rgb_or_slide, "thumbnail") and hasattr(rgb_or_slide, "read_region"):
        name = str(getattr(rgb_or_slide, "path", "slide"))
        thumb = rgb_or_slide.thumbnail(1024)
        if isinstance(thumb, tuple):
            thumb = thumb[0]
        return as_rgb(thumb, name), name
    return as_rgb(rgb_or_slide), "image"


def estimate_stains(
    rgb_or_slide: Any,
    od_threshold: float = 0.15,
    alpha: float = 1.0,
    min_pixels: int = 500,
    max_pixels: int = 200_000,
    seed: int = 0,
) -> np.ndarray:
    """Macenko stain vectors of an RGB image or a Slide's thumbnail: (3, 3) unit OD rows H, E, residual."""
    rgb, name = _sample_rgb(rgb_or_slide)
    od = _OD_LUT[rgb].reshape(-1, 3).astype(np.float64)
    # tissue pixels: OD magnitude above the threshold (keeps pure eosin, which absorbs little red),
    # none saturated (0 in a channel carries no colour information)
    od = od[(np.linalg.norm(od, axis=1) > od_threshold) & np.all(od < _OD_MAX - 1e-6, axis=1)]
    if od.shape[0] < min_pixels:
        err = (f"too few stained tissue pixels to estimate stain vectors "
               f"({od.shape[0]} < {min_pixels} with OD > {od_threshold})")
        raise SlideError(name, err) if name != "image" else UserError(f"image: {err}")
    if od.shape[0] > max_pixels:
        idx = np.random.default_rng(seed).choice(od.shape[0], max_pixels, replace=False)
        od = od[idx]
    # plane of the two largest principal directions of the OD cloud (eigenvectors of its covariance)
    _, _, vt = np.linalg.svd(od - od.mean(axis=0), full_matrices=False)
    plane = vt[:2].T  # (3, 2)
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive OD
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1 = np.abs(v1) if np.all(v1 <= 1e-9) else v1
    v2 = np.abs(v2) if np.all(v2 <= 1e-9) else v2
    v1 = np.clip(v1, 0.0, None)
    v2 = np.clip(v2, 0.0, None)
    if np.linalg.norm(v1) < 1e-8 or np.linalg.norm(v2) < 1e-8:
        raise UserError(f"{name}: could not estimate stain vectors (degenerate colour distribution)")
    v1 /= np.linalg.norm(v1)
    v2 /= np.linalg.norm(v2)
    # haematoxylin absorbs red light more than eosin does: H is the vector with the larger red OD
    h, e = (v1, v2) if v1[0] >= v2[0] else (v2, v1)
    if np.linalg.norm(np.cross(h, e)) < 1e-3:
        raise UserError(f"{name}: could not estimate stain vectors (only one stain colour found)")
    return normalize_stains(np.vstack([h, e]))

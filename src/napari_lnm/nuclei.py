"""Nucleus instance segmentation on the haematoxylin image of an H&E tile.

Every size parameter is in µm / µm² (:class:`NucleiConfig`) and converted to pixels with the tile's
``mpp`` (µm per pixel), so the same defaults work at 20x (0.5 µm/px) and 40x (0.25 µm/px).

Methods
-------
``"lmc"`` (default) — local-maximum clustering: foreground by a threshold on the smoothed H image
    (Otsu x 0.88, clipped to [0.30, 0.60] OD), opened and hole-filled; a blob response (smoothed
    distance to background plus scale-normalised Laplacian-of-Gaussian of H); seeds are its maxima
    within ``seed_radius_um``; every foreground pixel climbs the response (steepest ascent, pointer
    jumping) to a local maximum, and the basin of a non-seed maximum joins the seed above it.
    With ``foreground="model"`` the foreground is instead the shipped pixel classifier's nucleus
    probability > ``prob_threshold`` (an ilastik-style filter bank on H and E at scales in µm and a
    one-hidden-layer perceptron, numpy only, ``data/nuclei_pixel_model.npz``), and its nucleus-interior
    probability replaces the LoG term of the blob response: more accurate (AJI +0.02-0.03 on
    nuclei-dev) but ~3x slower, hence not the default (see docs/benchmarks.md).
    With ``foreground="cnn"`` both maps come from the shipped U-Net (``napari_lnm.nuclei_net``, needs
    PyTorch): the most accurate (AJI +0.04-0.05 over the threshold), ~7x slower than the default (bf16).
``"watershed"`` — classical marker-controlled watershed: the same foregrounds;
    seeds at prominent maxima of the smoothed distance transform, flooding the negated distance.
``"typed"`` — the shipped typed network (``napari_lnm.nuclei_typed``, needs PyTorch): one U-Net pass
    gives nucleus, distance-to-border and type maps; instances by a marker watershed of the distance.
    ``classify_nuclei`` returns the same labels plus one type (:data:`NUCLEUS_TYPES`) per nucleus.
``"deep"`` — a user-supplied TorchScript model (``weights=path``) mapping RGB to instance labels or
    to nucleus probability / background-interior-boundary maps (split into instances by LMC).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .errors import ModelError, UserError
from .filters import bin2, gauss, upsample
from .nuclei_typed import NUCLEUS_TYPES  # the classes of classify_nuclei (stromal: spindle / fibroblast)
from .stain import as_rgb, haematoxylin, separate

__all__ = ["NucleiConfig", "PixelModel", "segment_nuclei", "pixel_probabilities", "load_pixel_model",
           "pixel_features", "METHODS", "FOREGROUNDS", "PIXEL_MODEL_PATH", "relabel_consecutive",
           "classify_nuclei", "NUCLEUS_TYPES"]

METHODS = ("lmc", "watershed", "deep", "typed")
FOREGROUNDS = ("threshold", "model", "cnn")
#: the shipped pixel classifier (numpy arrays only; regenerate with benchmarks/train_nuclei_pixel_model.py)
PIXEL_MODEL_PATH = Path(__file__).resolve().parent / "data" / "nuclei_pixel_model.npz"


@dataclass(frozen=True)
class NucleiConfig:
    """Parameters of nucleus segmentation; lengths in µm, areas in µm², intensities in H OD units."""

    smooth_sigma_um: float = 0.3  # Gaussian smoothing of H before thresholding (µm)
    threshold: float | None = None  # fixed H OD threshold; None = automatic (Otsu of the tile)
    threshold_min: float = 0.30  # lower bound of the automatic threshold (H OD)
    threshold_max: float = 0.60  # upper bound of the automatic threshold (H OD)
    threshold_factor: float = 0.88  # the automatic threshold is Otsu x this factor
    min_area_um2: float = 6.0  # smaller objects are removed (µm²)
    max_area_um2: float = 400.0  # larger objects are removed (µm²)
    fill_holes_um2: float = 6.0  # holes up to this size inside nuclei are filled (µm²)
    open_radius_um: float = 0.5  # morphological opening of the foreground (µm), 0 = none
    seed_radius_um: float = 1.5  # a seed is the highest point within this distance (µm)
    nucleus_radius_um: float = 2.25  # typical nucleus radius (µm): scale of the blob response
    log_weight: float = 1.0  # weight of the LoG term relative to the distance term (LMC)
    response_smooth: float = 1.0  # Gaussian of the blob response, in units of the LoG scale r/sqrt(2)
    seed_h: float = 0.5  # watershed option: minimum prominence of a distance peak (µm)
    foreground: str = "threshold"  # "threshold" (Otsu of smoothed H), "model" (pixel classifier) or "cnn" (U-Net)
    prob_threshold: float = 0.45  # model foreground: nucleus probability above this
    interior_weight: float | None = None  # weight (µm) of the interior probability in the response; None: 1 (model), 2 (cnn)

    def __post_init__(self) -> None:
        """Reject settings that cannot work, with a one-line UserError."""
        for name in ("smooth_sigma_um", "min_area_um2", "fill_holes_um2", "open_radius_um", "log_weight",
                     "response_smooth", "seed_h", "threshold_min", "threshold_factor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise UserError(f"NucleiConfig: {name} must be a number >= 0, got {value!r}")
        for name in ("seed_radius_um", "nucleus_radius_um", "max_area_um2", "threshold_max"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise UserError(f"NucleiConfig: {name} must be a number > 0, got {value!r}")
        if self.min_area_um2 > self.max_area_um2:
            raise UserError("NucleiConfig: min_area_um2 is larger than max_area_um2")
        if self.threshold_min > self.threshold_max:
            raise UserError("NucleiConfig: threshold_min is larger than threshold_max")
        if self.foreground not in FOREGROUNDS:
            raise UserError(f"NucleiConfig: foreground must be one of {', '.join(FOREGROUNDS)}, got {self.foreground!r}")
        if not (isinstance(self.prob_threshold, (int, float)) and 0 < self.prob_threshold < 1):
            raise UserError(f"NucleiConfig: prob_threshold must be in (0, 1), got {self.prob_threshold!r}")
        if self.interior_weight is not None and not (
                isinstance(self.interior_weight, (int, float)) and np.isfinite(self.interior_weight)
                and self.interior_weight >= 0):
            raise UserError(f"NucleiConfig: interior_weight must be a number >= 0, got {self.interior_weight!r}")


def relabel_consecutive(labels: np.ndarray, min_px: int = 0, max_px: int | None = None) -> np.ndarray:
    """Drop objects outside [min_px, max_px] pixels and renumber the rest 1..n, int32."""
    lab = np.asarray(labels)
    if lab.size == 0 or lab.max() == 0:
        return np.zeros(lab.shape, dtype=np.int32)
    counts = np.bincount(lab.ravel())
    keep = counts >= max(min_px, 1)
    if max_px is not None:
        keep &= counts <= max_px
    keep[0] = False
    if keep[1:].all():  # already 1..n, nothing dropped
        return lab.astype(np.int32)
    lut = np.zeros(counts.size, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return np.take(lut, lab)




def _otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu threshold of a 1-D sample (same units)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _threshold(hs: np.ndarray, cfg: NucleiConfig) -> float:
    """Foreground threshold on the smoothed H image (OD): fixed, or Otsu x factor clipped to bounds."""
    if cfg.threshold is not None:
        return float(cfg.threshold)
    sample = hs[::2, ::2].ravel()
    if sample.size == 0 or float(sample.max()) <= cfg.threshold_min:
        return cfg.threshold_max  # nothing stained: an empty or white tile
    thr = _otsu(sample) * cfg.threshold_factor
    return float(np.clip(thr, cfg.threshold_min, cfg.threshold_max))


def _shift_reduce(mask: np.ndarray, square: bool, erode: bool) -> np.ndarray:
    """One step of binary erosion (AND) or dilation (OR) with a 3x3 cross or square, by array slicing."""
    out = mask.copy()
    op = np.logical_and if erode else np.logical_or
    op(out[1:], mask[:-1], out=out[1:])
    op(out[:-1], mask[1:], out=out[:-1])
    op(out[:, 1:], mask[:, :-1], out=out[:, 1:])
    op(out[:, :-1], mask[:, 1:], out=out[:, :-1])
    if square:
        op(out[1:, 1:], mask[:-1, :-1], out=out[1:, 1:])
        op(out[1:, :-1], mask[:-1, 1:], out=out[1:, :-1])
        op(out[:-1, 1:], mask[1:, :-1], out=out[:-1, 1:])
        op(out[:-1, :-1], mask[1:, 1:], out=out[:-1, :-1])
    return out


def _open(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary opening with an octagon of the given radius (px), alternating cross and square steps."""
    r = int(round(radius_px))
    if r < 1:
        return mask
    out = mask
    for k in range(r):
        out = _shift_reduce(out, k % 2 == 1, erode=True)
    for k in range(r):
        out = _shift_reduce(out, k % 2 == 1, erode=False)
    return out


def _fill_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill background components of at most ``max_px`` pixels enclosed in the mask."""
    if max_px < 1:
        return mask
    bg_lab, n = ndi.label(~mask)
    if not n:
        return mask
    sizes = np.bincount(bg_lab.ravel())
    small = sizes <= max_px
    small[0] = False
    if not small.any():
        return mask
    return mask | np.take(small, bg_lab)


def _foreground(hs: np.ndarray, mpp: float, cfg: NucleiConfig) -> np.ndarray:
    """Nucleus foreground mask from the smoothed H image (threshold, opening, hole filling)."""
    thr = _threshold(hs, cfg)
    fg = hs > np.float32(thr)
    fg = _open(fg, cfg.open_radius_um / mpp)
    return _fill_holes(fg, cfg.fill_holes_um2 / (mpp * mpp))


# --- pixel classifier (ilastik-style filter bank + a one-hidden-layer perceptron) -------------------


@dataclass(frozen=True)
class PixelModel:
    """A pixel classifier: filter-bank scales (µm) and a 1-hidden-layer MLP with the feature
    standardisation folded into the first layer; outputs logits of (nucleus, nucleus interior)."""

    h_scales_um: tuple[float, ...]  # Gaussian scales of the H filter bank (µm)
    ctx_scales_um: tuple[float, ...]  # Gaussian scales of the E context features (µm)
    w1: np.ndarray  # (hidden, features) float32, acting on raw features
    b1: np.ndarray  # (hidden, 1) float32
    w2: np.ndarray  # (2, hidden) float32
    b2: np.ndarray  # (2, 1) float32

    @property
    def n_features(self) -> int:
        """Number of input features (4 per H scale, 1 per context scale)."""
        return 4 * len(self.h_scales_um) + len(self.ctx_scales_um)


_PIXEL_MODELS: dict[str, PixelModel] = {}
_MODEL_KEYS = ("h_scales_um", "ctx_scales_um", "mean", "std", "w1", "b1", "w2", "b2")


def load_pixel_model(path: str | os.PathLike | None = None) -> PixelModel:
    """Load (and cache) a pixel-model .npz (``np.load(allow_pickle=False)``); ModelError if invalid."""
    path = Path(os.fspath(path)) if path is not None else PIXEL_MODEL_PATH
    key = str(path.resolve())
    if key in _PIXEL_MODELS:
        return _PIXEL_MODELS[key]
    if not path.is_file():
        raise ModelError(f"{path}: nucleus pixel-model file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: np.asarray(z[k], dtype=np.float64) for k in _MODEL_KEYS}
    except (KeyError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: not a nucleus pixel-model file ({type(exc).__name__}: {exc})") from None
    hs = tuple(np.atleast_1d(d["h_scales_um"]).tolist())
    cs = tuple(np.atleast_1d(d["ctx_scales_um"]).tolist())
    nf = 4 * len(hs) + len(cs)
    w1, w2 = d["w1"], d["w2"]
    if (w1.ndim != 2 or w1.shape[1] != nf or d["mean"].shape != (nf,) or d["std"].shape != (nf,)
            or d["b1"].shape != (w1.shape[0],) or w2.shape != (2, w1.shape[0]) or d["b2"].shape != (2,)
            or not all(np.all(np.isfinite(v)) for v in d.values()) or np.any(d["std"] <= 0)
            or min(hs + cs, default=0.0) <= 0):
        raise ModelError(f"{path}: inconsistent pixel-model arrays (expected {nf} features)")
    w1f = w1 / d["std"][None, :]  # standardisation folded in: w1 @ ((x - mean) / std) + b1
    model = PixelModel(hs, cs, w1f.astype(np.float32), (d["b1"] - w1f @ d["mean"])[:, None].astype(np.float32),
                       w2.astype(np.float32), d["b2"][:, None].astype(np.float32))
    _PIXEL_MODELS[key] = model
    return model








def _pyramid_gauss(img: np.ndarray, sigma_px: float, min_level_sigma: float = 1.5) -> tuple[np.ndarray, int]:
    """Gaussian smoothing at ``sigma_px`` (px), on a 2^k-binned copy while the sigma left there stays
    >= ``min_level_sigma`` px: returns (smoothed image at the coarse level, binning factor)."""
    f = 1
    base = img
    while sigma_px / (2 * f) >= min_level_sigma and min(base.shape) >= 8:
        base = bin2(base)
        f *= 2
    s = np.sqrt(max(sigma_px**2 - (f * f - 1) / 12.0, 0.0)) / f  # a box of f px adds (f²-1)/12 px²
    return gauss(base, s), f


def _derivative_features(g: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale-normalised gradient magnitude x s, Laplacian x s² and Hessian anisotropy x s² of a
    smoothed image (central differences, per px of its level; zero on the outermost pixels)."""
    c = g[1:-1, 1:-1]
    gy = np.zeros_like(g)
    gx = np.zeros_like(g)
    np.subtract(g[2:, 1:-1], g[:-2, 1:-1], out=gy[1:-1, 1:-1])
    np.subtract(g[1:-1, 2:], g[1:-1, :-2], out=gx[1:-1, 1:-1])
    grad = np.hypot(gy, gx)
    grad *= np.float32(0.5 * s)
    gyy = gy  # reuse the buffers: second derivatives
    np.add(g[2:, 1:-1], g[:-2, 1:-1], out=gyy[1:-1, 1:-1])
    gyy[1:-1, 1:-1] -= c
    gyy[1:-1, 1:-1] -= c
    gxx = gx
    np.add(g[1:-1, 2:], g[1:-1, :-2], out=gxx[1:-1, 1:-1])
    gxx[1:-1, 1:-1] -= c
    gxx[1:-1, 1:-1] -= c
    gxy = np.zeros_like(g)
    np.add(g[2:, 2:], g[:-2, :-2], out=gxy[1:-1, 1:-1])
    gxy[1:-1, 1:-1] -= g[2:, :-2]
    gxy[1:-1, 1:-1] -= g[:-2, 2:]
    lap = gyy + gxx
    lap *= np.float32(s * s)
    gyy -= gxx
    gyy *= np.float32(0.5)
    gxy *= np.float32(0.25)
    aniso = np.hypot(gyy, gxy)
    aniso *= np.float32(s * s)
    return grad, lap, aniso


def pixel_features(h: np.ndarray, e: np.ndarray, mpp: float,
                   h_scales_um: tuple[float, ...], ctx_scales_um: tuple[float, ...]) -> np.ndarray:
    """Filter bank (features, pixels) float32: per H scale s (µm) the Gaussian-smoothed H (OD), its
    gradient magnitude x s, Laplacian x s² and Hessian anisotropy x s² (scale-normalised, OD); per
    context scale the smoothed E (OD).  Scales in µm, so 20x and 40x tiles give the same features;
    large scales are computed on binned copies and linearly upsampled."""
    shape = h.shape
    out = np.empty((4 * len(h_scales_um) + len(ctx_scales_um), h.size), np.float32)
    k = 0
    for s_um in h_scales_um:
        g, f = _pyramid_gauss(h, s_um / mpp)
        for feat in (g,) + _derivative_features(g, s_um / mpp / f):
            out[k] = upsample(feat, f, shape).ravel()
            k += 1
    for s_um in ctx_scales_um:
        g, f = _pyramid_gauss(e, s_um / mpp, 0.75)
        out[k] = upsample(g, f, shape).ravel()
        k += 1
    return out


def _eosin(rgb: np.ndarray, e: np.ndarray | None) -> np.ndarray:
    """The E image (given, or Ruifrok deconvolution of the RGB uint8 tile), float32 OD."""
    return separate(rgb)[1] if e is None else np.asarray(e, dtype=np.float32)


def _model_logits(h: np.ndarray, e: np.ndarray, mpp: float, model: PixelModel) -> np.ndarray:
    """Logits (2, rows, cols) float32 of nucleus and nucleus-interior for every pixel of H and E (OD)."""
    x = pixel_features(h, e, mpp, model.h_scales_um, model.ctx_scales_um)
    z = np.empty((2, x.shape[1]), np.float32)
    step = 8192  # pixels per block: the hidden activations stay in cache
    hidden = np.empty((model.w1.shape[0], min(step, x.shape[1])), np.float32)
    for i in range(0, x.shape[1], step):
        block = x[:, i : i + step]
        hb = hidden[:, : block.shape[1]]
        np.matmul(model.w1, block, out=hb)
        hb += model.b1
        np.maximum(hb, 0.0, out=hb)
        np.matmul(model.w2, hb, out=z[:, i : i + step])
    z += model.b2
    return z.reshape((2,) + h.shape)


def pixel_probabilities(rgb: np.ndarray, mpp: float, h: np.ndarray | None = None,
                        model: str | os.PathLike | PixelModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus and nucleus-interior probability maps (float32, 0..1) of an RGB tile at ``mpp`` µm/px."""
    rgb = as_rgb(rgb)
    pm = model if isinstance(model, PixelModel) else load_pixel_model(model)
    hh, e = separate(rgb)
    z = _model_logits(hh if h is None else np.asarray(h, np.float32), e, float(mpp), pm)
    p = 1.0 / (1.0 + np.exp(-z))
    return p[0], p[1]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, float32."""
    return (np.float32(1.0) / (np.float32(1.0) + np.exp(-z))).astype(np.float32, copy=False)


#: default weight (µm) of the interior probability in the LMC response, per learned foreground (tuned
#: on the tuning slides of nuclei-dev: model 1 / 2 / 4 -> AJI 0.707 / 0.707 / 0.702; cnn 1 / 2 / 3 ->
#: 0.711 / 0.715 / 0.715 with the stop-10 weights, 0.708 / 0.716 / 0.716 with stop 9's)
_INTERIOR_WEIGHT = {"model": 1.0, "cnn": 2.0}


def _model_foreground(h: np.ndarray, e: np.ndarray, mpp: float,
                      cfg: NucleiConfig) -> tuple[np.ndarray, np.ndarray]:
    """Foreground mask (probability > threshold, opened, holes filled) and interior probability, from
    the shipped perceptron (``foreground="model"``) or the shipped U-Net (``"cnn"``, needs PyTorch)."""
    if cfg.foreground == "cnn":
        from .nuclei_net import unet_logits

        z = unet_logits(h, e, mpp)
    else:
        z = _model_logits(h, e, mpp, load_pixel_model())
    t = float(np.log(cfg.prob_threshold / (1.0 - cfg.prob_threshold)))
    fg = z[0] > np.float32(t)
    fg = _open(fg, cfg.open_radius_um / mpp)
    return _fill_holes(fg, cfg.fill_holes_um2 / (mpp * mpp)), _sigmoid(z[1])


def _distance(mask: np.ndarray, mpp: float) -> np.ndarray:
    """Chessboard (chamfer) distance of mask pixels to the background, in µm; the blob response
    smooths it, and it is ~10x cheaper than the Euclidean transform (and scored as well)."""
    d = ndi.distance_transform_cdt(mask, metric="chessboard").astype(np.float32)
    d *= np.float32(mpp)
    return d


def _laplace(img: np.ndarray) -> np.ndarray:
    """5-point Laplacian (per px²) with edge replication, by array slicing."""
    out = np.empty_like(img)
    out[...] = img * np.float32(-4.0)
    out[1:] += img[:-1]
    out[0] += img[0]
    out[:-1] += img[1:]
    out[-1] += img[-1]
    out[:, 1:] += img[:, :-1]
    out[:, 0] += img[:, 0]
    out[:, :-1] += img[:, 1:]
    out[:, -1] += img[:, -1]
    return out


def _smooth_laplace(img: np.ndarray, sigma_px: float, full: bool = True) -> np.ndarray:
    """Laplacian of the Gaussian-smoothed image (per full-resolution px²); computed on a 2x2-binned copy
    when sigma >= 2 px (the smoothing removes what binning loses) and repeated back to full size
    (``full=False``: returned binned when it was binned, so the caller can broadcast it)."""
    if sigma_px < 2.0:
        return _laplace(gauss(img, sigma_px))
    rows, cols = img.shape
    small = bin2(img)
    # a 2-px box has variance 1/4 px²; the rest of sigma is done at half resolution
    lap = _laplace(gauss(small, np.sqrt(sigma_px**2 - 0.25) / 2.0))
    lap *= np.float32(0.25)
    if not full:
        return lap
    return np.repeat(np.repeat(lap, 2, axis=0), 2, axis=1)[:rows, :cols]


def _blob_response(hs: np.ndarray, fg: np.ndarray, mpp: float, cfg: NucleiConfig, s0_px: float) -> np.ndarray:
    """Blob response (µm): distance to background smoothed at s/2 plus the scale-normalised negative
    Laplacian of Gaussian of H at scale s = nucleus radius / sqrt(2).  The LoG is split so that one
    Gaussian serves both terms: ΔG_s(h) = G_{s/2}(Δ G_a(hs)) with a² = 3s²/4 - s0² (hs already at s0)."""
    sig = cfg.nucleus_radius_um / np.sqrt(2.0) / mpp
    s2 = 0.5 * sig * cfg.response_smooth
    resp = _distance(fg, mpp)
    if cfg.log_weight:
        a = np.sqrt(max(sig * sig - s2 * s2 - s0_px * s0_px, 0.0))
        rows, cols = resp.shape
        lap = _smooth_laplace(hs, a, full=bool(rows % 2 or cols % 2))
        lap *= np.float32(cfg.log_weight * cfg.nucleus_radius_um * sig * sig)
        if lap.shape == resp.shape:
            resp -= lap
        else:  # binned: repeat the columns, subtract each such row from its two full-resolution rows
            resp.reshape(rows // 2, 2, cols)[...] -= np.repeat(lap, 2, axis=1)[:, None, :]
    return gauss(resp, s2)


def _peaks(resp: np.ndarray, mask: np.ndarray, radius_px: float, h: float) -> np.ndarray:
    """Marker image of local maxima of ``resp`` within a (2r+1)² window inside ``mask``, prominence >= h."""
    size = 2 * max(1, int(round(radius_px))) + 1
    mx = ndi.maximum_filter(resp, size=size, mode="nearest")
    peak = (resp >= mx) & mask
    if h > 0:
        # prominence test: the peak must rise at least h above the minimum of its neighbourhood
        mn = ndi.minimum_filter(resp, size=size, mode="nearest")
        peak &= (resp - mn) >= h
    markers, _ = ndi.label(peak, structure=np.ones((3, 3), bool))  # plateaus -> one seed
    return markers


def _watershed(surface: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Flood ``surface`` from the markers inside the mask (skimage watershed); a mask component
    without any marker (its peak suppressed by a brighter neighbour across background) is one object."""
    from skimage.segmentation import watershed

    comp, n = ndi.label(mask)
    if n:
        seeded = np.zeros(n + 1, dtype=bool)
        seeded[comp[markers > 0]] = True
        seeded[0] = True
        if not seeded.all():
            lut = np.zeros(n + 1, dtype=np.int64)
            lut[~seeded] = int(markers.max()) + np.arange(1, int((~seeded).sum()) + 1)
            markers = np.where(markers > 0, markers, lut[comp])
    return watershed(surface, markers=markers, mask=mask)


def _pointer_jump(parent: np.ndarray) -> np.ndarray:
    """The root of every element of a forest given as a parent index array (roots point to themselves)."""
    while True:
        nxt = np.take(parent, parent)
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt


#: the 8 neighbours (dy, dx) in raster order, and the lowest set bit of every byte (for _max_clustering)
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_LOWEST_BIT = np.array([(b & -b).bit_length() - 1 if b else 0 for b in range(256)], dtype=np.intp)


def _max_clustering(resp: np.ndarray, mask: np.ndarray, radius_px: float,
                    dense: bool | None = None) -> np.ndarray:
    """Local-maximum clustering: every mask pixel climbs the response to a seed; labels 1..n (int32).

    Each pixel points to its highest 8-neighbour (the first in raster order; itself if none is higher)
    and pointer jumping finds the local maximum it climbs to.  A local maximum is a seed when it is the
    highest pixel of its own mask component within ``radius_px`` (square window); otherwise it points
    to that higher pixel and its whole basin joins the seed reached from there.  All steps are array
    operations (no per-object loops).  ``dense`` picks how the steepest neighbour is found (whole-image
    slices, or gathers at the mask pixels; same result): by default dense when the mask covers >= 10 %.
    """
    # (temporaries are dropped as soon as they are done with: fresh memory costs page faults)
    mask = np.asarray(mask, dtype=bool)
    rows, cols = mask.shape
    inside = np.flatnonzero(mask)  # the mask pixels (raster order); "compact" indices index this
    n = inside.size
    if n == 0:
        return np.zeros((rows, cols), dtype=np.int32)
    w = cols + 2
    padded = np.full((rows + 2, w), -np.inf, dtype=np.float32)  # -inf outside the mask and the image
    np.copyto(padded[1:-1, 1:-1], resp, where=mask)
    if dense is None:
        dense = n >= 0.1 * mask.size
    if dense:
        # the 3x3 maximum (separable), then bit k of `up` marks neighbour k (raster order) reaching
        # it; the lowest set bit is the first highest neighbour, none when the pixel itself reaches it
        rmax = np.maximum(padded[:-2], padded[2:])
        np.maximum(rmax, padded[1:-1], out=rmax)
        top3 = np.maximum(rmax[:, :-2], rmax[:, 2:])
        np.maximum(top3, rmax[:, 1:-1], out=top3)
        del rmax
        views = [padded[1 + dy:rows + 1 + dy, 1 + dx:cols + 1 + dx] for dy, dx in _NEIGHBOURS]
        up = np.zeros((rows, cols), dtype=np.uint8)
        eq = np.empty((rows, cols), dtype=bool)
        bit = eq.view(np.uint8)
        for k, v in enumerate(views):
            np.equal(v, top3, out=eq)
            if k:
                np.multiply(bit, np.uint8(1 << k), out=bit)  # (a uint8 multiply is SIMD, a shift is not)
            np.bitwise_or(up, bit, out=up)
        np.less(padded[1:-1, 1:-1], top3, out=eq)
        np.multiply(up, bit, out=up)  # the pixel itself is highest: ties keep the pixel
        offsets = np.array([0] + [dy * cols + dx for dy, dx in _NEIGHBOURS], dtype=np.intp)
        lut = offsets[_LOWEST_BIT + 1]
        lut[0] = 0
        step = np.take(lut, up.ravel()[inside])
        del top3, up, eq, bit
    else:
        # gathers at the mask pixels: a strictly higher neighbour replaces the best so far
        flat = padded.ravel()
        pidx = inside + (inside // cols) * 2 + (w + 1)  # the mask pixels' indices in the padded image
        cur = flat[pidx]
        step = np.zeros(n, dtype=np.intp)
        for dy, dx in _NEIGHBOURS:
            v = flat[pidx + (dy * w + dx)]
            better = v > cur
            np.copyto(cur, v, where=better)
            np.copyto(step, dy * cols + dx, where=better)
        del flat, pidx, cur, v, better
    pos = np.empty(rows * cols, dtype=np.int32)  # image index -> compact index (mask pixels only)
    pos[inside] = np.arange(n, dtype=np.int32)
    parent = _pointer_jump(np.take(pos, inside + step))  # each mask pixel -> its local maximum
    rc = np.flatnonzero(step == 0)  # compact indices of the local maxima
    roots = inside[rc]
    # window test for every local maximum: its (2r+1)^2 neighbourhood (clipped to the image)
    r = max(1, int(round(radius_px)))
    off = np.arange(-r, r + 1)
    ry, rx = np.divmod(roots, cols)
    yy = np.clip(ry[:, None, None] + off[None, :, None], 0, rows - 1)
    xx = np.clip(rx[:, None, None] + off[None, None, :], 0, cols - 1)
    win = (yy * cols + xx).reshape(roots.size, -1)
    vals = padded.ravel()[(yy * w + xx + (w + 1)).reshape(roots.size, -1)]
    del padded
    top = win[np.arange(roots.size), np.argmax(vals, axis=1)]
    fail = np.flatnonzero(top != roots)
    if fail.size:  # a higher pixel in the window: it counts only in the same mask component
        comp = ndi.label(mask)[0].ravel()
        wf = win[fail]
        vf = np.where(comp[wf] == comp[roots[fail]][:, None], vals[fail], -np.inf)  # never across background
        top[fail] = wf[np.arange(fail.size), np.argmax(vf, axis=1)]
        del comp
    is_seed = top == roots  # the first highest pixel of its window (ties broken in raster order)
    # a non-seed maximum joins the maximum reached from its higher pixel; chains end at seeds
    ridx = np.zeros(n, dtype=np.int32)
    ridx[rc] = np.arange(rc.size, dtype=np.int32)
    join = np.arange(rc.size, dtype=np.int32)
    ns = ~is_seed
    join[ns] = ridx[parent[pos[top[ns]]]]
    join = _pointer_jump(join)
    seed_lab = np.zeros(rc.size, dtype=np.int32)
    seed_lab[is_seed] = np.arange(1, int(is_seed.sum()) + 1, dtype=np.int32)
    out = pos  # (pos is done with: its memory becomes the label image)
    out.fill(0)
    out[inside] = seed_lab[join][ridx[parent]]
    return out.reshape(rows, cols)


def _lmc(rgb: np.ndarray, h: np.ndarray, e: np.ndarray | None, mpp: float, cfg: NucleiConfig) -> np.ndarray:
    """Local-maximum clustering of the H image (see module doc); labels before size filtering."""
    if cfg.foreground != "threshold":
        fg, interior = _model_foreground(h, _eosin(rgb, e), mpp, cfg)
        if not fg.any():
            return np.zeros(h.shape, dtype=np.int32)
        # blob response (µm): smoothed distance to background plus the smoothed interior probability
        resp = gauss(_distance(fg, mpp), 0.5 * cfg.response_smooth * cfg.nucleus_radius_um / np.sqrt(2.0) / mpp)
        weight = cfg.interior_weight if cfg.interior_weight is not None else _INTERIOR_WEIGHT[cfg.foreground]
        if weight:
            resp += np.float32(weight) * gauss(interior, 0.5 / mpp)
        return _max_clustering(resp, fg, cfg.seed_radius_um / mpp)
    hs = gauss(h, cfg.smooth_sigma_um / mpp)
    fg = _foreground(hs, mpp, cfg)
    if not fg.any():
        return np.zeros(h.shape, dtype=np.int32)
    resp = _blob_response(hs, fg, mpp, cfg, cfg.smooth_sigma_um / mpp)
    del hs  # its memory serves the clustering's temporaries
    return _max_clustering(resp, fg, cfg.seed_radius_um / mpp)


def _classic_watershed(rgb: np.ndarray, h: np.ndarray, e: np.ndarray | None, mpp: float,
                       cfg: NucleiConfig) -> np.ndarray:
    """Marker-controlled watershed: seeds at prominent maxima of the smoothed distance transform of
    the foreground (model or threshold), flooding the negated distance inside it (skimage watershed)."""
    if cfg.foreground != "threshold":
        fg = _model_foreground(h, _eosin(rgb, e), mpp, cfg)[0]
    else:
        fg = _foreground(gauss(h, cfg.smooth_sigma_um / mpp), mpp, cfg)
    if not fg.any():
        return np.zeros(h.shape, dtype=np.int32)
    dist = gauss(_distance(fg, mpp), 0.25 * cfg.nucleus_radius_um / mpp)
    markers = _peaks(dist, fg, cfg.seed_radius_um / mpp, cfg.seed_h)
    return _watershed(-dist, markers, fg)


_DEEP_CACHE: dict[str, Any] = {}


def _load_deep(weights: Any) -> Any:
    """Load a TorchScript nucleus model from a file (cached); UserError when missing or invalid."""
    if weights is None:
        raise UserError('method="deep" needs weights=<path to a TorchScript model file> (none given)')
    path = Path(os.fspath(weights))
    if not path.is_file():
        raise ModelError(f"{path}: nucleus model file not found")
    key = str(path.resolve())
    if key in _DEEP_CACHE:
        return _DEEP_CACHE[key]
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelError(f"{path}: the deep segmenter needs PyTorch (pip install 'napari-lnm[cnn]')") from exc
    try:
        model = torch.jit.load(str(path), map_location="cpu")
        model.eval()
    except Exception as exc:
        raise ModelError(f"{path}: not a TorchScript model file ({type(exc).__name__})") from None
    _DEEP_CACHE[key] = model
    return model


def _instances_from_maps(fg: np.ndarray, resp: np.ndarray, mpp: float, cfg: NucleiConfig) -> np.ndarray:
    """Instances from a foreground mask and a seed response (µm): local-maximum clustering."""
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32)
    resp = resp + gauss(_distance(fg, mpp), 0.5 * cfg.nucleus_radius_um / np.sqrt(2.0) / mpp)
    return _max_clustering(resp.astype(np.float32), fg, cfg.seed_radius_um / mpp)


def _deep(rgb: np.ndarray, mpp: float, cfg: NucleiConfig, weights: Any) -> np.ndarray:
    """Run a TorchScript model on RGB (1, 3, H, W) float in [0, 1] and turn its output into instances.

    Accepted outputs (batch and singleton axes squeezed): integer (H, W) instance labels; float (H, W)
    nucleus probability (logits if outside [0, 1]); (2, H, W) background/nucleus scores; (3, H, W)
    background/interior/boundary scores (softmax over the first axis).  Probability maps are split
    into nuclei by local-maximum clustering of the distance transform plus the interior probability.
    """
    import torch

    model = _load_deep(weights)
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)[None]
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise ModelError(f"{weights}: the model failed on a {rgb.shape} tile ({type(exc).__name__}: {exc})") from None
    if isinstance(out, (tuple, list)):
        out = out[0]
    arr = np.squeeze(out.detach().cpu().numpy())
    shape = rgb.shape[:2]
    if arr.shape[-2:] != shape or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[0] > 3):
        raise ModelError(f"{weights}: model output shape {arr.shape} does not fit the tile {shape}")
    if arr.ndim == 2 and np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        prob = arr if (arr.min() >= 0 and arr.max() <= 1) else 1.0 / (1.0 + np.exp(-arr))
        return _instances_from_maps(prob > 0.5, prob, mpp, cfg)
    e = np.exp(arr - arr.max(axis=0, keepdims=True))
    p = e / e.sum(axis=0, keepdims=True)
    fg = p[0] < 0.5
    fg = _fill_holes(_open(fg, cfg.open_radius_um / mpp), cfg.fill_holes_um2 / (mpp * mpp))
    seed_map = p[1] - p[2] if p.shape[0] == 3 else p[1]
    return _instances_from_maps(fg, np.float32(cfg.nucleus_radius_um) * seed_map, mpp, cfg)


def _typed(rgb: np.ndarray, h: np.ndarray | None, e: np.ndarray | None, mpp: float,
           cfg: NucleiConfig) -> tuple[np.ndarray, Any]:
    """Labels (size-filtered, 1..n) and the maps of one pass of the typed network."""
    from . import nuclei_typed

    if h is None or e is None:
        h2, e2 = separate(rgb)
        h, e = (h2 if h is None else h), (e2 if e is None else e)
    maps = nuclei_typed.typed_maps(np.asarray(h, np.float32), np.asarray(e, np.float32), mpp)
    px = mpp * mpp
    lab = relabel_consecutive(nuclei_typed.instances_from_maps(maps.nucleus, maps.distance),
                              int(np.ceil(cfg.min_area_um2 / px)), int(cfg.max_area_um2 / px))
    return lab, maps


def _check_tile(rgb: Any, mpp: Any, h: Any, e: Any, where: str) -> tuple[np.ndarray, float]:
    """RGB uint8 and mpp as a float, or a UserError naming ``where``; H/E shapes must match the tile."""
    rgb = as_rgb(rgb)
    try:
        mpp = float(mpp)
    except (TypeError, ValueError):
        raise UserError(f"{where}: mpp must be a number in µm/px, got {mpp!r}") from None
    if not np.isfinite(mpp) or mpp <= 0:
        raise UserError(f"{where}: mpp must be a positive number of µm/px, got {mpp}")
    for name, img in (("H", h), ("E", e)):
        if img is not None and np.shape(img) != rgb.shape[:2]:
            raise UserError(f"{where}: {name} image shape {np.shape(img)} does not match the tile {rgb.shape[:2]}")
    return rgb, mpp


def classify_nuclei(rgb: np.ndarray, mpp: float, labels: np.ndarray | None = None, h: np.ndarray | None = None,
                    e: np.ndarray | None = None, config: NucleiConfig | None = None) -> tuple[np.ndarray, Any]:
    """Segment and type the nuclei of an RGB uint8 tile at ``mpp`` µm/px with the typed network:
    (int32 labels, pandas Series of NUCLEUS_TYPES names indexed by label id).

    ``labels=None``: the labels of ``segment_nuclei(rgb, mpp, method="typed")`` from the same network
    pass; else the given labels are typed (each by the summed type probabilities of its pixels)."""
    from . import nuclei_typed

    rgb, mpp = _check_tile(rgb, mpp, h, e, "classify_nuclei")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != rgb.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"classify_nuclei: labels must be an integer image of shape {rgb.shape[:2]}, "
                            f"got {labels.dtype} {labels.shape}")
    lab, maps = _typed(rgb, h, e, mpp, config or NucleiConfig())
    if labels is not None:
        lab = labels.astype(np.int32, copy=False)
    return lab, nuclei_typed.types_series(lab, maps.types)


def segment_nuclei(
    rgb: np.ndarray,
    mpp: float,
    method: str = "lmc",
    h: np.ndarray | None = None,
    config: NucleiConfig | None = None,
    weights: str | os.PathLike | None = None,
    e: np.ndarray | None = None,
    **overrides: Any,
) -> np.ndarray:
    """Segment nuclei of an RGB uint8 tile at ``mpp`` µm/px: int32 labels (0 = background, 1..n).

    ``h`` and ``e``: the tile's H and E images (float32 OD, ``stain.separate``) when the caller has
    them, so each pixel is unmixed once; computed here otherwise."""
    rgb = as_rgb(rgb)
    try:
        mpp = float(mpp)
    except (TypeError, ValueError):
        raise UserError(f"segment_nuclei: mpp must be a number in µm/px, got {mpp!r}") from None
    if not np.isfinite(mpp) or mpp <= 0:
        raise UserError(f"segment_nuclei: mpp must be a positive number of µm/px, got {mpp}")
    if method not in METHODS:
        raise UserError(f"segment_nuclei: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if weights is not None and method != "deep":
        raise UserError(f"segment_nuclei: weights= is only used by method='deep', not {method!r}")
    cfg = config or NucleiConfig()
    if overrides:
        try:
            cfg = replace(cfg, **overrides)
        except TypeError as exc:
            raise UserError(f"segment_nuclei: {exc}") from None
    if h is None:
        h = haematoxylin(rgb)
    else:
        h = np.asarray(h, dtype=np.float32)
        if h.shape != rgb.shape[:2]:
            raise UserError(f"segment_nuclei: H image shape {h.shape} does not match the tile {rgb.shape[:2]}")
    if e is not None and np.shape(e) != rgb.shape[:2]:
        raise UserError(f"segment_nuclei: E image shape {np.shape(e)} does not match the tile {rgb.shape[:2]}")
    if method == "lmc":
        lab = _lmc(rgb, h, e, mpp, cfg)
    elif method == "watershed":
        lab = _classic_watershed(rgb, h, e, mpp, cfg)
    elif method == "typed":
        return _typed(rgb, h, e, mpp, cfg)[0]
    else:
        lab = _deep(rgb, mpp, cfg, weights)
    px = mpp * mpp
    return relabel_consecutive(lab, int(np.ceil(cfg.min_area_um2 / px)), int(cfg.max_area_um2 / px))

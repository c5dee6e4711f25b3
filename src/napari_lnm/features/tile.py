"""Tile-level features from the H and E concentration images: intensity statistics, GLCM (Haralick)
texture, gradient statistics, stain area fractions and the morphology of H-/E-positive regions.

All intensities are stain concentrations in optical-density (OD) units; thresholds and quantisation
ranges are fixed (not per tile) so values are comparable between tiles and slides. Lengths are in µm,
areas in µm², gradients in OD/µm, densities per mm².
"""

from __future__ import annotations

import threading

import numpy as np
from scipy import ndimage as ndi

from napari_lnm.errors import UserError

from .catalog import FeatureInfo

__all__ = ["tile_group_features", "gradient_magnitude", "scratch", "CATALOG", "H_RANGE", "E_RANGE", "GLCM_DISTANCES_UM"]

GROUP = "tile"
#: Fixed quantisation ranges of the concentrations (OD); values above are clipped to the top level.
H_RANGE = (0.0, 2.0)
E_RANGE = (0.0, 0.6)
#: GLCM pixel-pair distances in µm (converted to px with mpp, at least 1 px), averaged over 4 angles.
GLCM_DISTANCES_UM = (1.0, 3.0)
GLCM_LEVELS = 32
#: GLCM pixel pairs start on every GLCM_STRIDE-th row and column (a uniform quarter of all pairs).
GLCM_STRIDE = 2
_GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
#: Thresholds (OD) for stain area fractions.
BACKGROUND_OD = 0.1  # H + E below this: unstained background
H_POSITIVE_OD = 0.5  # H at or above this: haematoxylin-positive (nuclear) pixel
E_POSITIVE_OD = 0.15  # E at or above this (and not H-positive): eosin-positive pixel
MIN_REGION_UM2 = 2.0  # smaller connected components are ignored by the region morphology
_HIST_BINS = 512  # a multiple of GLCM_LEVELS (both powers of 2): GLCM levels are histogram bins >> 4
GRAD_RANGE = (0.0, 4.0)  # OD/µm, histogram range for gradient quantiles

_STAINS = (("h", "haematoxylin", H_RANGE), ("e", "eosin", E_RANGE))

_INTENSITY = (
    ("mean", "OD", "mean {s} concentration"),
    ("std", "OD", "standard deviation of {s} concentration"),
    ("p10", "OD", "10th percentile of {s} concentration (512-bin histogram over {r} OD)"),
    ("p50", "OD", "median of {s} concentration (512-bin histogram over {r} OD)"),
    ("p90", "OD", "90th percentile of {s} concentration (512-bin histogram over {r} OD)"),
    ("skewness", "1", "skewness of {s} concentration"),
    ("kurtosis", "1", "excess kurtosis of {s} concentration"),
    ("entropy", "bits", "entropy of the 64-bin {s} histogram over {r} OD"),
)
_GLCM_PROPS = (
    ("contrast", "levels²", "sum P(i,j) (i-j)²"),
    ("dissimilarity", "levels", "sum P(i,j) |i-j|"),
    ("homogeneity", "1", "sum P(i,j) / (1 + (i-j)²)"),
    ("energy", "1", "sqrt(ASM)"),
    ("correlation", "1", "sum P(i,j) (i-mu_i)(j-mu_j) / (sigma_i sigma_j)"),
    ("asm", "1", "angular second moment, sum P(i,j)²"),
    ("entropy", "bits", "-sum P(i,j) log2 P(i,j)"),
)
_GRADIENT = (
    ("mean", "OD/µm", "mean {s} gradient magnitude"),
    ("std", "OD/µm", "standard deviation of the {s} gradient magnitude"),
    ("p90", "OD/µm", "90th percentile of the {s} gradient magnitude"),
)
_REGIONS = (
    ("density", "1/mm²", "{s}-positive connected components (>= {m} µm², 4-connected) per mm² of tile"),
    ("mean_area", "µm²", "mean area of {s}-positive connected components (>= {m} µm²)"),
    ("boundary_per_area", "1/µm", "{s}-positive boundary length (pixel edges) per {s}-positive area"),
)


class _Scratch(threading.local):
    """Per-thread work arrays for tile-sized temporaries, reused from tile to tile.

    A fresh multi-MB numpy temporary is a fresh mmap under glibc's default malloc settings, and its
    page faults cost about as much CPU as the arithmetic; reusing a few arrays avoids them.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}


_SCRATCH = _Scratch()
_SCRATCH_MAX_BYTES = 32 * 2**20  # larger work arrays (huge tiles) are not kept


def scratch(name: str, n: int, dtype) -> np.ndarray:
    """A 1-D work array of ``n`` elements (contents undefined), reused per thread under ``name``.

    Each name has one user at a time: callers must not hold an array across a call that may use the same name.
    """
    dtype = np.dtype(dtype)
    arr = _SCRATCH.arrays.get(name)
    if arr is None or arr.size < n or arr.dtype != dtype:
        arr = np.empty(n, dtype=dtype)
        if n * dtype.itemsize <= _SCRATCH_MAX_BYTES:
            _SCRATCH.arrays[name] = arr
    return arr[:n]


def _dist_tag(d: float) -> str:
    """Name tag of a GLCM distance in µm, e.g. 1.0 -> 'd1um', 1.5 -> 'd1.5um'."""
    return f"d{d:g}um"


def _build_catalog() -> list[FeatureInfo]:
    """Catalogue of the tile group, in the order the features are computed."""
    cat: list[FeatureInfo] = []
    for key, sname, rng in _STAINS:
        for stat, unit, what in _INTENSITY:
            cat.append(FeatureInfo(f"tile.{key}_{stat}", GROUP, unit, what.format(s=sname, r=f"[{rng[0]:g}, {rng[1]:g}]")))
    for key, sname, rng in _STAINS:
        for d in GLCM_DISTANCES_UM:
            for prop, unit, what in _GLCM_PROPS:
                cat.append(
                    FeatureInfo(
                        f"tile.{key}_glcm_{prop}_{_dist_tag(d)}",
                        GROUP,
                        unit,
                        f"GLCM {prop} of {sname} ({GLCM_LEVELS} levels over [{rng[0]:g}, {rng[1]:g}] OD, "
                        f"distance {d:g} µm, symmetric, mean of 4 angles, pairs from every {GLCM_STRIDE}nd row/column): {what}",
                    )
                )
    for key, sname, _rng in _STAINS:
        for stat, unit, what in _GRADIENT:
            cat.append(FeatureInfo(f"tile.{key}_gradient_{stat}", GROUP, unit, what.format(s=sname)))
    cat += [
        FeatureInfo("tile.background_fraction", GROUP, "1", f"fraction of tile pixels with H + E < {BACKGROUND_OD} OD"),
        FeatureInfo("tile.h_positive_fraction", GROUP, "1", f"fraction of tile pixels with H >= {H_POSITIVE_OD} OD"),
        FeatureInfo(
            "tile.e_positive_fraction", GROUP, "1",
            f"fraction of tile pixels with E >= {E_POSITIVE_OD} OD, not H-positive, not background",
        ),
        FeatureInfo("tile.h_e_ratio", GROUP, "1", "mean H / mean E over non-background pixels"),
    ]
    for key, sname, _rng in _STAINS:
        for stat, unit, what in _REGIONS:
            cat.append(FeatureInfo(f"tile.{key}_region_{stat}", GROUP, unit, what.format(s=key.upper(), m=MIN_REGION_UM2)))
    return cat


CATALOG: list[FeatureInfo] = _build_catalog()


def gradient_magnitude(img: np.ndarray, mpp: float, out: np.ndarray | None = None) -> np.ndarray:
    """Central-difference gradient magnitude of an image, float32, in (image units)/µm (into ``out``, a
    float32 array of the image's shape, when given)."""
    a = np.asarray(img, dtype=np.float32)
    gr = np.empty_like(a) if out is None else out
    gc = scratch("grad_c", a.size, np.float32).reshape(a.shape)
    # full differences; the 1/2 of the central difference is applied at the end with 1/mpp (a power of
    # two, so every intermediate is the same number scaled by 2 or 4 and the result is bit-identical)
    if a.shape[0] > 2:
        np.subtract(a[2:], a[:-2], out=gr[1:-1])
        gr[0] = 0
        gr[-1] = 0
    else:
        gr[...] = 0
    if a.shape[1] > 2:
        np.subtract(a[:, 2:], a[:, :-2], out=gc[:, 1:-1])
        gc[:, 0] = 0
        gc[:, -1] = 0
    else:
        gc[...] = 0
    np.multiply(gr, gr, out=gr)
    np.multiply(gc, gc, out=gc)
    gr += gc
    np.sqrt(gr, out=gr)
    gr *= np.float32(0.5) * np.float32(1.0 / mpp)
    return gr


def _quantise(x: np.ndarray, lo: float, hi: float, bins: int, out: np.ndarray | None = None) -> np.ndarray:
    """Bin index (intp, 0..bins-1) of every pixel for ``bins`` equal bins over [lo, hi]; outside values clipped.

    ``out``: a 1-D intp array of ``x.size`` elements to write the indices into (else a new array).
    """
    t = scratch("quantise_t", x.size, np.float32)
    np.subtract(x.ravel(), np.float32(lo), out=t)
    t *= np.float32(bins / (hi - lo))
    idx = np.empty(x.size, dtype=np.intp) if out is None else out
    np.copyto(idx, t, casting="unsafe")  # truncation toward zero, as astype
    np.clip(idx, 0, bins - 1, out=idx)
    return idx


def _quantiles_from_counts(counts: np.ndarray, lo: float, hi: float, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles from histogram counts of equal bins over [lo, hi], linear inside a bin."""
    bins = counts.size
    scale = bins / (hi - lo)
    cum = np.cumsum(counts)
    total = cum[-1]
    out = np.empty(len(qs))
    for i, q in enumerate(qs):
        target = q * total
        b = min(int(np.searchsorted(cum, target, side="left")), bins - 1)
        before = cum[b - 1] if b > 0 else 0
        frac = (target - before) / counts[b] if counts[b] > 0 else 0.0
        out[i] = lo + (b + frac) / scale
    return out


def _hist_quantiles(x: np.ndarray, lo: float, hi: float, qs: tuple[float, ...], bins: int = _HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles of ``x`` from a ``bins``-bin histogram over [lo, hi] (linear inside a bin); returns (quantiles, counts)."""
    counts = np.bincount(_quantise(x, lo, hi, bins, out=scratch("hist_idx", x.size, np.intp)), minlength=bins)
    return _quantiles_from_counts(counts, lo, hi, qs), counts


def _moments_inplace(d: np.ndarray, work: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """Mean, std, skewness and excess kurtosis (NaN skew/kurtosis when constant) of a 1-D float64 array,
    which it overwrites (with its deviations from the mean);
    ``work``: a float64 array of the same size for the squared deviations (else a new one)."""
    m = float(d.mean())
    d -= m
    var = float(np.dot(d, d)) / d.size
    if var <= 1e-12:
        return m, float(np.sqrt(max(var, 0.0))), np.nan, np.nan
    d2 = np.multiply(d, d, out=work)
    m3 = float(np.dot(d2, d)) / d.size
    m4 = float(np.dot(d2, d2)) / d.size
    return m, float(np.sqrt(var)), m3 / var**1.5, m4 / var**2 - 3.0


def _glcm_weights(levels: int) -> np.ndarray:
    """Weight matrices (contrast, dissimilarity, homogeneity, i*j) of the GLCM properties, (4, L, L)."""
    i = np.arange(levels, dtype=np.float64)[:, None]
    j = np.arange(levels, dtype=np.float64)[None, :]
    d = i - j
    return np.stack([d * d, np.abs(d), 1.0 / (1.0 + d * d), i * j])


_GLCM_W = _glcm_weights(GLCM_LEVELS)


def _glcm_props(counts: np.ndarray, n_groups: int = 1) -> np.ndarray:
    """Haralick properties (contrast, dissimilarity, homogeneity, energy, correlation, ASM, entropy bits)
    of GLCM counts (L, L, n_groups * n_angles), averaged over the angles of each group -> (n_groups, 7)."""
    levels = counts.shape[0]
    w = _GLCM_W if levels == GLCM_LEVELS else _glcm_weights(levels)
    p = counts.astype(np.float64)
    tot = p.sum(axis=(0, 1))
    p /= np.where(tot > 0, tot, 1.0)
    lin = np.tensordot(w, p, axes=([1, 2], [0, 1]))  # (4, k)
    asm = np.einsum("ijk,ijk->k", p, p)
    lv = np.arange(levels, dtype=np.float64)
    pi, pj = p.sum(axis=1), p.sum(axis=0)  # marginals (L, k)
    mu_i, mu_j = lv @ pi, lv @ pj
    var_i = (lv * lv) @ pi - mu_i**2
    var_j = (lv * lv) @ pj - mu_j**2
    cov = lin[3] - mu_i * mu_j
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (var_i > 1e-12) & (var_j > 1e-12)
        corr = np.where(ok, cov / np.sqrt(np.where(ok, var_i * var_j, 1.0)), 1.0)
        ent = -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(axis=(0, 1))
    props = np.stack([lin[0], lin[1], lin[2], np.sqrt(asm), corr, asm, ent])  # (7, k)
    return props.reshape(7, n_groups, -1).mean(axis=2).T


def glcm_counts(q: np.ndarray, distance_px: int, levels: int, stride: int = GLCM_STRIDE) -> np.ndarray:
    """Symmetric GLCM counts (levels, levels, 4 angles 0/45/90/135°) of a quantised image at one distance (px).

    Pairs start on every ``stride``-th row and column (stride 1 = every pixel, as skimage's graycomatrix);
    counting is one ``np.bincount`` per angle on ``i * levels + j`` codes (intp, so bincount casts nothing).
    """
    q = np.asarray(q, dtype=np.uint16)
    nr, nc = q.shape
    d = int(distance_px)
    dd = int(np.floor(d * np.sqrt(0.5) + 0.5))  # diagonal offsets as skimage: round(d sin 45°)
    out = np.zeros((levels, levels, len(_GLCM_ANGLES)), dtype=np.int64)
    for k, (dr, dc) in enumerate(((0, d), (dd, dd), (d, 0), (dd, -dd))):
        # offsets (row, col) of skimage's graycomatrix for angles 0, 45, 90, 135 degrees
        if dr >= nr or abs(dc) >= nc:
            continue
        c0, c1 = max(0, -dc), nc - max(0, dc)
        ref = q[: nr - dr : stride, c0:c1:stride]
        nb = q[dr::stride, c0 + dc : c1 + dc : stride][: ref.shape[0], : ref.shape[1]]
        code = scratch("glcm_code", ref.size, np.intp).reshape(ref.shape)
        np.multiply(ref, levels, out=code)
        code += nb
        cnt = np.bincount(code.ravel(), minlength=levels * levels).reshape(levels, levels)
        out[:, :, k] = cnt + cnt.T
    return out


def _glcm_features(img: np.ndarray, rng: tuple[float, float], mpp: float, stride: int = GLCM_STRIDE,
                   q: np.ndarray | None = None) -> np.ndarray:
    """GLCM properties (7 per distance) of ``img`` quantised to GLCM_LEVELS over ``rng`` (or of the given
    quantised image ``q``), for each distance."""
    if q is None:
        q = _quantise(img, rng[0], rng[1], GLCM_LEVELS).astype(np.uint16).reshape(img.shape)
    dists = [max(1, int(round(d / mpp))) for d in GLCM_DISTANCES_UM]
    counts = np.concatenate([glcm_counts(q, d, GLCM_LEVELS, stride) for d in dists], axis=2)
    out = _glcm_props(counts, len(dists))
    empty = counts.sum(axis=(0, 1)).reshape(len(dists), -1).min(axis=1) == 0
    out[empty] = np.nan  # a distance longer than the tile: no pixel pairs
    return out


def _region_features(mask: np.ndarray, mpp: float, tile_mm2: float,
                     lab: np.ndarray | None = None) -> tuple[float, float, float]:
    """Component density (1/mm²), mean component area (µm²), boundary length per area (1/µm) of a mask;
    ``lab``: an optional intp work array of the mask's shape for the component labels."""
    lab = np.empty(mask.shape, dtype=np.intp) if lab is None else lab  # intp: bincount needs no conversion
    n = ndi.label(mask, output=lab)
    if n == 0:
        return 0.0, np.nan, np.nan
    sizes = np.bincount(lab[mask], minlength=n + 1)[1:]
    big = sizes[sizes >= MIN_REGION_UM2 / (mpp * mpp)]
    density = big.size / tile_mm2
    mean_area = float(big.mean()) * mpp * mpp if big.size else np.nan
    edges = np.count_nonzero(mask[1:] != mask[:-1]) + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
    area_px = int(sizes.sum())
    bpa = edges / (area_px * mpp) if area_px else np.nan
    return float(density), mean_area, float(bpa)


def _region_pair_features(hpos: np.ndarray, epos: np.ndarray, mpp: float, tile_mm2: float) -> list[float]:
    """``_region_features`` of the H-positive and the E-positive mask, labelled into one reused work array.

    (``ndi.label`` with a preallocated output: a labelling that allocates its output, as skimage's one
    pass over both masks does, costs more in page faults than it saves under glibc's default malloc.)
    """
    lab = scratch("tile_regions", hpos.size, np.intp).reshape(hpos.shape)
    return [*_region_features(hpos, mpp, tile_mm2, lab), *_region_features(epos, mpp, tile_mm2, lab)]


def tile_group_features(
    h: np.ndarray, e: np.ndarray, mpp: float, grads: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, float]:
    """The ``tile.*`` features of one tile from its H and E concentration images (OD) at ``mpp`` µm/px."""
    h = np.asarray(h, dtype=np.float32)
    e = np.asarray(e, dtype=np.float32)
    if h.ndim != 2 or h.shape != e.shape:
        raise UserError(f"H and E must be 2-D images of the same shape, got {h.shape} and {e.shape}")
    if h.size == 0:
        raise UserError("H and E images are empty")
    mpp = float(mpp)
    if grads is None:
        grads = (gradient_magnitude(h, mpp), gradient_magnitude(e, mpp))
    vals: list[float] = []
    glcm_vals: list[float] = []
    npx = h.size
    bg = (h + e) < np.float32(BACKGROUND_OD)
    stained = scratch("tile_w64", npx, np.float64)  # 0/1 weights: float64 dot products are masked sums
    np.logical_not(bg.ravel(), out=stained, casting="unsafe")
    x64 = scratch("tile_x64", npx, np.float64)
    work = scratch("tile_work64", npx, np.float64)
    idx = scratch("tile_idx", npx, np.intp)
    q16 = scratch("tile_q16", npx, np.uint16).reshape(h.shape)
    shift = _HIST_BINS.bit_length() - GLCM_LEVELS.bit_length()
    stained_sum = []
    for img, (_k, _s, rng) in zip((h, e), _STAINS):
        np.copyto(x64, img.ravel())
        stained_sum.append(float(np.dot(x64, stained)))
        mean, std, skew, kurt = _moments_inplace(x64, work)
        _quantise(img, rng[0], rng[1], _HIST_BINS, out=idx)  # one quantisation for the histogram and the GLCM
        counts = np.bincount(idx, minlength=_HIST_BINS)
        p10, p50, p90 = _quantiles_from_counts(counts, rng[0], rng[1], (0.1, 0.5, 0.9))
        c64 = counts.reshape(64, -1).sum(axis=1).astype(np.float64)
        pr = c64[c64 > 0] / c64.sum()
        ent = float(-(pr * np.log2(pr)).sum())
        vals += [mean, std, p10, p50, p90, skew, kurt, ent]
        np.right_shift(idx, shift, out=q16.reshape(-1), casting="unsafe")
        glcm_vals += list(_glcm_features(img, rng, mpp, q=q16).ravel())
    vals += glcm_vals
    for g in grads:
        np.copyto(x64, g.ravel())
        gm = float(x64.mean())
        gs = float(np.sqrt(max(float(np.dot(x64, x64)) / x64.size - gm * gm, 0.0)))
        (g90,), _ = _hist_quantiles(g, GRAD_RANGE[0], GRAD_RANGE[1], (0.9,))
        vals += [gm, gs, float(g90)]
    tile_mm2 = h.size * mpp * mpp * 1e-6
    hpos = h >= np.float32(H_POSITIVE_OD)
    epos = (e >= np.float32(E_POSITIVE_OD)) & ~hpos & ~bg
    n = float(h.size)
    hsum, esum = stained_sum
    ratio = hsum / esum if esum > 0 else np.nan
    vals += [np.count_nonzero(bg) / n, np.count_nonzero(hpos) / n, np.count_nonzero(epos) / n, ratio]
    vals += _region_pair_features(hpos, epos, mpp, tile_mm2)
    return {info.name: float(v) for info, v in zip(CATALOG, vals, strict=True)}

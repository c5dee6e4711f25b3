"""Nucleus-level features: per-nucleus morphology, shape and H intensity/texture, summarised over a tile.

Every per-nucleus measurement is computed for all nuclei at once from the label image with
``np.bincount`` label reductions over the foreground / boundary pixel lists (no Python loop over
nuclei). Morphology follows ``skimage.measure.regionprops`` definitions so the numbers agree with it:

- perimeter: Benkrid & Crookes border-pixel weights of ``skimage.measure.perimeter`` (4-neighbourhood);
- axes / eccentricity: eigenvalues of the second central moments (``4 sqrt(lambda)``);
- solidity: area / convex area, the convex area being the number of pixel centres inside the hull of
  the pixels' edge mid-points (exactly as ``convex_hull_image``); the hull's left and right boundaries
  are the concave majorants of the per-row extreme pixels, found for all nuclei at once;
- Fourier descriptors: radial profile of the boundary pixels around the centroid, binned by angle
  (``_FOURIER_BINS`` bins, empty bins filled with the mean radius), ``|F_k| / |F_0|``.

Units: lengths µm, areas µm², H in OD concentration units, gradients OD/µm.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt

import numpy as np

from napari_lnm.errors import UserError

from .catalog import SUMMARY_STATS, FeatureInfo, summarise_matrix, summary_infos
from .tile import H_RANGE as _TILE_H_RANGE
from .tile import gradient_magnitude

__all__ = [
    "NucleusTable",
    "nucleus_table",
    "nucleus_features",
    "CATALOG",
    "MEASURES",
    "H_RANGE",
]

GROUP = "nucleus"
#: H concentration range (OD) used to quantise H for per-nucleus entropy (the tile group's range).
H_RANGE = _TILE_H_RANGE
_ENTROPY_LEVELS = 16
_FOURIER_BINS = 16
_FOURIER_K = 4

# Benkrid & Crookes perimeter weights indexed by 1 + 2*(4-neighbour border) + 10*(diagonal border).
_PERIM_W = np.zeros(50, dtype=np.float64)
_PERIM_W[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIM_W[[21, 33]] = sqrt(2.0)
_PERIM_W[[13, 23]] = (1.0 + sqrt(2.0)) / 2.0


#: Per-nucleus measurements: (key, unit, definition). Each is summarised by SUMMARY_STATS.
MEASURES: tuple[tuple[str, str, str], ...] = (
    ("area", "µm²", "nucleus area (pixel count x mpp²)"),
    ("perimeter", "µm", "nucleus perimeter (skimage.measure.perimeter weights, 4-neighbourhood)"),
    ("equivalent_diameter", "µm", "diameter of the disk with the nucleus area, sqrt(4 A / pi)"),
    ("major_axis", "µm", "major axis of the moment-equivalent ellipse, 4 sqrt(lambda1)"),
    ("minor_axis", "µm", "minor axis of the moment-equivalent ellipse, 4 sqrt(lambda2)"),
    ("aspect_ratio", "1", "minor axis / major axis"),
    ("eccentricity", "1", "eccentricity of the moment-equivalent ellipse, sqrt(1 - lambda2/lambda1)"),
    ("solidity", "1", "area / convex hull area (pixel counts)"),
    ("circularity", "1", "4 pi area / perimeter²"),
    ("extent", "1", "area / bounding-box area"),
) + tuple(
    (f"fourier{k}", "1", f"Fourier shape descriptor |F_{k}| / |F_0| of the boundary radial profile")
    for k in range(1, _FOURIER_K + 1)
) + (
    ("h_mean", "OD", "mean haematoxylin concentration in the nucleus"),
    ("h_std", "OD", "standard deviation of haematoxylin in the nucleus"),
    ("h_integrated", "OD·µm²", "integrated haematoxylin optical density (sum of H x pixel area)"),
    ("h_entropy", "bits", f"entropy of the nucleus H histogram ({_ENTROPY_LEVELS} levels over {H_RANGE} OD)"),
    ("h_dissimilarity", "OD", "mean |H difference| between 4-adjacent pixels inside the nucleus (texture)"),
    ("h_contrast", "OD²", "mean squared H difference between 4-adjacent pixels inside the nucleus (texture)"),
    ("grad_mean", "OD/µm", "mean H gradient magnitude inside the nucleus"),
    ("grad_std", "OD/µm", "standard deviation of the H gradient magnitude inside the nucleus"),
)

CATALOG: list[FeatureInfo] = [
    FeatureInfo("nucleus.count", GROUP, "1", "number of nuclei (labels) in the tile"),
    FeatureInfo("nucleus.density", GROUP, "1/mm²", "number of nuclei per mm² of tile area"),
]
for _key, _unit, _what in MEASURES:
    CATALOG += summary_infos(f"{GROUP}.{_key}", GROUP, _unit, _what, SUMMARY_STATS)


@dataclass
class NucleusTable:
    """Per-nucleus measurements of a label image: ``ids`` (original labels), ``centroids`` (n, 2) row/col px,
    ``values`` (n, len(MEASURES)) in the units of MEASURES, ``columns`` their keys."""

    ids: np.ndarray
    centroids: np.ndarray
    values: np.ndarray
    columns: tuple[str, ...]

    def column(self, key: str) -> np.ndarray:
        """One measurement for every nucleus."""
        return self.values[:, self.columns.index(key)]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Validate a 2-D integer label image (0 = background)."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise UserError(f"labels: expected a 2-D label image, got shape {lab.shape}")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == np.bool_):
        raise UserError(f"labels: expected an integer label image, got dtype {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise UserError("labels: label values must be >= 0 (0 = background)")
    return lab


def nucleus_table(
    labels: np.ndarray,
    mpp: float,
    h: np.ndarray | None = None,
    h_grad: np.ndarray | None = None,
) -> NucleusTable:
    """Per-nucleus measurements (µm, µm², OD) of every label in ``labels``; H columns NaN when ``h`` is None."""
    lab = _check_labels(labels)
    mpp = float(mpp)
    if not mpp > 0:
        raise UserError(f"mpp must be > 0 µm/px, got {mpp}")
    nrow, ncol = lab.shape
    flat = lab.ravel()
    nmeas = len(MEASURES)
    if flat.size == 0 or not flat.any():
        return NucleusTable(np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, nmeas)), tuple(m[0] for m in MEASURES))

    # compact labels 1..n
    fg = np.flatnonzero(flat)
    lab_fg = flat[fg].astype(np.int64)
    maxlab = int(lab_fg.max())
    if maxlab <= 4 * flat.size:  # a lookup table over label values
        present = np.zeros(maxlab + 1, dtype=bool)
        present[lab_fg] = True
        ids = np.flatnonzero(present)
        lut = np.zeros(maxlab + 1, dtype=np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        lbl = lut[lab_fg]  # 1..n for every foreground pixel (raster order)
    else:  # sparse, huge label values
        ids, inv = np.unique(lab_fg, return_inverse=True)
        lbl = inv.reshape(-1) + 1
    n = ids.size
    ri, ci = np.divmod(fg, ncol)
    # coordinates relative to the tile centre keep the raw second moments well conditioned
    r0, c0 = 0.5 * (nrow - 1), 0.5 * (ncol - 1)
    r = ri - r0
    c = ci - c0
    m1 = n + 1

    area_px = np.bincount(lbl, minlength=m1)[1:].astype(np.float64)
    cr = np.bincount(lbl, r, m1)[1:] / area_px
    cc = np.bincount(lbl, c, m1)[1:] / area_px
    # central second moments (per unit area) from raw moments
    vrr = np.maximum(np.bincount(lbl, r * r, m1)[1:] / area_px - cr * cr, 0.0)
    vcc = np.maximum(np.bincount(lbl, c * c, m1)[1:] / area_px - cc * cc, 0.0)
    vrc = np.bincount(lbl, r * c, m1)[1:] / area_px - cr * cc
    cr += r0
    cc += c0
    half_tr = 0.5 * (vrr + vcc)
    disc = np.sqrt(np.maximum(0.25 * (vrr - vcc) ** 2 + vrc**2, 0.0))
    l1 = np.maximum(half_tr + disc, 0.0)
    l2 = np.maximum(half_tr - disc, 0.0)
    major = 4.0 * np.sqrt(l1)
    minor = 4.0 * np.sqrt(l2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / np.where(l1 > 0, l1, 1.0), 0.0, 1.0)), 0.0)
        aspect = np.where(major > 0, minor / np.where(major > 0, major, 1.0), np.nan)

    # bounding boxes
    rmin = np.full(m1, nrow, np.int64)
    rmax = np.full(m1, -1, np.int64)
    cmin = np.full(m1, ncol, np.int64)
    cmax = np.full(m1, -1, np.int64)
    np.minimum.at(rmin, lbl, ri)
    np.maximum.at(rmax, lbl, ri)
    np.minimum.at(cmin, lbl, ci)
    np.maximum.at(cmax, lbl, ci)
    rmin, rmax, cmin, cmax = rmin[1:], rmax[1:], cmin[1:], cmax[1:]
    extent = area_px / ((rmax - rmin + 1) * (cmax - cmin + 1))

    # border pixels (4-neighbourhood erosion per label) in a zero-padded compact label image
    pw = ncol + 2
    pad = np.zeros((nrow + 2, pw), dtype=np.int32)
    pidx = (ri + 1) * pw + (ci + 1)
    pad.ravel()[pidx] = lbl
    pflat = pad.ravel()
    interior = (
        (pflat[pidx - 1] == lbl) & (pflat[pidx + 1] == lbl) & (pflat[pidx - pw] == lbl) & (pflat[pidx + pw] == lbl)
    )
    bsel = ~interior
    bidx = pidx[bsel]
    blbl = lbl[bsel]
    border = np.zeros(pflat.size, dtype=bool)
    border[bidx] = True
    code = np.ones(bidx.size, dtype=np.intp)
    for off, w in ((1, 2), (-1, 2), (pw, 2), (-pw, 2), (pw + 1, 10), (pw - 1, 10), (-pw + 1, 10), (-pw - 1, 10)):
        nb = bidx + off
        code += w * (border[nb] & (pflat[nb] == blbl))
    perim_px = np.bincount(blbl, _PERIM_W[code], m1)[1:]

    # convex area: the hull of the pixels' edge mid-points (as skimage's convex_hull_image) only depends
    # on the leftmost and rightmost pixel of every row; its right (left) boundary is the concave majorant
    # of the right (negated left) chain, found for all nuclei at once, then pixel centres are counted row by row.
    nrows_per = rmax - rmin + 1
    row_start = np.cumsum(nrows_per) - nrows_per
    row_lab = np.repeat(np.arange(n), nrows_per)
    nr_tot = row_lab.size
    bri = bidx // pw - 1
    bci = bidx % pw - 1
    rkey = row_start[blbl - 1] + (bri - rmin[blbl - 1])
    left = np.full(nr_tot, ncol, np.int64)
    right = np.full(nr_tot, -1, np.int64)
    np.minimum.at(left, rkey, bci)
    np.maximum.at(right, rkey, bci)
    both = _majorant_rows(
        np.concatenate([right, -left]).astype(np.float64),
        np.concatenate([row_lab, row_lab + n]),
        np.concatenate([row_start, row_start + nr_tot]),
        np.concatenate([nrows_per, nrows_per]),
    )
    xmax, xmin = both[:nr_tot], -both[nr_tot:]
    cnt = np.floor(xmax + 1e-7) - np.ceil(xmin - 1e-7) + 1.0
    convex_px = np.bincount(row_lab, np.maximum(cnt, 0.0), n)
    solidity = area_px / np.maximum(convex_px, area_px)
    br = bri.astype(np.float64)
    bc = bci.astype(np.float64)

    # Fourier descriptors of the radial profile of the boundary
    bdr = br - cr[blbl - 1]
    bdc = bc - cc[blbl - 1]
    rad = np.hypot(bdr, bdc)
    ang = np.arctan2(bdr, bdc)
    # bins centred on the axis and diagonal directions, so pixels straight or diagonally away from a
    # (half-)integer centroid never sit on a bin edge
    abin = np.floor((ang + np.pi) * (_FOURIER_BINS / (2 * np.pi)) + 0.5).astype(np.int64) % _FOURIER_BINS
    key = (blbl - 1) * _FOURIER_BINS + abin
    rsum = np.bincount(key, rad, n * _FOURIER_BINS).reshape(n, _FOURIER_BINS)
    rcnt = np.bincount(key, None, n * _FOURIER_BINS).reshape(n, _FOURIER_BINS)
    rmean = rsum.sum(axis=1) / rcnt.sum(axis=1)
    prof = np.where(rcnt > 0, rsum / np.maximum(rcnt, 1), rmean[:, None])
    spec = np.abs(np.fft.rfft(prof, axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        fourier = spec[:, 1 : _FOURIER_K + 1] / spec[:, :1]
    fourier[~np.isfinite(fourier)] = np.nan

    # H intensity and texture
    hcols = np.full((n, 8), np.nan)
    if h is not None:
        hflat = np.asarray(h, dtype=np.float32)
        if hflat.shape != lab.shape:
            raise UserError(f"H image shape {hflat.shape} does not match the label image {lab.shape}")
        hflat = hflat.ravel()
        hv = hflat[fg].astype(np.float64)
        hsum = np.bincount(lbl, hv, m1)[1:]
        hmean = hsum / area_px
        hstd = np.sqrt(np.maximum(np.bincount(lbl, hv * hv, m1)[1:] / area_px - hmean * hmean, 0.0))
        hint = hsum * mpp * mpp
        q = ((hv - H_RANGE[0]) * (_ENTROPY_LEVELS / (H_RANGE[1] - H_RANGE[0]))).astype(np.intp)
        np.clip(q, 0, _ENTROPY_LEVELS - 1, out=q)
        hist = np.bincount((lbl - 1) * _ENTROPY_LEVELS + q, None, n * _ENTROPY_LEVELS).reshape(n, _ENTROPY_LEVELS)
        p = hist / area_px[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)
        # co-occurrence texture within the nucleus: right and down neighbours with the same label
        right = np.flatnonzero(pflat[pidx + 1] == lbl)
        down = np.flatnonzero(pflat[pidx + pw] == lbl)
        src = np.concatenate([right, down])
        d = np.abs(hflat[np.concatenate([fg[right] + 1, fg[down] + ncol])] - hv[src])
        ls = lbl[src]
        npair = np.bincount(ls, None, m1)[1:]
        with np.errstate(divide="ignore", invalid="ignore"):
            diss = np.bincount(ls, d, m1)[1:] / npair
            con = np.bincount(ls, d * d, m1)[1:] / npair
        if h_grad is None:
            h_grad = gradient_magnitude(hflat.reshape(lab.shape), mpp)
        gv = np.asarray(h_grad, dtype=np.float32).ravel()[fg].astype(np.float64)
        gmean = np.bincount(lbl, gv, m1)[1:] / area_px
        gstd = np.sqrt(np.maximum(np.bincount(lbl, gv * gv, m1)[1:] / area_px - gmean * gmean, 0.0))
        hcols = np.stack([hmean, hstd, hint, ent, diss, con, gmean, gstd], axis=1)

    area = area_px * mpp * mpp
    perim = perim_px * mpp
    with np.errstate(divide="ignore", invalid="ignore"):
        circ = np.where(perim_px > 0, 4.0 * np.pi * area_px / np.where(perim_px > 0, perim_px, 1.0) ** 2, np.nan)
    values = np.column_stack(
        [
            area,
            perim,
            np.sqrt(4.0 * area / np.pi),
            major * mpp,
            minor * mpp,
            aspect,
            ecc,
            solidity,
            circ,
            extent,
            fourier,
            hcols,
        ]
    )
    return NucleusTable(ids.astype(np.int64), np.column_stack([cr, cc]), values, tuple(m[0] for m in MEASURES))


def _majorant_rows(ext: np.ndarray, row_lab: np.ndarray, row_start: np.ndarray, nrows: np.ndarray) -> np.ndarray:
    """Per row, the hull boundary x of each label's pixel diamonds, from the rows' extreme x ``ext``.

    For each label the chain has 2m+1 points: half rows ``y-0.5`` (max of the two adjacent rows'
    extremes, the diamonds' vertical tips) and rows ``y`` (extreme + 0.5, the horizontal tip). Points
    on or below the chord of their live neighbours are dropped, all labels at once, until none is; what
    is left is the concave majorant, evaluated at every row.
    """
    n = row_start.size
    clen = 2 * nrows + 1
    cstart = np.cumsum(clen) - clen
    total = int(clen.sum())
    clab = np.repeat(np.arange(n), clen)
    j = np.arange(total) - cstart[clab]
    yv = j * 0.5
    val = np.full(total, -np.inf)
    rpos = cstart[row_lab] + 2 * (np.arange(row_lab.size) - row_start[row_lab]) + 1
    val[rpos] = ext + 0.5
    val[rpos - 1] = ext  # half row above each row
    val[rpos + 1] = np.maximum(val[rpos + 1], ext)  # half row below each row (shared with the next row)
    alive = np.ones(total, dtype=bool)
    is_end = np.zeros(total, dtype=bool)
    is_end[cstart] = True
    is_end[cstart + clen - 1] = True
    # first pass on the full chain (neighbours 0.5 row apart: the chord value is their mean)
    inner = np.flatnonzero(~is_end)
    drop = val[inner] <= 0.5 * (val[inner - 1] + val[inner + 1]) + 1e-9
    alive[inner[drop]] = False
    keep = np.flatnonzero(alive)
    # then iterate on the survivors; in the compacted chain every point is live, so the live
    # neighbours of a point are simply i - 1 and i + 1
    kv, ky, kend, korig = val[keep], yv[keep], is_end[keep], keep
    while True:
        ci = np.flatnonzero(~kend)
        if ci.size == 0:
            break
        p, q = ci - 1, ci + 1
        chord = kv[p] + (kv[q] - kv[p]) * (ky[ci] - ky[p]) / (ky[q] - ky[p])
        drop = kv[ci] <= chord + 1e-9
        if not drop.any():
            break
        stay = np.ones(kv.size, dtype=bool)
        stay[ci[drop]] = False
        kv, ky, kend, korig = kv[stay], ky[stay], kend[stay], korig[stay]
    alive[:] = False
    alive[korig] = True
    idx = np.arange(total)
    prev = np.maximum.accumulate(np.where(alive, idx, -1))
    nxt = np.minimum.accumulate(np.where(alive, idx, total)[::-1])[::-1]
    p, q = prev[rpos], nxt[rpos]
    same = p == q
    den = np.where(same, 1.0, yv[q] - yv[p])
    return np.where(same, val[rpos], val[p] + (val[q] - val[p]) * (yv[rpos] - yv[p]) / den)


def nucleus_features(
    labels: np.ndarray,
    mpp: float,
    h: np.ndarray | None = None,
    h_grad: np.ndarray | None = None,
    table: NucleusTable | None = None,
) -> dict[str, float]:
    """The ``nucleus.*`` features of one tile (count, density per mm², summaries of every measurement)."""
    if table is None:
        table = nucleus_table(labels, mpp, h, h_grad)
    shape = np.shape(labels)
    n = table.ids.size
    tile_mm2 = shape[0] * shape[1] * float(mpp) ** 2 * 1e-6
    out: dict[str, float] = {
        "nucleus.count": float(n),
        "nucleus.density": float(n / tile_mm2) if tile_mm2 > 0 else np.nan,
    }
    summ = summarise_matrix(table.values)  # (k, 5)
    for j, (key, _u, _w) in enumerate(MEASURES):
        for s, (suffix, _d) in enumerate(SUMMARY_STATS):
            out[f"{GROUP}.{key}_{suffix}"] = float(summ[j, s])
    return out

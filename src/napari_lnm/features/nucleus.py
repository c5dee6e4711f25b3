"""Nucleus-level features: per-nucleus morphology, shape and H intensity/texture, summarised over a tile.

Every per-nucleus measurement is computed for all nuclei at once from the label image with
``np.bincount`` label reductions (no Python loop over nuclei): area, centroid, second moments,
bounding box and per-row extremes over the horizontal runs of each label (closed-form integer run
sums, equal to the per-pixel sums), perimeter and shape over the boundary pixels, H statistics over
the foreground pixels. Morphology follows ``skimage.measure.regionprops`` definitions so the numbers
agree with it:

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
from .tile import scratch, gradient_magnitude

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


def _work(name: str, dtype, size: int) -> np.ndarray:
    """Reused per-thread work array ``nucleus_<name>`` (contents undefined).

    Per-pixel temporaries live in these: fresh ones of ~0.5 MB each cost page faults under glibc's
    default malloc settings.
    """
    return scratch("nucleus_" + name, size, dtype)


@dataclass
class _Grid:
    """Compact labels of the foreground pixels and their places on the zero-padded label grid.

    Pixel arrays hold one entry per foreground pixel in raster order; ``pidx`` is each pixel's flat index
    on the padded grid, ``(row + 1) * pw + (col + 1)``.
    """

    shape: tuple[int, int]  # label image (rows, cols)
    fg: np.ndarray  # flat raster index of every foreground pixel
    lbl: np.ndarray  # compact label 1..n of every foreground pixel
    ids: np.ndarray  # original label of compact label k at k - 1
    pw: int  # padded row width, cols + 2
    pflat: np.ndarray  # padded grid of compact labels (0: background and padding)
    pidx: np.ndarray
    i_r: np.ndarray  # padded index of the right neighbour
    i_d: np.ndarray  # padded index of the down neighbour
    same_l: np.ndarray  # the left / right / down neighbour has the same label
    same_r: np.ndarray
    same_d: np.ndarray
    interior: np.ndarray  # all four 4-neighbours have the same label
    tmp_i: np.ndarray  # free int64 work array, one entry per foreground pixel

    @property
    def n(self) -> int:
        """Number of nuclei."""
        return int(self.ids.size)

    @property
    def m1(self) -> int:
        """Length of a per-label ``np.bincount`` (entry 0 = background)."""
        return self.n + 1


@dataclass
class _Runs:
    """Horizontal runs of each label: compact label, row, first and last column, length (all px)."""

    lbl: np.ndarray
    r: np.ndarray
    cs: np.ndarray
    ce: np.ndarray
    length: np.ndarray


@dataclass
class _Moments:
    """Area (px²), centroid (row/col px) and central second moments per unit area (px²) of every nucleus."""

    area_px: np.ndarray
    cr: np.ndarray
    cc: np.ndarray
    vrr: np.ndarray
    vcc: np.ndarray
    vrc: np.ndarray


@dataclass
class _Ellipse:
    """Axes (px) of the moment-equivalent ellipse, eccentricity and minor/major ratio (1) of every nucleus."""

    major: np.ndarray
    minor: np.ndarray
    ecc: np.ndarray
    aspect: np.ndarray


@dataclass
class _Boxes:
    """Inclusive bounding boxes (px) of every nucleus."""

    rmin: np.ndarray
    rmax: np.ndarray
    cmin: np.ndarray
    cmax: np.ndarray


@dataclass
class _Border:
    """Border pixels (not 4-interior) of every nucleus: padded-grid index, compact label, and a free work array."""

    idx: np.ndarray
    lbl: np.ndarray
    tmp: np.ndarray  # int64, one entry per border pixel

    @property
    def nb(self) -> int:
        """Number of border pixels."""
        return int(self.idx.size)


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
    columns = tuple(m[0] for m in MEASURES)
    flat = lab.ravel()
    if flat.size == 0 or not flat.any():
        return NucleusTable(np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, len(MEASURES))), columns)

    grid = _padded_grid(lab.shape, *_compact_labels(flat))
    runs = _label_runs(grid)
    mom = _run_moments(runs, grid)
    ell = _ellipse(mom)
    box = _bounding_boxes(runs, grid)
    border = _border_pixels(grid)
    perim_px = _perimeter_px(grid, border)
    solidity = mom.area_px / np.maximum(_convex_area_px(runs, box, grid), mom.area_px)
    fourier = _fourier_descriptors(grid, border, mom)
    hcols = _h_columns(grid, runs, mom.area_px, mpp, h, h_grad)

    area = mom.area_px * mpp * mpp
    values = np.column_stack(
        [
            area,
            perim_px * mpp,
            np.sqrt(4.0 * area / np.pi),
            ell.major * mpp,
            ell.minor * mpp,
            ell.aspect,
            ell.ecc,
            solidity,
            _circularity(mom.area_px, perim_px),
            _extent(mom.area_px, box),
            fourier,
            hcols,
        ]
    )
    return NucleusTable(grid.ids.astype(np.int64), np.column_stack([mom.cr, mom.cc]), values, columns)


def _compact_labels(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground pixels' flat indices, their compact labels 1..n (raster order) and the original labels."""
    fg = np.flatnonzero(flat != 0)  # (a boolean mask is ~3x faster to scan than the labels)
    nf = fg.size
    if flat.dtype.kind in "iu":
        lab_fg = np.take(flat, fg, out=_work("labfg", flat.dtype, nf))
    else:
        lab_fg = flat[fg].astype(np.int64)
    maxlab = int(lab_fg.max())
    if maxlab <= 4 * flat.size:  # a lookup table over label values
        present = np.zeros(maxlab + 1, dtype=bool)
        present[lab_fg] = True
        ids = np.flatnonzero(present)
        lut = np.zeros(maxlab + 1, dtype=np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        lbl = np.take(lut, lab_fg, out=_work("lbl", np.int64, nf))
    else:  # sparse, huge label values
        ids, inv = np.unique(lab_fg, return_inverse=True)
        lbl = inv.reshape(-1) + 1
    return fg, lbl, ids


def _padded_grid(shape: tuple[int, int], fg: np.ndarray, lbl: np.ndarray, ids: np.ndarray) -> _Grid:
    """Zero-padded compact label image and the same-label 4-neighbour masks of every foreground pixel (px)."""
    nrow, ncol = shape
    nf = fg.size
    pw = ncol + 2
    pflat = _work("pad", np.int32, (nrow + 2) * pw)
    pflat.fill(0)
    pidx = np.floor_divide(fg, ncol, out=_work("pidx", np.int64, nf))
    pidx *= 2
    pidx += fg
    pidx += pw + 1  # (row + 1) * pw + (col + 1)
    pflat[pidx] = lbl
    # the right and down neighbours are also the H texture pairs
    i_r = np.add(pidx, 1, out=_work("i_r", np.int64, nf))
    i_d = np.add(pidx, pw, out=_work("i_d", np.int64, nf))
    tmp_i = _work("tmp_i", np.int64, nf)
    tmp_l = _work("tmp_l", np.int32, nf)

    def same_label_at(index: np.ndarray) -> np.ndarray:
        """Whether the padded-grid pixel at ``index`` has the same compact label as the pixel."""
        return np.take(pflat, index, out=tmp_l) == lbl

    same_l = same_label_at(np.subtract(pidx, 1, out=tmp_i))
    same_r = same_label_at(i_r)
    same_d = same_label_at(i_d)
    interior = same_r & same_d
    interior &= same_l
    interior &= same_label_at(np.subtract(pidx, pw, out=tmp_i))
    return _Grid(shape, fg, lbl, ids, pw, pflat, pidx, i_r, i_d, same_l, same_r, same_d, interior, tmp_i)


def _label_runs(g: _Grid) -> _Runs:
    """Horizontal runs of every label (row, first / last column, length in px), in raster order."""
    ncol = g.shape[1]
    run_s = g.fg[~g.same_l]
    run_e = g.fg[~g.same_r]
    r = run_s // ncol
    cs = run_s - r * ncol
    ce = run_e - r * ncol
    return _Runs(g.lbl[~g.same_l], r, cs, ce, ce - cs + 1)


def _run_moments(runs: _Runs, g: _Grid) -> _Moments:
    """Area (px²), centroid (px) and central second moments (px²) from closed-form run sums.

    The run sums are integer sums, exact in float64, so they equal the per-pixel sums bit for bit.
    """
    nrow, ncol = g.shape
    m1 = g.m1
    rl, r, cs, ce, ln = runs.lbl, runs.r, runs.cs, runs.ce, runs.length
    sum_c = (cs + ce) * ln // 2
    sum_cc = (ce * (ce + 1) * (2 * ce + 1) - (cs - 1) * cs * (2 * cs - 1)) // 6
    area_px = np.bincount(rl, ln, m1)[1:]
    s_r = np.bincount(rl, r * ln, m1)[1:]
    s_c = np.bincount(rl, sum_c, m1)[1:]
    s_rr = np.bincount(rl, r * r * ln, m1)[1:]
    s_cc = np.bincount(rl, sum_cc, m1)[1:]
    s_rc = np.bincount(rl, r * sum_c, m1)[1:]
    # coordinates relative to the tile centre keep the raw second moments well conditioned
    r0, c0 = 0.5 * (nrow - 1), 0.5 * (ncol - 1)
    cr = (s_r - r0 * area_px) / area_px
    cc = (s_c - c0 * area_px) / area_px
    vrr = np.maximum((s_rr - 2.0 * r0 * s_r + r0 * r0 * area_px) / area_px - cr * cr, 0.0)
    vcc = np.maximum((s_cc - 2.0 * c0 * s_c + c0 * c0 * area_px) / area_px - cc * cc, 0.0)
    vrc = (s_rc - c0 * s_r - r0 * s_c + r0 * c0 * area_px) / area_px - cr * cc
    cr += r0
    cc += c0
    return _Moments(area_px, cr, cc, vrr, vcc, vrc)


def _ellipse(mom: _Moments) -> _Ellipse:
    """Major / minor axis (px, ``4 sqrt(lambda)``), eccentricity and aspect ratio (1) from the second moments."""
    vrr, vcc, vrc = mom.vrr, mom.vcc, mom.vrc
    half_tr = 0.5 * (vrr + vcc)
    disc = np.sqrt(np.maximum(0.25 * (vrr - vcc) ** 2 + vrc**2, 0.0))
    l1 = np.maximum(half_tr + disc, 0.0)
    l2 = np.maximum(half_tr - disc, 0.0)
    major = 4.0 * np.sqrt(l1)
    minor = 4.0 * np.sqrt(l2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / np.where(l1 > 0, l1, 1.0), 0.0, 1.0)), 0.0)
        aspect = np.where(major > 0, minor / np.where(major > 0, major, 1.0), np.nan)
    return _Ellipse(major, minor, ecc, aspect)


def _bounding_boxes(runs: _Runs, g: _Grid) -> _Boxes:
    """Inclusive row / column bounds (px) of every nucleus, from its runs."""
    nrow, ncol = g.shape
    m1 = g.m1
    rmin = np.full(m1, nrow, np.int64)
    rmax = np.full(m1, -1, np.int64)
    cmin = np.full(m1, ncol, np.int64)
    cmax = np.full(m1, -1, np.int64)
    np.minimum.at(rmin, runs.lbl, runs.r)
    np.maximum.at(rmax, runs.lbl, runs.r)
    np.minimum.at(cmin, runs.lbl, runs.cs)
    np.maximum.at(cmax, runs.lbl, runs.ce)
    return _Boxes(rmin[1:], rmax[1:], cmin[1:], cmax[1:])


def _extent(area_px: np.ndarray, box: _Boxes) -> np.ndarray:
    """Extent (1): area / bounding-box area, both in px²."""
    return area_px / ((box.rmax - box.rmin + 1) * (box.cmax - box.cmin + 1))


def _border_pixels(g: _Grid) -> _Border:
    """Border pixels of every nucleus (4-neighbourhood erosion per label): padded-grid index and label."""
    bsel = ~g.interior
    nb = int(np.count_nonzero(bsel))
    bidx = np.compress(bsel, g.pidx, out=_work("bidx", np.int64, nb))
    blbl = np.compress(bsel, g.lbl, out=_work("blbl", np.int64, nb))
    return _Border(bidx, blbl, _work("tmp_b", np.int64, nb))


def _perimeter_px(g: _Grid, b: _Border) -> np.ndarray:
    """Perimeter (px) of every nucleus: Benkrid & Crookes weights of its border pixels' codes."""
    nb = b.nb
    bpad = _work("bpad", np.int32, g.pflat.size)  # compact labels of the border pixels only
    bpad.fill(0)
    bpad[b.idx] = b.lbl
    n4 = np.zeros(nb, dtype=np.uint8)  # same-label border pixels among the 4 / diagonal neighbours
    nd = np.zeros(nb, dtype=np.uint8)
    tmp_b = b.tmp
    tmp_bl = _work("tmp_bl", np.int32, nb)
    pw = g.pw
    for off, cnt in ((1, n4), (-1, n4), (pw, n4), (-pw, n4), (pw + 1, nd), (pw - 1, nd), (-pw + 1, nd), (-pw - 1, nd)):
        cnt += np.take(bpad, np.add(b.idx, off, out=tmp_b), out=tmp_bl) == b.lbl
    code = np.multiply(n4, 2, out=_work("code", np.intp, nb))
    code += 1
    code += np.multiply(nd, 10, out=tmp_b)
    return np.bincount(b.lbl, np.take(_PERIM_W, code, out=_work("f1", np.float64, nb)), g.m1)[1:]


def _convex_area_px(runs: _Runs, box: _Boxes, g: _Grid) -> np.ndarray:
    """Convex hull area (px², pixel centres inside the hull of the pixels' edge mid-points) of every nucleus.

    That hull (as skimage's convex_hull_image) only depends on the leftmost and rightmost pixel of every
    row; its right (left) boundary is the concave majorant of the right (negated left) chain, found for
    all nuclei at once, then pixel centres are counted row by row.
    """
    n, ncol = g.n, g.shape[1]
    rmin = box.rmin
    nrows_per = box.rmax - rmin + 1
    row_start = np.cumsum(nrows_per) - nrows_per
    row_lab = np.repeat(np.arange(n), nrows_per)
    nr_tot = row_lab.size
    rkey = row_start[runs.lbl - 1] + (runs.r - rmin[runs.lbl - 1])
    left = np.full(nr_tot, ncol, np.int64)
    right = np.full(nr_tot, -1, np.int64)
    np.minimum.at(left, rkey, runs.cs)
    np.maximum.at(right, rkey, runs.ce)
    both = _majorant_rows(
        np.concatenate([right, -left]),
        np.concatenate([row_lab, row_lab + n]),
        np.concatenate([row_start, row_start + nr_tot]),
        np.concatenate([nrows_per, nrows_per]),
    )
    xmax, xmin = both[:nr_tot], -both[nr_tot:]
    cnt = np.floor(xmax + 1e-7) - np.ceil(xmin - 1e-7) + 1.0
    return np.bincount(row_lab, np.maximum(cnt, 0.0), n)


def _fourier_descriptors(g: _Grid, b: _Border, mom: _Moments) -> np.ndarray:
    """Fourier shape descriptors ``|F_k| / |F_0|`` (1), k = 1.._FOURIER_K, of the boundary radial profile."""
    n, nb = g.n, b.nb
    bri, bci = np.divmod(b.idx, g.pw, out=(_work("code", np.intp, nb), b.tmp))  # (code is no longer needed)
    b_lab0 = np.subtract(b.lbl, 1, out=_work("b_lab0", np.int64, nb))
    bdr = np.subtract(bri, 1.0, out=_work("f1", np.float64, nb))  # boundary pixel row - centroid row
    bdr -= np.take(mom.cr, b_lab0, out=_work("f2", np.float64, nb))
    bdc = np.subtract(bci, 1.0, out=_work("f3", np.float64, nb))
    bdc -= np.take(mom.cc, b_lab0, out=_work("f2", np.float64, nb))
    rad = np.multiply(bdr, bdr, out=_work("f4", np.float64, nb))
    rad += np.multiply(bdc, bdc, out=_work("f2", np.float64, nb))
    np.sqrt(rad, out=rad)
    ang = np.arctan2(bdr, bdc, out=_work("f2", np.float64, nb))
    # bins centred on the axis and diagonal directions, so pixels straight or diagonally away from a
    # (half-)integer centroid never sit on a bin edge
    ang += np.pi
    ang *= _FOURIER_BINS / (2 * np.pi)
    ang += 0.5
    np.floor(ang, out=ang)
    key = _work("code", np.intp, nb)
    np.copyto(key, ang, casting="unsafe")
    key %= _FOURIER_BINS
    b_lab0 *= _FOURIER_BINS
    key += b_lab0  # (label - 1) * bins + angle bin
    rsum = np.bincount(key, rad, n * _FOURIER_BINS).reshape(n, _FOURIER_BINS)
    rcnt = np.bincount(key, None, n * _FOURIER_BINS).reshape(n, _FOURIER_BINS)
    rmean = rsum.sum(axis=1) / rcnt.sum(axis=1)
    prof = np.where(rcnt > 0, rsum / np.maximum(rcnt, 1), rmean[:, None])
    spec = np.abs(np.fft.rfft(prof, axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        fourier = spec[:, 1 : _FOURIER_K + 1] / spec[:, :1]
    fourier[~np.isfinite(fourier)] = np.nan
    return fourier


def _circularity(area_px: np.ndarray, perim_px: np.ndarray) -> np.ndarray:
    """Circularity ``4 pi area / perimeter²`` (1); NaN without a perimeter."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(perim_px > 0, 4.0 * np.pi * area_px / np.where(perim_px > 0, perim_px, 1.0) ** 2, np.nan)


def _h_columns(
    g: _Grid, runs: _Runs, area_px: np.ndarray, mpp: float, h: np.ndarray | None, h_grad: np.ndarray | None
) -> np.ndarray:
    """The eight H columns of every nucleus (OD, OD·µm², bits, OD², OD/µm as in MEASURES); NaN without ``h``."""
    if h is None:
        return np.full((g.n, 8), np.nan)
    hflat = np.asarray(h, dtype=np.float32)
    if hflat.shape != g.shape:
        raise UserError(f"H image shape {hflat.shape} does not match the label image {g.shape}")
    hflat = hflat.ravel()
    nf = g.fg.size
    hv32 = np.take(hflat, g.fg, out=_work("hv32", np.float32, nf))
    hv = _work("hv", np.float64, nf)
    np.copyto(hv, hv32)
    t64 = _work("t64", np.float64, nf)
    hmean, hstd, hint = _h_intensity(g, hv, t64, area_px, mpp)
    ent = _h_entropy(g, hv, t64, area_px)
    g32 = _work("g32", np.float32, nf)
    diss, con = _h_cooccurrence(g, runs, hv32, hv, t64, g32, area_px)
    if h_grad is None:
        h_grad = gradient_magnitude(hflat.reshape(g.shape), mpp)
    gmean, gstd = _gradient_stats(g, h_grad, g32, area_px)
    return np.stack([hmean, hstd, hint, ent, diss, con, gmean, gstd], axis=1)


def _h_intensity(
    g: _Grid, hv: np.ndarray, t64: np.ndarray, area_px: np.ndarray, mpp: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """H mean and standard deviation (OD) and integrated H (OD·µm²) of every nucleus."""
    m1 = g.m1
    hsum = np.bincount(g.lbl, hv, m1)[1:]
    hmean = hsum / area_px
    hstd = np.sqrt(np.maximum(np.bincount(g.lbl, np.multiply(hv, hv, out=t64), m1)[1:] / area_px - hmean * hmean, 0.0))
    return hmean, hstd, hsum * mpp * mpp


def _h_entropy(g: _Grid, hv: np.ndarray, t64: np.ndarray, area_px: np.ndarray) -> np.ndarray:
    """Entropy (bits) of every nucleus's H histogram (``_ENTROPY_LEVELS`` levels over ``H_RANGE``)."""
    n, nf = g.n, g.fg.size
    np.subtract(hv, H_RANGE[0], out=t64)
    t64 *= _ENTROPY_LEVELS / (H_RANGE[1] - H_RANGE[0])
    q = _work("q", np.intp, nf)
    np.copyto(q, t64, casting="unsafe")
    np.clip(q, 0, _ENTROPY_LEVELS - 1, out=q)
    tmp_i = g.tmp_i
    np.subtract(g.lbl, 1, out=tmp_i)
    tmp_i *= _ENTROPY_LEVELS
    q += tmp_i
    hist = np.bincount(q, None, n * _ENTROPY_LEVELS).reshape(n, _ENTROPY_LEVELS)
    p = hist / area_px[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)


def _h_cooccurrence(
    g: _Grid,
    runs: _Runs,
    hv32: np.ndarray,
    hv: np.ndarray,
    t64: np.ndarray,
    g32: np.ndarray,
    area_px: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Co-occurrence dissimilarity (OD) and contrast (OD²) of the same-label right and down pixel pairs.

    H is read from the padded grid, where only foreground pixels are set: other neighbours are masked out.
    """
    m1, nf = g.m1, g.fg.size
    hpad = _work("hpad", np.float32, g.pflat.size)
    hpad.fill(0)
    hpad[g.pidx] = hv32
    dr = np.subtract(np.take(hpad, g.i_r, out=g32), hv, out=_work("dr", np.float64, nf))
    np.abs(dr, out=dr)
    dr *= g.same_r
    dd = np.subtract(np.take(hpad, g.i_d, out=g32), hv, out=_work("dd", np.float64, nf))
    np.abs(dd, out=dd)
    dd *= g.same_d
    # pairs: right ones are run length - 1 per run, down ones counted per pixel
    n_down = int(np.count_nonzero(g.same_d))
    down_lbl = np.compress(g.same_d, g.lbl, out=_work("down_lbl", np.int64, n_down))
    npair = area_px - np.bincount(runs.lbl, None, m1)[1:] + np.bincount(down_lbl, None, m1)[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        diss = np.bincount(g.lbl, np.add(dr, dd, out=t64), m1)[1:] / npair
        dr *= dr
        dd *= dd
        dr += dd
        con = np.bincount(g.lbl, dr, m1)[1:] / npair
    return diss, con


def _gradient_stats(
    g: _Grid, h_grad: np.ndarray, g32: np.ndarray, area_px: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (OD/µm) of the H gradient magnitude in every nucleus."""
    m1 = g.m1
    gv = _work("hv", np.float64, g.fg.size)  # (H itself is no longer needed)
    np.copyto(gv, np.take(np.asarray(h_grad, dtype=np.float32).ravel(), g.fg, out=g32))
    gmean = np.bincount(g.lbl, gv, m1)[1:] / area_px
    gv *= gv
    gstd = np.sqrt(np.maximum(np.bincount(g.lbl, gv, m1)[1:] / area_px - gmean * gmean, 0.0))
    return gmean, gstd


def _majorant_rows(ext: np.ndarray, row_lab: np.ndarray, row_start: np.ndarray, nrows: np.ndarray) -> np.ndarray:
    """Per row, the hull boundary x of each label's pixel diamonds, from the rows' integer extreme x ``ext``.

    For each label the chain has 2m+1 points: half rows ``y-0.5`` (max of the two adjacent rows'
    extremes, the diamonds' vertical tips) and rows ``y`` (extreme + 0.5, the horizontal tip). Points
    on or below the chord of their live neighbours are dropped, all labels at once, until none is; what
    is left is the concave majorant, evaluated at every row. The chains lie end to end in one array and
    the chord test is exact integer arithmetic on doubled x and the array index as the (half-row) y.
    The rows must be grouped by label in label order (``row_lab`` as from ``np.repeat(arange, nrows)``,
    ``row_start`` its group starts).
    """
    clen = 2 * nrows + 1
    cstart = np.cumsum(clen) - clen
    total = int(clen.sum())
    rpos = 2 * np.arange(row_lab.size) + row_lab + 1  # = cstart[label] + 2 * (row in label) + 1
    e2 = 2 * np.asarray(ext, dtype=np.int64)
    v = np.full(total, -(1 << 40), dtype=np.int64)  # doubled x
    v[rpos] = e2 + 1
    v[rpos - 1] = e2  # half row above each row
    v[rpos + 1] = np.maximum(v[rpos + 1], e2)  # half row below each row (shared with the next row)
    is_end = np.zeros(total, dtype=bool)
    is_end[cstart] = True
    is_end[cstart + clen - 1] = True
    # first pass on the full chain (neighbours one half row apart: the chord value is their mean)
    alive = np.ones(total, dtype=bool)
    if total > 2:
        alive[1:-1] = 2 * v[1:-1] > v[:-2] + v[2:]
    alive |= is_end
    kidx = np.flatnonzero(alive)  # the chain ends stay, so a live point's live neighbours are in its chain
    kv, kend = v[kidx], is_end[kidx]
    while kv.size > 2:
        ya, yb, yc = kidx[:-2], kidx[1:-1], kidx[2:]
        va = kv[:-2]
        drop = (kv[1:-1] - va) * (yc - ya) <= (kv[2:] - va) * (yb - ya)
        drop &= ~kend[1:-1]
        if not drop.any():
            break
        stay = np.ones(kv.size, dtype=bool)
        stay[1:-1] = ~drop
        kidx, kv, kend = kidx[stay], kv[stay], kend[stay]
    # live neighbours of every row point: p <= rpos <= q (ranks among the live points by a cumulative sum)
    live = np.zeros(total, dtype=bool)
    live[kidx] = True
    pi_ = np.cumsum(live)[rpos] - 1
    qi = pi_ + ~live[rpos]
    p, q = kidx[pi_], kidx[qi]
    vp = kv[pi_] * 0.5
    vq = kv[qi] * 0.5
    same = p == q
    den = np.where(same, 1.0, (q - p).astype(np.float64))
    return np.where(same, vq, vp + (vq - vp) * (rpos - p).astype(np.float64) / den)


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

"""Synthetic H&E cohort: pyramidal TIFF slides whose nuclei depend on a known label and CMS subtype.

Images are composed in optical-density (OD) space from haematoxylin and eosin
concentration maps with the Ruifrok & Johnston stain vectors, so colour
deconvolution recovers them and nucleus segmentation sees realistic nuclei.
Every length is given in µm and converted with ``mpp`` (µm per px).

The label (1 = metastasis) acts through a per-slide *severity* (label 1:
N(1, 0.45), label 0: N(0, 0.45)) that is modulated spatially, so classes
overlap and tiles vary.  Severity makes tumour nuclei larger, more pleomorphic,
more crowded/clustered and more coarsely textured, disrupts glands and adds
tumour buds in stroma, with subtype-specific weights (:data:`SIGNAL_WEIGHTS`).
Subtypes change the tissue: CMS1 immune (many small dark lymphocytes), CMS2
canonical glandular, CMS3 mucinous pale pools, CMS4 mesenchymal (more stroma,
more elongated fibroblasts).
"""

from __future__ import annotations

import csv
import io as _io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_lnm._atomic import atomic_path
from napari_lnm.errors import UserError
from napari_lnm.progress import ProgressFn, StopFn, check_stop, report

SUBTYPES = ("CMS1", "CMS2", "CMS3", "CMS4")

#: Ruifrok & Johnston OD vectors (unit length) of haematoxylin and eosin.
H_VECTOR = np.array([0.650, 0.704, 0.286], dtype=np.float32)
E_VECTOR = np.array([0.072, 0.990, 0.105], dtype=np.float32)
H_VECTOR /= np.linalg.norm(H_VECTOR)
E_VECTOR /= np.linalg.norm(E_VECTOR)
BACKGROUND_OD = np.array([0.018, 0.020, 0.012], dtype=np.float32)


@dataclass(frozen=True)
class SubtypeLook:
    """Tissue composition of one CMS subtype (area fractions of tissue, densities 0-1)."""

    tumour_frac: float
    gland_frac: float
    immune_frac: float
    mucin_frac: float
    fibro_accept: float
    stroma_e: float
    lymph_in_tumour: float


LOOKS = {
    "CMS1": SubtypeLook(0.45, 0.30, 0.30, 0.00, 0.30, 0.24, 0.12),
    "CMS2": SubtypeLook(0.60, 0.70, 0.06, 0.00, 0.30, 0.25, 0.02),
    "CMS3": SubtypeLook(0.45, 0.50, 0.06, 0.28, 0.25, 0.22, 0.02),
    "CMS4": SubtypeLook(0.30, 0.35, 0.06, 0.00, 0.65, 0.32, 0.02),
}

#: How strongly severity acts on each nuclear property, per subtype
#: (size, pleomorphism, density/clustering, chromatin texture, gland disruption/budding).
SIGNAL_WEIGHTS = {
    "CMS1": dict(size=1.0, pleo=0.5, dens=0.3, tex=0.3, bud=0.1),
    "CMS2": dict(size=0.3, pleo=0.3, dens=1.0, tex=0.3, bud=0.4),
    "CMS3": dict(size=0.3, pleo=0.3, dens=0.2, tex=1.0, bud=0.2),
    "CMS4": dict(size=0.3, pleo=0.6, dens=0.3, tex=0.2, bud=1.0),
}

SEVERITY_SD = 0.45
#: what the label acts on: "nuclei" (tumour nuclear size, pleomorphism, crowding, texture, budding) or
#: "immune" (only the lymphocytic infiltration of tumour epithelium: dense in label-0 slides, sparse in
#: label-1 slides, as immune-rich CRC spreads less to lymph nodes)
SIGNALS = ("nuclei", "immune")
LOWRES = 16  # px of the full image per px of the region maps


def _check_subtype(subtype: Optional[str]) -> str:
    """Return a valid CMS subtype name ('CMS2' for None)."""
    if subtype is None:
        return "CMS2"
    s = str(subtype).upper()
    if s not in LOOKS:
        raise UserError(f"unknown subtype {subtype!r}: use one of {', '.join(SUBTYPES)}")
    return s


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise of ``shape``, standardised to mean 0, std 1 (sigma in px)."""
    f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-6)


def _upsample(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a low-resolution map to ``shape`` (px)."""
    zy, zx = shape[0] / field.shape[0], shape[1] / field.shape[1]
    out = ndi.zoom(field, (zy, zx), order=1, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1]]


def _lookup(field: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Nearest value of a low-resolution map at full-resolution positions (px)."""
    iy = np.clip((y / LOWRES).astype(np.intp), 0, field.shape[0] - 1)
    ix = np.clip((x / LOWRES).astype(np.intp), 0, field.shape[1] - 1)
    return field[iy, ix]


def _hex_lattice(rng: np.random.Generator, shape: tuple[int, int], spacing: float, jitter: float = 0.3):
    """Jittered hexagonal lattice of points covering ``shape``; spacing and output (y, x) in px."""
    dy = spacing * math.sqrt(3) / 2
    ny, nx = int(shape[0] / dy) + 2, int(shape[1] / spacing) + 2
    gy, gx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    y = gy * dy
    x = gx * spacing + (gy % 2) * spacing / 2
    y = y.ravel() + rng.uniform(-jitter, jitter, y.size).astype(np.float32) * spacing
    x = x.ravel() + rng.uniform(-jitter, jitter, x.size).astype(np.float32) * spacing
    keep = (y >= 0) & (y < shape[0]) & (x >= 0) & (x < shape[1])
    return y[keep], x[keep]


def _ellipse_pixels(cy, cx, a, b, theta, shape):
    """Pixels inside ellipses (centre px, semi-axes px, angle rad): returns (index, row, col, r²)."""
    out_n, out_y, out_x, out_r = [], [], [], []
    if len(cy) == 0:
        e = np.zeros(0, np.intp)
        return e, e, e, np.zeros(0, np.float32)
    radius = np.ceil(np.maximum(a, b)).astype(np.intp) + 1
    # group by bounding-box radius (rounded up to a multiple of 4) so each batch is one array op
    group = (radius + 3) // 4
    for g in np.unique(group):
        sel = np.nonzero(group == g)[0]
        R = int(g * 4)
        off = np.arange(-R, R + 1, dtype=np.float32)
        for start in range(0, len(sel), 4096):
            s = sel[start : start + 4096]
            iy0 = np.floor(cy[s]).astype(np.intp)
            ix0 = np.floor(cx[s]).astype(np.intp)
            fy = (cy[s] - iy0).astype(np.float32)[:, None, None]
            fx = (cx[s] - ix0).astype(np.float32)[:, None, None]
            dy = off[None, :, None] - fy
            dx = off[None, None, :] - fx
            c = np.cos(theta[s]).astype(np.float32)[:, None, None]
            si = np.sin(theta[s]).astype(np.float32)[:, None, None]
            u = (dx * c + dy * si) / a[s].astype(np.float32)[:, None, None]
            v = (dy * c - dx * si) / b[s].astype(np.float32)[:, None, None]
            r2 = u * u + v * v
            n, ky, kx = np.nonzero(r2 <= 1.0)
            py = iy0[n] + ky - R
            px = ix0[n] + kx - R
            ok = (py >= 0) & (py < shape[0]) & (px >= 0) & (px < shape[1])
            out_n.append(s[n[ok]])
            out_y.append(py[ok])
            out_x.append(px[ok])
            out_r.append(r2[n[ok], ky[ok], kx[ok]])
    return (np.concatenate(out_n), np.concatenate(out_y), np.concatenate(out_x), np.concatenate(out_r))


@dataclass
class RenderInfo:
    """What was drawn: nucleus counts per kind and the slide-level severity (unitless)."""

    severity: float
    n_tumour: int
    n_lymphocytes: int
    n_fibroblasts: int
    n_glands: int
    tissue_fraction: float


def render_tissue(
    shape: tuple[int, int],
    label: int,
    subtype: Optional[str] = None,
    seed: int = 0,
    mpp: float = 0.5,
    severity: Optional[float] = None,
    tissue_everywhere: bool = False,
    signal: str = "nuclei",
) -> tuple[np.ndarray, RenderInfo]:
    """Render an H&E-like RGB uint8 image of ``shape`` (rows, cols px) at ``mpp`` µm/px.

    ``severity`` (unitless) defaults to a draw from N(label, 0.45); pass it to fix the signal;
    ``signal`` (:data:`SIGNALS`) is what the severity acts on.
    """
    subtype = _check_subtype(subtype)
    if label not in (0, 1):
        raise UserError(f"label must be 0 or 1, got {label!r}")
    if signal not in SIGNALS:
        raise UserError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
    look, w = LOOKS[subtype], SIGNAL_WEIGHTS[subtype]
    if signal == "immune":  # nuclei look the same in both classes: only the infiltration differs
        w = dict.fromkeys(w, 0.0)
    rng = np.random.default_rng(seed)
    H, W = int(shape[0]), int(shape[1])
    um = 1.0 / mpp  # px per µm
    if severity is None:
        severity = float(label + rng.normal(0.0, SEVERITY_SD))
    sev = float(severity)
    sev_pos = max(sev, 0.0)

    # ---- low-resolution region maps (one cell = LOWRES px) -------------------------------
    lh, lw = -(-H // LOWRES), -(-W // LOWRES)
    cell_um = LOWRES * mpp
    lo = lambda s_um: _smooth_field(rng, (lh, lw), max(s_um / cell_um, 0.5))  # noqa: E731
    if tissue_everywhere:
        tissue_lo = np.ones((lh, lw), np.float32)
    else:
        yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
        r = np.hypot((yy - lh / 2) / (0.44 * lh), (xx - lw / 2) / (0.44 * lw))
        blob = 1.0 - r + 0.12 * lo(200.0)
        tissue_lo = 1.0 / (1.0 + np.exp(-blob * 25.0))
    inside = tissue_lo > 0.5
    if not inside.any():
        inside[lh // 2, lw // 2] = True

    def zone(field: np.ndarray, frac: float, where: np.ndarray) -> np.ndarray:
        """Cells of ``where`` in the top ``frac`` of ``field``."""
        if frac <= 0 or not where.any():
            return np.zeros_like(where)
        t = np.quantile(field[where], 1.0 - min(frac, 1.0))
        return where & (field >= t)

    mucin = zone(lo(60.0), look.mucin_frac, inside)
    rest = inside & ~mucin
    tumour = zone(lo(70.0), look.tumour_frac / max(1 - look.mucin_frac, 1e-3), rest)
    immune = zone(lo(40.0), look.immune_frac / max(1 - look.tumour_frac - look.mucin_frac, 0.1), rest & ~tumour)
    stroma = rest & ~tumour & ~immune
    gland_frac = float(np.clip(look.gland_frac * (1.0 - 0.45 * w["bud"] * sev), 0.05, 0.95))
    glandzone = zone(lo(50.0), gland_frac, tumour)
    solid = tumour & ~glandzone
    # spatial modulation of severity (mean 1): some tiles of a positive slide look benign
    sev_lo = sev * np.clip(1.0 + 0.45 * lo(120.0), 0.2, 1.8)
    clump_lo = lo(18.0)
    orient_lo = lo(150.0)

    # ---- stain concentration maps (OD units) --------------------------------------------------
    e_lo = np.where(stroma | glandzone, look.stroma_e, 0.0) + np.where(solid, 0.38, 0.0) + np.where(immune, 0.18, 0.0)
    e_lo = e_lo + np.where(mucin, 0.06, 0.0)
    h_lo = np.where(solid, 0.07, 0.0) + np.where(mucin, 0.14, 0.0) + np.where(immune, 0.05, 0.0)
    h_lo = h_lo + np.where(stroma | glandzone, 0.02, 0.0)
    e_lo = ndi.gaussian_filter(e_lo.astype(np.float32), 0.7) * tissue_lo
    h_lo = ndi.gaussian_filter(h_lo.astype(np.float32), 0.7) * tissue_lo
    E = _upsample(e_lo, (H, W))
    Hc = _upsample(h_lo, (H, W))
    # fibrous eosin texture at half resolution: horizontal/vertical fibres blended by orientation
    h2, w2 = -(-H // 2), -(-W // 2)
    noise2 = rng.standard_normal((h2, w2), dtype=np.float32)
    fh = ndi.gaussian_filter(noise2, (0.4 * um, 1.5 * um))
    fv = ndi.gaussian_filter(noise2, (1.5 * um, 0.4 * um))
    wo = _upsample(1.0 / (1.0 + np.exp(-2.0 * orient_lo)), (h2, w2))
    fib2 = wo * fh + (1.0 - wo) * fv
    fib2 /= fib2.std() + 1e-6
    fib = np.repeat(np.repeat(fib2, 2, axis=0), 2, axis=1)[:H, :W]
    E *= 1.0 + 0.22 * fib
    Hc *= 1.0 + 0.2 * fib
    noise = rng.standard_normal((H, W), dtype=np.float32)
    chrom = ndi.gaussian_filter(noise, 0.35 * um)
    chrom /= chrom.std() + 1e-6

    # ---- glands: epithelial rim (pink cytoplasm), lumen, radial nuclei ------------------------
    gy, gx = _hex_lattice(rng, (H, W), 72.0 * um, jitter=0.15)
    gkeep = _lookup(glandzone, gy, gx)
    gy, gx = gy[gkeep], gx[gkeep]
    ng = len(gy)
    rl = rng.uniform(8.0, 20.0, ng).astype(np.float32) * um  # lumen radius px
    asp = rng.uniform(0.65, 1.0, ng).astype(np.float32)
    gth = rng.uniform(0, np.pi, ng).astype(np.float32)
    rim = 14.0 * um
    n, py, px, _ = _ellipse_pixels(gy, gx, rl + rim, rl * asp + rim, gth, (H, W))
    E[py, px] = 0.45 + 0.05 * fib[py, px]
    Hc[py, px] = 0.08
    n, py, px, _ = _ellipse_pixels(gy, gx, rl, rl * asp, gth, (H, W))
    lumen_e, lumen_h = (0.07, 0.12) if subtype == "CMS3" else (0.01, 0.0)
    E[py, px] = lumen_e * (1 + 0.3 * fib[py, px])
    Hc[py, px] = lumen_h
    # nuclei on the rim, one every ~8 µm, long axis radial
    per = np.maximum((2 * np.pi * (rl * (1 + asp) / 2 + 4 * um) / (8.0 * um)).astype(np.intp), 6)
    gidx = np.repeat(np.arange(ng), per)
    k = np.arange(gidx.size) - np.repeat(np.cumsum(per) - per, per)
    phi = 2 * np.pi * k / per[gidx] + rng.normal(0, 0.08, gidx.size)
    sev_g = _lookup(sev_lo, gy, gx)[gidx]
    rad_jit = rng.normal(0, 1.0 + 3.0 * w["bud"] * np.maximum(sev_g, 0), gidx.size) * um
    ra = rl[gidx] + 5.0 * um + rad_jit
    rb = rl[gidx] * asp[gidx] + 5.0 * um + rad_jit
    ct, st = np.cos(gth[gidx]), np.sin(gth[gidx])
    lx, ly = ra * np.cos(phi), rb * np.sin(phi)
    ring_x = gx[gidx] + lx * ct - ly * st
    ring_y = gy[gidx] + lx * st + ly * ct
    ring_th = np.arctan2(ring_y - gy[gidx], ring_x - gx[gidx])

    # ---- solid tumour sheets and tumour buds in stroma -------------------------------------
    ty, tx = _hex_lattice(rng, (H, W), 11.0 * um, jitter=0.3)
    s_t = _lookup(sev_lo, ty, tx)
    clump = _lookup(clump_lo, ty, tx)
    p = 0.5 * np.clip(1.0 + 0.6 * w["dens"] * s_t, 0.4, 2.2) * (1.0 + 0.5 * w["dens"] * np.maximum(s_t, 0) * clump)
    keep = _lookup(solid, ty, tx) & (rng.random(ty.size) < p)
    ty, tx = ty[keep], tx[keep]
    stroma_cells = np.argwhere(stroma)
    n_bud = rng.poisson((4.0 + 40.0 * w["bud"] * sev_pos) * stroma.sum() * (cell_um / 1000.0) ** 2) if len(stroma_cells) else 0
    if n_bud:
        cells = stroma_cells[rng.integers(0, len(stroma_cells), n_bud)]
        by = (cells[:, 0] + rng.random(n_bud)) * LOWRES
        bx = (cells[:, 1] + rng.random(n_bud)) * LOWRES
        sizes = rng.integers(3, 9, n_bud)
        bi = np.repeat(np.arange(n_bud), sizes)
        ang = rng.uniform(0, 2 * np.pi, bi.size)
        rr = rng.uniform(0, 9.0, bi.size) * um
        ty = np.concatenate([ty, by[bi] + rr * np.sin(ang)]).astype(np.float32)
        tx = np.concatenate([tx, bx[bi] + rr * np.cos(ang)]).astype(np.float32)
    all_ty = np.concatenate([ring_y, ty]).astype(np.float32)
    all_tx = np.concatenate([ring_x, tx]).astype(np.float32)
    nt = all_ty.size
    s_n = _lookup(sev_lo, np.clip(all_ty, 0, H - 1), np.clip(all_tx, 0, W - 1))
    s_p = np.maximum(s_n, 0)
    size_f = np.clip(1.0 + 0.32 * w["size"] * s_n, 0.75, 1.9)
    t_a = 5.0 * size_f * np.exp(rng.normal(0, 0.10 + 0.14 * w["pleo"] * s_p, nt))
    t_asp = np.clip(rng.uniform(0.6, 0.95, nt) - 0.25 * w["pleo"] * s_p * rng.random(nt), 0.35, 1.0)
    t_th = np.concatenate([ring_th, rng.uniform(0, np.pi, nt - ring_th.size)])
    t_h = 0.62 * (1 + 0.08 * rng.standard_normal(nt)) * (1 + 0.12 * w["tex"] * s_n)
    t_amp = 0.18 + 0.35 * w["tex"] * s_p

    # ---- lymphocytes and fibroblasts ------------------------------------------------------
    ly_, lx_ = _hex_lattice(rng, (H, W), 7.0 * um, jitter=0.25)
    pl = np.where(_lookup(immune, ly_, lx_), 0.75, 0.0) + np.where(_lookup(stroma, ly_, lx_), 0.03, 0.0)
    in_tumour = look.lymph_in_tumour
    if signal == "immune":  # intratumoural lymphocytes fall with severity (locally modulated)
        in_tumour = look.lymph_in_tumour + 0.3 * np.clip(1.0 - _lookup(sev_lo, ly_, lx_), 0.0, 1.5) / 1.5
    pl = pl + np.where(_lookup(tumour, ly_, lx_), in_tumour, 0.0)
    keep = rng.random(ly_.size) < pl
    ly_, lx_ = ly_[keep], lx_[keep]
    nl = ly_.size
    fy, fx = _hex_lattice(rng, (H, W), 15.0 * um, jitter=0.35)
    keep = _lookup(stroma | glandzone, fy, fx) & (rng.random(fy.size) < look.fibro_accept)
    fy, fx = fy[keep], fx[keep]
    nf = fy.size
    f_th = np.where(_lookup(orient_lo, fy, fx) > 0, 0.0, np.pi / 2) + rng.normal(0, 0.25, nf)

    cy = np.concatenate([all_ty, ly_, fy])
    cx = np.concatenate([all_tx, lx_, fx])
    a_um = np.concatenate([t_a, rng.normal(2.9, 0.25, nl), rng.normal(6.5, 1.0, nf)])
    b_um = np.concatenate([t_a * t_asp, rng.normal(2.6, 0.2, nl), rng.normal(1.6, 0.25, nf)])
    theta = np.concatenate([t_th, rng.uniform(0, np.pi, nl), f_th]).astype(np.float32)
    # haematoxylin of tumour / lymphocyte / fibroblast nuclei (OD); the immune cohort uses the levels of
    # real colorectal scans (as the nucleus-type model saw them) so that its nuclei are typed like real ones
    h_lev = (0.42 / 0.62, 0.55, 0.45) if signal == "immune" else (1.0, 1.2, 0.85)
    hbase = np.concatenate([t_h * h_lev[0], rng.normal(h_lev[1], 0.08, nl),
                            rng.normal(h_lev[2], 0.08, nf)]).astype(np.float32)
    amp = np.concatenate([np.broadcast_to(t_amp, (nt,)), np.full(nl, 0.06), np.full(nf, 0.08)]).astype(np.float32)
    a_px = np.maximum(a_um, 1.2) * um
    b_px = np.maximum(b_um, 0.9) * um
    order = rng.permutation(cy.size)  # random overdraw order
    n, py, px, r2 = _ellipse_pixels(cy[order], cx[order], a_px[order], b_px[order], theta[order], (H, W))
    n = order[n]
    val = hbase[n] * (1.0 + amp[n] * chrom[py, px]) * (0.88 + 0.22 * r2)
    Hc[py, px] = np.maximum(val, 0.05)
    E[py, px] *= 0.6

    # ---- compose: blur (optics), OD -> RGB, sensor noise ------------------------------------
    sig = 0.45 * um
    Hc = ndi.gaussian_filter(Hc, sig)
    E = ndi.gaussian_filter(E, sig)
    grain = 2.0 * np.roll(noise, (H // 3, W // 3), axis=(0, 1))  # sensor noise, grey levels
    rgb = np.empty((H, W, 3), np.uint8)
    for c in range(3):
        od = Hc * H_VECTOR[c] + E * E_VECTOR[c] + BACKGROUND_OD[c]
        od *= -np.float32(np.log(10.0))
        ch = np.exp(od, out=od)
        ch *= 255.0
        ch += grain
        np.clip(ch, 0, 255, out=ch)
        rgb[..., c] = ch
    info = RenderInfo(sev, int(nt), int(nl), int(nf), int(ng), float(inside.mean()))
    return rgb, info


def make_synthetic_tile(label: int, subtype: Optional[str] = None, seed: int = 0, size: int = 512,
                        mpp: float = 0.5, severity: Optional[float] = None) -> np.ndarray:
    """An all-tissue H&E-like RGB uint8 tile (size x size px at ``mpp`` µm/px).

    The label's effect is fixed (severity = label unless given), so label-1 tiles
    reliably show larger, denser, rougher nuclei of the subtype's kind.
    """
    sev = float(label) if severity is None else float(severity)
    rgb, _ = render_tissue((size, size), int(label), subtype, seed, mpp, severity=sev, tissue_everywhere=True)
    return rgb


def write_pyramid_tiff(path: str | os.PathLike, rgb: np.ndarray, mpp: float = 0.5,
                       objective: float = 20.0, tile: int = 256, min_size: int = 256) -> None:
    """Write RGB uint8 as a tiled pyramidal TIFF (levels 1, 2, 4, ... with resolution tags in µm/px)."""
    import tifffile

    levels = [rgb]
    while min(levels[-1].shape[:2]) // 2 >= min_size:
        levels.append(_half(levels[-1]))
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 2**31) as tif:
            for i, im in enumerate(levels):
                tif.write(im, **_tiff_options(mpp, objective, tile, 2**i))
        _chmod_default(tmp)


def _half(im: np.ndarray) -> np.ndarray:
    """2x2 mean downsampling of an RGB uint8 image (rounded)."""
    h2, w2 = im.shape[0] // 2, im.shape[1] // 2
    acc = im[0 : 2 * h2 : 2, 0 : 2 * w2 : 2].astype(np.uint16)
    acc += im[1 : 2 * h2 : 2, 0 : 2 * w2 : 2]
    acc += im[0 : 2 * h2 : 2, 1 : 2 * w2 : 2]
    acc += im[1 : 2 * h2 : 2, 1 : 2 * w2 : 2]
    acc += 2
    return (acc >> 2).astype(np.uint8)


def _tiff_options(mpp: float, objective: float, tile: int, downsample: int) -> dict:
    """tifffile.write options of one pyramid level (JPEG tiles, resolution in px/cm)."""
    res = 1e4 / (mpp * downsample)  # px per cm
    opts = dict(photometric="rgb", tile=(tile, tile), compression="jpeg", compressionargs={"level": 90},
                resolution=(res, res), resolutionunit="CENTIMETER", subfiletype=0 if downsample == 1 else 1,
                metadata=None)
    if downsample == 1:
        opts["description"] = f"napari-lnm synthetic H&E slide|AppMag = {objective:g}|MPP = {mpp:g}"
    return opts


def make_large_slide(path: str | os.PathLike, size: tuple[int, int], seed: int = 0, label: int = 1,
                     subtype: Optional[str] = "CMS2", mpp: float = 0.5, block: int = 2048, tile: int = 256) -> Path:
    """Write a large all-tissue slide (size = (height, width) px, multiples of ``tile``) block by block.

    Memory stays at about one row of blocks plus the 4x-downsampled level, so
    slides of 3000+ tiles of 512 px can be made for throughput benchmarks.
    Blocks are rendered independently (seams between blocks are visible).
    """
    import tifffile

    H, W = int(size[0]), int(size[1])
    if H % tile or W % tile or block % tile:
        raise UserError(f"large slide size {W}x{H} and block {block} must be multiples of {tile} px")
    subtype = _check_subtype(subtype)
    seeds = np.random.SeedSequence(seed)
    n_by, n_bx = -(-H // block), -(-W // block)
    child = seeds.spawn(n_by * n_bx)
    level1 = np.zeros((H // 4, W // 4, 3), np.uint8)

    def tiles() -> Iterator[np.ndarray]:
        for by in range(n_by):
            y0 = by * block
            bh = min(block, H - y0)
            row = np.empty((bh, W, 3), np.uint8)
            for bx in range(n_bx):
                x0 = bx * block
                bw = min(block, W - x0)
                s = int(child[by * n_bx + bx].generate_state(1)[0])
                row[:, x0 : x0 + bw], _ = render_tissue((bh, bw), label, subtype, s, mpp, tissue_everywhere=True)
            level1[y0 // 4 : (y0 + bh) // 4] = _half(_half(row))
            for ty in range(0, bh, tile):
                for tx in range(0, W, tile):
                    yield row[ty : ty + tile, tx : tx + tile]

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=H * W * 3 > 2**31) as tif:
            tif.write(tiles(), shape=(H, W, 3), dtype=np.uint8, **_tiff_options(mpp, 10.0 / mpp, tile, 1))
            im, ds = level1, 4
            while True:
                tif.write(im, **_tiff_options(mpp, 10.0 / mpp, tile, ds))
                if min(im.shape[:2]) // 4 < 256:
                    break
                im, ds = _half(_half(im)), ds * 4
        _chmod_default(tmp)
    return Path(path)


def _chmod_default(path: Path) -> None:
    """Give a file the permissions of a normally created one (mkstemp makes it 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def make_cohort(
    out_dir: str | os.PathLike,
    n_slides: int,
    seed: int = 0,
    size: tuple[int, int] = (2048, 2048),
    positive_fraction: float = 0.5,
    subtypes: Sequence[str] = SUBTYPES,
    mpp: float = 0.5,
    slides_per_patient: int = 1,
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[StopFn] = None,
    signal: str = "nuclei",
) -> Path:
    """Write ``n_slides`` synthetic slides to out_dir/slides/ and out_dir/cohort.csv; returns the CSV path.

    ``size`` is (height, width) in px at ``mpp`` µm/px (20x at 0.5).  Patients
    get ``slides_per_patient`` consecutive slides sharing label, subtype and
    (up to a small jitter) severity; exactly round(n_patients * positive_fraction)
    patients are positive and subtypes are balanced over patients.  ``signal``: what the label acts
    on (:data:`SIGNALS`).
    """
    if signal not in SIGNALS:
        raise UserError(f"--signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
    if n_slides < 1:
        raise UserError(f"--n-slides must be at least 1, got {n_slides}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise UserError(f"--positive-fraction must be in [0, 1], got {positive_fraction}")
    if slides_per_patient < 1:
        raise UserError(f"--slides-per-patient must be at least 1, got {slides_per_patient}")
    size = (int(size[0]), int(size[1]))
    if min(size) < 256:
        raise UserError(f"--size must be at least 256x256 px, got {size[1]}x{size[0]}")
    subtypes = [_check_subtype(s) for s in subtypes]
    out = Path(out_dir)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_pat = -(-n_slides // slides_per_patient)
    n_pos = int(round(n_pat * positive_fraction))
    labels = rng.permutation(np.r_[np.ones(n_pos, int), np.zeros(n_pat - n_pos, int)])
    subs = rng.permutation([subtypes[i % len(subtypes)] for i in range(n_pat)])
    pat_sev = labels + rng.normal(0.0, SEVERITY_SD, n_pat)
    slide_sev = pat_sev[np.arange(n_slides) // slides_per_patient]
    if slides_per_patient > 1:
        slide_sev = slide_sev + rng.normal(0.0, 0.15, n_slides)
    child_seeds = np.random.SeedSequence(seed).spawn(n_slides)
    rows = []
    for i in range(n_slides):
        check_stop(should_stop)
        pat = i // slides_per_patient
        slide_id = f"synth_{i:04d}"
        rel = f"slides/{slide_id}.tif"
        s = int(child_seeds[i].generate_state(1)[0])
        rgb, info = render_tissue(size, int(labels[pat]), str(subs[pat]), s, mpp, severity=float(slide_sev[i]),
                                  signal=signal)
        write_pyramid_tiff(out / rel, rgb, mpp=mpp, objective=10.0 / mpp)
        rows.append((slide_id, rel, int(labels[pat]), str(subs[pat]), f"P{pat:04d}"))
        report(progress, i + 1, n_slides, slide_id)
    buf = _io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["slide_id", "path", "label", "subtype", "patient_id"])
    wr.writerows(rows)
    csv_path = out / "cohort.csv"
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        _chmod_default(tmp)
    return csv_path

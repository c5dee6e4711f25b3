"""Sliding-window tiles inside ROI ∩ tissue at a target magnification (tile table in level-0 px)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from napari_lnm.errors import SlideError
from napari_lnm.config import ALLOWED_MAGNIFICATIONS, ALLOWED_TILE_SIZES, SEGMENTATIONS, TilingConfig
from napari_lnm.progress import ProgressFn, StopFn, check_stop, report

__all__ = ["TilingConfig", "tile_slide", "read_tile", "no_tiles_error", "tile_size_level0", "ALLOWED_TILE_SIZES",
           "ALLOWED_MAGNIFICATIONS", "check_resolution", "SEGMENTATIONS"]


def tile_size_level0(slide, config: TilingConfig) -> int:
    """Side of one tile in level-0 px: round(tile_size * config.mpp / slide.mpp)."""
    return max(1, int(round(config.tile_size * config.mpp / slide.mpp)))


#: most a slide may be upsampled to reach the working µm/px; beyond it the tiles are interpolation, not tissue
MAX_UPSAMPLING = 2.0


def check_resolution(slide, config: TilingConfig) -> None:
    """Raise SlideError when the working µm/px would upsample the slide more than 2x (slide µm/px > 2 × config.mpp)."""
    slide_mpp, work_mpp = float(slide.mpp), float(config.mpp)
    if slide_mpp <= MAX_UPSAMPLING * work_mpp * (1.0 + 1e-6):
        return
    fine_enough = [m for m in ALLOWED_MAGNIFICATIONS if slide_mpp <= MAX_UPSAMPLING * 10.0 / m * (1.0 + 1e-6)]
    if fine_enough:
        what = f"use magnification {max(fine_enough):g}x or lower"
    else:  # coarser than 4 µm/px: an overview or thumbnail, not a scan the features were made for
        what = (f"no magnification from {min(ALLOWED_MAGNIFICATIONS):g}x to {max(ALLOWED_MAGNIFICATIONS):g}x "
                "fits such a coarse image")
    given = getattr(slide, "mpp_source", "metadata") == "user"
    source = "given with --mpp" if given else "from the file's metadata"
    raise SlideError(getattr(slide, "path", "slide"),
                     f"the slide is {slide_mpp:.4g} µm/px ({source}) but {config.magnification:g}x works at "
                     f"{work_mpp:g} µm/px: tiles would be upsampled {slide_mpp / work_mpp:.1f}x (at most "
                     f"{MAX_UPSAMPLING:g}x), inventing detail the scan does not have; {what}, or check the "
                     f"slide's µm/px (--mpp is used when the metadata lacks it, --force-mpp overrides the metadata)")


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({"x": pd.Series([], dtype=np.int64), "y": pd.Series([], dtype=np.int64),
                         "size": pd.Series([], dtype=np.int64),
                         "tissue_fraction": pd.Series([], dtype=np.float32)})


def tile_slide(slide, rois: Union[None, str, Sequence[np.ndarray], object] = None,
               config: TilingConfig = TilingConfig(), tissue: Union[bool, "object"] = True, *,
               progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None) -> pd.DataFrame:
    """Tile table (x, y, size level-0 px; tissue_fraction 0..1) of tiles inside ROI ∩ tissue, sorted by (y, x).

    ``rois``: what :func:`napari_lnm.tissue.load_rois` takes (None = whole slide; a MultiPolygon's holes are
    left out; an empty list selects nothing); an ROI entirely outside the slide is a SlideError, as is a
    working µm/px that upsamples the slide more than 2x (:func:`check_resolution`).  ``tissue``: True to
    detect tissue automatically (:func:`napari_lnm.tissue.tissue_mask`), False to treat
    everything inside the ROI as tissue, or a precomputed :class:`TissueMask`.
    The grid is anchored at the slide origin with stride ``size * (1 - overlap)``;
    only tiles fully inside the slide are considered.  The tissue fraction is the mean
    of the region mask over the tile (integral image).  With ``config.max_tiles`` a
    random subset is drawn with ``config.seed``.  Empty table when nothing qualifies.
    """
    import os

    from napari_lnm.tissue import TissueMask, check_rois_inside, load_rois, polygons_mask, tissue_mask

    check_resolution(slide, config)
    roi_source = rois if isinstance(rois, (str, os.PathLike)) else None
    rois = load_rois(rois, getattr(slide, "path", None))
    check_rois_inside(rois, slide, roi_source)  # before the tissue mask: a wrong ROI fails fast
    report(progress, 0, 3, "tissue mask")
    check_stop(should_stop)
    W, H = slide.dimensions
    size = tile_size_level0(slide, config)
    stride = max(1, int(round(size * (1.0 - config.overlap))))
    if isinstance(tissue, TissueMask):
        tm = tissue
        region = tm.mask.copy()
    elif tissue:
        tm = tissue_mask(slide)
        region = tm.mask.copy()
    else:
        ds = max(1.0, max(W, H) / 2048.0, 8.0 / slide.mpp)
        shape = (max(1, int(round(H / ds))), max(1, int(round(W / ds))))
        tm = TissueMask(mask=np.ones(shape, bool), downsample=W / shape[1], mpp=W / shape[1] * slide.mpp)
        region = tm.mask.copy()
    ds = float(tm.downsample)
    if rois is not None:
        region &= polygons_mask(rois, region.shape, ds)
    report(progress, 1, 3, "tile grid")
    check_stop(should_stop)
    if W < size or H < size or not region.any():
        report(progress, 3, 3, "no tiles")
        return _empty_table()
    # candidate grid restricted to the region's bounding box (anchored at the origin)
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    bx0, bx1 = cols[0] * ds, (cols[-1] + 1) * ds
    by0, by1 = rows[0] * ds, (rows[-1] + 1) * ds
    xs = np.arange(max(0, int((bx0 - size) // stride)) * stride, W - size + 1, stride, dtype=np.int64)
    ys = np.arange(max(0, int((by0 - size) // stride)) * stride, H - size + 1, stride, dtype=np.int64)
    xs = xs[(xs + size > bx0) & (xs < bx1)]
    ys = ys[(ys + size > by0) & (ys < by1)]
    if xs.size == 0 or ys.size == 0:
        return _empty_table()
    # integral image of the region mask; tile -> mask px box [r0, r1) x [c0, c1)
    integ = np.zeros((region.shape[0] + 1, region.shape[1] + 1), np.int64)
    integ[1:, 1:] = region.astype(np.int64).cumsum(0).cumsum(1)
    mh, mw = region.shape

    def box(v0: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.clip(np.round(v0 / ds).astype(np.int64), 0, limit)
        b = np.clip(np.round((v0 + size) / ds).astype(np.int64), 0, limit)
        b = np.maximum(b, np.minimum(a + 1, limit))
        a = np.minimum(a, b - 1).clip(0)
        return a, b

    c0, c1 = box(xs, mw)
    r0, r1 = box(ys, mh)
    R0, C0 = np.meshgrid(r0, c0, indexing="ij")
    R1, C1 = np.meshgrid(r1, c1, indexing="ij")
    sums = integ[R1, C1] - integ[R0, C1] - integ[R1, C0] + integ[R0, C0]
    area = np.maximum((R1 - R0) * (C1 - C0), 1)
    frac = (sums / area).astype(np.float32)
    keep = (frac >= config.min_tissue) & (frac > 0)
    ri, ci = np.nonzero(keep)  # row-major: sorted by y then x
    table = pd.DataFrame({
        "x": xs[ci].astype(np.int64),
        "y": ys[ri].astype(np.int64),
        "size": np.full(ri.size, size, np.int64),
        "tissue_fraction": frac[ri, ci],
    })
    report(progress, 2, 3, "sampling")
    if config.max_tiles is not None and len(table) > config.max_tiles:
        rng = np.random.default_rng(config.seed)
        pick = np.sort(rng.choice(len(table), size=config.max_tiles, replace=False))
        table = table.iloc[pick].reset_index(drop=True)
    table.attrs.update({"mpp": config.mpp, "tile_size": config.tile_size, "magnification": config.magnification,
                        "slide_mpp": slide.mpp, "candidates": int(keep.sum())})
    report(progress, 3, 3, f"{len(table)} tiles")
    return table


def no_tiles_error(slide, config: TilingConfig, with_roi: bool = False) -> SlideError:
    """The one message for a slide that gives no tile: smaller than one tile, or too little tissue."""
    W, H = slide.dimensions
    size = tile_size_level0(slide, config)
    if W < size or H < size:
        return SlideError(str(slide.path), f"the slide ({W}x{H} level-0 px) is smaller than one tile ({size} px: "
                                           f"{config.tile_size} px at {config.magnification:g}x); use a smaller "
                                           f"--tile-size or a lower --magnification")
    return SlideError(str(slide.path), f"no tiles with at least {config.min_tissue:g} tissue"
                                       + (" inside the ROI" if with_roi else "")
                                       + f" (tile {config.tile_size} px at {config.magnification:g}x); draw or "
                                         f"import an ROI, lower --min-tissue, or the slide is blank")


def read_tile(slide, x: int, y: int, config: TilingConfig) -> np.ndarray:
    """RGB uint8 (tile_size, tile_size, 3) of the tile at level-0 (x, y), resampled to ``config.mpp`` µm/px."""
    size = tile_size_level0(slide, config)
    return slide.read_region(int(x), int(y), size, size, mpp=config.mpp,
                             out_shape=(config.tile_size, config.tile_size))

"""Pure numpy builders for the result layers (no Qt, no napari): everything in slide level-0 geometry.

Conventions: a tile is ``(x, y, size)`` in level-0 px; it was analysed as a
``tile_px`` x ``tile_px`` image at the working resolution ``work_mpp`` µm/px.
napari places pixel ``i`` of an image layer at ``translate + i * scale`` (pixel
centres), so a level-0 pixel ``j`` of the slide (scale ``mpp0``) is centred at
``j * mpp0`` µm. Vector data (Shapes/Vectors) uses level-0 pixel-centre
coordinates with the slide's scale ``(mpp0, mpp0)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# display budget for the H / E / nuclei mosaics (pixels per layer)
MAX_MOSAIC_PIXELS = 24_000_000


@dataclass
class Mosaic:
    """H, E and nucleus-label mosaics of the analysed tiles, with their napari placement (µm)."""

    h: np.ndarray  # float32 (rows, cols), OD
    e: np.ndarray  # float32 (rows, cols), OD
    labels: np.ndarray  # int32 (rows, cols), unique ids across tiles, 0 = background
    scale: tuple[float, float]  # µm per mosaic px
    translate: tuple[float, float]  # µm, (row, col) of mosaic pixel (0, 0) centre
    downsample: int  # mosaic px per working px
    offsets: tuple[int, ...] = ()  # per tile: the mosaic id of its nucleus 1 is offset + 1


def display_pyramid(img: np.ndarray, min_side: int = 1024) -> list[np.ndarray] | np.ndarray:
    """A napari multiscale list (strided views, no copies) for images larger than ``min_side``, else the image."""
    levels = [img]
    while max(levels[-1].shape[:2]) > 2 * min_side:
        levels.append(levels[-1][::2, ::2])
    return levels if len(levels) > 1 else img


def image_placement(x0: float, y0: float, mpp0: float, px_mpp: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Scale and translate (µm) of an image whose pixel (0, 0) starts at level-0 (x0, y0) with ``px_mpp`` µm/px."""
    off = 0.5 * (px_mpp - mpp0)
    return (px_mpp, px_mpp), (y0 * mpp0 + off, x0 * mpp0 + off)


def mosaic_geometry(xs: np.ndarray, ys: np.ndarray, sizes: np.ndarray, mpp0: float, work_mpp: float,
                    max_pixels: int = MAX_MOSAIC_PIXELS) -> tuple[int, int, int, float, float]:
    """Shape (rows, cols), integer downsample and level-0 origin (x0, y0) of a mosaic covering all tiles."""
    x0, y0 = float(np.min(xs)), float(np.min(ys))
    ratio = mpp0 / work_mpp  # working px per level-0 px
    width = (float(np.max(xs + sizes)) - x0) * ratio
    height = (float(np.max(ys + sizes)) - y0) * ratio
    f = max(1, int(np.ceil(np.sqrt(width * height / max_pixels))))
    return int(np.ceil(height / f)), int(np.ceil(width / f)), f, x0, y0


def _shrink(img: np.ndarray, f: int, nearest: bool) -> np.ndarray:
    """Downsample a 2-D image by an integer factor (block mean, or nearest for labels)."""
    if f == 1:
        return img
    if nearest:
        return img[f // 2::f, f // 2::f]
    rows, cols = img.shape[0] // f * f, img.shape[1] // f * f
    if rows == 0 or cols == 0:
        return img[::f, ::f]
    return img[:rows, :cols].reshape(rows // f, f, cols // f, f).mean(axis=(1, 3)).astype(np.float32)


def build_mosaic(xs: Sequence[float], ys: Sequence[float], sizes: Sequence[float],
                 h_tiles: Sequence[np.ndarray], e_tiles: Sequence[np.ndarray], label_tiles: Sequence[np.ndarray],
                 mpp0: float, work_mpp: float, max_pixels: int = MAX_MOSAIC_PIXELS) -> Mosaic:
    """Paste per-tile H, E and labels into one bounded mosaic at working µm/px (downsampled if over budget)."""
    xs, ys, sizes = (np.asarray(a, dtype=float) for a in (xs, ys, sizes))
    if len(xs) == 0:
        raise ValueError("no analysed tiles to display")
    rows, cols, f, x0, y0 = mosaic_geometry(xs, ys, sizes, mpp0, work_mpp, max_pixels)
    h = np.zeros((rows, cols), np.float32)
    e = np.zeros((rows, cols), np.float32)
    lab = np.zeros((rows, cols), np.int32)
    ratio = mpp0 / (work_mpp * f)  # mosaic px per level-0 px
    offset = 0
    offsets: list[int] = []
    for x, y, ht, et, lt in zip(xs, ys, h_tiles, e_tiles, label_tiles):
        r0, c0 = int(round((y - y0) * ratio)), int(round((x - x0) * ratio))
        ht, et = _shrink(np.asarray(ht, np.float32), f, False), _shrink(np.asarray(et, np.float32), f, False)
        lt = _shrink(np.asarray(lt), f, True).astype(np.int32)
        nr, nc = min(ht.shape[0], rows - r0), min(ht.shape[1], cols - c0)
        offsets.append(offset)
        if nr <= 0 or nc <= 0:
            continue
        h[r0:r0 + nr, c0:c0 + nc] = ht[:nr, :nc]
        e[r0:r0 + nr, c0:c0 + nc] = et[:nr, :nc]
        lt = lt[:nr, :nc]
        lab[r0:r0 + nr, c0:c0 + nc] = np.where(lt > 0, lt + offset, lab[r0:r0 + nr, c0:c0 + nc])
        offset += int(lt.max()) if lt.size else 0
    scale, translate = image_placement(x0, y0, mpp0, work_mpp * f)
    return Mosaic(h, e, lab, scale, translate, f, tuple(offsets))


def tile_to_level0(points_rc: np.ndarray, x: float, y: float, mpp0: float, work_mpp: float) -> np.ndarray:
    """Map tile pixel-centre ``(row, col)`` coordinates to level-0 pixel-centre ``(row, col)``."""
    s = work_mpp / mpp0  # level-0 px per working px
    pts = np.asarray(points_rc, dtype=float)
    return np.stack([y + (pts[..., 0] + 0.5) * s - 0.5, x + (pts[..., 1] + 0.5) * s - 0.5], axis=-1)


def segments_to_vectors(segments: np.ndarray) -> np.ndarray:
    """Convert ``(M, 2, 2)`` line segments (start, end) into napari Vectors data ``(M, 2, 2)`` (start, displacement)."""
    seg = np.asarray(segments, dtype=float).reshape(-1, 2, 2)
    return np.stack([seg[:, 0], seg[:, 1] - seg[:, 0]], axis=1)


def square_corners(xs: Sequence[float], ys: Sequence[float], sizes: Sequence[float]) -> list[np.ndarray]:
    """Rectangles ``(4, 2)`` of level-0 pixel-centre ``(row, col)`` corners covering each tile's pixels."""
    out = []
    for x, y, s in zip(np.asarray(xs, float), np.asarray(ys, float), np.asarray(sizes, float)):
        r0, c0, r1, c1 = y - 0.5, x - 0.5, y + s - 0.5, x + s - 0.5
        out.append(np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]]))
    return out


def world_to_level0(points_world: np.ndarray, slide_scale: Sequence[float], slide_translate: Sequence[float]) -> np.ndarray:
    """World ``(row, col)`` µm to level-0 pixel-centre ``(row, col)`` px of the slide layer."""
    pts = np.asarray(points_world, dtype=float)[..., -2:]
    return (pts - np.asarray(slide_translate, float)[-2:]) / np.asarray(slide_scale, float)[-2:]


def tile_at(xs: np.ndarray, ys: np.ndarray, sizes: np.ndarray, row: float, col: float) -> int:
    """Index of the tile that contains level-0 pixel (row, col), or -1."""
    xs, ys, sizes = (np.asarray(a, float) for a in (xs, ys, sizes))
    inside = (col + 0.5 >= xs) & (col + 0.5 < xs + sizes) & (row + 0.5 >= ys) & (row + 0.5 < ys + sizes)
    hits = np.flatnonzero(inside)
    return int(hits[0]) if hits.size else -1


def bin_of(value: float, edges: np.ndarray) -> int:
    """Histogram bin 1..B of ``value`` for ``B+1`` edges, as fusion.HistogramFusion counts it (0 if not finite)."""
    edges = np.asarray(edges, float)
    if not np.isfinite(value) or len(edges) < 2:
        return 0
    return int(1 + np.sum(value >= edges[1:-1]))

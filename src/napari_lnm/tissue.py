"""Tissue detection on a low-resolution level, and ROI polygons (napari Shapes, QuPath GeoJSON).

Polygons are ``(N, 2)`` float arrays of ``(x, y)`` level-0 px.  napari Shapes data
are ``(row, col)``; convert with :func:`polygons_from_napari` / :func:`polygons_to_napari`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_lnm.errors import UserError

__all__ = [
    "TissueMask", "TissueParams", "tissue_mask", "tissue_mask_rgb", "polygons_mask", "read_geojson",
    "write_geojson", "polygons_from_napari", "polygons_to_napari", "mask_to_polygons",
]


@dataclass
class TissueParams:
    """Tuning of :func:`tissue_mask_rgb` (saturations 0..1, hues in degrees, areas in µm²)."""

    min_saturation: float = 0.07      # floor of the Otsu threshold: white/grey background is below it
    max_saturation_threshold: float = 0.25  # cap of the threshold: faint tissue is kept on busy slides
    min_od: float = 0.05              # max-channel optical density below which a pixel is background
    dark_max: int = 45                # all channels below this -> scanner border / black ink (uint8)
    pen_min_saturation: float = 0.30  # pen strokes are saturated ...
    pen_hue_ranges: tuple = ((70.0, 235.0), (350.0, 360.0), (0.0, 20.0))  # ... green/blue and pure red hues
    pen_red_min_saturation: float = 0.55  # red ink is far more saturated than eosin
    min_object_um2: float = 20000.0   # smaller tissue specks are removed (0.02 mm²)
    max_hole_um2: float = 10000.0     # smaller holes inside tissue are filled


@dataclass
class TissueMask:
    """Boolean tissue mask; ``downsample`` level-0 px per mask px, ``mpp`` µm per mask px."""

    mask: np.ndarray
    downsample: float
    mpp: float
    threshold: float = float("nan")
    pen: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue (0..1)."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of values in 0..1 (256-bin histogram)."""
    if values.size < 2:
        return 1.0
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centers)
    mu0 = np.divide(m, w0, out=np.zeros_like(m), where=w0 > 0)
    mu1 = np.divide(m[-1] - m, w1, out=np.zeros_like(m), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation (0..1) and value (0..1) of an RGB uint8 image."""
    r, g, b = (rgb[..., i].astype(np.float32) * np.float32(1 / 255) for i in range(3))
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    delta = mx - mn
    sat = np.divide(delta, mx, out=np.zeros_like(mx), where=mx > 0)
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(delta > 0, hue * 60.0, 0.0)
    return hue.astype(np.float32), sat, mx


def _remove_small_objects(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_px`` px."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill background components smaller than ``max_px`` px that do not touch the image border."""
    labels, n = ndi.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes < max_px
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


def tissue_mask_rgb(rgb: np.ndarray, mpp: float, params: TissueParams = TissueParams()) -> tuple[np.ndarray, float, np.ndarray]:
    """Tissue mask of a low-res RGB image at ``mpp`` µm/px: (mask, saturation threshold, pen mask).

    Background is white or grey (unsaturated, low OD); black scanner borders and
    saturated green/blue/red pen strokes are excluded; the saturation threshold is
    Otsu's on the remaining pixels, clamped to [min_saturation, max_saturation_threshold];
    then closing, hole filling and small-object removal (areas in µm²).
    """
    hue, sat, val = _hsv(rgb)
    lo = np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    hi = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    od_max = -np.log10((lo.astype(np.float32) + 1.0) / 256.0)
    dark = hi < params.dark_max
    in_range = np.zeros(hue.shape, bool)
    for lo, hi in params.pen_hue_ranges:
        in_range |= (hue >= lo) & (hue <= hi)
    red = (hue >= 350.0) | (hue <= 20.0)
    pen = in_range & (sat > params.pen_min_saturation) & (~red | (sat > params.pen_red_min_saturation)) & ~dark
    pen = ndi.binary_dilation(pen, iterations=1) if pen.any() else pen
    candidates = ~dark & ~pen
    vals = sat[candidates]
    thr = _otsu(vals) if vals.size else 1.0
    thr = float(np.clip(thr, params.min_saturation, params.max_saturation_threshold))
    mask = candidates & (sat > thr) & (od_max > params.min_od)
    px_area = mpp * mpp
    if mask.any():
        mask = ndi.binary_closing(mask, structure=np.ones((3, 3), bool), iterations=1, border_value=0) & ~dark
        mask = _fill_small_holes(mask, params.max_hole_um2 / px_area)
        mask = _remove_small_objects(mask, params.min_object_um2 / px_area)
        mask &= ~pen
    return mask, thr, pen


def tissue_mask(slide, mpp: float = 8.0, params: TissueParams = TissueParams()) -> TissueMask:
    """Automatic tissue mask of ``slide`` computed at ~``mpp`` µm/px (never finer than the slide)."""
    w, h = slide.dimensions
    target = max(float(mpp), slide.mpp)
    out_w = max(1, int(round(w * slide.mpp / target)))
    out_h = max(1, int(round(h * slide.mpp / target)))
    rgb = slide.read_region(0, 0, w, h, out_shape=(out_h, out_w))
    ds = w / out_w
    mask, thr, pen = tissue_mask_rgb(rgb, ds * slide.mpp, params)
    return TissueMask(mask=mask, downsample=ds, mpp=ds * slide.mpp, threshold=thr, pen=pen)


# ----------------------------------------------------------------------------- polygons
def _as_polygon(poly: Any) -> np.ndarray:
    arr = np.asarray(poly, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 3:
        raise UserError(f"an ROI polygon must be an (N, 2) array with N >= 3 vertices, got shape {arr.shape}")
    return arr


def polygons_mask(polygons: Iterable[np.ndarray], shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Rasterise (x, y) level-0 polygons into a bool mask of ``shape`` (rows, cols) at ``downsample`` level-0 px/px."""
    from skimage.draw import polygon as draw_polygon

    mask = np.zeros(shape, bool)
    for poly in polygons:
        p = _as_polygon(poly) / float(downsample)
        # pixel centres: a mask px (r, c) covers level-0 [c*ds, (c+1)*ds); shift by half a pixel
        rr, cc = draw_polygon(p[:, 1] - 0.5, p[:, 0] - 0.5, shape=shape)
        mask[rr, cc] = True
    return mask


def polygons_from_napari(data: Sequence[np.ndarray]) -> list[np.ndarray]:
    """napari Shapes data ((row, col) level-0 px, extra leading dims ignored) -> (x, y) polygons."""
    if isinstance(data, np.ndarray) and data.ndim == 2:
        data = [data]
    return [np.asarray(d, dtype=np.float64)[:, -2:][:, ::-1].copy() for d in data]


def polygons_to_napari(polys: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(x, y) level-0 polygons -> napari Shapes data ((row, col))."""
    return [np.asarray(p, dtype=np.float64)[:, ::-1].copy() for p in polys]


def mask_to_polygons(mask: np.ndarray, downsample: float, min_vertices: int = 3) -> list[np.ndarray]:
    """Outer contours of a bool mask as (x, y) level-0 polygons (scaled by ``downsample``)."""
    from skimage import measure

    padded = np.pad(mask.astype(np.float32), 1)
    polys = []
    for c in measure.find_contours(padded, 0.5):
        if len(c) < min_vertices:
            continue
        c = measure.approximate_polygon(c, tolerance=0.5)
        xy = (c[:, ::-1] - 1.0 + 0.5) * downsample
        polys.append(xy)
    return polys


def read_geojson(path: str | os.PathLike, return_names: bool = False):
    """Polygons ((x, y) level-0 px exterior rings) from a QuPath/GeoJSON file; holes are ignored.

    Accepts a FeatureCollection, a list of Features, a Feature or a bare geometry;
    Polygon and MultiPolygon geometries are read, others skipped.  With
    ``return_names=True`` returns ``(polygons, names)`` (classification or name, else "").
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: ROI file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a GeoJSON file ({' '.join(str(exc).split())[:120]})") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif isinstance(doc, list):
        features = doc
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, dict) and "coordinates" in doc:
        features = [{"type": "Feature", "geometry": doc, "properties": {}}]
    else:
        raise UserError(f"{path}: not a GeoJSON FeatureCollection, Feature or geometry")
    polys, names = [], []
    for feat in features:
        if not isinstance(feat, dict):
            continue
        geom = feat.get("geometry") or {}
        props = feat.get("properties") or {}
        cls = props.get("classification")
        name = (cls.get("name") if isinstance(cls, dict) else cls) or props.get("name") or ""
        gtype = geom.get("type")
        coords = geom.get("coordinates")
        rings = []
        try:
            if gtype == "Polygon":
                rings = [coords[0]]
            elif gtype == "MultiPolygon":
                rings = [p[0] for p in coords]
        except (TypeError, IndexError):
            raise UserError(f"{path}: malformed {gtype} coordinates") from None
        for ring in rings:
            arr = np.asarray(ring, dtype=np.float64)
            if arr.ndim != 2 or arr.shape[1] < 2:
                raise UserError(f"{path}: malformed {gtype} coordinates")
            arr = arr[:, :2]
            if len(arr) > 1 and np.array_equal(arr[0], arr[-1]):
                arr = arr[:-1]
            if len(arr) >= 3:
                polys.append(arr)
                names.append(str(name))
    return (polys, names) if return_names else polys


_DEFAULT_COLOR = [255, 0, 0]


def write_geojson(path: str | os.PathLike, polygons: Sequence[np.ndarray], names: Optional[Sequence[str]] = None,
                  properties: Optional[Sequence[dict] | dict] = None) -> None:
    """Write (x, y) level-0 polygons as a QuPath-compatible GeoJSON FeatureCollection of annotations (atomic)."""
    from napari_lnm._atomic import write_text_atomic

    features = []
    for i, poly in enumerate(polygons):
        p = _as_polygon(poly)
        ring = p.tolist()
        ring.append(ring[0])
        props: dict[str, Any] = {"objectType": "annotation"}
        if names is not None and i < len(names) and names[i]:
            props["classification"] = {"name": str(names[i]), "color": _DEFAULT_COLOR}
        if properties is not None:
            extra = properties[i] if isinstance(properties, (list, tuple)) else properties
            props.update(extra or {})
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": props})
    write_text_atomic(path, json.dumps({"type": "FeatureCollection", "features": features}))

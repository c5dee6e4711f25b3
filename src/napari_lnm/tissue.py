"""Tissue detection on a low-resolution level, and ROI polygons (napari Shapes, QuPath GeoJSON).

Polygons are ``(N, 2)`` float arrays of ``(x, y)`` level-0 px.  An ROI is one shapely
MultiPolygon (:func:`load_rois`; interior rings are excluded regions).  napari Shapes data
are ``(row, col)``; convert with :func:`polygons_from_napari` / :func:`polygons_to_napari`,
and ROIs with holes with :func:`rois_to_napari` / :func:`rois_from_napari`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
from scipy import ndimage as ndi
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from napari_lnm.errors import SlideError, UserError

__all__ = [
    "TissueMask", "TissueParams", "tissue_mask", "tissue_mask_rgb", "polygons_mask", "read_geojson",
    "write_geojson", "polygons_from_napari", "polygons_to_napari", "mask_to_polygons", "load_rois",
    "check_rois_inside", "roi_rings", "rois_to_napari", "rois_from_napari", "RoiSource", "ROI_INCLUDE",
    "ROI_EXCLUDE", "ROI_COLOURS",
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
#: ``roi_kind`` of a napari ROI shape: part of the region, or a hole cut out of what was drawn before it
ROI_INCLUDE, ROI_EXCLUDE = "include", "exclude"
#: edge colours of the two kinds of ROI shape in napari
ROI_COLOURS = {ROI_INCLUDE: "lime", ROI_EXCLUDE: "red"}

#: what :func:`load_rois` accepts: None (whole slide), a GeoJSON path, a shapely geometry or (N, 2) (x, y) arrays
RoiSource = Union[None, str, os.PathLike, BaseGeometry, Sequence[Any]]
#: (exterior, holes) of one polygon as (N, 2) (x, y) level-0 px arrays without the closing vertex
Rings = tuple[np.ndarray, list[np.ndarray]]


def _as_polygon(poly: Any) -> np.ndarray:
    try:
        arr = np.asarray(poly, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError("an ROI polygon has non-numeric coordinates; vertices must be (x, y) level-0 px numbers") \
            from None
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 3:
        raise UserError(f"an ROI polygon must be an (N, 2) array with N >= 3 vertices, got shape {arr.shape}")
    return arr


def _polygonal_parts(geom: BaseGeometry) -> list[Polygon]:
    """The non-empty Polygons inside any shapely geometry (points and lines dropped)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom] if geom.area > 0 else []
    if hasattr(geom, "geoms"):  # MultiPolygon, GeometryCollection
        return [p for g in geom.geoms for p in _polygonal_parts(g)]
    return []


def _as_multipolygon(polys: Iterable[BaseGeometry]) -> MultiPolygon:
    """Union of geometries as one valid MultiPolygon; invalid ones (self-crossing, bad holes) repaired by make_valid."""
    import shapely

    parts = [p for g in polys for p in _polygonal_parts(g if g.is_valid else shapely.make_valid(g))]
    if not parts:
        return MultiPolygon()
    merged = shapely.union_all(parts)  # overlapping parts merge; a valid MultiPolygon has disjoint interiors
    return MultiPolygon(_polygonal_parts(merged if merged.is_valid else shapely.make_valid(merged)))


def _read_geojson_doc(path: Path) -> list:
    """The features of a GeoJSON file (FeatureCollection, list of Features, Feature or bare geometry)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: ROI file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a GeoJSON ROI file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a GeoJSON file ({' '.join(str(exc).split())[:120]})") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        return list(doc.get("features") or [])
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [doc]
    if isinstance(doc, dict) and ("coordinates" in doc or doc.get("type") == "GeometryCollection"):
        return [{"type": "Feature", "geometry": doc, "properties": {}}]
    raise UserError(f"{path}: not a GeoJSON FeatureCollection, Feature or geometry")


def _ring(path: Path, gtype: str, ring: Any) -> np.ndarray:
    """One GeoJSON linear ring -> (N, 2) float (x, y) without the closing vertex; one-line errors naming the file."""
    if not isinstance(ring, (list, tuple)) or not all(isinstance(pt, (list, tuple)) and len(pt) >= 2 for pt in ring):
        raise UserError(f"{path}: malformed {gtype} coordinates (a ring must be a list of [x, y] positions)")
    for pt in ring:
        for v in pt[:2]:
            # JSON numbers only: quoted or null coordinates mean a broken export, not a value to guess
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"{path}: non-numeric coordinate {v!r} in a {gtype}; GeoJSON coordinates must be "
                                f"numbers (level-0 px)")
    arr = np.array([pt[:2] for pt in ring], dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(arr).all():
        raise UserError(f"{path}: non-finite coordinate in a {gtype}")
    if len(arr) > 1 and np.array_equal(arr[0], arr[-1]):
        arr = arr[:-1]
    return arr


def _geometry_polygons(path: Path, geom: Any) -> tuple[list[Rings], list[str]]:
    """(exterior, holes) rings of a GeoJSON geometry dict, and the types of the non-polygon geometries skipped."""
    if not isinstance(geom, dict):
        return [], ["null geometry"]
    gtype = geom.get("type")
    coords = geom.get("coordinates")
    if gtype == "GeometryCollection":
        out, skipped = [], []
        for g in geom.get("geometries") or []:
            o, s = _geometry_polygons(path, g)
            out += o
            skipped += s
        return out, skipped
    if gtype == "Polygon":
        polys = [coords]
    elif gtype == "MultiPolygon":
        polys = coords
    else:
        return [], [str(gtype)]
    if not isinstance(polys, (list, tuple)) or not all(isinstance(p, (list, tuple)) and p for p in polys):
        raise UserError(f"{path}: malformed {gtype} coordinates")
    out = []
    for rings in polys:
        ext = _ring(path, gtype, rings[0])
        if len(ext) < 3:
            continue  # a degenerate outline encloses nothing
        holes = [h for h in (_ring(path, gtype, r) for r in rings[1:]) if len(h) >= 3]
        out.append((ext, holes))
    return out, []


def _geojson_polygons(path: str | os.PathLike) -> tuple[list[Rings], list[str], list[str]]:
    """Every polygon of a GeoJSON file as (exterior, holes) (x, y) rings, its feature's name, and skipped types."""
    path = Path(path)
    polys, names, skipped = [], [], []
    for feat in _read_geojson_doc(path):
        if not isinstance(feat, dict):
            continue
        props = feat.get("properties") or {}
        cls = props.get("classification") if isinstance(props, dict) else None
        name = ((cls.get("name") if isinstance(cls, dict) else cls)
                or (props.get("name") if isinstance(props, dict) else None) or "")
        found, skip = _geometry_polygons(path, feat.get("geometry"))
        polys += found
        names += [str(name)] * len(found)
        skipped += skip
    return polys, names, skipped


def load_rois(source: RoiSource, slide_path_for_messages: Optional[str | os.PathLike] = None) -> Optional[MultiPolygon]:
    """The analysed region as one valid MultiPolygon of level-0 (x, y) px, holes excluded; None = the whole slide.

    ``source``: None; a GeoJSON file (FeatureCollection, Feature, bare geometry or a list of
    Features as QuPath exports; Polygon / MultiPolygon / GeometryCollection, interior rings
    are holes); a shapely geometry; or a sequence of (N, 2) (x, y) arrays, each a polygon
    without holes (an empty sequence selects nothing).  Overlapping polygons merge;
    invalid ones are repaired with ``shapely.make_valid``.  A file without any polygon
    or with non-numeric coordinates raises a one-line :class:`UserError` naming it.
    """
    if source is None:
        return None
    where = f"{slide_path_for_messages}: " if slide_path_for_messages else ""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        polys, _names, skipped = _geojson_polygons(path)
        if not polys:
            found = f" (it has {', '.join(sorted(set(skipped)))})" if skipped else " (it has no features)"
            for_slide = f" for {slide_path_for_messages}" if slide_path_for_messages else ""
            raise UserError(f"{path}: no Polygon or MultiPolygon in the ROI file{for_slide}{found}; "
                            f"without a polygon the whole slide would be analysed")
        rois = _as_multipolygon(Polygon(ext, holes) for ext, holes in polys)
        if rois.is_empty:
            raise UserError(f"{path}: the ROI polygons enclose no area (every outline is degenerate)")
        return rois
    if isinstance(source, BaseGeometry):
        return _as_multipolygon([source])
    if isinstance(source, np.ndarray) and source.ndim == 2:
        source = [source]  # one (N, 2) polygon
    geoms = []
    try:
        for item in source:
            geoms.append(item if isinstance(item, BaseGeometry) else Polygon(_as_polygon(item)))
    except UserError as exc:
        raise UserError(f"{where}{exc}") from None
    except TypeError:
        raise UserError(f"{where}ROI must be a GeoJSON path, a shapely geometry or a list of (N, 2) (x, y) arrays, "
                        f"got {type(source).__name__}") from None
    return _as_multipolygon(geoms)


def roi_rings(rois: BaseGeometry) -> list[Rings]:
    """(exterior, holes) of every polygon of a geometry as (N, 2) (x, y) level-0 arrays without the closing vertex."""
    return [(np.asarray(p.exterior.coords, np.float64)[:-1],
             [np.asarray(h.coords, np.float64)[:-1] for h in p.interiors]) for p in _polygonal_parts(rois)]


def check_rois_inside(rois: Optional[BaseGeometry], slide, source: Optional[str | os.PathLike] = None) -> None:
    """Raise SlideError when a non-empty ROI lies entirely outside the slide's level-0 extent (0..W, 0..H px)."""
    if rois is None or rois.is_empty:
        return
    from shapely.geometry import box

    W, H = slide.dimensions
    if rois.intersects(box(0, 0, W, H)) and rois.intersection(box(0, 0, W, H)).area > 0:
        return
    x0, y0, x1, y1 = rois.bounds
    named = f"the ROI ({source})" if source is not None else "the ROI"
    raise SlideError(getattr(slide, "path", "slide"),
                     f"{named} lies entirely outside the slide: the ROI spans x {x0:.0f}..{x1:.0f}, "
                     f"y {y0:.0f}..{y1:.0f} but the slide is x 0..{W}, y 0..{H} level-0 px; ROI coordinates must "
                     f"be this slide's level-0 pixels (x right, y down from the top-left corner), not µm, "
                     f"a lower pyramid level's or another slide's pixels")


def _ring_pixels(ring: np.ndarray, shape: tuple[int, int], downsample: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the mask px whose centres lie inside an (x, y) level-0 ring."""
    from skimage.draw import polygon as draw_polygon

    p = np.asarray(ring, np.float64) / float(downsample)
    # pixel centres: a mask px (r, c) covers level-0 [c*ds, (c+1)*ds); shift by half a pixel
    return draw_polygon(p[:, 1] - 0.5, p[:, 0] - 0.5, shape=shape)


def polygons_mask(polygons: Union[BaseGeometry, Iterable[np.ndarray]], shape: tuple[int, int],
                  downsample: float) -> np.ndarray:
    """Rasterise an ROI into a bool mask of ``shape`` (rows, cols) at ``downsample`` level-0 px per mask px.

    ``polygons``: a shapely geometry (what :func:`load_rois` returns; holes are left out)
    or (x, y) level-0 arrays, each filled (their union).
    """
    mask = np.zeros(shape, bool)
    if isinstance(polygons, BaseGeometry):
        parts = roi_rings(polygons)
    else:
        parts = [(p if isinstance(p, BaseGeometry) else _as_polygon(p), []) for p in polygons]
        if any(isinstance(p, BaseGeometry) for p, _ in parts):
            parts = roi_rings(load_rois([p for p, _ in parts]))
    for ext, holes in parts:
        rr, cc = _ring_pixels(ext, shape, downsample)
        if not holes or rr.size == 0:
            mask[rr, cc] = True
            continue
        # holes clear only their own polygon (a sub-mask), so an island drawn inside a hole survives
        r0, c0 = int(rr.min()), int(cc.min())
        sub = np.zeros((int(rr.max()) - r0 + 1, int(cc.max()) - c0 + 1), bool)
        sub[rr - r0, cc - c0] = True
        for hole in holes:
            hr, hc = _ring_pixels(hole, shape, downsample)
            inside = (hr >= r0) & (hr < r0 + sub.shape[0]) & (hc >= c0) & (hc < c0 + sub.shape[1])
            sub[hr[inside] - r0, hc[inside] - c0] = False
        mask[r0:r0 + sub.shape[0], c0:c0 + sub.shape[1]] |= sub
    return mask


def polygons_from_napari(data: Sequence[np.ndarray]) -> list[np.ndarray]:
    """napari Shapes data ((row, col) level-0 px, extra leading dims ignored) -> (x, y) polygons."""
    if isinstance(data, np.ndarray) and data.ndim == 2:
        data = [data]
    return [np.asarray(d, dtype=np.float64)[:, -2:][:, ::-1].copy() for d in data]


def polygons_to_napari(polys: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(x, y) level-0 polygons -> napari Shapes data ((row, col))."""
    return [np.asarray(p, dtype=np.float64)[:, ::-1].copy() for p in polys]


def rois_to_napari(rois: RoiSource) -> tuple[list[np.ndarray], list[str]]:
    """An ROI -> napari Shapes data ((row, col) level-0 px) and each shape's ``roi_kind`` ("include" / "exclude").

    napari shapes have no holes, so each hole becomes its own "exclude" shape right after
    its polygon; polygons go largest first, so an island inside a hole comes after that
    hole and :func:`rois_from_napari` rebuilds the same region.
    """
    geom = load_rois(rois)
    data, kinds = [], []
    if geom is None:
        return data, kinds
    for ext, holes in sorted(roi_rings(geom), key=lambda r: -Polygon(r[0]).area):
        data.append(ext[:, ::-1].copy())
        kinds.append(ROI_INCLUDE)
        for h in holes:
            data.append(h[:, ::-1].copy())
            kinds.append(ROI_EXCLUDE)
    return data, kinds


def rois_from_napari(data: Sequence[np.ndarray], kinds: Optional[Sequence[str]] = None,
                     extent: Optional[tuple[float, float]] = None) -> Optional[MultiPolygon]:
    """napari Shapes data ((row, col) level-0 px) and ``roi_kind`` per shape -> ROI MultiPolygon (None: no shape).

    Shapes apply in order: an "include" adds its area, an "exclude" removes its area from
    what came before.  Exclusions before any inclusion cut the whole slide, level-0
    ``extent=(width, height)`` px, when given.
    """
    polys = polygons_from_napari(data)
    if not polys:
        return None
    kinds = [ROI_INCLUDE] * len(polys) if kinds is None else [str(k).strip().lower() for k in kinds]
    if len(kinds) != len(polys):
        raise UserError(f"{len(polys)} ROI shapes but {len(kinds)} roi_kind values")
    bad = sorted({k for k in kinds if k not in (ROI_INCLUDE, ROI_EXCLUDE)})
    if bad:
        raise UserError(f"roi_kind must be '{ROI_INCLUDE}' or '{ROI_EXCLUDE}', got {', '.join(map(repr, bad))}")
    from shapely.geometry import box

    region: BaseGeometry = MultiPolygon()
    if kinds[0] == ROI_EXCLUDE and extent is not None:
        region = box(0, 0, float(extent[0]), float(extent[1]))
    for poly, kind in zip(polys, kinds):
        if len(poly) < 3:
            continue
        shape = _as_multipolygon([Polygon(poly)])
        region = region.union(shape) if kind == ROI_INCLUDE else region.difference(shape)
    return _as_multipolygon([region])


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
    """Exterior rings ((x, y) level-0 px, one per polygon, holes dropped) of a QuPath/GeoJSON file.

    For ROIs use :func:`load_rois`, which keeps holes; this reads outlines one by one (nuclei,
    tiles).  With ``return_names=True`` returns ``(polygons, names)`` (classification or name, else "").
    """
    polys, names, _ = _geojson_polygons(path)
    exteriors = [ext for ext, _holes in polys]
    return (exteriors, names) if return_names else exteriors


_DEFAULT_COLOR = [255, 0, 0]


def _closed(ring: np.ndarray) -> list:
    pts = np.asarray(ring, np.float64).tolist()
    return pts + [pts[0]]


def write_geojson(path: str | os.PathLike, polygons: Union[BaseGeometry, Sequence[Any]],
                  names: Optional[Sequence[str]] = None, properties: Optional[Sequence[dict] | dict] = None,
                  object_type: str = "annotation", colors: Optional[Sequence[Sequence[int]]] = None) -> None:
    """Write polygons as a QuPath-compatible GeoJSON FeatureCollection (atomic), one feature per polygon.

    ``polygons``: (x, y) level-0 arrays, shapely Polygons, or one shapely geometry (each of
    its polygons a feature); holes are written as interior rings.  ``object_type``: QuPath's
    "annotation" or "detection"; ``names`` become classifications, coloured by ``colors`` (RGB 0..255).
    """
    from napari_lnm._atomic import write_text_atomic

    items = _polygonal_parts(polygons) if isinstance(polygons, BaseGeometry) else list(polygons)
    features = []
    for i, poly in enumerate(items):
        if isinstance(poly, BaseGeometry):
            rings = [[_closed(ext)] + [_closed(h) for h in holes] for ext, holes in roi_rings(poly)]
        else:
            rings = [[_closed(_as_polygon(poly))]]
        props: dict[str, Any] = {"objectType": object_type}
        if names is not None and i < len(names) and names[i]:
            color = list(colors[i]) if colors is not None and i < len(colors) else _DEFAULT_COLOR
            props["classification"] = {"name": str(names[i]), "color": [int(c) for c in color]}
        if properties is not None:
            extra = properties[i] if isinstance(properties, (list, tuple)) else properties
            props.update(extra or {})
        geometry = ({"type": "Polygon", "coordinates": rings[0]} if len(rings) == 1
                    else {"type": "MultiPolygon", "coordinates": rings})
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    write_text_atomic(path, json.dumps({"type": "FeatureCollection", "features": features}))

"""Turn a pipeline Prediction into layer-ready data (runs in the worker thread; no Qt, no napari)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from napari_lnm.config import is_deep
from napari_lnm.engine import tile_segments
from napari_lnm.explain import group_deep
from napari_lnm.model import ModelBundle
from napari_lnm.prediction import Prediction

from ._layers import Mosaic, build_mosaic, segments_to_vectors, tile_to_level0
from ._subtype import subtype_tiles

# upper bound on graph segments drawn per layer (Vectors stay fluid below this)
MAX_SEGMENTS = 400_000


@dataclass
class LayerData:
    """Everything the GUI thread needs to (re)build the result layers."""

    mosaic: Optional[Mosaic]
    voronoi: np.ndarray  # napari Vectors (M, 2, 2), level-0 px
    delaunay: np.ndarray
    tiles: pd.DataFrame
    key_tiles: pd.DataFrame
    top_features: list[tuple[str, float]] = field(default_factory=list)
    h_limits: tuple[float, float] = (0.0, 1.0)  # display contrast limits of the H / E mosaics (OD)
    e_limits: tuple[float, float] = (0.0, 1.0)
    subtype_tiles: Optional[pd.DataFrame] = None  # per-tile subtype votes (x, y, size level-0 px); None: no CNN
    subtype_routing: dict = field(default_factory=dict)  # bundle's subtype -> model note, "pooled (only 3 slides…)"
    nucleus_type: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int8))  # mosaic id -> type + 1 (0: none)
    nucleus_type_prob: np.ndarray = field(default_factory=lambda: np.zeros(1))  # mosaic id -> its type's probability
    type_labels: Optional[np.ndarray] = None  # mosaic image of type + 1 per pixel (0 = background)


def contrast_limits(img: np.ndarray, q: float = 99.5, max_samples: int = 1_000_000) -> tuple[float, float]:
    """(0, q-th percentile of the positive values) of an OD image, from at most ``max_samples`` pixels."""
    flat = img.ravel()
    step = max(1, flat.size // max_samples)
    v = flat[::step]
    v = v[v > 0]
    hi = float(np.percentile(v, q)) if v.size else 1.0
    return 0.0, max(hi, 1e-3)


def tile_analyses(pred: Prediction) -> list[tuple]:
    """``(x, y, size, TileAnalysis, segments)`` for every tile whose images the prediction kept."""
    analyses = pred.analyses
    if not analyses:
        return []
    t = pred.tiles
    if len(analyses) != len(t):
        raise ValueError(f"prediction has {len(analyses)} tile analyses for {len(t)} tiles")
    xs, ys, ss = (t[c].to_numpy(float) for c in ("x", "y", "size"))
    segments = pred.graph_segments or [None] * len(analyses)
    return [(xs[i], ys[i], ss[i], a, segments[i]) for i, a in enumerate(analyses) if a is not None]


def _pairs(df: pd.DataFrame, values=("gain", "fscore")) -> list:
    """(element, value) pairs from an importance or top-features table; [] if it has no such columns."""
    names = ("element", "feature")
    if len(df) == 0:
        return []
    name_col = next((c for c in names if c in df.columns), None)
    val_col = next((c for c in values if c in df.columns), None)
    if name_col is None or val_col is None:
        return []
    return list(zip(df[name_col].astype(str), pd.to_numeric(df[val_col], errors="coerce").to_numpy(float)))


def top_features(pred: Prediction, bundle: Optional[ModelBundle] = None, k: int = 10) -> list[tuple[str, float]]:
    """The model's top-k fused elements by importance (gain) as ``(element, gain)``, largest first.

    Taken from ``pred.importance`` (the pipeline's global top-k), else the bundle's
    importance table, else the slide's ``top_features`` ranked by |contribution|.
    """
    pairs = _pairs(pred.importance)
    if bundle is not None and (not pairs or any(is_deep(n) for n, _ in pairs)):
        pairs = _pairs(bundle.importance)  # every deep element, so that their group's bar is their sum
    if not pairs:
        pairs = [(n, abs(v)) for n, v in _pairs(pred.top_features, values=("contribution",))]
    pairs = group_deep([(n, float(v) if np.isfinite(v) else 0.0) for n, v in pairs])
    pairs.sort(key=lambda p: -p[1])
    return pairs[:k]


def slide_features(pred: Prediction, k: int = 10) -> list[str]:
    """Tile features behind this slide's prediction (top |contribution| first), then the model's top features."""
    out: list[str] = []
    for df in (pred.top_features, pred.importance):
        if "feature" in df.columns:
            for f in df["feature"].astype(str):
                if f not in out:
                    out.append(f)
    return out[:k]


def build_layer_data(pred: Prediction, bundle: ModelBundle, mpp0: float, work_mpp: float,
                     should_stop=None) -> LayerData:
    """Mosaics, graph vectors, tile and key-tile tables for a prediction, in slide level-0 geometry."""
    items = tile_analyses(pred)
    mosaic = None
    vor, dela = [], []
    n_vor = n_del = 0
    if items:
        xs, ys, sizes, an, _ = zip(*items)
        mosaic = build_mosaic(xs, ys, sizes, [a.h for a in an], [a.e for a in an], [a.labels for a in an],
                              mpp0, work_mpp)
        for x, y, _s, a, segments in items:
            if should_stop is not None and should_stop():
                break
            if len(a.centroids) < 3 or (n_vor >= MAX_SEGMENTS and n_del >= MAX_SEGMENTS):
                continue
            v, d = segments if segments is not None else tile_segments(a)  # the engine computed them in its workers
            if len(v) and n_vor < MAX_SEGMENTS:
                vor.append(segments_to_vectors(tile_to_level0(v, x, y, mpp0, work_mpp)))
                n_vor += len(v)
            if len(d) and n_del < MAX_SEGMENTS:
                dela.append(segments_to_vectors(tile_to_level0(d, x, y, mpp0, work_mpp)))
                n_del += len(d)
    empty = np.zeros((0, 2, 2))
    ntype, nprob = _nucleus_types(mosaic, [a for _x, _y, _s, a, _g in items]) if mosaic is not None else (
        np.zeros(1, np.int8), np.zeros(1))
    return LayerData(
        mosaic=mosaic,
        voronoi=np.concatenate(vor) if vor else empty,
        delaunay=np.concatenate(dela) if dela else empty,
        tiles=pred.tiles,
        key_tiles=pred.key_tiles,
        top_features=top_features(pred, bundle),
        h_limits=contrast_limits(mosaic.h) if mosaic is not None else (0.0, 1.0),
        e_limits=contrast_limits(mosaic.e) if mosaic is not None else (0.0, 1.0),
        subtype_tiles=subtype_tiles(pred.subtype) if pred.subtype is not None else None,
        subtype_routing=dict(bundle.subtype_routing),
        nucleus_type=ntype,
        nucleus_type_prob=nprob,
        type_labels=ntype[mosaic.labels] if mosaic is not None else None,
    )


def _nucleus_types(mosaic: Mosaic, analyses: list) -> tuple[np.ndarray, np.ndarray]:
    """Per mosaic nucleus id: its type index + 1 (0: background or untyped) and that type's probability."""
    n = int(mosaic.labels.max()) + 1
    ntype = np.zeros(n, np.int8)
    nprob = np.zeros(n)
    for off, a in zip(mosaic.offsets, analyses):
        if len(a.types):
            ids = np.asarray(a.ids, np.int64) + off
            ok = ids < n
            ntype[ids[ok]] = np.asarray(a.types)[ok] + 1
            nprob[ids[ok]] = np.asarray(a.type_probs).max(axis=1)[ok]
    return ntype, nprob

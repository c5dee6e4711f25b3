"""Per-tile features in four groups — ``tile.*`` (H/E images), ``nucleus.*`` (nucleus label image),
``graph.*`` (nucleus centroids) and ``cells.*`` (typed nuclei: composition, morphology by type,
interaction) — with lengths in µm, areas in µm², densities per mm² and
intensities in OD, so tiles at any magnification are comparable.

``analyse_tile`` runs colour deconvolution and nucleus segmentation (``napari_lnm.stain`` /
``napari_lnm.nuclei``, imported lazily) unless a label image is given, then all three groups.
``feature_names()`` is the fixed order of the feature dict; ``feature_catalog()`` documents each.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from napari_lnm.errors import UserError

from . import cells as _cells
from . import graph as _graph
from . import nucleus as _nucleus
from . import tile as _tile
from .catalog import FeatureInfo

__all__ = [
    "FeatureInfo",
    "TileAnalysis",
    "analyse_tile",
    "tile_features",
    "feature_names",
    "feature_catalog",
    "group_kind",
    "features_from_images",
]


@dataclass
class TileAnalysis:
    """Everything computed for one tile: H and E (float32 OD), nucleus ``labels`` (int32),
    ``centroids`` (n, 2) row/col px, the ``features`` dict (keys = ``feature_names()``), and per nucleus
    (centroid order) its label ``ids``, ``types`` (indices into ``cells.CELL_TYPES``) and type probabilities."""

    h: np.ndarray
    e: np.ndarray
    labels: np.ndarray
    centroids: np.ndarray
    features: dict[str, float] = field(default_factory=dict)
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    types: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    type_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


def group_kind(name: str) -> str:
    """The explanation kind a feature name gets by its group's rule: ``tile.*`` tile texture; ``nucleus.*``
    arrangement (count, density), texture (H and its gradient) or size; ``graph.*`` arrangement;
    ``cells.*`` immune and cell mix; anything else (clinical, deep features) other."""
    group, _, key = str(name).partition(".")
    if group == "nucleus":
        if key in ("count", "density"):
            return "arrangement"
        return "nucleus texture" if key.startswith(("h_", "grad_")) else "nucleus size"
    return {"tile": "tile texture", "graph": "arrangement", "cells": _cells.KIND}.get(group, "other") if key else "other"


_CATALOG: tuple[FeatureInfo, ...] = tuple(
    i if i.kind else replace(i, kind=group_kind(i.name))
    for i in (*_tile.CATALOG, *_nucleus.CATALOG, *_graph.CATALOG, *_cells.CATALOG)
)


def feature_catalog() -> list[FeatureInfo]:
    """Every feature with its group, unit, definition and kind, in the fixed feature order."""
    return list(_CATALOG)


_NAMES: tuple[str, ...] = tuple(i.name for i in _CATALOG)
if len(set(_NAMES)) != len(_NAMES):  # pragma: no cover - guards the catalogue definition
    raise RuntimeError("duplicate feature names in the catalogue")


def feature_names() -> list[str]:
    """The fixed, stable order of all feature names (``tile.*``, ``nucleus.*``, ``graph.*``)."""
    return list(_NAMES)


def _check_mpp(mpp: float) -> float:
    """Validate µm/px."""
    try:
        mpp = float(mpp)
    except (TypeError, ValueError):
        raise UserError(f"mpp must be a number of µm per pixel, got {mpp!r}") from None
    if not (np.isfinite(mpp) and mpp > 0):
        raise UserError(f"mpp must be a positive number of µm per pixel, got {mpp}")
    return mpp


def features_from_images(
    h: np.ndarray, e: np.ndarray, labels: np.ndarray, mpp: float
) -> tuple[dict[str, float], np.ndarray]:
    """All features from precomputed H, E (float32 OD) and nucleus labels; returns (features, centroids)."""
    ta = _analyse_images(h, e, labels, mpp)
    return ta.features, ta.centroids


def _analyse_images(h: np.ndarray, e: np.ndarray, labels: np.ndarray, mpp: float,
                    types: np.ndarray | None = None) -> TileAnalysis:
    """Every feature group from H, E (float32 OD) and nucleus labels; ``types`` per nucleus in label order
    (None: typed from the nuclei's measurements by ``napari_lnm.nucleus_types``)."""
    from napari_lnm.nucleus_types import nucleus_types

    mpp = _check_mpp(mpp)
    h = np.asarray(h, dtype=np.float32)
    e = np.asarray(e, dtype=np.float32)
    labels = np.asarray(labels)
    if h.shape != labels.shape:
        raise UserError(f"labels shape {labels.shape} does not match the image shape {h.shape}")
    # gradients into reused per-thread work arrays (they do not leave this function)
    gh = _tile.gradient_magnitude(h, mpp, out=_tile.scratch("features_grad_h", h.size, np.float32).reshape(h.shape))
    ge = _tile.gradient_magnitude(e, mpp, out=_tile.scratch("features_grad_e", e.size, np.float32).reshape(e.shape))
    feats = _tile.tile_group_features(h, e, mpp, grads=(gh, ge))
    table = _nucleus.nucleus_table(labels, mpp, h, gh)
    feats.update(_nucleus.nucleus_features(labels, mpp, table=table))
    feats.update(_graph.graph_features(table.centroids, labels.shape, mpp))
    if types is None:
        types, probs = nucleus_types(table, mpp)
    else:
        types = np.asarray(types, np.int64).reshape(-1)
        probs = np.eye(len(_cells.CELL_TYPES))[types] if len(types) else np.zeros((0, len(_cells.CELL_TYPES)))
    tissue_mm2 = labels.size * mpp * mpp * 1e-6 * (1.0 - feats["tile.background_fraction"])
    stromal = table.ids[types == _cells.STR]
    measures = {key: table.column(key) for key, _u, _w in _cells.MORPHOLOGY}
    feats.update(_cells.cell_features(table.centroids, types, measures, mpp, tissue_mm2,
                                      _cells.stromal_orientations(labels, stromal)))
    out = {name: float(feats.get(name, np.nan)) for name in _NAMES}
    return TileAnalysis(h=h, e=e, labels=labels.astype(np.int32, copy=False), centroids=table.centroids,
                        features=out, ids=table.ids, types=types, type_probs=probs)


def analyse_tile(rgb: np.ndarray, mpp: float, labels: np.ndarray | None = None,
                 segmentation: str = "threshold") -> TileAnalysis:
    """Deconvolve, segment (unless ``labels`` is given; ``segmentation`` = the nucleus foreground,
    ``napari_lnm.nuclei.FOREGROUNDS``) and compute all features of an RGB uint8 tile at ``mpp`` µm/px."""
    from napari_lnm.stain import as_rgb, separate

    mpp = _check_mpp(mpp)
    rgb = as_rgb(rgb, "tile")
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise UserError(f"tile: image too small for features, shape {rgb.shape}")
    h, e = separate(rgb)
    types = None
    if labels is None and segmentation == "typed":  # the network's own types, from the same pass
        from napari_lnm.nuclei import NUCLEUS_TYPES, classify_nuclei

        labels, named = classify_nuclei(rgb, mpp, h=h, e=e)
        ids = np.unique(labels[labels > 0])
        types = np.array([NUCLEUS_TYPES.index(named.get(int(i), "other")) for i in ids], np.int64)
    elif labels is None:
        from napari_lnm.nuclei import segment_nuclei

        labels = segment_nuclei(rgb, mpp, h=h, e=e, foreground=segmentation)
    labels = np.asarray(labels)
    if labels.shape != rgb.shape[:2]:
        raise UserError(f"tile: label image shape {labels.shape} does not match the tile {rgb.shape[:2]}")
    return _analyse_images(h, e, labels, mpp, types)


def tile_features(rgb: np.ndarray, mpp: float, segmentation: str = "threshold") -> dict[str, float]:
    """All features of one RGB uint8 tile at ``mpp`` µm/px, keys in ``feature_names()`` order (NaN where undefined)."""
    return analyse_tile(rgb, mpp, segmentation=segmentation).features

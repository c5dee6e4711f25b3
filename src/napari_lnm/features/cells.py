"""``cells.*`` features: which nucleus types sit where — cell-type composition, morphology by type and
spatial interaction (lymphocytes around tumour epithelium, atypical epithelium, desmoplastic stroma).

Inputs are the typed nuclei of one tile: centroids (row, col px), one type per nucleus (an index into
:data:`CELL_TYPES`, -1 unknown) and the per-nucleus measurements of ``features.nucleus``.  Lengths
are µm, areas µm², densities per mm² of tissue.  A tile without nuclei of a type gives NaN for that
type's morphology and interaction features (never a 0 that pretends to be a measurement); its density
and fraction are counts, so 0 there is measured (fractions are NaN in a tile without typed nuclei).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .catalog import FeatureInfo, summarise
from .graph import delaunay_edges

__all__ = ["CELL_TYPES", "CATALOG", "cell_features", "stromal_orientations", "GROUP", "KIND"]

GROUP = "cells"
#: explanation kind of every ``cells.*`` feature
KIND = "immune and cell mix"
#: nucleus types, in the order of ``napari_lnm.nuclei.NUCLEUS_TYPES``
CELL_TYPES = ("epithelial", "inflammatory", "stromal", "other")
EPI, INF, STR, OTH = range(4)
#: per-nucleus measurements summarised by type: (nucleus table column, unit, what)
MORPHOLOGY = (
    ("area", "µm²", "nuclear area"),
    ("eccentricity", "1", "eccentricity of the moment-equivalent ellipse"),
    ("solidity", "1", "area / convex hull area"),
    ("h_mean", "OD", "mean haematoxylin in the nucleus (intensity)"),
    ("h_contrast", "OD²", "mean squared H difference of adjacent pixels in the nucleus (texture)"),
)
MORPH_TYPES = ("epithelial", "inflammatory")
STATS = (("mean", "mean"), ("std", "standard deviation"), ("p10", "10th percentile"), ("p90", "90th percentile"))
#: radii (µm) within which an inflammatory nucleus counts as next to an epithelial one
CONTACT_UM = (20.0, 50.0)


def _catalog() -> list[FeatureInfo]:
    """Every ``cells.*`` feature with unit and definition, in the fixed order."""
    out = []
    for t in CELL_TYPES:
        out.append(FeatureInfo(f"cells.{t}_density", GROUP, "1/mm²",
                               f"{t} nuclei per mm² of tissue in the tile", KIND))
    for t in CELL_TYPES:
        out.append(FeatureInfo(f"cells.{t}_fraction", GROUP, "1",
                               f"fraction of the tile's typed nuclei that are {t}", KIND))
    for t in MORPH_TYPES:
        for key, unit, what in MORPHOLOGY:
            for suffix, desc in STATS:
                out.append(FeatureInfo(f"cells.{t}_{key}_{suffix}", GROUP, unit,
                                       f"{desc} over the tile's {t} nuclei of: {what}", KIND))
    out += [
        FeatureInfo("cells.epithelial_area_cv", GROUP, "1",
                    "epithelial pleomorphism: coefficient of variation (std / mean) of epithelial nuclear area", KIND),
        FeatureInfo("cells.epi_inf_nn_dist_mean", GROUP, "µm",
                    "mean distance from each epithelial nucleus to its nearest inflammatory nucleus", KIND),
        FeatureInfo("cells.epi_inf_nn_dist_median", GROUP, "µm",
                    "median distance from each epithelial nucleus to its nearest inflammatory nucleus", KIND),
    ]
    for r in CONTACT_UM:
        out.append(FeatureInfo(f"cells.epi_with_inf_{r:g}um", GROUP, "1",
                               f"fraction of epithelial nuclei with an inflammatory nucleus within {r:g} µm", KIND))
    out += [
        FeatureInfo("cells.delaunay_epi_inf_fraction", GROUP, "1",
                    "fraction of the Delaunay edges between typed nuclei that join epithelial and inflammatory", KIND),
        FeatureInfo("cells.delaunay_epi_str_fraction", GROUP, "1",
                    "fraction of the Delaunay edges between typed nuclei that join epithelial and stromal", KIND),
        FeatureInfo("cells.epithelial_delaunay_edge_mean", GROUP, "µm",
                    "mean Delaunay edge length of the graph of epithelial nuclei alone", KIND),
        FeatureInfo("cells.epithelial_delaunay_edge_std", GROUP, "µm",
                    "standard deviation of the Delaunay edge length of the graph of epithelial nuclei alone", KIND),
        FeatureInfo("cells.epithelial_nn_dist_mean", GROUP, "µm",
                    "mean distance from each epithelial nucleus to its nearest epithelial neighbour", KIND),
        FeatureInfo("cells.stromal_orientation_coherence", GROUP, "1",
                    "alignment of stromal nuclei: |mean of exp(2i theta)| of their major-axis angles (1 = parallel)",
                    KIND),
        FeatureInfo("cells.epithelial_stromal_ratio", GROUP, "1",
                    "epithelium-to-stroma proxy: epithelial / (epithelial + stromal) nuclei", KIND),
    ]
    return out


CATALOG: list[FeatureInfo] = _catalog()
NAMES: tuple[str, ...] = tuple(i.name for i in CATALOG)


def _stats(v: np.ndarray) -> list[float]:
    """Mean, std, p10, p90 of the finite values (NaN when none): :data:`STATS` of ``catalog.summarise``."""
    mean, std, _median, p10, p90 = summarise(v)
    return [mean, std, p10, p90]


def _nearest(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Distance (px) from every point of ``src`` to its nearest point of ``dst``."""
    return cKDTree(dst).query(src, k=1)[0] if len(src) and len(dst) else np.zeros(0)


def stromal_orientations(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Major-axis angle (rad) of each nucleus ``ids`` of a label image, from its second central moments."""
    if len(ids) == 0:
        return np.zeros(0)
    lut = np.zeros(int(labels.max()) + 1, np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    k = lut[labels]
    r, c = np.nonzero(k)
    k = k[r, c]
    m = len(ids) + 1
    n = np.bincount(k, minlength=m)[1:].astype(float)
    mr = np.bincount(k, r, m)[1:] / n
    mc = np.bincount(k, c, m)[1:] / n
    dr, dc = r - mr[k - 1], c - mc[k - 1]
    vrr = np.bincount(k, dr * dr, m)[1:] / n
    vcc = np.bincount(k, dc * dc, m)[1:] / n
    vrc = np.bincount(k, dr * dc, m)[1:] / n
    return 0.5 * np.arctan2(2.0 * vrc, vcc - vrr)


def cell_features(centroids: np.ndarray, types: np.ndarray, measures: dict[str, np.ndarray], mpp: float,
                  tissue_mm2: float, stromal_angles: np.ndarray | None = None) -> dict[str, float]:
    """The ``cells.*`` features of one tile (names in :data:`NAMES` order).

    ``centroids`` (n, 2) row/col px; ``types`` (n,) indices into :data:`CELL_TYPES` (-1 unknown);
    ``measures``: per-nucleus arrays (n,) of the :data:`MORPHOLOGY` columns; ``tissue_mm2``: the
    tile's tissue area; ``stromal_angles``: major-axis angles (rad) of the stromal nuclei.
    """
    out = dict.fromkeys(NAMES, np.nan)
    types = np.asarray(types, np.int64).reshape(-1)
    pts = np.asarray(centroids, float).reshape(-1, 2)
    counts = np.bincount(types[types >= 0], minlength=4)[:4]
    n_typed = int(counts.sum())
    for t, name in enumerate(CELL_TYPES):
        if tissue_mm2 > 0:
            out[f"cells.{name}_density"] = counts[t] / tissue_mm2
        if n_typed:
            out[f"cells.{name}_fraction"] = counts[t] / n_typed
    for name in MORPH_TYPES:
        sel = types == CELL_TYPES.index(name)
        if not sel.any():
            continue
        for key, _u, _w in MORPHOLOGY:
            for (suffix, _d), v in zip(STATS, _stats(np.asarray(measures[key], float)[sel])):
                out[f"cells.{name}_{key}_{suffix}"] = v
    epi, inf, stro = (pts[types == t] for t in (EPI, INF, STR))
    if len(epi) >= 2:
        a = np.asarray(measures["area"], float)[types == EPI]
        out["cells.epithelial_area_cv"] = float(a.std() / a.mean()) if a.mean() > 0 else np.nan
    if len(epi) and len(inf):
        d = _nearest(epi, inf) * mpp
        out["cells.epi_inf_nn_dist_mean"] = float(d.mean())
        out["cells.epi_inf_nn_dist_median"] = float(np.median(d))
        for r in CONTACT_UM:
            out[f"cells.epi_with_inf_{r:g}um"] = float(np.mean(d <= r))
    elif len(epi):  # epithelium without any inflammatory nucleus in the tile: none within reach
        for r in CONTACT_UM:
            out[f"cells.epi_with_inf_{r:g}um"] = 0.0
    typed = types >= 0
    edges = delaunay_edges(pts[typed])[1]
    if len(edges):
        tt = types[typed][edges]
        pair = np.sort(tt, axis=1)
        out["cells.delaunay_epi_inf_fraction"] = float(np.mean((pair[:, 0] == EPI) & (pair[:, 1] == INF)))
        out["cells.delaunay_epi_str_fraction"] = float(np.mean((pair[:, 0] == EPI) & (pair[:, 1] == STR)))
    e_edges = delaunay_edges(epi)[1]
    if len(e_edges):
        lengths = np.hypot(*(epi[e_edges[:, 0]] - epi[e_edges[:, 1]]).T) * mpp
        out["cells.epithelial_delaunay_edge_mean"] = float(lengths.mean())
        out["cells.epithelial_delaunay_edge_std"] = float(lengths.std())
    if len(epi) >= 2:
        d2 = cKDTree(epi).query(epi, k=2)[0][:, 1] * mpp
        out["cells.epithelial_nn_dist_mean"] = float(d2.mean())
    if stromal_angles is not None and len(stromal_angles) >= 2:
        out["cells.stromal_orientation_coherence"] = float(np.abs(np.mean(np.exp(2j * np.asarray(stromal_angles)))))
    if len(epi) + len(stro):
        out["cells.epithelial_stromal_ratio"] = len(epi) / (len(epi) + len(stro))
    return out

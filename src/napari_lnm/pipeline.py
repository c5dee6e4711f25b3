"""Single-slide prediction in named steps: tile -> route (subtype) -> analyse (engine) -> score -> explain.

:func:`predict_slide` is what ``napari-lnm predict``, the demo and the napari "Analyse slide" widget
call; it returns a :class:`napari_lnm.prediction.Prediction`.  Each step is a function of its own
(:func:`find_tiles`, :func:`route`, :func:`analyse`, :func:`score`, :func:`explain_scores`) that
can be called and tested alone.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pandas as pd

from napari_lnm.config import TilingConfig
from napari_lnm.engine import LocalPool, TileResults, analyse_tiles, column_names, shutdown_pool, tile_frame
from napari_lnm.errors import ModelError, UserError
from napari_lnm.explain import global_importance, key_tiles, top_features, with_direction
from napari_lnm.model import ClinicalWarning, ModelBundle, clinical_frame
from napari_lnm.prediction import RESULT_VERSION, Prediction
from napari_lnm.progress import ProgressFn, StopFn, check_stop, report
from napari_lnm.provenance import prediction_tiling, recorded_tiling

if TYPE_CHECKING:  # pragma: no cover
    from napari_lnm.io import Slide
    from napari_lnm.subtype import SubtypeModel

__all__ = ["Prediction", "predict_slide", "find_tiles", "route", "analyse", "score", "explain_scores", "Scores",
           "check_clinical", "prediction_tiling", "recorded_tiling", "default_workers",
           "shutdown_pool", "RESULT_VERSION", "MIN_PARALLEL_TILES", "CHUNK_TILES"]

#: Fewest tiles for which ``workers > 1`` uses worker processes (below, starting a cold pool costs more).
MIN_PARALLEL_TILES = 16
#: Most tiles per worker task (small chunks: smooth progress, good load balance at the end).
CHUNK_TILES = 4

def default_workers() -> int:
    """Worker processes the CLI and the napari widget use by default: min(2, CPU count)."""
    return max(1, min(2, os.cpu_count() or 1))


# --------------------------------------------------------------------------- steps
def find_tiles(slide: "Slide", rois: Any, config: TilingConfig,
               should_stop: Optional[StopFn] = None) -> pd.DataFrame:
    """The slide's tile table inside ROI ∩ tissue (level-0 px); SlideError when there is none."""
    from napari_lnm.tiling import no_tiles_error, tile_slide

    tiles = tile_slide(slide, rois=rois, config=config, should_stop=should_stop)
    if len(tiles) == 0:
        raise no_tiles_error(slide, config, with_roi=rois is not None)
    return tiles


def route(slide: "Slide", bundle: ModelBundle, tiles: pd.DataFrame, config: TilingConfig, rois: Any,
          subtype_model: "SubtypeModel", progress: Optional[ProgressFn] = None,
          should_stop: Optional[StopFn] = None) -> tuple[ModelBundle, dict]:
    """The slide's molecular subtype by the CNN's tile vote, and the bundle's model for that subtype."""
    from napari_lnm.subtype import predict_slide_subtype
    from napari_lnm.tiling import tile_slide

    sm_config = subtype_model.tiling_config()
    same = (sm_config.magnification, sm_config.tile_size) == (config.magnification, config.tile_size)
    sm_tiles = tiles if same else tile_slide(slide, rois=rois, config=sm_config, should_stop=should_stop)
    if len(sm_tiles) == 0:
        sm_tiles = tiles
    vote = predict_slide_subtype(slide, subtype_model, tiles_df=sm_tiles, config=sm_config, progress=progress,
                                 should_stop=should_stop)
    info = vote.to_dict()
    # per-tile votes (level-0 px, rows of the subtype tiling) for overlays; plain lists stay JSON-able
    info["tiles"] = {
        "x": sm_tiles["x"].astype(int).tolist(), "y": sm_tiles["y"].astype(int).tolist(),
        "size": sm_tiles["size"].astype(int).tolist(), "classes": list(vote.classes),
        "probs": np.round(np.asarray(vote.probs, dtype=float), 4).tolist(),
    }
    info["routing"] = str(bundle.subtype_routing.get(vote.subtype, ""))
    routed, used = bundle.for_subtype(vote.subtype)
    info["model_used"] = str(used)
    return routed, info


def analyse(slide: "Slide", tiles: pd.DataFrame, config: TilingConfig, keep_images: bool = False,
            workers: int = 1, progress: Optional[ProgressFn] = None,
            should_stop: Optional[StopFn] = None) -> tuple[TileResults, int]:
    """Features (and images) of the tiles, on ``workers`` warm processes when it pays; (results, workers used)."""
    workers = int(workers)
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    n = len(tiles)
    is_file = isinstance(getattr(slide, "path", None), (str, os.PathLike)) and os.path.isfile(str(slide.path))
    used = min(workers, n) if workers > 1 and n >= MIN_PARALLEL_TILES and is_file else 1
    executor = LocalPool(used) if used > 1 else None
    res = analyse_tiles(slide, tiles, config, keep_images=keep_images, executor=executor, progress=progress,
                        should_stop=should_stop, chunk_tiles=CHUNK_TILES)
    return res, used


@dataclass
class Scores:
    """The model's output for one slide: probability, per-element contributions (log-odds) and the bias."""

    probability: float
    contributions: pd.DataFrame
    bias: float


def score(bundle: ModelBundle, table: pd.DataFrame, clinical: Optional[pd.DataFrame] = None) -> Scores:
    """Fuse the tile table, apply the classifier: probability, contributions and bias (log-odds)."""
    p = np.asarray(bundle.predict_proba(table, clinical), dtype=float).ravel()
    if p.size == 0 or not np.isfinite(p[0]):
        raise ModelError("the model returned no valid probability for this slide")
    contribs = bundle.contributions(table, clinical).copy()
    return Scores(float(p[0]), contribs, float(contribs.attrs.get("bias", float("nan"))))


def explain_scores(bundle: ModelBundle, table: pd.DataFrame, scores: Scores, top_k: int = 10,
                   n_key_tiles: int = 10) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(this slide's top-k features in words, numbered key tiles, the model's global top-k importance)."""
    importance = bundle.importance.copy()
    table = bundle.fusion.with_tile_values(table)  # e.g. each tile's deep component scores, for key tiles
    top = top_features(scores.contributions, importance, top_k)
    n_bins = int(bundle.fusion.bins) if bundle.fusion.kind == "histogram" else None
    kt = key_tiles(table, with_direction(scores.contributions, importance), n=n_key_tiles, n_bins=n_bins)
    return top, kt, global_importance(importance, top_k)


def check_clinical(bundle: ModelBundle, clinical: Any, slide_id: str, warn: bool) -> Optional[pd.DataFrame]:
    """The slide's clinical values as a one-row DataFrame of the bundle's columns (None without values or columns)."""
    if clinical is None:
        return None
    df = clinical_frame(clinical, source=f"clinical values of slide {slide_id}")
    if len(df) != 1:
        raise UserError(f"clinical values of slide {slide_id}: expected one row, got {len(df)}")
    enc = bundle.clinical
    if enc is None or not enc.columns:
        if warn is False:
            warnings.warn(f"slide {slide_id}: the model uses no clinical columns; the clinical values are ignored",
                          ClinicalWarning, stacklevel=3)
        return None
    for msg in enc.check(df, source=f"clinical values of slide {slide_id}", slide_ids=[slide_id]):
        if warn:
            warnings.warn(msg, ClinicalWarning, stacklevel=3)
    return df[list(enc.columns)]


def _bundle_info(bundle: ModelBundle, extra: dict) -> dict:
    """Small JSON-able description of the model used."""
    cfg = bundle.config
    info: dict = {"package_version": bundle.package_version, "schema_version": bundle.schema_version}
    for key in ("fusion", "bins", "edges", "test", "alpha", "top_q", "classifier", "n_trees", "seed",
                "n_slides", "n_positive", "subtype", "selection_message"):
        if key in cfg and isinstance(cfg[key], (str, int, float, bool, type(None))):
            info[key] = cfg[key]
    if bundle.cv_report is not None:
        info["cv_summary"] = str(bundle.cv_report.summary())
    info["n_features"] = len(bundle.feature_names)
    info["n_selected_elements"] = len(bundle.selection.names)
    info.update(extra)
    return info


def _check_schema(bundle: ModelBundle, config: TilingConfig) -> None:
    """ModelError when the bundle needs features this version (with ``config``'s deep features) does not compute."""
    from napari_lnm.config import is_deep

    names = set(column_names(config))
    missing = [f for f in bundle.feature_names if f not in names]
    if missing and all(is_deep(f) for f in missing):
        deep = recorded_tiling(bundle).deep if recorded_tiling(bundle) is not None else None
        what = f"the {deep.arch} weights with sha256 {deep.sha256[:12]}" if deep is not None else "a CNN"
        raise ModelError(f"the model needs {len(missing)} deep feature(s) made by {what}; predict with the "
                         f"bundle's tiling (its deep features)")
    if missing:
        raise ModelError(f"the model needs {len(missing)} feature(s) this version does not compute "
                         f"(e.g. {missing[:3]}); retrain it with this version of napari-lnm")


# --------------------------------------------------------------------------- main entry
def predict_slide(
    slide_or_path: Any,
    bundle: ModelBundle | str | os.PathLike,
    rois: Any = None,
    config: Optional[TilingConfig] = None,
    mpp: Optional[float] = None,
    keep_images: bool = False,
    subtype_model: "SubtypeModel | str | os.PathLike | None" = None,
    top_k: int = 10,
    n_key_tiles: int = 10,
    slide_id: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[StopFn] = None,
    workers: int = 1,
    clinical: Any = None,
) -> Prediction:
    """Predict the metastasis probability of one slide and explain it (tiles level-0 px, features in µm/µm²/OD).

    ``bundle``: a :class:`~napari_lnm.model.ModelBundle` or its folder; ``rois``: level-0 ``(x, y)``
    polygons, a shapely geometry or a GeoJSON path (None: tissue detection); ``config``: the
    extraction config (default: the bundle's, all tiles); ``mpp``: µm/px for slides without that
    metadata; ``keep_images``: keep each tile's ``TileAnalysis`` and display segments;
    ``subtype_model``: a ``SubtypeModel`` or folder whose majority vote picks
    ``bundle.for_subtype(name)``; ``workers > 1``: tile features on a warm process pool (identical
    numbers); ``clinical``: the slide's clinical values (dict or one-row DataFrame) for a model
    trained with clinical columns, checked before any tile is analysed.  Cancellable between tiles.
    """
    from napari_lnm.io import open_slide
    from napari_lnm.tissue import load_rois

    extra: dict = {}
    if not isinstance(bundle, ModelBundle):
        extra["path"] = str(bundle)
        bundle = ModelBundle.load(bundle)
    config = config if config is not None else prediction_tiling(bundle)
    if config.deep is not None:  # the weights file is still there with the bundle's bytes, before any tile
        config = config.replace(deep=config.deep.check())
    _check_schema(bundle, config)
    stem = Path(str(getattr(slide_or_path, "path", slide_or_path))).stem
    clin = check_clinical(bundle.caller_inputs(subtype_model is not None), clinical, slide_id or stem, warn=False)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    opened = isinstance(slide_or_path, (str, os.PathLike))
    slide = open_slide(slide_or_path, mpp=mpp) if opened else slide_or_path
    try:
        path = str(slide.path)
        sid = slide_id or Path(path).stem
        polys = load_rois(rois, path)
        report(progress, 0, 0, "finding tiles")
        tiles = find_tiles(slide, polys, config, should_stop)
        timings["tiling_s"] = time.perf_counter() - t0
        check_stop(should_stop)
        subtype_info = None
        if subtype_model is not None:
            from napari_lnm.subtype import SubtypeModel

            sm = subtype_model if isinstance(subtype_model, SubtypeModel) else SubtypeModel.load(subtype_model)
            t1 = time.perf_counter()
            bundle, subtype_info = route(slide, bundle, tiles, config, polys, sm, progress, should_stop)
            extra["subtype_model_used"] = subtype_info["model_used"]
            timings["subtype_s"] = time.perf_counter() - t1
            _check_schema(bundle, config)
        t1 = time.perf_counter()
        res, used = analyse(slide, tiles, config, keep_images, workers, progress, should_stop)
        timings["features_s"] = time.perf_counter() - t1
        timings["workers"] = used
        # plus the per-tile values the model derives (deep components, ABMIL shares) for key tiles and display
        table = bundle.fusion.with_tile_values(tile_frame(sid, tiles.reset_index(drop=True), res.features, config))
        check_stop(should_stop)
        n = len(tiles)
        report(progress, n, n, "predicting")
        t1 = time.perf_counter()
        if clin is not None:  # warnings against the routed model's own categories
            clin = check_clinical(bundle, clin, sid, warn=True)
            num = bundle.clinical.numeric
            extra["clinical"] = {str(k): float(v) if k in num else str(v) for k, v in clin.iloc[0].items()}
        sc = score(bundle, table, clin)
        top, kt, importance = explain_scores(bundle, table, sc, top_k, n_key_tiles)
        timings["model_s"] = time.perf_counter() - t1
        timings["total_s"] = time.perf_counter() - t0
        timings["s_per_tile"] = timings["features_s"] / max(n, 1)
        return Prediction(
            probability=sc.probability, slide_id=sid, path=path, mpp=float(slide.mpp),
            tiling=dict(config.to_dict(), mpp=float(config.mpp)), tiles=table, contributions=sc.contributions,
            top_features=top, key_tiles=kt, importance=importance, bias=sc.bias, subtype=subtype_info,
            model=_bundle_info(bundle, extra), rois=polys, timings=timings, analyses=res.analyses,
            graph_segments=res.segments,
        )
    finally:
        if opened:
            slide.close()

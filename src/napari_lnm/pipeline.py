"""Single-slide prediction: tiles -> per-tile features -> fusion + model -> probability and key tiles.

:func:`predict_slide` is what ``napari-lnm predict``, the demo and the napari
"Analyse slide" widget call.  It returns a :class:`Prediction` that carries the
probability, the per-tile feature table, the per-element contributions
(log-odds), the top-k features, the numbered key tiles (level-0 px) and, when
asked, the per-tile images (H, E, labels, centroids) for display.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from napari_lnm._atomic import atomic_path, write_text_atomic
from napari_lnm.errors import ModelError, SlideError, UserError
from napari_lnm.explain import KEY_TILE_COLUMNS, KIND_COLOURS, feature_kind, key_tiles as find_key_tiles
from napari_lnm.progress import ProgressFn, StopFn, check_stop, report

__all__ = ["Prediction", "predict_slide", "tiling_config_for", "recorded_tiling", "default_workers", "shutdown_pool", "RESULT_VERSION",
           "MIN_PARALLEL_TILES"]

#: Version of the result.json layout.
RESULT_VERSION = 1

TILE_META = ["slide_id", "x", "y", "size", "tissue_fraction"]
CONTRIBUTION_COLUMNS = ["element", "feature", "bin", "bin_lo", "bin_hi", "value", "contribution"]
TOP_FEATURE_COLUMNS = [
    "rank", "element", "feature", "bin", "bin_lo", "bin_hi", "value", "contribution",
    "fscore", "gain", "direction", "description", "kind", "colour", "explanation",
]


# --------------------------------------------------------------------------- JSON helpers
def _jsonable(obj: Any) -> Any:
    """Recursively convert numpy / pandas values to plain JSON types (NaN and inf -> None)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (Path,)):
        return str(obj)
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def _records(df: Optional[pd.DataFrame]) -> list[dict]:
    """DataFrame -> list of JSON-able dicts."""
    if df is None or len(df) == 0:
        return []
    return [_jsonable(r) for r in df.to_dict(orient="records")]


def _ordered(df: Optional[pd.DataFrame], columns: Sequence[str]) -> Optional[pd.DataFrame]:
    """``df`` with ``columns`` (those present) first, others after in their order."""
    if df is None or len(df.columns) == 0:
        return df
    first = [c for c in columns if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def _frame(records: Sequence[dict], columns: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """List of dicts -> DataFrame with ``columns`` (None in float columns -> NaN)."""
    df = pd.DataFrame(list(records))
    if columns is not None:
        if len(df) == 0:  # keep the schema of an empty table
            df = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        df = _ordered(df, columns)
    for c in ("bin_lo", "bin_hi", "value", "contribution", "fscore", "gain", "score"):
        if c in df.columns:
            v = pd.to_numeric(df[c], errors="coerce")
            df[c] = v if pd.api.types.is_integer_dtype(v) else v.astype(float)
    return df


# --------------------------------------------------------------------------- result
@dataclass
class Prediction:
    """Result of :func:`predict_slide` for one slide (coordinates level-0 px, probability in [0, 1])."""

    probability: float
    slide_id: str
    path: str
    mpp: float  # slide level-0 µm/px
    tiling: dict  # TilingConfig fields + working "mpp" (µm/px of the analysed tiles)
    tiles: pd.DataFrame  # slide_id, x, y, size, tissue_fraction + features
    contributions: pd.DataFrame  # per selected element: element, feature, bin, bin_lo, bin_hi, value, contribution
    top_features: pd.DataFrame  # TOP_FEATURE_COLUMNS, top-k by |contribution|
    key_tiles: pd.DataFrame  # explain.KEY_TILE_COLUMNS
    importance: pd.DataFrame = field(default_factory=pd.DataFrame)  # model's global top-k (gain, fscore)
    bias: float = float("nan")  # log-odds of the model's base value
    subtype: Optional[dict] = None  # {"subtype", "counts", "mean_probs", "n_tiles", "model_used"}
    model: dict = field(default_factory=dict)  # bundle info (path, version, fusion, classifier, ...)
    rois: Optional[list] = None  # level-0 (N, 2) (x, y) polygons
    timings: dict = field(default_factory=dict)  # seconds per stage
    analyses: Optional[list] = field(default=None, repr=False)  # per-tile TileAnalysis (tiles order) if kept
    #: per tile (tiles order), if images were kept: (Voronoi, Delaunay) display segments, (M, 2, 2) row/col
    #: px of the analysed tile (working µm/px), as features.graph.graph_segments gives them
    graph_segments: Optional[list] = field(default=None, repr=False)
    recorded_n_tiles: Optional[int] = field(default=None, repr=False)  # from result.json when tiles are absent

    @property
    def n_tiles(self) -> int:
        """Number of analysed tiles."""
        if len(self.tiles) == 0 and self.recorded_n_tiles is not None:
            return int(self.recorded_n_tiles)
        return int(len(self.tiles))

    @property
    def label(self) -> str:
        """'metastasis likely' / 'metastasis unlikely' at the 0.5 threshold."""
        return "metastasis likely" if self.probability >= 0.5 else "metastasis unlikely"

    def to_dict(self) -> dict:
        """JSON-able summary (everything except the tile table and the images)."""
        from napari_lnm import __version__

        return _jsonable({
            "result_version": RESULT_VERSION,
            "package_version": __version__,
            "slide_id": self.slide_id,
            "path": self.path,
            "probability": float(self.probability),
            "label": self.label,
            "bias_log_odds": self.bias,
            "mpp": self.mpp,
            "tiling": self.tiling,
            "n_tiles": self.n_tiles,
            "top_features": _records(_ordered(self.top_features, TOP_FEATURE_COLUMNS)),
            "key_tiles": _records(_ordered(self.key_tiles, KEY_TILE_COLUMNS)),
            "model_importance": _records(self.importance),
            "contributions": _records(_ordered(self.contributions, CONTRIBUTION_COLUMNS)),
            "subtype": self.subtype,
            "model": self.model,
            "rois": [np.asarray(p, dtype=float).tolist() for p in self.rois] if self.rois else None,
            "timings": self.timings,
            "kind_colours": KIND_COLOURS,
        })

    def to_json(self, indent: int = 2) -> str:
        """The :meth:`to_dict` summary as JSON text (plain types only)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict, tiles: Optional[pd.DataFrame] = None) -> "Prediction":
        """Rebuild a Prediction from :meth:`to_dict` output (``tiles`` from tiles.parquet if available)."""
        try:
            prob = float(d["probability"])
        except (KeyError, TypeError, ValueError):
            raise UserError("result has no probability") from None
        return cls(
            probability=prob,
            slide_id=str(d.get("slide_id", "")),
            path=str(d.get("path", "")),
            mpp=float(d["mpp"]) if d.get("mpp") is not None else float("nan"),
            tiling=dict(d.get("tiling") or {}),
            tiles=tiles if tiles is not None else pd.DataFrame(columns=TILE_META),
            contributions=_frame(d.get("contributions") or [], CONTRIBUTION_COLUMNS),
            top_features=_frame(d.get("top_features") or [], TOP_FEATURE_COLUMNS),
            key_tiles=_frame(d.get("key_tiles") or [], KEY_TILE_COLUMNS),
            importance=_frame(d.get("model_importance") or []),
            bias=float(d["bias_log_odds"]) if d.get("bias_log_odds") is not None else float("nan"),
            subtype=d.get("subtype"),
            model=dict(d.get("model") or {}),
            rois=[np.asarray(p, dtype=float) for p in d["rois"]] if d.get("rois") else None,
            timings=dict(d.get("timings") or {}),
            recorded_n_tiles=int(d["n_tiles"]) if d.get("n_tiles") is not None else None,
        )

    @classmethod
    def from_json(cls, text: str, tiles: Optional[pd.DataFrame] = None) -> "Prediction":
        """Rebuild from :meth:`to_json` text."""
        return cls.from_dict(json.loads(text), tiles=tiles)

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "Prediction":
        """Read a folder written by :meth:`save` (result.json and, if present, tiles.parquet)."""
        out_dir = Path(out_dir)
        rj = out_dir / "result.json"
        try:
            d = json.loads(rj.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{rj}: no result here (run napari-lnm predict first)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{rj}: not a valid result file ({exc.__class__.__name__})") from None
        tp = out_dir / "tiles.parquet"
        tiles = pd.read_parquet(tp) if tp.exists() else None
        return cls.from_dict(d, tiles=tiles)

    def save(self, out_dir: str | os.PathLike, slide: Any = None, images: bool = True) -> dict[str, Path]:
        """Write tiles.parquet, contributions.csv, importance.png, key_tiles.png, then result.json (atomic each).

        result.json is written last, so its presence marks a finished folder.
        ``slide`` (a Slide, path or ``(rgb, downsample)``) is used for the thumbnail; default ``self.path``.
        """
        from napari_lnm import report as rep

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        p = out_dir / "tiles.parquet"
        with atomic_path(p) as tmp:
            self.tiles.to_parquet(tmp, index=False)
        paths["tiles"] = p
        p = out_dir / "contributions.csv"
        with atomic_path(p) as tmp:
            self.contributions.to_csv(tmp, index=False)
        paths["contributions"] = p
        if images:
            paths["importance"] = rep.importance_bar_chart(
                self.top_features, out_dir / "importance.png", importance=self.importance,
                probability=self.probability,
            )
            opened = None
            if slide is None:  # reopen with the µm/px used for the prediction (photos have no metadata)
                from napari_lnm.io import open_slide

                mpp = self.mpp if self.mpp and math.isfinite(self.mpp) else None
                slide = opened = open_slide(self.path, mpp=mpp)
            try:
                paths["key_tiles"] = rep.key_tile_thumbnail(
                    slide, self.key_tiles, out_dir / "key_tiles.png",
                    rois=self.rois, tiles=self.tiles, probability=self.probability,
                )
            finally:
                if opened is not None:
                    opened.close()
        p = out_dir / "result.json"
        write_text_atomic(p, self.to_json())
        paths["result"] = p
        return paths


# --------------------------------------------------------------------------- bundle access
def _bundle_config(bundle: Any) -> dict:
    """The bundle's training config as a dict (empty if it has none)."""
    cfg = getattr(bundle, "config", None)
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return dict(cfg) if isinstance(cfg, dict) else {}


def recorded_tiling(bundle: Any):
    """The TilingConfig a bundle was trained with, or None when it records none (e.g. trained from tables)."""
    if bundle is None:
        return None
    tiling = getattr(bundle, "tiling", None) or _bundle_config(bundle).get("tiling")
    return tiling_config_for(bundle) if tiling else None


def tiling_config_for(bundle: Any = None, **overrides: Any):
    """TilingConfig the bundle was trained with (magnification, tile size, overlap, min tissue), plus overrides.

    ``overrides`` with value None are ignored (e.g. ``max_tiles=None`` keeps the default).
    """
    from napari_lnm.tiling import TilingConfig

    fields = {f.name for f in dataclasses.fields(TilingConfig)}
    base: dict = {}
    cfg = _bundle_config(bundle) if bundle is not None else {}
    tiling = getattr(bundle, "tiling", None)
    if dataclasses.is_dataclass(tiling):
        base.update(dataclasses.asdict(tiling))
    elif isinstance(cfg.get("tiling"), dict):
        base.update(cfg["tiling"])
    else:
        base.update({k: v for k, v in cfg.items() if k in fields})
    # training-time sampling caps do not apply to prediction unless asked for
    base.pop("max_tiles", None)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TilingConfig(**{k: v for k, v in base.items() if k in fields})


def _importance_table(bundle: Any) -> pd.DataFrame:
    """The bundle's importance DataFrame (element, feature, bin, bin_lo, bin_hi, fscore, gain, direction, description)."""
    imp = getattr(bundle, "importance", None)
    if callable(imp):
        imp = imp()
    if isinstance(imp, pd.DataFrame):
        return imp.copy()
    return pd.DataFrame(columns=["element", "feature", "bin", "bin_lo", "bin_hi", "fscore", "gain", "direction", "description"])


def _bundle_info(bundle: Any, extra: Optional[dict] = None) -> dict:
    """Small JSON-able description of the model used."""
    cfg = _bundle_config(bundle)
    info: dict = {}
    for key in ("path", "directory", "dir"):
        v = getattr(bundle, key, None)
        if v is not None:
            info["path"] = str(v)
            break
    for key in ("package_version", "schema_version"):
        v = getattr(bundle, key, None)
        if isinstance(v, (str, int)):
            info[key] = v
    for key in ("fusion", "bins", "edges", "test", "alpha", "top_q", "classifier", "n_trees", "seed",
                "n_slides", "n_positive", "subtype", "selection_message"):
        if key in cfg and isinstance(cfg[key], (str, int, float, bool, type(None))):
            info[key] = cfg[key]
    cv = getattr(bundle, "cv_report", None)
    if cv is not None and hasattr(cv, "summary"):
        try:
            info["cv_summary"] = str(cv.summary())
        except Exception:  # summary is informative only
            pass
    fn = getattr(bundle, "feature_names", None)
    if fn is not None:
        info["n_features"] = len(list(fn))
    sel = getattr(bundle, "selection", None)
    names = getattr(sel, "names", None)
    if names is not None:
        info["n_selected_elements"] = len(list(names))
    if extra:
        info.update(extra)
    return info


def _n_bins(bundle: Any) -> Optional[int]:
    """Number of histogram bins of the bundle's fusion (None for summary fusions)."""
    fusion = getattr(bundle, "fusion", None)
    b = getattr(fusion, "bins", None)
    if isinstance(b, (int, np.integer)) and getattr(fusion, "kind", "histogram") == "histogram":
        return int(b)
    cfg = _bundle_config(bundle)
    if cfg.get("fusion", "histogram") == "histogram" and isinstance(cfg.get("bins"), (int, np.integer)):
        return int(cfg["bins"])
    return None


def _top_features(contribs: pd.DataFrame, importance: pd.DataFrame, k: int) -> pd.DataFrame:
    """Top-k elements of this slide by |contribution|, with the model's F-score/gain and the feature kind."""
    if contribs is None or len(contribs) == 0:
        return pd.DataFrame(columns=TOP_FEATURE_COLUMNS)
    c = contribs.copy()
    c = c[np.isfinite(c["contribution"].astype(float))]
    if importance is not None and len(importance) and "element" in importance.columns:
        extra = [col for col in ("fscore", "gain", "direction", "description") if col in importance.columns and col not in c.columns]
        c = c.merge(importance[["element", *extra]].drop_duplicates("element"), on="element", how="left")
    if "gain" not in c.columns:
        c["gain"] = np.nan
    # elements the trees never used for this slide (contribution exactly 0) say nothing about it
    nonzero = c[c["contribution"] != 0]
    c = nonzero if len(nonzero) else c
    c = c.assign(_abs=c["contribution"].abs(), _gain=c["gain"].fillna(0.0))
    c = c.sort_values(["_abs", "_gain", "element"], ascending=[False, False, True], kind="mergesort")
    c = c.head(k).drop(columns=["_abs", "_gain"])
    if "feature" not in c.columns:
        c["feature"] = c["element"].astype(str).str.split("|").str[0]
    c["kind"] = [feature_kind(f) for f in c["feature"]]
    c["colour"] = [KIND_COLOURS[k_] for k_ in c["kind"]]
    c["explanation"] = [_explain_element(r) for r in c.to_dict(orient="records")]
    c.insert(0, "rank", np.arange(1, len(c) + 1))
    for col in TOP_FEATURE_COLUMNS:
        if col not in c.columns:
            c[col] = np.nan
    return c[TOP_FEATURE_COLUMNS + [x for x in c.columns if x not in TOP_FEATURE_COLUMNS]].reset_index(drop=True)


def _explain_element(r: dict) -> str:
    """One sentence on what a fused element is for this slide and which way it pushed the prediction."""
    from napari_lnm.explain import bin_range_text, feature_unit
    from napari_lnm.report import _num

    c = float(r.get("contribution", 0.0))
    effect = f"{'raises' if c > 0 else 'lowers'} risk by {abs(c):.2f} log-odds"
    direction = r.get("direction")
    direction = f" ({direction})" if isinstance(direction, str) and direction else ""
    feat = str(r.get("feature", ""))
    b = r.get("bin")
    value = r.get("value")
    if isinstance(b, (int, float, np.integer, np.floating)) and np.isfinite(b) and b >= 1 and value is not None:
        unit = feature_unit(feat)
        rng = f"{bin_range_text(r.get('bin_lo'), r.get('bin_hi'), _num)} {unit}".rstrip()
        return (f"{float(value) * 100:.0f}% of this slide's tiles have {feat} in bin {int(b)} ({rng})"
                f"{direction}; {effect}")
    stat = str(r.get("stat") or "").strip()
    what = f"{feat} ({stat})" if stat and stat != feat else feat
    return f"{what} = {_num(value)} on this slide{direction}; {effect}"


def _with_direction(contribs: pd.DataFrame, importance: pd.DataFrame) -> pd.DataFrame:
    """Contributions with the model's 'direction' column (higher/lower in metastatic) when it has one."""
    if "direction" in contribs.columns or importance is None or "direction" not in importance.columns:
        return contribs
    return contribs.merge(importance[["element", "direction"]].drop_duplicates("element"), on="element", how="left")


def _global_importance(importance: pd.DataFrame, k: int) -> pd.DataFrame:
    """Model's top-k elements by gain (then F-score)."""
    if importance is None or len(importance) == 0:
        return pd.DataFrame()
    imp = importance.copy()
    keys = [c for c in ("gain", "fscore") if c in imp.columns]
    if keys:
        imp = imp.sort_values(keys, ascending=False, kind="mergesort")
    imp = imp.head(k).reset_index(drop=True)
    if "feature" in imp.columns:
        imp["kind"] = [feature_kind(f) for f in imp["feature"]]
    return imp


# --------------------------------------------------------------------------- main entry
def _open(slide_or_path: Any, mpp: Optional[float]):
    """(slide, opened_here) from a Slide or a path."""
    if isinstance(slide_or_path, (str, os.PathLike)):
        from napari_lnm.io import open_slide

        return open_slide(slide_or_path, mpp=mpp), True
    return slide_or_path, False


def _rois(rois: Any) -> Optional[list]:
    """ROI polygons from a list of (N, 2) arrays or a GeoJSON path."""
    if rois is None:
        return None
    if isinstance(rois, (str, os.PathLike)):
        from napari_lnm.tissue import read_geojson

        rois = read_geojson(rois)
    out = [np.asarray(p, dtype=float) for p in rois]
    return out or None


def _load_subtype_model(subtype_model: Any):
    """A SubtypeModel from an instance or a folder."""
    if subtype_model is None or not isinstance(subtype_model, (str, os.PathLike)):
        return subtype_model
    from napari_lnm.subtype import SubtypeModel

    return SubtypeModel.load(subtype_model)


def _float_prob(p: Any) -> float:
    """First probability of whatever predict_proba returned."""
    arr = np.asarray(p, dtype=float).ravel()
    if arr.size == 0 or not np.isfinite(arr[0]):
        raise ModelError("the model returned no valid probability for this slide")
    return float(arr[0])


# --------------------------------------------------------------------------- parallel tile analysis
#: Fewest tiles for which ``predict_slide(workers > 1)`` uses worker processes (below, the pool's
#: start-up, ~1-3 s of spawn + imports on a cold pool, would cost more than it saves).
MIN_PARALLEL_TILES = 16
#: Most tiles per worker task (smaller chunks: smoother progress, better load balance at the end).
CHUNK_TILES = 4

_POOL_LOCK = threading.Lock()
_IDLE_POOL: Any = None  # an extract._Pool kept warm between runs (shut down at exit)
_ATEXIT = False


def default_workers() -> int:
    """Worker processes the CLI and the napari widget use by default: min(2, CPU count)."""
    return max(1, min(2, os.cpu_count() or 1))


def _one_blas_thread():
    """Context limiting BLAS/OpenMP to one thread, as in the workers (multi-threaded BLAS changes last bits)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1)


def _tile_segments(ta: Any) -> tuple[np.ndarray, np.ndarray]:
    """(Voronoi, Delaunay) display segments (M, 2, 2) of a tile's nucleus centroids, row/col working px."""
    from napari_lnm.features.graph import graph_segments

    c = np.asarray(ta.centroids, dtype=float).reshape(-1, 2)
    if len(c) < 3:
        empty = np.zeros((0, 2, 2))
        return empty, empty
    v, d = graph_segments(c, np.asarray(ta.labels).shape)
    return np.asarray(v, float).reshape(-1, 2, 2), np.asarray(d, float).reshape(-1, 2, 2)


def _analyse_tiles(slide: Any, xs: Sequence[int], ys: Sequence[int], config: Any, keep_images: bool,
                   should_stop: Optional[StopFn] = None, progress: Optional[ProgressFn] = None,
                   offset: int = 0, total: int = 0) -> tuple[np.ndarray, Optional[list], Optional[list]]:
    """Features (n, n_features) float64 in feature_names() order; with ``keep_images`` also the
    TileAnalysis list and the (Voronoi, Delaunay) display segments of each tile (row/col px)."""
    from napari_lnm.features import analyse_tile, feature_names
    from napari_lnm.tiling import read_tile

    names = feature_names()
    feats = np.full((len(xs), len(names)), np.nan, dtype=np.float64)
    analyses: Optional[list] = [] if keep_images else None
    segments: Optional[list] = [] if keep_images else None
    for i, (x, y) in enumerate(zip(xs, ys)):
        check_stop(should_stop)
        ta = analyse_tile(read_tile(slide, int(x), int(y), config), float(config.mpp), segmentation=config.segmentation)
        feats[i] = [ta.features.get(k, np.nan) for k in names]
        if keep_images:
            analyses.append(ta)
            segments.append(_tile_segments(ta))
        if total:
            report(progress, offset + i + 1, total, f"analysing tile {offset + i + 1}/{total}")
    return feats, analyses, segments


@dataclass(frozen=True)
class _StopFile:
    """Picklable ``should_stop`` for worker processes: true once the file ``path`` exists."""

    path: str

    def __call__(self) -> bool:
        return os.path.exists(self.path)


def _analyse_chunk(path: str, mpp: float, xs: np.ndarray, ys: np.ndarray, config: Any, keep_images: bool,
                   stop: Optional[_StopFile] = None) -> tuple[np.ndarray, Optional[list], Optional[list]]:
    """Worker-process task: open the slide (level-0 ``mpp`` µm/px) and analyse the tiles at level-0 (xs, ys).

    Raises Cancelled between tiles (and before sending results back) once ``stop`` is true.
    """
    from napari_lnm.extract import _limit_threads, extract_tiles
    from napari_lnm.io import open_slide

    check_stop(stop)
    if not keep_images:  # the same task function as cohort extraction
        out = extract_tiles(path, xs, ys, config, mpp, limit_threads=True, should_stop=stop), None, None
    else:
        with _limit_threads(), open_slide(path, mpp=mpp) as slide:
            out = _analyse_tiles(slide, xs, ys, config, True, should_stop=stop)
    check_stop(stop)
    return out


def _checkout_pool(workers: int):
    """The warm module-level pool if it has ``workers`` processes, else a new one (extract._Pool, spawned)."""
    global _IDLE_POOL, _ATEXIT
    from napari_lnm.extract import _Pool

    with _POOL_LOCK:
        pool, _IDLE_POOL = _IDLE_POOL, None
        if not _ATEXIT:
            _register_exit_hook()
            _ATEXIT = True
    if pool is not None and pool.workers == workers and not getattr(pool.ex, "_broken", False):
        return pool
    if pool is not None:
        _kill_pool(pool)
    return _Pool(workers)


def _return_pool(pool: Any) -> None:
    """Keep ``pool`` warm for the next run (or shut it down if another one is already kept)."""
    global _IDLE_POOL
    with _POOL_LOCK:
        if _IDLE_POOL is None:
            _IDLE_POOL, pool = pool, None
    if pool is not None:
        pool.ex.shutdown(wait=False, cancel_futures=True)


def _kill_pool(pool: Any, timeout: float = 2.0) -> None:
    """Stop a pool now: cancel queued tasks, terminate its worker processes, reap them (≤ ``timeout`` s)."""
    ex = pool.ex
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            if p.is_alive():
                p.terminate()
        except (ValueError, ProcessLookupError):  # already closed / gone
            pass
    t_end = time.monotonic() + timeout
    for p in procs:
        try:
            p.join(max(0.0, t_end - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(0.5)
        except (ValueError, ProcessLookupError):
            pass


#: Seconds a stopped run waits for its running chunks to quit at a tile boundary before killing the workers.
STOP_GRACE_S = 1.0


def _stop_workers(pending: dict, stop: _StopFile) -> bool:
    """Cancel queued futures, raise the stop file, wait ≤ STOP_GRACE_S for running ones; True if all ended."""
    import concurrent.futures as cf

    for fut in pending:
        fut.cancel()
    try:
        with open(stop.path, "w", encoding="utf-8"):
            pass
    except OSError:  # no writable temp folder: the caller terminates the workers
        return False
    _, not_done = cf.wait(list(pending), timeout=STOP_GRACE_S)
    return not not_done


def shutdown_pool() -> None:
    """Stop the warm worker processes kept by :func:`predict_slide` (also done at interpreter exit)."""
    global _IDLE_POOL
    with _POOL_LOCK:
        pool, _IDLE_POOL = _IDLE_POOL, None
    if pool is None:
        return
    # graceful first: idle workers exit on their own; killing one mid-send could block the
    # executor's reader thread for good (and with it interpreter exit)
    t = threading.Thread(target=pool.ex.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    t.start()
    t.join(5.0)
    if t.is_alive():
        _kill_pool(pool)


def _register_exit_hook() -> None:
    """Shut the warm pool down at exit *before* concurrent.futures joins its threads (else atexit)."""
    register = getattr(threading, "_register_atexit", None)  # runs before concurrent.futures' own hook
    try:
        if register is None:
            raise AttributeError
        register(shutdown_pool)
    except (AttributeError, RuntimeError):
        atexit.register(shutdown_pool)


def _parallel_path(slide: Any) -> Optional[str]:
    """The slide's file if worker processes can reopen it, else None (in-memory or unsaved slides)."""
    p = getattr(slide, "path", None)
    if p is None or not hasattr(slide, "mpp"):
        return None
    try:
        return str(p) if Path(p).is_file() else None
    except (TypeError, OSError):
        return None


def _analyse_parallel(path: str, mpp: float, xs: np.ndarray, ys: np.ndarray, config: Any, keep_images: bool,
                      workers: int, progress: Optional[ProgressFn],
                      should_stop: Optional[StopFn]) -> tuple[np.ndarray, Optional[list], Optional[list]]:
    """:func:`_analyse_tiles` on ``workers`` processes in chunks; results in tile order.

    Polls ``should_stop`` every 0.1 s.  On a stop (or an error) queued chunks are cancelled
    and a stop file tells the running ones to quit at their next tile; the pool is kept
    warm if they do so within ``STOP_GRACE_S``, else its processes are terminated.
    (Terminating a worker while it sends a large result would leave the executor's
    reader thread blocked for good, hence the cooperative stop first.)
    """
    import concurrent.futures as cf
    import tempfile
    import uuid

    from napari_lnm.extract import _chunk_bounds

    n = len(xs)
    bounds = _chunk_bounds(n, workers, CHUNK_TILES)
    pool = _checkout_pool(workers)
    stop = _StopFile(os.path.join(tempfile.gettempdir(), f"napari-lnm-stop-{os.getpid()}-{uuid.uuid4().hex}"))
    results: dict[int, tuple] = {}
    done_tiles = 0
    ok = False
    pending: dict = {}
    try:
        pending = {pool.submit(_analyse_chunk, path, float(mpp), xs[a:b], ys[a:b], config, keep_images, stop): k
                   for k, (a, b) in enumerate(bounds)}
        while pending:
            check_stop(should_stop)
            finished, _ = cf.wait(list(pending), timeout=0.1, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                k = pending.pop(fut)
                try:
                    results[k] = fut.result()
                except cf.process.BrokenProcessPool:
                    raise SlideError(path, "a worker process died while analysing tiles (out of memory or "
                                           "killed); run again, or with 1 worker") from None
                done_tiles += bounds[k][1] - bounds[k][0]
                report(progress, done_tiles, n, f"analysing tile {done_tiles}/{n}")
        ok = True
    finally:
        if ok or _stop_workers(pending, stop):
            _return_pool(pool)
        else:
            _kill_pool(pool)
        with contextlib.suppress(OSError):
            os.remove(stop.path)
    feats = np.concatenate([results[k][0] for k in range(len(bounds))], axis=0)
    if not keep_images:
        return feats, None, None
    analyses = [a for k in range(len(bounds)) for a in results[k][1]]
    segments = [s for k in range(len(bounds)) for s in results[k][2]]
    return feats, analyses, segments


def _stem(slide_or_path: Any) -> str:
    """A slide id for messages: the file stem of a path or of an open slide's path."""
    return Path(str(getattr(slide_or_path, "path", slide_or_path))).stem


def _check_clinical(bundle: Any, clinical: Any, slide_id: str, warn: bool) -> Optional[pd.DataFrame]:
    """The slide's clinical values as a one-row DataFrame of the bundle's columns (None without values or columns)."""
    import warnings

    from napari_lnm.model import ClinicalWarning, clinical_frame

    if clinical is None:
        return None
    df = clinical_frame(clinical, source=f"clinical values of slide {slide_id}")
    if len(df) != 1:
        raise UserError(f"clinical values of slide {slide_id}: expected one row, got {len(df)}")
    enc = getattr(bundle, "clinical", None)
    if enc is None or not enc.columns:
        if warn is False:
            warnings.warn(f"slide {slide_id}: the model uses no clinical columns; the clinical values are ignored",
                          ClinicalWarning, stacklevel=3)
        return None
    for msg in enc.check(df, source=f"clinical values of slide {slide_id}", slide_ids=[slide_id]):
        if warn:
            warnings.warn(msg, ClinicalWarning, stacklevel=3)
    return df[list(enc.columns)]


def predict_slide(
    slide_or_path: Any,
    bundle: Any,
    rois: Any = None,
    config: Any = None,
    mpp: Optional[float] = None,
    keep_images: bool = False,
    subtype_model: Any = None,
    top_k: int = 10,
    n_key_tiles: int = 10,
    slide_id: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[StopFn] = None,
    workers: int = 1,
    clinical: Any = None,
) -> Prediction:
    """Predict the metastasis probability of one slide and explain it (tiles level-0 px, features in µm/µm²/OD).

    ``bundle``: a :class:`napari_lnm.model.ModelBundle` (or a folder to load one from);
    ``rois``: level-0 ``(x, y)`` polygons or a GeoJSON path (None: tissue detection);
    ``config``: a ``TilingConfig`` (default: the bundle's magnification / tile size, all tiles);
    ``mpp``: µm/px for slides without metadata; ``keep_images``: keep each tile's
    ``TileAnalysis`` (H, E, labels, centroids) in ``Prediction.analyses``;
    ``subtype_model``: a ``SubtypeModel`` or folder; the slide's majority subtype
    then picks ``bundle.for_subtype(name)``.  Cancellable between tiles.
    ``workers > 1``: tile features are computed in that many worker processes (a
    spawned pool kept warm between runs, see :func:`shutdown_pool`) when the slide has
    at least ``MIN_PARALLEL_TILES`` tiles and is a file; the numbers are identical to
    ``workers=1``.  With ``keep_images``, ``Prediction.graph_segments`` also holds each
    tile's Voronoi/Delaunay display segments.
    ``clinical``: the slide's clinical values (a dict or a one-row DataFrame) for a
    model trained with clinical columns; checked before any tile is analysed (a
    missing column or value raises UserError; a category unseen in training warns
    ``model.ClinicalWarning`` and counts as no level), recorded in
    ``Prediction.model["clinical"]``. None: the clinical columns count as missing.
    """
    from napari_lnm.features import feature_names
    from napari_lnm.tiling import tile_slide

    model_extra: dict = {}
    if isinstance(bundle, (str, os.PathLike)):
        from napari_lnm.model import ModelBundle

        model_extra["path"] = str(bundle)
        bundle = ModelBundle.load(bundle)
    clin = _check_clinical(bundle, clinical, slide_id or _stem(slide_or_path), warn=False)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    slide, opened = _open(slide_or_path, mpp)
    try:
        path = str(getattr(slide, "path", slide_or_path))
        sid = slide_id or Path(path).stem
        polys = _rois(rois)
        if config is None:
            config = tiling_config_for(bundle)
        work_mpp = float(config.mpp)
        report(progress, 0, 0, "finding tiles")
        tiles = tile_slide(slide, rois=polys, config=config, should_stop=should_stop)
        timings["tiling_s"] = time.perf_counter() - t0
        if len(tiles) == 0:
            raise SlideError(path, "no tiles with enough tissue"
                             + (" inside the ROI" if polys else "")
                             + f" (tile {config.tile_size} px at {config.magnification:g}x, "
                               f"min tissue {config.min_tissue:g}); draw or import an ROI, or lower --min-tissue")
        check_stop(should_stop)

        # --- molecular subtype routing (optional) -------------------------------------------
        subtype_info = None
        sm = _load_subtype_model(subtype_model)
        if sm is not None:
            from napari_lnm.subtype import predict_slide_subtype

            t1 = time.perf_counter()
            sm_config = sm.tiling_config()
            same = (sm_config.magnification, sm_config.tile_size) == (config.magnification, config.tile_size)
            sm_tiles = tiles if same else tile_slide(slide, rois=polys, config=sm_config, should_stop=should_stop)
            if len(sm_tiles) == 0:
                sm_tiles = tiles
            vote = predict_slide_subtype(slide, sm, tiles_df=sm_tiles, config=sm_config, progress=progress,
                                         should_stop=should_stop)
            subtype_info = vote.to_dict()
            # per-tile votes (level-0 px, rows of the subtype tiling) for overlays; plain lists stay JSON-able
            subtype_info["tiles"] = {
                "x": sm_tiles["x"].astype(int).tolist(), "y": sm_tiles["y"].astype(int).tolist(),
                "size": sm_tiles["size"].astype(int).tolist(), "classes": list(vote.classes),
                "probs": np.round(np.asarray(vote.probs, dtype=float), 4).tolist(),
            }
            subtype_info["routing"] = str((getattr(bundle, "subtype_routing", None) or {}).get(vote.subtype, ""))
            routed, used = bundle, "pooled"
            if hasattr(bundle, "for_subtype"):
                out = bundle.for_subtype(vote.subtype)
                routed, used = out if isinstance(out, tuple) else (out, "pooled" if out is bundle else vote.subtype)
            subtype_info["model_used"] = str(used)
            model_extra["subtype_model_used"] = str(used)
            bundle = routed
            timings["subtype_s"] = time.perf_counter() - t1

        # --- per-tile features ------------------------------------------------------------------
        names = list(feature_names())
        needed = list(getattr(bundle, "feature_names", []) or [])
        missing = [f for f in needed if f not in names]
        if missing:
            raise ModelError(
                f"the model needs {len(missing)} feature(s) this version does not compute "
                f"(e.g. {missing[:3]}); retrain it with this version of napari-lnm"
            )
        n = len(tiles)
        xs, ys = tiles["x"].to_numpy(), tiles["y"].to_numpy()
        workers = int(workers)
        if workers < 1:
            raise UserError(f"workers must be at least 1, got {workers}")
        par_path = _parallel_path(slide) if workers > 1 and n >= MIN_PARALLEL_TILES else None
        t1 = time.perf_counter()
        if par_path is not None:
            feats, analyses, segments = _analyse_parallel(par_path, float(slide.mpp), xs, ys, config, keep_images,
                                                          min(workers, n), progress, should_stop)
        else:
            with _one_blas_thread():  # as in the worker processes: bit-identical features either way
                feats, analyses, segments = _analyse_tiles(slide, xs, ys, config, keep_images, should_stop,
                                                           progress, total=n)
        timings["features_s"] = time.perf_counter() - t1
        timings["workers"] = min(workers, n) if par_path is not None else 1
        table = tiles.reset_index(drop=True).copy()
        table.insert(0, "slide_id", sid)
        table = pd.concat([table, pd.DataFrame(feats, columns=names)], axis=1)

        # --- fusion + classifier + explanation -----------------------------------------------
        check_stop(should_stop)
        report(progress, n, n, "predicting")
        t1 = time.perf_counter()
        if clin is not None:  # warnings against the routed model's own categories
            clin = _check_clinical(bundle, clin, sid, warn=True)
            num = getattr(getattr(bundle, "clinical", None), "numeric", {})
            model_extra["clinical"] = {str(k): float(v) if k in num else str(v) for k, v in clin.iloc[0].items()}
        prob = _float_prob(bundle.predict_proba(table, clin) if clin is not None else bundle.predict_proba(table))
        contribs = bundle.contributions(table, clin) if clin is not None else bundle.contributions(table)
        if not isinstance(contribs, pd.DataFrame):
            raise ModelError("the model bundle returned no contributions table")
        contribs = contribs.copy()
        bias = float(contribs.attrs.get("bias", float("nan")))
        is_bias = contribs["element"].astype(str).str.lower().isin(["bias", "<bias>", "(bias)", "base"])
        if is_bias.any():
            bias = float(contribs.loc[is_bias, "contribution"].iloc[0])
            contribs = contribs[~is_bias].reset_index(drop=True)
        importance = _importance_table(bundle)
        top = _top_features(contribs, importance, top_k)
        kt = find_key_tiles(table, _with_direction(contribs, importance), n=n_key_tiles, n_bins=_n_bins(bundle))
        timings["model_s"] = time.perf_counter() - t1
        timings["total_s"] = time.perf_counter() - t0
        timings["s_per_tile"] = timings["features_s"] / max(n, 1)
        tiling = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        tiling["mpp"] = work_mpp
        return Prediction(
            probability=prob,
            slide_id=sid,
            path=path,
            mpp=float(getattr(slide, "mpp", float("nan")) or float("nan")),
            tiling=tiling,
            tiles=table,
            contributions=contribs,
            top_features=top,
            key_tiles=kt,
            importance=_global_importance(importance, top_k),
            bias=bias,
            subtype=subtype_info,
            model=_bundle_info(bundle, model_extra),
            rois=polys,
            timings=timings,
            analyses=analyses,
            graph_segments=segments,
        )
    finally:
        if opened:
            slide.close()

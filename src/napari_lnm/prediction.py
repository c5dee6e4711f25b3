"""The result of one slide's prediction, and its JSON form (``result.json``), saved and loaded.

:class:`Prediction` holds the probability, the per-tile feature table, the per-element contributions
(log-odds), the top-k features, the numbered key tiles (level-0 px) and, when kept, the per-tile
images for display.  :meth:`Prediction.save` writes ``result.json`` last, so its presence marks a
finished folder.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from napari_lnm._atomic import atomic_path, write_text_atomic
from napari_lnm.engine import META_COLUMNS
from napari_lnm.errors import UserError
from napari_lnm.explain import KEY_TILE_COLUMNS, KIND_COLOURS, TOP_FEATURE_COLUMNS, cell_summary

__all__ = ["Prediction", "RESULT_VERSION", "CONTRIBUTION_COLUMNS", "TOP_FEATURE_COLUMNS"]

#: Version of the result.json layout.
RESULT_VERSION = 1

CONTRIBUTION_COLUMNS = ["element", "feature", "bin", "bin_lo", "bin_hi", "value", "contribution"]


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


def rois_to_json(rois: Any) -> Optional[list]:
    """A ROI geometry as GeoJSON MultiPolygon coordinates: per polygon [exterior, *holes] rings of [x, y]."""
    if rois is None:
        return None
    from napari_lnm.tissue import load_rois, roi_rings

    return [[ext.tolist(), *[h.tolist() for h in holes]] for ext, holes in roi_rings(load_rois(rois))]


def rois_from_json(value: Any) -> Any:
    """Inverse of :func:`rois_to_json`; also reads the older list of exterior rings."""
    if not value:
        return None
    from shapely.geometry import Polygon

    from napari_lnm.tissue import load_rois

    if not isinstance(value[0][0][0], (list, tuple)):  # older files: one exterior ring per polygon
        return load_rois([np.asarray(r, dtype=float) for r in value])
    return load_rois([Polygon(rings[0], rings[1:]) for rings in value])


def roi_outlines(rois: Any) -> Optional[list]:
    """Every ring (exteriors and holes) of a ROI geometry as (N, 2) (x, y) arrays, for drawing."""
    if rois is None:
        return None
    from napari_lnm.tissue import load_rois, roi_rings

    return [ring for ext, holes in roi_rings(load_rois(rois)) for ring in (ext, *holes)]


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
    rois: Optional[Any] = None  # the analysed ROI (``tissue.load_rois``: a MultiPolygon, level-0 (x, y) px)
    timings: dict = field(default_factory=dict)  # seconds per stage
    analyses: Optional[list] = field(default=None, repr=False)  # per-tile TileAnalysis (tiles order) if kept
    #: per tile (tiles order), if images were kept: (Voronoi, Delaunay) display segments, (M, 2, 2) row/col
    #: px of the analysed tile (working µm/px), as features.graph.graph_segments gives them
    graph_segments: Optional[list] = field(default=None, repr=False)
    recorded_n_tiles: Optional[int] = field(default=None, repr=False)  # from result.json when tiles are absent
    recorded_cells: Optional[dict] = field(default=None, repr=False)  # cell_summary from result.json, likewise

    @property
    def n_tiles(self) -> int:
        """Number of analysed tiles."""
        if len(self.tiles) == 0 and self.recorded_n_tiles is not None:
            return int(self.recorded_n_tiles)
        return int(len(self.tiles))

    @property
    def cell_summary(self) -> dict:
        """Nuclei per type over the analysed tiles (``explain.cell_summary``), or the recorded one."""
        return cell_summary(self.tiles) if len(self.tiles) else dict(self.recorded_cells or {})

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
            "rois": rois_to_json(self.rois),
            "timings": self.timings,
            "kind_colours": KIND_COLOURS,
            "cell_summary": self.cell_summary,
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
            tiles=tiles if tiles is not None else pd.DataFrame(columns=list(META_COLUMNS)),
            contributions=_frame(d.get("contributions") or [], CONTRIBUTION_COLUMNS),
            top_features=_frame(d.get("top_features") or [], TOP_FEATURE_COLUMNS),
            key_tiles=_frame(d.get("key_tiles") or [], KEY_TILE_COLUMNS),
            importance=_frame(d.get("model_importance") or []),
            bias=float(d["bias_log_odds"]) if d.get("bias_log_odds") is not None else float("nan"),
            subtype=d.get("subtype"),
            model=dict(d.get("model") or {}),
            rois=rois_from_json(d.get("rois")),
            timings=dict(d.get("timings") or {}),
            recorded_n_tiles=int(d["n_tiles"]) if d.get("n_tiles") is not None else None,
            recorded_cells=d.get("cell_summary") or None,
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
                    rois=roi_outlines(self.rois), tiles=self.tiles, probability=self.probability,
                )
            finally:
                if opened is not None:
                    opened.close()
        p = out_dir / "result.json"
        write_text_atomic(p, self.to_json())
        paths["result"] = p
        return paths

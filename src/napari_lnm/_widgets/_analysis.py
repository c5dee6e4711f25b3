"""The Analyse widget's work as plain functions (no Qt): load a bundle, parse clinical values, run a slide."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from napari_lnm.config import TilingConfig
from napari_lnm.errors import ModelError, UserError
from napari_lnm.model import ModelBundle
from napari_lnm.prediction import Prediction
from napari_lnm.progress import ProgressFn, StopFn

from ._result import LayerData, build_layer_data

__all__ = ["AnalysisRequest", "AnalysisOutput", "load_bundle", "parse_clinical", "run_analysis"]


def load_bundle(path: str) -> ModelBundle:
    """Load a model bundle folder (or a file inside it); any failure is a one-line ModelError naming the path."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise ModelError("no model chosen: pick a model bundle folder")
    if p.is_file():  # the user picked a file inside the bundle
        p = p.parent
    try:
        return ModelBundle.load(p)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable bundle is the user's to fix
        raise ModelError(f"{p}: not a napari-lnm model bundle ({type(exc).__name__}: {exc})") from None


def parse_clinical(text: str) -> Optional[dict]:
    """``"age=71; stage=III"`` (``;`` or ``,`` between ``column=value`` pairs) -> dict; None for blank text."""
    pairs = [p.strip() for p in text.replace(",", ";").split(";") if p.strip()]
    if not pairs:
        return None
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise UserError(f"clinical values: '{p}' is not column=value (e.g. age=71; stage=III)")
        out[key.strip()] = value.strip()
    return out


@dataclass
class AnalysisRequest:
    """One run of the widget: the slide file, its µm/px override (None: metadata), ROI, model and settings."""

    path: str
    bundle: ModelBundle
    config: TilingConfig
    mpp: Optional[float] = None  # µm/px the user entered, overriding the slide's metadata
    rois: Any = None  # tissue.load_rois geometry (level-0 px), None: detected tissue
    clinical: Optional[dict] = None
    subtype_model: Optional[str] = None
    workers: int = 1


@dataclass
class AnalysisOutput:
    """What the GUI thread needs: the prediction, its layer data, the slide's level-0 µm/px, timings (s)."""

    prediction: Prediction
    layers: LayerData
    mpp0: float
    timings: dict


def run_analysis(req: AnalysisRequest, progress: Optional[ProgressFn] = None,
                 should_stop: Optional[StopFn] = None) -> AnalysisOutput:
    """Predict the slide and prepare every result layer's data (runs in the worker thread)."""
    from napari_lnm.io import forced_mpp, open_slide
    from napari_lnm.pipeline import predict_slide

    with open_slide(req.path, mpp=forced_mpp(req.mpp)) as slide:
        pred = predict_slide(slide, req.bundle, rois=req.rois, config=req.config, keep_images=True,
                             clinical=req.clinical, subtype_model=req.subtype_model, progress=progress,
                             should_stop=should_stop, workers=req.workers)
        mpp0 = float(slide.mpp)
    if progress is not None:
        progress(0, 0, "building layers")
    t0 = time.perf_counter()
    data = build_layer_data(pred, req.bundle, mpp0, req.config.mpp, should_stop=should_stop)
    return AnalysisOutput(pred, data, mpp0, {"layer_data_s": time.perf_counter() - t0})

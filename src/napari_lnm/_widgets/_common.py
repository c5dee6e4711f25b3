"""Shared napari-side plumbing: slide layers, ROIs, result-layer replacement, background runs, shared results."""

from __future__ import annotations

import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from qtpy.QtCore import QEvent, QObject, Signal
from qtpy.QtWidgets import QApplication

from napari_lnm.model import ModelBundle
from napari_lnm.prediction import Prediction
from napari_lnm.errors import UserError
from napari_lnm.progress import Cancelled

from napari_lnm.tissue import ROI_COLOURS, ROI_INCLUDE, rois_from_napari, rois_to_napari

from ._layers import world_to_level0

PATH_KEY = "napari_lnm_path"
MPP_KEY = "mpp"
AUTO_TISSUE = "auto tissue"
# fixed names of the result layers: a second run replaces them


# ----------------------------------------------------------------------------- slide layers
def is_result_layer(layer) -> bool:
    """True for a layer this plugin created as an analysis result."""
    return bool(layer.metadata.get("napari_lnm_result", False))


def slide_layers(viewer) -> list:
    """Image layers that can be analysed: napari-lnm slides first, then other 2-D RGB(-like) images."""
    from napari.layers import Image

    ours, other = [], []
    for layer in viewer.layers:
        if not isinstance(layer, Image) or is_result_layer(layer):
            continue
        (ours if PATH_KEY in layer.metadata else other).append(layer)
    return ours + other


def layer_mpp(layer) -> Optional[float]:
    """µm/px at level 0 of a slide layer: its metadata, else its napari scale if that is not the default 1."""
    mpp = layer.metadata.get(MPP_KEY)
    if mpp:
        return float(mpp)
    sc = float(layer.scale[-1])
    return sc if sc != 1.0 else None


def layer_path(layer) -> Optional[str]:
    """The file behind a slide layer (napari-lnm metadata, else napari's source path)."""
    p = layer.metadata.get(PATH_KEY)
    if p:
        return str(p)
    src = getattr(getattr(layer, "source", None), "path", None)
    return str(src) if src else None


def _level0_array(layer) -> np.ndarray:
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return np.asarray(data)


def slide_file_for(layer, tmpdir: Path) -> str:
    """A path that io.open_slide can read for this layer: its file, or the in-memory image saved as TIFF in ``tmpdir``."""
    p = layer_path(layer)
    if p and Path(p).exists():
        return p
    arr = _level0_array(layer)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise UserError(f"layer '{layer.name}': not an RGB image (shape {arr.shape})")
    if arr.shape[0] * arr.shape[1] > 12000 * 12000:
        raise UserError(f"layer '{layer.name}': in-memory image too large; open the slide file instead")
    if arr.dtype != np.uint8:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = ((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    import tifffile

    out = Path(tmpdir) / f"{abs(hash(layer.name))}.tif"
    tifffile.imwrite(out, np.ascontiguousarray(arr[..., :3]), photometric="rgb")
    return str(out)


def _roi_kinds(shapes_layer) -> list:
    """Each shape's ``roi_kind`` feature ("include" / "exclude"); shapes without one are included."""
    feats = getattr(shapes_layer, "features", None)
    if feats is None or "roi_kind" not in feats:
        return [ROI_INCLUDE] * len(shapes_layer.data)
    return [k if isinstance(k, str) and k else ROI_INCLUDE for k in feats["roi_kind"]]


def rois_from_shapes(shapes_layer, slide_layer):
    """The ROI drawn on a Shapes layer as a level-0 ``(x, y)`` px MultiPolygon of the slide layer.

    A shape whose ``roi_kind`` feature is "exclude" is a hole cut out of the shapes before it
    (before any included shape: out of the whole slide).
    """
    rings, kinds = [], []
    for data, kind, roi_kind in zip(shapes_layer.data, shapes_layer.shape_type, _roi_kinds(shapes_layer)):
        if kind in ("line", "path") or len(data) < 3:
            continue
        world = np.asarray(data, float)[:, -2:] * np.asarray(shapes_layer.scale)[-2:] + np.asarray(shapes_layer.translate)[-2:]
        rings.append(world_to_level0(world, slide_layer.scale, slide_layer.translate))  # (row, col) level-0 px
        kinds.append(roi_kind)
    data = slide_layer.data[0] if getattr(slide_layer, "multiscale", False) else slide_layer.data
    rows, cols = data.shape[:2] if getattr(slide_layer, "rgb", False) else data.shape[-2:]
    roi = rois_from_napari(rings, kinds, extent=(cols, rows))
    if roi is None:
        raise UserError(f"Shapes layer '{shapes_layer.name}': draw at least one polygon or rectangle as the ROI")
    if roi.is_empty:
        raise UserError(f"Shapes layer '{shapes_layer.name}': the excluded shapes cover the whole ROI")
    return roi


def add_roi_layer(viewer, rois, slide_layer, name: str = "ROI"):
    """Add an ROI (level-0 ``(x, y)`` polygons or a MultiPolygon) as an editable Shapes layer on ``slide_layer``.

    napari shapes have no holes: each hole is its own shape with ``roi_kind`` "exclude" (red edge).
    """
    data, kinds = rois_to_napari(rois)
    if not data:
        raise UserError("the ROI file has no polygon")
    layer = viewer.add_shapes(data, shape_type="polygon", name=name,
                              scale=tuple(slide_layer.scale[-2:]), translate=tuple(slide_layer.translate[-2:]),
                              edge_color=[ROI_COLOURS[k] for k in kinds], face_color="transparent",
                              edge_width=max(2.0, max(float(np.ptp(p, axis=0).max()) for p in data) / 300),
                              features={"roi_kind": kinds}, units=("um", "um"))
    layer.feature_defaults = {"roi_kind": ROI_INCLUDE}  # newly drawn shapes add to the ROI
    layer.current_edge_color = ROI_COLOURS[ROI_INCLUDE]
    return layer


# ----------------------------------------------------------------------------- result layers
def replace_layer(viewer, name: str, add: Callable[..., Any], data, **kwargs):
    """Add a result layer named ``name``, replacing the previous one of that name (keeps its position in the list)."""
    meta = dict(kwargs.pop("metadata", {}) or {})
    meta["napari_lnm_result"] = True
    kwargs.setdefault("units", ("um", "um"))
    index = None
    if name in viewer.layers:
        old = viewer.layers[name]
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
    layer = add(data, name=name, metadata=meta, **kwargs)
    if index is not None:
        viewer.layers.move(viewer.layers.index(layer), index)
    return layer


# ----------------------------------------------------------------------------- shared results
@dataclass
class AnalysisResult:
    """The last analysis in a viewer: what Inspect and Export widgets read."""

    prediction: Prediction
    bundle: ModelBundle
    slide_path: str
    mpp0: float
    work_mpp: float
    rois: Any = None  # the ROI MultiPolygon (level-0 (x, y) px) or None
    model_path: str = ""
    extra: dict = field(default_factory=dict)


class _Hub(QObject):
    changed = Signal(object)  # viewer_key(viewer) of the viewer whose result changed


_HUB: Optional[_Hub] = None
_RESULTS: dict[int, AnalysisResult] = {}


def hub() -> _Hub:
    """The process-wide signal emitter for result changes."""
    global _HUB
    if _HUB is None:
        _HUB = _Hub()
    return _HUB


def unwrap_viewer(viewer):
    """The real object (viewer, layer) behind napari's PublicOnlyProxy (plugins get a proxy per widget)."""
    while hasattr(viewer, "__wrapped__"):
        viewer = viewer.__wrapped__
    return viewer


def viewer_key(viewer) -> int:
    """Identity of a viewer shared by all widgets docked in it."""
    return id(unwrap_viewer(viewer))


def set_result(viewer, result: Optional[AnalysisResult]) -> None:
    """Publish (or clear) the analysis result of ``viewer``."""
    real = unwrap_viewer(viewer)
    key = id(real)
    if result is None:
        _RESULTS.pop(key, None)
    else:
        if key not in _RESULTS:
            weakref.finalize(real, _RESULTS.pop, key, None)
        _RESULTS[key] = result
    hub().changed.emit(key)


def get_result(viewer) -> Optional[AnalysisResult]:
    """The last analysis result of ``viewer``, if any."""
    return _RESULTS.get(viewer_key(viewer))


# ----------------------------------------------------------------------------- background runs
class Runner(QObject):
    """Runs one core call in a napari thread worker with progress and cooperative cancel.

    ``job(progress, should_stop)`` runs off the GUI thread; ``progress`` emits the
    ``progressed`` signal (queued to the GUI thread), ``should_stop`` reads a
    ``threading.Event`` that :meth:`cancel` sets.
    """

    progressed = Signal(int, int, str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._stop = threading.Event()
        self._worker = None
        self._done = threading.Event()
        self._done.set()
        self._live = {"on": True}

    @property
    def running(self) -> bool:
        """True while a job is in flight."""
        return not self._done.is_set()

    def start(self, job: Callable, on_done: Callable[[Any], None], on_error: Callable[[BaseException], None],
              on_cancelled: Callable[[], None], on_finished: Callable[[], None] = lambda: None) -> None:
        """Start ``job`` in a worker thread; exactly one of the callbacks runs in the GUI thread at the end."""
        from napari.qt.threading import create_worker

        if self.running:
            raise UserError("a run is already in progress; cancel it first")
        self._stop = threading.Event()
        self._done = threading.Event()
        self._live = live = {"on": True}  # cleared by detach(): the widget is gone, skip its callbacks
        stop, done = self._stop, self._done
        emit = self.progressed.emit
        cancelled = object()

        def report(d, t, m=""):
            if live["on"]:
                emit(int(d), int(t), str(m))

        def body():
            try:
                return job(report, stop.is_set)
            except Cancelled:
                return cancelled  # a normal end, not an error to log
            finally:
                done.set()

        worker = create_worker(body, _start_thread=False)

        def guard(fn):
            def call(*a):
                if live["on"]:
                    fn(*a)
            return call

        def _returned(value):
            if value is cancelled or stop.is_set():
                on_cancelled()
            else:
                on_done(value)

        def _errored(exc):
            if isinstance(exc, Cancelled) or stop.is_set():
                on_cancelled()
            else:
                on_error(exc)

        worker.returned.connect(guard(_returned))
        worker.errored.connect(guard(_errored))
        worker.finished.connect(guard(on_finished))
        worker.finished.connect(self._forget)
        self._worker = worker
        worker.start()

    def detach(self) -> None:
        """Stop delivering callbacks and progress (the widget is being destroyed); also cancels."""
        self._live["on"] = False
        self._stop.set()

    def _forget(self, *_) -> None:
        self._worker = None

    def cancel(self) -> None:
        """Ask the running job to stop (it polls ``should_stop`` between tiles)."""
        self._stop.set()

    def wait(self, timeout: float = 5.0) -> bool:
        """Block until the job has ended (GUI callbacks may still be queued); True if it ended."""
        return self._done.wait(timeout)


class CloseWatcher(QObject):
    """Calls ``callback`` once when the top-level window of ``widget`` closes, or the application quits."""

    def __init__(self, widget, callback: Callable[[], None]):
        super().__init__(widget)
        self._cb = callback
        self._fired = False
        self._watched = None
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._fire)

    def attach(self, widget) -> None:
        """(Re)attach to the current top-level window of ``widget``."""
        top = widget.window()
        current = self._watched() if self._watched is not None else None
        if top is not None and top is not current and top is not widget:
            top.installEventFilter(self)
            self._watched = weakref.ref(top)  # never keep the main window alive

    def eventFilter(self, obj, event):  # noqa: N802 (Qt name)
        if event.type() == QEvent.Type.Close:
            self._fire()
        return False

    def _fire(self):
        if not self._fired:
            self._fired = True
            cb, self._cb = self._cb, None
            cb()


_SCRATCH: Optional[tempfile.TemporaryDirectory] = None


def path_row(edit, on_browse: Callable[[], None]):
    """A row holding ``edit`` and a narrow '…' button that calls ``on_browse`` (a file/folder picker)."""
    from qtpy.QtWidgets import QHBoxLayout, QPushButton

    row = QHBoxLayout()
    button = QPushButton("…")
    button.setFixedWidth(30)
    button.clicked.connect(on_browse)
    row.addWidget(edit)
    row.addWidget(button)
    return row


def scratch_dir() -> Path:
    """A per-process temporary folder for in-memory images saved as files."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = tempfile.TemporaryDirectory(prefix="napari_lnm_")
    return Path(_SCRATCH.name)


def notify_error(exc: BaseException) -> None:
    """Show an error in napari's notification area (one line for UserError, the message otherwise)."""
    from napari.utils.notifications import show_error

    if isinstance(exc, UserError):
        show_error(str(exc))
    else:
        show_error(f"{type(exc).__name__}: {exc}")

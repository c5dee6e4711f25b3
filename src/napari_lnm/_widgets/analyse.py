"""Analyse slide: ROI + model -> pipeline.predict_slide in a worker -> aligned result layers and a chart."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGridLayout, QHBoxLayout, QLabel, QLineEdit,
    QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from napari_lnm.errors import UserError
from napari_lnm.explain import cell_summary_text
from napari_lnm.model import ModelBundle, evidence_text
from napari_lnm.pipeline import default_workers

from ._charts import ChartCanvas
from ._common import (
    AUTO_TISSUE, AnalysisResult, CloseWatcher, Runner, add_roi_layer, layer_mpp, notify_error, replace_layer,
    path_row, rois_from_shapes, scratch_dir, set_result, slide_file_for, slide_layers, unwrap_viewer,
)
from ._layers import display_pyramid, square_corners
from ._analysis import AnalysisRequest, load_bundle, parse_clinical, run_analysis
from ._result import LayerData
from ._subtype import SUBTYPE_COLOURS, subtype_colour, subtype_counts, subtype_summary, subtype_title, tile_reason

DEMO_MODEL = Path(__file__).resolve().parents[1] / "data" / "demo_model"
MAGNIFICATIONS = ("5", "10", "20", "40")
TILE_SIZES = ("224", "256", "299", "512", "1024")
KIND_LEGEND = ("nucleus size", "nucleus texture", "arrangement", "tile texture", "immune and cell mix", "other")


HOVER_HELP = "hover over a numbered key tile to read why it matters"
TYPE_HELP = "hover over a nucleus to read its type and probability"
TYPES_LAYER = "nucleus types"
SUBTYPE_HELP = "hover over a tile to read its predicted subtype and class probabilities"
SUBTYPE_LAYER = "subtype"
SUBTYPE_OPACITY = 0.45  # overlay layer opacity: the tissue stays visible under the class colours


def key_tile_reason(layer, index) -> str:
    """Status-bar text for key tile ``index`` of the key-tiles layer ('' if none)."""
    if index is None or index < 0 or index >= len(layer.data):
        return ""
    f = layer.features
    return f"key tile {int(f['rank'].iloc[index])} ({f['kind'].iloc[index]}): {f['reason'].iloc[index]}"


def _key_tile_hover(layer, event) -> None:
    """Mouse-move callback of the key-tiles layer: its help text (right of the status bar) gives the reason."""
    value = layer.get_value(event.position, view_direction=event.view_direction,
                            dims_displayed=event.dims_displayed, world=True)
    index = value[0] if isinstance(value, tuple) else value
    layer.help = key_tile_reason(layer, index) or HOVER_HELP


def nucleus_type_text(layer, position) -> str:
    """Status text for the typed nucleus under a world ``position`` of the nucleus-types layer ('' if none)."""
    from napari_lnm.nucleus_types import CELL_TYPES

    inst = layer.metadata.get("instance_labels")
    probs = layer.metadata.get("nucleus_type_prob")
    if inst is None or probs is None:
        return ""
    r, c = (int(np.floor(v + 0.5)) for v in layer.world_to_data(position)[-2:])
    if not (0 <= r < inst.shape[0] and 0 <= c < inst.shape[1]) or inst[r, c] == 0:
        return ""
    t = int(np.asarray(layer.data[0] if layer.multiscale else layer.data)[r, c])
    if t == 0:
        return ""
    return f"nucleus {int(inst[r, c])}: {CELL_TYPES[t - 1]} (p = {float(probs[inst[r, c]]):.2f})"


def _type_hover(layer, event) -> None:
    """Mouse-move callback of the nucleus-types layer: its help text gives the nucleus' type and probability."""
    layer.help = nucleus_type_text(layer, event.position) or TYPE_HELP


def _subtype_hover(layer, event) -> None:
    """Mouse-move callback of the subtype overlay: its help text gives the tile's subtype and probabilities."""
    value = layer.get_value(event.position, view_direction=event.view_direction,
                            dims_displayed=event.dims_displayed, world=True)
    index = value[0] if isinstance(value, tuple) else value
    layer.help = tile_reason(layer.features, index) or SUBTYPE_HELP


class AnalyseWidget(QWidget):
    """Dock widget: pick slide, ROI, model and tiling, run the prediction, show results as layers."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.runner = Runner(self)
        self.runner.progressed.connect(self._on_progress)
        self._watch = CloseWatcher(self, self._on_viewer_closing)
        self._closing = False
        self._run_slide_layer = None
        self._run_started = 0.0
        self.last_run_seconds: Optional[float] = None
        self.last_status = ""
        self._steps: list = []
        self.step_seconds: list[float] = []  # GUI-thread seconds of each display step of the last run
        self._show_t0 = 0.0
        self.timings: dict[str, float] = {}  # seconds: layer_data_s (worker), show_s (GUI thread)
        self.chart: Optional[ChartCanvas] = None
        self.subtype_chart: Optional[ChartCanvas] = None  # H tile counts per subtype, under the importance chart
        self._chart_dock = None
        self._build_ui()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self._refresh_layers()

    def showEvent(self, event):  # noqa: N802
        self._watch.attach(self)
        super().showEvent(event)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        form = QFormLayout()
        self.slide_combo = QComboBox()
        self.slide_combo.currentIndexChanged.connect(self._on_slide_changed)
        form.addRow("Slide layer", self.slide_combo)
        self.mpp_spin = QDoubleSpinBox(decimals=4, minimum=0.0, maximum=50.0, singleStep=0.05)
        self.mpp_spin.setSpecialValueText("from slide")
        self.mpp_spin.setSuffix(" µm/px")
        self.mpp_spin.setToolTip("Level-0 µm per pixel; needed for plain photos without metadata")
        form.addRow("Slide µm/px", self.mpp_spin)
        roi_row = QHBoxLayout()
        self.roi_combo = QComboBox()
        import_btn = QPushButton("Import…")
        import_btn.setToolTip("Load ROI polygons from a QuPath GeoJSON file (level-0 pixel coordinates)")
        import_btn.clicked.connect(self._browse_roi)
        roi_row.addWidget(self.roi_combo, 1)
        roi_row.addWidget(import_btn)
        form.addRow("ROI", roi_row)
        self.model_edit = QLineEdit(str(DEMO_MODEL) if DEMO_MODEL.is_dir() else "")
        self.model_edit.setPlaceholderText("model bundle folder")
        self.model_edit.editingFinished.connect(self._on_model_edited)
        form.addRow("Model", path_row(self.model_edit, self._browse_model))
        self.clinical_edit = QLineEdit("")
        form.addRow("Clinical values", self.clinical_edit)
        self.subtype_edit = QLineEdit("")
        self.subtype_edit.setPlaceholderText("optional: subtype CNN folder (routes to per-subtype models)")
        form.addRow("Subtype model", path_row(self.subtype_edit, self._browse_subtype))
        self.mag_combo = QComboBox()
        self.mag_combo.addItems([f"{m}x" for m in MAGNIFICATIONS])
        self.mag_combo.setCurrentText("20x")
        form.addRow("Magnification", self.mag_combo)
        self.tile_combo = QComboBox()
        self.tile_combo.addItems(TILE_SIZES)
        self.tile_combo.setCurrentText("512")
        form.addRow("Tile size (px)", self.tile_combo)
        self._on_model_edited()
        self.max_tiles = QSpinBox(minimum=0, maximum=100000, value=200)
        self.max_tiles.setSpecialValueText("all")
        form.addRow("Max tiles", self.max_tiles)
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        form.addRow("Seed", self.seed)

        buttons = QHBoxLayout()
        self.run_btn = QPushButton("Run")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)

        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m tiles")
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        self.prob_label = QLabel("–")
        self.prob_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.prob_label.setStyleSheet("font-size: 26pt; font-weight: bold;")
        self.prob_caption = QLabel("metastasis probability")
        self.prob_caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.evidence_label = QLabel("")  # what stands behind the number: CV AUC, slides, calibration, demo note
        self.evidence_label.setWordWrap(True)
        self.evidence_label.setStyleSheet("color: #b0b0b0; font-size: 9pt;")
        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)

        from napari_lnm.explain import KIND_COLOURS

        legend = QGridLayout()
        legend.addWidget(QLabel("Key tiles:"), 0, 0, 1, 2)
        for i, kind in enumerate(KIND_LEGEND):
            sw = QLabel()
            sw.setFixedSize(14, 14)
            sw.setStyleSheet(f"background: {KIND_COLOURS[kind]}; border: 1px solid #333;")
            legend.addWidget(sw, 1 + i // 2, 2 * (i % 2))
            legend.addWidget(QLabel("other (deep, clinical)" if kind == "other" else kind), 1 + i // 2,
                             2 * (i % 2) + 1)

        self.subtype_label = QLabel("")
        self.subtype_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.subtype_label.setStyleSheet("font-size: 14pt; font-weight: bold;")
        self.subtype_label.setVisible(False)
        self.subtype_model_label = QLabel("")
        self.subtype_model_label.setWordWrap(True)
        self.subtype_model_label.setVisible(False)
        self.overlay_box = QCheckBox("show subtype overlay")
        self.overlay_box.setChecked(True)
        self.overlay_box.setToolTip("Show the per-tile subtype layer (needs a subtype model)")
        self.overlay_box.toggled.connect(self._set_overlay_visible)
        self.subtype_legend = QWidget()  # shown only when a run had a subtype model
        self.subtype_legend.setVisible(False)
        sub_legend = QGridLayout(self.subtype_legend)
        sub_legend.setContentsMargins(0, 0, 0, 0)
        sub_legend.addWidget(self.overlay_box, 0, 0, 1, 4)
        for i, (name, colour) in enumerate(SUBTYPE_COLOURS.items()):
            sw = QLabel()
            sw.setFixedSize(14, 14)
            sw.setStyleSheet(f"background: {colour}; border: 1px solid #333;")
            sub_legend.addWidget(sw, 1 + i // 2, 2 * (i % 2))
            sub_legend.addWidget(QLabel(subtype_title(name)), 1 + i // 2, 2 * (i % 2) + 1)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.prob_label)
        lay.addWidget(self.prob_caption)
        lay.addWidget(self.evidence_label)
        lay.addWidget(self.info_label)
        lay.addWidget(self.subtype_label)
        lay.addWidget(self.subtype_model_label)
        lay.addLayout(legend)
        lay.addWidget(self._type_legend())
        lay.addWidget(self.subtype_legend)
        lay.addStretch(1)

    def _type_legend(self) -> QWidget:
        """The 'colour nuclei by type' toggle and the type colours (QuPath's Tumor/Immune/Stroma/Other)."""
        from napari_lnm.nucleus_types import CELL_TYPES, TYPE_COLOURS

        box = QWidget()
        grid = QGridLayout(box)
        grid.setContentsMargins(0, 0, 0, 0)
        self.type_box = QCheckBox("colour nuclei by type")
        self.type_box.setToolTip("Switch the nuclei between type colours (with hover: type and probability) "
                                 "and one colour per nucleus")
        self.type_box.toggled.connect(self._show_types)
        grid.addWidget(self.type_box, 0, 0, 1, 4)
        for i, (name, rgb) in enumerate(zip(CELL_TYPES, TYPE_COLOURS)):
            sw = QLabel()
            sw.setFixedSize(14, 14)
            sw.setStyleSheet(f"background: rgb{tuple(rgb)}; border: 1px solid #333;")
            grid.addWidget(sw, 1 + i // 2, 2 * (i % 2))
            grid.addWidget(QLabel(name), 1 + i // 2, 2 * (i % 2) + 1)
        return box

    def _show_types(self, checked: bool) -> None:
        """Show the typed nuclei layer instead of the instance-coloured one (or back)."""
        for name, visible in ((TYPES_LAYER, checked), ("nuclei", not checked)):
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = visible

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Shapes

        cur_slide, cur_roi = self.slide_combo.currentText(), self.roi_combo.currentText()
        self.slide_combo.blockSignals(True)
        self.slide_combo.clear()
        self.slide_combo.addItems([lyr.name for lyr in slide_layers(self.viewer)])
        if cur_slide:
            self.slide_combo.setCurrentText(cur_slide)
        self.slide_combo.blockSignals(False)
        self.roi_combo.clear()
        shapes = [lyr.name for lyr in self.viewer.layers
                  if isinstance(lyr, Shapes) and not lyr.metadata.get("napari_lnm_result")]
        self.roi_combo.addItems(shapes + [AUTO_TISSUE])
        if cur_roi and cur_roi in shapes + [AUTO_TISSUE]:
            self.roi_combo.setCurrentText(cur_roi)
        self._on_slide_changed()

    def _on_slide_changed(self, *_):
        layer = self.slide_layer()
        if layer is not None:
            mpp = layer_mpp(layer)
            self.mpp_spin.setValue(mpp or 0.0)
            if layer.metadata.get("mpp_source") == "default" or not mpp:
                self.status.setText(f"'{layer.name}' has no pixel size: check 'Slide µm/px' "
                                    f"(the objective's µm per pixel) before running")

    def _browse_model(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a model bundle folder", self.model_edit.text())
        if path:
            self.set_model_path(path)

    def _browse_roi(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import ROI (QuPath GeoJSON)", "",
                                              "GeoJSON (*.geojson *.json);;All files (*)")
        if path:
            self.import_roi(path)

    def import_roi(self, path: str):
        """Add the ROI of a GeoJSON file (holes as "exclude" shapes) as a Shapes layer on the slide; select it."""
        from napari_lnm.tissue import load_rois

        try:
            layer = self.slide_layer()
            if layer is None:
                raise UserError("open the slide before importing its ROI")
            shapes = add_roi_layer(self.viewer, load_rois(path), layer, name=f"ROI {Path(path).stem}")
        except UserError as exc:
            notify_error(exc)
            return None
        self._refresh_layers()
        self.roi_combo.setCurrentText(shapes.name)
        return shapes

    def _browse_subtype(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a subtype model folder", self.subtype_edit.text())
        if path:
            self.subtype_edit.setText(path)

    def set_model_path(self, path: str) -> bool:
        """Set the model bundle; a wrong file gives a napari notification and returns False."""
        self.model_edit.setText(str(path))
        try:
            self._show_tiling(load_bundle(path))
        except UserError as exc:
            notify_error(exc)
            return False
        return True

    def _on_model_edited(self) -> None:
        """The model path was typed: show its tiling (a wrong path is reported when Run is pressed)."""
        try:
            self._show_tiling(load_bundle(self.model_edit.text()))
        except UserError:
            self._show_tiling(None)

    def _show_tiling(self, bundle: Optional[ModelBundle]) -> None:
        """Lock magnification and tile size to the bundle's training tiling, if it records one, and ask for
        clinical values only when the model uses them (None: no readable model chosen)."""
        enc = bundle.clinical if bundle is not None else None
        cols = list(enc.columns) if enc is not None and enc.columns else []
        self.clinical_edit.setEnabled(bool(cols))
        if cols:
            hint = "; ".join(f"{c}=" + ("number" if c in enc.numeric else "|".join(enc.categories.get(c, [])))
                             for c in cols)
            self.clinical_edit.setPlaceholderText(hint)
            self.clinical_edit.setToolTip(f"the model uses clinical values: {hint}")
        else:
            self.clinical_edit.setPlaceholderText("the model uses none")
            self.clinical_edit.setToolTip("")
        from napari_lnm.provenance import recorded_tiling

        recorded = recorded_tiling(bundle)
        for combo in (self.mag_combo, self.tile_combo):
            combo.setEnabled(recorded is None)
        if recorded is None:
            self.mag_combo.setToolTip("")
            self.tile_combo.setToolTip("")
            return
        self.mag_combo.setCurrentText(f"{recorded.magnification:g}x")
        self.tile_combo.setCurrentText(str(recorded.tile_size))
        tip = (f"set by the model: trained on {recorded.tile_size} px tiles at {recorded.magnification:g}x, "
               f"{recorded.segmentation} nucleus segmentation")
        if recorded.deep is not None:
            tip += f", deep features of {recorded.deep.arch} ({recorded.deep.weights})"
        self.mag_combo.setToolTip(tip)
        self.tile_combo.setToolTip(tip)

    def slide_layer(self):
        """The currently chosen slide layer, or None."""
        name = self.slide_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def config(self, bundle=None):
        """The TilingConfig: the bundle's training tiling (magnification, tile size, tissue, segmentation)
        when it records one, else the form's; max tiles and seed always from the form."""
        from napari_lnm.provenance import recorded_tiling
        from napari_lnm.tiling import TilingConfig

        recorded = recorded_tiling(bundle)
        if recorded is not None:
            self._show_tiling(bundle)
            return replace(recorded, max_tiles=self.max_tiles.value() or None, seed=self.seed.value())
        return TilingConfig(
            magnification=float(self.mag_combo.currentText().rstrip("x")),
            tile_size=int(self.tile_combo.currentText()),
            max_tiles=self.max_tiles.value() or None,
            seed=self.seed.value(),
        )

    # ------------------------------------------------------------------ run
    def run(self) -> bool:
        """Start the analysis in a worker thread; returns False (with a notification) if it cannot start."""
        if self.runner.running:
            return False
        self._watch.attach(self)
        try:
            job, meta = self._prepare()
        except UserError as exc:
            notify_error(exc)
            return False
        self._run_slide_layer = meta["layer"]
        self._run_started = time.perf_counter()
        self.progress.setRange(0, 0)
        self.status.setText("running…")
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.runner.start(
            job,
            on_done=lambda value: self._on_done(value, meta),
            on_error=self._on_error,
            on_cancelled=self._on_cancelled,
            on_finished=self._on_finished,
        )
        return True

    def _prepare(self):
        from napari.layers import Shapes

        layer = self.slide_layer()
        if layer is None:
            raise UserError("no slide layer: open a slide (File > Open) first")
        mpp0 = self.mpp_spin.value() or layer_mpp(layer)
        if not mpp0:
            raise UserError(f"layer '{layer.name}': unknown µm/px; enter the slide's µm/px")
        meta_mpp = layer.metadata.get("mpp")
        if meta_mpp and layer.metadata.get("mpp_source") != "default" and abs(mpp0 - float(meta_mpp)) < 1e-4:
            mpp0 = None  # the slide's own metadata (the box shows it rounded)
        path = slide_file_for(layer, scratch_dir())
        roi_name = self.roi_combo.currentText()
        rois = None
        if roi_name and roi_name != AUTO_TISSUE:
            shapes = self.viewer.layers[roi_name]
            if not isinstance(shapes, Shapes):
                raise UserError(f"layer '{roi_name}' is not a Shapes layer")
            rois = rois_from_shapes(shapes, layer)
        model_path = self.model_edit.text()
        bundle = load_bundle(model_path)
        config = self.config(bundle)
        clinical = parse_clinical(self.clinical_edit.text()) if self.clinical_edit.isEnabled() else None
        enc = bundle.clinical
        if clinical is None and enc is not None and enc.columns:
            raise UserError(f"the model uses clinical values: enter {', '.join(enc.columns)} "
                            f"(e.g. {self.clinical_edit.placeholderText()})")
        work_mpp = config.mpp
        subtype_model = self.subtype_edit.text().strip() or None
        if subtype_model and not Path(subtype_model).expanduser().is_dir():
            raise UserError(f"{subtype_model}: subtype model folder not found")

        request = AnalysisRequest(path=path, bundle=bundle, config=config, mpp=mpp0, rois=rois, clinical=clinical,
                                  subtype_model=subtype_model, workers=default_workers())

        def job(progress, should_stop):
            out = run_analysis(request, progress, should_stop)
            self.timings.update(out.timings)
            return out.prediction, out.layers, out.mpp0

        meta = dict(layer=layer, path=path, rois=rois, bundle=bundle, model_path=model_path, work_mpp=work_mpp)
        return job, meta

    def cancel(self) -> None:
        """Ask the running analysis to stop (it stops at the next tile, well within a second)."""
        if self.runner.running:
            self.runner.cancel()
            self.status.setText("cancelling…")

    # ------------------------------------------------------------------ callbacks (GUI thread)
    def _on_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
        else:
            self.progress.setRange(0, 0)
        if message:
            self.status.setText(message)

    def _on_finished(self) -> None:
        if not self._steps:  # else the last display step re-enables Run
            self.run_btn.setEnabled(True)
            self.cancel_btn.setEnabled(False)
        self.last_run_seconds = time.perf_counter() - self._run_started
        self._run_slide_layer = None

    def _on_cancelled(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.last_status = "cancelled"
        self.status.setText("cancelled")

    def _on_error(self, exc: BaseException) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.last_status = f"error: {exc}"
        self.status.setText(f"error: {exc}")
        notify_error(exc)

    def _on_done(self, value, meta) -> None:
        if self._closing or meta["layer"] not in self.viewer.layers:
            self.last_status = "discarded"
            return
        pred, data, mpp0 = value
        steps = self.display_steps(pred, data, meta["layer"], mpp0)
        steps.insert(1, lambda: self.evidence_label.setText(evidence_text(meta["bundle"], pred.probability)))

        def publish():
            set_result(self.viewer, AnalysisResult(
                prediction=pred, bundle=meta["bundle"], slide_path=meta["path"], mpp0=mpp0,
                work_mpp=meta["work_mpp"], rois=meta["rois"], model_path=meta["model_path"],
                extra={"slide_layer": meta["layer"].name},
            ))
            n = len(pred.tiles)
            self.progress.setRange(0, max(n, 1))
            self.progress.setValue(n)
            self.last_status = "done"
            self.status.setText(f"done: {n} tiles in {time.perf_counter() - self._run_started:.1f} s")

        self._steps = steps + [publish]
        self.step_seconds = []
        self._show_t0 = time.perf_counter()
        self.status.setText("adding result layers…")
        self._next_step()

    def _next_step(self) -> None:
        """Run one display step, then yield to the event loop (the viewer stays responsive between layers)."""
        from qtpy.QtCore import QTimer

        if self._closing:
            self._steps = []
        if self._steps:
            step = self._steps.pop(0)
            t0 = time.perf_counter()
            step()
            self.step_seconds.append(time.perf_counter() - t0)
        if self._steps:
            QTimer.singleShot(0, self._next_step)
        else:
            self.timings["show_s"] = time.perf_counter() - self._show_t0
            if not self.runner.running and not self._closing:
                self.run_btn.setEnabled(True)
                self.cancel_btn.setEnabled(False)

    def _on_layer_removed(self, event) -> None:
        if (self.runner.running and self._run_slide_layer is not None
                and unwrap_viewer(event.value) is unwrap_viewer(self._run_slide_layer)):
            self.runner.cancel()
            self.status.setText("slide layer removed: stopping")
        self._refresh_layers()

    def _on_viewer_closing(self) -> None:
        """The main window closes: stop and join the worker, then let go of the viewer."""
        self._closing = True
        self.runner.detach()  # no more callbacks into this widget, even ones already queued
        if self.runner.running:
            self.runner.wait(10.0)
        for ev, cb in ((self.viewer.layers.events.inserted, self._refresh_layers),
                       (self.viewer.layers.events.removed, self._on_layer_removed)):
            try:
                ev.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
        set_result(self.viewer, None)

    # ------------------------------------------------------------------ result display
    def display_steps(self, pred: Any, data: LayerData, slide_layer, mpp0: float) -> list:
        """Closures that create (or replace) the result layers, probability label and chart, one per step."""
        v = self.viewer
        scale0 = tuple(slide_layer.scale[-2:])
        trans0 = tuple(slide_layer.translate[-2:])
        steps = [lambda: self._show_probability(pred)]
        if data.mosaic is not None:
            m = data.mosaic
            # mosaic placement is in true µm (level-0 px x mpp0); the slide layer may show level-0 px at
            # another scale (e.g. a photo opened at a default µm/px the user corrected): map through it
            kr, kc = scale0[0] / mpp0, scale0[1] / mpp0
            mscale = (m.scale[0] * kr, m.scale[1] * kc)
            tr = (m.translate[0] * kr + trans0[0], m.translate[1] * kc + trans0[1])
            h_img, e_img, lab = display_pyramid(m.h), display_pyramid(m.e), display_pyramid(m.labels)
            steps += [
                lambda: replace_layer(v, "H", v.add_image, h_img, scale=mscale, translate=tr, colormap="magenta",
                                      blending="additive", contrast_limits=data.h_limits, visible=False),
                lambda: replace_layer(v, "E", v.add_image, e_img, scale=mscale, translate=tr, colormap="gray",
                                      blending="additive", contrast_limits=data.e_limits, visible=False),
                lambda: replace_layer(v, "nuclei", v.add_labels, lab, scale=mscale, translate=tr, opacity=0.5,
                                      visible=not self.type_box.isChecked()),
            ]
            if data.type_labels is not None:
                steps.append(lambda: self._add_type_layer(data, display_pyramid(data.type_labels), mscale, tr))
        for name, vec, colour in (("voronoi", data.voronoi, "yellow"), ("delaunay", data.delaunay, "cyan")):
            steps.append(lambda name=name, vec=vec, colour=colour: replace_layer(
                v, name, v.add_vectors, vec, scale=scale0, translate=trans0, edge_width=1.0, edge_color=colour,
                vector_style="line", visible=(name == "voronoi"), opacity=0.8))
        t = data.tiles
        feats = {"tile": np.arange(len(t))}
        if "tissue_fraction" in t:
            feats["tissue_fraction"] = t["tissue_fraction"].to_numpy()
        steps.append(lambda: replace_layer(
            v, "tiles", v.add_shapes, square_corners(t["x"], t["y"], t["size"]), shape_type="rectangle",
            scale=scale0, translate=trans0, edge_color="white", face_color="transparent",
            edge_width=max(float(t["size"].iloc[0]) / 100, 1.0) if len(t) else 1.0, features=feats, opacity=0.5))
        steps.append(lambda: self._show_subtype_layer(data, scale0, trans0))
        k = data.key_tiles

        def key_layer():
            if len(k):
                kfeat = {"rank": k["rank"].to_numpy(int), "kind": k["kind"].astype(str).to_numpy(),
                         "reason": k["reason"].astype(str).to_numpy()}
                layer = replace_layer(
                    v, "key tiles", v.add_shapes, square_corners(k["x"], k["y"], k["size"]),
                    shape_type="rectangle", scale=scale0, translate=trans0, edge_color=list(k["colour"]),
                    face_color="transparent", edge_width=max(float(k["size"].iloc[0]) / 30, 2.0), features=kfeat,
                    text={"string": "{rank}", "size": 20, "color": "black", "anchor": "upper_left"},
                )
                layer.help = HOVER_HELP
                layer.mouse_move_callbacks.append(_key_tile_hover)
            elif "key tiles" in v.layers:
                v.layers.remove("key tiles")
            v.layers.selection.active = v.layers["key tiles"] if "key tiles" in v.layers else None

        steps += [key_layer, lambda: self._show_chart(data.top_features),
                  lambda: self._show_subtype(pred, data.subtype_routing)]
        return steps

    def _add_type_layer(self, data: LayerData, types_img, scale, translate) -> None:
        """The 'nucleus types' Labels layer: type colours; hovering names a nucleus' type and probability."""
        from napari.utils.colormaps import DirectLabelColormap

        from napari_lnm.nucleus_types import TYPE_COLOURS

        colours = {0: "transparent", None: "transparent"}
        colours.update({k + 1: tuple(c / 255 for c in rgb) + (1.0,) for k, rgb in enumerate(TYPE_COLOURS)})
        layer = replace_layer(self.viewer, TYPES_LAYER, self.viewer.add_labels, types_img, scale=scale,
                              translate=translate, opacity=0.6, colormap=DirectLabelColormap(color_dict=colours),
                              visible=self.type_box.isChecked())
        layer.metadata["nucleus_type_prob"] = data.nucleus_type_prob
        layer.metadata["instance_labels"] = data.mosaic.labels
        layer.help = TYPE_HELP
        layer.mouse_move_callbacks.append(_type_hover)

    def _show_probability(self, pred: Any) -> None:
        p = float(pred.probability)
        colour = "#e31a1c" if p >= 0.5 else "#1a9850"
        self.prob_label.setText(f"{100 * p:.0f}%")
        self.prob_label.setStyleSheet(f"font-size: 26pt; font-weight: bold; color: {colour};")
        parts = [f"{len(pred.tiles)} tiles"]
        sub = pred.subtype
        model_name = Path(self.model_edit.text()).name
        if isinstance(sub, dict) and sub.get("model_used"):
            model_name += f" [{sub['model_used']}]"
        parts.append(f"model: {model_name}")
        clinical = pred.model.get("clinical")
        if clinical:
            parts.append("clinical: " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in clinical.items()))
        cells = cell_summary_text(pred.cell_summary)
        self.info_label.setText(" · ".join(parts) + (f"\n{cells}" if cells else ""))

    def _chart_panel(self) -> None:
        """Create the chart dock once: the feature-importance chart above the (initially hidden) subtype counts."""
        if self.chart is not None:
            return
        panel = QWidget()
        box = QVBoxLayout(panel)
        box.setContentsMargins(0, 0, 0, 0)
        self.chart = ChartCanvas()
        self.subtype_chart = ChartCanvas(4.0, 1.8)
        self.subtype_chart.setMinimumHeight(170)
        self.subtype_chart.setVisible(False)
        box.addWidget(self.chart, 3)
        box.addWidget(self.subtype_chart, 2)
        self._chart_dock = self.viewer.window.add_dock_widget(panel, name="Feature importance", area="right")

    def _show_chart(self, top: list[tuple[str, float]]) -> None:
        self._chart_panel()
        if top:
            names, vals = zip(*top)
            self.chart.show_importance(names, vals, title="Model's top features (gain)")
        else:
            self.chart.clear()

    def _show_subtype(self, pred: Any, routing: Optional[dict] = None) -> None:
        """Subtype headline, the LNM model used (and why), and the bar chart of tile counts per subtype."""
        sub = pred.subtype
        head, line = subtype_summary(sub, routing)
        self.subtype_label.setText(f"subtype: {head}" if head else "")
        self.subtype_label.setVisible(bool(head))
        self.subtype_model_label.setText(line)
        self.subtype_model_label.setVisible(bool(line))
        self.subtype_legend.setVisible(bool(head))
        self._chart_panel()
        names, counts = subtype_counts(sub)
        if head and len(names):
            self.subtype_label.setStyleSheet(
                f"font-size: 14pt; font-weight: bold; color: {subtype_colour(sub['subtype'])};")
            self.subtype_chart.show_counts(names, counts, [subtype_colour(n) for n in names],
                                           highlight=str(sub["subtype"]), title="Tile votes per subtype (H counts)")
            self.subtype_chart.setVisible(True)
        else:
            self.subtype_chart.clear()
            self.subtype_chart.setVisible(False)

    def _show_subtype_layer(self, data: LayerData, scale0, trans0) -> None:
        """Per-tile subtype rectangles (one colour per class), or remove a previous run's overlay."""
        v = self.viewer
        st = data.subtype_tiles
        if st is None or len(st) == 0:
            if SUBTYPE_LAYER in v.layers:
                v.layers.remove(SUBTYPE_LAYER)
            return
        colours = [subtype_colour(n) for n in st["subtype"]]
        layer = replace_layer(
            v, SUBTYPE_LAYER, v.add_shapes, square_corners(st["x"], st["y"], st["size"]), shape_type="rectangle",
            scale=scale0, translate=trans0, face_color=colours, edge_color=colours,
            edge_width=max(float(st["size"].iloc[0]) / 60, 1.0), features=st.reset_index(drop=True),
            opacity=SUBTYPE_OPACITY, visible=self.overlay_box.isChecked(),
        )
        layer.help = SUBTYPE_HELP
        layer.mouse_move_callbacks.append(_subtype_hover)
        layer.events.visible.connect(self._on_overlay_visible)

    def _set_overlay_visible(self, checked: bool) -> None:
        """The 'show subtype overlay' box shows or hides the subtype layer."""
        if SUBTYPE_LAYER in self.viewer.layers:
            self.viewer.layers[SUBTYPE_LAYER].visible = bool(checked)

    def _on_overlay_visible(self, event=None) -> None:
        """Keep the checkbox in step when the layer's eye is toggled in the layer list."""
        if SUBTYPE_LAYER in self.viewer.layers:
            self.overlay_box.blockSignals(True)
            self.overlay_box.setChecked(bool(self.viewer.layers[SUBTYPE_LAYER].visible))
            self.overlay_box.blockSignals(False)

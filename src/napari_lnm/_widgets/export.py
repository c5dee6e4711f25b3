"""Export: ROI, nuclei and key tiles as QuPath GeoJSON, results as JSON/CSV, a PNG report of the view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from napari_lnm._atomic import atomic_path, write_text_atomic
from napari_lnm.errors import UserError
from napari_lnm.nucleus_types import CELL_TYPES, TYPE_COLOURS

from ._common import AnalysisResult, CloseWatcher, Runner, get_result, notify_error, path_row
from ._layers import square_corners, tile_to_level0
from ._result import tile_analyses, top_features


def nucleus_polygons(labels: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Outline of every nucleus of a label image as ``(N, 2)`` (row, col) px polygons, and their ids."""
    from skimage.measure import find_contours, regionprops

    polys, ids = [], []
    for rp in regionprops(np.asarray(labels, np.int32)):
        mask = np.pad(rp.image, 1)
        cs = find_contours(mask.astype(np.uint8), 0.5)
        if not cs:
            continue
        c = max(cs, key=len)
        if len(c) < 3:
            continue
        r0, c0 = rp.bbox[0] - 1, rp.bbox[1] - 1
        polys.append(c + np.array([r0, c0], float))
        ids.append(rp.label)
    return polys, np.asarray(ids, int)


def nucleus_records(ta, ids: np.ndarray, mpp: float) -> list[dict]:
    """Per nucleus ``ids`` of a TileAnalysis: its type and QuPath measurements (µm, µm², OD; type probability)."""
    from napari_lnm.features.nucleus import nucleus_table

    table = nucleus_table(ta.labels, mpp, ta.h)
    row = {int(i): k for k, i in enumerate(table.ids)}
    trow = {int(i): k for k, i in enumerate(ta.ids)}
    keys = ("area", "perimeter", "eccentricity", "solidity", "h_mean", "h_std")
    out = []
    for nid in ids:
        k, t = row.get(int(nid)), trow.get(int(nid))
        rec = {f"Nucleus: {key}": float(table.values[k, table.columns.index(key)]) for key in keys} if k is not None else {}
        if t is not None and len(ta.types):
            rec["type"] = CELL_TYPES[int(ta.types[t])]
            rec["Nucleus: type probability"] = float(ta.type_probs[t].max())
        else:
            rec["type"] = "nucleus"
        out.append({k2: (v if np.isfinite(v) else None) if isinstance(v, float) else v for k2, v in rec.items()})
    return out


def export_all(res: AnalysisResult, out_dir: str | Path, stem: str = "lnm", progress=None,
               should_stop=None) -> dict[str, Path]:
    """Write ``<stem>_roi/nuclei/key_tiles.geojson``, ``<stem>_results.json``, ``_tiles.csv``, ``_key_tiles.csv``.

    Polygons are level-0 ``(x, y)`` px with pixel-edge coordinates (QuPath's convention).
    """
    from napari_lnm.progress import check_stop, report
    from napari_lnm.tissue import load_rois, write_geojson

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = res.prediction
    t = pred.tiles
    paths: dict[str, Path] = {}

    # ROI: the region used (holes as interior rings), or the analysed tiles when the ROI was automatic
    roi = load_rois(res.rois) if res.rois is not None else None
    if roi is not None and not roi.is_empty:
        rois = roi
        names = [f"ROI {i + 1}" for i in range(len(roi.geoms))]
    else:
        rois = [sq[:, ::-1] + 0.5 for sq in square_corners(t["x"], t["y"], t["size"])]
        names = [f"analysed tile {i}" for i in range(len(rois))]
    paths["roi"] = out / f"{stem}_roi.geojson"
    write_geojson(paths["roi"], rois, names=names)

    # nuclei: QuPath detections classified by type, with their measurements, contours in level-0 (x, y) px
    polys, props, names, colours = [], [], [], []
    items = tile_analyses(pred)
    for ti, (x, y, _s, a, _segments) in enumerate(items):
        check_stop(should_stop)
        report(progress, ti, len(items), "outlining nuclei")
        tp, ids = nucleus_polygons(a.labels)
        for p, nid, rec in zip(tp, ids, nucleus_records(a, ids, res.work_mpp)):
            rc = tile_to_level0(p, x, y, res.mpp0, res.work_mpp) + 0.5  # level-0 pixel-edge (QuPath) coords
            polys.append(rc[:, ::-1])
            names.append(rec.pop("type"))
            colours.append(TYPE_COLOURS[CELL_TYPES.index(names[-1])] if names[-1] in CELL_TYPES else (128, 128, 128))
            props.append({"tile": ti, "nucleus": int(nid), "measurements": rec})
    paths["nuclei"] = out / f"{stem}_nuclei.geojson"
    write_geojson(paths["nuclei"], polys, names=names, properties=props, object_type="detection", colors=colours)

    k = pred.key_tiles
    kp = [sq[:, ::-1] + 0.5 for sq in square_corners(k["x"], k["y"], k["size"])]
    kprops = [{"rank": int(r.rank), "kind": str(r.kind), "reason": str(r.reason)} for r in k.itertuples()]
    paths["key_tiles"] = out / f"{stem}_key_tiles.geojson"
    write_geojson(paths["key_tiles"], kp, names=[f"key tile {p['rank']}" for p in kprops], properties=kprops)

    summary = {
        "slide": res.slide_path,
        "model": res.model_path,
        "probability": float(pred.probability),
        "n_tiles": int(len(t)),
        "mpp_level0": res.mpp0,
        "mpp_working": res.work_mpp,
        "subtype": pred.subtype,
        "top_features": [{"feature": n, "importance": v} for n, v in top_features(pred, res.bundle)],
        "key_tiles": json.loads(k.to_json(orient="records")) if len(k) else [],
    }
    paths["json"] = out / f"{stem}_results.json"
    write_text_atomic(paths["json"], json.dumps(summary, indent=2, default=str))
    paths["tiles_csv"] = out / f"{stem}_tiles.csv"
    write_text_atomic(paths["tiles_csv"], t.to_csv(index=False))
    paths["key_csv"] = out / f"{stem}_key_tiles.csv"
    write_text_atomic(paths["key_csv"], k.to_csv(index=False))
    return paths


def save_report_png(viewer, res: AnalysisResult, path: str | Path, chart_figure=None) -> Path:
    """A PNG report: the current canvas view, the probability and the feature-importance chart."""
    from matplotlib.figure import Figure

    shot = viewer.screenshot(canvas_only=True, flash=False)
    fig = Figure(figsize=(12, 6), dpi=100, layout="constrained")
    ax_img = fig.add_subplot(1, 2, 1)
    ax_img.imshow(shot)
    ax_img.set_axis_off()
    ax_img.set_title(f"{Path(res.slide_path).name}: metastasis probability "
                     f"{100 * float(res.prediction.probability):.0f}%", fontsize=12)
    ax = fig.add_subplot(1, 2, 2)
    from napari_lnm.explain import KIND_COLOURS, feature_kind

    top = top_features(res.prediction, res.bundle)
    if top:
        names, vals = zip(*top[::-1])
        ax.barh(np.arange(len(names)), vals, color=[KIND_COLOURS[feature_kind(n)] for n in names])
        ax.set_yticks(np.arange(len(names)), names, fontsize=8)
    ax.set_xlabel("importance (gain)")
    ax.set_title("Top features")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


class ExportWidget(QWidget):
    """Dock widget: choose a folder, export GeoJSON, JSON/CSV and a PNG report of the last analysis."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.runner = Runner(self)
        self.runner.progressed.connect(self._on_progress)
        self._watch = CloseWatcher(self, self.runner.detach)
        self.last_paths: dict[str, Path] = {}
        self.dir_edit = QLineEdit(str(Path.home()))
        row = path_row(self.dir_edit, self._browse)
        self.stem_edit = QLineEdit("lnm")
        self.export_btn = QPushButton("Export GeoJSON + JSON/CSV")
        self.export_btn.clicked.connect(self.export)
        self.report_btn = QPushButton("Save PNG report of the view")
        self.report_btn.clicked.connect(self.report)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Output folder"))
        lay.addLayout(row)
        lay.addWidget(QLabel("File name prefix"))
        lay.addWidget(self.stem_edit)
        lay.addWidget(self.export_btn)
        lay.addWidget(self.report_btn)
        lay.addWidget(self.status)
        lay.addStretch(1)

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Export folder", self.dir_edit.text())
        if d:
            self.dir_edit.setText(d)

    def _result(self) -> AnalysisResult:
        res = get_result(self.viewer)
        if res is None:
            raise UserError("nothing to export: run 'Analyse slide' first")
        return res

    def export(self) -> bool:
        """Start exporting the last analysis in a worker; paths land in ``last_paths`` (errors: notification)."""
        if self.runner.running:
            return False
        self._watch.attach(self)
        try:
            res = self._result()
        except UserError as exc:
            notify_error(exc)
            return False
        out, stem = self.dir_edit.text(), self.stem_edit.text() or "lnm"
        self.last_paths = {}
        self.export_btn.setEnabled(False)
        self.status.setText("exporting…")
        self.runner.start(lambda progress, should_stop: export_all(res, out, stem, progress, should_stop),
                          on_done=self._on_done, on_error=self._on_error,
                          on_cancelled=lambda: self.status.setText("export cancelled"),
                          on_finished=lambda: self.export_btn.setEnabled(True))
        return True

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.status.setText(f"{message} {done}/{total}" if total else message)

    def _on_done(self, paths: dict[str, Path]) -> None:
        self.last_paths = paths
        self.status.setText("wrote " + ", ".join(p.name for p in paths.values()))

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(f"export failed: {exc}")
        notify_error(exc)

    def report(self) -> Path | None:
        """Save a PNG report of the current view and chart; returns its path (None on error)."""
        try:
            res = self._result()
            p = save_report_png(self.viewer, res, Path(self.dir_edit.text()) / f"{self.stem_edit.text() or 'lnm'}_report.png")
        except (UserError, OSError) as exc:
            notify_error(exc)
            return None
        self.status.setText(f"wrote {p.name}")
        return p

"""Train model: cohort CSV + features folder (optionally extract first) -> CV AUC, ROC, saved bundle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton,
    QSpinBox, QVBoxLayout, QWidget,
)

from napari_lnm.errors import UserError

from ._charts import ChartCanvas
from ._common import CloseWatcher, Runner, notify_error, path_row


#: the Classifier box's first entry: the recipe chosen by inner CV and calibrated, as ``napari-lnm train``
AUTO_RECIPE = "auto (inner CV)"


def train_job(cohort_csv: str, features_dir: str, out_dir: str, cv: int = 5, classifier: str = AUTO_RECIPE,
              seed: int = 0, extract: bool = False, tiling: Any = None, progress=None, should_stop=None):
    """(Optionally extract features, then) cross-validate and train on all slides; save the bundle to ``out_dir``.

    ``classifier``: :data:`AUTO_RECIPE` (the recipe by inner CV, calibrated: the command line's default)
    or one classifier of the method's fixed recipe.  Returns ``(bundle, cv_report, out_path)``. Runs off
    the GUI thread.
    """
    from napari_lnm.model import (TrainConfig, check_duplicate_slides, cross_validate, load_feature_tables,
                                  read_cohort_csv, train_model)

    if not str(out_dir).strip():
        raise UserError("choose a folder to save the model bundle in")
    cohort = read_cohort_csv(cohort_csv)
    if extract:
        from napari_lnm.extract import extract_cohort

        if progress:
            progress(0, len(cohort), "extracting features")
        # the CSV path (not the table) so that relative slide paths resolve against its folder
        extract_cohort(cohort_csv, features_dir, tiling, workers=1, progress=progress, should_stop=should_stop)
    tables, tiling_meta = load_feature_tables(cohort, features_dir)
    check_duplicate_slides(cohort, tables)
    labels = cohort["label"].to_numpy()
    groups = cohort["patient_id"].astype(str).to_numpy() if "patient_id" in cohort.columns else None
    recipe = {"recipe": "auto", "calibration": "auto"} if classifier == AUTO_RECIPE else {"classifier": classifier}
    cfg = TrainConfig(cv=int(cv), seed=int(seed), tiling=tiling_meta or (tiling.to_dict() if tiling is not None else None),
                      **recipe)
    rep = cross_validate(tables, labels, groups=groups, config=cfg,
                         slide_ids=cohort["slide_id"].astype(str).tolist(), progress=progress, should_stop=should_stop)
    if progress:
        progress(cfg.cv, cfg.cv, "training on all slides")
    bundle = train_model(tables, labels, cfg, progress=progress, should_stop=should_stop, groups=groups)
    bundle.cv_report = rep
    out = bundle.save(out_dir)
    return bundle, rep, Path(out)


class TrainWidget(QWidget):
    """Dock widget: train and cross-validate a model in a worker, show the ROC curve, save the bundle."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.runner = Runner(self)
        self.runner.progressed.connect(self._on_progress)
        self._watch = CloseWatcher(self, self._on_close)
        self.result: Optional[tuple] = None
        self.last_status = ""
        form = QFormLayout()
        self.cohort_edit = self._path_row(form, "Cohort CSV", file=True)
        self.features_edit = self._path_row(form, "Features folder", file=False)
        self.out_edit = self._path_row(form, "Save bundle to", file=False)
        self.extract_box = QCheckBox("extract features first (skips slides already done)")
        form.addRow("", self.extract_box)
        ext_row = QHBoxLayout()
        self.mag_combo = QComboBox()
        self.mag_combo.addItems(["5x", "10x", "20x", "40x"])
        self.mag_combo.setCurrentText("20x")
        self.tile_combo = QComboBox()
        self.tile_combo.addItems(["224", "256", "299", "512", "1024"])
        self.tile_combo.setCurrentText("512")
        self.tiles_spin = QSpinBox(minimum=0, maximum=100000, value=200)
        self.tiles_spin.setSpecialValueText("all")
        self.tiles_spin.setSuffix(" tiles/slide")
        for wdg in (self.mag_combo, self.tile_combo, self.tiles_spin):
            ext_row.addWidget(wdg)
        form.addRow("Extraction", ext_row)
        self.cv_spin = QSpinBox(minimum=2, maximum=20, value=5)
        form.addRow("CV folds", self.cv_spin)
        self.clf_combo = QComboBox()
        from napari_lnm.classifiers import CLASSIFIERS

        self.clf_combo.addItems([AUTO_RECIPE, *CLASSIFIERS])
        self.clf_combo.setToolTip("auto: fusion, selection and classifier chosen by inner cross-validation, with "
                                  "calibrated probabilities (as napari-lnm train); or one classifier of the "
                                  "method's histogram + KS recipe")
        form.addRow("Classifier", self.clf_combo)
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        form.addRow("Seed", self.seed)
        buttons = QHBoxLayout()
        self.run_btn = QPushButton("Train")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.runner.cancel)
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.auc_label = QLabel("")
        self.auc_label.setStyleSheet("font-size: 14pt; font-weight: bold;")
        self.chart = ChartCanvas(4, 3.5)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.auc_label)
        lay.addWidget(self.chart)

    def _path_row(self, form, label: str, file: bool) -> QLineEdit:
        edit = QLineEdit()

        def browse():
            if file:
                p, _ = QFileDialog.getOpenFileName(self, label, edit.text(), "CSV (*.csv)")
            else:
                p = QFileDialog.getExistingDirectory(self, label, edit.text())
            if p:
                edit.setText(p)

        form.addRow(label, path_row(edit, browse))
        return edit

    def run(self) -> bool:
        """Start training in a worker; returns False if a run is in progress."""
        if self.runner.running:
            return False
        self._watch.attach(self)
        tiling = None
        if self.extract_box.isChecked():
            from napari_lnm.tiling import TilingConfig

            tiling = TilingConfig(magnification=float(self.mag_combo.currentText().rstrip("x")),
                                  tile_size=int(self.tile_combo.currentText()),
                                  max_tiles=self.tiles_spin.value() or None, seed=self.seed.value())
        args = dict(cohort_csv=self.cohort_edit.text(), features_dir=self.features_edit.text(),
                    out_dir=self.out_edit.text(), cv=self.cv_spin.value(), classifier=self.clf_combo.currentText(),
                    seed=self.seed.value(), extract=self.extract_box.isChecked(), tiling=tiling)
        self._t0 = time.perf_counter()
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status.setText("training…")
        self.runner.start(lambda progress, should_stop: train_job(**args, progress=progress, should_stop=should_stop),
                          on_done=self._on_done, on_error=self._on_error, on_cancelled=self._on_cancelled,
                          on_finished=self._on_finished)
        return True

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        if message:
            self.status.setText(message)

    def _on_done(self, value) -> None:
        from sklearn.metrics import roc_curve

        bundle, rep, out = value
        self.result = value
        fpr, tpr, _ = roc_curve(rep.labels, rep.oof)
        self.chart.show_roc(fpr, tpr, rep.auc, rep.ci)
        self.auc_label.setText(f"CV AUC {rep.auc:.3f} (95% CI {rep.ci[0]:.2f}–{rep.ci[1]:.2f})")
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.last_status = "done"
        self.status.setText(f"saved {out} in {time.perf_counter() - self._t0:.1f} s")

    def _on_error(self, exc) -> None:
        self.last_status = f"error: {exc}"
        self.status.setText(self.last_status)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        notify_error(exc)

    def _on_cancelled(self) -> None:
        self.last_status = "cancelled"
        self.status.setText("cancelled")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)

    def _on_finished(self) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _on_close(self) -> None:
        self.runner.detach()  # no more callbacks into this widget, even ones already queued
        if self.runner.running:
            self.runner.wait(10.0)

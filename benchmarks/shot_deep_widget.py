"""docs/images/widget_deep_abmil.png: the Analyse widget with an ABMIL model on deep features (made here).

Seeded and self-contained: random-init ResNet-18 weights, a 16-slide synthetic cohort, `extract
--deep-features`, `train --classifier abmil`, then the widget on a fresh synthetic slide (24 tiles).
The weights carry no pathology knowledge; the picture shows the workflow, not a useful model.

    xvfb-run -a python benchmarks/shot_deep_widget.py --out docs/images/widget_deep_abmil.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cli(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("napari-lnm")), *args], check=True)


def build(work: Path) -> tuple[Path, Path]:
    """(model folder, slide) in ``work``: weights, cohort, features, ABMIL model, a label-1 slide."""
    import torch

    from napari_lnm.backbones import build_backbone
    from napari_lnm.synth import make_synthetic_tile, write_pyramid_tiff

    weights = work / "resnet18_random.pt"
    torch.manual_seed(0)
    torch.save(build_backbone("resnet18").state_dict(), weights)
    _cli("synth", str(work / "C"), "--n-slides", "16", "--seed", "5", "--size", "1024x1024")
    _cli("extract", "--cohort", str(work / "C" / "cohort.csv"), "--out", str(work / "F"), "--tile-size", "256",
         "--deep-features", f"resnet18:{weights}", "--workers", "2")
    _cli("train", str(work / "F"), "--cohort", str(work / "C" / "cohort.csv"), "--out", str(work / "M"), "--cv", "3",
         "--classifier", "abmil")
    slide = work / "slide_label1.tif"
    write_pyramid_tiff(slide, make_synthetic_tile(1, "CMS2", seed=7, size=2048, mpp=0.5), mpp=0.5)
    return work / "M", slide


def shoot(model: Path, slide: Path, out: Path) -> None:
    """Run the Analyse widget on ``slide`` with ``model`` and save the whole window."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_lnm._widgets import AnalyseWidget, InspectTileWidget
    from napari_lnm._widgets._common import get_result

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1800, 1100)
    viewer.open(str(slide), plugin="napari-lnm")
    w = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(w, name="Analyse slide", area="right")
    ins = InspectTileWidget(viewer)
    viewer.window.add_dock_widget(ins, name="Inspect tile", area="right")
    w.model_edit.setText(str(model))
    w.max_tiles.setValue(24)
    w.roi_combo.setCurrentText("auto tissue")
    assert w.run()
    t0 = time.time()
    while w.runner.running and time.time() - t0 < 600:
        app.processEvents()
        time.sleep(0.05)
    for _ in range(50):
        app.processEvents()
        time.sleep(0.02)
    res = get_result(viewer)
    assert res is not None, w.status.text()
    k = res.prediction.key_tiles
    ins.inspect(int(k["tile_index"].iloc[0]) if len(k) else 0)
    viewer.layers["voronoi"].visible = False
    viewer.reset_view()
    for _ in range(30):
        app.processEvents()
        time.sleep(0.02)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    viewer.close()
    print(f"P = {res.prediction.probability:.3f}; wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images/widget_deep_abmil.png"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="shot_deep_") as tmp:
        shoot(*build(Path(tmp)), args.out.resolve())

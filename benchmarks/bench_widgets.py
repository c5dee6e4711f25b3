"""napari plugin responsiveness (issue 5): open a 40000x40000 pyramid, analyse a 200-tile ROI in the widget.

Run under a display: ``OMP_NUM_THREADS=1 xvfb-run -a python benchmarks/bench_widgets.py [--tiles 200]``.
Prints a markdown table: time to open the slide in the viewer (and how many level-0 tiles were read),
the widget's wall time for the ROI analysis, its progress updates, and the event-loop latency
(longest gap between 50 ms timer ticks) while the worker runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SIDE = 40000
TILE = 512
MPP = 0.5


def write_big_pyramid(path: Path, side: int = SIDE, seed: int = 0) -> None:
    """A side x side tiled JPEG pyramid (tissue ellipse of synthetic H&E tiles on white), written tile by tile."""
    import tifffile

    from napari_lnm.synth import make_synthetic_tile

    rng = np.random.default_rng(seed)
    n = -(-side // TILE)
    kinds = [make_synthetic_tile(i % 2, None, seed=i, size=TILE, mpp=MPP) for i in range(6)]
    which = rng.integers(0, len(kinds), size=(n, n))
    rr, cc = np.mgrid[0:n, 0:n] + 0.5
    inside = ((rr - n / 2) / (0.42 * n)) ** 2 + ((cc - n / 2) / (0.36 * n)) ** 2 <= 1.0
    white = np.full((TILE, TILE, 3), 240, np.uint8)

    def level_tiles(f: int):
        """Tiles of the level with downsample f (a level tile = f x f level-0 tiles block-averaged)."""
        m = -(-n // f)
        small = {}
        for i in range(m):
            for j in range(m):
                out = np.empty((TILE, TILE, 3), np.uint8)
                s = TILE // f
                for a in range(f):
                    for b in range(f):
                        r, c = i * f + a, j * f + b
                        if r < n and c < n and inside[r, c]:
                            k = int(which[r, c])
                            if (k, f) not in small:
                                small[(k, f)] = kinds[k].reshape(s, f, s, f, 3).mean(axis=(1, 3)).astype(np.uint8)
                            blk = small[(k, f)]
                        else:
                            blk = white[:s, :s]
                        out[a * s:(a + 1) * s, b * s:(b + 1) * s] = blk
                yield out

    res = 1e4 / MPP
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        f = 1
        while side // f >= 1024:
            shape = (side // f, side // f, 3)
            tif.write(level_tiles(f), shape=shape, dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                      compression="jpeg", compressionargs={"level": 85},
                      resolution=(res / f, res / f), resolutionunit="CENTIMETER", subfiletype=0 if f == 1 else 1,
                      description=f"bench pyramid|AppMag = 20|MPP = {MPP}" if f == 1 else None, metadata=None)
            f *= 2


def _level0_shape(layer) -> tuple:
    """Full-resolution shape of a (possibly multiscale) layer."""
    return tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)


def tiny_bundle(out: Path) -> Path:
    """The bundled demo model if present, else a small model trained on synthetic feature tables."""
    demo = Path(__file__).resolve().parents[1] / "src" / "napari_lnm" / "data" / "demo_model"
    if (demo / "bundle.json").is_file():
        return demo
    from napari_lnm.features import feature_names
    from napari_lnm.model import TrainConfig, train_model

    names = feature_names()
    rng = np.random.default_rng(0)
    tables, labels = [], []
    for i in range(12):
        y = i % 2
        v = np.abs(rng.normal(size=(30, len(names))) + 0.8 * y) * 10 + 1
        df = pd.DataFrame(v, columns=names)
        df.insert(0, "slide_id", f"s{i}")
        tables.append(df)
        labels.append(y)
    return train_model(tables, np.array(labels), TrainConfig(cv=3, n_bootstrap=50)).save(out / "bundle")


def _wait(app, widget, timeout: float = 600.0) -> None:
    """Process Qt events until the widget's run has finished."""
    t0 = time.perf_counter()
    while (widget.runner.running or not widget.run_btn.isEnabled()) and time.perf_counter() - t0 < timeout:
        app.processEvents()
        time.sleep(0.01)
    for _ in range(10):
        app.processEvents()


def screenshots(out_dir: Path, model: Path, cohort_csv: str = "", features_dir: str = "") -> None:
    """docs/images/widget_*.png: finished analyses on the CMU sample and on a synthetic slide, and training."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_lnm._widgets import AnalyseWidget, InspectTileWidget, TrainWidget
    from napari_lnm._widgets._common import get_result
    from napari_lnm.synth import make_synthetic_tile, write_pyramid_tiff

    out_dir.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([])
    synth = Path(tempfile.mkdtemp(prefix="shots_")) / "synthetic_CMS2_label1.tif"
    write_pyramid_tiff(synth, make_synthetic_tile(1, "CMS2", seed=7, size=2048, mpp=MPP), mpp=MPP)
    sample = Path(__file__).resolve().parents[1] / "src" / "napari_lnm" / "data" / "cmu_small_region.svs"
    for name, path, tiles in (("cmu", sample, 24), ("synthetic", synth, 16)):
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1800, 1100)
        viewer.open(str(path), plugin="napari-lnm")
        w = AnalyseWidget(viewer)
        viewer.window.add_dock_widget(w, name="Analyse slide", area="right")
        ins = InspectTileWidget(viewer)
        viewer.window.add_dock_widget(ins, name="Inspect tile", area="right")
        w.model_edit.setText(str(model))
        w.tile_combo.setCurrentText("256")
        w.max_tiles.setValue(tiles)
        w.roi_combo.setCurrentText("auto tissue")
        assert w.run()
        _wait(app, w)
        res = get_result(viewer)
        assert res is not None, w.status.text()
        k = res.prediction.key_tiles
        first = int(k["tile_index"].iloc[0]) if len(k) else 0
        ins.inspect(first)
        viewer.layers["voronoi"].visible = False
        viewer.reset_view()
        for _ in range(20):
            app.processEvents()
        viewer.screenshot(str(out_dir / f"widget_analysis_{name}.png"), canvas_only=False, flash=False)
        # zoom on key tile 1 with nuclei and the Voronoi graph
        t = res.prediction.tiles.iloc[first]
        viewer.layers["voronoi"].visible = True
        viewer.layers["H"].visible = False
        cy, cx = (t["y"] + t["size"] / 2) * res.mpp0, (t["x"] + t["size"] / 2) * res.mpp0
        viewer.camera.center = (cy, cx)
        viewer.camera.zoom = 800 / (t["size"] * res.mpp0 * 1.3)
        for _ in range(40):
            app.processEvents()
            time.sleep(0.02)
        viewer.screenshot(str(out_dir / f"widget_zoom_{name}.png"), canvas_only=False, flash=False)
        viewer.close()
    if cohort_csv and features_dir:
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1400, 900)
        tw = TrainWidget(viewer)
        viewer.window.add_dock_widget(tw, name="Train model", area="right")
        tw.cohort_edit.setText(cohort_csv)
        tw.features_edit.setText(features_dir)
        tw.out_edit.setText(str(Path(tempfile.mkdtemp(prefix="shots_model_")) / "bundle"))
        tw.cv_spin.setValue(3)
        assert tw.run()
        _wait(app, tw)
        viewer.screenshot(str(out_dir / "widget_train.png"), canvas_only=False, flash=False)
        viewer.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=200)
    ap.add_argument("--side", type=int, default=SIDE)
    ap.add_argument("--keep", type=str, default="", help="reuse/keep the pyramid at this path")
    ap.add_argument("--screenshots", type=str, default="", help="write the docs screenshots to this folder and exit")
    ap.add_argument("--model", type=str, default="", help="model bundle for --screenshots")
    ap.add_argument("--cohort", type=str, default="", help="cohort CSV for the training screenshot")
    ap.add_argument("--features", type=str, default="", help="features folder for the training screenshot")
    args = ap.parse_args()
    if args.screenshots:
        model = Path(args.model) if args.model else tiny_bundle(Path(tempfile.mkdtemp(prefix="shots_")))
        screenshots(Path(args.screenshots), model, args.cohort, args.features)
        return

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    import napari_lnm.io as nio
    from napari_lnm._widgets import AnalyseWidget

    tmp = Path(tempfile.mkdtemp(prefix="bench_widgets_"))
    path = Path(args.keep) if args.keep else tmp / "big.tif"
    rows = []
    if not path.exists():
        t0 = time.perf_counter()
        write_big_pyramid(path, args.side)
        rows.append((f"write {args.side}x{args.side} JPEG pyramid (setup)", f"{time.perf_counter() - t0:.1f} s",
                     f"{path.stat().st_size / 1e6:.0f} MB"))

    # count level-0 reads through the Slide class
    reads = {"level0": 0, "all": 0}
    orig = nio.Slide._read_level_px

    def counting(self, level, *a, **k):
        reads["all"] += 1
        reads["level0"] += int(level == 0)
        return orig(self, level, *a, **k)

    nio.Slide._read_level_px = counting
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    app = QApplication.instance()
    t0 = time.perf_counter()
    layers = viewer.open(str(path), plugin="napari-lnm")
    t_open = time.perf_counter() - t0
    for _ in range(20):
        app.processEvents()
    t_draw = time.perf_counter() - t0
    rows.append(("open in viewer (layer added)", f"{t_open:.2f} s", f"{len(layers[0].data)} levels"))
    rows.append(("open + first draws", f"{t_draw:.2f} s",
                 f"{reads['all']} tile reads, {reads['level0']} at level 0"))

    # ROI: a rectangle of about args.tiles tiles of 512 px at 20x, centred in the slide (µm in world coords)
    n_side = int(np.ceil(np.sqrt(args.tiles)))
    half = n_side * TILE / 2
    c = args.side / 2
    r0, r1, c0, c1 = (c - half) * MPP, (c + half) * MPP, (c - half) * MPP, (c + half) * MPP
    viewer.add_shapes([np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]])], shape_type="polygon", name="ROI",
                      units=("um", "um"))
    w = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model_edit.setText(str(tiny_bundle(tmp)))
    w.roi_combo.setCurrentText("ROI")
    w.tile_combo.setCurrentText("512")
    w.max_tiles.setValue(args.tiles)
    ticks, updates = [], []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    w.runner.progressed.connect(lambda d, t, m: updates.append((time.perf_counter(), d, t)))
    reads["level0"] = reads["all"] = 0
    t0 = time.perf_counter()
    timer.start(50)
    assert w.run()
    while w.runner.running or not w.run_btn.isEnabled():
        app.processEvents()
        time.sleep(0.005)
    timer.stop()
    wall = time.perf_counter() - t0
    from napari_lnm._widgets._common import get_result

    res = get_result(viewer)
    n = len(res.prediction.tiles)
    tim = res.prediction.timings
    gaps = np.diff(ticks) if len(ticks) > 1 else np.array([np.nan])
    tile_updates = [u for u in updates if u[2] > 0]
    rows.append((f"ROI analysis in the widget ({n} tiles of 512 px at 20x)", f"{wall:.1f} s",
                 f"{wall / max(n, 1):.2f} s/tile; features {tim.get('features_s', float('nan')):.1f} s, "
                 f"model {tim.get('model_s', float('nan')):.2f} s"))
    rows.append(("result layers: build (worker) / add to viewer (GUI thread)",
                 f"{w.timings.get('layer_data_s', float('nan')):.2f} s / {w.timings.get('show_s', float('nan')):.2f} s "
                 f"(steps: {', '.join(f'{x:.1f}' for x in w.step_seconds)} s)",
                 f"H/E/nuclei {_level0_shape(viewer.layers['H'])}, "
                 f"{len(viewer.layers['voronoi'].data)} Voronoi + {len(viewer.layers['delaunay'].data)} Delaunay segments"))
    rows.append(("progress bar updates", f"{len(tile_updates)}",
                 f"first after {tile_updates[0][0] - t0:.1f} s" if tile_updates else "none"))
    t_last = (tile_updates[-1][0] - t0) if tile_updates else float("nan")
    ticks_a = np.asarray(ticks)
    during = np.diff(ticks_a[ticks_a - t0 <= t_last]) if len(ticks) > 1 else gaps
    worst = float(ticks_a[1:][np.argmax(gaps)] - t0) if len(ticks) > 1 else float("nan")
    rows.append(("event-loop latency while tiles are analysed (50 ms timer)",
                 f"median {1000 * np.median(during):.0f} ms",
                 f"p95 {1000 * np.percentile(during, 95):.0f} ms, max {1000 * np.max(during):.0f} ms"))
    rows.append(("event-loop latency, whole run incl. layer display", f"median {1000 * np.median(gaps):.0f} ms",
                 f"p95 {1000 * np.percentile(gaps, 95):.0f} ms, max {1000 * np.max(gaps):.0f} ms "
                 f"(ending at {worst:.1f} s; last tile done at {t_last:.1f} s)"))
    viewer.close()
    nio.Slide._read_level_px = orig

    print(f"Machine: 2-core shared dev VM, no GPU; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| step | time | detail |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()

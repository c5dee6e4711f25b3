"""Single-slide prediction speed: tiling, features, model + explanation, report PNGs; key-tile scaling; demo time.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_predict.py [--work DIR] [--repeats 3]

The model is the demo's (``napari-lnm demo``: 24 synthetic slides, 256 px tiles at
20x, histogram fusion + KS + XGBoost), built in --work on the first run (its wall
time is the "demo, cold" row) and reused afterwards.  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd


def _median_time(fn, repeats: int):
    """(median seconds, last result) of ``repeats`` calls."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "napari_lnm_bench_predict"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big-tiles", type=int, default=10000, help="tiles in the key-tile scaling test")
    args = ap.parse_args()

    from napari_lnm.cli.demo import run_demo, sample_slide_path
    from napari_lnm.explain import key_tiles
    from napari_lnm.io import open_slide
    from napari_lnm.model import ModelBundle
    from napari_lnm.pipeline import predict_slide, tiling_config_for

    work = Path(args.work)
    t = time.perf_counter()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary = run_demo(work, n_slides=24, seed=0, workers=2, quiet=True)
    demo_s = time.perf_counter() - t
    n_reused = buf.getvalue().count("reused")
    demo_kind = {0: "cold run (every step computed)"}.get(n_reused, "re-run (finished steps reused)")
    bundle = ModelBundle.load(work / "model")
    slide_path = sample_slide_path()
    rows = []

    with open_slide(slide_path) as slide:
        for tile_size in (256, 512):
            cfg = tiling_config_for(bundle, tile_size=tile_size)
            preds = []
            med, pred = _median_time(lambda: predict_slide(slide, bundle, config=cfg), args.repeats)
            preds.append(pred)
            tm = pred.timings
            name = f"cmu_small_region.svs, 20x, {tile_size} px tiles ({pred.n_tiles} tiles)"
            rows.append((name, "predict_slide total (median)", f"{med:.2f} s"))
            rows.append(("", "  tissue mask + tile grid", f"{tm['tiling_s'] * 1e3:.0f} ms"))
            rows.append(("", "  read + features per tile", f"{tm['s_per_tile'] * 1e3:.0f} ms/tile"))
            rows.append(("", "  fusion + XGBoost + contributions + key tiles", f"{tm['model_s'] * 1e3:.0f} ms"))
            if tile_size == 256:
                medk, predk = _median_time(lambda: predict_slide(slide, bundle, config=cfg, keep_images=True), 1)
                nbytes = sum(a.h.nbytes + a.e.nbytes + a.labels.nbytes + np.asarray(a.centroids).nbytes
                             for a in predk.analyses)
                rows.append(("", "predict_slide, keep_images=True", f"{medk:.2f} s, images {nbytes / 2**20:.1f} MiB"))
                with tempfile.TemporaryDirectory() as td:
                    meds, _ = _median_time(lambda: pred.save(Path(td) / "out", slide=slide), args.repeats)
                rows.append(("", "save: result.json + tiles.parquet + 2 PNGs", f"{meds:.2f} s"))

    # key-tile selection scaling on a large synthetic table (pure numpy/pandas)
    rng = np.random.default_rng(0)
    n = args.big_tiles
    contribs = bundle.contributions(pred.tiles)
    feats = sorted(set(contribs["feature"]))
    big = pd.DataFrame(rng.choice(pred.tiles[feats].to_numpy(), size=n, axis=0), columns=feats)
    big.insert(0, "x", np.arange(n) * 512)
    big.insert(1, "y", 0)
    big.insert(2, "size", 512)
    big.insert(3, "tissue_fraction", rng.uniform(0.5, 1.0, n))
    medb, kt = _median_time(lambda: key_tiles(big, contribs, n=10, n_bins=5), args.repeats)
    rows.append((f"{n} tiles x {len(contribs)} selected elements", "explain.key_tiles (top 10)", f"{medb * 1e3:.0f} ms"))
    rows.append(("napari-lnm demo (24 slides, defaults)", demo_kind,
                 f"{demo_s:.0f} s (CV AUC {summary['cv_auc']:.3f}, P = {summary['probability']:.3f})"))

    print(f"Machine: 2-core shared dev VM, no GPU ({platform.machine()}), Python {sys.version.split()[0]}; "
          f"date {date.today().isoformat()}; median of {args.repeats} runs.\n")
    print("| input | step | time |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``napari-lnm demo``: the README's main job, end to end in a few minutes.

1. generate a synthetic training cohort (:func:`napari_lnm.synth.make_cohort`),
2. extract per-tile features (:func:`napari_lnm.extract.extract_cohort`),
3. cross-validate (nested) and train the XGBoost model (:mod:`napari_lnm.model`),
4. predict on the real Aperio sample slide shipped in the package and write
   ``OUT/predict/result.json``, ``importance.png`` and ``key_tiles.png``.

Every step's output is kept; re-running reuses finished steps (resume).
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

from napari_lnm.errors import UserError

HELP = "synthetic cohort -> features -> nested CV + XGBoost -> prediction on the bundled real slide"

#: Synthetic slide side (px at 0.5 µm/px) and tiles per slide: sized for a few minutes on 2 cores.
DEMO_SLIDE_PX = 1536
DEMO_TILE_SIZE = 256
DEMO_TRAIN_TILES = 16


def sample_slide_path() -> Path:
    """Path of the real Aperio sample slide inside the installed package."""
    p = resources.files("napari_lnm") / "data" / "cmu_small_region.svs"
    path = Path(str(p))
    if not path.is_file():
        raise UserError(f"{path}: the bundled sample slide is missing from this installation")
    return path


def _step(n: int, text: str) -> float:
    print(f"[{n}/4] {text}", flush=True)
    return time.perf_counter()


def _done(t0: float, text: str = "") -> None:
    print(f"      done in {time.perf_counter() - t0:.1f} s{(': ' + text) if text else ''}", flush=True)


def _cohort_ok(csv: Path, stamp: dict) -> bool:
    """True if csv is a finished synthetic cohort made with the same options (``stamp``)."""
    import pandas as pd

    stamp_file = csv.parent / "demo_stamp.json"
    if not csv.is_file() or not stamp_file.is_file():
        return False
    try:
        if json.loads(stamp_file.read_text()) != stamp:
            return False
        df = pd.read_csv(csv)
    except Exception:
        return False
    return len(df) == stamp["n_slides"] and all((csv.parent / p).is_file() for p in df["path"])


def run_demo(out: Path, n_slides: int = 24, seed: int = 0, workers: int = 2, slide_px: int = DEMO_SLIDE_PX,
             train_tiles: int = DEMO_TRAIN_TILES, predict_tiles: int | None = None, cv: int = 5,
             quiet: bool = False) -> dict:
    """Run the four demo steps into ``out``; returns a summary dict (CV AUC, probability, paths)."""
    import numpy as np
    import pandas as pd

    from napari_lnm._atomic import write_text_atomic
    from napari_lnm.cli.predict import print_prediction
    from napari_lnm.extract import ERRORS_FILE, extract_cohort, read_cohort
    from napari_lnm.model import ModelBundle, TrainConfig, cross_validate, load_feature_tables, train_model
    from napari_lnm.outdir import DEMO, FEATURES, check_out_dir, mark_out_dir
    from napari_lnm.progress import ProgressReporter
    from napari_lnm.pipeline import Prediction, predict_slide, prediction_tiling
    from napari_lnm.synth import make_cohort
    from napari_lnm.tiling import TilingConfig

    if n_slides < 4:
        raise UserError(f"--n-slides must be at least 4 (2 per class), got {n_slides}")
    if train_tiles < 1:
        raise UserError(f"--tiles must be at least 1, got {train_tiles}")
    if cv < 2:
        raise UserError(f"--cv must be at least 2 folds, got {cv}")
    out = check_out_dir(out, DEMO)
    feat_dir = check_out_dir(out / "features", FEATURES)
    mark_out_dir(out, DEMO)
    summary: dict = {"out": str(out)}
    t_all = time.perf_counter()

    # 1. synthetic cohort -----------------------------------------------------------------
    cohort_dir = out / "cohort"
    csv = cohort_dir / "cohort.csv"
    t0 = _step(1, f"synthetic cohort: {n_slides} slides of {slide_px}x{slide_px} px at 0.5 µm/px -> {cohort_dir}")
    cohort_stamp = {"n_slides": int(n_slides), "seed": int(seed), "slide_px": int(slide_px)}
    if _cohort_ok(csv, cohort_stamp):
        _done(t0, "reused")
    else:
        # features of an earlier, different cohort would be taken as done: remove them (only them)
        for stale in [*feat_dir.glob("*.parquet"), feat_dir / ERRORS_FILE]:
            stale.unlink(missing_ok=True)
        bar = ProgressReporter("synthetic cohort", disable=quiet, unit="slide")
        try:
            make_cohort(cohort_dir, n_slides, seed=seed, size=(slide_px, slide_px), progress=bar)
        finally:
            bar.close()
        write_text_atomic(cohort_dir / "demo_stamp.json", json.dumps(cohort_stamp))
        _done(t0)
    cohort = read_cohort(csv)  # validated, paths resolved against the CSV's folder

    # 2. features ---------------------------------------------------------------------------
    config = TilingConfig(magnification=20.0, tile_size=DEMO_TILE_SIZE, max_tiles=train_tiles, seed=seed)
    t0 = _step(2, f"features: up to {train_tiles} tiles of {DEMO_TILE_SIZE} px per slide at 20x, "
                  f"{workers} worker(s) -> {feat_dir}")
    bar = ProgressReporter("features", disable=quiet, unit="slide")
    try:
        extract_cohort(cohort, feat_dir, config, workers=workers, progress=bar)
    finally:
        bar.close()
    _done(t0)
    tables, _ = load_feature_tables(cohort, feat_dir)

    # 3. nested CV + final model ---------------------------------------------------------------
    model_dir = out / "model"
    y = pd.to_numeric(cohort["label"]).to_numpy(dtype=int)
    folds = int(min(cv, np.bincount(y, minlength=2).min()))
    t0 = _step(3, f"model: histogram fusion + KS selection + XGBoost, nested {folds}-fold CV -> {model_dir}")
    tcfg = TrainConfig(cv=folds, seed=seed, n_bootstrap=1000, tiling=config.to_dict())
    bundle = None
    if (model_dir / "bundle.json").is_file():
        try:
            bundle = ModelBundle.load(model_dir)
            same = (bundle.config.get("n_slides") == n_slides and bundle.config.get("seed") == seed
                    and bundle.config.get("cv") == folds and bundle.config.get("tiling") == config.to_dict())
            if not same or (model_dir / "bundle.json").stat().st_mtime < (csv.parent / "demo_stamp.json").stat().st_mtime:
                bundle = None
        except UserError:
            bundle = None
    if bundle is not None and bundle.cv_report is not None:
        cvr = bundle.cv_report
        _done(t0, "reused")
    else:
        groups = cohort["patient_id"] if "patient_id" in cohort.columns else None
        cvr = cross_validate(tables, y, groups=groups, config=tcfg, slide_ids=list(cohort["slide_id"]))
        bundle = train_model(tables, y, tcfg, groups=None if groups is None else np.asarray(groups, dtype=str))
        bundle.cv_report = cvr
        bundle.save(model_dir)
        _done(t0)
    lo, hi = cvr.ci
    print(f"      cross-validated ROC-AUC = {cvr.auc:.3f} (95% CI {lo:.3f}-{hi:.3f}) on {n_slides} synthetic slides; "
          f"{len(bundle.selection.names)} selected elements", flush=True)
    summary.update(cv_auc=float(cvr.auc), cv_ci=[float(lo), float(hi)], model=str(model_dir))

    # 4. prediction on the real sample slide --------------------------------------------------
    pred_dir = out / "predict"
    slide = sample_slide_path()
    t0 = _step(4, f"prediction on the real sample slide {slide.name} (mpp from its metadata) -> {pred_dir}")
    pred = None
    stamp = {"model_mtime": (model_dir / "bundle.json").stat().st_mtime, "predict_tiles": predict_tiles}
    stamp_file = pred_dir / "demo_stamp.json"
    if (pred_dir / "result.json").is_file() and stamp_file.is_file():
        try:
            if json.loads(stamp_file.read_text()) == stamp and (pred_dir / "key_tiles.png").is_file():
                pred = Prediction.load(pred_dir)
                _done(t0, "reused")
        except (UserError, ValueError):
            pred = None
    if pred is None:
        pcfg = prediction_tiling(bundle, max_tiles=predict_tiles, seed=seed)
        bar = ProgressReporter("sample slide", disable=quiet, unit="tile", log_units=False)
        try:
            pred = predict_slide(slide, bundle, config=pcfg, progress=bar)
        finally:
            bar.close()
        pred.model.setdefault("path", str(model_dir))
        pred.save(pred_dir)
        write_text_atomic(stamp_file, json.dumps(stamp))
        _done(t0)
    print_prediction(pred, pred_dir)
    print("      (the model was trained on synthetic slides: this probability demonstrates the pipeline, "
          "it is not a diagnosis)")
    summary.update(probability=float(pred.probability), n_tiles=pred.n_tiles, predict=str(pred_dir),
                   total_s=time.perf_counter() - t_all)
    print(f"demo finished in {summary['total_s']:.0f} s: {pred_dir / 'result.json'}, "
          f"{pred_dir / 'importance.png'}, {pred_dir / 'key_tiles.png'}", flush=True)
    return summary


def run(args) -> int:
    """CLI entry: run the demo with the parsed options."""
    run_demo(Path(args.out), n_slides=args.n_slides, seed=args.seed, workers=args.workers,
             slide_px=args.slide_px, train_tiles=args.tiles, predict_tiles=args.predict_tiles, cv=args.cv,
             quiet=args.quiet)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``napari-lnm demo``."""
    p = subparsers.add_parser("demo", help=HELP, description=HELP + ". Re-running reuses finished steps.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--n-slides", type=int, default=24, help="synthetic training slides (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cohort, tiling and model (default 0)")
    p.add_argument("--workers", type=int, default=2, help="processes for feature extraction (default 2)")
    p.add_argument("--slide-px", type=int, default=DEMO_SLIDE_PX, help=argparse.SUPPRESS)
    p.add_argument("--tiles", type=int, default=DEMO_TRAIN_TILES, help="tiles per training slide (default %(default)s)")
    p.add_argument("--predict-tiles", type=int, default=None, help="cap on tiles of the sample slide (default: all)")
    p.add_argument("--cv", type=int, default=5, help="outer CV folds (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p

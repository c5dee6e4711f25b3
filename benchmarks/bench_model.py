"""Patient-level model benchmark: nested-CV AUC (95% CI), training and prediction time, fusion/selection variants.

Synthetic cohort from ``napari_lnm.synth.make_cohort`` + ``napari_lnm.extract.extract_cohort``
(cached in --workdir), then for each configuration: 5-fold nested CV, training the
final model on all slides, and prediction time per slide (fusion + selection + model
on an already extracted features table). Prints a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/bench_model.py --n-slides 60
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np

CONFIGS = [
    ("histogram (5 quantile bins)", "ks", "xgboost", {}),
    ("mean", "ks", "xgboost", {}),
    ("histogram (5 quantile bins)", "none", "xgboost", {}),
    ("mean", "none", "xgboost", {}),
    ("histogram (5 quantile bins)", "ks", "logreg", {}),
    ("histogram (5 quantile bins)", "ks", "xgboost", {"per_subtype": True, "min_subtype_slides": 10}),
]


def load_cohort(args):
    """Synthesize + extract the cohort (cached); returns (cohort DataFrame, tables, tiling dict)."""
    from napari_lnm.extract import extract_cohort, read_cohort
    from napari_lnm.model import load_feature_tables
    from napari_lnm.synth import make_cohort
    from napari_lnm.tiling import TilingConfig

    work = Path(args.workdir)
    csv = work / "cohort.csv"
    t0 = time.perf_counter()
    if not csv.is_file():
        csv = make_cohort(work, args.n_slides, seed=args.seed, size=(args.size, args.size))
    t_synth = time.perf_counter() - t0
    t0 = time.perf_counter()
    extract_cohort(csv, work / "features", TilingConfig(tile_size=args.tile_size), workers=args.workers)
    t_extract = time.perf_counter() - t0
    cohort = read_cohort(csv)
    tables, tiling = load_feature_tables(cohort, work / "features")
    return cohort, tables, tiling, t_synth, t_extract


def main() -> None:
    """Run the benchmark and print the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-slides", type=int, default=60)
    ap.add_argument("--size", type=int, default=1536, help="synthetic slide side, px at 0.5 µm/px")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--workdir", default="/tmp/bench_model")
    args = ap.parse_args()

    from napari_lnm.model import TrainConfig, cross_validate, train_model

    cohort, tables, tiling, t_synth, t_extract = load_cohort(args)
    y = cohort["label"].to_numpy().astype(int)
    groups = cohort["patient_id"].astype(str).to_numpy() if "patient_id" in cohort.columns else None
    subtypes = cohort["subtype"].tolist() if "subtype" in cohort.columns else None
    n_tiles = np.array([len(t) for t in tables])
    n_feat = len([c for c in tables[0].columns if c not in ("slide_id", "x", "y", "size", "tissue_fraction")])

    print(f"Synthetic cohort: {len(y)} slides ({y.sum()} metastatic) from napari_lnm.synth.make_cohort "
          f"({args.size}x{args.size} px at 0.5 µm/px, seed {args.seed}), features by napari_lnm.extract "
          f"({args.tile_size} px tiles at 20x, median {int(np.median(n_tiles))} tiles/slide, {n_feat} tile "
          f"features); synth {t_synth:.0f} s, extract {t_extract:.0f} s (0 = cached).")
    print(f"Machine: 2-core shared dev VM, no GPU ({platform.processor() or platform.machine()}), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, XGBoost nthread=1; "
          f"date {datetime.date.today().isoformat()}.")
    print()
    print(f"| fusion | selection | classifier | {args.cv}-fold nested CV ROC-AUC (95% CI) | elements kept per fold "
          f"(median) | CV time s | final training s | prediction ms/slide |")
    print("|---|---|---|---|---|---|---|---|")
    for fusion_label, test, clf, extra in CONFIGS:
        fusion = fusion_label.split()[0]
        cfg = TrainConfig(fusion=fusion, test=test, classifier=clf, cv=args.cv, seed=args.seed, tiling=tiling,
                          **extra)
        t0 = time.perf_counter()
        rep = cross_validate(tables, y, groups, cfg, subtypes=subtypes)
        t_cv = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = train_model(tables, y, cfg, subtypes=subtypes)
        t_train = time.perf_counter() - t0
        times = []
        for t, st in zip(tables, subtypes or [None] * len(tables)):
            t0 = time.perf_counter()
            m, _ = b.for_subtype(st)
            m.predict_proba(t)
            times.append(time.perf_counter() - t0)
        auc = f"{rep.auc:.3f} ({rep.ci[0]:.3f}-{rep.ci[1]:.3f})"
        label_clf = clf
        if extra.get("per_subtype"):
            label_clf += f" routed per subtype ({len(b.subtype_models)} subtype models)"
            auc += f"; pooled {rep.auc_pooled:.3f} ({rep.ci_pooled[0]:.3f}-{rep.ci_pooled[1]:.3f})"
        print(f"| {fusion_label} | {test} | {label_clf} | {auc} | {int(np.median(rep.n_selected))} | {t_cv:.1f} | "
              f"{t_train:.2f} | {1000 * np.median(times):.1f} |")


if __name__ == "__main__":
    main()

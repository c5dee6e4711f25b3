"""``napari-lnm train``: nested-CV evaluation and a final model bundle from a features folder and a cohort CSV."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_lnm.errors import UserError


def add_parser(subparsers) -> None:
    """Register the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train a lymph-node metastasis model (nested CV report + model bundle)",
        description="Fuse per-tile features per slide, select elements, train a classifier, report a nested "
                    "cross-validated ROC-AUC with a 95%% bootstrap CI, and write a versioned model bundle.",
    )
    p.add_argument("features_dir", metavar="FEATURES_DIR", help="folder of <slide_id>.parquet feature tables")
    p.add_argument("--cohort", required=True, help="cohort CSV: slide_id,path,label[,subtype][,patient_id],...")
    p.add_argument("--out", required=True, help="model folder to write: new, empty or an earlier model (replaced "
                                                "only on success)")
    p.add_argument("--fusion", default="histogram", choices=["histogram", "mean", "max", "pnorm", "quantile",
                                                             "kmeans"])
    p.add_argument("--bins", type=int, default=5, help="histogram bins (k for k-means fusion); default 5")
    p.add_argument("--edges", default="quantile", choices=["quantile", "uniform"],
                   help="histogram bin edges fitted on the training slides (default quantile)")
    p.add_argument("--p", type=float, default=3.0, help="exponent of the p-norm fusion")
    p.add_argument("--select", default="ks", choices=["ks", "mannwhitney", "ttest", "anova", "none"])
    p.add_argument("--alpha", type=float, default=0.05, help="keep elements with p < alpha (default 0.05)")
    p.add_argument("--top-q", type=int, default=None, help="keep the Q elements with the smallest p instead")
    p.add_argument("--classifier", default="xgboost", choices=["xgboost", "logreg", "svm", "mlp"])
    p.add_argument("--cv", type=int, default=5, help="outer cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clinical", default="", help="comma-separated cohort columns to add, e.g. T_stage,CEA")
    p.add_argument("--per-subtype", action="store_true",
                   help="also train one model per value of the cohort's subtype column")
    p.add_argument("--min-subtype-slides", type=int, default=10,
                   help="subtypes with fewer slides use the pooled model (default 10)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the AUC CI")
    p.add_argument("--threads", type=int, default=1, help="XGBoost threads (default 1)")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="train even when two cohort rows are one slide (same file or identical features)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    from napari_lnm.errors import CohortError
    from napari_lnm.fusion import make_fusion
    from napari_lnm.model import (TrainConfig, check_duplicate_slides, cross_validate, load_feature_tables,
                                  read_cohort_csv, train_model)
    from napari_lnm.outdir import MODEL, check_out_dir
    from napari_lnm.progress import ProgressReporter

    out = check_out_dir(args.out, MODEL)
    if not 0.0 < args.alpha <= 1.0:
        raise UserError(f"--alpha must be in (0, 1], got {args.alpha}")
    if args.top_q is not None and args.top_q < 1:
        raise UserError(f"--top-q must be at least 1, got {args.top_q}")
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be at least 1, got {args.bootstrap}")
    make_fusion(args.fusion, bins=args.bins, edges=args.edges, p=args.p)  # bad --bins / --p: fail before the work
    cohort = read_cohort_csv(args.cohort)
    if "label" not in cohort.columns:
        raise CohortError(f"{args.cohort}: cohort has no 'label' column")
    clinical_cols = tuple(c.strip() for c in args.clinical.split(",") if c.strip())
    missing = [c for c in clinical_cols if c not in cohort.columns]
    if missing:
        raise CohortError(f"{args.cohort}: clinical column(s) {', '.join(missing)} not in the cohort")
    if args.per_subtype and "subtype" not in cohort.columns:
        raise CohortError(f"{args.cohort}: --per-subtype needs a 'subtype' column")
    labels = cohort["label"].to_numpy()
    tables, tiling = load_feature_tables(cohort, args.features_dir)
    for line in check_duplicate_slides(cohort, tables, allow=args.allow_duplicates):
        print(f"warning: {line} (kept: --allow-duplicates)")
    config = TrainConfig(fusion=args.fusion, bins=args.bins, edges=args.edges, p=args.p, test=args.select,
                         alpha=args.alpha, top_q=args.top_q, classifier=args.classifier, cv=args.cv,
                         seed=args.seed, clinical=clinical_cols, per_subtype=args.per_subtype,
                         min_subtype_slides=args.min_subtype_slides, n_bootstrap=args.bootstrap,
                         nthread=args.threads, tiling=tiling)
    groups = cohort["patient_id"].astype(str).to_numpy() if "patient_id" in cohort.columns else None
    subtypes = cohort["subtype"].tolist() if "subtype" in cohort.columns else None
    clinical = cohort[list(clinical_cols)] if clinical_cols else None
    slide_ids = cohort["slide_id"].astype(str).tolist()

    t0 = time.perf_counter()
    with ProgressReporter("nested CV", unit="fold") as bar:
        def progress(done: int, total: int, message: str) -> None:
            # cross_validate announces the fold it starts; a log line reports the one just finished
            bar(done, total, f"fold {done} done" if done else message)

        report = cross_validate(tables, labels, groups, config, clinical=clinical, subtypes=subtypes,
                                slide_ids=slide_ids, progress=progress)
    t_cv = time.perf_counter() - t0
    bundle = train_model(tables, labels, config, clinical=clinical, subtypes=subtypes, groups=groups)
    bundle.cv_report = report
    try:
        bundle.save(out)
    except OSError as exc:
        raise UserError(f"{out}: cannot write the model bundle ({exc.strerror or exc})") from None
    t_all = time.perf_counter() - t0

    y = np.asarray(labels).astype(int)
    print(f"{len(y)} slides ({int(y.sum())} metastatic, {int((1 - y).sum())} not), {len(bundle.feature_names)} "
          f"tile features -> {len(bundle.fusion.element_names)} fused elements ({config.fusion})")
    print(report.summary())
    print(f"final model: {bundle.selection.message}; classifier {config.classifier}"
          + (f" with {bundle.config.get('n_trees')} trees" if config.classifier == "xgboost" else ""))
    if bundle.selection.fallback:
        print(f"warning: {bundle.selection.message}")
    for name, how in bundle.subtype_routing.items():
        print(f"subtype {name}: {how}")
    top = bundle.importance.sort_values(["gain", "fscore"], ascending=False).head(5)
    if len(top):
        print("top elements: " + "; ".join(top["description"].astype(str)))
    print(f"wrote {out} (CV {t_cv:.1f} s, total {t_all:.1f} s)")
    return 0

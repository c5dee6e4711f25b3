"""``napari-lnm train``: nested-CV evaluation and a final model bundle from a features folder and a cohort CSV."""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_lnm.calibration import ISOTONIC_MIN_SLIDES
from napari_lnm.classifiers import CLASSIFIERS
from napari_lnm.errors import UserError
from napari_lnm.recipe import AUTO, CHOICES, FIXED, MIL_FUSION, NAMES, ONE_SE


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
    p.add_argument("--recipe", default=None, choices=[AUTO, FIXED, *NAMES],
                   help="auto (default): every outer fold and the final model choose fusion, selection and "
                        "classifier from a small grid by inner CV; 'seed' = histogram + KS + XGBoost; 'fixed' "
                        "(implied by --fusion/--bins/--edges/--p/--select/--alpha/--top-q/--classifier) = "
                        "exactly those flags")
    p.add_argument("--recipe-choice", default=ONE_SE, choices=list(CHOICES),
                   help="how --recipe auto chooses: 1se (default) = the simplest recipe whose inner-CV AUC is "
                        "within one standard error of the best (sparse linear models first); best = the best")
    p.add_argument("--inner-repeats", type=int, default=3,
                   help="repeats of the inner CV that chooses the recipe and fits the calibration, with other "
                        "fold seeds; scores averaged (default 3)")
    p.add_argument("--fusion", default=None, choices=["histogram", "mean", "max", "pnorm", "quantile", "kmeans"],
                   help="fusion of a fixed recipe (default histogram)")
    p.add_argument("--bins", type=int, default=None, help="histogram bins (k for k-means fusion); default 5")
    p.add_argument("--edges", default=None, choices=["quantile", "uniform"],
                   help="histogram bin edges fitted on the training slides (default quantile)")
    p.add_argument("--p", type=float, default=None, help="exponent of the p-norm fusion (default 3)")
    p.add_argument("--select", default=None, choices=["ks", "mannwhitney", "ttest", "anova", "none"],
                   help="selection test of a fixed recipe (default ks)")
    p.add_argument("--alpha", type=float, default=None, help="keep elements with p < alpha (default 0.05)")
    p.add_argument("--top-q", type=int, default=None, help="keep the Q elements with the smallest p instead")
    p.add_argument("--classifier", default=None, choices=[*CLASSIFIERS, MIL_FUSION],
                   help="classifier of a fixed recipe (default xgboost); 'abmil': attention-based multiple-instance "
                        "learning on the per-tile embeddings (the deep.* columns, else every tile feature), its "
                        "settings chosen by inner CV, a logistic head on its slide log-odds, attention = key tiles")
    p.add_argument("--calibration", default="auto", choices=["auto", "platt", "isotonic", "none"],
                   help="calibrate probabilities on inner-CV predictions (auto: Platt, isotonic from "
                        f"{ISOTONIC_MIN_SLIDES} slides; default auto)")
    p.add_argument("--deep-components", type=int, default=32,
                   help="principal components the deep.* tile features are reduced to before fusion, fitted on "
                        "the training slides of every fold (default 32)")
    p.add_argument("--cv", type=int, default=5, help="outer cross-validation folds (default 5)")
    p.add_argument("--repeats", type=int, default=1,
                   help="repeat the outer CV with other fold seeds; probabilities averaged (default 1)")
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


#: The fixed-recipe flags and their defaults; giving any of them (without --recipe) fixes the recipe by hand.
RECIPE_FLAGS = {"fusion": "histogram", "bins": 5, "edges": "quantile", "p": 3.0, "select": "ks", "alpha": 0.05,
                "top_q": None, "classifier": "xgboost"}


def resolve_recipe(args: argparse.Namespace) -> str:
    """The recipe to train ('auto' unless a fixed-recipe flag is given); fills the flags' defaults into ``args``."""
    if args.classifier == MIL_FUSION:  # ABMIL replaces fusion, selection and classifier
        if args.recipe not in (None, FIXED):
            raise UserError(f"--classifier {MIL_FUSION} is a fixed recipe; it cannot be combined with --recipe "
                            f"{args.recipe}")
        args.fusion, args.select, args.classifier = MIL_FUSION, "none", "logreg"
    given = [k for k in RECIPE_FLAGS if getattr(args, k) is not None]
    for k, v in RECIPE_FLAGS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.recipe is not None:
        return args.recipe
    return FIXED if given else AUTO


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    from napari_lnm.errors import CohortError
    from napari_lnm.fusion import make_fusion
    from napari_lnm.model import (TrainConfig, check_duplicate_slides, cross_validate, load_feature_tables,
                                  read_cohort_csv, train_model)
    from napari_lnm.outdir import MODEL, check_out_dir
    from napari_lnm.progress import ProgressReporter

    out = check_out_dir(args.out, MODEL)
    recipe = resolve_recipe(args)
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    if args.inner_repeats < 1:
        raise UserError(f"--inner-repeats must be at least 1, got {args.inner_repeats}")
    if not 0.0 < args.alpha <= 1.0:
        raise UserError(f"--alpha must be in (0, 1], got {args.alpha}")
    if args.top_q is not None and args.top_q < 1:
        raise UserError(f"--top-q must be at least 1, got {args.top_q}")
    if args.deep_components < 1:
        raise UserError(f"--deep-components must be at least 1, got {args.deep_components}")
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be at least 1, got {args.bootstrap}")
    if args.fusion != MIL_FUSION:
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
                         nthread=args.threads, tiling=tiling, recipe=recipe, calibration=args.calibration,
                         repeats=args.repeats, inner_repeats=args.inner_repeats, choice=args.recipe_choice,
                         deep_components=args.deep_components)
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
          f"tile features -> {len(bundle.fusion.element_names)} fused elements ({bundle.config.get('fusion', config.fusion)})")
    print(report.summary())
    for line in recipe_lines(report, bundle):
        print(line)
    clf = bundle.config.get("classifier", config.classifier)
    print(f"final model: {bundle.selection.message}; classifier {clf}"
          + (f" with {bundle.config.get('n_trees')} trees" if clf == "xgboost" else ""))
    if bundle.selection.fallback:
        print(f"warning: {bundle.selection.message}")
    for name, how in bundle.subtype_routing.items():
        print(f"subtype {name}: {how}")
    top = bundle.importance.sort_values(["gain", "fscore"], ascending=False).head(5)
    if len(top):
        print("top elements: " + "; ".join(top["description"].astype(str)))
    print(f"wrote {out} (CV {t_cv:.1f} s, total {t_all:.1f} s)")
    return 0


def recipe_lines(report, bundle) -> list[str]:
    """The recipe chosen per outer fold and for the final model, and the operating points, one line each."""
    from napari_lnm.recipe import get

    lines = []
    counts = report.recipe_counts()
    if counts:
        lines.append("recipe chosen per outer fold: " + ", ".join(f"{n} x{c}" for n, c in counts.items()))
    name = bundle.config.get("recipe")
    if name and name != FIXED:
        scores = bundle.config.get("recipe_scores") or {}
        score = f", inner-CV AUC {scores[name]:.3f}" if scores.get(name) is not None else ""
        best = bundle.config.get("recipe_best")
        if best and best != name and scores.get(best) is not None:
            score += (f"; the simplest within one SE ({bundle.config.get('recipe_best_se', 0):.3f}) of the best, "
                      f"{best} {scores[best]:.3f}")
        lines.append(f"final model recipe: {name} ({get(name).describe()}{score})")
    for key, label in (("rule_out", "rule-out (>= 90% sensitivity)"), ("rule_in", "rule-in (>= 90% specificity)")):
        pt = (report.operating_points or {}).get(key)
        if pt:
            lines.append(f"{label}: probability >= {pt['threshold']:.3f} is positive; sensitivity "
                         f"{pt['sensitivity']:.2f} ({pt['sensitivity_ci'][0]:.2f}-{pt['sensitivity_ci'][1]:.2f}), "
                         f"specificity {pt['specificity']:.2f} ({pt['specificity_ci'][0]:.2f}-"
                         f"{pt['specificity_ci'][1]:.2f}), PPV {pt['ppv']:.2f}, NPV {pt['npv']:.2f}")
    return lines

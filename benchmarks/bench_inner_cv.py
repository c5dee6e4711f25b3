"""Leakage of the classifier's inner CV when a patient has several slides: slide folds vs patient folds.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_inner_cv.py [--patients 30] [--slides 3] [--seeds 5]``.
A synthetic cohort with no signal: each patient gets a random label and ``--slides`` near-identical
slides (one random feature vector plus 1 % noise).  The inner CV that picks XGBoost's number of trees
(``classifiers.inner_folds`` + ``xgboost.cv``, as ``XGBoostClassifier.fit`` runs it) is scored with
slide folds (no groups) and with patient folds (``groups`` = patient id).  With slide folds a
patient's twin slides sit on both sides, so the inner AUC is far above the 0.5 that the labels allow.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from napari_lnm.classifiers import XGBoostClassifier, inner_folds  # noqa: E402


def cohort(n_patients: int, n_slides: int, n_features: int, seed: int):
    """(X, y, groups) of a signal-free cohort with near-identical slides per patient."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_patients, n_features))
    y_pat = rng.permutation(np.arange(n_patients) % 2)
    X = np.repeat(base, n_slides, axis=0) + 0.01 * rng.normal(size=(n_patients * n_slides, n_features))
    return X.astype(np.float32), np.repeat(y_pat, n_slides), np.repeat(np.arange(n_patients), n_slides).astype(str)


def inner_cv(X, y, groups, seed: int) -> tuple[int, float, bool]:
    """(trees chosen, best inner test AUC, grouped?) of the inner CV of XGBoostClassifier.fit."""
    import xgboost as xgb

    clf = XGBoostClassifier(seed=seed)
    folds, grouped = inner_folds(y, groups, wanted=3, seed=seed)
    hist = xgb.cv(clf._params(y), xgb.DMatrix(X, label=y), num_boost_round=clf.max_rounds, folds=folds,
                  early_stopping_rounds=clf.early_stopping, seed=seed, as_pandas=False)
    auc = hist["test-auc-mean"]
    return len(auc), float(max(auc)), grouped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patients", type=int, default=30)
    ap.add_argument("--slides", type=int, default=3, help="slides per patient")
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"{args.patients} patients x {args.slides} near-identical slides, {args.features} noise features, "
          "labels per patient at random (true AUC 0.5)\n")
    print("| seed | trees, slide folds | best inner AUC, slide folds | trees, patient folds | best inner AUC, patient folds |")
    print("|---|---|---|---|---|")
    for seed in range(args.seeds):
        X, y, g = cohort(args.patients, args.slides, args.features, seed)
        n0, a0, _ = inner_cv(X, y, None, seed)
        n1, a1, grouped = inner_cv(X, y, g, seed)
        assert grouped
        print(f"| {seed} | {n0} | {a0:.3f} | {n1} | {a1:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

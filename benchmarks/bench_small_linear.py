"""Linear learners on mean-fused features at small cohort sizes, with and without centring within subtype.

A study for the 60-slide target of issue 15, not a recipe of ``train``: which linear
fit on the slide means gets closest to the oracle when 48 slides train each fold,
and how much of the gap is the subtypes' shift of the features. Run on cohorts made
and extracted as in ``bench_recipe.py``::

    OMP_NUM_THREADS=1 python benchmarks/bench_small_linear.py --cohort C/cohort.csv --features F \\
        --cohort-seed 16 --positive-fraction 0.333 --sizes 60,160 --seeds 0-15

Each (size, seed) is the stratified subset and 5-fold split of ``bench_recipe.py``
(same oracle). Inside every outer fold the training slides alone give the
standardisation, the per-subtype means ("centred": each slide's means minus those
of its subtype's training slides, the test slides' from the same training means)
and the fit; out-of-fold scores are the linear predictor divided by its SD on the
training slides, pooled over the folds for one AUC. Learners: elastic net (the
grid's ``mean-none-enet``: C 0.1, l1 ratio 0.5), L2 logistic regression (C 0.01),
PLS with 2 components, and supervised principal components (Bair & Tibshirani
2006: the m columns with the largest |t| between classes, their first k principal
components, a logistic regression on those). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from bench_recipe import latent_severity, oracle_auc, parse_seeds, subset  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from napari_lnm.engine import META_COLUMNS  # noqa: E402
from napari_lnm.model import load_feature_tables, read_cohort_csv, roc_auc  # noqa: E402


def slide_means(tables) -> np.ndarray:
    """(slides, features) mean over each slide's tiles; NaN -> the column's median over slides."""
    cols = [c for c in tables[0].columns if c not in META_COLUMNS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns of a slide stay NaN here
        m = np.array([np.nanmean(t[cols].to_numpy(float), axis=0) for t in tables])
    med = np.nanmedian(np.where(np.isnan(m).all(0), 0.0, m), axis=0)
    return np.where(np.isnan(m), med, m)


def enet(z, y, zt):
    """Elastic-net logistic regression decision values."""
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=0.1, penalty="elasticnet", l1_ratio=0.5, solver="saga", class_weight="balanced",
                           max_iter=3000, tol=1e-3, random_state=0)
    return m.fit(z, y).decision_function(zt)


def ridge(z, y, zt):
    """L2 logistic regression (C 0.01) decision values."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000).fit(z, y).decision_function(zt)


def pls2(z, y, zt):
    """Two-component PLS regression of the centred label."""
    from sklearn.cross_decomposition import PLSRegression

    return PLSRegression(2, scale=False).fit(z, y - y.mean()).predict(zt).ravel()


def spca(m: int, k: int):
    """Supervised principal components: top-m |t| columns, their first k PCs, logistic regression."""
    from sklearn.linear_model import LogisticRegression

    def fit(z, y, zt):
        a, b = z[y == 1], z[y == 0]
        t = np.abs(a.mean(0) - b.mean(0)) / (np.sqrt(a.var(0) / len(a) + b.var(0) / len(b)) + 1e-9)
        keep = np.argsort(-t, kind="stable")[:m]
        s = z[:, keep]
        vt = np.linalg.svd(s - s.mean(0), full_matrices=False)[2][:k].T
        return LogisticRegression(class_weight="balanced").fit(s @ vt, y).decision_function(zt[:, keep] @ vt)

    return fit


LEARNERS = {"elastic net": enet, "L2 logistic": ridge, "PLS, 2 components": pls2,
            "supervised PCA, 20 columns, 1 PC": spca(20, 1), "supervised PCA, 20 columns, 2 PCs": spca(20, 2)}


def fold_scores(x, y, st, tr, te, centre: bool, learner) -> np.ndarray:
    """Test-slide scores of one outer fold, everything fitted on the training slides ``tr``."""
    x = x.copy()
    if centre:
        for s in np.unique(st):
            x[st == s] -= x[tr][st[tr] == s].mean(axis=0) if np.any(st[tr] == s) else 0.0
    mu, sd = x[tr].mean(0), x[tr].std(0)
    sd = np.where(sd > 0, sd, 1.0)
    z, zt = (x[tr] - mu) / sd, (x[te] - mu) / sd
    return learner(z, y[tr], zt) / (np.std(learner(z, y[tr], z)) or 1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--cohort-seed", type=int, required=True)
    ap.add_argument("--positive-fraction", type=float, default=0.5)
    ap.add_argument("--sizes", default="60,160")
    ap.add_argument("--seeds", default="0-15")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    cohort = read_cohort_csv(args.cohort)
    tables, _ = load_feature_tables(cohort, args.features)
    y = cohort["label"].to_numpy(dtype=int)
    st = cohort["subtype"].astype(str).to_numpy()
    labels, sev = latent_severity(len(y), args.cohort_seed, args.positive_fraction)
    if not np.array_equal(labels, y):
        raise SystemExit("the cohort's labels are not those of --cohort-seed / --positive-fraction")
    x = slide_means(tables)
    print(f"cohort seed {args.cohort_seed}: {len(y)} slides, {x.shape[1]} mean-fused features\n")
    print("| slides | seeds | learner | features | mean gap to oracle (worst) | seeds within 0.04 |\n"
          "|---|---|---|---|---|---|")
    for n in [int(v) for v in args.sizes.split(",") if v]:
        seeds = parse_seeds(args.seeds)
        gaps: dict[tuple[str, bool], list[float]] = {}
        for seed in seeds:
            idx = subset(y, n, seed)
            orc = oracle_auc(y[idx], sev[idx], seed)
            folds = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(idx, y[idx]))
            for name, learner in LEARNERS.items():
                for centre in (False, True):
                    oof = np.zeros(len(idx))
                    for tr, te in folds:
                        oof[te] = fold_scores(x[idx], y[idx], st[idx], tr, te, centre, learner)
                    gaps.setdefault((name, centre), []).append(roc_auc(y[idx], oof) - orc)
        for (name, centre), g in gaps.items():
            g = np.array(g)
            print(f"| {n} | {seeds[0]}-{seeds[-1]} | {name} | {'centred within subtype' if centre else 'as they are'} "
                  f"| {g.mean():+.3f} ({g.min():+.3f}) | {int((g >= -0.04).sum())} of {len(g)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

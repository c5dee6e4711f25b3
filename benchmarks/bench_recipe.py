"""Default ``train`` recipe (inner-CV choice + calibration) vs fixed recipes vs the oracle, on a synth cohort.

Run (features extracted once, then reused)::

    napari-lnm synth C --n-slides 200 --seed 16 --size 1536x1536 --positive-fraction 0.333
    napari-lnm extract --cohort C/cohort.csv --out F --tile-size 256 --max-tiles 24 --workers 1
    OMP_NUM_THREADS=1 nice python benchmarks/bench_recipe.py --cohort C/cohort.csv --features F \\
        --cohort-seed 16 --positive-fraction 0.333 --sizes 60,160 --seeds 0,1,2,3 [--curve 30,60,100,150]

The cohort's ``subtype`` column goes to ``train`` as ``napari-lnm train`` gives it (``--no-subtype``: not).
The oracle is a cross-validated logistic regression on the generator's latent truth:
the per-slide severity that ``synth.make_cohort`` draws (label + N(0, SEVERITY_SD)),
replayed here from the cohort seed. Each (size, seed) row takes a stratified random
subset of that many slides (seed) and runs a 5-fold nested CV with fold seed ``seed``.
"ECE floor" is the ECE that the row's own out-of-fold probabilities would score if
they were perfectly calibrated (mean over 200 label draws y* ~ Bernoulli(p)): an ECE
near it is sampling noise on this many slides, not miscalibration. "pooled ECE" scores the out-of-fold
probabilities of all seeds' rows of one size together (seeds x slides predictions, each from a model trained on
that many slides): the calibration of the recipe at that cohort size, with a floor a seeds-fold larger sample
brings down.
``--configs 0,1`` runs only those CONFIGS (0-based indices; default all).
``--curve`` adds a learning curve: train on N slides, score on a fixed held-out set.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from napari_lnm.calibration import ece_noise_floor, expected_calibration_error  # noqa: E402
from napari_lnm.model import TrainConfig, cross_validate, load_feature_tables, read_cohort_csv, roc_auc, \
    train_model  # noqa: E402
from napari_lnm.synth import SEVERITY_SD, SUBTYPES  # noqa: E402

CONFIGS = {
    "default (auto + Platt)": dict(recipe="auto", calibration="auto"),
    "best of one inner CV + Platt (default before 1-SE)": dict(recipe="auto", calibration="auto", choice="best",
                                                               inner_repeats=1),
    "seed recipe, uncalibrated (old default)": dict(recipe="seed"),
    "mean + none + logreg, fixed": dict(recipe="mean-none-logreg"),
    "mean + none + elastic net + Platt, fixed": dict(recipe="mean-none-enet", calibration="auto"),
    "mean + supervised PCA within subtype + Platt, fixed": dict(recipe="mean-spca-subtype", calibration="auto"),
    "mean + elastic net blended with supervised PCA within subtype + Platt, fixed":
        dict(recipe="mean-blend-subtype", calibration="auto"),
    "mean + elastic net blended with supervised PCA within subtype, uncalibrated, fixed":
        dict(recipe="mean-blend-subtype"),
}


def latent_severity(n_slides: int, seed: int, positive_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels, severity) per slide exactly as make_cohort draws them (one slide per patient, default subtypes)."""
    rng = np.random.default_rng(seed)
    n_pos = int(round(n_slides * positive_fraction))
    labels = rng.permutation(np.r_[np.ones(n_pos, int), np.zeros(n_slides - n_pos, int)])
    rng.permutation([SUBTYPES[i % len(SUBTYPES)] for i in range(n_slides)])
    return labels, labels + rng.normal(0.0, SEVERITY_SD, n_slides)


def oracle_auc(y: np.ndarray, severity: np.ndarray, seed: int) -> float:
    """Out-of-fold AUC of a 5-fold logistic regression on the latent severity."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    p = cross_val_predict(LogisticRegression(), severity[:, None], y, method="predict_proba",
                          cv=StratifiedKFold(5, shuffle=True, random_state=seed))[:, 1]
    return roc_auc(y, p)


def parse_seeds(text: str) -> list[int]:
    """'0-3', '0,1,2,3' or '0-2,7' -> the seeds as a list of ints."""
    out = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a stratified random subset of n slides (all of them when n >= len(y))."""
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    k = int(round(n * len(pos) / len(y)))
    return np.sort(np.r_[rng.choice(pos, k, replace=False), rng.choice(neg, n - k, replace=False)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--cohort-seed", type=int, required=True, help="the --seed the cohort was synthesised with")
    ap.add_argument("--positive-fraction", type=float, default=0.5)
    ap.add_argument("--sizes", default="60,160")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--curve", default="", help="training sizes for a learning curve, e.g. 30,60,100,150")
    ap.add_argument("--holdout", type=int, default=50, help="held-out slides of the learning curve")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="", help="comma-separated 0-based indices of CONFIGS to run (default all)")
    ap.add_argument("--no-subtype", action="store_true",
                    help="train without the cohort's subtype column (as for a cohort that has none)")
    args = ap.parse_args(argv)
    configs = CONFIGS if not args.configs else {k: v for i, (k, v) in enumerate(CONFIGS.items())
                                                if str(i) in args.configs.split(",")}
    cohort = read_cohort_csv(args.cohort)
    tables, _ = load_feature_tables(cohort, args.features)
    y = cohort["label"].to_numpy(dtype=int)
    st = cohort["subtype"].astype(str).to_numpy() if "subtype" in cohort.columns and not args.no_subtype else None
    labels, sev = latent_severity(len(y), args.cohort_seed, args.positive_fraction)
    if not np.array_equal(labels, y):
        raise SystemExit("the cohort's labels are not those of --cohort-seed / --positive-fraction")
    ntiles = int(np.median([len(t) for t in tables]))
    print(f"{len(y)} synthetic slides ({y.sum()} metastatic), cohort seed {args.cohort_seed}, median {ntiles} "
          f"tiles/slide, {len(tables[0].columns) - 5} tile features\n")
    print("| slides | seed | oracle AUC | recipe | nested-CV AUC (95% CI) | gap to oracle | ECE | ECE floor | Brier | "
          "recipes chosen (outer folds) | time s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for n in [int(v) for v in args.sizes.split(",") if v]:
        for seed in parse_seeds(args.seeds):
            idx = subset(y, n, seed)
            orc = oracle_auc(y[idx], sev[idx], seed)
            for name, kw in configs.items():
                cfg = TrainConfig(seed=seed, nthread=args.threads, n_bootstrap=1000, **kw)
                t0 = time.perf_counter()
                rep = cross_validate([tables[i] for i in idx], y[idx], config=cfg,
                                     subtypes=None if st is None else st[idx])
                dt = time.perf_counter() - t0
                chosen = ", ".join(f"{k} x{v}" for k, v in rep.recipe_counts().items())
                floor = ece_noise_floor(rep.oof, seed=seed)
                print(f"| {len(idx)} | {seed} | {orc:.3f} | {name} | {rep.auc:.3f} ({rep.ci[0]:.2f}-{rep.ci[1]:.2f}) | "
                      f"{rep.auc - orc:+.3f} | {rep.ece:.3f} | {floor:.3f} | {rep.brier:.3f} | {chosen} | {dt:.0f} |",
                      flush=True)
                rows.append(dict(n=len(idx), seed=seed, recipe=name, auc=rep.auc, oracle=orc, ece=rep.ece,
                                 floor=floor, time=dt, y=y[idx], p=np.asarray(rep.oof, dtype=float)))
    df = pd.DataFrame(rows)
    if len(df):
        print("\n| slides | recipe | mean AUC | mean gap to oracle (worst) | seeds within 0.04 | mean ECE | "
              "mean ECE floor | seeds ECE <= 0.10 | pooled ECE (floor) | mean time s |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
        for (n, name), g in df.groupby(["n", "recipe"], sort=False):
            gap = g.auc - g.oracle
            yp, pp = np.concatenate(list(g.y)), np.concatenate(list(g.p))
            print(f"| {n} | {name} | {g.auc.mean():.3f} | {gap.mean():+.3f} ({gap.min():+.3f}) | "
                  f"{int((gap >= -0.04).sum())} of {len(g)} | {g.ece.mean():.3f} | {g.floor.mean():.3f} | "
                  f"{int((g.ece <= 0.10).sum())} of {len(g)} | {expected_calibration_error(yp, pp):.3f} "
                  f"({ece_noise_floor(pp, seed=0):.3f}) | {g.time.mean():.0f} |")
    if args.curve:
        learning_curve(tables, y, st, sev, [int(v) for v in args.curve.split(",")],
                       parse_seeds(args.seeds), args.holdout, args.threads)
    return 0


def learning_curve(tables, y, st, sev, sizes, seeds, n_holdout: int, threads: int) -> None:
    """Train on N slides, score AUC / ECE (and its floor) on a fixed stratified held-out set, per seed; print a table."""
    hold = subset(y, n_holdout, 12345)
    rest = np.setdiff1d(np.arange(len(y)), hold)
    print(f"\nLearning curve: held-out {len(hold)} slides ({y[hold].sum()} metastatic), oracle AUC on them "
          f"{roc_auc(y[hold], sev[hold]):.3f}\n")
    print("| training slides | recipe | AUC per seed | mean AUC | mean ECE | mean ECE floor |\n|---|---|---|---|---|---|")
    for n in sizes:
        for name in ("default (auto + Platt)", "seed recipe, uncalibrated (old default)"):
            kw = CONFIGS[name]
            aucs, eces, floors = [], [], []
            for seed in seeds:
                tr = rest[subset(y[rest], n, seed)]
                b = train_model([tables[i] for i in tr], y[tr], TrainConfig(seed=seed, nthread=threads, **kw),
                                subtypes=None if st is None else st[tr])
                p = np.array([b.for_subtype(None if st is None else st[i])[0].predict_proba([tables[i]])[0]
                              for i in hold])
                aucs.append(roc_auc(y[hold], p))
                eces.append(expected_calibration_error(y[hold], p))
                floors.append(ece_noise_floor(p, seed=seed))
            print(f"| {n} | {name} | {', '.join(f'{a:.3f}' for a in aucs)} | {np.mean(aucs):.3f} | "
                  f"{np.mean(eces):.3f} | {np.mean(floors):.3f} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())

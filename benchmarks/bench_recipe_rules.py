"""Recipe-choice rules and calibrators compared offline on the same nested-CV folds (issue 15, 60 vs 160 slides).

For every (slides, seed) subset of a synth cohort (as ``bench_recipe.py`` draws it) and
every outer fold, this caches once: per inner-CV repeat (``--repeats``, inner fold seeds
seed, seed + 1, ...) the fold AUCs and inner out-of-fold probabilities of every grid
recipe, each recipe's probabilities on the outer test slides (fitted on the whole outer
training part), and the mean / SD of each model's in-sample logits. It then scores, on
those cached predictions, the choice rules (best of 1..R inner CVs, the one-SE rule with
1..R repeats, the mean of the top-3 recipes' probabilities, each recipe fixed) and, for
the default rule, the calibrators (Platt on the stacked inner out-of-fold probabilities
with its smoothed targets from the slides' class counts, the same from the pairs' counts,
Platt on one repeat, isotonic, beta, temperature, Platt with the logit scale matched
from the inner models to the final model, none). ``default`` reproduces ``train``'s default
(1-SE rule, 3 repeats, Platt) exactly for a cohort without subtypes (the subtype recipes are left out). Run::

    OMP_NUM_THREADS=1 nice python benchmarks/bench_recipe_rules.py --cohort C/cohort.csv --features F \\
        --cohort-seed 16 --positive-fraction 0.333 --sizes 60,160 --seeds 0-15 --cache /tmp/rules

Prints markdown tables (mean over seeds; "vs before": mean paired AUC difference to the
best of one inner CV, with its standard error over seeds).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from bench_recipe import latent_severity, oracle_auc, parse_seeds, subset  # noqa: E402
from napari_lnm import recipe as recipes  # noqa: E402
from napari_lnm.calibration import Calibrator, ece_noise_floor, expected_calibration_error  # noqa: E402
from napari_lnm.classifiers import inner_folds, make_classifier  # noqa: E402
from napari_lnm.fusion import tile_tables  # noqa: E402
from napari_lnm.model import InnerCV, TrainConfig, candidates, choose_recipe, infer_feature_names, \
    load_feature_tables, read_cohort_csv, roc_auc  # noqa: E402
# the steps train_model runs, called one by one to cache every recipe's predictions on the same folds
from napari_lnm.model import _fit_fusion, _fit_head, _folds  # noqa: E402, PLC2701


def _logit(p):
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.clip(z, -500, 500)))


def cache_subset(tables, y_all, sev, fn, n: int, seed: int, repeats: int) -> dict:
    """Inner-CV and outer-test predictions of every grid recipe for one (slides, seed) subset."""
    idx = subset(y_all, n, seed)
    y, tt = y_all[idx], [tables[i] for i in idx]
    cands = candidates(TrainConfig(seed=seed, recipe="auto"), None)  # the grid train uses without subtypes
    fold, _ = _folds(y, None, 5, seed)
    folds = []
    for k in range(5):
        tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        ytr, ttr, tte = y[tr], [tt[i] for i in tr], [tt[i] for i in te]
        inner = []
        for r in range(repeats):
            ifolds, _ = inner_folds(ytr, None, wanted=3, seed=seed + r)
            aucs = {nm: [] for nm, _ in cands}
            oof = {nm: np.full(len(tr), np.nan) for nm, _ in cands}
            spread = {nm: [] for nm, _ in cands}
            for itr, ite in ifolds:
                fused = {}
                for nm, cfg in cands:
                    key = (cfg.fusion, cfg.bins, cfg.edges, cfg.p)
                    if key not in fused:
                        fus, f_tr = _fit_fusion([ttr[i] for i in itr], cfg, fn, ytr[itr])
                        fused[key] = (fus, f_tr, fus.transform([ttr[i] for i in ite]))
                    fus, f_tr, f_te = fused[key]
                    b = _fit_head(fus, f_tr, ytr[itr], cfg, fn, None)
                    oof[nm][ite] = b.classifier.predict_proba(b.design_fused(f_te, None))
                    aucs[nm].append(roc_auc(ytr[ite], oof[nm][ite]))
                    z = _logit(b.classifier.predict_proba(b.design_fused(f_tr, None)))
                    spread[nm].append((z.mean(), z.std()))
            inner.append(dict(aucs=aucs, oof=oof, spread=spread))
        test, final, fused = {}, {}, {}
        for nm, cfg in cands:
            key = (cfg.fusion, cfg.bins, cfg.edges, cfg.p)
            if key not in fused:
                fus, f_tr = _fit_fusion(ttr, cfg, fn, ytr)
                fused[key] = (fus, f_tr, fus.transform(tte))
            fus, f_tr, f_te = fused[key]
            b = _fit_head(fus, f_tr, ytr, cfg, fn, None)
            test[nm] = b.classifier.predict_proba(b.design_fused(f_te, None))
            z = _logit(b.classifier.predict_proba(b.design_fused(f_tr, None)))
            final[nm] = (z.mean(), z.std())
        folds.append(dict(tr=tr, te=te, inner=inner, test=test, final=final))
    return dict(y=y, oracle=oracle_auc(y, sev[idx], seed), names=[c[0] for c in cands], folds=folds, seed=seed)


def _inner(f: dict, names, R: int) -> InnerCV:
    reps = f["inner"][:R]
    return InnerCV({nm: np.concatenate([np.asarray(r["aucs"][nm], float) for r in reps]) for nm in names},
                   {nm: np.stack([r["oof"][nm] for r in reps]) for nm in names}, len(reps[0]["aucs"][names[0]]))


def _calibrate(f: dict, y_tr, nm: str, R: int, how: str) -> np.ndarray:
    """Outer test probabilities of recipe ``nm`` through calibrator ``how`` fitted on its inner oof."""
    reps = f["inner"][:R]
    yy = np.tile(y_tr, len(reps))
    pp = np.concatenate([r["oof"][nm] for r in reps])
    t = f["test"][nm]
    bal = make_classifier(recipes.get(nm).classifier).balanced  # Platt's prior centre, as train sets it
    if how == "none":
        return t
    if how == "platt-1":
        return Calibrator.fit(y_tr, reps[0]["oof"][nm], "platt", balanced=bal).apply(t)
    if how == "platt-pairs":  # stacked, but Platt's smoothed targets from the pairs' class counts
        return Calibrator.fit(yy, pp, "platt", balanced=bal).apply(t)
    if how in ("platt", "isotonic"):
        return Calibrator.fit(yy, pp, how, slides=len(y_tr), balanced=bal).apply(t)
    if how == "beta":  # logistic regression on (ln p, -ln(1 - p))
        from sklearn.linear_model import LogisticRegression

        def feats(p):
            p = np.clip(p, 1e-6, 1 - 1e-6)
            return np.c_[np.log(p), -np.log(1 - p)]
        return LogisticRegression(C=1e4).fit(feats(pp), yy).predict_proba(feats(t))[:, 1]
    if how == "temperature":  # slope only, no intercept
        z = _logit(pp)
        grid = np.linspace(0.05, 3, 296)
        ll = [-(yy * np.log(_sigmoid(a * z) + 1e-12) + (1 - yy) * np.log(1 - _sigmoid(a * z) + 1e-12)).sum()
              for a in grid]
        return _sigmoid(grid[int(np.argmin(ll))] * _logit(t))
    if how == "platt-scaled":  # Platt, the final model's logits mapped onto the inner models' scale first
        c = Calibrator.fit(yy, pp, "platt", slides=len(y_tr), balanced=bal)
        s = np.array([v for r in reps for v in r["spread"][nm]])
        mi, si = s[:, 0].mean(), s[:, 1].mean()
        mf, sf = f["final"][nm]
        return _sigmoid(c.a * ((_logit(t) - mf) * si / max(sf, 1e-9) + mi) + c.b)
    raise ValueError(how)


def score(d: dict, rule: str, R: int, cal: str = "platt") -> dict:
    """Outer out-of-fold AUC / ECE / floor of one choice rule and calibrator on a cached subset."""
    y, names = d["y"], d["names"]
    oof = np.full(len(y), np.nan)
    chosen = []
    for f in d["folds"]:
        inner = _inner(f, names, R)
        if rule in names:
            picks = [rule]
        elif rule == "top3":
            sc = inner.scores
            picks = sorted(names, key=lambda nm: (-np.nan_to_num(sc[nm], nan=-1), names.index(nm)))[:3]
        else:
            picks = [choose_recipe(inner, names, rule)[0]]
        chosen += picks
        oof[f["te"]] = np.mean([_calibrate(f, y[f["tr"]], nm, R, cal) for nm in picks], axis=0)
    auc = roc_auc(y, oof)
    return dict(auc=auc, gap=auc - d["oracle"], ece=expected_calibration_error(y, oof),
                floor=ece_noise_floor(oof, seed=d["seed"]), oof=oof, y=y, chosen=chosen)


def _slope(ys, ps) -> float:
    from sklearn.linear_model import LogisticRegression

    y, p = np.concatenate(ys), np.concatenate(ps)
    return float(LogisticRegression(C=1e6).fit(_logit(p)[:, None], y).coef_[0][0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--cohort-seed", type=int, required=True)
    ap.add_argument("--positive-fraction", type=float, default=0.5)
    ap.add_argument("--sizes", default="60,160")
    ap.add_argument("--seeds", default="0-3", help="e.g. 0-15 or 0,1,2")
    ap.add_argument("--repeats", type=int, default=3, help="inner-CV repeats cached (default 3)")
    ap.add_argument("--cache", required=True, help="folder for the cached predictions (reused when present)")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    cohort = read_cohort_csv(args.cohort)
    tables, _ = load_feature_tables(cohort, args.features)
    y_all = cohort["label"].to_numpy(dtype=int)
    labels, sev = latent_severity(len(y_all), args.cohort_seed, args.positive_fraction)
    if not np.array_equal(labels, y_all):
        raise SystemExit("the cohort's labels are not those of --cohort-seed / --positive-fraction")
    fn = infer_feature_names(tables)
    tables = tile_tables(tables, fn)
    R = args.repeats
    rules = [("before: best of 1 inner CV", recipes.BEST, 1), (f"best of {R} inner CVs", recipes.BEST, R)]
    rules += [(f"1-SE rule, {r} inner CV(s)", recipes.ONE_SE, r) for r in range(1, R + 1)]
    rules += [(f"mean of the top-3 recipes, {R} inner CVs", "top3", R)]
    cals = ["platt", "platt-pairs", "platt-1", "isotonic", "beta", "temperature", "platt-scaled", "none"]
    for n in [int(v) for v in args.sizes.split(",") if v]:
        data = []
        for seed in parse_seeds(args.seeds):
            path = cache / f"n{n}_s{seed}_r{R}.pkl"
            if not path.exists():
                t0 = time.perf_counter()
                path.write_bytes(pickle.dumps(cache_subset(tables, y_all, sev, fn, n, seed, R)))
                print(f"cached {n} slides seed {seed} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            data.append(pickle.loads(path.read_bytes()))
        print(f"\n{n} slides, {len(data)} seeds ({args.seeds}), mean oracle AUC "
              f"{np.mean([d['oracle'] for d in data]):.3f}\n")
        print("| choice rule (Platt) | mean AUC | mean gap to oracle (worst) | seeds within 0.04 | vs before (SE) | "
              "mean ECE | mean ECE floor |\n|---|---|---|---|---|---|---|")
        base = [score(d, recipes.BEST, 1) for d in data]
        fixed = [(f"{nm}, fixed", nm, R) for nm in recipes.SIMPLEST_FIRST if nm in data[0]["names"]]
        for label, rule, r in rules + fixed:
            rs = base if (rule, r) == (recipes.BEST, 1) else [score(d, rule, r) for d in data]
            gap = np.array([s["gap"] for s in rs])
            diff = np.array([s["auc"] - b["auc"] for s, b in zip(rs, base)])
            print(f"| {label} | {np.mean([s['auc'] for s in rs]):.3f} | {gap.mean():+.3f} ({gap.min():+.3f}) | "
                  f"{int((gap >= -0.04).sum())} of {len(rs)} | {diff.mean():+.3f} ({diff.std(ddof=1) / np.sqrt(len(diff)):.3f}) | "
                  f"{np.mean([s['ece'] for s in rs]):.3f} | {np.mean([s['floor'] for s in rs]):.3f} |")
        print(f"\n| calibrator (1-SE rule, {R} inner CVs) | mean AUC | mean ECE | mean ECE floor | seeds ECE <= 0.10 | "
              "calibration slope (all seeds pooled) |\n|---|---|---|---|---|---|")
        for cal in cals:
            rs = [score(d, recipes.ONE_SE, R, cal) for d in data]
            print(f"| {cal} | {np.mean([s['auc'] for s in rs]):.3f} | {np.mean([s['ece'] for s in rs]):.3f} | "
                  f"{np.mean([s['floor'] for s in rs]):.3f} | {sum(s['ece'] <= 0.10 for s in rs)} of {len(rs)} | "
                  f"{_slope([s['y'] for s in rs], [s['oof'] for s in rs]):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

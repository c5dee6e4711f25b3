"""Subtype routing (own / pooled / partially pooled, chosen by inner CV) vs one pooled model, nested CV.

Run on ``napari-lnm synth`` cohorts (features extracted once) and on planted tile tables::

    napari-lnm synth C --n-slides 200 --seed 15 --size 1024x1024 --positive-fraction 0.333
    napari-lnm extract --cohort C/cohort.csv --out F --tile-size 256 --max-tiles 16 --workers 1
    OMP_NUM_THREADS=1 nice python benchmarks/bench_routing.py --cohort C/cohort.csv --features F \\
        [--cohort D/cohort.csv --features G] --sizes 60,200 --seeds 0,1,2,3 --planted flip,risky,null

Each (cohort, slides, seed) row takes a stratified random subset of that many slides (seed; all slides when the
cohort has no more) and runs one 5-fold nested CV (fold seed = seed) with ``--per-subtype``: every outer fold
routes each subtype (4 of them) by inner CV on its training part. The row gives the AUC of the routed
out-of-fold probabilities, of the pooled model's and of the partially pooled model's (the pooled recipe with
the subtype as an input) on the same folds. Planted cohorts (no files): ``flip`` = subtype D's signal points
the other way, ``risky`` = subtype D is metastatic 3x as often, ``null`` = subtypes change nothing.
The target: routed is never below pooled by more than the seed-to-seed spread (SD over seeds of the pooled
AUC at that size). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench_recipe import parse_seeds, subset  # noqa: E402
from napari_lnm.model import TrainConfig, cross_validate, load_feature_tables, read_cohort_csv  # noqa: E402

PLANTED_SUBTYPES = ("A", "B", "C", "D")


def planted_cohort(n: int, seed: int, scenario: str, n_tiles: int = 8) -> tuple[list[pd.DataFrame], np.ndarray,
                                                                                np.ndarray, None]:
    """Tile tables, labels, subtypes (A-D in turn) and no patient ids: ``nucleus.f0_mean`` carries the signal."""
    rng = np.random.default_rng(seed)
    st = np.array([PLANTED_SUBTYPES[i % 4] for i in range(n)], dtype=object)
    prevalence = np.where(st == "D", 0.75, 0.25) if scenario == "risky" else np.full(n, 1 / 3)
    y = (rng.random(n) < prevalence).astype(int)
    for s in PLANTED_SUBTYPES:  # at least two slides of each class per subtype
        y[np.flatnonzero(st == s)[:4]] = [0, 0, 1, 1]
    tables = []
    for i in range(n):
        sign = -1.0 if scenario == "flip" and st[i] == "D" else 1.0
        latent = sign * (y[i] - 0.5) * 0.8 + rng.normal(0, 0.5)
        d = {"slide_id": f"p{i:03d}", "x": np.arange(n_tiles) * 256, "y": 0, "size": 256, "tissue_fraction": 1.0,
             "nucleus.f0_mean": latent + rng.normal(0, 1.0, n_tiles)}
        for k in range(1, 6):
            d[f"nucleus.f{k}_mean"] = rng.normal(0, 1.0, n_tiles)
        tables.append(pd.DataFrame(d))
    return tables, y, st, None


def synth_cohort(cohort: str, features: str) -> tuple[list[pd.DataFrame], np.ndarray, np.ndarray, np.ndarray]:
    """Feature tables, labels, subtypes and patient ids of a synth cohort."""
    co = read_cohort_csv(cohort)
    tables, _ = load_feature_tables(co, features)
    return tables, co["label"].to_numpy(dtype=int), co["subtype"].astype(str).to_numpy(dtype=object), \
        co["patient_id"].astype(str).to_numpy()


def picks_text(choices: dict | None) -> str:
    """'pooled 17, partial 2, own 1' over outer folds x subtypes."""
    total: dict[str, int] = {}
    for d in (choices or {}).values():
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k} {v}" for k, v in sorted(total.items(), key=lambda kv: -kv[1])) or "-"


def run_row(name: str, data, n: int, seed: int, kw: dict) -> dict:
    """One nested CV with per-subtype routing on a subset of ``n`` slides; print and return its row."""
    tables, y, st, groups = data
    idx = subset(y, n, seed)
    cfg = TrainConfig(per_subtype=True, seed=seed, n_bootstrap=500, **kw)
    t0 = time.perf_counter()
    rep = cross_validate([tables[i] for i in idx], y[idx], None if groups is None else groups[idx], cfg,
                         subtypes=list(st[idx]))
    dt = time.perf_counter() - t0
    part = rep.auc_partial if rep.auc_partial is not None else float("nan")
    print(f"| {name} | {len(idx)} | {seed} | {rep.auc_pooled:.3f} | {rep.auc:.3f} | {part:.3f} | "
          f"{rep.auc - rep.auc_pooled:+.3f} | {part - rep.auc_pooled:+.3f} | {picks_text(rep.subtype_choices)} | "
          f"{dt:.0f} |", flush=True)
    return dict(cohort=name, n=len(idx), seed=seed, pooled=rep.auc_pooled, routed=rep.auc, partial=part)


def summary(df: pd.DataFrame) -> None:
    """Per (cohort, size): means, the seed-to-seed spread of the pooled AUC and whether the target holds."""
    print("\n| cohort | slides | mean pooled | mean routed | mean partial | spread (SD of pooled over seeds) | "
          "worst routed − pooled | mean routed − pooled | target met |\n|---|---|---|---|---|---|---|---|---|")
    for (name, n), g in df.groupby(["cohort", "n"], sort=False):
        spread = float(g.pooled.std(ddof=1)) if len(g) > 1 else float("nan")
        worst = float((g.routed - g.pooled).min())
        print(f"| {name} | {n} | {g.pooled.mean():.3f} | {g.routed.mean():.3f} | {g.partial.mean():.3f} | "
              f"{spread:.3f} | {worst:+.3f} | {(g.routed - g.pooled).mean():+.3f} | "
              f"{'yes' if worst >= -spread else 'no'} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", action="append", default=[], help="synth cohort CSV (repeatable)")
    ap.add_argument("--features", action="append", default=[], help="its features folder (one per --cohort)")
    ap.add_argument("--planted", default="", help="planted scenarios: flip,risky,null")
    ap.add_argument("--sizes", default="60,200")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--recipe", default="mean-none-logreg", help="'auto' = the train default (slow)")
    ap.add_argument("--calibration", default="platt")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if len(args.cohort) != len(args.features):
        raise SystemExit("give one --features per --cohort")
    kw = dict(recipe=args.recipe, calibration=args.calibration, nthread=args.threads)
    sizes = [int(v) for v in args.sizes.split(",") if v]
    seeds = parse_seeds(args.seeds)
    print(f"recipe {args.recipe}, calibration {args.calibration}, 5-fold nested CV, min 10 slides per subtype\n")
    print("| cohort | slides | seed | pooled AUC | routed AUC | partial AUC | routed − pooled | partial − pooled | "
          "routing (outer folds x subtypes) | time s |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for c, f in zip(args.cohort, args.features):
        data = synth_cohort(c, f)
        name = f"synth {os.path.basename(os.path.dirname(os.path.abspath(c)))}"
        rows += [run_row(name, data, n, s, kw) for n in sizes for s in seeds]
    for scenario in [v for v in args.planted.split(",") if v]:
        for n in sizes:
            for s in seeds:  # a new planted cohort per seed
                rows.append(run_row(f"planted {scenario}", planted_cohort(n, 1000 + s, scenario), n, s, kw))
    summary(pd.DataFrame(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

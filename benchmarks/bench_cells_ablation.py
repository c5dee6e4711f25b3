"""Ablation: nested-CV AUC with and without the ``cells.*`` features, on synthetic cohorts with known signals.

Usage: python benchmarks/bench_cells_ablation.py [--slides 48] [--size 1536] [--seeds 0 1 2] [--work DIR]

Cohorts (``napari_lnm.synth.make_cohort``): ``immune`` — the label acts only on the lymphocytic
infiltration of tumour epithelium (nuclei look alike in both classes); ``nuclei`` — the label acts on
tumour nuclei (size, pleomorphism, crowding, texture, budding), as in the other synthetic benchmarks.
Each cohort is extracted once with the default settings; then the default training
(``TrainConfig(recipe="auto", calibration="auto")``, as ``napari-lnm train``) is cross-validated
(5-fold nested CV) with all features and without ``cells.*``, for each CV seed.  Prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from napari_lnm.extract import extract_cohort
from napari_lnm.features import feature_names
from napari_lnm.model import TrainConfig, cross_validate, load_feature_tables, read_cohort_csv
from napari_lnm.synth import make_cohort
from napari_lnm.tiling import TilingConfig


def cohort(work: Path, signal: str, n: int, size: int, seed: int) -> tuple[list, np.ndarray, dict]:
    """Make (once) and extract (once) a cohort; its tables, labels and tiling."""
    d = work / f"{signal}-{n}-{size}-s{seed}"
    csv = d / "cohort.csv"
    if not csv.exists():
        make_cohort(d, n, seed=seed, size=(size, size), signal=signal)
    extract_cohort(csv, d / "features", TilingConfig(), workers=max(1, min(2, os.cpu_count() or 1)))
    co = read_cohort_csv(csv)
    tables, tiling = load_feature_tables(co, d / "features")
    return tables, co["label"].to_numpy(), tiling


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=48)
    ap.add_argument("--size", type=int, default=1536)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cohort-seed", type=int, default=7)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-cells"))
    args = ap.parse_args(argv)
    all_names = feature_names()
    without = [n for n in all_names if not n.startswith("cells.")]
    rows = []
    for signal in ("immune", "nuclei"):
        tables, y, tiling = cohort(args.work, signal, args.slides, args.size, args.cohort_seed)
        for label, names in (("all features", all_names), ("without cells.*", without)):
            aucs = []
            for s in args.seeds:
                t0 = time.perf_counter()
                cfg = TrainConfig(seed=s, tiling=tiling, recipe="auto", calibration="auto", n_bootstrap=200)
                rep = cross_validate(tables, y, config=cfg, feature_names=names)
                aucs.append(rep.auc)
                print(f"{signal} {label} seed {s}: AUC {rep.auc:.3f} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
            rows.append((signal, label, aucs))
    print(f"\nNested 5-fold CV AUC, {args.slides}-slide synthetic cohorts of {args.size}² px (cohort seed "
          f"{args.cohort_seed}), default training (recipe and calibration by inner CV), CV seeds "
          f"{' '.join(map(str, args.seeds))}\n")
    print("| cohort (label acts on) | features | AUC per seed | mean |")
    print("|---|---|---|---|")
    for signal, label, aucs in rows:
        print(f"| {signal} | {label} | {' / '.join(f'{a:.3f}' for a in aucs)} | {np.mean(aucs):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the nucleus-type classifier that types the default segmenter's nuclei from their measurements.

Usage: python benchmarks/train_nucleus_type_model.py [--out src/napari_lnm/data/nucleus_types.npz] [--eval-only]

Data: CoNSeP's training tiles (colorectal, 40x, instances with 4 types; spindle = stromal), at the
working 0.5 µm/px, with the split of benchmarks/_nuclei_data.py (held-out tiles 3, 8, 13, 18, 23 are
never used for fitting or choosing anything).  Each patch is segmented by the default segmenter
(``segment_nuclei``, threshold foreground); a segmented nucleus takes the type of the annotated
nucleus that covers most of it (at least half of its pixels), others are left out.  Inputs per
nucleus: ``napari_lnm.nucleus_types.INPUTS`` (shape, H intensity/texture, neighbourhood).  Model: a
multinomial logistic regression on standardised inputs (scikit-learn, lbfgs, deterministic), its
regularisation C and class weighting chosen by 5-fold cross-validation grouped by source tile on the
training tiles alone (criterion: macro-averaged F1), saved as plain arrays.  Prints per-type F1 on the held-out tiles' paired nuclei
(HoVer-Net's definition: nuclei matched to an annotated nucleus) and the confusion matrix.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _nuclei_data import WORK_MPP, load_consep  # noqa: E402

from napari_lnm.features.nucleus import nucleus_table  # noqa: E402
from napari_lnm.nuclei import segment_nuclei  # noqa: E402
from napari_lnm.nucleus_types import TYPE_MODEL_PATH, NucleusTypeModel, type_inputs  # noqa: E402
from napari_lnm.stain import separate  # noqa: E402

TYPES = ("epithelial", "inflammatory", "stromal", "other")


def matched(labels: np.ndarray, gt: np.ndarray, gt_types: dict[int, int]) -> np.ndarray:
    """Type index (-1: none) of each segmented nucleus 1..n: the annotated one covering most of it (≥ 50 %)."""
    n = int(labels.max())
    out = np.full(n, -1, np.int64)
    fg = labels > 0
    pairs = labels[fg].astype(np.int64) * (int(gt.max()) + 1) + gt[fg]
    u, c = np.unique(pairs, return_counts=True)
    lab, g = np.divmod(u, int(gt.max()) + 1)
    size = np.bincount(labels[fg], minlength=n + 1)
    best: dict[int, tuple[int, int]] = {}
    for li, gi, ci in zip(lab, g, c):
        if gi and ci > best.get(li, (0, 0))[1]:
            best[li] = (gi, ci)
    for li, (gi, ci) in best.items():
        if ci >= 0.5 * size[li] and gi in gt_types:
            out[li - 1] = gt_types[gi]
    return out


def samples(held_out: bool):
    """(inputs, types, source tile) of every matched segmented nucleus of the CoNSeP patches of one split."""
    xs, ys, gs = [], [], []
    for s in load_consep():
        if s.held_out != held_out:
            continue
        h, e = separate(s.rgb)
        lab = segment_nuclei(s.rgb, WORK_MPP, h=h, e=e)
        if not lab.any():
            continue
        table = nucleus_table(lab, WORK_MPP, h)
        t = matched(lab, s.labels, s.types)
        keep = t >= 0
        xs.append(type_inputs(table, WORK_MPP)[keep])
        ys.append(t[keep])
        gs.append(np.full(int(keep.sum()), s.group, dtype=object))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)


GRID = [(c, w) for c in (0.1, 1.0) for w in (None, "balanced")]


def choose(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, object, list]:
    """(C, class_weight) with the best macro F1 in 5-fold CV grouped by tile, on the training tiles only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    scores = []
    for c, w in GRID:
        f1s = []
        for tr, te in GroupKFold(5).split(x, y, groups):
            sc = StandardScaler().fit(x[tr])
            clf = LogisticRegression(C=c, class_weight=w, max_iter=5000, tol=1e-8)
            clf.fit(np.nan_to_num(sc.transform(x[tr]), nan=0.0), y[tr])
            p = clf.predict(np.nan_to_num(sc.transform(x[te]), nan=0.0))
            f1s.append(np.mean([f for _n, f, _s in f1_table(y[te], p)]))
        scores.append((c, w, float(np.mean(f1s))))
    c, w, _ = max(scores, key=lambda r: r[2])
    return c, w, scores


def f1_table(y: np.ndarray, p: np.ndarray) -> list[tuple[str, float, int]]:
    """Per-type F1 and support."""
    out = []
    for k, name in enumerate(TYPES):
        tp = np.sum((p == k) & (y == k))
        fp = np.sum((p == k) & (y != k))
        fn = np.sum((p != k) & (y == k))
        out.append((name, 2 * tp / max(2 * tp + fp + fn, 1), int(np.sum(y == k))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=TYPE_MODEL_PATH)
    ap.add_argument("--eval-only", action="store_true", help="score the shipped model on the held-out tiles")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if not args.eval_only:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x, y, groups = samples(held_out=False)
        c, w, scores = choose(x, y, groups)
        print("inner CV on the training tiles (C, class weight, macro F1):",
              "; ".join(f"{cc:g}, {ww}, {f:.3f}" for cc, ww, f in scores), f"-> C={c:g}, class weight {w}")
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=c, class_weight=w, max_iter=5000, tol=1e-8)
        clf.fit(np.nan_to_num(scaler.transform(x), nan=0.0), y)  # undefined inputs = the training mean
        NucleusTypeModel(scaler.mean_, scaler.scale_, clf.coef_, clf.intercept_).save(args.out)
        print(f"trained on {len(y)} nuclei of the CoNSeP training tiles "
              f"({', '.join(f'{TYPES[k]} {int(np.sum(y == k))}' for k in range(4))}) in "
              f"{time.perf_counter() - t0:.0f} s; wrote {args.out}")
    model = NucleusTypeModel.load(args.out)
    xh, yh, _ = samples(held_out=True)
    ph = model.predict(xh)
    print(f"\nHeld-out CoNSeP tiles (3, 8, 13, 18, 23), {len(yh)} segmented nuclei paired with an annotated one;"
          f" accuracy {np.mean(ph == yh):.3f}\n")
    print("| type | F1 | annotated nuclei |")
    print("|---|---|---|")
    for name, f1, n in f1_table(yh, ph):
        print(f"| {name} | {f1:.3f} | {n} |")
    cm = np.zeros((4, 4), int)
    np.add.at(cm, (yh, ph), 1)
    print("\nconfusion (rows: annotated, columns: predicted):", *TYPES)
    for k in range(4):
        print(f"  {TYPES[k]:>12}: {cm[k].tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

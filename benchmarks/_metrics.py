"""Instance-segmentation metrics (Dice, AJI, F1 at IoU 0.5) from one vectorised contingency matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SegScores:
    """Scores of one predicted label image against ground truth (all in [0, 1]) plus the raw sums."""

    dice: float
    aji: float
    f1: float
    precision: float
    recall: float
    n_true: int
    n_pred: int
    n_match: int
    aji_inter: int  # AJI numerator (px), so AJI can be aggregated over many images
    aji_union: int  # AJI denominator (px)
    fg_inter: int  # |T ∩ P| foreground px, for pooled Dice
    fg_sum: int  # |T| + |P| foreground px


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 1..n (0 stays background) with a lookup table."""
    lab = np.asarray(labels).astype(np.int64, copy=False)
    uniq = np.unique(lab)
    uniq = uniq[uniq != 0]
    lut = np.zeros(int(lab.max()) + 1 if lab.size else 1, dtype=np.int64)
    lut[uniq] = np.arange(1, uniq.size + 1)
    return lut[lab], int(uniq.size)


def contingency(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Overlap counts (px) of every true label (rows 0..nt) with every predicted label (cols 0..np)."""
    t, nt = _consecutive(true)
    p, npred = _consecutive(pred)
    flat = t.ravel() * (npred + 1) + p.ravel()
    return np.bincount(flat, minlength=(nt + 1) * (npred + 1)).reshape(nt + 1, npred + 1)


def score(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> SegScores:
    """Dice (foreground px), AJI (Kumar et al. 2017) and F1 of one-to-one matches at IoU > threshold."""
    if true.shape != pred.shape:
        raise ValueError(f"shape mismatch {true.shape} vs {pred.shape}")
    c = contingency(true, pred)
    inter = c[1:, 1:].astype(np.int64)
    area_t = c[1:, :].sum(axis=1)
    area_p = c[:, 1:].sum(axis=0)
    nt, npred = inter.shape
    union = area_t[:, None] + area_p[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)

    fg_inter = int(inter.sum())
    fg_sum = int(area_t.sum() + area_p.sum())
    dice = 2.0 * fg_inter / fg_sum if fg_sum else 1.0

    # F1: IoU > 0.5 matches are necessarily one-to-one
    n_match = int(np.count_nonzero(iou > iou_threshold)) if nt and npred else 0
    precision = n_match / npred if npred else float(nt == 0)
    recall = n_match / nt if nt else float(npred == 0)
    f1 = 2.0 * n_match / (nt + npred) if (nt + npred) else 1.0

    # AJI: each true object with its best-IoU prediction; unmatched predictions add to the union
    if nt and npred:
        best = np.argmax(iou, axis=1)
        rows = np.arange(nt)
        has = inter[rows, best] > 0
        c_sum = int(inter[rows, best][has].sum())
        u_sum = int(union[rows, best][has].sum() + area_t[~has].sum())
        used = np.zeros(npred, dtype=bool)
        used[best[has]] = True
        u_sum += int(area_p[~used].sum())
    else:
        c_sum = 0
        u_sum = int(area_t.sum() + area_p.sum())
    aji = c_sum / u_sum if u_sum else 1.0
    return SegScores(dice, aji, f1, precision, recall, nt, npred, n_match, c_sum, u_sum, fg_inter, fg_sum)


def pooled(scores: list[SegScores]) -> dict[str, float]:
    """Mean of per-image Dice/AJI/F1, plus AJI and F1 pooled over all objects of all images."""
    if not scores:
        return {}
    return {
        "dice": float(np.mean([s.dice for s in scores])),
        "aji": float(np.mean([s.aji for s in scores])),
        "f1": float(np.mean([s.f1 for s in scores])),
        "aji_pooled": sum(s.aji_inter for s in scores) / max(1, sum(s.aji_union for s in scores)),
        "f1_pooled": 2 * sum(s.n_match for s in scores) / max(1, sum(s.n_true + s.n_pred for s in scores)),
        "n_true": sum(s.n_true for s in scores),
        "n_pred": sum(s.n_pred for s in scores),
    }

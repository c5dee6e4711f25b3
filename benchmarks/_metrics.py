"""Instance-segmentation metrics (Dice, AJI, F1 at IoU 0.5, PQ) from one vectorised contingency matrix;
centroid pairing, HoVer-Net's per-type F1 and point detection / classification F1."""

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
    iou_sum: float = 0.0  # summed IoU of the IoU > 0.5 matches (PQ's SQ numerator)

    @property
    def sq(self) -> float:
        """Segmentation quality: mean IoU of the matched pairs (0 without matches)."""
        return self.iou_sum / self.n_match if self.n_match else 0.0

    @property
    def pq(self) -> float:
        """Panoptic quality = DQ (the F1 at IoU 0.5) x SQ (Kirillov et al. 2019)."""
        return self.f1 * self.sq


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
    iou_sum = float(iou[iou > iou_threshold].sum()) if n_match else 0.0
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
    return SegScores(dice, aji, f1, precision, recall, nt, npred, n_match, c_sum, u_sum, fg_inter, fg_sum, iou_sum)


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
        "pq": float(np.mean([s.pq for s in scores])),
        "dq": float(np.mean([s.f1 for s in scores])),
        "sq": float(np.mean([s.sq for s in scores])),
        "n_true": sum(s.n_true for s in scores),
        "n_pred": sum(s.n_pred for s in scores),
    }


def pair_points(true_rc: np.ndarray, pred_rc: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs (index into true, index into pred) of points (N, 2) within ``radius`` px,
    minimising the summed distance (Hungarian assignment, as HoVer-Net's pair_coordinates)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    if len(true_rc) == 0 or len(pred_rc) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    d = cdist(np.asarray(true_rc, float), np.asarray(pred_rc, float))
    r, c = linear_sum_assignment(d)
    keep = d[r, c] <= radius
    return r[keep], c[keep]


@dataclass
class TypeCounts:
    """Pooled pairing results of typed nuclei (type indices; -1 = untyped truth) over many images."""

    paired_true: list[np.ndarray]
    paired_pred: list[np.ndarray]
    unpaired_true: list[np.ndarray]
    unpaired_pred: list[np.ndarray]

    @classmethod
    def empty(cls) -> "TypeCounts":
        """No images yet."""
        return cls([], [], [], [])

    def add(self, true_rc, true_type, pred_rc, pred_type, radius: float) -> None:
        """Pair one image's true and predicted centroids within ``radius`` px and keep their types."""
        true_type, pred_type = np.asarray(true_type, int), np.asarray(pred_type, int)
        i, j = pair_points(true_rc, pred_rc, radius)
        self.paired_true.append(true_type[i])
        self.paired_pred.append(pred_type[j])
        self.unpaired_true.append(np.delete(true_type, i))
        self.unpaired_pred.append(np.delete(pred_type, j))

    def detection_f1(self) -> float:
        """F1 of detection: 2 x pairs / (true + predicted)."""
        n = sum(a.size for a in self.paired_true)
        total = 2 * n + sum(a.size for a in self.unpaired_true) + sum(a.size for a in self.unpaired_pred)
        return 2 * n / total if total else 1.0

    def type_f1(self, t: int, w=(2, 2, 1, 1)) -> float:
        """HoVer-Net's F1 of type t (Graham et al. 2019, compute_stats.py): paired nuclei typed t on
        either side count correct / wrong (weight 2), unpaired ones of type t as missed / extra (1)."""
        pt, pp = np.concatenate(self.paired_true), np.concatenate(self.paired_pred)
        ut, up = np.concatenate(self.unpaired_true), np.concatenate(self.unpaired_pred)
        sel = (pt == t) | (pp == t)
        pt, pp = pt[sel], pp[sel]
        tp = int(((pt == t) & (pp == t)).sum())
        fp = int(((pt != t) & (pp == t)).sum())
        fn = int(((pt == t) & (pp != t)).sum())
        den = 2 * tp + w[0] * fp + w[1] * fn + w[2] * int((up == t).sum()) + w[3] * int((ut == t).sum())
        return 2 * tp / den if den else float("nan")

    def weighted_class_f1(self, n_types: int) -> float:
        """Support-weighted mean over types of the per-type F1 of the classification of the paired
        nuclei whose truth has a type (sklearn's f1_score(average="weighted"))."""
        pt, pp = np.concatenate(self.paired_true), np.concatenate(self.paired_pred)
        keep = pt >= 0
        pt, pp = pt[keep], pp[keep]
        f1s, sup = [], []
        for t in range(n_types):
            tp, fp, fn = int(((pt == t) & (pp == t)).sum()), int(((pt != t) & (pp == t)).sum()), int(((pt == t) & (pp != t)).sum())
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
            sup.append(int((pt == t).sum()))
        return float(np.average(f1s, weights=sup)) if sum(sup) else float("nan")

"""Calibrated probabilities and operating points, as data (JSON) and pure numpy functions.

- :class:`Calibrator`: Platt scaling (``sigmoid(a * logit(p) + b)``, shrunk toward
  the map a class-balanced classifier needs in theory) or isotonic regression (a
  step function stored as knots, applied with ``np.interp``) fitted on out-of-fold
  scores; ``to_dict`` / ``from_dict`` JSON, never pickle.
- :func:`brier_score`, :func:`expected_calibration_error` (equal-width bins),
  :func:`ece_noise_floor` (the ECE perfectly calibrated probabilities score on
  this many slides), :func:`reliability_table` and :func:`save_reliability_png`.
- :func:`operating_points`: from out-of-fold probabilities, the thresholds for
  >= 90 % sensitivity (rule-out) and >= 90 % specificity (rule-in), each with
  sensitivity, specificity, PPV and NPV and their Wilson 95 % CIs. A slide is
  called positive when its probability is >= the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_lnm._fields import fail, need_array, need_dict, need_int, need_key, need_number, need_str

METHODS = ("platt", "isotonic")
#: Isotonic calibration only from this many training slides on; Platt (2 parameters) below.
ISOTONIC_MIN_SLIDES = 300
#: Weight of Platt's prior, in slides' worth of log-loss: a ridge on (a - 1, b - b0) with b0 = log(n_pos / n_neg)
#: for a class-balanced classifier (0 otherwise). Each outer fold fits its own calibrator on a few dozen inner
#: out-of-fold scores; unshrunk, the folds' maps scatter, and a slide's probability depends on its fold.
PLATT_PRIOR_SLIDES = 30.0


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


@dataclass
class Calibrator:
    """A monotone map from the classifier's probability to a calibrated one."""

    method: str = "platt"
    a: float = 1.0  # Platt slope on the logit
    b: float = 0.0  # Platt intercept
    knots_x: np.ndarray = field(default_factory=lambda: np.zeros(0))  # isotonic: raw probabilities (sorted)
    knots_y: np.ndarray = field(default_factory=lambda: np.zeros(0))  # isotonic: calibrated values
    n: int = 0  # slides it was fitted on
    prior: tuple[float, float, float] | None = None  # Platt: (a0, b0, weight in slides) it was shrunk toward

    @classmethod
    def fit(cls, y, p, method: str = "auto", slides: int | None = None, balanced: bool = False,
            prior_slides: float = PLATT_PRIOR_SLIDES) -> "Calibrator":
        """Fit on labels ``y`` and out-of-fold probabilities ``p``; ``auto``: isotonic from ISOTONIC_MIN_SLIDES on.

        ``slides``: how many distinct slides the (label, probability) pairs come
        from, when each slide gives several (repeated inner CVs, stacked); default
        ``len(y)``. It decides ``auto`` and sets Platt's smoothed targets, so
        stacking repeats does not make the fit more confident than its slides allow.
        ``balanced``: ``p`` comes from a classifier fitted with class-balanced
        weights, so Platt's prior intercept is log(n_pos / n_neg), not 0;
        ``prior_slides``: the prior's weight (0: plain Platt).
        """
        y = np.asarray(y, dtype=np.float64)
        p = np.asarray(p, dtype=np.float64)
        slides = len(y) if slides is None else int(slides)
        if method == "auto":
            method = "isotonic" if slides >= ISOTONIC_MIN_SLIDES else "platt"
        if method == "platt":
            share = slides / max(len(y), 1)
            b0 = float(np.log(max(y.sum(), 0.5) / max(len(y) - y.sum(), 0.5))) if balanced else 0.0
            prior = (1.0, b0, float(prior_slides))
            a, b = _platt(y, _logit(p), share, prior)
            return cls(method="platt", a=a, b=b, n=slides, prior=prior if prior_slides > 0 else None)
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
            return cls(method="isotonic", knots_x=np.asarray(iso.X_thresholds_, dtype=np.float64),
                       knots_y=np.asarray(iso.y_thresholds_, dtype=np.float64), n=slides)
        raise ValueError(f"unknown calibration {method!r}; choose one of {METHODS} or 'auto'")

    def apply(self, p) -> np.ndarray:
        """Calibrated probabilities of raw probabilities ``p``."""
        p = np.asarray(p, dtype=np.float64)
        if self.method == "platt":
            return _sigmoid(self.a * _logit(p) + self.b)
        return np.interp(p, self.knots_x, self.knots_y)

    def to_dict(self) -> dict:
        """JSON-able form."""
        d = {"method": self.method, "n": int(self.n)}
        if self.method == "platt":
            d.update(a=float(self.a), b=float(self.b))
            if self.prior is not None:
                d["prior"] = [float(v) for v in self.prior]
        else:
            d.update(knots_x=[float(v) for v in self.knots_x], knots_y=[float(v) for v in self.knots_y])
        return d

    @classmethod
    def from_dict(cls, d: dict, field: str = "calibration") -> "Calibrator":
        """Inverse of :meth:`to_dict`; FieldError naming the first bad field."""
        d = need_dict(d, field)
        method = need_str(need_key(d, "method", field), f"{field}.method", METHODS)
        n = need_int(d.get("n", 0), f"{field}.n", lo=0)
        if method == "platt":
            prior = None
            if d.get("prior") is not None:
                prior = tuple(float(v) for v in need_array(d["prior"], f"{field}.prior", (3,)))
            return cls(method=method, a=float(need_number(need_key(d, "a", field), f"{field}.a")),
                       b=float(need_number(need_key(d, "b", field), f"{field}.b")), n=n, prior=prior)
        x = need_array(need_key(d, "knots_x", field), f"{field}.knots_x", (None,))
        y = need_array(need_key(d, "knots_y", field), f"{field}.knots_y", (len(x),))
        if len(x) == 0:
            fail(f"{field}.knots_x", "is empty")
        if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            fail(f"{field}.knots_x", "knots must be sorted and the map non-decreasing")
        if np.any((y < 0) | (y > 1)):
            fail(f"{field}.knots_y", "must lie in [0, 1]")
        return cls(method=method, knots_x=x, knots_y=y, n=n)


def _platt(y: np.ndarray, z: np.ndarray, share: float = 1.0,
           prior: tuple[float, float, float] = (1.0, 0.0, 0.0)) -> tuple[float, float]:
    """(a, b) of a logistic regression of y on the logit z, with Platt's smoothed targets (no overconfidence).

    ``share``: slides per (label, score) pair (1 / repeats when each slide is in the data once per repeat);
    the targets' smoothing uses the class counts of slides, not of pairs. ``prior``: (a0, b0, weight): a ridge
    ``weight / 2 * ((a - a0)^2 + (b - b0)^2)`` on the per-slide log-loss (weight 0: none).
    """
    from scipy.optimize import minimize

    n1, n0 = float(y.sum()) * share, float(len(y) - y.sum()) * share
    t = np.where(y > 0.5, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))
    centre = np.array(prior[:2], dtype=np.float64)
    lam = float(prior[2]) / max(share, 1e-12)  # the loss sums over pairs: the weight counts slides

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        q = np.clip(_sigmoid(w[0] * z + w[1]), 1e-12, 1 - 1e-12)
        r = q - t
        d = w - centre
        return (float(-(t * np.log(q) + (1 - t) * np.log(1 - q)).sum() + 0.5 * lam * (d @ d)),
                np.array([(r * z).sum(), r.sum()]) + lam * d)

    res = minimize(loss, centre.copy() if lam > 0 else np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = (float(v) for v in res.x)
    if not np.isfinite(a) or a <= 0:  # scores unrelated (or inverse) to the label: keep the ranking, fit the base rate
        a = 1e-3
        b = float(_logit(np.array([t.mean()]))[0] - a * z.mean())
    return a, b


# --------------------------------------------------------------------------- metrics
def brier_score(y, p) -> float:
    """Mean squared difference between the probability and the 0/1 label."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return float(np.mean((p - y) ** 2))


def reliability_table(y, p, bins: int = 10) -> list[dict]:
    """Per equal-width probability bin with slides: lo, hi, n, mean probability, observed fraction positive."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    rows = []
    for k in range(bins):
        m = idx == k
        if m.any():
            rows.append({"lo": k / bins, "hi": (k + 1) / bins, "n": int(m.sum()), "mean_p": float(p[m].mean()),
                         "observed": float(y[m].mean())})
    return rows


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """ECE: slide-weighted mean |mean probability - observed fraction| over ``bins`` equal-width bins."""
    rows = reliability_table(y, p, bins)
    n = sum(r["n"] for r in rows)
    return float(sum(r["n"] * abs(r["mean_p"] - r["observed"]) for r in rows) / max(n, 1))


def ece_noise_floor(p, bins: int = 10, draws: int = 200, seed: int = 0) -> float:
    """The ECE that perfectly calibrated probabilities ``p`` score on this many slides, from sampling alone.

    The mean :func:`expected_calibration_error` over ``draws`` label sets drawn as
    y* ~ Bernoulli(p) (seeded): what a model whose probabilities are exactly right
    would show on ``len(p)`` slides. An observed ECE near it is sampling noise, not
    miscalibration; on 60 slides in 10 bins it is about 0.1.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if p.size == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    ys = rng.random((int(draws), p.size)) < p
    return float(np.mean([expected_calibration_error(yd, p, bins) for yd in ys.astype(np.float64)]))


def save_reliability_png(path: Path, y, p, title: str = "", bins: int = 10) -> None:
    """Reliability diagram (observed fraction vs mean probability per bin, bin sizes as bars) as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows = reliability_table(y, p, bins)
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    ax = fig.add_subplot(111)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    ax.plot([r["mean_p"] for r in rows], [r["observed"] for r in rows], "o-", lw=2,
            label=f"out-of-fold (ECE {expected_calibration_error(y, p, bins):.3f})")
    ax2 = ax.twinx()
    ax2.bar([(r["lo"] + r["hi"]) / 2 for r in rows], [r["n"] for r in rows], width=0.9 / bins, alpha=0.2,
            color="tab:blue")
    ax2.set_ylabel("slides per bin", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed fraction metastatic")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), format="png", metadata={"Software": None})


# --------------------------------------------------------------------------- operating points
def wilson_ci(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n (NaN, NaN when n == 0)."""
    if n == 0:
        return float("nan"), float("nan")
    ph = k / n
    den = 1 + z * z / n
    centre = (ph + z * z / (2 * n)) / den
    half = z * np.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def confusion_at(y, p, threshold: float) -> dict:
    """Counts and rates (with Wilson CIs) calling p >= threshold positive."""
    y = np.asarray(y).astype(int)
    call = np.asarray(p, dtype=np.float64) >= threshold
    tp, fn = int((call & (y == 1)).sum()), int((~call & (y == 1)).sum())
    fp, tn = int((call & (y == 0)).sum()), int((~call & (y == 0)).sum())
    out = {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for name, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("ppv", tp, tp + fp),
                       ("npv", tn, tn + fn)):
        out[name] = float(k / n) if n else float("nan")
        out[f"{name}_ci"] = list(wilson_ci(k, n))
    return out


def operating_points(y, p, target: float = 0.9) -> dict:
    """Rule-out (sensitivity >= target, highest such threshold) and rule-in (specificity >= target, lowest)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    cands = np.unique(p)  # thresholds at the observed probabilities: p >= t is positive
    sens = np.array([((p >= t) & (y == 1)).sum() for t in cands]) / max(int((y == 1).sum()), 1)
    spec = np.array([((p < t) & (y == 0)).sum() for t in cands]) / max(int((y == 0).sum()), 1)
    out = {"target": float(target), "rule": "positive when probability >= threshold"}
    ok = np.flatnonzero(sens >= target)  # sensitivity falls as the threshold rises
    out["rule_out"] = confusion_at(y, p, float(cands[ok.max()])) if ok.size else None
    ok = np.flatnonzero(spec >= target)  # specificity rises with the threshold
    out["rule_in"] = confusion_at(y, p, float(cands[ok.min()])) if ok.size else None
    return out


def side_of(probability: float, point: dict | None) -> str:
    """'above' (called positive) or 'below' the operating point's threshold ('' without one)."""
    if not point:
        return ""
    return "above" if float(probability) >= float(point["threshold"]) else "below"

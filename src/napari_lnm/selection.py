"""Selection of fused elements by a two-sample test between metastatic and non-metastatic training slides.

``select_elements(X, y, test="ks", alpha=0.05, top_q=None)`` tests every column of
``X`` (n_slides, P) between the slides with ``y == 1`` and ``y == 0`` and keeps the
columns with p < alpha, or, when ``top_q`` is given, the ``top_q`` columns with the
smallest p. When no column passes ``alpha`` it falls back to the top ``fallback_q``
(default 10) columns and says so in ``Selection.message``. ``test="none"`` keeps all.
Ties in p are broken by column order, so the result is deterministic.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

TESTS = ("ks", "mannwhitney", "ttest", "anova", "none")
DEFAULT_FALLBACK_Q = 10


@dataclass
class Selection:
    """Selected columns: indices into the P fused elements (ascending), their names and every p-value."""

    indices: np.ndarray
    names: list[str]
    pvalues: np.ndarray  # (P,), 1.0 where the test is undefined (constant column)
    fallback: bool = False
    message: str = ""
    test: str = "ks"
    alpha: float = 0.05
    top_q: int | None = None

    def apply(self, X: np.ndarray) -> np.ndarray:
        """The selected columns of ``X`` (n, P) -> (n, Q)."""
        return np.asarray(X)[:, self.indices]

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {
            "indices": [int(i) for i in self.indices],
            "names": list(self.names),
            "pvalues": [float(p) for p in self.pvalues],
            "fallback": bool(self.fallback),
            "message": self.message,
            "test": self.test,
            "alpha": float(self.alpha),
            "top_q": None if self.top_q is None else int(self.top_q),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Selection":
        """Inverse of :meth:`to_dict`."""
        return cls(
            indices=np.asarray(d["indices"], dtype=np.int64),
            names=list(d["names"]),
            pvalues=np.asarray(d["pvalues"], dtype=np.float64),
            fallback=bool(d["fallback"]),
            message=d.get("message", ""),
            test=d.get("test", "ks"),
            alpha=float(d.get("alpha", 0.05)),
            top_q=d.get("top_q"),
        )


def element_pvalues(X: np.ndarray, y: np.ndarray, test: str = "ks") -> np.ndarray:
    """Two-sample p-value per column of X (n, P) between y==1 and y==0 rows; NaN/undefined -> 1.0."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(int)
    pos, neg = X[y == 1], X[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("selection needs both classes among the training slides")
    if test == "none":
        return np.zeros(X.shape[1])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if test == "ks":
            p = stats.ks_2samp(pos, neg, axis=0, nan_policy="omit").pvalue
        elif test == "mannwhitney":
            p = stats.mannwhitneyu(pos, neg, axis=0, alternative="two-sided", nan_policy="omit").pvalue
        elif test == "ttest":
            p = stats.ttest_ind(pos, neg, axis=0, equal_var=False, nan_policy="omit").pvalue
        elif test == "anova":
            p = stats.f_oneway(pos, neg, axis=0).pvalue
        else:
            raise ValueError(f"unknown test {test!r}; choose one of {TESTS}")
    p = np.asarray(np.ma.filled(p, np.nan), dtype=np.float64).reshape(-1)
    # a column that is constant over all training slides carries no information
    const = np.nanmax(X, axis=0) == np.nanmin(X, axis=0) if len(X) else np.ones(X.shape[1], bool)
    p = np.where(np.isfinite(p) & ~const, p, 1.0)
    return p


def select_elements(
    X: np.ndarray,
    y: np.ndarray,
    test: str = "ks",
    alpha: float = 0.05,
    top_q: int | None = None,
    names: Sequence[str] | None = None,
    fallback_q: int = DEFAULT_FALLBACK_Q,
) -> Selection:
    """Select columns of X (n_slides, P) that differ between y==1 and y==0 (see module docstring)."""
    X = np.asarray(X, dtype=np.float64)
    n_el = X.shape[1]
    names = list(names) if names is not None else [f"e{i}" for i in range(n_el)]
    if len(names) != n_el:
        raise ValueError("names must have one entry per column of X")
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose one of {TESTS}")
    p = element_pvalues(X, y, test)
    order = np.argsort(p, kind="stable")
    fallback, message = False, ""
    if test == "none":
        idx = np.arange(n_el)
        message = f"no selection: all {n_el} elements kept"
    elif top_q is not None:
        idx = order[: max(1, int(top_q))]
        message = f"top {len(idx)} of {n_el} elements by {test} p-value"
    else:
        idx = np.flatnonzero(p < alpha)
        if idx.size == 0:
            idx = order[: max(1, int(fallback_q))]
            fallback = True
            message = (f"no element had {test} p < {alpha:g} (smallest p = {p.min():.3g}); "
                       f"fell back to the top {len(idx)} elements by p-value")
        else:
            message = f"{idx.size} of {n_el} elements with {test} p < {alpha:g}"
    idx = np.sort(idx)
    return Selection(indices=idx.astype(np.int64), names=[names[i] for i in idx], pvalues=p,
                     fallback=fallback, message=message, test=test, alpha=float(alpha),
                     top_q=None if top_q is None else int(top_q))

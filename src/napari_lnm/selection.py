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

from napari_lnm._fields import fail, need_array, need_bool, need_dict, need_int, need_key, need_list, need_number, \
    need_str, need_strs

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
    def from_dict(cls, d: dict, element_names: Sequence[str] | None = None, field: str = "selection") -> "Selection":
        """Inverse of :meth:`to_dict`; FieldError naming the first bad field.

        ``element_names``, when given, are the fusion's P elements: the indices must
        lie in 0..P-1 and name those elements, and there must be one p-value per element.
        """
        d = need_dict(d, field)
        raw = need_list(need_key(d, "indices", field), f"{field}.indices")
        idx = [need_int(i, f"{field}.indices[{k}]", lo=0) for k, i in enumerate(raw)]
        if len(set(idx)) != len(idx):
            fail(f"{field}.indices", "lists an element twice")
        names = need_strs(need_key(d, "names", field), f"{field}.names", length=len(idx))
        n_el = None if element_names is None else len(element_names)
        pvalues = need_array(need_key(d, "pvalues", field), f"{field}.pvalues", (n_el,))
        if n_el is not None:
            bad = [i for i in idx if i >= n_el]
            if bad:
                fail(f"{field}.indices", f"has index {bad[0]}, out of range for the fusion's {n_el} elements")
            wrong = [k for k, i in enumerate(idx) if names[k] != element_names[i]]
            if wrong:
                k = wrong[0]
                fail(f"{field}.names[{k}]", f"is {names[k]!r} but index {idx[k]} is element {element_names[idx[k]]!r}")
        top_q = d.get("top_q")
        return cls(
            indices=np.asarray(idx, dtype=np.int64),
            names=names,
            pvalues=pvalues,
            fallback=need_bool(need_key(d, "fallback", field), f"{field}.fallback"),
            message=need_str(d.get("message", ""), f"{field}.message"),
            test=need_str(d.get("test", "ks"), f"{field}.test", TESTS),
            alpha=float(need_number(d.get("alpha", 0.05), f"{field}.alpha")),
            top_q=None if top_q is None else need_int(top_q, f"{field}.top_q", lo=1),
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

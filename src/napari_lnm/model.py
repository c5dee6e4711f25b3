"""Patient-level model: fusion -> selection -> classifier, honest nested CV, and the versioned bundle.

Main entry points::

    bundle = train_model(tables, labels, TrainConfig(...))            # -> ModelBundle
    report = cross_validate(tables, labels, groups, TrainConfig(...))  # -> CVReport (nested)
    bundle.save(dir); bundle = ModelBundle.load(dir)
    bundle.predict_proba(tables_or_df, clinical=None) -> (n,) probabilities
    bundle.contributions(tiles_df) -> DataFrame (per selected element, log-odds)

``tables`` are per-slide tile-feature DataFrames (``slide_id, x, y, size,
tissue_fraction`` + feature columns such as ``nucleus.area_mean``), ``labels``
0/1 (1 = lymph-node metastasis). In :func:`cross_validate` the bin edges, the
element selection, the clinical encoding and the classifier's early stopping are
all fitted inside each outer fold on its training slides only: every outer fold
trains a complete :class:`ModelBundle` with :func:`train_model` on its training
part and predicts its test part, so nothing about the test slides leaks in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from napari_lnm import __version__
from napari_lnm._atomic import atomic_dir
from napari_lnm._fields import FieldError, fail, inside, need_dict, need_key, need_list, need_number, need_str, \
    need_strs
from napari_lnm import recipe as recipes
from napari_lnm.calibration import Calibrator, brier_score, ece_noise_floor, expected_calibration_error, \
    operating_points, save_reliability_png, side_of
from napari_lnm.classifiers import Classifier, inner_folds, load_classifier, make_classifier
from napari_lnm.errors import CohortError, ModelError, UserError
from napari_lnm.config import is_deep
from napari_lnm.fusion import Fusion, ProjectedFusion, feature_columns, fusion_from_dict, make_fusion, ordinal, \
    tile_tables
from napari_lnm.progress import check_stop, report
from napari_lnm.provenance import read_provenance
from napari_lnm.selection import Selection, select_elements

SCHEMA_VERSION = 1
BUNDLE_FILE = "bundle.json"
POOLED = "pooled"
PARTIAL = "partially pooled"  # the pooled model refitted with the subtype as an input
SUBTYPE_INPUT = recipes.SUBTYPE  # the clinical column the slide's subtype fills in (partial and subtype recipes)
PARTIAL_DIR = "partial"  # its folder inside a bundle


# --------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Training options (fusion, selection, classifier, CV, clinical columns, subtype routing)."""

    fusion: str = "histogram"
    bins: int = 5
    edges: str = "quantile"
    p: float = 3.0
    test: str = "ks"
    alpha: float = 0.05
    top_q: int | None = None
    classifier: str = "xgboost"
    cv: int = 5
    seed: int = 0
    clinical: tuple[str, ...] = ()
    per_subtype: bool = False
    min_subtype_slides: int = 10
    n_bootstrap: int = 2000
    nthread: int = 1
    tiling: dict | None = None  # magnification, tile_size, ... used to extract the features
    recipe: str = recipes.FIXED  # "fixed": the fields above; "auto": best of the grid by inner CV; or a grid name
    grid: tuple[str, ...] | None = None  # recipe names "auto" chooses among (None: all of recipe.GRID)
    classifier_params: dict | None = None  # e.g. {"C": 0.1} for logreg, {"max_depth": 2} for xgboost
    calibration: str = "none"  # "none", "auto" (Platt; isotonic from 300 slides), "platt", "isotonic"
    inner_cv: int = 3  # inner folds for the recipe choice and the calibration
    inner_repeats: int = 3  # repeats of the inner CV (inner fold seeds seed, seed + 1, ...), scores averaged
    choice: str = recipes.ONE_SE  # "1se": simplest recipe within 1 SE of the best inner-CV AUC; "best"
    repeats: int = 1  # repeats of the outer CV (cross_validate)
    deep_components: int = 32  # principal components the deep.* tile columns are reduced to before fusion
    strata: str | None = None  # a clinical column (the subtype) whose levels the classifier centres within

    def to_dict(self) -> dict:
        """JSON-able form."""
        d = asdict(self)
        d["clinical"] = list(self.clinical)
        d["grid"] = None if self.grid is None else list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "clinical" in known:
            known["clinical"] = tuple(known["clinical"])
        if known.get("grid") is not None:
            known["grid"] = tuple(known["grid"])
        return cls(**known)

    def with_recipe(self, r: "recipes.Recipe") -> "TrainConfig":
        """This config with recipe ``r``'s fusion, selection and classifier (and ``recipe`` set to its name);
        a recipe's strata column becomes the last clinical input."""
        clinical = [*self.clinical, *([r.strata] if r.strata and r.strata not in self.clinical else [])]
        return TrainConfig.from_dict({**self.to_dict(), **r.overrides(), "recipe": r.name, "clinical": clinical})

    def candidates(self) -> list[tuple[str, "TrainConfig"]]:
        """(name, fixed config) of every recipe this config trains or chooses among."""
        if self.recipe == recipes.FIXED:
            return [(recipes.FIXED, self)]
        if self.recipe == recipes.AUTO:
            names = self.grid or recipes.AUTO_NAMES
            if recipes.GRID[0].name not in names:  # the method's own recipe is always a candidate
                names = (recipes.GRID[0].name, *names)
            return [(n, self.with_recipe(recipes.get(n))) for n in names]
        return [(self.recipe, self.with_recipe(recipes.get(self.recipe)))]


# --------------------------------------------------------------------------- clinical
class ClinicalWarning(UserWarning):
    """A clinical value the model can use only partly, e.g. a category not seen in training (encoded as no level)."""


def clinical_frame(clinical, source: str = "clinical values") -> pd.DataFrame | None:
    """Clinical values of one or more slides as a DataFrame: a dict -> one row, a DataFrame as is, None stays None."""
    if clinical is None:
        return None
    if isinstance(clinical, pd.Series):
        clinical = clinical.to_dict()
    if isinstance(clinical, dict):
        clinical = pd.DataFrame([clinical])
    if isinstance(clinical, pd.DataFrame):  # text values stripped, as the training cohort CSV is read
        return clinical.reset_index(drop=True).apply(lambda s: s.map(lambda v: v.strip() if isinstance(v, str) else v))
    raise UserError(f"{source}: clinical values must be a dict or a pandas DataFrame, not {type(clinical).__name__}")


@dataclass
class ClinicalEncoder:
    """Clinical columns -> numbers: numeric standardised (training mean/sd, missing -> 0), categorical one-hot."""

    columns: list[str]  # the columns the caller supplies
    numeric: dict = field(default_factory=dict)  # col -> [mean, sd]
    categories: dict = field(default_factory=dict)  # col -> [levels]
    given: dict = field(default_factory=dict)  # col -> value the model supplies itself (encoded after ``columns``)

    @classmethod
    def fit(cls, df: pd.DataFrame, columns: Sequence[str]) -> "ClinicalEncoder":
        """Fit on the training slides' clinical table."""
        enc = cls(columns=list(columns))
        for c in enc.columns:
            if c not in df.columns:
                raise CohortError(f"clinical column {c!r} is not in the cohort")
            s = df[c]
            num = pd.to_numeric(s, errors="coerce")
            if s.notna().sum() > 0 and num.notna().sum() == s.notna().sum():
                mu = float(num.mean()) if num.notna().any() else 0.0
                sd = float(num.std(ddof=0)) if num.notna().sum() > 1 else 1.0
                enc.numeric[c] = [mu, sd if sd > 0 else 1.0]
            else:
                enc.categories[c] = sorted(str(v) for v in s.dropna().unique())
        return enc

    @property
    def names(self) -> list[str]:
        """Encoded column names: ``clinical.<col>`` or ``clinical.<col>=<level>``."""
        out = []
        for c in [*self.columns, *self.given]:
            if c in self.numeric:
                out.append(f"clinical.{c}")
            else:
                out.extend(f"clinical.{c}={lvl}" for lvl in self.categories[c])
        return out

    def transform(self, df: pd.DataFrame | None, n: int) -> np.ndarray:
        """Encoded (n, C) array; a missing table, column or value counts as missing (0 / no level)."""
        cols = []
        for c in [*self.columns, *self.given]:
            s = df[c] if df is not None and c in df.columns else pd.Series([np.nan] * n)
            if c in self.given:
                s = pd.Series([self.given[c]] * n, dtype=object)
            if len(s) != n:
                raise UserError(f"clinical table has {len(s)} rows for {n} slides")
            if c in self.numeric:
                mu, sd = self.numeric[c]
                v = (pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64) - mu) / sd
                cols.append(np.nan_to_num(v, nan=0.0)[:, None])
            else:
                sv = s.astype(object).where(s.notna(), None).map(lambda v: None if v is None else str(v))
                cols.append(np.stack([(sv == lvl).to_numpy(dtype=np.float64) for lvl in self.categories[c]],
                                     axis=1) if self.categories[c] else np.zeros((n, 0)))
        return np.concatenate(cols, axis=1) if cols else np.zeros((n, 0))

    def check(self, df: pd.DataFrame | None, source: str = "clinical values",
              slide_ids: Sequence[str] | None = None) -> list[str]:
        """Validate clinical values for prediction; return warnings, raise UserError (naming ``source``) on bad input.

        Every model column must be present and every value given: a missing column,
        a missing value or a non-number in a numeric column is an error. A category
        not seen in training is encoded as no level (all-zero one-hot, as
        scikit-learn's ``handle_unknown="ignore"``) and reported as a warning.
        """
        if df is None:
            raise UserError(f"{source}: no clinical values given; the model needs {', '.join(self.columns)}")
        absent = [c for c in self.columns if c not in df.columns]
        if absent:
            raise UserError(f"{source}: clinical column(s) {', '.join(absent)} missing (the model needs "
                            f"{', '.join(self.columns)})")
        ids = [str(i) for i in slide_ids] if slide_ids is not None else (
            df["slide_id"].astype(str).tolist() if "slide_id" in df.columns else [str(i + 1) for i in range(len(df))])
        out = []
        for c in self.columns:
            s = df[c].reset_index(drop=True)
            s = s.where(~s.astype(str).str.strip().isin(["", "nan", "NaN", "None", "NA"]) & s.notna(), None)
            if s.isna().any():
                raise UserError(f"{source}: slide {ids[int(np.flatnonzero(s.isna().to_numpy())[0])]!r} has no "
                                f"value for clinical column {c!r}")
            if c in self.numeric:
                num = pd.to_numeric(s, errors="coerce")
                if num.isna().any():
                    i = int(np.flatnonzero(num.isna().to_numpy())[0])
                    raise UserError(f"{source}: slide {ids[i]!r}: clinical column {c!r} needs a number, got {s[i]!r}")
            else:
                for i, v in enumerate(s.map(lambda v: str(v).strip())):
                    if v not in self.categories[c]:
                        out.append(f"slide {ids[i]!r}: {c}={v!r} was not seen in training (known: "
                                   f"{', '.join(self.categories[c])}); encoded as no level")
        return out

    def with_given(self, values: dict) -> "ClinicalEncoder":
        """This encoder with the trailing columns ``values`` names filled in by the model (same encoded inputs)."""
        k = len(values)
        if k == 0 or list(self.columns[len(self.columns) - k:]) != list(values):
            raise ValueError(f"given columns {list(values)} must be the last of {self.columns}")
        return ClinicalEncoder(columns=list(self.columns[:-k]), numeric=dict(self.numeric),
                               categories=dict(self.categories), given={**self.given, **values})

    def to_dict(self) -> dict:
        """JSON-able form."""
        d = {"columns": self.columns, "numeric": self.numeric, "categories": self.categories}
        return {**d, "given": self.given} if self.given else d

    @classmethod
    def from_dict(cls, d: dict, field: str = "clinical") -> "ClinicalEncoder":
        """Inverse of :meth:`to_dict`; FieldError naming the first bad field.

        Every column is numeric (``[mean, sd]``, sd > 0) or categorical (a list of levels), never both.
        """
        d = need_dict(d, field)
        columns = need_strs(need_key(d, "columns", field), f"{field}.columns")
        numeric = need_dict(need_key(d, "numeric", field), f"{field}.numeric")
        categories = need_dict(need_key(d, "categories", field), f"{field}.categories")
        given = need_dict(d.get("given") or {}, f"{field}.given")
        for c, v in given.items():
            if c in columns:
                fail(f"{field}.given.{c}", "names a column the caller supplies")
            if v is not None and not isinstance(v, (str, int, float)):
                fail(f"{field}.given.{c}", "must be a text, a number or null")
        for c, v in numeric.items():
            if c not in columns and c not in given:
                fail(f"{field}.numeric.{c}", "is not one of the clinical columns")
            mu, sd = need_list(v, f"{field}.numeric.{c}", length=2)
            need_number(mu, f"{field}.numeric.{c}[0]")
            need_number(sd, f"{field}.numeric.{c}[1]", positive=True)
        for c, v in categories.items():
            if c not in columns and c not in given:
                fail(f"{field}.categories.{c}", "is not one of the clinical columns")
            if c in numeric:
                fail(f"{field}.categories.{c}", "names a column that is also numeric")
            need_strs(v, f"{field}.categories.{c}", unique=True)
        for c in [*columns, *given]:
            if c not in numeric and c not in categories:
                fail(f"{field}.columns", f"lists {c!r}, which is neither in numeric nor in categories")
        return cls(columns=list(columns), numeric=dict(numeric), categories=dict(categories), given=dict(given))


# --------------------------------------------------------------------------- AUC
def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC (Mann-Whitney form, ties count half); NaN if one class is absent."""
    return float(_auc_rows(np.asarray(y, dtype=int)[None, :], np.asarray(p, dtype=float)[None, :])[0])


def _auc_rows(Y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Row-wise AUC of labels Y (m, n) and scores P (m, n) via average ranks."""
    from scipy.stats import rankdata

    r = rankdata(P, axis=1)
    n1 = Y.sum(axis=1).astype(float)
    n0 = Y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((r * Y).sum(axis=1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def bootstrap_auc_ci(y, p, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(AUC, lower, upper): percentile bootstrap CI over slides, seeded; single-class resamples skipped."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    auc = roc_auc(y, p)
    rng = np.random.default_rng(seed)
    aucs = []
    for start in range(0, n_boot, 500):  # chunks keep memory small on big cohorts
        idx = rng.integers(0, len(y), size=(min(500, n_boot - start), len(y)))
        aucs.append(_auc_rows(y[idx], p[idx]))
    a = np.concatenate(aucs) if aucs else np.array([np.nan])
    a = a[np.isfinite(a)]
    if a.size == 0:
        return auc, float("nan"), float("nan")
    lo, hi = np.percentile(a, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return auc, float(lo), float(hi)


def save_roc_png(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> None:
    """Write ROC curves {label: (y, p)} to a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    ax = fig.add_subplot(111)
    for label, (y, p) in curves.items():
        y, p = np.asarray(y), np.asarray(p)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), format="png", metadata={"Software": None})


# --------------------------------------------------------------------------- CV report
@dataclass
class CVReport:
    """Out-of-fold results of a nested cross-validation."""

    slide_ids: list[str]
    labels: np.ndarray
    oof: np.ndarray  # out-of-fold probability per slide
    fold: np.ndarray  # outer fold index per slide
    auc: float
    ci: tuple[float, float]
    fold_aucs: list[float]
    n_selected: list[int]
    messages: list[str]
    n_splits: int
    grouped: bool
    oof_image_only: np.ndarray | None = None  # when clinical columns were used
    auc_image_only: float | None = None
    ci_image_only: tuple[float, float] | None = None
    oof_pooled: np.ndarray | None = None  # when per-subtype routing was used
    auc_pooled: float | None = None
    ci_pooled: tuple[float, float] | None = None
    repeats: int = 1  # outer CV repeats; oof is the mean over them
    repeat_aucs: list[float] | None = None  # AUC of each repeat's out-of-fold probabilities
    recipes: list[str] | None = None  # recipe each outer fold chose, "r<repeat>f<fold>: name"
    oof_uncalibrated: np.ndarray | None = None  # before the fold models' calibrators (when calibrated)
    brier: float | None = None
    ece: float | None = None  # expected calibration error, 10 equal-width bins
    ece_uncalibrated: float | None = None
    ece_floor: float | None = None  # ECE of perfectly calibrated oof probabilities on this many slides (sampling)
    calibration: str | None = None  # calibration method of the fold models
    operating_points: dict | None = None  # calibration.operating_points of oof
    subtype_aucs: dict | None = None  # per subtype: slides, AUC of the routed, pooled (and partial) probabilities
    oof_partial: np.ndarray | None = None  # the partially pooled model (subtype as an input), when trained
    auc_partial: float | None = None
    ci_partial: tuple[float, float] | None = None
    subtype_choices: dict | None = None  # per subtype: outer folds that routed it to own / pooled / partial

    def summary(self) -> str:
        """One line per AUC, e.g. 'CV ROC-AUC 0.812 (95% CI 0.70-0.91), 5 folds'."""
        lines = [f"CV ROC-AUC {self.auc:.3f} (95% CI {self.ci[0]:.3f}-{self.ci[1]:.3f}), "
                 f"{self.n_splits} folds{' grouped by patient' if self.grouped else ''}, {len(self.oof)} slides"]
        if self.repeat_aucs and self.repeats > 1:
            a = np.asarray(self.repeat_aucs, dtype=float)
            lines.append(f"  {self.repeats} repeats: mean ROC-AUC {np.nanmean(a):.3f} (SD {np.nanstd(a):.3f}, "
                         f"range {np.nanmin(a):.3f}-{np.nanmax(a):.3f}); probabilities averaged over repeats")
        for name, d in (self.subtype_aucs or {}).items():
            part = f", partially pooled {d['partial']:.3f}" if d.get("partial") is not None else ""
            picks = (self.subtype_choices or {}).get(name)
            how = f" (routing in outer folds: {', '.join(f'{k} x{v}' for k, v in sorted(picks.items()))})" if picks else ""
            lines.append(f"  subtype {name} ({d['n']} slides): routed ROC-AUC {d['routed']:.3f}, pooled "
                         f"{d['pooled']:.3f}{part}{how}")
        if self.ece is not None:
            notes = [f"uncalibrated {self.ece_uncalibrated:.3f}"] if self.ece_uncalibrated is not None else []
            if self.ece_floor is not None:
                notes.append(f"perfectly calibrated probabilities would score {self.ece_floor:.3f} on "
                             f"{len(self.oof)} slides")
            unc = f" ({'; '.join(notes)})" if notes else ""
            lines.append(f"  calibration{f' ({self.calibration})' if self.calibration else ''}: Brier "
                         f"{self.brier:.3f}, expected calibration error {self.ece:.3f}{unc}")
        if self.auc_image_only is not None:
            lines.append(f"  image features only: ROC-AUC {self.auc_image_only:.3f} "
                         f"(95% CI {self.ci_image_only[0]:.3f}-{self.ci_image_only[1]:.3f})")
        if self.auc_pooled is not None:
            lines.append(f"  one pooled model (no subtype routing): ROC-AUC {self.auc_pooled:.3f} "
                         f"(95% CI {self.ci_pooled[0]:.3f}-{self.ci_pooled[1]:.3f})")
        if self.auc_partial is not None:
            lines.append(f"  partially pooled model (subtype as an input, every slide): ROC-AUC "
                         f"{self.auc_partial:.3f} (95% CI {self.ci_partial[0]:.3f}-{self.ci_partial[1]:.3f})")
        return "\n".join(lines)

    def oof_frame(self) -> pd.DataFrame:
        """Per-slide table: slide_id, label, fold, probability[, probability_image_only][, probability_pooled]."""
        d = {"slide_id": self.slide_ids, "label": self.labels, "fold": self.fold, "probability": self.oof}
        if self.oof_image_only is not None:
            d["probability_image_only"] = self.oof_image_only
        if self.oof_pooled is not None:
            d["probability_pooled"] = self.oof_pooled
        if self.oof_partial is not None:
            d["probability_partial"] = self.oof_partial
        return pd.DataFrame(d)

    def to_dict(self) -> dict:
        """JSON-able form (arrays as lists)."""
        out = {}
        for k, v in asdict(self).items():
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, tuple):
                v = list(v)
            out[k] = v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "CVReport":
        """Inverse of :meth:`to_dict`."""
        kw = dict(d)
        for k in ("labels", "oof", "fold", "oof_image_only", "oof_pooled", "oof_uncalibrated", "oof_partial"):
            if kw.get(k) is not None:
                kw[k] = np.asarray(kw[k])
        for k in ("ci", "ci_image_only", "ci_pooled", "ci_partial"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**{k: v for k, v in kw.items() if k in cls.__dataclass_fields__})

    def save_roc(self, path: Path) -> None:
        """ROC curve(s) of the out-of-fold probabilities as a PNG."""
        main = "image + clinical" if self.oof_image_only is not None else (
            "routed per subtype" if self.oof_pooled is not None else "nested CV")
        curves = {f"{main} (AUC {self.auc:.2f})": (self.labels, self.oof)}
        if self.oof_image_only is not None:
            curves[f"image only (AUC {self.auc_image_only:.2f})"] = (self.labels, self.oof_image_only)
        if self.oof_pooled is not None:
            curves[f"pooled model (AUC {self.auc_pooled:.2f})"] = (self.labels, self.oof_pooled)
        if self.oof_partial is not None:
            curves[f"partially pooled (AUC {self.auc_partial:.2f})"] = (self.labels, self.oof_partial)
        save_roc_png(path, curves, title=f"{self.n_splits}-fold nested CV, {len(self.oof)} slides")

    def save_reliability(self, path: Path) -> None:
        """Reliability diagram of the out-of-fold probabilities as a PNG."""
        save_reliability_png(path, self.labels, self.oof,
                             title=f"{self.n_splits}-fold nested CV, {len(self.oof)} slides"
                                   f"{f', {self.calibration} calibration' if self.calibration else ''}")

    def recipe_counts(self) -> dict[str, int]:
        """How many outer folds chose each recipe."""
        out: dict[str, int] = {}
        for r in self.recipes or []:
            name = r.split(": ", 1)[-1]
            out[name] = out.get(name, 0) + 1
        return out


# --------------------------------------------------------------------------- bundle
def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "_"


class ModelBundle:
    """A trained model: feature schema, fitted fusion, selection, clinical encoding and classifier (data only)."""

    def __init__(self, feature_names, fusion: Fusion, selection: Selection, classifier: Classifier,
                 config: dict, importance: pd.DataFrame, clinical: ClinicalEncoder | None = None,
                 cv_report: CVReport | None = None, subtype_models: dict | None = None,
                 subtype_routing: dict | None = None, package_version: str = __version__,
                 schema_version: int = SCHEMA_VERSION, calibrator: Calibrator | None = None,
                 operating_points: dict | None = None, partial: "ModelBundle | None" = None,
                 partial_subtypes: Sequence[str] = ()):
        self.feature_names = list(feature_names)
        self.fusion = fusion
        self.selection = selection
        self.classifier = classifier
        self.config = dict(config)
        self.importance = importance
        self.clinical = clinical
        self.cv_report = cv_report
        self.subtype_models: dict[str, ModelBundle] = dict(subtype_models or {})
        self.subtype_routing: dict[str, str] = dict(subtype_routing or {})
        self.package_version = package_version
        self.schema_version = schema_version
        self.calibrator = calibrator  # maps the classifier's probability to a calibrated one (None: as is)
        self._operating_points = operating_points  # as read from bundle.json; else from cv_report
        self.partial = partial  # per-subtype training: the pooled model refitted with the subtype as an input
        self.partial_subtypes: list[str] = [str(s) for s in partial_subtypes]  # subtypes routed to ``partial``
        self._partial_views: dict[str, ModelBundle] = {}

    @property
    def operating_points(self) -> dict | None:
        """Rule-out / rule-in thresholds from the out-of-fold probabilities (None without a CV report)."""
        if self.cv_report is not None and self.cv_report.operating_points is not None:
            return self.cv_report.operating_points
        return self._operating_points

    def __repr__(self) -> str:
        subs = f", subtypes={sorted(self.subtype_models)}" if self.subtype_models else ""
        if self.partial is not None and self.partial_subtypes:
            subs += f", partially pooled={sorted(self.partial_subtypes)}"
        return (f"ModelBundle({self.config.get('classifier')}, fusion={self.fusion.kind}, "
                f"{len(self.feature_names)} tile features -> {len(self.input_names)} inputs{subs})")

    # -- inputs ----------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        """Columns the classifier sees: selected element names, then encoded clinical names."""
        return list(self.selection.names) + (self.clinical.names if self.clinical else [])

    def check_features(self, df: pd.DataFrame) -> None:
        """Raise ModelError if ``df`` lacks tile feature columns this model needs, UserError if it has no tiles."""
        missing = [f for f in self.feature_names if f not in df.columns]
        sid = str(df["slide_id"].iloc[0]) if "slide_id" in df.columns and len(df) else "the slide"
        if missing:
            raise ModelError(
                f"features of {sid} do not match the model's feature schema: {len(missing)} column(s) missing, "
                f"e.g. {', '.join(missing[:5])} (re-extract features with this package version)"
            )
        if len(df) == 0:
            raise UserError(f"features table of {sid} has no tiles")

    def fuse(self, tiles_df: pd.DataFrame) -> np.ndarray:
        """The slide's fused vector (P,) over all fused elements (before selection)."""
        self.check_features(tiles_df)
        return self.fusion.transform([tiles_df])[0]

    def design(self, tables, clinical: pd.DataFrame | dict | None = None) -> np.ndarray:
        """Classifier input (n, Q + C): selected fused elements, then encoded clinical columns."""
        if isinstance(tables, pd.DataFrame):
            tables = [tables]
        for t in tables:
            self.check_features(t)
        return self.design_fused(self.fusion.transform(tables), clinical)

    def design_fused(self, F: np.ndarray, clinical: pd.DataFrame | dict | None = None) -> np.ndarray:
        """Classifier input from fused vectors ``F`` (n, P) of this bundle's fusion."""
        X = self.selection.apply(F)
        if self.clinical is not None and (self.clinical.columns or self.clinical.given):
            if isinstance(clinical, dict):
                clinical = pd.DataFrame([clinical])
            if clinical is not None:
                clinical = clinical.reset_index(drop=True)
            X = np.concatenate([X, self.clinical.transform(clinical, len(X))], axis=1)
        return X

    # -- outputs ---------------------------------------------------------
    def predict_proba(self, tables, clinical: pd.DataFrame | dict | None = None, calibrated: bool = True) -> np.ndarray:
        """Metastasis probability per slide, (n,), through the bundle's calibrator (``calibrated=False``: raw).

        Missing clinical values are imputed (mean / no level).
        """
        p = self.classifier.predict_proba(self.design(tables, clinical))
        return self.calibrator.apply(p) if calibrated and self.calibrator is not None else p

    def contributions(self, tiles_df: pd.DataFrame, clinical: pd.DataFrame | dict | None = None) -> pd.DataFrame:
        """Per classifier input of one slide: element, feature, bin, bin_lo, bin_hi, value, contribution (log-odds).

        Sorted by |contribution| (largest first). XGBoost: ``pred_contribs``; logistic
        regression: coef * standardised value; SVM/MLP: occlusion. The bias (log-odds
        with no evidence), the slide's logit and probability are in ``df.attrs``
        (``bias``, ``logit``, ``probability``); for XGBoost and logistic regression
        contributions + bias = logit exactly, for SVM/MLP (non-additive) approximately.
        """
        X = self.design(tiles_df, clinical)
        c = self.classifier.contributions(X)[0]
        prob = float(self.classifier.predict_proba(X)[0])
        if self.calibrator is not None:  # Platt: the calibrated logit is a * logit + b, so scale every term
            cal = float(self.calibrator.apply(np.array([prob]))[0])
            if self.calibrator.method == "platt":
                c = np.append(c[:-1] * self.calibrator.a, c[-1] * self.calibrator.a + self.calibrator.b)
            else:  # isotonic is not linear in the logit: the shift goes into the bias
                c = c.copy()
                c[-1] += float(np.log(max(cal, 1e-12) / max(1 - cal, 1e-12))
                               - np.log(max(prob, 1e-12) / max(1 - prob, 1e-12)))
            prob = cal
        info = self.element_table()
        df = info.assign(value=X[0], contribution=c[:-1])
        df = df.iloc[np.argsort(-np.abs(df["contribution"].to_numpy()), kind="stable")].reset_index(drop=True)
        logit = float(np.log(max(prob, 1e-12) / max(1.0 - prob, 1e-12)))
        df.attrs.update(bias=float(c[-1]), logit=logit, probability=prob)
        return df

    def element_table(self) -> pd.DataFrame:
        """Per classifier input: element, feature, bin, bin_lo, bin_hi, stat, direction, description."""
        return self.importance.drop(columns=["fscore", "gain"]).reset_index(drop=True)

    def for_subtype(self, name: str | None) -> tuple["ModelBundle", str]:
        """(model for subtype ``name``, name of the model used: the subtype or 'pooled').

        A subtype routed to the partially pooled model gets it with its subtype input set to ``name``.
        """
        if name is not None and str(name) in self.subtype_models:
            return self.subtype_models[str(name)], str(name)
        if name is not None and self.partial is not None and str(name) in self.partial_subtypes:
            return self.partial_for(str(name)), str(name)
        if name is not None and self.needs_subtype:
            return self.with_subtype(str(name)), POOLED
        return self, POOLED

    @property
    def needs_subtype(self) -> bool:
        """Whether the classifier centres within the slide's subtype (a subtype-stratified recipe)."""
        return self.config.get("strata") == SUBTYPE_INPUT and self.clinical is not None \
            and SUBTYPE_INPUT in self.clinical.columns

    def caller_inputs(self, subtype_voted: bool) -> "ModelBundle":
        """The model whose clinical columns the caller supplies: without its subtype input when a subtype
        model's vote fills that in (``subtype_voted``), else this model."""
        return self.with_subtype(None) if subtype_voted and self.needs_subtype else self

    def with_subtype(self, name: str | None) -> "ModelBundle":
        """This model with its subtype input fixed to ``name`` (None: no level), e.g. a subtype model's vote."""
        key = None if name is None else str(name)
        if key not in self._partial_views:
            enc = self.clinical.with_given({SUBTYPE_INPUT: None if key is None else subtype_level(key)})
            self._partial_views[key] = ModelBundle(
                self.feature_names, self.fusion, self.selection, self.classifier, {**self.config, "subtype": key},
                self.importance, clinical=enc, package_version=self.package_version,
                schema_version=self.schema_version, calibrator=self.calibrator)
        return self._partial_views[key]

    def partial_for(self, name: str | None) -> "ModelBundle":
        """The partially pooled model with its subtype input fixed to ``name`` (None: no level)."""
        if self.partial is None:
            raise ModelError("this model has no partially pooled model")
        return self.partial.with_subtype(name)

    # -- persistence -----------------------------------------------------
    def to_json(self) -> dict:
        """The bundle.json content, minus the classifier metadata (added by save)."""
        return {
            "schema_version": self.schema_version,
            "package": "napari-lnm",
            "package_version": self.package_version,
            "config": self.config,
            "feature_names": self.feature_names,
            "feature_schema_hash": _schema_hash(self.feature_names),
            "fusion": self.fusion.to_dict(),
            "selection": self.selection.to_dict(),
            "clinical": self.clinical.to_dict() if self.clinical else None,
            "importance": json.loads(self.importance.to_json(orient="records")),
            "subtype_models": {k: f"subtypes/{_safe_name(k)}" for k in self.subtype_models},
            "subtype_routing": self.subtype_routing,
            **({"partial_model": {"path": PARTIAL_DIR, "column": SUBTYPE_INPUT, "subtypes": self.partial_subtypes}}
               if self._saves_partial() else {}),
            "cv_summary": self.cv_report.summary() if self.cv_report else None,
            **({"calibration": self.calibrator.to_dict()} if self.calibrator is not None else {}),
            **({"operating_points": self.operating_points} if self.operating_points is not None else {}),
            **({"evidence": evidence(self)} if self.cv_report is not None else {}),
        }

    def _write(self, d: Path) -> None:
        meta = self.to_json()
        meta["classifier"] = self.classifier.save(d)
        if self.cv_report is not None:
            (d / "cv_report.json").write_text(json.dumps(self.cv_report.to_dict(), indent=1), encoding="utf-8")
            self.cv_report.oof_frame().to_csv(d / "oof.csv", index=False, float_format="%.6g")
            self.cv_report.save_roc(d / "roc.png")
            if self.cv_report.ece is not None:
                self.cv_report.save_reliability(d / "reliability.png")
        for name, sub in self.subtype_models.items():
            sd = d / "subtypes" / _safe_name(name)
            sd.mkdir(parents=True)
            sub._write(sd)
        if self._saves_partial():
            (d / PARTIAL_DIR).mkdir()
            self.partial._write(d / PARTIAL_DIR)
        (d / BUNDLE_FILE).write_text(json.dumps(meta, indent=1, allow_nan=True), encoding="utf-8")

    def _saves_partial(self) -> bool:
        """Whether the bundle folder holds the partially pooled model (only when a subtype is routed to it)."""
        return self.partial is not None and bool(self.partial_subtypes)

    def save(self, directory: str | Path) -> Path:
        """Write the bundle folder atomically (an existing one is replaced only once the new one is complete)."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            self._write(Path(tmp))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ModelBundle":
        """Read a bundle folder; one-line ModelError naming the file (and field) if missing, damaged or incompatible."""
        d = Path(directory)
        f = d / BUNDLE_FILE
        if not d.is_dir():
            raise ModelError(f"{d}: model folder not found")
        if not f.is_file():
            raise ModelError(f"{d}: not a model bundle ({BUNDLE_FILE} missing)")
        try:
            meta = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{d}: {BUNDLE_FILE} is unreadable ({exc})") from None
        if not isinstance(meta, dict):
            raise ModelError(f"{f}: must hold a JSON object, not a {type(meta).__name__}")
        sv = meta.get("schema_version")
        if sv != SCHEMA_VERSION:
            raise ModelError(f"{d}: bundle schema version {sv} is not supported (this napari-lnm reads "
                             f"version {SCHEMA_VERSION}); retrain the model")
        pv = str(meta.get("package_version", ""))
        if pv.split(".")[0] != __version__.split(".")[0]:
            raise ModelError(f"{d}: bundle was made by napari-lnm {pv}, incompatible with {__version__}; "
                             f"retrain the model")
        try:
            return cls._from_meta(d, meta)
        except FieldError as exc:
            raise ModelError(f"{f}: {exc}") from None
        except ModelError:
            raise
        except Exception as exc:  # a damage no check foresaw: still one line, never a traceback
            raise ModelError(f"{d}: bundle is damaged ({_one_line(exc)})") from None

    @classmethod
    def _from_meta(cls, d: Path, meta: dict) -> "ModelBundle":
        """The bundle that the parsed bundle.json ``meta`` of folder ``d`` describes; FieldError naming a bad field."""
        names = need_strs(need_key(meta, "feature_names", ""), "feature_names", unique=True)
        if not names:
            fail("feature_names", "is empty")
        if meta.get("feature_schema_hash") is not None and meta["feature_schema_hash"] != _schema_hash(names):
            fail("feature_schema_hash", "does not match feature_names")
        config = need_dict(need_key(meta, "config", ""), "config")
        _check_tiling(config.get("tiling"), "config.tiling")
        fusion = fusion_from_dict(need_key(meta, "fusion", ""), names)
        selection = Selection.from_dict(need_key(meta, "selection", ""), fusion.element_names)
        clinical = None if meta.get("clinical") is None else ClinicalEncoder.from_dict(meta["clinical"])
        inputs = list(selection.names) + (clinical.names if clinical else [])
        classifier = load_classifier(d, need_key(meta, "classifier", ""), len(inputs))
        importance = _importance_frame(need_key(meta, "importance", ""), inputs)
        routing = need_dict(meta.get("subtype_routing") or {}, "subtype_routing")
        for name, how in routing.items():
            need_str(how, f"subtype_routing.{name}")
        subs = {}
        for name, rel in need_dict(meta.get("subtype_models") or {}, "subtype_models").items():
            sub = cls.load(inside(d, rel, f"subtype_models.{name}"))
            if sub.feature_names != names:
                fail(f"subtype_models.{name}", "is a model of other tile features than the bundle's")
            subs[name] = sub
        partial, partial_subtypes = _load_partial(d, meta, names)
        calibrator = None if meta.get("calibration") is None else Calibrator.from_dict(meta["calibration"])
        points = meta.get("operating_points")
        if points is not None:
            need_dict(points, "operating_points")
            for k in ("rule_out", "rule_in"):
                if points.get(k) is not None:
                    need_number(need_key(need_dict(points[k], f"operating_points.{k}"), "threshold",
                                         f"operating_points.{k}"), f"operating_points.{k}.threshold")
        return cls(names, fusion, selection, classifier, config, importance, clinical=clinical,
                   cv_report=_load_cv_report(d / "cv_report.json"), subtype_models=subs, subtype_routing=routing,
                   package_version=str(meta.get("package_version", "")), schema_version=meta.get("schema_version"),
                   calibrator=calibrator, operating_points=points, partial=partial, partial_subtypes=partial_subtypes)


def _load_partial(d: Path, meta: dict, names: list[str]) -> tuple[ModelBundle | None, list[str]]:
    """The partially pooled model of bundle.json's optional ``partial_model`` and the subtypes routed to it."""
    pm = meta.get("partial_model")
    if pm is None:
        return None, []
    need_dict(pm, "partial_model")
    rel = need_str(need_key(pm, "path", "partial_model"), "partial_model.path")
    if need_str(need_key(pm, "column", "partial_model"), "partial_model.column") != SUBTYPE_INPUT:
        fail("partial_model.column", f"must be {SUBTYPE_INPUT!r}")
    subtypes = need_strs(need_key(pm, "subtypes", "partial_model"), "partial_model.subtypes", unique=True)
    partial = ModelBundle.load(inside(d, rel, "partial_model.path"))
    if partial.feature_names != names:
        fail("partial_model", "is a model of other tile features than the bundle's")
    enc = partial.clinical
    if enc is None or not enc.columns or enc.columns[-1] != SUBTYPE_INPUT or SUBTYPE_INPUT not in enc.categories:
        fail("partial_model", f"has no categorical {SUBTYPE_INPUT!r} input as its last clinical column")
    return partial, subtypes


def _schema_hash(names: Sequence[str]) -> str:
    """Short SHA-256 of the ordered tile feature names, as bundle.json records it."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _one_line(exc: BaseException) -> str:
    """'<type>: <first line of the message>' (XGBoost appends a multi-line C++ stack trace)."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


IMPORTANCE_COLUMNS = ("element", "feature", "bin", "bin_lo", "bin_hi", "stat", "fscore", "gain", "direction",
                      "description")


def _importance_frame(rows, inputs: list[str]) -> pd.DataFrame:
    """bundle.json's importance records as a DataFrame: one row per classifier input, in input order."""
    rows = need_list(rows, "importance", length=len(inputs))
    for i, r in enumerate(rows):
        need_dict(r, f"importance[{i}]")
        for k in IMPORTANCE_COLUMNS:
            need_key(r, k, f"importance[{i}]")
        if r["element"] != inputs[i]:
            fail(f"importance[{i}].element", f"is {r['element']!r}, but input {i} is {inputs[i]!r}")
        for k in ("fscore", "gain"):
            need_number(r[k], f"importance[{i}].{k}")
    return pd.DataFrame(rows)


def _check_tiling(tiling, field: str) -> None:
    """FieldError unless ``tiling`` is None or the settings of a valid ``TilingConfig`` (extra keys allowed)."""
    if tiling is None:
        return
    import dataclasses

    from napari_lnm.tiling import TilingConfig

    need_dict(tiling, field)
    known = {f.name for f in dataclasses.fields(TilingConfig)}
    try:
        TilingConfig(**{k: v for k, v in tiling.items() if k in known})
    except (TypeError, ValueError) as exc:  # UserError is a ValueError
        fail(field, f"is not a valid tiling ({(str(exc).splitlines() or [''])[0]})")


def _load_cv_report(path: Path) -> CVReport | None:
    """The bundle's cross-validation report, or None without one; ModelError naming the file if it is damaged."""
    if not path.is_file():
        return None
    try:
        rep = CVReport.from_dict(need_dict(json.loads(path.read_text(encoding="utf-8")), "cv report"))
        rep.summary()  # formats the AUCs, CI and fold count: a damaged value fails here, not when printed
    except Exception as exc:
        raise ModelError(f"{path}: damaged cross-validation report ({_one_line(exc)})") from None
    return rep


# --------------------------------------------------------------------------- training
def infer_feature_names(tables: Sequence[pd.DataFrame]) -> list[str]:
    """Tile feature columns of the first table (every other table must have them)."""
    if not tables:
        raise CohortError("no slides given")
    return feature_columns(tables[0])


def _check_labels(labels) -> np.ndarray:
    y = np.asarray(labels)
    try:
        yi = y.astype(float)
    except (TypeError, ValueError):
        raise CohortError("labels must be 0 (no metastasis) or 1 (metastasis)") from None
    if not np.all(np.isin(yi, (0.0, 1.0))):
        raise CohortError(f"labels must be 0 or 1; found {sorted(set(y.tolist()))[:5]}")
    yi = yi.astype(int)
    if len(np.unique(yi)) < 2:
        raise CohortError(f"the cohort has only one class (all labels = {yi[0] if len(yi) else '?'}); "
                          f"training needs metastatic and non-metastatic slides")
    return yi


def _importance(classifier, X, y, names, info: pd.DataFrame) -> pd.DataFrame:
    fscore, gain = classifier.importance(X)
    with np.errstate(all="ignore"):
        diff = np.nanmean(X[y == 1], axis=0) - np.nanmean(X[y == 0], axis=0)
    direction = np.where(diff >= 0, "higher in metastatic", "lower in metastatic")
    rows = info.set_index("element").reindex(names).reset_index()
    rows["fscore"] = fscore
    rows["gain"] = gain
    rows["direction"] = direction
    desc = []
    for r in rows.itertuples():
        if isinstance(r.stat, str) and r.stat.startswith(("bin", "c")) and r.bin and r.bin > 0:
            desc.append(f"{r.feature}, {ordinal(int(r.bin))} bin, {r.direction}")
        elif isinstance(r.feature, str) and r.feature.startswith("clinical."):
            desc.append(f"{r.feature}, {r.direction}")
        else:
            desc.append(f"{r.feature} ({r.stat}), {r.direction}")
    rows["description"] = desc
    rows = rows[["element", "feature", "bin", "bin_lo", "bin_hi", "stat", "fscore", "gain", "direction",
                 "description"]]
    return rows


def _clinical_info(enc: ClinicalEncoder) -> pd.DataFrame:
    rows = [dict(element=n, feature=n, bin=0, bin_lo=np.nan, bin_hi=np.nan, stat="clinical") for n in enc.names]
    return pd.DataFrame(rows, columns=["element", "feature", "bin", "bin_lo", "bin_hi", "stat"])


def _fit_fusion(tables, config: TrainConfig, feature_names, y: np.ndarray,
                groups: np.ndarray | None = None) -> tuple[Fusion, np.ndarray]:
    """The config's fusion fitted on ``tables`` and their fused vectors (n, P); ``deep.*`` columns are fused
    through their principal components, fitted on these (training) tables only."""
    if config.fusion == recipes.MIL_FUSION:  # a learned fusion: the ABMIL network, fitted on these slides' labels
        from napari_lnm.mil import MILFusion

        fusion = MILFusion(folds=config.inner_cv, seed=config.seed).fit_labelled(tables, y, feature_names, groups)
        return fusion, fusion.training_values(tables)
    fusion = make_fusion(config.fusion, bins=config.bins, edges=config.edges, p=config.p)
    if any(is_deep(f) for f in feature_names):
        fusion = ProjectedFusion(fusion, config.deep_components)
    fusion.fit(tables, feature_names)
    return fusion, fusion.transform(tables)


def _train_single(tables, y, config: TrainConfig, feature_names, clinical: pd.DataFrame | None,
                  groups: np.ndarray | None = None) -> ModelBundle:
    fusion, F = _fit_fusion(tables, config, feature_names, y, groups)
    return _fit_head(fusion, F, y, config, feature_names, clinical, groups)


def _fit_head(fusion: Fusion, F: np.ndarray, y, config: TrainConfig, feature_names, clinical: pd.DataFrame | None,
              groups: np.ndarray | None = None) -> ModelBundle:
    """Selection, clinical encoding and classifier on fused vectors ``F`` of a fitted ``fusion`` -> ModelBundle."""
    n = len(F)
    sel = select_elements(F, y, test=config.test, alpha=config.alpha, top_q=config.top_q,
                          names=fusion.element_names)
    X = sel.apply(F)
    info = fusion.element_info()
    enc = None
    if config.clinical:
        enc = ClinicalEncoder.fit(clinical if clinical is not None else pd.DataFrame(), config.clinical)
        X = np.concatenate([X, enc.transform(clinical.reset_index(drop=True), n)], axis=1)
        info = pd.concat([info, _clinical_info(enc)], ignore_index=True)
    params = dict(config.classifier_params or {})
    if config.strata and enc is not None:  # the one-hot columns of the strata's levels, after the selected elements
        params["strata"] = [X.shape[1] - len(enc.names) + i for i, nm in enumerate(enc.names)
                            if nm.startswith(f"clinical.{config.strata}=")]
    clf = make_classifier(config.classifier, seed=config.seed, nthread=config.nthread,
                          params=params or None).fit(X, y, groups=groups)
    names = list(sel.names) + (enc.names if enc else [])
    imp = _importance(clf, X, y, names, info)
    cfg = config.to_dict()
    for k in ("recipe", "grid", "classifier_params", "calibration", "inner_cv", "repeats", "deep_components",
              "inner_repeats", "choice", "strata"):
        if cfg[k] == TrainConfig.__dataclass_fields__[k].default:
            del cfg[k]  # fixed-recipe, uncalibrated bundles record the config as before
    if config.classifier == "xgboost":
        cfg["n_trees"] = clf.n_rounds
    cfg["n_slides"] = int(len(y))
    cfg["n_positive"] = int(y.sum())
    cfg["selection_message"] = sel.message
    if getattr(clf, "inner_grouped", False):  # recorded only when true: ungrouped bundles stay as before
        cfg["inner_cv"] = "grouped by patient"
    return ModelBundle(feature_names, fusion, sel, clf, cfg, imp, clinical=enc)


@dataclass
class InnerCV:
    """What the inner CV of one training set found, per candidate recipe."""

    fold_aucs: dict[str, np.ndarray]  # ROC-AUC of every inner test fold of every repeat (repeats x folds, flat)
    oof: dict[str, np.ndarray]  # (repeats, n) inner out-of-fold (uncalibrated) probabilities
    folds_per_repeat: int

    @property
    def scores(self) -> dict[str, float]:
        """Mean inner-fold ROC-AUC over all folds of all repeats (NaN when no fold gave one)."""
        return {n: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan") for n, a in self.fold_aucs.items()}

    def se(self, name: str) -> float:
        """Standard error of ``name``'s mean inner-CV AUC: SD of its fold AUCs over all repeats / sqrt(folds in one
        repeat) (conservative: the repeats reuse the same slides, so they are not independent); 0 below 2 folds."""
        a = self.fold_aucs[name]
        a = a[np.isfinite(a)]
        return float(np.std(a, ddof=1) / np.sqrt(self.folds_per_repeat)) if len(a) >= 2 else 0.0


def candidates(config: TrainConfig, clinical: pd.DataFrame | None) -> list[tuple[str, TrainConfig]]:
    """``config.candidates()``; when choosing (``recipe="auto"``), less the recipes whose strata column
    ``clinical`` lacks or gives fewer than two levels."""
    def usable(cfg: TrainConfig) -> bool:
        return not cfg.strata or (clinical is not None and cfg.strata in clinical.columns
                                  and clinical[cfg.strata].dropna().nunique() > 1)

    cands = config.candidates()
    return [(n, c) for n, c in cands if usable(c)] if config.recipe == recipes.AUTO else cands


def _inner_cv(tables, y, config: TrainConfig, feature_names, clinical: pd.DataFrame | None,
              groups: np.ndarray | None) -> InnerCV:
    """Per candidate recipe: the ROC-AUC of every inner test fold and the inner out-of-fold probabilities.

    Folds: ``classifiers.inner_folds`` (patient-grouped with ``groups``), repeated
    ``config.inner_repeats`` times with fold seeds ``seed, seed + 1, ...`` (the first
    repeat is the single inner CV of before); each fusion is fitted once per inner
    fold on its training part and shared by the recipes that use it.
    """
    cands = candidates(config, clinical)
    repeats = max(1, int(config.inner_repeats))
    aucs: dict[str, list[float]] = {name: [] for name, _ in cands}
    oof = {name: np.full((repeats, len(y)), np.nan) for name, _ in cands}
    n_folds = 0
    for r in range(repeats):
        folds, _ = inner_folds(y, groups, wanted=config.inner_cv, seed=config.seed + r)
        n_folds = max(n_folds, len(folds))
        for tr, te in folds:
            ttr, tte = [tables[i] for i in tr], [tables[i] for i in te]
            ctr = None if clinical is None else clinical.iloc[tr].reset_index(drop=True)
            cte = None if clinical is None else clinical.iloc[te].reset_index(drop=True)
            fused: dict[tuple, tuple[Fusion, np.ndarray, np.ndarray]] = {}
            for name, cfg in cands:
                key = (cfg.fusion, cfg.bins, cfg.edges, cfg.p)
                if key not in fused:
                    fus, f_tr = _fit_fusion(ttr, cfg, feature_names, y[tr], None if groups is None else groups[tr])
                    fused[key] = (fus, f_tr, fus.transform(tte))
                fus, f_tr, f_te = fused[key]
                b = _fit_head(fus, f_tr, y[tr], cfg, feature_names, ctr, None if groups is None else groups[tr])
                oof[name][r, te] = b.classifier.predict_proba(b.design_fused(f_te, cte))
                aucs[name].append(roc_auc(y[te], oof[name][r, te]))
    return InnerCV({n: np.asarray(v, dtype=float) for n, v in aucs.items()}, oof, max(n_folds, 1))


def choose_recipe(inner: InnerCV, names: Sequence[str], rule: str = recipes.ONE_SE) -> tuple[str, dict]:
    """The recipe ``rule`` keeps among ``names`` (in grid order) and how: (name, record for the bundle's config).

    ``"best"``: the highest mean inner-CV AUC (ties: the earlier name). ``"1se"``
    (one-standard-error rule): of the recipes whose mean inner-CV AUC is at least the
    best one's minus its standard error (:meth:`InnerCV.se`), the first in
    ``recipe.SIMPLEST_FIRST`` -- on a small cohort the inner CV cannot tell the
    recipes apart, and the choice then falls on the sparsest linear model rather
    than on whichever recipe the noise favoured.
    """
    if rule not in recipes.CHOICES:
        raise ValueError(f"unknown recipe choice rule {rule!r}; choose one of {', '.join(recipes.CHOICES)}")
    names = list(names)
    scores = inner.scores
    best = max(range(len(names)), key=lambda i: (np.nan_to_num(scores[names[i]], nan=-1.0), -i))
    top = names[best]
    if rule == recipes.BEST or not np.isfinite(scores[top]):
        return top, {"recipe_rule": recipes.BEST}
    se = inner.se(top)
    near = [n for n in names if np.isfinite(scores[n]) and scores[n] >= scores[top] - se - 1e-12]
    pick = min(near, key=lambda n: (recipes.simplicity_rank(n), names.index(n)))
    return pick, {"recipe_rule": recipes.ONE_SE, "recipe_best": top, "recipe_best_se": round(se, 4)}


#: fewest slides of each class for which the recipe choice and calibration run an inner CV (2 folds,
#: each training on at least 2 slides of a class)
MIN_PER_CLASS_FOR_INNER_CV = 4


def _train_calibrated(tables, y, config: TrainConfig, feature_names, clinical: pd.DataFrame | None,
                      groups: np.ndarray | None) -> ModelBundle:
    """Choose the recipe by inner CV (when there is a choice), fit it on all slides, add the calibrator."""
    cands = candidates(config, clinical)
    if config.fusion == recipes.MIL_FUSION and config.recipe == recipes.FIXED:
        # the logistic head is fitted on the network's inner-CV log-odds: it is the (Platt) calibration
        bundle = _train_single(tables, y, config, feature_names, clinical, groups)
        bundle.config["calibration_note"] = "logistic head on the ABMIL network's inner-CV log-odds (Platt)"
        bundle.config["calibration_head"] = "platt"
        return bundle
    if len(cands) == 1 and config.calibration == "none":
        return _train_single(tables, y, cands[0][1], feature_names, clinical, groups)
    if np.bincount(np.asarray(y, int), minlength=2).min() < MIN_PER_CLASS_FOR_INNER_CV:
        # an inner fold would train on a single slide of a class: no recipe choice, no calibration
        bundle = _train_single(tables, y, cands[0][1], feature_names, clinical, groups)
        bundle.config.update(recipe=cands[0][0], recipe_choice=config.recipe, inner_cv=config.inner_cv,
                             calibration_note=f"too few slides per class (< {MIN_PER_CLASS_FOR_INNER_CV}) to choose "
                                              f"a recipe or calibrate by inner CV")
        return bundle
    tables = tile_tables(tables, feature_names)  # tile matrices read once for every fold and recipe
    inner = _inner_cv(tables, y, config, feature_names, clinical, groups)
    names = [n for n, _ in cands]
    name, how = choose_recipe(inner, names, config.choice) if len(cands) > 1 else (names[0], {})
    cfg = dict(cands)[name]
    bundle = _train_single(tables, y, cfg, feature_names, clinical, groups)
    bundle.config.update(recipe=name, recipe_choice=config.recipe, inner_cv=config.inner_cv,
                         inner_repeats=int(config.inner_repeats))
    if len(cands) > 1:
        bundle.config["recipe_scores"] = {n: (None if not np.isfinite(v) else round(v, 4))
                                          for n, v in inner.scores.items()}
        bundle.config.update(how)
    if config.calibration != "none":
        # every repeat's inner out-of-fold probabilities, stacked: one (label, probability) pair per slide and
        # repeat, each from a model that did not see the slide; the method and Platt's smoothing count slides
        p = inner.oof[name].ravel()
        yy = np.tile(y, inner.oof[name].shape[0])
        ok = np.isfinite(p)
        bundle.calibrator = Calibrator.fit(yy[ok], p[ok], config.calibration, slides=len(y),
                                           balanced=bundle.classifier.balanced)
        bundle.config["calibration"] = bundle.calibrator.method
    return bundle


def train_model(tables: Sequence[pd.DataFrame], labels, config: TrainConfig | None = None,
                clinical: pd.DataFrame | None = None, subtypes: Sequence | None = None,
                feature_names: Sequence[str] | None = None, progress=None, should_stop=None,
                groups: Sequence | None = None) -> ModelBundle:
    """Fit fusion, selection, clinical encoding and classifier on all given slides -> ModelBundle.

    ``groups``: patient id per slide (e.g. the cohort's ``patient_id``); the
    classifier's inner CV (XGBoost's number of trees, SVM's Platt scaling) then
    keeps each patient's slides on one side of every inner fold.

    With ``config.per_subtype`` and ``subtypes`` (one value per slide), each subtype
    is routed to its own model (``bundle.subtype_models``), the pooled model or the
    partially pooled one (``bundle.partial``: the pooled model refitted with the
    subtype as an input), whichever scores best by inner CV on its slides (a fixed,
    uncalibrated recipe: always its own model); a subtype with fewer than
    ``config.min_subtype_slides`` slides or fewer than 2 slides of either class
    uses the pooled model. The choice is recorded in ``bundle.subtype_routing``.
    """
    config = config or TrainConfig()
    tables = list(tables)
    y = _check_labels(labels)
    if len(y) != len(tables):
        raise CohortError(f"{len(tables)} feature tables but {len(y)} labels")
    feature_names = list(feature_names) if feature_names is not None else infer_feature_names(tables)
    if not feature_names:
        raise CohortError("the features tables have no feature columns")
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise CohortError(f"training needs at least 2 slides of each class; the slides given have {counts[0]} "
                          f"negative and {counts[1]} positive")
    if clinical is not None:
        clinical = clinical.reset_index(drop=True)
    if subtypes is not None:  # an input of the recipes that centre within subtype
        clinical = _with_subtype(clinical, [None if pd.isna(v) else v for v in subtypes])
    groups = _check_groups(groups, len(y))
    check_stop(should_stop)
    bundle = _train_calibrated(tables, y, config, feature_names, clinical, groups)
    if config.per_subtype:
        _route_subtypes(bundle, tables, y, subtypes, config, feature_names, clinical, groups, progress, should_stop)
    return bundle


train = train_model  # the name docs/architecture.md lists


def _raw_proba(bundle: ModelBundle, tables, clinical) -> np.ndarray:
    """The bundle's uncalibrated probabilities of feature tables or TileTables."""
    return bundle.classifier.predict_proba(bundle.design_fused(bundle.fusion.transform(tables), clinical))


def _subtype_config(config: TrainConfig, pooled: ModelBundle) -> TrainConfig:
    """A subtype model's config: the pooled model's chosen recipe, fixed, with the config's calibration."""
    base = {**config.to_dict(), "per_subtype": False}
    name = pooled.config.get("recipe")
    if name in recipes.NAMES:
        return TrainConfig.from_dict(base).with_recipe(recipes.get(name))
    return TrainConfig.from_dict({**base, "recipe": recipes.FIXED})


OWN = "own"  # routing choices as bundle.config["subtype_choice"] records them
PARTIAL_KEY = "partial"
ROUTING_ORDER = (POOLED, PARTIAL_KEY, OWN)  # simplest first: on equal gains the simpler model is kept
#: a subtype leaves the pooled model only for one that raises the inner-CV AUC of all slides by more than
#: routing_margin(k) bootstrap standard errors of the gain: a one-sided test at this level, Bonferroni-corrected
#: over the k (subtype, candidate) comparisons of one training set. Without the correction, one of the ~8
#: comparisons of a 4-subtype cohort passes by chance every few folds and the routed AUC falls below pooled.
ROUTING_ALPHA = 0.05
ROUTING_BOOTSTRAP = 200


def routing_margin(comparisons: int) -> float:
    """Standard errors a routing gain must exceed when ``comparisons`` (subtype, candidate) pairs are tested."""
    from scipy.stats import norm

    return float(norm.ppf(1.0 - ROUTING_ALPHA / max(int(comparisons), 1)))


@dataclass
class RouteScores:
    """One subtype's inner-CV evidence: AUC on its slides per model, and the gain in the AUC of all slides when it
    alone leaves the pooled model for own / partial, with the gain's bootstrap standard error."""

    within: dict[str, float]
    gain: dict[str, float]
    se: dict[str, float]

    def to_dict(self) -> dict:
        """JSON-able form (NaN -> None, 4 decimals)."""
        r = lambda d: {k: (round(float(v), 4) if np.isfinite(v) else None) for k, v in d.items()}  # noqa: E731
        return {"inner_cv_auc": r(self.within), "gain_all_slides": r(self.gain), "gain_se": r(self.se)}


def subtype_level(name: str) -> str:
    """The partially pooled model's value for subtype ``name`` (kept categorical: a number gets a 'subtype ' prefix)."""
    try:
        float(name)
    except (TypeError, ValueError):
        return str(name)
    return f"subtype {name}"


def _with_subtype(clinical: pd.DataFrame | None, st: Sequence) -> pd.DataFrame:
    """The clinical table (or none) with the subtype column (:data:`SUBTYPE_INPUT`) appended."""
    df = clinical.reset_index(drop=True).copy() if clinical is not None else pd.DataFrame(index=range(len(st)))
    df[SUBTYPE_INPUT] = pd.Series([None if v is None else subtype_level(v) for v in st], dtype=object)
    return df


def _partial_config(config: TrainConfig) -> TrainConfig:
    """``config`` with the subtype as its last clinical column."""
    clinical = [c for c in config.clinical if c != SUBTYPE_INPUT]
    return TrainConfig.from_dict({**config.to_dict(), "clinical": [*clinical, SUBTYPE_INPUT]})


def _train_partial(tables, y, st: np.ndarray, config: TrainConfig, feature_names, clinical,
                   groups) -> ModelBundle:
    """The partially pooled model: ``config`` (the pooled model's recipe) with the subtype as a clinical input."""
    b = _train_calibrated(tables, y, _partial_config(config), feature_names, _with_subtype(clinical, st), groups)
    b.config["model"] = PARTIAL
    return b


def _routing_inner_cv(tables, y, st: np.ndarray, config: TrainConfig, feature_names, clinical, groups,
                      partial: bool = False) -> dict[str, RouteScores]:
    """Per subtype: inner-CV AUCs of its own model, the pooled one (and the partially pooled one), see RouteScores.

    Inner folds over all slides (patient-grouped); in each, one pooled (and one
    partially pooled) model on the training part and one own model per subtype
    with 2+ slides of each class there. One recipe (``config``), uncalibrated.
    """
    cfg = TrainConfig.from_dict({**config.to_dict(), "calibration": "none"})
    folds, _ = inner_folds(y, groups, wanted=config.inner_cv, seed=config.seed)
    own, pool, part = (np.full(len(y), np.nan) for _ in range(3))
    fast = tile_tables(tables, feature_names)
    with_st = _with_subtype(clinical, st) if partial else None
    for tr, te in folds:
        sub = lambda idx: (None if clinical is None else clinical.iloc[idx].reset_index(drop=True))  # noqa: E731
        g = None if groups is None else groups[tr]
        b = _train_single([fast[i] for i in tr], y[tr], cfg, feature_names, sub(tr), g)
        pool[te] = _raw_proba(b, [fast[i] for i in te], sub(te))
        if partial:
            b = _train_single([fast[i] for i in tr], y[tr], _partial_config(cfg), feature_names,
                              with_st.iloc[tr].reset_index(drop=True), g)
            part[te] = _raw_proba(b, [fast[i] for i in te], with_st.iloc[te].reset_index(drop=True))
        for name in {s for s in st[te] if s is not None}:
            itr, ite = tr[st[tr] == name], te[st[te] == name]
            if np.bincount(y[itr], minlength=2).min() < 2:
                continue
            m = _train_single([fast[i] for i in itr], y[itr], cfg, feature_names, sub(itr),
                              None if groups is None else groups[itr])
            own[ite] = _raw_proba(m, [fast[i] for i in ite], sub(ite))
    cands = {OWN: own, **({PARTIAL_KEY: part} if partial else {})}
    return {name: _route_scores(y, st == name, pool, cands, config.seed) for name in {s for s in st if s is not None}}


def _route_scores(y: np.ndarray, m: np.ndarray, pool: np.ndarray, cands: dict[str, np.ndarray],
                  seed: int) -> RouteScores:
    """RouteScores of the subtype with slides ``m`` from inner out-of-fold probabilities (NaN: no model there)."""
    ok = m & np.isfinite(cands[OWN])
    ok = ok if ok.any() else m  # no own model scored: pooled vs partially pooled on all its slides
    within = {k: _finite_auc(y[ok], p[ok]) for k, p in {OWN: cands[OWN], POOLED: pool, **cands}.items()}
    rng = np.random.default_rng(seed)
    boot = rng.integers(0, len(y), size=(ROUTING_BOOTSTRAP, len(y)))
    base = _auc_rows(y[boot], pool[boot])
    gain, se = {}, {}
    for k, p in cands.items():
        switched = np.where(m & np.isfinite(p), p, pool)  # this subtype alone routed to k (pooled where k is absent)
        gain[k] = roc_auc(y, switched) - roc_auc(y, pool)
        d = _auc_rows(y[boot], switched[boot]) - base
        se[k] = float(np.nanstd(d)) if np.isfinite(d).sum() > 1 else float("nan")
    return RouteScores(within, gain, se)


def _finite_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC, NaN unless every probability is finite."""
    return roc_auc(y, p) if len(p) and np.isfinite(p).all() else float("nan")


def _pick_route(scores: RouteScores, margin: float, exclude: tuple[str, ...] = ()) -> str:
    """The model whose gain over pooled is largest and above ``margin`` standard errors; else pooled."""
    best, best_gain = POOLED, 0.0
    for k in ROUTING_ORDER[1:]:
        g, se = scores.gain.get(k, np.nan), scores.se.get(k, np.nan)
        if k not in exclude and np.isfinite(g) and np.isfinite(se) and g > margin * se and g > best_gain:
            best, best_gain = k, g
    return best


_ROUTE_LABELS = {OWN: "own", POOLED: POOLED, PARTIAL_KEY: PARTIAL}


def _scores_text(scores: RouteScores, n: int) -> str:
    """'inner-CV AUC on 40 slides: own 0.712, pooled 0.689, partially pooled 0.701; on all slides: own +0.012
    (SE 0.010), partially pooled -0.003 (SE 0.004)'."""
    w = ", ".join(f"{_ROUTE_LABELS[k]} {v:.3f}" for k, v in scores.within.items())
    g = ", ".join(f"{_ROUTE_LABELS[k]} {v:+.3f} (SE {scores.se[k]:.3f})" for k, v in scores.gain.items())
    return f"inner-CV AUC on {n} slides: {w}; on all slides: {g}"


def _too_small(y_sub: np.ndarray, min_slides: int) -> str | None:
    """Why a subtype with labels ``y_sub`` keeps the pooled model without a choice (None: it has enough slides)."""
    counts = np.bincount(y_sub, minlength=2)
    if len(y_sub) < min_slides:
        return f"{POOLED} (only {len(y_sub)} slides, fewer than {min_slides})"
    if counts.min() < 2:
        return f"{POOLED} ({int(counts[0])} negative, {int(counts[1])} positive)"
    return None


def _learnt_nothing(b: ModelBundle) -> bool:
    """No input has any gain (e.g. XGBoost with too few slides to split): a constant 0.5, worse than pooled."""
    return not np.any(np.nan_to_num(b.importance["gain"].to_numpy(dtype=np.float64)) > 0)


def _route_subtypes(bundle: ModelBundle, tables, y, subtypes, config: TrainConfig, feature_names, clinical,
                    groups, progress=None, should_stop=None) -> None:
    """Route every subtype of ``subtypes`` to its own, the pooled or the partially pooled model (in ``bundle``)."""
    if subtypes is None:
        raise CohortError("--per-subtype needs a 'subtype' column in the cohort")
    st = np.asarray([None if pd.isna(s) else str(s) for s in subtypes], dtype=object)
    names = sorted({s for s in st if s is not None})
    chosen = config.recipe != recipes.FIXED or config.calibration != "none"
    own_cfg = _subtype_config(config, bundle)
    small = {name: _too_small(y[st == name], config.min_subtype_slides) for name in names}
    # the subtype as an input (only when the pooled model does not have it already)
    partial = chosen and SUBTYPE_INPUT not in config.clinical and any(v is None for v in small.values())
    inner = _routing_inner_cv(tables, y, st, own_cfg, feature_names, clinical, groups, partial) if chosen else {}
    if partial:
        bundle.partial = _train_partial(tables, y, st, own_cfg, feature_names, clinical, groups)
    choices = {}
    margin = routing_margin(sum(v is None for v in small.values()) * (2 if partial else 1))
    for i, name in enumerate(names):
        check_stop(should_stop)
        report(progress, i, len(names), f"subtype {name}")
        idx = np.flatnonzero(st == name)
        if small[name] is not None:
            bundle.subtype_routing[name] = small[name]
            continue
        scores = inner.get(name)
        pick = _pick_route(scores, margin) if chosen else OWN
        if pick == OWN:
            sub_cfg = own_cfg if chosen else TrainConfig.from_dict({**config.to_dict(), "per_subtype": False})
            sub = _train_calibrated([tables[j] for j in idx], y[idx], sub_cfg, feature_names,
                                    None if clinical is None else clinical.iloc[idx].reset_index(drop=True),
                                    None if groups is None else groups[idx])
            sub.config["subtype"] = name
            if _learnt_nothing(sub):
                if not chosen:
                    bundle.subtype_routing[name] = f"{POOLED} (own model on {len(idx)} slides learnt nothing)"
                    continue
                pick = _pick_route(scores, margin, exclude=(OWN,))
            else:
                bundle.subtype_models[name] = sub
        if chosen:
            choices[name] = {"model": pick, **scores.to_dict()}
        bundle.subtype_routing[name] = _routing_note(pick, len(idx), scores if chosen else None)
        if pick == PARTIAL_KEY:
            bundle.partial_subtypes.append(name)
    bundle.config["subtype_routing"] = bundle.subtype_routing
    if choices:
        bundle.config["subtype_choice"] = choices
        bundle.config["routing_margin_se"] = round(margin, 4)


def _routing_note(pick: str, n: int, scores: RouteScores | None) -> str:
    """bundle.subtype_routing's text for a subtype of ``n`` slides routed to ``pick``."""
    if scores is None:
        return f"own model ({n} slides)"
    if pick == OWN:
        return f"own model ({n} slides) ({_scores_text(scores, n)})"
    return f"{_ROUTE_LABELS[pick]} ({_scores_text(scores, n)})"


def _check_groups(groups, n: int) -> np.ndarray | None:
    """Patient ids as a string array of length n (None stays None; a missing id makes the slide its own patient)."""
    if groups is None:
        return None
    s = pd.Series(groups.to_numpy() if isinstance(groups, pd.Series) else list(groups), dtype=object)
    if len(s) != n:
        raise CohortError(f"{len(s)} patient ids for {n} slides")
    out = s.astype(str).to_numpy()
    miss = s.isna().to_numpy()
    out[miss] = [f"\0slide{i}" for i in np.flatnonzero(miss)]
    return out


def _cv_advice(n_min: int, n_splits: int) -> str:
    """What to do when ``n_splits``-fold CV fails with ``n_min`` slides (or patients) in the rarer class.

    A k-fold split trains each fold on at least n - ceil(n / k) of a class, and training
    needs 2 of each, so only such k are suggested: the largest below ``n_splits``, else the smallest above.
    """
    ok = [k for k in range(2, n_min + 1) if k != n_splits and n_min - -(-n_min // k) >= 2]
    if not ok:
        return "too few for cross-validation, which needs at least 3 of each class"
    fewer = [k for k in ok if k < n_splits]
    return f"use --cv {max(fewer) if fewer else min(ok)}"


def _folds(y: np.ndarray, groups, n_splits: int, seed: int) -> tuple[np.ndarray, bool]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if n_splits < 2:
        raise CohortError("cross-validation needs at least 2 folds")
    grouped = groups is not None and len(pd.unique(pd.Series(groups))) < len(y)
    fold = np.full(len(y), -1)
    if grouped:
        g = pd.Series(groups).astype(str).to_numpy()
        per_class = [len(np.unique(g[y == c])) for c in (0, 1)]
        if min(per_class) < n_splits:
            raise CohortError(f"{n_splits}-fold CV grouped by patient needs at least {n_splits} patients per "
                              f"class; the cohort has {per_class[0]} negative and {per_class[1]} positive "
                              f"({_cv_advice(min(per_class), n_splits)})")
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(y, y, g)
    else:
        counts = np.bincount(y, minlength=2)
        if counts.min() < n_splits:
            raise CohortError(f"{n_splits}-fold CV needs at least {n_splits} slides per class; the cohort has "
                              f"{counts[0]} negative and {counts[1]} positive ({_cv_advice(counts.min(), n_splits)})")
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(y, y)
    for k, (_, te) in enumerate(splitter):
        fold[te] = k
    counts = np.bincount(y, minlength=2)
    for k in range(n_splits):  # every fold trains a full model, which needs 2 slides of each class
        tr = np.bincount(y[fold != k], minlength=2)
        if tr.min() < 2:
            n_min = min(per_class) if grouped else int(counts.min())
            raise CohortError(f"{n_splits}-fold CV trains fold {k + 1} on {tr[0]} negative and {tr[1]} positive "
                              f"slides, and training needs at least 2 of each class; the cohort has {counts[0]} "
                              f"negative and {counts[1]} positive ({_cv_advice(n_min, n_splits)})")
    return fold, grouped


def cross_validate(tables: Sequence[pd.DataFrame], labels, groups=None, config: TrainConfig | None = None,
                   clinical: pd.DataFrame | None = None, subtypes: Sequence | None = None,
                   slide_ids: Sequence[str] | None = None, feature_names: Sequence[str] | None = None,
                   progress=None, should_stop=None) -> CVReport:
    """Nested stratified (patient-grouped when ``groups`` repeat) CV; every fold trains a full model on its training part.

    Reports out-of-fold probabilities, ROC-AUC with a seeded 95% bootstrap CI, and,
    with clinical columns, the image-only AUC; with ``config.per_subtype``, the AUC
    of one pooled model next to the routed per-subtype models. With
    ``config.recipe="auto"`` each fold's model chooses its recipe by inner CV on its
    training part only. ``config.repeats`` > 1 repeats the outer CV with fold seeds
    ``seed, seed + 1, ...``; the out-of-fold probabilities are then averaged over the
    repeats (one per slide) and each repeat's AUC is kept. Brier score, expected
    calibration error and the operating points are those of the (averaged) probabilities.
    """
    config = config or TrainConfig()
    tables = list(tables)
    y = _check_labels(labels)
    feature_names = list(feature_names) if feature_names is not None else infer_feature_names(tables)
    slide_ids = [str(s) for s in slide_ids] if slide_ids is not None else [
        str(t["slide_id"].iloc[0]) if "slide_id" in t.columns and len(t) else str(i) for i, t in enumerate(tables)]
    if clinical is not None:
        clinical = clinical.reset_index(drop=True)
    repeats = max(1, int(config.repeats))
    g = _check_groups(groups, len(y))
    routed = config.per_subtype and subtypes is not None
    st = None if subtypes is None else [None if pd.isna(s) else str(s) for s in subtypes]
    if st is not None:  # the test slides' subtype, for the recipes that centre within it
        clinical = _with_subtype(clinical, st)
    runs = {k: np.full((repeats, len(y)), np.nan) for k in ("oof", "img", "pool", "raw", "part")}
    picks: dict[str, dict[str, int]] = {}  # per subtype: how many outer folds routed it to each model
    fold_aucs, n_sel, msgs, chosen, methods, first_fold, grouped = [], [], [], [], set(), None, False
    total = repeats * config.cv
    # tile matrices read once for every fold (a fixed, uncalibrated recipe trains from the tables as before)
    fast = tables if config.recipe == recipes.FIXED and config.calibration == "none" else \
        tile_tables(tables, feature_names)
    for r in range(repeats):
        fold, grouped = _folds(y, groups, config.cv, config.seed + r)
        first_fold = fold if first_fold is None else first_fold
        for k in range(config.cv):
            check_stop(should_stop)
            step = r * config.cv + k
            report(progress, step, total, f"fold {k + 1}/{config.cv}" + (f", repeat {r + 1}/{repeats}"
                                                                          if repeats > 1 else ""))
            tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            ttr, tte = [fast[i] for i in tr], [tables[i] for i in te]
            ctr = None if clinical is None else clinical.iloc[tr]
            cte = None if clinical is None else clinical.iloc[te]
            gtr = None if g is None else g[tr]  # the inner CV of every fold is grouped by patient too
            b = train_model(ttr, y[tr], config, clinical=ctr, subtypes=None if st is None else [st[i] for i in tr],
                            feature_names=feature_names, groups=gtr)
            if routed:
                runs["pool"][r, te] = b.predict_proba(tte, cte)
                for j, i in enumerate(te):
                    m, _ = b.for_subtype(st[i])
                    runs["oof"][r, i] = m.predict_proba([tables[i]], None if cte is None else cte.iloc[[j]])[0]
                if b.partial is not None:  # the partially pooled model on every test slide, whatever the routing
                    runs["part"][r, te] = b.partial.predict_proba(tte, _with_subtype(cte, [st[i] for i in te]))
                _count_picks(picks, b)
            else:
                runs["oof"][r, te] = b.predict_proba(tte, cte)
                runs["raw"][r, te] = b.predict_proba(tte, cte, calibrated=False)
            if config.clinical:
                cfg_img = TrainConfig.from_dict({**config.to_dict(), "clinical": [], "per_subtype": False})
                runs["img"][r, te] = train_model(ttr, y[tr], cfg_img, feature_names=feature_names,
                                                 groups=gtr).predict_proba(tte)
            fold_aucs.append(roc_auc(y[te], runs["oof"][r, te]))
            n_sel.append(len(b.selection.indices))
            msgs.append(b.selection.message)
            if "recipe" in b.config:
                chosen.append(f"r{r + 1}f{k + 1}: {b.config['recipe']}")
            if b.calibrator is not None:
                methods.add(b.calibrator.method)
    report(progress, total, total, "done")
    oof = runs["oof"].mean(axis=0)
    auc, lo, hi = bootstrap_auc_ci(y, oof, config.n_bootstrap, config.seed)
    rep = CVReport(slide_ids=slide_ids, labels=y, oof=oof, fold=first_fold, auc=auc, ci=(lo, hi),
                   fold_aucs=fold_aucs, n_selected=n_sel, messages=msgs, n_splits=config.cv, grouped=grouped,
                   repeats=repeats, repeat_aucs=[roc_auc(y, o) for o in runs["oof"]], recipes=chosen or None)
    if config.clinical:
        a, l2, h2 = bootstrap_auc_ci(y, runs["img"].mean(axis=0), config.n_bootstrap, config.seed)
        rep.oof_image_only, rep.auc_image_only, rep.ci_image_only = runs["img"].mean(axis=0), a, (l2, h2)
    if routed:
        a, l2, h2 = bootstrap_auc_ci(y, runs["pool"].mean(axis=0), config.n_bootstrap, config.seed)
        rep.oof_pooled, rep.auc_pooled, rep.ci_pooled = runs["pool"].mean(axis=0), a, (l2, h2)
        sts = np.asarray(st, dtype=object)
        rep.subtype_aucs = {name: {"n": int((sts == name).sum()), "routed": roc_auc(y[sts == name], oof[sts == name]),
                                   "pooled": roc_auc(y[sts == name], rep.oof_pooled[sts == name])}
                            for name in sorted({s for s in st if s is not None})}
        _report_partial(rep, runs["part"], runs["pool"], sts, config)
        rep.subtype_choices = picks or None
    rep.brier, rep.ece = brier_score(y, oof), expected_calibration_error(y, oof)
    rep.ece_floor = ece_noise_floor(oof, seed=config.seed)
    rep.operating_points = operating_points(y, oof)
    if methods:
        rep.calibration = "/".join(sorted(methods))
        if np.isfinite(runs["raw"]).all():
            rep.oof_uncalibrated = runs["raw"].mean(axis=0)
            rep.ece_uncalibrated = expected_calibration_error(y, rep.oof_uncalibrated)
    return rep


def _count_picks(picks: dict[str, dict[str, int]], b: ModelBundle) -> None:
    """Add fold bundle ``b``'s routing choice per subtype (own / pooled / partial) to ``picks``."""
    for name, d in (b.config.get("subtype_choice") or {}).items():
        picks.setdefault(name, {})
        picks[name][d["model"]] = picks[name].get(d["model"], 0) + 1


def _report_partial(rep: CVReport, part: np.ndarray, pool: np.ndarray, sts: np.ndarray, config: TrainConfig) -> None:
    """The partially pooled model's out-of-fold AUC, overall and per subtype, in ``rep`` (when any fold had one).

    A fold that trained none (no subtype with enough slides) counts its pooled probabilities.
    """
    if not np.isfinite(part).any():
        return
    p = np.where(np.isfinite(part), part, pool).mean(axis=0)
    a, lo, hi = bootstrap_auc_ci(rep.labels, p, config.n_bootstrap, config.seed)
    rep.oof_partial, rep.auc_partial, rep.ci_partial = p, a, (lo, hi)
    for name, d in rep.subtype_aucs.items():
        d["partial"] = roc_auc(rep.labels[sts == name], p[sts == name])


# --------------------------------------------------------------------------- evidence
DEMO_NOTE = "demo model trained on synthetic slides — not for diagnosis"


def evidence(bundle: ModelBundle, probability: float | None = None) -> dict:
    """What stands behind a bundle's probability: CV AUC and CI, slides, calibration, operating points, demo flag.

    With ``probability``, also on which side of each operating point's threshold it falls.
    """
    cfg, rep = bundle.config, bundle.cv_report
    out: dict = {"demo": bool(cfg.get("demo")), "note": DEMO_NOTE if cfg.get("demo") else "",
                 "n_slides": cfg.get("n_slides"), "n_positive": cfg.get("n_positive"),
                 "recipe": cfg.get("recipe"), "calibration": cfg.get("calibration")
                 if bundle.calibrator is not None else cfg.get("calibration_head")}
    if out["n_slides"] is not None and out["n_positive"] is not None:
        out["n_negative"] = int(out["n_slides"]) - int(out["n_positive"])
    if rep is not None:
        out.update(cv_auc=float(rep.auc), cv_ci=[float(rep.ci[0]), float(rep.ci[1])], cv_folds=rep.n_splits,
                   cv_repeats=rep.repeats, brier=rep.brier, ece=rep.ece, ece_floor=rep.ece_floor)
    points = bundle.operating_points
    if points:
        for key in ("rule_out", "rule_in"):
            pt = points.get(key)
            if pt:
                out[key] = {k: pt[k] for k in ("threshold", "sensitivity", "specificity", "ppv", "npv")}
                if probability is not None:
                    out[key]["side"] = side_of(probability, pt)
    return out


def operating_point_lines(bundle: ModelBundle, probability: float) -> list[str]:
    """Per operating point of the bundle: its threshold and on which side ``probability`` falls ([] without any)."""
    points = bundle.operating_points or {}
    lines = []
    for key, label, pos, neg in (("rule_out", "rule-out (>= 90% sensitivity)", "not ruled out", "ruled out"),
                                 ("rule_in", "rule-in (>= 90% specificity)", "ruled in", "not ruled in")):
        pt = points.get(key)
        if pt:
            side = side_of(probability, pt)
            lines.append(f"{label}: {probability:.3f} is {side} the threshold {pt['threshold']:.3f} -> "
                         f"{pos if side == 'above' else neg} (CV sensitivity {pt['sensitivity']:.2f}, "
                         f"specificity {pt['specificity']:.2f}, NPV {pt['npv']:.2f}, PPV {pt['ppv']:.2f})")
    return lines


def evidence_text(bundle: ModelBundle, probability: float | None = None) -> str:
    """Lines to show under a probability: CV AUC with CI, slides, calibration error, thresholds, demo note."""
    e = evidence(bundle, probability)
    lines = []
    if e["demo"]:
        lines.append(e["note"])
    if e.get("cv_auc") is not None:
        rep = f", {e['cv_repeats']} repeats" if (e.get("cv_repeats") or 1) > 1 else ""
        lines.append(f"cross-validated ROC-AUC {e['cv_auc']:.2f} (95% CI {e['cv_ci'][0]:.2f}-{e['cv_ci'][1]:.2f}, "
                     f"{e['cv_folds']} folds{rep})")
    else:
        lines.append("no cross-validation report in this model")
    if e.get("n_slides") is not None:
        neg = f" / {e['n_negative']} not" if "n_negative" in e else ""
        lines.append(f"trained on {e['n_slides']} slides ({e['n_positive']} metastatic{neg})")
    if e.get("ece") is not None:
        how = f"{e['calibration']}-calibrated" if e.get("calibration") else "uncalibrated"
        floor = f" (perfectly calibrated: {e['ece_floor']:.2f} on this many slides)" \
            if e.get("ece_floor") is not None else ""
        lines.append(f"probabilities {how}: calibration error {e['ece']:.2f}{floor}, Brier {e['brier']:.2f}")
    for key, label in (("rule_out", "rule-out (>= 90% sensitivity)"), ("rule_in", "rule-in (>= 90% specificity)")):
        pt = e.get(key)
        if pt:
            side = f": this slide is {pt['side']}" if pt.get("side") else ""
            pct = {k: f"{float(pt[k]):.0%}" if pt.get(k) is not None and np.isfinite(float(pt[k])) else "n/a"
                   for k in ("sensitivity", "specificity", "npv", "ppv")}
            lines.append(f"{label} threshold {pt['threshold']:.2f} (sens {pct['sensitivity']}, spec "
                         f"{pct['specificity']}, NPV {pct['npv']}, PPV {pct['ppv']}){side}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- leakage
def _table_hash(df: pd.DataFrame) -> str | None:
    """SHA-256 of a features table's feature names and values, or None for a table without tiles or features."""
    names = feature_columns(df)
    if not len(df) or not names:
        return None  # empty tables are all alike without being one slide
    m = df.loc[:, names].to_numpy(dtype=np.float64, na_value=np.nan)
    m = np.where(np.isnan(m), np.nan, m)  # one bit pattern for every NaN
    h = hashlib.sha256("\n".join(names).encode())
    h.update(np.ascontiguousarray(m).tobytes())
    return h.hexdigest()


def _resolved(path) -> str | None:
    """The cohort path with ~ and symbolic links resolved, or None when the row has none."""
    if path is None or (isinstance(path, float) and np.isnan(path)) or not str(path).strip():
        return None
    return os.path.realpath(os.path.expanduser(str(path).strip()))


def check_duplicate_slides(cohort: pd.DataFrame, tables: list[pd.DataFrame], allow: bool = False) -> list[str]:
    """Cohort rows that are one slide twice (same resolved ``path``, or identical feature values), one line each.

    Such a pair trains as two slides, and cross-validation can then test a slide it
    also trained on, which inflates the AUC. CohortError naming both slide ids and
    the reason, unless ``allow`` (deliberate duplicates): then the lines are returned.
    """
    ids = cohort["slide_id"].astype(str).tolist()
    if len(tables) != len(ids):
        raise CohortError(f"{len(tables)} feature tables for {len(ids)} cohort rows")
    found: dict[tuple[str, str], str] = {}
    paths = cohort["path"].tolist() if "path" in cohort.columns else [None] * len(ids)
    for what, keys in (("path", [_resolved(p) for p in paths]), ("features", [_table_hash(t) for t in tables])):
        first: dict[str, str] = {}
        for sid, key in zip(ids, keys):
            if key is None:
                continue
            if key not in first:
                first[key] = sid
            elif (first[key], sid) not in found:
                found[(first[key], sid)] = (f"slides {first[key]!r} and {sid!r} are the same slide file {key}"
                                            if what == "path" else
                                            f"slides {first[key]!r} and {sid!r} have identical feature tables")
    lines = list(found.values())
    if lines and not allow:
        more = f" (and {len(lines) - 1} more pair{'s' if len(lines) > 2 else ''})" if len(lines) > 1 else ""
        raise CohortError(f"{lines[0]}{more}: one slide on both sides of a CV split inflates the AUC; remove the "
                          f"copy, or train with --allow-duplicates if it is deliberate")
    return lines


# --------------------------------------------------------------------------- cohort I/O
def read_cohort_csv(path: str | Path) -> pd.DataFrame:
    """The cohort CSV for training and evaluation (``cohort.read_cohort``; slide files need not exist)."""
    from napari_lnm.cohort import read_cohort

    return read_cohort(path, check_files=False)


def load_feature_tables(cohort: pd.DataFrame, features_dir: str | Path) -> tuple[list[pd.DataFrame], dict | None]:
    """One tile-feature table per cohort row from ``features_dir/<slide_id>.parquet``, plus the tiling used.

    A missing or unreadable file raises CohortError naming the slide and the path.
    The tiling is the ``tiling`` dict (TilingConfig fields, plus ``working_mpp``)
    of the provenance ``napari_lnm.extract`` writes into each file; slides
    extracted with different tilings or feature schemas raise CohortError. None
    when the files carry no provenance.
    """
    import pyarrow.parquet as pq

    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise CohortError(f"{features_dir}: features folder not found")
    tables, tiling, ref = [], None, None
    for sid in cohort["slide_id"].astype(str):
        p = features_dir / f"{sid}.parquet"
        if not p.is_file():
            raise CohortError(f"slide {sid}: features file {p} is missing (run napari-lnm extract first)")
        try:
            t = pq.read_table(p)
        except Exception as exc:
            raise CohortError(f"slide {sid}: cannot read features file {p} ({exc})") from None
        prov = read_provenance(t)
        if prov is not None and isinstance(prov.get("tiling"), dict):
            key = (json.dumps(prov["tiling"], sort_keys=True), prov.get("feature_schema_hash"))
            if ref is None:
                ref = (sid, key)
                tiling = dict(prov["tiling"])
                if prov.get("working_mpp") is not None:
                    tiling["working_mpp"] = prov["working_mpp"]
            elif key != ref[1]:
                what = "tiling" if key[0] != ref[1][0] else "feature schema"
                deep = [(prov["tiling"].get("deep") or {}).get("sha256"), (tiling.get("deep") or {}).get("sha256")]
                if deep[0] != deep[1]:  # the embeddings of two networks (or none) cannot be fused together
                    what = "deep-feature network (" + " vs ".join(
                        "none" if d is None else f"weights sha256 {d[:12]}" for d in deep) + ")"
                raise CohortError(f"slide {sid}: features file {p} was extracted with another {what} than slide "
                                  f"{ref[0]}; re-extract the cohort with one configuration")
        df = t.to_pandas()
        if "slide_id" not in df.columns:
            df.insert(0, "slide_id", sid)
        tables.append(df)
    return tables, tiling

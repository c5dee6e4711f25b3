"""The small grid of training recipes (fusion, selection, classifier) that ``train`` chooses from by inner CV.

A recipe overrides the fusion / selection / classifier fields of a
:class:`napari_lnm.model.TrainConfig`. ``"seed"`` is the method's own recipe
(5-bin histogram fusion, KS selection, XGBoost) and is always in the grid; the
others suit small cohorts (fewer, smoother elements and regularised linear
models). A recipe with ``strata`` (``mean-blend-subtype``; ``mean-spca-subtype``,
opt-in: :data:`OPT_IN`) is a candidate only when the training slides have a
subtype (the cohort's ``subtype`` column): its classifier centres every element
within the slide's subtype, so prediction needs the slide's subtype
(``predict --clinical`` with a ``subtype`` column, or the subtype model's vote);
without one, the slide is centred on the training mean.

:func:`napari_lnm.model.train_model` with ``recipe="auto"`` scores every recipe
of :data:`AUTO_NAMES` (or of ``TrainConfig.grid``) by patient-grouped inner
cross-validation on its training slides only, repeated
``TrainConfig.inner_repeats`` times with different inner splits, and keeps, by
the one-standard-error rule (:data:`ONE_SE`), the first recipe in
:data:`SIMPLEST_FIRST` whose mean inner-CV AUC is within one standard error of
the best one's; ``TrainConfig.choice="best"`` keeps the best (ties: the earlier
one in :data:`GRID`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

AUTO = "auto"  # choose among AUTO_NAMES (or TrainConfig.grid) by inner CV
FIXED = "fixed"  # use the TrainConfig's own fusion / selection / classifier fields
MIL_FUSION = "abmil"  # fusion of the attention-MIL slide model (``napari_lnm.mil.MILFusion``), a fixed recipe


@dataclass(frozen=True)
class Recipe:
    """One fusion + selection + classifier choice."""

    name: str
    fusion: str
    bins: int
    test: str
    classifier: str
    top_q: int | None = None
    params: dict = field(default_factory=dict, hash=False)
    strata: str | None = None  # a clinical column whose levels the classifier centres within (None: no strata)

    def overrides(self) -> dict:
        """The TrainConfig fields this recipe sets (the strata column is added to the clinical inputs)."""
        return {"fusion": self.fusion, "bins": self.bins, "edges": "quantile", "test": self.test,
                "alpha": 0.05, "top_q": self.top_q, "classifier": self.classifier,
                "classifier_params": dict(self.params) or None, "strata": self.strata}

    def describe(self) -> str:
        """e.g. 'mean fusion, no selection, logreg (C=0.1)'."""
        fus = f"{self.bins}-bin histogram" if self.fusion == "histogram" else self.fusion
        sel = "no selection" if self.test == "none" else (
            f"top {self.top_q} by {self.test}" if self.top_q else f"{self.test} selection")
        par = ", ".join(f"{k}={v}" for k, v in self.params.items())
        within = f", centred within {self.strata}" if self.strata else ""
        return f"{fus} fusion, {sel}, {self.classifier}{f' ({par})' if par else ''}{within}"


SUBTYPE = "subtype"  # the cohort's subtype column, given to the classifier as a clinical input by ``train``
SHALLOW_XGB = {"max_depth": 2, "eta": 0.05, "min_child_weight": 3.0, "subsample": 0.8, "colsample_bytree": 0.5}

GRID: tuple[Recipe, ...] = (
    Recipe("seed", "histogram", 5, "ks", "xgboost"),
    Recipe("mean-none-logreg", "mean", 5, "none", "logreg", params={"C": 0.05}),
    Recipe("mean-ks-logreg", "mean", 5, "ks", "logreg", params={"C": 0.1}),
    Recipe("mean-none-enet", "mean", 5, "none", "logreg",
           params={"C": 0.1, "penalty": "elasticnet", "l1_ratio": 0.5}),
    Recipe("quantile-none-logreg", "quantile", 5, "none", "logreg", params={"C": 0.02}),
    Recipe("hist3-ks-logreg", "histogram", 3, "ks", "logreg", params={"C": 0.05}),
    Recipe("mean-ks-xgb-shallow", "mean", 5, "ks", "xgboost", params=dict(SHALLOW_XGB)),
    Recipe("mean-spca-subtype", "mean", 5, "none", "spca", params={"columns": 20, "components": 1, "C": 0.03},
           strata=SUBTYPE),
    Recipe("mean-blend-subtype", "mean", 5, "none", "blend", strata=SUBTYPE),
)
NAMES: tuple[str, ...] = tuple(r.name for r in GRID)
#: Recipes that ``--recipe NAME`` (or ``TrainConfig.grid``) trains but ``"auto"`` does not choose among by default:
#: supervised PCA within subtype alone gained on one synthetic cohort and lost on two others; blended with the
#: elastic net (``mean-blend-subtype``, in the default grid) it gained on all four (docs/benchmarks.md).
OPT_IN: tuple[str, ...] = ("mean-spca-subtype",)
AUTO_NAMES: tuple[str, ...] = tuple(n for n in NAMES if n not in OPT_IN)

#: The order the one-standard-error rule prefers: first the blend of the elastic net with supervised PCA within
#: subtype (a candidate only when the slides have subtypes; a linear model with the elastic net's weights plus 20
#: columns, the steadiest at 60 slides), then the rest simplest first: linear models before trees, and among
#: them the fewest fitted weights first (supervised PCA: one slope on one component, plus the subtypes'
#: centring; then by non-zero weights, measured on the issue-15 synth cohort at 48 / 128 training slides:
#: elastic net 15 / 18 of 253, KS-selected means 53 / 94, KS-selected 3-bin histograms 98 / 219, all 253 means,
#: 759 quantiles), then the shallow XGBoost and the method's own 5-bin histogram XGBoost.
SIMPLEST_FIRST: tuple[str, ...] = ("mean-blend-subtype", "mean-spca-subtype", "mean-none-enet", "mean-ks-logreg",
                                   "hist3-ks-logreg", "mean-none-logreg", "quantile-none-logreg",
                                   "mean-ks-xgb-shallow", "seed")
ONE_SE = "1se"  # choice rule: the simplest recipe within one standard error of the best inner-CV AUC
BEST = "best"  # choice rule: the best inner-CV AUC
CHOICES: tuple[str, ...] = (ONE_SE, BEST)


def simplicity_rank(name: str) -> int:
    """Position of ``name`` in :data:`SIMPLEST_FIRST` (a name outside it ranks after all of them)."""
    return SIMPLEST_FIRST.index(name) if name in SIMPLEST_FIRST else len(SIMPLEST_FIRST)


def get(name: str) -> Recipe:
    """The grid recipe called ``name``; ValueError naming the choices otherwise."""
    for r in GRID:
        if r.name == name:
            return r
    raise ValueError(f"unknown recipe {name!r}; choose {AUTO!r}, {FIXED!r} or one of {', '.join(NAMES)}")

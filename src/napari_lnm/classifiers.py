"""Binary classifiers with one interface, saved as data (never pickle) and run with numpy at inference.

Each classifier: ``fit(X, y, groups=None) -> self`` (``groups``: patient id per row;
inner cross-validation then never splits a patient, see :func:`inner_folds`); ``predict_proba(X) -> (n,)`` probability of
class 1; ``contributions(X) -> (n, Q + 1)`` per-column contributions to the
log-odds with the bias last; ``importance() -> (fscore, gain)`` per column;
``save(dir) -> dict`` (writes its files, returns JSON-able metadata);
``load(dir, meta)`` (classmethod).

- ``xgboost``: ``binary:logistic``, eval metric AUC, the number of trees chosen
  by stratified (patient-grouped when ``groups`` repeat) internal cross-validation
  (``xgboost.cv``, early stopping after
  50 rounds without improvement) on the training data only, then refitted with
  that many rounds; ``scale_pos_weight = n_neg / n_pos``. Saved as ``model.ubj``.
  Contributions are ``pred_contribs`` (log-odds). NaNs are handled natively.
- ``logreg``: L2 logistic regression on standardised columns (NaN -> training
  median). Saved in ``params.npz``; contribution = coef * z.
- ``spca``: supervised principal components (optionally centred within one-hot
  strata) with a logistic link; linear, so saved and explained as ``logreg``.
- ``blend``: the elastic net and ``spca`` blended into one linear model (saved the same way).
- ``svm``: RBF SVM; probabilities by Platt scaling fitted on internal
  cross-validated decision values (deterministic). Saved support vectors, dual
  coefficients, intercept, gamma, Platt A, B.
- ``mlp``: one hidden ReLU layer MLP. Saved weights/biases per layer.

For SVM and MLP, contributions are occlusion effects in log-odds: the change of
the logit when a column is replaced by its training mean; bias = logit at the mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_lnm._fields import FieldError, check_array, fail, need_dict, need_int, need_key, need_list, need_number, \
    need_str, inside
from napari_lnm.errors import ModelError

CLASSIFIERS = ("xgboost", "logreg", "spca", "blend", "svm", "mlp")
#: XGBoost trains on one thread below this many input cells (slides x columns): faster, identical trees.
SMALL_FIT_CELLS = 1_000_000


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # clipped: exp(-z) overflows (a RuntimeWarning) for z < -709; sigmoid(-500) is 7e-218, i.e. already 0
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


def _n_inner_folds(y: np.ndarray, wanted: int = 3) -> int:
    return int(max(2, min(wanted, np.bincount(y.astype(int), minlength=2).min())))


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (XGBoost appends a C++ stack trace)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_inputs(n_columns: int, n_inputs: int | None, field: str) -> None:
    """FieldError when a classifier's column count differs from the inputs the model feeds it."""
    if n_inputs is not None and n_columns != n_inputs:
        fail(field, f"is {n_columns} columns, but the selection and clinical encoding give {n_inputs}")


def _both_classes(y: np.ndarray, splits) -> bool:
    return all(np.unique(y[tr]).size == 2 and np.unique(y[te]).size == 2 for tr, te in splits)


def inner_folds(y, groups=None, wanted: int = 3, seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
    """Inner-CV folds as (train_idx, test_idx) row-index pairs, and whether they are grouped by patient.

    With ``groups`` (one patient id per row) that repeat, ``StratifiedGroupKFold``
    (shuffled, ``seed``) with k = min(``wanted``, patients of the rarer class)
    folds, lowered until every train and test part holds both classes; a
    patient's rows then never sit on both sides of a fold. Without ``groups``,
    when every patient has one row, or when no grouped split with both classes
    on each side exists (fewer than 2 patients of a class), the folds are the
    ``StratifiedKFold(min(wanted, rows of the rarer class), shuffle, seed)`` that
    ``xgboost.cv(stratified=True)`` builds, so results without groups are unchanged.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y).astype(int)
    dummy = np.zeros((len(y), 1))
    if groups is not None:
        g = np.asarray(groups).astype(str)
        if g.shape != y.shape:
            raise ValueError(f"groups has {g.size} values for {y.size} rows")
        _, gi = np.unique(g, return_inverse=True)
        if gi.max(initial=-1) + 1 < len(y):
            k_max = min(int(wanted), *(np.unique(gi[y == c]).size for c in (0, 1)))
            for k in range(k_max, 1, -1):
                sgk = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
                splits = [(tr, te) for tr, te in sgk.split(dummy, y, gi)]
                if _both_classes(y, splits):
                    return splits, True
    skf = StratifiedKFold(n_splits=_n_inner_folds(y, wanted), shuffle=True, random_state=int(seed))
    return [(tr, te) for tr, te in skf.split(dummy, y)], False


class Classifier:
    """Base class (see module docstring)."""

    kind = "base"
    #: fitted with class-balanced weights: its log-odds are the prior-weighted ones + log(n_neg / n_pos)
    balanced = False

    def __init__(self, seed: int = 0, nthread: int = 1) -> None:
        self.seed = int(seed)
        self.nthread = int(nthread)
        self.inner_grouped = False  # set by fit: whether the inner CV folds were grouped by patient

    def importance(self, X: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(fscore, gain) per column; default: mean |contribution| over X for both."""
        c = np.abs(self.contributions(X)[:, :-1]).mean(axis=0)
        return c, c


class XGBoostClassifier(Classifier):
    """Gradient-boosted trees (XGBoost), trees chosen by internal CV with early stopping."""

    kind = "xgboost"
    balanced = True  # scale_pos_weight = n_neg / n_pos

    def __init__(self, seed=0, nthread=1, max_rounds=500, early_stopping=50, max_depth=3, eta=0.1,
                 subsample=0.8, colsample_bytree=0.8, min_child_weight=1.0):
        super().__init__(seed, nthread)
        self.max_rounds = int(max_rounds)
        self.early_stopping = int(early_stopping)
        self.params_extra = dict(max_depth=int(max_depth), eta=float(eta), subsample=float(subsample),
                                 colsample_bytree=float(colsample_bytree),
                                 min_child_weight=float(min_child_weight))
        self.booster = None
        self.n_rounds: int | None = None
        self.n_columns: int | None = None

    def _params(self, y):
        n_pos = float((y == 1).sum())
        n_neg = float((y == 0).sum())
        return dict(objective="binary:logistic", eval_metric="auc", tree_method="hist", seed=self.seed,
                    nthread=self.nthread, scale_pos_weight=n_neg / max(n_pos, 1.0), verbosity=0,
                    **self.params_extra)

    def fit(self, X, y, groups=None):
        """Choose the number of trees by inner CV (patient-grouped with ``groups``) with early stopping, then refit on all of X."""
        import xgboost as xgb

        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y).astype(int)
        self.n_columns = X.shape[1]
        params = self._params(y)
        if X.size < SMALL_FIT_CELLS:  # threads only cost time on a few hundred slides (same trees either way)
            params["nthread"] = 1
        dtrain = xgb.DMatrix(X, label=y, nthread=params["nthread"])
        folds, self.inner_grouped = inner_folds(y, groups, wanted=3, seed=self.seed)
        hist = xgb.cv(params, dtrain, num_boost_round=self.max_rounds, folds=folds,
                      early_stopping_rounds=self.early_stopping, seed=self.seed, as_pandas=False)
        self.n_rounds = max(1, len(hist["test-auc-mean"]))
        self.booster = xgb.train(params, dtrain, num_boost_round=self.n_rounds)
        self.booster.set_param({"nthread": self.nthread})  # prediction threads as asked
        return self

    def _dmatrix(self, X):
        import xgboost as xgb

        return xgb.DMatrix(np.asarray(X, dtype=np.float32), nthread=self.nthread)

    def predict_proba(self, X):
        """Probability of class 1, (n,)."""
        return np.asarray(self.booster.inplace_predict(np.asarray(X, dtype=np.float32)), dtype=np.float64)

    def contributions(self, X):
        """XGBoost SHAP-style ``pred_contribs`` in log-odds, (n, Q + 1), bias last."""
        return self.booster.predict(self._dmatrix(X), pred_contribs=True).astype(np.float64)

    def importance(self, X=None):
        """(F-score = number of splits, total gain) per column."""
        w = self.booster.get_score(importance_type="weight")
        g = self.booster.get_score(importance_type="total_gain")
        names = [f"f{i}" for i in range(self.n_columns)]
        return (np.array([float(w.get(n, 0.0)) for n in names]),
                np.array([float(g.get(n, 0.0)) for n in names]))

    def save(self, d: Path) -> dict:
        """Write model.ubj; return metadata."""
        self.booster.save_model(str(Path(d) / "model.ubj"))
        return {"kind": self.kind, "file": "model.ubj", "n_rounds": self.n_rounds, "n_columns": self.n_columns,
                "seed": self.seed, "nthread": self.nthread, "max_rounds": self.max_rounds,
                "early_stopping": self.early_stopping, "params": self.params_extra}

    @classmethod
    def load(cls, d: Path, meta: dict, n_inputs: int | None = None, field: str = "classifier") -> "XGBoostClassifier":
        """Read model.ubj; FieldError naming a bad field, ModelError naming a damaged model file."""
        import xgboost as xgb

        params = need_dict(need_key(meta, "params", field), f"{field}.params")
        known = ("max_depth", "eta", "subsample", "colsample_bytree", "min_child_weight")
        for k, v in params.items():
            need_str(k, f"{field}.params key", known)
            need_number(v, f"{field}.params.{k}")
        c = cls(seed=need_int(need_key(meta, "seed", field), f"{field}.seed"),
                nthread=need_int(need_key(meta, "nthread", field), f"{field}.nthread", lo=0),
                max_rounds=need_int(need_key(meta, "max_rounds", field), f"{field}.max_rounds", lo=1),
                early_stopping=need_int(need_key(meta, "early_stopping", field), f"{field}.early_stopping", lo=1),
                **params)
        n_rounds = need_int(need_key(meta, "n_rounds", field), f"{field}.n_rounds", lo=1)
        n_columns = need_int(need_key(meta, "n_columns", field), f"{field}.n_columns", lo=0)
        _check_inputs(n_columns, n_inputs, f"{field}.n_columns")
        path = inside(Path(d), need_key(meta, "file", field), f"{field}.file")
        c.booster = xgb.Booster()
        try:
            c.booster.load_model(str(path))
        except xgb.core.XGBoostError as exc:
            raise ModelError(f"{path}: not a readable XGBoost model ({_first_line(exc)})") from None
        if c.booster.num_features() != n_columns:
            raise ModelError(f"{path}: the trees read {c.booster.num_features()} input columns, "
                             f"{field}.n_columns says {n_columns}")
        c.booster.set_param({"nthread": c.nthread})
        c.n_rounds = n_rounds
        c.n_columns = n_columns
        return c


class _NumpyClassifier(Classifier):
    """Shared parts of the numpy-inference classifiers: imputation, standardisation, npz I/O."""

    def _fit_scaler(self, X):
        X = np.asarray(X, dtype=np.float64)
        med = np.nanmedian(np.where(np.isnan(X).all(axis=0)[None, :], 0.0, X), axis=0)
        self.impute_ = np.nan_to_num(med)
        Xi = np.where(np.isnan(X), self.impute_, X)
        self.mean_ = Xi.mean(axis=0)
        sd = Xi.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        return self._z(X)

    def _z(self, X):
        X = np.asarray(X, dtype=np.float64)
        return (np.where(np.isnan(X), self.impute_, X) - self.mean_) / self.scale_

    def _arrays(self) -> dict:
        return {"impute": self.impute_, "mean": self.mean_, "scale": self.scale_}

    def _set_arrays(self, a) -> None:
        self.impute_, self.mean_, self.scale_ = a["impute"], a["mean"], a["scale"]

    def _check_arrays(self, a: dict, q: int) -> None:
        """FieldError unless the saved arrays have the shapes and values of a model with ``q`` input columns."""
        for name in ("impute", "mean", "scale"):
            _check_saved(a, name, (q,))
        if np.any(a["scale"] <= 0):
            fail("scale", "must be positive")

    def save(self, d: Path) -> dict:
        """Write params.npz; return metadata."""
        np.savez(Path(d) / "params.npz", **self._arrays())
        return {"kind": self.kind, "file": "params.npz", "seed": self.seed, "nthread": self.nthread,
                **self._meta()}

    def _meta(self) -> dict:
        return {}

    @classmethod
    def load(cls, d: Path, meta: dict, n_inputs: int | None = None, field: str = "classifier"):
        """Read params.npz (allow_pickle=False); FieldError naming a bad field, ModelError naming a damaged file."""
        c = cls(seed=need_int(need_key(meta, "seed", field), f"{field}.seed"),
                nthread=need_int(need_key(meta, "nthread", field), f"{field}.nthread", lo=0))
        c._load_meta(meta, field)
        path = inside(Path(d), need_key(meta, "file", field), f"{field}.file")
        try:
            with np.load(path, allow_pickle=False) as a:
                arrays = {k: a[k] for k in a.files}
        except Exception as exc:  # zip, header and object-array (pickle) errors of a damaged file
            raise ModelError(f"{path}: not a readable .npz file ({type(exc).__name__}: {_first_line(exc)})") from None
        try:
            impute = _check_saved(arrays, "impute", (None,))
            _check_inputs(len(impute), n_inputs, "impute")
            c._check_arrays(arrays, len(impute))
        except FieldError as exc:
            raise ModelError(f"{path}: {exc}") from None
        c._set_arrays(arrays)
        return c

    def _load_meta(self, meta: dict, field: str) -> None:
        pass

    def _logit_z(self, Z):  # pragma: no cover - overridden
        raise NotImplementedError

    def predict_proba(self, X):
        """Probability of class 1, (n,)."""
        return _sigmoid(self._logit_z(self._z(X)))

    def contributions(self, X):
        """Occlusion contributions in log-odds (column -> training mean), (n, Q + 1), bias last."""
        Z = self._z(X)
        n, q = Z.shape
        base = self._logit_z(np.zeros((1, q)))[0]
        full = self._logit_z(Z)
        occl = np.repeat(Z[:, None, :], q, axis=1)  # (n, q, q): row j has column j set to the mean (0)
        occl[:, np.arange(q), np.arange(q)] = 0.0
        without = self._logit_z(occl.reshape(n * q, q)).reshape(n, q)
        return np.concatenate([full[:, None] - without, np.full((n, 1), base)], axis=1)


class LogisticClassifier(_NumpyClassifier):
    """L2 (or elastic-net) logistic regression on standardised columns (sklearn fit, numpy inference)."""

    kind = "logreg"
    balanced = True  # class_weight="balanced" (spca and blend inherit it)

    def __init__(self, seed=0, nthread=1, C: float = 1.0, penalty: str = "l2", l1_ratio: float = 0.5):
        super().__init__(seed, nthread)
        if penalty not in ("l2", "elasticnet"):
            raise ValueError(f"unknown logistic penalty {penalty!r}; choose 'l2' or 'elasticnet'")
        self.C, self.penalty, self.l1_ratio = float(C), str(penalty), float(l1_ratio)

    def fit(self, X, y, groups=None):
        """Fit on standardised X (no inner CV, so ``groups`` is not needed)."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        Z = self._fit_scaler(X)
        if self.penalty == "elasticnet":
            m = LogisticRegression(C=self.C, penalty="elasticnet", l1_ratio=self.l1_ratio, solver="saga",
                                   class_weight="balanced", max_iter=3000, tol=1e-3, random_state=self.seed)
        else:
            m = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", FutureWarning)  # sklearn >= 1.8 deprecates penalty= for l1_ratio=
            m.fit(Z, np.asarray(y).astype(int))
        self.coef_ = m.coef_[0].astype(np.float64)
        self.intercept_ = np.array([float(m.intercept_[0])])
        self._sk = m
        return self

    def _logit_z(self, Z):
        return Z @ self.coef_ + self.intercept_[0]

    def contributions(self, X):
        """coef * z per column, intercept as bias, (n, Q + 1)."""
        Z = self._z(X)
        return np.concatenate([Z * self.coef_[None, :], np.full((len(Z), 1), self.intercept_[0])], axis=1)

    def importance(self, X=None):
        """(|coef|, |coef|) on standardised columns."""
        a = np.abs(self.coef_)
        return a, a

    def _arrays(self):
        return {**super()._arrays(), "coef": self.coef_, "intercept": self.intercept_}

    def _set_arrays(self, a):
        super()._set_arrays(a)
        self.coef_, self.intercept_ = a["coef"], a["intercept"]

    def _check_arrays(self, a, q):
        super()._check_arrays(a, q)
        _check_saved(a, "coef", (q,))
        _check_saved(a, "intercept", (1,))

    def _meta(self):
        return {"C": self.C, "penalty": self.penalty, "l1_ratio": self.l1_ratio}

    def _load_meta(self, meta, field):
        self.C = float(need_number(meta.get("C", 1.0), f"{field}.C", lo=0.0))
        self.penalty = need_str(meta.get("penalty", "l2"), f"{field}.penalty", ("l2", "elasticnet"))
        self.l1_ratio = float(need_number(meta.get("l1_ratio", 0.5), f"{field}.l1_ratio", lo=0.0, hi=1.0))


class SupervisedPCAClassifier(LogisticClassifier):
    """Supervised principal components (Bair & Tibshirani 2006) with a logistic link, stored as a linear model.

    On standardised columns, optionally centred within strata first (``strata``:
    the indices of one-hot columns, e.g. a subtype's levels; each row's columns minus
    the training mean of its stratum, then rescaled): the ``columns`` non-stratum
    columns with the largest |Welch t| between the classes, their first
    ``components`` principal components, a logistic regression (``C``, balanced) on
    those scores. The whole chain is linear, so it is saved as the logistic
    regression's ``coef`` / ``intercept`` on the standardised inputs: the strata's
    one-hot columns carry the centring as their coefficients (a row with no stratum
    is centred on the training mean). Suits one latent factor behind many weak columns.
    """

    kind = "spca"

    def __init__(self, seed=0, nthread=1, columns: int = 20, components: int = 1, C: float = 1.0,
                 strata: tuple[int, ...] = ()):
        super().__init__(seed, nthread, C=C)
        self.columns, self.components = int(columns), int(components)
        self.strata = tuple(int(i) for i in strata)

    def fit(self, X, y, groups=None):
        """Fit on standardised X (no inner CV, so ``groups`` is not needed)."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y).astype(int)
        Z = self._fit_scaler(X)
        q = Z.shape[1]
        strata = np.array(sorted(set(self.strata)), dtype=int)
        free = np.setdiff1d(np.arange(q), strata)
        onehot = np.asarray(X, dtype=np.float64)[:, strata] if len(strata) else np.zeros((len(Z), 0))
        onehot = np.nan_to_num(onehot)
        # per-stratum training means of the free columns (rows with no stratum stay uncentred)
        counts = onehot.sum(axis=0)
        mu = (onehot.T @ Z[:, free]) / np.where(counts > 0, counts, 1.0)[:, None]  # (strata, free)
        zc = Z[:, free] - onehot @ mu
        sd = zc.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        zc /= sd
        a, b = zc[y == 1], zc[y == 0]
        t = np.abs(a.mean(0) - b.mean(0)) / (np.sqrt(a.var(0) / len(a) + b.var(0) / len(b)) + 1e-9)
        keep = np.argsort(-t, kind="stable")[:max(1, min(self.columns, len(free)))]
        sub = zc[:, keep]
        k = max(1, min(self.components, len(keep), len(y) - 1))
        v = np.linalg.svd(sub - sub.mean(0), full_matrices=False)[2][:k].T  # (kept, k)
        m = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000, random_state=self.seed)
        m.fit(sub @ v, y)
        w = np.zeros(len(free))
        w[keep] = (v @ m.coef_[0]) / sd[keep]  # per free standardised column
        offset = mu @ w  # (strata,) the centring, in logit units, of a row of each stratum
        coef = np.zeros(q)
        coef[free] = w
        coef[strata] = -offset * self.scale_[strata]  # one-hot o = z * scale + mean
        self.coef_ = coef
        self.intercept_ = np.array([float(m.intercept_[0]) - float(offset @ self.mean_[strata])])
        self.kept_ = free[keep]
        self._sk = m
        return self

    def importance(self, X=None):
        """(|coef|, |coef|) on standardised columns; 0 for the strata columns (they centre, they are no evidence)."""
        a = np.abs(self.coef_).copy()
        a[list(self.strata)] = 0.0
        return a, a

    def _meta(self):
        return {"C": self.C, "columns": self.columns, "components": self.components, "strata": list(self.strata)}

    def _load_meta(self, meta, field):
        self.C = float(need_number(meta.get("C", 1.0), f"{field}.C", lo=0.0))
        self.columns = need_int(need_key(meta, "columns", field), f"{field}.columns", lo=1)
        self.components = need_int(need_key(meta, "components", field), f"{field}.components", lo=1)
        strata = need_list(meta.get("strata", []), f"{field}.strata")
        self.strata = tuple(need_int(i, f"{field}.strata[{j}]", lo=0) for j, i in enumerate(strata))


class BlendClassifier(SupervisedPCAClassifier):
    """The elastic net on the non-stratum columns and supervised PCA within strata, blended: one linear model.

    Each part's training logits are divided by their SD and summed; that sum,
    shifted to the class boundary of a logistic regression (C = 1, balanced) on
    it, is the logit (calibrate it: ``train`` does by default). The result is saved as one ``coef`` / ``intercept`` on the standardised inputs like
    ``logreg``. ``C`` / ``l1_ratio``: the elastic net's; ``columns`` /
    ``components`` / ``spca_C``: the supervised PCA's (see those classes).
    """

    kind = "blend"

    def __init__(self, seed=0, nthread=1, C: float = 0.1, l1_ratio: float = 0.5, columns: int = 20,
                 components: int = 1, spca_C: float = 0.03, strata: tuple[int, ...] = ()):
        super().__init__(seed, nthread, columns=columns, components=components, C=C, strata=strata)
        self.l1_ratio, self.spca_C = float(l1_ratio), float(spca_C)

    def fit(self, X, y, groups=None):
        """Fit both parts on X (standardised alike), then the blend's slope and intercept."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y).astype(int)
        X = np.asarray(X, dtype=np.float64)
        Z = self._fit_scaler(X)
        free = np.setdiff1d(np.arange(Z.shape[1]), np.array(sorted(set(self.strata)), dtype=int))
        net = LogisticClassifier(self.seed, C=self.C, penalty="elasticnet", l1_ratio=self.l1_ratio).fit(X[:, free], y)
        pca = SupervisedPCAClassifier(self.seed, columns=self.columns, components=self.components, C=self.spca_C,
                                      strata=self.strata).fit(X, y)
        w_net = np.zeros(Z.shape[1])
        w_net[free] = net.coef_
        parts = [(w_net, net.intercept_[0]), (pca.coef_, pca.intercept_[0])]
        coef, bias = np.zeros(Z.shape[1]), 0.0
        for w, b in parts:  # the same standardisation, so the logits add on one scale once divided by their SD
            sd = float(np.std(Z @ w + b)) or 1.0
            coef, bias = coef + w / sd, bias + b / sd
        # the logit is the blended score in SD units (its scale does not grow with the training set, unlike an
        # in-sample slope), shifted so that 0 is where a logistic regression on it puts the class boundary
        head = LogisticRegression(C=1.0, class_weight="balanced", random_state=self.seed)
        head.fit((Z @ coef + bias)[:, None], y)
        self.coef_ = coef
        self.intercept_ = np.array([bias + float(head.intercept_[0]) / max(float(head.coef_[0, 0]), 1e-12)])
        self.kept_ = pca.kept_
        self._sk = head
        return self

    def _meta(self):
        return {**super()._meta(), "l1_ratio": self.l1_ratio, "spca_C": self.spca_C}

    def _load_meta(self, meta, field):
        super()._load_meta(meta, field)
        self.l1_ratio = float(need_number(meta.get("l1_ratio", 0.5), f"{field}.l1_ratio", lo=0.0, hi=1.0))
        self.spca_C = float(need_number(meta.get("spca_C", 0.03), f"{field}.spca_C", lo=0.0))


class SVMClassifier(_NumpyClassifier):
    """RBF support vector machine with deterministic Platt-scaled probabilities (numpy inference)."""

    kind = "svm"

    def fit(self, X, y, groups=None):
        """Fit the SVM; Platt scaling on inner-CV decision values (folds grouped by patient with ``groups``)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import SVC

        y = np.asarray(y).astype(int)
        Z = self._fit_scaler(X)
        mk = lambda: SVC(kernel="rbf", C=1.0, gamma="scale", class_weight="balanced")  # noqa: E731
        # Platt scaling on decision values the SVM did not see (inner CV), as libsvm does
        dec = np.zeros(len(y))
        folds, self.inner_grouped = inner_folds(y, groups, wanted=5, seed=self.seed)
        for tr, te in folds:
            dec[te] = mk().fit(Z[tr], y[tr]).decision_function(Z[te])
        platt = LogisticRegression(C=1e6, max_iter=1000).fit(dec[:, None], y)
        self.platt_ = np.array([-float(platt.coef_[0, 0]), -float(platt.intercept_[0])])  # P=1/(1+exp(A f+B))
        m = mk().fit(Z, y)
        self.sv_ = m.support_vectors_.astype(np.float64)
        self.dual_ = m.dual_coef_[0].astype(np.float64)
        self.intercept_ = np.array([float(m.intercept_[0])])
        self.gamma_ = np.array([float(m._gamma)])
        self._sk = m
        return self

    def decision_function(self, Z):
        """SVM decision value for standardised rows Z (positive -> class 1)."""
        d2 = (Z ** 2).sum(1)[:, None] + (self.sv_ ** 2).sum(1)[None, :] - 2.0 * Z @ self.sv_.T
        return np.exp(-self.gamma_[0] * np.maximum(d2, 0.0)) @ self.dual_ + self.intercept_[0]

    def _logit_z(self, Z):
        a, b = self.platt_
        return -(a * self.decision_function(Z) + b)

    def _arrays(self):
        return {**super()._arrays(), "support_vectors": self.sv_, "dual_coef": self.dual_,
                "intercept": self.intercept_, "gamma": self.gamma_, "platt": self.platt_}

    def _set_arrays(self, a):
        super()._set_arrays(a)
        self.sv_, self.dual_, self.intercept_ = a["support_vectors"], a["dual_coef"], a["intercept"]
        self.gamma_, self.platt_ = a["gamma"], a["platt"]

    def _check_arrays(self, a, q):
        super()._check_arrays(a, q)
        n_sv = len(_check_saved(a, "support_vectors", (None, q)))
        _check_saved(a, "dual_coef", (n_sv,))
        _check_saved(a, "intercept", (1,))
        if np.any(_check_saved(a, "gamma", (1,)) <= 0):
            fail("gamma", "must be positive")
        _check_saved(a, "platt", (2,))


class MLPClassifier(_NumpyClassifier):
    """Multi-layer perceptron (ReLU hidden layers, logistic output), sklearn fit, numpy inference."""

    kind = "mlp"

    def __init__(self, seed=0, nthread=1, hidden=(32,)):
        super().__init__(seed, nthread)
        self.hidden = tuple(int(h) for h in hidden)

    def fit(self, X, y, groups=None):
        """Fit the MLP on standardised X (no inner CV, so ``groups`` is not needed)."""
        import warnings

        from sklearn.neural_network import MLPClassifier as SkMLP

        Z = self._fit_scaler(X)
        m = SkMLP(hidden_layer_sizes=self.hidden, activation="relu", alpha=1e-2, max_iter=1000,
                  random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(Z, np.asarray(y).astype(int))
        self.weights_ = [w.astype(np.float64) for w in m.coefs_]
        self.biases_ = [b.astype(np.float64) for b in m.intercepts_]
        self._sk = m
        return self

    def _logit_z(self, Z):
        h = Z
        for w, b in zip(self.weights_[:-1], self.biases_[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        return (h @ self.weights_[-1] + self.biases_[-1])[:, 0]

    def _arrays(self):
        a = super()._arrays()
        for i, (w, b) in enumerate(zip(self.weights_, self.biases_)):
            a[f"W{i}"], a[f"b{i}"] = w, b
        return a

    def _set_arrays(self, a):
        super()._set_arrays(a)
        n = sum(1 for k in a if k.startswith("W"))
        self.weights_ = [a[f"W{i}"] for i in range(n)]
        self.biases_ = [a[f"b{i}"] for i in range(n)]

    def _meta(self):
        return {"hidden": list(self.hidden), "activation": "relu"}

    def _check_arrays(self, a, q):
        super()._check_arrays(a, q)
        n = sum(1 for k in a if k.startswith("W"))
        if n == 0:
            fail("W0", "is missing")
        width = q
        for i in range(n):
            out = 1 if i == n - 1 else None  # the last layer gives the single logit
            width = _check_saved(a, f"W{i}", (width, out)).shape[1]
            _check_saved(a, f"b{i}", (width,))

    def _load_meta(self, meta, field):
        hidden = need_list(meta.get("hidden", []), f"{field}.hidden")
        self.hidden = tuple(need_int(h, f"{field}.hidden[{i}]", lo=1) for i, h in enumerate(hidden))


def _check_saved(a: dict, name: str, shape: tuple) -> np.ndarray:
    """Saved array ``name`` if present, floating point, finite and of ``shape``; FieldError otherwise."""
    if name not in a:
        fail(name, "is missing")
    return check_array(a[name], name, shape)


_CLASSES = {"xgboost": XGBoostClassifier, "logreg": LogisticClassifier, "spca": SupervisedPCAClassifier,
            "blend": BlendClassifier, "svm": SVMClassifier,
            "mlp": MLPClassifier}


def make_classifier(kind: str = "xgboost", seed: int = 0, nthread: int = 1, params: dict | None = None) -> Classifier:
    """A new, unfitted classifier by name; ``params``: its hyper-parameters (e.g. XGBoost ``max_depth``, logreg ``C``)."""
    if kind not in _CLASSES:
        raise ValueError(f"unknown classifier {kind!r}; choose one of {CLASSIFIERS}")
    return _CLASSES[kind](seed=seed, nthread=nthread, **dict(params or {}))


def load_classifier(d: Path, meta: dict, n_inputs: int | None = None, field: str = "classifier") -> Classifier:
    """Load a classifier saved by ``save`` from folder ``d`` with its metadata.

    ``n_inputs``, when given, is the number of columns the model feeds it. A bad
    metadata field raises FieldError naming it; a missing or damaged file ModelError naming the file.
    """
    meta = need_dict(meta, field)
    kind = need_str(need_key(meta, "kind", field), f"{field}.kind", CLASSIFIERS)
    path = inside(Path(d), need_key(meta, "file", field), f"{field}.file")
    if not path.is_file():
        raise ModelError(f"{d}: classifier file {meta['file']} missing")
    return _CLASSES[kind].load(Path(d), meta, n_inputs, field)

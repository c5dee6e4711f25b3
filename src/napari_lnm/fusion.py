"""Fusion of a slide's tile-feature table into one fixed-length vector per slide.

Every fusion shares one interface::

    fusion.fit(tables, feature_names)      # training slides only
    X = fusion.transform(tables)           # (n_slides, P) float64
    fusion.element_names                   # P names "<feature>|<part>"
    fusion.element_info()                  # DataFrame: element, feature, bin, bin_lo, bin_hi, stat
    fusion.to_dict() / fusion_from_dict(d) # JSON-able parameters

:class:`HistogramFusion` is the method's default: per tile feature, the
frequency of the slide's tiles in each of ``B`` bins whose edges are fitted on
the pooled tiles of the training slides. Edges are **quantiles** by default:
tile features are often heavily skewed (areas, densities, texture contrast), and
equal-width bins over such a feature put almost every tile into one or two bins,
so most histogram elements would be constant; quantile bins hold about ``1/B`` of
the training tiles each and stay informative. ``edges="uniform"`` gives the
equal-width bins of the worked example, over the robust range p1..p99 of the
training tiles (values outside fall into the first/last bin).

NaN handling: NaN tile values are ignored (frequencies are over the tiles where
the feature is defined); a slide where a feature is NaN on every tile gets all
zeros for that feature's histogram (so "undefined" stays distinguishable from any
real distribution). Summary fusions (mean, max, ...) give NaN for such a slide,
replaced by the training slides' median of that element.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from napari_lnm.engine import META_COLUMNS
from napari_lnm._fields import fail, need_array, need_dict, need_int, need_key, need_list, need_number, \
    need_str, need_strs
from napari_lnm.errors import CohortError, UserError


ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}


def ordinal(k: int) -> str:
    """1 -> '1st', 2 -> '2nd', 3 -> '3rd', 4 -> '4th' ..."""
    return ORDINALS.get(k, f"{k}th")


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Tile feature columns of a features table: every numeric column except the tile metadata."""
    return [
        c for c in df.columns
        if c not in META_COLUMNS and (pd.api.types.is_numeric_dtype(df[c]) or df[c].isna().all())
    ]


class TileTable:
    """A slide's tile-feature matrix extracted once (training reuses it across folds and recipes), with a cache.

    Fusions accept it wherever they accept a features DataFrame; ``cache`` holds
    per-slide summaries that depend on nothing fitted (e.g. a slide's mean vector).
    """

    def __init__(self, df: pd.DataFrame, feature_names: Sequence[str]) -> None:
        self.feature_names = list(feature_names)
        self.matrix = tile_matrix(df, self.feature_names)
        self.cache: dict = {}

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, feature_names: Sequence[str]) -> "TileTable":
        """A TileTable of an existing (n_tiles, T) float64 matrix whose columns are ``feature_names``."""
        t = cls.__new__(cls)
        t.feature_names, t.matrix, t.cache = list(feature_names), matrix, {}
        return t

    def __len__(self) -> int:
        return len(self.matrix)


def tile_tables(tables: Sequence, feature_names: Sequence[str]) -> list[TileTable]:
    """Every table as a :class:`TileTable` of ``feature_names`` (those that already are one are kept)."""
    names = list(feature_names)
    return [t if isinstance(t, TileTable) and t.feature_names == names else TileTable(t, names) for t in tables]


def tile_matrix(df: pd.DataFrame, feature_names: Sequence[str]) -> np.ndarray:
    """Tile values of ``feature_names`` as a float64 (n_tiles, T) array (inf -> NaN); missing columns -> CohortError."""
    if isinstance(df, TileTable):
        if df.feature_names == list(feature_names):
            return df.matrix
        pos = {f: i for i, f in enumerate(df.feature_names)}
        missing = [f for f in feature_names if f not in pos]
        if missing:
            raise CohortError(f"features table lacks {len(missing)} column(s) the model needs, e.g. {missing[:3]}")
        return df.matrix[:, [pos[f] for f in feature_names]]
    missing = [f for f in feature_names if f not in df.columns]
    if missing:
        sid = df["slide_id"].iloc[0] if "slide_id" in df.columns and len(df) else "?"
        raise CohortError(
            f"slide {sid}: features table lacks {len(missing)} column(s) the model needs, e.g. {missing[:3]}"
        )
    m = df.loc[:, list(feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isfinite(m), m, np.nan)  # +-inf from a degenerate tile counts as undefined


def _pooled(tables: Sequence[pd.DataFrame], feature_names: Sequence[str]) -> np.ndarray:
    """All tiles of all ``tables`` stacked into one (N_total, T) array."""
    mats = [tile_matrix(t, feature_names) for t in tables]
    if not mats:
        raise CohortError("no training slides to fit the fusion on")
    return np.concatenate(mats, axis=0)


class Fusion:
    """Base class: per-slide fusion of T tile features into P elements."""

    kind = "base"

    def __init__(self) -> None:
        self.feature_names: list[str] = []

    # -- interface -------------------------------------------------------
    def fit(self, tables: Sequence[pd.DataFrame], feature_names: Sequence[str]) -> "Fusion":
        """Fit the fusion parameters on the training slides' tiles."""
        self.feature_names = list(feature_names)
        self._fit(_pooled(tables, self.feature_names))
        return self

    def transform(self, tables: Sequence[pd.DataFrame] | pd.DataFrame) -> np.ndarray:
        """Fused vectors, (n_slides, P) float64; a single DataFrame gives (1, P)."""
        if isinstance(tables, pd.DataFrame):
            tables = [tables]
        self._check_fitted()
        out = np.empty((len(tables), len(self.element_names)), dtype=np.float64)
        for i, t in enumerate(tables):
            out[i] = self._transform_one(tile_matrix(t, self.feature_names))
        return out

    @property
    def element_names(self) -> list[str]:
        """Names of the P fused elements, ``"<feature>|<part>"``."""
        return [f"{f}|{p}" for f in self.feature_names for p in self.parts]

    @property
    def parts(self) -> list[str]:  # pragma: no cover - overridden
        """Per-feature element suffixes."""
        raise NotImplementedError

    def element_info(self) -> pd.DataFrame:
        """One row per element: element, feature, bin (1..B, or 0 for a summary), bin_lo, bin_hi, stat."""
        rows = []
        for t, f in enumerate(self.feature_names):
            for k, p in enumerate(self.parts):
                lo, hi = self._bin_range(t, k)
                rows.append(dict(element=f"{f}|{p}", feature=f, bin=self._bin_number(k), bin_lo=lo,
                                 bin_hi=hi, stat=p))
        return pd.DataFrame(rows, columns=["element", "feature", "bin", "bin_lo", "bin_hi", "stat"])

    def with_tile_values(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` plus any per-tile values this fusion derives (key tiles read them); here ``df`` itself."""
        return df

    def to_dict(self) -> dict:
        """JSON-able parameters (``fusion_from_dict`` restores them)."""
        d = {"kind": self.kind, "feature_names": list(self.feature_names)}
        d.update(self._params())
        return d

    # -- helpers for subclasses -----------------------------------------
    def _check_fitted(self) -> None:
        if not self.feature_names:
            raise RuntimeError(f"{type(self).__name__} is not fitted")

    def _bin_number(self, k: int) -> int:
        return 0

    def _bin_range(self, t: int, k: int) -> tuple[float, float]:
        return (float("nan"), float("nan"))

    def _fit(self, pooled: np.ndarray) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _transform_one(self, m: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def _params(self) -> dict:
        return {}


def _frequencies(idx: np.ndarray, valid: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-column frequencies of bin indices idx (N, T) in 0..n_bins-1 over valid tiles -> (T * n_bins,)."""
    n, t = idx.shape
    flat = (idx + np.arange(t)[None, :] * n_bins)[valid]
    counts = np.bincount(flat, minlength=t * n_bins).reshape(t, n_bins).astype(np.float64)
    n_valid = valid.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = np.where(n_valid[:, None] > 0, counts / np.maximum(n_valid, 1)[:, None], 0.0)
    return freq.ravel()


class HistogramFusion(Fusion):
    """Frequency histogram of each tile feature over a slide's tiles, B bins, edges fitted on training tiles."""

    kind = "histogram"

    def __init__(self, bins: int = 5, edges: str = "quantile") -> None:
        super().__init__()
        if int(bins) < 2:
            raise UserError(f"histogram bins must be at least 2 (--bins), got {bins}")
        if edges not in ("quantile", "uniform"):
            raise ValueError("edges must be 'quantile' or 'uniform'")
        self.bins = int(bins)
        self.edges = edges
        self.edges_: np.ndarray | None = None  # (T, B+1)

    @property
    def parts(self) -> list[str]:
        return [f"bin{k}" for k in range(1, self.bins + 1)]

    def _fit(self, pooled: np.ndarray) -> None:
        b = self.bins
        t = pooled.shape[1]
        edges = np.zeros((t, b + 1))
        defined = ~np.all(np.isnan(pooled), axis=0)
        if defined.any():
            sub = pooled[:, defined]
            if self.edges == "quantile":
                e = np.nanquantile(sub, np.linspace(0.0, 1.0, b + 1), axis=0).T
            else:
                lo, hi = np.nanpercentile(sub, [1.0, 99.0], axis=0)
                hi = np.where(hi > lo, hi, lo + 1.0)
                e = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, b + 1)[None, :]
            edges[defined] = e
        edges[~defined] = np.linspace(0.0, 1.0, b + 1)[None, :]
        self.edges_ = edges

    def _bin_index(self, m: np.ndarray) -> np.ndarray:
        """Bin index 0..B-1 of each value (N, T); interior edges decide, outside values clip to end bins."""
        idx = np.empty(m.shape, dtype=np.int64)
        for t in range(m.shape[1]):  # per feature (not per tile): O(N log B) time, O(N) memory
            idx[:, t] = np.searchsorted(self.edges_[t, 1:-1], m[:, t], side="right")
        return idx

    def _transform_one(self, m: np.ndarray) -> np.ndarray:
        valid = ~np.isnan(m)
        idx = self._bin_index(np.where(valid, m, 0.0))
        return _frequencies(idx, valid, self.bins)

    def _bin_number(self, k: int) -> int:
        return k + 1

    def _bin_range(self, t: int, k: int) -> tuple[float, float]:
        # values outside the training range clip to the end bins, so those are open-ended
        lo = -np.inf if k == 0 else float(self.edges_[t, k])
        hi = np.inf if k == self.bins - 1 else float(self.edges_[t, k + 1])
        return lo, hi

    def _params(self) -> dict:
        return {"bins": self.bins, "edges": self.edges, "edges_": self.edges_.tolist()}

    @classmethod
    def _from_params(cls, d: dict, n_features: int, field: str) -> "HistogramFusion":
        bins = need_int(need_key(d, "bins", field), f"{field}.bins", lo=2)
        f = cls(bins=bins, edges=need_str(need_key(d, "edges", field), f"{field}.edges", ("quantile", "uniform")))
        # searchsorted needs finite, sorted edges: NaN edges would put every tile into one bin silently
        f.edges_ = need_array(need_key(d, "edges_", field), f"{field}.edges_", (n_features, bins + 1),
                              increasing_rows=True)
        return f


class _SummaryFusion(Fusion):
    """Summary statistic(s) per feature; all-NaN slides get the training median of the element."""

    def __init__(self) -> None:
        super().__init__()
        self.fill_: np.ndarray | None = None

    def _stats(self, m: np.ndarray) -> np.ndarray:  # (n_stats, T)
        raise NotImplementedError

    def _raw(self, m: np.ndarray) -> np.ndarray:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return self._stats(m).T.ravel()  # feature-major: f0|s0, f0|s1, ...

    def _raw_of(self, t) -> np.ndarray:
        """The slide's raw summary vector, cached on a :class:`TileTable` (it depends on nothing fitted)."""
        if not isinstance(t, TileTable):
            return self._raw(tile_matrix(t, self.feature_names))
        key = (self.kind, tuple(self.parts), tuple(self.feature_names))
        if key not in t.cache:
            t.cache[key] = self._raw(tile_matrix(t, self.feature_names))
        return t.cache[key]

    def transform(self, tables):  # noqa: D401 - see base
        """Fused vectors, (n_slides, P) float64; all-NaN elements get the training median."""
        if isinstance(tables, pd.DataFrame):
            tables = [tables]
        self._check_fitted()
        if not len(tables):
            return np.empty((0, len(self.element_names)))
        v = np.stack([self._raw_of(t) for t in tables])
        return np.where(np.isnan(v), self.fill_[None, :], v)

    def fit(self, tables, feature_names):  # noqa: D401 - see base
        """Fit: remember the training median of each element (used for all-NaN slides)."""
        self.feature_names = list(feature_names)
        vecs = np.stack([self._raw_of(t) for t in tables])
        self._fit(_pooled(tables, self.feature_names))
        fill = np.nanmedian(np.where(np.isnan(vecs).all(axis=0)[None, :], 0.0, vecs), axis=0)
        self.fill_ = np.nan_to_num(fill)
        return self

    def _fit(self, pooled: np.ndarray) -> None:
        pass

    def _transform_one(self, m: np.ndarray) -> np.ndarray:
        v = self._raw(m)
        return np.where(np.isnan(v), self.fill_, v)

    def _params(self) -> dict:
        return {"fill_": self.fill_.tolist()}

    @classmethod
    def _from_params(cls, d: dict, n_features: int, field: str):
        f = cls(**cls._init_params(d, field))
        f.fill_ = need_array(need_key(d, "fill_", field), f"{field}.fill_", (n_features * len(f.parts),))
        return f

    @classmethod
    def _init_params(cls, d: dict, field: str) -> dict:
        """Constructor arguments read from a saved fusion."""
        return {}


class MeanFusion(_SummaryFusion):
    """Mean of each tile feature over the slide's tiles (feature units)."""

    kind = "mean"
    parts = ["mean"]

    def _stats(self, m):
        return np.nanmean(m, axis=0)[None, :]


class MaxFusion(_SummaryFusion):
    """Maximum of each tile feature over the slide's tiles (feature units)."""

    kind = "max"
    parts = ["max"]

    def _stats(self, m):
        return np.nanmax(m, axis=0)[None, :] if len(m) else np.full((1, m.shape[1]), np.nan)


class PNormFusion(_SummaryFusion):
    """Generalised p-mean (mean |x|^p)^(1/p) of each tile feature (feature units)."""

    kind = "pnorm"

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        if p <= 0:
            raise UserError(f"the p-norm exponent must be positive (--p), got {p}")
        self.p = float(p)

    @property
    def parts(self):
        return [f"p{self.p:g}norm"]

    def _stats(self, m):
        return (np.nanmean(np.abs(m) ** self.p, axis=0) ** (1.0 / self.p))[None, :]

    def _params(self):
        return {"p": self.p, **super()._params()}

    @classmethod
    def _init_params(cls, d, field):
        return {"p": need_number(need_key(d, "p", field), f"{field}.p", positive=True)}


class QuantileFusion(_SummaryFusion):
    """10th, 50th and 90th percentiles of each tile feature over the slide's tiles (feature units)."""

    kind = "quantile"

    def __init__(self, quantiles: Sequence[float] = (10.0, 50.0, 90.0)) -> None:
        super().__init__()
        self.quantiles = [float(q) for q in quantiles]

    @property
    def parts(self):
        return [f"p{q:g}" for q in self.quantiles]

    def _stats(self, m):
        if not len(m):
            return np.full((len(self.quantiles), m.shape[1]), np.nan)
        nan = np.isnan(m).any(axis=0)
        out = np.empty((len(self.quantiles), m.shape[1]))
        out[:, ~nan] = np.percentile(m[:, ~nan], self.quantiles, axis=0)  # same numbers, without the slow NaN path
        if nan.any():
            out[:, nan] = np.nanpercentile(m[:, nan], self.quantiles, axis=0)
        return out

    def _params(self):
        return {"quantiles": self.quantiles, **super()._params()}

    @classmethod
    def _init_params(cls, d, field):
        qs = need_list(need_key(d, "quantiles", field), f"{field}.quantiles")
        if not qs:
            fail(f"{field}.quantiles", "is empty")
        return {"quantiles": [need_number(q, f"{field}.quantiles[{i}]", lo=0.0, hi=100.0) for i, q in enumerate(qs)]}


def _lloyd_1d(v: np.ndarray, c: np.ndarray, n_iter: int) -> tuple[np.ndarray, float]:
    """Lloyd iterations on sorted 1-D values from centres c -> (sorted centres, inertia)."""
    k = len(c)
    for _ in range(n_iter):
        bounds = (c[1:] + c[:-1]) / 2.0
        idx = np.searchsorted(bounds, v, side="right")
        sums = np.bincount(idx, weights=v, minlength=k)
        cnt = np.bincount(idx, minlength=k)
        new = np.sort(np.where(cnt > 0, sums / np.maximum(cnt, 1), c))
        done = np.allclose(new, c, rtol=0, atol=1e-12 * (1 + np.abs(c).max()))
        c = new
        if done:
            break
    idx = np.searchsorted((c[1:] + c[:-1]) / 2.0, v, side="right")
    return c, float(((v - c[idx]) ** 2).sum())


def kmeans_1d(values: np.ndarray, k: int, n_iter: int = 100) -> np.ndarray:
    """Sorted centres of a deterministic 1-D k-means of finite ``values`` (best of quantile / even-range starts)."""
    v = np.sort(values[np.isfinite(values)])
    if v.size == 0:
        return np.linspace(0.0, 1.0, k)
    starts = [np.quantile(v, (np.arange(k) + 0.5) / k), v[0] + (v[-1] - v[0]) * (np.arange(k) + 0.5) / k]
    fits = [_lloyd_1d(v, s, n_iter) for s in starts]
    return min(fits, key=lambda f: f[1])[0]


class KMeansFusion(Fusion):
    """Frequencies of the nearest of k 1-D k-means centres per tile feature (centres fitted on training tiles)."""

    kind = "kmeans"

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        if int(k) < 2:
            raise UserError(f"k-means fusion needs at least 2 clusters (--bins), got {k}")
        self.k = int(k)
        self.centres_: np.ndarray | None = None  # (T, k), sorted

    @property
    def parts(self):
        return [f"c{j}" for j in range(1, self.k + 1)]

    def _fit(self, pooled):
        self.centres_ = np.stack([kmeans_1d(pooled[:, t], self.k) for t in range(pooled.shape[1])])

    def _transform_one(self, m):
        valid = ~np.isnan(m)
        bounds = (self.centres_[:, 1:] + self.centres_[:, :-1]) / 2.0  # (T, k-1)
        idx = (np.where(valid, m, 0.0)[:, :, None] >= bounds[None, :, :]).sum(axis=2)
        return _frequencies(idx, valid, self.k)

    def _bin_number(self, k):
        return k + 1

    def _bin_range(self, t, k):
        c = self.centres_[t]
        lo = -np.inf if k == 0 else (c[k - 1] + c[k]) / 2.0
        hi = np.inf if k == self.k - 1 else (c[k] + c[k + 1]) / 2.0
        return float(lo), float(hi)

    def _params(self):
        return {"k": self.k, "centres_": self.centres_.tolist()}

    @classmethod
    def _from_params(cls, d, n_features, field):
        k = need_int(need_key(d, "k", field), f"{field}.k", lo=2)
        f = cls(k=k)
        f.centres_ = need_array(need_key(d, "centres_", field), f"{field}.centres_", (n_features, k),
                                increasing_rows=True)
        return f


class DeepPCA:
    """Principal components of the ``deep.*`` tile columns: ``mean`` (D,) and ``components`` (k, D), fitted on
    the training slides' tiles only; a tile's projection is ``(x - mean) @ components.T`` (k,)."""

    def __init__(self, columns: Sequence[str], n_components: int = 32) -> None:
        if int(n_components) < 1:
            raise UserError(f"deep feature components must be at least 1, got {n_components}")
        self.columns = list(columns)
        self.n_components = int(n_components)
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None

    @property
    def names(self) -> list[str]:
        """Component column names ``deep.pc01``, ``deep.pc02``, ..."""
        k = self.n_components if self.components is None else len(self.components)
        return [f"deep.pc{i + 1:02d}" for i in range(k)]

    def fit(self, pooled: np.ndarray) -> "DeepPCA":
        """Fit on the pooled training tiles (N, D); tiles with an undefined value are left out."""
        from sklearn.decomposition import PCA

        x = pooled[np.isfinite(pooled).all(axis=1)]
        if len(x) < 2:
            raise CohortError("the training slides have fewer than 2 tiles with deep features to fit their PCA")
        k = min(self.n_components, x.shape[1], len(x) - 1)
        # randomized SVD: the cost grows with k, not with the embedding width squared; seeded, so deterministic
        pca = PCA(n_components=k, svd_solver="randomized", random_state=0).fit(x)
        self.mean, self.components = pca.mean_.astype(np.float64), pca.components_.astype(np.float64)
        return self

    def project(self, m: np.ndarray) -> np.ndarray:
        """Component scores (n, k) of tile values ``m`` (n, D); a tile with an undefined value gets NaN."""
        return (m - self.mean[None, :]) @ self.components.T

    def to_dict(self) -> dict:
        """JSON-able parameters."""
        return {"columns": self.columns, "mean": self.mean.tolist(), "components": self.components.tolist()}

    @classmethod
    def from_dict(cls, d: dict, field: str) -> "DeepPCA":
        """Inverse of :meth:`to_dict`; FieldError naming a bad field."""
        d = need_dict(d, field)
        cols = need_strs(need_key(d, "columns", field), f"{field}.columns", unique=True)
        mean = need_array(need_key(d, "mean", field), f"{field}.mean", (len(cols),))
        comps = need_list(need_key(d, "components", field), f"{field}.components")
        if not comps:
            fail(f"{field}.components", "is empty")
        f = cls(cols, len(comps))
        f.mean = mean
        f.components = need_array(comps, f"{field}.components", (len(comps), len(cols)))
        return f


class ProjectedFusion(Fusion):
    """``inner`` fusion of the hand-crafted tile features and of the first principal components of the
    ``deep.*`` columns (:class:`DeepPCA`, fitted with the fusion: inside every CV fold on its training slides)."""

    def __init__(self, inner: Fusion, n_components: int = 32) -> None:
        super().__init__()
        self.inner = inner
        self.pca = DeepPCA([], n_components)
        self.plain: list[str] = []  # the tile features fused as they are

    @property
    def kind(self) -> str:  # type: ignore[override]
        """The inner fusion's kind (``histogram``, ``mean``, ...)."""
        return self.inner.kind

    @property
    def bins(self) -> int:
        """Bins of an inner histogram fusion."""
        return self.inner.bins

    def fit(self, tables, feature_names):  # noqa: D401 - see base
        """Fit the PCA on the training tiles' deep columns, then the inner fusion on the projected tables."""
        from napari_lnm.config import is_deep

        self.feature_names = list(feature_names)
        self.plain = [f for f in self.feature_names if not is_deep(f)]
        self.pca = DeepPCA([f for f in self.feature_names if is_deep(f)], self.pca.n_components)
        self.pca.fit(_pooled(tables, self.pca.columns))
        self.inner.fit(self._project(tables), self.plain + self.pca.names)
        return self

    def transform(self, tables):  # noqa: D401 - see base
        """Fused vectors (n_slides, P) of the projected tables."""
        if isinstance(tables, (pd.DataFrame, TileTable)):
            tables = [tables]
        self._check_fitted()
        return self.inner.transform(self._project(tables))

    def _project(self, tables) -> list[TileTable]:
        """Each table as a TileTable of the plain features then the deep component scores."""
        return [TileTable.from_matrix(np.concatenate([tile_matrix(t, self.plain),
                                                      self.pca.project(tile_matrix(t, self.pca.columns))], axis=1),
                                      self.plain + self.pca.names) for t in tables]

    def with_tile_values(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` with its tiles' component scores added as ``deep.pc01``, ... columns."""
        scores = self.pca.project(tile_matrix(df, self.pca.columns))
        df = df.drop(columns=self.pca.names, errors="ignore").reset_index(drop=True)  # idempotent
        return pd.concat([df, pd.DataFrame(scores, columns=self.pca.names)], axis=1)

    @property
    def element_names(self) -> list[str]:
        return self.inner.element_names

    @property
    def parts(self) -> list[str]:
        return self.inner.parts

    def element_info(self) -> pd.DataFrame:
        return self.inner.element_info()

    def to_dict(self) -> dict:
        """The inner fusion's parameters (over plain + component names) and the projection."""
        return {**self.inner.to_dict(), "projection": self.pca.to_dict()}


FUSIONS = {
    "histogram": HistogramFusion,
    "mean": MeanFusion,
    "max": MaxFusion,
    "pnorm": PNormFusion,
    "quantile": QuantileFusion,
    "kmeans": KMeansFusion,
}


def make_fusion(kind: str = "histogram", bins: int = 5, edges: str = "quantile", p: float = 3.0) -> Fusion:
    """A new, unfitted fusion by name (``bins`` is also k for k-means)."""
    if kind == "histogram":
        return HistogramFusion(bins=bins, edges=edges)
    if kind == "kmeans":
        return KMeansFusion(k=bins)
    if kind == "pnorm":
        return PNormFusion(p=p)
    if kind in FUSIONS:
        return FUSIONS[kind]()
    raise ValueError(f"unknown fusion {kind!r}; choose one of {sorted(FUSIONS)}")


def fusion_from_dict(d: dict, feature_names: Sequence[str] | None = None, field: str = "fusion") -> Fusion:
    """Rebuild a fitted fusion from :meth:`Fusion.to_dict` output; FieldError naming the first bad field.

    ``feature_names``, when given, are the model's: the fusion must fuse exactly those.
    """
    d = need_dict(d, field)
    need_str(need_key(d, "kind", field), f"{field}.kind", (*FUSIONS, "abmil"))
    names = need_strs(need_key(d, "feature_names", field), f"{field}.feature_names", unique=True)
    if not names:
        fail(f"{field}.feature_names", "is empty")
    pca = None if d.get("projection") is None else DeepPCA.from_dict(d["projection"], f"{field}.projection")
    if pca is not None:  # the inner fusion fuses the plain features and the components
        plain = names[:len(names) - len(pca.names)]
        if names[len(plain):] != pca.names:
            fail(f"{field}.feature_names", "does not end with the projection's component names")
        fused_from = plain + pca.columns
    else:
        fused_from = names
    if feature_names is not None and fused_from != list(feature_names):
        fail(f"{field}.feature_names", "differs from the bundle's feature_names")
    if d["kind"] == "abmil":  # a learned fusion (napari_lnm.mil imports this module)
        from napari_lnm.mil import MILFusion

        kind_cls = MILFusion
    else:
        kind_cls = FUSIONS[d["kind"]]
    f = kind_cls._from_params(d, len(names), field)
    f.feature_names = names
    if pca is None:
        return f
    out = ProjectedFusion(f, len(pca.names))
    out.feature_names, out.plain, out.pca = fused_from, plain, pca
    return out

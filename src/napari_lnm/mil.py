"""Attention-based multiple-instance learning (ABMIL) on per-tile embeddings, as a slide classifier.

A slide is a bag of tiles, each a row of numeric tile columns (e.g. ``deep.000`` ...).
The network is the single-branch gated attention of Ilse et al. (2018) as used in CLAM:

    z = standardised tile row (training-tile mean and scale; NaN -> 0)
    h = dropout(relu(z @ embed_w + embed_b))                      (n_tiles, hidden)
    v, u = split(h @ gate_w + gate_b)                             two (n_tiles, attention) halves
    a = softmax((tanh(v) * sigmoid(u)) @ attn_w)                  (n_tiles,) attention weights
    logit = (a @ h) @ head_w + head_b                             the slide's log-odds

Training (:func:`fit_mil`) runs in PyTorch, float64, one thread, deterministic
algorithms, one bag per step (every training bag once per epoch in a seeded order,
at most ``max_tiles`` tiles sampled per step), BCE-with-logits weighted by class
prevalence, AdamW. The fitted :class:`MILModel` is numpy arrays only: prediction is
numpy (no PyTorch needed), equal to the float64 torch forward pass to ~1e-12.
:func:`train_mil` picks the hyper-parameters from a small grid by patient-grouped
inner cross-validation (:func:`napari_lnm.classifiers.inner_folds`) and refits on all slides.
Saved as ``mil.npz`` (plain float arrays, read with ``allow_pickle=False``) plus JSON metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from napari_lnm._fields import FieldError, check_array, fail, inside, need_dict, need_int, need_key, need_number, \
    need_str, need_strs
from napari_lnm.classifiers import inner_folds
from napari_lnm.errors import CohortError, ModelError, UserError
from napari_lnm.config import MIL_TILE_FEATURE, is_deep
from napari_lnm.fusion import Fusion, tile_matrix
from napari_lnm.progress import check_stop, report

KIND = "abmil"
FILE = "mil.npz"
#: network arrays in the order of the forward pass (the scaler's ``mean`` and ``scale`` come first in the file)
NET_ARRAYS = ("embed_w", "embed_b", "gate_w", "gate_b", "attn_w", "head_w", "head_b")


# --------------------------------------------------------------------------- hyper-parameters
@dataclass(frozen=True)
class MILParams:
    """ABMIL hyper-parameters (JSON-able with :meth:`to_dict` / :meth:`from_dict`)."""

    hidden: int = 64  # tile embedding -> hidden (Linear + ReLU + Dropout)
    attention: int = 32  # gated attention width
    dropout: float = 0.25
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 1e-2
    epochs: int = 40
    max_tiles: int = 256  # tiles sampled per bag per training step; prediction uses all tiles

    def __post_init__(self) -> None:
        """ValueError for a setting the network cannot train with."""
        if min(self.hidden, self.attention, self.epochs, self.max_tiles) < 1:
            raise ValueError(f"MIL hidden, attention, epochs and max_tiles must be at least 1: {self}")
        if not (0.0 <= self.dropout < 1.0 and self.lr > 0 and self.weight_decay >= 0):
            raise ValueError(f"MIL dropout must lie in [0, 1), lr be positive, weight_decay >= 0: {self}")

    def name(self) -> str:
        """Short label: hidden, weight decay and epochs, plus any other setting that differs from the default."""
        parts = [f"h{self.hidden}", f"wd{self.weight_decay:g}", f"e{self.epochs}"]
        default = MILParams()
        for key, tag in (("attention", "a"), ("dropout", "d"), ("lr", "lr"), ("max_tiles", "t")):
            if getattr(self, key) != getattr(default, key):
                parts.append(f"{tag}{getattr(self, key):g}")
        return "-".join(parts)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, field: str = "params") -> "MILParams":
        """Inverse of :meth:`to_dict`; FieldError naming the first bad field (missing keys take the default)."""
        d = need_dict(d, field)
        names = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            need_str(k, f"{field} key", names)
        ints = {k: need_int(d[k], f"{field}.{k}", lo=1) for k in ("hidden", "attention", "epochs", "max_tiles")
                if k in d}
        floats = {k: float(need_number(d[k], f"{field}.{k}", lo=0.0)) for k in ("dropout", "lr", "weight_decay")
                  if k in d}
        try:
            return cls(**ints, **floats)
        except ValueError as exc:
            fail(field, f"is not a usable setting ({exc})")


#: settings for small cohorts (tens to a few hundred slides): default, stronger decay, smaller and shorter
DEFAULT_GRID: tuple[MILParams, ...] = (
    MILParams(),
    MILParams(weight_decay=1e-1),
    MILParams(hidden=32, attention=16, epochs=20),
)


# --------------------------------------------------------------------------- numpy parts
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warning for large |x|


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max())
    return e / e.sum()


def _fit_scaler(bags: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per column over all finite training tile values; two passes so no bag is copied together."""
    n = np.zeros(bags[0].shape[1])
    total = np.zeros_like(n)
    for b in bags:
        ok = np.isfinite(b)
        n += ok.sum(axis=0)
        total += np.where(ok, b, 0.0).sum(axis=0)
    mean = np.where(n > 0, total / np.maximum(n, 1), 0.0)
    ss = np.zeros_like(n)
    for b in bags:
        d = np.where(np.isfinite(b), b - mean, 0.0)
        ss += (d * d).sum(axis=0)
    sd = np.sqrt(ss / np.maximum(n, 1))
    return mean, np.where(sd > 1e-12, sd, 1.0)  # a constant column carries no signal: leave it at 0


def _standardise(bag: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Standardised float64 tile rows; an undefined (NaN, inf) value becomes 0, the training mean."""
    z = (np.asarray(bag, dtype=np.float64) - mean) / scale
    return np.where(np.isfinite(z), z, 0.0)


def _forward(net: dict[str, np.ndarray], z: np.ndarray) -> tuple[float, np.ndarray]:
    """(logit, attention weights) of one standardised bag, numpy float64 (the training graph without dropout)."""
    h = np.maximum(z @ net["embed_w"] + net["embed_b"], 0.0)
    g = h @ net["gate_w"] + net["gate_b"]
    k = g.shape[1] // 2
    a = _softmax((np.tanh(g[:, :k]) * _sigmoid(g[:, k:])) @ net["attn_w"])
    return float((a @ h) @ net["head_w"] + net["head_b"][0]), a


def _init_net(rng: np.random.Generator, n_columns: int, p: MILParams) -> dict[str, np.ndarray]:
    """PyTorch's default Linear initialisation, U(+-1/sqrt(fan_in)), drawn from numpy so it is torch-version free."""
    def u(fan_in: int, *shape: int) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=shape) / np.sqrt(fan_in)

    h, a = p.hidden, p.attention
    return {"embed_w": u(n_columns, n_columns, h), "embed_b": u(n_columns, h), "gate_w": u(h, h, 2 * a),
            "gate_b": u(h, 2 * a), "attn_w": u(a, a), "head_w": u(h, h), "head_b": u(h, 1)}


def _net_shapes(n_columns: int, p: MILParams) -> dict[str, tuple[int, ...]]:
    """Shape of every saved array of a model with ``n_columns`` tile columns and settings ``p``."""
    h, a = p.hidden, p.attention
    return {"mean": (n_columns,), "scale": (n_columns,), "embed_w": (n_columns, h), "embed_b": (h,),
            "gate_w": (h, 2 * a), "gate_b": (2 * a,), "attn_w": (a,), "head_w": (h,), "head_b": (1,)}


def _as_bag(bag: Any, n_columns: int, i: int, n: int) -> np.ndarray:
    """``bag`` as a float64 (n_tiles, n_columns) array; CohortError for another shape."""
    b = np.asarray(bag, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != n_columns:
        raise CohortError(f"slide {i + 1} of {n}: tile array has shape {b.shape}, expected (tiles, {n_columns})")
    return b


def _slide(i: int, n: int, slide_ids: Optional[Sequence[str]]) -> str:
    return f"slide {slide_ids[i]}" if slide_ids is not None else f"slide {i + 1} of {n}"


# --------------------------------------------------------------------------- the fitted model
@dataclass
class MILModel:
    """A fitted ABMIL: tile columns, settings, tile standardisation and network weights, numpy arrays only."""

    columns: list[str]
    params: MILParams
    mean: np.ndarray  # per column, fitted on the training tiles
    scale: np.ndarray
    net: dict[str, np.ndarray]  # NET_ARRAYS, float64

    kind = KIND

    def _bags(self, bags: Sequence[np.ndarray], slide_ids: Optional[Sequence[str]]) -> list[np.ndarray]:
        """Standardised bags; UserError naming a slide without tiles."""
        out = []
        for i, bag in enumerate(bags):
            b = _as_bag(bag, len(self.columns), i, len(bags))
            if len(b) == 0:
                raise UserError(f"{_slide(i, len(bags), slide_ids)} has no tiles: the MIL classifier needs at least "
                                "one tile per slide")
            out.append(_standardise(b, self.mean, self.scale))
        return out

    def predict_logit(self, bags: Sequence[np.ndarray], slide_ids: Optional[Sequence[str]] = None) -> np.ndarray:
        """(n,) log-odds of metastasis, one per bag, from all of its tiles."""
        return np.array([_forward(self.net, z)[0] for z in self._bags(bags, slide_ids)], dtype=np.float64)

    def predict_proba(self, bags: Sequence[np.ndarray], slide_ids: Optional[Sequence[str]] = None) -> np.ndarray:
        """(n,) probability of metastasis."""
        return _sigmoid(self.predict_logit(bags, slide_ids))

    def attention(self, bag: np.ndarray) -> np.ndarray:
        """(n_tiles,) attention weights (softmax, sum 1) of every tile of one bag: the key tiles weigh most."""
        return _forward(self.net, self._bags([bag], None)[0])[1]

    def tile_logits(self, bag: np.ndarray) -> np.ndarray:
        """(n_tiles,) each tile's share of the slide's log-odds, attention x (tile embedding . head); they sum to
        the log-odds minus the head's bias."""
        z = self._bags([bag], None)[0]
        h = np.maximum(z @ self.net["embed_w"] + self.net["embed_b"], 0.0)
        return self.attention(bag) * (h @ self.net["head_w"])

    def to_dict(self) -> dict:
        """JSON-able form with every array as nested lists (for a bundle.json field)."""
        return {"kind": KIND, "params": self.params.to_dict(), "columns": list(self.columns),
                "arrays": {k: np.asarray(v, np.float64).tolist() for k, v in self.arrays().items()}}

    @classmethod
    def from_dict(cls, d: Any, field: str) -> "MILModel":
        """Inverse of :meth:`to_dict`; FieldError naming a bad field."""
        d = need_dict(d, field)
        params, columns = _read_header(d, field)
        raw = need_dict(need_key(d, "arrays", field), f"{field}.arrays")
        try:
            arrays = {k: np.asarray(v, dtype=np.float64) for k, v in raw.items()}
        except (TypeError, ValueError):
            fail(f"{field}.arrays", "holds something other than arrays of numbers")
        try:
            _check_arrays(arrays, _net_shapes(len(columns), params))
        except FieldError as exc:
            raise FieldError(f"{field}.arrays.{exc}") from None
        return cls(columns=columns, params=params, mean=arrays["mean"], scale=arrays["scale"],
                   net={k: arrays[k] for k in NET_ARRAYS})

    def arrays(self) -> dict[str, np.ndarray]:
        """Every saved array by name: the scaler's mean and scale, then the network."""
        return {"mean": self.mean, "scale": self.scale, **{k: self.net[k] for k in NET_ARRAYS}}

    def save(self, d: Path) -> dict:
        """Write ``d / mil.npz`` (plain float64 arrays); return JSON-able metadata."""
        arrays = self.arrays()
        np.savez(Path(d) / FILE, **{k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()})
        return {"kind": KIND, "file": FILE, "params": self.params.to_dict(), "columns": list(self.columns),
                "arrays": {k: list(v.shape) for k, v in arrays.items()}}

    @classmethod
    def load(cls, d: Path, meta: dict, field: str = "classifier") -> "MILModel":
        """Read a model saved by :meth:`save`; FieldError naming a bad field, ModelError naming a damaged file."""
        meta = need_dict(meta, field)
        params, columns = _read_header(meta, field)
        shapes = _net_shapes(len(columns), params)
        _check_meta_shapes(meta.get("arrays", None), shapes, f"{field}.arrays")
        path = inside(Path(d), need_key(meta, "file", field), f"{field}.file")
        if not path.is_file():
            raise ModelError(f"{d}: MIL classifier file {path.name} missing")
        arrays = _read_npz(path)
        try:
            _check_arrays(arrays, shapes)
        except FieldError as exc:
            raise ModelError(f"{path}: {exc}") from None
        net = {k: arrays[k].astype(np.float64) for k in NET_ARRAYS}
        return cls(columns=columns, params=params, mean=arrays["mean"].astype(np.float64),
                   scale=arrays["scale"].astype(np.float64), net=net)


def _read_header(d: dict, field: str) -> tuple[MILParams, list[str]]:
    """(settings, tile columns) of a saved model's metadata; FieldError naming a bad field."""
    need_str(need_key(d, "kind", field), f"{field}.kind", (KIND,))
    params = MILParams.from_dict(need_key(d, "params", field), f"{field}.params")
    columns = need_strs(need_key(d, "columns", field), f"{field}.columns", unique=True)
    if not columns:
        fail(f"{field}.columns", "is empty")
    return params, columns


def _check_meta_shapes(v: Any, shapes: dict[str, tuple[int, ...]], field: str) -> None:
    """FieldError unless the metadata's array shapes (when given) are the ones its params and columns imply."""
    if v is None:
        return
    v = need_dict(v, field)
    for k, shape in shapes.items():
        got = need_key(v, k, field)
        if not isinstance(got, list) or [need_int(s, f"{field}.{k}", lo=0) for s in got] != list(shape):
            fail(f"{field}.{k}", f"is {got!r}, but params and columns give {list(shape)}")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, without pickle; ModelError naming the file when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as a:
            return {k: a[k] for k in a.files}
    except Exception as exc:  # zip, header and object-array (pickle) errors of a damaged or foreign file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path}: not a readable .npz file ({type(exc).__name__}: {first})") from None


def _check_arrays(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    """FieldError unless ``arrays`` holds exactly the expected float arrays, finite, of the expected shapes."""
    extra = sorted(set(arrays) - set(shapes))
    if extra:
        fail(extra[0], "is not an array of an ABMIL model")
    for k, shape in shapes.items():
        if k not in arrays:
            fail(k, "is missing")
        check_array(arrays[k], k, shape)
    if np.any(arrays["scale"] <= 0):
        fail("scale", "must be positive")


# --------------------------------------------------------------------------- bags
def bags_from_tables(tables: Sequence[pd.DataFrame], columns: Sequence[str]) -> list[np.ndarray]:
    """One float32 (n_tiles, len(columns)) bag per slide's tile table (inf -> NaN; missing columns -> CohortError)."""
    return [tile_matrix(t, list(columns)).astype(np.float32) for t in tables]


def _training_set(bags: Sequence[np.ndarray], y: Any, n_columns: Optional[int]) -> tuple[list[np.ndarray],
                                                                                          np.ndarray]:
    """Float64 bags and 0/1 labels fit to train on; CohortError for empty bags, other labels or one class."""
    n = len(bags)
    y = np.asarray(y)
    if y.shape != (n,):
        raise CohortError(f"{y.size} labels for {n} slides")
    if n == 0:
        raise CohortError("no training slides for the MIL classifier")
    if not np.isin(y, (0, 1)).all():
        raise CohortError("MIL labels must be 0 or 1")
    y = y.astype(int)
    if np.unique(y).size < 2:
        raise CohortError("the MIL classifier needs slides of both classes to train")
    if n_columns is None:
        n_columns = np.asarray(bags[0]).shape[-1] if np.ndim(bags[0]) == 2 else -1
    out = [_as_bag(b, n_columns, i, n) for i, b in enumerate(bags)]
    for i, b in enumerate(out):
        if len(b) == 0:
            raise CohortError(f"slide {i + 1} of {n} has no tiles: the MIL classifier cannot train on it")
    return out, y


# --------------------------------------------------------------------------- training (PyTorch)
def _torch() -> Any:
    """Import torch, or a ModelError saying how to install it."""
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise ModelError("the abmil classifier needs PyTorch to train: pip install 'napari-lnm[cnn]'") from None
    return torch


@contextlib.contextmanager
def _torch_settings(torch: Any) -> Iterator[None]:
    """One thread and deterministic algorithms inside, the caller's settings restored after (even on error)."""
    threads = torch.get_num_threads()
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)  # bags are small: threads cost more than they save, and sums stay in one order
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.set_num_threads(threads)


def _train_net(zs: Sequence[np.ndarray], y: np.ndarray, p: MILParams, seed: int,
               should_stop: Optional[Callable[[], bool]]) -> dict[str, np.ndarray]:
    """Network weights trained on standardised bags ``zs`` (float64, one bag per step)."""
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(seed)  # order, tile samples and initial weights
    init = _init_net(rng, zs[0].shape[1], p)
    counts = np.bincount(y, minlength=2)
    weight = len(y) / (2.0 * counts[y])  # balanced: each class weighs half of the loss however rare it is
    with _torch_settings(torch):
        gen = torch.Generator().manual_seed(int(seed))  # dropout masks; the global torch RNG is left alone
        w = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
        opt = torch.optim.AdamW(list(w.values()), lr=p.lr, weight_decay=p.weight_decay, fused=True)
        tz = [torch.from_numpy(z) for z in zs]
        targets = [torch.tensor([float(v)], dtype=torch.float64) for v in y]
        keep = 1.0 - p.dropout
        for _ in range(p.epochs):
            check_stop(should_stop)
            for i in rng.permutation(len(tz)):
                z = tz[i]
                if len(z) > p.max_tiles:  # a fresh subset each step: more tiles seen, bounded cost
                    z = z[torch.from_numpy(np.sort(rng.choice(len(z), p.max_tiles, replace=False)))]
                h = torch.relu(torch.addmm(w["embed_b"], z, w["embed_w"]))
                if p.dropout > 0:
                    h = h * torch.empty_like(h).bernoulli_(keep, generator=gen) / keep
                g = torch.addmm(w["gate_b"], h, w["gate_w"])
                v, u = g.split(p.attention, dim=1)
                a = torch.softmax((torch.tanh(v) * torch.sigmoid(u)) @ w["attn_w"], dim=0)
                logit = (a @ h) @ w["head_w"] + w["head_b"]
                loss = F.binary_cross_entropy_with_logits(logit, targets[i]) * float(weight[i])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return {k: t.detach().numpy().copy() for k, t in w.items()}


def fit_mil(bags: Sequence[np.ndarray], y: Any, columns: Sequence[str], params: MILParams = MILParams(),
            seed: int = 0, should_stop: Optional[Callable[[], bool]] = None) -> MILModel:
    """Fit an ABMIL on bags of tiles (one per slide) and 0/1 labels; deterministic for a given ``seed``."""
    columns = [str(c) for c in columns]
    bags, y = _training_set(bags, y, len(columns))
    mean, scale = _fit_scaler(bags)
    zs = [_standardise(b, mean, scale) for b in bags]
    net = _train_net(zs, y, params, int(seed), should_stop)
    return MILModel(columns=columns, params=params, mean=mean, scale=scale, net=net)


def _check_grid(grid: Sequence[MILParams]) -> list[MILParams]:
    """The grid as a list; ValueError when it is empty or two settings share a name."""
    grid = list(grid)
    names = [g.name() for g in grid]
    if not grid or len(set(names)) != len(names):
        raise ValueError(f"the MIL grid must hold at least one setting, each with its own name: {names}")
    return grid


def inner_cv_scores(bags: Sequence[np.ndarray], y: Any, groups: Any = None, grid: Sequence[MILParams] = DEFAULT_GRID,
                    folds: int = 3, seed: int = 0, should_stop: Optional[Callable[[], bool]] = None,
                    progress=None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per setting name: mean inner-fold AUC and out-of-fold probabilities (patient-grouped folds with ``groups``)."""
    from napari_lnm.model import roc_auc  # here, not at the top: the model module imports this one

    grid = _check_grid(grid)
    bags, y = _training_set(bags, y, None)
    if np.bincount(y).min() < 2:
        raise CohortError("inner cross-validation of the MIL classifier needs at least 2 slides of each class")
    splits, _ = inner_folds(y, groups, wanted=folds, seed=seed)
    columns = [str(j) for j in range(bags[0].shape[1])]
    scores: dict[str, float] = {}
    oof: dict[str, np.ndarray] = {}
    total, done = len(grid) * len(splits), 0
    for p in grid:
        prob = np.full(len(y), np.nan)
        aucs = []
        for k, (tr, te) in enumerate(splits):
            report(progress, done, total, f"MIL {p.name()} inner fold {k + 1}/{len(splits)}")
            m = fit_mil([bags[i] for i in tr], y[tr], columns, p, seed, should_stop)
            prob[te] = m.predict_proba([bags[i] for i in te])
            aucs.append(roc_auc(y[te], prob[te]))
            done += 1
        scores[p.name()] = float(np.mean(aucs))
        oof[p.name()] = prob
    report(progress, done, total, "MIL inner cross-validation done")
    return scores, oof


def train_mil(bags: Sequence[np.ndarray], y: Any, columns: Sequence[str], groups: Any = None,
              grid: Sequence[MILParams] = DEFAULT_GRID, folds: int = 3, seed: int = 0,
              should_stop: Optional[Callable[[], bool]] = None, progress=None) -> tuple[MILModel, dict]:
    """Choose the setting by inner CV (best mean AUC, the first on a tie; none with one setting), fit on all slides.

    The info dict: ``chosen`` (name), ``params`` (its dict), ``scores`` (name -> mean inner AUC),
    ``oof`` (inner out-of-fold probabilities of the chosen setting, None without inner CV) and
    ``grouped`` (whether the inner folds kept each patient's slides together).
    """
    grid = _check_grid(grid)
    scores: dict[str, float] = {}
    oof = None
    grouped = False
    chosen = grid[0]
    if len(grid) > 1:
        scores, oofs = inner_cv_scores(bags, y, groups, grid, folds, seed, should_stop, progress)
        best = max(range(len(grid)), key=lambda i: (np.nan_to_num(scores[grid[i].name()], nan=-1.0), -i))
        chosen = grid[best]
        oof = oofs[chosen.name()]
        grouped = inner_folds(np.asarray(y).astype(int), groups, wanted=folds, seed=seed)[1]
    model = fit_mil(bags, y, columns, chosen, seed, should_stop)
    return model, {"chosen": chosen.name(), "params": chosen.to_dict(), "scores": scores, "oof": oof,
                   "grouped": grouped}


# --------------------------------------------------------------------------- ABMIL as the fusion of a bundle
class MILFusion(Fusion):
    """ABMIL as a learned fusion: a slide's one element ``deep.abmil|logit`` is its ABMIL log-odds.

    The bags are the ``deep.*`` columns when the tables have them, else every tile feature.
    Unlike the other fusions it learns from labels (:meth:`fit_labelled`), so a bundle fits it
    inside every CV fold on that fold's training slides; its settings come from :func:`train_mil`'s
    inner CV. Per tile, :meth:`with_tile_values` adds ``deep.abmil`` (the tile's share of the
    log-odds: the key tiles) and ``deep.attention`` (its attention weight x the number of tiles).
    """

    kind = KIND
    FEATURE = MIL_TILE_FEATURE

    def __init__(self, grid: Sequence[MILParams] = DEFAULT_GRID, folds: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.grid, self.folds, self.seed = tuple(grid), int(folds), int(seed)
        self.model: Optional[MILModel] = None
        self.info: dict = {}
        self._oof: Optional[np.ndarray] = None  # inner-CV out-of-fold probabilities of the training slides

    def fit(self, tables, feature_names):  # noqa: D401 - see base
        """Not available: the ABMIL network learns from the slides' labels (:meth:`fit_labelled`)."""
        raise CohortError("the ABMIL fusion learns from labels; fit it with fit_labelled(tables, y, feature_names)")

    def fit_labelled(self, tables, y, feature_names: Sequence[str], groups: Any = None) -> "MILFusion":
        """Train the network (settings by inner CV) on the training slides' tiles and labels."""
        self.feature_names = list(feature_names)
        columns = [f for f in self.feature_names if is_deep(f)] or self.feature_names
        self.model, info = train_mil(bags_from_tables(tables, columns), y, columns, groups, self.grid, self.folds,
                                     self.seed)
        self.info = {k: v for k, v in info.items() if k != "oof"}
        self._oof = None if info.get("oof") is None else np.asarray(info["oof"], dtype=np.float64)
        return self

    def training_values(self, tables) -> np.ndarray:
        """(n, 1) log-odds of the training slides for the head fitted on them: the inner-CV out-of-fold ones when
        the settings were chosen by inner CV (so the head is a Platt calibration on honest predictions), else
        the fitted network's own."""
        if self._oof is None or len(self._oof) != len(tables) or not np.isfinite(self._oof).all():
            return self.transform(tables)
        p = np.clip(self._oof, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))[:, None]

    def transform(self, tables):  # noqa: D401 - see base
        """(n_slides, 1) ABMIL log-odds."""
        if isinstance(tables, pd.DataFrame):
            tables = [tables]
        self._check_fitted()
        if not len(tables):
            return np.empty((0, 1))
        return self.model.predict_logit(bags_from_tables(tables, self.model.columns))[:, None]

    @property
    def parts(self) -> list[str]:
        return ["logit"]

    @property
    def element_names(self) -> list[str]:
        return [f"{self.FEATURE}|logit"]

    def element_info(self) -> pd.DataFrame:
        return pd.DataFrame([dict(element=self.element_names[0], feature=self.FEATURE, bin=0, bin_lo=np.nan,
                                  bin_hi=np.nan, stat="logit")],
                            columns=["element", "feature", "bin", "bin_lo", "bin_hi", "stat"])

    def with_tile_values(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` with each tile's share of the log-odds (``deep.abmil``) and relative attention (``deep.attention``)."""
        bag = bags_from_tables([df], self.model.columns)[0]
        extra = pd.DataFrame({self.FEATURE: self.model.tile_logits(bag),
                              "deep.attention": self.model.attention(bag) * len(bag)})
        df = df.drop(columns=list(extra.columns), errors="ignore").reset_index(drop=True)  # idempotent
        return pd.concat([df, extra], axis=1)

    def _check_fitted(self) -> None:
        if self.model is None:
            raise RuntimeError("MILFusion is not fitted")

    def to_dict(self) -> dict:
        """JSON-able: the tile features, the chosen settings' inner-CV record and the fitted network."""
        return {"kind": KIND, "feature_names": list(self.feature_names), "seed": self.seed, "folds": self.folds,
                "info": self.info, "model": self.model.to_dict()}

    @classmethod
    def _from_params(cls, d: dict, n_features: int, field: str) -> "MILFusion":
        f = cls(folds=need_int(d.get("folds", 3), f"{field}.folds", lo=2), seed=need_int(d.get("seed", 0),
                                                                                         f"{field}.seed"))
        f.model = MILModel.from_dict(need_key(d, "model", field), f"{field}.model")
        f.info = need_dict(d.get("info") or {}, f"{field}.info")
        return f

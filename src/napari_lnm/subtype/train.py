"""Training the subtype CNN: tiles inherit their slide's subtype; validation split by slide."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from napari_lnm.cohort import read_cohort
from napari_lnm.config import TilingConfig
from napari_lnm.errors import CohortError, UserError
from napari_lnm.progress import ProgressFn, StopFn, check_stop, report
from napari_lnm.provenance import read_provenance, tiling_from_provenance
from napari_lnm.subtype._vote import SUBTYPES, vote
from napari_lnm.subtype.model import SubtypeModel, resize_tiles

# Ruifrok & Johnston H&E-DAB stain vectors (rows: H, E, DAB; columns: R, G, B OD), as in skimage
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float64)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


# ---------------------------------------------------------------------------------------- augmentation
def stain_augment(x: torch.Tensor, generator: torch.Generator, sigma_alpha: float = 0.05,
                  sigma_beta: float = 0.05) -> torch.Tensor:
    """Random HED perturbation of RGB in [0, 1], (N, 3, H, W): per image and stain, c' = c*a + b in OD units.

    ``a ~ U(1-sigma_alpha, 1+sigma_alpha)``, ``b ~ U(-sigma_beta, sigma_beta)`` (Tellez et al. "HED-light").
    """
    n = x.shape[0]
    dev, dt = x.device, x.dtype
    od = -torch.log(x.clamp(min=1.0 / 255.0))                      # (N, 3, H, W) OD (natural log)
    m_in = torch.as_tensor(_HED_FROM_RGB, dtype=dt, device=dev)
    m_out = torch.as_tensor(_RGB_FROM_HED, dtype=dt, device=dev)
    conc = torch.einsum("nchw,cs->nshw", od, m_in)                 # stain concentrations
    a = 1.0 + (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1).to(dev, dt) * sigma_alpha
    b = (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1).to(dev, dt) * sigma_beta
    od2 = torch.einsum("nshw,sc->nchw", conc * a + b, m_out).clamp(min=0.0)
    return torch.exp(-od2).clamp(0.0, 1.0)


def augment_batch(rgb: torch.Tensor, generator: torch.Generator, stain: bool = True) -> torch.Tensor:
    """uint8 RGB (N, H, W, 3) -> float RGB in [0, 1] (N, 3, H, W) with random flips, 90° rotations and stain jitter."""
    x = rgb.permute(0, 3, 1, 2).float().div_(255.0)
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    rot = torch.randint(0, 4, (n,), generator=generator)
    x = torch.where(flip.to(x.device).view(n, 1, 1, 1), x.flip(-1), x)
    out = x.clone()
    for k in (1, 2, 3):
        sel = (rot == k).nonzero().flatten().to(x.device)
        if len(sel):
            out[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
    if stain:
        out = stain_augment(out, generator)
    return out


# ---------------------------------------------------------------------------------------- cohort & tiles
def _cohort_name(cohort: Any) -> str:
    """How to name the cohort in a message: its CSV path, or 'cohort table'."""
    return "cohort table" if isinstance(cohort, pd.DataFrame) else str(cohort)


def _read_cohort(cohort: Any) -> pd.DataFrame:
    """Cohort rows with ``slide_id`` and a known ``subtype`` (``path`` resolved against the CSV's folder).

    The LNM ``label`` may be absent or blank and slide files need not exist when tiles come from a cache.
    """
    if isinstance(cohort, pd.DataFrame):
        df, name = cohort.reset_index(drop=True), "cohort table"
    else:
        df, name = read_cohort(cohort, check_files=False, required=("slide_id", "subtype")), str(cohort)
    for col in ("slide_id", "subtype"):
        if col not in df.columns:
            raise CohortError(f"{name}: no {col!r} column (the subtype CNN needs each slide's known subtype)")
    df["slide_id"] = df["slide_id"].astype(str).str.strip()
    sub = df["subtype"].where(df["subtype"].notna(), "").astype(str).str.strip().str.upper()
    df = df[(sub != "") & (sub != "NAN")].copy()
    df["subtype"] = sub[df.index]
    if (df["slide_id"] == "").any():
        raise CohortError(f"{name}: a row has an empty slide_id")
    if df["slide_id"].duplicated().any():
        dup = df.loc[df["slide_id"].duplicated(), "slide_id"].iloc[0]
        raise CohortError(f"{name}: slide_id {dup!r} appears more than once")
    return df.reset_index(drop=True)


def _check_tiles(arr: Any, where: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or a.shape[1] != a.shape[2]:
        raise CohortError(f"{where}: tiles must be uint8 (N, S, S, 3), got {a.dtype} {a.shape}")
    return a


def _sample(n: int, k: Optional[int], seed: int, key: str) -> np.ndarray:
    """Sorted indices of at most ``k`` of ``n`` items, drawn with a seed derived from ``seed`` and ``key``."""
    if k is None or n <= k:
        return np.arange(n)
    rng = np.random.default_rng([seed, *key.encode("utf-8")])
    return np.sort(rng.choice(n, size=k, replace=False))


#: sidecar in a tile cache folder recording the tiling the cached tiles were read with
CACHE_INFO = "tiling.json"


def source_tiling(tiles_source: Any) -> Any:
    """The ``TilingConfig`` recorded in a tile cache (``tiling.json``) or in the first features Parquet, or None."""
    if tiles_source is None or isinstance(tiles_source, Mapping) or not Path(tiles_source).is_dir():
        return None
    info = Path(tiles_source) / CACHE_INFO
    if info.is_file():
        try:
            return tiling_from_provenance(json.loads(info.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise CohortError(f"{info}: unreadable tiling record ({exc})") from None
    for pq in sorted(Path(tiles_source).glob("*.parquet")):
        return tiling_from_provenance(read_provenance(pq))
    return None


def _read_tiles_from_slide(path: str, coords: Optional[pd.DataFrame], config: Any, k: Optional[int], seed: int,
                           key: str, size: int, mpp: Optional[float] = None) -> np.ndarray:
    from napari_lnm import io, tiling

    with io.open_slide(path, mpp=mpp) as slide:
        if coords is None:
            coords = tiling.tile_slide(slide, config=config)
        idx = _sample(len(coords), k, seed, key)
        xs = np.asarray(coords["x"], np.int64)[idx]
        ys = np.asarray(coords["y"], np.int64)[idx]
        out = np.empty((len(idx), size, size, 3), np.uint8)
        for i, (x, y) in enumerate(zip(xs, ys)):
            out[i] = resize_tiles(tiling.read_tile(slide, int(x), int(y), config), size)[0]
    return out


def load_tile_sets(tiles_source: Any, cohort: Any, input_size: int = 128, max_tiles_per_slide: Optional[int] = 64,
                   tiling_config: Any = None, seed: int = 0, cache_dir: Optional[str | Path] = None,
                   progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None
                   ) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Tiles per slide as uint8 (n, input_size, input_size, 3), and the cohort rows that have tiles.

    ``tiles_source`` is one of: a mapping ``slide_id -> uint8 (n, S, S, 3)``; a folder holding
    ``<slide_id>.npy`` tile stacks (a cache) or ``<slide_id>.parquet`` feature tables from
    ``extract`` (their ``x, y`` give the tiles, read from the cohort's slide ``path`` with the tiling
    config stored in the Parquet; a different explicit ``tiling_config`` is an error); or None to
    tile every slide with ``tiling_config`` (default ``TilingConfig()``).
    At most ``max_tiles_per_slide`` tiles per slide are drawn with ``seed``.  With ``cache_dir``
    the tiles read from slides are saved as ``<cache_dir>/<slide_id>.npy`` for the next run.
    """
    df = _read_cohort(cohort)
    if len(df) == 0:
        raise CohortError(f"{_cohort_name(cohort)}: no slide has a subtype")
    src_dir = None
    if tiles_source is not None and not isinstance(tiles_source, Mapping):
        src_dir = Path(tiles_source)
        if not src_dir.is_dir():
            raise CohortError(f"{src_dir}: tiles/features folder not found")
    out: dict[str, np.ndarray] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        check_stop(should_stop)
        sid = str(row.slide_id)
        if isinstance(tiles_source, Mapping):
            if sid not in tiles_source:
                continue
            a = _check_tiles(tiles_source[sid], f"tiles of slide {sid}")
            a = a[_sample(len(a), max_tiles_per_slide, seed, sid)]
        elif src_dir is not None and (src_dir / f"{sid}.npy").is_file():
            f = src_dir / f"{sid}.npy"
            try:
                a = np.load(f, mmap_mode="r", allow_pickle=False)
            except Exception as exc:
                raise CohortError(f"{f}: not a readable .npy tile stack ({exc})") from None
            a = _check_tiles(a, str(f))
            a = np.ascontiguousarray(a[_sample(len(a), max_tiles_per_slide, seed, sid)])
        else:
            coords, prov = None, {}
            cfg = tiling_config
            if src_dir is not None:
                pq = src_dir / f"{sid}.parquet"
                if not pq.is_file():
                    raise CohortError(f"{src_dir}: no {sid}.npy or {sid}.parquet for slide {sid}")
                try:
                    coords = pd.read_parquet(pq, columns=["x", "y"])
                except Exception as exc:
                    raise CohortError(f"{pq}: cannot read tile coordinates x, y ({exc})") from None
                prov = read_provenance(pq) or {}
                pcfg = tiling_from_provenance(prov)
                if pcfg is not None:
                    if cfg is not None and (float(cfg.magnification), int(cfg.tile_size)) != (
                            float(pcfg.magnification), int(pcfg.tile_size)):
                        raise CohortError(
                            f"{pq}: tiles were extracted at {pcfg.magnification:g}x, {pcfg.tile_size} px but "
                            f"{cfg.magnification:g}x, {cfg.tile_size} px was asked for; omit the tiling options")
                    cfg = pcfg
            path = str(row.path) if "path" in df.columns and str(row.path) else prov.get("slide_path")
            if not path:
                raise CohortError(f"{_cohort_name(cohort)}: no 'path' for slide {sid}, and no tile stack for it")
            if cfg is None:
                from napari_lnm.tiling import TilingConfig

                cfg = TilingConfig(seed=seed)
            mpp = prov.get("mpp_override")
            if mpp is None and "mpp" in df.columns and str(row.mpp).strip() not in ("", "nan", "None"):
                mpp = float(row.mpp)
            a = _read_tiles_from_slide(path, coords, cfg, max_tiles_per_slide, seed, sid, input_size, mpp)
            if cache_dir is not None:
                from napari_lnm._atomic import atomic_path, write_text_atomic

                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                with atomic_path(Path(cache_dir) / f"{sid}.npy") as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, a, allow_pickle=False)
                write_text_atomic(Path(cache_dir) / CACHE_INFO, json.dumps({"tiling": cfg.to_dict()}))
        if len(a):
            out[sid] = resize_tiles(a, input_size)
        report(progress, i + 1, len(df), f"subtype: loading tiles of {sid}")
    df = df[df["slide_id"].isin(out)].reset_index(drop=True)
    if len(df) == 0:
        where = "the given tile arrays" if isinstance(tiles_source, Mapping) else str(tiles_source or "the slides")
        raise CohortError(f"{_cohort_name(cohort)}: no tiles found for any of its slides in {where}")
    return out, df


def split_slides(slide_ids: Sequence[str], labels: Sequence[str], val_fraction: float = 0.25,
                 seed: int = 0, groups: Optional[Sequence[str]] = None) -> tuple[list[str], list[str]]:
    """Split slides (never tiles) into train / validation, stratified by subtype, deterministic in ``seed``.

    Each subtype with at least two units gives ``max(1, round(n * val_fraction))`` (at most n-1)
    units to validation; a subtype with one unit stays in training.  A unit is a slide, or, when
    ``groups`` (e.g. ``patient_id``) is given, all slides of one patient, so a patient's slides
    never sit on both sides (a patient is stratified by its first slide's subtype).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = [str(s) for s in slide_ids]
    labs = [str(x) for x in labels]
    units = ids if groups is None else [str(g) for g in groups]
    unit_label: dict[str, str] = {}
    for u, lab in zip(units, labs):
        unit_label.setdefault(u, lab)
    rng = np.random.default_rng(seed)
    val_units: set[str] = set()
    if val_fraction > 0:
        for lab in sorted(set(unit_label.values())):
            members = sorted(u for u, v in unit_label.items() if v == lab)
            if len(members) < 2:
                continue
            k = min(len(members) - 1, max(1, int(round(len(members) * val_fraction))))
            val_units.update(members[j] for j in rng.permutation(len(members))[:k])
    train = [s for s, u in zip(ids, units) if u not in val_units]
    return train, [s for s, u in zip(ids, units) if u in val_units]


# ---------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """Outcome of :func:`train_subtype`: the model, loss history and validation metrics (by slide)."""

    model: SubtypeModel
    classes: tuple[str, ...]
    train_slides: list[str]
    val_slides: list[str]
    n_train_tiles: int
    n_val_tiles: int
    epoch_losses: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    tile_accuracy: Optional[float] = None
    slide_accuracy: Optional[float] = None
    confusion: Optional[list[list[int]]] = None        # slide level, rows true, columns predicted
    tile_confusion: Optional[list[list[int]]] = None   # tile level, rows true, columns predicted
    val_predictions: dict[str, str] = field(default_factory=dict)
    seconds_per_epoch: float = 0.0
    device: str = "cpu"
    threads: int = 1
    out_dir: Optional[str] = None

    @property
    def seconds_per_epoch_per_1000_tiles(self) -> float:
        """Training time (s) of one epoch scaled to 1000 tiles."""
        return self.seconds_per_epoch * 1000.0 / max(1, self.n_train_tiles)

    def to_dict(self) -> dict:
        """JSON-ready summary (no model)."""
        return {
            "classes": list(self.classes), "train_slides": self.train_slides, "val_slides": self.val_slides,
            "n_train_tiles": self.n_train_tiles, "n_val_tiles": self.n_val_tiles,
            "epoch_losses": [round(v, 5) for v in self.epoch_losses],
            "tile_accuracy": self.tile_accuracy, "slide_accuracy": self.slide_accuracy,
            "confusion_slides": self.confusion, "confusion_tiles": self.tile_confusion,
            "val_predictions": self.val_predictions, "seconds_per_epoch": round(self.seconds_per_epoch, 3),
            "seconds_per_epoch_per_1000_tiles": round(self.seconds_per_epoch_per_1000_tiles, 3),
            "device": self.device, "threads": self.threads,
        }

    def format_report(self) -> str:
        """Human-readable report: sizes, losses, accuracies and the slide-level confusion matrix."""
        lines = [f"subtype CNN ({self.model.arch}, {self.model.config['n_parameters']} parameters) on {self.device}, "
                 f"{self.threads} CPU threads",
                 f"train: {len(self.train_slides)} slides / {self.n_train_tiles} tiles; "
                 f"validation: {len(self.val_slides)} slides / {self.n_val_tiles} tiles",
                 "loss per epoch: " + " ".join(f"{v:.3f}" for v in self.epoch_losses),
                 f"time per epoch: {self.seconds_per_epoch:.1f} s "
                 f"({self.seconds_per_epoch_per_1000_tiles:.1f} s per 1000 tiles)"]
        if self.tile_accuracy is None:
            lines.append("no validation slides (val_fraction=0 or too few slides per subtype)")
            return "\n".join(lines)
        lines.append(f"validation accuracy: tile {self.tile_accuracy:.3f}, "
                     f"slide (majority vote) {self.slide_accuracy:.3f}")
        for title, cm in (("slides", self.confusion), ("tiles", self.tile_confusion)):
            lines.append(f"confusion ({title}; rows true, columns predicted):")
            lines.append("        " + " ".join(f"{c:>6}" for c in self.classes))
            for c, r in zip(self.classes, cm or []):
                lines.append(f"{c:>7} " + " ".join(f"{v:>6d}" for v in r))
        return "\n".join(lines)


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed torch and switch on deterministic algorithms for the block, restoring the previous mode."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = torch.backends.cudnn.benchmark
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_cudnn


def _confusion(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def train_subtype(tiles_source: Any, cohort: Any, out_dir: Optional[str | Path] = None, arch: str = "small",
                  epochs: int = 10, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, val_fraction: float = 0.25,
                  max_tiles_per_slide: Optional[int] = 64, input_size: Optional[int] = None,
                  weights: Optional[str | Path] = None, tiling_config: Any = None,
                  cache_dir: Optional[str | Path] = None, augment: bool = True, weight_decay: float = 1e-4,
                  classes: Sequence[str] = SUBTYPES, device: Optional[str] = None,
                  progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None) -> TrainResult:
    """Train the CNN on tiles labelled with their slide's subtype; validate by slide; save to ``out_dir``.

    Cross-entropy (class-balanced by tile counts), AdamW with cosine decay, flips / 90° rotations /
    HED stain jitter.  Reports tile-level and slide-level (majority vote) accuracy and confusion
    matrices on held-out slides.  Deterministic for a given ``seed`` on one device.
    """
    if epochs < 1 or batch_size < 2 or lr <= 0:
        raise UserError(f"need epochs >= 1, batch_size >= 2 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    classes = tuple(classes)
    cls_index = {c: i for i, c in enumerate(classes)}
    with _deterministic(seed):
        if tiling_config is None:
            tiling_config = source_tiling(tiles_source)
        if tiling_config is None:
            tiling_config = TilingConfig(seed=seed)
        mag = float(getattr(tiling_config, "magnification", 20.0))
        tsize = int(getattr(tiling_config, "tile_size", 512))
        model = SubtypeModel.new(arch, classes, input_size, magnification=mag, tile_size=tsize, weights=weights,
                                 seed=seed, device=device)
        size = model.input_size
        bad = sorted(set(_read_cohort(cohort)["subtype"]) - set(classes))
        if bad:
            raise CohortError(f"{_cohort_name(cohort)}: unknown subtype(s) {', '.join(bad)}; "
                              f"expected {', '.join(classes)}")
        tiles, df = load_tile_sets(tiles_source, cohort, size, max_tiles_per_slide, tiling_config, seed, cache_dir,
                                   progress=progress, should_stop=should_stop)
        label_of = dict(zip(df["slide_id"], df["subtype"]))
        groups = None
        if "patient_id" in df.columns:  # a slide without a patient id is its own patient
            pid = df["patient_id"].astype(object).where(df["patient_id"].notna(), None)
            groups = [str(p) if p is not None and str(p).strip() else f"slide:{s}"
                      for p, s in zip(pid, df["slide_id"])]
        train_ids, val_ids = split_slides(df["slide_id"].tolist(), df["subtype"].tolist(), val_fraction, seed,
                                          groups=groups)
        if not train_ids:
            raise CohortError("no training slides left after the validation split")
        x_train = torch.from_numpy(np.concatenate([tiles[s] for s in train_ids]))
        y_train = torch.from_numpy(np.concatenate(
            [np.full(len(tiles[s]), cls_index[label_of[s]], np.int64) for s in train_ids]))
        n = len(y_train)
        if n < 2:
            raise CohortError(f"{_cohort_name(cohort)}: only {n} training tile(s); the CNN needs at least 2")
        counts = torch.bincount(y_train, minlength=len(classes)).double()
        w = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * int((counts > 0).sum())),
                        torch.zeros_like(counts)).float()
        dev = model.device
        net = model.net
        loss_fn = nn.CrossEntropyLoss(weight=w.to(dev))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = max(1, math.ceil(n / batch_size) - (1 if n % batch_size == 1 and n > 1 else 0))
        total_steps = epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)) * 0.95 + 0.05)
        gen = torch.Generator().manual_seed(seed)
        res = TrainResult(model=model, classes=classes, train_slides=list(train_ids), val_slides=list(val_ids),
                          n_train_tiles=n, n_val_tiles=int(sum(len(tiles[s]) for s in val_ids)),
                          device=str(dev), threads=torch.get_num_threads())
        t_train = 0.0
        step = 0
        for ep in range(epochs):
            net.train()
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen)
            losses = []
            for b in range(steps_per_epoch):
                check_stop(should_stop)
                idx = perm[b * batch_size:(b + 1) * batch_size]
                if len(idx) < 2:
                    continue  # BatchNorm needs two samples
                xb = x_train[idx]
                if augment:
                    xf = augment_batch(xb.to(dev), gen)
                else:
                    xf = xb.to(dev).permute(0, 3, 1, 2).float().div_(255.0)
                norm = model.config["normalisation"]
                m = torch.tensor(norm["mean"], device=dev).view(1, 3, 1, 1)
                s = torch.tensor(norm["std"], device=dev).view(1, 3, 1, 1)
                if xf.shape[-1] != size:
                    xf = nn.functional.interpolate(xf, size=(size, size), mode="bilinear", antialias=True)
                logits = net((xf - m) / s)
                loss = loss_fn(logits, y_train[idx].to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                step += 1
                report(progress, step, total_steps, f"subtype: epoch {ep + 1}/{epochs} loss {losses[-1]:.3f}")
            t_train += time.perf_counter() - t0
            res.step_losses += losses
            res.epoch_losses.append(float(np.mean(losses)) if losses else float("nan"))
        res.seconds_per_epoch = t_train / epochs
        net.eval()
        if val_ids:
            k = len(classes)
            t_true, t_pred, s_true, s_pred = [], [], [], []
            for sid in val_ids:
                check_stop(should_stop)
                p = model.predict_tiles(tiles[sid])
                truth = cls_index[label_of[sid]]
                t_true.append(np.full(len(p), truth))
                t_pred.append(p.argmax(1))
                v = vote(p, classes)
                s_true.append(truth)
                s_pred.append(cls_index[v.subtype])
                res.val_predictions[sid] = v.subtype
            tt, tp = np.concatenate(t_true), np.concatenate(t_pred)
            res.tile_accuracy = float(np.mean(tt == tp))
            res.slide_accuracy = float(np.mean(np.array(s_true) == np.array(s_pred)))
            res.tile_confusion = _confusion(tt, tp, k).tolist()
            res.confusion = _confusion(np.array(s_true), np.array(s_pred), k).tolist()
        model.config["training"] = {k_: v_ for k_, v_ in res.to_dict().items()
                                    if k_ not in ("val_predictions",)} | {
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "val_fraction": val_fraction,
            "max_tiles_per_slide": max_tiles_per_slide, "augment": augment}
        if out_dir is not None:
            model.save(out_dir)
            res.out_dir = str(out_dir)
    return res

"""One small network that segments and types nuclei: H and E (OD) at 0.5 µm/px -> 6 maps per pixel.

Maps: nucleus logit, normalised distance to the nucleus border (logit of d / max d within the nucleus:
1 at its centre, falling to 0 where it touches the background or another nucleus, which is what
separates touching nuclei) and 4 type logits in :data:`NUCLEUS_TYPES` order.  Instances: nucleus
probability > ``FG_THRESHOLD`` is the foreground; markers are the connected parts of it whose
distance exceeds ``MARKER_THRESHOLD`` (a foreground component without one becomes one nucleus);
a watershed of the negated distance grows the markers over the foreground.  Each instance takes the
type whose probabilities, summed over its pixels, are largest.  The network is the shipped U-Net
architecture of :mod:`napari_lnm.nuclei_net` (plain torch, channels-last, bf16 where available) with
6 outputs; weights ``data/nuclei_typed.npz`` (plain float32 arrays, ``np.load(allow_pickle=False)``),
trained by ``benchmarks/train_nuclei_typed.py`` on the training parts of nuclei-consep,
nuclei-monuseg, nuclei-dev and nuclei-crchisto (see docs/benchmarks.md for data and licences).
Used by ``nuclei.segment_nuclei(..., method="typed")`` and ``nuclei.classify_nuclei``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .errors import ModelError
from .nuclei_net import load_unet, unet_logits

__all__ = ["NUCLEUS_TYPES", "TYPED_PATH", "FG_THRESHOLD", "MARKER_THRESHOLD", "TypedMaps", "load_typed",
           "typed_maps", "instances_from_maps", "instance_types", "types_series"]

#: nucleus classes, in the order of the network's type maps (CoNSeP spindle and crchisto fibroblast: stromal)
NUCLEUS_TYPES = ("epithelial", "inflammatory", "stromal", "other")
#: shipped weights (numpy arrays only; regenerate with benchmarks/train_nuclei_typed.py)
TYPED_PATH = Path(__file__).resolve().parent / "data" / "nuclei_typed.npz"
FG_THRESHOLD = 0.5  # nucleus probability above which a pixel is foreground
MARKER_THRESHOLD = 0.6  # normalised distance above which a foreground pixel is in a nucleus core (chosen on training images)
_N_MAPS = 2 + len(NUCLEUS_TYPES)


@dataclass(frozen=True)
class TypedMaps:
    """The network's maps at the tile's pixels: nucleus probability, normalised distance (both
    (H, W) float32 in [0, 1]) and type probabilities (4, H, W) float32 summing to 1 per pixel."""

    nucleus: np.ndarray
    distance: np.ndarray
    types: np.ndarray


def load_typed(path: str | os.PathLike | None = None) -> Any:
    """Load (and cache) the typed network from an .npz of float arrays; ModelError if it is not one."""
    p = Path(os.fspath(path)) if path is not None else TYPED_PATH
    net = load_unet(p)
    if net.out.out_channels != _N_MAPS:
        raise ModelError(f"{p}: a nucleus network with {net.out.out_channels} maps, not the typed one ({_N_MAPS})")
    return net


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, float32 (clipped: no overflow warnings)."""
    return (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)


def typed_maps(h: np.ndarray, e: np.ndarray, mpp: float, net: Any = None) -> TypedMaps:
    """The network's maps for H and E images (float32 OD, ``stain.separate``) at ``mpp`` µm/px."""
    z = unet_logits(h, e, mpp, net if net is not None else load_typed())
    t = z[2:] - z[2:].max(axis=0, keepdims=True)
    np.exp(t, out=t)
    t /= t.sum(axis=0, keepdims=True)
    return TypedMaps(_sigmoid(z[0]), _sigmoid(z[1]), t)


def instances_from_maps(nucleus: np.ndarray, distance: np.ndarray, fg_threshold: float = FG_THRESHOLD,
                        marker_threshold: float = MARKER_THRESHOLD) -> np.ndarray:
    """int32 instance labels (0 background, not renumbered) from nucleus probability and normalised
    distance maps (H, W): markers = cores (distance > marker_threshold) grown over the foreground."""
    from skimage.segmentation import watershed

    fg = nucleus > fg_threshold
    if not fg.any():
        return np.zeros(nucleus.shape, np.int32)
    markers, n = ndi.label(fg & (distance > marker_threshold))
    comps, nc = ndi.label(fg)
    # a foreground component with no core (a small or faint nucleus) is one nucleus of its own
    has = np.zeros(nc + 1, bool)
    has[comps[markers > 0]] = True
    lone = ~has
    lone[0] = False
    lut = np.zeros(nc + 1, np.int32)
    lut[lone] = n + np.arange(1, int(lone.sum()) + 1, dtype=np.int32)
    markers = np.where(markers > 0, markers, lut[comps]).astype(np.int32)
    return watershed(-distance, markers, mask=fg).astype(np.int32)


def instance_types(labels: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label ids, type index per id) of the nonzero labels: the type whose probabilities (4, H, W),
    summed over the instance's pixels, are largest (one bincount per type)."""
    flat = np.asarray(labels).ravel()
    inside = np.flatnonzero(flat)  # nucleus pixels only (~1/4 of a tile): 4x less to sum
    lab = flat[inside].astype(np.intp, copy=False)
    ids = np.unique(lab)
    if ids.size == 0:
        return ids.astype(np.int64), np.zeros(0, np.intp)
    n = int(ids[-1]) + 1
    sums = np.stack([np.bincount(lab, weights=t.ravel()[inside], minlength=n) for t in types])
    return ids.astype(np.int64), np.argmax(sums[:, ids], axis=0)


def types_series(labels: np.ndarray, types: np.ndarray) -> pd.Series:
    """pandas Series indexed by label id (name "label") with each nucleus's type name (NUCLEUS_TYPES)."""
    ids, k = instance_types(labels, types)
    return pd.Series(np.asarray(NUCLEUS_TYPES, dtype=object)[k], index=pd.Index(ids, name="label"),
                     name="type", dtype=object)

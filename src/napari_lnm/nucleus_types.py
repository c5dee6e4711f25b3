"""Nucleus types from nucleus measurements: the cheap typing step behind the ``cells.*`` features.

Any segmenter's nuclei get one of ``CELL_TYPES`` (epithelial, inflammatory, stromal, other) from their
shape, haematoxylin intensity/texture and neighbourhood (:func:`type_inputs`), by a multinomial
logistic regression shipped as plain arrays (``data/nucleus_types.npz``; trained on CoNSeP's training
tiles by ``benchmarks/train_nucleus_type_model.py``, see ``docs/benchmarks.md`` for its held-out scores
and ``docs/researcher-guide.md`` for the data's terms).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree

from napari_lnm.errors import ModelError

__all__ = ["CELL_TYPES", "TYPE_COLOURS", "INPUTS", "TYPE_MODEL_PATH", "NucleusTypeModel", "type_inputs", "load_type_model",
           "nucleus_types"]

CELL_TYPES = ("epithelial", "inflammatory", "stromal", "other")
#: per-nucleus measurements used (columns of ``features.nucleus.nucleus_table``)
MEASURE_INPUTS = ("area", "perimeter", "major_axis", "minor_axis", "aspect_ratio", "eccentricity", "solidity",
                  "circularity", "extent", "fourier1", "fourier2", "h_mean", "h_std", "h_integrated", "h_entropy",
                  "h_dissimilarity", "h_contrast", "grad_mean", "grad_std")
#: neighbourhood inputs: distances (µm) to the 1st and 3rd nearest nuclei, nuclei within 15 µm
NEIGHBOUR_INPUTS = ("nn1_um", "nn3_um", "within_15um")
INPUTS = MEASURE_INPUTS + NEIGHBOUR_INPUTS
TYPE_MODEL_PATH = Path(__file__).resolve().parent / "data" / "nucleus_types.npz"
#: display colour (RGB) of each type: QuPath's default colours of Tumor, Immune cells, Stroma and Other
TYPE_COLOURS = ((200, 0, 0), (160, 90, 160), (150, 200, 150), (255, 200, 0))


def type_inputs(table, mpp: float) -> np.ndarray:
    """(n, len(INPUTS)) float64 inputs of a ``NucleusTable`` at ``mpp`` µm/px (NaN where undefined)."""
    n = len(table.ids)
    x = np.full((n, len(INPUTS)), np.nan)
    for j, key in enumerate(MEASURE_INPUTS):
        x[:, j] = table.column(key)
    if n >= 2:
        tree = cKDTree(table.centroids)
        k = min(4, n)
        d = tree.query(table.centroids, k=k)[0].reshape(n, k) * mpp
        x[:, len(MEASURE_INPUTS)] = d[:, 1]
        if k >= 4:
            x[:, len(MEASURE_INPUTS) + 1] = d[:, 3]
        x[:, len(MEASURE_INPUTS) + 2] = [len(v) - 1 for v in tree.query_ball_point(table.centroids, 15.0 / mpp)]
    elif n == 1:
        x[:, len(MEASURE_INPUTS) + 2] = 0.0
    return x


@dataclass
class NucleusTypeModel:
    """Standardisation (mean, scale) and multinomial logistic regression (coef (4, k), intercept (4,))."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, 4) type probabilities; undefined inputs count as the training mean."""
        z = (np.asarray(x, float) - self.mean) / self.scale
        z = np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)
        logits = z @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n,) type index of the most probable type."""
        return np.argmax(self.probabilities(x), axis=1) if len(x) else np.zeros(0, np.int64)

    def save(self, path: str | os.PathLike) -> None:
        """Plain arrays in an .npz (no pickle)."""
        np.savez(path, mean=self.mean, scale=self.scale, coef=self.coef, intercept=self.intercept,
                 inputs=np.array(INPUTS), types=np.array(CELL_TYPES))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NucleusTypeModel":
        """Read and validate an .npz written by :meth:`save`; ModelError naming the file otherwise."""
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: not a nucleus type model ({exc})") from None
        k = len(INPUTS)
        want = {"mean": (k,), "scale": (k,), "coef": (len(CELL_TYPES), k), "intercept": (len(CELL_TYPES),)}
        for key, shape in want.items():
            a = d.get(key)
            if a is None or a.shape != shape or not np.all(np.isfinite(a)):
                raise ModelError(f"{path}: field {key!r} must be finite with shape {shape}")
        if tuple(d.get("inputs", ())) != INPUTS or np.any(d["scale"] <= 0):
            raise ModelError(f"{path}: made for other inputs than this version's {INPUTS}")
        return cls(d["mean"], d["scale"], d["coef"], d["intercept"])


_MODELS: dict[str, NucleusTypeModel] = {}


def load_type_model(path: Optional[str | os.PathLike] = None) -> NucleusTypeModel:
    """The shipped (or given) nucleus type model, loaded once per process."""
    key = str(path or TYPE_MODEL_PATH)
    if key not in _MODELS:
        _MODELS[key] = NucleusTypeModel.load(key)
    return _MODELS[key]


def nucleus_types(table, mpp: float, model: Optional[NucleusTypeModel] = None) -> tuple[np.ndarray, np.ndarray]:
    """(types (n,) indices into CELL_TYPES, probabilities (n, 4)) of a tile's nuclei."""
    model = model or load_type_model()
    p = model.probabilities(type_inputs(table, mpp)) if len(table.ids) else np.zeros((0, len(CELL_TYPES)))
    return (np.argmax(p, axis=1) if len(p) else np.zeros(0, np.int64)), p

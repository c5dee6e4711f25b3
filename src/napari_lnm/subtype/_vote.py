"""Slide-level subtype by majority vote of per-tile predictions (pure numpy, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from napari_lnm.errors import UserError

SUBTYPES: tuple[str, ...] = ("CMS1", "CMS2", "CMS3", "CMS4")


@dataclass
class SubtypeVote:
    """A slide's subtype: majority of per-tile argmax, the H counts per subtype and mean probabilities.

    ``probs`` (optional extension) holds the per-tile probabilities ``(N, 4)`` float32 in the
    order of ``classes`` so that callers can draw a per-tile overlay.
    """

    subtype: str
    counts: dict[str, int]
    mean_probs: dict[str, float]
    probs: Optional[np.ndarray] = field(default=None, repr=False)
    classes: tuple[str, ...] = SUBTYPES

    @property
    def n_tiles(self) -> int:
        """Number of tiles that voted."""
        return int(sum(self.counts.values()))

    def tile_subtypes(self) -> np.ndarray:
        """Per-tile predicted subtype names (argmax of ``probs``), for an overlay layer; empty if no probs."""
        if self.probs is None:
            return np.array([], dtype=object)
        return np.asarray(self.classes, dtype=object)[np.argmax(self.probs, axis=1)]

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-tile arrays)."""
        return {
            "subtype": self.subtype,
            "counts": {k: int(v) for k, v in self.counts.items()},
            "mean_probs": {k: float(v) for k, v in self.mean_probs.items()},
            "n_tiles": self.n_tiles,
        }


def vote(probs: np.ndarray, classes: Sequence[str] = SUBTYPES) -> SubtypeVote:
    """Majority vote of per-tile argmax over ``probs`` (N, C); ties broken by the highest mean probability.

    A remaining exact tie (same count and same mean probability) goes to the first class in
    ``classes`` order, so the result is deterministic.
    """
    classes = tuple(classes)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1 and p.size == len(classes):
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise UserError(
            f"subtype probabilities must have shape (n_tiles, {len(classes)}), got {tuple(np.shape(probs))}"
        )
    if p.shape[0] == 0:
        raise UserError("no tiles to vote on: the slide gave no tiles for subtype prediction")
    if not np.all(np.isfinite(p)):
        raise UserError("subtype probabilities contain NaN or infinite values")
    counts = np.bincount(np.argmax(p, axis=1), minlength=len(classes))
    mean = p.mean(axis=0)
    # lexicographic: highest count first, then highest mean probability, then class order
    order = np.lexsort((np.arange(len(classes)), -mean, -counts))
    winner = int(order[0])
    return SubtypeVote(
        subtype=classes[winner],
        counts={c: int(n) for c, n in zip(classes, counts)},
        mean_probs={c: float(m) for c, m in zip(classes, mean)},
        probs=np.asarray(probs, dtype=np.float32).reshape(p.shape),
        classes=classes,
    )

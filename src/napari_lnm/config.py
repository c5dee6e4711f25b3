"""The extraction config: every setting that decides a tile's features (tiling geometry + segmentation).

It travels as one object: into each feature file's provenance (``napari_lnm.provenance``), into a
trained bundle, and from there into prediction, which must tile and segment as training did.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

from napari_lnm.errors import UserError

__all__ = ["TilingConfig", "ExtractionConfig", "SEGMENTATIONS", "ALLOWED_TILE_SIZES", "ALLOWED_MAGNIFICATIONS"]

#: nucleus segmenters: the foregrounds of ``nuclei.segment_nuclei(foreground=...)`` and "typed", the typed
#: network (``nuclei.classify_nuclei``: its nucleus types then feed the ``cells.*`` features)
SEGMENTATIONS = ("threshold", "model", "cnn", "typed")
ALLOWED_TILE_SIZES = (224, 256, 299, 512, 1024)
ALLOWED_MAGNIFICATIONS = (5.0, 10.0, 20.0, 40.0)


@dataclass(frozen=True)
class TilingConfig:
    """Tiling at ``magnification`` (µm/px = 10 / magnification), ``tile_size`` px side, ``overlap`` fraction 0..<1,
    ``min_tissue`` fraction 0..1, optional ``max_tiles`` drawn at random with ``seed``; ``segmentation`` is the
    nucleus foreground the tiles' features are computed with (:data:`SEGMENTATIONS`).

    These are all the settings that decide a tile's features, so they travel together: into each
    feature file's provenance (a change re-extracts), into a trained bundle, and from there into
    prediction, which must segment as the training cohort was segmented."""

    magnification: float = 20.0
    tile_size: int = 512
    overlap: float = 0.0
    min_tissue: float = 0.5
    max_tiles: Optional[int] = None
    seed: int = 0
    segmentation: str = "threshold"  # "threshold" (default, fast), "model" (pixel classifier), "cnn" (U-Net), "typed"

    def __post_init__(self) -> None:
        if float(self.magnification) not in ALLOWED_MAGNIFICATIONS:
            raise UserError(f"magnification must be one of 5, 10, 20, 40 (x), got {self.magnification}")
        if int(self.tile_size) != self.tile_size or int(self.tile_size) not in ALLOWED_TILE_SIZES:
            raise UserError(f"tile size must be one of {', '.join(map(str, ALLOWED_TILE_SIZES))} px, "
                            f"got {self.tile_size}")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise UserError(f"overlap must be a fraction in [0, 1), got {self.overlap}")
        if not 0.0 <= float(self.min_tissue) <= 1.0:
            raise UserError(f"minimum tissue fraction must be in [0, 1], got {self.min_tissue}")
        if self.max_tiles is not None and (int(self.max_tiles) != self.max_tiles or int(self.max_tiles) < 1):
            raise UserError(f"max tiles must be a positive integer, got {self.max_tiles}")
        if self.segmentation not in SEGMENTATIONS:
            raise UserError(f"segmentation must be one of {', '.join(SEGMENTATIONS)}, got {self.segmentation!r}")
        object.__setattr__(self, "magnification", float(self.magnification))
        object.__setattr__(self, "tile_size", int(self.tile_size))
        object.__setattr__(self, "overlap", float(self.overlap))
        object.__setattr__(self, "min_tissue", float(self.min_tissue))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def mpp(self) -> float:
        """Working µm/px: 10 / magnification (20x = 0.5 µm/px)."""
        return 10.0 / self.magnification

    def to_dict(self) -> dict:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TilingConfig":
        """Inverse of :meth:`to_dict`; keys that are not fields (e.g. a recorded ``working_mpp``) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> "TilingConfig":
        """A copy with ``changes``; None values are ignored (e.g. ``max_tiles=None`` keeps the setting)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


#: the name the method's text uses; one class
ExtractionConfig = TilingConfig

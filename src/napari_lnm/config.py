"""The extraction config: every setting that decides a tile's features (tiling geometry + segmentation).

It travels as one object: into each feature file's provenance (``napari_lnm.provenance``), into a
trained bundle, and from there into prediction, which must tile and segment as training did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

from napari_lnm.errors import UserError

__all__ = ["TilingConfig", "ExtractionConfig", "DeepFeatures", "SEGMENTATIONS", "ALLOWED_TILE_SIZES",
           "ALLOWED_MAGNIFICATIONS", "DEEP_ARCHITECTURES", "DEEP_PREFIX", "MIL_TILE_FEATURE", "file_sha256", "is_deep"]

#: nucleus segmenters: the foregrounds of ``nuclei.segment_nuclei(foreground=...)`` and "typed", the typed
#: network (``nuclei.classify_nuclei``: its nucleus types then feed the ``cells.*`` features)
SEGMENTATIONS = ("threshold", "model", "cnn", "typed")
ALLOWED_TILE_SIZES = (224, 256, 299, 512, 1024)
ALLOWED_MAGNIFICATIONS = (5.0, 10.0, 20.0, 40.0)
#: CNN backbones of the optional deep feature group and the width (channels) of their pooled embedding
DEEP_ARCHITECTURES = {"resnet18": 512, "resnet50": 2048, "densenet121": 1024, "inception_v3": 2048, "vgg16": 512}
#: name prefix of the deep feature columns (``deep.000``, ``deep.001``, ...)
DEEP_PREFIX = "deep."
#: the per-tile value an ABMIL model derives (``mil.MILFusion``): the tile's share of the slide's log-odds
MIL_TILE_FEATURE = "deep.abmil"


def is_deep(name: str) -> bool:
    """True for a deep feature column (``deep.000``) or a principal component of them (``deep.pc01``)."""
    return str(name).startswith(DEEP_PREFIX)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class DeepFeatures:
    """The CNN of the ``deep.*`` feature group: architecture, weights file (resolved path) and its SHA-256.

    The hash, not the path, says which embedding a feature file holds: training refuses to mix
    files of different hashes, and prediction refuses weights whose bytes differ from the bundle's.
    """

    arch: str
    weights: str
    sha256: str

    def __post_init__(self) -> None:
        if self.arch not in DEEP_ARCHITECTURES:
            raise UserError(f"deep features: unknown architecture {self.arch!r}; choose one of "
                            f"{', '.join(DEEP_ARCHITECTURES)}")

    @classmethod
    def parse(cls, spec: str) -> "DeepFeatures":
        """``ARCH:WEIGHTS`` (e.g. ``resnet18:/data/resnet18.pth``) -> DeepFeatures with the file's hash."""
        arch, sep, path = str(spec).partition(":")
        if not sep or not path:
            raise UserError(f"--deep-features must be ARCH:WEIGHTS (e.g. resnet18:weights.pth), got {spec!r}")
        probe = cls(arch.strip().lower(), path, "")  # checks the architecture first
        return probe.relocated(path)

    def relocated(self, path: str | os.PathLike) -> "DeepFeatures":
        """These deep features with the weights at ``path``; UserError when the file is missing or (for a
        recorded hash) its bytes differ."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"{p}: {self.arch} weights file not found")
        sha = file_sha256(p)
        if self.sha256 and sha != self.sha256:
            raise UserError(f"{p}: these {self.arch} weights (sha256 {sha[:12]}) are not the ones the features "
                            f"were made with (sha256 {self.sha256[:12]})")
        return DeepFeatures(self.arch, str(p.resolve()), sha)

    def check(self) -> "DeepFeatures":
        """Self, after checking that the weights file is still there with the recorded bytes (UserError)."""
        p = Path(self.weights)
        if not p.is_file():
            raise UserError(f"{p}: the {self.arch} weights file of the deep features (sha256 {self.sha256[:12]}) "
                            f"is not there; give its location (predict: --deep-weights PATH)")
        return self.relocated(p)

    @property
    def dim(self) -> int:
        """Width of the embedding (number of ``deep.*`` columns)."""
        return DEEP_ARCHITECTURES[self.arch]

    def names(self) -> list[str]:
        """The feature column names ``deep.000`` ... in embedding order."""
        return [f"{DEEP_PREFIX}{i:03d}" for i in range(self.dim)]


@dataclass(frozen=True)
class TilingConfig:
    """Tiling at ``magnification`` (µm/px = 10 / magnification), ``tile_size`` px side, ``overlap`` fraction 0..<1,
    ``min_tissue`` fraction 0..1, optional ``max_tiles`` drawn at random with ``seed``; ``segmentation`` is the
    nucleus foreground the tiles' features are computed with (:data:`SEGMENTATIONS`); ``deep`` the optional
    CNN whose tile embedding adds the ``deep.*`` columns.

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
    deep: Optional[DeepFeatures] = None  # the optional CNN embedding group (deep.*)

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
        if isinstance(self.deep, Mapping):  # as recorded in a provenance or a bundle
            try:
                object.__setattr__(self, "deep", DeepFeatures(**self.deep))
            except TypeError:
                raise UserError(f"deep features record {dict(self.deep)} is not arch, weights, sha256") from None
        elif self.deep is not None and not isinstance(self.deep, DeepFeatures):
            raise UserError(f"deep features must be DeepFeatures, got {type(self.deep).__name__}")
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
        """Plain dict (JSON-serialisable); ``deep`` only when set (records without it stay valid)."""
        d = asdict(self)
        if self.deep is None:
            del d["deep"]
        return d

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

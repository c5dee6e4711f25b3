"""Provenance of feature files: what decides whether a slide's features are still valid, read and written once.

Each features Parquet carries one JSON record under the key-value metadata key
:data:`METADATA_KEY`: package version, the extraction config (``TilingConfig.to_dict``), the
``--mpp`` override, the feature schema hash, the ROI content hash and the slide file's identity
(resolved path, size in bytes, modification time in ns), plus descriptive fields (slide id, µm/px,
tile count).  Resume (``is_done``), training (``model.load_feature_tables``), subtype training and
evaluation read it through :func:`read_provenance` and rebuild the config with
:func:`tiling_from_provenance`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from napari_lnm import __version__
from napari_lnm.config import TilingConfig

if TYPE_CHECKING:  # pragma: no cover
    from napari_lnm.model import ModelBundle

__all__ = [
    "METADATA_KEY", "Rois", "feature_schema_hash", "rois_hash", "slide_identity", "extraction_provenance",
    "read_provenance", "tiling_from_provenance", "recorded_tiling", "prediction_tiling", "is_done",
    "parquet_readable", "VALIDITY_KEYS",
]

#: Parquet key-value metadata key of the provenance record
METADATA_KEY = b"napari_lnm"
#: fields of the record that must match for a features file to count as done
VALIDITY_KEYS = ("package_version", "tiling", "mpp_override", "mpp_forced", "feature_schema_hash", "rois_hash",
                 "slide_file")

Rois = Union[None, str, os.PathLike, Sequence[np.ndarray], Any]


def feature_schema_hash(names: Optional[Sequence[str]] = None) -> str:
    """Short SHA-256 of the ordered feature names (the Parquet schema of the features)."""
    if names is None:
        from napari_lnm.features import feature_names

        names = feature_names()
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def rois_hash(rois: Rois) -> Optional[str]:
    """Hash of the ROI's content (a GeoJSON file's bytes, or the polygons' coordinates); None for no ROI."""
    if rois is None:
        return None
    h = hashlib.sha256()
    if isinstance(rois, (str, os.PathLike)):
        h.update(Path(rois).read_bytes())
    elif hasattr(rois, "wkb"):  # a shapely geometry
        h.update(rois.wkb)
    else:
        for poly in rois:
            h.update(np.ascontiguousarray(np.asarray(poly, dtype=np.float64)).tobytes())
            h.update(b"|")
    return h.hexdigest()[:16]


def slide_identity(path: str | os.PathLike) -> dict:
    """The slide file's identity: resolved path, size (bytes) and modification time (ns)."""
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _forced(mpp: Optional[float]) -> bool:
    """Whether a µm/px was given to override the slide's metadata (``io.forced_mpp``)."""
    from napari_lnm.io import ForcedMpp

    return isinstance(mpp, ForcedMpp)


def extraction_provenance(config: TilingConfig, mpp_override: Optional[float], rois: Rois,
                          slide_path: Optional[str | os.PathLike]) -> dict:
    """The :data:`VALIDITY_KEYS` record of one slide's extraction (without ``slide_file`` when no path is given)."""
    from napari_lnm.engine import column_names

    record = {
        "package_version": __version__,
        "tiling": config.to_dict(),
        "mpp_override": None if mpp_override is None else float(mpp_override),
        "mpp_forced": _forced(mpp_override),
        "feature_schema_hash": feature_schema_hash(column_names(config)),
        "rois_hash": rois_hash(rois),
    }
    if slide_path is not None:
        record["slide_file"] = slide_identity(slide_path)
    return record


def read_provenance(source: Any) -> Optional[dict]:
    """The provenance dict of a features Parquet (a path, a ``pyarrow.Table`` or schema), or None if absent."""
    import pyarrow.parquet as pq

    try:
        schema = source.schema if hasattr(source, "schema") else pq.read_schema(source)
        meta = schema.metadata or {}
        d = json.loads(meta[METADATA_KEY])
    except Exception:  # missing, truncated or foreign file: no provenance
        return None
    return d if isinstance(d, dict) else None


def tiling_from_provenance(prov: Optional[dict]) -> Optional[TilingConfig]:
    """The extraction config a provenance record (or a bundle's recorded tiling dict) names, or None."""
    if not isinstance(prov, dict):
        return None
    tiling = prov.get("tiling", prov if "magnification" in prov else None)
    return TilingConfig.from_dict(tiling) if isinstance(tiling, dict) else None


def recorded_tiling(bundle: Optional["ModelBundle"]) -> Optional[TilingConfig]:
    """The extraction config a bundle was trained on, or None for a bundle trained from bare tables."""
    if bundle is None:
        return None
    return tiling_from_provenance(bundle.config.get("tiling"))


def prediction_tiling(bundle: Optional["ModelBundle"] = None, **overrides: Any) -> TilingConfig:
    """The config to predict with: the bundle's recorded one without its training-time tile cap, plus overrides.

    Overrides that are None are ignored; a bundle that records no tiling starts from ``TilingConfig()``.
    """
    import dataclasses

    base = recorded_tiling(bundle) or TilingConfig()
    base = dataclasses.replace(base, max_tiles=None)  # a training-time sampling cap does not apply to prediction
    return base.replace(**overrides)


def parquet_readable(path: str | os.PathLike) -> bool:
    """True when every data page of the Parquet file decodes (a footer alone is not enough)."""
    import pyarrow.parquet as pq

    try:
        pq.read_table(path)
    except Exception:  # truncated, corrupt pages, not Parquet
        return False
    return True


def is_done(parquet: str | os.PathLike, config: TilingConfig, mpp: Optional[float] = None, rois: Rois = None,
            slide_path: Optional[str | os.PathLike] = None) -> bool:
    """True when ``parquet`` holds complete features of this slide file, package version, config, schema and ROI."""
    prov = read_provenance(parquet)
    if prov is None:
        return False
    try:
        want = extraction_provenance(config, mpp, rois, slide_path)
    except OSError:  # the slide is gone: nothing to compare with, re-extraction will report it
        return False
    if any(prov.get(k) != v for k, v in want.items()):
        return False
    return parquet_readable(parquet)

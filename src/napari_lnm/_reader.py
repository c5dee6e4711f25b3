"""npe2 reader: open a whole-slide image or photo as a lazy multiscale RGB pyramid in µm.

Plain photos (PNG/JPEG/TIFF without a pixel size) open at :func:`default_mpp` µm/px:
the environment variable ``NAPARI_LNM_DEFAULT_MPP`` if set, else :data:`DEFAULT_MPP`
(0.5 µm/px, a 20x photo).  The layer metadata says ``mpp_source="default"`` so the
Analyse widget can ask the user for the true value.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

#: µm/px assumed for photos without a pixel size (20x); override with NAPARI_LNM_DEFAULT_MPP
DEFAULT_MPP = 0.5
DEFAULT_MPP_ENV = "NAPARI_LNM_DEFAULT_MPP"

SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff",
            ".png", ".jpg", ".jpeg")

PathLike = Union[str, os.PathLike]


def default_mpp() -> float:
    """µm/px for photos without metadata: $NAPARI_LNM_DEFAULT_MPP if a positive number, else DEFAULT_MPP."""
    raw = os.environ.get(DEFAULT_MPP_ENV)
    if raw:
        try:
            value = float(raw)
            if value > 0:
                return value
        except ValueError:
            pass
    return DEFAULT_MPP


def get_reader(path: Union[PathLike, list]) -> Optional[Callable[[Any], list]]:
    """npe2 reader hook: a reader function for one slide/photo path, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not str(path).lower().endswith(SUFFIXES):
        return None
    return read_slide


#: slides whose coarsest stored level is larger than this get virtual coarser levels for display (px)
DISPLAY_MIN_SIZE = 4096


def slide_layer_data(slide, name: Optional[str] = None, chunk: int = 512) -> tuple:
    """napari LayerDataTuple (pyramid, kwargs, "image") for an open :class:`napari_lnm.io.Slide`."""
    pyramid = slide.dask_pyramid(chunk=chunk, min_size=DISPLAY_MIN_SIZE)
    meta = {
        "napari_lnm_path": str(slide.path),
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "objective_power": slide.objective_power,
        "dimensions": tuple(slide.dimensions),
        "level_downsamples": tuple(slide.level_downsamples),
        "backend": slide.backend,
    }
    kwargs = {
        "multiscale": True,
        "rgb": True,
        "scale": (slide.mpp, slide.mpp),
        "units": ("um", "um"),
        "name": name or slide.path.name,
        "metadata": meta,
        "contrast_limits": (0, 255),
    }
    return (pyramid, kwargs, "image")


def read_slide(path: Union[PathLike, list]) -> list:
    """Open ``path`` (photos without µm/px at :func:`default_mpp`) and return one napari image layer."""
    from napari_lnm.io import MissingMppError, open_slide

    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        slide = open_slide(path)
    except MissingMppError:
        slide = open_slide(path, mpp=default_mpp())
        slide.mpp_source = "default"
    return [slide_layer_data(slide)]


__all__ = ["get_reader", "read_slide", "slide_layer_data", "default_mpp", "DEFAULT_MPP", "DEFAULT_MPP_ENV"]

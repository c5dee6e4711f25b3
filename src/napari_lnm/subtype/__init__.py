"""Molecular subtype (CMS1-CMS4) CNN tile classifier, slide-level majority vote, and training.

``SUBTYPES``, ``SubtypeVote`` and ``vote`` are pure numpy.  Everything else needs PyTorch (the
``[cnn]`` extra) and is imported on first use, so ``from napari_lnm.subtype import vote`` works
without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from napari_lnm.subtype._vote import SUBTYPES, SubtypeVote, vote

_LAZY = {
    "SubtypeModel": "model",
    "predict_slide_subtype": "model",
    "resize_tiles": "model",
    "train_subtype": "train",
    "TrainResult": "train",
    "load_tile_sets": "train",
    "split_slides": "train",
    "stain_augment": "train",
    "augment_batch": "train",
    "build_network": "nets",
    "load_weights": "nets",
    "read_state_dict": "nets",
    "ARCHITECTURES": "nets",
    "WeightsReport": "nets",
}

__all__ = ["SUBTYPES", "SubtypeVote", "vote", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the torch-backed parts on first access, with a clear message when torch is missing."""
    if name not in _LAZY:
        raise AttributeError(f"module 'napari_lnm.subtype' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"napari_lnm.subtype.{_LAZY[name]}")
    except ModuleNotFoundError as exc:
        if exc.name == "torch":
            from napari_lnm.errors import UserError

            raise UserError("the subtype CNN needs PyTorch: pip install 'napari-lnm[cnn]'") from None
        raise
    return getattr(module, name)

"""The optional ``deep.*`` feature group: a CNN's globally average-pooled embedding of each tile.

The user supplies the weights (``napari-lnm extract --deep-features ARCH:WEIGHTS``); the network
(``napari_lnm.backbones``) sees the tile at its working resolution, unresized. Each process loads
a network once, after checking that the weights file still has the bytes its hash records, and
runs it with one thread so every runner computes identical numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_lnm.config import DeepFeatures

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["deep_features", "network"]

_NETS: dict[tuple[str, str, str], "torch.nn.Module"] = {}


def network(spec: DeepFeatures) -> "torch.nn.Module":
    """The loaded network of ``spec``, once per process (the weights' bytes checked against the hash)."""
    key = (spec.arch, spec.weights, spec.sha256)
    if key not in _NETS:
        from napari_lnm.backbones import load_backbone

        spec.check()
        _NETS.clear()  # one network per process: a 100 MB model is not kept for a finished run
        _NETS[key] = load_backbone(spec.arch, spec.weights)
    return _NETS[key]


def deep_features(images: np.ndarray, spec: DeepFeatures) -> np.ndarray:
    """Embeddings (N, spec.dim) float64 of RGB uint8 tiles (N, H, W, 3), one tile per pass, one torch thread."""
    import torch

    from napari_lnm.backbones import embed

    net = network(spec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return np.asarray(embed(net, np.ascontiguousarray(images)), dtype=np.float64)
    finally:
        torch.set_num_threads(threads)

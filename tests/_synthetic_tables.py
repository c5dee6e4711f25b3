"""Synthetic per-tile feature tables for tests that need a tiny, real, learnable model."""

from __future__ import annotations

import numpy as np
import pandas as pd


def feature_tables(n_slides: int, n_tiles: int, seed: int) -> tuple[list[pd.DataFrame], np.ndarray]:
    """Tables (slide_id, x, y, size, tissue_fraction + every feature) whose nucleus/graph features shift with the label."""
    from napari_lnm.features import feature_names

    names = feature_names()
    rng = np.random.default_rng(seed)
    labels = np.array([i % 2 for i in range(n_slides)])
    shift_cols = np.array([n.startswith(("nucleus.", "graph.")) for n in names], dtype=float)
    tables = []
    for i, y in enumerate(labels):
        df = pd.DataFrame(np.abs(rng.normal(size=(n_tiles, len(names))) + 0.8 * y * shift_cols) * 10 + 1,
                          columns=names)
        df.insert(0, "tissue_fraction", 1.0)
        df.insert(0, "size", 256)
        df.insert(0, "y", np.arange(n_tiles) * 256)
        df.insert(0, "x", 0)
        df.insert(0, "slide_id", f"s{i:02d}")
        tables.append(df)
    return tables, labels

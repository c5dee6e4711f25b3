"""Inspect tile: click a tile to see its feature values against the model's cohort histogram bins."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
from qtpy.QtWidgets import QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from napari_lnm.explain import bin_range_text
from napari_lnm.fusion import HistogramFusion, ProjectedFusion
from napari_lnm.model import ModelBundle
from napari_lnm.prediction import Prediction

from ._common import CloseWatcher, get_result, hub, viewer_key
from ._layers import bin_of, tile_at, world_to_level0
from ._result import slide_features

COLUMNS = ["feature", "value", "bin", "bin edges", "metastatic direction"]


def _directions(bundle: ModelBundle) -> dict[str, str]:
    """Fused element -> 'higher'/'lower in metastatic' training slides, from the bundle's importance table."""
    imp = bundle.importance
    if "direction" not in imp.columns:
        return {}
    return {str(n): _dir_text(d) for n, d in zip(imp["element"], imp["direction"])}


def _dir_text(d) -> str:
    if isinstance(d, str):
        return d
    try:
        return "higher in metastatic" if float(d) > 0 else ("lower in metastatic" if float(d) < 0 else "–")
    except (TypeError, ValueError):
        return "–"


def feature_table(bundle: ModelBundle, pred: Prediction, tile_index: int, k: int = 10) -> pd.DataFrame:
    """For the model's top features: the tile's value, its histogram bin (1..B), the bin edges and direction."""
    tiles = pred.tiles
    # deep features: the histogram bins are those of the principal components the inner fusion fuses
    fusion = bundle.fusion.inner if isinstance(bundle.fusion, ProjectedFusion) else bundle.fusion
    fnames = list(fusion.feature_names)
    edges_all = fusion.edges_ if isinstance(fusion, HistogramFusion) else None
    dirs = _directions(bundle)
    rows, seen = [], set()
    for feat in slide_features(pred, k=4 * k):
        if feat in seen or feat not in tiles.columns:
            continue
        seen.add(feat)
        value = float(tiles[feat].iloc[tile_index])
        b, etxt = 0, "–"
        if edges_all is not None and feat in fnames:
            edges = np.asarray(edges_all)[fnames.index(feat)]
            b = bin_of(value, edges)
            if b:  # end bins are open: the fusion clips values outside the training range into them
                nb = len(edges) - 1
                etxt = bin_range_text(None if b == 1 else edges[b - 1], None if b == nb else edges[b],
                                      lambda v: f"{v:.4g}")
        d = dirs.get(f"{feat}|bin{b}")
        if d is None:  # this bin is not a model input (or no bins): say how the feature's elements lean
            same = [v for n, v in dirs.items() if n.split("|", 1)[0] == feat]
            d = (f"{same[0]} (other bin)" if b else same[0]) if same else "–"
        rows.append({"feature": feat, "value": value, "bin": f"{b} of {len(edges) - 1}" if b else "–",
                     "bin edges": etxt, "metastatic direction": d})
        if len(rows) >= k:
            break
    return pd.DataFrame(rows, columns=COLUMNS)


class InspectTileWidget(QWidget):
    """Dock widget: click a tile in the viewer to see where its top-feature values fall in the model's bins."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.tile_index: Optional[int] = None
        self.title = QLabel("Run an analysis, then click a tile.")
        self.title.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(240)
        self.table.setMinimumWidth(420)
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.table)
        self._callback = self._on_click
        self.viewer.mouse_drag_callbacks.append(self._callback)
        hub().changed.connect(self._on_result_changed)
        self._watch = CloseWatcher(self, self._teardown)

    def showEvent(self, event):  # noqa: N802
        self._watch.attach(self)
        super().showEvent(event)

    def _teardown(self) -> None:
        """Viewer closing: drop the mouse callback and the result subscription."""
        if self._callback in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._callback)
        try:
            hub().changed.disconnect(self._on_result_changed)
        except (TypeError, RuntimeError):
            pass

    def _on_result_changed(self, key) -> None:
        if key == viewer_key(self.viewer):
            self.tile_index = None
            self.table.setRowCount(0)
            self.title.setText("New analysis: click a tile.")

    def _on_click(self, viewer, event):
        """Mouse callback: a click (press without drag) picks the tile under the cursor."""
        start = tuple(event.position)
        yield
        while event.type == "mouse_move":
            yield
        if np.allclose(start, event.position):
            self.inspect_world(event.position)

    def inspect_world(self, position) -> int:
        """Inspect the tile at a world position (µm, napari order); returns the tile index or -1."""
        res = get_result(self.viewer)
        if res is None:
            return -1
        layer_name = res.extra.get("slide_layer")
        if layer_name in self.viewer.layers:
            lyr = self.viewer.layers[layer_name]
            scale, translate = lyr.scale, lyr.translate
        else:
            scale, translate = (res.mpp0, res.mpp0), (0.0, 0.0)
        row, col = world_to_level0(np.asarray(position, float), scale, translate)
        t = res.prediction.tiles
        i = tile_at(t["x"].to_numpy(), t["y"].to_numpy(), t["size"].to_numpy(), row, col)
        if i >= 0:
            self.inspect(i)
        return i

    def inspect(self, tile_index: int) -> pd.DataFrame:
        """Fill the table for one tile (row index into the prediction's tile table)."""
        res = get_result(self.viewer)
        if res is None:
            return pd.DataFrame(columns=COLUMNS)
        t = res.prediction.tiles
        df = feature_table(res.bundle, res.prediction, tile_index)
        self.tile_index = tile_index
        x, y, s = (int(t[c].iloc[tile_index]) for c in ("x", "y", "size"))
        text = f"Tile {tile_index}: x={x}, y={y}, {s} px (level 0). Bins are the model's training-cohort histogram bins."
        k = res.prediction.key_tiles
        if len(k) and "tile_index" in k.columns:
            hit = k[k["tile_index"].astype(int) == int(tile_index)]
            if len(hit):
                r = hit.iloc[0]
                text = f"Key tile {int(r['rank'])} ({r['kind']}): {r['reason']}\n" + text
        self.title.setText(text)
        self.table.setRowCount(len(df))
        for r, rec in enumerate(df.itertuples(index=False)):
            for c, v in enumerate(rec):
                txt = f"{v:.4g}" if isinstance(v, float) else str(v)
                self.table.setItem(r, c, QTableWidgetItem(txt))
        return df

    def closeEvent(self, event):  # noqa: N802
        if self._callback in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._callback)
        super().closeEvent(event)

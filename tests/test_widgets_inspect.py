"""Inspect widget's work without a viewer: a tile's feature values against the model's histogram bins."""

from __future__ import annotations

import numpy as np
import pytest
from test_pipeline import make_tiny_bundle, make_tiny_slide

pytest.importorskip("qtpy")


def test_feature_table_places_values_in_the_bundle_bins(tmp_path):
    from napari_lnm._widgets.inspect import feature_table
    from napari_lnm.pipeline import predict_slide

    bundle = make_tiny_bundle()
    pred = predict_slide(make_tiny_slide(tmp_path / "tiny.tif"), bundle)
    df = feature_table(bundle, pred, 0)
    assert list(df.columns) == ["feature", "value", "bin", "bin edges", "metastatic direction"]
    assert len(df) and set(df["feature"]) <= set(pred.tiles.columns)
    edges = bundle.fusion.edges_
    names = list(bundle.fusion.feature_names)
    for row in df.itertuples():
        assert row.value == pytest.approx(float(pred.tiles[row.feature].iloc[0]), nan_ok=True)
        if row.bin != "–":
            b, nb = (int(v) for v in row.bin.split(" of "))
            e = np.asarray(edges)[names.index(row.feature)]
            inner = e[1:-1]
            assert b == 1 + int(np.searchsorted(inner, row.value, side="right")) and nb == len(e) - 1
    assert set(df["metastatic direction"]) <= {"higher in metastatic", "lower in metastatic", "–"}

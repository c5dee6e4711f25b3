"""The nucleus segmentation choice travels with the tiling: extraction -> provenance -> bundle -> prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_lnm import extract
from napari_lnm.errors import UserError
from napari_lnm.features import analyse_tile, feature_names
from napari_lnm.nuclei import segment_nuclei
from napari_lnm.pipeline import prediction_tiling
from napari_lnm.tiling import TilingConfig

CFG = TilingConfig(tile_size=256, max_tiles=2, seed=1)


def test_config_validates_and_records_the_segmentation():
    assert TilingConfig().segmentation == "threshold"
    assert TilingConfig(segmentation="model").to_dict()["segmentation"] == "model"
    with pytest.raises(UserError, match="segmentation must be one of"):
        TilingConfig(segmentation="stardist")


def test_analyse_tile_segments_with_the_chosen_foreground():
    from napari_lnm.synth import make_synthetic_tile

    rgb = make_synthetic_tile(1, "CMS2", seed=5, size=256, mpp=0.5)
    for fg in ("threshold", "model"):
        ta = analyse_tile(rgb, 0.5, segmentation=fg)
        np.testing.assert_array_equal(ta.labels, segment_nuclei(rgb, 0.5, foreground=fg))
    a = analyse_tile(rgb, 0.5, segmentation="threshold").labels
    b = analyse_tile(rgb, 0.5, segmentation="model").labels
    assert not np.array_equal(a, b)  # the setting is not ignored


@pytest.fixture(scope="module")
def cohort_csv(tmp_path_factory):
    from napari_lnm.synth import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort"), n_slides=2, seed=3, size=(768, 768))


def test_extract_records_segmentation_and_reextracts_when_it_changes(cohort_csv, tmp_path):
    out = tmp_path / "f"
    paths = extract.extract_cohort(cohort_csv, out, CFG)
    assert extract.read_provenance(paths[0])["tiling"]["segmentation"] == "threshold"
    model_cfg = TilingConfig(tile_size=256, max_tiles=2, seed=1, segmentation="model")
    assert extract.is_done(paths[0], CFG) and not extract.is_done(paths[0], model_cfg)
    before = pd.read_parquet(paths[0])
    extract.extract_cohort(cohort_csv, out, model_cfg)
    after = pd.read_parquet(paths[0])
    assert extract.read_provenance(paths[0])["tiling"]["segmentation"] == "model"
    assert (before[["x", "y"]].to_numpy() == after[["x", "y"]].to_numpy()).all()  # same tiles
    assert not np.allclose(before[feature_names()].to_numpy(), after[feature_names()].to_numpy(), equal_nan=True)


def test_prediction_uses_the_bundles_segmentation():
    class Bundle:  # what a trained bundle exposes: its training config with the tiling dict
        config = {"tiling": TilingConfig(tile_size=256, segmentation="model").to_dict()}

    cfg = prediction_tiling(Bundle())
    assert cfg.segmentation == "model" and cfg.tile_size == 256 and cfg.max_tiles is None
    old = {"tiling": {k: v for k, v in TilingConfig().to_dict().items() if k != "segmentation"}}
    assert prediction_tiling(type("Old", (), {"config": old})()).segmentation == "threshold"  # older bundles


def test_cli_extract_segmentation_flag(cohort_csv, tmp_path):
    from napari_lnm.cli import main

    slide = extract.read_cohort(cohort_csv).iloc[0].path
    assert main(["extract", str(slide), "--out", str(tmp_path), "--tile-size", "256", "--max-tiles", "1",
                 "--segmentation", "model"]) == 0
    (pq,) = tmp_path.glob("*.parquet")
    assert extract.read_provenance(pq)["tiling"]["segmentation"] == "model"

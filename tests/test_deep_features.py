"""The optional deep.* feature group: config and provenance, the engine, PCA inside the folds, prediction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_lnm.config import DeepFeatures, TilingConfig, file_sha256
from napari_lnm.errors import CohortError, ModelError, UserError

torch = pytest.importorskip("torch")


def _weights(path, arch: str = "resnet18", seed: int = 0):
    """A state_dict file of a randomly initialised ``arch`` written by the test."""
    from napari_lnm.backbones import build_backbone

    torch.manual_seed(seed)
    torch.save(build_backbone(arch).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    return _weights(tmp_path_factory.mktemp("w") / "resnet18.pt")


def _slide(path, label: int = 1, seed: int = 3, px: int = 1024):
    from napari_lnm.synth import make_synthetic_tile, write_pyramid_tiff

    write_pyramid_tiff(path, make_synthetic_tile(label, subtype="CMS2", seed=seed, size=px), mpp=0.5, objective=20.0)
    return path


# ----------------------------------------------------------------------------- config
def test_deep_spec_parse_hash_and_relocation(tmp_path, resnet18_file):
    spec = DeepFeatures.parse(f"resnet18:{resnet18_file}")
    assert spec.sha256 == file_sha256(resnet18_file) and spec.dim == 512
    assert spec.names()[:2] == ["deep.000", "deep.001"] and len(spec.names()) == 512
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(resnet18_file.read_bytes())
    assert spec.relocated(moved).sha256 == spec.sha256
    other = _weights(tmp_path / "other.pt", seed=1)
    with pytest.raises(UserError, match="not the ones the features were made with"):
        spec.relocated(other)
    for bad, msg in (("resnet18", "ARCH:WEIGHTS"), ("alexnet:x.pt", "unknown architecture"),
                     (f"resnet18:{tmp_path / 'none.pt'}", "weights file not found")):
        with pytest.raises(UserError, match=msg):
            DeepFeatures.parse(bad)
    cfg = TilingConfig(deep=spec)
    assert TilingConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert "deep" not in TilingConfig().to_dict()  # records made without deep features stay valid


def test_provenance_records_the_network(tmp_path, resnet18_file):
    from napari_lnm.provenance import extraction_provenance

    spec = DeepFeatures.parse(f"resnet18:{resnet18_file}")
    plain = extraction_provenance(TilingConfig(), None, None, None)
    deep = extraction_provenance(TilingConfig(deep=spec), None, None, None)
    assert deep["tiling"]["deep"]["sha256"] == spec.sha256 and deep["tiling"]["deep"]["arch"] == "resnet18"
    assert deep["feature_schema_hash"] != plain["feature_schema_hash"]


# ----------------------------------------------------------------------------- engine
def test_engine_adds_deterministic_deep_columns(tmp_path, resnet18_file):
    from napari_lnm.backbones import embed, load_backbone
    from napari_lnm.engine import LocalPool, analyse_tiles, column_names, tile_frame
    from napari_lnm.io import open_slide
    from napari_lnm.tiling import read_tile, tile_slide

    path = _slide(tmp_path / "s.tif")
    cfg = TilingConfig(tile_size=256, deep=DeepFeatures.parse(f"resnet18:{resnet18_file}"))
    with open_slide(path) as slide:
        tiles = tile_slide(slide, config=cfg).head(9)
        res = analyse_tiles(slide, tiles, cfg)
        again = analyse_tiles(slide, tiles, cfg)
        rgb = np.stack([read_tile(slide, int(x), int(y), cfg) for x, y in zip(tiles.x, tiles.y)])
    names = column_names(cfg)
    assert res.features.shape == (9, len(names)) and names[-512:] == cfg.deep.names()
    np.testing.assert_array_equal(res.features, again.features)
    deep = res.features[:, -512:]
    assert np.isfinite(deep).all() and deep.std(axis=0).max() > 0
    # the same numbers as the backbone applied to the tiles directly, tile by tile
    net = load_backbone("resnet18", resnet18_file)
    torch.set_num_threads(1)
    np.testing.assert_allclose(deep[:2], embed(net, rgb[:2]), rtol=1e-5, atol=1e-6)
    # a spawned worker pool computes identical numbers
    pooled = analyse_tiles(str(path), tiles, cfg, executor=LocalPool(2), chunk_tiles=4)
    np.testing.assert_array_equal(pooled.features, res.features)
    df = tile_frame("s", tiles.reset_index(drop=True), res.features, cfg)
    assert "deep.511" in df.columns and len(df) == 9
    assert df["deep.000"].dtype == np.float32 and df["nucleus.count"].dtype == np.float64


def test_wrong_weights_fail_before_any_tile(tmp_path, capsys):
    from napari_lnm.cli import main

    bad = _weights(tmp_path / "r18.pt", "resnet18")
    slide = _slide(tmp_path / "s.tif", px=512)
    assert main(["extract", str(slide), "--out", str(tmp_path / "f"), "--deep-features", f"resnet50:{bad}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "resnet50" in err[0]
    assert not (tmp_path / "f").exists()


# ----------------------------------------------------------------------------- PCA inside the folds
def _deep_tables(n_slides: int = 24, n_tiles: int = 15, dim: int = 16, seed: int = 0):
    """Tables of a few hand-crafted features and ``dim`` deep columns; deep.000 marks the slide (its index),
    the label moves the deep columns along one direction."""
    from tests._synthetic_tables import feature_tables

    tables, y = feature_tables(n_slides, n_tiles, seed)
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    out = []
    for i, (t, lab) in enumerate(zip(tables, y)):
        hand = t.iloc[:, :5 + 6]  # meta + 6 hand-crafted features
        deep = rng.normal(size=(n_tiles, dim)) + 1.5 * lab * direction[None, :]
        deep[:, 0] = 1000.0 + i  # the marker of this slide's tiles
        out.append(pd.concat([hand, pd.DataFrame(deep, columns=[f"deep.{j:03d}" for j in range(dim)])], axis=1))
    return out, y


def test_pca_is_fitted_on_training_slides_only(monkeypatch):
    from napari_lnm import fusion as fusion_mod
    from napari_lnm.model import TrainConfig, cross_validate

    tables, y = _deep_tables()
    seen: list[set[int]] = []
    fit = fusion_mod.DeepPCA.fit

    def recording_fit(self, pooled):
        seen.append({int(v) - 1000 for v in np.unique(pooled[:, 0])})
        return fit(self, pooled)

    monkeypatch.setattr(fusion_mod.DeepPCA, "fit", recording_fit)
    cfg = TrainConfig(fusion="mean", test="none", classifier="logreg", cv=3, n_bootstrap=50, deep_components=3)
    rep = cross_validate(tables, y, config=cfg)
    assert len(seen) == 3  # one PCA per outer fold (fixed recipe: no inner CV)
    folds = np.asarray(rep.fold)
    for k, slides in enumerate(seen):
        assert slides == set(np.flatnonzero(folds != k).tolist())  # exactly the fold's training slides
    assert rep.auc > 0.8  # the label's direction survives the projection


def test_pca_in_auto_recipe_inner_folds(monkeypatch):
    from napari_lnm import fusion as fusion_mod
    from napari_lnm.model import TrainConfig, train_model

    tables, y = _deep_tables(n_slides=16)
    seen: list[int] = []
    fit = fusion_mod.DeepPCA.fit
    monkeypatch.setattr(fusion_mod.DeepPCA, "fit",
                        lambda self, pooled: (seen.append(len(np.unique(pooled[:, 0]))), fit(self, pooled))[1])
    b = train_model(tables, y, TrainConfig(recipe="auto", grid=("seed", "mean-none-logreg"), n_bootstrap=50,
                                           deep_components=4))
    assert max(seen) == 16 and min(seen) < 16  # inner folds fit on their training part, the final model on all
    assert len(b.fusion.pca.names) == 4 and b.fusion.pca.components.shape == (4, 16)


def test_projected_bundle_round_trip_and_damage(tmp_path):
    from napari_lnm.fusion import ProjectedFusion
    from napari_lnm.model import ModelBundle, TrainConfig, train_model

    tables, y = _deep_tables()
    b = train_model(tables, y, TrainConfig(fusion="histogram", bins=3, test="none", classifier="logreg",
                                           deep_components=3))
    assert isinstance(b.fusion, ProjectedFusion) and b.fusion.kind == "histogram" and b.fusion.bins == 3
    assert any(e.startswith("deep.pc01|") for e in b.fusion.element_names)
    assert not any(e.startswith("deep.0") for e in b.fusion.element_names)  # the raw embedding is never fused
    b.save(tmp_path / "m")
    back = ModelBundle.load(tmp_path / "m")
    assert isinstance(back.fusion, ProjectedFusion) and back.feature_names == b.feature_names
    np.testing.assert_array_equal(back.predict_proba(tables), b.predict_proba(tables))
    meta = json.loads((tmp_path / "m" / "bundle.json").read_text())
    meta["fusion"]["projection"]["components"][0] = meta["fusion"]["projection"]["components"][0][:-1]
    (tmp_path / "m" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="projection.components"):
        ModelBundle.load(tmp_path / "m")


def test_mixed_deep_networks_refused(tmp_path, resnet18_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from napari_lnm.model import load_feature_tables
    from napari_lnm.provenance import METADATA_KEY, extraction_provenance

    other = _weights(tmp_path / "other.pt", seed=2)
    tables, _ = _deep_tables(n_slides=2, dim=4)
    for t, w in zip(tables, (resnet18_file, other)):
        cfg = TilingConfig(deep=DeepFeatures.parse(f"resnet18:{w}"))
        tbl = pa.Table.from_pandas(t, preserve_index=False)
        meta = json.dumps(extraction_provenance(cfg, None, None, None)).encode()
        pq.write_table(tbl.replace_schema_metadata({METADATA_KEY: meta}), tmp_path / f"{t.slide_id[0]}.parquet")
    cohort = pd.DataFrame({"slide_id": [t.slide_id[0] for t in tables]})
    with pytest.raises(CohortError, match="another deep-feature network"):
        load_feature_tables(cohort, tmp_path)


# ----------------------------------------------------------------------------- explanations
def test_deep_explanations_say_so():
    from napari_lnm.explain import KIND_COLOURS, explain_element, feature_kind, group_deep

    assert feature_kind("deep.pc02") == "other" and feature_kind("deep.017") == "other"
    text = explain_element({"feature": "deep.pc01", "bin": 2, "value": 0.4, "bin_lo": 0.1, "bin_hi": 0.9,
                            "contribution": 0.3, "direction": "higher in metastatic"})
    assert "deep feature, no direct meaning" in text
    pairs = group_deep([("nucleus.area_mean|bin1", 2.0), ("deep.pc01|bin2", 1.0), ("deep.pc03|mean", 0.5)])
    assert pairs == [("nucleus.area_mean|bin1", 2.0), ("deep features (2 elements)", 1.5)]
    assert group_deep([("deep.abmil|logit", 1.0)]) == [("deep features (1 element)", 1.0)]
    assert feature_kind(pairs[1][0]) == "other" and "other" in KIND_COLOURS


# ----------------------------------------------------------------------------- end to end
def test_extract_train_predict_with_deep_features(tmp_path, resnet18_file, capsys):
    from napari_lnm.cli import main
    from napari_lnm.model import ModelBundle
    from napari_lnm.prediction import Prediction

    rows = []
    for i in range(8):
        p = _slide(tmp_path / f"s{i}.tif", label=i % 2, seed=10 + i, px=512)
        rows.append({"slide_id": f"s{i}", "path": str(p), "label": i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    spec = f"resnet18:{resnet18_file}"
    assert main(["extract", "--cohort", str(tmp_path / "cohort.csv"), "--out", str(tmp_path / "f"),
                 "--tile-size", "256", "--deep-features", spec]) == 0
    df = pd.read_parquet(tmp_path / "f" / "s0.parquet")
    assert df.filter(like="deep.").shape[1] == 512 and len(df) == 4
    assert main(["train", str(tmp_path / "f"), "--cohort", str(tmp_path / "cohort.csv"), "--out",
                 str(tmp_path / "m"), "--cv", "2", "--fusion", "mean", "--select", "none", "--classifier",
                 "logreg", "--bootstrap", "20"]) == 0
    bundle = ModelBundle.load(tmp_path / "m")
    assert bundle.config["tiling"]["deep"]["sha256"] == file_sha256(resnet18_file)
    assert main(["predict", str(tmp_path / "s1.tif"), "--model", str(tmp_path / "m"), "--out",
                 str(tmp_path / "p"), "--workers", "1"]) == 0
    pred = Prediction.load(tmp_path / "p")
    assert 0 <= pred.probability <= 1 and len(pred.key_tiles) >= 1
    assert {"deep.pc01", "deep.pc02"} <= set(pred.tiles.columns)  # the components the model fused, per tile
    deep_rows = pred.key_tiles[pred.key_tiles["feature"].str.startswith("deep.")]
    assert all("deep feature, no direct meaning" in r for r in deep_rows["reason"])
    assert set(deep_rows["kind"]) <= {"other"}
    # ABMIL on the embeddings: its tiles' shares of the log-odds are the key tiles
    assert main(["train", str(tmp_path / "f"), "--cohort", str(tmp_path / "cohort.csv"), "--out",
                 str(tmp_path / "mil"), "--cv", "2", "--classifier", "abmil", "--bootstrap", "20"]) == 0
    assert ModelBundle.load(tmp_path / "mil").fusion.kind == "abmil"
    assert main(["predict", str(tmp_path / "s1.tif"), "--model", str(tmp_path / "mil"), "--out",
                 str(tmp_path / "pm"), "--workers", "1"]) == 0
    pm = Prediction.load(tmp_path / "pm")
    assert pm.tiles["deep.attention"].mean() == pytest.approx(1.0)
    kt = pm.key_tiles
    assert len(kt) >= 1 and set(kt["feature"]) == {"deep.abmil"}
    assert all(r.startswith("ABMIL: this tile adds") and "no direct meaning" in r for r in kt["reason"])
    # the weights moved: predict says where they should be; given, their bytes are checked
    moved = tmp_path / "moved.pt"
    resnet18_file.rename(moved)
    try:
        capsys.readouterr()
        assert main(["predict", str(tmp_path / "s1.tif"), "--model", str(tmp_path / "m"), "--out",
                     str(tmp_path / "p2")]) == 1
        assert "--deep-weights" in capsys.readouterr().err
        assert main(["predict", str(tmp_path / "s1.tif"), "--model", str(tmp_path / "m"), "--out",
                     str(tmp_path / "p3"), "--deep-weights", str(moved), "--workers", "1"]) == 0
        assert Prediction.load(tmp_path / "p3").probability == pytest.approx(pred.probability)
        assert main(["predict", str(tmp_path / "s1.tif"), "--model", str(tmp_path / "m"), "--out",
                     str(tmp_path / "p4"), "--deep-weights", str(_weights(tmp_path / "x.pt", seed=5))]) == 1
        assert "not the ones the features were made with" in capsys.readouterr().err
    finally:
        moved.rename(resnet18_file)


# ----------------------------------------------------------------------------- ABMIL as the bundle's fusion
def test_abmil_bundle_round_trip_and_tile_values(tmp_path):
    from napari_lnm.mil import MILFusion
    from napari_lnm.model import ModelBundle, TrainConfig, cross_validate, train_model

    tables, y = _deep_tables(n_slides=16, n_tiles=10, dim=8)
    cfg = TrainConfig(fusion="abmil", test="none", classifier="logreg", cv=2, n_bootstrap=20)
    b = train_model(tables, y, cfg)
    assert isinstance(b.fusion, MILFusion) and b.fusion.model.columns == [f"deep.{j:03d}" for j in range(8)]
    assert b.fusion.element_names == ["deep.abmil|logit"] and b.fusion.info["chosen"]
    assert "inner-CV log-odds" in b.config["calibration_note"]
    p = b.predict_proba(tables)
    assert roc_auc(y, p) > 0.8
    b.save(tmp_path / "m")
    back = ModelBundle.load(tmp_path / "m")
    np.testing.assert_array_equal(back.predict_proba(tables), p)
    t = back.fusion.with_tile_values(tables[1])
    assert np.isclose(t["deep.attention"].mean(), 1.0)
    logit = back.fusion.transform([tables[1]])[0, 0]
    bias = float(back.fusion.model.net["head_b"][0])
    assert t["deep.abmil"].sum() + bias == pytest.approx(logit)
    rep = cross_validate(tables, y, config=cfg)
    assert len(rep.fold_aucs) == 2 and np.isfinite(rep.oof).all()


def roc_auc(y, p):
    from napari_lnm.model import roc_auc as auc

    return auc(np.asarray(y), np.asarray(p))


def test_evaluate_refuses_features_of_other_weights():
    from napari_lnm.cli.evaluate import tiling_mismatch

    base = {"magnification": 20.0, "tile_size": 512}
    a = {**base, "deep": {"arch": "resnet18", "weights": "/a.pt", "sha256": "a" * 64}}
    moved = {**base, "deep": {"arch": "resnet18", "weights": "/elsewhere/a.pt", "sha256": "a" * 64}}
    other = {**base, "deep": {"arch": "resnet18", "weights": "/a.pt", "sha256": "b" * 64}}
    assert tiling_mismatch(a, moved) == ""  # the same bytes at another path
    assert "deep features resnet18 weights sha256 bbbbbbbbbbbb" in tiling_mismatch(a, other)
    assert "deep features none" in tiling_mismatch(a, base)

"""Subtype CNN: majority vote, slide split, training on tiny tiles, bundle round-trip, bad weights."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_lnm.errors import CohortError, ModelError, UserError
from napari_lnm.subtype import SUBTYPES, vote


# ----------------------------------------------------------------------------- vote (pure numpy)
def test_vote_majority_counts_and_mean():
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.1, 0.8, 0.05, 0.05]], np.float32)
    v = vote(p)
    assert v.subtype == "CMS1"
    assert v.counts == {"CMS1": 2, "CMS2": 1, "CMS3": 0, "CMS4": 0}
    assert v.n_tiles == 3
    assert v.mean_probs["CMS2"] == pytest.approx((0.1 + 0.2 + 0.8) / 3)
    assert v.probs.shape == (3, 4) and v.probs.dtype == np.float32
    assert list(v.tile_subtypes()) == ["CMS1", "CMS1", "CMS2"]
    assert json.loads(json.dumps(v.to_dict()))["subtype"] == "CMS1"


def test_vote_majority_beats_higher_mean():
    # CMS4 wins one tile very confidently (higher mean), CMS3 wins two tiles narrowly: majority rules
    p = np.array([[0.0, 0.0, 0.51, 0.49], [0.0, 0.0, 0.51, 0.49], [0.0, 0.0, 0.0, 1.0]])
    assert vote(p).subtype == "CMS3"


def test_vote_tie_broken_by_mean_probability():
    p = np.array([[0.9, 0.1, 0.0, 0.0], [0.45, 0.55, 0.0, 0.0],
                  [0.0, 0.0, 0.6, 0.4], [0.0, 0.0, 0.4, 0.6]])
    v = vote(p)  # counts all 1; means CMS1 .3375, CMS2 .1625, CMS3 .25, CMS4 .25
    assert v.counts == {"CMS1": 1, "CMS2": 1, "CMS3": 1, "CMS4": 1}
    assert v.subtype == "CMS1"
    q = np.array([[0.55, 0.45, 0, 0], [0.05, 0.95, 0, 0]])  # 1-1 tie, CMS2 has the higher mean
    assert vote(q).subtype == "CMS2"


def test_vote_exact_tie_is_deterministic_first_class():
    p = np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert vote(p).subtype == "CMS2"
    assert vote(p[::-1]).subtype == "CMS2"


def test_vote_rejects_bad_input():
    with pytest.raises(UserError, match="shape"):
        vote(np.ones((3, 5)))
    with pytest.raises(UserError, match="no tiles"):
        vote(np.zeros((0, 4)))
    with pytest.raises(UserError, match="NaN"):
        vote(np.array([[np.nan, 0, 0, 1.0]]))


def test_vote_custom_classes():
    v = vote(np.array([[0.2, 0.8]]), classes=("A", "B"))
    assert v.subtype == "B" and v.counts == {"A": 0, "B": 1}


# ----------------------------------------------------------------------------- torch parts
torch = pytest.importorskip("torch")

from napari_lnm.subtype import (  # noqa: E402
    SubtypeModel, augment_batch, build_network, load_weights, split_slides, stain_augment, train_subtype,
)
from napari_lnm.progress import Cancelled  # noqa: E402


def _tile(subtype: str, seed: int, size: int) -> np.ndarray:
    """A synthetic H&E tile of the subtype (napari_lnm.synth), or a coloured texture when synth is absent."""
    try:
        from napari_lnm.synth import make_synthetic_tile
    except ImportError:
        rng = np.random.default_rng(seed)
        base = np.array([[200, 120, 180], [150, 100, 200], [220, 170, 200], [240, 200, 220]])[SUBTYPES.index(subtype)]
        return np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return make_synthetic_tile(seed % 2, subtype, seed=seed, size=size)


@pytest.fixture(scope="module")
def tiny_cohort():
    """16 slides (4 per subtype) of 6 tiles of 64 px each."""
    tiles, rows = {}, []
    for i in range(16):
        sub = SUBTYPES[i % 4]
        sid = f"s{i:02d}"
        tiles[sid] = np.stack([_tile(sub, 100 * i + j, 64) for j in range(6)])
        rows.append((sid, f"{sid}.tif", i % 2, sub))
    return tiles, pd.DataFrame(rows, columns=["slide_id", "path", "label", "subtype"])


@pytest.fixture(scope="module")
def trained(tiny_cohort):
    tiles, df = tiny_cohort
    return train_subtype(tiles, df, None, arch="small", epochs=4, batch_size=16, lr=3e-3, input_size=64, seed=0)


def test_split_is_by_slide_stratified_and_seeded():
    ids = [f"s{i}" for i in range(12)]
    labs = [SUBTYPES[i % 4] for i in range(12)]
    tr, va = split_slides(ids, labs, 0.34, seed=1)
    assert not set(tr) & set(va) and set(tr) | set(va) == set(ids)
    assert sorted(labs[ids.index(s)] for s in va) == sorted(SUBTYPES)  # one per subtype
    assert split_slides(ids, labs, 0.34, seed=1) == (tr, va)
    assert split_slides(ids, labs, 0.34, seed=2) != (tr, va)
    tr1, va1 = split_slides(["a", "b"], ["CMS1", "CMS2"], 0.5)  # singletons stay in training
    assert va1 == [] and tr1 == ["a", "b"]
    with pytest.raises(UserError):
        split_slides(ids, labs, 1.0)


def test_augment_keeps_pixels_and_stain_jitter_is_small():
    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    y = augment_batch(x, g, stain=False)
    assert y.shape == (8, 3, 16, 16)
    for i in range(8):  # flips/rotations only permute pixels
        a = np.sort(x[i].numpy().reshape(-1, 3), axis=0)
        b = np.sort(np.round(y[i].permute(1, 2, 0).numpy() * 255).reshape(-1, 3), axis=0)
        np.testing.assert_array_equal(a, b)
    rgb = torch.rand(4, 3, 8, 8, generator=g) * 0.8 + 0.2
    same = stain_augment(rgb, g, sigma_alpha=0.0, sigma_beta=0.0)
    torch.testing.assert_close(same, rgb, atol=1e-5, rtol=1e-5)
    jit = stain_augment(rgb, g)
    assert 0 < float((jit - rgb).abs().mean()) < 0.1 and float(jit.min()) >= 0 and float(jit.max()) <= 1


def test_training_loss_falls_and_reports(trained):
    r = trained
    assert len(r.epoch_losses) == 4
    assert r.epoch_losses[-1] < 0.8 * r.epoch_losses[0]
    assert np.mean(r.step_losses[-3:]) < np.mean(r.step_losses[:3])
    assert set(r.train_slides).isdisjoint(r.val_slides) and len(r.val_slides) == 4
    assert r.n_train_tiles == 72 and r.n_val_tiles == 24
    cm = np.array(r.confusion)
    assert cm.shape == (4, 4) and cm.sum() == 4 and np.array(r.tile_confusion).sum() == 24
    assert r.tile_accuracy == pytest.approx(np.trace(np.array(r.tile_confusion)) / 24)
    assert r.slide_accuracy == pytest.approx(np.trace(cm) / 4)
    assert "confusion" in r.format_report() and r.model.config["training"]["epochs"] == 4


def test_training_is_deterministic(tiny_cohort, trained):
    tiles, df = tiny_cohort
    again = train_subtype(tiles, df, None, arch="small", epochs=4, batch_size=16, lr=3e-3, input_size=64, seed=0)
    assert again.step_losses == trained.step_losses
    np.testing.assert_array_equal(again.model.predict_tiles(tiles["s03"]), trained.model.predict_tiles(tiles["s03"]))


def test_training_rejects_unknown_subtype_and_cancels(tiny_cohort):
    tiles, df = tiny_cohort
    bad = df.copy()
    bad.loc[0, "subtype"] = "CMS9"
    with pytest.raises(CohortError, match="CMS9"):
        train_subtype(tiles, bad, None, epochs=1, input_size=32)
    with pytest.raises(CohortError, match="subtype"):
        train_subtype(tiles, df.drop(columns="subtype"), None, epochs=1, input_size=32)
    with pytest.raises(Cancelled):
        train_subtype(tiles, df, None, epochs=1, input_size=32, should_stop=lambda: True)


def test_cohort_reading_rules(tiny_cohort, tmp_path):
    from napari_lnm.subtype import load_tile_sets

    tiles, df = tiny_cohort
    csv = tmp_path / "c.csv"
    d = df.drop(columns=["label"]).astype(str)
    d.loc[1, "subtype"] = ""  # unknown subtype: slide left out, no LNM label needed
    d.loc[2, "subtype"] = " cms3 "
    d.to_csv(csv, index=False)
    got, rows = load_tile_sets(tiles, csv, input_size=32, max_tiles_per_slide=2)
    assert "s01" not in got and len(got) == 15 and all(len(a) == 2 for a in got.values())
    assert rows.set_index("slide_id").loc["s02", "subtype"] == "CMS3"
    assert rows["path"].iloc[0] == str(tmp_path / "s00.tif")
    with pytest.raises(CohortError, match="not found"):
        load_tile_sets(tiles, tmp_path / "absent.csv")
    with pytest.raises(CohortError, match="duplicate|more than once"):
        load_tile_sets(tiles, pd.concat([df, df.iloc[:1]]))
    with pytest.raises(CohortError, match="no 'path'"):
        load_tile_sets(None, df.drop(columns="path"))
    bad = tmp_path / "stack"
    bad.mkdir()
    np.save(bad / "s00.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(CohortError, match="s00.npy"):
        load_tile_sets(bad, df.iloc[:1])


def test_bundle_round_trip(trained, tiny_cohort, tmp_path):
    tiles, _ = tiny_cohort
    x = np.concatenate([tiles["s00"], tiles["s01"]])
    p1 = trained.model.predict_tiles(x)
    assert p1.shape == (12, 4) and p1.dtype == np.float32
    np.testing.assert_allclose(p1.sum(1), 1.0, atol=1e-5)
    trained.model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["arch"] == "small" and cfg["classes"] == list(SUBTYPES) and cfg["input_size"] == 64
    assert cfg["mpp"] == pytest.approx(0.5) and "mean" in cfg["normalisation"] and cfg["package_version"]
    m2 = SubtypeModel.load(tmp_path / "m")
    np.testing.assert_allclose(m2.predict_tiles(x), p1, atol=1e-6)
    np.testing.assert_allclose(m2.predict_tiles(x[0]), p1[:1], atol=1e-6)  # single tile
    with pytest.raises(UserError, match="uint8"):
        m2.predict_tiles(x.astype(np.float32))
    # physical scale: trained on 512-px tiles at 20x fed at 64 px -> 4 µm per input px
    assert m2.input_mpp == pytest.approx(4.0)
    assert (m2.input_side(512, 0.5), m2.input_side(1024, 0.5), m2.input_side(256, 1.0)) == (64, 128, 64)
    np.testing.assert_allclose(m2.predict_tiles(x, mpp=4.0), p1, atol=1e-6)  # 64 px at 4 µm/px: no resize


def test_bad_bundles_give_model_error(trained, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        SubtypeModel.load(tmp_path / "nope")
    d = trained.model.save(tmp_path / "m")
    (d / "weights.npz").write_text("not weights")
    with pytest.raises(ModelError, match="weights.npz"):
        SubtypeModel.load(d)
    d = trained.model.save(tmp_path / "m")
    state = {k: v.numpy() for k, v in trained.model.net.state_dict().items()}
    state["fc.weight"] = np.zeros((3, 7), np.float32)
    np.savez(d / "weights.npz", **state)
    with pytest.raises(ModelError, match=r"fc\.weight"):
        SubtypeModel.load(d)
    (d / "config.json").write_text("{broken")
    with pytest.raises(ModelError, match="config.json"):
        SubtypeModel.load(d)
    (d / "config.json").unlink()
    with pytest.raises(ModelError, match="config.json"):
        SubtypeModel.load(d)


def test_external_weights_files(tmp_path):
    txt = tmp_path / "weights.pth"
    txt.write_text("hello, I am not a state dict")
    net = build_network("small")
    with pytest.raises(ModelError, match="weights.pth"):
        load_weights(net, txt)
    with pytest.raises(ModelError, match="not found"):
        load_weights(net, tmp_path / "absent.pt")
    # a checkpoint for another architecture: nothing matches
    other = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(ModelError, match="none of its 1 tensors"):
        load_weights(net, other)
    # an ImageNet-style ResNet18 checkpoint (1000-class head, DataParallel prefix): body loads, head stays random
    torch.manual_seed(1)
    src = build_network("resnet18", 1000)
    ckpt = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, ckpt)
    dst = build_network("resnet18", 4)
    rep = load_weights(dst, ckpt)
    assert "fc.weight" in rep.summary() and rep.skipped_shape and not rep.unexpected
    torch.testing.assert_close(dst.state_dict()["layer3.1.conv2.weight"], src.state_dict()["layer3.1.conv2.weight"])
    with pytest.raises(ModelError, match="do not match"):
        load_weights(build_network("resnet18", 4), ckpt, strict=True)
    # .npz weights work too
    npz = tmp_path / "small.npz"
    np.savez(npz, **{k: v.numpy() for k, v in build_network("small").state_dict().items()})
    assert not load_weights(build_network("small"), npz).missing


def test_architectures_forward_shapes():
    x = torch.zeros(2, 3, 64, 64)
    for arch in ("small", "resnet18"):
        net = build_network(arch).eval()
        assert net(x).shape == (2, 4)
    with pytest.raises(ModelError, match="unknown"):
        build_network("vgg")
    # plain torch, no torchvision: a 4-class head at the smallest input Inception-v3 takes
    assert build_network("inception_v3").eval()(torch.zeros(1, 3, 75, 75)).shape == (1, 4)


def test_cli_train_subtype_on_tile_stacks(tiny_cohort, tmp_path, capsys):
    from napari_lnm.cli import main

    tiles, df = tiny_cohort
    src = tmp_path / "tiles"
    src.mkdir()
    for sid, a in tiles.items():
        np.save(src / f"{sid}.npy", a)
    df.to_csv(tmp_path / "cohort.csv", index=False)
    out = tmp_path / "model"
    rc = main(["train-subtype", str(src), "--cohort", str(tmp_path / "cohort.csv"), "--out", str(out),
               "--epochs", "1", "--batch-size", "16", "--input-size", "32", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "weights.npz").is_file() and SubtypeModel.load(out).input_size == 32
    assert "slide (majority vote)" in capsys.readouterr().out
    bad = tmp_path / "bad.pt"
    bad.write_text("junk")
    rc = main(["train-subtype", str(src), "--cohort", str(tmp_path / "cohort.csv"), "--out", str(tmp_path / "m2"),
               "--weights", str(bad), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "bad.pt" in err and "Traceback" not in err


def test_slides_end_to_end_cache_and_predict(tmp_path, capsys):
    """Tiles read from synthetic slides, cached, reused; a slide's vote; the predict-subtype command."""
    synth = pytest.importorskip("napari_lnm.synth")
    tiling = pytest.importorskip("napari_lnm.tiling")
    io = pytest.importorskip("napari_lnm.io")
    from napari_lnm.cli import main
    from napari_lnm.subtype import load_tile_sets, predict_slide_subtype

    csv = synth.make_cohort(tmp_path / "c", 4, seed=0, size=(768, 768))
    cfg = tiling.TilingConfig(tile_size=256, min_tissue=0.3)
    res = train_subtype(None, csv, tmp_path / "model", epochs=1, batch_size=8, input_size=32, tiling_config=cfg,
                        cache_dir=tmp_path / "cache", val_fraction=0, max_tiles_per_slide=6)
    assert res.n_train_tiles == 24 and res.tile_accuracy is None
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"synth_000{i}.npy" for i in range(4)] + [
        "tiling.json"]
    from napari_lnm.subtype.train import source_tiling

    assert source_tiling(tmp_path / "cache") == cfg  # a later run from the cache knows the tile geometry
    cached, _ = load_tile_sets(tmp_path / "cache", csv, input_size=32)
    again, _ = load_tile_sets(None, csv, input_size=32, max_tiles_per_slide=6, tiling_config=cfg)
    for sid in cached:
        np.testing.assert_array_equal(cached[sid], again[sid])
    # a features folder: tiles at the x, y of each slide's Parquet table
    from napari_lnm.subtype import resize_tiles

    feats = tmp_path / "feats"
    feats.mkdir()
    df = pd.read_csv(csv)
    expected = {}
    for sid, p in zip(df["slide_id"], df["path"]):
        with io.open_slide(tmp_path / "c" / p) as slide:
            coords = tiling.tile_slide(slide, config=cfg).iloc[[2, 0, 1]]
            coords.to_parquet(feats / f"{sid}.parquet")
            expected[sid] = resize_tiles(np.stack([tiling.read_tile(slide, x, y, cfg)
                                                   for x, y in zip(coords["x"], coords["y"])]), 32)
    from_feats, _ = load_tile_sets(feats, csv, input_size=32, tiling_config=cfg)
    for sid in expected:
        np.testing.assert_array_equal(from_feats[sid], expected[sid])
    (tmp_path / "feats" / "synth_0001.parquet").unlink()
    with pytest.raises(CohortError, match="synth_0001"):
        load_tile_sets(feats, csv, input_size=32, tiling_config=cfg)
    model = SubtypeModel.load(tmp_path / "model")
    assert model.config["tile_size"] == 256
    calls = []
    path = pd.read_csv(csv)["path"][0]
    with io.open_slide(tmp_path / "c" / path) as slide:
        tiles = tiling.tile_slide(slide, config=model.tiling_config())
        v = predict_slide_subtype(slide, model, tiles, progress=lambda d, t, m: calls.append((d, t)), batch_size=4)
        big = predict_slide_subtype(slide, model, None, tiling.TilingConfig(tile_size=512, min_tissue=0.3))
    assert v.probs.shape == (len(tiles), 4) and v.n_tiles == len(tiles) and calls[-1] == (len(tiles), len(tiles))
    assert v.subtype in SUBTYPES
    assert big.probs.shape[1] == 4 and big.n_tiles >= 1
    rc = main(["predict-subtype", str(tmp_path / "c" / path), "--model", str(tmp_path / "model"),
               "--json", str(tmp_path / "v.json"), "--tiles-csv", str(tmp_path / "t.csv"), "--quiet"])
    assert rc == 0
    per_tile = pd.read_csv(tmp_path / "t.csv")
    assert len(per_tile) == len(tiles) and list(per_tile.columns[:4]) == ["x", "y", "size", "subtype"]
    assert per_tile["subtype"].value_counts().to_dict() == {k: c for k, c in v.counts.items() if c}
    assert json.loads((tmp_path / "v.json").read_text())["subtype"] == v.subtype
    assert f"subtype {v.subtype}" in capsys.readouterr().out


def test_features_folder_from_extract(tmp_path):
    """Parquet tables from ``extract`` carry the tiling and slide path: training reads tiles at their geometry."""
    synth = pytest.importorskip("napari_lnm.synth")
    extract = pytest.importorskip("napari_lnm.extract")
    tiling = pytest.importorskip("napari_lnm.tiling")
    from napari_lnm.subtype.train import source_tiling

    csv = synth.make_cohort(tmp_path / "c", 1, seed=0, size=(512, 512))
    cohort = pd.read_csv(csv)
    cfg = tiling.TilingConfig(tile_size=256, min_tissue=0.3)
    extract.extract_slide(tmp_path / "c" / cohort["path"][0], tmp_path / "f" / "synth_0000.parquet", cfg)
    assert source_tiling(tmp_path / "f") == cfg
    no_path = cohort.drop(columns="path")  # the slide path comes from the Parquet's provenance
    res = train_subtype(tmp_path / "f", no_path, None, epochs=1, batch_size=2, input_size=32, val_fraction=0)
    assert res.n_train_tiles >= 2 and res.model.config["tile_size"] == 256
    with pytest.raises(CohortError, match="256 px"):
        train_subtype(tmp_path / "f", no_path, None, epochs=1, input_size=32, val_fraction=0,
                      tiling_config=tiling.TilingConfig(tile_size=512))


def test_split_keeps_a_patients_slides_together():
    from napari_lnm.subtype import split_slides

    ids = [f"s{i}" for i in range(12)]
    labels = ["CMS1"] * 6 + ["CMS2"] * 6
    groups = [f"p{i // 2}" for i in range(12)]  # two slides per patient
    for seed in range(5):
        train, val = split_slides(ids, labels, 0.34, seed, groups=groups)
        assert sorted(train + val) == sorted(ids) and val
        pat = dict(zip(ids, groups))
        assert not ({pat[s] for s in train} & {pat[s] for s in val})

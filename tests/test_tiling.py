"""napari_lnm.tiling: sliding window inside ROI ∩ tissue, sampling, read_tile."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_lnm.errors import UserError
from napari_lnm.io import open_slide
from napari_lnm.progress import Cancelled
from napari_lnm.engine import META_COLUMNS
from napari_lnm.tiling import TilingConfig, read_tile, tile_size_level0, tile_slide
from napari_lnm.tissue import TissueMask


@pytest.fixture(scope="module")
def svs(sample_svs):
    with open_slide(sample_svs) as s:
        yield s


@pytest.fixture(scope="module")
def he_pyramid(tmp_path_factory):
    """4096x3072 px, 0.25 µm/px SubIFD pyramid: white glass with an H&E-like block at x 1024..3072, y 512..2560."""
    rng = np.random.default_rng(0)
    img = np.full((3072, 4096, 3), 242, np.uint8)
    block = np.stack([180 + rng.integers(-30, 30, (2048, 2048)), 90 + rng.integers(-30, 30, (2048, 2048)),
                      170 + rng.integers(-30, 30, (2048, 2048))], axis=-1).astype(np.uint8)
    img[512:2560, 1024:3072] = block
    path = tmp_path_factory.mktemp("he") / "he.tif"
    levels = [img, img[::2, ::2], img[::4, ::4], img[::8, ::8]]
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(256, 256), subifds=3, photometric="rgb", compression="zlib",
                 resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
        for a in levels[1:]:
            tw.write(np.ascontiguousarray(a), tile=(256, 256), subfiletype=1, photometric="rgb", compression="zlib")
    return path, levels


@pytest.mark.parametrize("kwargs, match", [
    ({"tile_size": 300}, "tile size"), ({"magnification": 15}, "magnification"), ({"overlap": 1.0}, "overlap"),
    ({"overlap": -0.1}, "overlap"), ({"min_tissue": 1.5}, "tissue"), ({"max_tiles": 0}, "max tiles"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(UserError, match=match):
        TilingConfig(**kwargs)


def test_config_mpp():
    assert TilingConfig().mpp == 0.5
    assert TilingConfig(magnification=40).mpp == 0.25
    assert TilingConfig(magnification=5, tile_size=224).mpp == 2.0
    assert TilingConfig(magnification=10).to_dict()["magnification"] == 10.0


def test_tile_svs_default(svs):
    df = tile_slide(svs)
    assert list(df.columns) == list(META_COLUMNS[1:])
    assert len(df) > 0
    assert tile_size_level0(svs, TilingConfig()) == 513  # round(512 * 0.5 / 0.499)
    assert (df["size"] == 513).all()
    assert (df.x % 513 == 0).all() and (df.y % 513 == 0).all()
    assert (df.x + df["size"] <= 2220).all() and (df.y + df["size"] <= 2967).all()
    assert (df.tissue_fraction >= 0.5).all() and (df.tissue_fraction <= 1).all()
    assert df.sort_values(["y", "x"]).index.tolist() == df.index.tolist()
    tile = read_tile(svs, df.x[0], df.y[0], TilingConfig())
    assert tile.shape == (512, 512, 3) and tile.dtype == np.uint8 and tile.std() > 10


@pytest.mark.parametrize("mag", [5, 10, 20, 40])
def test_all_magnifications(svs, mag):
    cfg = TilingConfig(magnification=mag, tile_size=224, min_tissue=0.3)
    df = tile_slide(svs, config=cfg)
    size0 = int(round(224 * (10 / mag) / 0.499))
    assert len(df) > 0 and (df["size"] == size0).all()
    tile = read_tile(svs, df.x.iloc[0], df.y.iloc[0], cfg)
    assert tile.shape == (224, 224, 3)


def test_overlap_and_sampling(svs):
    full = tile_slide(svs, config=TilingConfig(tile_size=256, overlap=0.5, min_tissue=0.3))
    stride = round(257 * 0.5)
    assert (full.x % stride == 0).all() and (full.y % stride == 0).all()
    assert len(full) > 20
    cfg = TilingConfig(tile_size=256, overlap=0.5, min_tissue=0.3, max_tiles=10, seed=7)
    a, b = tile_slide(svs, config=cfg), tile_slide(svs, config=cfg)
    assert len(a) == 10 and a.equals(b)  # deterministic
    keys = set(zip(full.x, full.y))
    assert set(zip(a.x, a.y)) <= keys  # a subset of the full grid
    assert list(zip(a.y, a.x)) == sorted(zip(a.y, a.x))
    c = tile_slide(svs, config=TilingConfig(tile_size=256, overlap=0.5, min_tissue=0.3, max_tiles=10, seed=8))
    assert not a.equals(c)
    big = tile_slide(svs, config=TilingConfig(tile_size=256, overlap=0.5, min_tissue=0.3, max_tiles=10_000))
    assert big.equals(full)


def test_tissue_fraction_matches_brute_force():
    """Integral-image fractions equal the mean of the mask over each tile, when tiles align with mask px."""

    class FakeSlide:
        dimensions = (6400, 4800)
        mpp = 0.5

    rng = np.random.default_rng(3)
    mask = rng.random((75, 100)) < 0.6  # 64 level-0 px per mask px
    tm = TissueMask(mask=mask, downsample=64.0, mpp=32.0)
    cfg = TilingConfig(tile_size=256, min_tissue=0.0, overlap=0.5)  # 256 level-0 px = 4 mask px, stride 2
    df = tile_slide(FakeSlide(), config=cfg, tissue=tm)
    assert len(df) > 100
    for x, y, f in zip(df.x, df.y, df.tissue_fraction):
        r, c = y // 64, x // 64
        assert f == pytest.approx(mask[r:r + 4, c:c + 4].mean())
    # every tile with any tissue is present
    expected = sum(mask[r:r + 4, c:c + 4].any() for r in range(0, 72, 2) for c in range(0, 97, 2))
    assert len(df) == expected


def test_synthetic_pyramid_tissue_and_roi(he_pyramid):
    path, levels = he_pyramid
    with open_slide(path) as s:
        cfg = TilingConfig(magnification=20, tile_size=256)  # 512 level-0 px at 0.25 µm/px
        df = tile_slide(s, config=cfg)
        assert (df["size"] == 512).all()
        # the tissue block spans x 1024..3072, y 512..2560: exactly 4 x 4 fully covered tiles,
        # partly covered neighbours are rejected or kept by their fraction
        full = df[df.tissue_fraction > 0.95]
        assert set(zip(full.x, full.y)) == {(x, y) for x in range(1024, 3072, 512) for y in range(512, 2560, 512)}
        assert (df.x >= 512).all() and (df.x + 512 <= 3584).all()
        # ROI: the left half of the block
        roi = np.array([[1024, 512], [2048, 512], [2048, 2560], [1024, 2560]], float)
        dr = tile_slide(s, rois=[roi], config=cfg)
        assert len(dr) == 8 and (dr.x + 512 <= 2048 + 64).all()
        # read_tile at 10x = 1 µm/px -> level 2 pixels exactly
        t = read_tile(s, 1024, 512, TilingConfig(magnification=10, tile_size=256))
        assert np.array_equal(t, levels[2][128:384, 256:512])


def test_roi_outside_slide_is_an_error_with_the_extent(svs):
    roi = np.array([[10_000, 10_000], [12_000, 10_000], [12_000, 12_000]], float)
    with pytest.raises(UserError, match=r"outside the slide.*x 0\.\.2220, y 0\.\.2967 level-0 px"):
        tile_slide(svs, rois=[roi])


def test_small_and_blank_images_give_empty_tables(tmp_path):
    rng = np.random.default_rng(0)
    tissue_like = np.stack([rng.integers(150, 200, (100, 100)), rng.integers(60, 110, (100, 100)),
                            rng.integers(140, 190, (100, 100))], axis=-1).astype(np.uint8)
    Image.fromarray(tissue_like).save(tmp_path / "small.png")
    with open_slide(tmp_path / "small.png", mpp=0.5) as s:
        assert len(tile_slide(s)) == 0  # 100 px < one 512 px tile
        assert len(tile_slide(s, tissue=False)) == 0
    Image.fromarray(np.full((3000, 3000, 3), 246, np.uint8)).save(tmp_path / "blank.png")
    with open_slide(tmp_path / "blank.png", mpp=0.5) as s:
        df = tile_slide(s)
        assert len(df) == 0 and list(df.columns) == list(META_COLUMNS[1:])
        assert len(tile_slide(s, tissue=False)) == 25  # without tissue detection: the full 5x5 grid


def test_progress_and_cancel(svs):
    seen = []
    tile_slide(svs, progress=lambda d, t, m: seen.append((d, t)))
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)
    with pytest.raises(Cancelled):
        tile_slide(svs, should_stop=lambda: True)

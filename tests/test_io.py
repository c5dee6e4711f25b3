"""napari_lnm.io: one Slide interface over OpenSlide, tifffile pyramids and plain photos."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_lnm.errors import SlideError, UserError
from napari_lnm.io import Slide, open_slide, resize_rgb, to_rgb_uint8


def _pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Deterministic RGB test image with structure at every scale."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx // 16 + yy // 16) % 2) * 200],
                   axis=-1).astype(np.uint8)
    img[rng.random((h, w)) < 0.01] = 0
    return img


def write_subifd_pyramid(path, img: np.ndarray, mpp: float = 0.25, levels: int = 3, tile: int = 256,
                         compression: str = "zlib") -> list[np.ndarray]:
    """Write a tiled TIFF with a SubIFD pyramid (factor 2) and resolution tags; returns the level arrays."""
    arrays = [img]
    for _ in range(levels - 1):
        arrays.append(np.ascontiguousarray(arrays[-1][::2, ::2]))
    with tifffile.TiffWriter(path) as tw:
        tw.write(arrays[0], tile=(tile, tile), subifds=levels - 1, compression=compression, photometric="rgb",
                 resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
        for a in arrays[1:]:
            tw.write(a, tile=(tile, tile), subfiletype=1, compression=compression, photometric="rgb")
    return arrays


@pytest.fixture(scope="module")
def pyramid_tif(tmp_path_factory):
    path = tmp_path_factory.mktemp("pyr") / "pyramid.tif"
    arrays = write_subifd_pyramid(path, _pattern(1500, 2100))
    return path, arrays


# ----------------------------------------------------------------------------- real SVS
def test_svs_metadata(sample_svs):
    with open_slide(sample_svs) as s:
        assert isinstance(s, Slide) and s.backend == "openslide"
        assert s.dimensions == (2220, 2967)
        assert s.level_count == 1 and s.level_downsamples == (1.0,)
        assert s.mpp == pytest.approx(0.499)
        assert s.objective_power == 20
        assert s.mpp_source == "metadata"


def test_svs_read_level_and_region(sample_svs):
    with open_slide(sample_svs) as s:
        a = s.read_level(0, 1000, 1200, 300, 200)
        assert a.shape == (200, 300, 3) and a.dtype == np.uint8
        assert a.std() > 10  # real tissue, not blank
        r = s.read_region(1000, 1200, 300, 200, mpp=0.998)
        assert r.shape == (100, 150, 3)
        # downsampled region ~ block-mean of the full-resolution one
        ref = a.reshape(100, 2, 150, 2, 3).mean(axis=(1, 3))
        assert np.abs(r.astype(float) - ref).mean() < 3
        same = s.read_region(1000, 1200, 300, 200)
        assert np.array_equal(same, a)


def test_region_outside_is_white(sample_svs):
    with open_slide(sample_svs) as s:
        part = s.read_region(-50, -50, 100, 100)
        assert part.shape == (100, 100, 3)
        assert (part[:50, :, :] == 255).all() and (part[:, :50] == 255).all()
        assert np.array_equal(part[50:, 50:], s.read_level(0, 0, 0, 50, 50))
        outside = s.read_region(10_000, 10_000, 64, 64, mpp=1.0)
        assert outside.shape == (32, 32, 3) and (outside == 255).all()


def test_bad_region_size(sample_svs):
    with open_slide(sample_svs) as s:
        with pytest.raises(SlideError, match="positive"):
            s.read_region(0, 0, 0, 10)
        with pytest.raises(SlideError, match="level 3"):
            s.read_level(3, 0, 0, 10, 10)


def test_thumbnail(sample_svs):
    with open_slide(sample_svs) as s:
        rgb, ds = s.thumbnail(256)
        assert max(rgb.shape[:2]) <= 256 and rgb.shape[2] == 3
        assert ds == pytest.approx(2220 / rgb.shape[1])


def test_user_mpp_overrides_metadata_only_when_forced(sample_svs):
    with open_slide(sample_svs, mpp=0.25, force_mpp=True) as s:
        assert s.mpp == 0.25 and s.mpp_source == "user"
    with pytest.raises(SlideError, match="positive"):
        open_slide(sample_svs, mpp=-1)


# ----------------------------------------------------------------------------- pyramidal TIFF
def test_subifd_pyramid_levels_and_pixels(pyramid_tif):
    path, arrays = pyramid_tif
    with open_slide(path) as s:
        assert s.backend == "tifffile"
        assert s.dimensions == (2100, 1500)
        assert s.level_dimensions == ((2100, 1500), (1050, 750), (525, 375))
        assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert s.mpp == pytest.approx(0.25)  # from resolution tags (px/cm)
        for level, arr in enumerate(arrays):
            d = 2 ** level
            got = s.read_level(level, 200 * d, 300 * d, 130, 70)  # crosses tile borders
            assert np.array_equal(got, arr[300:370, 200:330])


def test_read_region_picks_coarsest_sufficient_level(pyramid_tif, monkeypatch):
    path, arrays = pyramid_tif
    with open_slide(path) as s:
        seen = []
        orig = s._read_level_px
        monkeypatch.setattr(s, "_read_level_px", lambda level, *a: seen.append(level) or orig(level, *a))
        out = s.read_region(400, 400, 800, 800, mpp=1.0)  # needs downsample 4 -> level 2, exact
        assert seen == [2] and out.shape == (200, 200, 3)
        assert np.array_equal(out, arrays[2][100:300, 100:300])
        seen.clear()
        s.read_region(400, 400, 800, 800, mpp=0.75)  # downsample 3 -> level 1 then resample
        assert seen == [1]
        seen.clear()
        s.read_region(400, 400, 800, 800, mpp=0.2)  # finer than level 0 -> level 0, upsampled
        assert seen == [0]


def test_ome_tiff_physical_size(tmp_path):
    img = _pattern(600, 800)
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", subifds=1,
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                           "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
        tw.write(img[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.5)
        assert s.level_count == 2
        assert np.array_equal(s.read_level(1, 0, 0, 400, 300), img[::2, ::2])


def test_striped_jpeg_tiff_and_grey_16bit(tmp_path):
    img = _pattern(300, 400)
    p = tmp_path / "striped.tif"
    tifffile.imwrite(p, img, photometric="rgb", rowsperstrip=37, resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    with open_slide(p) as s:
        assert np.array_equal(s.read_level(0, 10, 20, 200, 150), img[20:170, 10:210])
    grey = (np.arange(300 * 400, dtype=np.uint32).reshape(300, 400) % 65536).astype(np.uint16)
    g = tmp_path / "grey16.tif"
    tifffile.imwrite(g, grey, tile=(128, 128))
    with open_slide(g, mpp=0.5) as s:
        out = s.read_level(0, 0, 0, 400, 300)
        assert out.shape == (300, 400, 3)
        assert np.array_equal(out[..., 0], (grey >> 8).astype(np.uint8))
        assert np.array_equal(out[..., 0], out[..., 2])


def test_dask_pyramid_is_lazy_and_correct(pyramid_tif, monkeypatch):
    path, arrays = pyramid_tif
    with open_slide(path) as s:
        calls = []
        orig = s._read_inside
        monkeypatch.setattr(s, "_read_inside", lambda *a: calls.append(a) or orig(*a))
        pyr = s.dask_pyramid(chunk=256)
        assert calls == []  # nothing read on construction
        assert [a.shape for a in pyr] == [(1500, 2100, 3), (750, 1050, 3), (375, 525, 3)]
        assert all(a.dtype == np.uint8 for a in pyr)
        block = pyr[0][300:560, 500:700].compute()
        assert np.array_equal(block, arrays[0][300:560, 500:700])
        assert 0 < len(calls) <= 4  # only the chunks touched
        assert np.array_equal(pyr[2].compute(), arrays[2])


def test_open_large_pyramid_allocates_little(tmp_path):
    """A 24000 x 20000 px pyramid opens and builds its dask pyramid without reading pixels."""
    import imagecodecs

    tile = imagecodecs.zlib_encode(np.full((1024, 1024, 3), 230, np.uint8).tobytes())  # pre-compressed once
    path = tmp_path / "big.tif"
    h, w = 20000, 24000

    def tiles(hh, ww):
        for _ in range(-(-hh // 1024) * -(-ww // 1024)):
            yield tile

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(tiles(h, w), shape=(h, w, 3), dtype=np.uint8, tile=(1024, 1024), compression="zlib",
                 photometric="rgb", subifds=2, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
        for f in (4, 16):
            tw.write(tiles(h // f, w // f), shape=(h // f, w // f, 3), dtype=np.uint8, tile=(1024, 1024),
                     compression="zlib", photometric="rgb", subfiletype=1)
    tracemalloc.start()
    try:
        s = open_slide(path)
        pyr = s.dask_pyramid()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert s.dimensions == (24000, 20000) and len(pyr) == 3
    assert peak < 50 * 2**20, f"opening allocated {peak / 2**20:.1f} MiB"
    assert (s.read_region(5000, 5000, 512, 512, mpp=0.5) == 230).all()
    s.close()


# ----------------------------------------------------------------------------- plain images
def test_plain_png_needs_mpp(tmp_path):
    p = tmp_path / "photo.png"
    Image.fromarray(_pattern(120, 160)).save(p)
    with pytest.raises(SlideError) as exc:
        open_slide(p)
    msg = str(exc.value)
    assert "photo.png" in msg and "mpp" in msg and "\n" not in msg
    with open_slide(p, mpp=0.5) as s:
        assert s.backend == "image" and s.dimensions == (160, 120) and s.mpp == 0.5
        assert np.array_equal(s.read_level(0, 0, 0, 160, 120), _pattern(120, 160))


def test_real_jpeg_photo():
    from pathlib import Path

    p = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "histo_500x300.jpg"
    if not p.exists():
        pytest.skip("../shared/data/real not present")
    with open_slide(p, mpp=0.5) as s:
        assert s.dimensions == (500, 300)
        assert s.read_region(0, 0, 500, 300, mpp=1.0).shape == (150, 250, 3)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    grey = (np.arange(100 * 100) % 256).astype(np.uint8).reshape(100, 100)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 50:, 3] = 255  # left half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    with open_slide(tmp_path / "grey.png", mpp=1.0) as s:
        out = s.read_level(0, 0, 0, 100, 100)
        assert out.shape == (100, 100, 3)
        assert np.array_equal(out[..., 1], grey) and np.array_equal(out[..., 0], out[..., 2])
    with open_slide(tmp_path / "rgba.png", mpp=1.0) as s:
        out = s.read_level(0, 0, 0, 100, 100)
        assert (out[:, :50] == 255).all()  # transparent -> white
        assert (out[:, 50:] == [200, 0, 0]).all()


def test_pixel_helpers():
    assert to_rgb_uint8(np.zeros((4, 5), np.float32)).shape == (4, 5, 3)
    assert to_rgb_uint8(np.ones((2, 2), np.float64)).max() == 255
    a = np.arange(64 * 3, dtype=np.uint8).reshape(8, 8, 3)
    assert resize_rgb(a, 4, 4).shape == (4, 4, 3)
    assert abs(int(resize_rgb(a, 4, 4)[0, 0, 0]) - np.mean(a[:2, :2, 0])) <= 0.5
    assert resize_rgb(a, 5, 3).shape == (5, 3, 3)


# ----------------------------------------------------------------------------- bad input
def _assert_one_line(exc: BaseException, name: str) -> None:
    msg = str(exc)
    assert isinstance(exc, SlideError) and isinstance(exc, UserError)
    assert name in msg and "\n" not in msg and len(msg) < 400


@pytest.mark.parametrize("nbytes", [200_000, 1_000_000])
def test_truncated_svs(sample_svs, tmp_path, nbytes):
    p = tmp_path / "truncated.svs"
    p.write_bytes(sample_svs.read_bytes()[:nbytes])
    with pytest.raises(SlideError) as exc:
        s = open_slide(p)
        s.read_region(0, 0, *s.dimensions, mpp=4.0)
    _assert_one_line(exc.value, "truncated.svs")


def test_corrupt_tile_data_is_a_slide_error(pyramid_tif, tmp_path):
    path, _ = pyramid_tif
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as t:
        page = t.series[0].levels[0].keyframe
        off, n = page.dataoffsets[0], page.databytecounts[0]
    data[off:off + n] = b"\x00" * n  # destroy the first zlib tile
    p = tmp_path / "corrupt.tif"
    p.write_bytes(bytes(data))
    s = open_slide(p)
    with pytest.raises(SlideError) as exc:
        s.read_level(0, 0, 0, 100, 100)
    _assert_one_line(exc.value, "corrupt.tif")


@pytest.mark.parametrize("kind", ["missing", "text", "empty", "folder"])
def test_unreadable_inputs(tmp_path, kind):
    p = tmp_path / "slide.svs"
    if kind == "text":
        p.write_text("this is not a slide\n" * 10)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "folder":
        p.mkdir()
    with pytest.raises(SlideError) as exc:
        open_slide(p)
    _assert_one_line(exc.value, "slide.svs")


def test_virtual_levels_for_unpyramided_tiff(tmp_path):
    img = _pattern(1200, 2000)
    p = tmp_path / "flat.tif"
    tifffile.imwrite(p, img, tile=(256, 256), photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    with open_slide(p) as s:
        assert s.level_count == 1
        assert len(s.dask_pyramid()) == 1
        pyr = s.dask_pyramid(chunk=256, min_size=200)
        assert [a.shape for a in pyr] == [(1200, 2000, 3), (300, 500, 3), (75, 125, 3)]
        coarse = pyr[1].compute()
        ref = img.reshape(300, 4, 500, 4, 3).mean(axis=(1, 3))
        assert np.abs(coarse.astype(float) - ref).max() <= 1.0


@pytest.mark.parametrize("axes", ["CYX", "ZCYX", "CZYX"])
def test_ome_planar_channels_become_rgb(tmp_path, axes):
    rgb = _pattern(300, 400)
    planar = np.moveaxis(rgb, -1, 0)  # CYX
    data = {"CYX": planar, "ZCYX": np.stack([planar, planar // 2]),
            "CZYX": np.stack([planar, planar // 2], axis=1)}[axes]
    p = tmp_path / f"{axes}.ome.tif"
    tifffile.imwrite(p, data, ome=True, tile=(128, 128), metadata={"axes": axes, "PhysicalSizeX": 0.5,
                                                                   "PhysicalSizeY": 0.5})
    with open_slide(p) as s:
        assert s.mpp == 0.5
        assert np.array_equal(s.read_level(0, 30, 20, 250, 200), rgb[20:220, 30:280])  # first plane, RGB


def test_palette_tiff(tmp_path):
    idx = (np.arange(50 * 60) % 3).reshape(50, 60).astype(np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[0, 1] = cmap[1, 2] = 65535
    p = tmp_path / "palette.tif"
    tifffile.imwrite(p, idx, photometric="palette", colormap=cmap)
    with open_slide(p, mpp=1.0) as s:
        out = s.read_level(0, 0, 0, 60, 50)
    assert (out[idx == 0] == 0).all() and (out[idx == 1] == [255, 0, 0]).all() and (out[idx == 2] == [0, 255, 0]).all()

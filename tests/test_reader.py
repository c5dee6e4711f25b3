"""npe2 reader and sample data: lazy multiscale layer data with the slide's µm/px."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from PIL import Image

from napari_lnm._reader import DEFAULT_MPP_ENV, default_mpp, get_reader, read_slide
from napari_lnm._sample_data import cmu_small_region, sample_path
from napari_lnm.errors import SlideError


def test_get_reader_accepts_slides_only(sample_svs, tmp_path):
    assert callable(get_reader(str(sample_svs)))
    assert callable(get_reader([str(sample_svs)]))
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([str(sample_svs), str(sample_svs)]) is None


def test_svs_layer_data(sample_svs):
    layers = get_reader(str(sample_svs))(str(sample_svs))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image"
    assert kwargs["multiscale"] is True and kwargs["rgb"] is True
    assert kwargs["scale"] == pytest.approx((0.499, 0.499))
    assert kwargs["metadata"]["napari_lnm_path"] == str(sample_svs)
    assert kwargs["metadata"]["mpp"] == pytest.approx(0.499)
    assert kwargs["metadata"]["mpp_source"] == "metadata"
    assert isinstance(data, list) and all(isinstance(a, da.Array) for a in data)
    assert data[0].shape == (2967, 2220, 3) and data[0].dtype == np.uint8
    block = data[0][1000:1010, 1000:1010].compute()
    assert block.shape == (10, 10, 3)


def test_pyramid_tiff_layer_is_multiscale(tmp_path):
    import tifffile

    img = np.full((1024, 1536, 3), 200, np.uint8)
    p = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(img, tile=(256, 256), subifds=2, photometric="rgb",
                 resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
        tw.write(img[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")
        tw.write(img[::4, ::4], tile=(256, 256), subfiletype=1, photometric="rgb")
    data, kwargs, _ = read_slide(str(p))[0]
    assert [a.shape[:2] for a in data] == [(1024, 1536), (512, 768), (256, 384)]
    assert kwargs["scale"] == pytest.approx((0.25, 0.25))


def test_photo_uses_default_mpp(tmp_path, monkeypatch):
    p = tmp_path / "photo.jpg"
    Image.fromarray(np.full((50, 80, 3), 128, np.uint8)).save(p)
    monkeypatch.delenv(DEFAULT_MPP_ENV, raising=False)
    data, kwargs, _ = read_slide(str(p))[0]
    assert kwargs["scale"] == (0.5, 0.5) and kwargs["metadata"]["mpp_source"] == "default"
    monkeypatch.setenv(DEFAULT_MPP_ENV, "0.25")
    assert default_mpp() == 0.25
    assert read_slide(str(p))[0][1]["scale"] == (0.25, 0.25)
    monkeypatch.setenv(DEFAULT_MPP_ENV, "nonsense")
    assert default_mpp() == 0.5


def test_reader_bad_file(tmp_path):
    p = tmp_path / "broken.svs"
    p.write_text("not a slide")
    with pytest.raises(SlideError, match="broken.svs"):
        read_slide(str(p))


def test_sample_data():
    assert sample_path().is_file()
    data, kwargs, kind = cmu_small_region()[0]
    assert kind == "image" and kwargs["multiscale"]
    assert kwargs["scale"] == pytest.approx((0.499, 0.499))
    assert data[0].shape == (2967, 2220, 3)


def test_manifest_contributions():
    from npe2 import PluginManifest

    import napari_lnm

    from importlib import resources

    mf = PluginManifest.from_file(str(resources.files(napari_lnm) / "napari.yaml"))
    commands = {c.id: c.python_name for c in mf.contributions.commands}
    assert commands["napari-lnm.get_reader"] == "napari_lnm._reader:get_reader"
    assert commands["napari-lnm.sample_cmu"] == "napari_lnm._sample_data:cmu_small_region"
    assert any("*.svs" in r.filename_patterns for r in mf.contributions.readers)


@pytest.mark.gui
def test_viewer_opens_svs_with_tile_grid(make_napari_viewer, sample_svs):
    """Open the SVS through the plugin reader, add the tile grid as Shapes, save docs/images/slide_tiles.png."""
    import os
    from pathlib import Path

    from napari_lnm.io import open_slide
    from napari_lnm.tiling import TilingConfig, tile_slide
    from napari_lnm.tissue import polygons_to_napari

    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(sample_svs), plugin="napari-lnm")
    assert len(layers) == 1
    img = layers[0]
    assert img.multiscale and img.rgb
    assert tuple(img.scale) == pytest.approx((0.499, 0.499))
    assert img.metadata["napari_lnm_path"] == str(sample_svs)
    with open_slide(sample_svs) as s:
        tiles = tile_slide(s, config=TilingConfig(tile_size=256))
    squares = [np.array([[x, y], [x + n, y], [x + n, y + n], [x, y + n]], float)
               for x, y, n in zip(tiles.x, tiles.y, tiles["size"])]
    shapes = viewer.add_shapes(polygons_to_napari(squares), shape_type="rectangle", edge_color="yellow",
                               face_color=[0, 0, 0, 0], edge_width=6, scale=img.scale, name="tiles")
    assert len(shapes.data) == len(tiles) > 10
    # the grid lines up with the image in world (µm) coordinates
    assert np.allclose(shapes.extent.world[1], np.array([tiles.y.max() + 257, tiles.x.max() + 257]) * 0.499)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 100
    # the canvas shows the slide, not a black frame: plenty of light, tissue-coloured pixels
    rgb = shot[..., :3].astype(np.int32)
    assert (rgb.sum(axis=-1) > 600).mean() > 0.05
    docs = os.environ.get("NAPARI_LNM_DOCS_IMAGES")  # set to refresh docs/images/slide_tiles.png
    if docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        Image.fromarray(shot[..., :3]).save(Path(docs) / "slide_tiles.png")


@pytest.mark.gui
def test_viewer_open_sample_and_photo(make_napari_viewer, tmp_path):
    """File > Open Sample > napari-lnm, and a plain PNG through the plugin reader (default µm/px)."""
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-lnm", "cmu_small_region")
    assert layers[0].multiscale and tuple(layers[0].scale) == pytest.approx((0.499, 0.499))
    p = tmp_path / "photo.png"
    Image.fromarray(np.full((300, 400, 3), 180, np.uint8)).save(p)
    photo = viewer.open(str(p), plugin="napari-lnm")[0]
    assert photo.rgb and photo.metadata["mpp_source"] == "default"
    assert photo.data[0].shape == (300, 400, 3)

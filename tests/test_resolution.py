"""Resolution sanity (issue 16): --mpp applies only where the metadata lacks it (or with --force-mpp), and a
working µm/px that would upsample a slide more than 2x is refused with both µm/px values named."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_lnm.cli import main
from napari_lnm.errors import SlideError, UserError
from napari_lnm.io import MppWarning, forced_mpp, mpp_option, open_slide
from napari_lnm.tiling import TilingConfig, check_resolution, tile_slide

REAL = Path("/work/shared/data/real")


class FakeSlide:
    path = Path("coarse.png")
    dimensions = (4096, 4096)
    mpp_source = "user"

    def __init__(self, mpp: float):
        self.mpp = mpp


def test_mpp_is_ignored_when_the_metadata_has_one(sample_svs):
    with pytest.warns(MppWarning, match=r"cmu_small_region\.svs: the file's metadata says 0\.499 µm/px, not the 20 "
                                        r"given; using the metadata"):
        with open_slide(sample_svs, mpp=20) as s:
            assert s.mpp == pytest.approx(0.499) and s.mpp_source == "metadata"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within 5 %: silently the metadata
        with open_slide(sample_svs, mpp=0.5) as s:
            assert s.mpp == pytest.approx(0.499)


def test_force_mpp_applies_it(sample_svs, tmp_path):
    with open_slide(sample_svs, mpp=0.25, force_mpp=True) as s:
        assert s.mpp == 0.25 and s.mpp_source == "user"
    with open_slide(sample_svs, mpp=forced_mpp(0.25)) as s:  # the form that crosses extract/predict unchanged
        assert s.mpp == 0.25
    with pytest.raises(SlideError, match="force_mpp needs"):
        open_slide(sample_svs, force_mpp=True)
    with pytest.raises(UserError, match="--force-mpp needs --mpp"):
        mpp_option(None, True)
    with pytest.raises(UserError, match="positive"):
        mpp_option(-1.0)
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "photo.png")
    with open_slide(tmp_path / "photo.png", mpp=0.7) as s:  # no metadata: --mpp is what there is
        assert s.mpp == 0.7 and s.mpp_source == "user"


def test_cli_tile_mpp_and_force_mpp(sample_svs, tmp_path, capsys):
    with pytest.warns(MppWarning):
        assert main(["tile", str(sample_svs), "--mpp", "20", "--tile-size", "256", "--out", str(tmp_path / "a")]) == 0
    assert (pd.read_parquet(tmp_path / "a" / "tiles.parquet")["size"] == 257).all()  # 256 px at 0.5 / 0.499
    capsys.readouterr()
    assert main(["tile", str(sample_svs), "--mpp", "20", "--force-mpp", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cmu_small_region.svs" in err and "20 µm/px (given with --mpp)" in err
    assert "0.5 µm/px" in err and "upsampled 40.0x" in err
    assert main(["tile", str(sample_svs), "--force-mpp", "--out", str(tmp_path / "c")]) == 1
    assert "--force-mpp needs --mpp" in capsys.readouterr().err


def test_upsampling_more_than_2x_is_refused(tmp_path, capsys):
    Image.fromarray(np.full((600, 900, 3), 200, np.uint8)).save(tmp_path / "photo.png")
    assert main(["tile", str(tmp_path / "photo.png"), "--mpp", "20", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "photo.png" in err and "20 µm/px" in err and "0.5 µm/px" in err
    assert "no magnification from 5x to 40x" in err
    with pytest.raises(SlideError, match=r"coarse\.png: the slide is 1\.5 µm/px .* 20x works at 0\.5 µm/px: .*"
                                         r"upsampled 3\.0x .*use magnification 10x or lower"):
        tile_slide(FakeSlide(1.5), config=TilingConfig(magnification=20, tile_size=256), tissue=False)
    check_resolution(FakeSlide(1.0), TilingConfig(magnification=20))  # exactly 2x is allowed
    check_resolution(FakeSlide(0.499), TilingConfig(magnification=40))  # the sample at 40x: 2.0x


def test_shipped_sample_still_tiles(sample_svs):
    with open_slide(sample_svs) as s:
        assert len(tile_slide(s, config=TilingConfig(magnification=20, tile_size=256))) > 0


@pytest.mark.skipif(not (REAL / "multiframe_camelyon_challenge_image.dcm").is_file(), reason="real data absent")
def test_real_29_um_per_px_dicom_is_refused():
    with open_slide(REAL / "multiframe_camelyon_challenge_image.dcm") as s:
        assert s.mpp > 20
        with pytest.raises(SlideError, match=r"multiframe_camelyon_challenge_image\.dcm: the slide is 28\.97 µm/px "
                                             r"\(from the file's metadata\) but 5x works at 2 µm/px"):
            tile_slide(s, config=TilingConfig(magnification=5, tile_size=256))


def test_predict_and_extract_refuse_upsampling(sample_svs, tmp_path, capsys):
    from napari_lnm.cli import main as cli

    model = Path(__file__).resolve().parents[1] / "src" / "napari_lnm" / "data" / "demo_model"
    assert cli(["predict", str(sample_svs), "--model", str(model), "--mpp", "20", "--force-mpp", "--quiet",
                "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cmu_small_region.svs" in err and "20 µm/px" in err and "0.5 µm/px" in err
    assert cli(["extract", str(sample_svs), "--mpp", "20", "--force-mpp", "--out", str(tmp_path / "e")]) == 1
    assert "upsampled 40.0x" in capsys.readouterr().err

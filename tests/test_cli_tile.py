"""``napari-lnm tile``: tile table + thumbnail, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_lnm.cli import main
from napari_lnm.tissue import write_geojson


def test_tile_svs(sample_svs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["tile", str(sample_svs), "--tile-size", "256", "--max-tiles", "8", "--seed", "1", "--out", str(out)])
    assert rc == 0
    df = pd.read_parquet(out / "tiles.parquet")
    assert list(df.columns) == ["x", "y", "size", "tissue_fraction"] and len(df) == 8
    assert (df["size"] == 257).all()
    thumb = np.asarray(Image.open(out / "thumbnail.png"))
    assert max(thumb.shape[:2]) == 1024 and thumb.shape[2] == 3
    assert ((thumb == [255, 200, 0]).all(axis=2)).sum() > 100  # tile outlines drawn
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "8 tiles" in line and "cmu_small_region.svs" in line


def test_tile_with_roi(sample_svs, tmp_path):
    roi = tmp_path / "roi.geojson"
    write_geojson(roi, [np.array([[600, 1500], [1700, 1500], [1700, 2967], [600, 2967]], float)], names=["Tumor"])
    out = tmp_path / "out"
    assert main(["tile", str(sample_svs), "--roi", str(roi), "--tile-size", "256", "--out", str(out)]) == 0
    df = pd.read_parquet(out / "tiles.parquet")
    assert len(df) > 0 and (df.y >= 1500 - 257).all() and (df.x >= 600 - 257).all() and (df.x <= 1700).all()


def test_tile_photo_needs_mpp(tmp_path, capsys):
    p = tmp_path / "photo.png"
    Image.fromarray(np.full((100, 100, 3), 200, np.uint8)).save(p)
    assert main(["tile", str(p), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "photo.png" in err and "--mpp" in err
    assert main(["tile", str(p), "--mpp", "0.5", "--out", str(tmp_path / "o")]) == 0  # 100 px: empty table
    assert len(pd.read_parquet(tmp_path / "o" / "tiles.parquet")) == 0


@pytest.mark.parametrize("args, needle", [
    (["missing.svs"], "file not found"),
    (["SVS", "--tile-size", "300"], "tile size"),
    (["SVS", "--magnification", "15"], "magnification"),
    (["SVS", "--roi", "nope.geojson"], "not found"),
])
def test_tile_errors_are_one_line(sample_svs, tmp_path, capsys, args, needle):
    args = [str(sample_svs) if a == "SVS" else a for a in args]
    assert main(["tile", *args, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and err.count("\n") == 0 and "Traceback" not in err


def test_console_help_and_corrupt_file(tmp_path):
    res = subprocess.run([sys.executable, "-m", "napari_lnm", "tile", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "--max-tiles" in res.stdout and "--roi" in res.stdout
    bad = tmp_path / "text.svs"
    bad.write_text("hello\n")
    res = subprocess.run([sys.executable, "-m", "napari_lnm", "tile", str(bad), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "text.svs" in res.stderr and res.stderr.strip().count("\n") == 0

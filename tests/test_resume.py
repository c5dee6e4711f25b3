"""Extraction resume keys on the slide file and the whole Parquet file; a slide smaller than a tile says so."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from napari_lnm import extract
from napari_lnm.errors import SlideError
from napari_lnm.synth import make_synthetic_tile, write_pyramid_tiff
from napari_lnm.tiling import TilingConfig

CFG = TilingConfig(tile_size=256)


def _slide(path, seed):
    write_pyramid_tiff(path, make_synthetic_tile(1, "CMS2", seed=seed, size=512), mpp=0.5)
    return path


def test_resume_redoes_a_slide_whose_file_changed(tmp_path):
    a, b = _slide(tmp_path / "a.tif", 1), _slide(tmp_path / "b.tif", 2)
    cohort = pd.DataFrame({"slide_id": ["S"], "path": [str(a)]})
    (p,) = extract.extract_cohort(cohort, tmp_path / "f", CFG)
    first = pd.read_parquet(p)
    assert extract.is_done(p, CFG, slide_path=a)
    # a corrected CSV points the same id at another slide: its features are computed anew
    (p,) = extract.extract_cohort(pd.DataFrame({"slide_id": ["S"], "path": [str(b)]}), tmp_path / "f", CFG)
    second = pd.read_parquet(p)
    assert not np.array_equal(first.iloc[:, 5:].to_numpy(), second.iloc[:, 5:].to_numpy(), equal_nan=True)
    # the same file replaced in place (new content, new mtime) is redone too
    shutil.copy(a, b)
    assert not extract.is_done(p, CFG, slide_path=b)


def test_corrupt_data_pages_with_an_intact_footer_are_not_done(tmp_path):
    a = _slide(tmp_path / "a.tif", 1)
    (p,) = extract.extract_cohort(pd.DataFrame({"slide_id": ["S"], "path": [str(a)]}), tmp_path / "f", CFG)
    assert extract.is_done(p, CFG, slide_path=a)
    import pyarrow.parquet as pq

    col = pq.ParquetFile(p).metadata.row_group(0).column(100)
    start = col.data_page_offset + 24  # inside a feature column's compressed data page, far from the footer
    raw = bytearray(p.read_bytes())
    raw[start:start + 32] = bytes(32)
    p.write_bytes(bytes(raw))
    assert extract.read_provenance(p) is not None  # the footer still reads
    assert not extract.is_done(p, CFG, slide_path=a)
    extract.extract_cohort(pd.DataFrame({"slide_id": ["S"], "path": [str(a)]}), tmp_path / "f", CFG)
    assert extract.is_done(p, CFG, slide_path=a) and len(pd.read_parquet(p)) > 0


def test_slide_smaller_than_one_tile_says_so(tmp_path):
    small = tmp_path / "small.tif"
    write_pyramid_tiff(small, make_synthetic_tile(1, seed=1, size=300), mpp=0.5)
    with pytest.raises(SlideError, match="smaller than one tile") as info:
        extract.extract_slide(small, None, TilingConfig(tile_size=512))
    assert "min-tissue" not in str(info.value)

"""Synthetic cohort generator: determinism, readability through io.open_slide, label/subtype effects."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_lnm import synth
from napari_lnm.errors import UserError


def test_tile_shape_dtype_and_determinism():
    a = synth.make_synthetic_tile(1, "CMS2", seed=7, size=256)
    b = synth.make_synthetic_tile(1, "CMS2", seed=7, size=256)
    c = synth.make_synthetic_tile(1, "CMS2", seed=8, size=256)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_tile_looks_like_he():
    """Tissue everywhere: pink background (G lowest), dark blue-purple nuclei (B highest) present."""
    rgb = synth.make_synthetic_tile(0, "CMS2", seed=1, size=512).astype(float)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    assert np.median(g) < np.median(r) - 30  # eosin absorbs green -> pink
    dark = rgb.sum(-1) < 300
    assert 0.02 < dark.mean() < 0.6  # nuclei cover part of the tile
    assert np.median(b[dark]) > np.median(r[dark])  # haematoxylin: bluish


@pytest.mark.parametrize("subtype", synth.SUBTYPES)
def test_label_changes_nuclei(subtype):
    """Positive tiles have more dark (nuclear) area than negative ones, in every subtype, over seeds."""
    neg = [synth.make_synthetic_tile(0, subtype, seed=s, size=384) for s in range(3)]
    pos = [synth.make_synthetic_tile(1, subtype, seed=s, size=384) for s in range(3)]
    dark = lambda ims: np.mean([(im.astype(float).sum(-1) < 330).mean() for im in ims])  # noqa: E731
    assert dark(pos) > dark(neg)


def test_subtypes_differ():
    """CMS1 (immune) has many small dark blobs; CMS4 (mesenchymal) has more stroma (fewer dark px)."""
    cms1 = [synth.make_synthetic_tile(0, "CMS1", seed=s, size=512) for s in range(2)]
    cms4 = [synth.make_synthetic_tile(0, "CMS4", seed=s, size=512) for s in range(2)]
    very_dark = lambda ims: np.mean([(im.astype(float).sum(-1) < 250).mean() for im in ims])  # noqa: E731
    assert very_dark(cms1) > very_dark(cms4)


def test_bad_subtype_and_label():
    with pytest.raises(UserError, match="subtype"):
        synth.make_synthetic_tile(0, "CMS9")
    with pytest.raises(UserError, match="label"):
        synth.render_tissue((256, 256), 2)


def test_cohort_written_and_readable(tmp_path):
    from napari_lnm.io import open_slide

    csv_path = synth.make_cohort(tmp_path / "c", n_slides=4, seed=3, size=(768, 1024))
    assert csv_path == tmp_path / "c" / "cohort.csv"
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["slide_id"] for r in rows] == [f"synth_{i:04d}" for i in range(4)]
    assert sorted(int(r["label"]) for r in rows) == [0, 0, 1, 1]
    assert set(rows[0]) == {"slide_id", "path", "label", "subtype", "patient_id"}
    assert {r["subtype"] for r in rows} == set(synth.SUBTYPES)
    for r in rows:
        with open_slide(csv_path.parent / r["path"]) as s:
            assert s.dimensions == (1024, 768)
            assert abs(s.mpp - 0.5) < 1e-6
            assert s.level_count >= 2 and s.level_downsamples[1] == pytest.approx(2.0)
            assert s.objective_power == pytest.approx(20.0)
            region = s.read_region(100, 100, 256, 256)
            assert region.shape == (256, 256, 3)
    # deterministic: same seed -> identical pixels; other seed -> different
    again = synth.make_cohort(tmp_path / "d", n_slides=4, seed=3, size=(768, 1024))
    other = synth.make_cohort(tmp_path / "e", n_slides=4, seed=4, size=(768, 1024))
    with open_slide(csv_path.parent / rows[1]["path"]) as s1, \
            open_slide(again.parent / rows[1]["path"]) as s2, open_slide(other.parent / rows[1]["path"]) as s3:
        a = s1.read_level(0, 0, 0, 1024, 768)
        assert np.array_equal(a, s2.read_level(0, 0, 0, 1024, 768))
        assert not np.array_equal(a, s3.read_level(0, 0, 0, 1024, 768))
    assert open(csv_path).read() == open(again).read()


def test_cohort_background_is_white_outside_tissue(tmp_path):
    from napari_lnm.io import open_slide

    csv_path = synth.make_cohort(tmp_path, n_slides=1, seed=0, size=(1024, 1024))
    with open_slide(tmp_path / "slides" / "synth_0000.tif") as s:
        corner = s.read_level(0, 0, 0, 64, 64)
        centre = s.read_level(0, 448, 448, 128, 128)
    assert corner.mean() > 225
    assert centre.mean() < corner.mean() - 30
    assert csv_path.exists()


def test_cohort_bad_arguments(tmp_path):
    with pytest.raises(UserError):
        synth.make_cohort(tmp_path, n_slides=0, seed=0)
    with pytest.raises(UserError):
        synth.make_cohort(tmp_path, n_slides=2, seed=0, positive_fraction=1.5)
    with pytest.raises(UserError):
        synth.make_cohort(tmp_path, n_slides=2, seed=0, size=(100, 100))


def test_cli_synth(tmp_path):
    from napari_lnm.cli import main

    assert main(["synth", str(tmp_path / "o"), "--n-slides", "2", "--seed", "1", "--size", "512x384"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "o" / "cohort.csv")))
    assert len(rows) == 2
    assert main(["synth", str(tmp_path / "o"), "--size", "big"]) == 1


def test_render_speed_2048():
    """A 2048x2048 slide renders in well under 2 s (generous bound for a shared CI machine)."""
    import time

    t = time.perf_counter()
    rgb, info = synth.render_tissue((2048, 2048), 1, "CMS2", seed=0)
    dt = time.perf_counter() - t
    assert rgb.shape == (2048, 2048, 3)
    assert info.n_tumour > 200
    assert dt < 6.0


def test_slides_per_patient_share_label_and_subtype(tmp_path):
    csv_path = synth.make_cohort(tmp_path, n_slides=5, seed=2, size=(256, 256), slides_per_patient=2)
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["patient_id"] for r in rows] == ["P0000", "P0000", "P0001", "P0001", "P0002"]
    for a, b in ((0, 1), (2, 3)):
        assert rows[a]["label"] == rows[b]["label"] and rows[a]["subtype"] == rows[b]["subtype"]
    assert sorted(int(r["label"]) for r in rows[::2]) in ([0, 0, 1], [0, 1, 1])


def test_large_slide_streamed(tmp_path):
    from napari_lnm.io import open_slide

    path = synth.make_large_slide(tmp_path / "big.tif", (768, 1280), seed=0, block=512)
    with open_slide(path) as s:
        assert s.dimensions == (1280, 768) and abs(s.mpp - 0.5) < 1e-6
        assert s.level_downsamples[1] == pytest.approx(4.0)
        img = s.read_level(0, 0, 0, 1280, 768)
    assert img.mean() < 220  # tissue everywhere
    with pytest.raises(UserError, match="multiples"):
        synth.make_large_slide(tmp_path / "x.tif", (700, 700))

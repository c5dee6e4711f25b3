"""Cohort CSV validation and per-slide Parquet extraction (inline, process pool, Dask), resume and failures."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_lnm import extract
from napari_lnm.engine import META_COLUMNS, LocalPool, chunk_bounds
from napari_lnm.errors import CohortError, SlideError
from napari_lnm.progress import Cancelled
from napari_lnm.tiling import TilingConfig

CFG = TilingConfig(tile_size=256, max_tiles=3, seed=1)


@pytest.fixture(scope="module")
def cohort_csv(tmp_path_factory) -> Path:
    """Four synthetic 1024x1024 slides (0.5 µm/px) and their cohort.csv."""
    from napari_lnm.synth import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort"), n_slides=4, seed=11, size=(1024, 1024))


@pytest.fixture(scope="module")
def extracted(cohort_csv, tmp_path_factory) -> list[Path]:
    """The cohort extracted in-process (workers=1): the reference for the other executors."""
    out = tmp_path_factory.mktemp("features")
    return extract.extract_cohort(extract.read_cohort(cohort_csv), out, CFG)


# ----------------------------------------------------------------------------- read_cohort
def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.csv"
    p.write_text(text)
    return p


def test_read_cohort_resolves_relative_paths_and_keeps_extra_columns(cohort_csv):
    df = extract.read_cohort(cohort_csv)
    assert list(df.columns[:5]) == ["slide_id", "path", "label", "subtype", "patient_id"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert df["label"].dtype == np.int64 and set(df["label"]) == {0, 1}


def test_read_cohort_extra_columns(tmp_path):
    (tmp_path / "a.svs").write_bytes(b"x")
    df = extract.read_cohort(_write(tmp_path, "slide_id,path,label,CEA\nA,a.svs,1,3.5\n"))
    assert df["CEA"].tolist() == ["3.5"] and df["label"].tolist() == [1]


@pytest.mark.parametrize("text, match", [
    ("slide_id,path\nA,a.svs\n", "missing column 'label'"),
    ("id,file,label\nA,a.svs,1\n", "missing columns 'slide_id', 'path'"),
    ("slide_id,path,label\nA,a.svs,2\n", r"row 2 \(A\): label must be 0 or 1, got '2'"),
    ("slide_id,path,label\nA,a.svs,yes\n", "label must be 0 or 1"),
    ("slide_id,path,label\nA,a.svs,\n", "label must be 0 or 1"),
    ("slide_id,path,label\nA,a.svs,1\nA,a.svs,0\n", r"row 3: duplicate slide_id 'A' \(first on row 2\)"),
    ("slide_id,path,label\nA,missing.svs,1\n", "row 2 \\(A\\): slide file not found"),
    ("slide_id,path,label\n,a.svs,1\n", "row 2: empty slide_id"),
    ("slide_id,path,label\na/b,a.svs,1\n", "cannot be used as a file name"),
    ("slide_id,path,label\n", "no slides"),
    ("", "empty"),
])
def test_read_cohort_errors(tmp_path, text, match):
    (tmp_path / "a.svs").write_bytes(b"x")
    csv = _write(tmp_path, text)
    with pytest.raises(CohortError, match=match) as info:
        extract.read_cohort(csv)
    assert str(csv) in str(info.value) and "\n" not in str(info.value)


def test_read_cohort_missing_csv(tmp_path):
    with pytest.raises(CohortError, match="not found"):
        extract.read_cohort(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- extraction
def test_parquet_columns_and_provenance(extracted, cohort_csv):
    from napari_lnm.features import feature_names

    assert [p.name for p in extracted] == [f"synth_{i:04d}.parquet" for i in range(4)]
    for p in extracted:
        df = pd.read_parquet(p)
        assert list(df.columns) == list(META_COLUMNS) + feature_names()
        assert len(df) == 3
        assert (df["slide_id"] == p.stem).all()
        assert (df["size"] == 256).all() and (df["tissue_fraction"] >= 0.5).all()
        assert ((df["x"] % 256) == 0).all()
        feats = df[feature_names()].to_numpy()
        assert np.isfinite(feats).mean() > 0.8  # real values, not a placeholder
        prov = extract.read_provenance(p)
        assert prov["tiling"] == CFG.to_dict() and prov["slide_mpp"] == pytest.approx(0.5)
        assert prov["feature_schema_hash"] == extract.feature_schema_hash()
        assert prov["package_version"] and prov["n_tiles"] == 3
    assert not (extracted[0].parent / extract.ERRORS_FILE).exists()


def test_features_vary_between_tiles_and_slides(extracted):
    from napari_lnm.features import feature_names

    allf = pd.concat([pd.read_parquet(p) for p in extracted])[feature_names()]
    varying = (allf.std(numeric_only=True) > 0).mean()
    assert varying > 0.5


def test_extract_slide_matches_cohort_and_is_deterministic(extracted, cohort_csv, tmp_path):
    row = extract.read_cohort(cohort_csv).iloc[2]
    calls = []
    a = extract.extract_slide(row.path, tmp_path / "a.parquet", CFG, slide_id=row.slide_id,
                              progress=lambda d, t, m: calls.append((d, t)))
    b = extract.extract_slide(row.path, None, CFG, slide_id=row.slide_id)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(extracted[2]))
    assert calls[-1] == (3, 3)


def test_resume_skips_done_slides(extracted, cohort_csv, tmp_path):
    out = tmp_path / "f"
    shutil.copytree(extracted[0].parent, out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    # simulate a killed run: one slide's file truncated, a leftover temporary file
    victim = out / "synth_0001.parquet"
    victim.write_bytes(victim.read_bytes()[:100])
    (out / ".synth_0002.parquet.abc.part").write_bytes(b"partial")
    time.sleep(0.01)
    seen = []
    paths = extract.extract_cohort(cohort_csv, out, CFG, progress=lambda d, t, m: seen.append((d, t, m)))
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert after["synth_0000.parquet"] == mtimes["synth_0000.parquet"]
    assert after["synth_0002.parquet"] == mtimes["synth_0002.parquet"]
    assert after["synth_0001.parquet"] != mtimes["synth_0001.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(paths[1]), pd.read_parquet(extracted[1]))
    assert seen[0][:2] == (3, 4) and seen[-1][:2] == (4, 4)
    # other settings -> not done, re-extracted
    other = TilingConfig(tile_size=256, max_tiles=2, seed=1)
    assert not extract.is_done(paths[0], other)
    extract.extract_cohort(cohort_csv, out, other)
    assert len(pd.read_parquet(paths[0])) == 2


def test_failed_slide_does_not_stop_the_others(cohort_csv, extracted, tmp_path):
    cohort = extract.read_cohort(cohort_csv)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00 this is not a slide")
    cohort.loc[1, "path"] = str(bad)
    out = tmp_path / "f"
    with pytest.raises(CohortError, match=r"1 of 4 slides failed.*synth_0001.*bad\.tif"):
        extract.extract_cohort(cohort, out, CFG)
    assert sorted(p.name for p in out.glob("*.parquet")) == ["synth_0000.parquet", "synth_0002.parquet",
                                                            "synth_0003.parquet"]
    errors = pd.read_csv(out / extract.ERRORS_FILE)
    assert errors["slide_id"].tolist() == ["synth_0001"] and "bad.tif" in errors["error"][0]
    # fixing the slide and rerunning extracts only it and clears errors.csv
    keep = (out / "synth_0000.parquet").stat().st_mtime_ns
    extract.extract_cohort(cohort_csv, out, CFG)
    assert (out / "synth_0001.parquet").exists() and not (out / extract.ERRORS_FILE).exists()
    assert (out / "synth_0000.parquet").stat().st_mtime_ns == keep


def test_no_tiles_is_a_clear_error(cohort_csv, tmp_path):
    row = extract.read_cohort(cohort_csv).iloc[0]
    with pytest.raises(SlideError, match="no tiles"):
        extract.extract_slide(row.path, tmp_path / "x.parquet", TilingConfig(tile_size=256, min_tissue=1.0),
                              rois=[np.array([[0, 0], [50, 0], [50, 50], [0, 50]], float)])
    assert not (tmp_path / "x.parquet").exists()


def test_cancel_keeps_finished_slides(cohort_csv, tmp_path):
    out = tmp_path / "f"
    state = {"n": 0}

    def progress(done, total, message):
        state["n"] = done

    with pytest.raises(Cancelled):
        extract.extract_cohort(cohort_csv, out, CFG, progress=progress, should_stop=lambda: state["n"] >= 2)
    done = sorted(p.name for p in out.glob("*.parquet"))
    assert done == ["synth_0000.parquet", "synth_0001.parquet"]
    assert not list(out.glob("*.part"))
    assert all(extract.is_done(out / d, CFG) for d in done)


def test_dask_inprocess_and_tcp_identical(cohort_csv, extracted, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=2,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            p1 = extract.extract_cohort(cohort_csv, tmp_path / "a", CFG, scheduler=client, chunk_tiles=2)
        p2 = extract.extract_cohort(cohort_csv, tmp_path / "b", CFG, scheduler=cluster.scheduler_address)
    for ref, a, b in zip(extracted, p1, p2):
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(ref))
        pd.testing.assert_frame_equal(pd.read_parquet(b), pd.read_parquet(ref))


def test_process_pool_identical(cohort_csv, extracted, tmp_path):
    paths = extract.extract_cohort(cohort_csv, tmp_path / "p", CFG, workers=2, chunk_tiles=2)
    for ref, p in zip(extracted, paths):
        pd.testing.assert_frame_equal(pd.read_parquet(p), pd.read_parquet(ref))


def test_chunk_bounds_cover_every_tile_once():
    for n in (1, 5, 64, 3000):
        for w in (1, 2, 8):
            b = chunk_bounds(n, w, 64)
            assert b[0][0] == 0 and b[-1][1] == n
            assert all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))
            assert max(e - s for s, e in b) <= 64
            if n >= 2 * w:
                assert len(b) >= 2 * w


# ----------------------------------------------------------------------------- command line
def test_cli_extract_slide_and_cohort(cohort_csv, tmp_path, capsys):
    from napari_lnm.cli import main

    slide = extract.read_cohort(cohort_csv).path[0]
    args = ["--tile-size", "256", "--max-tiles", "2", "--seed", "1"]
    assert main(["extract", slide, "--out", str(tmp_path / "one"), *args]) == 0
    one = pd.read_parquet(tmp_path / "one" / "synth_0000.parquet")
    assert len(one) == 2
    assert main(["extract", slide, "--out", str(tmp_path / "one"), *args]) == 0
    assert "already done" in capsys.readouterr().out
    assert main(["extract", "--cohort", str(cohort_csv), "--out", str(tmp_path / "all"), *args]) == 0
    assert len(list((tmp_path / "all").glob("*.parquet"))) == 4
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "all" / "synth_0000.parquet"), one)
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,path\nA,a.svs\n")
    assert main(["extract", "--cohort", str(bad), "--out", str(tmp_path / "x")]) == 1
    assert "missing column 'label'" in capsys.readouterr().err
    assert main(["extract", str(tmp_path / "nope.svs"), "--out", str(tmp_path / "x")]) == 1


def test_cohort_roi_column(cohort_csv, tmp_path):
    """A 'roi' column (GeoJSON relative to the CSV) restricts a slide's tiles to the polygon."""
    from napari_lnm.tissue import write_geojson

    co = extract.read_cohort(cohort_csv)
    write_geojson(tmp_path / "roi.geojson", [np.array([[256, 256], [768, 256], [768, 768], [256, 768]], float)])
    csv = tmp_path / "c.csv"
    pd.DataFrame({"slide_id": ["s"], "path": [co.path[2]], "label": [1], "roi": ["roi.geojson"]}).to_csv(csv, index=False)
    cohort = extract.read_cohort(csv)
    assert Path(cohort.roi[0]).is_absolute()
    (p,) = extract.extract_cohort(cohort, tmp_path / "f", TilingConfig(tile_size=256))
    df = pd.read_parquet(p)
    assert len(df) >= 1 and df["x"].between(0, 768).all() and df["y"].between(0, 768).all()
    assert extract.read_provenance(p)["rois_hash"] is not None
    bad = tmp_path / "b.csv"
    bad.write_text(f"slide_id,path,label,roi\ns,{co.path[2]},1,nope.geojson\n")
    with pytest.raises(CohortError, match="ROI file not found"):
        extract.read_cohort(bad)


def test_default_config_is_20x_512(cohort_csv):
    row = extract.read_cohort(cohort_csv).iloc[0]
    df = extract.extract_slide(row.path, None, None)
    assert len(df) >= 1 and (df["size"] == 512).all()
    assert df.attrs["tiling"] == TilingConfig().to_dict()


def test_process_pool_recovers_after_a_worker_dies():
    """A worker killed mid-task (e.g. out of memory) fails its task; the next task gets a fresh pool."""
    import concurrent.futures as cf

    pool = LocalPool(1)
    dead = pool.submit(os._exit, 3)
    with pytest.raises(cf.process.BrokenProcessPool):
        dead.result(timeout=60)
    assert pool.submit(abs, -4).result(timeout=60) == 4

"""predict_slide(workers=2): identical numbers to one process, tile order, images, cancel, warm pool, CLI."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import make_tiny_bundle, make_tiny_slide

from napari_lnm.engine import LocalPool
from napari_lnm.errors import UserError
from napari_lnm.pipeline import MIN_PARALLEL_TILES, predict_slide, shutdown_pool, prediction_tiling
from napari_lnm.progress import Cancelled


def _pool_children() -> list:
    """Live worker processes spawned by this process's pools (not multiprocessing's resource tracker)."""
    import psutil

    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if p.status() != psutil.STATUS_ZOMBIE and ("spawn_main" in cmd or "popen_loky" in cmd):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    # 1024 px at 0.5 µm/px (20x): 16 tiles of 256 px, exactly MIN_PARALLEL_TILES
    return make_tiny_slide(tmp_path_factory.mktemp("par") / "par.tif", label=1, seed=5, px=1024)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    # 2048 px: 16 tiles of 512 px (the model's tile size), ~0.1-0.3 s each
    return make_tiny_slide(tmp_path_factory.mktemp("par") / "big.tif", label=0, seed=9, px=2048)


@pytest.fixture(scope="module")
def bundle():
    return make_tiny_bundle(seed=1)


@pytest.fixture(scope="module")
def cfg(bundle):
    return prediction_tiling(bundle, tile_size=256)


@pytest.fixture(scope="module", autouse=True)
def _no_pool_left():
    yield
    shutdown_pool()


@pytest.fixture(scope="module")
def serial(slide, bundle, cfg):
    return predict_slide(slide, bundle, config=cfg, keep_images=True, workers=1)


def _numbers(pred) -> np.ndarray:
    return pred.tiles.drop(columns="slide_id").to_numpy(np.float64)


def test_two_workers_identical_to_one(slide, bundle, cfg, serial):
    assert serial.n_tiles == MIN_PARALLEL_TILES and serial.timings["workers"] == 1
    calls = []
    par = predict_slide(slide, bundle, config=cfg, workers=2, progress=lambda d, t, m: calls.append((d, t)))
    assert par.timings["workers"] == 2  # really ran on the pool
    assert list(par.tiles.columns) == list(serial.tiles.columns)
    # same tiles in the same order, bit-identical features, probability and explanation
    np.testing.assert_array_equal(_numbers(par), _numbers(serial))
    assert par.probability == serial.probability
    np.testing.assert_array_equal(par.contributions["contribution"].to_numpy(float),
                                  serial.contributions["contribution"].to_numpy(float))
    assert par.key_tiles[["x", "y"]].equals(serial.key_tiles[["x", "y"]])
    # progress: increasing tile counts ending at n (per chunk), then the "predicting" step
    tile_calls = [d for d, t in calls if t == par.n_tiles]
    assert tile_calls == sorted(tile_calls) and tile_calls[-1] == par.n_tiles and len(tile_calls) >= 3
    assert par.analyses is None and par.graph_segments is None


def test_keep_images_in_parallel(slide, bundle, cfg, serial):
    from napari_lnm.features.graph import graph_segments

    par = predict_slide(slide, bundle, config=cfg, workers=2, keep_images=True)
    assert par.timings["workers"] == 2
    assert len(par.analyses) == len(par.graph_segments) == par.n_tiles
    for a, b in zip(par.analyses, serial.analyses):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.h, b.h)
        np.testing.assert_array_equal(a.e, b.e)
        np.testing.assert_array_equal(a.centroids, b.centroids)
        assert a.labels.dtype == np.int32 and a.h.dtype == np.float32
    # the display segments the workers return are the graph module's, for the right tile
    for k in (0, par.n_tiles - 1):
        v, d = graph_segments(par.analyses[k].centroids, par.analyses[k].labels.shape)
        np.testing.assert_array_equal(par.graph_segments[k][0], np.asarray(v, float).reshape(-1, 2, 2))
        np.testing.assert_array_equal(par.graph_segments[k][1], np.asarray(d, float).reshape(-1, 2, 2))
        np.testing.assert_array_equal(serial.graph_segments[k][0], par.graph_segments[k][0])
    np.testing.assert_array_equal(_numbers(par), _numbers(serial))


def _worker_pids() -> set[int]:
    """Process ids of the warm 2-process pool's workers."""
    return {p.pid for p in _pool_children()}


def test_warm_pool_reused_and_small_jobs_stay_in_process(slide, bundle, cfg):
    predict_slide(slide, bundle, config=cfg, workers=2)
    pids = _worker_pids()
    assert len(pids) == 2
    predict_slide(slide, bundle, config=cfg, workers=2)
    assert _worker_pids() == pids  # the second run used the same processes
    small = predict_slide(slide, bundle, config=prediction_tiling(bundle, tile_size=256, max_tiles=4), workers=2)
    assert small.n_tiles == 4 and small.timings["workers"] == 1
    with pytest.raises(UserError, match="workers"):
        predict_slide(slide, bundle, config=cfg, workers=0)


def test_cancel_stops_fast_and_leaves_no_workers(big, bundle):
    # 16 tiles of 512 px (~0.1-0.3 s each): the workers are busy when the stop comes
    cfg = prediction_tiling(bundle, tile_size=512)
    stop_at: list[float] = []

    def progress(done, total, msg):
        if total > 0 and done > 0 and not stop_at:
            stop_at.append(time.perf_counter())

    with pytest.raises(Cancelled):
        predict_slide(big, bundle, config=cfg, workers=2, progress=progress, should_stop=lambda: bool(stop_at))
    latency = time.perf_counter() - stop_at[0]
    assert latency < 1.5, f"took {latency:.2f} s to stop"
    # the running chunks quit at a tile boundary, so the pool is idle and kept warm ...
    pids = _worker_pids()
    assert len(pids) == 2
    assert LocalPool(2).submit(abs, -3).result(timeout=5) == 3 and _worker_pids() == pids
    assert not list(Path(tempfile.gettempdir()).glob(f"napari-lnm-stop-{os.getpid()}-*"))  # stop file removed
    # ... and shutting it down leaves no child process
    shutdown_pool()
    assert _pool_children() == []
    assert all("resource_tracker" in str(p) for p in multiprocessing.active_children())
    # the next run starts a fresh pool and still gives the right answer
    again = predict_slide(big, bundle, config=cfg, workers=2)
    ref = predict_slide(big, bundle, config=cfg, workers=1)
    assert again.timings["workers"] == 2
    np.testing.assert_array_equal(_numbers(again), _numbers(ref))
    shutdown_pool()
    assert _pool_children() == []


def test_cli_predict_workers(big, bundle, tmp_path, capsys):
    from napari_lnm.cli import main
    from napari_lnm.pipeline import Prediction

    model = tmp_path / "model"
    bundle.save(model)
    out = tmp_path / "out"
    assert main(["predict", str(big), "--model", str(model), "--out", str(out), "--workers", "2", "--quiet"]) == 0
    pred = Prediction.load(out)
    assert pred.timings["workers"] == 2
    assert main(["predict", str(big), "--model", str(model), "--out", str(tmp_path / "o2"), "--workers", "0"]) != 0
    assert "--workers must be at least 1" in capsys.readouterr().err

"""The one tile-analysis engine: features (and, for display, images) of a slide's tiles, on any executor.

:func:`analyse_tiles` serves cohort extraction (``extract``), prediction (``pipeline``) and the napari
widget.  The caller picks the runner, as stardist-napari lets its caller pick one: :class:`Inline`
(this thread), :class:`LocalPool` (spawned worker processes kept warm between calls, via loky) or
:class:`DaskExecutor` (a dask.distributed cluster).  Every runner executes the same task function
(:func:`analyse_chunk`) with one BLAS thread, so the numbers are identical whichever ran them.
:func:`tile_frame` is the one assembler of a slide's tile table (:data:`META_COLUMNS` + features).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Protocol, Sequence

import numpy as np
import pandas as pd

from napari_lnm.config import TilingConfig
from napari_lnm.errors import SlideError, UserError
from napari_lnm.progress import Cancelled, ProgressFn, StopFn, check_stop, report

__all__ = [
    "META_COLUMNS", "TileResults", "column_names", "analyse_tiles", "analyse_chunk", "tile_frame", "tile_segments",
    "Executor", "Inline", "LocalPool", "DaskExecutor", "make_executor", "shutdown_pool",
    "chunk_bounds", "one_blas_thread", "tune_malloc", "worker_died",
]

#: the per-tile metadata columns of every tile table (level-0 px; tissue fraction 0..1), before the features
META_COLUMNS = ("slide_id", "x", "y", "size", "tissue_fraction")
#: seconds a stopped run waits for running chunks to quit at a tile boundary before killing the workers
STOP_GRACE_S = 1.0
#: seconds an idle warm worker process stays alive
IDLE_TIMEOUT_S = 600
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS")


def column_names(config: TilingConfig) -> list[str]:
    """The feature columns ``config`` computes: ``features.feature_names()``, then its ``deep.*`` columns."""
    from napari_lnm.features import feature_names

    return feature_names() + (config.deep.names() if config.deep is not None else [])


@dataclass
class TileResults:
    """Features (n, n_features) float64 in ``column_names(config)`` order and, when kept, each tile's
    ``TileAnalysis`` and its (Voronoi, Delaunay) display segments ((M, 2, 2) row/col working px)."""

    features: np.ndarray
    analyses: Optional[list] = None
    segments: Optional[list] = None

    @staticmethod
    def concat(parts: Sequence["TileResults"]) -> "TileResults":
        """Chunks in tile order -> one result."""
        feats = np.concatenate([p.features for p in parts], axis=0)
        if not parts or parts[0].analyses is None:
            return TileResults(feats)
        return TileResults(feats, [a for p in parts for a in p.analyses], [s for p in parts for s in p.segments])


# ----------------------------------------------------------------------------- tile tables
def tile_frame(slide_id: str, tiles: pd.DataFrame, features: np.ndarray, config: TilingConfig) -> pd.DataFrame:
    """The slide's tile table: :data:`META_COLUMNS` (int64 px, float32 fraction) then ``column_names(config)``."""
    meta = pd.DataFrame({
        "slide_id": pd.Series([slide_id] * len(tiles), dtype=str),
        "x": tiles["x"].to_numpy(np.int64),
        "y": tiles["y"].to_numpy(np.int64),
        "size": tiles["size"].to_numpy(np.int64),
        "tissue_fraction": tiles["tissue_fraction"].to_numpy(np.float32),
    })
    names = column_names(config)
    n_hand = len(names) - (config.deep.dim if config.deep is not None else 0)
    parts = [meta, pd.DataFrame(features[:, :n_hand], columns=names[:n_hand])]
    if config.deep is not None:  # the network computes float32: stored as such (half the Parquet size)
        parts.append(pd.DataFrame(features[:, n_hand:].astype(np.float32), columns=names[n_hand:]))
    return pd.concat(parts, axis=1)


# ----------------------------------------------------------------------------- per-tile work
_TUNED = False


def tune_malloc() -> None:
    """Once per process: let glibc keep freed tile-sized buffers (mmap threshold 64 MiB, trim 128 MiB).

    dask.distributed's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes every
    multi-MB temporary a fresh mmap with page faults.
    """
    global _TUNED
    if _TUNED:
        return
    _TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 2**20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS/OpenMP limited to one thread, as in every worker (a multi-threaded BLAS changes last bits)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def tile_segments(ta: Any) -> tuple[np.ndarray, np.ndarray]:
    """(Voronoi, Delaunay) display segments (M, 2, 2) of a tile's nucleus centroids, row/col working px."""
    from napari_lnm.features.graph import graph_segments

    c = np.asarray(ta.centroids, dtype=float).reshape(-1, 2)
    if len(c) < 3:
        empty = np.zeros((0, 2, 2))
        return empty, empty
    v, d = graph_segments(c, np.asarray(ta.labels).shape)
    return np.asarray(v, float).reshape(-1, 2, 2), np.asarray(d, float).reshape(-1, 2, 2)


def _analyse_list(slide: Any, xs: Sequence[int], ys: Sequence[int], config: TilingConfig, keep_images: bool,
                  should_stop: Optional[StopFn] = None, progress: Optional[ProgressFn] = None) -> TileResults:
    """The tile loop: read each tile at the working µm/px, analyse it, keep its features (and images)."""
    from napari_lnm.features import analyse_tile, feature_names
    from napari_lnm.tiling import read_tile

    names = feature_names()
    n_hand = len(names)
    feats = np.full((len(xs), len(column_names(config))), np.nan, dtype=np.float64)
    analyses: Optional[list] = [] if keep_images else None
    segments: Optional[list] = [] if keep_images else None
    for i, (x, y) in enumerate(zip(xs, ys)):
        check_stop(should_stop)
        rgb = read_tile(slide, int(x), int(y), config)
        ta = analyse_tile(rgb, float(config.mpp), segmentation=config.segmentation)
        feats[i, :n_hand] = [ta.features.get(k, np.nan) for k in names]
        if config.deep is not None:
            feats[i, n_hand:] = _deep_features(rgb[None], config.deep)[0]
        if keep_images:
            analyses.append(ta)
            segments.append(tile_segments(ta))
        report(progress, i + 1, len(xs), f"analysing tile {i + 1}/{len(xs)}")
    return TileResults(feats, analyses, segments)


def _deep_features(images: np.ndarray, deep: Any) -> np.ndarray:
    """The deep embeddings of RGB tiles (torch imported only for configs with deep features)."""
    from napari_lnm.features.deep import deep_features

    return deep_features(images, deep)


@dataclass(frozen=True)
class StopFile:
    """Picklable ``should_stop`` for worker processes: true once the file ``path`` exists."""

    path: str

    def __call__(self) -> bool:
        return os.path.exists(self.path)


def _open(path: str, mpp: float):
    """Reopen a slide in a worker at the µm/px the caller used (its metadata or the caller's override)."""
    from napari_lnm.io import open_slide

    return open_slide(path, mpp=mpp, force_mpp=True)


def analyse_chunk(path: str, mpp: float, xs: np.ndarray, ys: np.ndarray, config: TilingConfig,
                  keep_images: bool, stop: Optional[StopFn] = None) -> TileResults:
    """Worker task: open the slide (level-0 ``mpp`` µm/px) and analyse the tiles at level-0 (xs, ys), one BLAS thread."""
    tune_malloc()
    check_stop(stop)
    with one_blas_thread(), _open(path, mpp) as slide:
        out = _analyse_list(slide, xs, ys, config, keep_images, should_stop=stop)
    check_stop(stop)  # a stopped run does not ship results back
    return out


def chunk_bounds(n: int, workers: int, chunk_tiles: int) -> list[tuple[int, int]]:
    """Split n tiles into contiguous chunks: at most ``chunk_tiles``, ~8 chunks per worker (load balance)."""
    per = max(1, min(chunk_tiles, n // max(1, 8 * workers)))
    return [(s, min(n, s + per)) for s in range(0, n, per)]


def worker_died(exc: BaseException) -> bool:
    """True for the errors an executor raises when a worker process died (a local pool's, or Dask's)."""
    from distributed import KilledWorker

    return isinstance(exc, (cf.process.BrokenProcessPool, KilledWorker))


# ----------------------------------------------------------------------------- executors
class Executor(Protocol):
    """What the engine needs of a runner."""

    n_workers: int
    in_process: bool

    def submit(self, fn, *args) -> cf.Future: ...

    def wait(self, futures, timeout: float) -> tuple[set, set]: ...

    def stop_running(self) -> None: ...

    def close(self) -> None: ...


class Inline:
    """Runs each task in the calling thread at submit time (one worker)."""

    n_workers = 1
    in_process = True

    def submit(self, fn, *args) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - the caller decides per task
            fut.set_exception(exc)
        return fut

    def wait(self, futures, timeout: float) -> tuple[set, set]:
        return set(futures), set()

    def stop_running(self) -> None:
        pass

    def close(self) -> None:
        pass


def _watch_parent(ppid: int) -> None:
    """Worker thread: end this process once its parent is gone (the parent was killed)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != ppid:
            os._exit(1)


def _init_worker(ppid: int) -> None:
    """Worker initializer: one BLAS/OpenMP thread, malloc tuning, and die with the parent."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    tune_malloc()
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True, name="napari-lnm-parent-watch").start()


class LocalPool:
    """Spawned worker processes (loky's reusable executor: warm between runs, replaced when a worker dies)."""

    in_process = False

    def __init__(self, workers: int):
        self.n_workers = int(workers)
        self._ex = self._executor()

    def _executor(self):
        from loky import get_reusable_executor

        return get_reusable_executor(max_workers=self.n_workers, timeout=IDLE_TIMEOUT_S, initializer=_init_worker,
                                     initargs=(os.getpid(),), env={v: "1" for v in _THREAD_VARS})

    def submit(self, fn, *args) -> cf.Future:
        try:
            return self._ex.submit(fn, *args)
        except cf.process.BrokenProcessPool:  # a worker died earlier: a fresh pool
            self._ex = self._executor()
            return self._ex.submit(fn, *args)

    def wait(self, futures, timeout: float) -> tuple[set, set]:
        done, not_done = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return set(done), set(not_done)

    def stop_running(self) -> None:
        """Kill the worker processes now (tasks that ignore the stop file)."""
        self._ex.shutdown(wait=True, kill_workers=True)

    def close(self) -> None:
        """Leave the workers warm for the next run (they exit after IDLE_TIMEOUT_S, or with this process)."""


class DaskExecutor:
    """Tasks on a dask.distributed scheduler (an address such as ``tcp://host:8786`` or a ``Client``)."""

    in_process = False

    def __init__(self, scheduler: Any, wait_for_workers_s: float = 60.0):
        from distributed import Client

        if isinstance(scheduler, Client):
            self.client, self._own = scheduler, False
        else:
            try:
                self.client, self._own = Client(str(scheduler), timeout="20s"), True
            except (OSError, TimeoutError) as exc:
                raise UserError(f"cannot connect to the Dask scheduler at {scheduler} ({exc})") from None
        try:
            self.client.wait_for_workers(1, timeout=wait_for_workers_s)
        except TimeoutError:
            self.close()
            raise UserError(f"the Dask scheduler at {scheduler} has no worker after {wait_for_workers_s:g} s "
                            f"(start one with: dask worker {scheduler})") from None
        self.n_workers = max(1, len(self.client.scheduler_info().get("workers", {})))

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def wait(self, futures, timeout: float) -> tuple[set, set]:
        from distributed import wait

        try:
            res = wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return set(), set(futures)
        return set(res.done), set(res.not_done)

    def stop_running(self) -> None:
        pass  # cancelled futures stop at their next task; the cluster's workers stay

    def close(self) -> None:
        if self._own:
            self.client.close()


def shutdown_pool() -> None:
    """Stop the warm worker processes now (also done when this process exits)."""
    from loky import get_reusable_executor

    get_reusable_executor(max_workers=1).shutdown(wait=True, kill_workers=True)


def make_executor(workers: int = 1, scheduler: Any = None) -> Executor:
    """The runner for ``workers`` local processes (1: inline) or a Dask ``scheduler``."""
    workers = int(workers)
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if scheduler is not None:
        return DaskExecutor(scheduler)
    return LocalPool(workers) if workers > 1 else Inline()


@contextlib.contextmanager
def _stop_file() -> Iterator[StopFile]:
    """A fresh stop-file path for one run, removed afterwards."""
    stop = StopFile(os.path.join(tempfile.gettempdir(), f"napari-lnm-stop-{os.getpid()}-{uuid.uuid4().hex}"))
    try:
        yield stop
    finally:
        with contextlib.suppress(OSError):
            os.remove(stop.path)


def _raise_stop(stop: StopFile) -> None:
    with contextlib.suppress(OSError):
        with open(stop.path, "w", encoding="utf-8"):
            pass


def analyse_tiles(slide: Any, tiles: pd.DataFrame, config: TilingConfig, *, keep_images: bool = False,
                  executor: Optional[Executor] = None, progress: Optional[ProgressFn] = None,
                  should_stop: Optional[StopFn] = None, chunk_tiles: int = 64) -> TileResults:
    """Analyse the tiles (level-0 ``x``, ``y`` of ``tiles``) of ``slide`` (a Slide or a path) on ``executor``.

    ``executor=None`` or :class:`Inline` runs here; a process pool or Dask needs the slide as a file.
    ``progress(done, total, msg)`` counts tiles; ``should_stop`` is polled between tiles (inline) or
    every 0.1 s (pools), then queued chunks are cancelled and running ones told to quit (Cancelled).
    A dead worker raises SlideError naming the slide.
    """
    if isinstance(slide, (str, os.PathLike)):
        from napari_lnm.io import open_slide

        with open_slide(slide) as opened:
            return analyse_tiles(opened, tiles, config, keep_images=keep_images, executor=executor,
                                 progress=progress, should_stop=should_stop, chunk_tiles=chunk_tiles)
    executor = executor or Inline()
    xs, ys = tiles["x"].to_numpy(), tiles["y"].to_numpy()
    path = getattr(slide, "path", None)
    if executor.in_process or path is None or not os.path.isfile(str(path)):  # workers need a file to reopen
        with one_blas_thread():
            return _analyse_list(slide, xs, ys, config, keep_images, should_stop, progress)
    return _run_chunks(executor, str(path), float(slide.mpp), xs, ys, config, keep_images, progress, should_stop,
                       chunk_tiles)


def _run_chunks(executor: Executor, path: str, mpp: float, xs: np.ndarray, ys: np.ndarray, config: TilingConfig,
                keep_images: bool, progress: Optional[ProgressFn], should_stop: Optional[StopFn],
                chunk_tiles: int) -> TileResults:
    """The tiles in chunks on ``executor``; results in tile order."""
    n = len(xs)
    bounds = chunk_bounds(n, executor.n_workers, chunk_tiles)
    results: dict[int, TileResults] = {}
    with _stop_file() as stop:
        pending = {executor.submit(analyse_chunk, path, mpp, xs[a:b], ys[a:b], config, keep_images, stop): k
                   for k, (a, b) in enumerate(bounds)}
        done_tiles = 0
        try:
            while pending:
                check_stop(should_stop)
                finished, _ = executor.wait(set(pending), 0.1)
                for fut in finished:
                    k = pending.pop(fut)
                    try:
                        results[k] = fut.result()
                    except Cancelled:
                        raise
                    except BaseException as exc:
                        if worker_died(exc):
                            raise SlideError(path, "a worker process died while analysing tiles (out of memory "
                                                   "or killed); run again, or with 1 worker") from None
                        raise
                    done_tiles += bounds[k][1] - bounds[k][0]
                    report(progress, done_tiles, n, f"analysing tile {done_tiles}/{n}")
        except BaseException:
            _abandon(executor, pending, stop)
            raise
    return TileResults.concat([results[k] for k in range(len(bounds))])


def _abandon(executor: Executor, pending: dict, stop: StopFile) -> None:
    """Cancel queued chunks, tell running ones to stop at their next tile, kill them after STOP_GRACE_S."""
    for fut in pending:
        fut.cancel()
    _raise_stop(stop)
    running = [f for f in pending if not f.done()]
    if not running:
        return
    deadline = time.monotonic() + STOP_GRACE_S
    while running and time.monotonic() < deadline:
        _, not_done = executor.wait(set(running), max(0.0, deadline - time.monotonic()))
        running = list(not_done)
    if running:
        executor.stop_running()

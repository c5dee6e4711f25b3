"""Per-slide feature extraction to Parquet, for one slide or a cohort (local processes or a Dask cluster).

One Parquet file per slide: columns ``slide_id, x, y, size, tissue_fraction``
(level-0 px; fraction 0..1) followed by :func:`napari_lnm.features.feature_names`
in order.  The file's key-value metadata ``napari_lnm`` (JSON) holds the
provenance: package version, tiling config, slide µm/px, feature schema hash,
ROI hash.  A cohort run skips slides whose Parquet matches the current
provenance, so a run that was killed resumes without losing finished slides.

Work is split into per-tile-chunk tasks (:func:`extract_tiles`) so that
several workers also help on a single large slide; the same task function
runs in-process, in a spawned process pool or on dask.distributed workers,
which makes the results identical whichever executor ran them.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401  (cf.process.BrokenProcessPool)
import contextlib
import csv
import hashlib
import io as _io
import json
import math
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import pandas as pd

from napari_lnm import __version__
from napari_lnm._atomic import atomic_path
from napari_lnm.errors import CohortError, SlideError, UserError
from napari_lnm.progress import Cancelled, ProgressFn, StopFn, check_stop, report
from napari_lnm.tiling import TilingConfig

__all__ = [
    "read_cohort", "extract_slide", "extract_cohort", "extract_tiles", "feature_schema_hash",
    "read_provenance", "is_done", "COORD_COLUMNS", "METADATA_KEY", "ERRORS_FILE",
]

COORD_COLUMNS = ["slide_id", "x", "y", "size", "tissue_fraction"]
METADATA_KEY = b"napari_lnm"
ERRORS_FILE = "errors.csv"
REQUIRED_COLUMNS = ("slide_id", "path", "label")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS")

Rois = Union[None, str, os.PathLike, Sequence[np.ndarray]]


# ----------------------------------------------------------------------------- cohort CSV
def read_csv_strings(csv_path: str | os.PathLike, empty_hint: str = "") -> pd.DataFrame:
    """Read a cohort-style CSV as strings (no NA guessing, stripped headers); CohortError naming the file."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CohortError(f"{csv_path}: cohort CSV not found")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise CohortError(f"{csv_path}: cohort CSV is empty {empty_hint}".rstrip()) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        msg = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        raise CohortError(f"{csv_path}: not a readable CSV ({msg})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def read_cohort(csv_path: str | os.PathLike, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a cohort CSV (slide_id, path, label[, subtype][, patient_id]; extra columns kept).

    Relative paths are resolved against the CSV's folder; ``label`` must be 0/1;
    slide ids must be unique and usable as file names.  Raises CohortError naming
    the CSV, the row (CSV line number) and the problem.
    """
    csv_path = Path(csv_path)
    df = read_csv_strings(csv_path, "(needs columns slide_id,path,label)")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise CohortError(f"{csv_path}: missing column{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(m) for m in missing)} (needs slide_id,path,label[,subtype][,patient_id])")
    if len(df) == 0:
        raise CohortError(f"{csv_path}: cohort CSV has a header but no slides")
    for c in df.columns:
        df[c] = df[c].str.strip()
    labels = []
    seen: dict[str, int] = {}
    paths = []
    for i, row in enumerate(df.itertuples(index=False)):
        line = i + 2  # 1-based line number in the file, after the header
        where = f"{csv_path}: row {line}"
        sid = row.slide_id
        if not sid:
            raise CohortError(f"{where}: empty slide_id")
        if sid in (".", "..") or any(ch in sid for ch in '/\\:*?"<>|') or sid.startswith("."):
            raise CohortError(f"{where}: slide_id {sid!r} cannot be used as a file name")
        if sid in seen:
            raise CohortError(f"{where}: duplicate slide_id {sid!r} (first on row {seen[sid]})")
        seen[sid] = line
        try:
            lab = float(row.label)
        except ValueError:
            lab = math.nan
        if lab not in (0.0, 1.0):
            raise CohortError(f"{where} ({sid}): label must be 0 or 1, got {row.label!r}")
        labels.append(int(lab))
        if not row.path:
            raise CohortError(f"{where} ({sid}): empty path")
        p = Path(row.path).expanduser()
        if not p.is_absolute():
            p = csv_path.parent / p
        if check_files and not p.is_file():
            raise CohortError(f"{where} ({sid}): slide file not found: {p}")
        paths.append(str(p.resolve() if p.exists() else p))
    df["path"] = paths
    df["label"] = np.asarray(labels, dtype=np.int64)
    if "roi" in df.columns:  # optional per-slide GeoJSON ROI, relative to the CSV like the slides
        rois = []
        for i, r in enumerate(df["roi"]):
            if not r:
                rois.append(None)
                continue
            p = Path(r).expanduser()
            p = p if p.is_absolute() else csv_path.parent / p
            if check_files and not p.is_file():
                raise CohortError(f"{csv_path}: row {i + 2} ({df['slide_id'].iloc[i]}): ROI file not found: {p}")
            rois.append(str(p))
        df["roi"] = pd.Series(rois, index=df.index, dtype=object)
    df.attrs["csv"] = str(csv_path)
    return df


# ----------------------------------------------------------------------------- provenance
def feature_schema_hash(names: Optional[Sequence[str]] = None) -> str:
    """Short SHA-256 of the ordered feature names (the Parquet schema of the features)."""
    if names is None:
        from napari_lnm.features import feature_names

        names = feature_names()
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _rois_hash(rois: Rois) -> Optional[str]:
    """Hash of the ROI polygons (or of the GeoJSON file's bytes); None for the whole slide."""
    if rois is None:
        return None
    h = hashlib.sha256()
    if isinstance(rois, (str, os.PathLike)):
        h.update(Path(rois).read_bytes())
    else:
        for poly in rois:
            h.update(np.ascontiguousarray(np.asarray(poly, dtype=np.float64)).tobytes())
            h.update(b"|")
    return h.hexdigest()[:16]


def _provenance(config: TilingConfig, mpp_override: Optional[float], rois: Rois) -> dict:
    """The fields that decide whether an existing Parquet file is still valid."""
    return {
        "package_version": __version__,
        "tiling": config.to_dict(),
        "mpp_override": None if mpp_override is None else float(mpp_override),
        "feature_schema_hash": feature_schema_hash(),
        "rois_hash": _rois_hash(rois),
    }


def read_provenance(parquet: str | os.PathLike) -> Optional[dict]:
    """The napari_lnm provenance dict of a features Parquet file, or None if absent/unreadable."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(parquet).metadata or {}
        return json.loads(meta[METADATA_KEY])
    except Exception:  # missing, truncated, foreign file: treat as not done
        return None


def is_done(parquet: str | os.PathLike, config: TilingConfig, mpp: Optional[float] = None,
            rois: Rois = None) -> bool:
    """True when ``parquet`` exists and was written with this package version, config, schema and ROI."""
    prov = read_provenance(parquet)
    if prov is None:
        return False
    want = _provenance(config, mpp, rois)
    return all(prov.get(k) == v for k, v in want.items())


# ----------------------------------------------------------------------------- per-tile work
_TUNED = False


def _tune_malloc() -> None:
    """Once per worker process: let glibc keep freed tile-sized buffers (mmap threshold 64 MiB, trim 128 MiB).

    dask.distributed's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536,
    which makes every multi-MB temporary a fresh mmap with page faults; measured
    here it made per-tile feature extraction ~2.5x slower in CPU time.
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


def _limit_threads() -> contextlib.AbstractContextManager:
    """Limit BLAS/OpenMP pools to one thread (inside workers); no-op without threadpoolctl."""
    _tune_malloc()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _load_rois(rois: Rois) -> Optional[list[np.ndarray]]:
    """ROI polygons from a list or a GeoJSON path (level-0 (x, y) px)."""
    if rois is None:
        return None
    if isinstance(rois, (str, os.PathLike)):
        from napari_lnm.tissue import read_geojson

        return list(read_geojson(rois))
    return [np.asarray(p, dtype=np.float64) for p in rois]


def tile_table(path: str, config: TilingConfig, mpp: Optional[float] = None, rois: Rois = None) -> tuple[pd.DataFrame, float]:
    """Tile table (x, y, size level-0 px, tissue_fraction) of a slide and its level-0 µm/px."""
    from napari_lnm.io import open_slide
    from napari_lnm.tiling import tile_slide

    with open_slide(path, mpp=mpp) as slide:
        table = tile_slide(slide, rois=_load_rois(rois), config=config)
        return table, float(slide.mpp)


def extract_tiles(path: str, xs: Sequence[int], ys: Sequence[int], config: TilingConfig,
                  mpp: Optional[float] = None, limit_threads: bool = False,
                  should_stop: Optional[StopFn] = None, progress: Optional[ProgressFn] = None) -> np.ndarray:
    """Features (n_tiles, n_features) float64, in feature_names() order, of the tiles at level-0 (xs, ys)."""
    from napari_lnm.features import feature_names, tile_features
    from napari_lnm.io import open_slide
    from napari_lnm.tiling import read_tile

    names = feature_names()
    out = np.full((len(xs), len(names)), np.nan, dtype=np.float64)
    with (_limit_threads() if limit_threads else contextlib.nullcontext()), open_slide(path, mpp=mpp) as slide:
        for i, (x, y) in enumerate(zip(xs, ys)):
            check_stop(should_stop)
            rgb = read_tile(slide, int(x), int(y), config)
            feats = tile_features(rgb, config.mpp, config.segmentation)
            out[i] = [feats.get(n, np.nan) for n in names]
            report(progress, i + 1, len(xs), f"tile {i + 1}/{len(xs)}")
    return out


def _assemble(slide_id: str, table: pd.DataFrame, feats: np.ndarray) -> pd.DataFrame:
    """The per-slide DataFrame: coordinates then features."""
    from napari_lnm.features import feature_names

    df = pd.DataFrame({
        "slide_id": pd.Series([slide_id] * len(table), dtype=str),
        "x": table["x"].to_numpy(np.int64),
        "y": table["y"].to_numpy(np.int64),
        "size": table["size"].to_numpy(np.int64),
        "tissue_fraction": table["tissue_fraction"].to_numpy(np.float32),
    })
    fdf = pd.DataFrame(feats, columns=feature_names())
    return pd.concat([df, fdf], axis=1)


def _write_parquet(df: pd.DataFrame, out: Path, prov: dict, slide_id: str, path: str, slide_mpp: float) -> None:
    """Write ``df`` atomically with the provenance in the Parquet key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = dict(prov, slide_id=slide_id, slide_path=str(path), slide_mpp=slide_mpp,
                working_mpp=TilingConfig(**prov["tiling"]).mpp, n_tiles=int(len(df)))
    tbl = pa.Table.from_pandas(df, preserve_index=False)
    tbl = tbl.replace_schema_metadata({**(tbl.schema.metadata or {}), METADATA_KEY: json.dumps(meta).encode()})
    with atomic_path(out) as tmp:
        pq.write_table(tbl, tmp, compression="zstd")
    df.attrs.update(meta)


def _no_tiles(path: str, config: TilingConfig) -> SlideError:
    return SlideError(path, f"no tiles with at least {config.min_tissue:g} tissue at {config.magnification:g}x "
                            f"(lower --min-tissue, check the ROI, or the slide is blank)")


def extract_slide(path: str | os.PathLike, out_parquet: Optional[str | os.PathLike], config: Optional[TilingConfig] = None,
                  mpp: Optional[float] = None, slide_id: Optional[str] = None, rois: Rois = None,
                  progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None) -> pd.DataFrame:
    """Tile one slide, compute every tile's features and write them to ``out_parquet`` atomically.

    ``mpp`` (µm/px) overrides the slide's metadata; ``rois`` are level-0 (x, y)
    polygons or a GeoJSON path; ``config=None`` means ``TilingConfig()``.  Returns the DataFrame (``slide_id, x, y, size,
    tissue_fraction`` + features); ``out_parquet=None`` only returns it.
    """
    path = str(path)
    config = config if config is not None else TilingConfig()
    slide_id = slide_id or Path(path).stem
    prov = _provenance(config, mpp, rois)
    check_stop(should_stop)
    table, slide_mpp = tile_table(path, config, mpp, rois)
    if len(table) == 0:
        raise _no_tiles(path, config)
    n = len(table)
    report(progress, 0, n, f"{slide_id}: {n} tiles")
    tick = None if progress is None else (lambda d, t, m: progress(d, t, f"{slide_id}: {m}"))
    feats = extract_tiles(path, table["x"].to_numpy(), table["y"].to_numpy(), config, mpp,
                          should_stop=should_stop, progress=tick)
    df = _assemble(slide_id, table, feats)
    if out_parquet is not None:
        _write_parquet(df, Path(out_parquet), prov, slide_id, path, slide_mpp)
    else:
        df.attrs.update(prov, slide_id=slide_id, slide_mpp=slide_mpp)
    return df


# ----------------------------------------------------------------------------- executors
def _init_worker() -> None:
    """Process-pool initializer: one BLAS/OpenMP thread per worker process."""
    for v in _THREAD_VARS:
        os.environ[v] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass


@contextlib.contextmanager
def _single_thread_env() -> Iterator[None]:
    """Set the thread-count variables to 1 while worker processes are spawned (restored afterwards)."""
    old = {v: os.environ.get(v) for v in _THREAD_VARS}
    os.environ.update({v: "1" for v in _THREAD_VARS})
    try:
        yield
    finally:
        for v, val in old.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


class _Inline:
    """Executor that runs each task at submit time (workers=1), with the cf.Future interface."""

    def submit(self, fn, *args, **kwargs) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - recorded per slide
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            fut.set_exception(exc)
        return fut

    def wait(self, futures):
        return set(futures), set()

    def shutdown(self) -> None:
        pass


class _Pool:
    """A spawned ProcessPoolExecutor, recreated when a worker process dies."""

    def __init__(self, workers: int):
        self.workers = workers
        self._new()

    def _new(self) -> None:
        with _single_thread_env():
            self.ex = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker)

    def submit(self, fn, *args, **kwargs):
        try:
            return self.ex.submit(fn, *args, **kwargs)
        except cf.process.BrokenProcessPool:
            self.ex.shutdown(wait=False, cancel_futures=True)
            self._new()
            return self.ex.submit(fn, *args, **kwargs)

    def wait(self, futures):
        return cf.wait(futures, timeout=0.5, return_when=cf.FIRST_COMPLETED)

    def shutdown(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


class _Dask:
    """Tasks on a dask.distributed scheduler (address string or an existing Client)."""

    def __init__(self, scheduler: Any):
        from distributed import Client

        if isinstance(scheduler, Client):
            self.client, self._own = scheduler, False
        else:
            try:
                self.client, self._own = Client(str(scheduler), timeout="20s"), True
            except (OSError, TimeoutError) as exc:
                raise UserError(f"cannot connect to the Dask scheduler at {scheduler} ({exc})") from None

    def submit(self, fn, *args, **kwargs):
        return self.client.submit(fn, *args, pure=False, **kwargs)

    def wait(self, futures):
        from distributed import wait

        try:
            res = wait(list(futures), timeout=0.5, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return set(), set(futures)
        return set(res.done), set(res.not_done)

    def shutdown(self) -> None:
        if self._own:
            self.client.close()


# ----------------------------------------------------------------------------- cohort
@dataclass
class _SlideJob:
    """State of one slide in the cohort loop."""

    slide_id: str
    path: str
    out: Path
    rois: Rois
    table: Optional[pd.DataFrame] = None
    slide_mpp: float = float("nan")
    chunks: dict = field(default_factory=dict)  # chunk index -> feature array
    n_chunks: int = 0


def _chunk_bounds(n: int, workers: int, chunk_tiles: int) -> list[tuple[int, int]]:
    """Split n tiles into contiguous chunks: at most ``chunk_tiles``, ~8 chunks per worker (load balance)."""
    per = max(1, min(chunk_tiles, n // max(1, 8 * workers)))
    return [(s, min(n, s + per)) for s in range(0, n, per)]


def _one_line(exc: BaseException) -> str:
    """One-line description of an exception (UserErrors are already one line naming the file)."""
    msg = str(exc).strip().splitlines()
    if isinstance(exc, UserError):
        return msg[0] if msg else type(exc).__name__
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def _write_errors(out_dir: Path, errors: list[tuple[str, str, str]]) -> Optional[Path]:
    """Write out_dir/errors.csv (slide_id, path, error) atomically, or remove a stale one."""
    path = out_dir / ERRORS_FILE
    if not errors:
        if path.exists():
            path.unlink()
        return None
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide_id", "path", "error"])
    w.writerows(errors)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return path


def extract_cohort(cohort: Union[pd.DataFrame, str, os.PathLike], out_dir: str | os.PathLike,
                   config: Optional[TilingConfig] = None, workers: int = 1, scheduler: Any = None,
                   progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None,
                   mpp: Optional[float] = None, chunk_tiles: int = 64, raise_on_error: bool = True) -> list[Path]:
    """Extract every slide of a cohort to out_dir/<slide_id>.parquet; returns the Parquet paths (cohort order).

    Slides whose Parquet already matches (version, config, schema, ROI) are skipped.
    ``workers > 1`` uses a spawned local process pool; ``scheduler`` ("tcp://host:port"
    or a ``distributed.Client``) sends tasks to a Dask cluster.  Slides are split
    into tasks of at most ``chunk_tiles`` tiles.  A failing slide is recorded in
    out_dir/errors.csv and the others continue; at the end CohortError lists the
    failures (unless ``raise_on_error=False``: then a failed slide's path is returned
    but does not exist).  ``progress`` counts slides (the message tells tiles).
    An optional cohort column ``roi`` names a GeoJSON ROI per slide.
    """
    config = config if config is not None else TilingConfig()
    if not isinstance(cohort, pd.DataFrame):
        cohort = read_cohort(cohort)
    for c in ("slide_id", "path"):
        if c not in cohort.columns:
            raise CohortError(f"cohort table has no {c!r} column")
    if cohort["slide_id"].duplicated().any():
        raise CohortError(f"duplicate slide_id {cohort['slide_id'][cohort['slide_id'].duplicated()].iloc[0]!r}")
    workers = int(workers)
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = len(cohort)
    outputs: list[Path] = []
    todo: list[_SlideJob] = []
    for row in cohort.itertuples(index=False):
        rois = getattr(row, "roi", None)
        if rois is None or (isinstance(rois, float) and math.isnan(rois)) or rois == "":
            rois = None
        out = out_dir / f"{row.slide_id}.parquet"
        outputs.append(out)
        if is_done(out, config, mpp, rois):
            continue
        todo.append(_SlideJob(str(row.slide_id), str(row.path), out, rois))
    done = total - len(todo)
    report(progress, done, total, f"{done} already done" if done else "starting")
    errors: list[tuple[str, str, str]] = []
    if todo:
        if scheduler is not None:
            ex: Any = _Dask(scheduler)
            n_workers = max(1, len(ex.client.scheduler_info().get("workers", {})))
        elif workers > 1:
            ex, n_workers = _Pool(workers), workers
        else:
            ex, n_workers = _Inline(), 1
        try:
            done = _run_jobs(ex, todo, config, mpp, n_workers, chunk_tiles, errors, progress, should_stop, done, total)
        finally:
            ex.shutdown()
    err_path = _write_errors(out_dir, errors)
    if errors and raise_on_error:
        first = errors[0]
        raise CohortError(f"{len(errors)} of {total} slides failed (details in {err_path}); "
                          f"first: {first[0]}: {first[2]}")
    return outputs


def _run_jobs(ex, todo: list[_SlideJob], config: TilingConfig, mpp: Optional[float], n_workers: int,
              chunk_tiles: int, errors: list, progress, should_stop, done: int, total: int) -> int:
    """Event loop: tile-table task per slide, then chunk tasks; write each slide when its chunks are in."""
    pending: dict[Any, tuple[_SlideJob, str, int]] = {}  # future -> (job, kind, chunk index)
    max_inflight = 4 * n_workers
    queue = list(todo)
    failed: set[str] = set()
    inline = isinstance(ex, _Inline)
    limit = not inline

    def fail(job: _SlideJob, exc: BaseException) -> None:
        if job.slide_id in failed:
            return
        failed.add(job.slide_id)
        errors.append((job.slide_id, job.path, _one_line(exc)))
        for f, (j, _, _) in list(pending.items()):
            if j is job:
                f.cancel()
                pending.pop(f)

    def submit_next() -> None:
        # keep a bounded number of tasks in flight: start a new slide only when there is room
        while queue and len(pending) < max_inflight:
            job = queue.pop(0)
            fut = ex.submit(tile_table, job.path, config, mpp, job.rois)
            pending[fut] = (job, "tiles", -1)
            if inline:
                return

    def handle(fut) -> None:
        nonlocal done
        job, kind, k = pending.pop(fut)
        if job.slide_id in failed:
            return
        try:
            res = fut.result()
        except Cancelled:
            raise
        except BaseException as exc:  # noqa: BLE001 - a slide's failure must not stop the cohort
            if isinstance(exc, KeyboardInterrupt):
                raise
            if isinstance(exc, cf.process.BrokenProcessPool):
                exc = RuntimeError("worker process died (out of memory or killed)")
            fail(job, exc)
            done += 1
            report(progress, done, total, f"{job.slide_id}: failed")
            return
        if kind == "tiles":
            job.table, job.slide_mpp = res
            if len(job.table) == 0:
                fail(job, _no_tiles(job.path, config))
                done += 1
                report(progress, done, total, f"{job.slide_id}: failed")
                return
            bounds = _chunk_bounds(len(job.table), n_workers, chunk_tiles)
            job.n_chunks = len(bounds)
            xs, ys = job.table["x"].to_numpy(), job.table["y"].to_numpy()
            for i, (a, b) in enumerate(bounds):
                stop = should_stop if inline else None
                f = ex.submit(extract_tiles, job.path, xs[a:b], ys[a:b], config, mpp, limit, stop)
                pending[f] = (job, "chunk", i)
                if inline:
                    handle(f)
                    if job.slide_id in failed:
                        return
            return
        job.chunks[k] = res
        tiles_done = sum(len(c) for c in job.chunks.values())
        report(progress, done, total, f"{job.slide_id}: {tiles_done}/{len(job.table)} tiles")
        if len(job.chunks) == job.n_chunks:
            feats = np.concatenate([job.chunks[i] for i in range(job.n_chunks)], axis=0)
            df = _assemble(job.slide_id, job.table, feats)
            try:
                _write_parquet(df, job.out, _provenance(config, mpp, job.rois), job.slide_id, job.path, job.slide_mpp)
            except OSError as exc:
                fail(job, exc)
            job.chunks.clear()
            done += 1
            report(progress, done, total, f"{job.slide_id}: {len(df)} tiles")

    try:
        submit_next()
        while pending:
            check_stop(should_stop)
            finished, _ = ex.wait(set(pending))
            for fut in finished:
                if fut in pending:
                    handle(fut)
            submit_next()
    except BaseException:
        for fut in pending:  # stop queued work (also on a shared Dask client)
            fut.cancel()
        raise
    return done

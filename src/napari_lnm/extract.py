"""Per-slide feature extraction to Parquet, for one slide or a cohort (local processes or a Dask cluster).

One Parquet file per slide: :data:`napari_lnm.engine.META_COLUMNS` (level-0 px; fraction 0..1)
followed by :func:`napari_lnm.features.feature_names` in order, with the provenance record of
:mod:`napari_lnm.provenance` in its key-value metadata.  A cohort run skips slides whose Parquet
matches the current provenance (slide file, config, schema, ROI) and decodes completely, so a run
that was killed resumes without losing finished slides.  The tiles are analysed by the one engine
(:func:`napari_lnm.engine.analyse_tiles`) on the runner the caller picks.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import pandas as pd

from napari_lnm._atomic import atomic_path
from napari_lnm.cohort import read_cohort
from napari_lnm.config import TilingConfig
from napari_lnm.engine import Executor, analyse_tiles, make_executor, tile_frame
from napari_lnm.errors import CohortError, UserError
from napari_lnm.progress import Cancelled, ProgressFn, StopFn, check_stop, report
from napari_lnm.provenance import (METADATA_KEY, Rois, extraction_provenance, feature_schema_hash, is_done,
                                   read_provenance)

__all__ = [
    "read_cohort", "extract_slide", "extract_cohort", "feature_schema_hash", "read_provenance", "is_done",
    "METADATA_KEY", "ERRORS_FILE",
]

ERRORS_FILE = "errors.csv"


def _write_parquet(df: pd.DataFrame, out: Path, prov: dict, slide_id: str, slide_mpp: float,
                   config: TilingConfig) -> None:
    """Write ``df`` atomically with the provenance in the Parquet key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = dict(prov, slide_id=slide_id, slide_path=prov["slide_file"]["path"], slide_mpp=slide_mpp,
                working_mpp=config.mpp, n_tiles=int(len(df)))
    tbl = pa.Table.from_pandas(df, preserve_index=False)
    tbl = tbl.replace_schema_metadata({**(tbl.schema.metadata or {}), METADATA_KEY: json.dumps(meta).encode()})
    with atomic_path(out) as tmp:
        pq.write_table(tbl, tmp, compression="zstd")
    df.attrs.update(meta)


def _extract(path: str, slide_id: str, config: TilingConfig, mpp: Optional[float], rois: Rois,
             executor: Executor, progress: Optional[ProgressFn], should_stop: Optional[StopFn]
             ) -> tuple[pd.DataFrame, dict, float]:
    """Tile one slide and analyse its tiles: (tile table, provenance record, slide µm/px)."""
    from napari_lnm.io import open_slide
    from napari_lnm.tiling import no_tiles_error, tile_slide
    from napari_lnm.tissue import load_rois

    prov = extraction_provenance(config, mpp, rois, path)
    check_stop(should_stop)
    with open_slide(path, mpp=mpp) as slide:
        tiles = tile_slide(slide, rois=load_rois(rois, path), config=config, should_stop=should_stop)
        if len(tiles) == 0:
            raise no_tiles_error(slide, config, with_roi=rois is not None)
        report(progress, 0, len(tiles), f"{slide_id}: {len(tiles)} tiles")
        res = analyse_tiles(slide, tiles, config, executor=executor, progress=progress, should_stop=should_stop)
        return tile_frame(slide_id, tiles, res.features, config), prov, float(slide.mpp)


def extract_slide(path: str | os.PathLike, out_parquet: Optional[str | os.PathLike], config: Optional[TilingConfig] = None,
                  mpp: Optional[float] = None, slide_id: Optional[str] = None, rois: Rois = None,
                  progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None,
                  workers: int = 1) -> pd.DataFrame:
    """Tile one slide, compute every tile's features and write them to ``out_parquet`` atomically.

    ``mpp`` (µm/px) is the slide's when its metadata lacks it; ``rois`` are level-0 (x, y) polygons,
    a shapely geometry or a GeoJSON path; ``config=None`` means ``TilingConfig()``.  Returns the
    DataFrame (:data:`~napari_lnm.engine.META_COLUMNS` + features); ``out_parquet=None`` only returns it.
    """
    path = str(path)
    config = config if config is not None else TilingConfig()
    slide_id = slide_id or Path(path).stem
    tick = None if progress is None else (lambda d, t, m: progress(d, t, f"{slide_id}: {m}"))
    executor = make_executor(workers)
    try:
        df, prov, slide_mpp = _extract(path, slide_id, config, mpp, rois, executor, tick, should_stop)
    finally:
        executor.close()
    if out_parquet is not None:
        _write_parquet(df, Path(out_parquet), prov, slide_id, slide_mpp, config)
    else:
        df.attrs.update(prov, slide_id=slide_id, slide_mpp=slide_mpp)
    return df


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


def _cohort_rois(row: Any) -> Rois:
    """The row's ROI file (the optional ``roi`` column), or None."""
    rois = getattr(row, "roi", None)
    if rois is None or (isinstance(rois, float) and math.isnan(rois)) or rois == "":
        return None
    return rois


def extract_cohort(cohort: Union[pd.DataFrame, str, os.PathLike], out_dir: str | os.PathLike,
                   config: Optional[TilingConfig] = None, workers: int = 1, scheduler: Any = None,
                   progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None,
                   mpp: Optional[float] = None, chunk_tiles: int = 64, raise_on_error: bool = True) -> list[Path]:
    """Extract every slide of a cohort to out_dir/<slide_id>.parquet; returns the Parquet paths (cohort order).

    Slides whose Parquet already matches (slide file, version, config, schema, ROI) are skipped.
    ``workers > 1`` uses spawned local worker processes; ``scheduler`` ("tcp://host:port" or a
    ``distributed.Client``) a Dask cluster.  Each slide's tiles are split into tasks of at most
    ``chunk_tiles`` tiles.  A failing slide is recorded in out_dir/errors.csv and the others
    continue; at the end CohortError lists the failures (unless ``raise_on_error=False``: then a
    failed slide's path is returned but does not exist).  ``progress`` counts slides (the message
    tells tiles).  An optional cohort column ``roi`` names a GeoJSON ROI per slide.
    """
    config = config if config is not None else TilingConfig()
    if not isinstance(cohort, pd.DataFrame):
        cohort = read_cohort(cohort)
    for c in ("slide_id", "path"):
        if c not in cohort.columns:
            raise CohortError(f"cohort table has no {c!r} column")
    if cohort["slide_id"].duplicated().any():
        raise CohortError(f"duplicate slide_id {cohort['slide_id'][cohort['slide_id'].duplicated()].iloc[0]!r}")
    if int(workers) < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = len(cohort)
    outputs: list[Path] = []
    todo: list[tuple[str, str, Path, Rois]] = []
    for row in cohort.itertuples(index=False):
        rois = _cohort_rois(row)
        out = out_dir / f"{row.slide_id}.parquet"
        outputs.append(out)
        if not is_done(out, config, mpp, rois, slide_path=row.path):
            todo.append((str(row.slide_id), str(row.path), out, rois))
    done = total - len(todo)
    report(progress, done, total, f"{done} already done" if done else "starting")
    errors: list[tuple[str, str, str]] = []
    if todo:
        executor = make_executor(workers, scheduler)
        try:
            for slide_id, path, out, rois in todo:
                check_stop(should_stop)
                tick = None if progress is None else (
                    lambda d, t, m, sid=slide_id, k=done: progress(k, total, f"{sid}: {d}/{t} tiles"))
                try:
                    df, prov, slide_mpp = _extract(path, slide_id, config, mpp, rois, executor, tick, should_stop)
                    _write_parquet(df, out, prov, slide_id, slide_mpp, config)
                    msg = f"{slide_id}: {len(df)} tiles"
                except (Cancelled, KeyboardInterrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - a slide's failure must not stop the cohort
                    errors.append((slide_id, path, _one_line(exc)))
                    msg = f"{slide_id}: failed"
                done += 1
                report(progress, done, total, msg)
        finally:
            executor.close()
    err_path = _write_errors(out_dir, errors)
    if errors and raise_on_error:
        first = errors[0]
        raise CohortError(f"{len(errors)} of {total} slides failed (details in {err_path}); "
                          f"first: {first[0]}: {first[2]}")
    return outputs

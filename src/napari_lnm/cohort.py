"""The cohort CSV, read and validated once for extract, train, evaluate, train-subtype and predict.

Columns: ``slide_id, path, label[, subtype][, patient_id][, roi]`` and any clinical columns (kept as
strings).  Relative slide and ROI paths are resolved against the CSV's folder.  Every problem is a
:class:`~napari_lnm.errors.CohortError` naming the CSV, the row (its line number) and the problem.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from napari_lnm.errors import CohortError

__all__ = ["read_cohort", "read_csv_strings", "REQUIRED_COLUMNS", "UNSAFE_ID_CHARS"]

REQUIRED_COLUMNS = ("slide_id", "path", "label")
#: characters a slide id may not hold: it names the slide's output files
UNSAFE_ID_CHARS = '/\\:*?"<>|'


def read_csv_strings(csv_path: str | os.PathLike, empty_hint: str = "") -> pd.DataFrame:
    """Read a cohort-style CSV as strings (no NA guessing, stripped headers); CohortError naming the file."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CohortError(f"{csv_path}: cohort CSV not found")
    _check_field_counts(csv_path)
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False)
    except pd.errors.EmptyDataError:
        raise CohortError(f"{csv_path}: cohort CSV is empty {empty_hint}".rstrip()) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        msg = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        raise CohortError(f"{csv_path}: not a readable CSV ({msg})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _check_field_counts(csv_path: Path) -> None:
    """CohortError for the first row with more fields than the header (pandas would shift the columns)."""
    n_header = None
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as fh:
        for line, row in enumerate(csv.reader(fh), start=1):
            if n_header is None:
                n_header = len(row)
            elif len(row) > n_header and any(v.strip() for v in row[n_header:]):
                raise CohortError(f"{csv_path}: row {line} has {len(row)} fields, the header has {n_header} "
                                  f"(a comma inside a value needs quotes)")


def _check_id(sid: str, where: str, seen: dict[str, int], line: int) -> None:
    """A slide id must be non-empty, unique and usable as a file name."""
    if not sid:
        raise CohortError(f"{where}: empty slide_id")
    if sid in (".", "..") or any(ch in sid for ch in UNSAFE_ID_CHARS) or sid.startswith("."):
        raise CohortError(f"{where}: slide_id {sid!r} cannot be used as a file name")
    if sid in seen:
        raise CohortError(f"{where}: duplicate slide_id {sid!r} (first on row {seen[sid]})")
    seen[sid] = line


def _resolve(value: str, csv_path: Path) -> Path:
    """A path from the CSV, relative to the CSV's folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else csv_path.parent / p


def read_cohort(csv_path: str | os.PathLike, check_files: bool = True,
                required: Sequence[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Read and validate a cohort CSV (slide_id, path, label[, subtype][, patient_id][, roi]; extra columns kept).

    ``required``: the columns that must be there (prediction needs no ``label``, subtype training
    from a tile cache no ``path``); ``label`` must be 0/1, and may be blank (stored as -1) when it is
    not required; ``check_files``: the slide and ROI files must exist.
    """
    csv_path = Path(csv_path)
    df = read_csv_strings(csv_path, "(needs columns slide_id,path,label)")
    needed = ["slide_id", *[c for c in required if c != "slide_id"]]
    require_label = "label" in needed
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise CohortError(f"{csv_path}: missing column{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(m) for m in missing)} (needs slide_id,path,label[,subtype][,patient_id])")
    if len(df) == 0:
        raise CohortError(f"{csv_path}: cohort CSV has a header but no slides")
    for c in df.columns:
        df[c] = df[c].str.strip()
    has_label, has_path = "label" in df.columns, "path" in df.columns
    labels, paths, seen = [], [], {}
    for i, row in enumerate(df.itertuples(index=False)):
        line = i + 2  # 1-based line number in the file, after the header
        where = f"{csv_path}: row {line}"
        sid = row.slide_id
        _check_id(sid, where, seen, line)
        raw = row.label if has_label else ""
        if raw == "" and not require_label:
            labels.append(-1)
        else:
            try:
                lab = float(raw)
            except ValueError:
                lab = math.nan
            if lab not in (0.0, 1.0):
                raise CohortError(f"{where} ({sid}): label must be 0 or 1, got {raw!r}")
            labels.append(int(lab))
        if not has_path:
            continue
        if not row.path:
            if "path" not in needed:
                paths.append("")
                continue
            raise CohortError(f"{where} ({sid}): empty path")
        p = _resolve(row.path, csv_path)
        if check_files and not p.is_file():
            raise CohortError(f"{where} ({sid}): slide file not found: {p}")
        paths.append(str(p.resolve() if p.exists() else p))
    if has_path:
        df["path"] = paths
    df["label"] = np.asarray(labels, dtype=np.int64)
    if "roi" in df.columns:  # optional per-slide GeoJSON ROI, relative to the CSV like the slides
        rois = []
        for i, r in enumerate(df["roi"]):
            if not r:
                rois.append(None)
                continue
            p = _resolve(r, csv_path)
            if check_files and not p.is_file():
                raise CohortError(f"{csv_path}: row {i + 2} ({df['slide_id'].iloc[i]}): ROI file not found: {p}")
            rois.append(str(p))
        df["roi"] = pd.Series(rois, index=df.index, dtype=object)
    df.attrs["csv"] = str(csv_path)
    return df

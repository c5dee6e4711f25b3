"""Checks of the fields of a saved model: every problem is a one-line :class:`FieldError` naming the field.

A model bundle is data a person may have edited by hand, so each value read from
it is checked for its type, shape and range before anything uses it; the loader
that knows the file adds its name to the message.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NoReturn, Sequence

import numpy as np

from napari_lnm.errors import ModelError


class FieldError(ModelError):
    """A bad field of a model file; the message names the field but not the file (the loader adds it)."""


def fail(field: str, problem: str) -> NoReturn:
    """Raise FieldError ``field '<field>' <problem>``."""
    raise FieldError(f"field {field!r} {problem}")


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(v), type(v).__name__)


def need_dict(v: Any, field: str) -> dict:
    """``v`` if it is a JSON object."""
    if not isinstance(v, dict):
        fail(field, f"must be an object, not {_kind(v)}")
    return v


def need_key(d: dict, key: str, field: str) -> Any:
    """``d[key]``; FieldError naming ``field.key`` when it is missing."""
    if key not in d:
        fail(f"{field}.{key}" if field else key, "is missing")
    return d[key]


def need_list(v: Any, field: str, length: int | None = None) -> list:
    """``v`` if it is a JSON list (of ``length`` items when given)."""
    if not isinstance(v, list):
        fail(field, f"must be a list, not {_kind(v)}")
    if length is not None and len(v) != length:
        fail(field, f"has {len(v)} entries, expected {length}")
    return v


def need_str(v: Any, field: str, choices: Sequence[str] | None = None) -> str:
    """``v`` if it is a string (one of ``choices`` when given)."""
    if not isinstance(v, str):
        fail(field, f"must be a string, not {_kind(v)}")
    if choices is not None and v not in choices:
        fail(field, f"is {v!r}, expected one of {', '.join(map(repr, choices))}")
    return v


def need_strs(v: Any, field: str, length: int | None = None, unique: bool = False) -> list[str]:
    """``v`` if it is a list of strings (distinct with ``unique``)."""
    items = need_list(v, field, length)
    for i, s in enumerate(items):
        need_str(s, f"{field}[{i}]")
    if unique and len(set(items)) != len(items):
        dup = next(s for i, s in enumerate(items) if s in items[:i])
        fail(field, f"lists {dup!r} twice")
    return list(items)


def need_bool(v: Any, field: str) -> bool:
    """``v`` if it is true or false."""
    if not isinstance(v, (bool, np.bool_)):
        fail(field, f"must be true or false, not {_kind(v)}")
    return bool(v)


def need_int(v: Any, field: str, lo: int | None = None) -> int:
    """``v`` if it is an integer (at least ``lo`` when given); true/false is not an integer."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        fail(field, f"must be an integer, not {_kind(v)}")
    if lo is not None and v < lo:
        fail(field, f"is {v}, must be at least {lo}")
    return int(v)


def need_number(v: Any, field: str, lo: float | None = None, hi: float | None = None,
                positive: bool = False) -> float:
    """``v`` if it is a finite number (in ``[lo, hi]``, or > 0 with ``positive``)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        fail(field, f"must be a number, not {_kind(v)}")
    if not math.isfinite(float(v)):
        fail(field, f"is {v}, must be a finite number")
    if positive and not v > 0:
        fail(field, f"is {v}, must be positive")
    if lo is not None and v < lo:
        fail(field, f"is {v}, must be at least {lo}")
    if hi is not None and v > hi:
        fail(field, f"is {v}, must be at most {hi}")
    return v


def need_array(v: Any, field: str, shape: Sequence[int | None], finite: bool = True,
               increasing_rows: bool = False) -> np.ndarray:
    """``v`` as a float64 array of ``shape`` (None: any length); finite, rows non-decreasing when asked."""
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        fail(field, "must be an array of numbers (every row the same length)")
    check_array(a, field, shape, finite, increasing_rows)
    return a


def check_array(a: np.ndarray, field: str, shape: Sequence[int | None], finite: bool = True,
                increasing_rows: bool = False) -> np.ndarray:
    """``a`` if it is a floating-point array of ``shape`` (None: any length), finite, rows non-decreasing."""
    if not np.issubdtype(a.dtype, np.floating):
        fail(field, f"has dtype {a.dtype}, expected floating point numbers")
    if a.ndim != len(shape) or any(s is not None and n != s for n, s in zip(a.shape, shape)):
        want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        fail(field, f"has shape {tuple(a.shape)}, expected {want}")
    if finite and not np.all(np.isfinite(a)):
        fail(field, "has NaN or infinite values")
    if increasing_rows and a.ndim == 2 and a.shape[1] > 1 and np.any(np.diff(a, axis=1) < 0):
        fail(field, "must be in increasing order along each row")
    return a


def inside(folder: Path, name: Any, field: str) -> Path:
    """``folder / name`` for a relative file name that stays inside ``folder``; FieldError otherwise."""
    name = need_str(name, field)
    if not name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or \
            PureWindowsPath(name).drive or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        fail(field, f"names {name!r}, outside the bundle folder")
    path = folder / name
    try:  # a symbolic link inside the folder may still lead out of it
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        fail(field, f"names {name!r}, which leads outside the bundle folder")
    return path

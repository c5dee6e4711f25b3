"""The one rule for every command that writes a folder, and file names made from slide ids.

A command writes into a folder that is new, empty, or already its own: it holds the
command's marker (``napari-lnm-output.json`` naming the command, or the command's
own marker file such as a model's ``bundle.json``), or only files the command writes.
Anything else is refused with a one-line :class:`UserError` before any work starts,
so a mistyped ``--out`` never replaces slides, features or a model.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from napari_lnm.errors import UserError

#: Written into a folder a command fills step by step, so a re-run knows the folder is its own.
MARKER = "napari-lnm-output.json"

_UNSAFE_IN_NAME = '/\\:*?"<>|'
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class OutputKind:
    """What a command writes into its output folder."""

    command: str  #: the subcommand, as recorded in the marker
    what: str  #: how messages name the output ("model bundle")
    markers: tuple[str, ...] = ()  #: files whose presence marks an earlier output of the command
    own: tuple[str, ...] = ()  #: name patterns of what the command writes; a folder holding only these is its own


MODEL = OutputKind("train", "model bundle", markers=("bundle.json",))
EVALUATION = OutputKind("evaluate", "evaluation", markers=(MARKER,),
                        own=("probabilities.csv", "roc.png", "summary.txt"))
SUBTYPE_MODEL = OutputKind("train-subtype", "subtype model", own=("config.json", "weights.npz"))
FEATURES = OutputKind("extract", "features folder", markers=(MARKER,), own=("*.parquet", "errors.csv"))
PREDICTION = OutputKind("predict", "prediction", markers=(MARKER, "result.json", "summary.csv"))
DEMO = OutputKind("demo", "demo output", markers=(MARKER, "cohort/demo_stamp.json"))
TILING = OutputKind("tile", "tile table", own=("tiles.parquet", "thumbnail.png"))
SYNTH = OutputKind("synth", "synthetic cohort", markers=(MARKER, "cohort.csv"))


def _ours(name: str) -> bool:
    """True for the temporary files and folders of an atomic write (``.<name>.<random>.part``)."""
    return name.startswith(".") and (name.endswith(".part") or name.endswith(".old"))


def _marker_command(folder: Path) -> str | None:
    """The command recorded in ``folder``'s marker, or None without a readable one."""
    try:
        return str(json.loads((folder / MARKER).read_text(encoding="utf-8")).get("command"))
    except (OSError, ValueError, AttributeError):
        return None


def check_out_dir(path: str | os.PathLike, kind: OutputKind, option: str = "--out") -> Path:
    """The absolute folder ``path`` if ``kind.command`` may write there; else UserError naming it and why."""
    out = Path(os.path.abspath(Path(path).expanduser()))
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{out}: cannot write here ({p} is a file, not a folder); choose another {option}")
            break
    if not out.exists():
        return out
    entries = [e for e in out.iterdir() if not _ours(e.name)]
    if not entries:
        return out
    recorded = _marker_command(out) if (out / MARKER).is_file() else None
    if recorded is not None and recorded != kind.command:
        raise UserError(f"{out}: holds the output of napari-lnm {recorded}, not a {kind.what}; "
                        f"choose a new or empty folder for {option}")
    if recorded == kind.command or any((out / m).is_file() for m in kind.markers if m != MARKER):
        return out
    if kind.own and all(e.is_file() and any(fnmatch.fnmatch(e.name, pat) for pat in kind.own) for e in entries):
        return out
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in entries)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise UserError(f"{out}: not written by napari-lnm {kind.command} (it holds {shown}); refusing to write the "
                    f"{kind.what} into it: choose a new or empty folder for {option}")


def mark_out_dir(path: str | os.PathLike, kind: OutputKind) -> Path:
    """Create ``path`` (checked by :func:`check_out_dir`) and record ``kind.command`` in its marker."""
    from napari_lnm._atomic import write_text_atomic

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if _marker_command(out) != kind.command:
        write_text_atomic(out / MARKER, marker_text(kind))
    return out


def marker_text(kind: OutputKind) -> str:
    """The marker's content for ``kind`` (for commands that write their folder atomically)."""
    from napari_lnm import __version__

    return json.dumps({"command": kind.command, "what": kind.what, "napari_lnm": __version__}) + "\n"


def check_file_name(name: str, what: str) -> str:
    """``name`` if it can be used as one file name inside a folder; else UserError naming it."""
    if (not name or name in (".", "..") or name.startswith(".") or any(c in name for c in _UNSAFE_IN_NAME)
            or any(ord(c) < 32 for c in name)):
        raise UserError(f"{what} {name!r} cannot be used as a file name (no /, \\, :, *, ?, \", <, >, |, "
                        "control characters or leading dot)")
    return name


def safe_name(slide_id: str) -> str:
    """A folder name for a slide id: the id itself when plain ASCII, else a sanitised form plus a hash of the id."""
    sid = str(slide_id)
    if _PLAIN_NAME.fullmatch(sid) and not sid.startswith(".") and sid != "..":
        return sid
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", sid).strip("._")[:80] or "slide"
    # the hash keeps ids that sanitise alike ("S 01" / "S_01", "Fall ä" / "Fall ö") apart
    return f"{stem}-{hashlib.sha256(sid.encode('utf-8')).hexdigest()[:8]}"


def unique_names(slide_ids: Iterable[str], source: str, name=safe_name) -> Mapping[str, str]:
    """{slide_id: name(slide_id)}; UserError naming both ids and ``source`` when two names collide.

    Names are compared case-folded: macOS and Windows file systems do not tell ``S01`` from ``s01``.
    """
    seen: dict[str, str] = {}
    out: dict[str, str] = {}
    for sid in slide_ids:
        sid = str(sid)
        n = name(sid)
        other = seen.get(n.casefold())
        if other is not None and other != sid:
            raise UserError(f"{source}: slide ids {other!r} and {sid!r} map to the same file name {n!r}; "
                            "rename one of them")
        seen[n.casefold()] = sid
        out[sid] = n
    return out

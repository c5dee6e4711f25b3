"""The ``napari-lnm`` command line: one sub-module per subcommand.

Each module in :data:`SUBCOMMANDS` defines ``add_parser(subparsers)`` which
registers its parser and sets ``func`` (a callable taking the parsed args and
returning an exit code).  Errors that are the user's (bad file, bad option)
are raised as :class:`napari_lnm.errors.UserError` subclasses and printed as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import warnings
from typing import Iterator, Sequence

from napari_lnm import __version__

SUBCOMMANDS = ["tile", "extract", "synth", "train", "evaluate", "predict", "train_subtype", "demo", "features_doc"]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="napari-lnm",
        description="Lymph-node metastasis prediction from H&E slides (headless commands).",
    )
    parser.add_argument("--version", action="version", version=f"napari-lnm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"napari_lnm.cli.{name}").add_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: stop at the next tile, keep finished outputs."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """User-facing warnings as one ``warning: ...`` line (no source location)."""
    if issubclass(category, UserWarning):
        return f"napari-lnm: warning: {message}\n"
    return _FORMAT_WARNING(message, category, filename, lineno, line)


_FORMAT_WARNING = warnings.formatwarning


@contextlib.contextmanager
def _cli_signals() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` and warnings print as one line, while a command runs."""
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    warnings.formatwarning = _one_line_warning  # the format only: recorders (pytest.warns) still see them
    try:
        yield
    finally:
        warnings.formatwarning = _FORMAT_WARNING
        if main_thread:
            signal.signal(signal.SIGTERM, old)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-lnm`` command."""
    from napari_lnm.errors import UserError
    from napari_lnm.progress import Cancelled

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _cli_signals():
            return int(args.func(args) or 0)
    except Terminated:
        print(f"napari-lnm {args.command}: terminated; finished outputs were kept", file=sys.stderr)
        return 143
    except UserError as exc:
        print(f"napari-lnm {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. --out under an existing file, disk full, permission denied
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"napari-lnm {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Cancelled):
        print(f"napari-lnm {args.command}: cancelled; finished outputs were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

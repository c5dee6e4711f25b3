"""``napari-lnm features-doc``: write the table of every per-tile feature (generated from the code)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "write the Markdown table of every per-tile feature (name, group, unit, definition)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``features-doc`` subcommand."""
    p = subparsers.add_parser(
        "features-doc", help=HELP, description=HELP[0].upper() + HELP[1:] + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("docs/features.md"),
                   help="output Markdown file ('-' prints to standard output)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Generate the table from ``napari_lnm.features.feature_catalog()`` and write it atomically."""
    from napari_lnm._atomic import write_text_atomic
    from napari_lnm.errors import UserError
    from napari_lnm.features import feature_catalog
    from napari_lnm.features.catalog import catalog_markdown

    text = catalog_markdown(feature_catalog())
    if str(args.out) == "-":
        sys.stdout.write(text)
        return 0
    try:
        write_text_atomic(args.out, text)
    except OSError as exc:
        raise UserError(f"{args.out}: cannot write the feature table ({exc.strerror or exc})") from None
    print(f"wrote {len(feature_catalog())} features to {args.out}")
    return 0

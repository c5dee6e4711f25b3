"""``napari-lnm synth``: write a synthetic H&E cohort (pyramidal TIFF slides + cohort.csv)."""

from __future__ import annotations

import argparse

from napari_lnm.errors import UserError


def parse_size(text: str) -> tuple[int, int]:
    """Parse 'WxH' (px) into (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must look like 2048x2048 (width x height in px), got {text!r}") from None
    return h, w


def add_parser(subparsers) -> None:
    """Register the ``synth`` subcommand."""
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic H&E cohort for tests and demos",
        description="Write OUT_DIR/slides/<slide_id>.tif (pyramidal TIFF, 0.5 µm/px, 20x) and OUT_DIR/cohort.csv "
        "(slide_id,path,label,subtype,patient_id); nuclei depend on the label and the CMS subtype.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--n-slides", type=int, default=20, help="number of slides (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", default="2048x2048", help="slide size WxH in px at 0.5 µm/px (default 2048x2048)")
    p.add_argument("--positive-fraction", type=float, default=0.5, help="fraction of label-1 slides (default 0.5)")
    p.add_argument("--slides-per-patient", type=int, default=1,
                   help="consecutive slides sharing a patient_id, label and subtype (default 1)")
    p.add_argument("--signal", choices=("nuclei", "immune"), default="nuclei",
                   help="what the label acts on: tumour nuclei (size, pleomorphism, crowding, texture; default) or "
                        "only the lymphocytic infiltration of tumour epithelium (dense when label 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the cohort with a progress reporter; print the CSV path."""
    from napari_lnm.outdir import SYNTH, check_out_dir, mark_out_dir
    from napari_lnm.progress import ProgressReporter
    from napari_lnm.synth import make_cohort

    size = parse_size(args.size)
    mark_out_dir(check_out_dir(args.out_dir, SYNTH, option="OUT_DIR"), SYNTH)
    with ProgressReporter("synth", unit="slide") as progress:
        csv = make_cohort(args.out_dir, args.n_slides, seed=args.seed, size=size,
                          positive_fraction=args.positive_fraction,
                          slides_per_patient=args.slides_per_patient, progress=progress, signal=args.signal)
    print(csv)
    return 0

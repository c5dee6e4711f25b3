"""``napari-lnm extract``: per-tile features of one slide or a cohort, one Parquet file per slide."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_lnm.config import DEEP_ARCHITECTURES, SEGMENTATIONS
from napari_lnm.errors import UserError


def add_parser(subparsers) -> None:
    """Register the ``extract`` subcommand."""
    p = subparsers.add_parser(
        "extract",
        help="extract tile features of a slide or a cohort to Parquet",
        description="Tile each slide at the working magnification, compute every tile's features and write "
        "OUT/<slide_id>.parquet (slide_id, x, y, size, tissue_fraction + features). Slides already done with "
        "the same settings are skipped, so an interrupted run can simply be restarted.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("slide", nargs="?", metavar="SLIDE", help="one slide file")
    src.add_argument("--cohort", metavar="CSV", help="cohort CSV: slide_id,path,label[,subtype][,patient_id]")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder for the Parquet files: new, empty or an earlier features folder")
    p.add_argument("--magnification", type=float, default=20.0, help="working magnification (5, 10, 20, 40; default 20)")
    p.add_argument("--tile-size", type=int, default=512, help="tile side in px at the working magnification (default 512)")
    p.add_argument("--max-tiles", type=int, default=None, help="draw at most N tiles per slide at random (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random tile draw (default 0)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a tile (default 0.5)")
    p.add_argument("--overlap", type=float, default=0.0, help="tile overlap fraction (default 0)")
    p.add_argument("--segmentation", choices=SEGMENTATIONS, default="threshold",
                   help="nucleus segmenter: 'threshold' (default, fast), 'model' (the shipped pixel classifier: "
                        "more accurate, ~3x slower segmentation), 'cnn' (the shipped U-Net, needs PyTorch, ~7x "
                        "slower) or 'typed' (the typed colorectal network, needs PyTorch: its nucleus types feed "
                        "the cells.* features); a trained bundle remembers it and predict segments the same way")
    p.add_argument("--deep-features", metavar="ARCH:WEIGHTS", default=None,
                   help="also the deep.* features: the global-average-pooled embedding of each tile by the CNN "
                        f"ARCH ({', '.join(DEEP_ARCHITECTURES)}) with the weights WEIGHTS (a PyTorch state_dict "
                        ".pt/.pth with torchvision's parameter names, or .npz), e.g. resnet18:resnet18.pth")
    p.add_argument("--mpp", type=float, default=None, help="µm/px of the slide(s) when the metadata lacks it")
    p.add_argument("--force-mpp", action="store_true",
                   help="use --mpp even where the slide's metadata has a µm/px (default: the metadata wins)")
    p.add_argument("--roi", metavar="GEOJSON", default=None, help="ROI polygons (QuPath GeoJSON), single slide only")
    p.add_argument("--slide-id", default=None, help="slide id of a single slide (default: file name stem)")
    run_on = p.add_mutually_exclusive_group()
    run_on.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    run_on.add_argument("--scheduler", metavar="ADDR", default=None, help="dask.distributed scheduler, e.g. tcp://host:8786")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the extraction with a progress reporter (tiles for one slide, slides for a cohort)."""
    import pandas as pd

    from napari_lnm.extract import extract_cohort, extract_slide, is_done, read_cohort
    from napari_lnm.outdir import FEATURES, check_file_name, check_out_dir, mark_out_dir, unique_names
    from napari_lnm.progress import ProgressReporter
    from napari_lnm.config import DeepFeatures
    from napari_lnm.tiling import TilingConfig

    from napari_lnm.io import mpp_option

    mpp = mpp_option(args.mpp, args.force_mpp)
    config = TilingConfig(magnification=args.magnification, tile_size=args.tile_size, overlap=args.overlap,
                          min_tissue=args.min_tissue, max_tiles=args.max_tiles, seed=args.seed,
                          segmentation=args.segmentation,
                          deep=DeepFeatures.parse(args.deep_features) if args.deep_features else None)
    if config.deep is not None:
        from napari_lnm.features.deep import network

        network(config.deep)  # a wrong or unreadable weights file fails here, before any slide
    out = check_out_dir(args.out, FEATURES)
    if args.cohort:
        if args.roi or args.slide_id:
            raise UserError("--roi and --slide-id are for a single slide; give ROIs in the cohort's 'roi' column")
        cohort = read_cohort(args.cohort)
        unique_names(cohort["slide_id"], args.cohort, name=str)  # S01 and s01: one file on macOS and Windows
        unit, desc = "slide", "extract"
    else:
        slide = Path(args.slide)
        if not slide.is_file():
            raise UserError(f"{slide}: slide file not found")
        if _is_csv(slide):
            raise UserError(f"{slide}: this is a CSV, not a slide; use --cohort {slide} to extract a cohort")
        sid = check_file_name(args.slide_id, "--slide-id") if args.slide_id else slide.stem
        cohort = pd.DataFrame({"slide_id": [sid], "path": [str(slide.resolve())]})
        if args.roi:
            cohort["roi"] = [str(Path(args.roi).resolve())]
        unit, desc = ("tile" if args.workers == 1 and args.scheduler is None else "slide"), sid
    mark_out_dir(out, FEATURES)
    with ProgressReporter(desc, unit=unit, log_units=unit == "slide") as progress:
        single_inline = not args.cohort and args.workers == 1 and args.scheduler is None
        if single_inline:
            target = out / f"{cohort.slide_id[0]}.parquet"
            roi = cohort["roi"][0] if "roi" in cohort else None
            if is_done(target, config, mpp, roi):
                print(f"{target}: already done with these settings")
                return 0
            df = extract_slide(cohort.path[0], target, config, mpp=mpp, slide_id=cohort.slide_id[0],
                               rois=roi, progress=progress)
            progress.close()
            print(f"{target}: {len(df)} tiles x {df.shape[1] - 5} features")
            return 0
        paths = extract_cohort(cohort, out, config, workers=args.workers, scheduler=args.scheduler,
                               progress=progress, mpp=mpp)
    print(f"{len(paths)} slides in {out}")
    return 0


def _is_csv(path: Path) -> bool:
    """True for a cohort CSV given where a slide belongs (by its extension or its slide_id header)."""
    if path.suffix.lower() in (".csv", ".tsv"):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(9).lstrip(b"\xef\xbb\xbf").startswith(b"slide_id")
    except OSError:
        return False

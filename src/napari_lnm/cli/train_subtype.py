"""``napari-lnm train-subtype`` (train the CMS subtype CNN) and ``napari-lnm predict-subtype`` (one slide)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train-subtype`` and ``predict-subtype``."""
    p = subparsers.add_parser(
        "train-subtype",
        help="train the CNN that predicts a tile's molecular subtype (CMS1-CMS4)",
        description="Train the subtype tile classifier. Tiles inherit their slide's 'subtype' from the cohort CSV; "
                    "validation is split by slide and reported as tile- and slide-level (majority vote) accuracy "
                    "with a confusion matrix.",
    )
    p.add_argument("source", nargs="?", default=None, metavar="FEATURES_DIR_OR_TILES",
                   help="folder of <slide_id>.parquet feature tables (their x, y give the tiles) or "
                        "<slide_id>.npy tile stacks; omit to tile the cohort's slides")
    p.add_argument("--cohort", required=True, help="cohort CSV with slide_id, path, subtype")
    p.add_argument("--out", required=True, help="output model folder (config.json + weights.npz)")
    p.add_argument("--arch", default="small", choices=["small", "resnet18", "resnet50", "inception_v3"])
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="initial weights: a local PyTorch state_dict (.pt/.pth) or .npz (ImageNet or pathology)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-tiles-per-slide", type=int, default=64, metavar="N")
    p.add_argument("--val-fraction", type=float, default=0.25, help="fraction of slides held out (per subtype)")
    p.add_argument("--input-size", type=int, default=None, help="network input px (default: per architecture)")
    p.add_argument("--magnification", type=float, default=None,
                   help="working magnification of the tiles (x); default: as extracted, else 20")
    p.add_argument("--tile-size", type=int, default=None,
                   help="tile side px at the working magnification; default: as extracted, else 512")
    p.add_argument("--min-tissue", type=float, default=0.5, help="tissue fraction a tile needs (when tiling slides)")
    p.add_argument("--cache", default=None, metavar="DIR", help="save tiles read from slides as DIR/<slide_id>.npy")
    p.add_argument("--no-augment", action="store_true", help="switch off flip/rotation/stain augmentation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)

    q = subparsers.add_parser(
        "predict-subtype",
        help="predict one slide's molecular subtype by majority vote of its tiles",
        description="Tile the slide at the model's magnification, classify every tile and vote.",
    )
    q.add_argument("slide", help="slide file")
    q.add_argument("--model", required=True, help="subtype model folder written by train-subtype")
    q.add_argument("--mpp", type=float, default=None, help="µm/px of the slide when its metadata lacks it")
    q.add_argument("--force-mpp", action="store_true",
                   help="use --mpp even where the slide's metadata has a µm/px (default: the metadata wins)")
    q.add_argument("--max-tiles", type=int, default=None, help="draw at most N tiles at random (seeded)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    q.add_argument("--tiles-csv", default=None, metavar="FILE",
                   help="also write every tile (x, y, size level-0 px) with its subtype and probabilities")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=run_predict)


def _epoch_progress(bar, epochs: int):
    """Forward train_subtype's progress: every step to a terminal bar, one log line per slide and per epoch."""

    def progress(done: int, total: int, message: str) -> None:
        if bar.tty or total <= 0 or not message.startswith("subtype: epoch"):
            bar(done, total, message)
        else:
            bar(done * epochs // total, epochs, message)

    return progress


def _check_slide_ids(cohort_csv: str) -> None:
    """UserError naming the CSV when a slide id cannot name a tile-stack file or two ids name the same file."""
    import pandas as pd

    from napari_lnm.errors import CohortError, UserError
    from napari_lnm.outdir import check_file_name, unique_names

    try:
        df = pd.read_csv(cohort_csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError, pd.errors.ParserError):
        return  # train_subtype reports an unreadable cohort naming the file
    df.columns = [str(c).strip() for c in df.columns]
    if "slide_id" not in df.columns:
        return  # train_subtype names the missing column
    ids = [s.strip() for s in df["slide_id"] if s.strip()]
    try:
        for sid in ids:
            check_file_name(sid, "slide_id")
    except UserError as exc:
        raise CohortError(f"{cohort_csv}: {exc}") from None
    unique_names(ids, cohort_csv, name=lambda sid: sid)  # <slide_id>.npy / .parquet: case-insensitive disks


def run_train(args: argparse.Namespace) -> int:
    """Train, save the bundle and print the validation report."""
    from napari_lnm.errors import UserError
    from napari_lnm.outdir import SUBTYPE_MODEL, check_out_dir
    from napari_lnm.progress import ProgressReporter
    from napari_lnm.subtype import train_subtype

    out = check_out_dir(args.out, SUBTYPE_MODEL)
    _check_slide_ids(args.cohort)  # the ids name the --cache and source files

    tiling_config = None
    if args.magnification is not None or args.tile_size is not None or args.source is None:
        from napari_lnm.tiling import TilingConfig

        tiling_config = TilingConfig(magnification=args.magnification or 20.0, tile_size=args.tile_size or 512,
                                     min_tissue=args.min_tissue, seed=args.seed)
    if args.source is not None and not Path(args.source).is_dir():
        raise UserError(f"{args.source}: not a folder of feature tables or tile stacks")
    bar = ProgressReporter("train-subtype", unit="step", disable=args.quiet)
    try:
        res = train_subtype(args.source, args.cohort, out, arch=args.arch, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed, val_fraction=args.val_fraction,
                            max_tiles_per_slide=args.max_tiles_per_slide, input_size=args.input_size,
                            weights=args.weights, tiling_config=tiling_config, cache_dir=args.cache,
                            augment=not args.no_augment, progress=_epoch_progress(bar, args.epochs))
    finally:
        bar.close()
    print(res.format_report())
    print(f"initial weights: {res.model.config.get('initial_weights')}")
    print(f"model written to {out}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Predict one slide's subtype and print the H counts per subtype."""
    from napari_lnm import io, tiling
    from napari_lnm._atomic import write_text_atomic
    from napari_lnm.progress import ProgressReporter
    from napari_lnm.subtype import SubtypeModel, predict_slide_subtype

    model = SubtypeModel.load(args.model)
    cfg = tiling.TilingConfig(magnification=float(model.config["magnification"]),
                              tile_size=int(model.config["tile_size"]), max_tiles=args.max_tiles, seed=args.seed)
    bar = ProgressReporter(Path(args.slide).stem, unit="tile", disable=args.quiet, log_units=False)
    try:
        with io.open_slide(args.slide, mpp=io.mpp_option(args.mpp, args.force_mpp)) as slide:
            tiles = tiling.tile_slide(slide, config=cfg)
            v = predict_slide_subtype(slide, model, tiles, cfg, progress=bar)
    finally:
        bar.close()
    print(f"{args.slide}: subtype {v.subtype} ({v.n_tiles} tiles)")
    for c in v.classes:
        print(f"  {c}: {v.counts[c]:5d} tiles, mean probability {v.mean_probs[c]:.3f}")
    if args.json:
        write_text_atomic(args.json, json.dumps(dict(v.to_dict(), slide=str(args.slide)), indent=2))
    if args.tiles_csv:
        table = tiles[["x", "y", "size"]].reset_index(drop=True).copy()
        table["subtype"] = v.tile_subtypes()
        for i, c in enumerate(v.classes):
            table[f"p_{c}"] = v.probs[:, i]
        write_text_atomic(args.tiles_csv, table.to_csv(index=False, float_format="%.5f"))
    return 0

"""``napari-lnm tile``: tile a slide inside ROI ∩ tissue and write tiles.parquet + thumbnail.png."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HELP = "tile a slide inside ROI ∩ tissue at a magnification; write tiles.parquet and thumbnail.png"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``tile`` subcommand."""
    p = subparsers.add_parser(
        "tile", help=HELP, description=HELP[0].upper() + HELP[1:] + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("slide", help="slide or photo (SVS, NDPI, MRXS, SCN, TIFF/OME-TIFF, PNG, JPEG)")
    p.add_argument("--roi", type=Path, default=None, help="QuPath GeoJSON with ROI polygons (level-0 px)")
    p.add_argument("--magnification", type=float, default=20.0, help="working magnification: 5, 10, 20 or 40")
    p.add_argument("--tile-size", type=int, default=512, help="tile side in px: 224, 256, 299, 512 or 1024")
    p.add_argument("--overlap", type=float, default=0.0, help="overlap between tiles, fraction in [0, 1)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a kept tile")
    p.add_argument("--max-tiles", type=int, default=None, help="draw at most N tiles at random (all tiles when omitted)")
    p.add_argument("--seed", type=int, default=0, help="random seed for --max-tiles")
    p.add_argument("--mpp", type=float, default=None,
                   help="µm/px at level 0 when the metadata lacks it (required for photos without it)")
    p.add_argument("--force-mpp", action="store_true",
                   help="use --mpp even where the slide's metadata has a µm/px (default: the metadata wins)")
    p.add_argument("--no-tissue", action="store_true", help="skip tissue detection (whole slide / ROI is tissue)")
    p.add_argument("--thumbnail-size", type=int, default=1024, help="longest side of thumbnail.png in px")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=run)
    return p


def draw_tiles(rgb: np.ndarray, downsample: float, tiles, rois=None, tissue=None) -> np.ndarray:
    """Thumbnail RGB with the tissue outline (green), ROIs (blue, holes red) and tile squares (yellow) drawn on it."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    if tissue is not None and tissue.mask.any():
        from napari_lnm.tissue import mask_to_polygons

        for poly in mask_to_polygons(tissue.mask, tissue.downsample):
            pts = [tuple(p) for p in (poly / downsample).tolist()]
            draw.line(pts + [pts[0]], fill=(0, 170, 0), width=1)
    from napari_lnm.tissue import load_rois, roi_rings

    geom = load_rois(rois)
    for ext, holes in roi_rings(geom) if geom is not None else []:
        for ring, colour in [(ext, (0, 60, 255))] + [(h, (230, 0, 0)) for h in holes]:
            pts = [tuple(p) for p in (np.asarray(ring) / downsample).tolist()]
            draw.line(pts + [pts[0]], fill=colour, width=3)
    for x, y, s in zip(tiles["x"], tiles["y"], tiles["size"]):
        x0, y0 = x / downsample, y / downsample
        draw.rectangle([x0, y0, x0 + s / downsample, y0 + s / downsample], outline=(255, 200, 0), width=2)
    return np.asarray(img)


def run(args) -> int:
    """Tile ``args.slide`` and write ``tiles.parquet`` and ``thumbnail.png`` into ``args.out`` (atomic)."""
    from PIL import Image

    from napari_lnm._atomic import atomic_path
    from napari_lnm.errors import UserError
    from napari_lnm.io import mpp_option, open_slide
    from napari_lnm.outdir import TILING, check_out_dir
    from napari_lnm.tissue import check_rois_inside, load_rois, tissue_mask
    from napari_lnm.tiling import TilingConfig, tile_slide, tile_size_level0

    config = TilingConfig(magnification=args.magnification, tile_size=args.tile_size, overlap=args.overlap,
                          min_tissue=args.min_tissue, max_tiles=args.max_tiles, seed=args.seed)
    if args.thumbnail_size < 1:
        raise UserError(f"--thumbnail-size must be at least 1 px, got {args.thumbnail_size}")
    check_out_dir(args.out, TILING)
    rois = load_rois(args.roi, args.slide) if args.roi is not None else None  # holes excluded
    with open_slide(args.slide, mpp=mpp_option(args.mpp, args.force_mpp)) as slide:
        check_rois_inside(rois, slide, args.roi)  # names the ROI file, before the tissue mask
        tm = None if args.no_tissue else tissue_mask(slide)
        tiles = tile_slide(slide, rois=rois, config=config, tissue=tm if tm is not None else False)
        thumb, ds = slide.thumbnail(args.thumbnail_size)
        size0 = tile_size_level0(slide, config)
        w, h = slide.dimensions
        slide_mpp = slide.mpp
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        tiles.attrs["slide"] = str(args.slide)
        with atomic_path(args.out / "tiles.parquet") as tmp:
            tiles.to_parquet(tmp, index=False)
        with atomic_path(args.out / "thumbnail.png") as tmp:
            Image.fromarray(draw_tiles(thumb, ds, tiles, rois, tm)).save(tmp, format="PNG")
    except OSError as exc:
        raise UserError(f"{args.out}: cannot write outputs ({' '.join(str(exc).split())})") from None
    n_holes = sum(len(p.interiors) for p in rois.geoms) if rois else 0
    roi_txt = (f", {len(rois.geoms)} ROI polygon(s)" + (f" with {n_holes} hole(s)" if n_holes else "")) if rois else ""
    print(f"{Path(args.slide).name}: {len(tiles)} tiles of {config.tile_size} px at {config.magnification:g}x "
          f"({config.mpp:g} µm/px; {size0} level-0 px at {slide_mpp:.4g} µm/px) from a {w}x{h} px slide"
          f"{roi_txt} -> {args.out / 'tiles.parquet'}")
    if config.mpp < slide_mpp * 0.95:
        print(f"note: {config.magnification:g}x ({config.mpp:g} µm/px) is finer than the slide's "
              f"{slide_mpp:.4g} µm/px; tiles are upsampled, which adds no detail")
    if len(tiles) == 0 and size0 > min(w, h):
        print(f"note: no tiles: one tile is {size0} level-0 px, larger than the {w}x{h} px slide; "
              f"lower --tile-size or --magnification")
    elif len(tiles) == 0:
        print(f"note: no tile has at least {config.min_tissue:g} tissue; lower --min-tissue, check the ROI, "
              f"or use --no-tissue")
    return 0

"""Benchmark slide opening, tissue mask and tile grid (issue 2); prints a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/bench_io.py [--size 40000] [--repeat 5]

The large slide is a generated size x size px, 0.25 µm/px (40x) pyramidal TIFF
(512 px JPEG tiles, SubIFD pyramid at 1/4, 1/16, 1/64) made from pre-compressed
tiles of the real CMU-1 crop inside an ellipse of tissue on white glass; it is
cached in /tmp.  Peak memory while opening is measured with tracemalloc (Python
and numpy allocations) and as the RSS growth read from /proc/self/status.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

from napari_lnm._reader import read_slide
from napari_lnm._sample_data import sample_path
from napari_lnm.io import open_slide
from napari_lnm.tiling import TilingConfig, read_tile, tile_slide
from napari_lnm.tissue import tissue_mask

TILE = 512


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_big_tiff(path: Path, width: int, height: int, radius: tuple[float, float] = (0.40, 0.30)) -> Path:
    """Write (once) a width x height px pyramidal JPEG TIFF from two pre-encoded tiles (tissue / glass).

    Tissue tiles fill an ellipse with semi-axes ``radius`` (fractions of width, height).
    """
    if path.exists():
        return path
    import imagecodecs
    import tifffile

    with open_slide(sample_path()) as s:
        tissue_rgb = s.read_level(0, 700, 1500, TILE, TILE)
    glass = np.full((TILE, TILE, 3), 243, np.uint8)
    enc = {k: imagecodecs.jpeg_encode(v, level=85) for k, v in {"t": tissue_rgb, "g": glass}.items()}

    def tiles(w: int, h: int):
        ntx, nty = -(-w // TILE), -(-h // TILE)
        cx, cy = (ntx - 1) / 2, (nty - 1) / 2
        for r in range(nty):
            for q in range(ntx):
                inside = ((q - cx) / (radius[0] * ntx)) ** 2 + ((r - cy) / (radius[1] * nty)) ** 2 < 1
                yield enc["t" if inside else "g"]

    sizes = [(width // f, height // f) for f in (1, 4, 16, 64)]
    tmp = path.with_suffix(".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        w, h = sizes[0]
        tw.write(tiles(w, h), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
                 photometric="rgb", subifds=len(sizes) - 1,
                 resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
        for w, h in sizes[1:]:
            tw.write(tiles(w, h), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
                     photometric="rgb", subfiletype=1)
    tmp.rename(path)
    return path


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median wall time in s over ``repeat`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def open_memory(path: Path) -> tuple[float, float]:
    """(tracemalloc peak MiB, RSS growth MiB) while opening ``path`` through the reader (pyramid built)."""
    rss0 = rss_mib()
    tracemalloc.start()
    layers = read_slide(str(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    grow = rss_mib() - rss0
    del layers
    return peak / 2**20, grow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=40000, help="side of the square test slide in px")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/napari_lnm_bench"))
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    big = args.cache / f"pyramid_{args.size}.tif"
    t0 = time.perf_counter()
    existed = big.exists()
    make_big_tiff(big, args.size, args.size)
    huge = make_big_tiff(args.cache / "pyramid_100000x80000.tif", 100_000, 80_000, radius=(0.05, 0.05))
    gen_s = time.perf_counter() - t0

    rows = []
    svs = sample_path()
    # warm imports / OS cache once
    read_slide(str(svs))
    read_slide(str(big))
    read_slide(str(huge))
    peak_svs, rss_svs = open_memory(svs)
    peak_big, rss_big = open_memory(big)
    peak_huge, rss_huge = open_memory(huge)
    t_read_huge, _ = timed(lambda: read_slide(str(huge)), args.repeat)
    t_open_svs, _ = timed(lambda: open_slide(svs).close(), args.repeat)
    t_read_svs, _ = timed(lambda: read_slide(str(svs)), args.repeat)
    t_open_big, _ = timed(lambda: open_slide(big).close(), args.repeat)
    t_read_big, layers = timed(lambda: read_slide(str(big)), args.repeat)
    rows.append(("cmu_small_region.svs (2220x2967, 1 level)", "open_slide", f"{t_open_svs * 1e3:.1f} ms"))
    rows.append(("", "reader (layer data, dask pyramid)", f"{t_read_svs * 1e3:.1f} ms"))
    rows.append(("", "peak memory while opening (tracemalloc / RSS growth)", f"{peak_svs:.2f} / {rss_svs:.1f} MiB"))
    data = layers[0][0]
    big_label = f"generated {args.size}x{args.size} JPEG TIFF ({len(data)} levels, 0.25 µm/px)"
    rows.append((big_label, "open_slide", f"{t_open_big * 1e3:.1f} ms"))
    rows.append(("", "reader (layer data, dask pyramid)", f"{t_read_big * 1e3:.1f} ms"))
    rows.append(("", "peak memory while opening (tracemalloc / RSS growth)", f"{peak_big:.2f} / {rss_big:.1f} MiB"))
    with open_slide(big) as s:
        t_mask, tm = timed(lambda: tissue_mask(s), args.repeat)
        rows.append(("", f"tissue mask at 8 µm/px ({tm.mask.shape[1]}x{tm.mask.shape[0]} px, "
                         f"{tm.fraction:.0%} tissue)", f"{t_mask * 1e3:.0f} ms"))
        cfg = TilingConfig()
        t_grid, df = timed(lambda: tile_slide(s, config=cfg, tissue=tm), args.repeat)
        rows.append(("", f"tile grid 20x/512 px from the mask ({len(df)} tiles)", f"{t_grid * 1e3:.1f} ms"))
        t_all, df2 = timed(lambda: tile_slide(s, config=cfg), max(1, args.repeat // 2))
        rows.append(("", "tissue mask + tile grid (tile_slide)", f"{t_all * 1e3:.0f} ms"))
        cfg224 = TilingConfig(magnification=40, tile_size=224, min_tissue=0.5)
        t_grid2, df3 = timed(lambda: tile_slide(s, config=cfg224, tissue=tm), args.repeat)
        rows.append(("", f"tile grid 40x/224 px from the mask ({len(df3)} tiles)", f"{t_grid2 * 1e3:.1f} ms"))
        rng = np.random.default_rng(0)
        pick = rng.choice(len(df), size=min(20, len(df)), replace=False)
        t_tile, _ = timed(lambda: [read_tile(s, int(df.x[i]), int(df.y[i]), cfg) for i in pick], 1)
        rows.append(("", "read_tile 20x/512 px (from level 0 at 0.25 µm/px, 2x down)",
                     f"{t_tile / len(pick) * 1e3:.1f} ms/tile"))
    with open_slide(svs) as s:
        dfs = tile_slide(s)
        t_svs_tile, _ = timed(lambda: [read_tile(s, int(x), int(y), TilingConfig()) for x, y in zip(dfs.x, dfs.y)], 1)
        rows.append(("cmu_small_region.svs", f"read_tile 20x/512 px ({len(dfs)} tiles)",
                     f"{t_svs_tile / max(1, len(dfs)) * 1e3:.1f} ms/tile"))
    rows.append(("generated 100000x80000 JPEG TIFF (4 levels)", "reader (layer data, dask pyramid)",
                 f"{t_read_huge * 1e3:.1f} ms"))
    rows.append(("", "peak memory while opening (tracemalloc / RSS growth)", f"{peak_huge:.2f} / {rss_huge:.1f} MiB"))
    print(f"Machine: {platform.machine()} {platform.python_version()}, "
          f"{'cached' if existed else f'generated in {gen_s:.1f} s'}: {big}; median of {args.repeat} runs\n")
    print("| slide | step | result |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()

"""Speed of the default nucleus segmentation (LMC, threshold foreground) on one core, per stage, and
optionally against an older implementation of ``napari_lnm/nuclei.py`` on the same tiles in the same run.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_segment_speed.py [--repeats N] [--reference OLD.py]
[--tune-malloc]``, where ``OLD.py`` is e.g. ``git show <rev>:src/napari_lnm/nuclei.py > /tmp/nuclei_old.py``;
``--tune-malloc`` first applies the worker processes' glibc malloc settings (``extract._tune_malloc``:
without them every call re-faults its multi-MB temporaries, ~1600 page faults ≈ 3 ms per dense tile).
Tiles: the four 512x512 tiles of the bundled 20x SVS (0.499 µm/px) that ``bench_features.py`` times;
``segment`` = ``segment_nuclei(rgb, mpp, h=h)`` as there (H given). Times are CPU ms of this process,
median (min) over the repeats after one warm-up; reference and current runs alternate, so both see the
same machine load. With ``--reference`` it also checks that both give identical labels on these tiles
and, when ``../shared/data/nuclei-dev`` exists, on its 36 tiles at 40x and at 20x (2x downsampled).
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from napari_lnm.filters import gauss  # noqa: E402
from napari_lnm import nuclei as N  # noqa: E402
from napari_lnm.stain import haematoxylin  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_features import NUCLEI_DEV, TILE_XY, read_tiles  # noqa: E402

MPP = 0.499


def load_reference(path: Path):
    """Import an older copy of nuclei.py as a module of the napari_lnm package."""
    spec = importlib.util.spec_from_file_location("napari_lnm._nuclei_reference", path)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "napari_lnm"
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def interleaved(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (median CPU ms, min CPU ms)}; the functions run in turn, one warm-up each."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.process_time()
            f()
            times[k].append(time.process_time() - t0)
    return {k: (float(np.median(v) * 1e3), float(np.min(v) * 1e3)) for k, v in times.items()}


def stage_functions(mod, rgb: np.ndarray, mpp: float) -> dict:
    """The stages of the default LMC segmentation of one tile, each a closure on its inputs."""
    cfg = mod.NucleiConfig()
    h = haematoxylin(rgb)
    s0 = cfg.smooth_sigma_um / mpp
    hs = gauss(h, s0)
    fg = mod._foreground(hs, mpp, cfg)
    resp = mod._blob_response(hs, fg, mpp, cfg, s0)
    lab = mod._max_clustering(resp, fg, cfg.seed_radius_um / mpp)
    px = mpp * mpp
    lo, hi = int(np.ceil(cfg.min_area_um2 / px)), int(cfg.max_area_um2 / px)
    return {
        "smooth H": lambda: gauss(h, s0),
        "foreground": lambda: mod._foreground(hs, mpp, cfg),
        "blob response": lambda: mod._blob_response(hs, fg, mpp, cfg, s0),
        "max clustering": lambda: mod._max_clustering(resp, fg, cfg.seed_radius_um / mpp),
        "relabel": lambda: mod.relabel_consecutive(lab, lo, hi),
        "segment": lambda: mod.segment_nuclei(rgb, mpp, h=h),
    }, fg


def cell(t: tuple[float, float]) -> str:
    """'median (min)' in ms."""
    return f"{t[0]:.1f} ({t[1]:.1f})"


def identity_check(ref) -> tuple[int, int]:
    """(tiles with identical labels, tiles checked): SVS tiles, and nuclei-dev at 40x and 20x if present."""
    cases = [(rgb, MPP) for rgb in read_tiles()]
    if NUCLEI_DEV.is_dir():
        from skimage import io
        from skimage.transform import rescale

        for f in sorted(NUCLEI_DEV.glob("*.png")):
            if f.name.endswith(".labels.png"):
                continue
            rgb = io.imread(f)[..., :3]
            cases.append((rgb, 0.25))
            small = rescale(rgb, 0.5, channel_axis=2, anti_aliasing=True, preserve_range=True)
            cases.append((small.astype(np.uint8), 0.5))
    same = sum(np.array_equal(ref.segment_nuclei(rgb, mpp), N.segment_nuclei(rgb, mpp)) for rgb, mpp in cases)
    return int(same), len(cases)


def main(argv=None) -> int:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--reference", type=Path, default=None, help="an older nuclei.py to compare against")
    ap.add_argument("--tune-malloc", action="store_true", help="apply extract._tune_malloc first")
    args = ap.parse_args(argv)
    if args.tune_malloc:
        from napari_lnm.extract import _tune_malloc

        _tune_malloc()
    ref = load_reference(args.reference) if args.reference else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f}; malloc: {'tuned' if args.tune_malloc else 'glibc defaults'}\n")
    rows, stage_rows = [], []
    for xy, rgb in zip(TILE_XY, read_tiles()):
        cur, fg = stage_functions(N, rgb, MPP)
        fns = {"cur": cur["segment"]}
        if ref is not None:
            fns["ref"] = stage_functions(ref, rgb, MPP)[0]["segment"]
        seg = interleaved(fns, args.repeats)
        n = int(N.segment_nuclei(rgb, MPP).max())
        stages = interleaved({k: f for k, f in cur.items() if k != "segment"}, args.repeats)
        rows.append((xy, n, float(fg.mean()), seg))
        stage_rows.append((xy, stages))
    if ref is not None:
        print("| tile (x, y) | nuclei | mask | segment, reference | segment, current | speed-up |")
        print("|---|---|---|---|---|---|")
        for xy, n, frac, seg in rows:
            print(f"| {xy} | {n} | {100 * frac:.0f} % | {cell(seg['ref'])} | {cell(seg['cur'])} | "
                  f"{seg['ref'][0] / seg['cur'][0]:.2f}x |")
    else:
        print("| tile (x, y) | nuclei | mask | segment |")
        print("|---|---|---|---|")
        for xy, n, frac, seg in rows:
            print(f"| {xy} | {n} | {100 * frac:.0f} % | {cell(seg['cur'])} |")
    print(f"\nCPU ms per 512x512 tile, median (min) of {args.repeats} runs, one core, H given.\n")
    names = list(stage_rows[0][1])
    print("| tile (x, y) | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for xy, stages in stage_rows:
        print(f"| {xy} | " + " | ".join(cell(stages[k]) for k in names) + " |")
    print(f"\nStages of the current segment_nuclei, CPU ms median (min) of {args.repeats} runs.")
    if ref is not None:
        same, total = identity_check(ref)
        print(f"\nLabels identical to the reference on {same} of {total} tiles "
              f"(4 SVS tiles{'' if total == 4 else ' + nuclei-dev at 40x and 20x'}).")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

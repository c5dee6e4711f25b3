"""Per-tile feature speed (one core, 512x512 tiles at 20x) and morphology agreement with skimage.regionprops.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_features.py [--repeats N] [--tune-malloc] [--compare COMMIT]
[--figure docs/images/nuclei_voronoi.png]``. ``--compare COMMIT`` also times the feature modules of an earlier
git commit against the working tree on the same inputs (interleaved) and reports the largest difference.
Speed: tiles of the bundled 20x SVS (0.499 µm/px); stages timed separately: median and minimum CPU
time over repeats (the shared machine is noisy). ``--tune-malloc`` first applies the glibc malloc
settings that the extract / predict worker processes use (``napari_lnm.extract._tune_malloc``: freed
multi-MB temporaries stay in the heap instead of being unmapped, so they cost no page faults when
reused); without it every multi-MB temporary is a fresh mmap, which CPU time (user + system) includes.
Agreement: every label image of ../shared/data/nuclei-dev against ``skimage.measure.regionprops_table``.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from napari_lnm.features import features_from_images  # noqa: E402
from napari_lnm.features import graph as G  # noqa: E402
from napari_lnm.features import nucleus as N  # noqa: E402
from napari_lnm.features import tile as T  # noqa: E402
from napari_lnm.stain import separate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SVS = ROOT / "src" / "napari_lnm" / "data" / "cmu_small_region.svs"
NUCLEI_DEV = ROOT.parent / "shared" / "data" / "nuclei-dev"
TILE_XY = ((1200, 1600), (600, 900), (1500, 300), (400, 2200))


def read_tiles(size: int = 512) -> list[np.ndarray]:
    """512x512 RGB tiles of the bundled 20x SVS at level 0."""
    import openslide

    with openslide.OpenSlide(str(SVS)) as s:
        return [np.asarray(s.read_region(xy, 0, (size, size)).convert("RGB")) for xy in TILE_XY]


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(median CPU ms, min CPU ms, last result) of ``fn()`` over ``repeats`` runs after one warm-up.

    CPU time of this (single-threaded) process is the least disturbed measure on a shared machine
    (wall time also counts waiting for a core); the minimum is the least-disturbed run.
    """
    out = fn()
    cpu = []
    for _ in range(repeats):
        c0 = time.process_time()
        out = fn()
        cpu.append(time.process_time() - c0)
    return float(np.median(cpu) * 1e3), float(np.min(cpu) * 1e3), out


def bench_speed(repeats: int) -> None:
    """Table: per-stage time for each tile."""
    from napari_lnm.nuclei import segment_nuclei

    mpp = 0.499
    rows = []
    for xy, rgb in zip(TILE_XY, read_tiles()):
        sep = timed(lambda: separate(rgb), repeats)
        h, e = sep[2]
        seg = timed(lambda: segment_nuclei(rgb, mpp, h=h), repeats)
        lab = seg[2]
        gh, ge = T.gradient_magnitude(h, mpp), T.gradient_magnitude(e, mpp)
        tab = N.nucleus_table(lab, mpp, h, gh)
        grad = timed(lambda: (T.gradient_magnitude(h, mpp), T.gradient_magnitude(e, mpp)), repeats)
        tile = timed(lambda: T.tile_group_features(h, e, mpp, grads=(gh, ge)), repeats)
        nuc = timed(lambda: N.nucleus_features(lab, mpp, h, gh), repeats)
        gra = timed(lambda: G.graph_features(tab.centroids, lab.shape, mpp), repeats)
        allf = timed(lambda: features_from_images(h, e, lab, mpp), repeats)
        rows.append((xy, int(lab.max()), sep, seg, grad, tile, nuc, gra, allf))
    print("| tile (x, y) | nuclei | separate | segment | gradients | tile. | nucleus. | graph. | all features | all + separate + segment |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for xy, n, sep, seg, grad, tile, nuc, gra, allf in rows:
        cells = [f"{m[0]:.1f} ({m[1]:.1f})" for m in (sep, seg, grad, tile, nuc, gra, allf)]
        tot = (sep[0] + seg[0] + allf[0], sep[1] + seg[1] + allf[1])
        print(f"| {xy} | {n} | " + " | ".join(cells) + f" | {tot[0]:.1f} ({tot[1]:.1f}) |")
    print()
    print(f"ms per 512x512 tile at 0.499 µm/px, one core (OMP_NUM_THREADS=1): median (minimum) CPU time "
          f"of {repeats} runs; 'all features' = gradients + the three groups; 'segment' is napari_lnm.nuclei.")


def _modules_at(commit: str):
    """The feature modules (tile, nucleus, graph) as they were at a git ``commit`` of this repository."""
    import subprocess
    import sys
    import types

    mods = {}
    for name in ("tile", "nucleus", "graph"):
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/napari_lnm/features/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        src = src.replace("from .catalog", "from napari_lnm.features.catalog")
        src = src.replace("from .tile", f"from _bench_ref_{commit[:10]}_tile")
        mod = types.ModuleType(f"_bench_ref_{commit[:10]}_{name}")
        sys.modules[mod.__name__] = mod
        exec(compile(src, f"{commit[:10]}:features/{name}.py", "exec"), mod.__dict__)
        mods[name] = mod
    return mods["tile"], mods["nucleus"], mods["graph"]


def _all_features(t, n, g, h, e, lab, mpp) -> dict[str, float]:
    """features_from_images with the given tile / nucleus / graph modules."""
    gh, ge = t.gradient_magnitude(h, mpp), t.gradient_magnitude(e, mpp)
    feats = t.tile_group_features(h, e, mpp, grads=(gh, ge))
    tab = n.nucleus_table(lab, mpp, h, gh)
    feats.update(n.nucleus_features(lab, mpp, table=tab))
    feats.update(g.graph_features(tab.centroids, lab.shape, mpp))
    return feats


def bench_compare(commit: str, repeats: int) -> None:
    """Table: 'all features' of the code at ``commit`` vs the working tree, interleaved, and their largest difference."""
    from PIL import Image

    from napari_lnm.nuclei import segment_nuclei

    old = _modules_at(commit)
    new = (T, N, G)
    cases = []
    for xy, rgb in zip(TILE_XY, read_tiles()):
        h, e = separate(rgb)
        cases.append((f"SVS {xy}", h, e, segment_nuclei(rgb, 0.499, h=h), 0.499))
    for f in sorted(NUCLEI_DEV.glob("*.labels.png"))[::6]:  # nuclei-dev tiles with their expert labels (40x)
        rgb = np.asarray(Image.open(str(f).replace(".labels.png", ".png")).convert("RGB"))
        h, e = separate(rgb)
        cases.append((f"nuclei-dev {f.name.split('.')[0]}", h, e, np.asarray(Image.open(f)).astype(np.int32), 0.25))
    print(f"| tile | nuclei | all features at {commit[:10]} | all features now | speed-up | max rel. diff | NaN in the same places |")
    print("|---|---|---|---|---|---|---|")
    for name, h, e, lab, mpp in cases:
        fo = lambda: _all_features(*old, h, e, lab, mpp)  # noqa: E731
        fn = lambda: _all_features(*new, h, e, lab, mpp)  # noqa: E731
        a, b = fo(), fn()
        a, b = np.array([a[k] for k in a]), np.array([b[k] for k in a])
        same_nan = bool(np.array_equal(np.isnan(a), np.isnan(b)))
        ok = ~np.isnan(a) & ~np.isnan(b)
        rel = np.abs(a[ok] - b[ok]) / np.maximum(np.abs(a[ok]), 1e-300)
        rel[a[ok] == b[ok]] = 0.0
        to, tn = [], []
        for _ in range(repeats):
            c0 = time.process_time()
            fo()
            c1 = time.process_time()
            fn()
            c2 = time.process_time()
            to.append(c1 - c0)
            tn.append(c2 - c1)
        mo, mn = 1e3 * float(np.median(to)), 1e3 * float(np.median(tn))
        print(f"| {name} | {int(len(np.unique(lab)) - (lab == 0).any())} | {mo:.1f} ({1e3 * min(to):.1f}) | "
              f"{mn:.1f} ({1e3 * min(tn):.1f}) | {mo / mn:.2f}x | {rel.max() if rel.size else 0.0:.1e} | {same_nan} |")
    print()
    print(f"median (minimum) CPU ms of {repeats} interleaved runs (one warm-up each) of gradients + tile. + nucleus. + "
          f"graph. on the same H, E and labels; relative differences over all {a.size} features.")


def bench_agreement() -> None:
    """Table: per-feature relative difference to regionprops_table over all nuclei-dev label images."""
    from PIL import Image
    from skimage.measure import regionprops_table

    files = sorted(NUCLEI_DEV.glob("*.labels.png"))
    if not files:
        print(f"(agreement skipped: {NUCLEI_DEV} not found)")
        return
    pairs = [("area", "area"), ("perimeter", "perimeter"), ("eccentricity", "eccentricity"),
             ("solidity", "solidity"), ("major_axis", "axis_major_length"), ("minor_axis", "axis_minor_length"),
             ("extent", "extent")]
    diffs: dict[str, list[np.ndarray]] = {k: [] for k, _ in pairs}
    t_mine = t_rp = 0.0
    nuclei = 0
    for f in files:
        lab = np.asarray(Image.open(f)).astype(np.int32)
        t0 = time.perf_counter()
        tab = N.nucleus_table(lab, 1.0)
        t1 = time.perf_counter()
        rp = regionprops_table(lab, properties=["label"] + [p for _, p in pairs])
        t2 = time.perf_counter()
        t_mine += t1 - t0
        t_rp += t2 - t1
        assert np.array_equal(tab.ids, rp["label"])
        nuclei += tab.ids.size
        for mine, theirs in pairs:
            a, b = tab.column(mine), rp[theirs]
            diffs[mine].append(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))
    print(f"| feature (vs regionprops_table) | nuclei | median rel. diff | max rel. diff | within 1% |")
    print("|---|---|---|---|---|")
    for mine, theirs in pairs:
        d = np.concatenate(diffs[mine])
        print(f"| {mine} ({theirs}) | {d.size} | {np.median(d):.1e} | {d.max():.1e} | {100 * np.mean(d <= 0.01):.1f}% |")
    print()
    print(f"{len(files)} label images (512x512, 40x), {nuclei} nuclei. Time for these 7 measurements: "
          f"nucleus_table {1e3 * t_mine / len(files):.1f} ms/image vs regionprops_table {1e3 * t_rp / len(files):.1f} ms/image.")


def figure(path: Path) -> None:
    """Nucleus labels and the clipped Voronoi / Delaunay graph over a real 20x tile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from PIL import Image
    from skimage.segmentation import find_boundaries

    from napari_lnm.features import analyse_tile

    src = ROOT.parent / "shared" / "data" / "real" / "tissue_1000px.png"
    if src.exists():
        rgb = np.asarray(Image.open(src).convert("RGB"))[250:762, 250:762]
        mpp = 0.25  # no metadata; nuclei 8-15 µm across fit 40x
        title = "tissue_1000px.png crop (512 px, taken as 0.25 µm/px)"
    else:
        rgb = read_tiles()[0]
        mpp = 0.499
        title = "cmu_small_region.svs tile (512 px, 0.499 µm/px)"
    a = analyse_tile(rgb, mpp)
    vseg, dseg = G.graph_segments(a.centroids, a.labels.shape)
    fig, axes = plt.subplots(1, 2, figsize=(14, 7.8), dpi=110)
    axes[0].imshow(rgb)
    bnd = find_boundaries(a.labels, mode="inner")
    over = np.zeros(rgb.shape[:2] + (4,))
    over[bnd] = (1.0, 1.0, 0.0, 1.0)
    axes[0].imshow(over)
    axes[0].set_title(f"{title}\n{a.centroids.shape[0]} nuclei (napari_lnm.nuclei), outlines in yellow")
    axes[1].imshow(rgb)
    xy = lambda s: s[:, :, ::-1]  # (row, col) -> (x, y)
    axes[1].add_collection(LineCollection(xy(dseg), colors="cyan", linewidths=0.5, alpha=0.7))
    axes[1].add_collection(LineCollection(xy(vseg), colors="lime", linewidths=0.9))
    axes[1].plot(a.centroids[:, 1], a.centroids[:, 0], "r.", ms=3)
    f = a.features
    axes[1].set_title(
        "Voronoi cells clipped to the tile (green), Delaunay (cyan), centroids (red)\n"
        f"Voronoi area mean {f['graph.voronoi_area_mean']:.0f} µm², kNN-1 {f['graph.knn1_dist_mean']:.1f} µm, "
        f"nucleus area mean {f['nucleus.area_mean']:.1f} µm²"
    )
    for ax in axes:
        ax.set_xlim(-0.5, rgb.shape[1] - 0.5)
        ax.set_ylim(rgb.shape[0] - 0.5, -0.5)
        ax.axis("off")
    fig.tight_layout()
    fig.subplots_adjust(top=0.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"figure written to {path}")


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--figure", type=Path, default=None, help="also render the labels + Voronoi figure here")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="apply the extract/predict workers' glibc malloc settings first (extract._tune_malloc)")
    ap.add_argument("--compare", metavar="COMMIT", default=None,
                    help="also time the feature modules of this git commit against the working tree and compare values")
    args = ap.parse_args()
    if args.tune_malloc:
        from napari_lnm.extract import _tune_malloc

        _tune_malloc()
    if not args.skip_speed:
        load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
        print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, "
              f"malloc: {'tuned as in extract workers' if args.tune_malloc else 'glibc defaults'}")
        print()
        bench_speed(args.repeats)
        print()
    if args.compare:
        bench_compare(args.compare, args.repeats)
        print()
    bench_agreement()
    if args.figure:
        figure(args.figure)


if __name__ == "__main__":
    main()

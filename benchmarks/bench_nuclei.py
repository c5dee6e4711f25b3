"""Nucleus segmentation accuracy (Dice, AJI, F1@0.5) on ../shared/data/nuclei-dev and speed on one core.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_nuclei.py [--data DIR] [--repeats N] [--overlay PNG]``.
Tuning (and training of the pixel model, train_nuclei_pixel_model.py) was done only on the slides in
TUNE_SLIDES; the other slides are reported as held out.  Every method is scored with both foregrounds
(``threshold``: Otsu of smoothed H, the default; ``model``: the shipped pixel classifier).
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from skimage import io  # noqa: E402
from skimage.transform import rescale  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _metrics import pooled, score  # noqa: E402

from napari_lnm.filters import gauss  # noqa: E402
from napari_lnm.stain import separate  # noqa: E402
from napari_lnm.nuclei import segment_nuclei  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "nuclei-dev"
TUNE_SLIDES = ("TCGA-DB-5270", "TCGA-DB-5275", "TCGA-DU-5847")
MPP = 0.25


def load(data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, rgb, labels) of every tile in the folder."""
    out = []
    for f in sorted(data.glob("*.png")):
        if f.name.endswith(".labels.png"):
            continue
        rgb = io.imread(f)[..., :3]
        lab = io.imread(f.with_name(f.stem + ".labels.png"))
        out.append((f.stem, rgb, lab))
    return out


def slide_of(name: str) -> str:
    """Slide id of a tile name (the prefix before -R..)."""
    return name.rsplit("-R", 1)[0]


def to_20x(rgb: np.ndarray) -> np.ndarray:
    """A 40x tile downsampled 2x (anti-aliased) as a 20x tile."""
    return rescale(rgb, 0.5, channel_axis=2, anti_aliasing=True, preserve_range=True).astype(np.uint8)


def variants(methods, foregrounds) -> list[tuple[str, str, dict]]:
    """(label, method, keyword arguments) of every method x foreground combination."""
    return [(m if fg == "threshold" else f"{m} + {fg} fg", m, {"foreground": fg})
            for m in methods for fg in foregrounds]


def evaluate(tiles, method: str, at_20x: bool = False, **kw) -> dict[str, dict]:
    """Scores of a method on all tiles, split into tuning and held-out slides; ``at_20x`` scores the
    tiles downsampled 2x (0.5 µm/px) against every other pixel of the truth."""
    res = {"tune": [], "held-out": [], "all": []}
    for name, rgb, lab in tiles:
        if at_20x:
            s = score(lab[::2, ::2], segment_nuclei(to_20x(rgb), 2 * MPP, method=method, **kw))
        else:
            s = score(lab, segment_nuclei(rgb, MPP, method=method, **kw))
        res["tune" if slide_of(name) in TUNE_SLIDES else "held-out"].append(s)
        res["all"].append(s)
    return {k: pooled(v) for k, v in res.items()}


def error_sources(tiles) -> dict[str, dict]:
    """AJI/F1 of the LMC pipeline with one stage replaced by the truth, on the tuning tiles only:
    true foreground + our seeds, our foreground + true seeds (one per true nucleus centroid)."""
    from scipy import ndimage as ndi

    from napari_lnm import nuclei as N
    from napari_lnm.stain import haematoxylin

    cfg = N.NucleiConfig()
    s0 = cfg.smooth_sigma_um / MPP
    px = MPP * MPP
    res = {"ours": [], "true foreground, our seeds": [], "our foreground, true seeds": [],
           "model foreground (ours)": [], "model foreground, true seeds": []}
    for name, rgb, lab in tiles:
        if slide_of(name) not in TUNE_SLIDES:
            continue
        hs = gauss(haematoxylin(rgb), s0)
        fg = N._foreground(hs, MPP, cfg)
        res["ours"].append(score(lab, segment_nuclei(rgb, MPP)))
        gfg = lab > 0
        out = N._max_clustering(N._blob_response(hs, gfg, MPP, cfg, s0), gfg, cfg.seed_radius_um / MPP)
        res["true foreground, our seeds"].append(score(lab, N.relabel_consecutive(out, int(cfg.min_area_um2 / px))))
        cen = np.round(ndi.center_of_mass(np.ones_like(lab), lab, np.arange(1, lab.max() + 1))).astype(int)
        markers = np.zeros(lab.shape, np.int32)
        markers[cen[:, 0], cen[:, 1]] = np.arange(1, len(cen) + 1)
        markers[~fg] = 0
        out = N._watershed(-N._blob_response(hs, fg, MPP, cfg, s0), markers, fg)
        res["our foreground, true seeds"].append(score(lab, N.relabel_consecutive(out, int(cfg.min_area_um2 / px))))
        res["model foreground (ours)"].append(score(lab, segment_nuclei(rgb, MPP, foreground="model")))
        mfg = N._model_foreground(*separate(rgb), MPP, cfg)[0]
        mk = np.where(mfg, markers, 0)
        out = N._watershed(-gauss(N._distance(mfg, MPP), 0.5 * cfg.nucleus_radius_um / np.sqrt(2) / MPP), mk, mfg)
        res["model foreground, true seeds"].append(score(lab, N.relabel_consecutive(out, int(cfg.min_area_um2 / px))))
    return {k: pooled(v) for k, v in res.items()}


def write_overlay(tiles, path: Path, name: str = "TCGA-FG-A4MU-R02_3") -> None:
    """PNG of one held-out tile: expert contours (green, left), LMC with the threshold foreground
    (yellow, middle) and LMC with the pixel-model foreground (cyan, right)."""
    from skimage.segmentation import find_boundaries

    from napari_lnm._atomic import atomic_path

    rgb, lab = next((r, lab) for n, r, lab in tiles if n == name)
    preds = [segment_nuclei(rgb, MPP), segment_nuclei(rgb, MPP, foreground="model")]
    panels = [rgb.copy() for _ in range(3)]
    panels[0][find_boundaries(lab, mode="inner")] = (0, 255, 0)
    panels[1][find_boundaries(preds[0], mode="inner")] = (255, 255, 0)
    panels[2][find_boundaries(preds[1], mode="inner")] = (0, 255, 255)
    gap = np.full((rgb.shape[0], 8, 3), 255, np.uint8)
    with atomic_path(path) as tmp:
        io.imsave(tmp, np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1),
                  check_contrast=False, extension=".png")
    s = [score(lab, p) for p in preds]
    print(f"\nwrote {path}: {name}, expert {lab.max()} nuclei (left), LMC threshold {preds[0].max()} "
          f"(middle, AJI {s[0].aji:.3f}), LMC model {preds[1].max()} (right, AJI {s[1].aji:.3f})")


def timing(tiles, method: str, mpp: float, repeats: int, **kw) -> tuple[float, float]:
    """Median wall-clock and CPU seconds per tile of segment_nuclei (one thread), over repeats x tiles."""
    wall, cpu = [], []
    segment_nuclei(tiles[0][1], mpp, method=method, **kw)  # warm-up (imports, caches)
    for _ in range(repeats):
        for _, rgb, _ in tiles:
            t0, c0 = time.perf_counter(), time.process_time()
            segment_nuclei(rgb, mpp, method=method, **kw)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def accuracy_tables(tiles, methods, n_tune, args) -> None:
    """Print the accuracy and error-source tables."""
    print(f"Accuracy on {len(tiles)} tiles (40x, {MPP} µm/px); tuning slides: {', '.join(TUNE_SLIDES)} "
          f"({n_tune} tiles), held out: the other {len(tiles) - n_tune} tiles.\n")
    print("| method | tiles | Dice | AJI | F1@0.5 | AJI pooled | F1 pooled | nuclei true / found |")
    print("|---|---|---|---|---|---|---|---|")
    todo = variants(methods, args.foregrounds) + ([("deep", "deep", {"weights": args.deep_weights})]
                                                  if args.deep_weights else [])
    for label, m, kw in todo:
        r = evaluate(tiles, m, **kw)
        for split in ("tune", "held-out", "all"):
            p = r[split]
            print(f"| {label} | {split} | {p['dice']:.3f} | {p['aji']:.3f} | {p['f1']:.3f} | "
                  f"{p['aji_pooled']:.3f} | {p['f1_pooled']:.3f} | {p['n_true']} / {p['n_pred']} |")
    print("| HistomicsTK defaults (issue 3) | all | 0.850 | 0.587 | 0.750 | | | |")

    print("\nThe same tiles downsampled 2x to 20x (0.5 µm/px), same defaults (sizes are in µm):\n")
    print("| method | tiles | Dice | AJI | F1@0.5 | AJI pooled | F1 pooled | nuclei true / found |")
    print("|---|---|---|---|---|---|---|---|")
    for label, m, kw in variants(methods, args.foregrounds):
        r = evaluate(tiles, m, at_20x=True, **kw)
        for split in ("tune", "held-out", "all"):
            p = r[split]
            print(f"| {label} @20x | {split} | {p['dice']:.3f} | {p['aji']:.3f} | {p['f1']:.3f} | "
                  f"{p['aji_pooled']:.3f} | {p['f1_pooled']:.3f} | {p['n_true']} / {p['n_pred']} |")

    print("\nWhere the error comes from (LMC, tuning tiles; one stage replaced by the truth; threshold "
          "foreground unless named):\n")
    print("| variant | Dice | AJI | F1@0.5 |")
    print("|---|---|---|---|")
    for k, p in error_sources(tiles).items():
        print(f"| {k} | {p['dice']:.3f} | {p['aji']:.3f} | {p['f1']:.3f} |")


def speed_tables(tiles, methods, args) -> None:
    """Print the speed tables (one thread, wall-clock and CPU time)."""
    # speed: 40x tiles as given; 20x tiles = the same tiles downsampled 2x (256x256) tiled 2x2 to 512x512
    t40 = tiles[:: max(1, len(tiles) // 6)]
    t20 = []
    for i in range(0, len(tiles) - 3, max(4, len(tiles) // 6)):
        quads = [to_20x(tiles[i + k][1]) for k in range(4)]
        t20.append(("", np.concatenate([np.concatenate(quads[:2], axis=1), np.concatenate(quads[2:], axis=1)]), None))
    print(f"\nSpeed, one thread (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), median of "
          f"{args.repeats} x tiles, 512x512 RGB tiles including colour deconvolution:\n")
    print("| method | 20x tile (0.5 µm/px): wall ms | CPU ms | 40x tile (0.25 µm/px): wall ms | CPU ms |")
    print("|---|---|---|---|---|")
    for label, m, kw in variants(methods, args.foregrounds):
        a = timing(t20, m, 0.5, args.repeats, **kw)
        b = timing(t40, m, 0.25, args.repeats, **kw)
        print(f"| {label} | {a[0] * 1e3:.1f} | {a[1] * 1e3:.1f} | {b[0] * 1e3:.1f} | {b[1] * 1e3:.1f} |")

    from napari_lnm.stain import estimate_stains, separate

    print("\n| stain step (512x512 tile) | wall ms | CPU ms |")
    print("|---|---|---|")
    for label, fn in (("separate (H and E)", separate), ("estimate_stains (Macenko)", estimate_stains)):
        wall, cpu = [], []
        for _ in range(args.repeats):
            for _, rgb, _ in t40:
                t0, c0 = time.perf_counter(), time.process_time()
                fn(rgb)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        print(f"| {label} | {np.median(wall) * 1e3:.1f} | {np.median(cpu) * 1e3:.1f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="lmc,watershed")
    ap.add_argument("--foregrounds", default="threshold,model", help="foregrounds to score (threshold, model, cnn)")
    ap.add_argument("--speed-only", action="store_true", help="skip the accuracy tables")
    ap.add_argument("--overlay", type=Path, default=None, help="write a PNG of truth vs LMC contours")
    ap.add_argument("--deep-weights", type=Path, default=None, help="also score method='deep' with this model")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1
    tiles = load(args.data)
    methods = args.methods.split(",")
    args.foregrounds = args.foregrounds.split(",")
    n_tune = sum(slide_of(n) in TUNE_SLIDES for n, _, _ in tiles)
    if args.overlay:
        write_overlay(tiles, args.overlay)
    if not args.speed_only:
        accuracy_tables(tiles, methods, n_tune, args)
    speed_tables(tiles, methods, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

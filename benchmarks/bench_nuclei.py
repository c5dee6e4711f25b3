"""Nucleus segmentation accuracy (Dice, AJI, F1@0.5) on ../shared/data/nuclei-dev and speed on one core.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_nuclei.py [--data DIR] [--repeats N] [--overlay PNG]``.
Tuning (and training of the pixel model, train_nuclei_pixel_model.py) was done only on the slides in
TUNE_SLIDES; the other slides are reported as held out.  Every method is scored with both foregrounds
(``threshold``: Otsu of smoothed H, the default; ``model``: the shipped pixel classifier).
Prints markdown tables.

``--typed`` instead scores every segmenter and the typed network (``method="typed"``,
benchmarks/train_nuclei_typed.py) on the held-out parts of nuclei-consep, nuclei-monuseg, nuclei-dev
and nuclei-crchisto (splits in benchmarks/_nuclei_data.py): Dice, AJI, PQ, F1@0.5, HoVer-Net's
per-type F1 on CoNSeP, detection and weighted classification F1 on crchisto points, and speed per
512² 20x tile (crc-tiles) on one thread; ``--overlays DIR`` writes typed overlays there.
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
from _metrics import TypeCounts, pooled, score  # noqa: E402

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


TYPED_VARIANTS = (("lmc (threshold, default)", {"method": "lmc"}),
                  ("lmc + model fg", {"method": "lmc", "foreground": "model"}),
                  ("lmc + cnn fg", {"method": "lmc", "foreground": "cnn"}),
                  ("typed network", {"method": "typed"}))
TYPE_COLOURS = {"epithelial": (1.0, 0.2, 0.2), "inflammatory": (0.2, 1.0, 0.2), "stromal": (0.2, 0.6, 1.0),
                "other": (1.0, 1.0, 0.0)}
PAIR_RADIUS_20X = 6.0  # px at 20x: HoVer-Net's 12 px at 40x, and the crchisto matching radius


def _centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label ids, (n, 2) row/col centroids) of the nonzero labels."""
    from scipy import ndimage as ndi

    ids = np.unique(labels)
    ids = ids[ids != 0]
    if not ids.size:
        return ids, np.zeros((0, 2))
    return ids, np.array(ndi.center_of_mass(np.ones(labels.shape), labels, ids)).reshape(-1, 2)


def _predict(rgb: np.ndarray, mpp: float, kw: dict) -> tuple[np.ndarray, dict[int, int] | None]:
    """Labels of one variant, with a type index per label for the typed network (else None)."""
    from napari_lnm.nuclei import NUCLEUS_TYPES, classify_nuclei

    if kw.get("method") == "typed":
        lab, types = classify_nuclei(rgb, mpp)
        return lab, {int(k): NUCLEUS_TYPES.index(v) for k, v in types.items()}
    return segment_nuclei(rgb, mpp, **kw), None


def consep_held_out_tiles(data: Path) -> list[tuple[str, np.ndarray, list]]:
    """Held-out CoNSeP tiles reassembled from their patches at 20x: (tile, rgb 500², [(patch labels
    at 20x, patch types, row0, col0)]); overlap pixels come from the later patch (JPEG-close)."""
    import csv

    from _nuclei_data import CONSEP_HELD_OUT, TYPE_INDEX

    rows = [r for r in csv.DictReader(open(data / "index.csv")) if r["tile"] in CONSEP_HELD_OUT]
    out = []
    for tile in sorted({r["tile"] for r in rows}, key=lambda t: int(t.split("_")[1])):
        big = np.zeros((1000, 1000, 3), np.uint8)
        patches = []
        for r in sorted((r for r in rows if r["tile"] == tile), key=lambda r: int(r["patch"])):
            y0, x0 = int(r["y0"]), int(r["x0"])
            big[y0:y0 + 256, x0:x0 + 256] = io.imread(data / f"{r['name']}.jpg")[..., :3]
            lab = io.imread(data / f"{r['name']}.labels.png")[::2, ::2].astype(np.int32)
            types = {int(q["label"]): TYPE_INDEX[q["type"]] for q in csv.DictReader(open(data / f"{r['name']}.types.csv"))}
            patches.append((lab, types, y0 // 2, x0 // 2))
        out.append((tile, to_20x(big), patches))
    return out


def _window(lab: np.ndarray, r0: int, c0: int, n: int) -> np.ndarray:
    """The n x n window of a label image at (r0, c0), ids kept (they key the types)."""
    return np.ascontiguousarray(lab[r0:r0 + n, c0:c0 + n])


def typed_tables(args) -> None:
    """Accuracy of every segmenter and of the typed network on the held-out parts, and speed."""
    import torch

    from _nuclei_data import DATA, load_crchisto, load_dev, load_monuseg

    from napari_lnm.nuclei import NUCLEUS_TYPES

    torch.set_num_threads(1)
    consep = consep_held_out_tiles(DATA / "nuclei-consep")
    monu = [s for s in load_monuseg() if s.held_out]
    dev = [s for s in load_dev() if s.held_out]
    dev40 = [t for t in load(DATA / "nuclei-dev") if slide_of(t[0]) in ("TCGA-DU-8165", "TCGA-FG-A4MU")]
    crc = [s for s in load_crchisto() if s.held_out]
    print(f"Held out: CoNSeP {len(consep)} tiles ({sum(len(p) for _, _, p in consep)} patches), MoNuSeg "
          f"{len(monu)} tiles, nuclei-dev {len(dev)} tiles, crchisto {len(crc)} images; all at 0.5 µm/px "
          f"(nuclei-dev also at 40x).\n")
    print("| method | dataset | Dice | AJI | PQ (DQ x SQ) | F1@0.5 | AJI pooled | nuclei true / found |")
    print("|---|---|---|---|---|---|---|---|")
    type_rows, crc_rows = {}, {}
    for label, kw in TYPED_VARIANTS:
        res: dict[str, list] = {"CoNSeP": [], "MoNuSeg": [], "nuclei-dev": [], "nuclei-dev 40x": []}
        tc = TypeCounts.empty()
        for _tile, rgb, patches in consep:
            pred, ptypes = _predict(rgb, 0.5, kw)
            for lab, types, r0, c0 in patches:
                p = _window(pred, r0, c0, lab.shape[0])
                res["CoNSeP"].append(score(lab, p))
                if ptypes is not None:
                    ti, tcen = _centroids(lab)
                    pi, pcen = _centroids(p)
                    tc.add(tcen, [types.get(int(i), -1) for i in ti], pcen, [ptypes[int(i)] for i in pi], PAIR_RADIUS_20X)
        for s in monu:
            res["MoNuSeg"].append(score(s.labels, _predict(s.rgb, 0.5, kw)[0]))
        for s in dev:
            res["nuclei-dev"].append(score(s.labels, _predict(s.rgb, 0.5, kw)[0]))
        for _n, rgb, lab in dev40:
            res["nuclei-dev 40x"].append(score(lab, _predict(rgb, MPP, kw)[0]))
        for name, sc in res.items():
            p = pooled(sc)
            print(f"| {label} | {name} | {p['dice']:.3f} | {p['aji']:.3f} | {p['pq']:.3f} ({p['dq']:.3f} x {p['sq']:.3f}) | "
                  f"{p['f1']:.3f} | {p['aji_pooled']:.3f} | {p['n_true']} / {p['n_pred']} |", flush=True)
        if kw.get("method") == "typed":
            type_rows[label] = [tc.type_f1(t) for t in range(len(NUCLEUS_TYPES))] + [tc.detection_f1()]
        cc = TypeCounts.empty()
        for s in crc:
            lab, ptypes = _predict(s.rgb, 0.5, kw)
            pi, pcen = _centroids(lab)
            cc.add(s.points[:, :2], s.points[:, 2].astype(int), pcen,
                   [ptypes[int(i)] if ptypes else -1 for i in pi], PAIR_RADIUS_20X)
        crc_rows[label] = (cc.detection_f1(), cc.weighted_class_f1(len(NUCLEUS_TYPES)) if kw.get("method") == "typed"
                           else float("nan"), sum(a.size for a in cc.paired_true))
    print("\nCoNSeP held-out per-type F1 (HoVer-Net's definition: centroids paired within 6 px at 20x = 12 px at "
          "40x, one-to-one; patches scored separately):\n")
    print("| method | epithelial | inflammatory | stromal (spindle) | other | detection F1 |")
    print("|---|---|---|---|---|---|")
    print("| HoVer-Net (Graham et al. 2019, CoNSeP test) | 0.635 | 0.631 | 0.566 | 0.426 | 0.748 |")
    for label, v in type_rows.items():
        print(f"| {label} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
    print("\ncrchisto held-out (validation) points: predicted centroid within 6 px of a true point, one-to-one:\n")
    print("| method | detection F1 | weighted classification F1 (paired, classified points) | pairs |")
    print("|---|---|---|---|")
    for label, (d, c, n) in crc_rows.items():
        print(f"| {label} | {d:.3f} | {'' if np.isnan(c) else f'{c:.3f}'} | {n} |")
    typed_speed(args)
    if args.overlays:
        typed_overlays(consep, args.overlays)


def typed_speed(args) -> None:
    """Median wall and CPU ms per 512² 20x crc-tiles tile on one thread, each variant."""
    from _nuclei_data import DATA

    from napari_lnm.nuclei import classify_nuclei
    from napari_lnm.nuclei_net import use_bf16

    tiles = [io.imread(f)[..., :3] for f in sorted((DATA / "crc-tiles").glob("*.jpg"))[:6]]
    print(f"\nSpeed per 512² tile at 20x (crc-tiles, {len(tiles)} tiles x {args.repeats}), one thread, "
          f"RGB in (colour deconvolution included), bf16 {'on' if use_bf16() else 'off'}:\n")
    print("| method | wall ms | CPU ms |")
    print("|---|---|---|")
    for label, kw in TYPED_VARIANTS:
        fn = (lambda rgb: classify_nuclei(rgb, 0.5)) if kw.get("method") == "typed" else (
            lambda rgb, kw=kw: segment_nuclei(rgb, 0.5, **kw))
        fn(tiles[0])
        wall, cpu = [], []
        for _ in range(args.repeats):
            for rgb in tiles:
                t0, c0 = time.perf_counter(), time.process_time()
                fn(rgb)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        name = label + (" (segment + type)" if kw.get("method") == "typed" else "")
        print(f"| {name} | {np.median(wall) * 1e3:.1f} | {np.median(cpu) * 1e3:.1f} |", flush=True)


def typed_overlays(consep, out_dir: Path) -> None:
    """PNGs of typed nucleus contours on a held-out CoNSeP tile (truth left, prediction right) and on
    a crc-tiles tile (colours: TYPE_COLOURS)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from skimage.segmentation import find_boundaries

    from _nuclei_data import DATA

    from napari_lnm.nuclei import NUCLEUS_TYPES, classify_nuclei

    def paint(rgb, lab, types):
        img = rgb.astype(np.float32) / 255
        edge = find_boundaries(lab, mode="inner")
        lut = np.zeros((int(lab.max()) + 1, 3), np.float32)
        for k, t in types.items():
            if 0 < k < lut.shape[0]:
                lut[k] = TYPE_COLOURS[t]
        img[edge] = lut[lab[edge]]
        return img

    legend = [Patch(color=c, label=t) for t, c in TYPE_COLOURS.items()]
    out_dir.mkdir(parents=True, exist_ok=True)
    tile, rgb, patches = consep[0]
    lab, types = classify_nuclei(rgb, 0.5)
    # truth: the patches' labels pasted back, each patch's ids offset to stay distinct
    truth = np.zeros(rgb.shape[:2], np.int64)
    ttypes = {}
    off = 0
    for plab, ptypes, r0, c0 in patches:
        win = truth[r0:r0 + plab.shape[0], c0:c0 + plab.shape[1]]
        win[plab > 0] = plab[plab > 0] + off
        ttypes.update({k + off: NUCLEUS_TYPES[v] for k, v in ptypes.items()})
        off += int(plab.max()) + 1
    fig, ax = plt.subplots(1, 2, figsize=(14, 7.4))
    ax[0].imshow(paint(rgb, truth, ttypes))
    ax[0].set_title(f"CoNSeP {tile} (held out): expert types")
    ax[1].imshow(paint(rgb, lab, dict(types.items())))
    ax[1].set_title(f"typed network: {lab.max()} nuclei")
    for a in ax:
        a.axis("off")
    fig.legend(handles=legend, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out_dir / "nuclei_typed_consep.png", dpi=110)
    plt.close(fig)
    f = sorted((DATA / "crc-tiles").glob("*.jpg"))[3]
    rgb = io.imread(f)[..., :3]
    lab, types = classify_nuclei(rgb, 0.5)
    counts = types.value_counts().to_dict()
    fig, ax = plt.subplots(1, 2, figsize=(14, 7.4))
    ax[0].imshow(rgb)
    ax[0].set_title(f"crc-tiles {f.stem}")
    ax[1].imshow(paint(rgb, lab, dict(types.items())))
    ax[1].set_title("typed network: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for a in ax:
        a.axis("off")
    fig.legend(handles=legend, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out_dir / "nuclei_typed_crc.png", dpi=110)
    plt.close(fig)
    print(f"\nwrote {out_dir / 'nuclei_typed_consep.png'} and {out_dir / 'nuclei_typed_crc.png'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="lmc,watershed")
    ap.add_argument("--foregrounds", default="threshold,model", help="foregrounds to score (threshold, model, cnn)")
    ap.add_argument("--speed-only", action="store_true", help="skip the accuracy tables")
    ap.add_argument("--overlay", type=Path, default=None, help="write a PNG of truth vs LMC contours")
    ap.add_argument("--deep-weights", type=Path, default=None, help="also score method='deep' with this model")
    ap.add_argument("--typed", action="store_true", help="only the held-out tables of issue 13 (typed network)")
    ap.add_argument("--overlays", type=Path, default=None, help="with --typed: write typed overlay PNGs here")
    args = ap.parse_args(argv)
    if args.typed:
        typed_tables(args)
        return 0
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

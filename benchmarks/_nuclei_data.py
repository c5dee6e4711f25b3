"""The four nucleus datasets at the typed network's 0.5 µm/px, with fixed train / held-out splits.

Splits (never tuned on): CoNSeP by source tile (tiles train_k with k % 5 == 3: 3, 8, 13, 18, 23);
MoNuSeg by patient/tile (the first tile of each TCGA organ in name order: 7 of 30); nuclei-dev by
slide prefix (TCGA-DU-8165, TCGA-FG-A4MU, as in bench_nuclei.py); crchisto by image (the dataset's
SFCN-OPI ``validation`` split: 10 of 80).  40x images are downsampled 2x (anti-aliased) and their
labels subsampled (every other pixel), as bench_nuclei.py does for its 20x scores.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage import io
from skimage.transform import rescale

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WORK_MPP = 0.5
#: nucleus type index of each source class name (CoNSeP spindle and crchisto fibroblast are stromal)
TYPE_INDEX = {"epithelial": 0, "inflammatory": 1, "spindle": 2, "fibroblast": 2, "other": 3}
DEV_HELD_OUT = ("TCGA-DU-8165", "TCGA-FG-A4MU")
CONSEP_HELD_OUT = {f"train_{k}" for k in (3, 8, 13, 18, 23)}


@dataclass
class Sample:
    """One image at 0.5 µm/px: RGB, instance labels (None: points only), per-instance types, points."""

    dataset: str
    name: str
    group: str  # slide / tile / patient / image the split is made by
    held_out: bool
    rgb: np.ndarray  # (H, W, 3) uint8 at 0.5 µm/px
    labels: np.ndarray | None  # int32 instance labels at 0.5 µm/px, or None
    types: dict[int, int] | None  # label -> type index (TYPE_INDEX), or None
    points: np.ndarray | None = None  # (N, 3) float: row, col, type index (-1 = unclassified)


def to_20x(rgb: np.ndarray) -> np.ndarray:
    """A 40x tile downsampled 2x (anti-aliased), as bench_nuclei.to_20x."""
    return rescale(rgb, 0.5, channel_axis=2, anti_aliasing=True, preserve_range=True).astype(np.uint8)


def _rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _labelled(dataset: str, name: str, group: str, held: bool, rgb: np.ndarray, lab: np.ndarray,
              types: dict[int, int] | None) -> Sample:
    """A 40x labelled image as a Sample at 0.5 µm/px."""
    return Sample(dataset, name, group, held, to_20x(rgb[..., :3]), lab[::2, ::2].astype(np.int32), types)


def load_consep(data: Path = DATA / "nuclei-consep") -> list[Sample]:
    """CoNSeP patches (256² at 40x -> 128²), split by source tile."""
    out = []
    for row in _rows(data / "index.csv"):
        n = row["name"]
        t = {int(r["label"]): TYPE_INDEX[r["type"]] for r in _rows(data / f"{n}.types.csv")}
        out.append(_labelled("consep", n, row["tile"], row["tile"] in CONSEP_HELD_OUT,
                             io.imread(data / f"{n}.jpg"), io.imread(data / f"{n}.labels.png"), t))
    return out


def load_monuseg(data: Path = DATA / "nuclei-monuseg") -> list[Sample]:
    """MoNuSeg tiles (1000² at 40x -> 500²), one per patient; the first of each TCGA organ held out."""
    rows = sorted(_rows(data / "index.csv"), key=lambda r: r["name"])
    held, seen = set(), set()
    for r in rows:
        if r["tcga_organ"] not in seen:
            seen.add(r["tcga_organ"])
            held.add(r["name"])
    return [_labelled("monuseg", r["name"], r["name"], r["name"] in held, io.imread(data / f"{r['name']}.png"),
                      io.imread(data / f"{r['name']}.labels.png"), None) for r in rows]


def load_dev(data: Path = DATA / "nuclei-dev") -> list[Sample]:
    """nuclei-dev tiles (512² at 40x -> 256²), split by slide prefix."""
    out = []
    for f in sorted(data.glob("*.png")):
        if f.name.endswith(".labels.png"):
            continue
        slide = f.stem.rsplit("-R", 1)[0]
        out.append(_labelled("dev", f.stem, slide, slide in DEV_HELD_OUT, io.imread(f),
                             io.imread(f.with_name(f.stem + ".labels.png")), None))
    return out


def load_crchisto(data: Path = DATA / "nuclei-crchisto") -> list[Sample]:
    """crchisto images (500² at 20x, used as is) with their points; the validation split held out."""
    out = []
    for r in _rows(data / "index.csv"):
        pts = np.array([(float(p["y"]), float(p["x"]), TYPE_INDEX.get(p["type"], -1))
                        for p in _rows(data / f"{r['name']}.points.csv")], dtype=np.float64).reshape(-1, 3)
        out.append(Sample("crchisto", r["name"], r["name"], r["split"] == "validation",
                          io.imread(data / f"{r['name']}.png")[..., :3], None, None, pts))
    return out


def load_all() -> list[Sample]:
    """Every sample of the four datasets, in a fixed order."""
    return load_consep() + load_monuseg() + load_dev() + load_crchisto()

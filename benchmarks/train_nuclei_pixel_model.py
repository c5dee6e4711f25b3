"""Train the shipped nucleus pixel classifier (src/napari_lnm/data/nuclei_pixel_model.npz).

Run: ``OMP_NUM_THREADS=1 python benchmarks/train_nuclei_pixel_model.py [--data DIR] [--out PATH]``.
Deterministic (fixed seeds, one thread).  Uses only the tiles of the tuning slides (TUNE_SLIDES of
bench_nuclei.py) at 40x (0.25 µm/px) and downsampled 2x to 20x (0.5 µm/px): ``--samples`` random pixels
per tile and resolution, the filter bank of ``napari_lnm.nuclei.pixel_features``, and a one-hidden-layer
perceptron (scikit-learn, training only) with two logistic outputs: nucleus (any expert label) and
nucleus interior (farther than ``--interior-um`` from background or another nucleus).  Inference in
the package is numpy only; the file holds plain float arrays (``np.load(allow_pickle=False)``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nuclei import DEFAULT_DATA, MPP, TUNE_SLIDES, load, slide_of, to_20x  # noqa: E402

from napari_lnm._atomic import atomic_path  # noqa: E402
from napari_lnm.nuclei import PIXEL_MODEL_PATH, pixel_features  # noqa: E402
from napari_lnm.stain import separate  # noqa: E402

H_SCALES_UM = (0.5, 1.0, 2.0, 4.0)
CTX_SCALES_UM = (0.5, 1.0, 2.0, 4.0)


def interior(labels: np.ndarray, mpp: float, depth_um: float) -> np.ndarray:
    """Pixels of a nucleus farther than ``depth_um`` (µm) from the background or another nucleus."""
    edge = np.zeros(labels.shape, bool)
    dy = labels[:-1] != labels[1:]
    dx = labels[:, :-1] != labels[:, 1:]
    edge[:-1] |= dy
    edge[1:] |= dy
    edge[:, :-1] |= dx
    edge[:, 1:] |= dx
    return (labels > 0) & (ndi.distance_transform_edt(~edge) * mpp > depth_um)


def samples(tiles, n_per_tile: int, depth_um: float, seed: int, h_scales=H_SCALES_UM,
            ctx_scales=CTX_SCALES_UM) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, F) and targets (n, 2) of random pixels of the tuning tiles at 40x and 20x."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for name, rgb, lab in tiles:
        for img, truth, mpp in ((rgb, lab, MPP), (to_20x(rgb), lab[::2, ::2], 2 * MPP)):
            x = pixel_features(*separate(img), mpp, h_scales, ctx_scales)
            idx = rng.choice(truth.size, min(n_per_tile, truth.size), replace=False)
            xs.append(x[:, idx].T)
            ys.append(np.stack([(truth > 0).ravel()[idx], interior(truth, mpp, depth_um).ravel()[idx]], 1))
    return np.concatenate(xs), np.concatenate(ys)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=PIXEL_MODEL_PATH)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--samples", type=int, default=6000, help="random pixels per tile and resolution")
    ap.add_argument("--interior-um", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--h-scales", default=",".join(map(str, H_SCALES_UM)), help="H filter scales (µm)")
    ap.add_argument("--ctx-scales", default=",".join(map(str, CTX_SCALES_UM)), help="E filter scales (µm)")
    args = ap.parse_args(argv)
    from sklearn.neural_network import MLPClassifier  # training only

    if not args.data.is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1
    tiles = [t for t in load(args.data) if slide_of(t[0]) in TUNE_SLIDES]
    t0 = time.perf_counter()
    h_scales = tuple(float(v) for v in args.h_scales.split(","))
    ctx_scales = tuple(float(v) for v in args.ctx_scales.split(","))
    x, y = samples(tiles, args.samples, args.interior_um, args.seed, h_scales, ctx_scales)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    mlp = MLPClassifier((args.hidden,), max_iter=300, random_state=args.seed)
    mlp.fit((x - mean) / std, y)
    acc = (mlp.predict((x - mean) / std) == y).mean(axis=0)
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, h_scales_um=np.array(h_scales), ctx_scales_um=np.array(ctx_scales),
                     mean=mean.astype(np.float64), std=std.astype(np.float64),
                     w1=mlp.coefs_[0].T.astype(np.float64), b1=mlp.intercepts_[0].astype(np.float64),
                     w2=mlp.coefs_[1].T.astype(np.float64), b2=mlp.intercepts_[1].astype(np.float64),
                     train_slides=np.array(TUNE_SLIDES), n_samples=np.array(len(x)),
                     interior_um=np.array(args.interior_um))
    print(f"wrote {args.out}: {x.shape[1]} features, {args.hidden} hidden units, {len(x)} pixels of "
          f"{len(tiles)} tiles x 2 resolutions; training accuracy nucleus {acc[0]:.3f}, interior {acc[1]:.3f}; "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

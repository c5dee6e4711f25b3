"""Train the shipped nucleus U-Net (src/napari_lnm/data/nuclei_unet.npz) used by ``foreground="cnn"``.

Run: ``python benchmarks/train_nuclei_unet.py [--data DIR] [--out PATH] [--iters N] [--threads T]``.
Uses only the tiles of the tuning slides (TUNE_SLIDES of bench_nuclei.py), each downsampled 2x to the
network's 0.5 µm/px under 4 binning phases (``--phases``): ``--iters`` steps of ``--batch`` random
``--crop`` px crops with 90° rotations, flips, a per-crop H/E intensity jitter (x0.8-1.2, ±0.05 OD)
and, by default (``--strong``), H<->E cross-talk, blur and noise; binary cross-entropy on two
outputs, nucleus (any expert label) and nucleus interior (farther than 1 µm from background or another
nucleus); Adam with a one-cycle learning rate.  Seeded; the same ``--threads`` on the same CPU gives
the same weights.  Saves plain float32 arrays (no pickle).  About 33 min on 1 thread of the dev VM;
the defaults write the shipped file.  (Stop 9's weights: ``--phases 1 --no-strong --threads 2``.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nuclei import DEFAULT_DATA, MPP, TUNE_SLIDES, load, slide_of, to_20x  # noqa: E402
from train_nuclei_pixel_model import interior  # noqa: E402

from napari_lnm._atomic import atomic_path  # noqa: E402
from napari_lnm.stain import separate  # noqa: E402
from napari_lnm.nuclei_net import UNET_PATH, WORK_MPP, build_unet, state_to_arrays  # noqa: E402


#: offsets (rows, cols) at 40x of the 2x binnings a tile is seen under (``--phases`` takes the first n)
PHASES = ((0, 0), (1, 1), (0, 1), (1, 0))


def training_arrays(tiles, phases: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Inputs (2, H, W) H/E OD and targets (2, H, W) nucleus/interior of the tiles at 0.5 µm/px, one
    pair per tile and binning phase (phase (dr, dc) drops dr rows and dc columns at 40x first)."""
    xs, ys = [], []
    for _name, rgb, lab in tiles:
        for dr, dc in PHASES[:phases]:
            r, c = (rgb.shape[0] - dr) // 2 * 2, (rgb.shape[1] - dc) // 2 * 2
            truth = lab[dr : dr + r : 2, dc : dc + c : 2]
            xs.append(np.stack(separate(to_20x(rgb[dr : dr + r, dc : dc + c]))).astype(np.float32))
            ys.append(np.stack([truth > 0, interior(truth, 2 * MPP, 1.0)]).astype(np.float32))
    return xs, ys


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
            strong: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A random 90° rotation, flip and H/E intensity jitter of one crop (C, H, W); ``strong`` adds
    H<->E cross-talk (±0.1, a stain-vector mismatch), a Gaussian blur (σ 0.3-1 px, p 0.3) and
    Gaussian noise (σ ≤ 0.03 OD, p 0.3)."""
    k = rng.integers(4)
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    a = rng.uniform(0.8, 1.2, size=(2, 1, 1)).astype(np.float32)
    b = rng.uniform(-0.05, 0.05, size=(2, 1, 1)).astype(np.float32)
    if not strong:
        return np.maximum(x * a + b, 0).copy(), y.copy()
    t = rng.uniform(-0.1, 0.1, size=2).astype(np.float32)
    x = np.stack([a[0] * x[0] + t[0] * x[1], a[1] * x[1] + t[1] * x[0]]) + b
    if rng.random() < 0.3:
        x = ndi.gaussian_filter(x, (0, *[rng.uniform(0.3, 1.0)] * 2))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0, 0.03), x.shape).astype(np.float32)
    return np.maximum(x, 0).astype(np.float32), y.copy()


def zoomed(a: np.ndarray, size: int, order: int) -> np.ndarray:
    """Each channel of (C, n, n) resampled to (C, size, size) (spline ``order``; 0 keeps targets binary)."""
    f = a.shape[1] / size
    return np.stack([ndi.affine_transform(ch, [f, f], output_shape=(size, size), order=order, mode="nearest")
                     for ch in a]).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=UNET_PATH)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128, help="crop side (px at 0.5 µm/px), a multiple of 4")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--channels", default="12,24,48")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phases", type=int, default=4, choices=(1, 2, 3, 4), help="2x binning phases per tile")
    ap.add_argument("--strong", action=argparse.BooleanOptionalAction, default=True,
                    help="also cross-talk, blur and noise augmentation (--no-strong: rotations, flips, jitter only)")
    ap.add_argument("--zoom", type=float, default=1.0, help="random rescaling of crops by 1/zoom..zoom (1 = none)")
    args = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F

    if not args.data.is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    tiles = [t for t in load(args.data) if slide_of(t[0]) in TUNE_SLIDES]
    X, Y = training_arrays(tiles, args.phases)
    channels = tuple(int(v) for v in args.channels.split(","))
    net = build_unet(channels)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.iters)
    t0, run, c = time.perf_counter(), 0.0, args.crop
    for it in range(args.iters):
        xs, ys = [], []
        for _ in range(args.batch):
            i = rng.integers(len(X))
            side = min(X[i].shape[1:])
            cs = c if args.zoom == 1 else min(side, round(c / np.exp(rng.uniform(-1, 1) * np.log(args.zoom))))
            r, q = rng.integers(0, side - cs + 1, 2)
            x, y = X[i][:, r : r + cs, q : q + cs], Y[i][:, r : r + cs, q : q + cs]
            if cs != c:  # rescale the crop to c px: nuclei look 1/zoom to zoom times their size
                x, y = zoomed(x, c, 1), zoomed(y, c, 0)
            x, y = augment(x, y, rng, args.strong)
            xs.append(x)
            ys.append(y)
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(net(torch.from_numpy(np.stack(xs))), torch.from_numpy(np.stack(ys)))
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if it else loss.item()
        if it % 100 == 0 or it == args.iters - 1:
            print(f"iter {it}: loss {run:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    net.eval()
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, channels=np.array(channels), **state_to_arrays(net))
    n = sum(p.numel() for p in net.parameters())
    print(f"wrote {args.out}: U-Net {channels}, {n} parameters, {len(tiles)} tuning tiles at {WORK_MPP} µm/px, "
          f"{args.iters} x {args.batch} crops of {c}² px, {args.threads} threads; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

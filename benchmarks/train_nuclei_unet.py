"""Train the shipped nucleus U-Net (src/napari_lnm/data/nuclei_unet.npz) used by ``foreground="cnn"``.

Run: ``python benchmarks/train_nuclei_unet.py [--data DIR] [--out PATH] [--iters N] [--threads T]``.
Uses only the tiles of the tuning slides (TUNE_SLIDES of bench_nuclei.py), downsampled 2x to the
network's 0.5 µm/px: ``--iters`` steps of ``--batch`` random ``--crop`` px crops with 90° rotations,
flips and a per-crop H/E intensity jitter (x0.8-1.2, ±0.05 OD); binary cross-entropy on two outputs,
nucleus (any expert label) and nucleus interior (farther than 1 µm from background or another
nucleus); Adam with a one-cycle learning rate.  Seeded; the same ``--threads`` on the same CPU gives
the same weights.  Saves plain float32 arrays (no pickle).  About 23 min on 2 threads of the dev VM.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nuclei import DEFAULT_DATA, MPP, TUNE_SLIDES, load, slide_of, to_20x  # noqa: E402
from train_nuclei_pixel_model import interior  # noqa: E402

from napari_lnm._atomic import atomic_path  # noqa: E402
from napari_lnm.nuclei import _stain_images  # noqa: E402
from napari_lnm.nuclei_net import UNET_PATH, WORK_MPP, build_unet, state_to_arrays  # noqa: E402


def training_arrays(tiles) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (n, 2, H, W) H/E OD and targets (n, 2, H, W) nucleus/interior of the tiles at 0.5 µm/px."""
    xs, ys = [], []
    for _name, rgb, lab in tiles:
        truth = lab[::2, ::2]
        xs.append(np.stack(_stain_images(to_20x(rgb), None)))
        ys.append(np.stack([truth > 0, interior(truth, 2 * MPP, 1.0)]))
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random 90° rotation, flip and H/E intensity jitter of one crop (C, H, W)."""
    k = rng.integers(4)
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    a = rng.uniform(0.8, 1.2, size=(2, 1, 1)).astype(np.float32)
    b = rng.uniform(-0.05, 0.05, size=(2, 1, 1)).astype(np.float32)
    return np.maximum(x * a + b, 0).copy(), y.copy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=UNET_PATH)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128, help="crop side (px at 0.5 µm/px), a multiple of 4")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--channels", default="12,24,48")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
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
    X, Y = training_arrays(tiles)
    channels = tuple(int(v) for v in args.channels.split(","))
    net = build_unet(channels)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.iters)
    t0, run, c = time.perf_counter(), 0.0, args.crop
    for it in range(args.iters):
        xs, ys = [], []
        for _ in range(args.batch):
            i = rng.integers(len(X))
            r, q = rng.integers(0, X.shape[2] - c + 1, 2)
            x, y = augment(X[i, :, r : r + c, q : q + c], Y[i, :, r : r + c, q : q + c], rng)
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

"""Train the shipped typed nucleus network (src/napari_lnm/data/nuclei_typed.npz), ``method="typed"``.

Run: ``python benchmarks/train_nuclei_typed.py [--out PATH] [--iters N] [--threads T] [--seed S]``.
Data: the training parts only (benchmarks/_nuclei_data.py splits) of nuclei-consep, nuclei-monuseg,
nuclei-dev (instances; CoNSeP also types) and nuclei-crchisto (type points only), all at 0.5 µm/px.
One 3-level U-Net on H and E (OD) with 6 output maps: nucleus logit, normalised distance to the
nucleus border (logit of d / max d per nucleus, 1 at its centre: what separates touching nuclei) and
4 type logits (NUCLEUS_TYPES order).  Losses: BCE on the nucleus map, BCE on the distance map
(soft targets), class-weighted cross-entropy on types at nucleus pixels of known type (crchisto: a
1 µm disk at each classified point).  Augmentation: 90° rotations, flips, H/E intensity jitter and
H<->E cross-talk (stain), Gaussian blur, noise, random rescaling x0.8-1.25.  Adam, one-cycle LR.
Seeded, deterministic torch on CPU: the same ``--threads`` on the same CPU gives the same bytes.
The shipped file is two stages (34 + 12 min on 1 thread of the shared dev VM):

    python benchmarks/train_nuclei_typed.py --out /tmp/stage1.npz
    python benchmarks/train_nuclei_typed.py --init /tmp/stage1.npz --iters 2000 --lr 1e-3 --seed 1 --fg-weight 2

(stage 1 sha256 0eabd768459aa39e..., stage 2 = shipped 3e506f799e0a76cb...).  ``--tune-only`` scores the
post-processing thresholds on training images (how FG_THRESHOLD 0.5 / MARKER_THRESHOLD 0.6 were chosen).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nuclei_data import Sample, load_all  # noqa: E402

from napari_lnm._atomic import atomic_path  # noqa: E402
from napari_lnm.nuclei_net import build_unet, state_to_arrays  # noqa: E402
from napari_lnm.nuclei_typed import TYPED_PATH  # noqa: E402
from napari_lnm.stain import separate  # noqa: E402

#: how often a training crop comes from each dataset (CoNSeP carries the types, so it comes most)
MIX = {"consep": 0.40, "monuseg": 0.30, "dev": 0.12, "crchisto": 0.18}
TYPE_WEIGHTS = (1.0, 1.0, 1.0, 2.0)  # epithelial, inflammatory, stromal, other (rare: 2-3 % of nuclei)


def norm_distance(labels: np.ndarray) -> np.ndarray:
    """Distance (px) of each nucleus pixel to its background or another nucleus, divided by its
    nucleus's maximum (1 at the centre, 0 outside), float32."""
    edge = np.zeros(labels.shape, bool)
    dy, dx = labels[:-1] != labels[1:], labels[:, :-1] != labels[:, 1:]
    edge[:-1] |= dy
    edge[1:] |= dy
    edge[:, :-1] |= dx
    edge[:, 1:] |= dx
    d = ndi.distance_transform_edt(~edge & (labels > 0)).astype(np.float32) + (labels > 0)
    mx = ndi.maximum(d, labels, np.arange(labels.max() + 1)) if labels.max() else np.zeros(1)
    mx = np.asarray(mx, np.float32)
    mx[0] = 1.0
    return np.where(labels > 0, d / mx[labels], 0).astype(np.float32)


def targets(s: Sample) -> np.ndarray:
    """(4, H, W) float32: nucleus, normalised distance, type index (-1 unknown), segmentation weight."""
    shape = s.rgb.shape[:2]
    if s.labels is None:  # points only: a 1 µm disk of the point's type, no nucleus/distance supervision
        t = np.full(shape, -1, np.float32)
        rr, cc = np.mgrid[-2:3, -2:3]
        disk = rr**2 + cc**2 <= 4
        for r, c, k in s.points:
            if k < 0:
                continue
            r0, c0 = int(round(r)), int(round(c))
            for dr, dc in zip(rr[disk], cc[disk]):
                if 0 <= r0 + dr < shape[0] and 0 <= c0 + dc < shape[1]:
                    t[r0 + dr, c0 + dc] = k
        z = np.zeros(shape, np.float32)
        return np.stack([z, z, t, z])
    lab = s.labels
    lut = np.full(int(lab.max()) + 1, -1, np.float32)
    for k, v in (s.types or {}).items():
        if k < lut.size:
            lut[k] = v
    return np.stack([(lab > 0).astype(np.float32), norm_distance(lab), lut[lab], np.ones(shape, np.float32)])


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random 90° rotation, flip, H/E jitter with cross-talk, blur (p 0.3) and noise (p 0.3) of a crop."""
    k = rng.integers(4)
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    a = rng.uniform(0.75, 1.25, size=2).astype(np.float32)
    b = rng.uniform(-0.05, 0.05, size=2).astype(np.float32)
    t = rng.uniform(-0.12, 0.12, size=2).astype(np.float32)
    x = np.stack([a[0] * x[0] + t[0] * x[1] + b[0], a[1] * x[1] + t[1] * x[0] + b[1]])
    if rng.random() < 0.3:
        x = ndi.gaussian_filter(x, (0, *[rng.uniform(0.3, 1.2)] * 2))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0, 0.03), x.shape).astype(np.float32)
    return np.maximum(x, 0).astype(np.float32), np.ascontiguousarray(y)


def crop(x: np.ndarray, y: np.ndarray, c: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random crop of c px, rescaled by a random factor 0.8-1.25 (smaller images: zoom in only)."""
    side = min(x.shape[1:])
    cs = min(side, int(round(c / np.exp(rng.uniform(-1, 1) * np.log(1.25)))))
    r, q = rng.integers(0, x.shape[1] - cs + 1), rng.integers(0, x.shape[2] - cs + 1)
    x, y = x[:, r:r + cs, q:q + cs], y[:, r:r + cs, q:q + cs]
    if cs != c:
        f = cs / c
        zx = [ndi.affine_transform(ch, [f, f], output_shape=(c, c), order=1, mode="nearest") for ch in x]
        zy = [ndi.affine_transform(ch, [f, f], output_shape=(c, c), order=0, mode="nearest") for ch in y]
        x, y = np.stack(zx).astype(np.float32), np.stack(zy).astype(np.float32)
    return x, y


def tune_postprocessing(path: Path, fg_levels=(0.4, 0.5, 0.6), marker_levels=(0.3, 0.4, 0.5, 0.6)) -> None:
    """Print mean AJI / F1@0.5 of the post-processing thresholds on a fixed subset of the TRAINING
    images (every 6th CoNSeP patch, every 3rd MoNuSeg and nuclei-dev tile): how the shipped
    FG_THRESHOLD / MARKER_THRESHOLD were chosen (held-out parts are never used)."""
    import torch

    from _metrics import pooled, score

    from napari_lnm.nuclei import relabel_consecutive
    from napari_lnm.nuclei_typed import instances_from_maps, load_typed, typed_maps

    torch.set_num_threads(1)
    net = load_typed(path)
    train = [s for s in load_all() if not s.held_out and s.labels is not None]
    subset = [s for s in train if s.dataset == "consep"][::6] + [s for s in train if s.dataset != "consep"][::3]
    maps = [(s, typed_maps(*separate(s.rgb), 0.5, net)) for s in subset]
    print("| fg threshold | marker threshold | " + " | ".join(f"{d} AJI / F1" for d in ("consep", "monuseg", "dev")) + " |")
    print("|---|---|---|---|---|")
    for ft in fg_levels:
        for mt in marker_levels:
            cells = []
            for d in ("consep", "monuseg", "dev"):
                sc = [score(s.labels, relabel_consecutive(instances_from_maps(m.nucleus, m.distance, ft, mt), 24, 1600))
                      for s, m in maps if s.dataset == d]
                p = pooled(sc)
                cells.append(f"{p['aji']:.3f} / {p['f1']:.3f}")
            print(f"| {ft} | {mt} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=TYPED_PATH)
    ap.add_argument("--iters", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128, help="crop side (px at 0.5 µm/px), a multiple of 4")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--channels", default="16,32,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, default=None, help="start from these weights (.npz) instead of random ones")
    ap.add_argument("--fg-weight", type=float, default=1.0, help="weight of the nucleus-map loss")
    ap.add_argument("--tune-only", action="store_true", help="only score post-processing thresholds of --out on training images")
    args = ap.parse_args(argv)
    if args.tune_only:
        tune_postprocessing(args.out)
        return 0
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    train = [s for s in load_all() if not s.held_out]
    by_set: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in MIX}
    for s in train:
        by_set[s.dataset].append((np.stack(separate(s.rgb)).astype(np.float32), targets(s)))
    names = list(MIX)
    p = np.array([MIX[k] for k in names])
    print(f"{len(train)} training images ({', '.join(f'{k} {len(v)}' for k, v in by_set.items())}); "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    channels = tuple(int(v) for v in args.channels.split(","))
    net = build_unet(channels, out_channels=6)
    if args.init is not None:  # a second stage: continue from a first stage's weights
        with np.load(args.init, allow_pickle=False) as z:
            net.load_state_dict({k: torch.from_numpy(z[k]) for k in net.state_dict()})
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.iters)
    cw = torch.tensor(TYPE_WEIGHTS)
    run = 0.0
    for it in range(args.iters):
        xs, ys = [], []
        for _ in range(args.batch):
            pool = by_set[names[rng.choice(len(names), p=p)]]
            x, y = pool[rng.integers(len(pool))]
            x, y = augment(*crop(x, y, args.crop, rng), rng)
            xs.append(x)
            ys.append(y)
        out = net(torch.from_numpy(np.stack(xs)))
        y = torch.from_numpy(np.stack(ys))
        fg, dist, typ, w = y[:, 0], y[:, 1], y[:, 2].long(), y[:, 3]
        wsum = w.sum().clamp_min(1.0)
        l_fg = (F.binary_cross_entropy_with_logits(out[:, 0], fg, reduction="none") * w).sum() / wsum
        l_d = (F.binary_cross_entropy_with_logits(out[:, 1], dist, reduction="none") * w * fg).sum() / (w * fg).sum().clamp_min(1.0)
        known = typ >= 0
        l_t = (F.cross_entropy(out[:, 2:6].permute(0, 2, 3, 1)[known], typ[known], weight=cw)
               if bool(known.any()) else out.sum() * 0)
        loss = args.fg_weight * l_fg + 2.0 * l_d + l_t
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if it else loss.item()
        if it % 100 == 0 or it == args.iters - 1:
            print(f"iter {it}: loss {run:.4f} (fg {l_fg.item():.3f} dist {l_d.item():.3f} type {l_t.item():.3f}) "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    net.eval()
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, channels=np.array(channels), out_channels=np.array(6), **state_to_arrays(net))
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]
    n = sum(q.numel() for q in net.parameters())
    print(f"wrote {args.out} (sha256 {digest}): U-Net {channels} -> 6 maps, {n} parameters, {len(train)} training "
          f"images, {args.iters} x {args.batch} crops of {args.crop}² px, {args.threads} threads; "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

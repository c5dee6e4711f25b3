"""Benchmark the subtype CNN on a synthetic cohort: held-out slide accuracy and training speed.

Prints markdown tables.  Example (CPU, one thread):
    OMP_NUM_THREADS=1 python benchmarks/bench_subtype.py --n-slides 32 --epochs 8
On a GPU machine add ``--device cuda`` (the arch timing then also covers resnet18/resnet50 at full size).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_lnm import synth
from napari_lnm.subtype import SUBTYPES, build_network, load_tile_sets, train_subtype
from napari_lnm.subtype.nets import DEFAULT_INPUT, count_parameters
from napari_lnm.subtype.train import augment_batch
from napari_lnm.tiling import TilingConfig


def time_arch(arch: str, n_tiles: int, batch: int, device: str) -> tuple[float, float]:
    """(train s per 1000 tiles, inference s per 1000 tiles) of ``arch`` at its default input, from ``n_tiles`` tiles."""
    torch.manual_seed(0)
    size = DEFAULT_INPUT[arch]
    net = build_network(arch).to(device)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    y = torch.randint(0, 4, (batch,))
    steps = max(1, n_tiles // batch)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    net.train()
    for _ in range(1):  # warm-up
        loss = torch.nn.functional.cross_entropy(net(augment_batch(x.to(device), g)), y.to(device))
        loss.backward()
        opt.step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(augment_batch(x.to(device), g)), y.to(device))
        loss.backward()
        opt.step()
    sync()
    t_train = (time.perf_counter() - t0) / (steps * batch) * 1000
    net.eval()
    with torch.no_grad():
        xf = x.to(device).permute(0, 3, 1, 2).float() / 255
        net(xf)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            net(xf)
        sync()
    t_inf = (time.perf_counter() - t0) / (steps * batch) * 1000
    return t_train, t_inf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-slides", type=int, default=32)
    ap.add_argument("--size", type=int, default=1536, help="slide side px at 0.5 µm/px")
    ap.add_argument("--tile-size", type=int, default=256, help="tile px at 20x (resized to the network input)")
    ap.add_argument("--max-tiles", type=int, default=32, help="tiles per slide")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training/split seeds")
    ap.add_argument("--arch-tiles", type=int, default=64, help="tiles timed per architecture (0 = skip)")
    ap.add_argument("--archs", nargs="+", default=["small", "resnet18"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-train", action="store_true", help="only the architecture speed table")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    out: dict = {"threads": threads, "device": args.device, "runs": []}
    if not args.no_train:
        bench_training(args, threads, out)
    if args.arch_tiles > 0:
        print(f"\nArchitecture speed at default input size (random tiles, batch 16, {args.arch_tiles} tiles timed, "
              f"device {args.device}, torch threads {threads}; incl. flip/rotation/stain augmentation):\n")
        print("| arch | parameters | input px | train s / 1000 tiles | inference s / 1000 tiles |")
        print("|---|---|---|---|---|")
        for arch in args.archs:
            tr, inf = time_arch(arch, args.arch_tiles, 16, args.device)
            n_par = count_parameters(build_network(arch))
            print(f"| {arch} | {n_par:,} | {DEFAULT_INPUT[arch]} | {tr:.1f} | {inf:.1f} |")
    print(f"\n_{platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"torch {torch.__version__}_")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def bench_training(args: argparse.Namespace, threads: int, out: dict) -> None:
    """Train the small CNN on a synthetic cohort for each seed and print accuracy / speed tables."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        csv = synth.make_cohort(Path(tmp) / "c", args.n_slides, seed=0, size=(args.size, args.size))
        t_synth = time.perf_counter() - t0
        cfg = TilingConfig(tile_size=args.tile_size, min_tissue=0.5)
        t0 = time.perf_counter()
        tiles, _ = load_tile_sets(None, csv, input_size=128, max_tiles_per_slide=args.max_tiles, tiling_config=cfg)
        t_load = time.perf_counter() - t0
        n_tiles = sum(len(a) for a in tiles.values())
        for seed in args.seeds:
            r = train_subtype(tiles, csv, None, epochs=args.epochs, batch_size=32, lr=2e-3, seed=seed,
                              val_fraction=0.25, max_tiles_per_slide=args.max_tiles, tiling_config=cfg,
                              device=args.device)
            out["runs"].append(r.to_dict())
    print(f"Synthetic cohort: {args.n_slides} slides of {args.size}x{args.size} px at 0.5 µm/px "
          f"(balanced CMS1-4; made in {t_synth:.0f} s), {n_tiles} tiles of {args.tile_size} px at 20x "
          f"(≤{args.max_tiles}/slide; read in {t_load:.0f} s) resized to 128 px; small CNN "
          f"({count_parameters(build_network('small'))} parameters), {args.epochs} epochs, batch 32, "
          f"device {args.device}, torch threads {threads}.\n")
    print("| seed | train slides / tiles | held-out slides / tiles | tile accuracy | slide accuracy (majority vote) "
          "| s per epoch | s per epoch per 1000 tiles |")
    print("|---|---|---|---|---|---|---|")
    for seed, r in zip(args.seeds, out["runs"]):
        print(f"| {seed} | {len(r['train_slides'])} / {r['n_train_tiles']} | {len(r['val_slides'])} / "
              f"{r['n_val_tiles']} | {r['tile_accuracy']:.3f} | {r['slide_accuracy']:.3f} | "
              f"{r['seconds_per_epoch']:.1f} | {r['seconds_per_epoch_per_1000_tiles']:.1f} |")
    cm = np.sum([np.array(r["confusion_slides"]) for r in out["runs"]], axis=0)
    print("\nHeld-out slide confusion, summed over seeds (rows true, columns predicted):\n")
    print("| true \\ pred | " + " | ".join(SUBTYPES) + " |")
    print("|---|" + "---|" * len(SUBTYPES))
    for c, row in zip(SUBTYPES, cm):
        print(f"| {c} | " + " | ".join(str(int(v)) for v in row) + " |")


if __name__ == "__main__":
    main()

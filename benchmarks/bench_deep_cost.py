"""Cost of the deep tile features (issue 17): wall ms per 512x512 tile of each CNN backbone at one CPU thread.

Usage: python benchmarks/bench_deep_cost.py [--size 512] [--arch resnet18 ...] [--repeats 5]

For each architecture of ``napari_lnm.backbones`` (random weights: the cost does not depend on their
values), the median wall time of ``embed`` on one tile (what the tile loop runs: one forward pass per
tile) and of one batched forward pass over 8 tiles, per tile, after a warm-up pass; whether the batched
pass gives the same bits as tile by tile; a markdown table, the machine, the date and the load average.
The big networks get fewer repeats (``--repeats`` is the most any gets).  About 3-4 minutes on one core.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from napari_lnm.backbones import (  # noqa: E402
    ARCHITECTURES,
    EMBEDDING_DIM,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_backbone,
    embed,
)

#: the most repeats per architecture: the slow ones (seconds per tile on a CPU) get fewer
MAX_REPEATS = {"resnet18": 5, "resnet50": 3, "densenet121": 3, "inception_v3": 3, "vgg16": 2}
BATCH = 8


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform.processor())."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_ms(fn, repeats: int, per: int) -> float:
    """Median wall ms of ``fn()`` over ``repeats`` calls, divided by ``per`` (tiles per call)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0 / per)
    return statistics.median(times)


def batched(net: torch.nn.Module, tiles: np.ndarray) -> np.ndarray:
    """(N, dim) float32 pooled features of all ``tiles`` in one forward pass (what ``embed`` avoids)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = ((torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0 - mean) / std).contiguous()
    with torch.inference_mode():
        return torch.flatten(F.adaptive_avg_pool2d(net.forward_features(x), 1), 1).numpy().copy()


def bench(arch: str, size: int, repeats: int) -> dict:
    """One table row: parameters, embedding width, ms/tile one at a time and in a batch of 8."""
    torch.manual_seed(0)
    net = build_backbone(arch).eval()
    tiles = np.random.default_rng(0).integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
    one = tiles[:1]
    embed(net, one)  # warm-up: first-call allocations and kernel selection
    n = max(1, min(repeats, MAX_REPEATS[arch]))
    ms1 = median_ms(lambda: embed(net, one), n, 1)
    same = np.array_equal(batched(net, tiles), embed(net, tiles))  # also the batch warm-up
    ms8 = median_ms(lambda: batched(net, tiles), max(1, n - 1), BATCH)
    return {"arch": arch, "params": sum(p.numel() for p in net.parameters()) / 1e6, "dim": EMBEDDING_DIM[arch],
            "ms1": ms1, "ms8": ms8, "same": same, "n": n}


def main() -> None:
    """Run the benchmark and print the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="tile side (px)")
    ap.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per architecture, at most")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows = [bench(a, args.size, args.repeats) for a in args.arch]
    load1 = os.getloadavg()
    print(f"{args.size}x{args.size} px RGB tiles, torch {torch.__version__}, 1 thread; "
          f"{os.cpu_count()} cores ({cpu_model()}); {datetime.date.today().isoformat()}; "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} before, "
          f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} after; {time.perf_counter() - t0:.0f} s in all\n")
    print("| arch | params (M) | embedding dim | ms/tile, batch 1 (`embed`) | ms/tile, batch 8 (one pass) "
          "| batch 8 bit-identical to batch 1 | repeats (b1 / b8) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['params']:.1f} | {r['dim']} | {r['ms1']:.0f} | {r['ms8']:.0f} | "
              f"{'yes' if r['same'] else 'no'} | {r['n']} / {max(1, r['n'] - 1)} |")


if __name__ == "__main__":
    main()

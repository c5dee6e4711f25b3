"""Deep tile features (issue 17): nested-CV AUC with and without ``deep.*``, and ABMIL vs the fused model, on a
synthetic cohort, with ResNet-18 weights made here (nothing can be downloaded).

Usage (about 22 minutes on a shared 2-core VM; every stage is cached in --work, so a rerun only cross-validates)::

    OMP_NUM_THREADS=1 nice python benchmarks/bench_deep.py [--slides 60] [--size 3072] [--max-tiles 16] \\
        [--seeds 0 1 2] [--auto-seeds ...] [--abmil-seeds ...] [--abmil auto|integrated|direct|none] \\
        [--work /tmp/bench-deep]

1. Weights (``WORK/weights``, never committed): ``resnet18-random`` is ``build_backbone("resnet18")`` after
   ``torch.manual_seed(0)``; ``resnet18-trained`` is that network trained briefly (Adam, 128-px crops, one thread)
   to tell the CMS subtype (CMS1-4, not the metastasis label) of synthetic tiles rendered from seeds far from the
   cohort's (``synth.make_synthetic_tile``) and of the real TCGA tiles of ``shared/data/crc-tiles`` (one patient
   per CMS held out); its held-out tile accuracy is printed.
2. One synthetic cohort (``synth.make_cohort``, default "nuclei" signal, a third metastatic), extracted once per
   weights (``--deep-features resnet18:...``, 512-px tiles, ``--max-tiles``, 2 workers). The hand-crafted columns
   of the two extractions are checked to be identical; the hand-crafted-only rows use them.
3. Per CV seed, the same 5 outer folds for every row (``model.cross_validate`` with that seed): a fixed, fast
   recipe (``fusion="mean", test="none", classifier="logreg"``; the deep columns reduced by a PCA fitted on each
   fold's training slides: ``deep_components`` 8, and 32 on two rows) on hand-crafted / hand-crafted + deep /
   deep only; the default ``recipe="auto", calibration="auto"`` on the same five feature sets; and ABMIL
   (``napari_lnm.mil``) as ``train --classifier abmil`` trains it (``TrainConfig(fusion="abmil", test="none",
   classifier="logreg")``: the network's bags are the deep.* columns when there are any, else every tile
   feature) on deep only (trained, random) and hand-crafted only, plus one seed of ``mil.train_mil`` called
   directly in the same folds as a cross-check; where that integration is missing, ``mil.train_mil`` in an
   outer CV over the same folds on deep only and hand-crafted + deep, which the table says.
   The oracle is ``bench_recipe``'s logistic regression on the generator's latent severity.
Prints markdown tables (weights, timings, AUC).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench_recipe import latent_severity, oracle_auc  # noqa: E402
from napari_lnm.calibration import expected_calibration_error  # noqa: E402
from napari_lnm.config import DeepFeatures, is_deep  # noqa: E402
from napari_lnm.extract import extract_cohort  # noqa: E402
from napari_lnm.features import feature_names  # noqa: E402
from napari_lnm.model import TrainConfig, cross_validate, load_feature_tables, read_cohort_csv, roc_auc  # noqa: E402
from napari_lnm.synth import SUBTYPES, make_cohort, make_synthetic_tile  # noqa: E402
from napari_lnm.tiling import TilingConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CRC_TILES = REPO.parent / "shared" / "data" / "crc-tiles"
#: synthetic training / held-out tiles of the subtype network: seeds far from any cohort slide's
#: (make_cohort draws its slide seeds from SeedSequence(cohort_seed).spawn, 32-bit values)
TILE_SEED_TRAIN, TILE_SEED_TEST = 7_000_000, 8_000_000
FIXED = dict(fusion="mean", test="none", classifier="logreg")
FIXED_NAME = "mean + none + logreg"
#: what ``train --classifier abmil`` trains (cli.train.resolve_recipe): ABMIL as a learned fusion, a Platt head
ABMIL = dict(fusion="abmil", test="none", classifier="logreg")
ABMIL_NAME = "ABMIL (`train --classifier abmil`)"
ABMIL_DIRECT = "ABMIL, `mil.train_mil` directly (its inner-CV grid, no head)"


# ------------------------------------------------------------------------------------------ weights

def _timings(work: Path) -> dict:
    p = work / "timings.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _save_timing(work: Path, key: str, value) -> None:
    t = _timings(work)
    t[key] = value
    (work / "timings.json").write_text(json.dumps(t, indent=1))


def random_weights(path: Path) -> None:
    """resnet18 as ``build_backbone`` initialises it after ``torch.manual_seed(0)``."""
    import torch

    from napari_lnm.backbones import build_backbone

    if path.exists():
        return
    torch.manual_seed(0)
    torch.save(build_backbone("resnet18").state_dict(), path)


def _real_tiles() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The crc-tiles RGB arrays, their CMS index (0-3) and patient ids."""
    from PIL import Image

    idx = pd.read_csv(CRC_TILES / "index.csv")
    ims = [np.asarray(Image.open(CRC_TILES / f"{n}.jpg").convert("RGB")) for n in idx["name"]]
    return ims, idx["cms"].map({s: i for i, s in enumerate(SUBTYPES)}).to_numpy(int), idx["patient"].to_numpy(str)


def _normalise(batch: np.ndarray):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 with the ImageNet normalisation ``backbones.embed`` applies."""
    import torch

    from napari_lnm.backbones import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(np.array(batch, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0
    return ((x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)).contiguous()


def _crop(rng: np.random.Generator, im: np.ndarray, side: int) -> np.ndarray:
    """A random side x side crop, randomly flipped and rotated by a multiple of 90 degrees."""
    r, c = rng.integers(0, im.shape[0] - side + 1), rng.integers(0, im.shape[1] - side + 1)
    out = im[r:r + side, c:c + side]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.rot90(out, int(rng.integers(4)))


def _accuracy(net, ims: list[np.ndarray], labels: np.ndarray) -> float:
    import torch

    net.eval()
    with torch.inference_mode():
        pred = [int(net(_normalise(im[None])).argmax(1)[0]) for im in ims]
    return float(np.mean(np.asarray(pred) == labels)) if len(ims) else float("nan")


def trained_weights(path: Path, steps: int, batch: int, n_syn: int, crop: int = 128, seed: int = 0) -> dict:
    """resnet18 (from the random init above) trained to tell CMS1-4 on synthetic + real tiles; info dict."""
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return json.loads(meta.read_text())
    import torch
    import torch.nn.functional as F

    from napari_lnm.backbones import build_backbone

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_backbone("resnet18")
    net.fc = torch.nn.Linear(net.embedding_dim, len(SUBTYPES))
    # synthetic tiles (256 px, 0.5 um/px), subtypes balanced, label 0/1 at random; held-out tiles from other seeds
    syn_y = np.arange(n_syn) % len(SUBTYPES)
    syn = [make_synthetic_tile(int(rng.integers(2)), SUBTYPES[k], seed=TILE_SEED_TRAIN + i, size=256)
           for i, k in enumerate(syn_y)]
    n_test = max(8, n_syn // 4)
    syn_test_y = np.arange(n_test) % len(SUBTYPES)
    syn_test = [make_synthetic_tile(int(rng.integers(2)), SUBTYPES[k], seed=TILE_SEED_TEST + i, size=256)
                for i, k in enumerate(syn_test_y)]
    real, real_y, patient = _real_tiles()
    held = {rng.choice(sorted(set(patient[real_y == k]))) for k in range(len(SUBTYPES))}  # one patient per CMS
    test_mask = np.isin(patient, sorted(held))
    real_tr = [real[i] for i in np.flatnonzero(~test_mask)]
    real_tr_y = real_y[~test_mask]
    n_real = max(1, batch // 4)  # a quarter of every batch from the (few) real training tiles
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    losses = []
    for _ in range(steps):
        i_syn = rng.integers(0, len(syn), batch - n_real)
        i_real = rng.integers(0, len(real_tr), n_real)
        x = np.stack([_crop(rng, syn[i], crop) for i in i_syn] + [_crop(rng, real_tr[i], crop) for i in i_real])
        y = torch.from_numpy(np.r_[syn_y[i_syn], real_tr_y[i_real]].astype(np.int64))
        loss = F.cross_entropy(net(_normalise(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t0
    info = {"steps": steps, "batch": batch, "crop": crop, "synthetic_train": n_syn, "real_train": len(real_tr),
            "synthetic_test": n_test, "real_test": int(test_mask.sum()), "held_out_patients": sorted(str(h) for h in held),
            "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:])),
            "acc_synthetic_test": _accuracy(net, syn_test, syn_test_y),
            "acc_real_test": _accuracy(net, [real[i] for i in np.flatnonzero(test_mask)], real_y[test_mask]),
            "train_s": train_s, "total_s": time.perf_counter() - t0}
    torch.save(net.state_dict(), path)  # the 4-class head is ignored by load_backbone
    meta.write_text(json.dumps(info, indent=1))
    return info


# ------------------------------------------------------------------------------------------ cohort

def cohort(work: Path, n: int, size: int, seed: int, fraction: float) -> Path:
    """Make the cohort once; its CSV."""
    d = work / f"cohort-{n}-{size}-s{seed}"
    csv = d / "cohort.csv"
    if not csv.exists():
        t0 = time.perf_counter()
        make_cohort(d, n, seed=seed, size=(size, size), positive_fraction=fraction)
        _save_timing(work, "synth_s", time.perf_counter() - t0)
    return csv


def extract(work: Path, csv: Path, name: str, weights: Path, max_tiles: int, workers: int) -> tuple[list, dict]:
    """Extract the cohort with the deep features of ``weights`` (skips slides already done); tables, tiling."""
    out = work / f"features-{name}"
    cfg = TilingConfig(tile_size=512, max_tiles=max_tiles, seed=0, deep=DeepFeatures.parse(f"resnet18:{weights}"))
    t0 = time.perf_counter()
    extract_cohort(csv, out, cfg, workers=workers)
    dt = time.perf_counter() - t0
    if f"extract_{name}_s" not in _timings(work) or dt > 0.5 * _timings(work)[f"extract_{name}_s"]:
        _save_timing(work, f"extract_{name}_s", dt)  # the first (real) run, not a rerun that skipped every slide
    tables, tiling = load_feature_tables(read_cohort_csv(csv), out)
    return tables, tiling


# ------------------------------------------------------------------------------------------ CV rows

def cv_fused(tables, y, names, tiling, seed: int, **kw) -> dict:
    """One cross_validate run: AUC, ECE, seconds, its fold vector."""
    t0 = time.perf_counter()
    rep = cross_validate(tables, y, config=TrainConfig(seed=seed, tiling=tiling, n_bootstrap=200, **kw),
                         feature_names=names)
    return {"auc": rep.auc, "ece": rep.ece, "s": time.perf_counter() - t0, "fold": rep.fold,
            "recipes": rep.recipe_counts() if kw.get("recipe") == "auto" else None}


def cv_abmil_direct(tables, y, names, fold: np.ndarray, seed: int) -> dict:
    """ABMIL (``mil.train_mil``: setting by its inner CV, refit) in the outer folds ``fold``."""
    from napari_lnm.mil import bags_from_tables, train_mil

    t0 = time.perf_counter()
    bags = bags_from_tables(tables, names)
    p = np.full(len(y), np.nan)
    chosen = []
    for k in range(int(fold.max()) + 1):
        tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        m, info = train_mil([bags[i] for i in tr], y[tr], names, seed=seed)
        p[te] = m.predict_proba([bags[i] for i in te])
        chosen.append(info["chosen"])
    return {"auc": roc_auc(y, p), "ece": expected_calibration_error(y, p), "s": time.perf_counter() - t0,
            "recipes": pd.Series(chosen).value_counts().to_dict()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=60)
    ap.add_argument("--size", type=int, default=3072, help="slide side (px at 0.5 um/px)")
    ap.add_argument("--positive-fraction", type=float, default=1 / 3)
    ap.add_argument("--cohort-seed", type=int, default=17)
    ap.add_argument("--max-tiles", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--auto-seeds", type=int, nargs="*", default=None,
                    help="CV seeds of the recipe='auto' rows (default: --seeds; none given: skip them)")
    ap.add_argument("--abmil-seeds", type=int, nargs="*", default=None,
                    help="CV seeds of the ABMIL rows (default: --seeds; each costs ~40 s a seed here)")
    ap.add_argument("--abmil", choices=("auto", "integrated", "direct", "none"), default="auto")
    ap.add_argument("--no-direct-check", dest="direct_check", action="store_false",
                    help="skip the one-seed mil.train_mil cross-check of the integrated ABMIL")
    ap.add_argument("--steps", type=int, default=200, help="Adam steps of the trained weights")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--syn-tiles", type=int, default=480, help="synthetic training tiles of the trained weights")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-deep"))
    args = ap.parse_args(argv)
    work = args.work
    (work / "weights").mkdir(parents=True, exist_ok=True)
    load0, t_all = os.getloadavg(), time.perf_counter()
    say = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    w_rand, w_train = work / "weights" / "resnet18-random.pt", work / "weights" / "resnet18-trained.pt"
    random_weights(w_rand)
    say("training resnet18 on CMS subtypes ...")
    info = trained_weights(w_train, args.steps, args.batch, args.syn_tiles)
    say(f"trained weights: {info}")

    csv = cohort(work, args.slides, args.size, args.cohort_seed, args.positive_fraction)
    co = read_cohort_csv(csv)
    y = co["label"].to_numpy(int)
    labels, sev = latent_severity(len(y), args.cohort_seed, args.positive_fraction)
    if not np.array_equal(labels, y):
        raise SystemExit("the cohort's labels are not those the oracle replays")
    say("extracting (random weights) ...")
    tab_r, tiling_r = extract(work, csv, "random", w_rand, args.max_tiles, args.workers)
    say("extracting (trained weights) ...")
    tab_t, tiling_t = extract(work, csv, "trained", w_train, args.max_tiles, args.workers)
    hand = feature_names()
    deep = [c for c in tab_r[0].columns if is_deep(c)]
    same = all(a[hand].equals(b[hand]) and a[["x", "y"]].equals(b[["x", "y"]]) for a, b in zip(tab_r, tab_t))
    tiling_h = {k: v for k, v in (tiling_r or {}).items() if k != "deep"}
    ntiles = [len(t) for t in tab_r]

    rows = [  # label, features, tables, names, tiling
        ("hand-crafted only", tab_r, hand, tiling_h),
        ("hand-crafted + deep (random)", tab_r, hand + deep, tiling_r),
        ("hand-crafted + deep (trained)", tab_t, hand + deep, tiling_t),
        ("deep only (random)", tab_r, deep, tiling_r),
        ("deep only (trained)", tab_t, deep, tiling_t),
    ]
    results: list[tuple[str, str, list[dict]]] = []
    folds: dict[int, np.ndarray] = {}

    def fused(label: str, tabs, names, tiling, seeds, clf: str, **kw) -> None:
        runs = []
        for s in seeds:
            r = cv_fused(tabs, y, names, tiling, s, **kw)
            folds.setdefault(s, r["fold"])
            if not np.array_equal(folds[s], r["fold"]):
                raise SystemExit(f"seed {s}: {label} [{clf}] ran on other folds")
            runs.append(r)
            say(f"{label} [{clf}] seed {s}: AUC {r['auc']:.3f} ECE {r['ece']:.3f} ({r['s']:.0f} s)"
                + (f" {r['recipes']}" if r["recipes"] else ""))
        if runs:
            results.append((label, clf, runs))

    for label, tabs, names, tiling in rows:
        fused(label, tabs, names, tiling, args.seeds, FIXED_NAME, **FIXED)
    for label, tabs, names, tiling in (rows[2], rows[3], rows[4]):  # the PCA's width: 32 components instead of 8
        fused(label, tabs, names, tiling, args.seeds, f"{FIXED_NAME}, 32 deep PCs", deep_components=32, **FIXED)
    auto_seeds = args.seeds if args.auto_seeds is None else args.auto_seeds
    for label, tabs, names, tiling in rows:
        fused(label, tabs, names, tiling, auto_seeds, "default: recipe auto + calibration auto",
              recipe="auto", calibration="auto")
    how = "integrated" if args.abmil == "auto" else args.abmil  # auto: the integration, falling back to direct
    abmil_seeds = args.seeds if args.abmil_seeds is None else args.abmil_seeds
    # integrated ABMIL (train --classifier abmil) bags the deep.* columns when there are any, else every tile
    # feature: so deep only (trained, random) and hand-crafted only; directly, hand-crafted + deep as well
    abmil_rows = (rows[4], rows[3], rows[0]) if how == "integrated" else (rows[4], rows[3], rows[2])
    for label, tabs, names, tiling in (abmil_rows if how != "none" else ()):
        runs = []
        for s in abmil_seeds:
            if how == "integrated":
                try:
                    r = cv_fused(tabs, y, names, tiling, s, **ABMIL)
                except Exception as exc:  # noqa: BLE001 - no (or an unfinished) integration: fall back, and say so
                    if args.abmil == "integrated" or runs or results[-1][1].startswith("ABMIL"):
                        raise
                    say(f"train --classifier abmil ({ABMIL}) failed ({type(exc).__name__}: {exc}); "
                        f"mil.train_mil instead")
                    how = "direct"
            if how == "direct":
                r = cv_abmil_direct(tabs, y, names, folds[s], s)
            runs.append(r)
            say(f"{label} ABMIL ({how}) seed {s}: AUC {r['auc']:.3f} ECE {r['ece']:.3f} ({r['s']:.0f} s) "
                f"{r.get('recipes') or ''}")
        results.append((label, ABMIL_NAME if how == "integrated" else ABMIL_DIRECT, runs))
    if how == "integrated" and abmil_seeds and args.direct_check:
        # the same network outside the bundle: mil.train_mil in the same folds (the bundle's Platt head is monotone)
        s = abmil_seeds[0]
        r = cv_abmil_direct(tab_t, y, deep, folds[s], s)
        say(f"deep only (trained) ABMIL (direct) seed {s}: AUC {r['auc']:.3f} ECE {r['ece']:.3f} ({r['s']:.0f} s)")
        results.append(("deep only (trained)", ABMIL_DIRECT, [r]))

    oracle = [oracle_auc(y, sev, s) for s in args.seeds]
    tm = _timings(work)
    load1 = os.getloadavg()
    print(f"\n{datetime.date.today().isoformat()}; {os.cpu_count()} cores, load average {load0[0]:.2f} "
          f"{load0[1]:.2f} {load0[2]:.2f} at the start, {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} at the end; "
          f"this run {time.perf_counter() - t_all:.0f} s\n")
    print(f"Weights: resnet18-random (torch.manual_seed(0)); resnet18-trained: {info['steps']} Adam steps of "
          f"{info['batch']} {info['crop']}-px crops (CMS1-4 of {info['synthetic_train']} synthetic + "
          f"{info['real_train']} real tiles), {info['train_s']:.0f} s; loss {info['loss_first10']:.2f} -> "
          f"{info['loss_last10']:.2f}; held-out CMS accuracy {info['acc_synthetic_test']:.2f} on "
          f"{info['synthetic_test']} synthetic tiles, {info['acc_real_test']:.2f} on {info['real_test']} real tiles "
          f"of {len(info['held_out_patients'])} held-out patients (chance 0.25)\n")
    print(f"Cohort: {len(y)} synthetic slides ({y.sum()} metastatic) of {args.size}² px, seed {args.cohort_seed}; "
          f"{int(np.median(ntiles))} tiles/slide (min {min(ntiles)}) of 512 px; {len(hand)} hand-crafted + "
          f"{len(deep)} deep columns; hand-crafted columns identical in both extractions: {'yes' if same else 'NO'}; "
          f"synth {tm.get('synth_s', float('nan')):.0f} s, extraction with {args.workers} workers: random "
          f"{tm.get('extract_random_s', float('nan')):.0f} s, trained {tm.get('extract_trained_s', float('nan')):.0f} s "
          f"({sum(ntiles)} tiles each); oracle AUC (latent severity) {np.mean(oracle):.3f} "
          f"({min(oracle):.3f}-{max(oracle):.3f})\n")
    print("| features | classifier / recipe | CV seeds | AUC (mean) | spread (min-max) | ECE (mean) | CV s per seed |")
    print("|---|---|---|---|---|---|---|")
    for label, clf, runs in results:
        a = [r["auc"] for r in runs]
        print(f"| {label} | {clf} | {len(runs)} | {np.mean(a):.3f} | {min(a):.3f}-{max(a):.3f} | "
              f"{np.mean([r['ece'] for r in runs]):.3f} | {np.mean([r['s'] for r in runs]):.0f} |")
    print(f"| oracle: latent severity | logistic regression | {len(oracle)} | {np.mean(oracle):.3f} | "
          f"{min(oracle):.3f}-{max(oracle):.3f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

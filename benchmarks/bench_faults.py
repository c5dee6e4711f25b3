"""Fault injection: kill workers or the main process at random points of an extraction and a batch prediction.

Usage: python benchmarks/bench_faults.py [--runs 10] [--slides 8] [--work /tmp/bench-faults] [--seed 0]

Makes an 8-slide synthetic cohort and a model, computes clean reference outputs, then, ``--runs``
times for each job (``napari-lnm extract --cohort ... --workers 2`` and
``napari-lnm predict --cohort ... --workers 2``): starts the job, waits a random time, and injects
one fault at random (SIGKILL of a worker process, SIGKILL of the main process, SIGTERM or SIGINT of
the main process); then checks that no process of the job is left 5 s later, resumes the job until
it finishes, and compares every output with the reference (feature tables: every value bit for bit;
predictions: probability and tile table).  Prints a table: runs, complete and bit-identical,
processes left behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

CLI = [sys.executable, "-c", "import sys; from napari_lnm.cli import main; sys.exit(main())"]
FAULTS = ("kill worker", "kill main", "SIGTERM main", "SIGINT main")


def digest_features(folder: Path) -> dict[str, str]:
    """slide id -> SHA-256 of its feature Parquet's data (all columns)."""
    import pandas as pd

    out = {}
    for p in sorted(folder.glob("*.parquet")):
        df = pd.read_parquet(p)
        out[p.stem] = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()
    return out


def digest_predictions(folder: Path) -> dict[str, str]:
    """slide folder -> SHA-256 of (probability, tile table) of each finished prediction."""
    import pandas as pd

    out = {}
    for rj in sorted(folder.glob("*/result.json")):
        prob = json.loads(rj.read_text())["probability"]
        tiles = pd.read_parquet(rj.parent / "tiles.parquet")
        h = hashlib.sha256(repr(prob).encode())
        h.update(pd.util.hash_pandas_object(tiles, index=False).to_numpy().tobytes())
        out[rj.parent.name] = h.hexdigest()
    return out


def job_processes(proc: subprocess.Popen) -> list[psutil.Process]:
    """The job's main process and all its descendants that are alive."""
    try:
        main = psutil.Process(proc.pid)
        return [main, *main.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def run_with_fault(cmd: list[str], rng: random.Random, max_wait: float) -> tuple[str, int, int]:
    """Start ``cmd``, inject one random fault after a random delay; (fault, exit code, processes left after 5 s)."""
    # a background shell starts its jobs with SIGINT ignored: give the job a terminal user's default
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(rng.uniform(1.0, max_wait))
    fault = rng.choice(FAULTS)
    seen = job_processes(proc)
    workers = [p for p in seen[1:] if "popen_loky" in " ".join(p.cmdline() or [])] if seen else []
    if proc.poll() is not None:
        fault = "none (finished first)"
    elif fault == "kill worker" and workers:
        rng.choice(workers).kill()
    elif fault == "kill worker":
        fault = "none (no worker yet)"
    else:
        proc.send_signal({"kill main": signal.SIGKILL, "SIGTERM main": signal.SIGTERM,
                          "SIGINT main": signal.SIGINT}[fault])
    try:
        rc = proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    time.sleep(5.0)
    left = alive(seen)
    for p in left:
        p.kill()
    return fault, rc, len(left)


def resume(cmd: list[str]) -> int:
    """Run ``cmd`` until it exits 0 (at most 3 times: a killed worker fails only its own slide)."""
    rc = 1
    for _ in range(3):
        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        if rc == 0:
            break
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-faults"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    csv = work / "cohort" / "cohort.csv"
    if not csv.exists():
        from napari_lnm.synth import make_cohort

        make_cohort(work / "cohort", n_slides=args.slides, seed=args.seed, size=(1536, 1536))
    common = ["--workers", "2", "--tile-size", "256"]
    ref_feats = work / "ref-features"
    if not ref_feats.exists():
        subprocess.run(CLI + ["extract", "--cohort", str(csv), "--out", str(ref_feats), *common], check=True)
    model = work / "model"
    if not (model / "bundle.json").exists():  # the model only has to predict: no cross-validation
        from napari_lnm.model import TrainConfig, load_feature_tables, read_cohort_csv, train_model

        cohort = read_cohort_csv(csv)
        tables, tiling = load_feature_tables(cohort, ref_feats)
        train_model(tables, cohort["label"].to_numpy(), TrainConfig(tiling=tiling)).save(model)
    ref_pred = work / "ref-predict"
    if not (ref_pred / "summary.csv").exists():
        subprocess.run(CLI + ["predict", "--cohort", str(csv), "--model", str(model), "--out", str(ref_pred),
                              "--workers", "2", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    want = {"extract": digest_features(ref_feats), "predict": digest_predictions(ref_pred)}
    rng = random.Random(args.seed)
    rows = []
    for job in ("extract", "predict"):
        for i in range(args.runs):
            out = work / f"{job}-{i}"
            if out.exists():
                shutil.rmtree(out)
            if job == "extract":
                cmd = CLI + ["extract", "--cohort", str(csv), "--out", str(out), *common]
            else:
                cmd = CLI + ["predict", "--cohort", str(csv), "--model", str(model), "--out", str(out),
                             "--workers", "2", "--quiet"]
            fault, rc, left = run_with_fault(cmd, rng, max_wait=8.0)
            rc2 = resume(cmd)
            got = digest_features(out) if job == "extract" else digest_predictions(out)
            same = rc2 == 0 and got == want[job]
            rows.append((job, i, fault, rc, left, rc2, same))
            print(f"{job} run {i}: {fault}, exit {rc}, {left} process(es) left, resume exit {rc2}, "
                  f"{'identical' if same else 'DIFFERENT'}", file=sys.stderr, flush=True)
    print(f"\nFault injection, {args.slides}-slide synthetic cohort, 2 workers, seed {args.seed} "
          f"({os.cpu_count()} CPUs)\n")
    print("| job | runs | faults (worker kill / main kill / SIGTERM / SIGINT / none) | complete and bit-identical "
          "| runs leaving processes |")
    print("|---|---|---|---|---|")
    for job in ("extract", "predict"):
        r = [x for x in rows if x[0] == job]
        kinds = [sum(1 for x in r if x[2] == f) for f in FAULTS] + [sum(1 for x in r if x[2].startswith("none"))]
        print(f"| {job} | {len(r)} | {' / '.join(map(str, kinds))} | {sum(x[6] for x in r)} | "
              f"{sum(1 for x in r if x[4])} |")
    ok = all(x[6] and not x[4] for x in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

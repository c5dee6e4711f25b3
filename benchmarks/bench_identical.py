"""Behaviour check for refactors: feature tables, bundle and predictions of this checkout vs a git ref.

Usage: python benchmarks/bench_identical.py [--ref origin/main] [--work /tmp/bench-identical] [--base-src DIR]
       [--new-src DIR]

Makes one small synthetic cohort (6 slides), then runs the same job with each source tree
(``--ref`` checked out into a git worktree, or ``--base-src``; and this checkout's ``src``) in a
fresh process: extract the cohort in-process and on a 2-process pool, train the default model,
predict the shipped CMU-1 sample with 1 and 2 workers keeping images, and build the widget's
layer data (stitched labels, graph segments, key-tile rectangles).  Prints a table of SHA-256
digests per output and "identical" when every digest agrees.  Fields that legitimately differ
(timings, package version, absolute paths of the work folders, the slide file's identity) are left out of the digests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JOB = r'''
import hashlib, json, os, sys
from pathlib import Path
import numpy as np, pandas as pd, pyarrow.parquet as pq

work, cohort_csv, out_json = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
import napari_lnm
from napari_lnm.tiling import TilingConfig
from napari_lnm.extract import extract_cohort
from napari_lnm.model import ModelBundle, TrainConfig, train_model, load_feature_tables
from napari_lnm.pipeline import predict_slide

# run-specific fields, and provenance fields newer than some refs (the slide file's identity and whether
# --mpp was forced: resume keys)
VOLATILE = {"package_version", "timings", "slide_path", "path", "directory", "csv", "slide_file", "mpp_forced"}

def h(b):
    return hashlib.sha256(b).hexdigest()[:16]

def clean(o):
    if isinstance(o, dict):
        return {k: clean(v) for k, v in sorted(o.items()) if k not in VOLATILE}
    if isinstance(o, list):
        return [clean(v) for v in o]
    return o

def frame_digest(df):
    df = df.reset_index(drop=True)
    parts = [json.dumps(list(map(str, df.columns))).encode(), json.dumps([str(t) for t in df.dtypes]).encode()]
    for c in df.columns:
        v = df[c].to_numpy()
        parts.append(v.astype(np.float64).tobytes() if v.dtype.kind in "fiub" else "\x00".join(map(str, v)).encode())
    return h(b"|".join(parts))

digests = {}
cohort = pd.read_csv(cohort_csv, dtype=str)
cohort["path"] = [str(cohort_csv.parent / p) for p in cohort["path"]]
for workers in (1, 2):
    feats = work / f"features-w{workers}"
    extract_cohort(cohort, feats, TilingConfig(), workers=workers)
    for sid in cohort["slide_id"]:
        t = pq.read_table(feats / f"{sid}.parquet")
        meta = json.loads(t.schema.metadata[b"napari_lnm"])
        digests[f"features {sid} (workers={workers})"] = frame_digest(t.to_pandas())
        digests[f"provenance {sid} (workers={workers})"] = h(json.dumps(clean(meta), sort_keys=True).encode())
tables, tiling = load_feature_tables(cohort, work / "features-w1")
labels = cohort["label"].astype(int).to_numpy()
bundle = train_model(tables, labels, TrainConfig(tiling=tiling, n_bootstrap=200))
bdir = work / "bundle"
bundle.save(bdir)
for f in sorted(bdir.iterdir()):
    if f.suffix == ".json":
        digests[f"bundle {f.name}"] = h(json.dumps(clean(json.loads(f.read_text())), sort_keys=True).encode())
    elif f.is_file():
        digests[f"bundle {f.name}"] = h(f.read_bytes())
sample = Path(napari_lnm.__file__).parent / "data" / "cmu_small_region.svs"
loaded = ModelBundle.load(bdir)
preds = {}
for workers in (1, 2):
    p = predict_slide(sample, loaded, keep_images=True, workers=workers)
    preds[workers] = p
    d = clean(json.loads(p.to_json()))
    d.get("model", {}).pop("path", None)
    (work / f"prediction-w{workers}.json").write_text(json.dumps(d, sort_keys=True, indent=1))
    digests[f"prediction json (workers={workers})"] = h(json.dumps(d, sort_keys=True).encode())
    digests[f"prediction tiles (workers={workers})"] = frame_digest(p.tiles)
    lab = b"".join(np.ascontiguousarray(a.labels).tobytes() for a in p.analyses)
    he = b"".join(np.ascontiguousarray(a.h).tobytes() + np.ascontiguousarray(a.e).tobytes() for a in p.analyses)
    digests[f"prediction labels (workers={workers})"] = h(lab)
    digests[f"prediction H, E (workers={workers})"] = h(he)
    seg = b"".join(np.asarray(v, float).tobytes() + np.asarray(d_, float).tobytes() for v, d_ in p.graph_segments)
    digests[f"prediction graph segments (workers={workers})"] = h(seg)
from napari_lnm._widgets._result import build_layer_data
p = preds[1]
data = build_layer_data(p, loaded, float(p.mpp), float(p.tiling["mpp"]))
digests["widget H, E, nuclei mosaics"] = h(b"".join(np.ascontiguousarray(a).tobytes()
                                             for a in (data.mosaic.h, data.mosaic.e, data.mosaic.labels)))
digests["widget voronoi, delaunay vectors"] = h(data.voronoi.tobytes() + data.delaunay.tobytes())
digests["widget key tiles"] = frame_digest(data.key_tiles)
digests["widget chart"] = h(json.dumps(data.top_features).encode())
out_json.write_text(json.dumps(digests, indent=1))
'''


def run_job(src: Path, work: Path, cohort_csv: Path) -> dict:
    """Run JOB with ``src`` first on the import path; returns its digests."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "digests.json"
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", JOB, str(work), str(cohort_csv), str(out)], env=env, check=True,
                   cwd=str(work))
    return json.loads(out.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="HEAD~1", help="git ref of the previous main (default HEAD~1)")
    ap.add_argument("--base-src", type=Path, default=None, help="use this src folder instead of --ref")
    ap.add_argument("--new-src", type=Path, default=ROOT / "src", help="the src folder to check (default: this checkout)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-identical")
    args = ap.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base_src = args.base_src
    if base_src is None:
        tree = work / "base-tree"
        if tree.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), args.ref],
                       check=True, capture_output=True)
        base_src = tree / "src"
    sys.path.insert(0, str(ROOT / "src"))
    from napari_lnm.synth import make_cohort

    cohort_csv = work / "cohort" / "cohort.csv"
    if not cohort_csv.exists():
        make_cohort(work / "cohort", n_slides=6, seed=3, size=(1536, 1536), positive_fraction=0.5)
    import shutil

    for name in ("base", "new"):
        if (work / name).exists():
            shutil.rmtree(work / name)
    base = run_job(base_src, work / "base", cohort_csv)
    new = run_job(args.new_src, work / "new", cohort_csv)
    keys = list(dict.fromkeys([*base, *new]))
    print(f"| output | {args.ref if args.base_src is None else 'base'} | this checkout | same |")
    print("|---|---|---|---|")
    same_all = True
    for k in keys:
        a, b = base.get(k, "-"), new.get(k, "-")
        same = a == b or a == "-"  # outputs the previous code could not produce are not compared
        same_all &= same
        print(f"| {k} | {a} | {b} | {'yes' if a == b else ('new only' if a == '-' else 'NO')} |")
    for w in (1, 2):  # show what differs in the prediction's JSON, line by line
        a, b = (work / n / f"prediction-w{w}.json" for n in ("base", "new"))
        if a.exists() and b.exists() and a.read_text() != b.read_text():
            import difflib

            diff = [ln for ln in difflib.unified_diff(a.read_text().splitlines(), b.read_text().splitlines(),
                                                       lineterm="", n=0) if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
            print(f"\nprediction json (workers={w}) differs in {len(diff) // 2} line(s):")
            print("\n".join(diff[:20]))
    print("identical" if same_all else "DIFFERENT")
    return 0 if same_all else 1


if __name__ == "__main__":
    sys.exit(main())

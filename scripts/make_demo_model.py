"""Regenerate the demo model bundle shipped in ``src/napari_lnm/data/demo_model``.

The napari *Analyse slide* widget offers this bundle by default so a pathologist
can try the plugin without training first. It is trained exactly like
``napari-lnm demo`` (synthetic cohort -> features -> nested CV + XGBoost), with
more slides, and is deterministic for a given seed::

    .venv/bin/python scripts/make_demo_model.py [--n-slides 48] [--seed 0]

The bundle is data (XGBoost UBJ + JSON), never pickle. It was trained on
synthetic slides: it demonstrates the pipeline and is not a diagnostic model.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from napari_lnm._atomic import atomic_dir
from napari_lnm.cli.demo import run_demo

TARGET = Path(__file__).resolve().parents[1] / "src" / "napari_lnm" / "data" / "demo_model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-slides", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lnm-demo-model-") as tmp:
        summary = run_demo(Path(tmp), n_slides=args.n_slides, seed=args.seed, workers=args.workers)
        with atomic_dir(TARGET) as out:
            for f in (Path(tmp) / "model").iterdir():
                if f.is_file():
                    shutil.copy2(f, out / f.name)
    print(f"demo model written to {TARGET}: {summary.get('cv_auc', summary)}")


if __name__ == "__main__":
    main()

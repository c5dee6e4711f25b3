"""Regenerate the demo model bundle shipped in ``src/napari_lnm/data/demo_model``.

The napari *Analyse slide* widget offers this bundle by default so a pathologist
can try the plugin without training first. Its synthetic cohort and features are
made exactly like ``napari-lnm demo`` (with more slides); the model is then
trained as ``napari-lnm train`` trains by default: recipe chosen by inner CV in
every outer fold, Platt-calibrated probabilities, operating points from the
out-of-fold probabilities. The bundle is flagged ``config["demo"]`` so that
``model.evidence_text`` says it is a demo model. Deterministic for a given seed::

    .venv/bin/python scripts/make_demo_model.py [--n-slides 48] [--seed 0]

The bundle is data (XGBoost UBJ + JSON), never pickle. It was trained on
synthetic slides: it demonstrates the pipeline and is not a diagnostic model.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from napari_lnm.cli.demo import run_demo
from napari_lnm.extract import read_cohort
from napari_lnm.model import ModelBundle, TrainConfig, cross_validate, load_feature_tables, train_model

TARGET = Path(__file__).resolve().parents[1] / "src" / "napari_lnm" / "data" / "demo_model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-slides", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lnm-demo-model-") as tmp:
        tmp = Path(tmp)
        run_demo(tmp, n_slides=args.n_slides, seed=args.seed, workers=args.workers)
        first = ModelBundle.load(tmp / "model")
        cohort = read_cohort(tmp / "cohort" / "cohort.csv")
        tables, _ = load_feature_tables(cohort, tmp / "features")
        y = cohort["label"].to_numpy(dtype=int)
        groups = cohort["patient_id"].astype(str).to_numpy() if "patient_id" in cohort.columns else None
        cfg = TrainConfig(cv=int(first.config["cv"]), seed=args.seed, n_bootstrap=1000, tiling=first.config["tiling"],
                          recipe="auto", calibration="auto")
        report = cross_validate(tables, y, groups=groups, config=cfg, slide_ids=list(cohort["slide_id"]))
        bundle = train_model(tables, y, cfg, groups=groups)
        bundle.config["demo"] = True
        bundle.cv_report = report
        bundle.save(TARGET)
    print(f"demo model written to {TARGET}: {report.summary()}; recipe {bundle.config['recipe']}; "
          f"{int(np.sum(y))} of {len(y)} slides metastatic")


if __name__ == "__main__":
    main()

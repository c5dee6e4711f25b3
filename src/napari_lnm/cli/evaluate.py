"""``napari-lnm evaluate``: apply a trained model bundle to an external cohort's features; AUC, ROC, per-slide CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def add_parser(subparsers) -> None:
    """Register the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model bundle on an external cohort (ROC-AUC with CI, ROC PNG, probabilities CSV)",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("features_dir", metavar="FEATURES_DIR", help="folder of <slide_id>.parquet feature tables")
    p.add_argument("--cohort", required=True, help="cohort CSV: slide_id,path,label[,subtype],...")
    p.add_argument("--out", default="evaluation",
                   help="output folder: new, empty or an earlier evaluation (default ./evaluation)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def evaluate_cohort(bundle, cohort: pd.DataFrame, tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-slide probabilities (routing by the cohort's ``subtype`` column when the bundle has subtype models)."""
    clinical_cols = list(bundle.clinical.columns) if bundle.clinical else []
    clin = cohort[[c for c in clinical_cols if c in cohort.columns]].reset_index(drop=True) if clinical_cols else None
    subtypes = cohort["subtype"].tolist() if "subtype" in cohort.columns else [None] * len(tables)
    probs, used = np.empty(len(tables)), []
    for i, (t, st) in enumerate(zip(tables, subtypes)):
        m, name = bundle.for_subtype(None if st is None or pd.isna(st) else str(st))
        probs[i] = m.predict_proba([t], None if clin is None else clin.iloc[[i]])[0]
        used.append(name)
    out = pd.DataFrame({"slide_id": cohort["slide_id"].astype(str).to_numpy(), "probability": probs,
                        "model": used})
    if "label" in cohort.columns:
        out.insert(1, "label", cohort["label"].to_numpy())
    return out


def external_calibration(bundle, y: np.ndarray, p: np.ndarray) -> str:
    """Brier score and calibration error on the external cohort, and each CV operating point's sensitivity and
    specificity there, one line each."""
    from napari_lnm.calibration import brier_score, confusion_at, expected_calibration_error

    lines = [f"Brier {brier_score(y, p):.3f}, expected calibration error {expected_calibration_error(y, p):.3f}"]
    for key, label in (("rule_out", "rule-out"), ("rule_in", "rule-in")):
        pt = (bundle.operating_points or {}).get(key)
        if pt:
            c = confusion_at(y, p, pt["threshold"])
            lines.append(f"{label} threshold {pt['threshold']:.3f} (from the CV): sensitivity {c['sensitivity']:.2f} "
                         f"(CV {pt['sensitivity']:.2f}), specificity {c['specificity']:.2f} (CV {pt['specificity']:.2f})")
    return "\n".join(lines)


def tiling_mismatch(model_tiling: dict | None, features_tiling: dict | None) -> str:
    """'' if the features were made with the model's tiling (magnification, tile size, segmentation, minimum
    tissue, overlap), else what differs, each with both values."""
    from napari_lnm.tiling import TilingConfig

    if not model_tiling or not features_tiling:
        return ""  # features or model without provenance: nothing to compare
    diffs = []
    for key, unit in (("magnification", "x"), ("tile_size", " px tiles")):
        a, b = model_tiling.get(key), features_tiling.get(key)
        if a is not None and b is not None and float(a) != float(b):
            diffs.append(f"{float(b):g}{unit} (the model: {float(a):g}{unit})")
    # a setting the record lacks predates it and was the default, as prediction also assumes
    default = {k: TilingConfig.__dataclass_fields__[k].default for k in ("segmentation", "min_tissue", "overlap")}
    a, b = (str(t.get("segmentation") or default["segmentation"]) for t in (model_tiling, features_tiling))
    if a != b:
        diffs.append(f"segmentation {b!r} (the model: {a!r})")
    for key, label in (("min_tissue", "minimum tissue fraction"), ("overlap", "overlap")):
        a, b = (float(default[key] if t.get(key) is None else t[key]) for t in (model_tiling, features_tiling))
        if a != b:
            diffs.append(f"{label} {b:g} (the model: {a:g})")
    a, b = (_deep_text(t.get("deep")) for t in (model_tiling, features_tiling))
    if a != b:  # embeddings of other weights have the same columns but another meaning
        diffs.append(f"deep features {b} (the model: {a})")
    return ", ".join(diffs)


def _deep_text(deep: dict | None) -> str:
    """'none' or '<arch> weights sha256 <first 12 hex>' of a recorded deep-feature network."""
    if not isinstance(deep, dict):
        return "none"
    return f"{deep.get('arch')} weights sha256 {str(deep.get('sha256'))[:12]}"


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    from napari_lnm._atomic import atomic_dir
    from napari_lnm.calibration import save_reliability_png
    from napari_lnm.model import (ModelBundle, bootstrap_auc_ci, load_feature_tables, read_cohort_csv,
                                  save_roc_png)

    from napari_lnm.errors import CohortError, UserError
    from napari_lnm.outdir import EVALUATION, MARKER, check_out_dir, marker_text

    out = check_out_dir(args.out, EVALUATION)
    bundle = ModelBundle.load(args.model_dir)
    cohort = read_cohort_csv(args.cohort)
    tables, tiling = load_feature_tables(cohort, args.features_dir)
    mismatch = tiling_mismatch(bundle.config.get("tiling"), tiling)
    if mismatch:
        raise CohortError(f"{args.features_dir}: features were extracted with {mismatch}; re-extract them with "
                          f"the model's settings")
    if bundle.clinical is not None:
        absent = [c for c in bundle.clinical.columns if c not in cohort.columns]
        if absent:
            print(f"warning: clinical column(s) {', '.join(absent)} not in {args.cohort}; treated as missing")
    res = evaluate_cohort(bundle, cohort, tables)
    summary = f"{len(res)} slides"
    auc = None
    if "label" in res.columns and res["label"].nunique() == 2:
        y = res["label"].astype(int).to_numpy()
        auc, lo, hi = bootstrap_auc_ci(y, res["probability"].to_numpy(), args.bootstrap, args.seed)
        summary = f"external ROC-AUC {auc:.3f} (95% CI {lo:.3f}-{hi:.3f}), {len(y)} slides ({int(y.sum())} metastatic)"
        summary += "\n" + external_calibration(bundle, y, res["probability"].to_numpy())
    try:
        with atomic_dir(out) as tmp:
            tmp = Path(tmp)
            res.to_csv(tmp / "probabilities.csv", index=False, float_format="%.6g")
            if auc is not None:
                save_roc_png(tmp / "roc.png", {f"external (AUC {auc:.2f})": (y, res["probability"].to_numpy())},
                             title=f"{Path(args.model_dir).name} on {Path(args.cohort).name}")
                save_reliability_png(tmp / "reliability.png", y, res["probability"].to_numpy(),
                                     title=f"{Path(args.model_dir).name} on {Path(args.cohort).name}")
            (tmp / "summary.txt").write_text(summary + "\n", encoding="utf-8")
            (tmp / MARKER).write_text(marker_text(EVALUATION), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{out}: cannot write the evaluation ({exc.strerror or exc})") from None
    print(summary)
    if res["model"].ne("pooled").any():
        print("models used: " + ", ".join(f"{k}: {v}" for k, v in res["model"].value_counts().items()))
    print(f"wrote {out}")
    return 0

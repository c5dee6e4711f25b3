"""``napari-lnm predict``: metastasis probability, top features and key tiles for one slide or a batch."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from napari_lnm.errors import UserError
from napari_lnm.outdir import unique_names

HELP = "predict the metastasis probability of slide(s) with a trained model, with key tiles"


def _read_prediction_cohort(csv: Path):
    """Cohort CSV for prediction (``cohort.read_cohort``): slide_id and path required, label and roi optional;
    a missing slide file fails only its own slide, later."""
    from napari_lnm.cohort import read_cohort

    return read_cohort(csv, check_files=False, required=("slide_id", "path"))


def _jobs(args) -> list[dict]:
    """One job per slide: slide_id, path, roi (optional), label (optional)."""
    jobs: list[dict] = []
    if args.cohort:
        df = _read_prediction_cohort(Path(args.cohort))  # paths resolved against the CSV's folder
        for r in df.to_dict(orient="records"):
            roi = Path(r["roi"]) if isinstance(r.get("roi"), str) and r["roi"] else None
            label = int(r["label"]) if "label" in r and int(r["label"]) >= 0 else None  # -1: not given
            jobs.append({"slide_id": str(r["slide_id"]), "path": Path(str(r["path"])), "roi": roi, "label": label})
    for s in args.slides or []:
        jobs.append({"slide_id": Path(s).stem, "path": Path(s), "roi": Path(args.roi) if args.roi else None,
                     "label": None})
    if not jobs:
        raise UserError("give a SLIDE or --cohort cohort.csv")
    if args.roi and len(jobs) > 1:
        raise UserError("--roi applies to one slide; for a batch put an 'roi' column in the cohort CSV")
    ids = [j["slide_id"] for j in jobs]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise UserError(f"two slides share the id {sorted(dup)[0]!r}; rename one or use a cohort CSV with unique slide_id")
    names = unique_names(ids, str(args.cohort) if args.cohort else "the SLIDE arguments")
    for j in jobs:
        j["name"] = names[j["slide_id"]]
    return jobs


def _read_clinical(csv: Path, bundle: Any, jobs: list[dict]) -> dict:
    """{slide_id: one-row DataFrame of the model's clinical columns} from ``--clinical CSV``; UserError naming CSV."""
    import pandas as pd

    if not csv.is_file():
        raise UserError(f"{csv}: clinical CSV not found")
    try:
        df = pd.read_csv(csv, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{csv}: not a readable CSV ({type(exc).__name__})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if "slide_id" not in df.columns:
        raise UserError(f"{csv}: clinical table lacks a slide_id column")
    df = df.apply(lambda s: s.str.strip())
    dup = df["slide_id"][df["slide_id"].duplicated()]
    if len(dup):
        raise UserError(f"{csv}: duplicate slide_id {dup.iloc[0]!r}")
    enc = getattr(bundle, "clinical", None)
    if enc is None or not enc.columns:
        print(f"warning: the model uses no clinical columns; {csv} is ignored", file=sys.stderr)
        return {}
    absent = [c for c in enc.columns if c not in df.columns]
    if absent:
        raise UserError(f"{csv}: clinical column(s) {', '.join(absent)} missing (the model needs "
                        f"{', '.join(enc.columns)})")
    rows = df.set_index("slide_id")[list(enc.columns)]
    lacking = [j["slide_id"] for j in jobs if j["slide_id"] not in rows.index]
    if lacking:
        more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
        raise UserError(f"{csv}: no row for slide {', '.join(repr(s) for s in lacking[:3])}{more} "
                        f"(slide_id must match the slide file name or the cohort's slide_id)")
    out = {}
    for j in jobs:  # every slide checked before any is analysed; unknown categories warn during prediction
        row = rows.loc[[j["slide_id"]]].reset_index(drop=True)
        enc.check(row, source=str(csv), slide_ids=[j["slide_id"]])
        out[j["slide_id"]] = row
    return out


def _file_identity(path: Path) -> list:
    """The slide file's resolved path, size and mtime (ns): a changed or replaced file is another input."""
    try:
        st = path.stat()
        return [str(path.resolve()), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]  # missing: prediction reports it


def _file_hash(path: Path | None) -> str | None:
    """SHA-256 of a small input file (the ROI GeoJSON), or None without one."""
    import hashlib

    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return f"unreadable:{path}"


def _job_key(run_key: str, clinical, job: dict) -> str:
    """The run key extended by what is the slide's own: its file, its ROI's content, its clinical values.

    Resume redoes a slide whose CSV row now names another file, an edited ROI or other clinical values.
    """
    import hashlib
    import json

    own = {"slide": _file_identity(Path(job["path"])), "roi": _file_hash(job.get("roi"))}
    if clinical is not None:
        own["clinical"] = {str(k): str(v) for k, v in clinical.iloc[0].items()}
    return hashlib.sha256((run_key + json.dumps(own, sort_keys=True)).encode()).hexdigest()[:16]


def _summary_row(pred: Any, job: dict, out: Path) -> dict:
    """One line of summary.csv."""
    top = pred.top_features
    first = top.iloc[0] if len(top) else None
    return {
        "slide_id": job["slide_id"],
        "path": str(job["path"]),
        "probability": round(float(pred.probability), 6),
        "prediction": pred.label,
        "label": job.get("label"),
        "n_tiles": pred.n_tiles,
        "subtype": (pred.subtype or {}).get("subtype"),
        "top_feature": None if first is None else str(first["element"]),
        "top_contribution": None if first is None else round(float(first["contribution"]), 6),
        "out_dir": str(out),
    }


def print_prediction(pred: Any, out: Path, top: int = 5, file=None, bundle: Any = None) -> None:
    """Print the probability, the top features, the side of the bundle's operating points and where the results are."""
    file = file or sys.stdout
    sub = f", subtype {pred.subtype['subtype']} -> model {pred.subtype.get('model_used')}" if pred.subtype else ""
    print(f"{pred.slide_id}: P(metastasis) = {pred.probability:.3f} ({pred.label}); "
          f"{pred.n_tiles} tile{'s' if pred.n_tiles != 1 else ''} at {pred.tiling.get('magnification', 0):g}x{sub}", file=file)
    for r in pred.top_features.head(top).itertuples():
        sign = "+" if r.contribution >= 0 else "-"
        print(f"  {sign}{abs(r.contribution):.3f} log-odds  {r.element}  [{r.kind}]", file=file)
    if bundle is not None:
        from napari_lnm.model import operating_point_lines

        for line in operating_point_lines(bundle, pred.probability):
            print(f"  {line}", file=file)
    from napari_lnm.explain import cell_summary_text

    cells = cell_summary_text(pred.cell_summary)
    if cells:
        print(f"  {cells}", file=file)
    print(f"  results: {out}/result.json, importance.png, key_tiles.png, tiles.parquet", file=file)


def run(args) -> int:
    """Predict every requested slide; batch mode writes one folder per slide and summary.csv."""
    import pandas as pd

    from napari_lnm._atomic import atomic_path
    from napari_lnm.model import ClinicalWarning, ModelBundle
    from napari_lnm.outdir import PREDICTION, check_out_dir, mark_out_dir
    from napari_lnm.pipeline import Prediction, default_workers, predict_slide, prediction_tiling
    from napari_lnm.progress import ProgressReporter

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.key_tiles < 0:
        raise UserError(f"--key-tiles must be 0 or more, got {args.key_tiles}")
    from napari_lnm.io import mpp_option

    mpp = mpp_option(args.mpp, args.force_mpp)
    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    jobs = _jobs(args)
    out_root = check_out_dir(args.out, PREDICTION)
    bundle = ModelBundle.load(args.model)
    config = prediction_tiling(bundle, max_tiles=args.max_tiles, seed=args.seed, min_tissue=args.min_tissue)
    if args.deep_weights:
        if config.deep is None:
            raise UserError(f"{args.model}: the model uses no deep features; --deep-weights does not apply")
        config = config.replace(deep=config.deep.relocated(args.deep_weights))
    subtype_model = None
    if args.subtype_model:
        from napari_lnm.subtype import SubtypeModel

        subtype_model = SubtypeModel.load(args.subtype_model)
    batch = len(jobs) > 1 or bool(args.cohort)
    asks = bundle.caller_inputs(bool(args.subtype_model))
    clinical = _read_clinical(Path(args.clinical), asks, jobs) if args.clinical else {}
    if asks.clinical is not None and asks.clinical.columns and not args.clinical:
        print(f"warning: {args.model} was trained with clinical columns "
              f"({', '.join(asks.clinical.columns)}) but no --clinical CSV was given; predict uses the image "
              "only and treats them as missing" + (" (no subtype: the slide is centred on the training mean; "
                                                   "give a subtype column or --subtype-model)"
                                                   if bundle.needs_subtype else ""), file=sys.stderr)
    run_key = _run_key(args, config)
    mark_out_dir(out_root, PREDICTION)
    rows, failed = [], []
    slides = ProgressReporter("predict", unit="slide", disable=args.quiet or not batch, bar=False)
    slides(0, len(jobs), "starting")  # the count starts at 0: the first finished slide has an ETA
    for k, job in enumerate(jobs):
        out = out_root / job["name"] if batch else out_root
        done = out / "result.json"
        clin = clinical.get(job["slide_id"])
        job_key = _job_key(run_key, clin, job)
        if batch and done.is_file() and not args.force:
            try:
                pred = Prediction.load(out)
                if pred.model.get("run_key") == job_key:
                    print(f"[{k + 1}/{len(jobs)}] {job['slide_id']}: already done (P = {pred.probability:.3f}), "
                          "skipped")
                    rows.append(_summary_row(pred, job, out))
                    slides.skip(k + 1, len(jobs), f"{job['slide_id']} already done")
                    continue
                print(f"[{k + 1}/{len(jobs)}] {job['slide_id']}: earlier result used another model or settings, "
                      "redoing it")
            except UserError:
                pass  # damaged result: redo it
        bar = ProgressReporter(f"[{k + 1}/{len(jobs)}] {job['slide_id']}" if batch else job["slide_id"],
                               unit="tile", disable=args.quiet, log_units=False)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ClinicalWarning)
                pred = predict_slide(job["path"], bundle, rois=job["roi"], config=config, mpp=mpp,
                                     subtype_model=subtype_model, top_k=args.top_k, n_key_tiles=args.key_tiles,
                                     slide_id=job["slide_id"], progress=bar, workers=workers, clinical=clin)
            for w in caught:
                if issubclass(w.category, ClinicalWarning):
                    print(f"warning: {args.clinical}: {w.message}", file=sys.stderr)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        except UserError as exc:
            bar.close()
            if not batch:
                raise
            print(f"[{k + 1}/{len(jobs)}] {job['slide_id']}: error: {exc}", file=sys.stderr)
            failed.append(job["slide_id"])
            slides(k + 1, len(jobs), f"{job['slide_id']} failed")
            continue
        finally:
            bar.close()
        pred.model.setdefault("path", str(args.model))
        pred.model["run_key"] = job_key
        pred.save(out)
        print_prediction(pred, out, bundle=bundle)
        rows.append(_summary_row(pred, job, out))
        slides(k + 1, len(jobs), f"{job['slide_id']} done, {pred.n_tiles} tiles")
    if batch:
        summary = out_root / "summary.csv"
        with atomic_path(summary) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        print(f"{len(rows)} slide(s) predicted, {len(failed)} failed; summary: {summary}")
    return 1 if failed else 0


def _run_key(args, config) -> str:
    """Fingerprint of what decides a result: model files, subtype model files, tiling and options."""
    import dataclasses
    import hashlib
    import json

    h = hashlib.sha256()
    for folder in (args.model, args.subtype_model):
        if folder:
            for f in sorted(Path(folder).rglob("*")):
                if f.is_file():
                    h.update(f.relative_to(folder).as_posix().encode())
                    h.update(f.read_bytes())
    opts = {"tiling": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else str(config),
            "mpp": [args.mpp, "forced"] if args.force_mpp else args.mpp, "top_k": args.top_k, "key_tiles": args.key_tiles}
    h.update(json.dumps(opts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``napari-lnm predict``."""
    p = subparsers.add_parser(
        "predict", help=HELP, description=HELP.capitalize() + ". One slide: results in OUT. Several slides or "
        "--cohort: one folder per slide in OUT plus OUT/summary.csv; finished slides are skipped (resume).",
    )
    p.add_argument("slides", nargs="*", metavar="SLIDE", help="slide file(s) (SVS, NDPI, MRXS, TIFF, PNG/JPEG ...)")
    p.add_argument("--cohort", metavar="CSV", help="cohort CSV (slide_id,path[,label][,roi]) instead of SLIDEs")
    p.add_argument("--clinical", metavar="CSV",
                   help="clinical values for a model trained with --clinical: a CSV with slide_id and the model's "
                        "clinical columns (extra columns ignored); slide_id = the slide's file name without "
                        "extension, or the cohort's slide_id")
    p.add_argument("--roi", metavar="GEOJSON", help="region of interest (QuPath GeoJSON, level-0 px) for one slide")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="model bundle from napari-lnm train")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder")
    p.add_argument("--mpp", type=float, default=None, help="µm per pixel, for slides without that metadata")
    p.add_argument("--force-mpp", action="store_true",
                   help="use --mpp even where the slide's metadata has a µm/px (default: the metadata wins)")
    p.add_argument("--deep-weights", metavar="PATH", default=None,
                   help="where the CNN weights of a model trained with deep features are now (their bytes must "
                        "be those the training features were made with; default: the path recorded in the model)")
    p.add_argument("--max-tiles", type=int, default=None, metavar="N",
                   help="analyse N tiles drawn at random (default: every tile)")
    p.add_argument("--seed", type=int, default=0, help="seed for --max-tiles sampling (default 0)")
    p.add_argument("--min-tissue", type=float, default=None, metavar="F",
                   help="minimum tissue fraction of a tile (default: the model's)")
    p.add_argument("--subtype-model", metavar="DIR", help="CNN subtype model: route the slide to its subtype's model")
    p.add_argument("--top-k", type=int, default=10, help="number of top features reported (default 10)")
    p.add_argument("--key-tiles", type=int, default=10, help="number of key tiles (default 10)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes for the tile features (default: min(2, CPU count); "
                        "slides with fewer than 16 tiles run in one process)")
    p.add_argument("--force", action="store_true", help="batch: redo slides that already have a result")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p

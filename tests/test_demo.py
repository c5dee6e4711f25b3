"""``napari-lnm demo`` smoke test with tiny sizes: every step runs on real code, outputs exist, re-run resumes."""

from __future__ import annotations

import json
import time

import pytest

from napari_lnm.cli import main


@pytest.mark.slow
def test_demo_tiny_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n-slides", "6", "--seed", "1", "--workers", "1", "--slide-px", "512",
            "--tiles", "4", "--predict-tiles", "6", "--cv", "3", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "cross-validated ROC-AUC = " in printed and "95% CI" in printed
    assert "cmu_small_region: P(metastasis) = " in printed
    for f in ("cohort/cohort.csv", "model/bundle.json", "model/cv_report.json", "predict/result.json",
              "predict/importance.png", "predict/key_tiles.png", "predict/tiles.parquet"):
        assert (out / f).is_file(), f
    assert len(list((out / "features").glob("*.parquet"))) == 6
    d = json.loads((out / "predict" / "result.json").read_text())
    assert 0.0 <= d["probability"] <= 1.0
    assert d["n_tiles"] == 6 and d["tiling"]["tile_size"] == 256
    assert d["mpp"] == pytest.approx(0.499, abs=1e-3)  # from the SVS metadata
    assert f"P(metastasis) = {d['probability']:.3f}" in printed
    # resume: every step reused, same probability, quickly
    t0 = time.perf_counter()
    assert main(args) == 0
    again = capsys.readouterr().out
    assert again.count("reused") == 3
    assert f"P(metastasis) = {d['probability']:.3f}" in again
    assert time.perf_counter() - t0 < 20

"""Shared fixtures: paths to the bundled sample and the development data in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SVS = ROOT / "src" / "napari_lnm" / "data" / "cmu_small_region.svs"
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def sample_svs() -> Path:
    """The real Aperio SVS shipped inside the package (2220x2967, 0.499 µm/px)."""
    return SAMPLE_SVS


@pytest.fixture(scope="session")
def nuclei_dev() -> Path:
    """Folder of real 40x tiles with expert nucleus labels; skips when ../shared is absent."""
    path = SHARED / "nuclei-dev"
    if not path.is_dir():
        pytest.skip("../shared/data/nuclei-dev not present")
    return path


def pytest_sessionfinish(session, exitstatus):
    """Stop the warm prediction worker pool so the test process exits promptly."""
    import sys

    pipeline = sys.modules.get("napari_lnm.pipeline")
    if pipeline is not None and hasattr(pipeline, "shutdown_pool"):
        pipeline.shutdown_pool()

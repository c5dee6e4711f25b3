"""napari sample data: the real Aperio SVS shipped inside the package (File > Open Sample > napari-lnm)."""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

SAMPLE_NAME = "cmu_small_region.svs"


def sample_path() -> Path:
    """Filesystem path of the bundled CMU-1 small-region SVS (extracted to a temp folder if zipped)."""
    res = resources.files("napari_lnm") / "data" / SAMPLE_NAME
    if isinstance(res, Path) and res.is_file():
        return res
    out = Path(tempfile.mkdtemp(prefix="napari-lnm-sample-")) / SAMPLE_NAME
    with resources.as_file(res) as real:
        shutil.copyfile(real, out)
    return out


def cmu_small_region() -> list:
    """Layer data for the 2220x2967 px, 0.499 µm/px Aperio sample (lazy multiscale pyramid in µm)."""
    from napari_lnm._reader import read_slide

    layers = read_slide(sample_path())
    layers[0][1]["name"] = "CMU-1 small region"
    return layers

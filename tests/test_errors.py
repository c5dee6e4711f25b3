"""User errors survive process boundaries and the CLI turns OS errors into one line."""

import pickle

from napari_lnm.cli import main
from napari_lnm.errors import SlideError
from napari_lnm.io import MissingMppError


def test_slide_errors_pickle_round_trip():
    for exc in (SlideError("a.svs", "not a slide"), MissingMppError("b.png", "no µm/px")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc) and back.path == exc.path


def test_cli_out_under_a_file_is_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    rc = main(["synth", str(blocker / "cohort"), "--n-slides", "1", "--size", "256x256"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]  # the rest is the progress bar
    assert "Traceback" not in err and len(lines) == 1 and "is a file, not a folder" in lines[0]

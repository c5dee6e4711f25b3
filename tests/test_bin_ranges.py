"""End bins of the histogram fusion are open-ended, and every display says so."""

import numpy as np
import pandas as pd

from napari_lnm.explain import bin_range_text
from napari_lnm.fusion import HistogramFusion


def test_histogram_end_bins_are_open_and_match_transform():
    rng = np.random.default_rng(0)
    tables = [pd.DataFrame({"f": rng.normal(size=50)}) for _ in range(4)]
    fusion = HistogramFusion(bins=5).fit(tables, ["f"])
    info = fusion.element_info()
    assert info["bin_lo"].iloc[0] == -np.inf and info["bin_hi"].iloc[-1] == np.inf
    assert np.all(np.isfinite(info["bin_hi"].iloc[:-1])) and np.all(np.isfinite(info["bin_lo"].iloc[1:]))
    # a value far outside the training range is counted in the end bins the table describes
    far = [pd.DataFrame({"f": [-1e6, 1e6]})]
    freq = fusion.transform(far)[0]
    assert freq[0] == 0.5 and freq[-1] == 0.5


def test_bin_range_text():
    assert bin_range_text(1.0, 2.0) == "1.00–2.00"
    assert bin_range_text(-np.inf, 2.0) == "< 2.00"
    assert bin_range_text(None, 2.0) == "< 2.00"
    assert bin_range_text(1.0, float("nan")) == "≥ 1.00"
    assert bin_range_text(None, None) == "all values"

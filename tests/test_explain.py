"""Key-tile selection and feature kinds, on hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_lnm.explain import KEY_TILE_COLUMNS, KIND_COLOURS, feature_kind, key_tiles


@pytest.mark.parametrize(
    "name, kind",
    [
        ("nucleus.area_mean", "nucleus size"),
        ("nucleus.perimeter_std", "nucleus size"),
        ("nucleus.major_axis_mean", "nucleus size"),
        ("nucleus.eccentricity_mean", "nucleus size"),
        ("nucleus.h_mean_mean", "nucleus texture"),
        ("nucleus.h_contrast_mean", "nucleus texture"),
        ("nucleus.grad_mean_p10", "nucleus texture"),
        ("nucleus.h_std_p10", "nucleus texture"),
        ("nucleus.fourier3_median", "nucleus size"),
        ("nucleus.h_entropy_mean", "nucleus texture"),
        ("nucleus.count", "arrangement"),
        ("nucleus.density", "arrangement"),
        ("graph.voronoi_area_mean", "arrangement"),
        ("graph.knn1_dist_mean", "arrangement"),
        ("tile.h_glcm_contrast_d1um", "tile texture"),
        ("tile.e_mean", "tile texture"),
        ("nucleus.area_mean|bin3", "nucleus size"),
        ("cells.epi_with_inf_20um", "immune and cell mix"),
        ("cells.inflammatory_density|bin2", "immune and cell mix"),
        # outside the catalogue: the group's default kind, else other
        ("tile.some_future_texture", "tile texture"),
        ("graph.some_future_measure", "arrangement"),
        ("CEA", "other"),
        ("deep.017", "other"),
    ],
)
def test_feature_kind(name, kind):
    assert feature_kind(name) == kind


def test_kind_colours_are_the_documented_ones():
    assert set(KIND_COLOURS) >= {"nucleus size", "nucleus texture", "arrangement", "tile texture"}
    # red for size, blue for texture, green for arrangement, yellow for tile texture
    def rgb(h):
        return tuple(int(h[i : i + 2], 16) for i in (1, 3, 5))

    r, g, b = rgb(KIND_COLOURS["nucleus size"])
    assert r > 200 and g < 80 and b < 80
    r, g, b = rgb(KIND_COLOURS["nucleus texture"])
    assert b > 200 and r < 80
    r, g, b = rgb(KIND_COLOURS["arrangement"])
    assert g > 120 and r < 80 and b < 120
    r, g, b = rgb(KIND_COLOURS["tile texture"])
    assert r > 200 and g > 180 and b < 80


def _tiles():
    # 8 tiles; area in µm², density, texture
    return pd.DataFrame(
        {
            "x": np.arange(8) * 512,
            "y": np.zeros(8, int),
            "size": np.full(8, 512),
            "tissue_fraction": np.linspace(0.6, 0.95, 8),
            "nucleus.area_mean": [20.0, 30.0, 48.1, 50.0, 44.0, 60.0, 25.0, 43.0],
            "graph.voronoi_area_mean": [100.0, 80.0, 90.0, 30.0, 35.0, 95.0, 31.0, 85.0],
            "tile.h_glcm_contrast": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        }
    )


def _contribs(area_c=0.8, vor_c=0.3, tex_c=-0.5):
    return pd.DataFrame(
        {
            "element": ["nucleus.area_mean|bin3", "graph.voronoi_area_mean|bin1", "tile.h_glcm_contrast|bin5"],
            "feature": ["nucleus.area_mean", "graph.voronoi_area_mean", "tile.h_glcm_contrast"],
            "bin": [3, 1, 5],
            "bin_lo": [42.0, 30.5, 6.5],  # bin 1 is open below (30.0 < 30.5 still hits)
            "bin_hi": [55.3, 40.0, 7.5],
            "value": [0.4, 0.2, 0.3],
            "contribution": [area_c, vor_c, tex_c],
        }
    )


def test_key_tiles_selects_tiles_in_pushing_bins_and_ranks_them():
    kt = key_tiles(_tiles(), _contribs(), n=10)
    assert list(kt.columns) == KEY_TILE_COLUMNS
    # area bin [42, 55.3): tiles 2, 3, 4, 7; voronoi bin (-inf, 40): tiles 3, 4, 6
    # tex element has negative contribution -> never a reason
    assert set(kt["tile_index"]) == {2, 3, 4, 6, 7}
    assert list(kt["rank"]) == [1, 2, 3, 4, 5]
    # tiles 3 and 4 hit both pushing elements: score 1.1, ranked first; tile 3 lies further in the risk
    # direction of both (larger area in the upper area bin, smaller Voronoi cells in the lowest bin)
    assert list(kt["tile_index"][:2]) == [3, 4]
    assert kt["score"].iloc[0] == pytest.approx(1.1)
    assert (kt["score"].diff().dropna() <= 1e-12).all()
    # kind/colour from the strongest element hit
    first = kt.iloc[0]
    assert first["feature"] == "nucleus.area_mean"
    assert first["kind"] == "nucleus size" and first["colour"] == KIND_COLOURS["nucleus size"]
    six = kt[kt["tile_index"] == 6].iloc[0]
    assert six["kind"] == "arrangement" and six["colour"] == KIND_COLOURS["arrangement"]
    assert six["rank"] == 5  # weakest element only
    # level-0 coordinates come from the tile table
    assert first["x"] == 3 * 512 and first["size"] == 512
    assert "nucleus.area_mean = 50.0" in first["reason"]
    assert "bin 3 (42.0–55.3)" in first["reason"]
    assert "higher in metastatic" in first["reason"]
    assert (kt["effect"] == "raises risk").all()


def test_key_tiles_respects_n_and_is_deterministic():
    a = key_tiles(_tiles(), _contribs(), n=2)
    b = key_tiles(_tiles(), _contribs(), n=2)
    assert len(a) == 2
    pd.testing.assert_frame_equal(a, b)


def test_key_tiles_when_nothing_pushes_up_says_lowers_risk():
    kt = key_tiles(_tiles(), _contribs(area_c=-0.9, vor_c=-0.1, tex_c=-0.5), n=3)
    assert len(kt) == 3
    assert (kt["effect"] == "lowers risk").all()
    assert all("lowers risk" in r for r in kt["reason"])
    # strongest element is the area bin: its tiles come first
    assert kt.iloc[0]["feature"] == "nucleus.area_mean"


def test_key_tiles_break_ties_by_risk_direction():
    tiles = _tiles()
    c = _contribs(area_c=0.8, vor_c=-0.1, tex_c=-0.1).iloc[[0]]
    c = c.assign(bin=5, element="nucleus.area_mean|bin5", bin_lo=20.0, bin_hi=70.0)
    kt = key_tiles(tiles, c, n=3, n_bins=5)
    # every tile is in the (top) bin: the largest nuclei come first
    assert list(kt["value"]) == [60.0, 50.0, 48.1]


def test_key_tiles_mean_fusion_uses_risk_extreme():
    tiles = _tiles()
    contribs = pd.DataFrame(
        {
            "element": ["nucleus.area_mean", "graph.voronoi_area_mean"],
            "feature": ["nucleus.area_mean", "graph.voronoi_area_mean"],
            "bin": [0, 0],
            "bin_lo": [np.nan, np.nan],
            "bin_hi": [np.nan, np.nan],
            "value": [40.0, 60.0],
            "contribution": [0.5, 0.2],
            "direction": ["higher in metastatic", "lower in metastatic"],
        }
    )
    kt = key_tiles(tiles, contribs, n=10, extreme_q=0.25)
    area_tiles = set(kt[kt["feature"] == "nucleus.area_mean"]["tile_index"])
    # top 25% of area: 60 and 50 -> tiles 5 and 3
    assert area_tiles == {5, 3}
    vor = kt[kt["feature"] == "graph.voronoi_area_mean"]
    # lowest voronoi areas (crowded nuclei): tiles 3 (30), 6 (31) -> 6 not already counted by area
    assert set(vor["tile_index"]) <= {3, 6, 4}
    assert 6 in set(vor["tile_index"])
    assert "lower in metastatic" in vor.iloc[0]["reason"]


def test_key_tiles_empty_inputs():
    assert key_tiles(_tiles().iloc[:0], _contribs()).empty
    assert key_tiles(_tiles(), _contribs().iloc[:0]).empty
    # elements naming features the tiles do not have are ignored
    c = _contribs()
    c["feature"] = ["a", "b", "c"]
    assert key_tiles(_tiles(), c).empty


def test_key_tiles_last_bin_is_open_above_when_n_bins_known():
    c = _contribs(area_c=-0.1, vor_c=-0.1, tex_c=0.7)
    # bin 5 = [6.5, 7.5): tile 6 (7.0); with n_bins=5 the last bin also holds tile 7 (8.0 > max edge)
    assert set(key_tiles(_tiles(), c, n=10)["tile_index"]) == {6}
    kt = key_tiles(_tiles(), c, n=10, n_bins=5)
    assert set(kt["tile_index"]) == {6, 7}
    assert (kt["kind"] == "tile texture").all()
    assert (kt["colour"] == KIND_COLOURS["tile texture"]).all()


def test_key_tile_reason_is_its_most_specific_element():
    tiles = _tiles()
    c = pd.DataFrame(
        {
            "element": ["nucleus.area_mean|bin5", "graph.voronoi_area_mean|bin1"],
            "feature": ["nucleus.area_mean", "graph.voronoi_area_mean"],
            "bin": [5, 1],
            "bin_lo": [0.0, 0.0],
            "bin_hi": [100.0, 30.5],
            "contribution": [0.9, 0.3],  # area bin holds every tile (share 0.11); Voronoi bin only tile 3 (0.3)
        }
    )
    kt = key_tiles(tiles, c, n=3, n_bins=5)
    assert kt.iloc[0]["tile_index"] == 3  # hits both: highest summed contribution
    assert kt.iloc[0]["kind"] == "arrangement" and "graph.voronoi_area_mean" in kt.iloc[0]["reason"]
    assert (kt.iloc[1:]["kind"] == "nucleus size").all()

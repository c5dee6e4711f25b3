"""The typed nucleus network: post-processing known answers, API contract, determinism, weights file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from napari_lnm.errors import ModelError, UserError
from napari_lnm.nuclei import METHODS, NUCLEUS_TYPES, classify_nuclei, segment_nuclei
from napari_lnm.nuclei_net import UNET_PATH
from napari_lnm.nuclei_typed import TYPED_PATH, instance_types, instances_from_maps, load_typed, types_series

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from _metrics import score  # noqa: E402
from test_nuclei import render_scene  # noqa: E402

needs_net = pytest.mark.skipif(not TYPED_PATH.is_file(), reason="typed network weights not built")


def disks(centres, radius, shape=(64, 64)) -> np.ndarray:
    """int32 labels of disks (px), an earlier disk keeping the pixels two share."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    lab = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        lab[(np.hypot(yy - cy, xx - cx) < radius) & (lab == 0)] = i
    return lab


def ideal_maps(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Perfect nucleus probability and normalised distance maps (as the network is trained to give)."""
    d = np.zeros(lab.shape, np.float32)
    for k in range(1, lab.max() + 1):
        m = lab == k
        dk = ndi.distance_transform_edt(m)
        d[m] = dk[m] / dk.max()
    return (lab > 0).astype(np.float32), d


def test_touching_disks_are_split():
    lab = disks([(32, 22), (32, 22 + 1.8 * 9)], 9)  # overlapping pair, one connected blob
    assert ndi.label(lab > 0)[1] == 1
    out = instances_from_maps(*ideal_maps(lab))
    assert out.dtype == np.int32
    assert len(np.unique(out[out > 0])) == 2
    s = score(lab, out)
    assert s.f1 == 1.0 and s.aji > 0.9, s


def test_component_without_core_is_kept():
    nucleus = np.zeros((20, 20), np.float32)
    nucleus[5:9, 5:9] = 0.9
    out = instances_from_maps(nucleus, np.full((20, 20), 0.1, np.float32))  # no pixel above the core level
    assert out.max() == 1 and (out > 0).sum() == 16
    assert instances_from_maps(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)).max() == 0


def test_types_from_ideal_maps_are_the_majority():
    lab = disks([(16, 16), (16, 48), (48, 16), (48, 48)], 7)
    truth = np.array([0, 1, 2, 3])
    probs = np.full((4, *lab.shape), 0.1, np.float32)
    for k, t in enumerate(truth, 1):
        m = lab == k
        probs[t][m] = 0.6
        # a minority of pixels votes for another type: the summed probabilities still win
        probs[(t + 1) % 4][m & (np.arange(lab.shape[1]) % 5 == 0)[None, :]] = 0.65
    ids, k = instance_types(lab, probs)
    assert ids.tolist() == [1, 2, 3, 4] and k.tolist() == truth.tolist()
    s = types_series(lab, probs)
    assert s.index.name == "label" and s.index.tolist() == [1, 2, 3, 4]
    assert s.tolist() == list(NUCLEUS_TYPES)
    empty = types_series(np.zeros((8, 8), np.int32), np.full((4, 8, 8), 0.25, np.float32))
    assert empty.empty


def test_method_is_listed_and_labels_validated():
    assert "typed" in METHODS and NUCLEUS_TYPES == ("epithelial", "inflammatory", "stromal", "other")
    rgb = np.full((32, 32, 3), 230, np.uint8)
    with pytest.raises(UserError):
        classify_nuclei(rgb, 0.5, labels=np.zeros((16, 16), np.int32))
    with pytest.raises(UserError):
        classify_nuclei(rgb, -1.0)


def test_weights_are_plain_arrays():
    if not TYPED_PATH.is_file():
        pytest.skip("typed network weights not built")
    with np.load(TYPED_PATH, allow_pickle=False) as z:
        assert int(z["out_channels"]) == 2 + len(NUCLEUS_TYPES)
        assert all(z[k].dtype.kind in "fi" for k in z.files)
    pytest.importorskip("torch")
    assert load_typed().out.out_channels == 6
    with pytest.raises(ModelError):
        load_typed(UNET_PATH)  # the 2-map U-Net is not the typed network


def scene(mpp: float) -> np.ndarray:
    """A 64 µm RGB tile of well separated and touching haematoxylin disks (radius 3.5 µm)."""
    centres = [(12.0, 12.0), (12.0, 40.0), (40.0, 12.0), (40.0, 40.0 + 0), (40.0, 46.0), (52.0, 24.0)]
    return render_scene(centres, 3.5, mpp, size_um=64.0)


@needs_net
@pytest.mark.parametrize("mpp", [0.2, 0.25, 0.5, 0.7, 1.0])
def test_api_contract_any_mpp(mpp):
    pytest.importorskip("torch")
    rgb = scene(mpp)
    labels, types = classify_nuclei(rgb, mpp)
    assert labels.dtype == np.int32 and labels.shape == rgb.shape[:2]
    ids = np.unique(labels[labels > 0])
    assert isinstance(types, pd.Series) and types.index.tolist() == ids.tolist()
    assert set(types.tolist()) <= set(NUCLEUS_TYPES)
    assert 4 <= ids.size <= 8  # six disks, two of them touching
    assert np.array_equal(labels, segment_nuclei(rgb, mpp, method="typed"))  # one pass, same labels


@needs_net
def test_deterministic_and_given_labels_and_he():
    pytest.importorskip("torch")
    from napari_lnm.stain import separate

    rgb = scene(0.5)
    a, ta = classify_nuclei(rgb, 0.5)
    b, tb = classify_nuclei(rgb, 0.5)
    assert np.array_equal(a, b) and ta.equals(tb)
    h, e = separate(rgb)
    assert np.array_equal(a, segment_nuclei(rgb, 0.5, method="typed", h=h, e=e))
    given = np.zeros(rgb.shape[:2], np.int32)
    given[10:20, 10:20], given[60:70, 60:70] = 7, 3
    lab, t = classify_nuclei(rgb, 0.5, labels=given)
    assert lab is given or np.array_equal(lab, given)
    assert t.index.tolist() == [3, 7] and set(t) <= set(NUCLEUS_TYPES)

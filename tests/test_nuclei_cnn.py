"""The shipped U-Net nucleus pixel model (``foreground="cnn"``): weights as data, resampling, segmentation."""

from __future__ import annotations

import numpy as np
import pytest
from test_nuclei import grid_centres, render_scene

from napari_lnm.errors import ModelError
from napari_lnm.nuclei import segment_nuclei

torch = pytest.importorskip("torch")

from napari_lnm import nuclei_net as NN  # noqa: E402


def test_shipped_weights_load_as_plain_arrays():
    with np.load(NN.UNET_PATH, allow_pickle=False) as z:  # no object arrays: opening never runs code
        assert all(z[k].dtype.kind in "fiu" for k in z.files)
        assert tuple(z["channels"]) == (12, 24, 48)
    net = NN.load_unet()
    assert sum(p.numel() for p in net.parameters()) == 61574
    assert NN.load_unet() is net  # cached


def test_bad_weight_files_name_the_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        NN.load_unet(tmp_path / "missing.npz")
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(ModelError, match=r"text\.npz: not a nucleus U-Net weights file"):
        NN.load_unet(text)
    arrays = NN.state_to_arrays(NN.build_unet((4, 8, 16)))
    arrays["out.weight"] = arrays["out.weight"][:1]  # wrong shape
    np.savez(tmp_path / "shape.npz", channels=np.array((4, 8, 16)), **arrays)
    with pytest.raises(ModelError, match="shape.npz.*do not match"):
        NN.load_unet(tmp_path / "shape.npz")
    np.savez(tmp_path / "obj.npz", channels=np.array((4, 8, 16)), evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelError, match="obj.npz"):
        NN.load_unet(tmp_path / "obj.npz")


def test_saved_arrays_round_trip(tmp_path):
    torch.manual_seed(1)
    net = NN.build_unet((4, 8, 16))
    np.savez(tmp_path / "w.npz", channels=np.array((4, 8, 16)), **NN.state_to_arrays(net))
    back = NN.load_unet(tmp_path / "w.npz")
    for k, v in net.state_dict().items():  # every parameter bit for bit
        np.testing.assert_array_equal(v.numpy(), back.state_dict()[k].numpy())
    x = torch.rand(1, 2, 32, 36)
    with torch.no_grad():  # the loaded net runs channels-last: same function, other summation order
        np.testing.assert_allclose(net.eval()(x).numpy(), back(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mpp, shape", [(0.5, (64, 80)), (0.25, (130, 98)), (0.3, (101, 77)), (0.5, (7, 9))])
def test_logits_keep_the_tile_shape(mpp, shape):
    rng = np.random.default_rng(0)
    h, e = (rng.random(shape).astype(np.float32) for _ in range(2))
    z = NN.unet_logits(h, e, mpp)
    assert z.shape == (2,) + shape and z.dtype == np.float32 and np.all(np.isfinite(z))
    assert NN._binning(0.25) == 2 and NN._binning(0.5) == 1 and NN._binning(0.499) == 1 and NN._binning(0.3) == 0


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_cnn_foreground_on_isolated_disks(mpp):
    r = 3.5
    centres = grid_centres(6, 19.0)
    labels = segment_nuclei(render_scene(centres, r, mpp), mpp, foreground="cnn")
    assert labels.dtype == np.int32 and labels.max() == len(centres)
    ratio = np.bincount(labels.ravel())[1:] * mpp * mpp / (np.pi * r * r)
    assert np.all(np.abs(ratio - 1) < 0.2), ratio
    assert segment_nuclei(np.full((64, 64, 3), 255, np.uint8), mpp, foreground="cnn").max() == 0


def test_cnn_is_deterministic_and_selectable_for_extraction():
    from napari_lnm.tiling import TilingConfig

    rgb = render_scene(grid_centres(4, 19.0), 3.5, 0.5)
    a = segment_nuclei(rgb, 0.5, foreground="cnn")
    np.testing.assert_array_equal(a, segment_nuclei(rgb.copy(), 0.5, foreground="cnn"))
    assert TilingConfig(segmentation="cnn").segmentation == "cnn"


def test_fp32_switch_and_bf16_agreement(monkeypatch):
    """NAPARI_LNM_CNN_FP32=1 forces float32; where bf16 runs, its logits and nuclei match float32's."""
    from test_nuclei import _real_tiles

    from napari_lnm.stain import separate

    monkeypatch.setenv(NN.FP32_ENV, "1")
    assert not NN.use_bf16()
    tiles = _real_tiles()
    if tiles:
        from skimage import io

        rgb = io.imread(tiles[0])[..., :3]
    else:
        rgb = render_scene(grid_centres(6, 19.0), 3.5, 0.25)
    h, e = separate(rgb)
    z32, lab32 = NN.unet_logits(h, e, 0.25), segment_nuclei(rgb, 0.25, foreground="cnn")
    monkeypatch.delenv(NN.FP32_ENV)
    if not NN.use_bf16():
        pytest.skip("no native bfloat16 on this CPU: the network runs in float32")
    z16, lab16 = NN.unet_logits(h, e, 0.25), segment_nuclei(rgb, 0.25, foreground="cnn")
    assert z16.dtype == np.float32 and not np.array_equal(z16, z32)  # bf16 really ran
    assert np.quantile(np.abs(z16 - z32), 0.99) < 0.25, np.abs(z16 - z32).max()
    assert abs(int(lab16.max()) - int(lab32.max())) <= max(2, lab32.max() // 50)
    assert np.mean((lab16 > 0) == (lab32 > 0)) > 0.99

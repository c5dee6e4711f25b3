"""CNN backbones of the deep feature group: torchvision key names and shapes, weight loading rules, embeddings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_lnm.backbones import (
    ARCHITECTURES,
    EMBEDDING_DIM,
    build_backbone,
    embed,
    load_backbone,
)
from napari_lnm.errors import ModelError, UserError

# Expected state_dict sizes, counted from torchvision's source (num_batches_tracked included):
#   resnet18     conv1+bn1 6, 8 basic blocks x 12, 3 downsamples x 6, fc 2           = 122
#   resnet50     6, 16 bottlenecks x 18, 4 downsamples x 6, fc 2                     = 320
#   densenet121  conv0+norm0 6, 58 dense layers x 12, 3 transitions x 6, norm5 5, classifier 2 = 727
#   inception_v3 96 BasicConv2d x 6 (incl. AuxLogits' 2), fc 2, AuxLogits.fc 2       = 580
#   vgg16        13 convs x 2, 3 linears x 2                                          = 32
# Parameter counts are the "num_params" of torchvision's ImageNet weight tables.
EXPECTED = {
    "resnet18": (122, 11_689_512, {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer4.1.bn2.running_var": (512,),
        "layer4.1.bn2.num_batches_tracked": (),
        "fc.weight": (1000, 512),
    }),
    "resnet50": (320, 25_557_032, {
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer3.5.bn3.running_mean": (1024,),
        "layer4.0.conv2.weight": (512, 512, 3, 3),
        "layer4.0.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (1000, 2048),
    }),
    "densenet121": (727, 7_978_856, {
        "features.conv0.weight": (64, 3, 7, 7),
        "features.denseblock1.denselayer1.norm1.weight": (64,),
        "features.denseblock1.denselayer1.conv1.weight": (128, 64, 1, 1),
        "features.denseblock1.denselayer6.conv2.weight": (32, 128, 3, 3),
        "features.transition1.conv.weight": (128, 256, 1, 1),
        "features.transition3.norm.running_var": (1024,),
        "features.denseblock4.denselayer16.norm1.running_mean": (992,),
        "features.norm5.weight": (1024,),
        "classifier.weight": (1000, 1024),
    }),
    "inception_v3": (580, 27_161_264, {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_var": (192,),
        "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "AuxLogits.conv1.conv.weight": (768, 128, 5, 5),
        "AuxLogits.fc.weight": (1000, 768),
        "fc.weight": (1000, 2048),
    }),
    "vgg16": (32, 138_357_544, {
        "features.0.weight": (64, 3, 3, 3),
        "features.5.weight": (128, 64, 3, 3),
        "features.28.weight": (512, 512, 3, 3),
        "features.28.bias": (512,),
        "classifier.0.weight": (4096, 25088),
        "classifier.3.weight": (4096, 4096),
        "classifier.6.weight": (1000, 4096),
    }),
}


def _meta(arch: str) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return build_backbone(arch)


def _tiles(n: int = 2, h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _trained_like(arch: str, seed: int = 0) -> torch.nn.Module:
    """A random ``arch`` whose BN running statistics are not the defaults, so a load that skips them shows."""
    torch.manual_seed(seed)
    net = build_backbone(arch)
    for name, buf in net.named_buffers():
        if name.endswith("running_mean"):
            buf.uniform_(-0.1, 0.1)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def resnet18_net() -> torch.nn.Module:
    return _trained_like("resnet18")


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory, resnet18_net):
    path = tmp_path_factory.mktemp("w") / "resnet18.pt"
    torch.save(resnet18_net.state_dict(), path)
    return path


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_state_dict_matches_torchvision(arch):
    n_entries, n_params, keys = EXPECTED[arch]
    net = _meta(arch)
    state = net.state_dict()
    assert len(state) == n_entries
    assert sum(p.numel() for p in net.parameters()) == n_params
    for key, shape in keys.items():
        assert tuple(state[key].shape) == shape, key
    assert net.embedding_dim == EMBEDDING_DIM[arch]


def test_layout_details():
    assert "layer1.0.downsample.0.weight" not in _meta("resnet18").state_dict()  # 64 -> 64: identity shortcut
    vgg = _meta("vgg16").state_dict()
    assert {int(k.split(".")[1]) for k in vgg if k.startswith("features.")} == {
        0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28}
    inc = _meta("inception_v3")
    assert all(m.eps == 0.001 for m in inc.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert inc.transform_input  # as torchvision sets it when it loads the ImageNet weights


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_embedding_shape_dtype(arch):
    net = build_backbone(arch).eval()
    out = embed(net, _tiles(2, 80, 96))  # not square: the tile is never resized
    assert out.shape == (2, EMBEDDING_DIM[arch]) and out.dtype == np.float32 and np.isfinite(out).all()
    assert embed(net, _tiles(0, 80, 96)).shape == (0, EMBEDDING_DIM[arch])


def test_round_trip_pt_and_npz(tmp_path, resnet18_net, resnet18_file):
    x = _tiles(3)
    ref = embed(resnet18_net, x)
    npz = tmp_path / "resnet18.npz"
    np.savez(npz, **{k: v.numpy() for k, v in resnet18_net.state_dict().items()})
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet18_net.state_dict().items()}}, wrapped)
    for path in (resnet18_file, npz, wrapped):
        net = load_backbone("resnet18", path)
        assert not net.training
        np.testing.assert_array_equal(embed(net, x), ref)


def test_densenet_old_key_names_and_round_trip(tmp_path):
    src = _trained_like("densenet121")
    # torchvision's own densenet checkpoints name the dense layers' modules "norm.1", "conv.2", ...
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in src.state_dict().items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    path = tmp_path / "densenet121.pth"
    torch.save(old, path)
    x = _tiles(1)
    np.testing.assert_array_equal(embed(load_backbone("densenet121", path), x), embed(src, x))


def test_head_of_another_size_or_absent_accepted(tmp_path, resnet18_net):
    x = _tiles(1)
    state = resnet18_net.state_dict()
    two = dict(state, **{"fc.weight": torch.zeros(2, 512), "fc.bias": torch.zeros(2)})
    torch.save(two, tmp_path / "two.pt")
    headless = {k: v for k, v in state.items() if not k.startswith("fc.") and "num_batches_tracked" not in k}
    torch.save(headless, tmp_path / "headless.pt")
    for name in ("two.pt", "headless.pt"):
        np.testing.assert_array_equal(embed(load_backbone("resnet18", tmp_path / name), x), embed(resnet18_net, x))


def test_wrong_architecture_refused_naming_file(resnet18_file):
    with pytest.raises(ModelError) as err:
        load_backbone("resnet50", resnet18_file)
    msg = str(err.value)
    assert str(resnet18_file) in msg and "not resnet50 weights" in msg and "resnet18" in msg
    assert "missing" in msg and "another shape" in msg and "\n" not in msg


def test_missing_misshaped_or_extra_tensor_refused(tmp_path, resnet18_net):
    state = resnet18_net.state_dict()
    cases = {
        "missing.pt": ({k: v for k, v in state.items() if k != "layer3.1.conv2.weight"}, "1 backbone tensors missing"),
        "shape.pt": (dict(state, **{"bn1.weight": torch.ones(32)}), "1 of another shape (bn1.weight"),
        "extra.pt": (dict(state, **{"layer5.0.conv1.weight": torch.ones(1)}), "1 unexpected tensors"),
        "buffer.pt": ({k: v for k, v in state.items() if k != "bn1.running_var"}, "bn1.running_var"),
    }
    for name, (bad, expect) in cases.items():
        torch.save(bad, tmp_path / name)
        with pytest.raises(ModelError, match="not resnet18 weights") as err:
            load_backbone("resnet18", tmp_path / name)
        assert name in str(err.value) and expect in str(err.value), str(err.value)
    nan = dict(state, **{"conv1.weight": torch.full_like(state["conv1.weight"], float("nan"))})
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(ModelError, match="NaN"):
        load_backbone("resnet18", tmp_path / "nan.pt")


class _Payload:
    """An object whose unpickling would create a folder: a stand-in for code a weights file must not run."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_payload_and_junk_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "payload.pt"
    torch.save({"w": _Payload(str(marker))}, path)
    with pytest.raises(ModelError, match="not a readable weights file") as err:
        load_backbone("resnet18", path)
    assert str(path) in str(err.value) and not marker.exists()
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(ModelError, match="junk.pt: not a readable weights file"):
        load_backbone("resnet18", tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="absent.pt: weights file not found"):
        load_backbone("resnet18", tmp_path / "absent.pt")
    with pytest.raises(ModelError, match="unknown backbone architecture 'vgg19'"):
        build_backbone("vgg19")


def test_bad_images_refused(resnet18_net):
    inc = _meta("inception_v3")
    cases = [
        (resnet18_net, _tiles().astype(np.float32), "uint8"),
        (resnet18_net, _tiles()[..., 0], "shape"),
        (resnet18_net, np.zeros((1, 64, 64, 4), np.uint8), "shape"),
        (resnet18_net, _tiles(1, 32, 64), "at least 64x64"),
        (inc, _tiles(1, 64, 64), "at least 75x75"),
        (resnet18_net, [[0]], "uint8"),
    ]
    for net, images, expect in cases:
        with pytest.raises(UserError, match=expect) as err:
            embed(net, images)
        assert "\n" not in str(err.value)


def test_deterministic_and_batch_independent(resnet18_net):
    x = _tiles(3, 72, 64, seed=1)
    a = embed(resnet18_net, x)
    np.testing.assert_array_equal(embed(resnet18_net, x), a)
    np.testing.assert_array_equal(np.concatenate([embed(resnet18_net, x[i:i + 1]) for i in range(3)]), a)
    resnet18_net.train()
    try:  # running statistics, never the batch's: train mode gives the same and is restored
        np.testing.assert_array_equal(embed(resnet18_net, x), a)
        assert resnet18_net.training
    finally:
        resnet18_net.eval()


def test_identical_across_processes(tmp_path, resnet18_file):
    x = _tiles(2, 64, 80, seed=2)
    np.save(tmp_path / "x.npy", x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = embed(load_backbone("resnet18", resnet18_file), x)
    finally:
        torch.set_num_threads(threads)
    code = textwrap.dedent(f"""
        import numpy as np, torch
        torch.set_num_threads(1)
        from napari_lnm.backbones import embed, load_backbone
        out = embed(load_backbone("resnet18", {str(resnet18_file)!r}), np.load({str(tmp_path / "x.npy")!r}))
        np.save({str(tmp_path / "out.npy")!r}, out)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), here)


def test_subtype_nets_share_the_code():
    from napari_lnm import backbones
    from napari_lnm.subtype import nets

    assert nets.ResNet is backbones.ResNet and nets.read_state_dict is backbones.read_state_dict

"""CNN backbones in plain PyTorch with torchvision's parameter names, and tile embeddings from them.

This serves the optional ``deep.*`` feature group (``napari-lnm extract --deep-features ARCH:WEIGHTS``):
``load_backbone`` reads a user-supplied torchvision-style ``state_dict`` (``.pt/.pth`` or ``.npz``) into
ResNet-18/50, DenseNet-121, Inception-v3 or VGG-16 written here (torchvision is not needed), and ``embed``
turns RGB uint8 tiles into the globally average-pooled last feature map, at the tile's own size.
``subtype.nets`` takes its ResNet and its weights reader from here.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_lnm.config import DEEP_ARCHITECTURES
from napari_lnm.errors import ModelError, UserError

__all__ = ["ARCHITECTURES", "EMBEDDING_DIM", "MIN_INPUT", "HEAD_PREFIXES", "IMAGENET_MEAN", "IMAGENET_STD",
           "build_backbone", "load_backbone", "embed", "read_state_dict", "check_state",
           "BasicBlock", "Bottleneck", "ResNet", "DenseNet", "VGG", "Inception3"]

ARCHITECTURES = tuple(DEEP_ARCHITECTURES)
#: channels of the pooled embedding per architecture (the extraction config's table)
EMBEDDING_DIM = dict(DEEP_ARCHITECTURES)
#: smallest tile side (px) ``embed`` accepts; Inception-v3's unpadded stem needs 75 px
MIN_INPUT = {"resnet18": 64, "resnet50": 64, "densenet121": 64, "inception_v3": 75, "vgg16": 64}
#: state_dict prefixes of the classification heads: ignored by ``load_backbone`` (absent or any shape)
HEAD_PREFIXES = {"resnet18": ("fc.",), "resnet50": ("fc.",), "densenet121": ("classifier.",),
                 "inception_v3": ("fc.", "AuxLogits."), "vgg16": ("classifier.",)}
#: ImageNet channel mean and standard deviation (of RGB in [0, 1]) the torchvision weights expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_N_CLASSES = 1000  # ImageNet head, so a complete torchvision state_dict loads as it is


# --------------------------------------------------------------------------------------------- ResNet

class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 downsample) shortcut: ResNet-18/34."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output (N, planes, H/stride, W/stride)."""
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 conv-BN bottleneck (stride on the 3x3, torchvision's v1.5) with 4x expansion: ResNet-50."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output (N, 4 * planes, H/stride, W/stride)."""
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet(nn.Module):
    """ResNet (v1.5, torchvision layout and parameter names) with an ``n_classes`` head."""

    def __init__(self, block: type, layers: tuple[int, int, int, int], n_classes: int = 4):
        super().__init__()
        self._c = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make(block, 64, layers[0], 1)
        self.layer2 = self._make(block, 128, layers[1], 2)
        self.layer3 = self._make(block, 256, layers[2], 2)
        self.layer4 = self._make(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = 512 * block.expansion  # channels of the last feature map
        self.fc = nn.Linear(512 * block.expansion, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make(self, block: type, planes: int, n: int, stride: int) -> nn.Sequential:
        """Stage of ``n`` blocks; the first one strides and gets a 1x1 conv-BN shortcut when the shape changes."""
        down = None
        if stride != 1 or self._c != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self._c, planes * block.expansion, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
        blocks = [block(self._c, planes, stride, down)]
        self._c = planes * block.expansion
        blocks += [block(self._c, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (N, 512 * expansion, ~H/32, ~W/32) for images (N, 3, H, W)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) for images (N, 3, H, W)."""
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


# ------------------------------------------------------------------------------------------- DenseNet

class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (to ``bn_size * growth`` channels), BN-ReLU-3x3 conv (to ``growth`` channels)."""

    def __init__(self, c_in: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The ``growth`` new channels (N, growth, H, W) computed from all previous ones ``x``."""
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    """``n`` dense layers (``denselayer1`` ...), each fed the concatenation of the input and all earlier outputs."""

    def __init__(self, n: int, c_in: int, growth: int, bn_size: int):
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", DenseLayer(c_in + i * growth, growth, bn_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Input and every layer's output concatenated (N, c_in + n * growth, H, W)."""
        feats = [x]
        for layer in self.children():
            feats.append(layer(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (halving the channels) and 2x2 average pooling between dense blocks."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(OrderedDict([
            ("norm", nn.BatchNorm2d(c_in)), ("relu", nn.ReLU(inplace=True)),
            ("conv", nn.Conv2d(c_in, c_out, 1, bias=False)), ("pool", nn.AvgPool2d(2, 2)),
        ]))


class DenseNet(nn.Module):
    """DenseNet-BC (torchvision layout and parameter names: ``features.denseblockK.denselayerL.*``, ``classifier``)."""

    def __init__(self, growth: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16), c_init: int = 64,
                 bn_size: int = 4, n_classes: int = _N_CLASSES):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, c_init, 7, 2, 3, bias=False)), ("norm0", nn.BatchNorm2d(c_init)),
            ("relu0", nn.ReLU(inplace=True)), ("pool0", nn.MaxPool2d(3, 2, 1)),
        ]))
        c = c_init
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i < len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.embedding_dim = c
        self.classifier = nn.Linear(c, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map after norm5 and ReLU (N, 1024, ~H/32, ~W/32): what the classifier pools."""
        return F.relu(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) for images (N, 3, H, W)."""
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1))


# ------------------------------------------------------------------------------------------------ VGG

#: VGG-16 ("D"): conv widths, "M" for a 2x2 max pool
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG without batch norm (torchvision's ``features.N`` / ``classifier.N`` indices)."""

    def __init__(self, cfg: tuple = _VGG16, n_classes: int = _N_CLASSES):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.embedding_dim = c
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, n_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of ``features`` (N, 512, ~H/32, ~W/32), after the last max pool."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) for images (N, 3, H, W)."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --------------------------------------------------------------------------------------- Inception-v3

class BasicConv2d(nn.Module):
    """Conv (no bias), BN (eps 0.001, as in the TensorFlow-ported weights), ReLU."""

    def __init__(self, c_in: int, c_out: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Activated output (N, c_out, H', W')."""
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    """3x3 average pool, stride 1, padding 1 (size kept): the pooled branch of the Inception blocks."""
    return F.avg_pool2d(x, 3, 1, 1)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled 1x1 branches (224 + ``pool_features`` channels)."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Branches concatenated along channels."""
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: strided 3x3, strided double 3x3 and max-pool branches."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Branches concatenated along channels."""
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, 2),
        ], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 (1x7 / 7x1) branches; 768 channels out."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Branches concatenated along channels."""
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            d7 = conv(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: strided 3x3, strided 7x7-then-3x3 and max-pool branches."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Branches concatenated along channels."""
        b7 = x
        for conv in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches; 2048 channels out."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Branches concatenated along channels."""
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 grid (kept so a full torchvision state_dict loads; never run here)."""

    def __init__(self, c_in: int, n_classes: int):
        super().__init__()
        self.conv0 = BasicConv2d(c_in, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Auxiliary logits (N, n_classes) from the Mixed_6e output (N, 768, 17, 17)."""
        x = self.conv1(self.conv0(F.avg_pool2d(x, 5, 3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Inception3(nn.Module):
    """Inception-v3 (torchvision layout and parameter names: ``Conv2d_1a_3x3``, ``Mixed_5b`` ... ``fc``).

    ``transform_input`` re-maps ImageNet-normalised input to the [-1, 1] scaling the TensorFlow-ported
    ImageNet weights were trained with, as torchvision does whenever it loads those weights.
    ``forward`` returns the main logits only; ``AuxLogits`` exists for its parameters.
    """

    #: smallest input side (px): the unpadded stem and grid reductions leave a 1x1 map at 75 px
    min_input = 75

    def __init__(self, n_classes: int = _N_CLASSES, aux_logits: bool = True, transform_input: bool = False,
                 dropout: float = 0.5):
        super().__init__()
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, 2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(3, 2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionAux(768, n_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = 2048
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # truncated normal as torchvision: std 0.1, the auxiliary head's 5x5 conv 0.01 and its fc 0.001
        small = {}
        if self.AuxLogits is not None:
            small = {id(self.AuxLogits.conv1.conv): 0.01, id(self.AuxLogits.fc): 0.001}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, 0.0, small.get(id(m), 0.1), -2, 2)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised input -> (rgb - 0.5) / 0.5, the scaling of the TensorFlow-trained weights."""
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_7c output (N, 2048, ~(H-75)/32+1, ...) for ImageNet-normalised images (N, 3, H, W), H, W >= 75."""
        if self.transform_input:
            x = self._transform(x)
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main logits (N, n_classes)."""
        return self.fc(torch.flatten(self.dropout(self.avgpool(self.forward_features(x))), 1))


# -------------------------------------------------------------------------------------- build / load

_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: ResNet(BasicBlock, (2, 2, 2, 2), _N_CLASSES),
    "resnet50": lambda: ResNet(Bottleneck, (3, 4, 6, 3), _N_CLASSES),
    "densenet121": lambda: DenseNet(32, (6, 12, 24, 16), 64),
    # torchvision sets transform_input whenever it loads ImageNet weights into inception_v3
    "inception_v3": lambda: Inception3(_N_CLASSES, aux_logits=True, transform_input=True),
    "vgg16": lambda: VGG(_VGG16),
}


def build_backbone(arch: str) -> nn.Module:
    """A randomly initialised ``arch`` with torchvision's layout, parameter names and 1000-class head."""
    if arch not in _BUILDERS:
        raise ModelError(f"unknown backbone architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return _BUILDERS[arch]()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``state_dict`` from a ``.pt/.pth`` (torch.load, weights_only) or ``.npz`` file; ModelError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                state = {k: torch.from_numpy(np.array(z[k])) for k in z.files}
        else:
            # weights_only: a pickle that would build arbitrary objects (run code) is refused, not executed
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a readable weights file (PyTorch state_dict or .npz): {msg[:200]}") from None
    # common wrappers: {"state_dict": ...}, {"model": ...}, DataParallel "module." prefixes
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: does not hold a dictionary of tensors (a PyTorch state_dict)")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


# torchvision's DenseNet checkpoints predate the ban on "." in module names: "denselayer1.norm.1.weight";
# torchvision's own pattern, plus num_batches_tracked (old-style names saved again by a newer torch)
_LEGACY_DENSE = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _rename_legacy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``...denselayerL.norm.1.weight`` -> ``...denselayerL.norm1.weight`` (old DenseNet checkpoints)."""
    out = {}
    for k, v in state.items():
        m = _LEGACY_DENSE.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def _is_head(arch: str, key: str) -> bool:
    """True for a state_dict key of the classification head(s) of ``arch``."""
    return key.startswith(HEAD_PREFIXES[arch])


def _few(items: list[str], n: int = 3) -> str:
    """The first ``n`` items, comma-separated, with "..." when there are more."""
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def check_state(arch: str, own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """Problems (missing, other shape, unexpected) of ``state`` as weights for ``arch`` (``own``: its state_dict)."""
    missing = [k for k in own if not _is_head(arch, k) and k not in state and not k.endswith("num_batches_tracked")]
    shaped = [f"{k} {tuple(state[k].shape)} instead of {tuple(own[k].shape)}" for k in own
              if not _is_head(arch, k) and k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    extra = [k for k in state if k not in own and not _is_head(arch, k)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} backbone tensors missing (e.g. {_few(missing)})")
    if shaped:
        problems.append(f"{len(shaped)} of another shape ({_few(shaped, 2)})")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors (e.g. {_few(extra)})")
    return problems


def _looks_like(state: dict[str, torch.Tensor], arch: str) -> str | None:
    """The other architecture whose backbone ``state`` matches exactly, if any (nets built on the meta device)."""
    for other in ARCHITECTURES:
        if other == arch:
            continue
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            own = _BUILDERS[other]().state_dict()
        if not check_state(other, own, state):
            return other
    return None


def load_backbone(arch: str, path: str | Path) -> nn.Module:
    """``arch`` in eval mode with the backbone weights of ``path`` (every non-head tensor required, shapes checked)."""
    net = build_backbone(arch)
    state = _rename_legacy(read_state_dict(path))
    own = net.state_dict()
    problems = check_state(arch, own, state)
    if problems:
        other = _looks_like(state, arch)
        hint = f" (they look like {other} weights)" if other else ""
        raise ModelError(f"{path}: not {arch} weights{hint}: {'; '.join(problems)}")
    use = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and v.shape == own[k].shape}
    bad = [k for k, v in use.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(f"{path}: {len(bad)} tensors hold NaN or infinite values (e.g. {_few(bad)})")
    net.load_state_dict(use, strict=False)  # a head of another size (or none) keeps its random values
    return net.eval()


# ------------------------------------------------------------------------------------------------ embed

def _check_images(images: np.ndarray, min_side: int) -> None:
    """UserError (one line) unless ``images`` is (N, H, W, 3) uint8 with H, W >= ``min_side`` px."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise UserError(f"deep features need RGB uint8 tiles (N, H, W, 3); got {kind}")
    if images.ndim != 4 or images.shape[3] != 3:
        raise UserError(f"deep features need RGB uint8 tiles (N, H, W, 3); got shape {images.shape}")
    if min(images.shape[1:3]) < min_side:
        raise UserError(f"deep features need tiles of at least {min_side}x{min_side} px; got "
                        f"{images.shape[1]}x{images.shape[2]}")


def _normalise(images: np.ndarray) -> torch.Tensor:
    """(N, 3, H, W) float32 contiguous: RGB in [0, 1] minus the ImageNet mean, over the ImageNet std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    # contiguous NCHW: a fixed memory layout, so the same kernels (and bits) run every time
    return ((x - mean) / std).contiguous()


def embed(net: nn.Module, images: np.ndarray) -> np.ndarray:
    """Embeddings (N, channels) float32 of RGB uint8 tiles (N, H, W, 3): the last feature map, average pooled.

    The tiles are not resized; the network runs with its running BN statistics (eval mode, restored after).
    Each tile is its own forward pass: the kernels a batch selects can change the last bits, so a tile's
    embedding would otherwise depend on its batch-mates; at one CPU thread batching is no faster
    (``benchmarks/bench_deep_cost.py``) and one tile at a time also bounds the memory.
    """
    _check_images(images, int(getattr(net, "min_input", 64)))
    empty = np.empty((0, int(net.embedding_dim)), dtype=np.float32)
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            rows = [_pooled(net, images[i:i + 1]) for i in range(len(images))]
    finally:
        net.train(was_training)
    return np.concatenate(rows, axis=0) if rows else empty


def _pooled(net: nn.Module, images: np.ndarray) -> np.ndarray:
    """(n, channels) float32: ``net.forward_features`` of the normalised images, globally average pooled."""
    feats = net.forward_features(_normalise(images))
    return np.array(torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1).numpy(), dtype=np.float32)

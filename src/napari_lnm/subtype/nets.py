"""CNN architectures for the subtype tile classifier (plain PyTorch; torchvision optional).

``small``: a ~100k-parameter network that trains usefully on a CPU (input 128 px).
``resnet18`` / ``resnet50``: written here in plain torch with torchvision's parameter names, so
ImageNet or pathology ``state_dict`` files made for torchvision load directly.
``inception_v3``: needs torchvision (imported lazily).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from napari_lnm.errors import ModelError

#: default input side (px) per architecture
DEFAULT_INPUT = {"small": 128, "resnet18": 224, "resnet50": 224, "inception_v3": 299}
ARCHITECTURES = tuple(DEFAULT_INPUT)


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-maxpool blocks (16-32-64-128 channels), global average pooling, linear head."""

    def __init__(self, n_classes: int = 4, widths: tuple[int, ...] = (16, 32, 64, 128), dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) for images (N, 3, H, W)."""
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x))


class _BasicBlock(nn.Module):
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
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class _Bottleneck(nn.Module):
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
        self.fc = nn.Linear(512 * block.expansion, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make(self, block: type, planes: int, n: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self._c != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self._c, planes * block.expansion, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
        blocks = [block(self._c, planes, stride, down)]
        self._c = planes * block.expansion
        blocks += [block(self._c, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) for images (N, 3, H, W)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _inception_v3(n_classes: int) -> nn.Module:
    try:
        from torchvision.models import inception_v3  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError or a torchvision built against another torch
        raise ModelError(
            f"architecture 'inception_v3' needs torchvision, which cannot be imported here ({exc}); "
            "use --arch resnet18, resnet50 or small"
        ) from None
    return inception_v3(weights=None, aux_logits=False, init_weights=True, num_classes=n_classes)


_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "small": lambda n: SmallCNN(n),
    "resnet18": lambda n: ResNet(_BasicBlock, (2, 2, 2, 2), n),
    "resnet50": lambda n: ResNet(_Bottleneck, (3, 4, 6, 3), n),
    "inception_v3": _inception_v3,
}


def build_network(arch: str, n_classes: int = 4) -> nn.Module:
    """A randomly initialised network of architecture ``arch`` with ``n_classes`` outputs."""
    if arch not in _BUILDERS:
        raise ModelError(f"unknown subtype architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return _BUILDERS[arch](n_classes)


@dataclass
class WeightsReport:
    """What happened when a weights file was loaded into a network (parameter names)."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped_shape: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many tensors loaded, and which were missing/unexpected/reshaped."""
        def few(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")
        parts = [f"{self.path}: loaded {len(self.loaded)} tensors"]
        if self.missing:
            parts.append(f"missing {len(self.missing)} [{few(self.missing)}] (random init)")
        if self.unexpected:
            parts.append(f"ignored {len(self.unexpected)} unexpected [{few(self.unexpected)}]")
        if self.skipped_shape:
            parts.append(f"kept random init for {len(self.skipped_shape)} of other shape [{few(self.skipped_shape)}]")
        return "; ".join(parts)


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


def load_weights(net: nn.Module, path: str | Path, strict: bool = False) -> WeightsReport:
    """Copy matching tensors from a weights file into ``net``; a head of another size is kept random.

    With ``strict`` any missing, unexpected or mis-shaped tensor is a ModelError.
    """
    state = read_state_dict(path)
    own = net.state_dict()
    rep = WeightsReport(str(path))
    use: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k not in own:
            rep.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            rep.skipped_shape.append(f"{k} {tuple(v.shape)}->{tuple(own[k].shape)}")
        else:
            use[k] = v.to(own[k].dtype)
    rep.loaded = sorted(use)
    rep.missing = [k for k in own if k not in use and k not in {s.split(" ")[0] for s in rep.skipped_shape}]
    if not use:
        raise ModelError(
            f"{path}: none of its {len(state)} tensors match the network "
            f"(first keys: {', '.join(list(state)[:3])}); is it for another architecture?"
        )
    if strict and (rep.missing or rep.unexpected or rep.skipped_shape):
        raise ModelError(f"weights do not match the network: {rep.summary()}")
    net.load_state_dict(use, strict=False)
    return rep


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))

"""CNN architectures for the subtype tile classifier (plain PyTorch; no torchvision needed).

``small``: a ~100k-parameter network that trains usefully on a CPU (input 128 px).
``resnet18`` / ``resnet50``: ``napari_lnm.backbones.ResNet`` (plain torch, torchvision's parameter
names), so ImageNet or pathology ``state_dict`` files made for torchvision load directly.
``inception_v3``: ``napari_lnm.backbones.Inception3`` (plain torch, torchvision's parameter names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from napari_lnm.backbones import BasicBlock, Bottleneck, Inception3, ResNet, read_state_dict
from napari_lnm.errors import ModelError

__all__ = ["ARCHITECTURES", "DEFAULT_INPUT", "SmallCNN", "ResNet", "WeightsReport", "build_network", "load_weights",
           "read_state_dict", "count_parameters"]

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


_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "small": lambda n: SmallCNN(n),
    "resnet18": lambda n: ResNet(BasicBlock, (2, 2, 2, 2), n),
    "resnet50": lambda n: ResNet(Bottleneck, (3, 4, 6, 3), n),
    "inception_v3": lambda n: Inception3(n, aux_logits=False),
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

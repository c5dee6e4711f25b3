"""A compact U-Net nucleus pixel model: H and E (OD) at 0.5 µm/px -> nucleus and nucleus-interior logits.

Used by ``segment_nuclei(..., foreground="cnn")``: its nucleus logit gives the foreground and its
interior logit the seed cue of local-maximum clustering, as the shipped perceptron does for
``foreground="model"``, but learned end to end from image patches: more accurate, and ~7x slower on a
CPU (~11x in float32). Needs PyTorch (the ``cnn`` extra). The shipped weights are plain float32 arrays in
``data/nuclei_unet.npz`` (read with ``np.load(allow_pickle=False)``: opening a weights file never runs
code), trained by ``benchmarks/train_nuclei_unet.py`` on the tuning slides of nuclei-dev only.
Tiles are resampled to the network's 0.5 µm/px (2^k binning when the ratio is a power of two, else
bilinear) and its logits resampled back, so 20x and 40x tiles are treated alike.  The network runs
channels-last, in bfloat16 where the CPU has native bf16 kernels (``use_bf16``; set
``NAPARI_LNM_CNN_FP32=1`` for float32): about 2.4x faster at the same accuracy on nuclei-dev.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError
from .filters import bin2, upsample

__all__ = ["UNET_PATH", "WORK_MPP", "FP32_ENV", "build_unet", "load_unet", "unet_logits", "state_to_arrays",
           "use_bf16"]

#: shipped weights (numpy arrays only; regenerate with benchmarks/train_nuclei_unet.py)
UNET_PATH = Path(__file__).resolve().parent / "data" / "nuclei_unet.npz"
WORK_MPP = 0.5  # µm/px the network works at
#: set this environment variable to 1 to run the network in float32 even where the CPU has bfloat16
FP32_ENV = "NAPARI_LNM_CNN_FP32"
_CACHE: dict[str, Any] = {}


def _torch() -> Any:
    """Import torch, or a ModelError saying how to install it."""
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise ModelError("foreground='cnn' needs PyTorch: pip install 'napari-lnm[cnn]'") from None
    return torch


def build_unet(channels: tuple[int, int, int] = (12, 24, 48), in_channels: int = 2, out_channels: int = 2) -> Any:
    """An untrained 3-level U-Net (two 3x3 conv + ReLU per level, 2x2 max-pool down, nearest-neighbour
    up then a 1x1 conv, skip concatenation) mapping (N, in, H, W) to (N, out, H, W) maps; H, W % 4 == 0."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    def block(ci: int, co: int) -> Any:
        return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(co, co, 3, padding=1), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        """Three encoder levels, two decoder levels, a 1x1 output convolution."""

        def __init__(self) -> None:
            super().__init__()
            c1, c2, c3 = channels
            self.e1, self.e2, self.e3 = block(in_channels, c1), block(c1, c2), block(c2, c3)
            self.u2 = nn.Conv2d(c3, c2, 1)
            self.d2 = block(2 * c2, c2)
            self.u1 = nn.Conv2d(c2, c1, 1)
            self.d1 = block(2 * c1, c1)
            self.out = nn.Conv2d(c1, out_channels, 1)

        def forward(self, x: Any) -> Any:
            a = self.e1(x)
            b = self.e2(F.max_pool2d(a, 2))
            c = self.e3(F.max_pool2d(b, 2))
            b = self.d2(torch.cat([b, F.interpolate(self.u2(c), scale_factor=2, mode="nearest")], 1))
            a = self.d1(torch.cat([a, F.interpolate(self.u1(b), scale_factor=2, mode="nearest")], 1))
            return self.out(a)

    return UNet()


def state_to_arrays(net: Any) -> dict[str, np.ndarray]:
    """The network's parameters as float32 numpy arrays (keys = state_dict names), for np.savez."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}


def load_unet(path: str | os.PathLike | None = None) -> Any:
    """Load (and cache) U-Net weights from an .npz of float arrays; ModelError if missing or invalid.

    The file holds ``channels`` (3 widths), optionally ``out_channels`` (default 2) and the parameters."""
    path = Path(os.fspath(path)) if path is not None else UNET_PATH
    key = str(path.resolve())
    if key in _CACHE:
        return _CACHE[key]
    torch = _torch()
    if not path.is_file():
        raise ModelError(f"{path}: nucleus U-Net weights file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
        channels = tuple(int(v) for v in arrays.pop("channels"))
        if len(channels) != 3 or min(channels) < 1:
            raise ValueError(f"channels must be 3 positive numbers, got {channels}")
        out = int(arrays.pop("out_channels", 2))  # absent in the 2-output nucleus/interior U-Net file
        if out < 1:
            raise ValueError(f"out_channels must be positive, got {out}")
        net = build_unet(channels, out_channels=out)
        expected = net.state_dict()
        if set(arrays) != set(expected) or any(arrays[k].shape != tuple(v.shape) for k, v in expected.items()):
            raise ValueError("parameter names or shapes do not match the architecture")
        if not all(np.all(np.isfinite(a)) for a in arrays.values()):
            raise ValueError("non-finite weights")
        net.load_state_dict({k: torch.from_numpy(a.astype(np.float32)) for k, a in arrays.items()})
    except (KeyError, ValueError, TypeError, OSError, EOFError, RuntimeError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: not a nucleus U-Net weights file ({type(exc).__name__}: {exc})") from None
    net.eval().to(memory_format=torch.channels_last)  # NHWC: oneDNN's fast layout for few channels
    _CACHE[key] = net
    return net


def use_bf16() -> bool:
    """Whether the U-Net runs in bfloat16: where oneDNN has native bf16 kernels (AVX512-BF16/AMX; about
    2.4x faster, same accuracy on nuclei-dev) unless ``NAPARI_LNM_CNN_FP32=1``; else float32."""
    if os.environ.get(FP32_ENV, "").strip() not in ("", "0"):
        return False
    torch = _torch()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - older or non-oneDNN builds
        return False


def _binning(mpp: float) -> int:
    """2^k when WORK_MPP / mpp is (within 2 %) a power of two >= 1, else 0."""
    ratio = WORK_MPP / mpp
    k = round(np.log2(ratio)) if ratio > 0 else -1
    return 2**k if k >= 0 and abs(ratio / 2**k - 1) < 0.02 else 0


def unet_logits(h: np.ndarray, e: np.ndarray, mpp: float, net: Any = None) -> np.ndarray:
    """The network's output maps (out_channels, rows, cols) float32 from H and E images (OD) at ``mpp``
    µm/px; for the shipped U-Net the nucleus and interior logits."""
    torch = _torch()
    F = torch.nn.functional
    net = net if net is not None else load_unet()
    rows, cols = h.shape
    f = _binning(mpp)
    x = np.stack([h, e]).astype(np.float32, copy=False)
    for _ in range(int(np.log2(f)) if f else 0):
        x = np.stack([bin2(c) for c in x])
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    if not f:  # not a power of two: bilinear to 0.5 µm/px
        size = (max(4, int(round(rows * mpp / WORK_MPP))), max(4, int(round(cols * mpp / WORK_MPP))))
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    r, c = t.shape[2:]
    pad_r, pad_c = (-r) % 4, (-c) % 4
    if pad_r or pad_c:
        t = F.pad(t, (0, pad_c, 0, pad_r), mode="reflect" if min(r, c) > max(pad_r, pad_c) else "replicate")
    t = t.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16()):
            z = net(t)[:, :, :r, :c].float()
        if not f:
            z = F.interpolate(z, size=(rows, cols), mode="bilinear", align_corners=False)
    z = np.ascontiguousarray(z[0].numpy(), dtype=np.float32)
    if f > 1:
        z = np.stack([upsample(np.ascontiguousarray(ch), f, (rows, cols)) for ch in z])
    return z

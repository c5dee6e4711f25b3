"""The subtype CNN as a saved bundle (weights .npz + config JSON) and slide-level prediction."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from napari_lnm import __version__
from napari_lnm._atomic import atomic_dir
from napari_lnm._fields import FieldError, need_dict, need_int, need_key, need_list, need_number, need_str, \
    need_strs
from napari_lnm.errors import ModelError, UserError
from napari_lnm.progress import ProgressFn, StopFn, check_stop, report
from napari_lnm.subtype._vote import SUBTYPES, SubtypeVote, vote
from napari_lnm.subtype.nets import ARCHITECTURES, DEFAULT_INPUT, build_network, count_parameters, load_weights

FORMAT = "napari-lnm/subtype-cnn"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.npz"
#: ImageNet channel statistics for RGB in [0, 1] (also used for the small network)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_rgb_batch(rgb: np.ndarray) -> np.ndarray:
    """Return ``rgb`` as uint8 (N, H, W, 3); a single (H, W, 3) tile becomes N=1; UserError otherwise."""
    a = np.asarray(rgb)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise UserError(f"subtype CNN input must be RGB uint8 (N, H, W, 3), got {a.dtype} {a.shape}")
    return a


def to_input(rgb: np.ndarray | torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
             device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 RGB (N, H, W, 3) -> normalised float32 (N, 3, size, size), antialiased resize."""
    t = torch.as_tensor(rgb).to(device)
    x = t.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def resize_tiles(rgb: np.ndarray, size: int, batch: int = 256) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) -> uint8 (N, size, size, 3) by antialiased bilinear resampling."""
    a = check_rgb_batch(rgb)
    if a.shape[1:3] == (size, size):
        return a
    out = np.empty((a.shape[0], size, size, 3), np.uint8)
    for i in range(0, a.shape[0], batch):
        x = torch.from_numpy(np.ascontiguousarray(a[i:i + batch])).permute(0, 3, 1, 2).float()
        y = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i:i + batch] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


@dataclass
class SubtypeModel:
    """A CNN tile classifier for CMS1-CMS4 plus the preprocessing it was trained with.

    ``config`` keys: ``arch``, ``classes``, ``input_size`` (px fed to the network), ``tile_size`` (px
    of the tile read at ``magnification``), ``magnification`` (x), ``mpp`` (µm/px of the tiles),
    ``normalisation`` ({mean, std} on RGB in [0, 1]), ``package_version``.
    """

    net: nn.Module
    config: dict[str, Any]
    device: torch.device = field(default_factory=default_device)

    def __post_init__(self) -> None:
        self.net.to(self.device)
        self.net.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def new(cls, arch: str = "small", classes: Sequence[str] = SUBTYPES, input_size: Optional[int] = None,
            magnification: float = 20.0, tile_size: int = 512, weights: Optional[str | Path] = None,
            seed: int = 0, device: Optional[torch.device | str] = None) -> "SubtypeModel":
        """A fresh model: random init from ``seed``, or ``weights`` (a local state_dict file) where they fit."""
        torch.manual_seed(seed)
        net = build_network(arch, len(classes))
        weights_note = None
        if weights is not None:
            weights_note = load_weights(net, weights).summary()
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "arch": arch,
            "classes": list(classes),
            "input_size": int(input_size or DEFAULT_INPUT[arch]),
            "tile_size": int(tile_size),
            "magnification": float(magnification),
            "mpp": 10.0 / float(magnification),
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "range": "RGB/255"},
            "n_parameters": count_parameters(net),
            "initial_weights": weights_note or "random",
        }
        dev = torch.device(device) if device is not None else default_device()
        return cls(net, config, dev)

    # ------------------------------------------------------------------ properties
    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, in output column order."""
        return tuple(self.config["classes"])

    @property
    def arch(self) -> str:
        """Architecture name."""
        return str(self.config["arch"])

    @property
    def input_size(self) -> int:
        """Side (px) of the network input."""
        return int(self.config["input_size"])

    @property
    def input_mpp(self) -> float:
        """µm per network-input pixel: training tile side (px) x tile µm/px / input side (px)."""
        c = self.config
        return float(c["tile_size"]) * 10.0 / float(c["magnification"]) / float(c["input_size"])

    def input_side(self, tile_px: int, mpp: Optional[float]) -> int:
        """Network input side (px) for tiles of ``tile_px`` px at ``mpp`` µm/px, keeping the trained µm/px."""
        if mpp is None:
            return self.input_size
        return max(32, int(round(tile_px * float(mpp) / self.input_mpp)))

    def tiling_config(self) -> Any:
        """A ``napari_lnm.tiling.TilingConfig`` at the magnification and tile size the model was trained on."""
        from napari_lnm.tiling import TilingConfig

        return TilingConfig(magnification=float(self.config["magnification"]), tile_size=int(self.config["tile_size"]))

    # ------------------------------------------------------------------ inference
    def preprocess(self, rgb: np.ndarray | torch.Tensor, size: Optional[int] = None) -> torch.Tensor:
        """uint8 RGB (N, H, W, 3) -> normalised network input (N, 3, size, size) on this model's device."""
        norm = self.config["normalisation"]
        return to_input(rgb, size or self.input_size, norm["mean"], norm["std"], self.device)

    @torch.no_grad()
    def predict_tiles(self, rgb_batch: np.ndarray, batch_size: int = 64, mpp: Optional[float] = None) -> np.ndarray:
        """Per-tile class probabilities, float32 (N, n_classes), for uint8 RGB tiles (N, H, W, 3).

        Without ``mpp`` every tile is resized to ``input_size`` (tiles as in training).  With ``mpp``
        (µm/px of the given tiles) tiles are resized to keep the trained µm per input pixel, so tiles
        of another size or magnification see nuclei at the scale the network learned.
        """
        a = check_rgb_batch(rgb_batch)
        size = self.input_side(a.shape[1], mpp)
        self.net.eval()
        out = np.empty((a.shape[0], len(self.classes)), np.float32)
        for i in range(0, a.shape[0], batch_size):
            logits = self.net(self.preprocess(np.ascontiguousarray(a[i:i + batch_size]), size))
            out[i:i + batch_size] = torch.softmax(logits.float(), 1).cpu().numpy()
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``weights.npz`` (plain arrays, no pickle) atomically into ``directory``."""
        directory = Path(directory)
        state = {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        config = dict(self.config, package_version=__version__,
                      saved=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with atomic_dir(directory) as tmp:
            np.savez(tmp / WEIGHTS_FILE, **state)
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: Optional[torch.device | str] = None) -> "SubtypeModel":
        """Load a bundle written by :meth:`save`; ModelError names the file and problem when it cannot."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelError(f"{directory}: subtype model folder not found")
        cfg_path = directory / CONFIG_FILE
        w_path = directory / WEIGHTS_FILE
        if not cfg_path.is_file():
            raise ModelError(f"{cfg_path}: missing; {directory} is not a subtype model folder")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{cfg_path}: not valid JSON ({exc})") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ModelError(f"{cfg_path}: not a napari-lnm subtype model config (format {config.get('format')!r})"
                             if isinstance(config, dict) else f"{cfg_path}: not a JSON object")
        try:
            version = need_int(config.get("format_version", -1), "format_version")
            if version > FORMAT_VERSION:
                raise ModelError(f"{cfg_path}: format version {version} is newer than this napari-lnm "
                                 f"({__version__}) reads ({FORMAT_VERSION}); upgrade napari-lnm")
            _check_config(config)
        except FieldError as exc:
            raise ModelError(f"{cfg_path}: {exc}") from None
        net = build_network(str(config["arch"]), len(config["classes"]))
        if not w_path.is_file():
            raise ModelError(f"{w_path}: weights file missing")
        try:
            with np.load(w_path, allow_pickle=False) as z:
                arrays = {k: np.array(z[k]) for k in z.files}
        except Exception as exc:  # zip, header and object-array (pickle) errors of a damaged file
            raise ModelError(f"{w_path}: not a readable .npz weights file ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from None
        own = net.state_dict()
        missing = [k for k in own if k not in arrays]
        unexpected = [k for k in arrays if k not in own]
        wrong = [f"{k} {arrays[k].shape} != {tuple(own[k].shape)}" for k in own
                 if k in arrays and tuple(arrays[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensors ({', '.join(missing[:3])})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
            if wrong:
                parts.append(f"{len(wrong)} of wrong shape ({'; '.join(wrong[:3])})")
            raise ModelError(f"{w_path}: does not match architecture {config['arch']!r}: " + ", ".join(parts))
        bad = [k for k in own if not (np.issubdtype(arrays[k].dtype, np.number) or arrays[k].dtype == np.bool_)
               or (np.issubdtype(arrays[k].dtype, np.floating) and not np.all(np.isfinite(arrays[k])))]
        if bad:  # NaN weights would give NaN probabilities, and every slide the first subtype
            raise ModelError(f"{w_path}: tensor {bad[0]} is not numbers or has NaN or infinite values")
        try:
            net.load_state_dict({k: torch.from_numpy(arrays[k]).to(own[k].dtype) for k in own})
        except Exception as exc:  # e.g. a dtype torch cannot convert
            raise ModelError(f"{w_path}: cannot load the weights ({type(exc).__name__}: {_first_line(exc)})") from None
        dev = torch.device(device) if device is not None else default_device()
        return cls(net, config, dev)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message."""
    return (str(exc).strip().splitlines() or [""])[0]


def _check_config(config: dict) -> None:
    """FieldError naming the first config.json field a subtype model cannot run with."""
    need_str(need_key(config, "arch", ""), "arch", ARCHITECTURES)
    if not need_strs(need_key(config, "classes", ""), "classes", unique=True):
        raise FieldError("field 'classes' is empty")
    need_int(need_key(config, "input_size", ""), "input_size", lo=1)
    need_int(need_key(config, "tile_size", ""), "tile_size", lo=1)
    need_number(need_key(config, "magnification", ""), "magnification", positive=True)
    norm = need_dict(need_key(config, "normalisation", ""), "normalisation")
    for key in ("mean", "std"):
        values = need_list(need_key(norm, key, "normalisation"), f"normalisation.{key}", length=3)
        for i, v in enumerate(values):
            need_number(v, f"normalisation.{key}[{i}]", positive=key == "std")


def predict_slide_subtype(slide: Any, model: SubtypeModel, tiles_df: Any = None, config: Any = None,
                          progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None,
                          batch_size: int = 32, rois: Any = None) -> SubtypeVote:
    """Predict every tile of ``tiles_df`` (columns x, y level-0 px) and vote the slide's subtype.

    ``config`` is the ``tiling.TilingConfig`` the tiles are read with (default: the model's
    magnification and tile size); tiles of another size or magnification are rescaled to the µm/px
    the network was trained at.  ``tiles_df`` None tiles the slide (inside ``rois``, level-0 (x, y)
    polygons, if given) with that config.  The vote carries the per-tile probabilities in ``.probs``
    (rows in ``tiles_df`` order).
    """
    from napari_lnm import tiling

    if config is None:
        config = model.tiling_config()
    if tiles_df is None:
        tiles_df = tiling.tile_slide(slide, rois=rois, config=config, should_stop=should_stop)
    xs = np.asarray(tiles_df["x"], dtype=np.int64)
    ys = np.asarray(tiles_df["y"], dtype=np.int64)
    n = len(xs)
    if n == 0:
        raise UserError(f"{getattr(slide, 'path', 'slide')}: no tiles to predict the subtype from")
    probs = np.empty((n, len(model.classes)), np.float32)
    n_batches = math.ceil(n / batch_size)
    for b in range(n_batches):
        check_stop(should_stop)
        sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
        rgb = np.stack([tiling.read_tile(slide, int(x), int(y), config) for x, y in zip(xs[sl], ys[sl])])
        probs[sl] = model.predict_tiles(rgb, batch_size=batch_size, mpp=float(config.mpp))
        report(progress, sl.stop, n, "subtype: predicting tiles")
    return vote(probs, model.classes)

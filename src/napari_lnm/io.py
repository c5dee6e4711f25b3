"""One slide interface over OpenSlide formats, (pyramidal/OME) TIFF via tifffile, and plain photos.

Coordinates are level-0 pixels (``x`` = column, ``y`` = row); ``mpp`` is µm per
pixel.  Nothing here reads a whole pyramid level on open: OpenSlide and TIFF
slides are read tile by tile on demand; only plain PNG/JPEG photos (small by
nature) are decoded into memory.

Format detection order: OpenSlide vendor formats (SVS, NDPI, MRXS, SCN, ...),
then any TIFF via tifffile (generic/pyramidal TIFF, SubIFD pyramids, OME-TIFF),
then PNG/JPEG/other images via Pillow.  A user-given ``mpp`` is used when the
metadata has none (it overrides the metadata only with ``force_mpp=True`` or as
:func:`forced_mpp`); when neither exists :func:`open_slide` raises :class:`SlideError`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

import numpy as np

from napari_lnm.errors import SlideError, UserError

__all__ = ["Slide", "MissingMppError", "MppWarning", "ForcedMpp", "forced_mpp", "mpp_option", "open_slide",
           "resize_rgb", "to_rgb_uint8"]


class MissingMppError(SlideError):
    """The file has no pixel size (µm/px) in its metadata and none was given."""


class MppWarning(UserWarning):
    """A given µm/px disagrees with the file's metadata, which is used instead."""


class ForcedMpp(float):
    """A µm/px that overrides the file's metadata; a float, so it passes unchanged through ``mpp=`` arguments."""

    def __repr__(self) -> str:
        return f"forced_mpp({float(self)!r})"


def forced_mpp(mpp: Optional[float]) -> Optional[float]:
    """``mpp`` (µm/px) marked to override the slide's metadata when given to :func:`open_slide` (None stays None)."""
    return None if mpp is None else ForcedMpp(mpp)


def mpp_option(mpp: Optional[float], force: bool = False, flag: str = "--mpp") -> Optional[float]:
    """The command line's ``--mpp`` (µm/px) as :func:`open_slide` takes it: checked positive, ForcedMpp with ``force``."""
    if mpp is not None and _float(mpp) is None:
        raise UserError(f"{flag} must be a positive number of µm per pixel, got {mpp}")
    if force and mpp is None:
        raise UserError(f"--force-mpp needs {flag}: the µm/px to use instead of the slide's metadata")
    return forced_mpp(mpp) if force else mpp


#: a given µm/px further than this (relative) from the metadata's earns a warning
MPP_MISMATCH = 0.05

#: plausible µm/px range for microscope images; resolution tags outside it (72 dpi...) are ignored
MPP_RANGE = (0.01, 50.0)
#: above this many level pixels a region is read and resampled in blocks (memory bound)
_MAX_BLOCK_PX = 4096 * 4096


# ----------------------------------------------------------------------------- pixel helpers
def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Convert a (H, W), (H, W, 1..4) image of any numeric dtype to RGB uint8 (alpha composited on white)."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"expected a 2-D image, got shape {a.shape}")
    if a.dtype != np.uint8:
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        elif np.issubdtype(a.dtype, np.integer):
            bits = np.iinfo(a.dtype).bits
            a = (a.astype(np.uint32) >> (bits - 8)).astype(np.uint8) if bits > 8 else a.astype(np.uint8)
        else:
            af = a.astype(np.float32)
            scale = 255.0 if np.nanmax(af, initial=0.0) <= 1.0 else 1.0
            a = np.clip(np.nan_to_num(af) * scale, 0, 255).round().astype(np.uint8)
    c = a.shape[2]
    if c == 1:
        return np.repeat(a, 3, axis=2)
    if c == 2:  # grey + alpha
        grey = _composite_white(a[:, :, :1], a[:, :, 1])
        return np.repeat(grey, 3, axis=2)
    if c == 3:
        return np.ascontiguousarray(a)
    return _composite_white(a[:, :, :3], a[:, :, 3])


def _composite_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite uint8 colour over a white background with uint8 alpha."""
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgb)
    al = alpha.astype(np.uint16)[:, :, None]
    out = (rgb.astype(np.uint16) * al + 255 * (255 - al) + 127) // 255
    return out.astype(np.uint8)


def resize_rgb(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resample an RGB uint8 image to (out_h, out_w) px: block mean for integer factors, else anti-aliased Lanczos."""
    h, w = img.shape[:2]
    if (h, w) == (out_h, out_w):
        return img
    if out_h <= 0 or out_w <= 0:
        return np.zeros((max(out_h, 0), max(out_w, 0), 3), np.uint8)
    from PIL import Image

    if h % out_h == 0 and w % out_w == 0 and h // out_h == w // out_w:
        return np.asarray(Image.fromarray(img).reduce(h // out_h))  # exact block mean (box filter)
    return np.asarray(Image.fromarray(img).resize((out_w, out_h), Image.Resampling.LANCZOS, reducing_gap=3.0))


def _white(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), 255, np.uint8)


# ----------------------------------------------------------------------------- Slide
class Slide:
    """A whole-slide image or photo: pyramid geometry, µm/px and RGB region reads in level-0 coordinates."""

    #: short name of the backend ("openslide", "tifffile", "image")
    backend = "?"

    def __init__(self, path: Path, level_dims: list[tuple[int, int]], mpp: float,
                 objective_power: Optional[float], mpp_source: str):
        self.path = Path(path)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple((int(w), int(h)) for w, h in level_dims)
        w0, h0 = self.level_dimensions[0]
        self.level_downsamples: tuple[float, ...] = tuple(
            ((w0 / w) + (h0 / h)) / 2.0 for w, h in self.level_dimensions
        )
        self.mpp = float(mpp)
        self.objective_power = objective_power
        #: where ``mpp`` came from: "metadata" or "user"
        self.mpp_source = mpp_source

    # geometry ---------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in px."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    @property
    def level_mpps(self) -> tuple[float, ...]:
        """µm/px of every level."""
        return tuple(self.mpp * d for d in self.level_downsamples)

    def best_level_for_downsample(self, downsample: float) -> int:
        """Coarsest level whose downsample is <= ``downsample`` (1 % tolerance for rounded pyramids)."""
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * 1.01]
        return max(ok, key=lambda i: self.level_downsamples[i]) if ok else 0

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (f"<Slide {self.path.name!r} {self.backend} {w}x{h} px, {self.level_count} levels, "
                f"{self.mpp:.4g} µm/px, objective {self.objective_power}>")

    # reading ----------------------------------------------------------------
    def _read_inside(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """Read an RGB uint8 block fully inside ``level`` (level px); implemented by backends."""
        raise NotImplementedError

    def _read_level_px(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """Read (h, w, 3) RGB at ``level`` from level-px origin (lx, ly); outside the slide is white."""
        lw, lh = self.level_dimensions[level]
        out = _white(h, w)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, lw), min(ly + h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            block = self._read_inside(level, x0, y0, x1 - x0, y1 - y0)
        except SlideError:
            raise
        except Exception as exc:  # library errors on corrupt data -> one line naming the file
            raise SlideError(self.path, f"cannot read pixels at level {level} ({type(exc).__name__}: "
                                        f"{_one_line(exc)}); the file may be truncated or corrupt") from None
        if (x0, y0, x1, y1) == (lx, ly, lx + w, ly + h):
            return block
        out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = block
        return out

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise SlideError(self.path, f"level {level} does not exist (the slide has {self.level_count})")

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read RGB uint8 (h, w, 3) at ``level``; x, y in level-0 px, w, h in that level's px; outside is white."""
        self._check_level(level)
        if w <= 0 or h <= 0:
            raise SlideError(self.path, f"region size must be positive, got {w}x{h} px")
        ds = self.level_downsamples[level]
        return self._read_level_px(level, int(math.floor(x / ds)), int(math.floor(y / ds)), int(w), int(h))

    def read_region(self, x: float, y: float, w: float, h: float, mpp: Optional[float] = None,
                    *, out_shape: Optional[tuple[int, int]] = None) -> np.ndarray:
        """Read the level-0 box (x, y, w, h) px resampled to ``mpp`` µm/px as RGB uint8; outside is white.

        Output shape is ``(round(h*slide.mpp/mpp), round(w*slide.mpp/mpp), 3)`` unless
        ``out_shape=(rows, cols)`` is given.  The level read is the coarsest one whose
        downsample does not exceed the needed one, then resampled (block mean / Lanczos).
        """
        if w <= 0 or h <= 0:
            raise SlideError(self.path, f"region size must be positive, got {w}x{h} px")
        mpp = self.mpp if mpp is None else float(mpp)
        if not mpp > 0:
            raise SlideError(self.path, f"requested µm/px must be positive, got {mpp}")
        if out_shape is None:
            out_h = max(1, int(round(h * self.mpp / mpp)))
            out_w = max(1, int(round(w * self.mpp / mpp)))
        else:
            out_h, out_w = (int(v) for v in out_shape)
        need = min(w / out_w, h / out_h)  # level-0 px per output px
        level = self.best_level_for_downsample(need)
        ds = self.level_downsamples[level]
        lx0, ly0 = x / ds, y / ds
        lw, lh = w / ds, h / ds
        if lw * lh <= _MAX_BLOCK_PX:
            return self._read_resampled(level, lx0, ly0, lw, lh, out_h, out_w)
        # large region: resample in blocks of output rows/cols so memory stays bounded
        out = np.empty((out_h, out_w, 3), np.uint8)
        step = max(1, int(math.sqrt(_MAX_BLOCK_PX) * out_w / lw))
        for oy in range(0, out_h, step):
            for ox in range(0, out_w, step):
                bh, bw = min(step, out_h - oy), min(step, out_w - ox)
                out[oy:oy + bh, ox:ox + bw] = self._read_resampled(
                    level, lx0 + ox * lw / out_w, ly0 + oy * lh / out_h, bw * lw / out_w, bh * lh / out_h, bh, bw)
        return out

    def _read_resampled(self, level: int, lx: float, ly: float, lw: float, lh: float,
                        out_h: int, out_w: int) -> np.ndarray:
        """Read the level-px box (float) and resample it to (out_h, out_w)."""
        ix0, iy0 = int(math.floor(lx + 1e-6)), int(math.floor(ly + 1e-6))
        ix1, iy1 = max(ix0 + 1, int(math.ceil(lx + lw - 1e-6))), max(iy0 + 1, int(math.ceil(ly + lh - 1e-6)))
        block = self._read_level_px(level, ix0, iy0, ix1 - ix0, iy1 - iy0)
        return resize_rgb(block, out_h, out_w)

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """Whole slide as RGB uint8 with its longest side <= ``max_size`` px; returns (rgb, level-0 px per thumbnail px)."""
        if not max_size >= 1:
            raise UserError(f"thumbnail size must be at least 1 px, got {max_size}")
        w, h = self.dimensions
        ds = max(1.0, max(w, h) / float(max_size))
        out_w, out_h = max(1, int(w / ds)), max(1, int(h / ds))
        rgb = self.read_region(0, 0, w, h, out_shape=(out_h, out_w))
        return rgb, w / out_w

    def dask_pyramid(self, chunk: int = 512, min_size: Optional[int] = None) -> list:
        """One lazy dask array (H, W, 3) uint8 per level, read chunk by chunk on demand (nothing read here).

        With ``min_size`` (px), coarser virtual levels (factor 4, resampled on demand with
        :meth:`read_region`) are appended until the coarsest is at most ``min_size`` px a
        side, so that slides stored without a pyramid still display quickly.
        """
        import dask.array as da

        levels = []
        for level, (lw, lh) in enumerate(self.level_dimensions):
            chunks = (_chunks(lh, chunk), _chunks(lw, chunk), (3,))

            def read_block(block_id=None, level=level, chunk=chunk, lw=lw, lh=lh):
                r, c, _ = block_id
                y0, x0 = r * chunk, c * chunk
                return self._read_level_px(level, x0, y0, min(chunk, lw - x0), min(chunk, lh - y0))

            arr = da.map_blocks(read_block, dtype=np.uint8, chunks=chunks,
                                name=f"napari-lnm-{id(self):x}-{self.path.name}-L{level}-c{chunk}",
                                meta=np.empty((0, 0, 0), np.uint8))
            levels.append(arr)
        w0, h0 = self.dimensions
        ds = self.level_downsamples[-1]
        lw, lh = self.level_dimensions[-1]
        while min_size is not None and max(lw, lh) > min_size:
            ds *= 4.0
            lw, lh = max(1, int(math.ceil(w0 / ds))), max(1, int(math.ceil(h0 / ds)))

            def read_virtual(block_id=None, ds=ds, chunk=chunk, lw=lw, lh=lh):
                r, c, _ = block_id
                y0, x0 = r * chunk, c * chunk
                h, w = min(chunk, lh - y0), min(chunk, lw - x0)
                return self.read_region(x0 * ds, y0 * ds, w * ds, h * ds, out_shape=(h, w))

            levels.append(da.map_blocks(read_virtual, dtype=np.uint8,
                                        chunks=(_chunks(lh, chunk), _chunks(lw, chunk), (3,)),
                                        name=f"napari-lnm-{id(self):x}-{self.path.name}-V{ds:g}-c{chunk}",
                                        meta=np.empty((0, 0, 0), np.uint8)))
        return levels

    def close(self) -> None:
        """Release the file handle."""

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chunks(n: int, chunk: int) -> tuple[int, ...]:
    full, rest = divmod(n, chunk)
    return (chunk,) * full + ((rest,) if rest else ())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__


# ----------------------------------------------------------------------------- OpenSlide
class _OpenSlideSlide(Slide):
    """Vendor formats through openslide-python (+ openslide-bin)."""

    backend = "openslide"

    def __init__(self, path: Path, osr, mpp: Optional[float]):
        props = osr.properties
        meta_mpp = _float(props.get("openslide.mpp-x"))
        if meta_mpp is not None and not (MPP_RANGE[0] < meta_mpp < MPP_RANGE[1]):
            meta_mpp = None
        obj = _float(props.get("openslide.objective-power")) or _float(props.get("aperio.AppMag"))
        final, source = _resolve_mpp(path, mpp, meta_mpp)
        super().__init__(path, list(osr.level_dimensions), final, obj, source)
        self._osr = osr
        self.level_downsamples = tuple(float(d) for d in osr.level_downsamples)
        self.properties = dict(props)

    def _read_inside(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        x0, y0 = int(math.ceil(lx * ds - 1e-6)), int(math.ceil(ly * ds - 1e-6))  # floor(x0 / ds) == lx
        img = self._osr.read_region((x0, y0), level, (w, h))
        return to_rgb_uint8(np.asarray(img))

    def close(self) -> None:
        self._osr.close()


# ----------------------------------------------------------------------------- tifffile
class _TiffSlide(Slide):
    """Generic, pyramidal (SubIFD or series levels) and OME TIFF via tifffile, read segment by segment."""

    backend = "tifffile"

    def __init__(self, path: Path, tif, mpp: Optional[float]):
        self._tif = tif
        self._lock = threading.Lock()
        series = _main_series(tif)
        if series is None:
            raise SlideError(path, "TIFF has no image data")
        pages, channel_pages = [], []
        axes = series.axes
        for lev in series.levels:
            page = lev.keyframe
            if page is None:
                raise SlideError(path, "TIFF pyramid level has no pages")
            pages.append(page)
            # OME/ImageJ planar colour: C = 3 or 4 single-sample pages (e.g. axes "CYX"); other
            # leading axes (Z, T, ...) -> the first plane is shown
            plane = [pg.aspage() for pg in lev.pages if pg is not None]
            if "C" in axes and page.samplesperpixel == 1 and lev.shape[axes.index("C")] in (3, 4):
                nc = lev.shape[axes.index("C")]
                stride = int(np.prod([n for a, n in zip(axes, lev.shape) if a not in "YXS"][axes.index("C") + 1:]
                                     or [1]))
                channel_pages.append([plane[i * stride] for i in range(nc)] if len(plane) >= nc * stride
                                     else [page])
            else:
                channel_pages.append([page])
        # keep levels that are 2-D (YX / YXS); sort finest first
        dims = []
        for p in pages:
            shape = p.shaped  # (separate samples, depth, length, width, contig samples)
            if shape[1] != 1:
                raise SlideError(path, "3-D (multi-depth) TIFF pages are not supported")
            dims.append((int(shape[3]), int(shape[2])))
        order = sorted(range(len(pages)), key=lambda i: -dims[i][0])
        self._pages = [pages[i] for i in order]
        self._channel_pages = [channel_pages[i] for i in order]
        dims = [dims[i] for i in order]
        _check_tiff_pages(path, tif, [pg for chans in self._channel_pages for pg in chans])
        meta_mpp, obj = _tiff_mpp(tif, self._pages[0])
        final, source = _resolve_mpp(path, mpp, meta_mpp)
        super().__init__(path, dims, final, obj, source)

    def _read_inside(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        chans = self._channel_pages[level]
        if len(chans) > 1:
            planes = [self._read_page(pg, lx, ly, w, h)[:, :, 0] for pg in chans]
            return to_rgb_uint8(np.stack(planes, axis=-1))
        return to_rgb_uint8(self._read_page(chans[0], lx, ly, w, h))

    def _read_page(self, page, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """Raw samples (h, w, samples) of one TIFF page, decoding only the segments that overlap."""
        sep, _, _, img_w, contig = page.shaped
        if page.is_tiled:
            th, tw = page.tilelength, page.tilewidth
        else:
            th, tw = page.rowsperstrip, img_w
        th = min(th, page.shaped[2]) or 1
        per_plane_cols = math.ceil(img_w / tw)
        per_plane = per_plane_cols * math.ceil(page.shaped[2] / th)
        r0, r1 = ly // th, (ly + h - 1) // th
        c0, c1 = lx // tw, (lx + w - 1) // tw
        nsamples = sep * contig
        out = np.zeros((h, w, nsamples), page.dtype)
        rr, cc = np.meshgrid(np.arange(r0, r1 + 1), np.arange(c0, c1 + 1), indexing="ij")
        base = (rr * per_plane_cols + cc).ravel()
        indices = [int(s * per_plane + b) for s in range(sep) for b in base]
        offsets = [page.dataoffsets[i] for i in indices]
        counts = [page.databytecounts[i] for i in indices]
        fh = self._tif.filehandle
        with self._lock:
            raw = []
            for off, n in zip(offsets, counts):
                if n == 0:
                    raw.append(None)
                    continue
                fh.seek(off)
                raw.append(fh.read(n))
        for data, idx in zip(raw, indices):
            s, row, col = idx // per_plane, (idx % per_plane) // per_plane_cols, idx % per_plane_cols
            ty, tx = row * th, col * tw
            if data is None:
                seg = np.full((th, tw, contig), page.nodata if page.nodata else 255, page.dtype)
            else:
                seg, _, _ = page.decode(data, idx, jpegtables=page.jpegtables)
                seg = np.asarray(seg).reshape(seg.shape[-3:])  # (length, width, contig)
            ys0, xs0 = max(ly, ty), max(lx, tx)
            ys1, xs1 = min(ly + h, ty + seg.shape[0]), min(lx + w, tx + seg.shape[1])
            if ys1 <= ys0 or xs1 <= xs0:
                continue
            piece = seg[ys0 - ty:ys1 - ty, xs0 - tx:xs1 - tx]
            if sep > 1:
                out[ys0 - ly:ys1 - ly, xs0 - lx:xs1 - lx, s:s + 1] = piece[:, :, :1]
            else:
                out[ys0 - ly:ys1 - ly, xs0 - lx:xs1 - lx, :] = piece
        if page.photometric == 0:  # MINISWHITE
            out = np.iinfo(out.dtype).max - out if np.issubdtype(out.dtype, np.integer) else out.max() - out
        elif page.photometric == 3 and page.colormap is not None:  # PALETTE -> RGB (16-bit colormap)
            cmap = (np.asarray(page.colormap).T >> 8).astype(np.uint8)
            out = cmap[np.clip(out[:, :, 0], 0, len(cmap) - 1)]
        return out

    def close(self) -> None:
        self._tif.close()


def _main_series(tif):
    """The largest image series of a TIFF (skips thumbnails, labels, macros)."""
    best, best_px = None, -1
    for s in tif.series:
        try:
            page = s.levels[0].keyframe
            px = int(page.shaped[2]) * int(page.shaped[3])
        except Exception:
            continue
        if px > best_px:
            best, best_px = s, px
    return best


def _check_tiff_pages(path: Path, tif, pages) -> None:
    """Raise SlideError if a level's segments point beyond the end of the file or cannot be decoded."""
    size = tif.filehandle.size
    for page in pages:
        offs = np.asarray(page.dataoffsets, np.int64)
        counts = np.asarray(page.databytecounts, np.int64)
        if offs.size == 0:
            raise SlideError(path, "TIFF page has no image data")
        if int((offs + counts).max()) > size:
            raise SlideError(path, f"file is truncated: image data ends at byte {int((offs + counts).max())}, "
                                   f"the file has {size}")
        if page.dtype is None:
            raise SlideError(path, f"unsupported TIFF sample format ({page.bitspersample}-bit)")
        if page.shaped[0] * page.shaped[4] > 4:
            raise SlideError(path, f"TIFF with {page.shaped[0] * page.shaped[4]} channels is not an RGB/grey image")
        if page.compression not in (1,) and page.compression not in _tiff_decompressors():
            raise SlideError(path, f"unsupported TIFF compression {page.compression}")


def _tiff_decompressors():
    import tifffile

    return tifffile.TIFF.DECOMPRESSORS


def _tiff_mpp(tif, page) -> tuple[Optional[float], Optional[float]]:
    """(µm/px, objective power) from OME PhysicalSizeX, Aperio description or TIFF resolution tags."""
    mpp = obj = None
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            for el in root.iter():
                tag = el.tag.rsplit("}", 1)[-1]
                if tag == "Pixels" and mpp is None and el.get("PhysicalSizeX"):
                    unit = el.get("PhysicalSizeXUnit", "µm")
                    mpp = float(el.get("PhysicalSizeX")) * _UNIT_TO_UM.get(unit, 1.0)
                elif tag == "Objective" and obj is None and el.get("NominalMagnification"):
                    obj = float(el.get("NominalMagnification"))
        except (ET.ParseError, ValueError):
            pass
    desc = page.description or ""
    if mpp is None:
        m = re.search(r"\bMPP\s*=\s*([0-9.]+)", desc)
        if m:
            mpp = _float(m.group(1))
    if obj is None:
        m = re.search(r"\bAppMag\s*=\s*([0-9.]+)", desc)
        if m:
            obj = _float(m.group(1))
    if mpp is None:
        tags = page.tags
        xres, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
        if xres is not None and unit is not None:
            num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
            u = int(unit.value)
            if num and den and u in (2, 3):
                px_per_unit = num / den
                mpp = (25400.0 if u == 2 else 10000.0) / px_per_unit
    if mpp is not None and not (MPP_RANGE[0] < mpp < MPP_RANGE[1]):
        mpp = None
    return mpp, obj


_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


# ----------------------------------------------------------------------------- plain images
class _ImageSlide(Slide):
    """A plain PNG/JPEG photo decoded into memory, with a 2x block-mean pyramid for display."""

    backend = "image"

    def __init__(self, path: Path, rgb: np.ndarray, mpp: float, source: str):
        levels = [rgb]
        while max(levels[-1].shape[:2]) > 2048:
            prev = levels[-1]
            h2, w2 = prev.shape[0] // 2, prev.shape[1] // 2
            levels.append(resize_rgb(prev[:h2 * 2, :w2 * 2], h2, w2))
        self._levels = levels
        super().__init__(path, [(a.shape[1], a.shape[0]) for a in levels], mpp, None, source)

    def _read_inside(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        return self._levels[level][ly:ly + h, lx:lx + w].copy()


def _open_image(path: Path, mpp: Optional[float]) -> Slide:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            dpi = im.info.get("dpi")
            im.load()
            arr = _pil_to_array(im)
    except UnidentifiedImageError:
        raise SlideError(path, "not a slide or image that can be read (no OpenSlide, TIFF or image format "
                               "recognised)") from None
    except Image.DecompressionBombError:
        raise SlideError(path, "image too large for a plain photo; convert it to a pyramidal TIFF") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise SlideError(path, f"corrupt or truncated image ({_one_line(exc)})") from None
    meta_mpp = None
    if dpi and dpi[0]:
        cand = 25400.0 / float(dpi[0])
        if MPP_RANGE[0] < cand < MPP_RANGE[1]:
            meta_mpp = cand
    final, source = _resolve_mpp(path, mpp, meta_mpp)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SlideError(path, "image is empty (0 px)")
    return _ImageSlide(path, arr, final, source)


def _pil_to_array(im) -> np.ndarray:
    """Pillow image (any mode) -> RGB uint8, alpha composited on white, 16-bit scaled to 8-bit."""
    mode = im.mode
    if mode in ("RGB", "L", "LA", "RGBA"):
        return to_rgb_uint8(np.asarray(im))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return to_rgb_uint8(np.asarray(im).astype(np.uint16))
    if mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        hi = a.max() if a.size else 1.0
        return to_rgb_uint8((a / (hi if hi > 255 else 255.0)).astype(np.float32))
    if "A" in mode or "transparency" in im.info:
        return to_rgb_uint8(np.asarray(im.convert("RGBA")))
    return to_rgb_uint8(np.asarray(im.convert("RGB")))


# ----------------------------------------------------------------------------- open
def _float(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _resolve_mpp(path: Path, given: Optional[float], meta: Optional[float]) -> tuple[float, str]:
    """The file's metadata µm/px wins over a given one unless that is a :class:`ForcedMpp`; neither -> SlideError."""
    if given is not None:
        g = _float(given)
        if g is None:
            raise SlideError(path, f"µm/px must be a positive number, got {given!r}")
        if meta is None or isinstance(given, ForcedMpp):
            return g, "user"
        if abs(g - meta) > MPP_MISMATCH * meta:
            # the scanner's calibration is more trustworthy than a cohort-wide --mpp meant for photos
            warnings.warn(f"{path}: the file's metadata says {meta:.4g} µm/px, not the {g:g} given; using the "
                          f"metadata (--force-mpp / force_mpp=True uses the given value)", MppWarning, stacklevel=4)
        return float(meta), "metadata"
    if meta is not None:
        return float(meta), "metadata"
    raise MissingMppError(path, "no pixel size (µm/px) in the file's metadata; pass it with mpp=... "
                           "(command line: --mpp, e.g. 0.5 for a 20x photo)")


@contextlib.contextmanager
def _quiet_tifffile():
    """Silence tifffile's logged warnings while probing a possibly corrupt file (restores the level)."""
    logger = logging.getLogger("tifffile")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def open_slide(path: str | os.PathLike, mpp: Optional[float] = None, force_mpp: bool = False) -> Slide:
    """Open a slide or photo; ``mpp`` (µm/px at level 0) is used when the metadata has none, or always with force_mpp."""
    path = Path(path)
    if force_mpp:
        if mpp is None:
            raise SlideError(path, "force_mpp needs a µm/px value (command line: --force-mpp with --mpp)")
        mpp = ForcedMpp(mpp) if _float(mpp) is not None else mpp
    if not path.exists():
        raise SlideError(path, "file not found")
    if path.is_dir():
        raise SlideError(path, "is a folder, not a slide file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise SlideError(path, "file is empty (0 bytes)")
        import openslide

        vendor = openslide.OpenSlide.detect_format(str(path))
        if vendor is not None and vendor != "generic-tiff":
            try:
                osr = openslide.OpenSlide(str(path))
            except openslide.OpenSlideError as exc:
                raise SlideError(path, f"corrupt or unsupported {vendor} slide ({_one_line(exc)})") from None
            try:
                return _OpenSlideSlide(path, osr, mpp)
            except BaseException:
                osr.close()
                raise
        if _is_tiff(path):
            import tifffile

            try:
                with _quiet_tifffile():
                    tif = tifffile.TiffFile(path)
                    series = _main_series(tif)
            except Exception as exc:
                raise SlideError(path, f"corrupt or truncated TIFF ({_one_line(exc)})") from None
            if series is None:
                tif.close()
                raise SlideError(path, "truncated or corrupt TIFF: no readable image in it")
            try:
                return _TiffSlide(path, tif, mpp)
            except SlideError:
                tif.close()
                raise
            except Exception as exc:
                tif.close()
                raise SlideError(path, f"cannot read TIFF structure ({type(exc).__name__}: "
                                       f"{_one_line(exc)})") from None
        return _open_image(path, mpp)
    except SlideError:
        raise
    except PermissionError:
        raise SlideError(path, "permission denied") from None
    except OSError as exc:
        raise SlideError(path, f"cannot read file ({_one_line(exc)})") from None

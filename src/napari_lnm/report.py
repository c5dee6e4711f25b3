"""PNG reports of a prediction: a bar chart of the top features and a slide thumbnail with key tiles.

Rendering uses matplotlib's Agg canvas directly (no pyplot state), so it is
safe from worker threads of the napari plugin.  Files are written atomically.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from napari_lnm._atomic import atomic_path
from napari_lnm.explain import KIND_COLOURS, bin_range_text, feature_kind, feature_unit, format_number

__all__ = ["element_label", "importance_bar_chart", "key_tile_thumbnail"]


def element_label(row) -> str:
    """Readable label of a fused element: 'nucleus.area_mean  bin 3: 42.0–55.3 µm²' (units from the catalogue)."""
    feat = str(row.get("feature", "") or str(row.get("element", "")).split("|")[0])
    b = row.get("bin", None)
    has_bin = b is not None and not (isinstance(b, float) and math.isnan(b)) and int(b) >= 0
    if not has_bin:
        el = str(row.get("element", feat))
        return el if el != feat else feat
    unit = feature_unit(feat)
    lo, hi = row.get("bin_lo", np.nan), row.get("bin_hi", np.nan)
    rng = bin_range_text(lo, hi)
    return f"{feat}  bin {int(b)}: {rng} {unit}".rstrip()


def _save(fig, path) -> Path:
    """Save a matplotlib Figure atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", facecolor="white",
                    pil_kwargs={"compress_level": 4})
    return path


def _kind_legend(target, kinds: Sequence[str], y: float = 0.0) -> None:
    """Legend of coloured patches for the kinds present, below the figure or axes ``target`` (never over the data)."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=KIND_COLOURS[k], edgecolor="black", linewidth=0.5, label=k) for k in KIND_COLOURS if k in kinds]
    if handles:
        target.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, y), ncol=len(handles),
                      fontsize=9, frameon=False, title="feature kind", title_fontsize=9)


def importance_bar_chart(
    top_features: pd.DataFrame,
    path: str | os.PathLike,
    importance: Optional[pd.DataFrame] = None,
    probability: Optional[float] = None,
    title: Optional[str] = None,
) -> Path:
    """Horizontal bar chart PNG: per-slide contributions (log-odds) and, if given, model importance (gain).

    ``top_features`` has ``element, feature, contribution`` (and ``bin, bin_lo, bin_hi``);
    ``importance`` (optional) has ``element, feature, gain`` (and ``fscore``).
    Bars are coloured by feature kind (:data:`napari_lnm.explain.KIND_COLOURS`).
    """
    from matplotlib.figure import Figure

    panels = [("contribution", top_features)]
    if importance is not None and len(importance):
        panels.append(("gain", importance))
    n_rows = max([len(df) for _, df in panels] + [1])
    fig = Figure(figsize=(7.5 * len(panels), 1.2 + 0.42 * n_rows))
    kinds_present: set[str] = set()
    for p, (col, df) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        if df is None or len(df) == 0 or col not in df.columns:
            ax.text(0.5, 0.5, "no features", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        df = df.reset_index(drop=True)
        vals = df[col].astype(float).to_numpy()
        feats = df["feature"] if "feature" in df.columns else df["element"].astype(str).str.split("|").str[0]
        kinds = [feature_kind(f) for f in feats]
        kinds_present.update(kinds)
        labels = [element_label(r) for _, r in df.iterrows()]
        ypos = np.arange(len(df))[::-1]  # first row at the top
        ax.barh(ypos, vals, color=[KIND_COLOURS[k] for k in kinds], edgecolor="black", linewidth=0.5)
        ax.set_yticks(ypos)
        ax.set_yticklabels(labels, fontsize=8.5)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        if col == "contribution":
            if "value" in df.columns:  # what this slide has: fraction of its tiles in the bin, or the summary value
                for y, v, val, lab in zip(ypos, vals, df["value"].astype(float), labels):
                    binned = " bin " in lab
                    txt = f"{val * 100:.0f}% of tiles" if binned else f"= {format_number(val)}"
                    ax.text(v, y, f" {txt} " if v >= 0 else f" {txt} ", va="center",
                            ha="left" if v >= 0 else "right", fontsize=7.5, color="#333333")
            ax.set_xlabel("contribution to this slide's prediction (log-odds; > 0 raises risk)")
            head = "This slide: top features"
            if probability is not None:
                head += f"  (P(metastasis) = {probability:.2f})"
            ax.set_title(title or head, fontsize=10)
            lim = max(float(np.max(np.abs(vals))) if len(vals) else 1.0, 1e-3) * 1.7
            ax.set_xlim(-lim, lim)
        else:
            ax.set_xlabel("model importance (total gain)")
            extra = ""
            if "fscore" in df.columns:
                extra = " — labels: F-score"
                for y, v, fs in zip(ypos, vals, df["fscore"]):
                    ax.text(v, y, f" {int(fs) if np.isfinite(fs) else '?'}", va="center", fontsize=7)
            ax.set_title(f"Model: most important features{extra}", fontsize=10)
            ax.set_xlim(0, max(float(np.nanmax(vals)) if len(vals) else 1.0, 1e-6) * 1.15)
    fig.tight_layout()
    if kinds_present:
        _kind_legend(fig, sorted(kinds_present))
    return _save(fig, path)


def _thumbnail(slide, max_size: int):
    """(rgb, downsample) from a Slide, a path, or an (rgb, downsample) tuple."""
    if isinstance(slide, tuple) and len(slide) == 2:
        return np.asarray(slide[0]), float(slide[1])
    if isinstance(slide, (str, os.PathLike)):
        from napari_lnm.io import open_slide

        with open_slide(slide) as s:
            rgb, ds = s.thumbnail(max_size)
        return rgb, float(ds)
    rgb, ds = slide.thumbnail(max_size)
    return np.asarray(rgb), float(ds)


def key_tile_thumbnail(
    slide,
    key_tiles: pd.DataFrame,
    path: str | os.PathLike,
    rois: Optional[Sequence[np.ndarray]] = None,
    tiles: Optional[pd.DataFrame] = None,
    probability: Optional[float] = None,
    max_size: int = 1000,
) -> Path:
    """Slide thumbnail PNG with numbered key tiles (level-0 ``x, y, size``) outlined in their kind's colour.

    ``slide``: a :class:`napari_lnm.io.Slide`, a path, or ``(rgb, downsample)``;
    ``rois``: level-0 ``(N, 2)`` ``(x, y)`` polygons drawn in cyan;
    ``tiles``: all analysed tiles, drawn as faint grey outlines.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon, Rectangle

    rgb, ds = _thumbnail(slide, max_size)
    h, w = rgb.shape[:2]
    scale = 9.0 / max(h, w)
    fig = Figure(figsize=(max(w * scale, 4.0) + 0.2, h * scale + 0.8))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(rgb, interpolation="antialiased")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    if tiles is not None and len(tiles):
        for x, y, s in tiles[["x", "y", "size"]].to_numpy(dtype=float):
            ax.add_patch(Rectangle((x / ds, y / ds), s / ds, s / ds, fill=False, edgecolor="#555555", linewidth=0.4, alpha=0.5))
    for poly in rois or []:
        poly = np.asarray(poly, dtype=float)
        if poly.ndim == 2 and len(poly) >= 3:
            ax.add_patch(Polygon(poly / ds, closed=True, fill=False, edgecolor="cyan", linewidth=1.5))
    kinds = []
    if key_tiles is not None and len(key_tiles):
        fs = 10
        for _, r in key_tiles.sort_values("rank", ascending=False).iterrows():
            x, y, s = float(r["x"]) / ds, float(r["y"]) / ds, float(r["size"]) / ds
            colour = r.get("colour", None) or KIND_COLOURS.get(r.get("kind", "other"), "#8c8c8c")
            kinds.append(r.get("kind", "other"))
            lw = 2.2
            ax.add_patch(Rectangle((x, y), s, s, fill=False, edgecolor="black", linewidth=lw + 1.6))
            ax.add_patch(Rectangle((x, y), s, s, fill=False, edgecolor=colour, linewidth=lw))
            ax.text(
                x + 2, y + 2, str(int(r["rank"])), color="black", fontsize=fs, fontweight="bold",
                va="top", ha="left",
                bbox=dict(boxstyle="round,pad=0.15", facecolor=colour, edgecolor="black", linewidth=0.6),
            )
    head = "Key tiles (numbered by importance, coloured by feature kind)"
    if probability is not None:
        head = f"P(metastasis) = {probability:.2f} — " + head
    ax.set_title(head, fontsize=10)
    fig.tight_layout()
    if kinds:
        _kind_legend(ax, kinds, y=-0.005)
    return _save(fig, path)

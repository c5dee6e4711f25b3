"""Why a slide got its probability: the top features in words, and the key tiles that show them.

The model works on fused per-slide elements (``"<feature>|bin<k>"`` for the
histogram fusion: the fraction of the slide's tiles whose ``feature`` falls in
bin ``k``).  A selected element with a positive contribution (log-odds) pushes
the prediction up; the tiles that *are* that element are the tiles whose
feature value lies in the element's bin ``[bin_lo, bin_hi)``.  Each tile is
scored by the summed contributions of the elements it hits; the best ``n``
tiles are numbered 1..n and colour-coded by the kind of their own reason: the
hit element with the largest per-tile share of its contribution (contribution /
number of tiles in its bin), so that an element whose bin holds nearly every
tile does not name every tile (:data:`KIND_COLOURS`, shared with the napari widget).

For fusions without bins (mean, max, p-norm ...) an element stands for the
whole distribution of its feature; the tiles at the extreme in the direction
that raises risk (top quintile) are taken as its hits.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from napari_lnm.config import MIL_TILE_FEATURE, is_deep

__all__ = [
    "KIND_COLOURS",
    "KINDS",
    "KEY_TILE_COLUMNS",
    "feature_kind",
    "feature_unit",
    "element_direction",
    "key_tiles",
    "format_number",
    "bin_range_text",
    "top_features",
    "explain_element",
    "with_direction",
    "global_importance",
    "TOP_FEATURE_COLUMNS",
    "cell_summary",
    "cell_summary_text",
]

#: Kind of a feature -> display colour (hex), used by the PNG report and the napari widget.
KIND_COLOURS: dict[str, str] = {
    "nucleus size": "#e31a1c",  # red
    "nucleus texture": "#1f6fe0",  # blue
    "arrangement": "#1a9850",  # green
    "tile texture": "#f5c400",  # yellow
    "immune and cell mix": "#984ea3",  # purple: cell-type composition and interaction (cells.*)
    "other": "#8c8c8c",  # grey: clinical variables, deep features
}
KINDS: tuple[str, ...] = tuple(KIND_COLOURS)

TOP_FEATURE_COLUMNS = [
    "rank", "element", "feature", "bin", "bin_lo", "bin_hi", "value", "contribution",
    "fscore", "gain", "direction", "description", "kind", "colour", "explanation",
]
KEY_TILE_COLUMNS = [
    "rank", "x", "y", "size", "kind", "colour", "feature", "element", "bin",
    "value", "score", "effect", "reason", "tile_index",
]

def _catalog_kinds() -> dict[str, str]:
    """Feature name -> kind, from the feature catalogue (each feature declares its kind)."""
    from napari_lnm.features import feature_catalog

    return {i.name: i.kind for i in feature_catalog()}


_KINDS: dict[str, str] = {}


def feature_kind(feature_name: str) -> str:
    """Kind of a feature (``KIND_COLOURS`` key) from the feature catalogue; a name outside it gets its
    group's default kind (``features.group_kind``), clinical variables and deep features 'other'."""
    from napari_lnm.features import group_kind

    if not _KINDS:
        _KINDS.update(_catalog_kinds())
    name = str(feature_name).split("|", 1)[0]
    return _KINDS.get(name) or group_kind(name)


_UNIT_GUESS = (
    ("density", "/mm²"),
    ("area", "µm²"),
    ("perimeter", "µm"),
    ("diameter", "µm"),
    ("axis", "µm"),
    ("distance", "µm"),
    ("length", "µm"),
    ("dist", "µm"),
)


def feature_unit(feature_name: str, units: Optional[Mapping[str, str]] = None) -> str:
    """Unit of a feature ('µm', 'µm²', '/mm², 'OD' or ''), from ``units`` or the feature catalogue."""
    if units is not None and feature_name in units:
        return units[feature_name] or ""
    catalog = _catalog_units()
    if feature_name in catalog:
        return catalog[feature_name] or ""
    low = feature_name.lower()
    for word, unit in _UNIT_GUESS:
        if word in low:
            return unit
    return ""


_CATALOG: Optional[dict[str, str]] = None


def _catalog_units() -> dict[str, str]:
    """Feature name -> unit from ``features.feature_catalog()`` (empty if unavailable)."""
    global _CATALOG
    if _CATALOG is None:
        try:
            from napari_lnm.features import feature_catalog

            _CATALOG = {f.name: getattr(f, "unit", "") or "" for f in feature_catalog()}
        except Exception:  # features module not importable: fall back to name heuristics
            return {}
        cleaned = {}
        for k, v in _CATALOG.items():
            v = str(v)
            cleaned[k] = "" if v in ("1", "-", "none", "None", "count", "fraction") else v
        _CATALOG = cleaned
    return _CATALOG


def element_direction(row: Mapping) -> int:
    """+1 if a larger element value means higher risk, -1 if lower, from a 'direction' entry (default +1)."""
    d = row.get("direction", None) if hasattr(row, "get") else None
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return 1
    if isinstance(d, str):
        s = d.lower()
        if s.startswith("-") or "lower" in s or "neg" in s or "less" in s or "down" in s:
            return -1
        return 1
    try:
        return -1 if float(d) < 0 else 1
    except (TypeError, ValueError):
        return 1


def _bin_index(row: Mapping) -> Optional[int]:
    """Histogram bin (1..B) of an element, from its 'bin' entry or its '<feature>|bin<k>' name; None if not binned."""
    b = row.get("bin", None)
    if b is not None and not (isinstance(b, float) and math.isnan(b)):
        try:
            b = int(b)
            return b if b >= 1 else None  # fusion convention: bins 1..B, 0 = summary element
        except (TypeError, ValueError):
            pass
    m = re.search(r"\|bin(\d+)$", str(row.get("element", "")))
    return int(m.group(1)) if m and int(m.group(1)) >= 1 else None


def format_number(v: Any) -> str:
    """Short human number for texts and labels: 3 significant digits, exponent only below 1e-3 or from 1e5."""
    if v is None:
        return "?"
    v = float(v)
    if math.isnan(v):
        return "?"
    if not np.isfinite(v):
        return "∞" if v > 0 else "-∞"
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.2e}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if a < 1 else f"{v:.2f}"


def bin_range_text(lo, hi, fmt=None) -> str:
    """Human text for a histogram bin [lo, hi): open-ended end bins read '< hi' or '≥ lo' (None/NaN = open)."""
    fmt = fmt or format_number

    def finite(v) -> bool:
        try:
            return v is not None and bool(np.isfinite(float(v)))
        except (TypeError, ValueError):
            return False

    if finite(lo) and finite(hi):
        return f"{fmt(float(lo))}–{fmt(float(hi))}"
    if finite(hi):
        return f"< {fmt(float(hi))}"
    if finite(lo):
        return f"≥ {fmt(float(lo))}"
    return "all values"


def _hits(
    values: np.ndarray, row: Mapping, risk_sign: int, extreme_q: float, n_bins: Optional[int]
) -> tuple[np.ndarray, str]:
    """Boolean hit mask of tiles for one element and a text describing the bin or extreme."""
    finite = np.isfinite(values)
    b = _bin_index(row)
    lo = row.get("bin_lo", np.nan)
    hi = row.get("bin_hi", np.nan)
    lo = -np.inf if lo is None or not np.isfinite(float(lo)) else float(lo)
    hi = np.inf if hi is None or not np.isfinite(float(hi)) else float(hi)
    if b is not None and (np.isfinite(lo) or np.isfinite(hi)):
        # values outside the training range fall into the end bins (as in the fusion)
        lo_test = -np.inf if b == 1 else lo
        hi_test = np.inf if (n_bins is not None and b >= n_bins) else hi
        hit = finite & (values >= lo_test) & (values < hi_test)
        return hit, f"in bin {b} ({bin_range_text(lo_test, hi_test)})"
    if not finite.any():
        return np.zeros_like(finite), ""
    if risk_sign >= 0:
        thr = np.quantile(values[finite], 1.0 - extreme_q)
        return finite & (values >= thr), f"among the highest {int(extreme_q * 100)}% of tiles (≥ {format_number(thr)})"
    thr = np.quantile(values[finite], extreme_q)
    return finite & (values <= thr), f"among the lowest {int(extreme_q * 100)}% of tiles (≤ {format_number(thr)})"


def _top_bins(contribs: pd.DataFrame, n_bins: Optional[int]) -> dict[str, int]:
    """Number of bins per feature: ``n_bins`` if known, else the largest bin seen among the elements."""
    out: dict[str, int] = {}
    for _, row in contribs.iterrows():
        b = _bin_index(row)
        if b is not None:
            f = str(row["feature"])
            out[f] = int(n_bins) if n_bins else max(out.get(f, 1), b)
    return out


def _value_direction(row: Mapping, risk_sign: int, top_bin: Mapping[str, int]) -> float:
    """+1 if larger tile values of the element's feature mean more risk, -1 if smaller, 0 if neither.

    Summary elements: ``risk_sign``.  Bin ``k`` of ``B`` with more risk when the bin is fuller:
    upper bins -> larger values, lower bins -> smaller values, the middle bin -> 0.
    """
    b = _bin_index(row)
    if b is None:
        return float(risk_sign)
    nb = top_bin.get(str(row["feature"]), b)
    return float(np.sign(b - (nb + 1) / 2.0)) * float(risk_sign)


def _risk_rank(values: np.ndarray, direction: float) -> np.ndarray:
    """Rank of each value in [0, 1] along ``direction`` (1 = most extreme in the risk direction; NaN -> 0)."""
    out = np.zeros(values.shape, dtype=float)
    finite = np.isfinite(values)
    if direction == 0 or finite.sum() < 2:
        return out + 0.5 * finite
    from scipy.stats import rankdata

    r = (rankdata(values[finite]) - 1.0) / (finite.sum() - 1.0)
    out[finite] = r if direction > 0 else 1.0 - r
    return out


def key_tiles(
    tiles_df: pd.DataFrame,
    contributions_df: pd.DataFrame,
    n: int = 10,
    *,
    max_elements: int = 20,
    extreme_q: float = 0.2,
    n_bins: Optional[int] = None,
    units: Optional[Mapping[str, str]] = None,
) -> pd.DataFrame:
    """Rank the tiles that explain a prediction; returns :data:`KEY_TILE_COLUMNS` (x, y, size in level-0 px).

    ``tiles_df``: one row per tile with ``x, y, size`` and the feature columns.
    ``contributions_df``: one row per selected element with ``element, feature,
    contribution`` (log-odds) and, for histogram fusion, ``bin`` (1..B; 0 for a
    summary element), ``bin_lo, bin_hi`` (bin 1 and bin ``n_bins`` are open-ended);
    an optional ``direction`` (+1 / -1 or 'higher'/'lower in metastatic') says
    whether a larger element value means higher risk (default +1).
    Elements pushing the prediction up are explained first; when none does,
    the strongest elements are used and the reasons say "lowers risk".
    """
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in KEY_TILE_COLUMNS})
    if n <= 0 or tiles_df is None or len(tiles_df) == 0 or contributions_df is None or len(contributions_df) == 0:
        return empty
    for col in ("x", "y", "size"):
        if col not in tiles_df.columns:
            raise ValueError(f"tiles table lacks column {col!r}")
    c = _usable_elements(tiles_df, contributions_df)
    if c.empty:
        return empty
    chosen, effect = _choose_elements(c, max_elements)
    scores = _score_tiles(tiles_df, chosen, effect, _top_bins(c, n_bins), extreme_q, n_bins)
    top = _pick_tiles(tiles_df, scores, n)
    if top.size == 0:
        return empty
    rows = [
        _key_tile_row(tiles_df, int(i), rank, chosen.iloc[scores.best[i]], scores.descr[scores.best[i]],
                      float(scores.score[i]), effect, units)
        for rank, i in enumerate(top, start=1)
    ]
    return pd.DataFrame(rows, columns=KEY_TILE_COLUMNS)


def _usable_elements(tiles_df: pd.DataFrame, contributions_df: pd.DataFrame) -> pd.DataFrame:
    """The elements with a finite, non-zero contribution (log-odds) whose feature is a tile column."""
    c = contributions_df.copy()
    if "feature" not in c.columns:
        c["feature"] = c["element"].astype(str).str.split("|").str[0]
    c = c[c["feature"].isin(tiles_df.columns) & np.isfinite(c["contribution"].astype(float))]
    return c[c["contribution"].astype(float) != 0.0]


def _choose_elements(c: pd.DataFrame, max_elements: int) -> tuple[pd.DataFrame, str]:
    """The elements to explain, strongest first (``_abs`` = |contribution|, log-odds), and their effect text.

    The elements raising risk when there are any, else all of them ("lowers risk").
    """
    contrib = c["contribution"].astype(float)
    up = c[contrib > 0].assign(_abs=contrib[contrib > 0])
    if not up.empty:
        effect = "raises risk"
        chosen = up.sort_values("_abs", ascending=False, kind="mergesort")
        # an element whose value is *low* for this slide while low means risk is explained by
        # the tiles that are absent from its bin: its bin tiles are not the reason.
        keep = []
        for _, row in chosen.iterrows():
            sign = element_direction(row)
            keep.append(not (_bin_index(row) is not None and sign < 0))
        chosen = chosen[np.array(keep, dtype=bool)] if any(keep) else chosen
    else:
        effect = "lowers risk"
        chosen = c.assign(_abs=contrib.abs()).sort_values("_abs", ascending=False, kind="mergesort")
    return chosen.head(max_elements).reset_index(drop=True), effect


class _TileScores:
    """Per-tile sums over the chosen elements that hit the tile, and each element's hit text."""

    def __init__(self, n_tiles: int) -> None:
        self.score = np.zeros(n_tiles)  # summed |contribution| (log-odds)
        self.best = np.full(n_tiles, -1, dtype=int)  # row in ``chosen`` of the tile's own reason
        self.best_w = np.zeros(n_tiles)  # that element's per-tile share (log-odds per tile)
        self.extremity = np.zeros(n_tiles)  # tie-break: how far the tile lies in its elements' risk direction
        self.descr: list[str] = []  # per chosen element: its bin or extreme in words


def _score_tiles(
    tiles_df: pd.DataFrame,
    chosen: pd.DataFrame,
    effect: str,
    top_bin: Mapping[str, int],
    extreme_q: float,
    n_bins: Optional[int],
) -> _TileScores:
    """Each tile's summed contribution (log-odds) of the chosen elements it hits, its extremity and own reason."""
    s = _TileScores(len(tiles_df))
    for j, row in chosen.iterrows():
        vals = tiles_df[row["feature"]].to_numpy(dtype=float)
        risk_sign = element_direction(row) * (1 if effect == "raises risk" else -1)
        hit, text = _hits(vals, row, risk_sign, extreme_q, n_bins)
        s.descr.append(text)
        w = float(row["_abs"])
        s.score[hit] += w
        s.extremity[hit] += w * _risk_rank(vals, _value_direction(row, risk_sign, top_bin))[hit]
        # a tile's own reason: the hit element with the largest per-tile share of its contribution
        # (an element whose bin holds most tiles says little about any one of them)
        share = w / max(int(hit.sum()), 1)
        better = hit & (share > s.best_w)
        s.best[better] = j
        s.best_w[better] = share
    return s


def _pick_tiles(tiles_df: pd.DataFrame, s: _TileScores, n: int) -> np.ndarray:
    """Row positions of the best ``n`` hit tiles, best first (empty when no tile is hit)."""
    cand = np.flatnonzero(s.score > 0)
    if cand.size == 0:
        return cand
    n_tiles = len(tiles_df)
    tf = tiles_df["tissue_fraction"].to_numpy(dtype=float) if "tissue_fraction" in tiles_df else np.zeros(n_tiles)
    tf = np.nan_to_num(tf)
    # rank: summed contribution, then extremity in the risk direction, most specific element,
    # tissue, position (deterministic)
    order = np.lexsort(
        (cand, -tf[cand], -s.best_w[cand], -np.round(s.extremity[cand], 12), -np.round(s.score[cand], 12))
    )
    return cand[order][:n]


def _key_tile_row(
    tiles_df: pd.DataFrame,
    i: int,
    rank: int,
    el: pd.Series,
    text: str,
    score: float,
    effect: str,
    units: Optional[Mapping[str, str]],
) -> dict[str, Any]:
    """One :data:`KEY_TILE_COLUMNS` row for tile ``i``, explained by its own element ``el`` (score in log-odds)."""
    feat = str(el["feature"])
    kind = feature_kind(feat)
    value = float(tiles_df[feat].iloc[i])
    b = _bin_index(el)
    return {
        "rank": rank,
        "x": int(tiles_df["x"].iloc[i]),
        "y": int(tiles_df["y"].iloc[i]),
        "size": int(tiles_df["size"].iloc[i]),
        "kind": kind,
        "colour": KIND_COLOURS[kind],
        "feature": feat,
        "element": str(el.get("element", feat)),
        "bin": b if b is not None else 0,
        "value": value,
        "score": score if effect == "raises risk" else -score,
        "effect": effect,
        "reason": _reason_text(feat, value, feature_unit(feat, units), text, el, effect),
        "tile_index": int(i),
    }


def _reason_text(feat: str, value: float, unit: str, text: str, el: pd.Series, effect: str) -> str:
    """A tile's reason in words: its feature value with unit, the element's bin or extreme, and the effect."""
    vtxt = f"{format_number(value)} {unit}".rstrip()
    if effect == "raises risk":
        tail = "higher in metastatic" if element_direction(el) >= 0 else "lower in metastatic"
    else:
        tail = "lowers risk"
    if feat == MIL_TILE_FEATURE:  # ABMIL: the tile's attention-weighted share of the slide's log-odds
        return (f"ABMIL: this tile adds {value:+.2f} to the network's log-odds for the slide, {text}; "
                f"deep features, no direct meaning")
    what = f"{feat} (deep feature, no direct meaning)" if is_deep(feat) else feat
    return f"{what} = {vtxt} {text}, {tail}".replace("  ", " ")


# --------------------------------------------------------------------------- a slide's explanation
def top_features(contribs: pd.DataFrame, importance: pd.DataFrame, k: int) -> pd.DataFrame:
    """Top-k elements of this slide by |contribution|, with the model's F-score/gain and the feature kind."""
    if contribs is None or len(contribs) == 0:
        return pd.DataFrame(columns=TOP_FEATURE_COLUMNS)
    c = contribs.copy()
    c = c[np.isfinite(c["contribution"].astype(float))]
    if importance is not None and len(importance) and "element" in importance.columns:
        extra = [col for col in ("fscore", "gain", "direction", "description") if col in importance.columns and col not in c.columns]
        c = c.merge(importance[["element", *extra]].drop_duplicates("element"), on="element", how="left")
    if "gain" not in c.columns:
        c["gain"] = np.nan
    # elements the trees never used for this slide (contribution exactly 0) say nothing about it
    nonzero = c[c["contribution"] != 0]
    c = nonzero if len(nonzero) else c
    c = c.assign(_abs=c["contribution"].abs(), _gain=c["gain"].fillna(0.0))
    c = c.sort_values(["_abs", "_gain", "element"], ascending=[False, False, True], kind="mergesort")
    c = c.head(k).drop(columns=["_abs", "_gain"])
    if "feature" not in c.columns:
        c["feature"] = c["element"].astype(str).str.split("|").str[0]
    c["kind"] = [feature_kind(f) for f in c["feature"]]
    c["colour"] = [KIND_COLOURS[k_] for k_ in c["kind"]]
    c["explanation"] = [explain_element(r) for r in c.to_dict(orient="records")]
    c.insert(0, "rank", np.arange(1, len(c) + 1))
    for col in TOP_FEATURE_COLUMNS:
        if col not in c.columns:
            c[col] = np.nan
    return c[TOP_FEATURE_COLUMNS + [x for x in c.columns if x not in TOP_FEATURE_COLUMNS]].reset_index(drop=True)


def explain_element(r: dict) -> str:
    """One sentence on what a fused element is for this slide and which way it pushed the prediction."""
    c = float(r.get("contribution", 0.0))
    effect = f"{'raises' if c > 0 else 'lowers'} risk by {abs(c):.2f} log-odds"
    direction = r.get("direction")
    direction = f" ({direction})" if isinstance(direction, str) and direction else ""
    feat = str(r.get("feature", ""))
    b = r.get("bin")
    value = r.get("value")
    if is_deep(feat):
        direction = f" (deep feature, no direct meaning){direction}"
    if isinstance(b, (int, float, np.integer, np.floating)) and np.isfinite(b) and b >= 1 and value is not None:
        unit = feature_unit(feat)
        rng = f"{bin_range_text(r.get('bin_lo'), r.get('bin_hi'))} {unit}".rstrip()
        return (f"{float(value) * 100:.0f}% of this slide's tiles have {feat} in bin {int(b)} ({rng})"
                f"{direction}; {effect}")
    stat = str(r.get("stat") or "").strip()
    what = f"{feat} ({stat})" if stat and stat != feat else feat
    return f"{what} = {format_number(value)} on this slide{direction}; {effect}"


def with_direction(contribs: pd.DataFrame, importance: pd.DataFrame) -> pd.DataFrame:
    """Contributions with the model's 'direction' column (higher/lower in metastatic) when it has one."""
    if "direction" in contribs.columns or importance is None or "direction" not in importance.columns:
        return contribs
    return contribs.merge(importance[["element", "direction"]].drop_duplicates("element"), on="element", how="left")


def global_importance(importance: pd.DataFrame, k: int) -> pd.DataFrame:
    """Model's top-k elements by gain (then F-score)."""
    if importance is None or len(importance) == 0:
        return pd.DataFrame()
    imp = importance.copy()
    keys = [c for c in ("gain", "fscore") if c in imp.columns]
    if keys:
        imp = imp.sort_values(keys, ascending=False, kind="mergesort")
    imp = imp.head(k).reset_index(drop=True)
    if "feature" in imp.columns:
        imp["kind"] = [feature_kind(f) for f in imp["feature"]]
    return imp


def group_deep(pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """(element, importance) pairs with all deep elements summed into one ``deep features (n elements)`` pair."""
    deep = [v for n, v in pairs if is_deep(n)]
    if not deep:
        return list(pairs)
    rest = [(n, v) for n, v in pairs if not is_deep(n)]
    return rest + [(f"deep features ({len(deep)} element{'s' if len(deep) != 1 else ''})", float(np.nansum(deep)))]


def cell_summary(tiles: pd.DataFrame) -> dict:
    """Nuclei counted per type over the analysed tiles, and their fractions (from ``nucleus.count`` and the
    ``cells.*_fraction`` of each tile); empty for tile tables without the ``cells.*`` group."""
    from napari_lnm.features.cells import CELL_TYPES

    cols = [f"cells.{t}_fraction" for t in CELL_TYPES]
    if "nucleus.count" not in tiles.columns or not set(cols) <= set(tiles.columns):
        return {}
    n = tiles["nucleus.count"].to_numpy(float)
    frac = np.nan_to_num(tiles[cols].to_numpy(float))
    counts = np.rint(frac * np.nan_to_num(n)[:, None]).sum(axis=0).astype(int)
    total = int(counts.sum())
    return {"n_nuclei": total, "n_tiles": int(len(tiles)),
            "types": {t: {"count": int(c), "fraction": (c / total) if total else None}
                      for t, c in zip(CELL_TYPES, counts)}}


def cell_summary_text(summary: dict) -> str:
    """One line: 'nuclei: 1234 (epithelial 41%, inflammatory 22%, stromal 30%, other 7%)'; '' without types."""
    if not summary or not summary.get("n_nuclei"):
        return ""
    parts = [f"{t} {100 * v['fraction']:.0f}%" for t, v in summary["types"].items()]
    return f"nuclei: {summary['n_nuclei']} ({', '.join(parts)})"

"""Molecular subtype display data (no Qt, no napari): names, colours, per-tile overlay table, summary text.

The pipeline stores the slide's subtype vote in ``Prediction.subtype``
(``subtype``, ``counts``, ``mean_probs``, ``model_used``, ``routing`` and
``tiles`` = per-tile ``x, y, size`` level-0 px, ``classes`` and ``probs``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from napari_lnm.model import PARTIAL

#: Consensus molecular subtype names (Guinney et al. 2015).
SUBTYPE_NAMES: dict[str, str] = {
    "CMS1": "MSI immune",
    "CMS2": "canonical",
    "CMS3": "metabolic",
    "CMS4": "mesenchymal",
}

#: Overlay / bar colours per subtype (Okabe-Ito, colour-blind safe; distinct from the key-tile kinds).
SUBTYPE_COLOURS: dict[str, str] = {
    "CMS1": "#e69f00",  # orange
    "CMS2": "#56b4e9",  # sky blue
    "CMS3": "#009e73",  # bluish green
    "CMS4": "#cc79a7",  # reddish purple
}
OTHER_COLOUR = "#999999"

OVERLAY_COLUMNS = ["tile", "x", "y", "size", "subtype", "probability"]


def subtype_title(name: str) -> str:
    """'CMS2 canonical' for a CMS class, else the name itself."""
    desc = SUBTYPE_NAMES.get(str(name))
    return f"{name} {desc}" if desc else str(name)


def subtype_colour(name: str) -> str:
    """Hex colour of a subtype (grey for class names outside CMS1-CMS4)."""
    return SUBTYPE_COLOURS.get(str(name), OTHER_COLOUR)


def subtype_counts(sub: Optional[Mapping[str, Any]]) -> tuple[list[str], np.ndarray]:
    """(class names, H tile counts) of a subtype vote, in the classifier's class order; empty without a vote."""
    if not isinstance(sub, Mapping) or not sub.get("counts"):
        return [], np.zeros(0, dtype=int)
    counts = dict(sub["counts"])
    classes = list((sub.get("tiles") or {}).get("classes") or counts)
    classes += [c for c in counts if c not in classes]
    return classes, np.array([int(counts.get(c, 0)) for c in classes], dtype=int)


def subtype_tiles(sub: Optional[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-tile subtype table: tile, x, y, size (level-0 px), subtype (argmax), probability (its p) and p_<class>."""
    tiles = sub.get("tiles") if isinstance(sub, Mapping) else None
    if not isinstance(tiles, Mapping) or not len(tiles.get("x") or []):
        return pd.DataFrame({c: pd.Series(dtype=float if c == "probability" else object) for c in OVERLAY_COLUMNS})
    classes = [str(c) for c in tiles["classes"]]
    probs = np.asarray(tiles["probs"], dtype=float).reshape(-1, len(classes))
    xs, ys, ss = (np.asarray(tiles[k], dtype=float) for k in ("x", "y", "size"))
    if not (len(xs) == len(ys) == len(ss) == len(probs)):
        raise ValueError(f"subtype tiles: {len(xs)} positions but {len(probs)} probability rows")
    best = np.argmax(probs, axis=1)
    df = pd.DataFrame({
        "tile": np.arange(len(xs)),
        "x": xs, "y": ys, "size": ss,
        "subtype": np.asarray(classes, dtype=object)[best],
        "probability": probs[np.arange(len(probs)), best],
    })
    for j, c in enumerate(classes):
        df[f"p_{c}"] = probs[:, j]
    return df


def tile_reason(df: pd.DataFrame, index: Optional[int]) -> str:
    """Status text for overlay tile ``index``: its subtype and the probability of each class ('' if none)."""
    if index is None or index < 0 or index >= len(df):
        return ""
    r = df.iloc[int(index)]
    ps = ", ".join(f"{c[2:]} {r[c]:.2f}" for c in df.columns if c.startswith("p_"))
    return f"tile {int(r['tile'])}: {subtype_title(r['subtype'])} (p={r['probability']:.2f}; {ps})"


def subtype_summary(sub: Optional[Mapping[str, Any]], routing: Optional[Mapping[str, str]] = None) -> tuple[str, str]:
    """(headline, model line) for the widget: the predicted subtype with its vote, and which LNM model was used and why.

    ``routing`` (the bundle's ``subtype_routing``) is used when the prediction does not carry the reason.
    """
    if not isinstance(sub, Mapping) or not sub.get("subtype"):
        return "", ""
    name = str(sub["subtype"])
    classes, counts = subtype_counts(sub)
    n = int(counts.sum())
    k = int(counts[classes.index(name)]) if name in classes else 0
    head = f"{subtype_title(name)}  ({k} of {n} tiles)" if n else subtype_title(name)
    used = str(sub.get("model_used") or "")
    reason = str(sub.get("routing") or (routing or {}).get(name, "") or "")
    why = _inner(reason)
    if used and used != "pooled" and reason.startswith(PARTIAL):
        line = f"LNM model: {PARTIAL} (the pooled model with {name} as an input" + (f"; {why})" if why else ")")
    elif used and used != "pooled":
        line = f"LNM model: per-subtype {used} model" + (f" (trained on {why})" if why else "")
    elif used == "pooled":
        if why:
            why = f"{name}: {why}"
        elif routing:
            why = f"no {name} slides in the training cohort"
        else:
            why = "the model bundle has no per-subtype models"
        line = f"LNM model: pooled fallback ({why})"
    else:
        line = ""
    return head, line


def _inner(reason: str) -> str:
    """'only 3 slides, fewer than 10' from a routing note 'pooled (only 3 slides, fewer than 10)'."""
    if "(" in reason and reason.endswith(")"):
        return reason.split("(", 1)[1][:-1]
    return reason

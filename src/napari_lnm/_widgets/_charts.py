"""Matplotlib canvases for the widgets: feature-importance bars, subtype counts and the ROC curve."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

from napari_lnm.explain import KIND_COLOURS, feature_kind


class ChartCanvas(FigureCanvasQTAgg):
    """A small matplotlib canvas that can be docked into napari."""

    def __init__(self, width: float = 4.0, height: float = 3.0, dpi: int = 100):
        self.figure = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
        super().__init__(self.figure)
        self.setMinimumHeight(260)
        self.setMinimumWidth(420)

    def show_importance(self, names: Sequence[str], values: Sequence[float], title: str = "Top features") -> None:
        """Horizontal bar chart of the top features (largest on top), bars coloured by feature kind."""
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        names, values = list(names)[::-1], np.asarray(values, float)[::-1]
        colours = [KIND_COLOURS[feature_kind(n)] for n in names]
        ax.barh(np.arange(len(names)), values, color=colours)
        ax.set_yticks(np.arange(len(names)), [_short(n) for n in names], fontsize=7)
        ax.set_xlabel("importance (gain)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        self.draw_idle()

    def show_roc(self, fpr: Sequence[float], tpr: Sequence[float], auc: float, ci: tuple | None = None) -> None:
        """ROC curve with the diagonal and the AUC (and its CI) in the title."""
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        ax.plot(fpr, tpr, color="#e31a1c", lw=2)
        title = f"CV AUC {auc:.3f}"
        if ci is not None and all(np.isfinite(ci)):
            title += f" (95% CI {ci[0]:.2f}–{ci[1]:.2f})"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        self.draw_idle()

    def show_counts(self, names: Sequence[str], counts: Sequence[int], colours: Sequence[str],
                    highlight: str | None = None, title: str = "Tiles per subtype") -> None:
        """Vertical bar chart of tile counts per class (the ``highlight`` class outlined in black)."""
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        counts = np.asarray(counts, float)
        bars = ax.bar(np.arange(len(names)), counts, color=list(colours),
                      edgecolor=["black" if n == highlight else "none" for n in names], linewidth=1.5)
        ax.bar_label(bars, [f"{int(c)}" for c in counts], fontsize=7)
        ax.set_xticks(np.arange(len(names)), list(names), fontsize=8)
        ax.set_ylabel("tiles", fontsize=8)
        ax.set_ylim(0, max(1.0, float(counts.max(initial=0))) * 1.2)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        self.draw_idle()

    def clear(self) -> None:
        """Empty the canvas."""
        self.figure.clear()
        self.draw_idle()


def _short(name: str, n: int = 38) -> str:
    """Shorten a long feature name for an axis label."""
    return name if len(name) <= n else name[: n - 1] + "…"

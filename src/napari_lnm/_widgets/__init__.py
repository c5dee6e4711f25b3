"""napari widgets of napari-lnm: analyse a slide, inspect a tile, train a model, export results.

Every widget only calls the headless core; heavy work runs in napari thread workers.
"""

from .analyse import AnalyseWidget
from .export import ExportWidget
from .inspect import InspectTileWidget
from .train import TrainWidget

__all__ = ["AnalyseWidget", "InspectTileWidget", "TrainWidget", "ExportWidget"]

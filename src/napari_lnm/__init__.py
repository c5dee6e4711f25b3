"""napari-lnm: lymph-node metastasis prediction from H&E slides; the researcher's API, imported lazily."""

__version__ = "0.1.0"

_API = {
    "open_slide": "io", "TilingConfig": "config", "tile_slide": "tiling", "read_tile": "tiling",
    "analyse_tile": "features", "tile_features": "features", "segment_nuclei": "nuclei",
    "analyse_tiles": "engine", "extract_cohort": "extract", "read_cohort": "cohort", "train_model": "model",
    "cross_validate": "model", "ModelBundle": "model", "predict_slide": "pipeline", "Prediction": "prediction",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """Import the public name's module on first use (``import napari_lnm`` stays light)."""
    if name not in _API:
        raise AttributeError(f"module 'napari_lnm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"napari_lnm.{_API[name]}"), name)

"""napari-lnm: lymph-node metastasis prediction from H&E whole-slide images.

The core (everything not prefixed with ``_``) imports no Qt; the napari side
lives in ``_reader``, ``_sample_data`` and ``_widgets`` and only calls the core.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

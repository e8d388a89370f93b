"""featx: extract frozen-backbone image embeddings once, then fit and compare heads in seconds.

Importing featx is cheap: torch, timm and scikit-learn are imported by the modules that need them.
"""

__version__ = "0.1.0"

from featx.errors import FeatxError  # noqa: E402

__all__ = ["FeatxError", "__version__"]

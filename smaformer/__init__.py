"""smaformer: transformer models for 2D medical image segmentation, and the toolkit around them."""
from smaformer.checkpoint import load_checkpoint
from smaformer.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_checkpoint", "__version__"]

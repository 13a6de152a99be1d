"""Models. Importing this package registers every model file with the registry."""
from smaformer.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]

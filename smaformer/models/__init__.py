"""Models. Importing this package registers every model file with the registry."""
from smaformer.models import (
    hbformer,  # noqa: F401, E402
    medt,  # noqa: F401, E402
    smaformer,  # noqa: F401, E402
    smaformer_v21,  # noqa: F401, E402
    swin_unet,  # noqa: F401, E402
    transunet,  # noqa: F401, E402
    unet,  # noqa: F401, E402
)
from smaformer.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]

"""Models. Importing this package registers every model file with the registry."""
from smaformer.models.registry import create_model, list_models, register_model
from smaformer.models import medt  # noqa: F401, E402
from smaformer.models import smaformer  # noqa: F401, E402
from smaformer.models import smaformer_v21  # noqa: F401, E402
from smaformer.models import swin_unet  # noqa: F401, E402
from smaformer.models import unet  # noqa: F401, E402

__all__ = ["create_model", "list_models", "register_model"]

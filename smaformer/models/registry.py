"""timm-style model registry: each model file registers its variants with ``@register_model``."""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from smaformer.errors import did_you_mean

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_TINY: dict[str, dict] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None, tiny: dict | None = None):
    """Register a factory under ``name`` (default: the function's name).

    ``tiny`` holds kwargs for a small variant of the same architecture (well under 1M params, fast at 64x64),
    used by training, export and prediction tests.
    """

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is registered twice")
        _MODELS[key] = f
        _TINY[key] = dict(tiny or {})
        return f

    return wrap(fn) if fn is not None else wrap


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def tiny_kwargs(name: str) -> dict:
    """Kwargs that build a tiny variant of ``name`` (empty when the default is already small)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return dict(_TINY[name])


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model. Unknown names and unknown keyword arguments raise ValueError."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}{did_you_mean(name, _MODELS)}; valid names: "
                         f"{', '.join(list_models())}")
    try:
        model = _MODELS[name](**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"{name}: {str(e).split(': ', 1)[-1]}") from None
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model

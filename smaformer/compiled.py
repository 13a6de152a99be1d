"""``torch.compile`` with a one-line fallback to eager (``train.compile``, ``predict/evaluate --compile``).

Compilation is lazy: it happens at the first call of each new kind (training, evaluation, a new batch
size). When dynamo or inductor fails there (no C++ compiler, an unsupported op, a backend bug), the
wrapper says so in one line and runs the eager module from then on, instead of stopping the run with a
page of traceback. Errors in the model itself are not hidden: the eager retry raises them as usual.

The wrapper forwards attribute look-ups to the eager module (``size_multiple``, ``model_name``...), and
checkpoints are always written from the eager module, so they hold the uncompiled state dict.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn


def is_compile_error(e: BaseException) -> bool:
    """An error raised by torch.compile's machinery (dynamo or inductor), not by the model's own code."""
    return type(e).__module__.startswith(("torch._dynamo", "torch._inductor"))


class CompiledModule(nn.Module):
    """``torch.compile(module)`` that falls back to ``module`` for good after a compilation failure."""

    def __init__(self, module: nn.Module, log: Callable[[str], object] = print, record: dict | None = None,
                 **compile_kwargs):
        super().__init__()
        self.eager = module
        self.failed, self.reason = False, ""
        self._record = record        # gets "compile_ran": what runs (e.g. a run's train config, for its checkpoints)
        if record is not None:
            record["compile_ran"] = "compiled"
        self._log = log
        try:
            self.compiled = torch.compile(module, **compile_kwargs)
        except Exception as e:  # noqa: BLE001 - only compile errors are swallowed, the rest re-raised
            self._fail(e)

    def _fail(self, e: Exception) -> None:
        if not is_compile_error(e):
            raise e
        line = (str(e).strip().splitlines() or [""])[0][:200]
        hint = "; PYTHONUTF8=1 lets torch read its templates" if "UnicodeDecodeError" in str(e) else ""
        self.reason = f"torch.compile failed: {type(e).__name__}: {line}"
        self._log(f"torch.compile failed ({type(e).__name__}: {line}){hint}; running eagerly")
        self.failed = True
        if self._record is not None:
            self._record["compile_ran"] = self.status

    @property
    def status(self) -> str:
        """What runs: ``compiled``, or ``eager (torch.compile failed: ...)`` after a fallback."""
        return f"eager ({self.reason})" if self.failed else "compiled"

    def forward(self, *args, **kwargs):
        if self.failed:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only compile errors are swallowed, the rest re-raised
            self._fail(e)
            return self.eager(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["eager"], name)


def maybe_compile(module: nn.Module, enabled: bool, log: Callable[[str], object] = print,
                  backend: str = "inductor", record: dict | None = None) -> nn.Module:
    """``CompiledModule(module)`` when ``enabled``, else ``module`` itself; ``record`` (see CompiledModule) gets
    ``compile_ran``: ``eager`` when not enabled."""
    if not enabled and record is not None:
        record["compile_ran"] = "eager"
    return CompiledModule(module, log, record, backend=backend) if enabled else module

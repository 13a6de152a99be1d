"""The model base class (segmentation_models.pytorch's ``SegmentationModel`` is the anchor).

Every model declares, in one place, what the rest of the toolkit asks of it:
- ``parts``: parameter-name prefixes per part, for the info table and the pretrained-coverage report;
- ``export_flags``: which exports work (the shared test suite checks that a False flag really refuses);
- ``size_multiple`` / ``exact_size`` / ``pads_input``: what input sizes ``forward`` takes;
- ``official_layout`` and the ``official_key`` hook, through which ``smaformer.weights.load_official``
  converts a checkpoint saved by the official repository.

``check_input`` validates a batch against those declarations with a message that says the fix. It is
skipped while tracing or compiling: exported graphs carry their own shape contract.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from smaformer.models.layers.sizing import nearest_multiple

EXPORT_FLAGS = {"onnx": True, "torchscript": True, "compile": True, "dynamic_hw": False}


class SegmentationModel(nn.Module):
    """(B, in_chans, H, W) -> (B, num_classes, H, W) logits, with the declarations above."""

    parts: ClassVar[dict[str, tuple[str, ...]]] = {}
    export_flags: ClassVar[dict[str, bool]] = EXPORT_FLAGS   # torchscript means torch.jit.trace
    official_layout: ClassVar[str | None] = None   # e.g. "HuCaoFighting/Swin-Unet @ 7d80541"
    size_hint: ClassVar[str] = ""                  # appended to size errors, e.g. " or pass pad=True"
    gray_to_rgb: ClassVar[bool] = False  # built for 1 channel, repeat it to 3 (the official wrappers' 3-ch stem)
    # how much of the model is convolutional: "all" (a CNN: channels-last everywhere, NNCF's CNN INT8 scheme),
    # "part" (a CNN stem or decoder: channels-last on CUDA only), "none" (attention); "part" and "none" take
    # NNCF's transformer INT8 scheme
    convolution: ClassVar[str] = "none"

    in_chans: int
    num_classes: int
    img_size: tuple[int, int]
    size_multiple: int = 1        # H and W must be multiples of this (unless the model pads or resizes)
    exact_size: bool = False      # H and W must equal img_size (sizes baked into the weights)
    pads_input: bool = False      # the model pads or resizes the input itself

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse a batch this model cannot segment, saying what to do instead."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        if x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) batch, got shape {list(x.shape)}")
        if x.shape[1] not in self.accepted_channels:
            raise ValueError(f"expected {' or '.join(map(str, self.accepted_channels))} input channels, "
                             f"got {x.shape[1]}")
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if self.exact_size and hw != tuple(self.img_size):
            raise ValueError(f"this model was built for img_size {tuple(self.img_size)} and takes "
                             f"(B, C, {self.img_size[0]}, {self.img_size[1]}); got {list(x.shape)}. "
                             "Resize the input or build the model with img_size matching it")
        m = self.size_multiple
        if not self.pads_input and (hw[0] % m or hw[1] % m):
            raise ValueError(f"input {hw} is not divisible by {m}; resize it to {nearest_multiple(hw, m)}"
                             f"{self.size_hint}")

    @property
    def accepted_channels(self) -> tuple[int, ...]:
        """Channel counts ``forward`` takes: ``in_chans``; where ``gray_to_rgb`` and the stem has 3 channels
        (``in_chans`` 1 or 3), both 1 and 3, as the official wrappers repeat a grey batch to 3 channels."""
        return (1, 3) if self.gray_to_rgb and self.in_chans in (1, 3) else (self.in_chans,)

    def gray_as_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """The official wrappers' 1 -> 3 channel repeat, for models whose weights keep a 3-channel stem."""
        return x.repeat(1, 3, 1, 1) if self.gray_to_rgb and x.shape[1] == 1 else x

    def io_steps(self) -> tuple[list[str], list[str]]:
        """What ``forward`` does to the input before its first module and to the logits after its last one
        (e.g. SMAFormer's resize to 224 and back), for the architecture page."""
        return [], []

    def official_key(self, key: str) -> str | None:
        """Our name for an official checkpoint key, or None for a key the official model never uses."""
        return key

    def official_shape_hint(self, state_dict: dict[str, torch.Tensor]) -> str:
        """Appended to a shape mismatch while loading an official checkpoint (e.g. which size it needs)."""
        return ""

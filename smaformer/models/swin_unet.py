"""Swin-Unet (Cao et al. 2021), faithful to HuCaoFighting/Swin-Unet @ 7d80541 (``SwinTransformerSys``).

Parameter names mirror the official inner network, so official checkpoints load by stripping the
``module.`` / ``swin_unet.`` prefixes and dropping computed buffers. Encoder: PatchEmbed, 4 Swin stages
(PatchMerging after stages 0-2), LayerNorm. Decoder: ``layers_up[0]`` is a bare PatchExpand; steps 1-3 concat
``[decoder, skip]`` (skips are the *inputs* of encoder stages 2, 1, 0), Linear back to C, Swin blocks, then
PatchExpand (not on the last). Head: ``norm_up``, FinalPatchExpandX4, 1x1 conv without bias.
A 1-channel input is repeated to 3 channels, as the official wrapper does.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from smaformer.models.base import SegmentationModel
from smaformer.models.layers.sizing import check_multiple, to_2tuple
from smaformer.models.layers.swin import (
    FinalPatchExpandX4,
    PatchEmbed,
    PatchExpand,
    SwinStage,
    drop_path_rates,
    init_swin_weights,
    mirrored_block,
    swin_encoder,
)
from smaformer.models.registry import register_model


class SwinUnet(SegmentationModel):
    """U-shaped pure Swin Transformer for 2D segmentation: (B, in_chans, H, W) -> (B, num_classes, H, W)."""

    parts = {
        "encoder": ("patch_embed.", "layers.", "norm."),
        "decoder": ("layers_up.", "concat_back_dim.", "norm_up."),
        "head": ("up.", "output."),
    }
    official_layout = "HuCaoFighting/Swin-Unet @ 7d80541"
    gray_to_rgb = True

    def __init__(self, num_classes: int = 9, in_chans: int = 3, img_size: int | tuple[int, int] = 224,
                 embed_dim: int = 96, depths: tuple[int, ...] = (2, 2, 2, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.2) -> None:
        super().__init__()
        if len(depths) != len(num_heads) or len(depths) < 2:
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} need the same length (>= 2)")
        if num_classes < 1 or in_chans < 1 or window_size < 1:
            raise ValueError("num_classes, in_chans and window_size must be positive")
        n = len(depths)
        self.num_classes, self.in_chans, self.window_size = num_classes, in_chans, window_size
        self.img_size = to_2tuple(img_size)
        self.size_multiple = 4 * 2 ** (n - 1)
        check_multiple(self.img_size, self.size_multiple,
                       hint=" (e.g. 224 with window_size 7, 256 or 512 with window_size 8)")
        dims = [embed_dim * 2 ** i for i in range(n)]
        rates = drop_path_rates(depths, drop_path_rate)

        # the official wrapper repeats 1-channel input to 3, so its weights keep a 3-channel patch embedding
        self.patch_embed = PatchEmbed(3 if in_chans == 1 else in_chans, embed_dim)
        self.layers = swin_encoder(dims, depths, num_heads, window_size, rates, mlp_ratio)
        self.norm = nn.LayerNorm(dims[-1])
        self.layers_up = nn.ModuleList([PatchExpand(dims[-1])])
        self.concat_back_dim = nn.ModuleList([nn.Identity()])
        for i in range(1, n):
            k = n - 1 - i  # mirrored encoder stage
            self.layers_up.append(SwinStage(dims[k], depths[k], num_heads[k], window_size,
                                            rates[k], mlp_ratio, upsample=i < n - 1))
            self.concat_back_dim.append(nn.Linear(2 * dims[k], dims[k]))
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = FinalPatchExpandX4(embed_dim)
        self.output = nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=False)
        self.apply(init_swin_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.gray_as_rgb(x)
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)  # the skip is the stage INPUT, as in the official code
            x = layer(x)
        x = self.norm(x)
        n = len(self.layers)
        for i, layer in enumerate(self.layers_up):
            if i > 0:
                x = self.concat_back_dim[i](torch.cat([x, skips[n - 1 - i]], dim=-1))
            x = layer(x)
        x = self.up(self.norm_up(x))
        return self.output(x.permute(0, 3, 1, 2))

    def official_key(self, key: str) -> str | None:
        """Official keys may carry the wrapper's ``swin_unet.`` prefix."""
        return key.removeprefix("swin_unet.")

    def pretrained_mapping(self) -> dict[str, str]:
        """Our parameter name -> Swin-T name (Microsoft layout), as the official ``load_from`` maps them:
        the encoder by identical names, and decoder stage ``layers_up.(3-k)`` blocks from encoder ``layers.k``."""
        n = len(self.layers)
        mapping = {}
        for name, _ in self.named_parameters():
            if name.startswith(("patch_embed.", "layers.", "norm.")):
                mapping[name] = name
            elif (src := mirrored_block(name, "layers_up.", n - 1)) is not None:
                mapping[name] = src
        return mapping


@register_model(tiny={"embed_dim": 16, "depths": [2, 2, 2, 1], "num_heads": [1, 2, 4, 8], "window_size": 4})
def swin_unet(**kwargs) -> SwinUnet:
    """Swin-Unet, Swin-T sized (embed 96, depths [2,2,2,2], heads [3,6,12,24], window 7): 27,168,900 params
    at 224 with 9 classes."""
    return SwinUnet(**kwargs)

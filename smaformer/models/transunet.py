"""TransUNet R50-ViT-B/16 (Chen et al. 2021), faithful to Beckschen/TransUNet @ 02ef001 (``VisionTransformer``).

Parameter names equal the official ones, so official checkpoints load as they are:
- ``transformer.embeddings.hybrid_model``: BiT ResNetV2 (StdConv + GroupNorm, units 3, 4, 9) giving the 1/16 map
  and skips at 1/8, 1/4 (block1 zero-padded bottom/right, 55 -> 56 at 224) and 1/2;
- ``patch_embeddings`` (1x1 conv 1024 -> 768) plus ``position_embeddings`` (no class token), then
  ``transformer.encoder``: 12 pre-norm ViT blocks (LayerNorm eps 1e-6, exact GELU) and ``encoder_norm``;
- ``decoder``: ``conv_more`` (3x3 conv-BN-ReLU 768 -> 512) on the token grid, then 4 blocks of bilinear x2
  (align_corners=True), cat ``[x, skip]`` (decoder first) and two 3x3 conv-BN-ReLU; blocks 0-2 take skips;
- ``segmentation_head``: 3x3 conv to the classes. A 1-channel input is repeated to 3, as the official model does.

Departures (where the official code breaks): any square or non-square size that is a multiple of 16 (the
official pad code is square-only and the position embedding fixes the construction size, as here);
``num_classes`` is honoured (the official head uses the config's ``n_classes``); nothing shared is mutated
(the official ``DecoderCup`` rewrites the module-level config's ``skip_channels``). The block1 skip pad target
is derived from the input size (H/4, W/4), which is the official 56 at 224. ``load_pretrained`` takes Google's
ImageNet-21k ``R50+ViT-B_16.npz`` (``smaformer.weights.google_npz``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from smaformer.models.base import SegmentationModel
from smaformer.models.layers.resnetv2 import ResNetV2
from smaformer.models.layers.sizing import check_multiple, to_2tuple
from smaformer.models.layers.vit import ViTEncoder
from smaformer.models.registry import register_model

MULTIPLE = 16  # ResNet 1/16 map, one token per position


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv (no bias), BatchNorm, ReLU: the official ``Conv2dReLU`` (children 0, 1, 2)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Embeddings(nn.Module):
    """Hybrid embeddings: ResNetV2 trunk, 1x1 patch projection and learned position embeddings."""

    def __init__(self, in_chans: int, grid: tuple[int, int], hidden: int, width: int, units: tuple[int, ...]):
        super().__init__()
        self.hybrid_model = ResNetV2(width, units, in_chans)
        self.patch_embeddings = nn.Conv2d(self.hybrid_model.out_channels, hidden, kernel_size=1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid[0] * grid[1], hidden))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, skips = self.hybrid_model(x)
        x = self.patch_embeddings(x).flatten(2).transpose(1, 2)
        return x + self.position_embeddings, skips


class Transformer(nn.Module):
    """Embeddings then the ViT encoder; returns tokens (B, N, D) and the ResNet skips."""

    def __init__(self, in_chans: int, grid: tuple[int, int], hidden: int, width: int, units: tuple[int, ...],
                 depth: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.embeddings = Embeddings(in_chans, grid, hidden, width, units)
        self.encoder = ViTEncoder(hidden, depth, heads, mlp_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, skips = self.embeddings(x)
        return self.encoder(x), skips


class DecoderBlock(nn.Module):
    """Bilinear x2 (align_corners=True), cat [x, skip], two conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, skip: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin + skip, cout)
        self.conv2 = conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """Tokens -> grid -> ``conv_more`` -> decoder blocks with the first ``n_skip`` skips."""

    def __init__(self, hidden: int, grid: tuple[int, int], head_channels: int, channels: tuple[int, ...],
                 skips: list[int], n_skip: int) -> None:
        super().__init__()
        self.grid, self.n_skip = grid, n_skip
        self.conv_more = conv_bn_relu(hidden, head_channels)
        ins = [head_channels, *channels[:-1]]
        skip_ch = [skips[i] if i < n_skip else 0 for i in range(len(channels))]
        self.blocks = nn.ModuleList(DecoderBlock(i, o, s) for i, o, s in zip(ins, channels, skip_ch, strict=True))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv_more(x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid))
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < self.n_skip else None)
        return x


class TransUNet(SegmentationModel):
    """TransUNet: (B, in_chans, H, W) -> (B, num_classes, H, W); H, W multiples of 16, fixed at construction."""

    parts = {
        "resnet": ("transformer.embeddings.hybrid_model.",),
        "embeddings": ("transformer.embeddings.patch_embeddings.", "transformer.embeddings.position_embeddings"),
        "encoder": ("transformer.encoder.",),
        "decoder": ("decoder.",),
        "head": ("segmentation_head.",),
    }
    convolution = "part"      # the R50 stem; channels-last measured 1.10x slower on CPU, so CUDA only
    official_layout = "Beckschen/TransUNet networks/vit_seg_modeling.py @ 02ef001"
    gray_to_rgb = True
    size_multiple = MULTIPLE
    exact_size = True  # the position embedding has one row per token of img_size

    def __init__(self, num_classes: int = 9, in_chans: int = 3, img_size: int | tuple[int, int] = 224,
                 hidden_size: int = 768, num_layers: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
                 resnet_width: int = 64, resnet_units: tuple[int, ...] = (3, 4, 9), head_channels: int = 512,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 16), n_skip: int = 3) -> None:
        super().__init__()
        if num_classes < 1 or in_chans < 1:
            raise ValueError("num_classes and in_chans must be positive")
        if len(resnet_units) != 3:
            raise ValueError(f"resnet_units needs 3 entries (the 1/16 trunk), got {list(resnet_units)}")
        if not 0 <= n_skip <= 3 or len(decoder_channels) != 4:
            raise ValueError(f"n_skip must be 0-3 and decoder_channels have 4 entries, got {n_skip}, "
                             f"{list(decoder_channels)}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.img_size = to_2tuple(img_size)
        check_multiple(self.img_size, MULTIPLE, why=" (ResNet 1/16 map, one token each)")
        self.grid = (self.img_size[0] // MULTIPLE, self.img_size[1] // MULTIPLE)
        self.transformer = Transformer(3 if in_chans == 1 else in_chans, self.grid, hidden_size, resnet_width,
                                       tuple(resnet_units), num_layers, num_heads, mlp_dim)
        skips = self.transformer.embeddings.hybrid_model.skip_channels
        self.decoder = DecoderCup(hidden_size, self.grid, head_channels, tuple(decoder_channels), skips, n_skip)
        self.segmentation_head = nn.Sequential(nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.gray_as_rgb(x)
        tokens, skips = self.transformer(x)
        return self.segmentation_head(self.decoder(tokens, skips))

    def official_shape_hint(self, state_dict: dict[str, torch.Tensor]) -> str:
        pos = state_dict.get("transformer.embeddings.position_embeddings")
        if pos is None:
            return ""
        return f" (the checkpoint has {pos.shape[1]} position embeddings; build with img_size giving that many " \
               f"16x16 cells, e.g. 224 for 196)"

    def pretrained_mapping(self) -> dict[str, str]:
        """Our parameter name -> key in Google's ``R50+ViT-B_16.npz`` (flax names), as the official
        ``load_from`` reads them. The decoder and head have no source."""
        res, layer, mapping = "transformer.embeddings.hybrid_model.", "transformer.encoder.layer.", {}
        vit = {"attention_norm": "LayerNorm_0", "ffn_norm": "LayerNorm_2", "ffn.fc1": "MlpBlock_3/Dense_0",
               "ffn.fc2": "MlpBlock_3/Dense_1"}
        for name, _ in self.named_parameters():
            module, p = name.rsplit(".", 1)
            norm = module.rsplit(".", 1)[-1].startswith(("gn", "attention_norm", "ffn_norm", "encoder_norm"))
            leaf = ("scale" if p == "weight" else "bias") if norm else {"weight": "kernel", "bias": "bias"}.get(p)
            if name.startswith(res):
                key = module[len(res):].replace("body.", "").replace("root.conv", "conv_root")
                key = key.replace("root.gn", "gn_root").replace("downsample", "conv_proj").replace(".", "/")
                mapping[name] = f"{key}/{leaf}"
            elif module == "transformer.embeddings.patch_embeddings":
                mapping[name] = f"embedding/{leaf}"
            elif name == "transformer.embeddings.position_embeddings":
                mapping[name] = "Transformer/posembed_input/pos_embedding"
            elif module == "transformer.encoder.encoder_norm":
                mapping[name] = f"Transformer/encoder_norm/{leaf}"
            elif name.startswith(layer):
                i, sub = module[len(layer):].split(".", 1)
                key = f"MultiHeadDotProductAttention_1/{sub[len('attn.'):]}" if sub.startswith("attn.") else vit[sub]
                mapping[name] = f"Transformer/encoderblock_{i}/{key}/{leaf}"
        return mapping


@register_model(tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "mlp_dim": 64, "resnet_width": 32,
                      "resnet_units": (1, 1, 1), "head_channels": 32, "decoder_channels": (32, 16, 16, 8)})
def transunet(**kwargs) -> TransUNet:
    """TransUNet R50-ViT-B/16 (n_skip 3): 105,277,081 params at 224 with 9 classes."""
    return TransUNet(**kwargs)

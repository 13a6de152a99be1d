"""SMAFormer V2.3 (lzeeorno/SMAFormer ``models/SMAFormerV2.py`` @ abca72e): a mirror Swin encoder-decoder.

Structure (parameter names equal the official ones, so official checkpoints load by dropping computed buffers):
- Encoder: Swin-T (``patch_embed``, ``encoder_layers.{0..3}`` with PatchMerging after stages 0-2, ``encoder_norm``).
- SMA (= CBAM, ``sma_encoder.{0..2}``) gates the skips: the stage-block outputs *before* merging. The main path
  is not gated.
- Decoder, 3 stages (``decoder_layers.{0..2}``): PatchExpand 2d->d first, ``skip_fusion`` Linear(2d->d) on
  ``[up, skip]``, Swin blocks (depths = encoder depths 2, 1, 0; drop path reversed), then ``decoder_norms.i``
  and ``sma_decoder.i``.
- Head: ``final_expand`` = two x2 linear pixel-shuffle expansions with LN, then Linear -> classes (with bias).

Two modes:
- native (default): runs at the input resolution. The window is chosen so that it tiles the 1/32 map
  (7 when that side is a multiple of 7, else 8 when a multiple of 8, else 7 with Swin padding): 224 -> 7,
  256 and 512 -> 8. The official code builds ``sma_encoder[3]`` and discards its output; native mode drops it.
- compatibility (``resize_to=224``): the official forward. Any input is resized bilinearly to 224
  (align_corners=False, no antialias), run with window 7, and the logits are resized back. ``sma_encoder[3]``
  is kept, so the model has exactly the official 41,432,027 parameters (9 classes) and official checkpoints
  load strictly.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from smaformer.models.base import SegmentationModel
from smaformer.models.layers.sizing import check_multiple, pad_to_multiple, to_2tuple
from smaformer.models.layers.sma import CBAM, FinalExpand, resize_bilinear
from smaformer.models.layers.swin import (
    PatchEmbed,
    PatchExpand,
    SwinBlock,
    drop_path_rates,
    init_swin_weights,
    mirrored_block,
    swin_encoder,
)
from smaformer.models.registry import register_model

MULTIPLE = 32  # patch 4 x three 2x merges


def auto_window(size: tuple[int, int]) -> int:
    """A window that tiles the 1/32 feature map (of the input padded to multiples of 32): 7 if both sides are
    multiples of 7, else 8 if both are multiples of 8, else 7 (the Swin blocks then pad to window multiples)."""
    bottom = [-(-s // MULTIPLE) for s in size]
    if all(b % 7 == 0 for b in bottom):
        return 7
    if all(b % 8 == 0 for b in bottom):
        return 8
    return 7


class DecoderLayer(nn.Module):
    """One V2.3 decoder stage on (B, H, W, 2d) tokens: PatchExpand -> cat([up, skip]) -> Linear(2d, d) -> blocks."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, drop_path: list[float],
                 mlp_ratio: float) -> None:
        super().__init__()
        self.upsample = PatchExpand(2 * dim)
        self.skip_fusion = nn.Linear(2 * dim, dim)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, shift=i % 2 == 1, mlp_ratio=mlp_ratio, drop_path=drop_path[i])
            for i in range(depth))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.skip_fusion(torch.cat([self.upsample(x), skip], dim=-1))
        for block in self.blocks:
            x = block(x)
        return x


class SMAFormer(SegmentationModel):
    """SMAFormer V2.3: (B, in_chans, H, W) -> (B, num_classes, H, W) logits."""

    parts = {
        "encoder": ("patch_embed.", "encoder_layers.", "encoder_norm."),
        "decoder": ("decoder_layers.",),
        "sma": ("sma_encoder.", "sma_decoder."),
        "head": ("decoder_norms.", "final_expand."),
    }
    official_layout = "lzeeorno/SMAFormer models/SMAFormerV2.py @ abca72e"
    size_multiple = MULTIPLE
    size_hint = " or pass pad=True"

    def __init__(self, num_classes: int = 9, in_chans: int = 3, img_size: int | tuple[int, int] = 256,
                 resize_to: int | tuple[int, int] | None = None, window_size: int | None = None,
                 embed_dim: int = 96, depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24), mlp_ratio: float = 4.0, drop_path_rate: float = 0.2,
                 use_sma: bool = True, pad: bool = False) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"depths and num_heads need 4 entries, got {list(depths)}, {list(num_heads)}")
        if num_classes < 1 or in_chans < 1:
            raise ValueError("num_classes and in_chans must be positive")
        self.num_classes, self.in_chans, self.use_sma, self.pad = num_classes, in_chans, use_sma, pad
        self.img_size = to_2tuple(img_size)
        self.resize_to = None if resize_to is None else to_2tuple(resize_to, "resize_to")
        self.pads_input = pad or self.resize_to is not None
        if self.resize_to is not None or not pad:
            check_multiple(self.resize_to or self.img_size, MULTIPLE, "resize_to" if self.resize_to else "img_size",
                           hint="" if self.resize_to else " or pass pad=True")
        self.window_size = window_size or auto_window(self.resize_to or self.img_size)
        dims = [embed_dim * 2 ** i for i in range(4)]
        rates = drop_path_rates(depths, drop_path_rate)

        self.patch_embed = PatchEmbed(in_chans, embed_dim)
        self.encoder_layers = swin_encoder(dims, depths, num_heads, self.window_size, rates, mlp_ratio)
        self.encoder_norm = nn.LayerNorm(dims[3])
        dec = [2, 1, 0]  # decoder stage i mirrors encoder stage 2 - i
        rev = sum(rates, [])[::-1]  # official: reversed encoder rates, sliced by the decoder depths
        dstarts = [sum(depths[k] for k in dec[:i]) for i in range(4)]
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(dims[k], depths[k], num_heads[k], self.window_size, rev[dstarts[i]:dstarts[i + 1]], mlp_ratio)
            for i, k in enumerate(dec))
        self.decoder_norms = nn.ModuleList(nn.LayerNorm(dims[k]) for k in dec)
        if use_sma:
            # compatibility mode keeps the official dead sma_encoder[3] so official checkpoints load strictly
            self.sma_encoder = nn.ModuleList(CBAM(d) for d in dims[:4 if self.resize_to else 3])
            self.sma_decoder = nn.ModuleList(CBAM(dims[k]) for k in dec)
        self.final_expand = FinalExpand(embed_dim, num_classes)
        self.apply(init_swin_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        size = x.shape[-2:]
        if self.resize_to is not None:
            x = resize_bilinear(x, self.resize_to)
        elif self.pad:
            x = pad_to_multiple(x, MULTIPLE)
        out = self.final_expand(self.forward_features(x))
        if self.resize_to is not None:
            return resize_bilinear(out, (size[0], size[1]))
        return out[:, :, :size[0], :size[1]]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder and decoder: (B, C, H, W) image -> (B, H/4, W/4, embed_dim) tokens before the head."""
        x = self.patch_embed(x)
        skips = []
        for i, stage in enumerate(self.encoder_layers):
            for block in stage.blocks:
                x = block(x)
            if stage.downsample is not None:  # skips are the block outputs before merging
                skips.append(self.sma_encoder[i].forward_tokens(x) if self.use_sma else x)
                x = stage.downsample(x)
        x = self.encoder_norm(x)
        for i, layer in enumerate(self.decoder_layers):
            x = self.decoder_norms[i](layer(x, skips[2 - i]))
            if self.use_sma:
                x = self.sma_decoder[i].forward_tokens(x)
        return x

    def io_steps(self) -> tuple[list[str], list[str]]:
        if self.resize_to is not None:
            return ([f"resize to {self.resize_to[0]}x{self.resize_to[1]} (bilinear, the official forward)"],
                     ["logits resized back to the input size (bilinear)"])
        if self.pad:
            return [f"zero-pad bottom/right to multiples of {MULTIPLE}"], ["crop the logits to the input size"]
        return [], []

    def official_key(self, key: str) -> str | None:
        """Official names are ours; the dead ``sma_encoder.3`` is dropped when this model lacks it (native)."""
        if key.startswith("sma_encoder.3.") and not (self.use_sma and len(self.sma_encoder) == 4):
            return None
        return key

    def official_shape_hint(self, state_dict: dict[str, torch.Tensor]) -> str:
        return " (official checkpoints need resize_to=224 or window 7)"

    def pretrained_mapping(self) -> dict[str, str]:
        """Our parameter name -> Swin-T name (Microsoft layout), as the official ``_load_pretrained_weights``:
        the encoder by name (``encoder_layers.k`` <- ``layers.k``, ``encoder_norm`` <- ``norm``) and the decoder
        blocks by reverse mapping, ``decoder_layers.i.blocks.j`` <- ``layers.(2-i).blocks.j``. PatchExpand and
        skip fusion have no source."""
        mapping = {}
        for name, _ in self.named_parameters():
            if name.startswith("patch_embed."):
                mapping[name] = name
            elif name.startswith("encoder_layers."):
                mapping[name] = "layers." + name[len("encoder_layers."):]
            elif name.startswith("encoder_norm."):
                mapping[name] = "norm." + name[len("encoder_norm."):]
            elif (src := mirrored_block(name, "decoder_layers.", 2)) is not None:
                mapping[name] = src
        return mapping


@register_model(tiny={"embed_dim": 8, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 4})
def smaformer(**kwargs) -> SMAFormer:
    """SMAFormer V2.3, Swin-T sized. Native by default; ``resize_to=224`` gives the official model
    (41,432,027 params with 9 classes)."""
    return SMAFormer(**kwargs)

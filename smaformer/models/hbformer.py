"""HBFormer (arXiv 2512.03597), faithful to lzeeorno/SMAFormer ``models/HBFormer.py`` @ abca72e.

What the official forward really runs (see ../shared/golden/README.md), with its parameter names:
- ``input_proj`` (1x1 conv to 3 channels), then ``MWAencoder.backbone``: a plain timm-layout Swin-T (no MWA
  blocks, no CG-Aligner): ``patch_embed``, ``layers.0`` (blocks only), ``layers.{1,2,3}`` (PatchMerging FIRST,
  then blocks). c1..c4 are the stage outputs; ``backbone.norm`` is never applied.
- ``proj_enc{1,2,3}`` (1x1 convs) on c1, c2, c3. Decoders: ``MFF_decoder4(c4, c3)`` on the raw c4 and c3,
  then ``MFF_decoder3(dec4, up2(proj_enc3(c3)))``, ``MFF_decoder2(dec3, up2(proj_enc2(c2)))`` and
  ``MFF_decoder1(dec2, up2(proj_enc1(c1)))``, with ``up2`` bilinear x2, align_corners=True.
- ``out``: ConvTranspose2d(48, 48, k4, s2, p1, no bias), then a 1x1 conv to the classes.

Departures: the official model runs only at its construction size 256 (timm's strict size check); ours takes
any multiple of 32, with the window chosen as the official constructor does (first of 7, 8, 6, 5, 4 dividing
the 1/4 map; here it must divide both sides, and 8 always does). The dead ``proj_enc4`` and ``backbone.norm``
(296,832 params, no gradient path) are dropped unless ``keep_dead=True``; ``load_official`` accepts checkpoints
with them either way. ``num_classes`` and ``in_chans`` are honoured (``input_proj`` maps in_chans -> 3).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from smaformer.models.base import SegmentationModel
from smaformer.models.layers.mff import MFFDecoder
from smaformer.models.layers.sizing import check_multiple, to_2tuple
from smaformer.models.layers.swin import PatchEmbed, PatchMerging, SwinBlock, drop_path_rates, init_swin_weights
from smaformer.models.registry import register_model

MULTIPLE = 32  # patch 4 x three 2x merges
WINDOW_CHOICES = (7, 8, 6, 5, 4)  # the official constructor's order
DEAD = ("proj_enc4.", "MWAencoder.backbone.norm.")


def pick_window(size: tuple[int, int]) -> int:
    """The official rule: the first of 7, 8, 6, 5, 4 that divides the 1/4 map (both sides here)."""
    for w in WINDOW_CHOICES:
        if all((s // 4) % w == 0 for s in size):
            return w
    raise ValueError(f"no window in {WINDOW_CHOICES} divides the 1/4 map of {size}; use a multiple of {MULTIPLE}")


class TimmStage(nn.Module):
    """A timm-layout Swin stage on (B, H, W, C): optional PatchMerging first (``downsample``), then ``blocks``."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, drop_path: list[float],
                 mlp_ratio: float, downsample: bool) -> None:
        super().__init__()
        self.downsample = PatchMerging(dim // 2) if downsample else None
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, shift=i % 2 == 1, mlp_ratio=mlp_ratio, drop_path=drop_path[i])
            for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class SwinFeatures(nn.Module):
    """Swin-T as timm lays it out, returning the four stage outputs as (B, C, H, W) maps."""

    def __init__(self, embed_dim: int, depths: tuple[int, ...], num_heads: tuple[int, ...], window_size: int,
                 mlp_ratio: float, drop_path_rate: float, final_norm: bool) -> None:
        super().__init__()
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        rates = drop_path_rates(depths, drop_path_rate)
        self.patch_embed = PatchEmbed(3, embed_dim)
        self.layers = nn.ModuleList(
            TimmStage(dims[i], depths[i], num_heads[i], window_size, rates[i], mlp_ratio, downsample=i > 0)
            for i in range(len(depths)))
        self.norm = nn.LayerNorm(dims[-1]) if final_norm else None  # official: built, never applied

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x.permute(0, 3, 1, 2))
        return feats


class SwinBackbone(nn.Module):
    """The official wrapper: holds the Swin as ``backbone`` (its pad/crop code never runs at multiples of 32)."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.backbone = SwinFeatures(**kwargs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class HBFormer(SegmentationModel):
    """HBFormer: (B, in_chans, H, W) -> (B, num_classes, H, W) logits; H, W multiples of 32."""

    parts = {
        "stem": ("input_proj.",),
        "encoder": ("MWAencoder.",),
        "decoder": tuple(f"proj_enc{k}." for k in (1, 2, 3, 4)) + tuple(f"MFF_decoder{k}." for k in (4, 3, 2, 1)),
        "head": ("out.",),
    }
    convolution = "part"      # the CNN decoders; channels-last measured 1.10x slower on CPU, so CUDA only
    official_layout = "lzeeorno/SMAFormer models/HBFormer.py @ abca72e"
    size_multiple = MULTIPLE

    def __init__(self, num_classes: int = 9, in_chans: int = 3, img_size: int | tuple[int, int] = 256,
                 feature_size: int = 48, window_size: int | None = None, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.2, keep_dead: bool = False) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"depths and num_heads need 4 entries, got {list(depths)}, {list(num_heads)}")
        if num_classes < 1 or in_chans < 1 or feature_size < 1:
            raise ValueError("num_classes, in_chans and feature_size must be positive")
        if embed_dim != 2 * feature_size:
            raise ValueError(f"embed_dim {embed_dim} must be 2 * feature_size ({2 * feature_size}): the decoders "
                             "concatenate Swin stage 3 with feature maps of 8 * feature_size channels")
        self.num_classes, self.in_chans, self.keep_dead = num_classes, in_chans, keep_dead
        self.img_size = to_2tuple(img_size)
        check_multiple(self.img_size, MULTIPLE, why=" (patch 4 and three 2x merges)")
        self.window_size = window_size or pick_window(self.img_size)
        dims = [embed_dim * 2 ** i for i in range(4)]
        f = feature_size

        self.input_proj = nn.Conv2d(in_chans, 3, kernel_size=1)
        self.MWAencoder = SwinBackbone(  # noqa: N815 - official name
            embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads), window_size=self.window_size,
            mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate, final_norm=keep_dead)
        self.proj_enc1 = nn.Conv2d(dims[0], f, 1)
        self.proj_enc2 = nn.Conv2d(dims[1], 2 * f, 1)
        self.proj_enc3 = nn.Conv2d(dims[2], 4 * f, 1)
        if keep_dead:
            self.proj_enc4 = nn.Conv2d(dims[3], 8 * f, 1)
        # decoder (cin, cout): cin = cout (upsampled) + cout (skip); decoder4's skip is the raw c3 (8f channels)
        self.MFF_decoder4 = MFFDecoder(16 * f, 8 * f)  # noqa: N815
        self.MFF_decoder3 = MFFDecoder(8 * f, 4 * f)  # noqa: N815
        self.MFF_decoder2 = MFFDecoder(4 * f, 2 * f)  # noqa: N815
        self.MFF_decoder1 = MFFDecoder(2 * f, f)  # noqa: N815
        self.out = nn.Sequential(nn.ConvTranspose2d(f, f, kernel_size=4, stride=2, padding=1, bias=False),
                                 nn.Conv2d(f, num_classes, 1))
        self.MWAencoder.apply(init_swin_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        c1, c2, c3, c4 = self.MWAencoder(self.input_proj(x))
        dec = self.MFF_decoder4(c4, c3)
        dec = self.MFF_decoder3(dec, _up2(self.proj_enc3(c3)))
        dec = self.MFF_decoder2(dec, _up2(self.proj_enc2(c2)))
        dec = self.MFF_decoder1(dec, _up2(self.proj_enc1(c1)))
        return self.out(dec)

    def official_key(self, key: str) -> str | None:
        """Official names are ours; the dead ``proj_enc4`` / ``backbone.norm`` are dropped unless kept."""
        if key.startswith(DEAD) and not self.keep_dead:
            return None
        return key

    def official_shape_hint(self, state_dict: dict[str, torch.Tensor]) -> str:
        table = state_dict.get("MWAencoder.backbone.layers.0.blocks.0.attn.relative_position_bias_table")
        if table is None:
            return ""
        window = (int(table.shape[0] ** 0.5) + 1) // 2
        return f" (this checkpoint has window {window}; build with window_size={window}, e.g. img_size 256 for 8)"

    def pretrained_mapping(self) -> dict[str, str]:
        """Our parameter name -> Swin-T name (Microsoft layout). Unlike the official loader, which matches raw
        names and so misses every PatchMerging, timm's ``layers.k.downsample`` maps to Microsoft's
        ``layers.(k-1).downsample``: the whole encoder loads."""
        prefix, mapping = "MWAencoder.backbone.", {}
        for name, _ in self.named_parameters():
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if rest.startswith("layers.") and ".downsample." in rest:
                k, tail = rest[len("layers."):].split(".", 1)
                rest = f"layers.{int(k) - 1}.{tail}"
            mapping[name] = rest
        return mapping


@register_model(tiny={"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8), "feature_size": 8,
                      "window_size": 4})
def hbformer(**kwargs) -> HBFormer:
    """HBFormer, Swin-T encoder and MFF decoders (feature_size 48): 36,415,297 params at 256 with 9 classes
    (36,712,129 with ``keep_dead=True``, as the official model)."""
    return HBFormer(**kwargs)

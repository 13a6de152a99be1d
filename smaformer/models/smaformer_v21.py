"""SMAFormer V2.1: the paper/README modules (lzeeorno/SMAFormer ``models/SMAFormerV2.py`` before V2.3), as real options.

Structure:
- ``input_proj``: conv3x3 + ReLU on the image.
- Swin encoder (``patch_embed``, ``layers.{0..3}``; PatchMerging after stages 0-2). After each stage's blocks the
  full SMA (``sma_stages.i``: pixel + channel attention, fused, spatial attention, conv1x1+BN, residual) gates the
  main path; the gated features are also the skips.
- Decoder, 3 stages (``decoders.i``): ConvTranspose x2, concat the skip, conv1x1+BN+ReLU, ``decoder_blocks`` SMA
  transformer blocks (``x + SMA(LN x)``, ``x + E-MLP(LN x)``), LayerNorm.
- ``final_upsample``: ConvTranspose x4 + BN + ReLU, then ``output``: the edge-enhancement head (Laplacian, or
  Sobel x/y with ``edge='sobel'``) or a plain conv1x1 with ``use_edge_enhancement=False``.

Options the official README claims and this file makes true: ``use_sma=False`` removes every SMA module (encoder
stages and the SMA branch of the decoder blocks); ``use_edge_enhancement=False`` uses a conv1x1 classifier;
``embed_dims``/``depths``/``num_heads``/``decoder_blocks`` size the network. Differences from the official code:
the timm encoder's final LayerNorm, which its forward never uses, is not built (1,536 dead params at Swin-T
size), and inputs are not padded to a 28-multiple (which breaks at 256); sizes must be multiples of 32 (or pad=True).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from smaformer.models.base import SegmentationModel
from smaformer.models.layers.sizing import check_multiple, pad_to_multiple, to_2tuple
from smaformer.models.layers.sma import EdgeHead, EnhancedMLP, SynergisticMultiAttention
from smaformer.models.layers.swin import DropPath, PatchEmbed, drop_path_rates, init_swin_weights, swin_encoder
from smaformer.models.registry import register_model
from smaformer.models.smaformer import MULTIPLE, auto_window


class SMATransformerBlock(nn.Module):
    """Channels-last block: ``x + SMA_branch(LN x)`` (when ``use_sma``), then ``x + E-MLP(LN x)``."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, use_sma: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if use_sma else None
        self.sma = SynergisticMultiAttention(dim) if use_sma else None
        self.norm2 = nn.LayerNorm(dim)
        self.emlp = EnhancedMLP(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sma is not None:
            x = x + self.drop_path(self.sma.attend(self.norm1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return x + self.drop_path(self.emlp(self.norm2(x)))


class DecoderStage(nn.Module):
    """(B, C_in, H, W) + skip (B, C_out, 2H, 2W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int, mlp_ratio: float, use_sma: bool) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_dim, out_dim, kernel_size=2, stride=2)
        self.fusion = nn.Sequential(nn.Conv2d(2 * out_dim, out_dim, 1), nn.BatchNorm2d(out_dim), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList(SMATransformerBlock(out_dim, mlp_ratio, use_sma=use_sma) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.fusion(torch.cat([self.upsample(x), skip], dim=1)).permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).permute(0, 3, 1, 2)


class SMAFormerV21(SegmentationModel):
    """SMAFormer V2.1: (B, in_chans, H, W) -> (B, num_classes, H, W) logits, at the input resolution."""

    parts = {
        "stem": ("input_proj.",),
        "encoder": ("patch_embed.", "layers."),
        "sma": ("sma_stages.",),
        "decoder": ("decoders.",),
        "head": ("final_upsample.", "output."),
    }
    size_multiple = MULTIPLE
    size_hint = " or pass pad=True"

    def __init__(self, num_classes: int = 9, in_chans: int = 3, img_size: int | tuple[int, int] = 256,
                 embed_dims: tuple[int, ...] = (96, 192, 384, 768), depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24), window_size: int | None = None, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.2, decoder_blocks: int = 2, use_sma: bool = True,
                 use_edge_enhancement: bool = True, edge: str = "laplacian", pad: bool = False) -> None:
        super().__init__()
        dims = [int(d) for d in embed_dims]
        if len(dims) != 4 or len(depths) != 4 or len(num_heads) != 4:
            raise ValueError("embed_dims, depths and num_heads need 4 entries each (one per Swin stage)")
        if any(dims[i + 1] != 2 * dims[i] for i in range(3)):
            raise ValueError(f"embed_dims {dims} must double per stage e.g. (64, 128, 256, 512)")
        if num_classes < 1 or in_chans < 1 or decoder_blocks < 0:
            raise ValueError("num_classes and in_chans must be positive and decoder_blocks >= 0")
        self.num_classes, self.in_chans, self.use_sma, self.pad = num_classes, in_chans, use_sma, pad
        self.use_edge_enhancement = use_edge_enhancement
        self.img_size = to_2tuple(img_size)
        self.pads_input = pad
        if not pad:
            check_multiple(self.img_size, MULTIPLE, hint=" or pass pad=True")
        self.window_size = window_size or auto_window(self.img_size)
        rates = drop_path_rates(depths, drop_path_rate)

        self.input_proj = nn.Sequential(nn.Conv2d(in_chans, in_chans, 3, padding=1), nn.ReLU(inplace=True))
        self.patch_embed = PatchEmbed(in_chans, dims[0])
        self.layers = swin_encoder(dims, depths, num_heads, self.window_size, rates, mlp_ratio)
        self.sma_stages = nn.ModuleList(SynergisticMultiAttention(d) for d in dims) if use_sma else None
        self.decoders = nn.ModuleList(DecoderStage(dims[i + 1], dims[i], decoder_blocks, mlp_ratio, use_sma)
                                      for i in (2, 1, 0))
        self.final_upsample = nn.Sequential(nn.ConvTranspose2d(dims[0], dims[0], kernel_size=4, stride=4),
                                            nn.BatchNorm2d(dims[0]), nn.ReLU(inplace=True))
        self.output = (EdgeHead(dims[0], num_classes, edge) if use_edge_enhancement
                       else nn.Conv2d(dims[0], num_classes, 1))
        self.apply(init_swin_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        h, w = x.shape[-2:]
        if self.pad:
            x = pad_to_multiple(x, MULTIPLE)
        x = self.patch_embed(self.input_proj(x))
        feats = []
        for i, stage in enumerate(self.layers):
            for block in stage.blocks:
                x = block(x)
            feat = x.permute(0, 3, 1, 2)
            if self.sma_stages is not None:
                feat = self.sma_stages[i](feat)
            feats.append(feat)
            if stage.downsample is not None:
                x = stage.downsample(feat.permute(0, 2, 3, 1))
        x = feats[3]
        for i, decoder in enumerate(self.decoders):
            x = decoder(x, feats[2 - i])
        return self.output(self.final_upsample(x))[:, :, :h, :w]

    def pretrained_mapping(self) -> dict[str, str]:
        """Our parameter name -> Swin-T name (Microsoft layout): the encoder only, by identical names
        (``patch_embed.*``, ``layers.k.blocks.*``, ``layers.k.downsample.*``). The decoder has no Swin source."""
        return {name: name for name, _ in self.named_parameters() if name.startswith(("patch_embed.", "layers."))}


@register_model(tiny={"embed_dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8),
                      "decoder_blocks": 1, "window_size": 4})
def smaformer_v21(**kwargs) -> SMAFormerV21:
    """SMAFormer V2.1 (paper modules), Swin-T sized, 9 classes: 42,667,835 params at 256 (window 8),
    42,660,107 at 224 (window 7)."""
    return SMAFormerV21(**kwargs)

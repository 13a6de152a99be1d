"""Medical Transformer family: axial U-Net, gated axial U-Net, LoGo and MedT (Valanarasu et al., MICCAI 2021).

Faithful to jeya-maria-jose/Medical-Transformer ``lib/models/axialnet.py`` @62f40a5 (``axialunet``, ``gated``,
``logo``, ``MedT``); official checkpoints load with ``smaformer.weights.load_official``. Differences:

- **Any size.** The official kernels are tied to 128x128. Here ``img_size`` (int or (H, W)) sizes every axial
  attention at construction: multiples of 32 for the U-Nets; multiples of 64 for LoGo/MedT, whose local branch
  cuts the image into 4x4 patches of img_size/4 that must be divisible by 16.
- **Unused parameters** (``AxialBlock_wopos.conv1`` in MedT's local branch and ``adjust_p`` in LoGo/MedT, 35,570
  params in MedT) are left out unless ``compat=True``; official checkpoints load into both builds.
- **Gates** are trainable by default; the official schedule (frozen until epoch 10) is the training option
  ``freeze_gates_epochs``, which calls ``smaformer.models.layers.axial.set_gates_trainable``.
- **Local branch** runs the 16 patches as one batch instead of a Python loop. Eval outputs are identical; in
  training, BatchNorm batch statistics pool all patches and running statistics update once per step (the official
  loop normalises each patch position alone and updates them 16 times per step).
- ``num_classes`` and ``in_chans`` are free; decoder upsampling targets the skip's size (same as x2 wherever the
  official code runs).
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from smaformer.models.base import SegmentationModel
from smaformer.models.layers.axial import gates_trainable, make_axial_layer, set_gates_trainable
from smaformer.models.layers.sizing import check_multiple, to_2tuple
from smaformer.models.registry import register_model

_UNUSED_OFFICIAL = re.compile(r"^(layer\d_p\.\d+\.conv1|adjust_p)\.(weight|bias)$")
_TINY = {"s": 0.0625, "groups": 4, "img_size": 64}


def _hw(img_size: int | tuple[int, int], multiple: int, why: str) -> tuple[int, int]:
    hw = to_2tuple(img_size)
    check_multiple(hw, multiple, why=f" ({why})")
    return hw


def _widths(s: float, groups: int) -> list[int]:
    """Block widths of the four layers (128s, 256s, 512s, 1024s); each must split into groups of even size."""
    w = 128 * s
    if groups < 1 or w != int(w) or int(w) % (2 * groups):
        raise ValueError(f"s={s} gives layer1 width {w:g}, which must be a whole multiple of 2*groups = {2 * groups}; "
                         f"use s=0.125 with groups=8 (official) or s=0.0625 with groups=4")
    return [int(w) * 2 ** i for i in range(4)]


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False) then ReLU: the official decoder step before the skip add."""
    return F.relu(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


def _size(x: torch.Tensor) -> tuple[int, int]:
    return x.shape[-2], x.shape[-1]


def _unet_path(net: nn.Module, x: torch.Tensor, out_size: tuple[int, int], sfx: str = "") -> torch.Tensor:
    """The official axial U-Net path: stem, ``layer1..4``, then ``decoder1..5`` with additive skips, on the
    modules named with suffix ``sfx`` (``""``: the U-Nets; ``"_p"``: MedT's local branch). Before ``adjust``."""
    m = {k: getattr(net, k + sfx) for k in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1", "layer2",
                                             "layer3", "layer4", "decoder1", "decoder2", "decoder3", "decoder4",
                                             "decoder5")}
    x = F.relu(m["bn1"](m["conv1"](x)))
    x = F.relu(m["bn2"](m["conv2"](x)))
    x = F.relu(m["bn3"](m["conv3"](x)))
    x1 = m["layer1"](x)
    x2 = m["layer2"](x1)
    x3 = m["layer3"](x2)
    x4 = m["layer4"](x3)
    y = _up(m["decoder1"](x4), _size(x4)) + x4
    y = _up(m["decoder2"](y), _size(x3)) + x3
    y = _up(m["decoder3"](y), _size(x2)) + x2
    y = _up(m["decoder4"](y), _size(x1)) + x1
    return _up(m["decoder5"](y), out_size)


class _AxialNet(SegmentationModel):
    """Shared pieces: the gate switch and the official key names."""

    __jit_unused_properties__ = ["gates_trainable"]
    official_layout = "jeya-maria-jose/Medical-Transformer lib/models/axialnet.py @ 62f40a5"
    exact_size = True   # the axial attention kernels are sized to img_size

    @property
    def gates_trainable(self) -> bool | None:
        """Whether the attention gates train (None for models without gates). Assign to freeze/unfreeze."""
        return gates_trainable(self)

    @gates_trainable.setter
    def gates_trainable(self, flag: bool) -> None:
        set_gates_trainable(self, flag)

    def official_key(self, key: str) -> str | None:
        """``hight_block`` -> ``height_block``; the parameters the official forward never uses are dropped
        unless this model was built with ``compat=True``."""
        if _UNUSED_OFFICIAL.match(key) and not getattr(self, "compat", False):
            return None
        return key.replace(".hight_block.", ".height_block.")

    def official_shape_hint(self, sd: dict[str, torch.Tensor]) -> str:
        rel_h, rel_w = sd.get("layer1.0.hight_block.relative"), sd.get("layer1.0.width_block.relative")
        if rel_h is None or rel_w is None:
            return ""
        h, w = rel_h.shape[1] + 1, rel_w.shape[1] + 1  # layer1 kernel K = img/2, table 2K-1 columns
        return f" (the checkpoint was trained at img_size {(h, w)}; build the model with img_size=({h}, {w}))"


def _stem(in_chans: int, planes: int, mid: int = 128) -> list[nn.Module]:
    """conv 7x7/2 -> BN -> ReLU -> conv 3x3 (to ``mid``) -> BN -> ReLU -> conv 3x3 -> BN -> ReLU, as six modules."""
    return [nn.Conv2d(in_chans, planes, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(planes),
            nn.Conv2d(planes, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid),
            nn.Conv2d(mid, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)]


def _decoders(widths: list[int]) -> list[nn.Conv2d]:
    """decoder1 (3x3 stride 2) .. decoder5 (3x3): 2w4 -> 2w4 -> w4 -> w3 -> w2 -> w1, all with bias."""
    w1, w2, w3, w4 = widths
    return [nn.Conv2d(2 * w4, 2 * w4, 3, stride=2, padding=1), nn.Conv2d(2 * w4, w4, 3, padding=1),
            nn.Conv2d(w4, w3, 3, padding=1), nn.Conv2d(w3, w2, 3, padding=1), nn.Conv2d(w2, w1, 3, padding=1)]


class AxialUNet(_AxialNet):
    """``ResAxialAttentionUNet``: stem, four axial layers [1, 2, 4, 1], conv decoder with additive skips.

    ``gated`` selects gated axial attention (the official ``gated``) over plain axial attention (``axialunet``).
    """

    parts = {"stem": ("conv1.", "bn1.", "conv2.", "bn2.", "conv3.", "bn3."),
             "encoder": ("layer1.", "layer2.", "layer3.", "layer4."),
             "decoder": ("decoder1.", "decoder2.", "decoder3.", "decoder4.", "decoder5."), "head": ("adjust.",)}

    def __init__(self, num_classes: int = 2, in_chans: int = 3, img_size: int | tuple[int, int] = 128,
                 gated: bool = True, s: float = 0.125, groups: int = 8, layers: tuple[int, ...] = (1, 2, 4, 1)):
        super().__init__()
        if num_classes < 1 or in_chans < 1 or len(layers) != 4 or min(layers) < 1:
            raise ValueError("num_classes and in_chans must be >= 1 and layers four counts >= 1")
        self.img_size = _hw(img_size, 32, "the encoder halves the image four times and decoder1 once more")
        self.num_classes, self.in_chans = num_classes, in_chans
        w = _widths(s, groups)
        h, wd = self.img_size[0] // 2, self.img_size[1] // 2
        self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3 = _stem(in_chans, w[0] // 2)
        kw = dict(groups=groups, gated=gated)
        self.layer1 = make_axial_layer(w[0] // 2, w[0], layers[0], (h, wd), **kw)
        self.layer2 = make_axial_layer(2 * w[0], w[1], layers[1], (h, wd), stride=2, **kw)
        self.layer3 = make_axial_layer(2 * w[1], w[2], layers[2], (h // 2, wd // 2), stride=2, **kw)
        self.layer4 = make_axial_layer(2 * w[2], w[3], layers[3], (h // 4, wd // 4), stride=2, **kw)
        self.decoder1, self.decoder2, self.decoder3, self.decoder4, self.decoder5 = _decoders(w)
        self.adjust = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.adjust(F.relu(_unet_path(self, x, self.img_size)))


class MedTNet(_AxialNet):
    """``medt_net``: a global branch (stem, layer1-2, decoder4-5) over the whole image plus a local branch (its own
    stem and a full 4-layer axial U-Net) shared by the 4x4 grid of img_size/4 patches; the two are added, then
    decoderf 3x3 -> ReLU -> ``adjust`` 1x1.

    ``medt=True``: gated global blocks and local blocks without positional terms (MedT); ``False``: plain axial
    blocks in both branches (LoGo). ``compat=True`` also builds the parameters the official forward never uses.
    """

    parts = {"global": ("conv1.", "bn1.", "conv2.", "bn2.", "conv3.", "bn3.", "layer1.", "layer2.",
                        "decoder4.", "decoder5."),
             "local": ("conv1_p.", "bn1_p.", "conv2_p.", "bn2_p.", "conv3_p.", "bn3_p.", "layer1_p.", "layer2_p.",
                       "layer3_p.", "layer4_p.", "decoder1_p.", "decoder2_p.", "decoder3_p.", "decoder4_p.",
                       "decoder5_p.", "adjust_p."),
             "head": ("decoderf.", "adjust.")}

    def __init__(self, num_classes: int = 2, in_chans: int = 3, img_size: int | tuple[int, int] = 128,
                 medt: bool = True, compat: bool = False, s: float = 0.125, groups: int = 8,
                 layers: tuple[int, ...] = (1, 2, 4, 1)):
        super().__init__()
        if num_classes < 1 or in_chans < 1 or len(layers) != 4 or min(layers) < 1:
            raise ValueError("num_classes and in_chans must be >= 1 and layers four counts >= 1")
        self.img_size = _hw(img_size, 64, "the local branch cuts 4x4 patches of img_size/4, which it halves four "
                                          "times")
        self.num_classes, self.in_chans, self.compat = num_classes, in_chans, compat
        w = _widths(s, groups)
        h, wd = self.img_size[0] // 2, self.img_size[1] // 2
        self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3 = _stem(in_chans, w[0] // 2)
        g_kw = dict(groups=groups, gated=medt)
        self.layer1 = make_axial_layer(w[0] // 2, w[0], layers[0], (h, wd), **g_kw)
        self.layer2 = make_axial_layer(2 * w[0], w[1], layers[1], (h, wd), stride=2, **g_kw)
        self.decoder4, self.decoder5 = _decoders(w)[3:]
        self.adjust = nn.Conv2d(w[0], num_classes, 1)
        if compat:
            self.adjust_p = nn.Conv2d(w[0], num_classes, 1)
        # The official local stem is built after layer2, so its width is layer2's output (2*w1), not w0/2.
        self.conv1_p, self.bn1_p, self.conv2_p, self.bn2_p, self.conv3_p, self.bn3_p = _stem(in_chans, 2 * w[1])
        ph, pw = h // 4, wd // 4
        l_kw = dict(groups=groups, positional=not medt, unused_conv1=compat and medt)
        self.layer1_p = make_axial_layer(2 * w[1], w[0], layers[0], (ph, pw), **l_kw)
        self.layer2_p = make_axial_layer(2 * w[0], w[1], layers[1], (ph, pw), stride=2, **l_kw)
        self.layer3_p = make_axial_layer(2 * w[1], w[2], layers[2], (ph // 2, pw // 2), stride=2, **l_kw)
        self.layer4_p = make_axial_layer(2 * w[2], w[3], layers[3], (ph // 4, pw // 4), stride=2, **l_kw)
        self.decoder1_p, self.decoder2_p, self.decoder3_p, self.decoder4_p, self.decoder5_p = _decoders(w)
        self.decoderf = nn.Conv2d(w[0], w[0], 3, padding=1)

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        """The local branch on all 16 patches at once: patch (i, j) is rows i*H/4.., columns j*W/4.."""
        b, c, h, w = x.shape
        ph, pw = h // 4, w // 4
        p = x.reshape(b, c, 4, ph, 4, pw).permute(0, 2, 4, 1, 3, 5).reshape(b * 16, c, ph, pw)
        y = _unet_path(self, p, (ph, pw), "_p")
        k = y.shape[1]
        return y.reshape(b, 4, 4, k, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, k, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        xin = x
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x = _up(self.decoder4(x2), _size(x1)) + x1
        x = _up(self.decoder5(x), self.img_size)
        x = F.relu(self.decoderf(x + self._local(xin)))
        return self.adjust(F.relu(x))


@register_model(tiny=_TINY)
def axial_unet(num_classes: int = 2, in_chans: int = 3, img_size: int | tuple[int, int] = 128, **kw) -> AxialUNet:
    """Axial-attention U-Net (official ``axialunet``): 1,326,850 params at 128x128, 2 classes."""
    return AxialUNet(num_classes, in_chans, img_size, gated=False, **kw)


@register_model(tiny=_TINY)
def gated_axial_unet(num_classes: int = 2, in_chans: int = 3, img_size: int | tuple[int, int] = 128,
                     **kw) -> AxialUNet:
    """Gated axial-attention U-Net (official ``gated``): 1,326,914 params at 128x128, 2 classes."""
    return AxialUNet(num_classes, in_chans, img_size, gated=True, **kw)


@register_model(tiny=_TINY)
def logo(num_classes: int = 2, in_chans: int = 3, img_size: int | tuple[int, int] = 128, **kw) -> MedTNet:
    """Local-global network with plain axial blocks (official ``logo``): 1,529,498 params at 128x128, 2 classes
    (1,529,532 with ``compat=True``)."""
    return MedTNet(num_classes, in_chans, img_size, medt=False, **kw)


@register_model(tiny=_TINY)
def medt(num_classes: int = 2, in_chans: int = 3, img_size: int | tuple[int, int] = 128, **kw) -> MedTNet:
    """Medical Transformer (official ``MedT``): 1,524,570 params at 128x128, 2 classes (1,560,140 with
    ``compat=True``, which keeps the 35,570 parameters the official forward never uses)."""
    return MedTNet(num_classes, in_chans, img_size, medt=True, **kw)

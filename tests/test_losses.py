import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from smaformer.config import load_config
from smaformer.losses import DiceLoss, SegLoss, build_loss


def _batch(k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, k, 12, 10, generator=g), torch.randint(0, k, (3, 12, 10), generator=g)


def _swin_unet_dice(logits, target, k, smooth=1e-5):
    """A re-statement of the Swin-Unet/TransUNet utils.DiceLoss (softmax=True, unit weights)."""
    p = logits.softmax(1)
    loss = 0.0
    for i in range(k):
        t = (target == i).float()
        inter = (p[:, i] * t).sum()
        loss += 1 - (2 * inter + smooth) / ((p[:, i] ** 2).sum() + (t * t).sum() + smooth)
    return loss / k


def test_dice_matches_official_definition():
    logits, target = _batch()
    assert torch.allclose(DiceLoss(4)(logits, target), _swin_unet_dice(logits, target, 4), atol=1e-6)


def test_swin_unet_recipe_equals_monai_dice_ce():
    logits, target = _batch()
    ours = SegLoss(4, ce=0.4, dice=0.6)(logits, target)
    monai = DiceCELoss(softmax=True, to_onehot_y=True, squared_pred=True, batch=True, include_background=True,
                       smooth_nr=1e-5, smooth_dr=1e-5, lambda_ce=0.4, lambda_dice=0.6)(logits, target[:, None])
    assert torch.allclose(ours, monai, atol=1e-6)


def test_ce_terms():
    logits, target = _batch()
    w = [0.5, 1.0, 2.0, 1.5]
    assert torch.allclose(SegLoss(4, ce=1, dice=0)(logits, target), F.cross_entropy(logits, target))
    assert torch.allclose(SegLoss(4, ce=1, dice=0, class_weights=w)(logits, target),
                          F.cross_entropy(logits, target, weight=torch.tensor(w)), atol=1e-6)
    # OHEM keeps the hardest pixels: its mean is at least the plain mean, and ratio 1 is plain CE
    ohem = SegLoss(4, ce=1, dice=0, ohem_ratio=0.25)(logits, target)
    assert ohem > F.cross_entropy(logits, target)
    assert torch.allclose(SegLoss(4, ce=1, dice=0, ohem_ratio=1.0)(logits, target), F.cross_entropy(logits, target))
    # focal with gamma 0 is CE; with gamma 2 it is smaller
    assert torch.allclose(SegLoss(4, ce=0, dice=0, focal=1, focal_gamma=0)(logits, target),
                          F.cross_entropy(logits, target), atol=1e-6)
    assert SegLoss(4, ce=0, dice=0, focal=1)(logits, target) < F.cross_entropy(logits, target)


def test_dice_excluding_background_and_perfect_prediction():
    _, target = _batch()
    perfect = F.one_hot(target, 4).permute(0, 3, 1, 2).float() * 50
    assert DiceLoss(4)(perfect, target) < 1e-4
    assert DiceLoss(4, include_background=False)(perfect, target) < 1e-4
    logits, _ = _batch(seed=1)
    full, fg = DiceLoss(4), DiceLoss(4, include_background=False)
    assert torch.allclose(fg(logits, target), full.per_class(logits, target)[1:].mean())


def test_bad_arguments():
    with pytest.raises(ValueError, match="class_weights"):
        DiceLoss(4, class_weights=[1, 2])
    with pytest.raises(ValueError, match="ohem_ratio"):
        SegLoss(4, ohem_ratio=1.5)
    with pytest.raises(ValueError, match="positive sum"):
        SegLoss(4, ce=0, dice=0)


def test_build_loss_from_preset_and_gradients():
    cfg = load_config("lits2017_smaformer")
    loss = build_loss(cfg, 3)
    assert (loss.w_ce, loss.w_dice, loss.w_focal, loss.ohem_ratio) == (0.3, 0.4, 0.3, 0.25)
    logits, target = _batch(k=3)
    logits.requires_grad_(True)
    loss(logits.bfloat16(), target).backward()       # AMP logits are promoted to fp32
    assert torch.isfinite(logits.grad).all()
